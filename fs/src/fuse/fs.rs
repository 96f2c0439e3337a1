//! One layer of a shared session ([`super::shared::SharedFs`] routes each
//! request here by its node id): a thin, read-only translation of kernel
//! requests onto the [`LayerReader`] and the [`OverlayView`].
//!
//! Contract:
//! - Node ids are the index's inode numbers (stable across restarts) offset
//!   by the layer's slot (`super::slots`); the index root is the layer's
//!   directory in the session root.
//! - Metadata requests are answered from memory on the calling FUSE thread.
//! - A read whose chunks are all in memory is answered inline; any other read
//!   moves its reply into a tokio task, so a FUSE worker thread never waits
//!   on disk or network. That task answers EIO once the read timeout passes.
//! - Every failure becomes an errno in [`errno`], nowhere else.

use std::ffi::OsStr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, UNIX_EPOCH};

use fuser::{
    AccessFlags, Errno, FileAttr, FileHandle, FileType, FopenFlags, Generation, INodeNo,
    OpenAccMode, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty,
    ReplyEntry, ReplyOpen, ReplyXattr,
};

use super::MountOptions;
use super::access::AccessPattern;
use super::freeze_gate::Held;
use super::handover::Live;
use super::overlay_view::OverlayView;
use super::passthrough::OpenMode;
use super::stats::FuseStats;
use crate::cache::FileStore;
use crate::estargz::{Index, Ino, NodeKind};
use crate::layer::{LayerError, LayerReader};
use crate::purpose::Purpose;

pub(crate) const BLOCK_SIZE: u32 = 4096;

/// Why a request failed; mapped to an errno by [`errno`].
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    /// No such inode or name.
    #[error("not found")]
    NotFound,
    /// The inode is not a directory.
    #[error("not a directory")]
    NotDir,
    /// The inode is a directory.
    #[error("is a directory")]
    IsDir,
    /// The inode is not a symlink.
    #[error("not a symlink")]
    NotSymlink,
    /// A write was attempted.
    #[error("read-only filesystem")]
    ReadOnly,
    /// No such xattr.
    #[error("no such xattr")]
    NoXattr,
    /// The caller's buffer is too small.
    #[error("buffer too small")]
    Range,
    /// The data path failed (source, corruption, decode).
    #[error(transparent)]
    Layer(#[from] LayerError),
    /// The read did not complete within the timeout.
    #[error("read timed out after {0:?}")]
    Timeout(Duration),
}

/// The single errno mapping of the filesystem.
pub fn errno(err: &FsError) -> Errno {
    match err {
        FsError::NotFound => Errno::ENOENT,
        FsError::NotDir => Errno::ENOTDIR,
        FsError::IsDir | FsError::Layer(LayerError::NotAFile(_)) => Errno::EISDIR,
        FsError::NotSymlink => Errno::EINVAL,
        FsError::ReadOnly => Errno::EROFS,
        FsError::NoXattr => Errno::NO_XATTR,
        FsError::Range => Errno::ERANGE,
        FsError::Layer(_) | FsError::Timeout(_) => Errno::EIO,
    }
}

/// The filesystem of one layer.
pub struct LayerFs {
    layer: Arc<LayerReader>,
    index: Arc<Index>,
    view: OverlayView,
    opts: MountOptions,
    runtime: tokio::runtime::Handle,
    stats: Arc<FuseStats>,
    total_blocks: u64,
    /// Open modes, passthrough switch and the freeze gate of a handover.
    live: Arc<Live>,
    /// Attributes sent with negative lookups (node id 0).
    negative: FileAttr,
    /// Which inodes are being read sequentially (read-ahead only for those).
    access: AccessPattern,
    /// Files already named in a "file accessed" line (`log_file_access`).
    logged_opens: std::sync::Mutex<std::collections::HashSet<Ino>>,
    /// Node id of the layer's inode 0 (its slot's base).
    base: u64,
}

