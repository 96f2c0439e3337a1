//! [`RegistryBlob`]: a layer's bytes from its registry, connecting lazily
//! so that a layer restored while the registry is down still mounts (its
//! footer and TOC then come from [`super::persist`]).

use std::io;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use bytes::Bytes;
use rstargz_fs::histogram::{GO_MILLISECOND_BOUNDS, LatencyHistogram};
use rstargz_fs::layer::{BlobSource, Purpose};
use rstargz_fs::registry::{BlobFetcher, LayerSource, Registry, RegistryError};
use tokio::sync::OnceCell;

use super::prefetch::Activity;

/// What one layer's blob cost at its registry (the Go reference's
/// per-layer metrics).
#[derive(Debug)]
pub struct BlobStats {
    /// Compressed bytes received, every purpose.
    pub fetched_bytes: AtomicU64,
    /// Latency of each registry read (`remote_registry_get`).
    pub registry_get: LatencyHistogram,
    /// Latency of each read of the background fetch
    /// (`background_fetch_download`).
    pub background_get: LatencyHistogram,
    /// Latency of connecting: endpoint, auth and size (`stargz_header_get`).
    pub connect: LatencyHistogram,
}

impl Default for BlobStats {
    fn default() -> Self {
        BlobStats {
            fetched_bytes: AtomicU64::new(0),
            registry_get: LatencyHistogram::new(&GO_MILLISECOND_BOUNDS),
            background_get: LatencyHistogram::new(&GO_MILLISECOND_BOUNDS),
            connect: LatencyHistogram::new(&GO_MILLISECOND_BOUNDS),
        }
    }
}

/// A layer blob in a registry; on-demand reads are recorded in `activity`
/// so that background fetching gives way.
#[derive(Debug)]
pub struct RegistryBlob {
    registry: Registry,
    source: LayerSource,
    size: u64,
    fetcher: OnceCell<BlobFetcher>,
    last_success: std::sync::Mutex<Option<std::time::Instant>>,
    /// The last check's request failed (cleared by any success).
    check_failed: std::sync::atomic::AtomicBool,
    /// A check started by [`RegistryBlob::usable_now`] is in flight.
    refreshing: std::sync::atomic::AtomicBool,
    activity: Arc<Activity>,
    stats: BlobStats,
}

impl RegistryBlob {
    /// Connects now (probe: endpoint, auth, redirect and size).
    pub async fn connect(
        registry: Registry,
        source: LayerSource,
        activity: Arc<Activity>,
    ) -> Result<Self, RegistryError> {
        let stats = BlobStats::default();
        let started = Instant::now();
        let fetcher = registry.open_layer(&source, None).await;
        stats.connect.observe(started.elapsed());
        let fetcher = fetcher?;
        let size = fetcher.size().unwrap_or(0);
        Ok(RegistryBlob {
            registry,
            source,
            size,
            fetcher: OnceCell::new_with(Some(fetcher)),
            last_success: std::sync::Mutex::new(Some(std::time::Instant::now())),
            check_failed: Default::default(),
            refreshing: Default::default(),
            activity,
            stats,
        })
    }

    /// A blob of known `size` that connects at its first read or check.
    pub fn lazy(
        registry: Registry,
        source: LayerSource,
        size: u64,
        activity: Arc<Activity>,
    ) -> Self {
        RegistryBlob {
            registry,
            source,
            size,
            fetcher: OnceCell::new(),
            last_success: std::sync::Mutex::new(None),
            check_failed: Default::default(),
            refreshing: Default::default(),
            activity,
            stats: BlobStats::default(),
        }
    }

    /// What the blob cost at its registry so far.
    pub fn stats(&self) -> &BlobStats {
        &self.stats
    }

    async fn fetcher(&self) -> Result<&BlobFetcher, RegistryError> {
        self.fetcher
            .get_or_try_init(|| async {
                let started = Instant::now();
                let opened = self
                    .registry
                    .open_layer(&self.source, Some(self.size))
                    .await;
                self.stats.connect.observe(started.elapsed());
                opened
            })
            .await
    }

