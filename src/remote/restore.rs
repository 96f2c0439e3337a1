//! Start-up clean-up of remote layers: FUSE mounts left under the root by a
//! daemon that died are detached (unless taken over live, see
//! [`super::live`]), so the layers can be mounted again.

use std::path::Path;

/// The source (fsname) of our FUSE mounts; the type is `fuse`, or
/// `fuse.rstargz` where the kernel records the subtype.
const FUSE_SOURCE: &str = "rstargz";

/// Mountpoints under `root` of FUSE filesystems served by rstargz, from a
/// `/proc/self/mountinfo` text (deepest first).
pub fn stale_mounts(mountinfo: &str, root: &Path) -> Vec<std::path::PathBuf> {
    let mut found: Vec<std::path::PathBuf> = our_mounts(mountinfo, root)
        .into_iter()
        .map(|(p, _)| p)
        .collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    found
}

/// Our FUSE mounts under `root` with their device numbers (mountinfo
/// order). Read from mountinfo, never by stat: a mount nobody serves
/// would hang the caller.
pub fn our_mounts(mountinfo: &str, root: &Path) -> Vec<(std::path::PathBuf, u64)> {
    mountinfo
        .lines()
        .filter_map(|line| {
            // Fields: id parent maj:min root mountpoint opts [optional…] - fstype source superopts
            let mut fields = line.split(' ');
            let (maj, min) = fields.nth(2)?.split_once(':')?;
            let dev = libc::makedev(maj.parse().ok()?, min.parse().ok()?);
            let mountpoint = fields.nth(1)?;
            let mut tail = line.split(" - ").nth(1)?.split(' ');
            let (fstype, source) = (tail.next()?, tail.next()?);
            let ours = (fstype == "fuse" || fstype == "fuse.rstargz") && source == FUSE_SOURCE;
            ours.then(|| (unescape(mountpoint).into(), dev))
        })
        .filter(|(p, _): &(std::path::PathBuf, u64)| p.starts_with(root))
        .collect()
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && let Ok(v) =
                u8::from_str_radix(std::str::from_utf8(&bytes[i + 1..i + 4]).unwrap_or("x"), 8)
        {
            out.push(v);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Lazily detaches every stale rstargz FUSE mount under `root` except those
/// in `keep` (live mounts a new daemon takes over); returns how many were
/// detached. Failures are logged: a mount that stays blocks only its own
/// layer.
pub fn detach_stale_mounts(root: &Path, keep: &[std::path::PathBuf]) -> usize {
    let info = match std::fs::read_to_string("/proc/self/mountinfo") {
        Ok(i) => i,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read mountinfo; stale mounts stay");
            return 0;
        }
    };
    let mut detached = 0;
    for path in stale_mounts(&info, root) {
        if keep.contains(&path) {
            continue;
        }
        match nix::mount::umount2(&path, nix::mount::MntFlags::MNT_DETACH) {
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
        let found = stale_mounts(info, Path::new("/r"));
        let mut names: Vec<_> = found.iter().map(|p| p.display().to_string()).collect();
        names.sort();
        assert_eq!(
            names,
            ["/r/snapshots/1/fs", "/r/snapshots/2/fs", "/r/with space"]
        );
        let devs = our_mounts(info, Path::new("/r/snapshots"));
        assert_eq!(
            devs,
            [
                ("/r/snapshots/1/fs".into(), libc::makedev(0, 30)),
                ("/r/snapshots/2/fs".into(), libc::makedev(0, 31)),
            ]
        );
    }
}
