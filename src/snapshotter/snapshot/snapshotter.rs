//! `Snapshotter`: containerd's Snapshotter interface over the metadata store
//! and the snapshot directories, whose contents and mounts come from the
//! chosen `LocalBackend` (overlayfs or LCOW).
//!
//! Crash-consistency contract (process killed at any instant):
//! - A database row always points at a complete `snapshots/<id>` directory:
//!   Prepare/View build the directory as `new-*`, insert the row, rename the
//!   directory to `<id>` and fsync `snapshots/` before the transaction
//!   commits. A crash before the commit leaves a directory no row owns.
//! - Remove deletes the row and renames `<id>` to `rm-<id>` in the same
//!   transaction and deletes the files only after the commit. A crash before
//!   the commit leaves `rm-<id>` with a live row: start-up renames it back;
//!   a crash that keeps the commit but loses the (unsynced) rename leaves
//!   `<id>` without a row: garbage, as ids are never reused.
//! - Start-up and Cleanup delete every directory no row owns (see `gc`).
//! - Store and directory changes happen under the store's lock, so Cleanup
//!   never sees a half-created snapshot.

use std::os::unix::fs::DirBuilderExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use super::backend::{LocalBackend, NewSnapshot, check_backend_marker};
use super::gc;
use super::layout::{Layout, NEW_PREFIX, mkdir_mode, sync_dir, unique_suffix};
use super::overlay::OverlayBackend;
use super::usage::disk_usage;
use crate::model::{Context, Error, Result};
use crate::model::{Info, Kind, Labels, Mount, Usage, validate_key, validate_labels};
use crate::remote_fs::{NoRemote, RemoteFs};
use crate::store::{Snapshot, Store};

/// Label containerd's unpacker sets to the chain id of the layer it prepares.
pub const TARGET_REF_LABEL: &str = "containerd.io/snapshot.ref";
/// At most this many remote layers are restored at once at start-up.
const RESTORE_CONCURRENCY_MAX: usize = 16;

/// Label marking a snapshot whose `fs` is a remote mount.
pub const REMOTE_LABEL: &str = "containerd.io/snapshot/remote";

/// How to open a snapshotter.
#[derive(Debug, Clone)]
pub struct Options {
    /// Root directory (`metadata.db`, `snapshots/`).
    pub root: PathBuf,
    /// Defer directory deletion from Remove to Cleanup.
    pub async_remove: bool,
    /// Filesystem for remote layers.
    pub remote: Arc<dyn RemoteFs>,
    /// The local snapshot format.
    pub backend: Arc<dyn LocalBackend>,
}

impl Options {
    /// Defaults for `root`: synchronous remove, no remote layers, overlayfs.
    pub fn new(root: impl Into<PathBuf>) -> Options {
        Options {
            root: root.into(),
            async_remove: false,
            remote: Arc::new(NoRemote),
            backend: Arc::new(OverlayBackend::detect()),
        }
    }
}

/// The snapshotter; cheap to clone (shared state).
#[derive(Debug, Clone)]
pub struct Snapshotter {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    store: Store,
    layout: Layout,
    backend: Arc<dyn LocalBackend>,
    async_remove: bool,
    remote: Arc<dyn RemoteFs>,
}

impl Snapshotter {
    /// Opens the snapshotter at `opts.root`: creates the layout, opens the
    /// store, checks the root was not used with another backend and
    /// recovers from any crash.
    pub fn open(opts: Options) -> Result<Snapshotter> {
        let layout = Layout::new(&opts.root);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(layout.snapshots_dir())
            .context(|| format!("create {}", layout.snapshots_dir().display()))?;
        let store = Store::open(&opts.root.join("metadata.db"))?;
        let inner = Inner {
            store,
            layout,
            backend: opts.backend,
            async_remove: opts.async_remove,
            remote: opts.remote,
        };
        check_backend_marker(&inner.layout, inner.backend.as_ref(), &inner.store)?;
        inner.backend.recover(&inner.layout, &inner.store)?;
        gc::recover(&inner.store, &inner.layout, inner.backend.as_ref())?;
        Ok(Snapshotter {
            inner: Arc::new(inner),
        })
    }

