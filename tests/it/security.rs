//! Security posture of the daemon (issue 9, point 5): a private socket,
//! no credential in logs or gRPC errors, TLS verified unless a host is
//! configured otherwise, TOC and chunk digests verified by default, and
//! FUSE mounts read-only, nosuid, nodev and owned by root.

#![allow(clippy::unwrap_used)]

use crate::common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use base64::Engine as _;
use common::remote::*;
use common::*;
use rstargz_fs::registry::{OciDigest, Registry};
use rstargz_test_support::proxy::{FaultProxy, TokenAuth};
use rstargz_test_support::registry::TestRegistry;
use rstargz_test_support::{TestLayer, push_image, push_image_via, push_image_with, test_blob};

const NO_BACKGROUND: &str = "no_background_fetch = true\n";

/// A one-file eStargz layer, different for every `n`.
fn small_layer(n: u64) -> TestLayer {
    // test_blob sets the seed's low bit: keep seeds odd to keep them apart.
    estargz_layer(
        &[("file.bin", 0o644, &test_blob(100 << 10, 2 * n + 1))],
        64 << 10,
    )
}

/// Prepares `layer` of `reference` as the remote snapshot `chain` with
/// `toc` as its TOC digest label; returns the Prepare answer.
async fn prepare_layer(
    c: &mut Client,
    chain: &str,
    reference: &str,
    digest: &OciDigest,
    toc: Option<&str>,
) -> Result<Vec<rstargz_proto::types::Mount>, tonic::Status> {
    let labels = remote_labels(chain, reference, digest.as_str(), toc);
    prepare(c, &format!("extract-{chain}"), "", &labels).await
}

/// Asserts that Prepare mounted the layer remotely (AlreadyExists).
async fn assert_remote(
    c: &mut Client,
    chain: &str,
    reference: &str,
    layer: &TestLayer,
    digest: &OciDigest,
) {
    let err = prepare_layer(c, chain, reference, digest, layer.toc_digest.as_deref())
        .await
        .expect_err("remote layers answer AlreadyExists");
    assert_eq!(err.code(), tonic::Code::AlreadyExists, "{chain}: {err:?}");
}

/// The mount point of the committed remote snapshot `chain`, through a View.
async fn layer_dir(c: &mut Client, chain: &str) -> PathBuf {
    let mounts = view(c, &format!("view-{chain}"), chain).await.unwrap();
    assert_eq!(mounts[0].r#type, "bind", "{mounts:?}");
    PathBuf::from(&mounts[0].source)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_and_snapshot_directories_are_private() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path());
    let meta = std::fs::metadata(&d.socket).unwrap();
    let mode = meta.permissions().mode() & 0o777;
    assert_eq!(mode & !0o660, 0, "socket mode {mode:o} wider than 0660");
    assert_eq!((meta.uid(), meta.gid()), (0, 0), "socket owned by root");
    let snapshots = std::fs::metadata(d.snapshots_dir()).unwrap();
    assert_eq!(snapshots.permissions().mode() & 0o777, 0o700);
    d.stop();
}

