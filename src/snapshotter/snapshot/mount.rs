//! Performing containerd-style mounts ourselves (for `rstargz mount` and the
//! benchmarks; containerd performs the [`Mount`](super::Mount)s the
//! snapshotter returns): fstab-style options become flags and data, as in
//! containerd's `mount.Mount`.
//!
//! The kernel copies at most one page of mount data, so the `lowerdir=` of
//! a deep image under a long directory is cut off and the mount fails with
//! ENOENT (127 layers of `/var/lib/rstargz/mount/mnt-123/NN` are already
//! 4.2 KiB). As containerd does, such lowers are then given relative to
//! their common parent directory, from a thread that alone changes into it
//! (`unshare(CLONE_FS)`: the process's other threads keep their working
//! directory). This works on every kernel with overlayfs, unlike the new
//! mount API's `lowerdir+` (Linux 6.8).

use std::io;
use std::path::{Component, Path, PathBuf};

use nix::mount::MsFlags;

/// Mounts `lowers` (uppermost first) read-only at `target`: one lower is
/// bind-mounted (overlayfs wants at least two without an upper dir), more
/// are stacked with overlayfs.
pub fn mount_read_only(lowers: &[PathBuf], target: &Path) -> io::Result<()> {
    let lowers = lowers
        .iter()
        .map(|p| {
            p.to_str()
                .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "lower dir not UTF-8"))
        })
        .collect::<io::Result<Vec<&str>>>()?;
    match lowers[..] {
        [] => Err(io::Error::new(io::ErrorKind::InvalidInput, "no lower dir")),
        [only] => mount("bind", only, &["ro".into(), "rbind".into()], target),
        _ => {
            let options = ["ro".to_string(), format!("lowerdir={}", lowers.join(":"))];
            mount("overlay", "overlay", &options, target)
        }
    }
}

/// Mounts `source` of type `kind` at `target` with fstab-style `options`
/// (`ro`, `rw`, `bind`, `rbind` become flags; the rest is the data). An
/// overlay whose data exceeds a page gets its lowers relative to their
/// common parent.
pub fn mount(kind: &str, source: &str, options: &[String], target: &Path) -> io::Result<()> {
    let mut flags = MsFlags::empty();
    let mut data: Vec<&str> = Vec::new();
    for o in options {
        match o.as_str() {
            "ro" => flags |= MsFlags::MS_RDONLY,
            "rw" => {}
            "bind" => flags |= MsFlags::MS_BIND,
            "rbind" => flags |= MsFlags::MS_BIND | MsFlags::MS_REC,
            other => data.push(other),
        }
    }
    let kind = (kind != "bind").then_some(kind);
    let joined = data.join(",");
    if kind != Some("overlay") || joined.len() < page_size() {
        nix::mount::mount(Some(source), target, kind, flags, Some(joined.as_str()))?;
        // A bind mount ignores MS_RDONLY until remounted (as containerd does).
        let ro_bind = MsFlags::MS_BIND | MsFlags::MS_RDONLY;
        if flags.contains(ro_bind) {
            let remount = flags | MsFlags::MS_REMOUNT;
            nix::mount::mount(None::<&str>, target, None::<&str>, remount, None::<&str>)?;
        }
        return Ok(());
    }
    let (parent, compact) = compact_lowerdir(&data).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "overlay options exceed a page and the lowers share no parent",
        )
    })?;
    if compact.len() >= page_size() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "overlay options exceed a page even relative to {}",
                parent.display()
            ),
        ));
    }
    // The thread below changes its working directory: the target must not
    // depend on it.
    let target = std::path::absolute(target)?;
    std::thread::scope(|s| {
        s.spawn(|| {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_FS)?;
            nix::unistd::chdir(&parent)?;
            nix::mount::mount(Some(source), &target, kind, flags, Some(compact.as_str()))
        })
        .join()
        .map_err(|_| io::Error::other("mount thread panicked"))?
        .map_err(io::Error::from)
    })
}

fn page_size() -> usize {
    nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .and_then(|p| usize::try_from(p).ok())
        .unwrap_or(4096)
}

/// The common parent of the `lowerdir=` option's dirs among `data` and the
/// data with those dirs relative to it; `None` without a `lowerdir=`, with
/// relative lowers, or when they share nothing but `/`.
fn compact_lowerdir(data: &[&str]) -> Option<(PathBuf, String)> {
    let lowerdir = data.iter().find_map(|o| o.strip_prefix("lowerdir="))?;
    let lowers: Vec<&Path> = lowerdir.split(':').map(Path::new).collect();
    let parent = common_parent(&lowers)?;
    let relative: Vec<&str> = lowers
        .iter()
        .map(
            |l| match l.strip_prefix(&parent).ok().and_then(Path::to_str) {
                Some("") => ".",
                Some(r) => r,
                None => l.to_str().unwrap_or_default(),
            },
        )
        .collect();
    let joined = relative.join(":");
    let out: Vec<String> = data
        .iter()
        .map(|o| {
            if o.starts_with("lowerdir=") {
                format!("lowerdir={joined}")
            } else {
                (*o).to_string()
            }
        })
        .collect();
    Some((parent, out.join(",")))
}

