//! The overlayfs local fallback (the default backend): a snapshot directory
//! holds `fs` (the layer, or the upper dir of an Active snapshot) and, for
//! Active snapshots, the overlay `work` dir. Mounts follow containerd's
//! overlayfs snapshotter:
//! - no parent, or a View on exactly one parent: a bind mount (`rbind`,
//!   `ro` for views, `rw` otherwise) of the snapshot's (or parent's) `fs`;
//! - otherwise `overlay` with `lowerdir=` the parents' `fs` dirs nearest
//!   first, plus `upperdir`/`workdir` for Active snapshots, plus `index=off`
//!   when the kernel module has that knob and `userxattr` when required.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::backend::{LocalBackend, NewSnapshot};
use super::layout::{Layout, mkdir_mode};
use crate::model::{Context, Error, Result};
use crate::model::{Kind, Mount};
use crate::store::{Snapshot, Store};

/// Kernel-dependent overlay mount options, decided once at start-up.
#[derive(Debug, Clone, Copy, Default)]
pub struct OverlayOptions {
    /// Add `index=off` (the overlay module has an `index` parameter).
    pub index_off: bool,
    /// Add `userxattr` (needed inside a user namespace).
    pub userxattr: bool,
}

impl OverlayOptions {
    /// Detects the options for this kernel and process.
    pub fn detect() -> OverlayOptions {
        OverlayOptions {
            index_off: Path::new("/sys/module/overlay/parameters/index").exists(),
            userxattr: in_user_namespace(),
        }
    }
}

/// Whether we run inside a (non-initial) user namespace, where overlayfs
/// needs `userxattr` (containerd's `NeedsUserXAttr`).
fn in_user_namespace() -> bool {
    match std::fs::read_to_string("/proc/self/uid_map") {
        Ok(map) => {
            let fields: Vec<&str> = map.split_whitespace().collect();
            fields != ["0", "0", "4294967295"]
        }
        Err(_) => false,
    }
}

/// The overlayfs backend with the options chosen for this kernel.
#[derive(Debug, Clone, Copy, Default)]
pub struct OverlayBackend {
    /// Kernel-dependent mount options.
    pub options: OverlayOptions,
}

impl OverlayBackend {
    /// The backend with options detected for this kernel and process.
    pub fn detect() -> OverlayBackend {
        OverlayBackend {
            options: OverlayOptions::detect(),
        }
    }
}

impl LocalBackend for OverlayBackend {
    fn name(&self) -> &'static str {
        "overlayfs"
    }

    fn recover(&self, layout: &Layout, _store: &Store) -> Result<()> {
        check_d_type(layout.snapshots_dir())
    }

    /// Creates `fs` (owned like the parent's, so an image's root directory
    /// ownership carries over) and, for Active snapshots, `work`.
    fn populate(&self, new: &NewSnapshot<'_>) -> Result<()> {
        let fs = new.dir.join("fs");
        mkdir_mode(&fs, 0o755)?;
        if new.snap.kind == Kind::Active {
            mkdir_mode(&new.dir.join("work"), 0o711)?;
        }
        if let Some(&parent) = new.snap.parent_ids.first() {
            let (uid, gid) = match new.parent_owner {
                Some(owner) => owner,
                None => {
                    let parent_fs = new.layout.fs_dir(parent);
                    let meta = std::fs::metadata(&parent_fs)
                        .context(|| format!("stat {}", parent_fs.display()))?;
                    (meta.uid(), meta.gid())
                }
            };
            std::os::unix::fs::chown(&fs, Some(uid), Some(gid))
                .context(|| format!("chown {}", fs.display()))?;
        }
        Ok(())
    }

    fn mounts(&self, layout: &Layout, snap: &Snapshot) -> Vec<Mount> {
        mounts(layout, self.options, snap)
    }

    fn content_dir(&self, layout: &Layout, id: i64) -> PathBuf {
        layout.fs_dir(id)
    }

    fn supports_remote(&self) -> bool {
        true
    }
}

