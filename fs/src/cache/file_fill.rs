//! Passthrough files filled by the reads that pass through the daemon: the
//! verified bytes of each application read of a file are also written at
//! their offset into a temporary copy, and the copy is complete when every
//! byte has been read once. A file read from start to end is then ready for
//! passthrough by the time the last read is answered, so the next open (an
//! immediate re-read) is served by the kernel from a file on a local
//! filesystem instead of through the FUSE page cache, which this kernel
//! fills with 4 KiB folios only (about a quarter of the copy speed of the
//! large folios of ext4 or xfs).
//!
//! At most [`MAX_FILLING`] files fill at once; starting one more drops the
//! one written to least recently (a file read only in parts never
//! completes). All methods do blocking file I/O.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crate::estargz::Digest;

/// Files filling at once.
pub const MAX_FILLING: usize = 64;

/// One file being filled.
struct Filling {
    file: File,
    tmp: PathBuf,
    size: u64,
    /// Byte ranges written so far, merged: start → end.
    covered: Mutex<BTreeMap<u64, u64>>,
    /// Set by the one caller that adopts the complete copy.
    adopted: AtomicBool,
}

impl Drop for Filling {
    fn drop(&mut self) {
        // Adopted files were renamed away already; this removes the rest.
        let _ = std::fs::remove_file(&self.tmp);
    }
}

/// The files filling now.
pub struct Fills {
    filling: Mutex<lru::LruCache<Digest, Arc<Filling>>>,
}

impl std::fmt::Debug for Fills {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fills").finish_non_exhaustive()
    }
}

impl Default for Fills {
    fn default() -> Self {
        Fills {
            filling: Mutex::new(lru::LruCache::new(
                std::num::NonZeroUsize::new(MAX_FILLING).unwrap_or(std::num::NonZeroUsize::MIN),
            )),
        }
    }
}

impl Fills {
    fn lock(&self) -> std::sync::MutexGuard<'_, lru::LruCache<Digest, Arc<Filling>>> {
        self.filling.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes `data`, the verified bytes at `offset` of the `size`-byte
    /// file `key`, into its copy (started at `tmp()` if new). The write that
    /// completes the copy hands its path to `adopt`, which moves it away (or
    /// declines: the copy is then dropped); returns what `adopt` returned.
    pub fn record(
        &self,
        key: Digest,
        size: u64,
        offset: u64,
        data: &[u8],
        tmp: impl FnOnce() -> PathBuf,
        adopt: impl FnOnce(&Path) -> io::Result<bool>,
    ) -> io::Result<bool> {
        let filling = {
            let mut all = self.lock();
            match all.get(&key) {
                Some(f) => f.clone(),
                None => {
                    let tmp = tmp();
                    let file = File::options()
                        .read(true)
                        .write(true)
                        .create_new(true)
                        .open(&tmp)?;
                    let f = Arc::new(Filling {
                        file,
                        tmp,
                        size,
                        covered: Mutex::new(BTreeMap::new()),
                        adopted: AtomicBool::new(false),
                    });
                    f.file.set_len(size)?;
                    all.push(key, f.clone());
                    f
                }
            }
        };
        let end = offset.saturating_add(data.len() as u64).min(filling.size);
        if offset >= end {
            return Ok(false);
        }
        if let Err(e) = filling
            .file
            .write_all_at(&data[..(end - offset) as usize], offset)
        {
            // A full disk: drop the copy now (its drop deletes the file and
            // frees what it held) rather than keep a copy with a hole.
            self.drop_copy(&key, &filling);
            return Err(e);
        }
        let complete = {
            let mut covered = filling.covered.lock().unwrap_or_else(|p| p.into_inner());
            insert_range(&mut covered, offset, end);
            covered.get(&0) == Some(&filling.size)
        };
        if !complete || filling.adopted.swap(true, Ordering::AcqRel) {
            return Ok(false);
        }
        // A copy dropped from the table meanwhile is complete all the same;
        // any other copy of the key is no longer needed.
        self.lock().pop(&key);
        adopt(&filling.tmp)
    }

    /// Drops `filling` from the table if it is still the copy of `key`.
    fn drop_copy(&self, key: &Digest, filling: &Arc<Filling>) {
        let mut all = self.lock();
        if all.peek(key).is_some_and(|f| Arc::ptr_eq(f, filling)) {
            all.pop(key);
        }
    }

    /// Forgets the copy of `key` (it was made ready another way).
    pub fn forget(&self, key: &Digest) {
        self.lock().pop(key);
    }

    /// Files filling now.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no file is filling.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Adds `[start, end)` to the merged ranges.
fn insert_range(ranges: &mut BTreeMap<u64, u64>, mut start: u64, mut end: u64) {
    // Merge with a range starting before and reaching `start`.
    if let Some((&s, &e)) = ranges.range(..=start).next_back()
        && e >= start
    {
        start = s;
        end = end.max(e);
        ranges.remove(&s);
    }
    // Merge with the ranges starting inside the new one.
    let inside: Vec<(u64, u64)> = ranges.range(start..=end).map(|(s, e)| (*s, *e)).collect();
    for (s, e) in inside {
        end = end.max(e);
        ranges.remove(&s);
    }
    ranges.insert(start, end);
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn ranges_merge() {
        let mut r = BTreeMap::new();
        insert_range(&mut r, 10, 20);
        insert_range(&mut r, 30, 40);
        insert_range(&mut r, 0, 5);
        assert_eq!(r.len(), 3);
        insert_range(&mut r, 5, 10);
        insert_range(&mut r, 15, 35);
        assert_eq!(r.into_iter().collect::<Vec<_>>(), [(0, 40)]);
    }

    #[test]
    fn a_file_completes_once_every_byte_was_read() {
        let dir = tempfile::tempdir().unwrap();
        let fills = Fills::default();
        let key = Digest::of(b"k");
        let tmp = || dir.path().join("t");
        let kept = dir.path().join("kept");
        let adopt = |p: &Path| std::fs::rename(p, &kept).map(|()| true);
        let data: Vec<u8> = (0..100u8).collect();
        assert!(!fills.record(key, 100, 60, &data[60..], tmp, adopt).unwrap());
        // Overlapping and past-the-end reads are fine.
        assert!(
            !fills
                .record(key, 100, 50, &data[50..80], tmp, adopt)
                .unwrap()
        );
        assert_eq!(fills.len(), 1);
        assert!(fills.record(key, 100, 0, &data[..50], tmp, adopt).unwrap());
        assert_eq!(std::fs::read(&kept).unwrap(), data);
        assert!(fills.is_empty());
    }

    #[test]
    fn the_least_recently_written_copy_gives_way() {
        let dir = tempfile::tempdir().unwrap();
        let fills = Fills::default();
        for i in 0..=MAX_FILLING {
            let key = Digest::of(&i.to_le_bytes());
            let tmp = dir.path().join(i.to_string());
            let adopted = fills.record(key, 10, 0, b"abc", || tmp, |_| Ok(true));
            assert!(!adopted.unwrap());
        }
        assert_eq!(fills.len(), MAX_FILLING);
        assert!(
            !dir.path().join("0").exists(),
            "the dropped copy is deleted"
        );
        assert!(dir.path().join(MAX_FILLING.to_string()).exists());
    }
}
