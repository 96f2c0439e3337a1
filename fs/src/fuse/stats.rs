//! [`FuseStats`]: per-mount counters of FUSE operations, for the daemon's
//! metrics and the tests that check what reached the daemon.

use std::sync::atomic::{AtomicU64, Ordering};

/// Upper bounds (seconds) of the async read latency buckets.
pub const READ_LATENCY_BUCKETS: [f64; 8] = [0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0];

/// Per-operation counters, for the daemon's metrics.
#[derive(Debug, Default)]
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
    /// Total nanoseconds spent in async reads.
    pub async_read_nanos: AtomicU64,
    /// Async reads per latency bucket: bucket `i` counts reads that took at
    /// most [`READ_LATENCY_BUCKETS`]`[i]` seconds (not cumulative); the last
    /// slot counts slower reads.
    pub async_read_buckets: [AtomicU64; READ_LATENCY_BUCKETS.len() + 1],
    /// Opens served with kernel passthrough.
    pub passthrough_opens: AtomicU64,
    /// Largest read request the kernel sent, in bytes.
    pub max_read_request: AtomicU64,
}

impl FuseStats {
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
        add(&self.async_read_nanos, &other.async_read_nanos);
        for (to, from) in self
            .async_read_buckets
            .iter()
            .zip(&other.async_read_buckets)
        {
            add(to, from);
        }
        add(&self.passthrough_opens, &other.passthrough_opens);
        self.max_read_request.fetch_max(
            other.max_read_request.load(Ordering::Relaxed),
            Ordering::Relaxed,
        );
    }
}