impl LayerFs {
    /// Builds the filesystem of a layer whose node ids start at `base`,
    /// around its session's `live` state (computes the overlay view once).
    pub(crate) fn new(
        layer: Arc<LayerReader>,
        opts: MountOptions,
        runtime: tokio::runtime::Handle,
        stats: Arc<FuseStats>,
        live: Arc<Live>,
        base: u64,
    ) -> Self {
        let index = layer.index().clone();
        let view = OverlayView::new(&index, opts.opaque_xattr);
        let total_bytes: u64 = (1..=index.len() as Ino)
            .filter_map(|i| index.node(i))
            .filter(|n| n.kind() == NodeKind::Reg)
            .map(|n| n.size().div_ceil(u64::from(BLOCK_SIZE)) * u64::from(BLOCK_SIZE))
            .sum();
        LayerFs {
            layer,
            index,
            view,
            opts,
            runtime,
            stats,
            total_blocks: total_bytes / u64::from(BLOCK_SIZE),
            live,
            access: AccessPattern::default(),
            logged_opens: std::sync::Mutex::default(),
            base,
            negative: bare_attr(0, FileType::RegularFile, 0, 0),
        }
    }

    /// The passthrough store and the file's key, when passthrough may apply to `ino`.
    fn passthrough_key(&self, ino: Ino) -> Option<(&Arc<FileStore>, crate::estargz::Digest)> {
        if !self.live.passthrough_on.load(Ordering::Relaxed) {
            return None;
        }
        let store = self.opts.passthrough.as_ref()?;
        let node = self.index.node(ino)?;
        if node.kind() != NodeKind::Reg || node.size() < self.opts.passthrough_min_bytes.max(1) {
            return None;
        }
        Some((store, FileStore::file_key(&self.index.chunks(ino))?))
    }

    /// Where the bytes of a read of `ino` also go: the file's passthrough
    /// copy, while it may be passed through and is not ready yet.
    fn fill_target(&self, ino: Ino) -> Option<Fill> {
        let (store, key) = self.passthrough_key(ino)?;
        if store.is_ready(&key) {
            return None;
        }
        let size = self.index.node(ino)?.size();
        Some(Fill {
            store: store.clone(),
            key,
            size,
            ino,
        })
    }

    /// Opens `ino` in the mode the passthrough table chooses.
    fn open_file(&self, ino: Ino, reply: ReplyOpen) {
        let key = self.passthrough_key(ino);
        // SAFETY: raw ids come from the previous server of this very
        // connection, which left them open; the table owns them from now on.
        let wrap = |raw| unsafe { reply.wrap_backing(raw) };
        let mode = self.live.opens.open(self.node(ino), wrap, || {
            let (store, key) = key?;
            let Some(file) = store.ready_file(&key) else {
                self.schedule_prepare(ino);
                return None;
            };
            match reply.open_backing(&file) {
                Ok(id) => Some(id),
                Err(e) => {
                    // Refused once means refused always (privilege, stacking):
                    // stop trying and serve from userspace.
                    tracing::warn!(error = %e, "FUSE passthrough unavailable; disabled for this mount");
                    self.live.passthrough_on.store(false, Ordering::Relaxed);
                    None
                }
            }
        });
        // NOFLUSH: a read-only file has nothing to flush, so close() costs
        // no round trip, and a close while no server answers (between a
        // crash and the take-over) cannot hang waiting for one.
        match mode {
            OpenMode::Passthrough { fh, id } => {
                tracing::debug!(ino, fh, "passthrough open");
                self.stats.passthrough_opens.fetch_add(1, Ordering::Relaxed);
                // The kernel rejects page-cache flags (KEEP_CACHE) on passthrough opens.
                reply.opened_passthrough(FileHandle(fh), FopenFlags::FOPEN_NOFLUSH, &id);
            }
            // Content never changes, so the page cache may outlive the open.
            OpenMode::Cached => reply.opened(
                FileHandle(0),
                FopenFlags::FOPEN_KEEP_CACHE | FopenFlags::FOPEN_NOFLUSH,
            ),
        }
    }

    /// The debug line of `log_file_access` (as the Go reference's): once
    /// per file and mount, at its first open.
    fn log_first_open(&self, ino: Ino) {
        let Some(layer) = &self.opts.log_file_access else {
            return;
        };
        let first = self
            .logged_opens
            .lock()
            .is_ok_and(|mut seen| seen.insert(ino));
        if let (true, Some(node)) = (first, self.index.node(ino)) {
            let path = format!("/{}", self.index.path(ino).unwrap_or_default());
            let mode = format!("{:#o}", node.permissions() & 0o777);
            tracing::debug!(layer = %layer, path = %path, size = node.size(), mode = %mode, "file accessed");
        }
    }

