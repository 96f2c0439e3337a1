//! One read-only FUSE mount serving every layer (fuser, pure-Rust mount, no
//! fusermount), so the daemon's threads do not grow with its layers.
//!
//! [`SharedSession::mount`] mounts the session at a directory; each layer
//! attached to it ([`SharedSession::attach`]) is a directory of that mount,
//! `<dir>/<slot>`, bind-mounted at the layer's mountpoint and returned as a
//! [`LayerMount`]. The session is served by a fixed number of FUSE worker
//! threads, and cache-missing reads run on the given tokio runtime.
//! Dropping a [`LayerMount`] unmounts its bind mount and retires its slot;
//! [`SharedSession::hand_over`] instead leaves the session and its bind
//! mounts to a successor process, which goes on with
//! [`SharedSession::resume`] (see [`handover`]).
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
mod shared;
mod slots;
pub mod stats;

mod session;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub use self::access_log::AccessLog;
pub use self::fs::{FsError, errno};
pub use self::handover::{HandoverState, InitParams};
pub use self::overlay_view::{OpaqueXattr, OverlayView};
pub use self::session::{LayerMount, SharedSession};
pub use self::slots::Slot;
pub use self::stats::FuseStats;
use crate::cache::FileStore;

/// Options of a layer's mount (and, for [`SharedSession::mount`], of the
/// session: `threads`, `allow_other`, `read_ahead_kb`, whether
/// `passthrough` is offered, and `runtime`).
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
    /// FUSE worker threads of the session, serving every layer (fuser adds
    /// one that waits for them). Four: see the daemon's `[fuse] threads`.
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
            threads: 4,
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

/// Errors of mounting and unmounting.
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
