//! Data extents of a sparse file.
//!
//! [`data_extents`] lists the byte ranges of a file that may hold data, using
//! `lseek(SEEK_DATA/SEEK_HOLE)` so that a 20 GiB image with a few megabytes
//! written is walked in a handful of system calls. Holes always read as zeros;
//! ranges reported as data may still contain zeros (callers check). On a
//! filesystem without hole reporting the whole file is one data extent, which
//! is correct, only slower. [`copy_sparse`] copies a file keeping its holes.

use std::fs::File;
use std::io;
use std::ops::Range;
use std::os::unix::fs::FileExt;

use nix::errno::Errno;
use nix::unistd::{Whence, lseek};

/// The ranges of `file` (of length `len`) that may contain non-zero bytes, in
/// ascending order and non-overlapping.
pub fn data_extents(file: &File, len: u64) -> io::Result<Vec<Range<u64>>> {
    let mut extents = Vec::new();
    let mut offset = 0u64;
    while offset < len {
        let start = match seek(file, offset, Whence::SeekData) {
            Ok(start) => start,
            // ENXIO: no data at or after `offset`.
            Err(Errno::ENXIO) => break,
            // EINVAL: this filesystem cannot report holes; treat everything as data.
            Err(Errno::EINVAL) if offset == 0 => {
                extents.push(0..len);
                break;
            }
            Err(errno) => return Err(errno.into()),
        };
        if start >= len {
            break;
        }
        let end = seek(file, start, Whence::SeekHole)?.min(len);
        extents.push(start..end);
        offset = end;
    }
    Ok(extents)
}

/// Copies `src` into `dst` (truncated first), writing only `src`'s data
/// extents so that holes stay holes.
pub fn copy_sparse(src: &File, dst: &File) -> io::Result<()> {
    let len = src.metadata()?.len();
    dst.set_len(0)?;
    let mut buf = vec![0u8; 1 << 20];
    for extent in data_extents(src, len)? {
        let mut offset = extent.start;
        while offset < extent.end {
            let chunk = &mut buf[..(extent.end - offset).min(1 << 20) as usize];
            src.read_exact_at(chunk, offset)?;
            dst.write_all_at(chunk, offset)?;
            offset += chunk.len() as u64;
        }
    }
    dst.set_len(len)
}

fn seek(file: &File, offset: u64, whence: Whence) -> Result<u64, Errno> {
    let offset = i64::try_from(offset).map_err(|_| Errno::EOVERFLOW)?;
    let found = lseek(file, offset, whence)?;
    u64::try_from(found).map_err(|_| Errno::EOVERFLOW)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn finds_written_ranges_and_skips_holes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sparse");
        let file = File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .unwrap();
        let len = 64 << 20;
        file.set_len(len).unwrap();
        file.write_all_at(b"x", 10 << 20).unwrap();
        file.write_all_at(b"y", len - 1).unwrap();
        let extents = data_extents(&file, len).unwrap();
        // Filesystems report data at their own allocation granularity, so
        // only check that both writes are covered and most of the file is not.
        let covers = |at: u64| extents.iter().any(|r| r.contains(&at));
        assert!(covers(10 << 20), "{extents:?}");
        assert!(covers(len - 1), "{extents:?}");
        let data: u64 = extents.iter().map(|r| r.end - r.start).sum();
        assert!(data < 8 << 20, "{extents:?}");
    }

    #[test]
    fn sparse_copy_keeps_bytes_and_holes() {
        let src = tempfile::tempfile().unwrap();
        src.set_len(32 << 20).unwrap();
        src.write_all_at(&[7; 5000], (3 << 20) - 100).unwrap();
        let dst = tempfile::tempfile().unwrap();
        dst.write_all_at(b"old contents", 0).unwrap();
        copy_sparse(&src, &dst).unwrap();
        assert_eq!(dst.metadata().unwrap().len(), 32 << 20);
        let read = |f: &File| {
            let mut buf = vec![0u8; 32 << 20];
            f.read_exact_at(&mut buf, 0).unwrap();
            buf
        };
        assert!(read(&src) == read(&dst));
        let data: u64 = data_extents(&dst, 32 << 20)
            .unwrap()
            .iter()
            .map(|r| r.end - r.start)
            .sum();
        assert!(data < 8 << 20, "holes were filled: {data} bytes of data");
    }

    #[test]
    fn empty_sparse_file_has_no_extents() {
        let file = tempfile::tempfile().unwrap();
        file.set_len(1 << 30).unwrap();
        assert!(data_extents(&file, 1 << 30).unwrap().is_empty());
    }
}
