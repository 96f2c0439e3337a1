//! The chunk cache: verified, decompressed chunks keyed by their sha256, so a
//! chunk shared by several layers is fetched and stored once.
//!
//! Two tiers: a size-bounded in-memory cache (moka, weighed in bytes) in front
//! of an optional [`DiskCache`]. [`ChunkCache::get_or_fetch`] is single-flight:
//! concurrent callers for one key share one disk lookup or one fetch. Only
//! verified bytes enter either tier; keys of chunks that carry no digest
//! ([`ChunkKey::unverified`]) are kept in memory only, because the disk tier
//! re-verifies by digest and could not check them.

pub mod content_dir;
pub mod disk;
pub mod error;
pub mod file_fill;
pub mod files;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;

use crate::estargz::Digest;
use crate::purpose::Purpose;
use crate::urgency::{Urgency, UrgencyTable};
use crate::work::BlockingWork;
pub use content_dir::ContentDir;
pub use disk::{DiskCache, DiskCacheStats};
pub use error::DiskCacheError;
pub use files::{FileStore, FileStoreStats};

/// Key of one decompressed chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ChunkKey {
    /// sha256 of the chunk, or a synthetic unique key for undigested chunks.
    pub digest: Digest,
    /// Whether `digest` is the chunk's real content digest.
    pub verifiable: bool,
}

impl ChunkKey {
    /// Key of a chunk whose content digest is known (and checked).
    pub fn verified(digest: Digest) -> Self {
        ChunkKey {
            digest,
            verifiable: true,
        }
    }
    /// Key of a chunk without a digest; `unique` must identify it (layer + position).
    pub fn unverified(unique: Digest) -> Self {
        ChunkKey {
            digest: unique,
            verifiable: false,
        }
    }
}

/// Counters of the chunk cache.
#[derive(Debug, Default)]
pub struct CacheStats {
    /// Lookups answered from memory.
    pub memory_hits: AtomicU64,
    /// Lookups answered from disk.
    pub disk_hits: AtomicU64,
    /// Lookups that ran the fetch (one per single-flight group).
    pub fetches: AtomicU64,
    /// Decompressed bytes produced by fetches.
    pub fetched_bytes: AtomicU64,
    /// Failed disk writes (the chunk is still served from memory).
    pub disk_write_errors: AtomicU64,
    /// Outages of the disk tier: runs of failing writes (a full disk),
    /// each warned about once and ended by the next successful write.
    pub disk_write_outages: AtomicU64,
}

/// Sizes of the cache tiers.
#[derive(Debug, Clone)]
pub struct ChunkCacheConfig {
    /// Bound of the in-memory tier in bytes.
    pub memory_bytes: u64,
    /// Blocking tasks (disk tier, decoding, indexing) running at once for
    /// every layer using this cache.
    pub work_threads: usize,
    /// Background tasks run as `SCHED_IDLE` (when available).
    pub idle_background: bool,
}

impl Default for ChunkCacheConfig {
    fn default() -> Self {
        // Large enough for the working set of a few busy files (chunks are
        // up to 4 MiB by default), small next to a node's memory.
        ChunkCacheConfig {
            memory_bytes: 256 << 20,
            work_threads: BlockingWork::default_threads(),
            idle_background: true,
        }
    }
}

/// Two-tier, single-flight cache of verified chunks.
pub struct ChunkCache {
    memory: moka::future::Cache<ChunkKey, Bytes>,
    disk: Option<Arc<DiskCache>>,
    stats: CacheStats,
    work: Arc<BlockingWork>,
    /// Whether disk writes are failing now (an outage is under way).
    disk_failing: AtomicBool,
    /// The handle of every key being fetched, for readers to raise.
    urgencies: UrgencyTable<ChunkKey>,
}

impl std::fmt::Debug for ChunkCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChunkCache")
            .field("disk", &self.disk)
            .finish_non_exhaustive()
    }
}

impl ChunkCache {
    /// A cache with the given memory bound, backed by `disk` if given.
    pub fn new(config: &ChunkCacheConfig, disk: Option<Arc<DiskCache>>) -> Self {
        let memory = moka::future::Cache::builder()
            .max_capacity(config.memory_bytes)
            .weigher(|_: &ChunkKey, v: &Bytes| u32::try_from(v.len()).unwrap_or(u32::MAX))
            .build();
        ChunkCache {
            memory,
            disk,
            stats: CacheStats::default(),
            work: BlockingWork::with_idle_background(config.work_threads, config.idle_background),
            disk_failing: AtomicBool::new(false),
            urgencies: UrgencyTable::default(),
        }
    }

