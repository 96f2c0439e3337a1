//! [`SharedSession`]: the daemon's one FUSE connection, and [`LayerMount`]:
//! a layer of it bind-mounted where the layer is wanted.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fuser::{BackgroundSession, Config, INodeNo, MountOption, Notifier, SessionACL};
use nix::errno::Errno;

use super::fs::LayerFs;
use super::handover::{self, HandoverState, Live};
use super::shared::SharedFs;
use super::slots::{Slot, Slots, base};
use super::stats::FuseStats;
use super::{MountError, MountOptions, mountinfo, set_read_ahead};
use crate::layer::LayerReader;

/// The FUSE mount serving every layer of a process; see the module
/// [`super`] for the layout. Unmounts when the last reference goes (unless
/// handed over).
pub struct SharedSession {
    dir: PathBuf,
    slots: Arc<Slots>,
    live: Arc<Live>,
    session: Mutex<Option<BackgroundSession>>,
    notifier: Notifier,
    /// The connection's `/dev/fuse` file (what a successor needs).
    conn: OwnedFd,
    /// Whether the kernel can resend unanswered requests (live restart).
    resend: bool,
    /// Device number of the mount, from the mount table.
    dev: Option<u64>,
    runtime: tokio::runtime::Handle,
    /// Set once a layer was detached while busy: its mount may keep the
    /// connection alive after the session's own unmount.
    pinned: AtomicBool,
}

impl std::fmt::Debug for SharedSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedSession")
            .field("dir", &self.dir)
            .field("dev", &self.dev)
            .finish_non_exhaustive()
    }
}

