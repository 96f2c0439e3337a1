//! The local backend: what a snapshot directory holds and how containerd
//! mounts it when the layer is not a remote one. The core (`Snapshotter`)
//! owns the metadata, the directory life cycle (create as `new-*`, rename to
//! `<id>`, remove as `rm-<id>`, garbage collection) and usage bookkeeping;
//! a backend only fills new directories and computes mounts.
//!
//! One backend is chosen when the snapshotter opens and never changes for a
//! root: the overlayfs fallback (`overlay::OverlayBackend`, the default) or
//! the LCOW fallback (`crate::lcow::LcowBackend`).

use std::path::{Path, PathBuf};

use super::layout::Layout;
use crate::model::{Context, Error, Result};
use crate::model::{Kind, Labels, Mount};
use crate::store::{Snapshot, Store, Tx};

/// What a backend gets to fill a snapshot's new directory.
#[derive(Debug)]
pub struct NewSnapshot<'a> {
    /// The store transaction creating the snapshot (for lookups of other
    /// snapshots; the row of this one is already inserted).
    pub tx: &'a Tx<'a>,
    /// The snapshotter's layout.
    pub layout: &'a Layout,
    /// The directory to fill; renamed to `layout.snapshot_dir(snap.id)` once
    /// filled, so nothing may point into it.
    pub dir: &'a Path,
    /// The new snapshot.
    pub snap: &'a Snapshot,
    /// Its key.
    pub key: &'a str,
    /// Its labels.
    pub labels: &'a Labels,
    /// Owner (uid, gid) of the parent's root directory when the parent is
    /// a mounted remote layer (known without a `stat` on the mount).
    pub parent_owner: Option<(u32, u32)>,
}

/// A local snapshot format. Every method but `before_create` runs under the
/// store's write lock or in a read transaction, so it must be quick.
pub trait LocalBackend: Send + Sync + std::fmt::Debug {
    /// Name for logs and for the root's backend marker (`overlayfs`, `lcow`).
    fn name(&self) -> &'static str;

    /// Start-up: checks the root can hold this backend's snapshots and
    /// removes this backend's own leftovers of a crash.
    fn recover(&self, layout: &Layout, store: &Store) -> Result<()>;

    /// Slow, idempotent preparation for a create, run before the store
    /// transaction without any lock held (e.g. making a cached disk image).
    fn before_create(
        &self,
        _layout: &Layout,
        _kind: Kind,
        _key: &str,
        _labels: &Labels,
    ) -> Result<()> {
        Ok(())
    }

    /// Fills the new, empty directory of an Active or View snapshot.
    fn populate(&self, new: &NewSnapshot<'_>) -> Result<()>;

    /// The mounts of an Active or View snapshot.
    fn mounts(&self, layout: &Layout, snap: &Snapshot) -> Vec<Mount>;

    /// The directory holding the snapshot's own content: Usage and Commit
    /// measure it, and start-up reports rows whose directory is missing.
    fn content_dir(&self, layout: &Layout, id: i64) -> PathBuf;

    /// Whether remote (lazily pulled) layers can be mounted on this
    /// backend's `fs` directories.
    fn supports_remote(&self) -> bool;
}

/// File in the root naming the backend its snapshots were made with.
pub const BACKEND_MARKER: &str = "local-backend";

/// Refuses a root whose snapshots were made by another backend (their
/// directories and mounts would not match); marks a root on first use.
/// A root from before the marker existed holds overlayfs snapshots.
pub fn check_backend_marker(
    layout: &Layout,
    backend: &dyn LocalBackend,
    store: &Store,
) -> Result<()> {
    let path = layout.root().join(BACKEND_MARKER);
    let recorded = match std::fs::read_to_string(&path) {
        Ok(text) => text.trim().to_string(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if store.read(|tx| tx.ids())?.is_empty() {
                backend.name().to_string()
            } else {
                "overlayfs".to_string()
            }
        }
        Err(e) => return Err(e).context(|| format!("read {}", path.display())),
    };
    if recorded != backend.name() {
        return Err(Error::FailedPrecondition(format!(
            "{} holds {recorded} snapshots; cannot serve it with the {} fallback",
            layout.root().display(),
            backend.name()
        )));
    }
    std::fs::write(&path, format!("{recorded}\n")).context(|| format!("write {}", path.display()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::time::SystemTime;

    use super::*;
    use crate::lcow::LcowBackend;
    use crate::snapshot::overlay::OverlayBackend;

    #[test]
    fn marker_is_written_once_and_guards_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path());
        let store = Store::open(&dir.path().join("metadata.db")).unwrap();
        check_backend_marker(&layout, &LcowBackend, &store).unwrap();
        let marker = dir.path().join(BACKEND_MARKER);
        assert_eq!(std::fs::read_to_string(&marker).unwrap(), "lcow\n");
        check_backend_marker(&layout, &LcowBackend, &store).unwrap();
        let overlay = OverlayBackend::default();
        assert!(matches!(
            check_backend_marker(&layout, &overlay, &store),
            Err(Error::FailedPrecondition(_))
        ));
    }

    #[test]
    fn unmarked_root_with_snapshots_is_overlayfs() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path());
        let store = Store::open(&dir.path().join("metadata.db")).unwrap();
        store
            .write(|tx| tx.create(Kind::Active, "k", "", &Labels::new(), SystemTime::now()))
            .unwrap();
        assert!(check_backend_marker(&layout, &LcowBackend, &store).is_err());
        assert!(!dir.path().join(BACKEND_MARKER).exists());
        check_backend_marker(&layout, &OverlayBackend::default(), &store).unwrap();
        let marker = std::fs::read_to_string(dir.path().join(BACKEND_MARKER)).unwrap();
        assert_eq!(marker, "overlayfs\n");
    }
}
