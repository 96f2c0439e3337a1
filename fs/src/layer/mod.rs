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
    self, BlobOrder, Chunk, Compression, Digest, Index, Ino, NodeKind, OpenOptions, Verify,
    decode_chunk, decode_toc, parse_footer,
};
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
        let tail_range = size - (estargz::footer::MAX_FOOTER_SIZE as u64).min(size)..size;
        let mut attempt = 1;
        let (footer, decoded) = loop {
            let mut toc_range = None;
            match read_footer_and_toc(&*source, tail_range.clone(), &mut toc_range, opts).await {
                Ok(found) => break found,
                Err(e @ LayerError::Format(_)) if attempt < FETCH_ATTEMPTS => {
                    tracing::warn!(attempt, error = %e, "layer footer or TOC unusable; fetching again");
                    source.forget(tail_range.clone()).await;
                    if let Some(r) = toc_range {
                        source.forget(r).await;
                    }
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        };
        let limits = opts.limits;
        // Indexing takes ~100 ms for a 100k-entry TOC (parsing too, in
        // read_footer_and_toc): never on a runtime worker.
        let (index, footer, toc_digest) = tokio::task::spawn_blocking(move || {
            Index::build(&decoded.toc, &footer, &limits)
                .map(|index| (index, footer, decoded.digest))
        })
        .await
        .map_err(|e| LayerError::Task(e.to_string()))??;
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
        })
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
            .get_or_fetch(key, self.fetch_chunk(ino, chunk.clone(), purpose))
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
            let compressed = fetched.slice(..(range.end - range.start) as usize);
            if !followers.is_empty() {
                self.cache_followers(std::mem::take(&mut followers), fetched, range.start);
            }
            let (compression, verify, c) = (self.compression, self.verify, chunk.clone());
            let decoded = tokio::task::spawn_blocking(move || {
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

/// Reads and decodes footer and TOC, checking the TOC against
/// `opts.expected_toc_digest`; `toc_range` records where the TOC was read.
async fn read_footer_and_toc(
    source: &dyn BlobSource,
    tail_range: std::ops::Range<u64>,
    toc_range: &mut Option<std::ops::Range<u64>>,
    opts: &OpenOptions,
) -> Result<(estargz::Footer, estargz::DecodedToc), LayerError> {
    let size = source.size();
    let tail = read(source, tail_range, Purpose::Metadata).await?;
    let footer = parse_footer(&tail, size)?;
    let range = footer.toc_range();
    if range.end - range.start > opts.max_toc_size.saturating_add(1 << 20) {
        return Err(estargz::Error::TocTooLarge {
            cap: opts.max_toc_size,
        }
        .into());
    }
    *toc_range = Some(range.clone());
    let compressed = read(source, range, Purpose::Metadata).await?;
    let max = opts.max_toc_size;
    let decoded = tokio::task::spawn_blocking(move || decode_toc(&footer, &compressed, max))
        .await
        .map_err(|e| LayerError::Task(e.to_string()))??;
    if let Some(expected) = opts.expected_toc_digest
        && expected != decoded.digest
    {
        return Err(estargz::Error::TocDigestMismatch {
            expected: expected.to_string(),
            actual: decoded.digest.to_string(),
        }
        .into());
    }
    Ok((footer, decoded))
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
            tokio::task::spawn_blocking(move || {
                chunks
                    .into_iter()
                    .map(|(ino, chunk)| {
                        let r = chunk.compressed_range();
                        let compressed =
                            fetched.slice((r.start - start) as usize..(r.end - start) as usize);
                        decode_chunk(compression, ino, &chunk, &compressed, verify)
                            .map(Bytes::from)
                            .map_err(|e| e.to_string())
                    })
                    .collect::<Vec<_>>()
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
                    .get_or_fetch(*key, async {
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
        let done = futures_util::future::join_all(entries).await;
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
    /// at blob offset `base`) in the background.
    fn cache_followers(&self, followers: Vec<(Ino, Chunk, ChunkKey)>, fetched: Bytes, base: u64) {
        let (cache, compression, verify) = (self.cache.clone(), self.compression, self.verify);
        tokio::spawn(async move {
            for (ino, chunk, key) in followers {
                let r = chunk.compressed_range();
                let Some(compressed) = fetched
                    .get((r.start - base) as usize..(r.end - base) as usize)
                    .map(|_| fetched.slice((r.start - base) as usize..(r.end - base) as usize))
                else {
                    return;
                };
                let decode = async move {
                    tokio::task::spawn_blocking(move || {
                        decode_chunk(compression, ino, &chunk, &compressed, verify)
                    })
                    .await
                    .map_err(|e| e.to_string())?
                    .map(Bytes::from)
                    .map_err(|e| e.to_string())
                };
                if let Err(e) = cache.get_or_fetch(key, decode).await {
                    tracing::debug!(ino, error = %e, "amplified chunk failed to decode or verify");
                }
            }
        });
    }
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
mod tests {
    use std::ops::Range;
    use std::sync::Mutex;
    use std::sync::atomic::AtomicU32;

    use super::*;
    use crate::cache::ChunkCacheConfig;
    use crate::estargz::{WriterOptions, convert};

    /// An in-memory blob whose next `corrupt` reads come back with their
    /// middle byte flipped.
    struct Flaky {
        data: Bytes,
        corrupt: AtomicU32,
        reads: AtomicU32,
        forgotten: Mutex<Vec<Range<u64>>>,
    }

    #[async_trait::async_trait]
    impl BlobSource for Flaky {
        async fn read_range(&self, range: Range<u64>, _: Purpose) -> io::Result<Bytes> {
            self.reads.fetch_add(1, Ordering::SeqCst);
            let mut bytes = self.data[range.start as usize..range.end as usize].to_vec();
            let bad = self
                .corrupt
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok();
            if bad && !bytes.is_empty() {
                let at = bytes.len() / 2;
                bytes[at] ^= 0x5a;
            }
            Ok(bytes.into())
        }

        fn size(&self) -> u64 {
            self.data.len() as u64
        }

        async fn forget(&self, range: Range<u64>) {
            self.forgotten.lock().unwrap().push(range);
        }
    }

    /// Bytes that do not compress much.
    fn noise(len: u32) -> Vec<u8> {
        (0..len)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect()
    }

    fn layer_blob(content: &[u8]) -> (Vec<u8>, Digest) {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_size(content.len() as u64);
        b.append_data(&mut h, "file", content).unwrap();
        let tar = b.into_inner().unwrap();
        let mut out = Vec::new();
        let made = convert(&tar[..], &mut out, &WriterOptions::default()).unwrap();
        (out, made.toc_digest)
    }

    fn flaky(blob: Vec<u8>, corrupt: u32) -> Arc<Flaky> {
        Arc::new(Flaky {
            data: blob.into(),
            corrupt: AtomicU32::new(corrupt),
            reads: AtomicU32::new(0),
            forgotten: Mutex::new(Vec::new()),
        })
    }

    /// A blob of `head`, then a hole of zeros up to `tail_at`, then `tail`;
    /// reads longer than 64 MiB fail instead of allocating, and the longest
    /// read asked for is recorded.
    struct Sparse {
        head: Vec<u8>,
        tail_at: u64,
        tail: Vec<u8>,
        longest: AtomicU64,
    }

    #[async_trait::async_trait]
    impl BlobSource for Sparse {
        async fn read_range(&self, range: Range<u64>, _: Purpose) -> io::Result<Bytes> {
            let len = range.end - range.start;
            self.longest.fetch_max(len, Ordering::SeqCst);
            if len > 64 << 20 {
                return Err(io::Error::other(format!("refusing a {len}-byte read")));
            }
            let byte = |at: u64| {
                if at < self.head.len() as u64 {
                    self.head[at as usize]
                } else if at >= self.tail_at {
                    self.tail
                        .get((at - self.tail_at) as usize)
                        .copied()
                        .unwrap_or(0)
                } else {
                    0
                }
            };
            Ok(range.map(byte).collect::<Vec<u8>>().into())
        }

        fn size(&self) -> u64 {
            self.tail_at + self.tail.len() as u64
        }
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        use std::io::Write;
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    #[tokio::test]
    async fn a_chunk_range_spanning_the_blob_is_fetched_only_as_far_as_the_chunk_can_need() {
        use estargz::{Toc, TocEntry};
        // "tiny"'s member is near 0; the next member ("far") starts 3 GiB on,
        // so by the TOC tiny's compressed range spans the whole hole.
        let tail_at = 3 << 30;
        let reg = |name: &str, data: &[u8], offset: u64| {
            let d = Digest::of(data).to_string();
            TocEntry {
                name: name.into(),
                kind: "reg".into(),
                size: data.len() as u64,
                offset,
                digest: d.clone(),
                chunk_digest: d,
                ..TocEntry::default()
            }
        };
        // Offset 0 means "no offset": an empty member goes first.
        let mut head = gzip(b"");
        let at = head.len() as u64;
        head.extend(gzip(b"tiny!"));
        let mut tail = gzip(b"far away");
        let toc = Toc {
            version: 1,
            entries: vec![reg("tiny", b"tiny!", at), reg("far", b"far away", tail_at)],
        };
        let json = estargz::toc::encode_toc(&toc).unwrap();
        let mut tar = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_ustar();
        h.set_size(json.len() as u64);
        h.set_mode(0o444);
        tar.append_data(&mut h, "stargz.index.json", &json[..])
            .unwrap();
        let toc_offset = tail_at + tail.len() as u64;
        tail.extend(gzip(&tar.into_inner().unwrap()));
        tail.extend(estargz::footer::estargz_footer(toc_offset));
        let source = Arc::new(Sparse {
            head,
            tail_at,
            tail,
            longest: AtomicU64::new(0),
        });
        let cache = Arc::new(ChunkCache::new(&ChunkCacheConfig::default(), None));
        let layer = LayerReader::open(source.clone(), cache, &OpenOptions::default())
            .await
            .unwrap();
        let ino = layer.index().lookup_path("tiny").unwrap();
        let chunk = layer.index().chunks(ino)[0].clone();
        assert_eq!(chunk.compressed_end, tail_at, "the TOC's range");
        assert_eq!(layer.read(ino, 0, 100).await.unwrap(), b"tiny!");
        assert!(chunk.range_is_capped());
        let far = layer.index().lookup_path("far").unwrap();
        assert_eq!(layer.read(far, 0, 100).await.unwrap(), b"far away");
        let longest = source.longest.load(Ordering::SeqCst);
        assert!(longest <= 2 << 20, "longest read {longest} bytes");
    }

    #[tokio::test]
    async fn corrupted_reads_are_fetched_again_until_they_verify() {
        let content = noise(100_000);
        let (blob, toc) = layer_blob(&content);
        let opts = OpenOptions {
            expected_toc_digest: Some(toc),
            ..OpenOptions::default()
        };
        let cache = Arc::new(ChunkCache::new(&ChunkCacheConfig::default(), None));
        // The first two footer reads are corrupt.
        let source = flaky(blob, 2);
        let layer = LayerReader::open(source.clone(), cache, &opts)
            .await
            .unwrap();
        let tail = source.size() - estargz::footer::MAX_FOOTER_SIZE as u64..source.size();
        assert_eq!(*source.forgotten.lock().unwrap(), [tail.clone(), tail]);
        let ino = layer.index().lookup_path("file").unwrap();
        source.corrupt.store(FETCH_ATTEMPTS - 1, Ordering::SeqCst);
        let got = layer.read(ino, 0, 200_000).await.unwrap();
        assert!(got == content, "the bytes read are the file's");
        let bad = layer.stats().bad_chunks.load(Ordering::SeqCst);
        assert_eq!(bad, u64::from(FETCH_ATTEMPTS - 1));
    }

    /// An in-memory blob whose reads, once `armed`, wait for a permit.
    struct Gated {
        data: Bytes,
        armed: std::sync::atomic::AtomicBool,
        reads: AtomicU32,
        gate: tokio::sync::Semaphore,
    }

    #[async_trait::async_trait]
    impl BlobSource for Gated {
        async fn read_range(&self, range: Range<u64>, _: Purpose) -> io::Result<Bytes> {
            if self.armed.load(Ordering::SeqCst) {
                self.reads.fetch_add(1, Ordering::SeqCst);
                self.gate
                    .acquire()
                    .await
                    .map_err(io::Error::other)?
                    .forget();
            }
            Ok(self.data.slice(range.start as usize..range.end as usize))
        }

        fn size(&self) -> u64 {
            self.data.len() as u64
        }
    }

    #[tokio::test]
    async fn an_on_demand_read_joins_the_window_fetching_its_chunk() {
        let content = noise(100_000);
        let (blob, _) = layer_blob(&content);
        let source = Arc::new(Gated {
            data: blob.into(),
            armed: Default::default(),
            reads: AtomicU32::new(0),
            gate: tokio::sync::Semaphore::new(0),
        });
        let cache = Arc::new(ChunkCache::new(&ChunkCacheConfig::default(), None));
        let opts = OpenOptions::default();
        let layer = Arc::new(
            LayerReader::open(source.clone(), cache, &opts)
                .await
                .unwrap(),
        );
        let ino = layer.index().lookup_path("file").unwrap();
        source.armed.store(true, Ordering::SeqCst);
        let size = layer.blob_size();
        let window = tokio::spawn({
            let layer = layer.clone();
            async move { layer.cache_range(0..size, Purpose::Background).await }
        });
        while source.reads.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        let reader = tokio::spawn({
            let layer = layer.clone();
            async move { layer.read(ino, 0, 100).await }
        });
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        assert_eq!(source.reads.load(Ordering::SeqCst), 1, "fetched twice");
        source.gate.add_permits(10);
        assert_eq!(reader.await.unwrap().unwrap(), &content[..100]);
        window.await.unwrap().unwrap();
        assert_eq!(source.reads.load(Ordering::SeqCst), 1, "fetched twice");
    }

    #[tokio::test]
    async fn streamed_windows_cache_every_file_with_one_request_each() {
        let files: Vec<Vec<u8>> = (0..12u32).map(|i| noise(30_000 + i * 1000)).collect();
        let mut b = tar::Builder::new(Vec::new());
        for (i, content) in files.iter().enumerate() {
            let mut h = tar::Header::new_gnu();
            h.set_mode(0o644);
            h.set_size(content.len() as u64);
            b.append_data(&mut h, format!("f{i}"), &content[..])
                .unwrap();
        }
        let mut blob = Vec::new();
        let made = convert(
            &b.into_inner().unwrap()[..],
            &mut blob,
            &WriterOptions::default(),
        )
        .unwrap();
        let opts = OpenOptions {
            expected_toc_digest: Some(made.toc_digest),
            ..OpenOptions::default()
        };
        let cache = Arc::new(ChunkCache::new(&ChunkCacheConfig::default(), None));
        let source = flaky(blob, 0);
        let layer = LayerReader::open(source.clone(), cache, &opts)
            .await
            .unwrap();
        let whole = layer.stream_windows(u64::MAX);
        assert_eq!(whole.len(), 1, "{whole:?}");
        // About a fifth of the data per window: two or three files each.
        let windows = layer.stream_windows((whole[0].end - whole[0].start) / 5);
        assert!((5..=7).contains(&windows.len()), "{windows:?}");
        assert!(windows.windows(2).all(|w| w[0].end <= w[1].start));
        let f3 = layer.index().lookup_path("f3").unwrap();
        layer.read(f3, 0, 1).await.unwrap();
        let before = source.reads.load(Ordering::SeqCst);
        let mut cached = 0;
        for w in &windows {
            cached += layer
                .cache_range(w.clone(), Purpose::Background)
                .await
                .unwrap();
        }
        let reads = source.reads.load(Ordering::SeqCst) - before;
        assert!(reads as usize <= windows.len(), "{reads} reads");
        assert!(cached >= files.len() - 1, "{cached} chunks cached");
        // Everything is cached now: reading every file asks nothing more.
        let before = source.reads.load(Ordering::SeqCst);
        for (i, content) in files.iter().enumerate() {
            let ino = layer.index().lookup_path(&format!("f{i}")).unwrap();
            assert!(layer.read(ino, 0, 1 << 20).await.unwrap() == *content);
        }
        assert_eq!(source.reads.load(Ordering::SeqCst), before);
        // A second pass finds nothing left to fetch.
        for w in &windows {
            assert_eq!(
                layer
                    .cache_range(w.clone(), Purpose::Background)
                    .await
                    .unwrap(),
                0
            );
        }
        assert_eq!(source.reads.load(Ordering::SeqCst), before);
    }

    #[tokio::test]
    async fn blob_order_lists_each_data_chunk_once_in_blob_order() {
        let mut b = tar::Builder::new(Vec::new());
        for (name, len) in [("b", 300_000u32), ("a", 10), ("empty", 0)] {
            let mut h = tar::Header::new_gnu();
            h.set_mode(0o644);
            h.set_size(u64::from(len));
            b.append_data(&mut h, name, &noise(len)[..]).unwrap();
        }
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Link);
        h.set_mode(0o644);
        h.set_size(0);
        b.append_link(&mut h, "link", "b").unwrap();
        let tar = b.into_inner().unwrap();
        let mut blob = Vec::new();
        let opts = WriterOptions {
            chunk_size: 100_000,
            ..WriterOptions::default()
        };
        let made = convert(&tar[..], &mut blob, &opts).unwrap();
        let open = OpenOptions {
            expected_toc_digest: Some(made.toc_digest),
            ..OpenOptions::default()
        };
        let cache = Arc::new(ChunkCache::new(&ChunkCacheConfig::default(), None));
        let layer = LayerReader::open(flaky(blob, 0), cache, &open)
            .await
            .unwrap();
        let index = layer.index();
        let order = layer.blob_order();
        let listed: Vec<(Ino, Chunk)> = order.iter_from(index, 0).collect();
        // The same as sorting every file's chunks, as the code before did.
        let mut all: Vec<(Ino, Chunk)> = (1..=index.len() as Ino)
            .flat_map(|ino| index.chunks(ino).into_iter().map(move |c| (ino, c)))
            .filter(|(_, c)| !c.is_zeros())
            .collect();
        all.sort_by_key(|(ino, c)| (c.compressed_range().start, *ino));
        all.dedup_by_key(|(_, c)| c.compressed_range().start);
        let key = |v: &[(Ino, Chunk)]| -> Vec<(Ino, u64, u64)> {
            v.iter()
                .map(|(i, c)| (*i, c.chunk_offset, c.compressed_range().start))
                .collect()
        };
        assert_eq!(key(&listed), key(&all));
        assert_eq!(order.len(), listed.len());
        // "b" has several chunks, the hard link to it adds none.
        let (b, link) = (
            index.lookup_path("b").unwrap(),
            index.lookup_path("link").unwrap(),
        );
        let of_b = listed.iter().filter(|(i, _)| *i == b || *i == link).count();
        assert_eq!(of_b, index.chunk_count(b));
        assert!(of_b >= 3, "{of_b}");
        let second = listed[1].1.compressed_range().start;
        assert_eq!(order.first_from(index, second), 1);
        assert_eq!(order.first_from(index, second + 1), 2);
        assert!(order.heap_bytes() <= 8 * listed.len());
    }

    #[tokio::test]
    async fn a_blob_that_never_verifies_fails_after_the_last_attempt() {
        let content = noise(50_000);
        let (blob, toc) = layer_blob(&content);
        let opts = OpenOptions {
            expected_toc_digest: Some(toc),
            ..OpenOptions::default()
        };
        let cache = Arc::new(ChunkCache::new(&ChunkCacheConfig::default(), None));
        let always = flaky(blob.clone(), u32::MAX);
        let err = LayerReader::open(always.clone(), cache.clone(), &opts)
            .await
            .unwrap_err();
        assert!(matches!(err, LayerError::Format(_)), "{err}");
        assert!(always.reads.load(Ordering::SeqCst) <= 2 * FETCH_ATTEMPTS);

        let source = flaky(blob, 0);
        let layer = LayerReader::open(source.clone(), cache, &opts)
            .await
            .unwrap();
        let ino = layer.index().lookup_path("file").unwrap();
        source.corrupt.store(u32::MAX, Ordering::SeqCst);
        let before = source.reads.load(Ordering::SeqCst);
        let err = layer.read(ino, 0, 10).await.unwrap_err();
        assert!(matches!(err, LayerError::Shared(_)), "{err}");
        assert_eq!(source.reads.load(Ordering::SeqCst) - before, FETCH_ATTEMPTS);
    }
}
