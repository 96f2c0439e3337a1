//! A mounted layer's data path: the eStargz index plus verified, cached chunk
//! reads from a [`BlobSource`].
//!
//! Contract: [`LayerReader::read`] returns exactly the file bytes of the
//! requested range (short only at end of file) and every byte it returns
//! belongs to a chunk that was verified against its digest (or, for layers
//! opened with verification disabled, decoded from the blob). Chunks are
//! fetched whole (the format's seek granularity) through the shared
//! [`ChunkCache`], so identical chunks are fetched once across layers.
//! Bytes that fail to decode or verify (footer, TOC, chunk) are fetched
//! again, up to [`FETCH_ATTEMPTS`] times: a network that corrupts or cuts a
//! response now and then costs a refetch, never a wrong byte or an error.

pub mod source;

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use sha2::{Digest as _, Sha256};

use crate::cache::{ChunkCache, ChunkKey};
use crate::estargz::{
    self, BlobOrder, Chunk, Compression, Digest, Index, Ino, NodeKind, OpenOptions, Opener, Step,
    Verify, decode_chunk,
};
use crate::urgency::Urgency;
use crate::work::BlockingWork;
pub use source::{BlobSource, LocalBlob, Purpose};

/// Reads of the same bytes before their decode or verification failure is
/// final. A blob that is really corrupt costs four extra reads; a transient
/// fault hit with probability p survives all five only with p^5.
pub const FETCH_ATTEMPTS: u32 = 5;

/// Errors of layer reads.
#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    /// The blob source failed.
    #[error("reading blob range {start}..{end}: {source}")]
    Source {
        /// Range start.
        start: u64,
        /// Range end.
        end: u64,
        /// The underlying error.
        source: io::Error,
    },
    /// The layer's format is invalid or a chunk failed to decode or verify.
    #[error(transparent)]
    Format(#[from] estargz::Error),
    /// The inode is not a regular file.
    #[error("inode {0} is not a regular file")]
    NotAFile(Ino),
    /// A shared fetch of this chunk failed (the first caller's error).
    #[error("{0}")]
    Shared(Arc<LayerError>),
    /// A cached chunk with this digest has a different size than declared.
    #[error("chunk at {chunk_offset} of inode {ino}: {cached} bytes cached, {declared} declared")]
    ChunkSize {
        /// Inode of the file.
        ino: Ino,
        /// Offset of the chunk in the file.
        chunk_offset: u64,
        /// Length of the cached bytes.
        cached: usize,
        /// Size the TOC declares.
        declared: u32,
    },
    /// A worker task was lost.
    #[error("internal task failed: {0}")]
    Task(String),
}

/// Counters of one layer.
#[derive(Debug, Default)]
pub struct LayerStats {
    /// Compressed bytes read from the source for chunks.
    pub source_bytes: AtomicU64,
    /// Chunk-range reads issued to the source.
    pub source_reads: AtomicU64,
    /// Chunks that failed to decode or verify.
    pub bad_chunks: AtomicU64,
    /// File bytes returned to readers.
    pub bytes_served: AtomicU64,
    /// Chunk-range reads issued to the source for on-demand reads (not
    /// prefetch, read-ahead or background fetch).
    pub on_demand_source_reads: AtomicU64,
    /// Compressed bytes those on-demand reads asked for.
    pub on_demand_source_bytes: AtomicU64,
}

/// How long opening the layer took, by step (the Go reference's
/// `stargz_footer_get`, `stargz_toc_get` and `stargz_toc_json_deserialize`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OpenTimings {
    /// Reading the footer (the blob's tail).
    pub footer: Duration,
    /// Reading the TOC.
    pub toc: Duration,
    /// Decoding the TOC and building the index.
    pub deserialize: Duration,
}

