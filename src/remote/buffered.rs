//! A blob source holding one prefetched range in memory.
//!
//! The prioritized prefix of a layer is fetched in one range read (by the
//! mount, or ahead of it by `warm`). Prepare does not wait for it: like the
//! Go reference, the container is created while the prefix arrives, and a
//! read inside the prefix waits for it instead of asking the registry for
//! the same bytes again.

use std::io;
use std::ops::Range;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use rstargz_fs::layer::{BlobSource, Purpose};
use tokio::sync::watch;

/// A source that can hold one prefetched range in memory and serves reads
/// inside it without touching `inner`.
pub struct BufferedSource {
    inner: Arc<dyn BlobSource>,
    buffer: RwLock<Option<(u64, Bytes)>>,
    /// The range being fetched into the buffer, if any.
    filling: watch::Sender<Option<Range<u64>>>,
    /// How long a read waits for a fill before reading `inner` itself.
    max_wait: Duration,
}

/// Clears the fill mark when the fill ends, however it ends (a fill whose
/// task is dropped must not leave readers waiting).
struct Filling<'a>(&'a watch::Sender<Option<Range<u64>>>);

impl Drop for Filling<'_> {
    fn drop(&mut self) {
        self.0.send_replace(None);
    }
}

impl BufferedSource {
    /// Wraps `inner` with an empty buffer; reads wait at most `max_wait`
    /// for a fill in flight.
    pub fn new(inner: Arc<dyn BlobSource>, max_wait: Duration) -> Self {
        BufferedSource {
            inner,
            buffer: RwLock::new(None),
            filling: watch::Sender::new(None),
            max_wait,
        }
    }

    /// Serves reads inside `buffer` (start offset, bytes) from memory.
    pub fn set(&self, buffer: Option<(u64, Bytes)>) {
        if let Ok(mut b) = self.buffer.write() {
            *b = buffer;
        }
    }

    /// The buffered bytes of `range`, if the buffer holds all of it.
    pub fn slice(&self, range: &Range<u64>) -> Option<Bytes> {
        self.head(range)
            .filter(|b| b.len() as u64 == range.end - range.start)
    }

    /// The buffered bytes from `range.start` on (up to `range.end`), if the
    /// buffer holds `range.start`.
    fn head(&self, range: &Range<u64>) -> Option<Bytes> {
        let b = self.buffer.read().ok()?;
        let (start, bytes) = b.as_ref()?;
        let end = range.end.min(start + bytes.len() as u64);
        (range.start >= *start && range.start < end)
            .then(|| bytes.slice((range.start - start) as usize..(end - start) as usize))
    }

    /// Starts fetching `range` into the buffer on a task of its own and
    /// returns at once; from now on reads inside `range` wait for it. Does
    /// nothing when the buffer already holds `range` or a fill is running.
    pub fn fill_in_background(self: &Arc<Self>, range: Range<u64>, purpose: Purpose) {
        if range.is_empty() || self.slice(&range).is_some() || self.filling.borrow().is_some() {
            return;
        }
        self.filling.send_replace(Some(range.clone()));
        let this = self.clone();
        tokio::spawn(async move {
            let _filling = Filling(&this.filling);
            match this.inner.read_range(range.clone(), purpose).await {
                Ok(bytes) => this.set(Some((range.start, bytes))),
                Err(e) => tracing::debug!(error = %e, "prefetch of the prioritized prefix failed"),
            }
        });
    }

    /// The bytes of `range` through the buffer: waits for a fill in flight
    /// that covers its start (however long it takes: it is the same
    /// fetch), else fetches `range` into the buffer.
    pub async fn fill(&self, range: Range<u64>, purpose: Purpose) -> io::Result<Bytes> {
        self.wait_for_fill(&range, None).await;
        if let Some(bytes) = self.slice(&range) {
            return Ok(bytes);
        }
        let bytes = self.inner.read_range(range.clone(), purpose).await?;
        self.set(Some((range.start, bytes.clone())));
        Ok(bytes)
    }

