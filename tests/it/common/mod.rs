//! Shared helpers for integration tests: the real `rstargz serve` (the
//! process guard is `rstargz_test_support::daemon`) and its gRPC calls.

#![allow(dead_code, clippy::unwrap_used)]

// Helpers of the system tier only (see main.rs).
#[cfg(feature = "system")]
pub mod bench;
#[cfg(feature = "system")]
pub mod image;
#[cfg(feature = "system")]
pub mod remote;
#[cfg(feature = "system")]
pub mod vhdx_check;
#[cfg(feature = "system")]
pub mod workload;
#[cfg(feature = "system")]
pub use rstargz_test_support::{containerd, docker};

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use rstargz_proto::snapshots as pb;
pub use rstargz_test_support::daemon::{Client, Daemon, wait_for, wait_for_up_to};

/// The support crate finds the binary cargo built for these tests.
#[test]
fn daemon_binary_is_cargos() {
    assert_eq!(
        rstargz_test_support::daemon::rstargz_bin(),
        Path::new(env!("CARGO_BIN_EXE_rstargz"))
    );
}

/// Labels from pairs.
pub fn labels(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Prepare.
pub async fn prepare(
    c: &mut Client,
    key: &str,
    parent: &str,
    l: &[(&str, &str)],
) -> Result<Vec<rstargz_proto::types::Mount>, tonic::Status> {
    c.prepare(pb::PrepareSnapshotRequest {
        snapshotter: String::new(),
        key: key.into(),
        parent: parent.into(),
        labels: labels(l),
    })
    .await
    .map(|r| r.into_inner().mounts)
}

/// View.
pub async fn view(
    c: &mut Client,
    key: &str,
    parent: &str,
) -> Result<Vec<rstargz_proto::types::Mount>, tonic::Status> {
    c.view(pb::ViewSnapshotRequest {
        snapshotter: String::new(),
        key: key.into(),
        parent: parent.into(),
        labels: HashMap::new(),
    })
    .await
    .map(|r| r.into_inner().mounts)
}

/// Mounts.
pub async fn mounts(
    c: &mut Client,
    key: &str,
) -> Result<Vec<rstargz_proto::types::Mount>, tonic::Status> {
    c.mounts(pb::MountsRequest {
        snapshotter: String::new(),
        key: key.into(),
    })
    .await
    .map(|r| r.into_inner().mounts)
}

/// Usage as (size, inodes).
pub async fn usage(c: &mut Client, key: &str) -> Result<(i64, i64), tonic::Status> {
    c.usage(pb::UsageRequest {
        snapshotter: String::new(),
        key: key.into(),
    })
    .await
    .map(|r| (r.get_ref().size, r.get_ref().inodes))
}

/// Commit.
pub async fn commit(c: &mut Client, name: &str, key: &str) -> Result<(), tonic::Status> {
    c.commit(pb::CommitSnapshotRequest {
        snapshotter: String::new(),
        name: name.into(),
        key: key.into(),
        labels: HashMap::new(),
    })
    .await
    .map(|_| ())
}

/// Remove.
pub async fn remove(c: &mut Client, key: &str) -> Result<(), tonic::Status> {
    c.remove(pb::RemoveSnapshotRequest {
        snapshotter: String::new(),
        key: key.into(),
    })
    .await
    .map(|_| ())
}

/// Stat.
pub async fn stat(c: &mut Client, key: &str) -> Result<pb::Info, tonic::Status> {
    c.stat(pb::StatSnapshotRequest {
        snapshotter: String::new(),
        key: key.into(),
    })
    .await
    .map(|r| r.into_inner().info.unwrap())
}

/// List with filters; returns sorted names.
pub async fn list(c: &mut Client, filters: &[&str]) -> Result<Vec<String>, tonic::Status> {
    let mut stream = c
        .list(pb::ListSnapshotsRequest {
            snapshotter: String::new(),
            filters: filters.iter().map(|f| f.to_string()).collect(),
        })
        .await?
        .into_inner();
    let mut names = Vec::new();
    while let Some(msg) = stream.message().await? {
        names.extend(msg.info.into_iter().map(|i| i.name));
    }
    names.sort();
    Ok(names)
}

/// Cleanup.
pub async fn cleanup(c: &mut Client) -> Result<(), tonic::Status> {
    c.cleanup(pb::CleanupRequest {
        snapshotter: String::new(),
    })
    .await
    .map(|_| ())
}

/// The directory of a snapshot without parents: the bind mount's source is
/// `<root>/snapshots/<id>/fs`.
pub fn bind_source(mounts: &[rstargz_proto::types::Mount]) -> PathBuf {
    assert_eq!(mounts.len(), 1);
    assert_eq!(mounts[0].r#type, "bind");
    PathBuf::from(&mounts[0].source)
}

/// Sorted names of the entries of `dir`.
pub fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// Drops the file's pages, so the next read of it reaches the daemon again.
pub fn forget_pages(f: &std::fs::File) {
    let _ = nix::fcntl::posix_fadvise(
        std::os::fd::AsFd::as_fd(f),
        0,
        0,
        nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
    );
}
