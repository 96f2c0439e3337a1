//! Start-up clean-up of remote layers: FUSE mounts left under the root by a
//! daemon that died are aborted and detached, so the layers can be mounted
//! again, unless an fd holder still keeps their connection: those are
//! taken over live (see [`super::live`]) and left alone here.

use std::path::{Path, PathBuf};

use rstargz_fs::fuse::mountinfo::{self, MountEntry};

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

/// Aborts and lazily detaches every rstargz FUSE mount under `root` except
/// those in `keep` (held connections this daemon takes over); returns how
/// many were detached. Aborting first matters: a killed daemon whose thread
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
    for m in stale_mounts(table, root) {
        let path = &m.mountpoint;
        if keep.contains(path) {
            continue;
        }
        if let Err(e) = mountinfo::abort_connection(m.dev) {
            tracing::warn!(mountpoint = %path.display(), error = %e, "cannot abort stale FUSE connection");
        }
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
mod tests {
    use super::*;

    #[test]
    fn finds_only_our_fuse_mounts_under_root() {
        let info = "\
36 35 0:30 / /r/snapshots/1/fs rw - fuse rstargz ro
37 35 0:31 / /r/snapshots/2/fs rw shared:5 - fuse.rstargz rstargz ro
38 35 0:32 / /other/fs rw - fuse.rstargz rstargz ro
39 35 0:33 / /r/snapshots/3/fs rw - overlay overlay rw
41 35 0:35 / /r/snapshots/4/fs rw - fuse other ro
40 35 0:34 / /r/with\\040space rw - fuse.rstargz rstargz ro
";
        let found = stale_mounts(mountinfo::parse(info), Path::new("/r"));
        let mut names: Vec<_> = found
            .iter()
            .map(|m| (m.mountpoint.display().to_string(), m.dev))
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                ("/r/snapshots/1/fs".to_string(), 30),
                ("/r/snapshots/2/fs".to_string(), 31),
                ("/r/with space".to_string(), 34)
            ]
        );
        let ours = our_mounts(mountinfo::parse(info), Path::new("/r/snapshots"));
        let devs: Vec<_> = ours.into_iter().map(|m| (m.mountpoint, m.dev)).collect();
        assert_eq!(
            devs,
            [
                ("/r/snapshots/1/fs".into(), libc::makedev(0, 30)),
                ("/r/snapshots/2/fs".into(), libc::makedev(0, 31)),
            ]
        );
    }
}
