//! On-disk layout under the snapshotter root, shared by every local
//! backend: `metadata.db`, `snapshots/<id>` (one directory per snapshot),
//! `snapshots/new-*` (being created) and `snapshots/rm-*` (being deleted).

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use crate::model::{Context, Result};

/// Paths under the snapshotter root.
#[derive(Debug, Clone)]
pub struct Layout {
    root: PathBuf,
    snapshots: PathBuf,
}

/// Name prefix of a directory being created (not yet owned by any row).
pub const NEW_PREFIX: &str = "new-";
/// Name prefix of a directory whose snapshot was removed.
pub const REMOVED_PREFIX: &str = "rm-";

impl Layout {
    /// Layout under `root`.
    pub fn new(root: &Path) -> Layout {
        Layout {
            root: root.to_path_buf(),
            snapshots: root.join("snapshots"),
        }
    }

    /// The snapshotter root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The directory holding every snapshot directory.
    pub fn snapshots_dir(&self) -> &Path {
        &self.snapshots
    }

    /// `<root>/snapshots/<id>`.
    pub fn snapshot_dir(&self, id: i64) -> PathBuf {
        self.snapshots.join(id.to_string())
    }

    /// Where a removed snapshot's directory waits for deletion.
    pub fn removed_dir(&self, id: i64) -> PathBuf {
        self.snapshots.join(format!("{REMOVED_PREFIX}{id}"))
    }

    /// The overlayfs backend's layer dir (upper dir for Active snapshots),
    /// also where remote layers are mounted.
    pub fn fs_dir(&self, id: i64) -> PathBuf {
        self.snapshot_dir(id).join("fs")
    }

    /// The overlayfs backend's work dir of an Active snapshot.
    pub fn work_dir(&self, id: i64) -> PathBuf {
        self.snapshot_dir(id).join("work")
    }
}

/// Creates `path` with exactly `mode` (whatever the umask).
pub fn mkdir_mode(path: &Path, mode: u32) -> Result<()> {
    std::fs::DirBuilder::new()
        .mode(mode)
        .create(path)
        .and_then(|()| std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)))
        .context(|| format!("create {}", path.display()))
}

/// A suffix no other directory name of this or an earlier process has.
pub(super) fn unique_suffix() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!(
        "{}-{nanos}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// fsync a directory so renames inside it are durable.
pub(super) fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)
        .and_then(|f| f.sync_all())
        .context(|| format!("fsync {}", dir.display()))
}
