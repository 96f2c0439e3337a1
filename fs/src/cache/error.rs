//! The error of opening the on-disk stores ([`super::DiskCache`],
//! [`super::FileStore`] and the [`super::ContentDir`] under both).

use std::io;
use std::path::PathBuf;

/// Errors opening a disk cache.
#[derive(Debug, thiserror::Error)]
pub enum DiskCacheError {
    /// A cache directory could not be created or scanned.
    #[error("disk cache at {path}: {source}")]
    Io {
        /// The directory or file involved.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
}
