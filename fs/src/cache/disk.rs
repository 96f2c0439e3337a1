//! On-disk store of verified, decompressed chunks, content-addressed by the
//! chunk's sha256: `<root>/chunks/<hex[0..2]>/<hex>` (a [`ContentDir`]).
//!
//! Contract:
//! - Only chunks whose bytes hash to their name are ever returned: every read
//!   re-hashes the file (cheap next to a network fetch) and a mismatching
//!   file is deleted and reported as a miss, so disk corruption or a torn
//!   write after a crash leads to a refetch, never to wrong bytes. That
//!   check is why writes skip fsync: paying one per chunk would slow every
//!   cold read, and a file lost in a crash is simply fetched again.
//! - Writes are atomic (temporary file + rename) and the total size is
//!   bounded with LRU eviction (see [`ContentDir`]).
//!
//! - With `drop_page_cache` (the Go reference's `fadv_dontneed`) each
//!   file's pages are dropped from the page cache once written or read:
//!   the chunk lives on in the memory tier, so the kernel's copy is a
//!   second one.
//!
//! All methods do blocking file I/O; async callers run them on a blocking pool.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use super::content_dir::ContentDir;
use super::error::DiskCacheError;
use crate::estargz::Digest;

/// Counters of the disk cache.
#[derive(Debug, Default)]
pub struct DiskCacheStats {
    /// Chunks served from disk (after verification).
    pub hits: AtomicU64,
    /// Chunks looked up and not found.
    pub misses: AtomicU64,
    /// Files found corrupt (hash mismatch) and deleted.
    pub corrupt: AtomicU64,
    /// Chunks written.
    pub writes: AtomicU64,
}

/// A size-bounded, content-addressed chunk store on disk.
#[derive(Debug)]
pub struct DiskCache {
    dir: ContentDir,
    stats: DiskCacheStats,
    drop_page_cache: bool,
}

/// Asks the kernel to drop the cached pages of `file` (advice: a failure
/// only leaves them cached).
fn drop_pages(file: &File) {
    use nix::fcntl::{PosixFadviseAdvice, posix_fadvise};
    if let Err(e) = posix_fadvise(file, 0, 0, PosixFadviseAdvice::POSIX_FADV_DONTNEED) {
        tracing::debug!(error = %e, "cannot drop the page cache of a cached chunk");
    }
}

impl DiskCache {
    /// Opens (creating) the cache under `root`, bounded to `max_bytes`.
    pub fn open(root: impl Into<PathBuf>, max_bytes: u64) -> Result<Self, DiskCacheError> {
        let root = root.into();
        Ok(DiskCache {
            dir: ContentDir::open(root.join("chunks"), root.join("tmp"), max_bytes)?,
            stats: DiskCacheStats::default(),
            drop_page_cache: false,
        })
    }

    /// Drops each chunk file's pages from the page cache once it is
    /// written or read (`[directory_cache] fadv_dontneed`).
    pub fn with_page_cache_dropped(mut self, drop: bool) -> Self {
        self.drop_page_cache = drop;
        self
    }

    /// Whether chunk files' pages are dropped from the page cache.
    pub fn drops_page_cache(&self) -> bool {
        self.drop_page_cache
    }

    fn read_file(&self, path: &std::path::Path) -> io::Result<Vec<u8>> {
        let mut file = File::open(path)?;
        let mut data = Vec::new();
        file.read_to_end(&mut data)?;
        if self.drop_page_cache {
            drop_pages(&file);
        }
        Ok(data)
    }

    /// Counters.
    pub fn stats(&self) -> &DiskCacheStats {
        &self.stats
    }

    /// Chunks evicted to stay within the bound.
    pub fn evictions(&self) -> u64 {
        self.dir.evictions()
    }

    /// Bytes currently stored.
    pub fn used_bytes(&self) -> u64 {
        self.dir.used_bytes()
    }

    /// Number of chunks currently stored.
    pub fn len(&self) -> usize {
        self.dir.len()
    }

