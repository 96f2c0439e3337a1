//! The snapshotter core: the local backend seam with its overlayfs
//! implementation, and the `Snapshotter` that ties the metadata store to the
//! snapshot directories. The model types are re-exported from
//! [`crate::model`], so callers name them from here. Nothing here knows
//! about gRPC.

pub mod backend;
pub mod gc;
pub mod layout;
pub mod mount;
pub mod overlay;
mod snapshotter;
pub mod usage;

pub use crate::model::{
    Context, Error, Info, Kind, Labels, MAX_KEY_BYTES, MAX_LABEL_BYTES, Mount, Result, Usage,
    validate_key, validate_labels,
};
pub use backend::{LocalBackend, NewSnapshot};
pub use layout::Layout;
pub use snapshotter::{Options, REMOTE_LABEL, Snapshotter, TARGET_REF_LABEL};

/// Runs short blocking work (a transaction, an fsync or two, directory
/// operations) on the blocking pool for an async caller.
pub(crate) async fn run_blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::internal("snapshotter task", e))
}

// Needs root (it bind-mounts): feature `system`, as in the integration tests.
#[cfg(all(test, feature = "system"))]
#[allow(clippy::unwrap_used)]
mod remote_tests;
