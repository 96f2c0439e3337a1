//! [`RegistryBlob`]: a layer's bytes from its registry, connecting lazily
//! so that a layer restored while the registry is down still mounts (its
//! footer and TOC then come from [`super::persist`]).

use std::io;
use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use rstargz_fs::layer::{BlobSource, Purpose};
use rstargz_fs::registry::{BlobFetcher, LayerSource, Registry, RegistryError};
use tokio::sync::OnceCell;

use super::prefetch::Activity;

/// A layer blob in a registry; on-demand reads are recorded in `activity`
/// so that background fetching gives way.
#[derive(Debug)]
pub struct RegistryBlob {
    registry: Registry,
    source: LayerSource,
    size: u64,
    fetcher: OnceCell<BlobFetcher>,
    last_success: std::sync::Mutex<Option<std::time::Instant>>,
    activity: Arc<Activity>,
}

impl RegistryBlob {
    /// Connects now (probe: endpoint, auth, redirect and size).
    pub async fn connect(
        registry: Registry,
        source: LayerSource,
        activity: Arc<Activity>,
    ) -> Result<Self, RegistryError> {
        let fetcher = registry.open_layer(&source, None).await?;
        let size = fetcher.size().unwrap_or(0);
        Ok(RegistryBlob {
            registry,
            source,
            size,
            fetcher: OnceCell::new_with(Some(fetcher)),
            last_success: std::sync::Mutex::new(Some(std::time::Instant::now())),
            activity,
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
            activity,
        }
    }

    async fn fetcher(&self) -> Result<&BlobFetcher, RegistryError> {
        self.fetcher
            .get_or_try_init(|| self.registry.open_layer(&self.source, Some(self.size)))
            .await
    }

    fn record_success(&self) {
        if let Ok(mut t) = self.last_success.lock() {
            *t = Some(std::time::Instant::now());
        }
    }

    /// Cheap connectivity check that also refreshes auth and redirects,
    /// skipped when the registry answered within `validity`.
    pub async fn check(&self, validity: std::time::Duration) -> Result<(), RegistryError> {
        let recent = self
            .last_success
            .lock()
            .ok()
            .and_then(|t| *t)
            .is_some_and(|t| t.elapsed() < validity);
        if recent {
            return Ok(());
        }
        match self.fetcher.get() {
            Some(f) => f.check().await?,
            // Connecting is the check.
            None => drop(self.fetcher().await?),
        }
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
        let parts = self.fetcher().await?.fetch_ranges(ranges, purpose).await?;
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
