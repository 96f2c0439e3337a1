//! Endpoint selection with containerd's hosts.toml and our mirror config:
//! a dead mirror is skipped for the next one, and finally the origin.
#![allow(clippy::unwrap_used, clippy::single_range_in_vec_init)]

use crate::common;

use bytes::Bytes;
use common::proxy::{Fault, FaultProxy};
use common::registry::TestRegistry;
use common::{closed_port, push_anonymously, test_blob, test_config};
use rstargz_fs::registry::{MirrorConfig, OciDigest, Purpose, Reference, Registry};

#[tokio::test]
async fn hosts_toml_dead_mirror_falls_back_to_next_mirror() {
    let reg = TestRegistry::start().await;
    let proxy = FaultProxy::start(reg.addr).await;
    let dir = tempfile::tempdir().unwrap();
    let blob = test_blob(70_000, 11);
    let reference = Reference::parse(&reg.reference("mirrored/blob")).unwrap();
    let digest = push_anonymously(&reg, "mirrored/blob", &blob).await;

    // The registry name is the origin; its hosts.toml lists a dead mirror,
    // then the proxy as a working mirror, then the origin as server.
    let certs = dir.path().join("certs.d");
    let host_dir = certs.join(reg.host().replace(':', "_") + "_");
    std::fs::create_dir_all(&host_dir).unwrap();
    std::fs::write(
        host_dir.join("hosts.toml"),
        format!(
            "server = \"http://{origin}\"\n\n[host.\"http://127.0.0.1:{dead}\"]\n  capabilities = [\"pull\", \"resolve\"]\n\n[host.\"http://{mirror}\"]\n  capabilities = [\"pull\"]\n",
            origin = reg.host(),
            dead = closed_port(),
            mirror = proxy.host()
        ),
    )
    .unwrap();
    let mut config = test_config(&dir.path().join("none.json"));
    config.hosts.certs_dir = Some(certs);
    let registry = Registry::new(config).unwrap();
    let fetcher = registry.open_blob(&reference, &digest, None).await.unwrap();
    assert_eq!(fetcher.current_host().unwrap().host, proxy.host());
    let got = fetcher
        .fetch_ranges(&[1..11], Purpose::OnDemand)
        .await
        .unwrap();
    assert_eq!(&got[0].1[..], &blob[1..11]);
    let seen = proxy.seen();
    assert!(!seen.is_empty());
    let ns = format!("?ns={}", reg.host());
    assert!(
        seen.iter().all(|s| s.path.ends_with(&ns)),
        "mirror requests carry ?ns=: {seen:?}"
    );
}

#[tokio::test]
async fn dead_configured_mirror_falls_back_to_origin() {
    let reg = TestRegistry::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(&dir.path().join("none.json"));
    config.hosts.mirrors.insert(
        reg.host(),
        vec![MirrorConfig {
            host: format!("127.0.0.1:{}", closed_port()),
            insecure: true,
            ..Default::default()
        }],
    );
    let registry = Registry::new(config).unwrap();
    let reference = Reference::parse(&reg.reference("origin/blob")).unwrap();
    let blob = test_blob(5000, 5);
    let digest = registry
        .push_blob(&reference, Bytes::from(blob.clone()))
        .await
        .unwrap();
    let fetcher = registry
        .open_blob(&reference, &digest, Some(5000))
        .await
        .unwrap();
    assert_eq!(fetcher.current_host().unwrap().host, reg.host());
    assert!(!fetcher.current_host().unwrap().is_mirror);
    let got = fetcher
        .fetch_ranges(&[4000..5000], Purpose::OnDemand)
        .await
        .unwrap();
    assert_eq!(&got[0].1[..], &blob[4000..5000]);

    // With only dead endpoints the error names the failure, typed.
    let dead_origin = format!("127.0.0.1:{}", closed_port());
    let mut config = test_config(&dir.path().join("none.json"));
    config.hosts.mirrors.insert(
        dead_origin.clone(),
        vec![MirrorConfig {
            host: format!("127.0.0.1:{}", closed_port()),
            insecure: true,
            ..Default::default()
        }],
    );
    let registry = Registry::new(config).unwrap();
    let reference = Reference::parse(&format!("{dead_origin}/x/y")).unwrap();
    let err = registry
        .open_blob(&reference, &digest, None)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            rstargz_fs::registry::RegistryError::AllHostsFailed { tried: 2, .. }
        ),
        "{err}"
    );
}

