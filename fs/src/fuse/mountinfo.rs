//! The mount table (`/proc/self/mountinfo`) and the FUSE control
//! filesystem, so a FUSE server can find and abort its mounts without a
//! `stat` on them: a process that stats its own mount while it is killed
//! can never exit (its request was read by a server thread that is gone,
//! and the kernel waits for the answer uninterruptibly).

use std::collections::HashSet;
use std::io;
use std::path::{Path, PathBuf};

/// Where the kernel's FUSE control filesystem (`fusectl`) lives.
const FUSECTL: &str = "/sys/fs/fuse/connections";

/// One mount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    /// Where it is mounted.
    pub mountpoint: PathBuf,
    /// Device number of the superblock (`st_dev` of files in it).
    pub dev: u64,
    /// Filesystem type (`fuse`, `fuse.rstargz`, `overlay`, …).
    pub fstype: String,
    /// Mount source (the FUSE `fsname`).
    pub source: String,
    /// The directory of the filesystem the mount shows (`/` for a whole
    /// filesystem, `/<slot>` for a layer's bind mount of a shared session).
    pub root: PathBuf,
}

impl MountEntry {
    /// What identifies the mount wherever its mountpoint moves.
    pub fn id(&self) -> MountId {
        MountId {
            dev: self.dev,
            root: self.root.clone(),
        }
    }
}

/// A mount's identity: its device and the directory it shows (bind mounts
/// of one filesystem share the device).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MountId {
    /// Device number of the superblock.
    pub dev: u64,
    /// The directory of the filesystem shown.
    pub root: PathBuf,
}

/// Parses a mountinfo text; malformed lines are skipped.
pub fn parse(text: &str) -> Vec<MountEntry> {
    text.lines()
        .filter_map(|line| {
            // id parent maj:min root mountpoint opts [optional…] - fstype source superopts
            let mut fields = line.split(' ');
            let (maj, min) = fields.nth(2)?.split_once(':')?;
            let root = fields.next()?;
            let mountpoint = fields.next()?;
            let mut tail = line.split(" - ").nth(1)?.split(' ');
            Some(MountEntry {
                mountpoint: unescape(mountpoint).into(),
                dev: libc::makedev(maj.parse().ok()?, min.parse().ok()?),
                fstype: tail.next()?.to_string(),
                source: tail.next()?.to_string(),
                root: unescape(root).into(),
            })
        })
        .collect()
}

/// This process's mount table.
pub fn read() -> io::Result<Vec<MountEntry>> {
    std::fs::read_to_string("/proc/self/mountinfo").map(|t| parse(&t))
}

/// `path` with its parent canonicalized; the path itself is never looked
/// up, so a dead or our own mount there cannot block the caller.
fn resolve(path: &Path) -> Option<PathBuf> {
    match (path.parent(), path.file_name()) {
        (Some(parent), Some(name)) => std::fs::canonicalize(parent).ok().map(|p| p.join(name)),
        _ => Some(path.to_path_buf()),
    }
}

/// The topmost mount at `mountpoint`, if any.
pub fn mount_at(mountpoint: &Path) -> Option<MountEntry> {
    let at = resolve(mountpoint)?;
    read().ok()?.into_iter().rev().find(|m| m.mountpoint == at)
}

/// The device of the topmost mount at `mountpoint`, if any.
pub fn device_of(mountpoint: &Path) -> Option<u64> {
    mount_at(mountpoint).map(|m| m.dev)
}

/// The identity of the topmost mount at `mountpoint`, if any.
pub fn id_of(mountpoint: &Path) -> Option<MountId> {
    mount_at(mountpoint).map(|m| m.id())
}

/// Whether something is mounted at `path`.
pub fn is_mount_point(path: &Path) -> bool {
    device_of(path).is_some()
}

/// Every mount point of this process's mount table, read once: for asking
/// about many paths without reading the table for each.
#[derive(Debug, Default)]
pub struct MountPoints(HashSet<PathBuf>);

impl MountPoints {
    /// Reads the mount table.
    pub fn read() -> io::Result<Self> {
        Ok(MountPoints(
            read()?.into_iter().map(|m| m.mountpoint).collect(),
        ))
    }

    /// Whether something was mounted at `path` when the table was read.
    pub fn contains(&self, path: &Path) -> bool {
        resolve(path).is_some_and(|p| self.0.contains(&p))
    }
}

/// Aborts the FUSE connection of the mount with device `dev`: every request
/// waiting on it fails with ENOTCONN and its server, even one stuck in
/// exit, lets go. Mounts `fusectl` first if the system has not.
pub fn abort_connection(dev: u64) -> io::Result<()> {
    let abort = Path::new(FUSECTL).join(dev.to_string()).join("abort");
    if !abort.exists() && !is_mount_point(Path::new(FUSECTL)) {
        nix::mount::mount(
            Some("fusectl"),
            FUSECTL,
            Some("fusectl"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )?;
    }
    std::fs::write(abort, b"1")
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && let Some(code) = bytes
                .get(i + 1..i + 4)
                .and_then(|d| std::str::from_utf8(d).ok())
                .and_then(|d| u8::from_str_radix(d, 8).ok())
        {
            out.push(code);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_devices_types_and_escaped_paths() {
        let t = parse(
            "36 35 0:30 /7 /r/snapshots/1/fs rw - fuse rstargz ro\n\
             40 35 8:1 / /r/with\\040space rw shared:5 - ext4 /dev/sda1 rw\n\
             garbage\n",
        );
        assert_eq!(t.len(), 2);
        assert_eq!(t[0].mountpoint, Path::new("/r/snapshots/1/fs"));
        assert_eq!(
            (t[0].dev, t[0].fstype.as_str(), t[0].source.as_str()),
            (30, "fuse", "rstargz")
        );
        assert_eq!(t[0].root, Path::new("/7"));
        assert_eq!(t[1].root, Path::new("/"));
        assert_eq!(t[1].mountpoint, Path::new("/r/with space"));
        assert_eq!(t[1].dev, libc::makedev(8, 1));
    }

    #[test]
    fn proc_is_a_mount_point_a_temp_dir_is_not() {
        assert!(is_mount_point(Path::new("/proc")));
        let Ok(dir) = tempfile::tempdir() else {
            panic!("tempdir")
        };
        assert!(!is_mount_point(dir.path()));
    }
}
