//! One read-only FUSE mount per layer (fuser, pure-Rust mount, no fusermount).
//!
//! [`mount`] mounts a [`LayerReader`] at a mountpoint and returns a
//! [`MountHandle`]; the filesystem is served by several FUSE worker threads
//! and cache-missing reads run on the given tokio runtime. Dropping the
//! handle unmounts; [`MountHandle::hand_over`] instead leaves the mount to a
//! successor process, which goes on with [`resume`] (see [`handover`]).
//!
//! All workers read the one `/dev/fuse` file the mount was made with (no
//! cloned fds): a live restart keeps that file open elsewhere, and a request
//! a dead server had read stays queued on it until resent, whereas closing a
//! clone fails its requests.

pub mod access;
pub mod access_log;
pub mod freeze_gate;
pub mod fs;
pub mod handover;
pub mod mountinfo;
pub mod overlay_view;
pub mod passthrough;
pub mod stats;

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use fuser::{BackgroundSession, Config, MountOption, SessionACL};

pub use self::access_log::AccessLog;
pub use self::fs::{FsError, LayerFs, errno};
use self::handover::Live;
pub use self::handover::{HandoverState, InitParams};
pub use self::overlay_view::{OpaqueXattr, OverlayView};
pub use self::stats::FuseStats;
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
    /// Chunks fetched ahead of a sequential read that missed the cache
    /// (the reader then overlaps fetch and decode with its own reads);
    /// random reads fetch only what they need.
    pub read_ahead_chunks: usize,
    /// Kernel read-ahead of the mount in KiB. FUSE starts at the block
    /// layer's 128 KiB default, which also caps buffered read requests at
    /// 128 KiB; raising it lets sequential reads arrive as 1 MiB requests.
    pub read_ahead_kb: u32,
    /// FUSE worker threads of this mount (fuser adds one that waits for
    /// them). Two: see the daemon's `[fuse] threads_per_mount`.
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
    /// Logs a debug line at the first open of each file, naming the layer
    /// with this string (the Go reference's `log_file_access`); `None`
    /// logs nothing.
    pub log_file_access: Option<Arc<str>>,
}

