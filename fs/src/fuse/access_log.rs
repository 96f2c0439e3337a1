//! Which files a workload opens, in first-open order, over every layer mount
//! sharing one [`AccessLog`]: the list `image convert --prioritize-file`
//! takes (the Go tooling records the same with `ctr-remote image optimize`).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use crate::estargz::{Index, Ino};

/// A shared record of first opens; cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct AccessLog(Arc<Mutex<Opens>>);

#[derive(Debug, Default)]
struct Opens {
    /// (index address, inode) pairs already recorded.
    seen: HashSet<(usize, Ino)>,
    order: Vec<(Arc<Index>, Ino)>,
}

impl AccessLog {
    /// Records an open of `ino` in the layer with `index` (later opens of
    /// the same file are ignored).
    pub fn record(&self, index: &Arc<Index>, ino: Ino) {
        let Ok(mut opens) = self.0.lock() else {
            return;
        };
        if opens.seen.insert((Arc::as_ptr(index) as usize, ino)) {
            opens.order.push((index.clone(), ino));
        }
    }

    /// Forgets every open recorded so far: the next open of any file is
    /// recorded again.
    pub fn clear(&self) {
        if let Ok(mut opens) = self.0.lock() {
            *opens = Opens::default();
        }
    }

    /// The opened paths (`/`-rooted) in first-open order, each once.
    pub fn paths(&self) -> Vec<String> {
        let Ok(opens) = self.0.lock() else {
            return Vec::new();
        };
        let mut seen = HashSet::new();
        opens
            .order
            .iter()
            .filter_map(|(index, ino)| index.path(*ino))
            .map(|p| format!("/{p}"))
            .filter(|p| seen.insert(p.clone()))
            .collect()
    }
}
