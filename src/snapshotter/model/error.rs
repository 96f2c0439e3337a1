//! The snapshotter's error type. Each variant corresponds to exactly one
//! gRPC status code (mapped in `crate::grpc::status`), because containerd's
//! proxy client turns codes back into `errdefs` errors and the remote-snapshot
//! protocol depends on `AlreadyExists` and `NotFound` being exact.

/// Result alias for snapshotter operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A snapshotter failure, classified the way containerd's `errdefs` are.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The snapshot (or its parent) does not exist.
    #[error("{0}: not found")]
    NotFound(String),
    /// A snapshot with this key or name already exists.
    #[error("{0}: already exists")]
    AlreadyExists(String),
    /// The snapshot is in the wrong state for the operation.
    #[error("{0}: failed precondition")]
    FailedPrecondition(String),
    /// The request itself is malformed.
    #[error("{0}: invalid argument")]
    InvalidArgument(String),
    /// A dependency (e.g. a remote layer) is temporarily unusable.
    #[error("{0}: unavailable")]
    Unavailable(String),
    /// Anything else: I/O, database or a broken invariant.
    #[error("{context}: {source}")]
    Internal {
        /// What was being done.
        context: String,
        /// The underlying failure.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl Error {
    /// Wraps any error as `Internal` with a description of what failed.
    pub fn internal(
        context: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Error::Internal {
            context: context.into(),
            source: source.into(),
        }
    }
}

/// Adds context to I/O and database errors, turning them into `Internal`.
pub trait Context<T> {
    /// Attaches `context` (evaluated lazily) to the error.
    fn context<C: Into<String>>(self, context: impl FnOnce() -> C) -> Result<T>;
}

impl<T> Context<T> for std::result::Result<T, std::io::Error> {
    fn context<C: Into<String>>(self, context: impl FnOnce() -> C) -> Result<T> {
        self.map_err(|e| Error::internal(context(), e))
    }
}

impl<T> Context<T> for std::result::Result<T, rusqlite::Error> {
    fn context<C: Into<String>>(self, context: impl FnOnce() -> C) -> Result<T> {
        self.map_err(|e| Error::internal(context(), e))
    }
}