/// The Go reference's per-mirror `header` and `request_timeout_sec`: the
/// headers reach the mirror with every request, and a mirror that does not
/// answer is given up after its own timeout, not the blob fetch timeout.
#[tokio::test]
async fn configured_mirror_gets_its_headers_and_its_own_timeout() {
    let reg = TestRegistry::start().await;
    let proxy = FaultProxy::start(reg.addr).await;
    let dir = tempfile::tempdir().unwrap();
    let blob = test_blob(20_000, 13);
    let reference = Reference::parse(&reg.reference("headers/blob")).unwrap();
    let digest = push_anonymously(&reg, "headers/blob", &blob).await;
    let mirror: MirrorConfig = toml::from_str(&format!(
        "host = \"{}\"\ninsecure = true\nrequest_timeout_sec = 1\n\
         header = {{ x-mirror-token = \"t0k\", x-mirror-list = [\"a\", \"b\"] }}\n",
        proxy.host()
    ))
    .unwrap();
    let mut config = test_config(&dir.path().join("none.json"));
    config.fetch_timeout = std::time::Duration::from_secs(120);
    config.hosts.mirrors.insert(reg.host(), vec![mirror]);
    let registry = Registry::new(config).unwrap();

    let fetcher = registry.open_blob(&reference, &digest, None).await.unwrap();
    let got = fetcher
        .fetch_ranges(&[100..200], Purpose::OnDemand)
        .await
        .unwrap();
    assert_eq!(&got[0].1[..], &blob[100..200]);
    let seen = proxy.seen();
    assert!(!seen.is_empty());
    for s in &seen {
        assert_eq!(s.header("x-mirror-token"), ["t0k"], "{s:?}");
        assert_eq!(s.header("x-mirror-list"), ["a", "b"], "{s:?}");
    }

    // The mirror stops answering: its 1 s timeout (three attempts), not the
    // two-minute fetch timeout, sends the read on to the origin.
    proxy.set_fault(Fault::Stall);
    let started = std::time::Instant::now();
    let got = fetcher
        .fetch_ranges(&[5000..6000], Purpose::OnDemand)
        .await
        .unwrap();
    assert_eq!(&got[0].1[..], &blob[5000..6000]);
    assert!(
        started.elapsed() < std::time::Duration::from_secs(60),
        "gave up on the mirror after {:?}",
        started.elapsed()
    );
    assert!(!fetcher.current_host().unwrap().is_mirror);
}

fn write_hosts_toml(certs: &std::path::Path, registry: &str, body: &str) {
    let dir = certs.join(registry);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("hosts.toml"), body).unwrap();
}

#[tokio::test]
async fn tls_is_verified_and_hosts_toml_ca_or_skip_verify_opt_in() {
    let reg = TestRegistry::start_tls().await;
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs.d");
    let none = dir.path().join("none.json");
    let with_hosts = |body: String| {
        write_hosts_toml(&certs, &reg.host(), &body);
        let mut config = test_config(&none);
        config.hosts.certs_dir = Some(certs.clone());
        Registry::new(config).unwrap()
    };
    let reference = Reference::parse(&reg.reference("tls/blob")).unwrap();
    let blob = test_blob(3000, 9);

    // A CA from hosts.toml makes the registry trusted.
    let trusted = with_hosts(format!(
        "server = \"https://{}\"\nca = \"{}\"\n",
        reg.host(),
        reg.ca_path().display()
    ));
    let digest = trusted
        .push_blob(&reference, Bytes::from(blob.clone()))
        .await
        .unwrap();
    let fetcher = trusted.open_blob(&reference, &digest, None).await.unwrap();
    let got = fetcher
        .fetch_ranges(&[100..200], Purpose::OnDemand)
        .await
        .unwrap();
    assert_eq!(&got[0].1[..], &blob[100..200]);

    // Without it, verification fails: no silent downgrade.
    let untrusted = with_hosts(format!("server = \"https://{}\"\n", reg.host()));
    let err = untrusted
        .open_blob(&reference, &digest, None)
        .await
        .unwrap_err();
    assert!(
        matches!(err, rstargz_fs::registry::RegistryError::Unreachable { .. }),
        "{err}"
    );

    // skip_verify is an explicit opt-out.
    let skipping = with_hosts(format!(
        "server = \"https://{}\"\nskip_verify = true\n",
        reg.host()
    ));
    let fetcher = skipping
        .open_blob(&reference, &digest, Some(3000))
        .await
        .unwrap();
    let got = fetcher
        .fetch_ranges(&[0..3000], Purpose::OnDemand)
        .await
        .unwrap();
    assert_eq!(&got[0].1[..], &blob[..]);
}