    /// Counters.
    pub fn stats(&self) -> &CacheStats {
        &self.stats
    }

    /// The bounded blocking threads of the layers using this cache.
    pub fn work(&self) -> &Arc<BlockingWork> {
        &self.work
    }

    /// The disk tier, if any.
    pub fn disk(&self) -> Option<&Arc<DiskCache>> {
        self.disk.as_ref()
    }

    /// The chunk if it is in memory, without waiting or doing I/O (for
    /// answering on the FUSE thread).
    pub fn get_in_memory(&self, key: &ChunkKey) -> Option<Bytes> {
        // moka's `get` only takes in-memory locks; poll it once so this
        // never parks the caller, and treat "not ready" as a miss.
        let mut fut = std::pin::pin!(self.memory.get(key));
        match fut.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(Some(v)) => {
                self.stats.memory_hits.fetch_add(1, Ordering::Relaxed);
                Some(v)
            }
            _ => None,
        }
    }

    /// Returns the chunk from memory or disk, or runs `fetch` (which must
    /// return verified bytes) once for all concurrent callers and stores the
    /// result in both tiers; its disk I/O queues as `purpose`. Callers are
    /// joined only when they use the same error type `E` (moka keys its
    /// waiters by it): every caller of one cache must use one type.
    pub async fn get_or_fetch<F, E>(
        &self,
        key: ChunkKey,
        purpose: Purpose,
        fetch: F,
    ) -> Result<Bytes, Arc<E>>
    where
        F: Future<Output = Result<Bytes, E>>,
        E: Send + Sync + 'static,
    {
        if let Some(bytes) = self.get_in_memory(&key) {
            return Ok(bytes);
        }
        // Everyone after this key now shares one handle: a reader raises
        // the background work it would otherwise wait behind.
        let joined = self.urgencies.join(key, Urgency::current());
        if purpose.is_urgent() {
            joined.urgency().raise();
        }
        let urgency = joined.urgency().clone();
        let mut ran = false;
        let res = self
            .memory
            .try_get_with(
                key,
                urgency.scope(async {
                    ran = true;
                    if let Some(bytes) = self.load_from_disk(key, purpose).await {
                        self.stats.disk_hits.fetch_add(1, Ordering::Relaxed);
                        return Ok(bytes);
                    }
                    self.stats.fetches.fetch_add(1, Ordering::Relaxed);
                    let bytes = fetch.await?;
                    self.stats
                        .fetched_bytes
                        .fetch_add(bytes.len() as u64, Ordering::Relaxed);
                    self.store_on_disk(key, purpose, bytes.clone()).await;
                    Ok(bytes)
                }),
            )
            .await;
        drop(joined);
        if !ran && res.is_ok() {
            self.stats.memory_hits.fetch_add(1, Ordering::Relaxed);
        }
        res
    }

    async fn load_from_disk(&self, key: ChunkKey, purpose: Purpose) -> Option<Bytes> {
        let disk = self.disk.as_ref().filter(|_| key.verifiable)?.clone();
        self.work
            .run(purpose, move || disk.get(&key.digest))
            .await
            .ok()
            .flatten()
            .map(Bytes::from)
    }

    async fn store_on_disk(&self, key: ChunkKey, purpose: Purpose, bytes: Bytes) {
        let Some(disk) = self.disk.as_ref().filter(|_| key.verifiable).cloned() else {
            return;
        };
        // Awaited so that a chunk a reader has seen is durable in the cache
        // directory (page cache) before the read completes; the write is a
        // local copy, small next to the fetch that preceded it.
        let res = self
            .work
            .run(purpose, move || disk.put(&key.digest, &bytes))
            .await;
        let error = match res {
            Ok(Ok(())) => {
                if self.disk_failing.swap(false, Ordering::Relaxed) {
                    tracing::info!("disk cache writes work again; caching resumed");
                }
                return;
            }
            Ok(Err(e)) => e.to_string(),
            Err(e) => e.to_string(),
        };
        self.stats.disk_write_errors.fetch_add(1, Ordering::Relaxed);
        // A full disk fails every write until space is freed: warn once per
        // outage, not once per chunk (the reads themselves still succeed).
        if !self.disk_failing.swap(true, Ordering::Relaxed) {
            self.stats
                .disk_write_outages
                .fetch_add(1, Ordering::Relaxed);
            tracing::warn!(chunk = %key.digest, error = %error,
                "cannot write chunks to the disk cache; serving them from memory and the registry until writes work again");
        } else {
            tracing::debug!(chunk = %key.digest, error = %error, "cannot write chunk to the disk cache");
        }
    }
}
