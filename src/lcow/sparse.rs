//! Data extents of a sparse file.
//!
//! [`data_extents`] lists the byte ranges of a file that may hold data, using
//! `lseek(SEEK_DATA/SEEK_HOLE)` so that a 20 GiB image with a few megabytes
//! written is walked in a handful of system calls. Holes always read as zeros;
//! ranges reported as data may still contain zeros (callers check). On a
//! filesystem without hole reporting the whole file is one data extent, which
//! is correct, only slower.

use std::fs::File;
use std::io;
use std::ops::Range;

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
            Err(Errno::EINVAL) if extents.is_empty() && offset == 0 => return Ok(vec![0..len]),
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

fn seek(file: &File, offset: u64, whence: Whence) -> Result<u64, Errno> {
    let offset = i64::try_from(offset).map_err(|_| Errno::EOVERFLOW)?;
    let found = lseek(file, offset, whence)?;
    u64::try_from(found).map_err(|_| Errno::EOVERFLOW)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

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
    fn empty_sparse_file_has_no_extents() {
        let file = tempfile::tempfile().unwrap();
        file.set_len(1 << 30).unwrap();
        assert!(data_extents(&file, 1 << 30).unwrap().is_empty());
    }
}
