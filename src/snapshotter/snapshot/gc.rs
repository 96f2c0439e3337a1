//! Garbage collection of snapshot directories: start-up recovery and the
//! Cleanup RPC.
//!
//! Under the store's write lock (so no create or remove is half done), every
//! entry of `snapshots/` is classified:
//! - `<id>` owned by a row: kept;
//! - `<id>` not owned: orphan of a create that crashed before its commit;
//!   renamed to a unique `rm-orphan-*` name, then deleted;
//! - `rm-<id>` whose row still exists: a remove that crashed before its
//!   commit; renamed back to `<id>`;
//! - any other `rm-*` and every `new-*`: deleted.
//!
//! Deletion happens after the lock is released. A directory whose `fs` is
//! still a mount point after unmounting is never deleted.

use std::path::{Path, PathBuf};

use rstargz_fs::fuse::mountinfo::MountPoints;

use super::backend::LocalBackend;
use super::layout::{Layout, sync_dir, unique_suffix};
use super::layout::{NEW_PREFIX, REMOVED_PREFIX};
use crate::model::{Context, Error, Result};
use crate::remote_fs::RemoteFs;
use crate::store::Store;

/// Recovers after a crash: restores interrupted removes, deletes garbage,
/// and reports rows whose directory is missing.
pub(super) fn recover(store: &Store, layout: &Layout, backend: &dyn LocalBackend) -> Result<()> {
    let garbage = collect(store, layout)?;
    for dir in garbage {
        if let Err(e) = delete_now(&dir) {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot delete stale directory");
        }
    }
    let ids = store.read(|tx| tx.ids())?;
    let mounted = match MountPoints::read() {
        Ok(m) => m,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the mount table; not checking snapshot directories");
            return Ok(());
        }
    };
    for id in ids {
        // A mount there is a layer an fd holder keeps for this daemon to
        // take over: a stat on it would wait for the take-over, which
        // comes after this.
        let dir = backend.content_dir(layout, id);
        if !mounted.contains(&dir) && !dir.is_dir() {
            tracing::error!(id, "snapshot directory is missing");
        }
    }
    Ok(())
}

/// Classifies `snapshots/` and returns the directories to delete.
pub(super) fn collect(store: &Store, layout: &Layout) -> Result<Vec<PathBuf>> {
    let root = layout.snapshots_dir();
    store.write(|tx| {
        let ids = tx.ids()?;
        let mut garbage = Vec::new();
        let mut renamed = false;
        for entry in std::fs::read_dir(root).context(|| format!("read {}", root.display()))? {
            let entry = entry.context(|| format!("read {}", root.display()))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            if let Ok(id) = name.parse::<i64>() {
                if !ids.contains(&id) {
                    let to = root.join(format!("{REMOVED_PREFIX}orphan-{id}-{}", unique_suffix()));
                    std::fs::rename(&path, &to).context(|| format!("rename {}", path.display()))?;
                    renamed = true;
                    garbage.push(to);
                }
            } else if let Some(rest) = name.strip_prefix(REMOVED_PREFIX) {
                match rest.parse::<i64>() {
                    Ok(id) if ids.contains(&id) => {
                        let to = layout.snapshot_dir(id);
                        tracing::warn!(id, "restoring directory of an interrupted remove");
                        std::fs::rename(&path, &to)
                            .context(|| format!("rename {}", path.display()))?;
                        renamed = true;
                    }
                    _ => garbage.push(path),
                }
            } else if name.starts_with(NEW_PREFIX) {
                garbage.push(path);
            }
        }
        if renamed {
            sync_dir(root)?;
        }
        Ok(garbage)
    })
}

/// Deletes `dirs`, letting the remote filesystem unmount its layers first.
/// Failures are logged: the directories stay garbage for the next Cleanup.
pub(super) async fn delete_dirs(remote: &dyn RemoteFs, dirs: Vec<PathBuf>) {
    for dir in &dirs {
        let fs = dir.join("fs");
        if is_mount_point(&fs)
            && let Err(e) = remote.unmount(&fs).await
        {
            tracing::warn!(dir = %fs.display(), error = %e, "remote unmount failed");
        }
    }
    let result = super::run_blocking(move || {
        for dir in dirs {
            if let Err(e) = delete_now(&dir) {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot delete snapshot directory");
            }
        }
    })
    .await;
    if let Err(e) = result {
        tracing::error!(error = %e, "directory deletion task failed");
    }
}

/// Deletes one snapshot directory, unmounting a leftover mount on its `fs`.
pub(super) fn delete_now(dir: &Path) -> Result<()> {
    let fs = dir.join("fs");
    if is_mount_point(&fs) {
        let _ = nix::mount::umount2(&fs, nix::mount::MntFlags::MNT_DETACH);
        if is_mount_point(&fs) {
            return Err(Error::FailedPrecondition(format!(
                "{} is still mounted; not deleting",
                fs.display()
            )));
        }
    }
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).context(|| format!("delete {}", dir.display()))
        }
        _ => Ok(()),
    }
}

/// Whether something is mounted on `path` (from the mount table: a `stat`
/// on one of our own FUSE mounts could hang a kill of the daemon).
pub(super) fn is_mount_point(path: &Path) -> bool {
    rstargz_fs::fuse::mountinfo::is_mount_point(path)
}