    /// Returns once no fill covering `range.start` is in flight, or after
    /// `bound` if given.
    async fn wait_for_fill(&self, range: &Range<u64>, bound: Option<Duration>) {
        let mut rx = self.filling.subscribe();
        let covered = |f: &Option<Range<u64>>| f.as_ref().is_some_and(|f| f.contains(&range.start));
        if !covered(&rx.borrow_and_update()) {
            return;
        }
        let Some(bound) = bound else {
            let _ = rx.wait_for(|f| !covered(f)).await;
            return;
        };
        let waited = tokio::time::timeout(bound, rx.wait_for(|f| !covered(f))).await;
        if waited.is_err() {
            tracing::debug!(
                wait_sec = bound.as_secs(),
                "prefetch still running; reading from the registry"
            );
        }
    }
}

#[async_trait::async_trait]
impl BlobSource for BufferedSource {
    async fn read_range(&self, range: Range<u64>, purpose: Purpose) -> io::Result<Bytes> {
        if let Some(bytes) = self.slice(&range) {
            return Ok(bytes);
        }
        self.wait_for_fill(&range, Some(self.max_wait)).await;
        let Some(head) = self.head(&range) else {
            return self.inner.read_range(range, purpose).await;
        };
        let rest = range.start + head.len() as u64..range.end;
        if rest.is_empty() {
            return Ok(head);
        }
        // A read that starts in the buffer and runs past it (an on-demand
        // read taking its following chunks along) fetches only the rest.
        let tail = self.inner.read_range(rest, purpose).await?;
        let mut joined = Vec::with_capacity(head.len() + tail.len());
        joined.extend_from_slice(&head);
        joined.extend_from_slice(&tail);
        Ok(joined.into())
    }

    fn size(&self) -> u64 {
        self.inner.size()
    }