/// A docker config with basic credentials per host.
fn docker_config_for(path: &Path, creds: &[(&str, &str, &str)]) {
    let auths: serde_json::Map<String, serde_json::Value> = creds
        .iter()
        .map(|(host, user, password)| {
            let auth =
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
            (host.to_string(), serde_json::json!({ "auth": auth }))
        })
        .collect();
    std::fs::write(path, serde_json::json!({ "auths": auths }).to_string()).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_never_reach_logs_or_errors() {
    // Basic auth (htpasswd) and a bearer token flow (token server demanding
    // basic credentials) in front of a plain registry.
    let (user, password, wrong) = ("sec-user", "Basic-S3cret-pw", "Wrong-S3cret-pw");
    let (tuser, tpassword, twrong) = ("tok-user", "Token-S3cret-pw", "Bad-T0ken-pw");
    let basic = TestRegistry::start_with_htpasswd(user, password).await;
    let plain = TestRegistry::start().await;
    let proxy = FaultProxy::start(plain.addr).await;
    let dir = tempfile::tempdir().unwrap();
    let creds = dir.path().join("config.json");
    docker_config_for(&creds, &[(&basic.host(), user, password)]);
    let basic_ref = basic.reference("sec/basic");
    let token_ref = format!("{}/sec/token:latest", proxy.host());
    let layers = [small_layer(1), small_layer(2)];
    let basic_digests = push_image_with(&basic_ref, &layers[..1], &creds).await;
    let token_digests = push_image(&token_ref, &layers[1..]).await;
    proxy.require_tokens(TokenAuth {
        user_password: Some((tuser.into(), tpassword.into())),
        refresh_token: None,
    });
    docker_config_for(
        &creds,
        &[
            (&basic.host(), user, password),
            (&proxy.host(), tuser, tpassword),
        ],
    );

    let d = start_remote_daemon(dir.path(), NO_BACKGROUND, &creds, "");
    let mut c = d.client().await;
    assert_remote(&mut c, "basic", &basic_ref, &layers[0], &basic_digests[0]).await;
    assert_remote(&mut c, "token", &token_ref, &layers[1], &token_digests[0]).await;
    assert!(proxy.token_requests() > 0, "the token flow ran");
    let mut errors = Vec::new();
    for chain in ["basic", "token"] {
        let fs = layer_dir(&mut c, chain).await;
        assert_eq!(std::fs::read(fs.join("file.bin")).unwrap().len(), 100 << 10);
        prepare(&mut c, &format!("c-{chain}"), chain, &[])
            .await
            .unwrap();
    }

    d.stop();

    // Now every credential is wrong and every token revoked: after a
    // restart (nothing remembered) checks fail with 401s and new layers are
    // refused.
    docker_config_for(
        &creds,
        &[(&basic.host(), user, wrong), (&proxy.host(), tuser, twrong)],
    );
    proxy.revoke_tokens();
    let d = start_remote_daemon(dir.path(), NO_BACKGROUND, &creds, "");
    let mut c = d.client().await;
    for chain in ["basic", "token"] {
        let err = mounts(&mut c, &format!("c-{chain}")).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
        assert!(
            err.message().contains("unauthorized"),
            "a clear reason: {err:?}"
        );
        errors.push(format!("{err:?} {err}"));
    }
    let other = push_image(
        &format!("{}/sec/other:latest", plain.host()),
        &[small_layer(3)],
    )
    .await;
    let refused = format!("{}/sec/other:latest", proxy.host());
    let fallback = prepare_layer(
        &mut c,
        "refused",
        &refused,
        &other[0],
        small_layer(3).toc_digest.as_deref(),
    )
    .await
    .unwrap();
    assert!(
        !fallback.is_empty(),
        "a refused layer falls back to a local snapshot"
    );
    let log = d.log_text();
    assert!(log.contains("auth refused"), "{log}");
    d.stop();

    let log = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("serve-"))
        .map(|e| std::fs::read_to_string(e.path()).unwrap())
        .collect::<String>();
    let b64 =
        |u: &str, p: &str| base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"));
    let secrets = [
        password.to_string(),
        wrong.to_string(),
        tpassword.to_string(),
        twrong.to_string(),
        b64(user, password),
        b64(user, wrong),
        b64(tuser, tpassword),
        b64(tuser, twrong),
        // Every bearer token the proxy hands out starts so.
        "tok-0-".to_string(),
        "tok-1-".to_string(),
    ];
    for secret in &secrets {
        assert!(
            !log.contains(secret.as_str()),
            "{secret:?} leaked into the log"
        );
        for e in &errors {
            assert!(
                !e.contains(secret.as_str()),
                "{secret:?} leaked into an error: {e}"
            );
        }
    }
    println!(
        "{} log bytes and {} errors checked for {} secrets",
        log.len(),
        errors.len(),
        secrets.len()
    );
}

/// A hosts.toml for `host` under `certs`.
fn hosts_toml(certs: &Path, host: &str, body: &str) {
    let dir = certs.join(host);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("hosts.toml"),
        format!("server = \"https://{host}\"\n{body}"),
    )
    .unwrap();
}

/// Pushes `layers[i]` to `regs[i]` as `repo`, through a client whose
/// hosts.toml for each registry is `push_hosts(registry)`; returns the
/// references and the layer digests.
async fn push_one_layer_each(
    dir: &Path,
    regs: &[TestRegistry],
    layers: &[TestLayer],
    repo: &str,
    push_hosts: impl Fn(&TestRegistry) -> String,
) -> (Vec<String>, Vec<OciDigest>) {
    let push_certs = dir.join("push-certs.d");
    for r in regs {
        hosts_toml(&push_certs, &r.host(), &push_hosts(r));
    }
    let mut config = rstargz_test_support::test_config(&dir.join("none.json"));
    config.hosts.certs_dir = Some(push_certs);
    let pusher = Registry::new(config).unwrap();
    let mut refs = Vec::new();
    let mut digests = Vec::new();
    for (r, layer) in regs.iter().zip(layers) {
        let reference = r.reference(repo);
        digests.push(
            push_image_via(&pusher, &reference, std::slice::from_ref(layer)).await[0].clone(),
        );
        refs.push(reference);
    }
    (refs, digests)
}

