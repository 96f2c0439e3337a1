//! Shared test harness: the golden eStargz cases (`golden`), a real
//! `docker-registry` per test (`registry`) and a fault proxy that can
//! misbehave in front of it (`proxy`).
#![allow(dead_code, clippy::unwrap_used)]

pub mod golden;
pub mod proxy;
pub mod registry;

#[allow(unused_imports)] // not every test binary uses the golden cases
pub use golden::*;

use std::path::Path;
use std::time::Duration;

use rstargz_fs::registry::{Backoff, Digest, Reference, Registry, RegistryConfig};

/// Deterministic pseudo-random bytes (xorshift), so tests need no RNG crate.
pub fn test_blob(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
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
) -> Digest {
    let dir = tempfile::tempdir().unwrap();
    let client = Registry::new(test_config(&dir.path().join("none.json"))).unwrap();
    let reference = Reference::parse(&registry.reference(repo)).unwrap();
    client
        .push_blob(&reference, bytes::Bytes::copy_from_slice(data))
        .await
        .unwrap()
}
