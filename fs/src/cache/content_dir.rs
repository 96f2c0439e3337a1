//! A size-bounded directory of content-addressed files,
//! `<dir>/<hex[0..2]>/<hex>`, shared by the chunk and whole-file stores.
//!
//! Contract:
//! - Files are written under `tmp` (same filesystem) and renamed into place,
//!   so a reader never sees a partial file. No fsync: callers verify content
//!   on use, which also catches a file torn by a crash.
//! - Total size stays within the bound: after each insert the least recently
//!   used files are deleted. The order is kept in memory and rebuilt from
//!   file mtimes when the directory is opened; stale temporary files are
//!   removed then.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use lru::LruCache;

use super::error::DiskCacheError;
use crate::estargz::Digest;

struct Lru {
    entries: LruCache<Digest, u64>,
    bytes: u64,
}

/// Size-bounded, LRU-evicted directory of files named by digest.
pub struct ContentDir {
    dir: PathBuf,
    tmp: PathBuf,
    max_bytes: u64,
    lru: Mutex<Lru>,
    seq: AtomicU64,
    evictions: AtomicU64,
}

impl std::fmt::Debug for ContentDir {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContentDir")
            .field("dir", &self.dir)
            .field("max_bytes", &self.max_bytes)
            .finish_non_exhaustive()
    }
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> DiskCacheError + use<> {
    let path = path.to_owned();
    move |source| DiskCacheError::Io { path, source }
}

impl ContentDir {
    /// Opens (creating) `dir`, with temporary files in `tmp`, bounded to `max_bytes`.
    pub fn open(dir: PathBuf, tmp: PathBuf, max_bytes: u64) -> Result<Self, DiskCacheError> {
        if tmp.exists() {
            fs::remove_dir_all(&tmp).map_err(io_err(&tmp))?;
        }
        fs::create_dir_all(&tmp).map_err(io_err(&tmp))?;
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let mut found = Vec::new();
        for shard in fs::read_dir(&dir).map_err(io_err(&dir))? {
            let shard = shard.map_err(io_err(&dir))?.path();
            let Ok(files) = fs::read_dir(&shard) else {
                continue;
            };
            for file in files.flatten() {
                let Some(digest) = file.file_name().to_str().and_then(parse_hex_digest) else {
                    continue;
                };
                if let Ok(meta) = file.metadata() {
                    found.push((meta.modified().ok(), digest, meta.len()));
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
        let out = ContentDir {
            dir,
            tmp,
            max_bytes,
            lru: Mutex::new(lru),
            seq: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
        };
        out.evict_to(max_bytes);
        Ok(out)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Lru> {
        // The guarded data stays consistent even if a holder panicked.
        self.lru.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Path of the file `key`.
    pub fn path(&self, key: &Digest) -> PathBuf {
        let hex = hex::encode(key.0);
        self.dir.join(&hex[..2]).join(hex)
    }

    /// Whether `key` is stored (per the in-memory accounting).
    pub fn contains(&self, key: &Digest) -> bool {
        self.lock().entries.contains(key)
    }

    /// Marks `key` as just used.
    pub fn touch(&self, key: &Digest) {
        self.lock().entries.get(key);
    }

    /// Deletes `key`'s file and its accounting.
    pub fn remove(&self, key: &Digest) {
        let _ = fs::remove_file(self.path(key));
        let mut lru = self.lock();
        if let Some(len) = lru.entries.pop(key) {
            lru.bytes -= len;
        }
    }

    /// Bytes stored.
    pub fn used_bytes(&self) -> u64 {
        self.lock().bytes
    }

    /// Files stored.
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    /// Whether nothing is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Files evicted so far.
    pub fn evictions(&self) -> u64 {
        self.evictions.load(Ordering::Relaxed)
    }

    /// A fresh temporary file for `key` (on the directory's filesystem),
    /// to be [`adopt`](Self::adopt)ed or deleted by the caller.
    pub fn temp_path(&self, key: &Digest) -> PathBuf {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        self.tmp.join(format!(
            "{}.{}.{seq}",
            hex::encode(key.0),
            std::process::id()
        ))
    }

    /// Renames the complete temporary file `tmp` into place as `key` and
    /// evicts down to the bound.
    pub fn adopt(&self, key: &Digest, tmp: &Path) -> io::Result<()> {
        let path = self.path(key);
        let len = fs::metadata(tmp)?.len();
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir)?;
        }
        fs::rename(tmp, &path)?;
        {
            let mut lru = self.lock();
            if let Some(old) = lru.entries.put(*key, len) {
                lru.bytes -= old;
            }
            lru.bytes += len;
        }
        self.evict_to(self.max_bytes);
        Ok(())
    }

    /// Writes `key` through `fill` into a temporary file and, if `fill`
    /// returns true, renames it into place and evicts down to the bound.
    /// Returns whether the file was stored.
    pub fn write(
        &self,
        key: &Digest,
        fill: impl FnOnce(&mut File) -> io::Result<bool>,
    ) -> io::Result<bool> {
        let tmp = self.temp_path(key);
        let res = (|| {
            let mut f = File::create(&tmp)?;
            if !fill(&mut f)? {
                return Ok(false);
            }
            self.adopt(key, &tmp)?;
            Ok(true)
        })();
        if !matches!(res, Ok(true)) {
            let _ = fs::remove_file(&tmp);
        }
        res
    }

    /// The bound.
    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
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
            let _ = fs::remove_file(self.path(&victim));
            self.evictions.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn parse_hex_digest(name: &str) -> Option<Digest> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(name, &mut out).ok()?;
    Some(Digest(out))
}
