//! Timed file reads and tree walks on any mounted directory (a snapshotter's
//! layer or the native baseline), plus the page-cache drop between cold runs.
//! The same offsets and order are used for every target, so figures compare.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

use serde::Serialize;

/// Read order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    /// From offset 0 upwards.
    Seq,
    /// Block-aligned offsets from a fixed-seed generator.
    Rand,
}

/// What one timed read run does.
#[derive(Debug, Clone, Copy)]
pub struct ReadSpec {
    /// Read order.
    pub access: Access,
    /// Bytes per `pread`.
    pub block: usize,
    /// Stop after this many reads.
    pub max_ops: u64,
    /// Stop after this long (the figures cover what was read by then).
    pub max_time: Duration,
}

/// Figures of one read run.
#[derive(Debug, Clone, Serialize)]
pub struct ReadFigures {
    /// Bytes returned.
    pub bytes: u64,
    /// Reads issued.
    pub ops: u64,
    /// Wall-clock seconds.
    pub seconds: f64,
    /// Throughput in MB/s (10^6 bytes).
    pub mb_per_s: f64,
    /// Reads per second.
    pub ops_per_s: f64,
}

/// Seed of the random offsets: fixed, so every target reads the same blocks.
const SEED: u64 = 0x9e37_79b9_7f4a_7c15;

/// Reads `path` as `spec` says and times it.
pub fn read_file(path: &Path, spec: &ReadSpec) -> io::Result<ReadFigures> {
    let file = File::open(path)?;
    let size = file.metadata()?.len();
    let block = spec.block.max(1);
    let blocks = (size / block as u64).max(1);
    let mut buf = vec![0u8; block];
    let mut rng = SEED;
    let (mut bytes, mut ops) = (0u64, 0u64);
    let started = Instant::now();
    while ops < spec.max_ops && started.elapsed() < spec.max_time {
        let offset = match spec.access {
            Access::Seq => ops * block as u64,
            Access::Rand => {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                (rng % blocks) * block as u64
            }
        };
        if offset >= size {
            break;
        }
        let n = file.read_at(&mut buf, offset)?;
        if n == 0 {
            break;
        }
        bytes += n as u64;
        ops += 1;
    }
    let seconds = started.elapsed().as_secs_f64().max(1e-9);
    Ok(ReadFigures {
        bytes,
        ops,
        seconds,
        mb_per_s: bytes as f64 / 1e6 / seconds,
        ops_per_s: ops as f64 / seconds,
    })
}

/// Reads the whole file once, untimed (brings it into the page cache).
pub fn prime(path: &Path) -> io::Result<()> {
    read_file(
        path,
        &ReadSpec {
            access: Access::Seq,
            block: 1 << 20,
            max_ops: u64::MAX,
            max_time: Duration::from_secs(600),
        },
    )
    .map(drop)
}

/// Figures of one tree walk.
#[derive(Debug, Clone, Serialize)]
pub struct WalkFigures {
    /// Entries seen (every name, the root included).
    pub entries: u64,
    /// Wall-clock seconds.
    pub seconds: f64,
    /// Entries per second.
    pub entries_per_s: f64,
}

/// `find ROOT` plus `lstat` of every name: readdir of each directory and a
/// stat of each entry, depth first, symlinks not followed.
pub fn walk(root: &Path) -> io::Result<WalkFigures> {
    let started = Instant::now();
    let mut entries = 1u64;
    std::fs::symlink_metadata(root)?;
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            let md = std::fs::symlink_metadata(&path)?;
            entries += 1;
            if md.is_dir() {
                stack.push(path);
            }
        }
    }
    let seconds = started.elapsed().as_secs_f64().max(1e-9);
    Ok(WalkFigures {
        entries,
        seconds,
        entries_per_s: entries as f64 / seconds,
    })
}

/// Writes dirty pages back and drops the page, dentry and inode caches
/// (FUSE mounts included), so the next read is cold. Needs root.
pub fn drop_caches() -> io::Result<()> {
    nix::unistd::sync();
    std::fs::write("/proc/sys/vm/drop_caches", "3")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_are_bounded_and_counted() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("f");
        std::fs::write(&path, vec![7u8; 10_000])?;
        let spec = |access, max_ops| ReadSpec {
            access,
            block: 4096,
            max_ops,
            max_time: Duration::from_secs(10),
        };
        // Sequential stops at end of file: two full blocks and a short one.
        let seq = read_file(&path, &spec(Access::Seq, 100))?;
        assert_eq!((seq.ops, seq.bytes), (3, 10_000));
        // Random reads stay block-aligned inside the file.
        let rand = read_file(&path, &spec(Access::Rand, 5))?;
        assert_eq!(rand.ops, 5);
        assert_eq!(rand.bytes, 5 * 4096);
        std::fs::create_dir_all(dir.path().join("a/b"))?;
        let w = walk(dir.path())?;
        // root, f, a, a/b
        assert_eq!(w.entries, 4);
        Ok(())
    }
}