    /// Assembles or re-verifies the whole file of `ino` in the background.
    fn schedule_prepare(&self, ino: Ino) {
        let Some((store, key)) = self.passthrough_key(ino) else {
            return;
        };
        let Some(disk) = self.layer.cache().disk().cloned() else {
            return;
        };
        let (store, index) = (store.clone(), self.index.clone());
        let work = self.layer.cache().work().clone();
        // A whole file's worth of disk I/O: behind every read someone waits for.
        self.runtime.spawn(async move {
            let prepared = work
                .run(Purpose::Background, move || {
                    store.prepare(key, &index.chunks(ino), &disk)
                })
                .await;
            match prepared {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    tracing::warn!(ino, error = %e, "cannot materialize file for passthrough")
                }
                Err(e) => tracing::warn!(ino, error = %e, "passthrough assembly task failed"),
            }
        });
    }

    /// The layer's inode of node id `ino` (node ids of other slots, and
    /// 0, are no inode of this layer).
    fn ino(&self, ino: INodeNo) -> Result<Ino, FsError> {
        ino.0
            .checked_sub(self.base)
            .and_then(|i| Ino::try_from(i).ok())
            .filter(|i| *i != 0)
            .ok_or(FsError::NotFound)
    }

    /// The node id of the layer's inode `ino`.
    fn node(&self, ino: Ino) -> u64 {
        self.base + u64::from(ino)
    }

    /// The statistics of the layer's mount.
    pub(crate) fn stats(&self) -> &Arc<FuseStats> {
        &self.stats
    }

    /// Blocks of the layer's regular files (its share of `statfs`).
    pub(crate) fn total_blocks(&self) -> u64 {
        self.total_blocks
    }

    /// Inodes of the layer.
    pub(crate) fn inodes(&self) -> u64 {
        self.index.len() as u64
    }

    fn attr(&self, ino: Ino) -> Result<FileAttr, FsError> {
        let node = self.index.node(ino).ok_or(FsError::NotFound)?;
        let secs = Duration::from_secs(node.mtime().unsigned_abs());
        // Checked: a hostile TOC's extreme time must not panic the thread.
        let mtime = if node.mtime() >= 0 {
            UNIX_EPOCH.checked_add(secs)
        } else {
            UNIX_EPOCH.checked_sub(secs)
        }
        .unwrap_or(UNIX_EPOCH);
        let mut attr = FileAttr {
            ino: INodeNo(self.node(ino)),
            size: node.size(),
            blocks: node.size().div_ceil(512),
            atime: mtime,
            mtime,
            ctime: mtime,
            crtime: mtime,
            kind: file_type(node.kind()),
            perm: node.permissions() as u16,
            nlink: node.nlink().max(1),
            uid: node.uid(),
            gid: node.gid(),
            rdev: node.device().map_or(0, |(ma, mi)| encode_dev(ma, mi)),
            blksize: BLOCK_SIZE,
            flags: 0,
        };
        if self.view.is_whiteout(ino) {
            // overlayfs's whiteout: a 0:0 character device, mode 0.
            (attr.kind, attr.perm, attr.rdev) = (FileType::CharDevice, 0, 0);
            (attr.size, attr.blocks, attr.nlink, attr.uid, attr.gid) = (0, 0, 1, 0, 0);
        }
        Ok(attr)
    }

    fn dir(&self, ino: INodeNo) -> Result<Ino, FsError> {
        let ino = self.ino(ino)?;
        match self.index.node(ino) {
            None => Err(FsError::NotFound),
            Some(n) if n.kind() != NodeKind::Dir => Err(FsError::NotDir),
            Some(_) => Ok(ino),
        }
    }

    /// The attributes of `name` in `parent`; `Ok(None)` when the directory
    /// exists but the name does not (a cacheable negative entry).
    fn lookup_entry(&self, parent: INodeNo, name: &OsStr) -> Result<Option<FileAttr>, FsError> {
        let dir = self.dir(parent)?;
        match name
            .to_str()
            .and_then(|n| self.view.lookup(&self.index, dir, n))
        {
            Some(ino) => self.attr(ino).map(Some),
            None => Ok(None),
        }
    }

    /// `.`, `..` and the visible entries, from position `offset`.
    fn dir_listing(
        &self,
        ino: INodeNo,
        offset: u64,
    ) -> Result<impl Iterator<Item = (u64, &str, Ino)> + '_, FsError> {
        let dir = self.dir(ino)?;
        let parent = self.index.node(dir).map_or(dir, |n| n.parent());
        let dots = [(".", dir), ("..", parent)];
        let entries = dots
            .into_iter()
            .chain(self.view.entries(&self.index, dir).map(|e| (e.name, e.ino)));
        Ok(entries
            .enumerate()
            .skip(usize::try_from(offset).unwrap_or(usize::MAX))
            .map(|(i, (name, ino))| (i as u64 + 1, name, ino)))
    }

    /// Feeds the listing from `offset` to `add` (next offset, name, attrs)
    /// until it reports a full buffer.
    fn fill_dir(
        &self,
        ino: INodeNo,
        offset: u64,
        mut add: impl FnMut(u64, &str, &FileAttr) -> bool,
    ) -> Result<(), FsError> {
        self.stats.readdirs.fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        for (next, name, child) in self.dir_listing(ino, offset)? {
            let Ok(attr) = self.attr(child) else { continue };
            if add(next, name, &attr) {
                break;
            }
        }
        self.stats.readdir_latency.observe(started.elapsed());
        Ok(())
    }

    fn xattrs(&self, ino: INodeNo) -> Result<Vec<(&str, &[u8])>, FsError> {
        let ino = self.ino(ino)?;
        self.index.node(ino).ok_or(FsError::NotFound)?;
        if self.view.is_whiteout(ino) {
            return Ok(Vec::new());
        }
        let mut out: Vec<(&str, &[u8])> = self.index.xattrs(ino).collect();
        if let Some((name, value)) = self.view.extra_xattrs(&self.index, ino)
            && !out.iter().any(|(n, _)| *n == name)
        {
            out.push((name, value));
        }
        Ok(out)
    }

    fn ttl(&self) -> Duration {
        self.opts.attr_ttl
    }
}

