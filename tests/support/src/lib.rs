//! Test support shared by the workspace's tests (`publish = false`): a real
//! `docker-registry` per test ([`registry`]), the proxies in front of it
//! ([`proxy`]: faults for the tests, a shaped link for the benchmarks), the golden eStargz cases with checkers
//! ([`golden`]), process guards for the daemon ([`daemon`]), a scratch
//! containerd ([`containerd`]) with a CRI client ([`cri`]) and a scratch dockerd ([`docker`]) over one
//! process guard ([`process`]), host
//! checks ([`host`]) and small helpers. Test code: it panics on any setup
//! failure, and a missing prerequisite fails, never skips.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

pub mod containerd;
pub mod cri;
pub mod daemon;
pub mod docker;
pub mod golden;
pub mod host;
pub mod process;
pub mod proxy;
pub mod registry;

use std::path::Path;
use std::time::Duration;

use rstargz_fs::registry::{Backoff, OciDigest, Reference, Registry, RegistryConfig};

/// Deterministic pseudo-random bytes (xorshift), so tests need no RNG crate;
/// distinct seeds give distinct bytes.
pub fn test_blob(len: usize, seed: u64) -> Vec<u8> {
    // The splitmix64 finalizer is a bijection, so distinct seeds start from
    // distinct states (a plain `seed | 1` merged n and n|1); xorshift's one
    // fixed point, 0, is moved (one seed pair in 2^64 still meets).
    let mut x = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^= x >> 31;
    if x == 0 {
        x = 1;
    }
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// A registry config for tests: no ambient docker config, quick retries.
pub fn test_config(docker_config: &Path) -> RegistryConfig {
    RegistryConfig {
        docker_config: Some(docker_config.to_path_buf()),
        connect_timeout: Duration::from_secs(2),
        request_timeout: Duration::from_secs(10),
        fetch_timeout: Duration::from_secs(30),
        backoff: Backoff {
            min: Duration::from_millis(5),
            max: Duration::from_millis(50),
            max_retries: 2,
        },
        // Tests count requests: no duplicates of slow ones.
        hedge_after_min: None,
        ..RegistryConfig::default()
    }
}

/// A 127.0.0.1 port with nothing listening on it.
pub fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// Polls `cond` until it holds or `timeout` passes.
pub async fn wait_until_async(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Pushes `data` as a blob of `repo` on an auth-less `registry`.
pub async fn push_anonymously(
    registry: &registry::TestRegistry,
    repo: &str,
    data: &[u8],
) -> OciDigest {
    let dir = tempfile::tempdir().unwrap();
    let client = Registry::new(test_config(&dir.path().join("none.json"))).unwrap();
    let reference = Reference::parse(&registry.reference(repo)).unwrap();
    client
        .push_blob(&reference, bytes::Bytes::copy_from_slice(data))
        .await
        .unwrap()
}

/// One layer of a test image.
#[derive(Debug, Clone)]
pub struct TestLayer {
    /// The compressed blob.
    pub blob: Vec<u8>,
    /// sha256 of the uncompressed tar (`sha256:…`).
    pub diff_id: String,
    /// The `containerd.io/snapshot/stargz/toc.digest` annotation, if any.
    pub toc_digest: Option<String>,
}

impl TestLayer {
    /// The eStargz layer `opts` makes of the uncompressed `tar`, with its
    /// TOC digest annotation.
    pub fn estargz(tar: &[u8], opts: &rstargz_fs::estargz::WriterOptions) -> TestLayer {
        let mut blob = Vec::new();
        let made =
            rstargz_fs::estargz::convert(tar, &mut blob, opts).expect("convert the test layer");
        TestLayer {
            blob,
            diff_id: made.diff_id.to_string(),
            toc_digest: Some(made.toc_digest.to_string()),
        }
    }

    /// The golden blob of `case` in compression `comp` (see [`golden`]).
    pub fn golden(case: &str, comp: &str) -> TestLayer {
        let m = golden::meta(case, comp);
        TestLayer {
            blob: golden::blob(case, comp),
            diff_id: m.diff_id,
            toc_digest: Some(m.toc_digest),
        }
    }
}

/// Writes `dir/config.json`, a docker config with basic-auth credentials
/// for `host`, and returns its path.
pub fn docker_config(dir: &Path, host: &str, user: &str, password: &str) -> std::path::PathBuf {
    use base64::Engine as _;
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    let path = dir.join("config.json");
    std::fs::write(
        &path,
        format!(r#"{{"auths": {{"{host}": {{"auth": "{auth}"}}}}}}"#),
    )
    .unwrap();
    path
}

/// Pushes `layers` with a config and an OCI manifest as `reference` (on an
/// auth-less registry) and returns the layer digests, bottom first.
pub async fn push_image(reference: &str, layers: &[TestLayer]) -> Vec<OciDigest> {
    let dir = tempfile::tempdir().unwrap();
    push_image_with(reference, layers, &dir.path().join("none.json")).await
}

/// Like [`push_image`] with the credentials of `docker_config`.
pub async fn push_image_with(
    reference: &str,
    layers: &[TestLayer],
    docker_config: &Path,
) -> Vec<OciDigest> {
    let client = Registry::new(test_config(docker_config)).unwrap();
    push_image_via(&client, reference, layers).await
}

/// Like [`push_image`] through `client` (its credentials and hosts config,
/// e.g. a CA for a TLS registry).
pub async fn push_image_via(
    client: &Registry,
    reference: &str,
    layers: &[TestLayer],
) -> Vec<OciDigest> {
    let reference = Reference::parse(reference).unwrap();
    let mut descriptors = Vec::new();
    let mut digests = Vec::new();
    for layer in layers {
        let digest = client
            .push_blob(&reference, bytes::Bytes::copy_from_slice(&layer.blob))
            .await
            .unwrap();
        let mut annotations = serde_json::Map::new();
        if let Some(toc) = &layer.toc_digest {
            annotations.insert(
                rstargz_fs::registry::labels::TOC_DIGEST.into(),
                toc.clone().into(),
            );
        }
        descriptors.push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": digest.as_str(),
            "size": layer.blob.len(),
            "annotations": annotations,
        }));
        digests.push(digest);
    }
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": layers.iter().map(|l| l.diff_id.clone()).collect::<Vec<_>>()},
    }))
    .unwrap();
    let config_len = config.len();
    let config_digest = client
        .push_blob(&reference, bytes::Bytes::from(config))
        .await
        .unwrap();
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest.as_str(),
            "size": config_len,
        },
        "layers": descriptors,
    }))
    .unwrap();
    client
        .put_manifest(
            &reference,
            "application/vnd.oci.image.manifest.v1+json",
            bytes::Bytes::from(manifest),
        )
        .await
        .unwrap();
    digests
}

#[cfg(test)]
mod tests {
    #[test]
    fn distinct_seeds_give_distinct_data() {
        let blobs: Vec<Vec<u8>> = (0..64).map(|seed| super::test_blob(64, seed)).collect();
        for (i, a) in blobs.iter().enumerate() {
            for (j, b) in blobs.iter().enumerate().skip(i + 1) {
                assert_ne!(a, b, "seeds {i} and {j}");
            }
        }
        assert_eq!(super::test_blob(64, 7), blobs[7], "deterministic");
    }
}
