//! [`StargzFs`]: the [`RemoteFs`] of eStargz layers in registries.
//!
//! Mount: labels → layer source → registry blob → verified TOC → FUSE mount.
//! Per layer, `<root>/layers/<layer digest>/` keeps the footer and TOC reads
//! and `meta.json` (blob size), written atomically at first mount, so the
//! same layer mounts again (restore) without reaching the registry; its
//! chunks then come from the chunk cache or, once it is back, the registry.
//! Every decline carries a plain-words reason (see [`DeclineReason`]).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rstargz_fs::cache::{ChunkCache, ChunkCacheConfig, DiskCache, FileStore};
use rstargz_fs::estargz::{self, OpenOptions, Verify};
use rstargz_fs::fuse::{self, MountHandle, MountOptions};
use rstargz_fs::layer::{BlobSource, LayerError, LayerReader};
use rstargz_fs::registry::{LayerSource, Registry, RegistryError, layer_source_from_labels};
use serde::{Deserialize, Serialize};

use rstargz_snapshotter::remote_fs::{BoxFuture, RemoteError, RemoteFs};
use rstargz_snapshotter::snapshot::Labels;

use super::buffered::BufferedSource;
use super::config::RemoteConfig;
use super::live::LiveMounts;
use super::prefetch::{self, Activity, BackgroundLimits};
use super::source::{RegistryBlob, TocCachedSource, write_atomically};
use super::warm::{Warm, WarmLayers};

/// Why a layer was not mounted remotely (counted in metrics, logged).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeclineReason {
    /// Remote mounts are switched off in the config.
    Disabled,
    /// The labels name no registry source.
    NoSource,
    /// No `toc.digest` annotation and verification not waived.
    NoTocDigest,
    /// The blob is not eStargz (no footer or TOC).
    NotEstargz,
    /// The TOC does not match the annotation.
    TocDigestMismatch,
    /// The registry refused the credentials.
    AuthRefused,
    /// The registry could not be reached or failed.
    RegistryUnreachable,
    /// Mounting FUSE failed.
    MountFailed,
}

impl DeclineReason {
    /// Plain words for logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Disabled => "remote snapshots disabled",
            Self::NoSource => "no registry source in labels",
            Self::NoTocDigest => "no TOC digest annotation",
            Self::NotEstargz => "not eStargz",
            Self::TocDigestMismatch => "TOC digest mismatch",
            Self::AuthRefused => "auth refused",
            Self::RegistryUnreachable => "registry unreachable",
            Self::MountFailed => "FUSE mount failed",
        }
    }

    fn decline(self, detail: impl std::fmt::Display) -> Declined {
        Declined(self, detail.to_string())
    }
}

/// A decline with its reason and details.
#[derive(Debug)]
struct Declined(DeclineReason, String);

fn registry_reason(e: &RegistryError) -> DeclineReason {
    match e {
        RegistryError::Unauthorized { .. }
        | RegistryError::Forbidden { .. }
        | RegistryError::Credentials { .. } => DeclineReason::AuthRefused,
        _ => DeclineReason::RegistryUnreachable,
    }
}

fn layer_reason(e: &LayerError) -> DeclineReason {
    match e {
        LayerError::Source { .. } => DeclineReason::RegistryUnreachable,
        LayerError::Format(estargz::Error::TocDigestMismatch { .. }) => {
            DeclineReason::TocDigestMismatch
        }
        _ => DeclineReason::NotEstargz,
    }
}

/// The registry source named by a snapshot's labels.
fn source_of(labels: &Labels) -> Result<LayerSource, RegistryError> {
    let labels: HashMap<String, String> =
        labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    layer_source_from_labels(&labels)
}

/// What `meta.json` of a layer's state directory records.
#[derive(Debug, Serialize, Deserialize)]
struct LayerMeta {
    blob_size: u64,
    reference: String,
    digest: String,
}

