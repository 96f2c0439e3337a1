//! Disk usage of a directory tree, counted like containerd's
//! `fs.DiskUsage` (and `du`): allocated blocks, each inode once even when it
//! has several hard links, the root included; symlinks are not followed.

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::model::Usage;
use crate::model::{Context, Result};

/// Walks `root` and sums its distinct inodes.
pub fn disk_usage(root: &Path) -> Result<Usage> {
    let mut seen: HashSet<(u64, u64)> = HashSet::new();
    let mut usage = Usage::default();
    let mut stack = vec![root.to_path_buf()];
    while let Some(path) = stack.pop() {
        let meta =
            std::fs::symlink_metadata(&path).context(|| format!("stat {}", path.display()))?;
        if seen.insert((meta.dev(), meta.ino())) {
            usage.inodes += 1;
            usage.size += i64::try_from(meta.blocks().saturating_mul(512)).unwrap_or(i64::MAX);
        }
        if meta.is_dir() {
            for entry in std::fs::read_dir(&path).context(|| format!("read {}", path.display()))? {
                stack.push(entry.context(|| format!("read {}", path.display()))?.path());
            }
        }
    }
    Ok(usage)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn hardlinks_count_once() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a"), vec![1u8; 64 * 1024]).unwrap();
        let before = disk_usage(dir.path()).unwrap();
        std::fs::hard_link(dir.path().join("a"), dir.path().join("b")).unwrap();
        let after = disk_usage(dir.path()).unwrap();
        assert_eq!(before.inodes, 2);
        assert_eq!(after.inodes, 2);
        assert_eq!(before.size, after.size);
        assert!(after.size >= 64 * 1024);
    }
}