    /// Runs `f` on the blocking pool. Each hand-over there and back costs
    /// a scheduling delay on a loaded machine: an operation makes as few
    /// as it can (one per store visit).
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Inner) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let inner = Arc::clone(&self.inner);
        super::run_blocking(move || f(&inner)).await?
    }

    /// Creates an Active snapshot on `parent` and returns its mounts. With a
    /// `containerd.io/snapshot.ref` label it first tries a remote mount; on
    /// success the layer is committed under that name and `AlreadyExists`
    /// tells containerd to skip the download.
    pub async fn prepare(&self, key: String, parent: String, labels: Labels) -> Result<Vec<Mount>> {
        validate_key("key", &key)?;
        validate_labels(&labels)?;
        self.check_chain(&parent).await?;
        let mut target = labels.get(TARGET_REF_LABEL).cloned();
        if let Some(t) = target.take_if(|_| !self.inner.backend.supports_remote()) {
            tracing::info!(
                key = %t, backend = self.inner.backend.name(), "remote-snapshot-prepared" = "false",
                "remote snapshots are not offered by this fallback; preparing a local snapshot"
            );
        }
        let lbl = labels.clone();
        let snap = self
            .blocking(move |s| s.create(Kind::Active, &key, &parent, &lbl))
            .await?;
        if let Some(target) = target {
            let fs = self.inner.layout.fs_dir(snap.id);
            match self.inner.remote.mount(&fs, &labels).await {
                Ok(()) => return self.commit_remote(snap, target, labels).await,
                Err(e) => tracing::info!(
                    key = %target, reason = %e, "remote-snapshot-prepared" = "false",
                    "falling back to a local snapshot"
                ),
            }
        }
        Ok(self.inner.backend.mounts(&self.inner.layout, &snap))
    }

    async fn commit_remote(
        &self,
        snap: Snapshot,
        target: String,
        mut labels: Labels,
    ) -> Result<Vec<Mount>> {
        labels.insert(REMOTE_LABEL.into(), "remote snapshot".into());
        let name = target.clone();
        let id = snap.id;
        let committed = self
            .blocking(move |s| {
                s.store.write(|tx| {
                    let key = tx.key_of(id)?;
                    tx.commit(&key, &name, Usage::default(), &labels, SystemTime::now())
                })
            })
            .await;
        match committed {
            Ok(_) | Err(Error::AlreadyExists(_)) => {
                tracing::info!(key = %target, "remote-snapshot-prepared" = "true", "remote snapshot");
                Err(Error::AlreadyExists(format!("target snapshot {target:?}")))
            }
            Err(e) => Err(e),
        }
    }

    /// Creates a read-only View on `parent` and returns its mounts.
    pub async fn view(&self, key: String, parent: String, labels: Labels) -> Result<Vec<Mount>> {
        validate_key("key", &key)?;
        validate_labels(&labels)?;
        self.check_chain(&parent).await?;
        self.blocking(move |s| {
            let snap = s.create(Kind::View, &key, &parent, &labels)?;
            Ok(s.backend.mounts(&s.layout, &snap))
        })
        .await
    }

    /// The mounts of an Active or View snapshot.
    pub async fn mounts(&self, key: String) -> Result<Vec<Mount>> {
        // One trip to the blocking pool for the snapshot and the remote
        // layers of its chain.
        let (snap, remote) = self
            .blocking(move |s| {
                s.store.read(|tx| {
                    let snap = tx.snapshot(&key)?;
                    if snap.kind == Kind::Committed {
                        return Err(Error::FailedPrecondition(format!(
                            "snapshot {key:?} is committed, not active or view"
                        )));
                    }
                    let remote = tx.flagged(&snap.parent_ids, REMOTE_LABEL)?;
                    Ok((snap, remote))
                })
            })
            .await?;
        self.check_remote(remote).await?;
        Ok(self.inner.backend.mounts(&self.inner.layout, &snap))
    }

    /// Checks the remote layers in the chain of the committed `parent`
    /// (nothing to do without a parent; a missing parent is left to create).
    async fn check_chain(&self, parent: &str) -> Result<()> {
        if parent.is_empty() {
            return Ok(());
        }
        let parent = parent.to_string();
        let remote = self
            .blocking(move |s| {
                s.store.read(|tx| {
                    let chain: Vec<i64> = match tx.snapshot(&parent) {
                        Ok(snap) => std::iter::once(snap.id).chain(snap.parent_ids).collect(),
                        Err(_) => Vec::new(),
                    };
                    tx.flagged(&chain, REMOTE_LABEL)
                })
            })
            .await?;
        self.check_remote(remote).await
    }

    /// Checks the remote layers `remote` (the Go reference's
    /// `checkAvailability`, in parallel). A layer checked recently is
    /// answered from memory; only the others have their labels read and
    /// get a task (and perhaps a request to their registry), so a deep
    /// chain of busy layers costs no task, label copy, lock or request that
    /// background work holds.
    async fn check_remote(&self, remote: Vec<i64>) -> Result<()> {
        let stale: Vec<i64> = remote
            .into_iter()
            .filter(|&id| {
                !self
                    .inner
                    .remote
                    .checked_recently(&self.inner.layout.fs_dir(id))
            })
            .collect();
        if stale.is_empty() {
            return Ok(());
        }
        let stale = self
            .blocking(move |s| s.store.read(|tx| tx.labelled(&stale, REMOTE_LABEL)))
            .await?;
        let mut checks = tokio::task::JoinSet::new();
        for (id, labels) in stale {
            let dir = self.inner.layout.fs_dir(id);
            let fs = Arc::clone(&self.inner.remote);
            checks.spawn(async move { fs.check(&dir, &labels).await.map_err(|e| (dir, e)) });
        }
        while let Some(joined) = checks.join_next().await {
            match joined {
                Ok(Ok(())) => {}
                Ok(Err((dir, e))) => {
                    return Err(Error::Unavailable(format!("layer {}: {e}", dir.display())));
                }
                Err(e) => return Err(Error::internal("remote layer check", e)),
            }
        }
        Ok(())
    }

    /// Mounts every remote layer again (daemon start-up), a few at a time
    /// (each is mostly disk reads, TOC indexing and a bind mount), and lets
    /// the remote filesystem delete the state of layers no snapshot uses.
    /// A layer that cannot be restored stays in the metadata and makes
    /// Mounts of its children answer Unavailable until `check` mounts it.
    /// Returns (restored, failed).
    pub async fn restore_remote(&self) -> Result<(usize, usize)> {
        let layers = self
            .blocking(|s| {
                s.store.read(|tx| {
                    let mut out = Vec::new();
                    for info in tx.walk()? {
                        if info.kind == Kind::Committed && info.labels.contains_key(REMOTE_LABEL) {
                            out.push((tx.snapshot(&info.name)?.id, info.name, info.labels));
                        }
                    }
                    Ok(out)
                })
            })
            .await?;
        let limit = std::thread::available_parallelism()
            .map_or(4, |n| n.get() * 2)
            .clamp(4, RESTORE_CONCURRENCY_MAX);
        let mut restoring = tokio::task::JoinSet::new();
        let mut pending = layers.iter();
        let (mut restored, mut in_use) = (0, Vec::with_capacity(layers.len()));
        loop {
            while restoring.len() < limit
                && let Some((id, name, labels)) = pending.next()
            {
                let fs = Arc::clone(&self.inner.remote);
                let dir = self.inner.layout.fs_dir(*id);
                let (name, labels) = (name.clone(), labels.clone());
                restoring.spawn(async move {
                    let restored = fs.restore(&dir, &labels).await;
                    (name, restored)
                });
            }
            let Some(joined) = restoring.join_next().await else {
                break;
            };
            match joined {
                Ok((_, Ok(()))) => restored += 1,
                Ok((name, Err(e))) => tracing::warn!(
                    snapshot = %name, error = %e,
                    "cannot restore remote layer; Mounts of its children will be unavailable"
                ),
                Err(e) => return Err(Error::internal("remote layer restore", e)),
            }
        }
        in_use.extend(layers.into_iter().map(|(_, _, l)| l));
        self.inner.remote.forget_unused(&in_use).await;
        Ok((restored, in_use.len() - restored))
    }

    /// The daemon serves its socket: restored layers may start fetching.
    pub fn serving(&self) {
        self.inner.remote.serving();
    }

    /// Commits the Active snapshot `key` as `name`, recording its usage.
    pub async fn commit(&self, name: String, key: String, labels: Labels) -> Result<()> {
        validate_key("name", &name)?;
        validate_labels(&labels)?;
        self.blocking(move |s| {
            let snap = s.store.read(|tx| tx.snapshot(&key))?;
            // Measured outside the write lock (it can take a while); if the
            // snapshot vanished meanwhile, the commit below says NotFound.
            let usage = match snap.kind {
                Kind::Active => disk_usage(&s.backend.content_dir(&s.layout, snap.id)),
                _ => Ok(Usage::default()),
            };
            let result = s.store.write(|tx| {
                let usage = usage
                    .as_ref()
                    .map_err(|e| Error::internal("measure usage", e.to_string()));
                tx.snapshot(&key)?;
                tx.commit(&key, &name, *usage?, &labels, SystemTime::now())
            });
            result.map(|_| ())
        })
        .await
    }

    /// Removes a snapshot that has no children.
    pub async fn remove(&self, key: String) -> Result<()> {
        let (removed, async_remove) = self
            .blocking(move |s| Ok((s.remove(&key)?, s.async_remove)))
            .await?;
        if let Some(dir) = removed
            && !async_remove
        {
            gc::delete_dirs(self.inner.remote.as_ref(), vec![dir]).await;
        }
        Ok(())
    }

    /// Metadata of one snapshot.
    pub async fn stat(&self, key: String) -> Result<Info> {
        self.blocking(move |s| s.store.read(|tx| tx.info(&key)).map(|(_, info)| info))
            .await
    }

    /// Updates labels (`fieldpaths`: `labels`, `labels.KEY`; empty = all).
    pub async fn update(&self, info: Info, fieldpaths: Vec<String>) -> Result<Info> {
        validate_labels(&info.labels)?;
        self.blocking(move |s| {
            s.store
                .write(|tx| tx.update(&info, &fieldpaths, SystemTime::now()))
        })
        .await
    }

    /// Every snapshot matching any of `filters` (containerd syntax).
    pub async fn walk(&self, filters: Vec<String>) -> Result<Vec<Info>> {
        let filter = crate::store::filter::AnyOf::parse(&filters)?;
        self.blocking(move |s| {
            let all = s.store.read(|tx| tx.walk())?;
            Ok(all.into_iter().filter(|i| filter.matches(i)).collect())
        })
        .await
    }

    /// Disk usage: measured now for Active snapshots, recorded at commit
    /// time for Committed ones.
    pub async fn usage(&self, key: String) -> Result<Usage> {
        self.blocking(move |s| {
            let (snap, stored) = s.store.read(|tx| {
                let snap = tx.snapshot(&key)?;
                let stored = tx.stored_usage(snap.id)?;
                Ok((snap, stored))
            })?;
            match snap.kind {
                Kind::Active => disk_usage(&s.backend.content_dir(&s.layout, snap.id)),
                _ => Ok(stored),
            }
        })
        .await
    }

    /// Deletes every snapshot directory that no snapshot owns.
    pub async fn cleanup(&self) -> Result<()> {
        let garbage = self
            .blocking(|inner| gc::collect(&inner.store, &inner.layout))
            .await?;
        gc::delete_dirs(self.inner.remote.as_ref(), garbage).await;
        Ok(())
    }

    /// Flushes the store; call once no request is in flight.
    pub async fn close(&self) -> Result<()> {
        self.blocking(|s| s.store.checkpoint()).await
    }
}

