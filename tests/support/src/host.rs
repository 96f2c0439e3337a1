//! Host-side checks of what tests leave behind: cgroups and mounts.

use std::path::{Path, PathBuf};

/// Cgroup directories named `name` in any hierarchy.
pub fn cgroup_dirs(name: &str) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/sys/fs/cgroup")
        .unwrap()
        .map(|e| e.unwrap().path().join(name))
        .filter(|p| p.exists())
        .collect();
    let top = Path::new("/sys/fs/cgroup").join(name);
    if top.exists() && !found.contains(&top) {
        found.push(top);
    }
    found
}

/// Mount points under `dir` (FUSE, overlay or anything else), deepest first.
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = rstargz_fs::fuse::mountinfo::read()
        .unwrap()
        .into_iter()
        .map(|m| m.mountpoint)
        .filter(|p| p.starts_with(dir))
        .collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    found
}

/// Detaches every mount under `dir` (a failed test must not leave them).
pub fn unmount_all_under(dir: &Path) -> Vec<PathBuf> {
    let left = mounts_under(dir);
    for m in &left {
        let _ = nix::mount::umount2(m, nix::mount::MntFlags::MNT_DETACH);
    }
    left
}