/// One opened layer: index, source, cache.
pub struct LayerReader {
    index: Arc<Index>,
    compression: Compression,
    verify: Verify,
    toc_digest: Digest,
    blob_size: u64,
    source: Arc<dyn BlobSource>,
    cache: Arc<ChunkCache>,
    stats: LayerStats,
    /// Compressed bytes an on-demand fetch may add after its chunk (see
    /// [`LayerReader::set_read_amplification`]).
    amplify: u64,
    /// Every data chunk in blob order, built at the first amplified fetch.
    blob_order: std::sync::OnceLock<BlobOrder>,
    /// Compressed end of the latest on-demand fetch (0: none yet): where
    /// the reader is in the blob, for streaming ahead of it.
    reader_at: AtomicU64,
    /// How long the open took, by step.
    open_timings: OpenTimings,
}

impl std::fmt::Debug for LayerReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LayerReader")
            .field("toc_digest", &self.toc_digest)
            .field("inodes", &self.index.len())
            .finish_non_exhaustive()
    }
}

impl LayerReader {
    /// Reads footer and TOC through `source`, checks the expected TOC digest
    /// and builds the index.
    pub async fn open(
        source: Arc<dyn BlobSource>,
        cache: Arc<ChunkCache>,
        opts: &OpenOptions,
    ) -> Result<Self, LayerError> {
        let size = source.size();
        let mut attempt = 1;
        let work = cache.work().clone();
        let (opened, mut timings) = loop {
            let mut asked = Vec::new();
            let mut timings = OpenTimings::default();
            match open_toc(&*source, opts, &work, &mut asked, &mut timings).await {
                Ok(opened) => break (opened, timings),
                Err(e @ LayerError::Format(_)) if attempt < FETCH_ATTEMPTS => {
                    tracing::warn!(attempt, error = %e, "layer footer or TOC unusable; fetching again");
                    for range in asked {
                        source.forget(range).await;
                    }
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        };
        let limits = opts.limits;
        let indexing = std::time::Instant::now();
        // Indexing takes ~100 ms for a 100k-entry TOC (parsing too, in
        // open_toc): never on a runtime worker.
        let (index, footer, toc_digest) = work
            .run(Purpose::Metadata, move || {
                let estargz::OpenedToc { footer, toc } = opened;
                Index::build(&toc.toc, &footer, &limits).map(|index| (index, footer, toc.digest))
            })
            .await
            .map_err(|e| LayerError::Task(e.to_string()))??;
        timings.deserialize += indexing.elapsed();
        Ok(LayerReader {
            index: Arc::new(index),
            compression: footer.compression(),
            verify: opts.verify,
            toc_digest,
            blob_size: size,
            source,
            cache,
            stats: LayerStats::default(),
            amplify: 0,
            blob_order: std::sync::OnceLock::new(),
            reader_at: AtomicU64::new(0),
            open_timings: timings,
        })
    }

    /// How long opening this layer took, by step.
    pub fn open_timings(&self) -> OpenTimings {
        self.open_timings
    }

    /// Lets each on-demand fetch bring along the chunks that follow it in
    /// the blob, up to `bytes` more compressed bytes, into the cache: in
    /// tar order these are the neighbouring files (a module's siblings), so
    /// a sequential reader of many small files pays one round trip per
    /// `bytes` instead of one per file. 0 turns it off.
    pub fn set_read_amplification(&mut self, bytes: u64) {
        self.amplify = bytes;
    }

    /// The index.
    pub fn index(&self) -> &Arc<Index> {
        &self.index
    }
    /// sha256 of the TOC.
    pub fn toc_digest(&self) -> Digest {
        self.toc_digest
    }
    /// Compressed blob size.
    pub fn blob_size(&self) -> u64 {
        self.blob_size
    }
    /// Counters of this layer.
    pub fn stats(&self) -> &LayerStats {
        &self.stats
    }
    /// The shared chunk cache.
    pub fn cache(&self) -> &Arc<ChunkCache> {
        &self.cache
    }

    fn file_range(&self, ino: Ino, offset: u64, len: u64) -> Result<(u64, u64), LayerError> {
        let node = self
            .index
            .node(ino)
            .filter(|n| n.kind() == NodeKind::Reg)
            .ok_or(LayerError::NotAFile(ino))?;
        let end = node.size().min(offset.saturating_add(len));
        Ok((offset.min(end), end))
    }

    fn key(&self, ino: Ino, chunk: &Chunk) -> ChunkKey {
        match (self.verify, chunk.digest()) {
            (Verify::Enabled, Some(d)) => ChunkKey::verified(d),
            _ => {
                // No trustworthy content digest: key by layer and position.
                let mut h = Sha256::new();
                h.update(self.toc_digest.0);
                h.update(ino.to_le_bytes());
                h.update(chunk.chunk_offset.to_le_bytes());
                ChunkKey::unverified(Digest::from_hasher(h))
            }
        }
    }

    /// The requested bytes if every needed chunk is in memory (no I/O, no waiting).
    pub fn read_cached(&self, ino: Ino, offset: u64, len: u64) -> Option<Vec<u8>> {
        let (start, end) = self.file_range(ino, offset, len).ok()?;
        let mut out = Vec::with_capacity((end - start) as usize);
        for chunk in &self.index.chunks_for_range(ino, start, end - start) {
            if chunk.is_zeros() {
                append_part(&mut out, chunk, &[], start, end);
                continue;
            }
            let bytes = self.cache.get_in_memory(&self.key(ino, chunk))?;
            if bytes.len() != chunk.size as usize {
                return None; // The async path reports the mismatch.
            }
            append_part(&mut out, chunk, &bytes, start, end);
        }
        self.stats
            .bytes_served
            .fetch_add(out.len() as u64, Ordering::Relaxed);
        Some(out)
    }

    /// Reads `[offset, offset + len)` of file `ino` (short at end of file).
    pub async fn read(&self, ino: Ino, offset: u64, len: u64) -> Result<Vec<u8>, LayerError> {
        let (start, end) = self.file_range(ino, offset, len)?;
        let chunks = self.index.chunks_for_range(ino, start, end - start);
        // At once: a slow or retried chunk delays the read once, not once
        // per chunk before it.
        let fetched = futures_util::future::try_join_all(
            chunks
                .iter()
                .map(|chunk| self.chunk(ino, chunk, Purpose::OnDemand)),
        )
        .await?;
        let mut out = Vec::with_capacity((end - start) as usize);
        for (chunk, bytes) in chunks.iter().zip(&fetched) {
            append_part(&mut out, chunk, bytes, start, end);
        }
        self.stats
            .bytes_served
            .fetch_add(out.len() as u64, Ordering::Relaxed);
        Ok(out)
    }

    /// Starts background fetches of up to `count` chunks of `ino` that follow
    /// file offset `end`, so sequential readers find them decoded (chunks
    /// decode in parallel with the reader instead of one after another).
    /// Each fetch is abandoned after `timeout`, so a dead source leaks no tasks.
    pub fn read_ahead(self: &Arc<Self>, ino: Ino, end: u64, count: usize, timeout: Duration) {
        let first = self.index.chunks_before(ino, end);
        let last = self.index.chunk_count(ino).min(first.saturating_add(count));
        for chunk in (first..last).filter_map(|k| self.index.chunk(ino, k)) {
            if chunk.is_zeros() || self.cache.get_in_memory(&self.key(ino, &chunk)).is_some() {
                continue;
            }
            let this = self.clone();
            tokio::spawn(async move {
                let fetch = this.chunk(ino, &chunk, Purpose::Prefetch);
                match tokio::time::timeout(timeout, fetch).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => tracing::debug!(ino, error = %e, "read-ahead failed"),
                    Err(_) => tracing::debug!(ino, "read-ahead timed out"),
                }
            });
        }
    }

    /// The verified, decompressed bytes of one chunk of `ino`.
    pub async fn chunk(
        &self,
        ino: Ino,
        chunk: &Chunk,
        purpose: Purpose,
    ) -> Result<Bytes, LayerError> {
        if chunk.is_zeros() {
            return Ok(Bytes::from(vec![0u8; chunk.size as usize]));
        }
        let key = self.key(ino, chunk);
        self.cache
            .get_or_fetch(key, purpose, self.fetch_chunk(ino, chunk.clone(), purpose))
            .await
            .map_err(LayerError::Shared)
            .and_then(|bytes| {
                // A hostile TOC can give one digest two sizes; the cached
                // copy then cannot be this chunk.
                if bytes.len() == chunk.size as usize {
                    Ok(bytes)
                } else {
                    Err(LayerError::ChunkSize {
                        ino,
                        chunk_offset: chunk.chunk_offset,
                        cached: bytes.len(),
                        declared: chunk.size,
                    })
                }
            })
    }

    async fn fetch_chunk(
        &self,
        ino: Ino,
        chunk: Chunk,
        purpose: Purpose,
    ) -> Result<Bytes, LayerError> {
        let range = chunk.compressed_range();
        let capped = chunk.range_is_capped();
        if capped {
            // Legit layers get here too (the member of a file's last chunk
            // also holds the next entries' tar headers), so not a warning.
            tracing::debug!(
                ino,
                toc_range = ?(chunk.offset..chunk.compressed_end),
                fetched = ?range,
                "chunk's TOC range is longer than the chunk can need; fetching the bound"
            );
        }
        // Only the first attempt of an on-demand read takes the following
        // chunks along; a refetch after a bad chunk asks for just this one.
        let mut followers = if purpose == Purpose::OnDemand {
            self.followers(&range)
        } else {
            Vec::new()
        };
        if purpose == Purpose::OnDemand {
            let end = followers
                .last()
                .map_or(range.end, |(_, c, _)| c.compressed_range().end);
            self.reader_at.store(end, Ordering::Relaxed);
        }
        let mut attempt = 1;
        loop {
            let end = followers
                .last()
                .map_or(range.end, |(_, c, _)| c.compressed_range().end);
            let fetched = read(&*self.source, range.start..end, purpose).await?;
            self.stats.source_reads.fetch_add(1, Ordering::Relaxed);
            self.stats
                .source_bytes
                .fetch_add(end - range.start, Ordering::Relaxed);
            if purpose == Purpose::OnDemand {
                let stats = &self.stats;
                stats.on_demand_source_reads.fetch_add(1, Ordering::Relaxed);
                (stats.on_demand_source_bytes).fetch_add(end - range.start, Ordering::Relaxed);
            }
            let compressed = fetched.slice(..(range.end - range.start) as usize);
            if !followers.is_empty() {
                self.cache_followers(std::mem::take(&mut followers), fetched, range.start)
                    .await;
            }
            let (compression, verify, c) = (self.compression, self.verify, chunk.clone());
            let decoded = self
                .cache
                .work()
                .run(purpose, move || {
                    decode_chunk(compression, ino, &c, &compressed, verify)
                })
                .await
                .map_err(|e| LayerError::Task(e.to_string()))?;
            match decoded {
                Ok(v) => return Ok(Bytes::from(v)),
                Err(e) => {
                    self.stats.bad_chunks.fetch_add(1, Ordering::Relaxed);
                    if attempt >= FETCH_ATTEMPTS {
                        tracing::warn!(ino, attempt, capped, error = %e, "chunk failed to decode or verify; giving up");
                        return Err(e.into());
                    }
                    tracing::warn!(ino, attempt, error = %e, "chunk failed to decode or verify; fetching again");
                    self.source.forget(range.start..end).await;
                    attempt += 1;
                }
            }
        }
    }
}

/// Performs the reads an [`Opener`] asks for through `source`; `asked`
/// records every range requested, for forgetting them before a retry, and
/// `timings` how long the steps took (the first read is the footer, the
/// next the TOC, and decoding after the footer is the TOC's).
async fn open_toc(
    source: &dyn BlobSource,
    opts: &OpenOptions,
    work: &BlockingWork,
    asked: &mut Vec<std::ops::Range<u64>>,
    timings: &mut OpenTimings,
) -> Result<estargz::OpenedToc, LayerError> {
    let mut opener = Opener::new(source.size(), opts);
    loop {
        let range = opener.wants();
        let footer = asked.is_empty();
        asked.push(range.clone());
        let started = std::time::Instant::now();
        let bytes = read(source, range, Purpose::Metadata).await?;
        let (read_time, decoding) = (started.elapsed(), std::time::Instant::now());
        let step = work
            .run(Purpose::Metadata, move || opener.feed(&bytes))
            .await
            .map_err(|e| LayerError::Task(e.to_string()))??;
        if footer {
            timings.footer += read_time;
        } else {
            timings.toc += read_time;
            timings.deserialize += decoding.elapsed();
        }
        match step {
            Step::Need(next) => opener = next,
            Step::Done(opened) => return Ok(opened),
        }
    }
}

impl LayerReader {
    /// Every data chunk in blob order (hard links share chunks: each
    /// compressed range once), built at first use, 8 bytes per chunk.
    pub fn blob_order(&self) -> &BlobOrder {
        self.blob_order.get_or_init(|| self.index.blob_order())
    }

