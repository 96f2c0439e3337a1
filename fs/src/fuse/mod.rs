//! One read-only FUSE mount per layer (fuser, pure-Rust mount, no fusermount).
//!
//! [`mount`] mounts a [`LayerReader`] at a mountpoint and returns a
//! [`MountHandle`]; the filesystem is served by several FUSE worker threads
//! (each with its own cloned `/dev/fuse` fd) and cache-missing reads run on
//! the given tokio runtime. Dropping the handle unmounts.

pub mod access_log;
pub mod fs;
pub mod overlay_view;
pub mod passthrough;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use fuser::{BackgroundSession, Config, MountOption, SessionACL};

pub use self::access_log::AccessLog;
pub use self::fs::{FsError, FuseStats, LayerFs, READ_LATENCY_BUCKETS, errno};
pub use self::overlay_view::{OpaqueXattr, OverlayView};
use crate::cache::FileStore;
use crate::layer::LayerReader;

/// Options of one mount.
#[derive(Debug, Clone)]
pub struct MountOptions {
    /// How long the kernel may cache a name lookup. Layers are immutable,
    /// so this only bounds kernel memory; an hour makes repeat lookups free.
    pub entry_ttl: Duration,
    /// How long the kernel may cache attributes (same reasoning).
    pub attr_ttl: Duration,
    /// A read not answered within this time fails with EIO instead of
    /// hanging the application. 30 s: long enough for a slow registry to
    /// return a 4 MiB chunk, short enough that a dead one is noticed.
    pub read_timeout: Duration,
    /// Chunks fetched ahead of a read that missed the cache (sequential
    /// readers then overlap fetch and decode with their own reads).
    pub read_ahead_chunks: usize,
    /// Kernel read-ahead of the mount in KiB. FUSE starts at the block
    /// layer's 128 KiB default, which also caps buffered read requests at
    /// 128 KiB; raising it lets sequential reads arrive as 1 MiB requests.
    pub read_ahead_kb: u32,
    /// FUSE worker threads of this mount.
    pub threads: usize,
    /// Which xattr marks opaque directories (user when overlay uses `userxattr`).
    pub opaque_xattr: OpaqueXattr,
    /// Let every user (containers) access the mount; permission bits are
    /// still enforced by the kernel (`default_permissions`).
    pub allow_other: bool,
    /// Runtime for cache-missing reads; defaults to the caller's current runtime.
    pub runtime: Option<tokio::runtime::Handle>,
    /// Where fully cached files are assembled for kernel passthrough; `None`
    /// disables passthrough. Needs a disk chunk cache and kernel support
    /// (detected at mount; without it reads simply stay in userspace).
    pub passthrough: Option<Arc<FileStore>>,
    /// Smaller files are never materialized: the page cache already serves
    /// them warm, and a second copy of every small file would double the
    /// disk use for little gain.
    pub passthrough_min_bytes: u64,
    /// Records the files opened (for `rstargz mount --record`).
    pub access_log: Option<AccessLog>,
}

impl Default for MountOptions {
    fn default() -> Self {
        MountOptions {
            entry_ttl: Duration::from_secs(3600),
            attr_ttl: Duration::from_secs(3600),
            read_timeout: Duration::from_secs(30),
            read_ahead_chunks: 2,
            read_ahead_kb: 1024,
            threads: 4,
            opaque_xattr: OpaqueXattr::Trusted,
            allow_other: true,
            runtime: None,
            passthrough: None,
            passthrough_min_bytes: 1 << 20,
            access_log: None,
        }
    }
}