    /// Whether no chunk is stored.
    pub fn is_empty(&self) -> bool {
        self.dir.is_empty()
    }

    /// Path where the chunk `digest` is stored.
    pub fn chunk_path(&self, digest: &Digest) -> PathBuf {
        self.dir.path(digest)
    }

    /// Returns the verified bytes of `digest`, or `None` if absent or corrupt.
    pub fn get(&self, digest: &Digest) -> Option<Vec<u8>> {
        let path = self.dir.path(digest);
        let Ok(data) = self.read_file(&path) else {
            self.stats.misses.fetch_add(1, Ordering::Relaxed);
            self.dir.remove(digest);
            return None;
        };
        if Digest::of(&data) != *digest {
            tracing::warn!(chunk = %digest, path = %path.display(), "corrupt cached chunk; deleting");
            self.stats.corrupt.fetch_add(1, Ordering::Relaxed);
            self.dir.remove(digest);
            return None;
        }
        self.stats.hits.fetch_add(1, Ordering::Relaxed);
        self.dir.touch(digest);
        Some(data)
    }

    /// Whether `digest` is stored (not verified; for accounting and tests).
    pub fn contains(&self, digest: &Digest) -> bool {
        self.dir.contains(digest)
    }

    /// Stores `data`, which the caller has verified to hash to `digest`.
    pub fn put(&self, digest: &Digest, data: &[u8]) -> io::Result<()> {
        if data.len() as u64 > self.dir.max_bytes() || self.contains(digest) {
            return Ok(());
        }
        self.dir.write(digest, |f| {
            f.write_all(data)?;
            if self.drop_page_cache {
                drop_pages(f);
            }
            Ok(true)
        })?;
        self.stats.writes.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn put_get_evict_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let cache = DiskCache::open(dir.path(), 250).unwrap();
        let chunks: Vec<Vec<u8>> = (0..3u8).map(|i| vec![i; 100]).collect();
        let digests: Vec<Digest> = chunks.iter().map(|c| Digest::of(c)).collect();
        cache.put(&digests[0], &chunks[0]).unwrap();
        cache.put(&digests[1], &chunks[1]).unwrap();
        assert_eq!(cache.get(&digests[0]).unwrap(), chunks[0]);
        // Chunk 1 is now least recently used and goes first.
        cache.put(&digests[2], &chunks[2]).unwrap();
        assert!(cache.used_bytes() <= 250);
        assert_eq!(cache.evictions(), 1);
        assert!(!cache.chunk_path(&digests[1]).exists());
        assert!(cache.get(&digests[1]).is_none());
        drop(cache);
        let cache = DiskCache::open(dir.path(), 250).unwrap();
        assert_eq!(cache.len(), 2);
        assert_eq!(cache.get(&digests[2]).unwrap(), chunks[2]);
    }

    #[test]
    fn dropping_the_page_cache_still_stores_and_serves() {
        let dir = tempfile::tempdir().unwrap();
        let cache = DiskCache::open(dir.path(), 1 << 20)
            .unwrap()
            .with_page_cache_dropped(true);
        assert!(cache.drops_page_cache());
        let data = b"dropped from the page cache".to_vec();
        let d = Digest::of(&data);
        cache.put(&d, &data).unwrap();
        assert_eq!(cache.get(&d).unwrap(), data);
    }

    #[test]
    fn corrupt_file_is_deleted_not_served() {
        let dir = tempfile::tempdir().unwrap();
        let cache = DiskCache::open(dir.path(), 1 << 20).unwrap();
        let data = b"hello chunk".to_vec();
        let d = Digest::of(&data);
        cache.put(&d, &data).unwrap();
        std::fs::write(cache.chunk_path(&d), b"hellO chunk").unwrap();
        assert!(cache.get(&d).is_none());
        assert!(!cache.chunk_path(&d).exists());
        assert_eq!(cache.stats().corrupt.load(Ordering::Relaxed), 1);
    }
}
