//! Helpers of the tests of remote (lazily pulled) layers: eStargz layers
//! built in memory, the labels containerd's remote-snapshot handler sets, a
//! daemon configured for a test registry, mount inspection and the
//! daemon's metrics.

use std::path::{Path, PathBuf};

use rstargz_fs::estargz::WriterOptions;
use rstargz_fs::registry::labels::{STARGZ_DIGEST, STARGZ_REFERENCE, TOC_DIGEST};
use rstargz_proto::types::Mount;
use rstargz_snapshotter::snapshot::REMOTE_LABEL;
use rstargz_test_support::TestLayer;

use super::{Client, Daemon, prepare, stat};

/// A plain tar built in memory from `(path, mode, data)`; a path ending in
/// `/` is a directory.
pub fn tar_of(entries: &[(&str, u32, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, mode, data) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_mode(*mode);
        h.set_mtime(1_700_000_000);
        if path.ends_with('/') {
            h.set_entry_type(tar::EntryType::Directory);
            h.set_size(0);
        } else {
            h.set_size(data.len() as u64);
        }
        b.append_data(&mut h, path, *data).unwrap();
    }
    b.into_inner().unwrap()
}

/// An eStargz (gzip) layer of `entries` (see [`tar_of`]) with `chunk_size`
/// chunks and the TOC digest annotation.
pub fn estargz_layer(entries: &[(&str, u32, &[u8])], chunk_size: u64) -> TestLayer {
    let opts = WriterOptions {
        chunk_size,
        ..WriterOptions::default()
    };
    TestLayer::estargz(&tar_of(entries), &opts)
}

/// The labels containerd's remote-snapshot handler (ctr-remote) sets.
pub fn remote_labels<'a>(
    chain: &'a str,
    reference: &'a str,
    digest: &'a str,
    toc: Option<&'a str>,
) -> Vec<(&'a str, &'a str)> {
    let mut l = vec![
        ("containerd.io/snapshot.ref", chain),
        (STARGZ_REFERENCE, reference),
        (STARGZ_DIGEST, digest),
    ];
    if let Some(toc) = toc {
        l.push((TOC_DIGEST, toc));
    }
    l
}

/// Starts the daemon on `dir` with `top` as top-level config keys and
/// `extra` appended (sections), credentials only from `docker_config`, a
/// short request timeout and quick retries.
pub fn start_remote_daemon(dir: &Path, top: &str, docker_config: &Path, extra: &str) -> Daemon {
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        format!(
            "{top}[resolver]\ndocker_config = \"{}\"\nrequest_timeout_sec = 5\n\
             [blob]\nmax_retries = 1\nmin_wait_msec = 10\nmax_wait_msec = 50\ncheck_always = true\n{extra}",
            docker_config.display()
        ),
    )
    .unwrap();
    Daemon::start_with(dir, &["--config", config.to_str().unwrap()])
}

/// Prepares each layer as a remote snapshot `<prefix>chain-<i>` on the
/// previous one (each answers AlreadyExists and carries the remote label);
/// returns the topmost chain name.
pub async fn prepare_remote_chain_as(
    c: &mut Client,
    prefix: &str,
    reference: &str,
    layers: &[TestLayer],
    digests: &[rstargz_fs::registry::OciDigest],
) -> String {
    let mut parent = String::new();
    for (i, (layer, digest)) in layers.iter().zip(digests).enumerate() {
        let chain = format!("{prefix}chain-{i}");
        let labels = remote_labels(
            &chain,
            reference,
            digest.as_str(),
            layer.toc_digest.as_deref(),
        );
        let err = prepare(c, &format!("{prefix}extract-{i}"), &parent, &labels)
            .await
            .expect_err("a remote layer is committed by Prepare");
        assert_eq!(err.code(), tonic::Code::AlreadyExists, "{err:?}");
        let info = stat(c, &chain).await.unwrap();
        assert!(info.labels.contains_key(REMOTE_LABEL), "{info:?}");
        parent = chain;
    }
    parent
}