/// Errors of [`mount`].
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    /// No runtime was given and the caller is not inside one.
    #[error("no tokio runtime for the mount at {0}")]
    NoRuntime(PathBuf),
    /// The kernel mount or the FUSE handshake failed.
    #[error("mounting {path}: {source}")]
    Mount {
        /// Mountpoint.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// Unmounting failed (for example the mount is busy).
    #[error("unmounting {path}: {source}")]
    Unmount {
        /// Mountpoint.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
}

/// A live mount; unmounts on [`MountHandle::unmount`] or drop.
#[derive(Debug)]
pub struct MountHandle {
    mountpoint: PathBuf,
    session: Option<BackgroundSession>,
    stats: Arc<FuseStats>,
}

impl MountHandle {
    /// The mountpoint.
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// Per-operation counters of this mount.
    pub fn stats(&self) -> &Arc<FuseStats> {
        &self.stats
    }

    /// Unmounts and waits for the worker threads to exit. A busy mount
    /// stays mounted and served, and the call can be retried; after
    /// success further calls do nothing.
    pub fn unmount(&mut self) -> Result<(), MountError> {
        let Some(session) = self.session.take() else {
            return Ok(());
        };
        let err = |source| MountError::Unmount {
            path: self.mountpoint.clone(),
            source,
        };
        // Unmount here rather than in fuser, which gives the session up
        // even when the kernel refuses (EBUSY).
        match nix::mount::umount(&self.mountpoint) {
            Ok(()) | Err(nix::errno::Errno::EINVAL | nix::errno::Errno::ENOENT) => {}
            Err(e) => {
                self.session = Some(session);
                return Err(err(e.into()));
            }
        }
        // fuser's own unmount would now fail (its "still mounted" probe reads
        // the aborted connection as mounted); its leftover attempt on drop
        // only logs. Joining waits for the workers, which stop on ENODEV.
        session.join().map_err(err)
    }
}

impl Drop for MountHandle {
    fn drop(&mut self) {
        if let Err(e) = self.unmount() {
            tracing::warn!(error = %e, "unmount on drop failed");
        }
    }
}

/// Mounts `layer` read-only at `mountpoint`. When this returns, the FUSE
/// handshake is done and the mount serves requests.
pub fn mount(
    mountpoint: &Path,
    layer: Arc<LayerReader>,
    opts: MountOptions,
) -> Result<MountHandle, MountError> {
    let runtime = match opts.runtime.clone() {
        Some(r) => r,
        None => tokio::runtime::Handle::try_current()
            .map_err(|_| MountError::NoRuntime(mountpoint.to_owned()))?,
    };
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::FSName("rstargz".into()),
        MountOption::Subtype("rstargz".into()),
        MountOption::RO,
        MountOption::NoDev,
        MountOption::DefaultPermissions,
    ];
    config.acl = if opts.allow_other {
        SessionACL::All
    } else {
        SessionACL::Owner
    };
    config.n_threads = Some(opts.threads.max(1));
    config.clone_fd = true;
    let stats = Arc::new(FuseStats::default());
    let read_ahead_kb = opts.read_ahead_kb;
    let fs = LayerFs::new(layer, opts, runtime, stats.clone());
    let err = |source| MountError::Mount {
        path: mountpoint.to_owned(),
        source,
    };
    let session = fuser::Session::new(fs, mountpoint, &config)
        .map_err(err)?
        .spawn()
        .map_err(err)?;
    // Only now: stat on the mountpoint needs the session to be serving.
    if let Err(e) = set_read_ahead(mountpoint, read_ahead_kb) {
        tracing::warn!(mountpoint = %mountpoint.display(), error = %e, "cannot raise read-ahead");
    }
    Ok(MountHandle {
        mountpoint: mountpoint.to_owned(),
        session: Some(session),
        stats,
    })
}

/// Sets the read-ahead of the mount's backing device info
/// (`/sys/class/bdi/<major>:<minor>/read_ahead_kb`).
fn set_read_ahead(mountpoint: &Path, kb: u32) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let dev = std::fs::metadata(mountpoint)?.dev();
    let path = format!(
        "/sys/class/bdi/{}:{}/read_ahead_kb",
        libc::major(dev),
        libc::minor(dev)
    );
    std::fs::write(path, kb.to_string())
}