    /// The layer's data cut into compressed ranges of about `window` bytes
    /// (a chunk larger than `window` is a range of its own), in blob order:
    /// one range request each when the whole layer is streamed.
    pub fn stream_windows(&self, window: u64) -> Vec<std::ops::Range<u64>> {
        windows(self.blob_order().iter_from(&self.index, 0), window)
    }

    /// Compressed offset just past the latest on-demand fetch (0 before
    /// the first): streaming goes on from there, where the reader is.
    pub fn reader_at(&self) -> u64 {
        self.reader_at.load(Ordering::Relaxed)
    }

    /// Fetches the chunks inside compressed `range` that are not cached yet
    /// in one request (trimmed to the first and last of them), then decodes,
    /// verifies and caches them. The chunks are in flight in the cache
    /// meanwhile, so an on-demand read of one of them waits for this
    /// request instead of sending its own. Returns how many chunks this
    /// call cached; a chunk that fails to decode is left out (an on-demand
    /// read fetches it again).
    pub async fn cache_range(
        &self,
        range: std::ops::Range<u64>,
        purpose: Purpose,
    ) -> Result<usize, LayerError> {
        let order = self.blob_order();
        let first = order.first_from(&self.index, range.start);
        let wanted: Vec<(Ino, Chunk, ChunkKey)> = order
            .iter_from(&self.index, first)
            .take_while(|(_, c)| c.compressed_range().end <= range.end)
            .map(|(ino, c)| {
                let key = self.key(ino, &c);
                (ino, c, key)
            })
            .filter(|(_, _, k)| self.cache.get_in_memory(k).is_none())
            .collect();
        let (Some((_, head, _)), Some((_, tail, _))) = (wanted.first(), wanted.last()) else {
            return Ok(0);
        };
        let (start, end) = (head.compressed_range().start, tail.compressed_range().end);
        // The request goes out when the first chunk's cache entry runs its
        // fetch; entries another reader already has in flight never ask.
        let window: tokio::sync::OnceCell<Result<Vec<Result<Bytes, String>>, String>> =
            tokio::sync::OnceCell::new();
        let fetch_window = || async {
            let fetched = read(&*self.source, start..end, purpose)
                .await
                .map_err(|e| e.to_string())?;
            self.stats.source_reads.fetch_add(1, Ordering::Relaxed);
            self.stats
                .source_bytes
                .fetch_add(end - start, Ordering::Relaxed);
            let (compression, verify) = (self.compression, self.verify);
            let chunks: Vec<(Ino, Chunk)> =
                wanted.iter().map(|(i, c, _)| (*i, c.clone())).collect();
            // One blocking task for the whole range: thousands of small
            // files would otherwise cost a task hop each.
            self.cache
                .work()
                .run(purpose, move || {
                    decode_chunks(compression, verify, chunks, &fetched, start)
                })
                .await
                .map_err(|e| e.to_string())
        };
        let window = &window;
        let fetch_window = &fetch_window;
        let entries = wanted
            .iter()
            .enumerate()
            .map(|(i, (ino, _, key))| async move {
                let mut ran = false;
                // The error type must be `chunk`'s: moka joins a fetch in
                // flight only when both callers' futures fail with the same
                // type, so with another one an on-demand read of a chunk
                // this window is fetching would fetch it again.
                let got = self
                    .cache
                    .get_or_fetch(*key, purpose, async {
                        ran = true;
                        let chunk = match window.get_or_init(fetch_window).await {
                            Ok(chunks) => chunks.get(i).cloned().unwrap_or_else(|| {
                                Err("chunk missing from its window".to_string())
                            }),
                            Err(e) => Err(e.clone()),
                        };
                        chunk.map_err(LayerError::Task)
                    })
                    .await;
                if let Err(e) = &got
                    && ran
                    && matches!(window.get(), Some(Ok(_)))
                {
                    self.stats.bad_chunks.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(ino, error = %e, "streamed chunk failed");
                }
                got.is_ok() && ran
            });
        // One handle for the whole window: its single request and decoding
        // task serve every chunk, so a reader of any of them raises both.
        let done = Urgency::new()
            .scope(futures_util::future::join_all(entries))
            .await;
        match window.get() {
            Some(Err(e)) => Err(LayerError::Task(e.clone())),
            _ => Ok(done.into_iter().filter(|cached| *cached).count()),
        }
    }

