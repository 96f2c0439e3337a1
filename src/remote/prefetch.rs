//! Prefetch and background fetch of a mounted layer.
//!
//! Prefetch reads the prioritized region (the compressed bytes before the
//! `.prefetch.landmark`, or the label's/config's size for layers without
//! landmarks) as one range read, then decodes and caches every chunk in it,
//! so the prioritized files read with no further fetch. Background fetch
//! then walks the rest of the layer chunk by chunk at the lowest priority:
//! the registry's priority gate lets on-demand reads overtake it, and a
//! semaphore shared by all layers bounds how many chunks are in flight.

use std::io;
use std::ops::Range;
use std::sync::{Arc, RwLock};

use bytes::Bytes;
use rstargz_fs::estargz::{Chunk, Ino, Prefetch};
use rstargz_fs::layer::{BlobSource, LayerReader, Purpose};
use tokio::sync::Semaphore;

/// A source that can hold one prefetched range in memory and serves reads
/// inside it without touching `inner`.
pub struct BufferedSource {
    inner: Arc<dyn BlobSource>,
    buffer: RwLock<Option<(u64, Bytes)>>,
}

impl BufferedSource {
    /// Wraps `inner` with an empty buffer.
    pub fn new(inner: Arc<dyn BlobSource>) -> Self {
        BufferedSource {
            inner,
            buffer: RwLock::new(None),
        }
    }

    fn set(&self, buffer: Option<(u64, Bytes)>) {
        if let Ok(mut b) = self.buffer.write() {
            *b = buffer;
        }
    }

    fn slice(&self, range: &Range<u64>) -> Option<Bytes> {
        let b = self.buffer.read().ok()?;
        let (start, bytes) = b.as_ref()?;
        let end = start + bytes.len() as u64;
        (range.start >= *start && range.end <= end)
            .then(|| bytes.slice((range.start - start) as usize..(range.end - start) as usize))
    }
}

#[async_trait::async_trait]
impl BlobSource for BufferedSource {
    async fn read_range(&self, range: Range<u64>, purpose: Purpose) -> io::Result<Bytes> {
        match self.slice(&range) {
            Some(bytes) => Ok(bytes),
            None => self.inner.read_range(range, purpose).await,
        }
    }

    fn size(&self) -> u64 {
        self.inner.size()
    }
}

/// Every non-hole chunk of the layer, in blob order.
fn all_chunks(layer: &LayerReader) -> Vec<(Ino, Chunk)> {
    let index = layer.index();
    let mut out: Vec<(Ino, Chunk)> = (1..=index.len() as Ino)
        .flat_map(|ino| {
            index
                .chunks(ino)
                .iter()
                .filter(|c| !c.is_zeros())
                .map(move |c| (ino, c.clone()))
        })
        .collect();
    out.sort_by_key(|(_, c)| c.compressed_range().start);
    // Hard links share chunks: fetch each compressed range once.
    out.dedup_by_key(|(_, c)| c.compressed_range().start);
    out
}

/// The compressed prefix to prefetch: the landmark's, else `default_size`.
pub fn prefetch_end(layer: &LayerReader, default_size: u64) -> u64 {
    match layer.index().prefetch() {
        Prefetch::Range { end } => end,
        Prefetch::Disabled => 0,
        Prefetch::Unknown => default_size.min(layer.blob_size()),
    }
}

/// Fetches `[0, end)` in one range read and caches every chunk inside it.
/// Returns the number of chunks cached.
pub async fn prefetch(layer: &LayerReader, source: &BufferedSource, end: u64) -> io::Result<usize> {
    if end == 0 {
        return Ok(0);
    }
    let chunks: Vec<(Ino, Chunk)> = all_chunks(layer)
        .into_iter()
        .filter(|(_, c)| c.compressed_range().end <= end)
        .collect();
    let Some(last) = chunks.iter().map(|(_, c)| c.compressed_range().end).max() else {
        return Ok(0);
    };
    let bytes = source.inner.read_range(0..last, Purpose::Prefetch).await?;
    source.set(Some((0, bytes)));
    let mut cached = 0;
    for (ino, chunk) in &chunks {
        match layer.chunk(*ino, chunk, Purpose::Prefetch).await {
            Ok(_) => cached += 1,
            Err(e) => tracing::warn!(ino, error = %e, "prefetched chunk failed"),
        }
    }
    source.set(None);
    Ok(cached)
}

/// Fetches every chunk not yet cached at background priority, at most
/// `limit`'s permits at a time across all layers.
pub async fn background_fetch(layer: Arc<LayerReader>, limit: Arc<Semaphore>) {
    let mut tasks = tokio::task::JoinSet::new();
    for (ino, chunk) in all_chunks(&layer) {
        let Ok(permit) = limit.clone().acquire_owned().await else {
            return;
        };
        let layer = layer.clone();
        tasks.spawn(async move {
            let _permit = permit;
            if let Err(e) = layer.chunk(ino, &chunk, Purpose::Background).await {
                tracing::debug!(ino, error = %e, "background fetch of a chunk failed");
            }
        });
        // Reap finished tasks so the set stays small.
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
}