/// Starts the daemon with `certs` as its hosts.toml directory, no ambient
/// credentials and quick registry failures.
fn daemon_with_hosts_dir(dir: &Path, certs: &Path) -> Daemon {
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        format!(
            "{NO_BACKGROUND}[resolver]\nconfig_path = \"{}\"\ndocker_config = \"{}\"\n\
             request_timeout_sec = 5\n[blob]\nmax_retries = 1\n",
            certs.display(),
            dir.join("none.json").display()
        ),
    )
    .unwrap();
    Daemon::start_with(dir, &["--config", config.to_str().unwrap()])
}

/// Asserts that Prepare fell back to a local snapshot.
async fn assert_local(
    c: &mut Client,
    chain: &str,
    reference: &str,
    layer: &TestLayer,
    digest: &OciDigest,
) {
    let mounts = prepare_layer(c, chain, reference, digest, layer.toc_digest.as_deref())
        .await
        .unwrap();
    assert!(!mounts.is_empty(), "{chain} falls back to a local snapshot");
}

/// The log lines of declined remote mounts.
fn declines(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| l.contains("remote-snapshot-prepared=\"false\""))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_is_verified_unless_a_host_says_otherwise() {
    // Three HTTPS registries, each with its own test CA: one trusted
    // through its CA file, one with skip_verify, one with neither.
    let regs = [
        TestRegistry::start_tls().await,
        TestRegistry::start_tls().await,
        TestRegistry::start_tls().await,
    ];
    let dir = tempfile::tempdir().unwrap();
    let trust = |r: &TestRegistry| format!("ca = \"{}\"\n", r.ca_path().display());
    // A layer each: one known locally would mount from its TOC copy
    // without asking its registry.
    let layers = [small_layer(4), small_layer(5), small_layer(6)];
    let (refs, digests) = push_one_layer_each(dir.path(), &regs, &layers, "sec/tls", trust).await;

    let certs = dir.path().join("certs.d");
    hosts_toml(&certs, &regs[0].host(), &trust(&regs[0]));
    hosts_toml(&certs, &regs[1].host(), "skip_verify = true\n");
    hosts_toml(&certs, &regs[2].host(), "");
    let d = daemon_with_hosts_dir(dir.path(), &certs);
    let mut c = d.client().await;
    assert_remote(&mut c, "ca", &refs[0], &layers[0], &digests[0]).await;
    assert_remote(&mut c, "skip", &refs[1], &layers[1], &digests[1]).await;
    assert_local(&mut c, "unverified", &refs[2], &layers[2], &digests[2]).await;
    let log = d.log_text();
    let declined = declines(&log);
    assert_eq!(declined.len(), 1, "{log}");
    assert!(
        declined[0].contains("registry unreachable"),
        "{}",
        declined[0]
    );
    assert!(
        declined[0].to_lowercase().contains("certificate"),
        "a clear reason: {}",
        declined[0]
    );
    d.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_client_certificates_from_hosts_toml() {
    // Three registries that each require a client certificate from their
    // own client CA: one gets its certificate from hosts.toml, one none,
    // one a certificate from another registry's CA.
    let regs = [
        TestRegistry::start_mtls().await,
        TestRegistry::start_mtls().await,
        TestRegistry::start_mtls().await,
    ];
    let dir = tempfile::tempdir().unwrap();
    let trust = |r: &TestRegistry| format!("ca = \"{}\"\n", r.ca_path().display());
    let client = |of: &TestRegistry| {
        format!(
            "client = [[\"{}\", \"{}\"]]\n",
            of.client_cert_path().display(),
            of.client_key_path().display()
        )
    };
    let layers = [small_layer(7), small_layer(8), small_layer(9)];
    let (refs, digests) = push_one_layer_each(dir.path(), &regs, &layers, "sec/mtls", |r| {
        trust(r) + &client(r)
    })
    .await;

    let certs = dir.path().join("certs.d");
    hosts_toml(
        &certs,
        &regs[0].host(),
        &(trust(&regs[0]) + &client(&regs[0])),
    );
    hosts_toml(&certs, &regs[1].host(), &trust(&regs[1]));
    hosts_toml(
        &certs,
        &regs[2].host(),
        &(trust(&regs[2]) + &client(&regs[0])),
    );
    let d = daemon_with_hosts_dir(dir.path(), &certs);
    let mut c = d.client().await;

    // The right certificate: mounted lazily, and reads fetch over mTLS.
    assert_remote(&mut c, "mtls", &refs[0], &layers[0], &digests[0]).await;
    let file = layer_dir(&mut c, "mtls").await.join("file.bin");
    assert_eq!(std::fs::read(file).unwrap(), test_blob(100 << 10, 15));

    assert_local(&mut c, "no-client-cert", &refs[1], &layers[1], &digests[1]).await;
    assert_local(&mut c, "foreign-cert", &refs[2], &layers[2], &digests[2]).await;
    let log = d.log_text();
    let declined = declines(&log);
    assert_eq!(declined.len(), 2, "{log}");
    let why = [
        "requires a client certificate".to_string(),
        format!(
            "refused the client certificate {}",
            regs[0].client_cert_path().display()
        ),
    ];
    for (line, why) in declined.iter().zip(&why) {
        assert!(
            line.contains("registry unreachable") && line.contains(why.as_str()),
            "a clear reason ({why}): {line}"
        );
    }
    for r in &regs {
        let key = std::fs::read_to_string(r.client_key_path()).unwrap();
        for line in key.lines().filter(|l| !l.starts_with("-----")) {
            assert!(!log.contains(line), "client key material in the log");
        }
    }
    d.stop();
}

/// The byte range of the gzip member holding the chunk of `name` that
/// starts at `chunk_offset` in `blob`.
fn chunk_member(blob: &[u8], name: &str, chunk_offset: u64) -> std::ops::Range<usize> {
    let (_, decoded) = rstargz_fs::estargz::read_toc(blob, 1 << 30).unwrap();
    let mut offsets: Vec<u64> = decoded
        .toc
        .entries
        .iter()
        .map(|e| e.offset)
        .filter(|&o| o > 0)
        .collect();
    offsets.sort_unstable();
    let start = decoded
        .toc
        .entries
        .iter()
        .find(|e| e.name == name && e.chunk_offset == chunk_offset && e.offset > 0)
        .unwrap()
        .offset;
    let end = offsets.into_iter().find(|&o| o > start).unwrap();
    start as usize..end as usize
}

/// Flips one byte of a chunk's data inside its gzip member and fixes the
/// member's CRC, so the member still decompresses: only the chunk digest
/// can tell. Needs the member's first deflate block to be stored (random
/// data is).
fn corrupt_chunk(blob: &mut [u8], member: std::ops::Range<usize>, data: &[u8]) {
    let m = &mut blob[member];
    assert_eq!(&m[..4], &[0x1f, 0x8b, 8, 0], "a plain gzip header");
    let body = 10;
    assert_eq!(m[body] & 0b110, 0, "first deflate block stored");
    let flip = 100;
    m[body + 5 + flip] ^= 0xff;
    let mut changed = data.to_vec();
    changed[flip] ^= 0xff;
    let mut crc = flate2::Crc::new();
    crc.update(&changed);
    let len = m.len();
    m[len - 8..len - 4].copy_from_slice(&crc.sum().to_le_bytes());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn toc_and_chunk_digests_are_verified_by_default() {
    let registry = TestRegistry::start().await;
    let reference = registry.reference("sec/digests");
    let data = test_blob(256 << 10, 5);
    let layer = estargz_layer(&[("big.bin", 0o644, &data)], 64 << 10);
    let digest = push_image(&reference, std::slice::from_ref(&layer))
        .await
        .remove(0);
    let dir = tempfile::tempdir().unwrap();
    let d = start_remote_daemon(dir.path(), NO_BACKGROUND, &dir.path().join("none.json"), "");
    let mut c = d.client().await;

    // A TOC digest label that does not match the layer: not mounted.
    let forged = format!("sha256:{}", hex_sha(b"another TOC"));
    let mounts = prepare_layer(&mut c, "forged", &reference, &digest, Some(&forged))
        .await
        .unwrap();
    assert!(!mounts.is_empty(), "falls back to a local snapshot");
    let log = d.log_text();
    let line = log
        .lines()
        .find(|l| l.contains("remote-snapshot-prepared=\"false\""))
        .unwrap_or_else(|| panic!("{log}"));
    assert!(line.contains("TOC digest mismatch"), "{line}");

    // The second chunk changed in the registry's storage (the gzip member
    // stays valid): reads of it fail with EIO, never return its bytes.
    let stored = registry.blob_path(digest.as_str());
    let mut blob = std::fs::read(&stored).unwrap();
    assert_eq!(blob, layer.blob);
    let member = chunk_member(&blob, "big.bin", 64 << 10);
    corrupt_chunk(&mut blob, member, &data[64 << 10..128 << 10]);
    std::fs::write(&stored, &blob).unwrap();
    assert_remote(&mut c, "tampered", &reference, &layer, &digest).await;
    let fs = layer_dir(&mut c, "tampered").await;
    let file = std::fs::File::open(fs.join("big.bin")).unwrap();
    let mut buf = vec![0u8; 4096];
    use std::os::unix::fs::FileExt;
    let n = file.read_at(&mut buf, 0).unwrap();
    assert_eq!(&buf[..n], &data[..n], "an intact chunk reads");
    let err = file.read_at(&mut buf, 64 << 10).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    let err = std::fs::read(fs.join("big.bin")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    let log = d.log_text();
    assert!(log.contains("digest mismatch"), "{log}");
    d.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fuse_mounts_are_read_only_nosuid_nodev_and_owned_by_root() {
    let registry = TestRegistry::start().await;
    let reference = registry.reference("sec/mount");
    // A setuid-root binary: nosuid on the layer must not stop it inside a
    // container (the overlay mount decides there).
    let id = std::fs::read("/usr/bin/id").unwrap();
    let layer = estargz_layer(&[("id", 0o4755, &id), ("file", 0o644, b"data")], 64 << 10);
    let digest = push_image(&reference, std::slice::from_ref(&layer))
        .await
        .remove(0);
    let dir = tempfile::tempdir().unwrap();
    let d = start_remote_daemon(dir.path(), NO_BACKGROUND, &dir.path().join("none.json"), "");
    let mut c = d.client().await;
    assert_remote(&mut c, "layer", &reference, &layer, &digest).await;
    let fs = layer_dir(&mut c, "layer").await;

    let m = mount_table()
        .into_iter()
        .rev()
        .find(|m| m.mountpoint == fs)
        .unwrap();
    assert!(m.fstype == "fuse" || m.fstype == "fuse.rstargz", "{m:?}");
    assert_eq!(m.source, "rstargz", "{m:?}");
    for opt in ["ro", "nosuid", "nodev"] {
        assert!(m.options.iter().any(|o| o == opt), "{opt} missing: {m:?}");
    }
    for opt in ["user_id=0", "group_id=0", "default_permissions"] {
        assert!(
            m.super_options.iter().any(|o| o == opt),
            "{opt} missing: {m:?}"
        );
    }
    let root = std::fs::metadata(&fs).unwrap();
    assert_eq!((root.uid(), root.gid()), (0, 0));

    let erofs = |r: std::io::Result<()>, what: &str| {
        let e = r.expect_err(what);
        assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{what}: {e}");
    };
    erofs(std::fs::write(fs.join("new"), b"x"), "create");
    erofs(
        std::fs::OpenOptions::new()
            .write(true)
            .open(fs.join("file"))
            .map(drop),
        "open for writing",
    );
    erofs(std::fs::create_dir(fs.join("dir")), "mkdir");
    erofs(std::fs::remove_file(fs.join("file")), "unlink");
    erofs(
        std::fs::set_permissions(fs.join("file"), std::fs::Permissions::from_mode(0o777)),
        "chmod",
    );

    // As nobody: the setuid bit does nothing on the layer itself, and works
    // through a container's overlay.
    let euid = |bin: &Path| {
        let out = std::process::Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(bin)
            .arg("-u")
            .output()
            .expect("setpriv (util-linux)");
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    assert_eq!(euid(&fs.join("id")), "65534", "nosuid on the layer mount");
    let mounts = prepare(&mut c, "container", "layer", &[]).await.unwrap();
    let merged = dir.path().join("merged");
    std::fs::create_dir(&merged).unwrap();
    let o = &mounts[0];
    nix::mount::mount(
        Some(o.source.as_str()),
        &merged,
        Some(o.r#type.as_str()),
        nix::mount::MsFlags::empty(),
        Some(o.options.join(",").as_str()),
    )
    .unwrap();
    let in_container = euid(&merged.join("id"));
    nix::mount::umount(&merged).unwrap();
    assert_eq!(in_container, "0", "setuid works in the container");
    d.stop();
}
