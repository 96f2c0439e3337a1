//! What a daemon keeps per layer in `<root>/layers/<digest>/`: the footer
//! and TOC reads (`metadata-<start>-<end>.bin`) and `meta.json` (blob
//! size). Both are written atomically at the first mount, so that the same
//! layer mounts again after a restart without reaching the registry; its
//! chunks then come from the chunk cache or, once it is back, the
//! registry. A state directory is shared by every snapshot of its layer.

use std::io;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use rstargz_fs::layer::{BlobSource, Purpose};
use rstargz_fs::registry::OciDigest;
use serde::{Deserialize, Serialize};

/// Name of the metadata record in a state directory.
const META_FILE: &str = "meta.json";

/// What `meta.json` of a layer's state directory records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerMeta {
    /// Compressed size of the blob (lets a remount skip the probe).
    pub blob_size: u64,
    /// The image it was first mounted from.
    pub reference: String,
    /// The layer digest.
    pub digest: String,
}

/// The `<root>/layers` directory.
#[derive(Debug, Clone)]
pub struct LayerStore {
    dir: PathBuf,
}

impl LayerStore {
    /// The store in `dir` (created on first write).
    pub fn new(dir: PathBuf) -> Self {
        LayerStore { dir }
    }

    /// The directory of every layer's state.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The state directory of the layer `digest`.
    pub fn state_dir(&self, digest: &OciDigest) -> PathBuf {
        self.dir.join(digest.as_str().replace(':', "-"))
    }

    /// The metadata saved in `state`, if it is there and readable: a
    /// missing or damaged record only costs a registry probe.
    pub async fn saved_meta(&self, state: &Path) -> Option<LayerMeta> {
        let bytes = tokio::fs::read(state.join(META_FILE)).await.ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Saves `meta` in `state`; a failure is logged, not returned: only a
    /// restore without a registry needs the record.
    pub async fn record(&self, state: &Path, meta: &LayerMeta) {
        let path = state.join(META_FILE);
        let written = match serde_json::to_vec_pretty(meta) {
            Ok(json) => write_atomically(&path, &json).await,
            Err(e) => Err(io::Error::other(e)),
        };
        if let Err(e) = written {
            tracing::warn!(path = %path.display(), error = %e, "cannot record layer metadata");
        }
    }

    /// Every state directory present (empty when the store is).
    pub async fn saved_states(&self) -> Vec<PathBuf> {
        let mut found = Vec::new();
        let Ok(mut entries) = tokio::fs::read_dir(&self.dir).await else {
            return found;
        };
        while let Ok(Some(entry)) = entries.next_entry().await {
            found.push(entry.path());
        }
        found
    }

    /// Deletes the state directory `state` (gone already is fine).
    pub async fn remove(&self, state: &Path) -> io::Result<()> {
        match tokio::fs::remove_dir_all(state).await {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
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
pub async fn write_atomically(path: &Path, data: &[u8]) -> io::Result<()> {
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn meta_round_trips_and_damage_reads_as_none() {
        let dir = tempfile::tempdir().unwrap();
        let store = LayerStore::new(dir.path().join("layers"));
        let digest = OciDigest::parse(&format!("sha256:{}", "a".repeat(64))).unwrap();
        let state = store.state_dir(&digest);
        assert_eq!(
            state.file_name().unwrap().to_str().unwrap(),
            format!("sha256-{}", "a".repeat(64))
        );
        assert_eq!(store.saved_meta(&state).await, None);
        let meta = LayerMeta {
            blob_size: 42,
            reference: "r/i:t".into(),
            digest: digest.to_string(),
        };
        store.record(&state, &meta).await;
        assert_eq!(store.saved_meta(&state).await, Some(meta));
        std::fs::write(state.join(META_FILE), b"{\"blob_size\":").unwrap();
        assert_eq!(store.saved_meta(&state).await, None);
        assert_eq!(store.saved_states().await, vec![state.clone()]);
        store.remove(&state).await.unwrap();
        store.remove(&state).await.unwrap();
        assert!(store.saved_states().await.is_empty());
    }
}