/// The deepest directory every path in `paths` is under (absolute paths
/// only; `None` when that is `/`).
fn common_parent(paths: &[&Path]) -> Option<PathBuf> {
    let first = paths.first()?;
    if paths.iter().any(|p| !p.is_absolute()) {
        return None;
    }
    let mut common: Vec<Component<'_>> = first.parent()?.components().collect();
    for p in &paths[1..] {
        let shared = common
            .iter()
            .zip(p.components())
            .take_while(|(a, b)| *a == b)
            .count();
        common.truncate(shared);
    }
    let parent: PathBuf = common.iter().collect();
    (parent.components().count() > 1).then_some(parent)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lowers_become_relative_to_their_common_parent() {
        let data = [
            "index=off",
            "lowerdir=/var/lib/x/snapshots/12/fs:/var/lib/x/snapshots/3/fs",
            "upperdir=/var/lib/x/snapshots/13/fs",
        ];
        let (parent, compact) = compact_lowerdir(&data).expect("compacted");
        assert_eq!(parent, Path::new("/var/lib/x/snapshots"));
        assert_eq!(
            compact,
            "index=off,lowerdir=12/fs:3/fs,upperdir=/var/lib/x/snapshots/13/fs"
        );
        let (parent, compact) =
            compact_lowerdir(&["lowerdir=/s/mnt-1/10:/s/mnt-1/9"]).expect("compacted");
        assert_eq!(
            (parent.as_path(), compact.as_str()),
            (Path::new("/s/mnt-1"), "lowerdir=10:9")
        );
    }

    #[test]
    fn nothing_to_compact_without_a_shared_parent() {
        assert!(compact_lowerdir(&["lowerdir=/a/1:/b/2"]).is_none());
        assert!(compact_lowerdir(&["lowerdir=a/1:a/2"]).is_none());
        assert!(compact_lowerdir(&["upperdir=/a/1"]).is_none());
        assert_eq!(
            common_parent(&[Path::new("/a/b/c"), Path::new("/a/b/d/e")]),
            Some(PathBuf::from("/a/b"))
        );
    }
}

// Needs root (real mounts): feature `system`, as in the integration tests.
#[cfg(all(test, feature = "system"))]
#[allow(clippy::unwrap_used)]
mod system_tests {
    use super::*;

    /// 127 lowers under a directory whose absolute `lowerdir=` is far over
    /// a page: every layer's file shows, the uppermost wins.
    #[test]
    fn deep_stack_under_a_long_directory_mounts() {
        let dir = tempfile::tempdir().unwrap();
        let long = dir.path().join("d".repeat(60)).join("e".repeat(60));
        let lowers: Vec<PathBuf> = (0..127).rev().map(|i| long.join(i.to_string())).collect();
        for (depth, l) in lowers.iter().rev().enumerate() {
            std::fs::create_dir_all(l).unwrap();
            std::fs::write(l.join(format!("f{depth}")), depth.to_string()).unwrap();
            std::fs::write(l.join("top"), depth.to_string()).unwrap();
        }
        let all: usize = lowers.iter().map(|l| l.as_os_str().len() + 1).sum();
        assert!(all > 4 * page_size(), "{all} bytes");
        let target = dir.path().join("root");
        std::fs::create_dir(&target).unwrap();
        let cwd = std::env::current_dir().unwrap();
        mount_read_only(&lowers, &target).unwrap();
        let read = |name: &str| std::fs::read_to_string(target.join(name));
        let (top, first, last) = (read("top"), read("f0"), read("f126"));
        let writable = std::fs::write(target.join("new"), b"x");
        nix::mount::umount(&target).unwrap();
        assert_eq!(top.unwrap(), "126");
        assert_eq!((first.unwrap(), last.unwrap()), ("0".into(), "126".into()));
        assert!(writable.is_err(), "read-only");
        assert_eq!(
            std::env::current_dir().unwrap(),
            cwd,
            "our cwd is unchanged"
        );

        let one = &lowers[..1];
        mount_read_only(one, &target).unwrap();
        let (top, writable) = (read("top"), std::fs::write(target.join("new"), b"x"));
        nix::mount::umount(&target).unwrap();
        assert_eq!(top.unwrap(), "126");
        assert!(writable.is_err(), "the bind mount is read-only");
    }
}