/// The lowerdirs of an overlay mount, uppermost first.
pub fn lowerdirs(mounts: &[Mount]) -> Vec<PathBuf> {
    assert_eq!(mounts.len(), 1, "{mounts:?}");
    mounts[0]
        .options
        .iter()
        .find_map(|o| o.strip_prefix("lowerdir="))
        .unwrap_or_else(|| panic!("no lowerdir in {mounts:?}"))
        .split(':')
        .map(PathBuf::from)
        .collect()
}

/// One line of `/proc/self/mountinfo`.
#[derive(Debug, Clone)]
pub struct MountInfo {
    /// Where it is mounted.
    pub mountpoint: PathBuf,
    /// Per-mount options (`ro,nosuid,nodev,…`).
    pub options: Vec<String>,
    /// Filesystem type (`fuse.rstargz`, `overlay`, …).
    pub fstype: String,
    /// Source (`rstargz` for our FUSE mounts).
    pub source: String,
    /// Superblock options (`user_id=0,…` for FUSE).
    pub super_options: Vec<String>,
    /// Device number of the superblock (`maj:min`).
    pub dev: String,
    /// The directory of the filesystem shown (`/<slot>` for a layer's bind
    /// mount of the FUSE session).
    pub root: PathBuf,
}

/// The mount table of this process (shared with the daemon it started).
pub fn mount_table() -> Vec<MountInfo> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    info.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let (_, tail) = line.split_once(" - ")?;
            let mut tail = tail.split(' ');
            Some(MountInfo {
                mountpoint: PathBuf::from(unescape(fields.get(4)?)),
                dev: fields.get(2)?.to_string(),
                root: PathBuf::from(unescape(fields.get(3)?)),
                options: fields.get(5)?.split(',').map(String::from).collect(),
                fstype: tail.next()?.to_string(),
                source: tail.next()?.to_string(),
                super_options: tail
                    .next()
                    .unwrap_or_default()
                    .split(',')
                    .map(String::from)
                    .collect(),
            })
        })
        .collect()
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(s: &str) -> String {
    let mut out = Vec::new();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b.get(i + 1..i + 4).map(std::str::from_utf8) {
            Some(Ok(oct)) if b[i] == b'\\' && u8::from_str_radix(oct, 8).is_ok() => {
                out.push(u8::from_str_radix(oct, 8).unwrap());
                i += 4;
            }
            _ => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    String::from_utf8(out).unwrap()
}

/// Whether something is mounted at `path`.
pub fn is_mountpoint(path: &Path) -> bool {
    mount_table().iter().any(|m| m.mountpoint == path)
}

/// hex sha256 of `data`.
pub fn hex_sha(data: &[u8]) -> String {
    use sha2::Digest as _;
    format!("{:x}", sha2::Sha256::digest(data))
}

/// `GET <path>` on the HTTP/1.1 server at `conn` (one request, the server
/// closes); returns status line, headers and body as one text.
fn http_get(mut conn: impl std::io::Read + std::io::Write, path: &str) -> String {
    conn.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .unwrap();
    let mut text = String::new();
    conn.read_to_string(&mut text).unwrap();
    text
}

/// `GET /metrics` over a plain TCP connection; asserts a 200.
pub fn scrape(addr: &str) -> String {
    let conn = std::net::TcpStream::connect(addr).unwrap();
    conn.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let text = http_get(conn, "/metrics");
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    text
}

/// `GET <path>` over the unix socket `socket` (the whole answer).
pub fn get_unix(socket: &Path, path: &str) -> String {
    let conn = std::os::unix::net::UnixStream::connect(socket).unwrap();
    conn.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    http_get(conn, path)
}

/// The value of the sample `series` (name with labels) in `text`.
pub fn sample(text: &str, series: &str) -> f64 {
    try_sample(text, series).unwrap_or_else(|| panic!("no {series} in {text}"))
}

/// The value of the sample `series` in `text`, if there is one.
pub fn try_sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| v.parse().unwrap())
}