/// The runtime that serves reads: the one in `opts`, else the caller's.
fn session_runtime(at: &Path, opts: &MountOptions) -> Result<tokio::runtime::Handle, MountError> {
    match opts.runtime.clone() {
        Some(r) => Ok(r),
        None => {
            tokio::runtime::Handle::try_current().map_err(|_| MountError::NoRuntime(at.to_owned()))
        }
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

/// What a fresh and a taken-over session are built from.
struct Parts {
    slots: Arc<Slots>,
    live: Arc<Live>,
    runtime: tokio::runtime::Handle,
}

impl Parts {
    /// The filesystem fuser serves over these parts.
    fn fs(&self, opts: &MountOptions) -> SharedFs {
        SharedFs {
            slots: self.slots.clone(),
            live: self.live.clone(),
            passthrough: opts.passthrough.is_some(),
        }
    }
}

impl SharedSession {
    /// The session serving over `parts` once fuser's workers run.
    fn serving(
        dir: &Path,
        parts: Parts,
        session: BackgroundSession,
        conn: OwnedFd,
        resend: bool,
        dev: Option<u64>,
    ) -> Arc<SharedSession> {
        Arc::new(SharedSession {
            dir: dir.to_owned(),
            slots: parts.slots,
            live: parts.live,
            notifier: session.notifier(),
            session: Mutex::new(Some(session)),
            conn,
            resend,
            dev,
            runtime: parts.runtime,
            pinned: AtomicBool::new(false),
        })
    }

    /// Mounts an empty session at `dir`. When this returns, the FUSE
    /// handshake is done and the mount serves requests.
    pub fn mount(dir: &Path, opts: &MountOptions) -> Result<Arc<SharedSession>, MountError> {
        let runtime = session_runtime(dir, opts)?;
        let mut config = session_config(opts);
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
        let err = |source| MountError::Mount {
            path: dir.to_owned(),
            source,
        };
        let parts = Parts {
            slots: Arc::new(Slots::new(1, &[])),
            live: Arc::new(Live::new()),
            runtime,
        };
        let session = fuser::Session::new(parts.fs(opts), dir, &config).map_err(err)?;
        let conn = handover::dup(&session).map_err(err)?;
        // Nothing is in flight yet, so resending is a harmless probe.
        let resend = handover::notify_resend(conn.as_fd()).is_ok();
        let session = session.spawn().map_err(err)?;
        let dev = mountinfo::device_of(dir);
        match dev {
            Some(dev) => {
                if let Err(e) = set_read_ahead(dev, opts.read_ahead_kb) {
                    tracing::warn!(dir = %dir.display(), error = %e, "cannot raise read-ahead");
                }
            }
            None => tracing::warn!(dir = %dir.display(), "new mount not in the mount table"),
        }
        Ok(Self::serving(dir, parts, session, conn, resend, dev))
    }

    /// Goes on serving the session at `dir` whose connection `conn` a
    /// previous server handed over (or left behind when it died) with
    /// `state`. The kernel sees no new mount and no new handshake. Requests
    /// for the `pending` slots (the layers the previous server had) wait
    /// until their layer is attached again ([`Self::adopt`]) or given up
    /// ([`Self::abandon`]).
    pub fn resume(
        dir: &Path,
        opts: &MountOptions,
        conn: OwnedFd,
        state: &HandoverState,
        pending: &[Slot],
    ) -> Result<Arc<SharedSession>, MountError> {
        use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};
        let err = |source| MountError::Mount {
            path: dir.to_owned(),
            source,
        };
        let runtime = session_runtime(dir, opts)?;
        let config = session_config(opts);
        let parts = Parts {
            slots: Arc::new(Slots::new(state.next_slot, pending)),
            live: Arc::new(Live::resumed(state, handover::dup(&conn).map_err(err)?)),
            runtime,
        };
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
        let acl = config.acl;
        let session = fuser::Session::from_fd(parts.fs(opts), theirs, acl, config).map_err(err)?;
        let mut reply = [0u8; 256];
        let n = nix::unistd::read(&ours, &mut reply).map_err(|e| err(e.into()))?;
        handover::check_init_reply(&reply[..n]).map_err(err)?;
        handover::redirect(&conn, session.as_fd()).map_err(err)?;
        // Before the workers start, so only the previous server's requests
        // (not ours in flight) are queued again.
        handover::notify_resend(conn.as_fd()).map_err(err)?;
        let session = session.spawn().map_err(err)?;
        // The mount table, not a stat: a stat on our own mount would wait
        // for the resent requests this process has yet to answer.
        let dev = mountinfo::device_of(dir);
        Ok(Self::serving(dir, parts, session, conn, true, dev))
    }

    /// Where the session is mounted.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The directory of `slot`'s layer inside the session.
    pub fn slot_dir(&self, slot: Slot) -> PathBuf {
        self.dir.join(slot.to_string())
    }

    /// Device number of the mount (shared by every layer's bind mount).
    pub fn dev(&self) -> Option<u64> {
        self.dev
    }

    /// The FUSE connection, to keep it open across a restart.
    pub fn connection(&self) -> BorrowedFd<'_> {
        self.conn.as_fd()
    }

    /// Whether the session can be handed over: the kernel resends requests
    /// left unanswered (`FUSE_NOTIFY_RESEND`, Linux 6.9).
    pub fn can_hand_over(&self) -> bool {
        self.resend
    }

    /// What a successor needs should this server die without handing the
    /// session over; `None` before the FUSE handshake.
    pub fn crash_state(&self) -> Option<HandoverState> {
        let mut state = self.live.crash_state()?;
        state.next_slot = self.slots.next_free();
        Some(state)
    }

    /// The slots left by a previous server whose layers are not attached yet.
    pub fn pending(&self) -> Vec<Slot> {
        self.slots.pending()
    }

    /// Layers attached now.
    pub fn layers(&self) -> usize {
        self.slots.ready().len()
    }

    fn layer_fs(&self, layer: Arc<LayerReader>, opts: MountOptions, slot: Slot) -> Arc<LayerFs> {
        let runtime = opts.runtime.clone().unwrap_or_else(|| self.runtime.clone());
        let stats = Arc::new(FuseStats::default());
        Arc::new(LayerFs::new(
            layer,
            opts,
            runtime,
            stats,
            self.live.clone(),
            base(slot),
        ))
    }

    /// A slot never handed out before, for [`Self::attach`] (its number
    /// is in [`Self::crash_state`] from now on).
    pub fn reserve(&self) -> Slot {
        self.slots.allocate()
    }

    /// Serves `layer` in `slot` (from [`Self::reserve`]) and bind-mounts
    /// its directory at `mountpoint`.
    pub fn attach(
        self: &Arc<Self>,
        slot: Slot,
        mountpoint: &Path,
        layer: Arc<LayerReader>,
        opts: MountOptions,
    ) -> Result<LayerMount, MountError> {
        let fs = self.layer_fs(layer, opts, slot);
        let stats = fs.stats().clone();
        self.slots.attach(slot, fs);
        let bound = nix::mount::mount(
            Some(&self.slot_dir(slot)),
            mountpoint,
            None::<&str>,
            nix::mount::MsFlags::MS_BIND,
            None::<&str>,
        );
        if let Err(e) = bound {
            self.retire(slot);
            return Err(MountError::Mount {
                path: mountpoint.to_owned(),
                source: e.into(),
            });
        }
        Ok(LayerMount {
            session: self.clone(),
            slot,
            mountpoint: mountpoint.to_owned(),
            stats,
            mounted: true,
        })
    }

    /// Serves `layer` again in `slot`, which a previous server left
    /// bind-mounted at `mountpoint`; the requests that waited for it are
    /// answered now.
    pub fn adopt(
        self: &Arc<Self>,
        slot: Slot,
        mountpoint: &Path,
        layer: Arc<LayerReader>,
        opts: MountOptions,
    ) -> LayerMount {
        let fs = self.layer_fs(layer, opts, slot);
        let stats = fs.stats().clone();
        self.slots.attach(slot, fs);
        LayerMount {
            session: self.clone(),
            slot,
            mountpoint: mountpoint.to_owned(),
            stats,
            mounted: true,
        }
    }

    /// Gives up pending slots: their waiting requests fail with ENOENT.
    pub fn abandon(&self, slots: &[Slot]) {
        // Every waiting request answered first: a waiting lookup in the
        // session root holds the root's lock, which dropping a cached entry
        // needs.
        for slot in slots {
            self.slots.retire(*slot);
        }
        for slot in slots {
            self.forget_cached(*slot);
        }
    }

    /// Empties `slot` and lets the kernel drop what it cached of it.
    fn retire(&self, slot: Slot) {
        self.slots.retire(slot);
        self.forget_cached(slot);
    }

    /// Drops `slot`'s dentries and inodes (and their page cache) from the
    /// kernel now rather than under memory pressure. Never on a session
    /// thread, and not while a slot is pending: the kernel takes the
    /// root's lock for it, which a lookup waiting in a pending slot holds.
    fn forget_cached(&self, slot: Slot) {
        if !self.slots.pending().is_empty() {
            return;
        }
        let name = slot.to_string();
        match self.notifier.inval_entry(INodeNo(1), name.as_ref()) {
            Ok(()) => {}
            // Not cached (never looked up, or already dropped).
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
            Err(e) => tracing::debug!(slot, error = %e, "cannot drop the layer's kernel cache"),
        }
    }

    /// Leaves the session mounted for a successor: stops changing the open
    /// table (waiting up to `grace` for handlers inside) and returns what the
    /// successor needs. Requests arriving from now on stay unanswered until
    /// the successor resends them. The workers keep running until the
    /// process exits. `None` (the session is then left as it is) before
    /// the FUSE handshake.
    pub fn hand_over(&self, grace: Duration) -> Option<HandoverState> {
        let mut state = self.live.export(grace)?;
        state.next_slot = self.slots.next_free();
        // Never unmount: leak the session (its threads die with the process).
        std::mem::forget(
            self.session
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take(),
        );
        Some(state)
    }

    /// Unmounts the session and waits for its worker threads. A session
    /// still busy (a layer's bind mount left, or a file open) has its
    /// connection aborted (readers get ENOTCONN instead of waiting for a
    /// server that is going away) and is detached. After success further
    /// calls do nothing.
    pub fn unmount(&self) -> Result<(), MountError> {
        let Some(session) = self
            .session
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        else {
            return Ok(());
        };
        let err = |source| MountError::Unmount {
            path: self.dir.clone(),
            source,
        };
        // Unmount here rather than in fuser, which gives the session up
        // even when the kernel refuses (EBUSY).
        match nix::mount::umount(&self.dir) {
            Ok(()) | Err(Errno::EINVAL | Errno::ENOENT) => {}
            Err(e) => {
                tracing::warn!(dir = %self.dir.display(), error = %e, "session busy at unmount; aborting its connection");
                self.abort();
            }
        }
        // With the last bind mount gone the superblock goes and the workers
        // stop on ENODEV; a detached mount still in use could keep them: abort.
        let layers_left = !self.slots.ready().is_empty() || !self.slots.pending().is_empty();
        if layers_left || self.pinned.load(Ordering::SeqCst) {
            self.abort();
        }
        session.join().map_err(err)
    }

    /// Aborts the connection and detaches the session's mount.
    fn abort(&self) {
        if let Some(dev) = self.dev
            && let Err(e) = mountinfo::abort_connection(dev)
        {
            tracing::warn!(dir = %self.dir.display(), error = %e, "cannot abort FUSE connection");
        }
        match nix::mount::umount2(&self.dir, nix::mount::MntFlags::MNT_DETACH) {
            Ok(()) | Err(Errno::EINVAL | Errno::ENOENT) => {}
            Err(e) => {
                tracing::warn!(dir = %self.dir.display(), error = %e, "cannot detach session")
            }
        }
    }
}