/// A mounted layer.
struct Mounted {
    handle: MountHandle,
    blob: Arc<RegistryBlob>,
    layer: Arc<LayerReader>,
    /// Prefetch and background fetch; stopped with the mount.
    fetcher: Option<AbortOnDrop>,
    /// The layer's state directory (TOC copies).
    state: PathBuf,
    /// Device number of the mount (finds it after its directory moved).
    dev: Option<u64>,
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The counters of one mounted layer.
pub struct MountedStats {
    /// The layer (fetch and verification counters).
    pub layer: Arc<LayerReader>,
    /// Its FUSE operation counters.
    pub fuse: Arc<rstargz_fs::fuse::FuseStats>,
}

/// Counters of remote mounts.
#[derive(Debug, Default)]
pub struct RemoteMetrics {
    /// Declines by reason.
    pub declined: Mutex<BTreeMap<&'static str, u64>>,
    /// Successful mounts.
    pub mounted: std::sync::atomic::AtomicU64,
}

/// eStargz layers from registries, mounted with FUSE.
pub struct StargzFs {
    registry: Registry,
    cache: Arc<ChunkCache>,
    files: Option<Arc<FileStore>>,
    layers_dir: PathBuf,
    config: RemoteConfig,
    mounts: Mutex<HashMap<PathBuf, Mounted>>,
    metrics: RemoteMetrics,
    background: Arc<BackgroundLimits>,
    activity: Arc<Activity>,
    remount: tokio::sync::Mutex<()>,
    /// Counters of layers already unmounted, so the totals exported as
    /// Prometheus counters never decrease.
    retired: Retired,
    /// Where mounts record the files opened (`rstargz mount --record`).
    access_log: Option<fuse::AccessLog>,
    /// Live restart (mounts kept across daemon restarts), when enabled.
    live: Option<LiveMounts>,
    /// Following layers opened ahead of their Prepare.
    warm: WarmLayers,
}

/// Final counts of unmounted layers.
#[derive(Debug, Default)]
pub struct Retired {
    /// FUSE operation counters.
    pub fuse: rstargz_fs::fuse::FuseStats,
    /// Chunks that failed to decode or verify.
    pub bad_chunks: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for StargzFs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StargzFs")
            .field("layers_dir", &self.layers_dir)
            .finish_non_exhaustive()
    }
}

