//! Lock-free counters of registry traffic per [`Purpose`], read by the
//! metrics endpoint and by tests that assert how many requests were made.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::purpose::Purpose;

/// Counters shared by every fetcher of one [`super::Registry`].
#[derive(Debug, Default)]
pub struct FetchMetrics {
    requests: [AtomicU64; 3],
    bytes: [AtomicU64; 3],
    full_body_aborts: AtomicU64,
    single_range_fallbacks: AtomicU64,
    redirects_followed: AtomicU64,
    retries: AtomicU64,
    hedges: AtomicU64,
}

/// A point-in-time copy of [`FetchMetrics`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MetricsSnapshot {
    /// HTTP requests sent, per priority class of their purpose (index = [`Purpose::priority`]).
    pub requests: [u64; 3],
    /// Body bytes received, per priority class.
    pub bytes: [u64; 3],
    /// Responses that ignored Range (200 + whole blob) and were abandoned.
    pub full_body_aborts: u64,
    /// Switches from multi-range to single-range mode.
    pub single_range_fallbacks: u64,
    /// Redirects followed.
    pub redirects_followed: u64,
    /// Retried attempts (backoff).
    pub retries: u64,
    /// Requests sent a second time because the first was slow to answer.
    pub hedges: u64,
}

impl MetricsSnapshot {
    /// Total requests over all purposes.
    pub fn total_requests(&self) -> u64 {
        self.requests.iter().sum()
    }
}

impl FetchMetrics {
    pub(crate) fn request(&self, p: Purpose) {
        self.requests[p.priority()].fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn bytes(&self, p: Purpose, n: u64) {
        self.bytes[p.priority()].fetch_add(n, Ordering::Relaxed);
    }
    pub(crate) fn full_body_abort(&self) {
        self.full_body_aborts.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn single_range_fallback(&self) {
        self.single_range_fallbacks.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn redirect(&self) {
        self.redirects_followed.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn retry(&self) {
        self.retries.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn hedge(&self) {
        self.hedges.fetch_add(1, Ordering::Relaxed);
    }

    /// Copies the counters.
    pub fn snapshot(&self) -> MetricsSnapshot {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        MetricsSnapshot {
            requests: self.requests.each_ref().map(load),
            bytes: self.bytes.each_ref().map(load),
            full_body_aborts: load(&self.full_body_aborts),
            single_range_fallbacks: load(&self.single_range_fallbacks),
            redirects_followed: load(&self.redirects_followed),
            retries: load(&self.retries),
            hedges: load(&self.hedges),
        }
    }
}
