//! The layers of a shared FUSE session, each in its own slot of one inode
//! space: node id = slot << 32 | the layer's inode. Slot 0 is the session's
//! root directory, which holds one directory per layer, named by its slot.
//!
//! Slots are never reused within a connection (nor across a live restart:
//! the next free slot travels with the hand-over): the kernel may keep a
//! retired layer's dentries, attributes and page cache for a while, and a new
//! layer under the same node ids would be served from them.
//!
//! A slot the previous server left (live restart) is *pending* until its
//! layer is attached again: requests for it wait in the slot, since the
//! session threads must not block, and are answered at the attach (or
//! fail with ENOENT when the layer never comes back).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use super::fs::LayerFs;

/// A layer's number in a shared session.
pub type Slot = u32;

/// Bits of a node id below the slot.
const SLOT_SHIFT: u32 = 32;

/// The node id of a slot's inode 0 (its inodes are this plus their number).
pub(crate) fn base(slot: Slot) -> u64 {
    u64::from(slot) << SLOT_SHIFT
}

/// The slot a node id belongs to (0: the session's root).
pub(crate) fn slot_of(node: u64) -> Slot {
    (node >> SLOT_SHIFT) as Slot
}

/// A request waiting for its layer; called with `None` when it never comes.
pub(crate) type Parked = Box<dyn FnOnce(Option<&LayerFs>) + Send>;

enum State {
    /// Requests waiting (in a mutex only so the table is `Sync`: they are
    /// touched under the table's write lock).
    Pending(Mutex<Vec<Parked>>),
    Ready(Arc<LayerFs>),
}

/// The slot table of one session.
pub(crate) struct Slots {
    table: RwLock<BTreeMap<Slot, State>>,
    next: AtomicU32,
}

impl std::fmt::Debug for Slots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slots")
            .field("next", &self.next.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Slots {
    /// A table whose new slots start at `next` (at least 1), with `pending`
    /// slots waiting for their layers.
    pub(crate) fn new(next: Slot, pending: &[Slot]) -> Self {
        let table = pending
            .iter()
            .map(|s| (*s, State::Pending(Mutex::default())))
            .collect();
        let next = pending.iter().map(|s| s + 1).fold(next.max(1), Slot::max);
        Slots {
            table: RwLock::new(table),
            next: AtomicU32::new(next),
        }
    }

    /// The first slot never handed out.
    pub(crate) fn next_free(&self) -> Slot {
        self.next.load(Ordering::SeqCst)
    }

    /// A fresh slot number (not yet in the table).
    pub(crate) fn allocate(&self) -> Slot {
        self.next.fetch_add(1, Ordering::SeqCst)
    }

    /// Puts `fs` in `slot` and answers the requests that waited for it.
    pub(crate) fn attach(&self, slot: Slot, fs: Arc<LayerFs>) {
        let previous = self
            .table
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(slot, State::Ready(fs.clone()));
        if let Some(State::Pending(parked)) = previous {
            for request in parked.into_inner().unwrap_or_else(|p| p.into_inner()) {
                request(Some(&fs));
            }
        }
    }

    /// Empties `slot`: its requests, waiting or to come, fail with ENOENT.
    pub(crate) fn retire(&self, slot: Slot) -> Option<Arc<LayerFs>> {
        let previous = self
            .table
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&slot);
        match previous {
            Some(State::Ready(fs)) => Some(fs),
            Some(State::Pending(parked)) => {
                for request in parked.into_inner().unwrap_or_else(|p| p.into_inner()) {
                    request(None);
                }
                None
            }
            None => None,
        }
    }

    /// The slots still pending.
    pub(crate) fn pending(&self) -> Vec<Slot> {
        let table = self.table.read().unwrap_or_else(|p| p.into_inner());
        table
            .iter()
            .filter(|(_, s)| matches!(s, State::Pending(_)))
            .map(|(k, _)| *k)
            .collect()
    }

    /// The layers attached, in slot order.
    pub(crate) fn ready(&self) -> Vec<(Slot, Arc<LayerFs>)> {
        let table = self.table.read().unwrap_or_else(|p| p.into_inner());
        table
            .iter()
            .filter_map(|(k, s)| match s {
                State::Ready(fs) => Some((*k, fs.clone())),
                State::Pending(_) => None,
            })
            .collect()
    }

    /// Runs `request` with the layer of `slot`: now, once the layer is
    /// attached (pending slot), or with `None` (no such slot).
    pub(crate) fn route(
        &self,
        slot: Slot,
        request: impl FnOnce(Option<&LayerFs>) + Send + 'static,
    ) {
        let found = {
            let table = self.table.read().unwrap_or_else(|p| p.into_inner());
            match table.get(&slot) {
                Some(State::Ready(fs)) => Some(Some(fs.clone())),
                Some(State::Pending(_)) => None,
                None => Some(None),
            }
        };
        match found {
            Some(fs) => request(fs.as_deref()),
            None => {
                let mut table = self.table.write().unwrap_or_else(|p| p.into_inner());
                match table.get_mut(&slot) {
                    Some(State::Pending(parked)) => parked
                        .get_mut()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(Box::new(request)),
                    // Attached or retired meanwhile.
                    Some(State::Ready(fs)) => {
                        let fs = fs.clone();
                        drop(table);
                        request(Some(&fs));
                    }
                    None => {
                        drop(table);
                        request(None);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ids_split_into_slot_and_inode() {
        assert_eq!(slot_of(base(7) + 42), 7);
        assert_eq!(slot_of(1), 0);
        assert_eq!(base(1), 1 << 32);
    }

    #[test]
    fn new_slots_follow_the_pending_and_the_given_next() {
        let slots = Slots::new(3, &[9, 4]);
        assert_eq!(slots.allocate(), 10);
        assert_eq!(slots.pending(), vec![4, 9]);
        let slots = Slots::new(0, &[]);
        assert_eq!(slots.allocate(), 1);
        assert_eq!(slots.next_free(), 2);
    }

    #[test]
    fn requests_for_a_pending_slot_wait_and_fail_when_it_is_retired() {
        let slots = Slots::new(1, &[5]);
        let (tx, rx) = std::sync::mpsc::channel();
        let t = tx.clone();
        slots.route(5, move |fs| t.send(fs.is_some()).unwrap_or_default());
        assert!(rx.try_recv().is_err(), "parked, not answered");
        slots.route(6, move |fs| tx.send(fs.is_some()).unwrap_or_default());
        assert_eq!(
            rx.try_recv().ok(),
            Some(false),
            "unknown slot answers at once"
        );
        assert!(slots.retire(5).is_none());
        assert_eq!(
            rx.try_recv().ok(),
            Some(false),
            "retired: answered with no layer"
        );
        assert!(slots.pending().is_empty());
    }
}