/// A file's passthrough copy that reads fill (see `cache::file_fill`).
struct Fill {
    store: Arc<FileStore>,
    key: crate::estargz::Digest,
    size: u64,
    ino: Ino,
}

impl Fill {
    /// Writes `data`, the bytes read at `offset`, into the copy. A failure
    /// only means the file is not passed through yet (release assembles it
    /// from the chunk cache later).
    fn record(&self, offset: u64, data: &[u8]) {
        if let Err(e) = self.store.record_read(self.key, self.size, offset, data) {
            tracing::debug!(ino = self.ino, error = %e, "cannot fill the passthrough copy");
        }
    }
}

/// Attributes of `kind` with only the node id, permissions and link count
/// set (times at the epoch, owned by root, empty).
pub(crate) fn bare_attr(ino: u64, kind: FileType, perm: u16, nlink: u32) -> FileAttr {
    FileAttr {
        ino: INodeNo(ino),
        size: 0,
        blocks: 0,
        atime: UNIX_EPOCH,
        mtime: UNIX_EPOCH,
        ctime: UNIX_EPOCH,
        crtime: UNIX_EPOCH,
        kind,
        perm,
        nlink,
        uid: 0,
        gid: 0,
        rdev: 0,
        blksize: BLOCK_SIZE,
        flags: 0,
    }
}

/// The kernel's `new_encode_dev`, which FUSE attributes use.
fn encode_dev(major: u32, minor: u32) -> u32 {
    (minor & 0xff) | ((major & 0xfff) << 8) | ((minor & !0xff) << 12)
}

fn file_type(kind: NodeKind) -> FileType {
    match kind {
        NodeKind::Dir => FileType::Directory,
        NodeKind::Reg => FileType::RegularFile,
        NodeKind::Symlink => FileType::Symlink,
        NodeKind::Char => FileType::CharDevice,
        NodeKind::Block => FileType::BlockDevice,
        NodeKind::Fifo => FileType::NamedPipe,
    }
}

/// Answers `size`-bounded xattr requests (size 0 asks for the length).
fn reply_xattr_bytes(reply: ReplyXattr, size: u32, data: &[u8]) {
    let len = u32::try_from(data.len()).unwrap_or(u32::MAX);
    if size == 0 {
        reply.size(len);
    } else if len > size {
        reply.error(errno(&FsError::Range));
    } else {
        reply.data(data);
    }
}

/// The requests of the layer, as [`super::shared::SharedFs`] hands them on.
impl LayerFs {
    /// The entry of the layer's root, looked up in the session root.
    pub(crate) fn lookup_root(&self, reply: ReplyEntry) {
        self.stats.lookups.fetch_add(1, Ordering::Relaxed);
        match self.attr(crate::estargz::ROOT_INO) {
            Ok(attr) => reply.entry_with_ttls(
                &self.opts.entry_ttl,
                &self.opts.attr_ttl,
                &attr,
                Generation(0),
            ),
            Err(e) => reply.error(errno(&e)),
        }
    }

