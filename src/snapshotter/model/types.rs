//! Domain types of the snapshotter, independent of gRPC: what a snapshot is
//! (`Info`, `Kind`), how much disk it uses (`Usage`) and how to mount it
//! (`Mount`).

use std::collections::BTreeMap;
use std::time::SystemTime;

use super::error::{Error, Result};

/// Snapshot labels: arbitrary key/value data.
pub type Labels = BTreeMap<String, String>;

/// containerd's limit on one label: key and value together.
pub const MAX_LABEL_BYTES: usize = 4096;

/// Longest snapshot key or name we accept (containerd keys are short: chain
/// ids and `extract-<nanos>-<rand> <chainID>`).
pub const MAX_KEY_BYTES: usize = 4096;

/// The kind of a snapshot; numeric values match the proto enum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Read-only view on a committed parent.
    View = 1,
    /// Writable snapshot that can be committed.
    Active = 2,
    /// Immutable snapshot that can be a parent.
    Committed = 3,
}

impl Kind {
    /// The name containerd's filters use (`kind==active`).
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::View => "view",
            Kind::Active => "active",
            Kind::Committed => "committed",
        }
    }

    /// Parses the numeric (proto/database) form.
    pub fn from_i64(v: i64) -> Option<Kind> {
        match v {
            1 => Some(Kind::View),
            2 => Some(Kind::Active),
            3 => Some(Kind::Committed),
            _ => None,
        }
    }
}

/// What containerd knows about a snapshot.
#[derive(Debug, Clone, PartialEq)]
pub struct Info {
    /// Key (active/view) or name (committed).
    pub name: String,
    /// Name of the committed parent, empty when there is none.
    pub parent: String,
    /// Kind of snapshot.
    pub kind: Kind,
    /// Creation time.
    pub created: SystemTime,
    /// Last update time.
    pub updated: SystemTime,
    /// User labels.
    pub labels: Labels,
}

/// Disk usage of one snapshot (its own layer, not its parents).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Bytes on disk (allocated blocks).
    pub size: i64,
    /// Distinct inodes.
    pub inodes: i64,
}

/// A mount in the form of the mount(2) call, as containerd expects it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// Filesystem type (`bind`, `overlay`, `lcow-layer`).
    pub kind: String,
    /// Mount source.
    pub source: String,
    /// fstab-style options.
    pub options: Vec<String>,
}

/// Rejects keys containerd could never have produced and that would break
/// storage: empty, NUL bytes, or absurdly long.
pub fn validate_key(what: &str, key: &str) -> Result<()> {
    if key.is_empty() {
        return Err(Error::InvalidArgument(format!("{what} must not be empty")));
    }
    if key.contains('\0') {
        return Err(Error::InvalidArgument(format!(
            "{what} {key:?} contains NUL"
        )));
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(Error::InvalidArgument(format!(
            "{what} is {} bytes long (max {MAX_KEY_BYTES})",
            key.len()
        )));
    }
    Ok(())
}

/// Applies containerd's label validation (`labels.Validate`).
pub fn validate_labels(labels: &Labels) -> Result<()> {
    for (k, v) in labels {
        if k.is_empty() {
            return Err(Error::InvalidArgument("label key must not be empty".into()));
        }
        if k.len() + v.len() > MAX_LABEL_BYTES {
            let shown: String = k.chars().take(64).collect();
            return Err(Error::InvalidArgument(format!(
                "label key and value of {shown:?} are {} bytes (max {MAX_LABEL_BYTES})",
                k.len() + v.len()
            )));
        }
        if k.contains('\0') || v.contains('\0') {
            return Err(Error::InvalidArgument(format!("label {k:?} contains NUL")));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_size_limit_is_key_plus_value() {
        let mut l = Labels::new();
        l.insert("k".into(), "v".repeat(MAX_LABEL_BYTES - 1));
        assert!(validate_labels(&l).is_ok());
        l.insert("k2".into(), "v".repeat(MAX_LABEL_BYTES - 1));
        assert!(matches!(
            validate_labels(&l),
            Err(Error::InvalidArgument(_))
        ));
    }

    #[test]
    fn keys_reject_empty_nul_and_huge() {
        assert!(validate_key("key", "").is_err());
        assert!(validate_key("key", "a\0b").is_err());
        assert!(validate_key("key", &"x".repeat(MAX_KEY_BYTES + 1)).is_err());
        assert!(validate_key("key", "extract-1-2 sha256:abc").is_ok());
    }
}
