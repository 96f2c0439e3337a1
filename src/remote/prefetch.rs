//! Prefetch and background fetch of a mounted layer.
//!
//! Prefetch reads the prioritized region (the compressed bytes before the
//! `.prefetch.landmark`, or the label's/config's size for layers without
//! landmarks) as one range read, then decodes and caches every chunk in it,
//! so the prioritized files read with no further fetch. Background fetch
//! then walks the rest of the layer in windows of several chunks at the
//! lowest priority:
//! the registry's priority gate lets on-demand reads overtake it, and a
//! semaphore shared by all layers bounds how many chunks are in flight.
//! A small layer without a prioritized region is instead streamed whole
//! right after its mount ([`stream_layer`]), without waiting for silence.

use std::io;
use std::ops::Range;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rstargz_fs::estargz::{Chunk, Ino, Prefetch};
use rstargz_fs::layer::{LayerReader, Purpose};
use tokio::sync::Semaphore;
use tokio::time::Instant;

use super::buffered::BufferedSource;

/// When an application last waited for the registry, and whether a read
/// that someone needs soon (on-demand or prefetch) is in flight now.
#[derive(Debug, Default)]
pub struct Activity {
    last_on_demand: Mutex<Option<Instant>>,
    in_flight: std::sync::atomic::AtomicUsize,
    idle: tokio::sync::Notify,
}

/// An urgent (on-demand or prefetch) registry read in flight; ends when
/// dropped.
#[derive(Debug)]
pub struct UrgentRead<'a>(&'a Activity);

impl Drop for UrgentRead<'_> {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

impl Activity {
    /// Records an on-demand registry read starting now, in flight until
    /// the returned guard drops.
    pub fn on_demand(&self) -> UrgentRead<'_> {
        if let Ok(mut t) = self.last_on_demand.lock() {
            *t = Some(Instant::now());
        }
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        UrgentRead(self)
    }

    /// Records a prefetch read in flight until the returned guard drops.
    /// It holds streaming back like an on-demand read (the prioritized
    /// files are what the container reads first) but is not an
    /// application's read, so it does not restart the silence period.
    pub fn prefetching(&self) -> UrgentRead<'_> {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        UrgentRead(self)
    }

    /// Returns once no urgent read is in flight (at once if none is).
    pub async fn idle(&self) {
        loop {
            let notified = self.idle.notified();
            if self.in_flight.load(Ordering::Acquire) == 0 {
                return;
            }
            notified.await;
        }
    }

    fn last(&self) -> Option<Instant> {
        self.last_on_demand.lock().ok().and_then(|t| *t)
    }
}

/// Bounds of background fetching over all layers.
#[derive(Debug)]
pub struct BackgroundLimits {
    permits: Arc<Semaphore>,
    bytes_per_sec: u64,
    silence: Duration,
    next_slot: tokio::sync::Mutex<Instant>,
    activity: Arc<Activity>,
}

impl BackgroundLimits {
    /// `concurrency` chunks in flight, `bytes_per_sec` (0: unbounded), and
    /// no new background chunk until `silence` has passed since the last
    /// on-demand read recorded in `activity`.
    pub fn new(
        concurrency: usize,
        bytes_per_sec: u64,
        silence: Duration,
        activity: Arc<Activity>,
    ) -> Self {
        BackgroundLimits {
            permits: Arc::new(Semaphore::new(concurrency.max(1))),
            bytes_per_sec,
            silence,
            next_slot: tokio::sync::Mutex::new(Instant::now()),
            activity,
        }
    }

    /// Waits until a chunk of `bytes` compressed bytes may be fetched:
    /// silence is counted from the later of the last on-demand read and
    /// `since`, when this layer's background fetch began. Without `since`
    /// a layer mounted before its container's first read would start at
    /// once, in the gap between the pull and the workload, and take the
    /// link the workload is about to need.
    pub async fn wait_turn(&self, bytes: u64, since: Instant) {
        loop {
            let last = self.activity.last().map_or(since, |l| l.max(since));
            let quiet = last.elapsed();
            if quiet >= self.silence {
                break;
            }
            tokio::time::sleep(self.silence - quiet).await;
        }
        self.wait_rate(bytes).await;
    }

    /// Waits until `bytes` more fit the bandwidth bound.
    async fn wait_rate(&self, bytes: u64) {
        if self.bytes_per_sec == 0 {
            return;
        }
        let start = {
            let mut next = self.next_slot.lock().await;
            let start = (*next).max(Instant::now());
            *next = start + Duration::from_secs_f64(bytes as f64 / self.bytes_per_sec as f64);
            start
        };
        tokio::time::sleep_until(start).await;
    }
}

