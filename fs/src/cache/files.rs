//! Whole decompressed files assembled from verified cached chunks, for
//! kernel FUSE passthrough: `<root>/files/<hex[0..2]>/<hex>`.
//!
//! Contract:
//! - A file is keyed by [`FileStore::file_key`], the sha256 of its chunk
//!   digests and sizes, so identical files in different layers share one copy.
//! - A file is only handed out ([`FileStore::ready_file`]) after this process
//!   has assembled it from verified chunks, filled it with the verified bytes
//!   of the reads that passed through ([`FileStore::record_read`], see
//!   [`file_fill`](super::file_fill)), or re-verified every chunk of an
//!   existing copy; a copy that fails the check is deleted. Preparation runs
//!   off the request path and never blocks an open.
//! - A ready file is re-used across opens without re-hashing it (that
//!   would read the whole file per open), but each open compares the file's
//!   identity, size and change time with those it had when it became ready:
//!   a file truncated, rewritten or replaced behind the store's back is
//!   dropped and prepared again, never passed through.
//! - Files are written atomically and bounded in total size with LRU
//!   eviction ([`ContentDir`]); evicting a file in use is harmless (open
//!   backing fds keep the data until closed).
//! - Files without a digest on every chunk are never materialized.
//!
//! All methods do blocking file I/O.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use sha2::{Digest as _, Sha256};

use super::content_dir::ContentDir;
use super::disk::DiskCache;
use super::error::DiskCacheError;
use super::file_fill::Fills;
use crate::estargz::{Chunk, Digest};
use crate::file_stamp::FileStamp;

/// Counters of the file store.
#[derive(Debug, Default)]
pub struct FileStoreStats {
    /// Files assembled from cached chunks.
    pub assembled: AtomicU64,
    /// Existing files re-verified and accepted.
    pub verified: AtomicU64,
    /// Existing files that failed verification and were deleted.
    pub corrupt: AtomicU64,
    /// Files completed by the reads that passed through.
    pub filled: AtomicU64,
}

#[derive(Default)]
struct State {
    /// Ready files and their stamps when they became ready.
    ready: HashMap<Digest, FileStamp>,
    busy: HashSet<Digest>,
}

/// Store of whole files for passthrough.
#[derive(Debug)]
pub struct FileStore {
    dir: ContentDir,
    state: Mutex<State>,
    stats: FileStoreStats,
    fills: Fills,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State")
            .field("ready", &self.ready.len())
            .finish_non_exhaustive()
    }
}

impl FileStore {
    /// Opens (creating) the store under `root`, bounded to `max_bytes`.
    pub fn open(root: impl Into<PathBuf>, max_bytes: u64) -> Result<Self, DiskCacheError> {
        let root = root.into();
        Ok(FileStore {
            dir: ContentDir::open(root.join("files"), root.join("files-tmp"), max_bytes)?,
            state: Mutex::new(State::default()),
            stats: FileStoreStats::default(),
            fills: Fills::default(),
        })
    }

    /// Counters.
    pub fn stats(&self) -> &FileStoreStats {
        &self.stats
    }

    /// Key of a file with these chunks; `None` if a chunk has no digest.
    pub fn file_key(chunks: &[Chunk]) -> Option<Digest> {
        let mut h = Sha256::new();
        for c in chunks {
            match (c.is_zeros(), c.digest()) {
                (true, _) => h.update(b"zeros"),
                (false, Some(d)) => h.update(d.0),
                (false, None) => return None,
            }
            h.update(c.size.to_le_bytes());
        }
        Some(Digest::from_hasher(h))
    }

    /// Where the file `key` lives.
    pub fn path(&self, key: &Digest) -> PathBuf {
        self.dir.path(key)
    }