impl Inner {
    fn create(&self, kind: Kind, key: &str, parent: &str, labels: &Labels) -> Result<Snapshot> {
        self.backend
            .before_create(&self.layout, kind, key, labels)?;
        self.store.write(|tx| {
            let snap = tx.create(kind, key, parent, labels, SystemTime::now())?;
            let tmp = self
                .layout
                .snapshots_dir()
                .join(format!("{NEW_PREFIX}{}", unique_suffix()));
            let parent_owner = snap
                .parent_ids
                .first()
                .and_then(|&p| self.remote.root_owner(&self.layout.fs_dir(p)));
            let new = NewSnapshot {
                tx,
                layout: &self.layout,
                dir: &tmp,
                snap: &snap,
                key,
                labels,
                parent_owner,
            };
            let built = self.build_dir(&new);
            if built.is_err() {
                let _ = std::fs::remove_dir_all(&tmp);
            }
            built.map(|()| snap)
        })
    }

    /// Builds the new directory with the backend and renames it to the
    /// snapshot's directory.
    fn build_dir(&self, new: &NewSnapshot<'_>) -> Result<()> {
        let (tmp, snap) = (new.dir, new.snap);
        mkdir_mode(tmp, 0o700)?;
        self.backend.populate(new)?;
        let target = self.layout.snapshot_dir(snap.id);
        if target.exists() {
            // Left by a create that crashed before its commit: SQLite may
            // hand the same id out again, and no row owns that directory.
            tracing::warn!(dir = %target.display(), "replacing orphaned snapshot directory");
            gc::delete_now(&target)?;
        }
        std::fs::rename(tmp, &target).context(|| format!("rename to {}", target.display()))?;
        sync_dir(self.layout.snapshots_dir())
    }

    /// Deletes the row and moves the directory aside; returns the directory
    /// to delete.
    fn remove(&self, key: &str) -> Result<Option<PathBuf>> {
        let mut moved: Option<(PathBuf, PathBuf)> = None;
        let result = self.store.write(|tx| {
            let snap = tx.remove(key)?;
            let from = self.layout.snapshot_dir(snap.id);
            let to = self.layout.removed_dir(snap.id);
            match std::fs::rename(&from, &to) {
                Ok(()) => moved = Some((from, to.clone())),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    tracing::warn!(key, dir = %from.display(), "removed snapshot had no directory");
                    return Ok(None);
                }
                Err(e) => return Err(Error::internal(format!("rename {}", from.display()), e)),
            }
            // No fsync of `snapshots/` before the commit: whichever of the
            // rename and the row's deletion a crash keeps, recovery is
            // right (a row with `rm-<id>` gets `<id>` back; `<id>` without
            // a row is garbage, and ids are never reused).
            Ok(Some(to))
        });
        if result.is_err()
            && let Some((from, to)) = moved
            && let Err(e) = std::fs::rename(&to, &from)
        {
            tracing::error!(dir = %to.display(), error = %e, "cannot restore directory after failed remove");
        }
        result
    }
}
