//! [`StargzFs`]: the [`RemoteFs`] of eStargz layers in registries.
//!
//! Mount: labels → [`plan`] (or a [`DeclineReason`]) → [`LayerResolver`]
//! (or a warm layer opened ahead) → a slot of the daemon's one FUSE session
//! (`<root>/fuse`), bind-mounted at the snapshot (or the live mount a
//! previous daemon left) → prefetch and background fetch. What is mounted
//! where is in the [`MountTable`]; each layer's saved state in
//! [`persist`](super::persist).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use rstargz_fs::cache::{ChunkCache, ChunkCacheConfig, DiskCache, FileStore};
use rstargz_fs::estargz;
use rstargz_fs::fuse::mountinfo::MountId;
use rstargz_fs::fuse::{self, LayerMount, MountOptions, SharedSession};
use rstargz_fs::layer::LayerReader;
use rstargz_fs::registry::{Registry, RegistryError};

use rstargz_snapshotter::remote_fs::{BoxFuture, RemoteError, RemoteFs};
use rstargz_snapshotter::snapshot::Labels;

use super::buffered::BufferedSource;
use super::config::RemoteConfig;
pub use super::decline::DeclineReason;
use super::decline::{Declined, plan};
use super::live::LiveMounts;
pub use super::mounts::MountedStats;
use super::mounts::{
    AbortOnDrop, MountTable, Mounted, UnmountError, UnmountRetry, unmount_with_retry,
};
use super::persist::LayerStore;
use super::policy::Policies;
use super::prefetch::{self, Activity, BackgroundLimits};
use super::resolver::{Connect, LayerResolver};
use super::series::labels::{GoSeries, MountRecord};
use super::warm::WarmLayers;

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
    resolver: LayerResolver,
    policies: Policies,
    /// Kernel passthrough files, when enabled.
    files: Option<Arc<FileStore>>,
    mounts: MountTable,
    metrics: RemoteMetrics,
    background: Arc<BackgroundLimits>,
    /// One remount at a time: two at once would stack two mounts.
    remount: tokio::sync::Mutex<()>,
    /// Where the FUSE session serving every layer is mounted.
    session_dir: PathBuf,
    /// That session, once the first layer is mounted (or taken over).
    session: Mutex<Option<Arc<SharedSession>>>,
    /// One session mount at a time.
    session_init: tokio::sync::Mutex<()>,
    /// Held shared by a layer's mount from taking the session until the
    /// layer is attached, alone by the unmount of the idle session.
    session_use: tokio::sync::RwLock<()>,
    /// Counters of layers already unmounted, so the totals exported as
    /// Prometheus counters never decrease.
    retired: Retired,
    /// Where mounts record the files opened (`rstargz mount --record`).
    access_log: Option<fuse::AccessLog>,
    /// Live restart (mounts kept across daemon restarts), when enabled.
    live: Option<LiveMounts>,
    /// Following layers opened ahead of their Prepare.
    warm: WarmLayers,
    /// Labels and totals of the Go-named metrics.
    series: GoSeries,
    /// True once the daemon serves: what restored layers fetch waits for it.
    serving: tokio::sync::watch::Sender<bool>,
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
            .field("layers_dir", &self.resolver.store().dir())
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
        let policies = Policies::new(&config, root);
        let registry = Registry::new(config.registry_config())?;
        let cache = &policies.cache;
        let disk = DiskCache::open(cache.dir.join("chunks"), cache.max_bytes)?
            .with_page_cache_dropped(cache.drop_page_cache);
        let files = if policies.mount.passthrough {
            Some(Arc::new(FileStore::open(
                cache.dir.join("files"),
                cache.max_bytes,
            )?))
        } else {
            None
        };
        let chunks = ChunkCache::new(
            &ChunkCacheConfig {
                memory_bytes: cache.memory_bytes,
                idle_background: policies.background.idle_cpu,
                ..ChunkCacheConfig::default()
            },
            Some(Arc::new(disk)),
        );
        let activity = Arc::new(Activity::default());
        let bg = &policies.background;
        let background = Arc::new(BackgroundLimits::new(
            bg.max_concurrency,
            bg.max_bytes_per_sec,
            bg.silence,
            activity.clone(),
        ));
        let resolver = LayerResolver::new(
            registry,
            Arc::new(chunks),
            LayerStore::new(root.join("layers")),
            activity,
            policies.prefetch.wait,
        );
        Ok(StargzFs {
            resolver,
            files,
            mounts: MountTable::default(),
            metrics: RemoteMetrics::default(),
            background,
            remount: tokio::sync::Mutex::new(()),
            session_dir: root.join("fuse"),
            session: Mutex::new(None),
            session_init: tokio::sync::Mutex::new(()),
            session_use: tokio::sync::RwLock::new(()),
            retired: Retired::default(),
            access_log: None,
            live: None,
            warm: WarmLayers::default(),
            series: GoSeries::new(policies.metrics.max_layer_labels),
            serving: tokio::sync::watch::Sender::new(false),
            policies,
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

    /// At start-up with live restart: takes over the FUSE session a
    /// previous daemon left and learns which of its layers are still
    /// mounted (their requests wait until restore attaches them again).
    /// Returns the mounts to keep; every other rstargz mount under `root`
    /// is stale. Without a session to take over, nothing is kept.
    pub fn adopt_live(&self, root: &Path) -> Vec<PathBuf> {
        let Some(live) = &self.live else {
            return Vec::new();
        };
        let keep = live.find_adoptable(root, &self.session_dir);
        let Some((conn, state, pending)) = live.take_session() else {
            return keep;
        };
        let opts = self.mount_options("");
        match SharedSession::resume(&self.session_dir, &opts, conn, &state, &pending) {
            Ok(session) => {
                tracing::info!(layers = pending.len(), "FUSE session taken over");
                live.register_session(&session, false);
                *lock(&self.session) = Some(session);
                keep
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot take over the FUSE session; mounting every layer afresh");
                let _ = live.finish_adoption();
                live.forget_session(&self.session_dir);
                Vec::new()
            }
        }
    }

    /// After restore: the layers a previous daemon left that no snapshot
    /// claimed are detached and their slots given up (requests that waited
    /// for them fail with ENOENT).
    pub fn finish_adoption(&self) {
        let Some(live) = &self.live else { return };
        let left = live.finish_adoption();
        for (path, _) in &left {
            super::live::detach(path);
        }
        if let Some(session) = lock(&self.session).clone() {
            let slots: Vec<_> = left.iter().map(|(_, slot)| *slot).collect();
            session.abandon(&slots);
        }
    }

    /// Leaves every mount to the next daemon (SIGTERM with live restart);
    /// returns how many layers were handed over. Without live restart (or
    /// a kernel that cannot resend requests) every layer is unmounted.
    pub fn hand_over_all(&self) -> usize {
        let session = lock(&self.session).clone();
        let (Some(live), Some(session)) = (&self.live, session) else {
            self.unmount_all();
            return 0;
        };
        if !session.can_hand_over() {
            self.unmount_all();
            return 0;
        }
        let mut handed = 0;
        for (_, mounted) in self.mounts.take_all() {
            let Mounted {
                handle, fetcher, ..
            } = mounted;
            drop(fetcher);
            handle.hand_over();
            handed += 1;
        }
        lock(&self.session).take();
        // A failed update leaves the holder the state of a crash: the next
        // daemon still takes the session over, without passthrough.
        live.hand_over(&session);
        handed
    }

    /// Full stop: unmounts every layer, then the session; returns how many
    /// layers unmounted cleanly. A layer still busy (a file open in it) is
    /// detached, and the session's connection aborted (its readers get
    /// ENOTCONN), and the fd holder lets go of everything: a stopped daemon
    /// leaves no mount that waits forever for a server.
    pub fn unmount_all(&self) -> usize {
        let mut clean = 0;
        for (path, mounted) in self.mounts.take_all() {
            let Mounted {
                mut handle,
                fetcher,
                ..
            } = mounted;
            drop(fetcher);
            match handle.unmount() {
                Ok(()) => clean += 1,
                Err(e) => {
                    tracing::warn!(mountpoint = %path.display(), error = %e, "layer busy at stop; detaching it");
                    handle.detach_at(&path);
                }
            }
            if let Some(live) = &self.live {
                live.forget(&path);
            }
        }
        if let Some(session) = lock(&self.session).take() {
            if let Err(e) = session.unmount() {
                tracing::warn!(error = %e, "cannot unmount the FUSE session");
            }
            if let Some(live) = &self.live {
                live.forget_session(session.dir());
            }
        }
        clean
    }

    /// Unmounts the FUSE session once it serves no layer, so an idle
    /// daemon keeps no mount and no FUSE thread; the next layer mounts a
    /// new one (new connection, so its slots may start again at 1).
    async fn unmount_idle_session(&self) {
        let _alone = self.session_use.write().await;
        let idle = lock(&self.session)
            .as_ref()
            .is_some_and(|s| s.layers() == 0 && s.pending().is_empty());
        let Some(session) = lock(&self.session).take_if(|_| idle) else {
            return;
        };
        let dir = session.dir().to_path_buf();
        match tokio::task::spawn_blocking(move || session.unmount()).await {
            Ok(Ok(())) => {
                tracing::info!(dir = %dir.display(), "FUSE session unmounted (no layer left)")
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot unmount the idle FUSE session"),
            Err(e) => tracing::warn!(error = %e, "unmount task of the idle FUSE session failed"),
        }
        if let Some(live) = &self.live {
            live.forget_session(&dir);
        }
    }

    /// The FUSE session serving the layers, mounted with the first one.
    async fn session(&self) -> Result<Arc<SharedSession>, Declined> {
        if let Some(s) = lock(&self.session).clone() {
            return Ok(s);
        }
        let _guard = self.session_init.lock().await;
        if let Some(s) = lock(&self.session).clone() {
            return Ok(s);
        }
        let dir = self.session_dir.clone();
        let opts = self.mount_options("");
        let mounted = tokio::task::spawn_blocking(move || {
            std::fs::create_dir_all(&dir).map_err(|source| fuse::MountError::Mount {
                path: dir.clone(),
                source,
            })?;
            SharedSession::mount(&dir, &opts)
        })
        .await
        .map_err(|e| DeclineReason::MountFailed.decline(e))?
        .map_err(|e| DeclineReason::MountFailed.decline(e))?;
        tracing::info!(dir = %self.session_dir.display(), "FUSE session mounted");
        if let Some(live) = &self.live {
            live.register_session(&mounted, true);
        }
        *lock(&self.session) = Some(mounted.clone());
        Ok(mounted)
    }

    /// Counters of mounts and declines.
    pub fn metrics(&self) -> &RemoteMetrics {
        &self.metrics
    }

    /// The registry client (its fetch metrics).
    pub fn registry(&self) -> &Registry {
        self.resolver.registry()
    }

    /// The shared chunk cache.
    pub fn cache(&self) -> &Arc<ChunkCache> {
        self.resolver.cache()
    }

    /// The files kept for kernel passthrough, when it is on.
    pub fn passthrough_files(&self) -> Option<&Arc<FileStore>> {
        self.files.as_ref()
    }

    /// Labels and totals of the Go-named metrics.
    pub fn go_series(&self) -> &GoSeries {
        &self.series
    }

    /// The policies in force.
    pub fn policies(&self) -> &Policies {
        &self.policies
    }

    fn count_decline(&self, reason: DeclineReason) {
        if let Ok(mut m) = self.metrics.declined.lock() {
            *m.entry(reason.as_str()).or_default() += 1;
        }
    }

    /// Mounts the layer `labels` name at `mountpoint`. A `restore` (start-up,
    /// before the socket serves) opens it from its saved state alone, warms
    /// no other layer and holds its fetching back until the daemon serves.
    async fn mount_layer(
        &self,
        mountpoint: &Path,
        labels: &Labels,
        restore: bool,
    ) -> Result<(), Declined> {
        let started = std::time::Instant::now();
        let p = &self.policies;
        let (source, opts) = plan(p.remote_enabled, p.verification, labels)?;
        let resolved = if restore {
            self.resolver
                .resolve(&source, &opts, Connect::Never)
                .await?
        } else {
            self.warm
                .warm_neighbours(&self.resolver, &source, p.verification, p.prefetch);
            let warm = self
                .warm
                .take_matching(source.layer.digest.as_str(), &opts)
                .await;
            match warm {
                Some(w) => w,
                None => {
                    self.resolver
                        .resolve(&source, &opts, Connect::Lazily)
                        .await?
                }
            }
        };
        let (blob, buffered, mut layer) = (resolved.blob, resolved.buffered, resolved.layer);
        if !restore {
            // A restored layer opened from this very record.
            self.resolver.remember(&source, &layer).await;
        }
        layer.set_read_amplification(p.read_amplify_bytes);
        let layer = Arc::new(layer);
        let digest = source.layer.digest.as_str();
        // Until the layer is in the table: the idle session is not
        // unmounted under it.
        let _using = self.session_use.read().await;
        let session = self.session().await?;
        let adopted = self.live.as_ref().and_then(|l| l.take(mountpoint));
        let handle = match adopted {
            Some(slot) => {
                tracing::info!(mountpoint = %mountpoint.display(), slot, "live mount taken over");
                let opts = self.mount_options(digest);
                session.adopt(slot, mountpoint, layer.clone(), opts)
            }
            None => {
                let handle = self
                    .attach(&session, mountpoint, layer.clone(), digest)
                    .await?;
                if let Some(live) = &self.live {
                    live.register(&session, mountpoint, handle.slot());
                }
                handle
            }
        };
        let id = session.dev().map(|dev| MountId {
            dev,
            root: PathBuf::from(format!("/{}", handle.slot())),
        });
        let end = p.prefetch.end(&layer, source.prefetch_size);
        let record = Arc::new(self.series.record_mount(digest, started.elapsed()));
        let gate = restore.then(|| self.serving.subscribe());
        let fetcher = self.start_fetching(layer.clone(), buffered, end, record.clone(), gate);
        self.metrics
            .mounted
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.mounts.insert(
            mountpoint.to_path_buf(),
            Mounted {
                handle,
                blob,
                layer,
                fetcher,
                state: self.resolver.store().state_dir(&source.layer.digest),
                id,
                record,
            },
        );
        // Opening the layer left the parsed TOC's many small objects freed
        // in the arenas (of whichever threads ran it); now that the mount is
        // complete nothing of it is still being dropped. (Restore does it
        // once, after the last layer: see `forget_unused`.)
        if !restore {
            crate::memory::release_freed_memory();
        }
        Ok(())
    }

    /// Starts prefetch of the prefix up to `end`, then background fetch
    /// (as configured). Prepare does not wait for the prefetch: the
    /// container is created while the prefix arrives, and reads inside it
    /// wait for it (up to `prefetch_timeout_sec`) instead of fetching it
    /// again. With a `gate` (a restored layer) nothing starts before the
    /// gate opens (the daemon serves); reads meanwhile fetch on demand.
    fn start_fetching(
        &self,
        layer: Arc<LayerReader>,
        buffered: Arc<BufferedSource>,
        end: u64,
        record: Arc<MountRecord>,
        gate: Option<tokio::sync::watch::Receiver<bool>>,
    ) -> Option<AbortOnDrop> {
        let policy = self.policies.background;
        let background = policy.enabled;
        let mut prefetching = None;
        if gate.is_none() {
            prefetching = prefetch::start_prefetch(&layer, &buffered, end);
            if prefetching.is_none() && !background {
                return None;
            }
        } else if end == 0 && !background {
            return None;
        }
        let limit = self.background.clone();
        let stream =
            background && prefetch::streams(end, layer.blob_size(), policy.stream_layer_max_bytes);
        let window = policy.stream_window_bytes;
        let task = tokio::spawn(async move {
            if let Some(mut gate) = gate {
                // A closed gate (the daemon going away) fetches nothing.
                if gate.wait_for(|open| *open).await.is_err() {
                    return;
                }
                prefetching = prefetch::start_prefetch(&layer, &buffered, end);
            }
            if let Some(prefetching) = prefetching {
                match prefetch::prefetch(&layer, &buffered, prefetching).await {
                    Ok(chunks) => {
                        record.prefetched_bytes.store(end, Ordering::Relaxed);
                        tracing::debug!(bytes = end, chunks, "prefetched")
                    }
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

    /// The options of a mount of the layer `digest`.
    fn mount_options(&self, digest: &str) -> MountOptions {
        let mut opts = MountOptions {
            runtime: Some(tokio::runtime::Handle::current()),
            passthrough: self.files.clone(),
            access_log: self.access_log.clone(),
            log_file_access: self.policies.mount.log_file_access.then(|| digest.into()),
            ..MountOptions::default()
        };
        self.policies.mount.apply(&mut opts);
        opts
    }

    /// Serves `layer` in a new slot of `session`, bind-mounted at
    /// `mountpoint`. The slot is recorded in the holder before the kernel
    /// sees it: slots are never reused, even by the next daemon.
    async fn attach(
        &self,
        session: &Arc<SharedSession>,
        mountpoint: &Path,
        layer: Arc<LayerReader>,
        digest: &str,
    ) -> Result<LayerMount, Declined> {
        let slot = session.reserve();
        if let Some(live) = &self.live {
            live.register_session(session, false);
        }
        let opts = self.mount_options(digest);
        let (session, at) = (session.clone(), mountpoint.to_path_buf());
        tokio::task::spawn_blocking(move || session.attach(slot, &at, layer, opts))
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
        self.mounts.layer_at(mountpoint)
    }

    /// Counters of every mounted layer.
    pub fn mounted(&self) -> Vec<MountedStats> {
        self.mounts.stats()
    }

    /// Counts of layers no longer mounted (add them to [`Self::mounted`]'s).
    pub fn retired(&self) -> &Retired {
        &self.retired
    }

    fn retire(&self, mounted: &Mounted, mountpoint: &Path) {
        self.retired.fuse.absorb(mounted.handle.stats());
        let bad = mounted.layer.stats().bad_chunks.load(Ordering::Relaxed);
        self.retired.bad_chunks.fetch_add(bad, Ordering::Relaxed);
        self.series.retire(&mounted.stats(mountpoint));
    }

    /// Declines so far, by reason.
    pub fn declines(&self) -> Vec<(&'static str, u64)> {
        self.metrics.declined.lock().map_or_else(
            |_| Vec::new(),
            |m| m.iter().map(|(k, v)| (*k, *v)).collect(),
        )
    }

    /// Checks the layer; a layer that is not mounted (its restore failed)
    /// is mounted now if possible, so it heals once its registry is back.
    async fn check_layer(&self, mountpoint: &Path, labels: &Labels) -> Result<(), RemoteError> {
        let blob = match self.mounts.blob_at(mountpoint) {
            Some(blob) => blob,
            None => {
                let _guard = self.remount.lock().await;
                if self.mounts.blob_at(mountpoint).is_none() {
                    self.mount_layer(mountpoint, labels, false)
                        .await
                        .map_err(|d| {
                            RemoteError::Unavailable(format!("layer not mounted ({d})"))
                        })?;
                    tracing::info!(mountpoint = %mountpoint.display(), "remote layer mounted again");
                    return Ok(());
                }
                self.mounts.blob_at(mountpoint).ok_or_else(|| {
                    RemoteError::Unavailable(format!("no layer at {}", mountpoint.display()))
                })?
            }
        };
        blob.check(self.policies.check_validity)
            .await
            .map_err(|e| RemoteError::Unavailable(e.to_string()))
    }

    /// Deletes a layer's saved state once no mounted snapshot uses the
    /// layer (snapshots of the same layer in other chains share it).
    async fn forget_state(&self, state: &Path) {
        if self.mounts.uses_state(state) {
            return;
        }
        if let Err(e) = self.resolver.store().remove(state).await {
            tracing::warn!(dir = %state.display(), error = %e, "cannot delete layer state");
        }
    }

    async fn unmount_layer(&self, mountpoint: &Path) -> Result<(), RemoteError> {
        // From the mount table: a stat on our own mount could hang a kill.
        let taken = self.mounts.take(mountpoint, fuse::mountinfo::id_of);
        let Some((key, mut mounted)) = taken else {
            return Ok(());
        };
        // No more fetching for a layer on its way out.
        drop(mounted.fetcher.take());
        match unmount_with_retry(mounted, mountpoint, UnmountRetry::default()).await {
            Ok(mounted) => {
                if let Some(live) = &self.live {
                    live.forget(&key);
                }
                self.retire(&mounted, &key);
                self.forget_state(&mounted.state).await;
                drop(mounted);
                self.unmount_idle_session().await;
                Ok(())
            }
            Err(failure) => {
                let context = match &failure.error {
                    UnmountError::Busy { .. } => format!("unmount {}", mountpoint.display()),
                    UnmountError::Task(_) => "unmount task".into(),
                };
                if let Some(mounted) = failure.target {
                    self.mounts.insert(key, mounted);
                }
                Err(RemoteError::Failed {
                    context,
                    source: failure.error.into(),
                })
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl RemoteFs for StargzFs {
    fn mount<'a>(
        &'a self,
        mountpoint: &'a Path,
        labels: &'a Labels,
    ) -> BoxFuture<'a, Result<(), RemoteError>> {
        Box::pin(async move {
            self.mount_layer(mountpoint, labels, false)
                .await
                .map_err(|d| {
                    self.count_decline(d.reason);
                    RemoteError::Declined(d.to_string())
                })
        })
    }

    fn restore<'a>(
        &'a self,
        mountpoint: &'a Path,
        labels: &'a Labels,
    ) -> BoxFuture<'a, Result<(), RemoteError>> {
        Box::pin(async move {
            self.mount_layer(mountpoint, labels, true)
                .await
                .map_err(|d| RemoteError::Unavailable(format!("not restored now: {d}")))
        })
    }

    fn serving(&self) {
        self.serving.send_replace(true);
    }

    fn check<'a>(
        &'a self,
        mountpoint: &'a Path,
        labels: &'a Labels,
    ) -> BoxFuture<'a, Result<(), RemoteError>> {
        Box::pin(async move {
            let started = std::time::Instant::now();
            let checked = self.check_layer(mountpoint, labels).await;
            self.series.observe_check(started.elapsed());
            checked
        })
    }

    fn checked_recently(&self, mountpoint: &Path) -> bool {
        self.mounts
            .blob_at(mountpoint)
            .is_some_and(|b| b.usable_now(self.policies.check_validity))
    }

    fn unmount<'a>(&'a self, mountpoint: &'a Path) -> BoxFuture<'a, Result<(), RemoteError>> {
        Box::pin(self.unmount_layer(mountpoint))
    }

    fn forget_unused<'a>(&'a self, in_use: &'a [Labels]) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            // After the last restored layer (each skips it; see mount_layer).
            crate::memory::release_freed_memory();
            super::restore::prune_states(self.resolver.store(), in_use, self.mounts.states()).await
        })
    }

    fn root_owner(&self, mountpoint: &Path) -> Option<(u32, u32)> {
        let layer = self.layer_at(mountpoint)?;
        let root = layer.index().node(estargz::ROOT_INO)?;
        Some((root.uid(), root.gid()))
    }
}
