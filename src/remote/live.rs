//! Live restart of remote layers: each mount's FUSE connection is kept in the
//! fd holder ([`super::fd_holder`]) from the moment it is mounted. On SIGTERM
//! the daemon hands every mount over (open-file table into the holder, the
//! mount left in place); the next daemon takes the connections back and
//! serves them without remounting, so a reader only sees a pause.
//!
//! After a crash (kill -9) the connections are still held and taken over
//! the same way, but the open-file table died with the daemon: those mounts
//! go on without kernel passthrough (see `fuse::handover`).

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rstargz_fs::fuse::{HandoverState, MountHandle, mountinfo};
use serde::{Deserialize, Serialize};

use super::fd_holder::FdStore;
use super::held_credentials::HeldCredentials;

/// How long a handover waits for FUSE handlers already running.
const HANDOVER_GRACE: Duration = Duration::from_secs(5);

/// What the holder keeps beside a connection.
#[derive(Debug, Serialize, Deserialize)]
struct EntryState {
    /// Device number of the mount (checked against mountinfo on take-over).
    dev: u64,
    /// What the FUSE server needs.
    fuse: HandoverState,
}

/// The daemon's side of live restart.
#[derive(Debug)]
pub struct LiveMounts {
    store: Arc<FdStore>,
    /// Mounts left by a previous daemon and still to be taken over.
    adoptable: Mutex<HashMap<PathBuf, ()>>,
    /// Device numbers of our mounts, by mountpoint.
    devs: Mutex<HashMap<PathBuf, u64>>,
}