    /// The root's attributes (for the session root's listing).
    pub(crate) fn root_attr(&self) -> Option<FileAttr> {
        self.attr(crate::estargz::ROOT_INO).ok()
    }

    pub(crate) fn lookup(&self, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        self.stats.lookups.fetch_add(1, Ordering::Relaxed);
        let ttl = (&self.opts.entry_ttl, &self.opts.attr_ttl);
        match self.lookup_entry(parent, name) {
            Ok(Some(attr)) => reply.entry_with_ttls(ttl.0, ttl.1, &attr, Generation(0)),
            // Node id 0 is a negative entry the kernel caches for the entry
            // TTL: overlay and $PATH/import searches probe many absent names.
            Ok(None) => reply.entry_with_ttls(ttl.0, ttl.1, &self.negative, Generation(0)),
            Err(e) => reply.error(errno(&e)),
        }
    }

    pub(crate) fn getattr(&self, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        self.stats.getattrs.fetch_add(1, Ordering::Relaxed);
        match self.ino(ino).and_then(|i| self.attr(i)) {
            Ok(attr) => reply.attr(&self.ttl(), &attr),
            Err(e) => reply.error(errno(&e)),
        }
    }

    pub(crate) fn readlink(&self, ino: INodeNo, reply: ReplyData) {
        let target = self.ino(ino).and_then(|i| {
            self.index
                .symlink_target(i)
                .ok_or(if self.index.node(i).is_some() {
                    FsError::NotSymlink
                } else {
                    FsError::NotFound
                })
        });
        match target {
            Ok(t) => reply.data(t.as_bytes()),
            Err(e) => reply.error(errno(&e)),
        }
    }

    pub(crate) fn open(&self, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        // Handed over: the successor answers it (after FUSE_NOTIFY_RESEND).
        let Some(_pass) = self.live.gate.enter() else {
            return std::mem::forget(reply);
        };
        self.stats.opens.fetch_add(1, Ordering::Relaxed);
        let res = self.ino(ino).and_then(|i| {
            let node = self.index.node(i).ok_or(FsError::NotFound)?;
            if flags.acc_mode() != OpenAccMode::O_RDONLY {
                return Err(FsError::ReadOnly);
            }
            if node.kind() == NodeKind::Dir {
                return Err(FsError::IsDir);
            }
            Ok(i)
        });
        match res {
            Ok(i) => {
                if let Some(log) = &self.opts.access_log {
                    log.record(&self.index, i);
                }
                self.log_first_open(i);
                self.open_file(i, reply)
            }
            Err(e) => reply.error(errno(&e)),
        }
    }

    pub(crate) fn release(&self, ino: INodeNo, fh: FileHandle, reply: ReplyEmpty) {
        let Some(_pass) = self.live.gate.enter() else {
            return std::mem::forget(reply);
        };
        self.stats.releases.fetch_add(1, Ordering::Relaxed);
        if let Ok(i) = self.ino(ino) {
            if let Some(raw) = self.live.opens.release(self.node(i), fh.0) {
                self.live.close_backing(raw);
            }
            if fh.0 == 0 {
                // The reader may have pulled the last missing chunk.
                self.schedule_prepare(i);
            }
        }
        reply.ok();
    }