impl Default for MountOptions {
    fn default() -> Self {
        MountOptions {
            entry_ttl: Duration::from_secs(3600),
            attr_ttl: Duration::from_secs(3600),
            read_timeout: Duration::from_secs(30),
            read_ahead_chunks: 2,
            read_ahead_kb: 1024,
            threads: 2,
            opaque_xattr: OpaqueXattr::Trusted,
            allow_other: true,
            runtime: None,
            passthrough: None,
            passthrough_min_bytes: 1 << 20,
            access_log: None,
            log_file_access: None,
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
    dev: Option<u64>,
    live: Arc<Live>,
    /// The connection's `/dev/fuse` file (what a successor needs).
    conn: OwnedFd,
    /// Whether the kernel can resend unanswered requests (live restart).
    resend: bool,
}

impl MountHandle {
    /// The mountpoint.
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// Device number of the mount (from the mount table, never by a `stat`
    /// on it: see [`mountinfo`]); finds it after its directory moved.
    pub fn dev(&self) -> Option<u64> {
        self.dev
    }

    /// The FUSE connection, to keep it open across a restart.
    pub fn connection(&self) -> BorrowedFd<'_> {
        self.conn.as_fd()
    }

    /// Whether this mount can be handed over: the kernel resends requests
    /// left unanswered (`FUSE_NOTIFY_RESEND`, Linux 6.9).
    pub fn can_hand_over(&self) -> bool {
        self.resend
    }

    /// What a successor needs should this server die without handing the
    /// mount over; `None` before the FUSE handshake.
    pub fn crash_state(&self) -> Option<HandoverState> {
        self.live.crash_state()
    }

    /// Leaves the mount mounted for a successor: stops changing the open
    /// table (waiting up to `grace` for handlers inside) and returns what the
    /// successor needs. Requests arriving from now on stay unanswered until
    /// the successor resends them. The workers keep running until the
    /// process exits. `None` (and the mount is unmounted) before the FUSE
    /// handshake.
    pub fn hand_over(mut self, grace: Duration) -> Option<HandoverState> {
        let state = self.live.export(grace)?;
        // Never unmount: leak the session (its threads die with the process).
        std::mem::forget(self.session.take());
        Some(state)
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

/// The runtime that serves reads: the one in `opts`, else the caller's.
fn session_runtime(
    mountpoint: &Path,
    opts: &MountOptions,
) -> Result<tokio::runtime::Handle, MountError> {
    match opts.runtime.clone() {
        Some(r) => Ok(r),
        None => tokio::runtime::Handle::try_current()
            .map_err(|_| MountError::NoRuntime(mountpoint.to_owned())),
    }
}

/// Session settings shared by a fresh mount and a taken-over one. All
/// workers share one fd (`clone_fd` off): the kernel fails the pending
/// requests of a cloned fd when it closes, which a handover must not do.
fn session_config(opts: &MountOptions) -> Config {
    let mut config = Config::default();
    config.acl = if opts.allow_other {
        SessionACL::All
    } else {
        SessionACL::Owner
    };
    config.n_threads = Some(opts.threads.max(1));
    config.clone_fd = false;
    config
}

/// Mounts `layer` read-only at `mountpoint`. When this returns, the FUSE
/// handshake is done and the mount serves requests.
pub fn mount(
    mountpoint: &Path,
    layer: Arc<LayerReader>,
    opts: MountOptions,
) -> Result<MountHandle, MountError> {
    let runtime = session_runtime(mountpoint, &opts)?;
    let mut config = session_config(&opts);
    config.mount_options = vec![
        MountOption::FSName("rstargz".into()),
        MountOption::Subtype("rstargz".into()),
        MountOption::RO,
        MountOption::NoDev,
        // Setuid binaries of a layer still work in containers: the overlay
        // mount on top, not this lower layer, decides (tests/it/security.rs).
        MountOption::NoSuid,
        MountOption::DefaultPermissions,
    ];
    let stats = Arc::new(FuseStats::default());
    let read_ahead_kb = opts.read_ahead_kb;
    let live = Arc::new(Live::new());
    let fs = LayerFs::with_live(layer, opts, runtime, stats.clone(), live.clone());
    let err = |source| MountError::Mount {
        path: mountpoint.to_owned(),
        source,
    };
    let session = fuser::Session::new(fs, mountpoint, &config).map_err(err)?;
    let conn = handover::dup(&session).map_err(err)?;
    // Nothing is in flight yet, so resending is a harmless probe.
    let resend = handover::notify_resend(conn.as_fd()).is_ok();
    let session = session.spawn().map_err(err)?;
    let dev = mountinfo::device_of(mountpoint);
    match dev {
        Some(dev) => {
            if let Err(e) = set_read_ahead(dev, read_ahead_kb) {
                tracing::warn!(mountpoint = %mountpoint.display(), error = %e, "cannot raise read-ahead");
            }
        }
        None => {
            tracing::warn!(mountpoint = %mountpoint.display(), "new mount not in the mount table")
        }
    }
    Ok(MountHandle {
        mountpoint: mountpoint.to_owned(),
        session: Some(session),
        stats,
        dev,
        live,
        conn,
        resend,
    })
}

/// Goes on serving the mount at `mountpoint` whose connection `conn` a
/// previous server handed over (or left behind when it died) with `state`.
/// The kernel sees no new mount and no new handshake; requests the previous
/// server left unanswered are answered here.
pub fn resume(
    mountpoint: &Path,
    layer: Arc<LayerReader>,
    opts: MountOptions,
    conn: OwnedFd,
    state: &HandoverState,
) -> Result<MountHandle, MountError> {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};
    let err = |source| MountError::Mount {
        path: mountpoint.to_owned(),
        source,
    };
    let runtime = session_runtime(mountpoint, &opts)?;
    let config = session_config(&opts);
    let stats = Arc::new(FuseStats::default());
    let live = Arc::new(Live::resumed(state, handover::dup(&conn).map_err(err)?));
    let fs = LayerFs::with_live(layer, opts, runtime, stats.clone(), live.clone());
    // The handshake runs against a socket holding the kernel's INIT of
    // this connection, then the session's fd is pointed at the connection.
    let (ours, theirs) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(|e| err(e.into()))?;
    nix::unistd::write(&ours, &state.init_request()).map_err(|e| err(e.into()))?;
    let session = fuser::Session::from_fd(fs, theirs, config.acl, config).map_err(err)?;
    let mut reply = [0u8; 256];
    let n = nix::unistd::read(&ours, &mut reply).map_err(|e| err(e.into()))?;
    handover::check_init_reply(&reply[..n]).map_err(err)?;
    handover::redirect(&conn, session.as_fd()).map_err(err)?;
    // Before the workers start, so only the previous server's requests
    // (not ours in flight) are queued again.
    handover::notify_resend(conn.as_fd()).map_err(err)?;
    let session = session.spawn().map_err(err)?;
    Ok(MountHandle {
        mountpoint: mountpoint.to_owned(),
        session: Some(session),
        stats,
        // The mount table, not a stat: a stat on our own mount would wait
        // for the resent requests this process has yet to answer.
        dev: mountinfo::device_of(mountpoint),
        live,
        conn,
        resend: true,
    })
}

/// Sets the read-ahead of the backing device info of the mount with device
/// `dev` (`/sys/class/bdi/<major>:<minor>/read_ahead_kb`).
fn set_read_ahead(dev: u64, kb: u32) -> std::io::Result<()> {
    let path = format!(
        "/sys/class/bdi/{}:{}/read_ahead_kb",
        libc::major(dev),
        libc::minor(dev)
    );
    std::fs::write(path, kb.to_string())
}
