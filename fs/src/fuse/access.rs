//! Telling sequential readers from random ones, so that chunk read-ahead
//! (which costs a fetch, a decompression and a verification per chunk) is
//! spent only where the next chunks will be read.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::estargz::Ino;

/// A read this close to where the previous read of the inode ended counts
/// as sequential: the kernel's own read-ahead and several FUSE threads
/// deliver a sequential reader's requests slightly out of order.
const NEAR: u64 = 4 << 20;
/// Inodes remembered at most; the table is simply cleared when full (a
/// forgotten reader is treated as random until its next read).
const MAX_TRACKED: usize = 4096;

/// Where the last read of each recently read inode ended.
#[derive(Debug, Default)]
pub struct AccessPattern {
    last_end: Mutex<HashMap<Ino, u64>>,
}

impl AccessPattern {
    /// Records a read of `[offset, offset + len)` of `ino`; returns whether
    /// it continues a sequential pass (or starts one at offset 0).
    pub fn record(&self, ino: Ino, offset: u64, len: u64) -> bool {
        let mut map = self.last_end.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= MAX_TRACKED && !map.contains_key(&ino) {
            map.clear();
        }
        let prev = map.insert(ino, offset.saturating_add(len));
        offset == 0 || prev.is_some_and(|end| offset.abs_diff(end) <= NEAR)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequential_and_random_reads_are_told_apart() {
        let p = AccessPattern::default();
        assert!(p.record(1, 0, 1 << 20));
        assert!(p.record(1, 1 << 20, 1 << 20));
        // Slightly out of order is still sequential.
        assert!(p.record(1, 3 << 20, 1 << 20));
        assert!(p.record(1, 2 << 20, 1 << 20));
        // A jump far away is random, and so is the first read mid-file.
        assert!(!p.record(1, 700 << 20, 4096));
        assert!(!p.record(2, 300 << 20, 4096));
        assert!(p.record(2, (300 << 20) + 4096, 4096));
    }
}
