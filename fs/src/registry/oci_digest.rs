//! OCI content digests (`algorithm:encoded`) as they appear on the wire
//! (labels, references, manifests, URLs), validated on construction so that
//! a digest can be pasted into a URL path without escaping.
//!
//! Not the content digest of the core: chunks, TOCs, caches and the layer
//! reader use the fixed-size sha256 [`crate::estargz::Digest`]. An
//! [`OciDigest`] may name any algorithm; the registry's users convert at the
//! edge (`From<estargz::Digest>` one way, `estargz::Digest::parse` of
//! [`OciDigest::as_str`] the other).

use std::fmt;

use super::error::{RegistryError, Result};
use crate::estargz::Digest;

/// A validated OCI digest such as `sha256:<64 hex>`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OciDigest(String);

impl OciDigest {
    /// Parses and validates a digest string.
    pub fn parse(s: &str) -> Result<Self> {
        let invalid = || RegistryError::InvalidDigest {
            digest: s.chars().take(200).collect(),
        };
        let (alg, enc) = s.split_once(':').ok_or_else(invalid)?;
        let alg_ok = !alg.is_empty()
            && alg.split(['+', '.', '_', '-']).all(|c| {
                !c.is_empty()
                    && c.bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
            });
        let enc_ok = !enc.is_empty()
            && enc
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'=' | b'_' | b'-'));
        if !alg_ok || !enc_ok {
            return Err(invalid());
        }
        let hex_len = match alg {
            "sha256" => Some(64),
            "sha512" => Some(128),
            _ => None,
        };
        if let Some(len) = hex_len
            && (enc.len() != len
                || !enc
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
        {
            return Err(invalid());
        }
        Ok(Self(s.to_string()))
    }

    /// The sha256 digest of `data`.
    pub fn sha256_of(data: &[u8]) -> Self {
        Self::from(Digest::of(data))
    }

    /// The full `algorithm:encoded` string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<Digest> for OciDigest {
    /// `sha256:<lowercase hex>`.
    fn from(digest: Digest) -> Self {
        Self(digest.to_string())
    }
}

impl fmt::Display for OciDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for OciDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "OciDigest({})", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_sha256_and_rejects_junk() {
        let good = format!("sha256:{}", "a".repeat(64));
        assert_eq!(
            OciDigest::parse(&good).map(|d| d.to_string()).ok(),
            Some(good)
        );
        for bad in [
            "",
            "sha256",
            "sha256:",
            "sha256:abc",
            &format!("sha256:{}", "A".repeat(64)),
            &format!("sha256:{}/../x", "a".repeat(64)),
            "SHA256:00",
            "sha256:a b",
        ] {
            assert!(OciDigest::parse(bad).is_err(), "{bad:?} accepted");
        }
        assert!(OciDigest::parse("blake3:abcdef").is_ok());
    }

    #[test]
    fn converts_from_the_core_digest() {
        let core = Digest::of(b"x");
        let oci = OciDigest::from(core);
        assert_eq!(oci.as_str(), core.to_string());
        assert_eq!(OciDigest::parse(oci.as_str()).ok(), Some(oci.clone()));
        assert_eq!(Digest::parse(oci.as_str()).ok(), Some(core));
    }

    #[test]
    fn sha256_of_matches_known_value() {
        assert_eq!(
            OciDigest::sha256_of(b"").as_str(),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