    async fn forget(&self, range: Range<u64>) {
        // `head`, not `slice`: a read that ran past the buffer took its
        // start from it too.
        if self.head(&range).is_some() {
            // The prefetched copy is bad somewhere: every chunk still to be
            // decoded from it is read from the registry instead.
            self.set(None);
        }
        self.inner.forget(range).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A blob of `len` bytes (byte i = i mod 251) whose reads are counted
    /// (the last one's range kept) and held until `release` has a permit.
    struct Held {
        len: u64,
        reads: AtomicUsize,
        last: std::sync::Mutex<Option<Range<u64>>>,
        release: tokio::sync::Semaphore,
    }

    #[async_trait::async_trait]
    impl BlobSource for Held {
        async fn read_range(&self, range: Range<u64>, _purpose: Purpose) -> io::Result<Bytes> {
            self.reads.fetch_add(1, Ordering::SeqCst);
            if let Ok(mut last) = self.last.lock() {
                *last = Some(range.clone());
            }
            let permit = self.release.acquire().await.map_err(io::Error::other)?;
            permit.forget();
            Ok(range.map(|i| (i % 251) as u8).collect())
        }
        fn size(&self) -> u64 {
            self.len
        }
    }

    fn held(len: u64) -> Arc<Held> {
        Arc::new(Held {
            len,
            reads: AtomicUsize::new(0),
            last: std::sync::Mutex::new(None),
            release: tokio::sync::Semaphore::new(0),
        })
    }

    #[tokio::test]
    async fn a_read_inside_a_fill_in_flight_waits_for_it_instead_of_fetching() {
        let blob = held(1000);
        let source = Arc::new(BufferedSource::new(blob.clone(), Duration::from_secs(60)));
        source.fill_in_background(0..500, Purpose::Prefetch);
        let reader = tokio::spawn({
            let s = source.clone();
            async move { s.read_range(100..110, Purpose::OnDemand).await }
        });
        // The fill's own read is the only one, however long the reader runs.
        while blob.reads.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        assert!(!reader.is_finished(), "answered before the prefix arrived");
        assert_eq!(blob.reads.load(Ordering::SeqCst), 1);
        blob.release.add_permits(1);
        let bytes = reader.await.expect("reader task").expect("read");
        assert_eq!(
            &bytes[..],
            &(100..110).map(|i| i as u8).collect::<Vec<_>>()[..]
        );
        assert_eq!(blob.reads.load(Ordering::SeqCst), 1, "fetched twice");
        // A read outside the prefix goes to the blob.
        blob.release.add_permits(1);
        source
            .read_range(600..610, Purpose::OnDemand)
            .await
            .expect("read past the prefix");
        assert_eq!(blob.reads.load(Ordering::SeqCst), 2);
    }

    /// A blob whose reads of more than 100 bytes never end.
    struct Stuck;

    #[async_trait::async_trait]
    impl BlobSource for Stuck {
        async fn read_range(&self, range: Range<u64>, _purpose: Purpose) -> io::Result<Bytes> {
            if range.end - range.start > 100 {
                std::future::pending::<()>().await;
            }
            Ok(Bytes::from(vec![1u8; (range.end - range.start) as usize]))
        }
        fn size(&self) -> u64 {
            1000
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_stuck_fill_holds_readers_back_only_for_the_wait_bound() {
        let source = Arc::new(BufferedSource::new(Arc::new(Stuck), Duration::from_secs(5)));
        source.fill_in_background(0..500, Purpose::Prefetch);
        let start = tokio::time::Instant::now();
        let bytes = source
            .read_range(0..10, Purpose::OnDemand)
            .await
            .expect("read after the wait");
        assert_eq!(bytes.len(), 10);
        assert!(
            start.elapsed() >= Duration::from_secs(5),
            "{:?}",
            start.elapsed()
        );
    }

    #[tokio::test]
    async fn a_read_running_past_the_buffer_fetches_only_the_rest() {
        let blob = held(1000);
        let source = BufferedSource::new(blob.clone(), Duration::from_secs(60));
        source.set(Some((0, (0..500u64).map(|i| (i % 251) as u8).collect())));
        blob.release.add_permits(1);
        let bytes = source
            .read_range(400..700, Purpose::OnDemand)
            .await
            .expect("read");
        let want: Vec<u8> = (400..700u64).map(|i| (i % 251) as u8).collect();
        assert_eq!(&bytes[..], &want[..]);
        assert_eq!(blob.reads.load(Ordering::SeqCst), 1);
        assert_eq!(*blob.last.lock().expect("lock"), Some(500..700));
    }

    #[tokio::test]
    async fn forgetting_a_range_that_starts_in_the_buffer_drops_the_buffer() {
        let blob = held(1000);
        let source = BufferedSource::new(blob.clone(), Duration::from_secs(60));
        source.set(Some((0, Bytes::from(vec![7u8; 500]))));
        source.forget(400..700).await;
        assert!(source.slice(&(0..10)).is_none(), "bad prefix kept");
    }

    #[tokio::test(start_paused = true)]
    async fn the_prefetch_waits_for_its_own_fill_past_the_readers_bound() {
        let blob = held(1000);
        let source = Arc::new(BufferedSource::new(blob.clone(), Duration::from_secs(5)));
        source.fill_in_background(0..500, Purpose::Prefetch);
        let prefetch = tokio::spawn({
            let s = source.clone();
            async move { s.fill(0..400, Purpose::Prefetch).await }
        });
        // A slow link: the prefix arrives long after readers stop waiting.
        tokio::time::sleep(Duration::from_secs(60)).await;
        blob.release.add_permits(1);
        prefetch.await.expect("task").expect("prefetch");
        assert_eq!(blob.reads.load(Ordering::SeqCst), 1, "prefix fetched twice");
    }

    #[tokio::test]
    async fn fill_serves_an_existing_buffer_and_fetches_otherwise() {
        let blob = held(1000);
        let source = BufferedSource::new(blob.clone(), Duration::from_secs(60));
        source.set(Some((0, Bytes::from(vec![7u8; 100]))));
        let b = source
            .fill(0..50, Purpose::Prefetch)
            .await
            .expect("buffered");
        assert_eq!(&b[..], &[7u8; 50][..]);
        assert_eq!(blob.reads.load(Ordering::SeqCst), 0);
        blob.release.add_permits(1);
        source
            .fill(0..200, Purpose::Prefetch)
            .await
            .expect("fetched");
        assert_eq!(blob.reads.load(Ordering::SeqCst), 1);
        assert!(
            source.slice(&(150..200)).is_some(),
            "fetched bytes buffered"
        );
    }
}
