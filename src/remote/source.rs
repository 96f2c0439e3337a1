//! Blob sources of remote layers: [`RegistryBlob`] reads a layer's bytes
//! from its registry (connecting lazily, so a layer restored while the
//! registry is down still mounts), and [`TocCachedSource`] keeps the
//! footer and TOC reads of a layer on disk so that a remount needs no
//! network for them.

use std::io;
use std::ops::Range;
use std::path::PathBuf;
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

/// Serves metadata reads (footer, TOC) from files in `dir` when present and
/// stores them there after the first read; other reads go to `inner`.
pub struct TocCachedSource {
    inner: Arc<dyn BlobSource>,
    dir: PathBuf,
}

impl TocCachedSource {
    /// Wraps `inner`, caching its metadata reads under `dir` (created on demand).
    pub fn new(inner: Arc<dyn BlobSource>, dir: PathBuf) -> Self {
        TocCachedSource { inner, dir }
    }

    fn path(&self, range: &Range<u64>) -> PathBuf {
        self.dir
            .join(format!("metadata-{}-{}.bin", range.start, range.end))
    }
}

#[async_trait::async_trait]
impl BlobSource for TocCachedSource {
    async fn read_range(&self, range: Range<u64>, purpose: Purpose) -> io::Result<Bytes> {
        if purpose != Purpose::Metadata {
            return self.inner.read_range(range, purpose).await;
        }
        let path = self.path(&range);
        match tokio::fs::read(&path).await {
            Ok(data) if data.len() as u64 == range.end - range.start => return Ok(data.into()),
            Ok(_) => {
                tracing::warn!(path = %path.display(), "cached layer metadata has the wrong size; refetching")
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot read cached layer metadata")
            }
        }
        let data = self.inner.read_range(range, purpose).await?;
        if let Err(e) = write_atomically(&path, &data).await {
            // Only restore without a registry needs the copy.
            tracing::warn!(path = %path.display(), error = %e, "cannot cache layer metadata");
        }
        Ok(data)
    }

    fn size(&self) -> u64 {
        self.inner.size()
    }

    async fn forget(&self, range: Range<u64>) {
        match tokio::fs::remove_file(self.path(&range)).await {
            Ok(()) => {
                tracing::info!(range = ?range, "dropped a cached copy of layer metadata that failed verification")
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(error = %e, "cannot drop cached layer metadata"),
        }
        self.inner.forget(range).await;
    }
}

/// Writes `data` to `path` through a temporary file and a rename, so a crash
/// never leaves a partial file under the final name.
pub async fn write_atomically(path: &std::path::Path, data: &[u8]) -> io::Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| io::Error::other(format!("{} has no parent", path.display())))?;
    tokio::fs::create_dir_all(dir).await?;
    let tmp = dir.join(format!(
        ".tmp-{}-{}",
        std::process::id(),
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file")
    ));
    let (tmp2, data) = (tmp.clone(), data.to_vec());
    tokio::task::spawn_blocking(move || {
        use std::io::Write as _;
        let mut f = std::fs::File::create(&tmp2)?;
        f.write_all(&data)?;
        f.sync_all()
    })
    .await
    .map_err(io::Error::other)??;
    tokio::fs::rename(&tmp, path).await
}