    /// Uncached data chunks that end within the amplification window after
    /// `range`, with their cache keys, in blob order.
    fn followers(&self, range: &std::ops::Range<u64>) -> Vec<(Ino, Chunk, ChunkKey)> {
        if self.amplify == 0 {
            return Vec::new();
        }
        let order = self.blob_order();
        let first = order.first_from(&self.index, range.end);
        let limit = range.end.saturating_add(self.amplify);
        let mut out: Vec<(Ino, Chunk, ChunkKey)> = order
            .iter_from(&self.index, first)
            .take_while(|(_, c)| c.compressed_range().end <= limit)
            .map(|(ino, c)| {
                let key = self.key(ino, &c);
                (ino, c, key)
            })
            .collect();
        // Fetching cached chunks at the end of the window buys nothing.
        while out
            .last()
            .is_some_and(|(_, _, k)| self.cache.get_in_memory(k).is_some())
        {
            out.pop();
        }
        out
    }

    /// Decodes, verifies and caches `followers` from `fetched` (which starts
    /// at blob offset `base`) in one blocking task, and returns once every
    /// follower's cache entry is in flight: from then on a read of one of
    /// them joins it instead of fetching the chunk again. A sequential
    /// reader's next file is most often among them, and with many layers
    /// read at once (a node drain) the decode could otherwise still be
    /// queued when that read comes, and every such read would fetch its
    /// own amplified range again. They came with an on-demand read and are
    /// decoded as one.
    async fn cache_followers(
        &self,
        followers: Vec<(Ino, Chunk, ChunkKey)>,
        fetched: Bytes,
        base: u64,
    ) {
        let (cache, compression, verify) = (self.cache.clone(), self.compression, self.verify);
        let purpose = Purpose::OnDemand;
        let (registered_tx, registered) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let decoded: tokio::sync::OnceCell<Result<Vec<Result<Bytes, String>>, String>> =
                tokio::sync::OnceCell::new();
            let decode_all = || async {
                let chunks: Vec<(Ino, Chunk)> =
                    followers.iter().map(|(i, c, _)| (*i, c.clone())).collect();
                let fetched = fetched.clone();
                cache
                    .work()
                    .run(purpose, move || {
                        decode_chunks(compression, verify, chunks, &fetched, base)
                    })
                    .await
                    .map_err(|e| e.to_string())
            };
            let (decoded, decode_all, cache) = (&decoded, &decode_all, &cache);
            let entries = followers.iter().enumerate().map(|(i, (ino, _, key))| async move {
                // `chunk`'s error type, so that moka lets a reader join.
                let got = cache
                    .get_or_fetch(*key, purpose, async {
                        match decoded.get_or_init(decode_all).await {
                            Ok(chunks) => chunks.get(i).cloned().unwrap_or_else(|| {
                                Err("chunk missing from its window".to_string())
                            }),
                            Err(e) => Err(e.clone()),
                        }
                        .map_err(LayerError::Task)
                    })
                    .await;
                if let Err(e) = got {
                    tracing::debug!(ino, error = %e, "amplified chunk failed to decode or verify");
                }
            });
            let mut all = std::pin::pin!(futures_util::future::join_all(entries));
            let mut registered_tx = Some(registered_tx);
            // The first poll puts every entry in flight; say so then.
            std::future::poll_fn(|cx| {
                let polled = all.as_mut().poll(cx);
                if let Some(tx) = registered_tx.take() {
                    let _ = tx.send(());
                }
                polled
            })
            .await;
        });
        let _ = registered.await;
    }
}

