//! The seam for remote (lazily pulled) layers: a filesystem that can mount a
//! layer described by snapshot labels onto a snapshot's `fs` directory, like
//! the Go reference's `FileSystem` interface (Mount, Check, Unmount).
//!
//! The snapshotter calls `mount` from Prepare when containerd passes a
//! `containerd.io/snapshot.ref` label; `RemoteError::Declined` (or any
//! failure) makes it fall back to the local snapshot. The implementation
//! lives in the `rstargz-remote` crate; the core knows only this trait.

use std::future::Future;
use std::path::Path;
use std::pin::Pin;

use crate::model::Labels;

/// A boxed, sendable future (keeps `RemoteFs` object-safe).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Why a remote operation did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    /// The layer cannot be mounted remotely (not eStargz, no source labels,
    /// no remote support): the caller falls back to a local snapshot.
    #[error("remote mount declined: {0}")]
    Declined(String),
    /// The layer is (temporarily) unreachable.
    #[error("remote layer unavailable: {0}")]
    Unavailable(String),
    /// Anything else.
    #[error("{context}: {source}")]
    Failed {
        /// What was being done.
        context: String,
        /// The underlying failure.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// A filesystem that can mount a remote layer.
pub trait RemoteFs: Send + Sync + std::fmt::Debug {
    /// Mounts the layer described by `labels` at `mountpoint`.
    fn mount<'a>(
        &'a self,
        mountpoint: &'a Path,
        labels: &'a Labels,
    ) -> BoxFuture<'a, Result<(), RemoteError>>;

    /// Mounts again, at daemon start-up, the layer a remote snapshot had
    /// (before the socket serves): from what the daemon saved of it alone,
    /// with no registry request, and with its fetching held back until
    /// [`RemoteFs::serving`]. A layer that cannot be restored so is left
    /// to `check`, which mounts it once its registry answers.
    fn restore<'a>(
        &'a self,
        mountpoint: &'a Path,
        labels: &'a Labels,
    ) -> BoxFuture<'a, Result<(), RemoteError>> {
        self.mount(mountpoint, labels)
    }

    /// The daemon serves: restored layers may reach their registry now.
    fn serving(&self) {}

    /// Checks that the layer mounted at `mountpoint` is still usable
    /// (reachable registry, prefetch done).
    fn check<'a>(
        &'a self,
        mountpoint: &'a Path,
        labels: &'a Labels,
    ) -> BoxFuture<'a, Result<(), RemoteError>>;

    /// Whether the layer mounted at `mountpoint` may be taken as usable
    /// without waiting for [`Self::check`] (it passed one recently, or one
    /// is refreshed in the background): decided from memory, without
    /// blocking, so Mounts of a deep chain awaits nothing for such layers.
    fn checked_recently(&self, mountpoint: &Path) -> bool {
        let _ = mountpoint;
        false
    }

    /// Unmounts the layer at `mountpoint` and frees its resources.
    fn unmount<'a>(&'a self, mountpoint: &'a Path) -> BoxFuture<'a, Result<(), RemoteError>>;

    /// Owner (uid, gid) of the root directory of the layer mounted at
    /// `mountpoint`, from the layer itself: the daemon must never `stat`
    /// its own mount (see `rstargz_fs::fuse::mountinfo`).
    fn root_owner(&self, mountpoint: &Path) -> Option<(u32, u32)> {
        let _ = mountpoint;
        None
    }

    /// Deletes what is kept on disk for layers no snapshot uses any more;
    /// `in_use` holds the labels of every remote snapshot. Called at
    /// start-up, before serving: a crash between a Remove's commit and its
    /// unmount leaves such state behind.
    fn forget_unused<'a>(&'a self, in_use: &'a [Labels]) -> BoxFuture<'a, ()> {
        let _ = in_use;
        Box::pin(async {})
    }
}

/// No remote support: every mount is declined, so all snapshots are local.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoRemote;

impl RemoteFs for NoRemote {
    fn mount<'a>(&'a self, _: &'a Path, _: &'a Labels) -> BoxFuture<'a, Result<(), RemoteError>> {
        Box::pin(async {
            Err(RemoteError::Declined(
                "remote layers are not enabled".into(),
            ))
        })
    }

    fn check<'a>(&'a self, _: &'a Path, _: &'a Labels) -> BoxFuture<'a, Result<(), RemoteError>> {
        Box::pin(async { Ok(()) })
    }

    fn unmount<'a>(&'a self, _: &'a Path) -> BoxFuture<'a, Result<(), RemoteError>> {
        Box::pin(async { Ok(()) })
    }
}
