//! Per-mount counters of FUSE operations, for the daemon's metrics (ours
//! and the Go reference's names).

use std::sync::atomic::{AtomicU64, Ordering};

use crate::histogram::{GO_MICROSECOND_BOUNDS, LatencyHistogram, READ_LATENCY_BOUNDS};

/// Per-operation counters of one mount.
#[derive(Debug)]
pub struct FuseStats {
    /// lookup calls.
    pub lookups: AtomicU64,
    /// getattr calls.
    pub getattrs: AtomicU64,
    /// readdir and readdirplus calls.
    pub readdirs: AtomicU64,
    /// open calls.
    pub opens: AtomicU64,
    /// release calls (the kernel sends them after the last close, so a
    /// reader's next open may arrive first).
    pub releases: AtomicU64,
    /// Reads answered inline from memory.
    pub reads_inline: AtomicU64,
    /// Reads answered from a worker task.
    pub reads_async: AtomicU64,
    /// Reads answered with an error (including timeouts).
    pub read_errors: AtomicU64,
    /// Reads that hit the timeout.
    pub read_timeouts: AtomicU64,
    /// Latency of the reads answered from a worker task
    /// ([`READ_LATENCY_BOUNDS`]).
    pub async_read_latency: LatencyHistogram,
    /// Latency of every read, inline or not, from the request to the
    /// answer (the Go reference's microsecond buckets).
    pub read_latency: LatencyHistogram,
    /// Latency of directory listings (the Go reference's microsecond buckets).
    pub readdir_latency: LatencyHistogram,
    /// Opens served with kernel passthrough.
    pub passthrough_opens: AtomicU64,
    /// Largest read request the kernel sent, in bytes.
    pub max_read_request: AtomicU64,
}

impl Default for FuseStats {
    fn default() -> Self {
        FuseStats {
            lookups: AtomicU64::default(),
            getattrs: AtomicU64::default(),
            readdirs: AtomicU64::default(),
            opens: AtomicU64::default(),
            releases: AtomicU64::default(),
            reads_inline: AtomicU64::default(),
            reads_async: AtomicU64::default(),
            read_errors: AtomicU64::default(),
            read_timeouts: AtomicU64::default(),
            async_read_latency: LatencyHistogram::new(&READ_LATENCY_BOUNDS),
            read_latency: LatencyHistogram::new(&GO_MICROSECOND_BOUNDS),
            readdir_latency: LatencyHistogram::new(&GO_MICROSECOND_BOUNDS),
            passthrough_opens: AtomicU64::default(),
            max_read_request: AtomicU64::default(),
        }
    }
}

impl FuseStats {
    /// Reads answered, inline or not.
    pub fn reads(&self) -> u64 {
        self.reads_inline.load(Ordering::Relaxed) + self.reads_async.load(Ordering::Relaxed)
    }

    /// Adds the counts of `other` (a mount that is going away) to these, so
    /// that totals summed over mounts never go backwards.
    pub fn absorb(&self, other: &FuseStats) {
        let add = |to: &AtomicU64, from: &AtomicU64| {
            to.fetch_add(from.load(Ordering::Relaxed), Ordering::Relaxed);
        };
        add(&self.lookups, &other.lookups);
        add(&self.getattrs, &other.getattrs);
        add(&self.readdirs, &other.readdirs);
        add(&self.opens, &other.opens);
        add(&self.releases, &other.releases);
        add(&self.reads_inline, &other.reads_inline);
        add(&self.reads_async, &other.reads_async);
        add(&self.read_errors, &other.read_errors);
        add(&self.read_timeouts, &other.read_timeouts);
        self.async_read_latency.absorb(&other.async_read_latency);
        self.read_latency.absorb(&other.read_latency);
        self.readdir_latency.absorb(&other.readdir_latency);
        add(&self.passthrough_opens, &other.passthrough_opens);
        self.max_read_request.fetch_max(
            other.max_read_request.load(Ordering::Relaxed),
            Ordering::Relaxed,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn absorbing_adds_counts_and_latencies() {
        let total = FuseStats::default();
        let one = FuseStats::default();
        one.reads_inline.store(2, Ordering::Relaxed);
        one.reads_async.store(1, Ordering::Relaxed);
        one.read_latency.observe(Duration::from_micros(3));
        one.async_read_latency.observe(Duration::from_millis(2));
        total.absorb(&one);
        total.absorb(&one);
        assert_eq!(total.reads(), 6);
        assert_eq!(total.read_latency.snapshot().count(), 2);
        assert_eq!(total.async_read_latency.snapshot().count(), 2);
        assert_eq!(total.readdir_latency.snapshot().count(), 0);
    }
}
