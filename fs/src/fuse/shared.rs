//! The fuser [`Filesystem`] of a shared session: every layer of the daemon
//! under one FUSE connection, each in its slot (`super::slots`). Requests
//! go to the layer their node id names; the session root lists the
//! attached layers, each a directory named by its slot.

use std::ffi::OsStr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use fuser::{
    AccessFlags, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation,
    INodeNo, InitFlags, KernelConfig, LockOwner, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory,
    ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyXattr, Request,
};

use super::fs::{BLOCK_SIZE, LayerFs, bare_attr};
use super::handover::{InitParams, Live};
use super::slots::{Slot, Slots, slot_of};

/// Largest FUSE request we ask for: 1 MiB reads halve round trips twice
/// over the 128 KiB default (kernel max_pages is 256 here).
const MAX_REQUEST: u32 = 1 << 20;

/// Node id of the session root.
const ROOT: u64 = 1;

/// Offsets of the root's listing: 1 and 2 are `.` and `..`, a layer's is
/// its slot plus this (slots only grow, so a listing resumes correctly).
const FIRST_LAYER_OFFSET: u64 = 3;

/// The filesystem of a shared session.
pub(crate) struct SharedFs {
    pub(crate) slots: Arc<Slots>,
    pub(crate) live: Arc<Live>,
    /// Whether to offer kernel passthrough at the handshake.
    pub(crate) passthrough: bool,
}

fn root_attr() -> FileAttr {
    bare_attr(ROOT, FileType::Directory, 0o755, 2)
}

/// How long the kernel may keep the root's attributes: its listing
/// changes with every mount, its attributes never.
const ROOT_TTL: Duration = Duration::from_secs(3600);

impl SharedFs {
    /// Runs `f` with the layer of node `ino` (waiting for a pending one),
    /// or answers ENOENT through `fail`.
    fn route<R: Send + 'static>(
        &self,
        ino: INodeNo,
        reply: R,
        fail: fn(R, Errno),
        f: impl FnOnce(&LayerFs, R) + Send + 'static,
    ) {
        self.slots.route(slot_of(ino.0), move |fs| match fs {
            Some(fs) => f(fs, reply),
            None => fail(reply, Errno::ENOENT),
        });
    }

    /// The root's listing from `offset`: (next offset, name, attributes).
    fn root_listing(&self, offset: u64) -> Vec<(u64, String, FileAttr)> {
        let dots = [
            (1, ".".to_string(), root_attr()),
            (2, "..".into(), root_attr()),
        ];
        let layers = self.slots.ready().into_iter().filter_map(|(slot, fs)| {
            let attr = fs.root_attr()?;
            Some((u64::from(slot) + FIRST_LAYER_OFFSET, slot.to_string(), attr))
        });
        dots.into_iter()
            .chain(layers)
            .filter(|(next, _, _)| *next > offset)
            .collect()
    }
}

