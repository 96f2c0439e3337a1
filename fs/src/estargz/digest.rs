//! `sha256:<hex>` digests as fixed 32-byte values (compact in the index).

use std::fmt;

use sha2::{Digest as _, Sha256};

use super::error::{Error, Result};

/// A sha256 digest.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Digest(pub [u8; 32]);

impl Digest {
    /// Digest of `data`.
    pub fn of(data: &[u8]) -> Self {
        Digest(Sha256::digest(data).into())
    }

    /// Parses `sha256:<64 lowercase or uppercase hex>`.
    pub fn parse(s: &str) -> Result<Self> {
        let hex_part = s
            .strip_prefix("sha256:")
            .ok_or_else(|| Error::BadDigest(s.to_owned()))?;
        let mut out = [0u8; 32];
        hex::decode_to_slice(hex_part, &mut out).map_err(|_| Error::BadDigest(s.to_owned()))?;
        Ok(Digest(out))
    }

    /// Finalises a running hasher.
    pub fn from_hasher(h: Sha256) -> Self {
        Digest(h.finalize().into())
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", hex::encode(self.0))
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_rejects() {
        let d = Digest::of(b"x");
        assert_eq!(Digest::parse(&d.to_string()).ok(), Some(d));
        assert!(Digest::parse("sha512:00").is_err());
        assert!(Digest::parse("sha256:zz").is_err());
        assert!(Digest::parse("sha256:").is_err());
    }
}
