//! Start-up clean-up of remote layers. FUSE mounts left under the root by a
//! daemon that died are aborted and detached, so the layers can be mounted
//! again, unless an fd holder still keeps their connection: those are
//! taken over live (see [`super::live`]) and left alone here. The layers
//! themselves are then mounted again by the core's restore (through the
//! [`LayerResolver`](super::resolver::LayerResolver), from their saved
//! state), and only after that is the saved state of layers nobody uses
//! pruned.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use rstargz_fs::fuse::mountinfo::{self, MountEntry};
use rstargz_snapshotter::snapshot::Labels;

use super::decline::source_of;
use super::persist::LayerStore;

/// The source (fsname) of our FUSE mounts; the type is `fuse`, or
/// `fuse.rstargz` where the kernel records the subtype.
const FUSE_SOURCE: &str = "rstargz";

/// Mounts under `root` of FUSE filesystems served by rstargz, from a mount
/// table (in its order). Never a `stat`: a mount nobody serves would hang
/// the caller.
pub fn our_mounts(table: Vec<MountEntry>, root: &Path) -> Vec<MountEntry> {
    table
        .into_iter()
        .filter(|m| (m.fstype == "fuse" || m.fstype == "fuse.rstargz") && m.source == FUSE_SOURCE)
        .filter(|m| m.mountpoint.starts_with(root))
        .collect()
}

/// [`our_mounts`], deepest first (the order to detach them in).
pub fn stale_mounts(table: Vec<MountEntry>, root: &Path) -> Vec<MountEntry> {
    let mut found = our_mounts(table, root);
    found.sort_by_key(|m| std::cmp::Reverse(m.mountpoint.components().count()));
    found
}

/// The mounts of [`stale_mounts`] to detach: all but those in `keep`.
pub fn to_detach(table: Vec<MountEntry>, root: &Path, keep: &[PathBuf]) -> Vec<MountEntry> {
    stale_mounts(table, root)
        .into_iter()
        .filter(|m| !keep.contains(&m.mountpoint))
        .collect()
}

/// The devices of `detached` whose connections may be aborted: those no
/// kept mount of `table` under `root` shares (aborting the shared session's
/// connection would fail every layer, kept ones included).
pub fn devices_to_abort(
    table: Vec<MountEntry>,
    root: &Path,
    keep: &[PathBuf],
    detached: &[MountEntry],
) -> HashSet<u64> {
    let kept: HashSet<u64> = our_mounts(table, root)
        .into_iter()
        .filter(|m| keep.contains(&m.mountpoint))
        .map(|m| m.dev)
        .collect();
    detached
        .iter()
        .map(|m| m.dev)
        .filter(|d| !kept.contains(d))
        .collect()
}

/// The saved layer states to delete: those of no snapshot in `in_use` and
/// of no mount (`mounted`: the mounts' state directories).
pub fn states_to_prune(
    store: &LayerStore,
    saved: Vec<PathBuf>,
    in_use: &[Labels],
    mounted: Vec<PathBuf>,
) -> Vec<PathBuf> {
    let mut keep: HashSet<PathBuf> = in_use
        .iter()
        .filter_map(|labels| source_of(labels).ok())
        .map(|source| store.state_dir(&source.layer.digest))
        .collect();
    keep.extend(mounted);
    saved.into_iter().filter(|s| !keep.contains(s)).collect()
}

/// Deletes the saved state of every layer [`states_to_prune`] names.
pub async fn prune_states(store: &LayerStore, in_use: &[Labels], mounted: Vec<PathBuf>) {
    let saved = store.saved_states().await;
    for path in states_to_prune(store, saved, in_use, mounted) {
        match store.remove(&path).await {
            Ok(()) => tracing::info!(dir = %path.display(), "deleted state of an unused layer"),
            Err(e) => {
                tracing::warn!(dir = %path.display(), error = %e, "cannot delete layer state")
            }
        }
    }
}

/// Aborts and lazily detaches every rstargz FUSE mount under `root` except
/// those in `keep` (held connections this daemon takes over: the session's
/// mount and its layers' bind mounts); returns how many were detached.
/// Connections a kept mount shares are not aborted. Aborting first matters: a killed daemon whose thread
/// waited on its own mount cannot exit until its connection is aborted, and
/// until then the mount hangs whoever touches it instead of failing.
/// Failures are logged: a mount that stays blocks only its own layer.
pub fn detach_stale_mounts(root: &Path, keep: &[PathBuf]) -> usize {
    let table = match mountinfo::read() {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read mountinfo; stale mounts stay");
            return 0;
        }
    };
    let mut detached = 0;
    let stale = to_detach(table.clone(), root, keep);
    for dev in devices_to_abort(table, root, keep, &stale) {
        if let Err(e) = mountinfo::abort_connection(dev) {
            tracing::warn!(dev, error = %e, "cannot abort stale FUSE connection");
        }
    }
    for m in stale {
        let path = &m.mountpoint;
        match nix::mount::umount2(path, nix::mount::MntFlags::MNT_DETACH) {
            Ok(()) => {
                tracing::info!(mountpoint = %path.display(), "detached stale FUSE mount");
                detached += 1;
            }
            Err(e) => {
                tracing::warn!(mountpoint = %path.display(), error = %e, "cannot detach stale mount")
            }
        }
    }
    detached
}

#[cfg(test)]
#[path = "restore_tests.rs"]
mod tests;
