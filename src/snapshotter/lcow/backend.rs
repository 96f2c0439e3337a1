//! The LCOW local backend: snapshots in the shape containerd's
//! `windows-lcow` snapshotter gives hcsshim.
//!
//! - A snapshot is the bare directory `snapshots/<id>` (an unpacked layer
//!   puts its `layer.vhd` there).
//! - Mounts: one `lcow-layer` mount. Its source is the snapshot's own
//!   directory for Active and parentless snapshots, with the parents in
//!   `parentLayerPaths`; a View with parents has its nearest parent as the
//!   source and the remaining parents in `parentLayerPaths`. The option is
//!   `parentLayerPaths=` followed by a JSON array of directories, nearest
//!   first, after `rw` (`ro` for Views).
//! - An Active snapshot whose key is not an unpack key (`extract-…`) gets a
//!   writable `sandbox.vhdx`: a copy of the cached blank scratch for the
//!   size its labels ask for, kept in the root or the labelled location; or,
//!   with `reuse-scratch=true` and an owner key, a symlink to the owner's.
//! - Remote layers are not offered: they are FUSE mounts on Linux, which an
//!   LCOW utility VM cannot use.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use super::scratch::{
    ROOTFS_SIZE_LABEL, SANDBOX_FILE_NAME, ScratchError, cleanup_stale_temps, create_sandbox,
    ensure_scratch, scratch_size_from_label,
};
use crate::model::{Error, Kind, Labels, Mount, Result};
use crate::snapshot::{Layout, LocalBackend, NewSnapshot};
use crate::store::{Snapshot, Store, Tx};

/// Label naming the directory that holds the cached scratch (default: root).
pub const ROOTFS_LOCATION_LABEL: &str =
    "containerd.io/snapshot/io.microsoft.container.storage.rootfs.location";
/// Label asking (`true`) to share the owner's scratch instead of a copy.
pub const REUSE_SCRATCH_LABEL: &str =
    "containerd.io/snapshot/io.microsoft.container.storage.reuse-scratch";
/// Label naming the snapshot whose scratch is shared.
pub const OWNER_KEY_LABEL: &str = "containerd.io/snapshot/io.microsoft.owner.key";
/// Marker of containerd's unpack keys (`extract-<nanos>-<rand> <chainID>`):
/// those snapshots receive a layer, not a container, so need no scratch.
pub const UNPACK_KEY_MARKER: &str = "extract-";
/// Mount type hcsshim expects for LCOW layers.
pub const LAYER_MOUNT_TYPE: &str = "lcow-layer";
/// Mount option prefix carrying the parent layer directories as JSON.
pub const PARENT_LAYER_PATHS_OPTION: &str = "parentLayerPaths=";

/// The LCOW fallback; every path is relative to the snapshotter's layout.
#[derive(Debug, Default, Clone, Copy)]
pub struct LcowBackend;

/// What writable disk a new snapshot gets.
enum Scratch<'a> {
    /// None: a View, or an unpack snapshot.
    None,
    /// A symlink to the sandbox of the snapshot `owner`.
    Share { owner: &'a str },
    /// A copy of the cached scratch of `size_gb` kept in `cache_dir`.
    Copy {
        cache_dir: PathBuf,
        size_gb: Option<u64>,
    },
}

