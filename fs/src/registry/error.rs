//! Typed errors of the registry reader.
//!
//! Contract: no variant ever carries a credential, a token or a URL query
//! string (presigned URLs carry signatures there); hosts and repository names
//! are safe to show and are included so an operator can tell what failed.

use std::ops::Range;

/// Everything that can go wrong while resolving or reading from a registry.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The image reference could not be parsed.
    #[error("invalid image reference {reference:?}: {reason}")]
    InvalidReference {
        /// The reference as given.
        reference: String,
        /// Why it was rejected.
        reason: &'static str,
    },
    /// A digest string is not `algorithm:encoded`.
    #[error("invalid digest {digest:?}")]
    InvalidDigest {
        /// The digest as given.
        digest: String,
    },
    /// A required snapshot label is missing.
    #[error("snapshot label {label} is missing")]
    MissingLabel {
        /// The label key.
        label: &'static str,
    },
    /// A snapshot label has a value that cannot be used.
    #[error("snapshot label {label} is invalid: {reason}")]
    InvalidLabel {
        /// The label key.
        label: String,
        /// Why it was rejected.
        reason: String,
    },
    /// A hosts.toml or mirror configuration is invalid.
    #[error("registry host configuration {path}: {reason}")]
    HostsConfig {
        /// The file or config section.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// Credentials could not be loaded (the message never contains secrets).
    #[error("credentials for {host}: {reason}")]
    Credentials {
        /// Registry host the credentials were looked up for.
        host: String,
        /// What went wrong.
        reason: String,
    },
    /// The registry refused our credentials.
    #[error("unauthorized at {host} for repository {repository}")]
    Unauthorized {
        /// Registry host.
        host: String,
        /// Repository name.
        repository: String,
    },
    /// The registry asked for credentials and none are known for the host
    /// (neither in docker's config.json nor in the CRI keychain).
    #[error(
        "no credentials for {host} (repository {repository} needs them; none in docker config.json or the CRI keychain)"
    )]
    NoCredentials {
        /// Registry host.
        host: String,
        /// Repository name.
        repository: String,
    },
    /// The registry (or a redirect target) answered 403.
    #[error("forbidden at {host}{path}")]
    Forbidden {
        /// Host that answered.
        host: String,
        /// Path without query.
        path: String,
    },
    /// The blob or manifest does not exist.
    #[error("not found at {host}: {what}")]
    NotFound {
        /// Host that answered.
        host: String,
        /// What was looked up.
        what: String,
    },
    /// The requested range lies outside the blob.
    #[error("range {}..{} not satisfiable at {host} (blob size {size:?})", range.start, range.end)]
    RangeNotSatisfiable {
        /// Host that answered.
        host: String,
        /// Requested range.
        range: Range<u64>,
        /// Blob size if known.
        size: Option<u64>,
    },
    /// The server ignores Range even for a single range; reading on would
    /// download the whole blob, so we refuse.
    #[error("{host} ignores HTTP range requests (answered 200 with the whole blob)")]
    RangeUnsupported {
        /// Host that answered.
        host: String,
    },
    /// The host could not be reached (connect, TLS or I/O error).
    #[error("registry host {host} unreachable: {reason}")]
    Unreachable {
        /// Host.
        host: String,
        /// Underlying error, without URL.
        reason: String,
    },
    /// A request took longer than its timeout.
    #[error("request to {host} timed out")]
    Timeout {
        /// Host.
        host: String,
    },
    /// An HTTP status we do not handle specially.
    #[error("unexpected HTTP status {status} from {host}{path}")]
    Status {
        /// Host that answered.
        host: String,
        /// Path without query.
        path: String,
        /// Status code.
        status: u16,
    },
    /// The server's answer breaks the protocol (bad Content-Range, multipart…).
    #[error("protocol error from {host}: {reason}")]
    Protocol {
        /// Host that answered.
        host: String,
        /// What was wrong.
        reason: String,
    },
    /// Every configured host failed; the last error is attached.
    #[error("all {tried} registry hosts failed; last: {last}")]
    AllHostsFailed {
        /// Number of hosts tried.
        tried: usize,
        /// The last host's error.
        last: Box<RegistryError>,
    },
    /// Local I/O (config files, credential helpers).
    #[error("{context}: {source}")]
    Io {
        /// What we were doing.
        context: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// Result alias for the registry module.
pub type Result<T, E = RegistryError> = std::result::Result<T, E>;

impl RegistryError {
    /// Whether trying the next mirror (or origin) could help.
    pub fn is_host_failure(&self) -> bool {
        matches!(
            self,
            Self::Unreachable { .. }
                | Self::Timeout { .. }
                | Self::Status { .. }
                | Self::Protocol { .. }
                | Self::Forbidden { .. }
                | Self::Unauthorized { .. }
                | Self::NoCredentials { .. }
                | Self::NotFound { .. }
                | Self::RangeUnsupported { .. }
        )
    }
}

/// Strips the query and fragment of a URL for display (presigned URLs carry
/// signatures there).
pub(crate) fn redact_path(url: &reqwest::Url) -> String {
    url.path().to_string()
}

/// Describes a reqwest error without its URL (which may carry a signature).
pub(crate) fn describe_transport_error(err: reqwest::Error) -> String {
    let err = err.without_url();
    let mut msg = err.to_string();
    let mut source = std::error::Error::source(&err);
    while let Some(s) = source {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        source = s.source();
    }
    msg
}