/// Errors setting up [`StargzFs`].
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// The registry client could not be built.
    #[error("registry client: {0}")]
    Registry(#[from] RegistryError),
    /// A cache directory could not be opened.
    #[error("cache: {0}")]
    Cache(#[from] rstargz_fs::cache::DiskCacheError),
}

impl StargzFs {
    /// Sets up caches under `root` (unless the config names a directory).
    pub fn new(root: &Path, config: RemoteConfig) -> Result<StargzFs, SetupError> {
        let registry = Registry::new(config.registry_config())?;
        let cache_dir = config
            .directory_cache
            .dir
            .clone()
            .unwrap_or_else(|| root.join("cache"));
        let disk = DiskCache::open(cache_dir.join("chunks"), config.directory_cache.max_bytes)?;
        let files = if config.fuse.passthrough {
            Some(Arc::new(FileStore::open(
                cache_dir.join("files"),
                config.directory_cache.max_bytes,
            )?))
        } else {
            None
        };
        let cache = ChunkCache::new(
            &ChunkCacheConfig {
                memory_bytes: config.directory_cache.memory_bytes,
            },
            Some(Arc::new(disk)),
        );
        let activity = Arc::new(Activity::default());
        Ok(StargzFs {
            registry,
            cache: Arc::new(cache),
            files,
            layers_dir: root.join("layers"),
            mounts: Mutex::new(HashMap::new()),
            metrics: RemoteMetrics::default(),
            background: Arc::new(BackgroundLimits::new(
                config.max_concurrency,
                config.background_fetch.max_bytes_per_sec,
                Duration::from_millis(config.background_fetch.silence_period_msec),
                activity.clone(),
            )),
            activity,
            remount: tokio::sync::Mutex::new(()),
            retired: Retired::default(),
            access_log: None,
            live: None,
            warm: WarmLayers::default(),
            config,
        })
    }

    /// Keeps mounts alive across restarts through `live`.
    pub fn with_live_restart(mut self, live: LiveMounts) -> Self {
        self.live = Some(live);
        self
    }

    /// Live restart, when enabled.
    pub fn live(&self) -> Option<&LiveMounts> {
        self.live.as_ref()
    }

    /// Every mount, removed from the table (at shutdown).
    fn take_all_mounts(&self) -> Vec<(PathBuf, Mounted)> {
        self.mounts
            .lock()
            .map(|mut m| m.drain().collect())
            .unwrap_or_default()
    }

    /// Leaves every mount to the next daemon (SIGTERM with live restart);
    /// returns how many were handed over. Mounts that cannot be are
    /// unmounted.
    pub fn hand_over_all(&self) -> usize {
        let mounts = self.take_all_mounts();
        let mut handed = 0;
        for (path, mounted) in mounts {
            let Mounted {
                handle, fetcher, ..
            } = mounted;
            drop(fetcher);
            // Without live restart the handle unmounts as it drops.
            if let Some(live) = &self.live
                && live.hand_over(&path, handle)
            {
                handed += 1;
            }
        }
        handed
    }

    /// Full stop: unmounts every layer; returns how many unmounted cleanly.
    /// A mount still busy (a file open in it) has its connection aborted
    /// (its readers get ENOTCONN) and is detached, and the fd holder lets go
    /// of every connection: a stopped daemon leaves no mount that waits
    /// forever for a server.
    pub fn unmount_all(&self) -> usize {
        let mounts = self.take_all_mounts();
        let mut clean = 0;
        for (path, mounted) in mounts {
            let Mounted {
                mut handle,
                fetcher,
                dev,
                ..
            } = mounted;
            drop(fetcher);
            match handle.unmount() {
                Ok(()) => clean += 1,
                Err(e) => {
                    tracing::warn!(mountpoint = %path.display(), error = %e, "layer busy at stop; aborting its connection");
                    if let Some(dev) = dev
                        && let Err(e) = fuse::mountinfo::abort_connection(dev)
                    {
                        tracing::warn!(mountpoint = %path.display(), error = %e, "cannot abort FUSE connection");
                    }
                    if let Err(e) = nix::mount::umount2(&path, nix::mount::MntFlags::MNT_DETACH) {
                        tracing::warn!(mountpoint = %path.display(), error = %e, "cannot detach mount");
                    }
                }
            }
            if let Some(live) = &self.live {
                live.forget(&path);
            }
            // With the connection gone the workers stop: dropping joins them.
            drop(handle);
        }
        clean
    }

    /// Counters of mounts and declines.
    pub fn metrics(&self) -> &RemoteMetrics {
        &self.metrics
    }

    /// The registry client (its fetch metrics).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The shared chunk cache.
    pub fn cache(&self) -> &Arc<ChunkCache> {
        &self.cache
    }

    fn count_decline(&self, reason: DeclineReason) {
        if let Ok(mut m) = self.metrics.declined.lock() {
            *m.entry(reason.as_str()).or_default() += 1;
        }
    }

    fn open_options(&self, source: &LayerSource) -> Result<OpenOptions, Declined> {
        let mut opts = OpenOptions::default();
        if self.config.disable_verification {
            opts.verify = Verify::Disabled;
            return Ok(opts);
        }
        match &source.toc_digest {
            Some(d) => {
                opts.expected_toc_digest = Some(
                    estargz::Digest::parse(d.as_str())
                        .map_err(|e| DeclineReason::NoTocDigest.decline(e))?,
                );
            }
            None if source.skip_verify_requested && self.config.allow_no_verification => {
                tracing::warn!(layer = %source.layer.digest, "mounting without verification (skipverify label)");
                opts.verify = Verify::Disabled;
            }
            None => return Err(DeclineReason::NoTocDigest.decline(&source.layer.digest)),
        }
        Ok(opts)
    }

    async fn mount_layer(&self, mountpoint: &Path, labels: &Labels) -> Result<(), Declined> {
        if self.config.disable_remote {
            return Err(DeclineReason::Disabled.decline("disable_remote = true"));
        }
        let source = source_of(labels).map_err(|e| DeclineReason::NoSource.decline(e))?;
        let opts = self.open_options(&source)?;
        self.warm_neighbours(&source);
        let state = self.layer_state(&source.layer.digest);
        let meta_path = state.join("meta.json");
        let warm = self
            .warm
            .take(source.layer.digest.as_str())
            .await
            .filter(|w| {
                w.verify == opts.verify
                    && opts
                        .expected_toc_digest
                        .is_none_or(|d| d == w.layer.toc_digest())
            });
        let (blob, buffered, layer) = match warm {
            Some(w) => (w.blob, w.buffered, w.layer),
            None => self.open_layer(&source, &state, &opts).await?,
        };
        let meta = LayerMeta {
            blob_size: layer.blob_size(),
            reference: source.reference.to_string(),
            digest: source.layer.digest.to_string(),
        };
        if let Ok(json) = serde_json::to_vec_pretty(&meta)
            && let Err(e) = write_atomically(&meta_path, &json).await
        {
            tracing::warn!(path = %meta_path.display(), error = %e, "cannot record layer metadata");
        }
        let mut layer = layer;
        layer.set_read_amplification(self.config.blob.read_amplify_bytes);
        let layer = Arc::new(layer);
        let (handle, fresh) = match self.resume_fuse(mountpoint, layer.clone()).await {
            Some(handle) => (handle, false),
            None => (self.mount_fuse(mountpoint, layer.clone()).await?, true),
        };
        let dev = handle.dev();
        if let Some(live) = &self.live {
            live.register(mountpoint, &handle, dev, fresh);
        }
        let default_prefetch = source.prefetch_size.unwrap_or(self.config.prefetch_size);
        let fetcher = self
            .start_fetching(layer.clone(), buffered, default_prefetch)
            .await;
        self.metrics
            .mounted
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if let Ok(mut m) = self.mounts.lock() {
            m.insert(
                mountpoint.to_path_buf(),
                Mounted {
                    handle,
                    blob,
                    layer,
                    fetcher,
                    state,
                    dev,
                },
            );
        }
        // Opening the layer left the parsed TOC's many small objects freed
        // in the arenas (of whichever threads ran it); now that the mount is
        // complete nothing of it is still being dropped.
        crate::memory::release_freed_memory();
        Ok(())
    }

    /// How long a read inside a layer's prioritized prefix waits for the
    /// prefix before asking the registry itself.
    fn prefetch_wait(&self) -> Duration {
        Duration::from_secs(self.config.prefetch_timeout_sec)
    }

    /// `<root>/layers/<layer digest>`: the layer's footer and TOC copies.
    fn layer_state(&self, digest: &rstargz_fs::registry::OciDigest) -> PathBuf {
        self.layers_dir.join(digest.as_str().replace(':', "-"))
    }

    /// Connects to the layer's blob (lazily when its size is known from an
    /// earlier mount) and reads its TOC.
    async fn open_layer(
        &self,
        source: &rstargz_fs::registry::LayerSource,
        state: &Path,
        opts: &OpenOptions,
    ) -> Result<(Arc<RegistryBlob>, Arc<BufferedSource>, LayerReader), Declined> {
        let meta_path = state.join("meta.json");
        let known = tokio::fs::read(&meta_path)
            .await
            .ok()
            .and_then(|b| serde_json::from_slice::<LayerMeta>(&b).ok());
        let blob = match known {
            Some(meta) => RegistryBlob::lazy(
                self.registry.clone(),
                source.clone(),
                meta.blob_size,
                self.activity.clone(),
            ),
            None => {
                RegistryBlob::connect(self.registry.clone(), source.clone(), self.activity.clone())
                    .await
                    .map_err(|e| registry_reason(&e).decline(e))?
            }
        };
        let blob = Arc::new(blob);
        let cached: Arc<dyn BlobSource> = Arc::new(TocCachedSource::new(
            blob.clone() as Arc<dyn BlobSource>,
            state.to_path_buf(),
        ));
        let buffered = Arc::new(BufferedSource::new(cached, self.prefetch_wait()));
        let layer = LayerReader::open(buffered.clone(), self.cache.clone(), opts)
            .await
            .map_err(|e| layer_reason(&e).decline(e))?;
        Ok((blob, buffered, layer))
    }

    /// Starts opening the image's following layers (connect, TOC, raw
    /// prioritized prefix) in the background.
    fn warm_neighbours(&self, source: &rstargz_fs::registry::LayerSource) {
        let verify = if self.config.disable_verification {
            Verify::Disabled
        } else {
            Verify::Enabled
        };
        for n in &source.neighbours {
            let mut next = source.clone();
            next.layer = n.clone();
            next.toc_digest = None;
            next.neighbours = Vec::new();
            let (registry, activity) = (self.registry.clone(), self.activity.clone());
            let (state, cache) = (self.layer_state(&n.digest), self.cache.clone());
            let default_prefetch = source.prefetch_size.unwrap_or(self.config.prefetch_size);
            let noprefetch = self.config.noprefetch;
            let prefetch_wait = self.prefetch_wait();
            self.warm.start(n.digest.as_str(), async move {
                let blob = RegistryBlob::connect(registry, next, activity)
                    .await
                    .map_err(|e| tracing::debug!(error = %e, "warming a layer: connect failed"))
                    .ok()?;
                let blob = Arc::new(blob);
                let cached: Arc<dyn BlobSource> = Arc::new(TocCachedSource::new(
                    blob.clone() as Arc<dyn BlobSource>,
                    state,
                ));
                let buffered = Arc::new(BufferedSource::new(cached, prefetch_wait));
                let opts = OpenOptions {
                    verify,
                    ..OpenOptions::default()
                };
                let layer = LayerReader::open(buffered.clone(), cache, &opts)
                    .await
                    .map_err(|e| tracing::debug!(error = %e, "warming a layer: not eStargz"))
                    .ok()?;
                let end = if noprefetch {
                    0
                } else {
                    prefetch::prefetch_end(&layer, default_prefetch)
                };
                // Raw: the mount decodes and verifies it once the TOC
                // digest from the layer's own labels has been checked.
                buffered.fill_in_background(0..end, rstargz_fs::layer::Purpose::Prefetch);
                Some(Warm {
                    blob,
                    buffered,
                    layer,
                    verify,
                })
            });
        }
    }

    /// Starts prefetch then background fetch (as configured). Prepare
    /// does not wait for the prefetch: the container is created while the
    /// prefix arrives, and reads inside it wait for it (up to
    /// `prefetch_timeout_sec`) instead of fetching it again.
    async fn start_fetching(
        &self,
        layer: Arc<LayerReader>,
        buffered: Arc<BufferedSource>,
        default_prefetch: u64,
    ) -> Option<AbortOnDrop> {
        let end = if self.config.noprefetch {
            0
        } else {
            prefetch::prefetch_end(&layer, default_prefetch)
        };
        let background = !self.config.no_background_fetch;
        let prefetching = prefetch::start_prefetch(&layer, &buffered, end);
        if prefetching.is_none() && !background {
            return None;
        }
        let limit = self.background.clone();
        let section = &self.config.background_fetch;
        let stream =
            background && prefetch::streams(end, layer.blob_size(), section.stream_layer_max_bytes);
        let window = section.stream_window_bytes;
        let task = tokio::spawn(async move {
            if let Some(prefetching) = prefetching {
                match prefetch::prefetch(&layer, &buffered, prefetching).await {
                    Ok(chunks) => tracing::debug!(bytes = end, chunks, "prefetched"),
                    Err(e) => tracing::warn!(error = %e, "prefetch failed"),
                }
            }
            if stream {
                let bytes = layer.blob_size();
                tracing::debug!(bytes, "streaming the layer (no prioritized region)");
                prefetch::stream_layer(layer.clone(), limit.clone(), window).await;
            }
            if background {
                prefetch::background_fetch(layer, limit, window).await;
            }
        });
        Some(AbortOnDrop(task))
    }

    /// Takes over the live mount a previous daemon left at `mountpoint`.
    async fn resume_fuse(&self, mountpoint: &Path, layer: Arc<LayerReader>) -> Option<MountHandle> {
        let live = self.live.as_ref()?;
        let (conn, state) = live.take(mountpoint)?;
        let opts = self.mount_options();
        let at = mountpoint.to_path_buf();
        let resumed =
            tokio::task::spawn_blocking(move || fuse::resume(&at, layer, opts, conn, &state)).await;
        match resumed {
            Ok(Ok(handle)) => {
                tracing::info!(mountpoint = %mountpoint.display(), "live mount taken over");
                Some(handle)
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "cannot take over live mount; mounting afresh");
                live.abandon(mountpoint);
                None
            }
            Err(e) => {
                tracing::warn!(error = %e, "take-over task failed; mounting afresh");
                live.abandon(mountpoint);
                None
            }
        }
    }

    fn mount_options(&self) -> MountOptions {
        let mut opts = MountOptions {
            runtime: Some(tokio::runtime::Handle::current()),
            passthrough: self.files.clone(),
            access_log: self.access_log.clone(),
            ..MountOptions::default()
        };
        if let Some(s) = self.config.fuse.attr_timeout {
            opts.attr_ttl = Duration::from_secs(s);
        }
        if let Some(s) = self.config.fuse.entry_timeout {
            opts.entry_ttl = Duration::from_secs(s);
        }
        if let Some(s) = self.config.fuse.read_timeout_sec {
            opts.read_timeout = Duration::from_secs(s);
        }
        opts
    }

    async fn mount_fuse(
        &self,
        mountpoint: &Path,
        layer: Arc<LayerReader>,
    ) -> Result<MountHandle, Declined> {
        let opts = self.mount_options();
        let at = mountpoint.to_path_buf();
        tokio::task::spawn_blocking(move || fuse::mount(&at, layer, opts))
            .await
            .map_err(|e| DeclineReason::MountFailed.decline(e))?
            .map_err(|e| DeclineReason::MountFailed.decline(e))
    }

    /// Records the files opened in layers mounted from now on into `log`.
    pub fn record_opens(&mut self, log: fuse::AccessLog) {
        self.access_log = Some(log);
    }

    /// The layer mounted at `mountpoint`, if any.
    pub fn layer_at(&self, mountpoint: &Path) -> Option<Arc<LayerReader>> {
        self.mounts
            .lock()
            .ok()?
            .get(mountpoint)
            .map(|m| m.layer.clone())
    }

    /// Counters of every mounted layer.
    pub fn mounted(&self) -> Vec<MountedStats> {
        self.mounts.lock().map_or_else(
            |_| Vec::new(),
            |m| {
                m.values()
                    .map(|m| MountedStats {
                        layer: m.layer.clone(),
                        fuse: m.handle.stats().clone(),
                    })
                    .collect()
            },
        )
    }

    /// Counts of layers no longer mounted (add them to [`Self::mounted`]'s).
    pub fn retired(&self) -> &Retired {
        &self.retired
    }

    fn retire(&self, mounted: &Mounted) {
        use std::sync::atomic::Ordering::Relaxed;
        self.retired.fuse.absorb(mounted.handle.stats());
        let bad = mounted.layer.stats().bad_chunks.load(Relaxed);
        self.retired.bad_chunks.fetch_add(bad, Relaxed);
    }

    /// Declines so far, by reason.
    pub fn declines(&self) -> Vec<(&'static str, u64)> {
        self.metrics.declined.lock().map_or_else(
            |_| Vec::new(),
            |m| m.iter().map(|(k, v)| (*k, *v)).collect(),
        )
    }

    fn mounted_blob(&self, mountpoint: &Path) -> Option<Arc<RegistryBlob>> {
        self.mounts
            .lock()
            .ok()?
            .get(mountpoint)
            .map(|m| m.blob.clone())
    }

    /// Checks the layer; a layer that is not mounted (its restore failed)
    /// is mounted now if possible, so it heals once its registry is back.
    async fn check_layer(&self, mountpoint: &Path, labels: &Labels) -> Result<(), RemoteError> {
        let blob = match self.mounted_blob(mountpoint) {
            Some(blob) => blob,
            None => {
                // One remount at a time: two at once would stack two mounts.
                let _guard = self.remount.lock().await;
                if self.mounted_blob(mountpoint).is_none() {
                    self.mount_layer(mountpoint, labels).await.map_err(
                        |Declined(reason, detail)| {
                            RemoteError::Unavailable(format!(
                                "layer not mounted ({}: {detail})",
                                reason.as_str()
                            ))
                        },
                    )?;
                    tracing::info!(mountpoint = %mountpoint.display(), "remote layer mounted again");
                    return Ok(());
                }
                self.mounted_blob(mountpoint).ok_or_else(|| {
                    RemoteError::Unavailable(format!("no layer at {}", mountpoint.display()))
                })?
            }
        };
        blob.check(self.config.check_validity())
            .await
            .map_err(|e| RemoteError::Unavailable(e.to_string()))
    }

    /// Deletes the state directories of layers that neither a snapshot in
    /// `in_use` nor a mount uses.
    async fn forget_unused_states(&self, in_use: &[Labels]) {
        let mut keep: std::collections::HashSet<PathBuf> = in_use
            .iter()
            .filter_map(|labels| source_of(labels).ok())
            .map(|source| self.layer_state(&source.layer.digest))
            .collect();
        if let Ok(m) = self.mounts.lock() {
            keep.extend(m.values().map(|m| m.state.clone()));
        }
        let Ok(mut entries) = tokio::fs::read_dir(&self.layers_dir).await else {
            return;
        };
        while let Ok(Some(entry)) = entries.next_entry().await {
            let path = entry.path();
            if keep.contains(&path) {
                continue;
            }
            match tokio::fs::remove_dir_all(&path).await {
                Ok(()) => tracing::info!(dir = %path.display(), "deleted state of an unused layer"),
                Err(e) => {
                    tracing::warn!(dir = %path.display(), error = %e, "cannot delete layer state")
                }
            }
        }
    }

    /// Deletes a layer's TOC copies once no mounted snapshot uses the layer
    /// (snapshots of the same layer in other chains share them).
    async fn forget_state(&self, state: &Path) {
        let shared = self
            .mounts
            .lock()
            .map_or(true, |m| m.values().any(|m| m.state == state));
        if shared {
            return;
        }
        if let Err(e) = tokio::fs::remove_dir_all(state).await
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(dir = %state.display(), error = %e, "cannot delete layer state");
        }
    }

    /// Takes the layer mounted at `mountpoint` out of the map. The core may
    /// have renamed the snapshot directory since the mount (Remove moves it
    /// aside before deleting), so a path not in the map is matched by the
    /// device of the mount found there.
    fn take_mounted(&self, mountpoint: &Path) -> Option<(PathBuf, Mounted)> {
        let mut mounts = self.mounts.lock().ok()?;
        if let Some(m) = mounts.remove(mountpoint) {
            return Some((mountpoint.to_path_buf(), m));
        }
        // From the mount table: a stat on our own mount could hang a kill.
        let dev = fuse::mountinfo::device_of(mountpoint)?;
        let key = mounts
            .iter()
            .find(|(_, m)| m.dev == Some(dev))
            .map(|(k, _)| k.clone())?;
        mounts.remove(&key).map(|m| (key, m))
    }

    async fn unmount_layer(&self, mountpoint: &Path) -> Result<(), RemoteError> {
        let Some((key, mut mounted)) = self.take_mounted(mountpoint) else {
            return Ok(());
        };
        // No more fetching for a layer on its way out.
        drop(mounted.fetcher.take());
        // A mount still busy with the last reads of a removed container
        // usually frees up within moments.
        let mut delay = Duration::from_millis(20);
        let mut last_error = String::new();
        for attempt in 0..7 {
            if attempt > 0 {
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
            let at = mountpoint.to_path_buf();
            let (result, back) = tokio::task::spawn_blocking(move || {
                // Unmount where the mount is now; the handle then only
                // waits for its workers (its own path may be stale).
                let r = match nix::mount::umount(&at) {
                    Ok(()) | Err(nix::errno::Errno::EINVAL | nix::errno::Errno::ENOENT) => {
                        mounted.handle.unmount().map_err(|e| e.to_string())
                    }
                    Err(e) => Err(e.to_string()),
                };
                (r, mounted)
            })
            .await
            .map_err(|e| RemoteError::Failed {
                context: "unmount task".into(),
                source: e.into(),
            })?;
            mounted = back;
            match result {
                Ok(()) => {
                    if let Some(live) = &self.live {
                        live.forget(&key);
                    }
                    self.retire(&mounted);
                    self.forget_state(&mounted.state).await;
                    return Ok(());
                }
                Err(e) => {
                    tracing::debug!(error = %e, "unmount busy; retrying");
                    last_error = e;
                }
            }
        }
        if let Ok(mut m) = self.mounts.lock() {
            m.insert(key, mounted);
        }
        Err(RemoteError::Failed {
            context: format!("unmount {}", mountpoint.display()),
            source: last_error.into(),
        })
    }
}

