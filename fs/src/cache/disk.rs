//! On-disk store of verified, decompressed chunks, content-addressed by the
//! chunk's sha256: `<root>/chunks/<hex[0..2]>/<hex>`.
//!
//! Contract:
//! - Only chunks whose bytes hash to their name are ever returned: every read
//!   re-hashes the file (cheap next to a network fetch) and a mismatching
//!   file is deleted and reported as a miss, so disk corruption or a torn
//!   write after a crash leads to a refetch, never to wrong bytes.
//! - Writes go to `<root>/tmp/` and are renamed into place, so a reader never
//!   sees a half-written file. There is no fsync: a crash may leave a renamed
//!   file whose data never reached the disk, which the read-side check above
//!   catches; paying an fsync per chunk would slow every cold read instead.
//! - Total size is bounded: least recently used chunks (order kept in memory,
//!   rebuilt from file mtimes at open) are deleted when a write exceeds the
//!   bound. Stale temporary files are removed at open.
//!
//! All methods do blocking file I/O; async callers run them on a blocking pool.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use lru::LruCache;

use crate::estargz::Digest;

/// Errors opening a disk cache.
#[derive(Debug, thiserror::Error)]
pub enum DiskCacheError {
    /// A cache directory could not be created or scanned.
    #[error("disk cache at {path}: {source}")]
    Io {
        /// The directory or file involved.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
}

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
    /// Chunks evicted to stay within the bound.
    pub evictions: AtomicU64,
}

struct Lru {
    entries: LruCache<Digest, u64>,
    bytes: u64,
}

/// A size-bounded, content-addressed chunk store on disk.
pub struct DiskCache {
    root: PathBuf,
    max_bytes: u64,
    lru: Mutex<Lru>,
    tmp_seq: AtomicU64,
    stats: DiskCacheStats,
}

impl std::fmt::Debug for DiskCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskCache")
            .field("root", &self.root)
            .field("max_bytes", &self.max_bytes)
            .finish_non_exhaustive()
    }
}

impl DiskCache {
    /// Opens (creating) the cache under `root`, bounded to `max_bytes`.
    pub fn open(root: impl Into<PathBuf>, max_bytes: u64) -> Result<Self, DiskCacheError> {
        let root = root.into();
        let io_err = |path: &Path| {
            let path = path.to_owned();
            move |source| DiskCacheError::Io { path, source }
        };
        let tmp = root.join("tmp");
        let chunks = root.join("chunks");
        if tmp.exists() {
            fs::remove_dir_all(&tmp).map_err(io_err(&tmp))?;
        }
        fs::create_dir_all(&tmp).map_err(io_err(&tmp))?;
        fs::create_dir_all(&chunks).map_err(io_err(&chunks))?;
        let mut found = Vec::new();
        for shard in fs::read_dir(&chunks).map_err(io_err(&chunks))? {
            let shard = shard.map_err(io_err(&chunks))?.path();
            let Ok(files) = fs::read_dir(&shard) else {
                continue;
            };
            for file in files.flatten() {
                let Some(digest) = file.file_name().to_str().and_then(parse_hex_digest) else {
                    continue;
                };
                if let Ok(meta) = file.metadata() {
                    let mtime = meta.modified().ok();
                    found.push((mtime, digest, meta.len()));
                }
            }
        }
        found.sort_by_key(|(mtime, _, _)| *mtime);
        let mut lru = Lru {
            entries: LruCache::unbounded(),
            bytes: 0,
        };
        for (_, digest, len) in found {
            lru.entries.put(digest, len);
            lru.bytes += len;
        }
        let cache = DiskCache {
            root,
            max_bytes,
            lru: Mutex::new(lru),
            tmp_seq: AtomicU64::new(0),
            stats: DiskCacheStats::default(),
        };
        cache.evict_to(max_bytes);
        Ok(cache)
    }

    /// Counters.
    pub fn stats(&self) -> &DiskCacheStats {
        &self.stats
    }

    /// Bytes currently stored.
    pub fn used_bytes(&self) -> u64 {
        self.lock().bytes
    }

    /// Number of chunks currently stored.
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    /// Whether no chunk is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Path where the chunk `digest` is stored.
    pub fn chunk_path(&self, digest: &Digest) -> PathBuf {
        let hex = hex::encode(digest.0);
        self.root.join("chunks").join(&hex[..2]).join(hex)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Lru> {
        // The guarded data stays consistent even if a holder panicked.
        self.lru.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Returns the verified bytes of `digest`, or `None` if absent or corrupt.
    pub fn get(&self, digest: &Digest) -> Option<Vec<u8>> {
        let path = self.chunk_path(digest);
        let data = match fs::read(&path) {
            Ok(d) => d,
            Err(_) => {
                self.stats.misses.fetch_add(1, Ordering::Relaxed);
                self.forget(digest);
                return None;
            }
        };
        if Digest::of(&data) != *digest {
            tracing::warn!(chunk = %digest, path = %path.display(), "corrupt cached chunk; deleting");
            self.stats.corrupt.fetch_add(1, Ordering::Relaxed);
            let _ = fs::remove_file(&path);
            self.forget(digest);
            return None;
        }
        self.stats.hits.fetch_add(1, Ordering::Relaxed);
        self.lock().entries.get(digest);
        Some(data)
    }

    /// Whether `digest` is stored (not verified; for accounting and tests).
    pub fn contains(&self, digest: &Digest) -> bool {
        self.lock().entries.contains(digest)
    }

    /// Stores `data`, which the caller has verified to hash to `digest`.
    pub fn put(&self, digest: &Digest, data: &[u8]) -> io::Result<()> {
        let len = data.len() as u64;
        if len > self.max_bytes || self.contains(digest) {
            return Ok(());
        }
        let path = self.chunk_path(digest);
        let seq = self.tmp_seq.fetch_add(1, Ordering::Relaxed);
        let tmp = self.root.join("tmp").join(format!(
            "{}.{}.{seq}",
            hex::encode(digest.0),
            std::process::id()
        ));
        let write = || -> io::Result<()> {
            let mut f = fs::File::create(&tmp)?;
            f.write_all(data)?;
            if let Some(dir) = path.parent() {
                fs::create_dir_all(dir)?;
            }
            fs::rename(&tmp, &path)
        };
        if let Err(e) = write() {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        self.stats.writes.fetch_add(1, Ordering::Relaxed);
        {
            let mut lru = self.lock();
            if lru.entries.put(*digest, len).is_none() {
                lru.bytes += len;
            }
        }
        self.evict_to(self.max_bytes);
        Ok(())
    }

    fn forget(&self, digest: &Digest) {
        let mut lru = self.lock();
        if let Some(len) = lru.entries.pop(digest) {
            lru.bytes -= len;
        }
    }

    fn evict_to(&self, bound: u64) {
        loop {
            let victim = {
                let mut lru = self.lock();
                if lru.bytes <= bound {
                    return;
                }
                match lru.entries.pop_lru() {
                    Some((d, len)) => {
                        lru.bytes -= len;
                        d
                    }
                    None => return,
                }
            };
            let _ = fs::remove_file(self.chunk_path(&victim));
            self.stats.evictions.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn parse_hex_digest(name: &str) -> Option<Digest> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(name, &mut out).ok()?;
    Some(Digest(out))
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
        assert!(!cache.chunk_path(&digests[1]).exists());
        assert!(cache.get(&digests[1]).is_none());
        drop(cache);
        let cache = DiskCache::open(dir.path(), 250).unwrap();
        assert_eq!(cache.len(), 2);
        assert_eq!(cache.get(&digests[2]).unwrap(), chunks[2]);
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