fn key(mountpoint: &Path) -> String {
    mountpoint.to_string_lossy().into_owned()
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Aborts and detaches a mount nobody will serve: aborting fails the
/// requests waiting on it at once instead of leaving them hanging (the
/// device comes from the mount table, never from a `stat` on the mount).
fn detach(mountpoint: &Path) {
    if let Some(dev) = mountinfo::device_of(mountpoint)
        && let Err(e) = mountinfo::abort_connection(dev)
    {
        tracing::warn!(mountpoint = %mountpoint.display(), error = %e, "cannot abort FUSE connection");
    }
    if let Err(e) = nix::mount::umount2(mountpoint, nix::mount::MntFlags::MNT_DETACH) {
        tracing::warn!(mountpoint = %mountpoint.display(), error = %e, "cannot detach mount");
    }
}

impl LiveMounts {
    /// Live restart through `store`.
    pub fn new(store: FdStore) -> Self {
        LiveMounts {
            store: Arc::new(store),
            adoptable: Mutex::default(),
            devs: Mutex::default(),
        }
    }

    /// The CRI keychain's credentials kept by the same holder.
    pub fn credentials(&self) -> HeldCredentials {
        HeldCredentials::new(self.store.clone())
    }

    /// At start-up: the mounts under `root` a previous daemon left in the
    /// holder that are still the same mounts (device numbers match); their
    /// connections are taken over when their layers are restored. Entries
    /// whose mount is gone are dropped.
    pub fn find_adoptable(&self, root: &Path) -> Vec<PathBuf> {
        let entries = match self.store.list() {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(error = %e, "fd holder unreadable; remounting every layer");
                return Vec::new();
            }
        };
        let table = mountinfo::read().unwrap_or_default();
        let mounts: HashMap<PathBuf, u64> = super::restore::our_mounts(table, root)
            .into_iter()
            .map(|m| (m.mountpoint, m.dev))
            .collect();
        let mut found = Vec::new();
        for (k, state) in entries {
            let path = PathBuf::from(&k);
            let dev = serde_json::from_str::<EntryState>(&state)
                .ok()
                .map(|s| s.dev);
            if dev.is_some() && mounts.get(&path) == dev.as_ref() {
                found.push(path);
            } else if path.starts_with(root) {
                tracing::info!(mountpoint = %k, "held connection no longer matches its mount; dropped");
                let _ = self.store.forget(&k);
            }
        }
        *lock(&self.adoptable) = found.iter().map(|p| (p.clone(), ())).collect();
        found
    }

    /// The connection and state of the mount at `mountpoint`, when a
    /// previous daemon left it for us.
    pub fn take(&self, mountpoint: &Path) -> Option<(OwnedFd, HandoverState)> {
        lock(&self.adoptable).remove(mountpoint)?;
        let (fd, state) = match self.store.take(&key(mountpoint)) {
            Ok(Some(taken)) => taken,
            Ok(None) => return None,
            Err(e) => {
                tracing::warn!(mountpoint = %mountpoint.display(), error = %e, "cannot take over mount");
                return None;
            }
        };
        match serde_json::from_str::<EntryState>(&state) {
            Ok(s) => {
                lock(&self.devs).insert(mountpoint.to_owned(), s.dev);
                Some((fd, s.fuse))
            }
            Err(e) => {
                tracing::warn!(error = %e, "unreadable handover state");
                self.abandon(mountpoint);
                None
            }
        }
    }

    /// Gives up a mount that could not be taken over: detached, so the
    /// layer is mounted afresh.
    pub fn abandon(&self, mountpoint: &Path) {
        detach(mountpoint);
        self.forget(mountpoint);
    }

    /// Records a mount (fresh or taken over) in the holder, so a later
    /// daemon can take it over even if this one dies.
    pub fn register(&self, mountpoint: &Path, handle: &MountHandle, dev: Option<u64>, fresh: bool) {
        if !handle.can_hand_over() {
            return;
        }
        let (Some(fuse), Some(dev)) = (
            handle.crash_state(),
            dev.or_else(|| lock(&self.devs).get(mountpoint).copied()),
        ) else {
            return;
        };
        lock(&self.devs).insert(mountpoint.to_owned(), dev);
        let state = match serde_json::to_string(&EntryState { dev, fuse }) {
            Ok(s) => s,
            Err(e) => return tracing::warn!(error = %e, "cannot encode handover state"),
        };
        let k = key(mountpoint);
        let res = if fresh {
            self.store.put(&k, handle.connection(), &state)
        } else {
            self.store.update(&k, &state)
        };
        if let Err(e) = res {
            tracing::warn!(mountpoint = %k, error = %e, "mount not kept for live restart");
        }
    }

    /// Leaves the mount at `mountpoint` to the next daemon; false (and the
    /// mount detached) when that failed.
    pub fn hand_over(&self, mountpoint: &Path, handle: MountHandle) -> bool {
        let dev = lock(&self.devs).get(mountpoint).copied();
        let Some(dev) = dev.filter(|_| handle.can_hand_over()) else {
            drop(handle);
            return false;
        };
        let Some(fuse) = handle.hand_over(HANDOVER_GRACE) else {
            return false;
        };
        let sent = serde_json::to_string(&EntryState { dev, fuse })
            .map_err(|e| e.to_string())
            .and_then(|s| {
                self.store
                    .update(&key(mountpoint), &s)
                    .map_err(|e| e.to_string())
            });
        match sent {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(mountpoint = %mountpoint.display(), error = %e, "handover failed; unmounting");
                self.abandon(mountpoint);
                false
            }
        }
    }

    /// Forgets a mount that was unmounted.
    pub fn forget(&self, mountpoint: &Path) {
        lock(&self.devs).remove(mountpoint);
        if let Err(e) = self.store.forget(&key(mountpoint)) {
            tracing::debug!(error = %e, "fd holder did not forget the mount");
        }
    }

    /// After restore: mounts left by the previous daemon that no snapshot
    /// claimed (e.g. a crash between a Remove's commit and its unmount) are
    /// aborted and detached, like the stale mounts nobody holds.
    pub fn finish_adoption(&self) {
        let left: Vec<PathBuf> = lock(&self.adoptable).drain().map(|(p, _)| p).collect();
        for path in left {
            tracing::info!(mountpoint = %path.display(), "left-over live mount detached");
            if self.store.take(&key(&path)).is_ok() {
                self.abandon(&path);
            }
        }
    }
}