/// The mounts for `snap`.
pub fn mounts(layout: &Layout, opts: OverlayOptions, snap: &Snapshot) -> Vec<Mount> {
    let path = |p: PathBuf| p.to_string_lossy().into_owned();
    if snap.parent_ids.is_empty() {
        let mode = if snap.kind == Kind::View { "ro" } else { "rw" };
        return vec![Mount {
            kind: "bind".into(),
            source: path(layout.fs_dir(snap.id)),
            options: vec![mode.into(), "rbind".into()],
        }];
    }
    let mut options = Vec::new();
    if opts.index_off {
        options.push("index=off".to_string());
    }
    if opts.userxattr {
        options.push("userxattr".to_string());
    }
    if snap.kind == Kind::Active {
        options.push(format!("workdir={}", path(layout.work_dir(snap.id))));
        options.push(format!("upperdir={}", path(layout.fs_dir(snap.id))));
    } else if let [parent] = snap.parent_ids[..] {
        return vec![Mount {
            kind: "bind".into(),
            source: path(layout.fs_dir(parent)),
            options: vec!["ro".into(), "rbind".into()],
        }];
    }
    let lower: Vec<String> = snap
        .parent_ids
        .iter()
        .map(|&id| path(layout.fs_dir(id)))
        .collect();
    options.push(format!("lowerdir={}", lower.join(":")));
    vec![Mount {
        kind: "overlay".into(),
        source: "overlay".into(),
        options,
    }]
}

/// Fails unless `dir`'s filesystem reports file types in readdir (d_type),
/// which overlayfs needs for correct whiteouts.
pub fn check_d_type(dir: &Path) -> Result<()> {
    use nix::dir::{Dir, Type};
    use nix::fcntl::OFlag;
    use nix::sys::stat::Mode;

    let probe = dir.join(".d_type-probe");
    let _ = std::fs::remove_dir_all(&probe);
    std::fs::create_dir_all(probe.join("d")).context(|| format!("create {}", probe.display()))?;
    let result = (|| {
        let mut d = Dir::open(&probe, OFlag::O_RDONLY | OFlag::O_DIRECTORY, Mode::empty())
            .map_err(|e| Error::internal(format!("open {}", probe.display()), e))?;
        for entry in d.iter() {
            let entry = entry.map_err(|e| Error::internal("read probe dir", e))?;
            if entry.file_name().to_bytes() == b"d" {
                return match entry.file_type() {
                    Some(Type::Directory) => Ok(()),
                    _ => Err(Error::FailedPrecondition(format!(
                        "filesystem of {} does not support d_type; overlayfs needs it",
                        dir.display()
                    ))),
                };
            }
        }
        Err(Error::internal("d_type probe", "probe entry not listed"))
    })();
    let _ = std::fs::remove_dir_all(&probe);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(id: i64, kind: Kind, parent_ids: &[i64]) -> Snapshot {
        Snapshot {
            id,
            kind,
            parent_ids: parent_ids.to_vec(),
        }
    }

    #[test]
    fn mount_table_matches_containerd() {
        let l = Layout::new(Path::new("/r"));
        let o = OverlayOptions::default();
        let m = mounts(&l, o, &snap(1, Kind::Active, &[]));
        assert_eq!(m[0].kind, "bind");
        assert_eq!(m[0].source, "/r/snapshots/1/fs");
        assert_eq!(m[0].options, ["rw", "rbind"]);
        assert_eq!(
            mounts(&l, o, &snap(1, Kind::View, &[]))[0].options,
            ["ro", "rbind"]
        );
        let v = mounts(&l, o, &snap(3, Kind::View, &[2]));
        assert_eq!(
            (v[0].kind.as_str(), v[0].source.as_str()),
            ("bind", "/r/snapshots/2/fs")
        );
        assert_eq!(v[0].options, ["ro", "rbind"]);
        let v2 = mounts(&l, o, &snap(4, Kind::View, &[3, 2]));
        assert_eq!(v2[0].kind, "overlay");
        assert_eq!(
            v2[0].options,
            ["lowerdir=/r/snapshots/3/fs:/r/snapshots/2/fs"]
        );
        let a = mounts(
            &l,
            OverlayOptions {
                index_off: true,
                userxattr: true,
            },
            &snap(5, Kind::Active, &[3, 2]),
        );
        assert_eq!(
            a[0].options,
            [
                "index=off",
                "userxattr",
                "workdir=/r/snapshots/5/work",
                "upperdir=/r/snapshots/5/fs",
                "lowerdir=/r/snapshots/3/fs:/r/snapshots/2/fs"
            ]
        );
    }

    #[test]
    fn d_type_supported_on_tmp() {
        let Ok(dir) = tempfile::tempdir() else {
            panic!("tempdir")
        };
        assert!(check_d_type(dir.path()).is_ok());
    }
}
