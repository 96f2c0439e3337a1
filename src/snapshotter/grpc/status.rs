//! The one mapping from snapshotter errors to gRPC status codes. containerd's
//! proxy client turns codes back into `errdefs` errors (`FromGRPC`), so each
//! `Error` variant maps to exactly the code containerd expects.

use tonic::{Code, Status};

use crate::snapshot::Error;

/// The gRPC code of `err`.
pub fn code(err: &Error) -> Code {
    match err {
        Error::NotFound(_) => Code::NotFound,
        Error::AlreadyExists(_) => Code::AlreadyExists,
        Error::FailedPrecondition(_) => Code::FailedPrecondition,
        Error::InvalidArgument(_) => Code::InvalidArgument,
        Error::Unavailable(_) => Code::Unavailable,
        Error::Internal { .. } => Code::Internal,
    }
}

/// Longest status message sent: messages quote request fields (keys,
/// filters), and a 1 MiB key must not come back as a 1 MiB trailer that
/// clients reject as an oversized header.
pub const MAX_MESSAGE_BYTES: usize = 1024;

/// Converts `err` into a status, logging internal failures.
pub fn to_status(err: Error) -> Status {
    let code = code(&err);
    if code == Code::Internal {
        tracing::error!(error = %err, "internal error");
    }
    let mut message = err.to_string();
    if message.len() > MAX_MESSAGE_BYTES {
        let mut cut = MAX_MESSAGE_BYTES;
        while !message.is_char_boundary(cut) {
            cut -= 1;
        }
        message.truncate(cut);
        message.push('…');
    }
    Status::new(code, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_variant_has_its_code() {
        let cases = [
            (Error::NotFound("x".into()), Code::NotFound),
            (Error::AlreadyExists("x".into()), Code::AlreadyExists),
            (
                Error::FailedPrecondition("x".into()),
                Code::FailedPrecondition,
            ),
            (Error::InvalidArgument("x".into()), Code::InvalidArgument),
            (Error::Unavailable("x".into()), Code::Unavailable),
            (Error::internal("x", "y"), Code::Internal),
        ];
        for (err, want) in cases {
            assert_eq!(to_status(err).code(), want);
        }
    }

    #[test]
    fn long_messages_are_cut_on_a_char_boundary() {
        let status = to_status(Error::InvalidArgument("é".repeat(1 << 20)));
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.message().len() <= MAX_MESSAGE_BYTES + "…".len());
        assert!(status.message().ends_with('…'));
    }
}
