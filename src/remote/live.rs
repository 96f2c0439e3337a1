//! Live restart of remote layers. The daemon serves every layer through one
//! FUSE session (`<root>/fuse`), each layer bind-mounted at its snapshot.
//! The fd holder ([`super::fd_holder`]) keeps the session's connection from
//! the moment it is mounted, and one entry per layer (its mountpoint and
//! slot, no descriptor). On SIGTERM the daemon hands the session over
//! (open-file table into the holder, every mount left in place); the next
//! daemon takes the connection back and serves it without remounting, each
//! layer in its old slot, so a reader only sees a pause.
//!
//! After a crash (kill -9) the connection is still held and taken over the
//! same way, but the open-file table died with the daemon: the session goes
//! on without kernel passthrough (see `fuse::handover`).

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rstargz_fs::fuse::{HandoverState, SharedSession, Slot, mountinfo};
use serde::{Deserialize, Serialize};

use super::fd_holder::FdStore;
use super::held_credentials::HeldCredentials;

/// How long a handover waits for FUSE handlers already running.
const HANDOVER_GRACE: Duration = Duration::from_secs(5);

/// What the holder keeps beside the session's connection.
#[derive(Debug, Serialize, Deserialize)]
struct SessionEntry {
    /// Device number of the session (checked against mountinfo on take-over).
    dev: u64,
    /// What the FUSE server needs.
    fuse: HandoverState,
}

/// What the holder keeps of a layer (no descriptor: the session's serves it).
#[derive(Debug, Serialize, Deserialize)]
struct LayerEntry {
    /// The session's device.
    dev: u64,
    /// The layer's slot in the session.
    slot: Slot,
}

/// The session left by a previous daemon, taken from the holder.
type Inherited = (OwnedFd, HandoverState);

/// The daemon's side of live restart.
#[derive(Debug)]
pub struct LiveMounts {
    store: Arc<FdStore>,
    /// The session left by a previous daemon, until it is resumed.
    session: Mutex<Option<Inherited>>,
    /// Layers left by a previous daemon and still to be taken over: slots
    /// by mountpoint.
    adoptable: Mutex<HashMap<PathBuf, Slot>>,
}

fn key(mountpoint: &Path) -> String {
    mountpoint.to_string_lossy().into_owned()
}

/// The holder key of the session mounted at `dir` (never a layer's path).
fn session_key(dir: &Path) -> String {
    format!("session:{}", dir.display())
}

