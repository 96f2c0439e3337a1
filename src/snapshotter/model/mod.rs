//! containerd's snapshot model, shared by the metadata store, the backends
//! and the remote-layer seam: what a snapshot is, how to mount it, and the
//! errors every snapshot operation can answer. It depends on nothing else in
//! the crate, so each of those can depend on it.

mod error;
mod types;

pub use error::{Context, Error, Result};
pub use types::{
    Info, Kind, Labels, MAX_KEY_BYTES, MAX_LABEL_BYTES, Mount, Usage, validate_key, validate_labels,
};
