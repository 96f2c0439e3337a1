//! [`LayerResolver`]: from a layer's registry source to an open
//! [`LayerReader`], as the Go reference's layer resolver. It builds the
//! source stack every remote layer is read through, in one place for the
//! mount, the warm-up of following layers and the restore after a
//! restart:
//!
//! registry blob → saved footer/TOC copies → in-memory prefix → reader.
//!
//! The blob connects lazily when an earlier mount saved its size, so a
//! restore needs the registry only for chunks nobody cached.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rstargz_fs::cache::ChunkCache;
use rstargz_fs::estargz::OpenOptions;
use rstargz_fs::layer::{BlobSource, LayerError, LayerReader};
use rstargz_fs::registry::{LayerSource, Registry, RegistryError};

use super::buffered::BufferedSource;
use super::decline::{DeclineReason, Declined};
use super::persist::{LayerMeta, LayerStore, TocCachedSource};
use super::prefetch::Activity;
use super::source::RegistryBlob;

/// A layer opened through the full source stack.
pub struct Resolved {
    /// The registry blob at the bottom (its Check probes the registry).
    pub blob: Arc<RegistryBlob>,
    /// The in-memory prefix layer of the stack (prefetch fills it).
    pub buffered: Arc<BufferedSource>,
    /// The reader on top.
    pub layer: LayerReader,
}

/// Why a layer could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    /// The registry probe failed.
    #[error(transparent)]
    Connect(RegistryError),
    /// The footer or TOC could not be read, decoded or verified.
    #[error(transparent)]
    Open(LayerError),
    /// [`Connect::Never`] and nothing saved of the layer.
    #[error("nothing saved of the layer to open it without its registry")]
    NotSaved,
}

impl ResolveError {
    /// The decline reason of this failure.
    pub fn reason(&self) -> DeclineReason {
        match self {
            Self::Connect(e) => DeclineReason::of_registry(e),
            Self::Open(e) => DeclineReason::of_layer(e),
            Self::NotSaved => DeclineReason::RegistryUnreachable,
        }
    }
}

impl From<ResolveError> for Declined {
    fn from(e: ResolveError) -> Self {
        e.reason().decline(e)
    }
}

/// When the blob reaches the registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Connect {
    /// At the first read, when an earlier mount saved the blob's size;
    /// now otherwise (mount and restore).
    Lazily,
    /// Now, whatever was saved (warm-up: the probe is the point).
    Now,
    /// Never: only a layer an earlier mount saved opens (restore at
    /// start-up, which makes no registry request).
    Never,
}

/// Opens remote layers; cheap to clone (shared registry, cache and store).
#[derive(Clone)]
pub struct LayerResolver {
    registry: Registry,
    cache: Arc<ChunkCache>,
    store: LayerStore,
    activity: Arc<Activity>,
    prefetch_wait: Duration,
}

impl std::fmt::Debug for LayerResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LayerResolver")
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}

impl LayerResolver {
    /// A resolver reading through `registry` and `cache`, keeping layer
    /// state in `store`; reads in a prefix being prefetched wait for it at
    /// most `prefetch_wait`.
    pub fn new(
        registry: Registry,
        cache: Arc<ChunkCache>,
        store: LayerStore,
        activity: Arc<Activity>,
        prefetch_wait: Duration,
    ) -> Self {
        LayerResolver {
            registry,
            cache,
            store,
            activity,
            prefetch_wait,
        }
    }

    /// The registry client.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The shared chunk cache.
    pub fn cache(&self) -> &Arc<ChunkCache> {
        &self.cache
    }

    /// Where layer state is kept.
    pub fn store(&self) -> &LayerStore {
        &self.store
    }

    /// Opens `source`'s layer with `opts`.
    pub async fn resolve(
        &self,
        source: &LayerSource,
        opts: &OpenOptions,
        connect: Connect,
    ) -> Result<Resolved, ResolveError> {
        let state = self.store.state_dir(&source.layer.digest);
        let saved = match connect {
            Connect::Lazily | Connect::Never => self.store.saved_meta(&state).await,
            Connect::Now => None,
        };
        if saved.is_none() && connect == Connect::Never {
            return Err(ResolveError::NotSaved);
        }
        let blob = match saved {
            Some(meta) => RegistryBlob::lazy(
                self.registry.clone(),
                source.clone(),
                meta.blob_size,
                self.activity.clone(),
            ),
            None => {
                RegistryBlob::connect(self.registry.clone(), source.clone(), self.activity.clone())
                    .await
                    .map_err(ResolveError::Connect)?
            }
        };
        let blob = Arc::new(blob);
        let (buffered, layer) = open_stack(
            blob.clone(),
            state,
            self.prefetch_wait,
            self.cache.clone(),
            opts,
        )
        .await
        .map_err(ResolveError::Open)?;
        Ok(Resolved {
            blob,
            buffered,
            layer,
        })
    }

    /// Saves what a restore of `source`'s mounted layer needs.
    pub async fn remember(&self, source: &LayerSource, layer: &LayerReader) {
        let meta = LayerMeta {
            blob_size: layer.blob_size(),
            reference: source.reference.to_string(),
            digest: source.layer.digest.to_string(),
        };
        let state = self.store.state_dir(&source.layer.digest);
        self.store.record(&state, &meta).await;
    }
}

/// The source stack over `blob`, with footer and TOC copies saved in
/// `state`, and the layer read through it.
pub async fn open_stack(
    blob: Arc<dyn BlobSource>,
    state: PathBuf,
    prefetch_wait: Duration,
    cache: Arc<ChunkCache>,
    opts: &OpenOptions,
) -> Result<(Arc<BufferedSource>, LayerReader), LayerError> {
    let saved: Arc<dyn BlobSource> = Arc::new(TocCachedSource::new(blob, state));
    let buffered = Arc::new(BufferedSource::new(saved, prefetch_wait));
    let layer = LayerReader::open(buffered.clone(), cache, opts).await?;
    Ok((buffered, layer))
}

#[cfg(test)]
#[path = "resolver_tests.rs"]
mod tests;