    pub(crate) fn read(&self, ino: INodeNo, offset: u64, size: u32, reply: ReplyData) {
        let started = Instant::now();
        self.stats
            .max_read_request
            .fetch_max(u64::from(size), Ordering::Relaxed);
        let ino = match self.ino(ino) {
            Ok(i) => i,
            Err(e) => return reply.error(errno(&e)),
        };
        let sequential = self.access.record(ino, offset, u64::from(size));
        let fill = self.fill_target(ino);
        if let Some(data) = self.layer.read_cached(ino, offset, u64::from(size)) {
            self.stats.reads_inline.fetch_add(1, Ordering::Relaxed);
            // Before the reply: the reader's next open must find the copy
            // complete. A local write into the page cache, not network I/O.
            if let Some(fill) = &fill {
                fill.record(offset, &data);
            }
            self.stats.read_latency.observe(started.elapsed());
            return reply.data(&data);
        }
        self.stats.reads_async.fetch_add(1, Ordering::Relaxed);
        let (layer, stats, timeout) = (
            self.layer.clone(),
            self.stats.clone(),
            self.opts.read_timeout,
        );
        let read_ahead = if sequential {
            self.opts.read_ahead_chunks
        } else {
            0
        };
        let gate = self.live.gate.clone();
        let reply = Held::new(reply, gate.clone());
        let work = self.layer.cache().work().clone();
        self.runtime.spawn(async move {
            // After a handover the successor answers (the read is resent).
            let Some(_pass) = gate.enter() else { return };
            let waited = Instant::now();
            layer.read_ahead(
                ino,
                offset.saturating_add(u64::from(size)),
                read_ahead,
                timeout,
            );
            let read = tokio::time::timeout(timeout, layer.read(ino, offset, u64::from(size)));
            let res = tokio::select! {
                r = read => r,
                () = gate.frozen() => return,
            };
            let Some(reply) = reply.take() else { return };
            let res = match res {
                Ok(r) => r.map_err(FsError::from),
                Err(_) => {
                    stats.read_timeouts.fetch_add(1, Ordering::Relaxed);
                    Err(FsError::Timeout(timeout))
                }
            };
            stats.async_read_latency.observe(waited.elapsed());
            stats.read_latency.observe(started.elapsed());
            match res {
                Ok(data) => {
                    let data = bytes::Bytes::from(data);
                    if let Some(fill) = fill {
                        let copy = data.clone();
                        let filled = work
                            .run(Purpose::OnDemand, move || fill.record(offset, &copy))
                            .await;
                        if let Err(e) = filled {
                            tracing::debug!(ino, error = %e, "passthrough copy task failed");
                        }
                    }
                    reply.data(&data)
                }
                Err(e) => {
                    stats.read_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(ino, offset, size, error = %e, "read failed");
                    reply.error(errno(&e));
                }
            }
        });
    }

    pub(crate) fn opendir(&self, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.dir(ino) {
            // Listings never change: let the kernel cache them.
            Ok(_) => reply.opened(
                FileHandle(0),
                FopenFlags::FOPEN_KEEP_CACHE | FopenFlags::FOPEN_CACHE_DIR,
            ),
            Err(e) => reply.error(errno(&e)),
        }
    }

    pub(crate) fn readdir(
        &self,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        match self.fill_dir(ino, offset, |next, name, attr| {
            reply.add(attr.ino, next, attr.kind, name)
        }) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        }
    }

    pub(crate) fn readdirplus(
        &self,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let ttl = self.opts.entry_ttl;
        match self.fill_dir(ino, offset, |next, name, attr| {
            reply.add(attr.ino, next, name, &ttl, attr, Generation(0))
        }) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        }
    }

    pub(crate) fn getxattr(&self, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let value = self.xattrs(ino).and_then(|xs| {
            xs.into_iter()
                .find(|(n, _)| OsStr::new(n) == name)
                .map(|(_, v)| v)
                .ok_or(FsError::NoXattr)
        });
        match value {
            Ok(v) => reply_xattr_bytes(reply, size, v),
            Err(e) => reply.error(errno(&e)),
        }
    }

    pub(crate) fn listxattr(&self, ino: INodeNo, size: u32, reply: ReplyXattr) {
        match self.xattrs(ino) {
            Ok(xs) => {
                let mut list = Vec::new();
                for (name, _) in xs {
                    list.extend_from_slice(name.as_bytes());
                    list.push(0);
                }
                reply_xattr_bytes(reply, size, &list);
            }
            Err(e) => reply.error(errno(&e)),
        }
    }

    pub(crate) fn access(&self, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        // Permission bits are enforced by the kernel (default_permissions);
        // here only existence and read-onlyness are answered.
        let res = self.ino(ino).and_then(|i| {
            self.index.node(i).ok_or(FsError::NotFound)?;
            if mask.contains(AccessFlags::W_OK) {
                return Err(FsError::ReadOnly);
            }
            Ok(())
        });
        match res {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_numbers_use_the_kernel_encoding() {
        // makedev(1, 3) = /dev/null; large minors spill above bit 20.
        assert_eq!(encode_dev(1, 3), 0x103);
        assert_eq!(encode_dev(0, 0), 0);
        assert_eq!(encode_dev(8, 0x12345), 0x45 | (8 << 8) | (0x12300 << 12));
    }

    #[test]
    fn errors_map_to_errnos() {
        assert_eq!(errno(&FsError::NotFound), Errno::ENOENT);
        assert_eq!(errno(&FsError::Timeout(Duration::ZERO)), Errno::EIO);
        assert_eq!(
            errno(&FsError::Layer(LayerError::NotAFile(3))),
            Errno::EISDIR
        );
    }
}