impl<'a> Scratch<'a> {
    fn plan(layout: &Layout, kind: Kind, key: &str, labels: &'a Labels) -> Result<Scratch<'a>> {
        if kind != Kind::Active || key.contains(UNPACK_KEY_MARKER) {
            return Ok(Scratch::None);
        }
        let owner = labels.get(OWNER_KEY_LABEL).filter(|o| !o.is_empty());
        if let (Some("true"), Some(owner)) =
            (labels.get(REUSE_SCRATCH_LABEL).map(String::as_str), owner)
        {
            return Ok(Scratch::Share { owner });
        }
        let cache_dir = match labels.get(ROOTFS_LOCATION_LABEL).filter(|l| !l.is_empty()) {
            None => layout.root().to_path_buf(),
            Some(location) if Path::new(location).is_absolute() => PathBuf::from(location),
            Some(location) => {
                return Err(Error::InvalidArgument(format!(
                    "label {ROOTFS_LOCATION_LABEL}={location:?} is not an absolute path"
                )));
            }
        };
        let size_gb = scratch_size_from_label(labels.get(ROOTFS_SIZE_LABEL).map(String::as_str));
        Ok(Scratch::Copy { cache_dir, size_gb })
    }
}

fn scratch_error(e: ScratchError) -> Error {
    match e {
        ScratchError::InvalidSize(_) => Error::InvalidArgument(e.to_string()),
        e => Error::internal("LCOW scratch", e),
    }
}

/// The snapshot whose key is `owner`, or whose key ends in `/<owner>`:
/// containerd's metadata layer hands snapshotters namespaced keys
/// (`<namespace>/<n>/<key>`) while the label carries the plain key.
fn find_owner(tx: &Tx<'_>, owner: &str) -> Result<Snapshot> {
    match tx.snapshot(owner) {
        Err(Error::NotFound(_)) => {}
        found => return found,
    }
    let suffix = format!("/{owner}");
    let matches: Vec<String> = tx
        .walk()?
        .into_iter()
        .map(|info| info.name)
        .filter(|name| name.ends_with(&suffix))
        .collect();
    match matches.as_slice() {
        [key] => tx.snapshot(key),
        [] => Err(Error::NotFound(format!(
            "owner snapshot {owner:?} of a shared scratch"
        ))),
        _ => Err(Error::FailedPrecondition(format!(
            "owner key {owner:?} matches several snapshots: {matches:?}"
        ))),
    }
}

/// Links `dir/sandbox.vhdx` to the sandbox of the snapshot `owner`.
fn share_sandbox(new: &NewSnapshot<'_>, owner: &str) -> Result<()> {
    let owner_snap = find_owner(new.tx, owner)?;
    if owner_snap.id == new.snap.id {
        return Err(Error::InvalidArgument(format!(
            "snapshot {:?} cannot share its own scratch (owner key {owner:?})",
            new.key
        )));
    }
    let target = new
        .layout
        .snapshot_dir(owner_snap.id)
        .join(SANDBOX_FILE_NAME);
    if let Err(e) = std::fs::metadata(&target) {
        return Err(Error::FailedPrecondition(format!(
            "owner snapshot {owner:?} has no usable {}: {e}",
            target.display()
        )));
    }
    let link = new.dir.join(SANDBOX_FILE_NAME);
    std::os::unix::fs::symlink(&target, &link).map_err(|e| {
        Error::internal(
            format!("symlink {} to {}", link.display(), target.display()),
            e,
        )
    })
}

fn path_string(path: PathBuf) -> String {
    path.to_string_lossy().into_owned()
}

impl LocalBackend for LcowBackend {
    fn name(&self) -> &'static str {
        "lcow"
    }

    /// Removes stale scratch temp files in the root and in every location
    /// a snapshot's label names.
    fn recover(&self, layout: &Layout, store: &Store) -> Result<()> {
        cleanup_stale_temps(layout.root()).map_err(scratch_error)?;
        let locations: BTreeSet<String> = store.read(|tx| {
            Ok(tx
                .walk()?
                .into_iter()
                .filter_map(|info| info.labels.get(ROOTFS_LOCATION_LABEL).cloned())
                .filter(|l| Path::new(l).is_absolute())
                .collect())
        })?;
        for location in locations {
            if let Err(e) = cleanup_stale_temps(Path::new(&location)) {
                tracing::warn!(location, error = %e, "cannot clean scratch location");
            }
        }
        Ok(())
    }

    /// Makes the cached scratch outside the store lock: the first Prepare of
    /// a size runs mkfs, which must not hold up every other request.
    fn before_create(&self, layout: &Layout, kind: Kind, key: &str, labels: &Labels) -> Result<()> {
        if let Scratch::Copy { cache_dir, size_gb } = Scratch::plan(layout, kind, key, labels)? {
            ensure_scratch(&cache_dir, size_gb).map_err(scratch_error)?;
        }
        Ok(())
    }

    fn populate(&self, new: &NewSnapshot<'_>) -> Result<()> {
        match Scratch::plan(new.layout, new.snap.kind, new.key, new.labels)? {
            Scratch::None => Ok(()),
            Scratch::Share { owner } => share_sandbox(new, owner),
            Scratch::Copy { cache_dir, size_gb } => create_sandbox(&cache_dir, size_gb, new.dir)
                .map(|_| ())
                .map_err(scratch_error),
        }
    }