/// Every non-hole chunk of the layer, in blob order (hard links share
/// chunks: each compressed range once).
fn all_chunks(layer: &LayerReader) -> impl Iterator<Item = (Ino, Chunk)> + '_ {
    layer.blob_order().iter_from(layer.index(), 0)
}

/// Largest compressed prefix prefetched: it is read into one buffer, and
/// the landmark's offset comes from the layer. Chunks past it are left to
/// background fetch and on-demand reads.
pub const MAX_PREFETCH: u64 = 256 << 20;

/// The compressed prefix to prefetch: the landmark's, else `default_size`,
/// at most [`MAX_PREFETCH`].
pub fn prefetch_end(layer: &LayerReader, default_size: u64) -> u64 {
    capped_prefetch_end(layer.index().prefetch(), default_size, layer.blob_size())
}

fn capped_prefetch_end(prefetch: Prefetch, default_size: u64, blob_size: u64) -> u64 {
    let end = match prefetch {
        Prefetch::Range { end } => end,
        Prefetch::Disabled => 0,
        Prefetch::Unknown => default_size.min(blob_size),
    };
    if end > MAX_PREFETCH {
        tracing::warn!(
            wanted = end,
            cap = MAX_PREFETCH,
            "prefetch region larger than the cap; prefetching only its start"
        );
    }
    end.min(MAX_PREFETCH)
}

/// A prefetch whose range read has started: the chunks of the
/// prioritized region, in blob order, and the compressed span holding them.
pub struct Prefetching {
    chunks: Vec<(Ino, Chunk)>,
    span: u64,
}

/// Starts fetching the chunks inside `[0, end)` into `source` in one range
/// read and returns at once (reads inside the span wait for it); `None`
/// when the region holds no chunk. [`prefetch`] then decodes them.
pub fn start_prefetch(
    layer: &LayerReader,
    source: &Arc<BufferedSource>,
    end: u64,
) -> Option<Prefetching> {
    if end == 0 {
        return None;
    }
    let chunks: Vec<(Ino, Chunk)> = all_chunks(layer)
        .filter(|(_, c)| c.compressed_range().end <= end)
        .collect();
    let span = chunks.iter().map(|(_, c)| c.compressed_range().end).max()?;
    // A warm layer's prefix is already buffered or on its way (see `warm`).
    source.fill_in_background(0..span, Purpose::Prefetch);
    Some(Prefetching { chunks, span })
}

/// Waits for the prefetched span, then decodes, verifies and caches every
/// chunk in it. Returns the number of chunks cached.
pub async fn prefetch(
    layer: &LayerReader,
    source: &BufferedSource,
    prefetching: Prefetching,
) -> io::Result<usize> {
    source.fill(0..prefetching.span, Purpose::Prefetch).await?;
    let mut cached = 0;
    for (ino, chunk) in &prefetching.chunks {
        match layer.chunk(*ino, chunk, Purpose::Prefetch).await {
            Ok(_) => cached += 1,
            Err(e) => tracing::warn!(ino, error = %e, "prefetched chunk failed"),
        }
    }
    source.set(None);
    Ok(cached)
}

/// Fetches every chunk not yet cached at background priority within
/// `limits`, in blob order, `window` compressed bytes per request (a layer
/// of small files costs a few requests, not one per file), each window
/// only once on-demand reads have been silent for the silence period.
pub async fn background_fetch(layer: Arc<LayerReader>, limits: Arc<BackgroundLimits>, window: u64) {
    fetch_windows(layer, limits, window, false).await;
}

/// The window to stream next: the first not yet fetched that ends after
/// `reader_at` (where on-demand reads are: what they will ask for next is
/// most likely just ahead), else the first not yet fetched.
fn next_window(windows: &[Range<u64>], done: &[bool], reader_at: u64) -> Option<usize> {
    let open = |i: &usize| !done[*i];
    let from = windows.partition_point(|w| w.end <= reader_at);
    (from..windows.len())
        .find(open)
        .or_else(|| (0..from).find(open))
}

/// Whether a layer is streamed whole as soon as it is mounted: it has no
/// prioritized region (`prefetch_end` 0, so nothing says what will be read)
/// and at most `max_layer_bytes` compressed bytes. Reads of such a layer go
/// file after file (imports, shared libraries), each a round trip when
/// fetched on demand, while the whole layer costs little more than what is
/// read; a larger layer is more likely read sparsely (a few big files) and
/// is left to on-demand reads and the silence-gated background fetch.
pub fn streams(prefetch_end: u64, blob_size: u64, max_layer_bytes: u64) -> bool {
    prefetch_end == 0 && blob_size <= max_layer_bytes
}