/// Reads 100 bytes of `digest` through `registry` and checks them.
async fn read_back(registry: &Registry, reference: &Reference, digest: &OciDigest, blob: &[u8]) {
    let fetcher = registry.open_blob(reference, digest, None).await.unwrap();
    let got = fetcher
        .fetch_ranges(&[100..200], Purpose::OnDemand)
        .await
        .unwrap();
    assert_eq!(&got[0].1[..], &blob[100..200]);
}

#[tokio::test]
async fn mutual_tls_client_certificate_from_hosts_toml() {
    let reg = TestRegistry::start_mtls().await;
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs.d");
    let host_dir = certs.join(reg.host());
    let none = dir.path().join("none.json");
    let registry = || {
        let mut config = test_config(&none);
        config.hosts.certs_dir = Some(certs.clone());
        Registry::new(config).unwrap()
    };
    let with_hosts = |body: String| {
        write_hosts_toml(&certs, &reg.host(), &body);
        registry()
    };
    let (cert, key) = (reg.client_cert_path(), reg.client_key_path());
    let trust = format!(
        "server = \"https://{}\"\nca = \"{}\"\n",
        reg.host(),
        reg.ca_path().display()
    );
    let reference = Reference::parse(&reg.reference("mtls/blob")).unwrap();
    let blob = test_blob(4000, 21);

    // The pair form: certificate and key in files of their own.
    let pair = with_hosts(format!(
        "{trust}client = [[\"{}\", \"{}\"]]\n",
        cert.display(),
        key.display()
    ));
    let digest = pair
        .push_blob(&reference, Bytes::from(blob.clone()))
        .await
        .unwrap();
    read_back(&pair, &reference, &digest, &blob).await;

    // One file holding both, named relative to the host's directory.
    let key_text = std::fs::read_to_string(&key).unwrap();
    let both = std::fs::read_to_string(&cert).unwrap() + &key_text;
    std::fs::write(host_dir.join("both.pem"), both).unwrap();
    read_back(
        &with_hosts(format!("{trust}client = \"both.pem\"\n")),
        &reference,
        &digest,
        &blob,
    )
    .await;

    // A Docker-style directory without hosts.toml: `*.crt` is trusted and
    // `*.cert` is presented with the `*.key` beside it (and HTTPS is used,
    // loopback though the registry is).
    std::fs::remove_file(host_dir.join("hosts.toml")).unwrap();
    std::fs::copy(reg.ca_path(), host_dir.join("ca.crt")).unwrap();
    std::fs::copy(&cert, host_dir.join("client.cert")).unwrap();
    std::fs::copy(&key, host_dir.join("client.key")).unwrap();
    read_back(&registry(), &reference, &digest, &blob).await;

    // Without a client certificate, or with one from another CA, the
    // registry refuses the connection and the error says why.
    let foreign = reg.foreign_client_cert_path();
    for (body, why) in [
        (trust.clone(), "requires a client certificate".to_string()),
        (
            format!(
                "{trust}client = [[\"{}\", \"{}\"]]\n",
                foreign.display(),
                foreign.with_extension("key").display()
            ),
            format!("refused the client certificate {}", foreign.display()),
        ),
    ] {
        let err = with_hosts(body)
            .open_blob(&reference, &digest, None)
            .await
            .unwrap_err();
        assert!(
            matches!(err, rstargz_fs::registry::RegistryError::Unreachable { .. })
                && err.to_string().contains(&why),
            "{why}: {err}"
        );
    }

    // A key that is not the certificate's: the error names the file and
    // shows none of the key.
    let err = with_hosts(format!(
        "{trust}client = [[\"{}\", \"{}\"]]\n",
        cert.display(),
        foreign.with_extension("key").display()
    ))
    .open_blob(&reference, &digest, None)
    .await
    .unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(err, rstargz_fs::registry::RegistryError::HostsConfig { .. })
            && text.contains(&cert.display().to_string()),
        "{text}"
    );
    let other_key = std::fs::read_to_string(foreign.with_extension("key")).unwrap();
    for line in key_text.lines().chain(other_key.lines()) {
        assert!(
            line.starts_with("-----") || !text.contains(line),
            "key material in {text}"
        );
    }
}