    /// Bytes stored.
    pub fn used_bytes(&self) -> u64 {
        self.dir.used_bytes()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether `key` is verified and may be passed through.
    pub fn is_ready(&self, key: &Digest) -> bool {
        self.lock().ready.contains_key(key)
    }

    /// The verified file `key`, opened read-only; `None` (and the file is
    /// dropped) if it changed on disk since it became ready.
    pub fn ready_file(&self, key: &Digest) -> Option<File> {
        let stamp = *self.lock().ready.get(key)?;
        let Ok(file) = File::open(self.path(key)) else {
            self.lock().ready.remove(key);
            return None;
        };
        if file
            .metadata()
            .is_ok_and(|m| FileStamp::of_metadata(&m) == stamp)
        {
            self.dir.touch(key);
            return Some(file);
        }
        tracing::warn!(path = %self.path(key).display(), "materialized file changed on disk; deleting");
        self.stats.corrupt.fetch_add(1, Ordering::Relaxed);
        let mut st = self.lock();
        // Unless a fresh copy replaced it meanwhile.
        if st.ready.get(key) == Some(&stamp) {
            st.ready.remove(key);
            self.dir.remove(key);
        }
        None
    }

    /// The stamp of the file now at `key`'s path.
    fn stamp(&self, key: &Digest) -> Option<FileStamp> {
        FileStamp::of(&self.path(key))
    }

    /// Makes `key` ready if possible: re-verifies an existing copy, or
    /// assembles one when every chunk is in `disk`. Returns whether it is ready.
    pub fn prepare(&self, key: Digest, chunks: &[Chunk], disk: &DiskCache) -> io::Result<bool> {
        {
            let mut st = self.lock();
            if st.ready.contains_key(&key) {
                return Ok(true);
            }
            if !st.busy.insert(key) {
                return Ok(false);
            }
        }
        let res = self.prepare_locked(key, chunks, disk);
        let stamp = self.stamp(&key);
        let mut st = self.lock();
        st.busy.remove(&key);
        match (res, stamp) {
            (Ok(true), Some(stamp)) => {
                st.ready.insert(key, stamp);
                self.fills.forget(&key);
                Ok(true)
            }
            (Ok(true), None) => Ok(false),
            (res, _) => res,
        }
    }

    /// Records `data`, verified bytes at `offset` of the `size`-byte file
    /// `key` that an application read; the file is ready once every byte
    /// was recorded. Returns whether it is ready now.
    pub fn record_read(
        &self,
        key: Digest,
        size: u64,
        offset: u64,
        data: &[u8],
    ) -> io::Result<bool> {
        {
            let st = self.lock();
            if st.ready.contains_key(&key) {
                return Ok(true);
            }
            if st.busy.contains(&key) || size > self.dir.max_bytes() {
                return Ok(false);
            }
        }
        self.fills.record(
            key,
            size,
            offset,
            data,
            || self.dir.temp_path(&key),
            |tmp| {
                // Under the lock: an assembly that started meanwhile (and
                // may be checking an older copy at this path) wins.
                let mut st = self.lock();
                if st.busy.contains(&key) {
                    return Ok(false);
                }
                self.dir.adopt(&key, tmp)?;
                let Some(stamp) = self.stamp(&key) else {
                    return Ok(false);
                };
                st.ready.insert(key, stamp);
                self.stats.filled.fetch_add(1, Ordering::Relaxed);
                Ok(true)
            },
        )
    }

    fn prepare_locked(&self, key: Digest, chunks: &[Chunk], disk: &DiskCache) -> io::Result<bool> {
        let path = self.path(&key);
        if let Ok(file) = File::open(&path) {
            if verify_file(&file, chunks)? {
                self.stats.verified.fetch_add(1, Ordering::Relaxed);
                return Ok(true);
            }
            tracing::warn!(path = %path.display(), "corrupt materialized file; deleting");
            self.stats.corrupt.fetch_add(1, Ordering::Relaxed);
            self.dir.remove(&key);
        }
        let size = chunks
            .last()
            .map_or(0, |c| c.chunk_offset + u64::from(c.size));
        if size > self.dir.max_bytes()
            || !chunks
                .iter()
                .all(|c| c.is_zeros() || c.digest().is_some_and(|d| disk.contains(&d)))
        {
            return Ok(false);
        }
        let stored = self.dir.write(&key, |f| {
            let mut out = io::BufWriter::new(f);
            for c in chunks {
                if c.is_zeros() {
                    out.write_all(&vec![0u8; c.size as usize])?;
                    continue;
                }
                // `get` re-verifies; an evicted or corrupt chunk aborts.
                let Some(data) = c.digest().and_then(|d| disk.get(&d)) else {
                    return Ok(false);
                };
                out.write_all(&data)?;
            }
            out.flush()?;
            Ok(true)
        })?;
        if stored {
            self.stats.assembled.fetch_add(1, Ordering::Relaxed);
        }
        Ok(stored)
    }
}

/// Checks every chunk of `file` against its digest.
fn verify_file(file: &File, chunks: &[Chunk]) -> io::Result<bool> {
    let expected_len = chunks
        .last()
        .map_or(0, |c| c.chunk_offset + u64::from(c.size));
    if file.metadata()?.len() != expected_len {
        return Ok(false);
    }
    let mut buf = Vec::new();
    for c in chunks {
        buf.resize(c.size as usize, 0);
        file.read_exact_at(&mut buf, c.chunk_offset)?;
        let ok = if c.is_zeros() {
            buf.iter().all(|b| *b == 0)
        } else {
            c.digest() == Some(Digest::of(&buf))
        };
        if !ok {
            return Ok(false);
        }
    }
    Ok(true)
}
