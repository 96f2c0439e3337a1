//! The mount table: which layer is mounted where, and taking mounts down.
//! Unmounting retries a busy mount for a while (the last reads of a
//! removed container usually end within moments) before giving up and
//! putting it back in the table.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rstargz_fs::fuse::LayerMount;
use rstargz_fs::fuse::mountinfo::MountId;
use rstargz_fs::layer::LayerReader;

pub use super::series::MountedStats;
use super::series::labels::MountRecord;
use super::source::RegistryBlob;

/// Aborts a task when dropped.
pub struct AbortOnDrop(pub tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A mounted layer.
pub struct Mounted {
    /// The layer's bind mount of the FUSE session.
    pub handle: LayerMount,
    /// The registry blob (Check probes it).
    pub blob: Arc<RegistryBlob>,
    /// The layer served.
    pub layer: Arc<LayerReader>,
    /// Prefetch and background fetch; stopped with the mount.
    pub fetcher: Option<AbortOnDrop>,
    /// The layer's state directory (shared by snapshots of the same layer).
    pub state: PathBuf,
    /// Identity of the mount (finds it after its directory moved).
    pub id: Option<MountId>,
    /// What the Go-named metrics keep of the mount.
    pub record: Arc<MountRecord>,
}

impl Mounted {
    /// The counters of this mount, mounted at `mountpoint`.
    pub fn stats(&self, mountpoint: &Path) -> MountedStats {
        MountedStats {
            mountpoint: mountpoint.to_path_buf(),
            layer: self.layer.clone(),
            fuse: self.handle.stats().clone(),
            blob: self.blob.clone(),
            record: self.record.clone(),
        }
    }
}

/// What the table needs to know of an entry.
pub trait Entry {
    /// Identity of the mount, when known.
    fn id(&self) -> Option<&MountId>;
    /// The layer's state directory.
    fn state(&self) -> &Path;
}

impl Entry for Mounted {
    fn id(&self) -> Option<&MountId> {
        self.id.as_ref()
    }

    fn state(&self) -> &Path {
        &self.state
    }
}

/// Mounts by mountpoint.
pub struct MountTable<T = Mounted> {
    mounts: Mutex<HashMap<PathBuf, T>>,
}

impl<T> Default for MountTable<T> {
    fn default() -> Self {
        MountTable {
            mounts: Mutex::new(HashMap::new()),
        }
    }
}

impl<T: Entry> MountTable<T> {
    /// Records `entry` as mounted at `mountpoint`.
    pub fn insert(&self, mountpoint: PathBuf, entry: T) {
        if let Ok(mut m) = self.mounts.lock() {
            m.insert(mountpoint, entry);
        }
    }

    /// Every mount, removed from the table (at shutdown).
    pub fn take_all(&self) -> Vec<(PathBuf, T)> {
        self.mounts
            .lock()
            .map(|mut m| m.drain().collect())
            .unwrap_or_default()
    }

    /// Takes the mount at `mountpoint` out of the table. The core may have
    /// renamed the snapshot directory since the mount (Remove moves it
    /// aside before deleting), so a path not in the table is matched by
    /// the identity (device and layer directory) `id_of` finds mounted there.
    pub fn take(
        &self,
        mountpoint: &Path,
        id_of: impl FnOnce(&Path) -> Option<MountId>,
    ) -> Option<(PathBuf, T)> {
        let mut mounts = self.mounts.lock().ok()?;
        if let Some(m) = mounts.remove(mountpoint) {
            return Some((mountpoint.to_path_buf(), m));
        }
        let id = id_of(mountpoint)?;
        let key = mounts
            .iter()
            .find(|(_, m)| m.id() == Some(&id))
            .map(|(k, _)| k.clone())?;
        mounts.remove(&key).map(|m| (key, m))
    }

    /// Whether a mount uses the state directory `state` (yes when the
    /// table is unreadable: state is deleted only when surely unused).
    pub fn uses_state(&self, state: &Path) -> bool {
        self.mounts
            .lock()
            .map_or(true, |m| m.values().any(|m| m.state() == state))
    }

    /// The state directories of every mount.
    pub fn states(&self) -> Vec<PathBuf> {
        self.mounts.lock().map_or_else(
            |_| Vec::new(),
            |m| m.values().map(|m| m.state().to_path_buf()).collect(),
        )
    }

    /// What `f` makes of the mount at `mountpoint`.
    fn with<R>(&self, mountpoint: &Path, f: impl FnOnce(&T) -> R) -> Option<R> {
        self.mounts.lock().ok()?.get(mountpoint).map(f)
    }
}

impl MountTable<Mounted> {
    /// The layer mounted at `mountpoint`.
    pub fn layer_at(&self, mountpoint: &Path) -> Option<Arc<LayerReader>> {
        self.with(mountpoint, |m| m.layer.clone())
    }

    /// The blob of the layer mounted at `mountpoint`.
    pub fn blob_at(&self, mountpoint: &Path) -> Option<Arc<RegistryBlob>> {
        self.with(mountpoint, |m| m.blob.clone())
    }

    /// Counters of every mounted layer.
    pub fn stats(&self) -> Vec<MountedStats> {
        self.mounts.lock().map_or_else(
            |_| Vec::new(),
            |m| m.iter().map(|(path, m)| m.stats(path)).collect(),
        )
    }
}

/// Something that can be unmounted, perhaps only after a few tries.
pub trait Unmount: Send + 'static {
    /// One attempt at unmounting what is mounted at `at`.
    fn try_unmount(&mut self, at: &Path) -> Result<(), String>;
}

