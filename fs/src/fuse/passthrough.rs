//! Bookkeeping of open files under kernel FUSE passthrough.
//!
//! The kernel puts each inode in one I/O mode at a time: while any open of
//! an inode uses the page cache, a passthrough open of it fails (EIO to the
//! application), and all concurrent passthrough opens of one inode must
//! share one backing id. So per inode this tracks the live cached opens and
//! the live backing id, and chooses the mode of each new open accordingly.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use fuser::BackingId;

use crate::estargz::Ino;

/// How an open is served.
#[derive(Debug)]
pub enum OpenMode {
    /// Through the daemon and the page cache (file handle 0).
    Cached,
    /// Through the kernel from a backing file.
    Passthrough {
        /// File handle to return.
        fh: u64,
        /// The inode's shared backing id.
        id: Arc<BackingId>,
    },
}

#[derive(Default)]
struct InodeOpens {
    cached: u32,
    backing: Weak<BackingId>,
}

#[derive(Default)]
struct State {
    inodes: HashMap<Ino, InodeOpens>,
    /// Strong refs per passthrough file handle; the last one closes the id.
    handles: HashMap<u64, (Ino, Arc<BackingId>)>,
    next_fh: u64,
}

/// Per-mount table of open modes.
#[derive(Default)]
pub struct PassthroughOpens {
    state: Mutex<State>,
}

impl std::fmt::Debug for PassthroughOpens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PassthroughOpens").finish_non_exhaustive()
    }
}

impl PassthroughOpens {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Chooses the mode of a new open of `ino`. `new_backing` is called only
    /// when passthrough is possible and no backing id is live for the inode.
    pub fn open(&self, ino: Ino, new_backing: impl FnOnce() -> Option<BackingId>) -> OpenMode {
        let mut st = self.lock();
        let st = &mut *st;
        let entry = st.inodes.entry(ino).or_default();
        let id = if entry.cached > 0 {
            None
        } else if let Some(id) = entry.backing.upgrade() {
            Some(id)
        } else {
            new_backing().map(Arc::new)
        };
        match id {
            Some(id) => {
                entry.backing = Arc::downgrade(&id);
                st.next_fh += 1;
                let fh = st.next_fh;
                st.handles.insert(fh, (ino, id.clone()));
                OpenMode::Passthrough { fh, id }
            }
            None => {
                entry.cached += 1;
                OpenMode::Cached
            }
        }
    }

    /// Forgets an open of `ino` with file handle `fh`.
    pub fn release(&self, ino: Ino, fh: u64) {
        let mut st = self.lock();
        if fh != 0 {
            st.handles.remove(&fh);
        } else if let Some(e) = st.inodes.get_mut(&ino) {
            e.cached = e.cached.saturating_sub(1);
        }
        if st
            .inodes
            .get(&ino)
            .is_some_and(|e| e.cached == 0 && e.backing.strong_count() == 0)
        {
            st.inodes.remove(&ino);
        }
    }
}