    fn record_success(&self) {
        if let Ok(mut t) = self.last_success.lock() {
            *t = Some(std::time::Instant::now());
        }
        self.check_failed.store(false, Ordering::Relaxed);
    }

    fn last_success(&self) -> Option<std::time::Instant> {
        self.last_success.lock().ok().and_then(|t| *t)
    }

    /// Whether the registry answered for this blob within `validity`: a
    /// [`Self::check`] now would return at once, without a request.
    pub fn answered_within(&self, validity: std::time::Duration) -> bool {
        self.last_success().is_some_and(|t| t.elapsed() < validity)
    }

    /// Whether a caller (Mounts) may take the blob as usable without
    /// waiting for a check: its registry answered within `validity`, or it
    /// answered before and no check since failed; then the check runs in
    /// the background (one at a time), and a failure makes the next caller
    /// wait for its own check. Never with `validity` zero (check always),
    /// nor for a blob that never answered (restored while its registry is
    /// down) or whose last check failed.
    pub fn usable_now(self: &Arc<Self>, validity: std::time::Duration) -> bool {
        if validity.is_zero() {
            return false;
        }
        if self.answered_within(validity) {
            return true;
        }
        if self.last_success().is_none() || self.check_failed.load(Ordering::Relaxed) {
            return false;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return false;
        };
        if !self.refreshing.swap(true, Ordering::AcqRel) {
            let blob = Arc::clone(self);
            runtime.spawn(async move {
                if let Err(e) = blob.check(validity).await {
                    tracing::warn!(error = %e, "background check of a layer's registry failed");
                }
                blob.refreshing.store(false, Ordering::Release);
            });
        }
        true
    }

    /// Cheap connectivity check that also refreshes auth and redirects,
    /// skipped when the registry answered within `validity`.
    pub async fn check(&self, validity: std::time::Duration) -> Result<(), RegistryError> {
        if self.answered_within(validity) {
            return Ok(());
        }
        let checked = match self.fetcher.get() {
            Some(f) => f.check().await,
            // Connecting is the check.
            None => self.fetcher().await.map(drop),
        };
        if checked.is_err() {
            self.check_failed.store(true, Ordering::Relaxed);
        }
        checked?;
        self.record_success();
        Ok(())
    }

    /// Reads several ranges in as few requests as the registry allows.
    pub async fn read_ranges(
        &self,
        ranges: &[Range<u64>],
        purpose: Purpose,
    ) -> Result<Vec<(Range<u64>, Bytes)>, RegistryError> {
        let _urgent = match purpose {
            Purpose::OnDemand => Some(self.activity.on_demand()),
            Purpose::Metadata | Purpose::Prefetch => Some(self.activity.prefetching()),
            Purpose::Background => None,
        };
        let fetcher = self.fetcher().await?;
        let started = Instant::now();
        let parts = fetcher.fetch_ranges(ranges, purpose).await;
        let took = started.elapsed();
        self.stats.registry_get.observe(took);
        if purpose == Purpose::Background {
            self.stats.background_get.observe(took);
        }
        let parts = parts?;
        let bytes: usize = parts.iter().map(|(_, b)| b.len()).sum();
        (self.stats.fetched_bytes).fetch_add(bytes as u64, Ordering::Relaxed);
        self.record_success();
        Ok(parts)
    }
}

#[async_trait::async_trait]
impl BlobSource for RegistryBlob {
    async fn read_range(&self, range: Range<u64>, purpose: Purpose) -> io::Result<Bytes> {
        let mut parts = self
            .read_ranges(std::slice::from_ref(&range), purpose)
            .await
            .map_err(io::Error::other)?;
        match parts.pop() {
            Some((_, bytes)) => Ok(bytes),
            None => Err(io::Error::other(format!("no data for range {range:?}"))),
        }
    }

    fn size(&self) -> u64 {
        self.size
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
#[path = "source_tests.rs"]
mod tests;
