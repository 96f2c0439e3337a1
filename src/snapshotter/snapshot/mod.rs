//! The snapshotter core: containerd's snapshot model (types, errors), the
//! local backend seam with its overlayfs implementation, and the
//! `Snapshotter` that ties the metadata store to the snapshot directories.
//! Nothing here knows about gRPC.

pub mod backend;
mod error;
pub mod gc;
pub mod layout;
pub mod mount;
pub mod overlay;
mod snapshotter;
mod types;
pub mod usage;

pub use backend::{LocalBackend, NewSnapshot};
pub use error::{Context, Error, Result};
pub use layout::Layout;
pub use snapshotter::{Options, REMOTE_LABEL, Snapshotter, TARGET_REF_LABEL};
pub use types::{
    Info, Kind, Labels, MAX_KEY_BYTES, MAX_LABEL_BYTES, Mount, Usage, validate_key, validate_labels,
};

// Needs root (it bind-mounts): feature `system`, as in the integration tests.
#[cfg(all(test, feature = "system"))]
#[allow(clippy::unwrap_used)]
mod remote_tests;
