//! A mounted layer's data path: the eStargz index plus verified, cached chunk
//! reads from a [`BlobSource`].
//!
//! Contract: [`LayerReader::read`] returns exactly the file bytes of the
//! requested range (short only at end of file) and every byte it returns
//! belongs to a chunk that was verified against its digest (or, for layers
//! opened with verification disabled, decoded from the blob). Chunks are
//! fetched whole (the format's seek granularity) through the shared
//! [`ChunkCache`], so identical chunks are fetched once across layers.

pub mod source;

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use sha2::{Digest as _, Sha256};

use crate::cache::{ChunkCache, ChunkKey};
use crate::estargz::{
    self, Chunk, Compression, Digest, Index, Ino, NodeKind, OpenOptions, Verify, decode_chunk,
    decode_toc, parse_footer,
};
pub use source::{BlobSource, LocalBlob, Purpose};

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
    blob_order: std::sync::OnceLock<Vec<(Ino, Chunk)>>,
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
        let tail_len = (estargz::footer::MAX_FOOTER_SIZE as u64).min(size);
        let tail = read(&*source, size - tail_len..size, Purpose::Metadata).await?;
        let footer = parse_footer(&tail, size)?;
        let toc_range = footer.toc_range();
        if toc_range.end - toc_range.start > opts.max_toc_size.saturating_add(1 << 20) {
            return Err(estargz::Error::TocTooLarge {
                cap: opts.max_toc_size,
            }
            .into());
        }
        let compressed = read(&*source, toc_range, Purpose::Metadata).await?;
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
        let index = Index::build(&decoded.toc, &footer, &opts.limits)?;
        Ok(LayerReader {
            index: Arc::new(index),
            compression: footer.compression(),
            verify: opts.verify,
            toc_digest: decoded.digest,
            blob_size: size,
            source,
            cache,
            stats: LayerStats::default(),
            amplify: 0,
            blob_order: std::sync::OnceLock::new(),
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
        for chunk in self.index.chunks_for_range(ino, start, end - start) {
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
        let mut out = Vec::with_capacity((end - start) as usize);
        for chunk in self.index.chunks_for_range(ino, start, end - start) {
            let bytes = self.chunk(ino, chunk, Purpose::OnDemand).await?;
            append_part(&mut out, chunk, &bytes, start, end);
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
        let chunks = self.index.chunks(ino);
        let first = chunks.partition_point(|c| c.chunk_offset < end);
        for chunk in chunks.iter().skip(first).take(count) {
            if chunk.is_zeros() || self.cache.get_in_memory(&self.key(ino, chunk)).is_some() {
                continue;
            }
            let (this, chunk) = (self.clone(), chunk.clone());
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
        let followers = if purpose == Purpose::OnDemand {
            self.followers(&range)
        } else {
            Vec::new()
        };
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
            self.cache_followers(followers, fetched, range.start);
        }
        let (compression, verify) = (self.compression, self.verify);
        let decoded = tokio::task::spawn_blocking(move || {
            decode_chunk(compression, ino, &chunk, &compressed, verify)
        })
        .await
        .map_err(|e| LayerError::Task(e.to_string()))?;
        match decoded {
            Ok(v) => Ok(Bytes::from(v)),
            Err(e) => {
                self.stats.bad_chunks.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(ino, error = %e, "chunk failed to decode or verify");
                Err(e.into())
            }
        }
    }
}

impl LayerReader {
    /// Uncached data chunks that end within the amplification window after
    /// `range`, with their cache keys, in blob order.
    fn followers(&self, range: &std::ops::Range<u64>) -> Vec<(Ino, Chunk, ChunkKey)> {
        if self.amplify == 0 {
            return Vec::new();
        }
        let order = self.blob_order.get_or_init(|| {
            let mut all: Vec<(Ino, Chunk)> = (1..=self.index.len() as Ino)
                .flat_map(|ino| {
                    self.index
                        .chunks(ino)
                        .iter()
                        .filter(|c| !c.is_zeros())
                        .map(move |c| (ino, c.clone()))
                })
                .collect();
            all.sort_by_key(|(_, c)| c.compressed_range().start);
            // Hard links share chunks.
            all.dedup_by_key(|(_, c)| c.compressed_range().start);
            all
        });
        let first = order.partition_point(|(_, c)| c.compressed_range().start < range.end);
        let limit = range.end.saturating_add(self.amplify);
        let mut out: Vec<(Ino, Chunk, ChunkKey)> = order[first..]
            .iter()
            .take_while(|(_, c)| c.compressed_range().end <= limit)
            .map(|(ino, c)| (*ino, c.clone(), self.key(*ino, c)))
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