impl Unmount for Mounted {
    fn try_unmount(&mut self, at: &Path) -> Result<(), String> {
        // Where the mount is now: the handle's own path may be stale.
        self.handle.unmount_at(at).map_err(|e| e.to_string())
    }
}

/// How long a busy mount is retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnmountRetry {
    /// Attempts in all.
    pub attempts: u32,
    /// Wait before the second attempt; each later wait doubles it.
    pub first_delay: Duration,
}

impl Default for UnmountRetry {
    fn default() -> Self {
        // 20 ms doubling over 7 attempts: about 1.3 s in all.
        UnmountRetry {
            attempts: 7,
            first_delay: Duration::from_millis(20),
        }
    }
}

/// Why an unmount failed.
#[derive(Debug, thiserror::Error)]
pub enum UnmountError {
    /// Still busy after every attempt.
    #[error("still busy after {attempts} attempts: {last}")]
    Busy {
        /// Attempts made.
        attempts: u32,
        /// The last attempt's error.
        last: String,
    },
    /// The blocking task of an attempt failed (the mount went with it).
    #[error("unmount task: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// A failed unmount, with the target back when it survived.
#[derive(Debug)]
pub struct UnmountFailure<U> {
    /// The target, to put back in the table.
    pub target: Option<U>,
    /// What went wrong.
    pub error: UnmountError,
}

/// Unmounts `target` at `at`, retrying while it is busy as `retry` says;
/// attempts run on blocking threads (an unmount can wait on the kernel).
pub async fn unmount_with_retry<U: Unmount>(
    mut target: U,
    at: &Path,
    retry: UnmountRetry,
) -> Result<U, UnmountFailure<U>> {
    let mut delay = retry.first_delay;
    let mut last = String::new();
    for attempt in 0..retry.attempts {
        if attempt > 0 {
            tokio::time::sleep(delay).await;
            delay *= 2;
        }
        let path = at.to_path_buf();
        let joined = tokio::task::spawn_blocking(move || {
            let r = target.try_unmount(&path);
            (r, target)
        })
        .await;
        let (result, back) = joined.map_err(|e| UnmountFailure {
            target: None,
            error: e.into(),
        })?;
        target = back;
        match result {
            Ok(()) => return Ok(target),
            Err(e) => {
                tracing::debug!(error = %e, "unmount busy; retrying");
                last = e;
            }
        }
    }
    Err(UnmountFailure {
        target: Some(target),
        error: UnmountError::Busy {
            attempts: retry.attempts,
            last,
        },
    })
}

#[cfg(test)]
#[path = "mounts_tests.rs"]
mod tests;