/// The mountinfo root of `slot`'s bind mount.
fn slot_root(slot: Slot) -> PathBuf {
    PathBuf::from(format!("/{slot}"))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Lazily detaches a layer's bind mount nobody will serve (never an abort:
/// the connection is every layer's).
pub(crate) fn detach(mountpoint: &Path) {
    if let Err(e) = nix::mount::umount2(mountpoint, nix::mount::MntFlags::MNT_DETACH) {
        tracing::warn!(mountpoint = %mountpoint.display(), error = %e, "cannot detach mount");
    }
}

impl LiveMounts {
    /// Live restart through `store`.
    pub fn new(store: FdStore) -> Self {
        LiveMounts {
            store: Arc::new(store),
            session: Mutex::default(),
            adoptable: Mutex::default(),
        }
    }

    /// The CRI keychain's credentials kept by the same holder.
    pub fn credentials(&self) -> HeldCredentials {
        HeldCredentials::new(self.store.clone())
    }

    /// At start-up: takes the session at `session_dir` a previous daemon
    /// left in the holder, if it is still the same mount (device numbers
    /// match), and the layers of it still bind-mounted under `root`. Returns
    /// the mounts to keep (the session's and its layers'); entries whose
    /// mount is gone are dropped.
    pub fn find_adoptable(&self, root: &Path, session_dir: &Path) -> Vec<PathBuf> {
        let entries = match self.store.list() {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(error = %e, "fd holder unreadable; remounting every layer");
                return Vec::new();
            }
        };
        let table = mountinfo::read().unwrap_or_default();
        let mounts: HashMap<PathBuf, mountinfo::MountId> = super::restore::our_mounts(table, root)
            .into_iter()
            .map(|m| (m.mountpoint.clone(), m.id()))
            .collect();
        let wanted = session_key(session_dir);
        let held = entries
            .iter()
            .find(|(k, _)| *k == wanted)
            .and_then(|(_, s)| serde_json::from_str::<SessionEntry>(s).ok())
            .filter(|s| {
                mounts
                    .get(session_dir)
                    .is_some_and(|m| m.dev == s.dev && m.root == Path::new("/"))
            });
        let session = held.and_then(|s| match self.store.take(&wanted) {
            Ok(Some((fd, _))) => Some((fd, s)),
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(error = %e, "cannot take over the FUSE session");
                None
            }
        });
        let Some((fd, s)) = session else {
            for (k, _) in &entries {
                if Path::new(k).starts_with(root) || *k == wanted {
                    let _ = self.store.forget(k);
                }
            }
            return Vec::new();
        };
        let mut found = HashMap::new();
        for (k, state) in &entries {
            if *k == wanted {
                continue;
            }
            let path = PathBuf::from(k);
            let layer = serde_json::from_str::<LayerEntry>(state).ok();
            let matches = layer.as_ref().is_some_and(|l| {
                l.dev == s.dev
                    && mounts
                        .get(&path)
                        .is_some_and(|m| m.dev == s.dev && m.root == slot_root(l.slot))
            });
            match layer {
                Some(l) if matches && matches!(self.store.take_state(k), Ok(Some(_))) => {
                    found.insert(path, l.slot);
                }
                _ if path.starts_with(root) => {
                    tracing::info!(mountpoint = %k, "held layer no longer matches its mount; dropped");
                    let _ = self.store.forget(k);
                }
                _ => {}
            }
        }
        let mut keep: Vec<PathBuf> = found.keys().cloned().collect();
        keep.push(session_dir.to_owned());
        *lock(&self.session) = Some((fd, s.fuse));
        *lock(&self.adoptable) = found;
        keep
    }

    /// The session found by [`Self::find_adoptable`] (once) and the slots
    /// of the layers it still has.
    pub fn take_session(&self) -> Option<(OwnedFd, HandoverState, Vec<Slot>)> {
        let (fd, state) = lock(&self.session).take()?;
        let slots = lock(&self.adoptable).values().copied().collect();
        Some((fd, state, slots))
    }

    /// The slot of the layer a previous daemon left at `mountpoint`.
    pub fn take(&self, mountpoint: &Path) -> Option<Slot> {
        lock(&self.adoptable).remove(mountpoint)
    }

    /// Records the session (fresh: with its connection; else its new state:
    /// the next slot grows with every layer) so a later daemon can take it
    /// over even if this one dies.
    pub fn register_session(&self, session: &SharedSession, fresh: bool) {
        if !session.can_hand_over() {
            return;
        }
        let (Some(fuse), Some(dev)) = (session.crash_state(), session.dev()) else {
            return;
        };
        let state = match serde_json::to_string(&SessionEntry { dev, fuse }) {
            Ok(s) => s,
            Err(e) => return tracing::warn!(error = %e, "cannot encode handover state"),
        };
        let k = session_key(session.dir());
        let res = if fresh {
            self.store.put(&k, session.connection(), &state)
        } else {
            self.store.update(&k, &state)
        };
        if let Err(e) = res {
            tracing::warn!(error = %e, "FUSE session not kept for live restart");
        }
    }

    /// Records a fresh layer of `session` in `slot` at `mountpoint`.
    pub fn register(&self, session: &SharedSession, mountpoint: &Path, slot: Slot) {
        let Some(dev) = session.dev().filter(|_| session.can_hand_over()) else {
            return;
        };
        let state = match serde_json::to_string(&LayerEntry { dev, slot }) {
            Ok(s) => s,
            Err(e) => return tracing::warn!(error = %e, "cannot encode layer state"),
        };
        if let Err(e) = self.store.put_state(&key(mountpoint), &state) {
            tracing::warn!(mountpoint = %mountpoint.display(), error = %e, "mount not kept for live restart");
        }
    }

    /// Leaves the session (and every layer bind-mounted from it) to the
    /// next daemon; false when that failed (the caller then unmounts).
    pub fn hand_over(&self, session: &SharedSession) -> bool {
        let Some(dev) = session.dev().filter(|_| session.can_hand_over()) else {
            return false;
        };
        let Some(fuse) = session.hand_over(HANDOVER_GRACE) else {
            return false;
        };
        let sent = serde_json::to_string(&SessionEntry { dev, fuse })
            .map_err(|e| e.to_string())
            .and_then(|s| {
                self.store
                    .update(&session_key(session.dir()), &s)
                    .map_err(|e| e.to_string())
            });
        match sent {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(error = %e, "handover failed; readers of the layers will get ENOTCONN");
                false
            }
        }
    }

    /// Forgets a layer that was unmounted.
    pub fn forget(&self, mountpoint: &Path) {
        if let Err(e) = self.store.forget(&key(mountpoint)) {
            tracing::debug!(error = %e, "fd holder did not forget the mount");
        }
    }

    /// Forgets the session at `dir` (unmounted: the holder closes its
    /// connection).
    pub fn forget_session(&self, dir: &Path) {
        if let Err(e) = self.store.forget(&session_key(dir)) {
            tracing::debug!(error = %e, "fd holder did not forget the session");
        }
    }

    /// After restore: the layers left by the previous daemon that no
    /// snapshot claimed (e.g. a crash between a Remove's commit and its
    /// unmount), forgotten by the holder; the caller detaches them and
    /// gives their slots up.
    pub fn finish_adoption(&self) -> Vec<(PathBuf, Slot)> {
        let left: Vec<(PathBuf, Slot)> = lock(&self.adoptable).drain().collect();
        for (path, _) in &left {
            tracing::info!(mountpoint = %path.display(), "left-over live mount detached");
            self.forget(path);
        }
        left
    }
}
