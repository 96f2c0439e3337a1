//! Bookkeeping of open files under kernel FUSE passthrough.
//!
//! The kernel puts each inode in one I/O mode at a time: while any open of
//! an inode uses the page cache, a passthrough open of it fails (EIO to the
//! application), and all concurrent passthrough opens of one inode must
//! share one backing id. So per inode this tracks the live cached opens and
//! the live backing id, and chooses the mode of each new open accordingly.
//!
//! The kernel keeps these modes across a live restart, so the table moves
//! with the connection ([`PassthroughOpens::export`], [`PassthroughOpens::import`]):
//! backing ids cross as raw numbers and become [`BackingId`]s again at the
//! next open of their inode (only a reply can wrap one).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use fuser::BackingId;
use serde::{Deserialize, Serialize};

/// A FUSE node id: a layer's inode within the session's inode space
/// (see `super::slots`), so one table serves every layer of a connection.
type Ino = u64;

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

/// A backing id received from the previous server, not wrapped yet.
struct RawBacking {
    id: u32,
    /// Its file handles still open.
    handles: Vec<u64>,
}

#[derive(Default)]
struct State {
    inodes: HashMap<Ino, InodeOpens>,
    /// Strong refs per passthrough file handle; the last one closes the id.
    handles: HashMap<u64, (Ino, Arc<BackingId>)>,
    /// Backing ids of the previous server, by inode.
    raw: HashMap<Ino, RawBacking>,
    next_fh: u64,
}

/// The open-file table as it crosses to a successor process.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenTable {
    /// Open counts of inodes served through the page cache.
    pub cached: Vec<(Ino, u32)>,
    /// Inodes under passthrough: (inode, raw backing id, its file handles).
    pub passthrough: Vec<(Ino, u32, Vec<u64>)>,
    /// The next file handle is above this one.
    pub next_fh: u64,
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
    /// when passthrough is possible and no backing id is live for the inode;
    /// `wrap` turns a backing id of the previous server into a [`BackingId`].
    pub fn open(
        &self,
        ino: Ino,
        wrap: impl FnOnce(u32) -> BackingId,
        new_backing: impl FnOnce() -> Option<BackingId>,
    ) -> OpenMode {
        let mut st = self.lock();
        let st = &mut *st;
        let entry = st.inodes.entry(ino).or_default();
        let id = if let Some(raw) = st.raw.remove(&ino) {
            // The kernel requires this very id for every open of the inode.
            let id = Arc::new(wrap(raw.id));
            for fh in raw.handles {
                st.handles.insert(fh, (ino, id.clone()));
            }
            Some(id)
        } else if entry.cached > 0 {
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

    /// Forgets an open of `ino` with file handle `fh`. Returns a raw backing
    /// id of the previous server whose last handle this was: the caller
    /// closes it.
    pub fn release(&self, ino: Ino, fh: u64) -> Option<u32> {
        let mut st = self.lock();
        let mut closed = None;
        if fh != 0 {
            if st.handles.remove(&fh).is_none()
                && let Some(raw) = st.raw.get_mut(&ino)
            {
                raw.handles.retain(|h| *h != fh);
                if raw.handles.is_empty() {
                    closed = st.raw.remove(&ino).map(|r| r.id);
                }
            }
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
        closed
    }

    /// Empties the table into its transferable form. Backing ids leave as
    /// raw numbers, so dropping the table no longer closes them: call only
    /// when no handler can touch the table any more.
    pub fn export(&self) -> OpenTable {
        let st = std::mem::take(&mut *self.lock());
        let cached = st
            .inodes
            .iter()
            .filter(|(_, e)| e.cached > 0)
            .map(|(ino, e)| (*ino, e.cached))
            .collect();
        let mut passthrough: Vec<(Ino, u32, Vec<u64>)> = st
            .raw
            .into_iter()
            .map(|(ino, r)| (ino, r.id, r.handles))
            .collect();
        let mut by_id: HashMap<*const BackingId, (Ino, Arc<BackingId>, Vec<u64>)> = HashMap::new();
        for (fh, (ino, id)) in st.handles {
            by_id
                .entry(Arc::as_ptr(&id))
                .or_insert_with(|| (ino, id.clone(), Vec::new()))
                .2
                .push(fh);
        }
        drop(st.inodes);
        for (_, (ino, id, handles)) in by_id {
            match Arc::try_unwrap(id) {
                Ok(id) => passthrough.push((ino, id.into_raw(), handles)),
                Err(_) => tracing::warn!(ino, "backing id still in use; not handed over"),
            }
        }
        passthrough.sort();
        let mut cached: Vec<(Ino, u32)> = cached;
        cached.sort();
        OpenTable {
            cached,
            passthrough,
            next_fh: st.next_fh,
        }
    }

    /// A table continuing the one a previous server exported.
    pub fn import(table: OpenTable) -> Self {
        let mut st = State {
            next_fh: table.next_fh,
            ..State::default()
        };
        for (ino, cached) in table.cached {
            st.inodes.entry(ino).or_default().cached = cached;
        }
        for (ino, id, handles) in table.passthrough {
            st.next_fh = st.next_fh.max(handles.iter().copied().max().unwrap_or(0));
            st.raw.insert(ino, RawBacking { id, handles });
        }
        PassthroughOpens {
            state: Mutex::new(st),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cached_counts_and_backing_ids_cross_a_handover() {
        let table = OpenTable {
            cached: vec![(3, 2)],
            passthrough: vec![(5, 7, vec![10, 11])],
            next_fh: 11,
        };
        let opens = PassthroughOpens::import(table.clone());
        // Still cached: a passthrough open of inode 3 would fail in the kernel.
        assert!(matches!(
            opens.open(3, |_| unreachable!(), || unreachable!()),
            OpenMode::Cached
        ));
        assert_eq!(opens.release(3, 0), None);
        // Releasing one of two handles keeps the raw id, the last one closes it.
        assert_eq!(opens.release(5, 10), None);
        let back = opens.export();
        assert_eq!(back.cached, vec![(3, 2)]);
        assert_eq!(back.passthrough, vec![(5, 7, vec![11])]);
        assert_eq!(back.next_fh, 11);
        let opens = PassthroughOpens::import(back);
        assert_eq!(opens.release(5, 11), Some(7));
        assert_eq!(opens.export().passthrough, vec![]);
    }
}
