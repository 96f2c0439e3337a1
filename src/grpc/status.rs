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

/// Converts `err` into a status, logging internal failures.
pub fn to_status(err: Error) -> Status {
    let code = code(&err);
    if code == Code::Internal {
        tracing::error!(error = %err, "internal error");
    }
    Status::new(code, err.to_string())
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
}