/// Fetches the whole layer, `window` compressed bytes per request, at
/// background priority, starting where on-demand reads are and going on
/// from there: the registry's priority gate lets on-demand reads start
/// first, and unlike [`background_fetch`] this does not wait for them to
/// fall silent, so it overlaps the reads that would otherwise each pay a
/// round trip. Chunks already cached are not fetched again; a failed
/// window is left to on-demand reads and to the background fetch that
/// follows.
pub async fn stream_layer(layer: Arc<LayerReader>, limits: Arc<BackgroundLimits>, window: u64) {
    fetch_windows(layer, limits, window, true).await;
}

/// The loop of [`background_fetch`] and (`streaming`) [`stream_layer`].
async fn fetch_windows(
    layer: Arc<LayerReader>,
    limits: Arc<BackgroundLimits>,
    window: u64,
    streaming: bool,
) {
    let mut tasks = tokio::task::JoinSet::new();
    let windows = layer.stream_windows(window.max(1));
    let mut done = vec![false; windows.len()];
    let started = Instant::now();
    loop {
        let reader_at = if streaming { layer.reader_at() } else { 0 };
        let Some(next) = next_window(&windows, &done, reader_at) else {
            break;
        };
        done[next] = true;
        let range = windows[next].clone();
        let Ok(permit) = limits.permits.clone().acquire_owned().await else {
            return;
        };
        if streaming {
            limits.wait_rate(range.end - range.start).await;
            // A window sent while an application or a prefetch waits for
            // the registry would share the link with it: start it between
            // their reads.
            limits.activity.idle().await;
        } else {
            limits.wait_turn(range.end - range.start, started).await;
        }
        let layer = layer.clone();
        tasks.spawn(async move {
            let _permit = permit;
            if let Err(e) = layer.cache_range(range, Purpose::Background).await {
                tracing::debug!(error = %e, "background fetch of a window failed");
            }
        });
        // Reap finished tasks so the set stays small.
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefetch_region_is_capped() {
        let far = Prefetch::Range { end: 3 << 30 };
        assert_eq!(capped_prefetch_end(far, 0, 4 << 30), MAX_PREFETCH);
        let near = Prefetch::Range { end: 5 << 20 };
        assert_eq!(capped_prefetch_end(near, 0, 4 << 30), 5 << 20);
        let unknown = Prefetch::Unknown;
        assert_eq!(capped_prefetch_end(unknown, 1 << 40, 4 << 30), MAX_PREFETCH);
        assert_eq!(capped_prefetch_end(unknown, 1 << 40, 10), 10);
        assert_eq!(capped_prefetch_end(Prefetch::Disabled, 1 << 40, 4 << 30), 0);
    }

    #[tokio::test]
    async fn idle_waits_for_on_demand_reads_in_flight() {
        let activity = Arc::new(Activity::default());
        activity.idle().await;
        let reading = activity.on_demand();
        let waiter = tokio::spawn({
            let a = activity.clone();
            async move { a.idle().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "idle while a read is in flight");
        drop(reading);
        tokio::time::timeout(Duration::from_secs(10), waiter)
            .await
            .expect("idle once the read ended")
            .expect("idle task");
    }

    #[test]
    fn streaming_follows_the_reader_then_wraps_around() {
        let w: Vec<Range<u64>> = (0..5).map(|i| i * 10..i * 10 + 10).collect();
        let mut done = vec![false; 5];
        assert_eq!(next_window(&w, &done, 0), Some(0));
        // The reader jumped to offset 25: the window holding it comes next.
        assert_eq!(next_window(&w, &done, 25), Some(2));
        done[2] = true;
        assert_eq!(next_window(&w, &done, 25), Some(3));
        done[3] = true;
        done[4] = true;
        // Nothing left after the reader: back to the start.
        assert_eq!(next_window(&w, &done, 25), Some(0));
        assert_eq!(next_window(&w, &[true; 5], 25), None);
    }

    #[test]
    fn only_small_layers_without_a_prioritized_region_stream() {
        assert!(streams(0, 10 << 20, 64 << 20));
        assert!(streams(0, 64 << 20, 64 << 20));
        assert!(!streams(0, (64 << 20) + 1, 64 << 20), "too large");
        assert!(
            !streams(4096, 10 << 20, 64 << 20),
            "has a prioritized region"
        );
        assert!(!streams(0, 10 << 20, 0), "streaming off");
    }

    #[tokio::test(start_paused = true)]
    async fn background_turns_respect_bandwidth_and_silence() {
        let activity = Arc::new(Activity::default());
        let limits =
            BackgroundLimits::new(2, 1 << 20, Duration::from_millis(500), activity.clone());
        let start = Instant::now();
        let long_ago = start - Duration::from_secs(1);
        for _ in 0..3 {
            limits.wait_turn(1 << 20, long_ago).await;
        }
        // Three 1 MiB turns at 1 MiB/s: the third starts after two seconds.
        assert!(
            start.elapsed() >= Duration::from_secs(2),
            "{:?}",
            start.elapsed()
        );
        assert!(start.elapsed() < Duration::from_millis(2100));

        let unbounded = BackgroundLimits::new(2, 0, Duration::from_millis(500), activity.clone());
        drop(activity.on_demand());
        let start = Instant::now();
        unbounded.wait_turn(1 << 30, long_ago).await;
        // Paused until the application has been quiet for the silence period.
        assert!(start.elapsed() >= Duration::from_millis(500));
        let start = Instant::now();
        unbounded.wait_turn(1 << 30, long_ago).await;
        assert_eq!(start.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn background_fetch_of_a_fresh_mount_waits_for_silence_too() {
        // No on-demand read yet (the container has not started): the
        // silence counts from when the layer's background fetch began.
        let limits = BackgroundLimits::new(
            2,
            0,
            Duration::from_millis(500),
            Arc::new(Activity::default()),
        );
        let start = Instant::now();
        limits.wait_turn(1 << 20, start).await;
        assert!(start.elapsed() >= Duration::from_millis(500));
        let start = Instant::now();
        limits
            .wait_turn(1 << 20, start - Duration::from_secs(1))
            .await;
        assert_eq!(start.elapsed(), Duration::ZERO);
    }

    /// An in-memory blob counting its reads.
    struct Counted {
        data: bytes::Bytes,
        reads: std::sync::atomic::AtomicUsize,
    }

    #[async_trait::async_trait]
    impl rstargz_fs::layer::BlobSource for Counted {
        async fn read_range(&self, range: Range<u64>, _: Purpose) -> io::Result<bytes::Bytes> {
            self.reads.fetch_add(1, Ordering::SeqCst);
            Ok(self.data.slice(range.start as usize..range.end as usize))
        }

        fn size(&self) -> u64 {
            self.data.len() as u64
        }
    }

    #[tokio::test]
    async fn a_layer_streams_only_between_any_layers_on_demand_reads() {
        // All layers share one Activity (one per daemon): the on-demand
        // read of one pod's layer holds back another pod's layer streaming,
        // so the first read does not share the link with a window.
        let mut b = tar::Builder::new(Vec::new());
        for i in 0..4u32 {
            let content: Vec<u8> = (0..20_000u32).map(|x| (x * 7 + i) as u8).collect();
            let mut h = tar::Header::new_gnu();
            h.set_mode(0o644);
            h.set_size(content.len() as u64);
            b.append_data(&mut h, format!("f{i}"), &content[..])
                .expect("tar");
        }
        let mut blob = Vec::new();
        let tar = b.into_inner().expect("tar");
        rstargz_fs::estargz::convert(&tar[..], &mut blob, &Default::default()).expect("convert");
        let source = Arc::new(Counted {
            data: blob.into(),
            reads: Default::default(),
        });
        let cache = Arc::new(rstargz_fs::cache::ChunkCache::new(
            &Default::default(),
            None,
        ));
        let layer = Arc::new(
            LayerReader::open(source.clone(), cache, &Default::default())
                .await
                .expect("open"),
        );
        let opened = source.reads.load(Ordering::SeqCst);
        let activity = Arc::new(Activity::default());
        let limits = Arc::new(BackgroundLimits::new(
            2,
            0,
            Duration::from_secs(3),
            activity.clone(),
        ));
        let other_layers_read = activity.on_demand();
        let stream = tokio::spawn(stream_layer(layer, limits, 1 << 20));
        for _ in 0..200 {
            tokio::task::yield_now().await;
        }
        assert_eq!(
            source.reads.load(Ordering::SeqCst),
            opened,
            "a window went out while another layer's read was in flight"
        );
        drop(other_layers_read);
        tokio::time::timeout(Duration::from_secs(10), stream)
            .await
            .expect("streamed once the read ended")
            .expect("stream task");
        assert!(source.reads.load(Ordering::SeqCst) > opened);
    }
}