impl RemoteFs for StargzFs {
    fn mount<'a>(
        &'a self,
        mountpoint: &'a Path,
        labels: &'a Labels,
    ) -> BoxFuture<'a, Result<(), RemoteError>> {
        Box::pin(async move {
            self.mount_layer(mountpoint, labels)
                .await
                .map_err(|Declined(reason, detail)| {
                    self.count_decline(reason);
                    RemoteError::Declined(format!("{}: {detail}", reason.as_str()))
                })
        })
    }

    fn check<'a>(
        &'a self,
        mountpoint: &'a Path,
        labels: &'a Labels,
    ) -> BoxFuture<'a, Result<(), RemoteError>> {
        Box::pin(self.check_layer(mountpoint, labels))
    }

    fn unmount<'a>(&'a self, mountpoint: &'a Path) -> BoxFuture<'a, Result<(), RemoteError>> {
        Box::pin(self.unmount_layer(mountpoint))
    }

    fn forget_unused<'a>(&'a self, in_use: &'a [Labels]) -> BoxFuture<'a, ()> {
        Box::pin(self.forget_unused_states(in_use))
    }

    fn root_owner(&self, mountpoint: &Path) -> Option<(u32, u32)> {
        let layer = self.layer_at(mountpoint)?;
        let root = layer.index().node(estargz::ROOT_INO)?;
        Some((root.uid(), root.gid()))
    }
}