    fn mounts(&self, layout: &Layout, snap: &Snapshot) -> Vec<Mount> {
        let (source, parents) = match snap.parent_ids.split_first() {
            Some((&nearest, rest)) if snap.kind != Kind::Active => (nearest, rest),
            _ => (snap.id, snap.parent_ids.as_slice()),
        };
        let parents: Vec<String> = parents
            .iter()
            .map(|&id| path_string(layout.snapshot_dir(id)))
            .collect();
        // Serialising strings cannot fail; "[]" keeps the option parseable.
        let json = serde_json::to_string(&parents).unwrap_or_else(|_| "[]".into());
        let mode = if snap.kind == Kind::View { "ro" } else { "rw" };
        vec![Mount {
            kind: LAYER_MOUNT_TYPE.into(),
            source: path_string(layout.snapshot_dir(source)),
            options: vec![mode.into(), format!("{PARENT_LAYER_PATHS_OPTION}{json}")],
        }]
    }

    fn content_dir(&self, layout: &Layout, id: i64) -> PathBuf {
        layout.snapshot_dir(id)
    }

    fn supports_remote(&self) -> bool {
        false
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn snap(id: i64, kind: Kind, parent_ids: &[i64]) -> Snapshot {
        Snapshot {
            id,
            kind,
            parent_ids: parent_ids.to_vec(),
        }
    }

    fn parents(m: &Mount) -> Vec<String> {
        let json = m.options[1]
            .strip_prefix(PARENT_LAYER_PATHS_OPTION)
            .unwrap();
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn mount_table_matches_containerd_lcow() {
        let l = Layout::new(Path::new("/r"));
        let b = LcowBackend;
        let m = &b.mounts(&l, &snap(1, Kind::Active, &[]))[0];
        assert_eq!(
            (m.kind.as_str(), m.source.as_str()),
            ("lcow-layer", "/r/snapshots/1")
        );
        assert_eq!(m.options, ["rw", "parentLayerPaths=[]"]);
        let m = &b.mounts(&l, &snap(1, Kind::View, &[]))[0];
        assert_eq!(
            (m.source.as_str(), m.options[0].as_str()),
            ("/r/snapshots/1", "ro")
        );
        let m = &b.mounts(&l, &snap(5, Kind::Active, &[3, 2]))[0];
        assert_eq!(m.source, "/r/snapshots/5");
        assert_eq!(parents(m), ["/r/snapshots/3", "/r/snapshots/2"]);
        let m = &b.mounts(&l, &snap(6, Kind::View, &[3, 2]))[0];
        assert_eq!(
            (m.source.as_str(), m.options[0].as_str()),
            ("/r/snapshots/3", "ro")
        );
        assert_eq!(parents(m), ["/r/snapshots/2"]);
    }

    #[test]
    fn scratch_plans() {
        let l = Layout::new(Path::new("/r"));
        let mut labels = Labels::new();
        let plan = |kind, key: &str, labels: &Labels| match Scratch::plan(&l, kind, key, labels) {
            Ok(Scratch::None) => "none".to_string(),
            Ok(Scratch::Share { owner }) => format!("share {owner}"),
            Ok(Scratch::Copy { cache_dir, size_gb }) => {
                format!("copy {} {size_gb:?}", cache_dir.display())
            }
            Err(e) => format!("error {e}"),
        };
        assert_eq!(plan(Kind::View, "v", &labels), "none");
        assert_eq!(
            plan(Kind::Active, "default/3/extract-1-2 sha256:x", &labels),
            "none"
        );
        assert_eq!(plan(Kind::Active, "c", &labels), "copy /r None");
        labels.insert(ROOTFS_SIZE_LABEL.into(), "5".into());
        labels.insert(ROOTFS_LOCATION_LABEL.into(), "/cache".into());
        assert_eq!(plan(Kind::Active, "c", &labels), "copy /cache Some(5)");
        labels.insert(ROOTFS_LOCATION_LABEL.into(), "cache".into());
        assert!(plan(Kind::Active, "c", &labels).starts_with("error"));
        labels.insert(REUSE_SCRATCH_LABEL.into(), "true".into());
        labels.insert(OWNER_KEY_LABEL.into(), "owner".into());
        assert_eq!(plan(Kind::Active, "c", &labels), "share owner");
        labels.insert(REUSE_SCRATCH_LABEL.into(), "false".into());
        labels.insert(ROOTFS_LOCATION_LABEL.into(), "/cache".into());
        assert_eq!(plan(Kind::Active, "c", &labels), "copy /cache Some(5)");
    }
}