impl Filesystem for SharedFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let _ = config.set_max_write(MAX_REQUEST);
        let max_readahead = match config.set_max_readahead(MAX_REQUEST) {
            Ok(_) => MAX_REQUEST,
            Err(max) => {
                let _ = config.set_max_readahead(max);
                max
            }
        };
        let abi = config.kernel_abi();
        *self.live.init.lock().unwrap_or_else(|p| p.into_inner()) = Some(InitParams {
            major: abi.0,
            minor: abi.1,
            max_readahead,
            capabilities: config.capabilities().bits(),
        });
        let _ = config.set_max_background(64);
        let wanted = InitFlags::FUSE_DO_READDIRPLUS
            | InitFlags::FUSE_READDIRPLUS_AUTO
            | InitFlags::FUSE_CACHE_SYMLINKS
            | InitFlags::FUSE_PARALLEL_DIROPS;
        let _ = config.add_capabilities(wanted & config.capabilities());
        if self.passthrough && config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok() {
            // Depth 1 keeps room for the overlay mounted on top (the kernel
            // allows two stacked levels); backing files live on a plain fs.
            if config.set_max_stack_depth(1).is_ok() {
                self.live.passthrough_on.store(true, Ordering::Relaxed);
            }
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        if parent.0 != ROOT {
            let name = name.to_owned();
            return self.route(parent, reply, ReplyEntry::error, move |fs, reply| {
                fs.lookup(parent, &name, reply)
            });
        }
        match name.to_str().and_then(|n| n.parse::<Slot>().ok()) {
            Some(slot) if slot > 0 => {
                self.slots.route(slot, move |fs| match fs {
                    Some(fs) => fs.lookup_root(reply),
                    None => reply.error(Errno::ENOENT),
                });
            }
            _ => reply.error(Errno::ENOENT),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        if ino.0 == ROOT {
            return reply.attr(&ROOT_TTL, &root_attr());
        }
        self.route(ino, reply, ReplyAttr::error, move |fs, reply| {
            fs.getattr(ino, fh, reply)
        });
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        self.route(ino, reply, ReplyData::error, move |fs, reply| {
            fs.readlink(ino, reply)
        });
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if ino.0 == ROOT {
            return reply.error(Errno::EISDIR);
        }
        self.route(ino, reply, ReplyOpen::error, move |fs, reply| {
            fs.open(ino, flags, reply)
        });
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.route(ino, reply, ReplyEmpty::error, move |fs, reply| {
            fs.release(ino, fh, reply)
        });
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        self.route(ino, reply, ReplyData::error, move |fs, reply| {
            fs.read(ino, offset, size, reply)
        });
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if ino.0 == ROOT {
            // The root's listing changes with every mount: no caching.
            return reply.opened(FileHandle(0), FopenFlags::empty());
        }
        self.route(ino, reply, ReplyOpen::error, move |fs, reply| {
            fs.opendir(ino, flags, reply)
        });
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        if ino.0 == ROOT {
            for (next, name, attr) in self.root_listing(offset) {
                if reply.add(attr.ino, next, attr.kind, &name) {
                    break;
                }
            }
            return reply.ok();
        }
        self.route(ino, reply, ReplyDirectory::error, move |fs, reply| {
            fs.readdir(ino, fh, offset, reply)
        });
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        if ino.0 == ROOT {
            for (next, name, attr) in self.root_listing(offset) {
                if reply.add(attr.ino, next, &name, &ROOT_TTL, &attr, Generation(0)) {
                    break;
                }
            }
            return reply.ok();
        }
        self.route(ino, reply, ReplyDirectoryPlus::error, move |fs, reply| {
            fs.readdirplus(ino, fh, offset, reply)
        });
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        // Used = the layers' content; nothing free (read-only), so `df` is
        // truthful (for the whole session: statfs names no layer).
        let (blocks, files) = self
            .slots
            .ready()
            .iter()
            .fold((0u64, 0u64), |(b, f), (_, fs)| {
                (b + fs.total_blocks(), f + fs.inodes())
            });
        reply.statfs(blocks, 0, 0, files, 0, BLOCK_SIZE, 255, BLOCK_SIZE);
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        if ino.0 == ROOT {
            return reply.error(Errno::NO_XATTR);
        }
        let name = name.to_owned();
        self.route(ino, reply, ReplyXattr::error, move |fs, reply| {
            fs.getxattr(ino, &name, size, reply)
        });
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        if ino.0 == ROOT {
            return if size == 0 {
                reply.size(0)
            } else {
                reply.data(&[])
            };
        }
        self.route(ino, reply, ReplyXattr::error, move |fs, reply| {
            fs.listxattr(ino, size, reply)
        });
    }

    fn access(&self, _req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        if ino.0 == ROOT {
            return if mask.contains(AccessFlags::W_OK) {
                reply.error(Errno::EROFS)
            } else {
                reply.ok()
            };
        }
        self.route(ino, reply, ReplyEmpty::error, move |fs, reply| {
            fs.access(ino, mask, reply)
        });
    }
}