impl Drop for SharedSession {
    fn drop(&mut self) {
        if let Err(e) = self.unmount() {
            tracing::warn!(error = %e, "unmount of the FUSE session on drop failed");
        }
    }
}

/// A layer of a [`SharedSession`] bind-mounted at its mountpoint. Dropping
/// it unmounts the bind mount and retires the slot.
#[derive(Debug)]
pub struct LayerMount {
    session: Arc<SharedSession>,
    slot: Slot,
    mountpoint: PathBuf,
    stats: Arc<FuseStats>,
    mounted: bool,
}

impl LayerMount {
    /// The mountpoint.
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// The layer's slot in its session.
    pub fn slot(&self) -> Slot {
        self.slot
    }

    /// The session serving the layer.
    pub fn session(&self) -> &Arc<SharedSession> {
        &self.session
    }

    /// Per-operation counters of this layer.
    pub fn stats(&self) -> &Arc<FuseStats> {
        &self.stats
    }

    /// Unmounts the layer's bind mount, then retires its slot. A busy
    /// mount stays mounted and served, and the call can be retried; after
    /// success further calls do nothing.
    pub fn unmount(&mut self) -> Result<(), MountError> {
        let at = self.mountpoint.clone();
        self.unmount_at(&at)
    }

    /// [`Self::unmount`] of the bind mount where it is now (the directory
    /// holding it may have been renamed since the mount).
    pub fn unmount_at(&mut self, at: &Path) -> Result<(), MountError> {
        if !self.mounted {
            return Ok(());
        }
        match nix::mount::umount(at) {
            Ok(()) | Err(Errno::EINVAL | Errno::ENOENT) => {}
            Err(e) => {
                return Err(MountError::Unmount {
                    path: at.to_owned(),
                    source: e.into(),
                });
            }
        }
        self.mounted = false;
        self.session.retire(self.slot);
        Ok(())
    }

    /// Lazily detaches the bind mount at `at` (still busy) and retires the
    /// slot: what still reads through it gets ENOENT.
    pub fn detach_at(&mut self, at: &Path) {
        if !self.mounted {
            return;
        }
        match nix::mount::umount2(at, nix::mount::MntFlags::MNT_DETACH) {
            Ok(()) | Err(Errno::EINVAL | Errno::ENOENT) => {}
            Err(e) => tracing::warn!(mountpoint = %at.display(), error = %e, "cannot detach mount"),
        }
        self.mounted = false;
        self.session.pinned.store(true, Ordering::SeqCst);
        self.session.retire(self.slot);
    }

    /// Leaves the bind mount and the slot as they are, for a successor
    /// (see [`SharedSession::hand_over`]).
    pub fn hand_over(mut self) {
        self.mounted = false;
    }
}

impl Drop for LayerMount {
    fn drop(&mut self) {
        if let Err(e) = self.unmount() {
            tracing::warn!(error = %e, "unmount on drop failed");
        }
    }
}
