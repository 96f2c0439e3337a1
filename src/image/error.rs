//! Typed errors of image conversion; each carries the blob or file it is about.

use rstargz_fs::registry::RegistryError;

/// Result alias of the image module.
pub type Result<T, E = ImageError> = std::result::Result<T, E>;

/// Everything that can go wrong while reading, converting or writing an image.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// An image location (`oci:DIR[:TAG]` or a registry reference) is malformed.
    #[error("invalid image location {input:?}: {reason}")]
    InvalidLocation {
        /// The location as given.
        input: String,
        /// What is wrong.
        reason: String,
    },
    /// A registry request failed.
    #[error("{context}: {source}")]
    Registry {
        /// What we were doing.
        context: String,
        /// The registry error.
        #[source]
        source: RegistryError,
    },
    /// A local file operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What we were doing.
        context: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The eStargz writer rejected a layer.
    #[error("converting layer {digest}: {source}")]
    Layer {
        /// Source layer digest.
        digest: String,
        /// The writer's error.
        #[source]
        source: rstargz_fs::estargz::Error,
    },
    /// Content did not hash to the digest its descriptor names.
    #[error("{what}: digest mismatch (expected {expected}, got {actual})")]
    DigestMismatch {
        /// The blob.
        what: String,
        /// Digest from the descriptor.
        expected: String,
        /// Digest of the bytes read.
        actual: String,
    },
    /// Content length differs from the descriptor's size.
    #[error("{what}: size mismatch (expected {expected} bytes, got {actual})")]
    SizeMismatch {
        /// The blob.
        what: String,
        /// Size from the descriptor.
        expected: u64,
        /// Bytes read.
        actual: u64,
    },
    /// A descriptor has a media type we cannot handle.
    #[error("{what}: unsupported media type {media_type:?}")]
    UnsupportedMediaType {
        /// The descriptor (digest or role).
        what: String,
        /// Its media type.
        media_type: String,
    },
    /// A manifest, index or config is not the JSON it should be.
    #[error("{what}: {reason}")]
    InvalidDocument {
        /// The document (digest or role).
        what: String,
        /// What is wrong.
        reason: String,
    },
    /// An OCI image layout is missing or malformed.
    #[error("OCI layout {dir}: {reason}")]
    Layout {
        /// Layout directory.
        dir: String,
        /// What is wrong.
        reason: String,
    },
    /// A `--platform` value cannot be parsed.
    #[error("invalid platform {spec:?}: {reason}")]
    InvalidPlatform {
        /// The platform as given.
        spec: String,
        /// What is wrong.
        reason: String,
    },
    /// A worker task died.
    #[error("conversion task failed: {0}")]
    Task(String),
}

impl ImageError {
    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let context = context.into();
        move |source| ImageError::Io { context, source }
    }

    pub(crate) fn registry(context: impl Into<String>) -> impl FnOnce(RegistryError) -> Self {
        let context = context.into();
        move |source| ImageError::Registry { context, source }
    }

    pub(crate) fn document(what: impl Into<String>, reason: impl Into<String>) -> Self {
        ImageError::InvalidDocument {
            what: what.into(),
            reason: reason.into(),
        }
    }
}