/// Decodes and verifies `chunks` out of `fetched`, which holds the blob
/// from offset `base` on (one blocking task for many chunks).
fn decode_chunks(
    compression: Compression,
    verify: Verify,
    chunks: Vec<(Ino, Chunk)>,
    fetched: &[u8],
    base: u64,
) -> Vec<Result<Bytes, String>> {
    chunks
        .into_iter()
        .map(|(ino, chunk)| {
            let r = chunk.compressed_range();
            let compressed = r
                .start
                .checked_sub(base)
                .zip(r.end.checked_sub(base))
                .and_then(|(from, to)| fetched.get(from as usize..to as usize))
                .ok_or("chunk outside the fetched range")?;
            decode_chunk(compression, ino, &chunk, compressed, verify)
                .map(Bytes::from)
                .map_err(|e| e.to_string())
        })
        .collect()
}

/// Cuts chunks in blob order into ranges of at most `window` compressed
/// bytes each (a larger chunk alone).
fn windows(order: impl Iterator<Item = (Ino, Chunk)>, window: u64) -> Vec<std::ops::Range<u64>> {
    let mut out: Vec<std::ops::Range<u64>> = Vec::new();
    for (_, c) in order {
        let r = c.compressed_range();
        match out.last_mut() {
            Some(last) if r.end.saturating_sub(last.start) <= window => last.end = r.end,
            _ => out.push(r),
        }
    }
    out
}

async fn read(
    source: &dyn BlobSource,
    range: std::ops::Range<u64>,
    purpose: Purpose,
) -> Result<Bytes, LayerError> {
    let (start, end) = (range.start, range.end);
    let bytes = source
        .read_range(range, purpose)
        .await
        .map_err(|source| LayerError::Source { start, end, source })?;
    if bytes.len() as u64 != end - start {
        return Err(LayerError::Source {
            start,
            end,
            source: io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("source returned {} bytes", bytes.len()),
            ),
        });
    }
    Ok(bytes)
}

/// Appends the part of `chunk` (decompressed `bytes`; empty for a hole)
/// that overlaps the file range `[start, end)`.
fn append_part(out: &mut Vec<u8>, chunk: &Chunk, bytes: &[u8], start: u64, end: u64) {
    let range = chunk.file_range();
    let (from, to) = (start.max(range.start), end.min(range.end));
    if from >= to {
        return;
    }
    if chunk.is_zeros() {
        out.resize(out.len() + (to - from) as usize, 0);
    } else {
        out.extend_from_slice(&bytes[(from - range.start) as usize..(to - range.start) as usize]);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
