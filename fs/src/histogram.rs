//! Lock-free latency histograms with fixed bucket bounds, for the daemon's
//! Prometheus metrics: recording is one atomic add per observation on the
//! hot path (FUSE reads, registry requests); reading takes a
//! [`HistogramSnapshot`] that can be merged with others of the same bounds.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Bucket bounds of our own FUSE read latency (`rstargz_fuse_async_read_seconds`).
pub const READ_LATENCY_BOUNDS: [Duration; 8] = [
    Duration::from_millis(1),
    Duration::from_millis(5),
    Duration::from_millis(10),
    Duration::from_millis(50),
    Duration::from_millis(100),
    Duration::from_millis(500),
    Duration::from_secs(1),
    Duration::from_secs(5),
];

/// The Go stargz-snapshotter's millisecond buckets
/// (`stargz_fs_operation_duration_milliseconds`): 1, 2, 4 … 16384 ms.
pub const GO_MILLISECOND_BOUNDS: [Duration; 15] = powers_of_two(Duration::from_millis(1));

/// The Go stargz-snapshotter's microsecond buckets
/// (`stargz_fs_operation_duration_microseconds`): 1, 2, 4 … 1024 µs.
pub const GO_MICROSECOND_BOUNDS: [Duration; 11] = powers_of_two(Duration::from_micros(1));

/// `unit`, 2 × `unit`, 4 × `unit` … (N bounds).
const fn powers_of_two<const N: usize>(unit: Duration) -> [Duration; N] {
    let mut out = [Duration::ZERO; N];
    let mut i = 0;
    while i < N {
        out[i] = Duration::from_nanos((unit.as_nanos() as u64) << i);
        i += 1;
    }
    out
}

/// The bucket of `d`: the first bound at least `d`, else the one past them.
fn slot_of(bounds: &[Duration], d: Duration) -> usize {
    bounds.iter().position(|b| d <= *b).unwrap_or(bounds.len())
}

/// Observations counted per bucket (`value <= bound`, as Prometheus' `le`).
#[derive(Debug)]
pub struct LatencyHistogram {
    bounds: &'static [Duration],
    /// One slot per bound plus one for larger values; not cumulative.
    counts: Box<[AtomicU64]>,
    sum_nanos: AtomicU64,
}

impl LatencyHistogram {
    /// An empty histogram over `bounds` (ascending).
    pub fn new(bounds: &'static [Duration]) -> Self {
        LatencyHistogram {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_nanos: AtomicU64::new(0),
        }
    }

    /// Counts one observation of `d`.
    pub fn observe(&self, d: Duration) {
        self.counts[slot_of(self.bounds, d)].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// A copy of the counts.
    pub fn snapshot(&self) -> HistogramSnapshot {
        HistogramSnapshot {
            bounds: self.bounds,
            counts: self
                .counts
                .iter()
                .map(|c| c.load(Ordering::Relaxed))
                .collect(),
            sum_nanos: self.sum_nanos.load(Ordering::Relaxed),
        }
    }

    /// Adds the observations of `other` (same bounds; others are ignored),
    /// so that totals kept past a mount's end never go backwards.
    pub fn absorb(&self, other: &LatencyHistogram) {
        if self.bounds != other.bounds {
            return;
        }
        for (to, from) in self.counts.iter().zip(other.counts.iter()) {
            to.fetch_add(from.load(Ordering::Relaxed), Ordering::Relaxed);
        }
        self.sum_nanos
            .fetch_add(other.sum_nanos.load(Ordering::Relaxed), Ordering::Relaxed);
    }
}

/// A point-in-time copy of a [`LatencyHistogram`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistogramSnapshot {
    /// The bucket bounds.
    pub bounds: &'static [Duration],
    /// Observations per bucket (not cumulative); the last slot counts
    /// values above every bound.
    pub counts: Vec<u64>,
    /// Sum of every observation, in nanoseconds.
    pub sum_nanos: u64,
}

impl HistogramSnapshot {
    /// No observations over `bounds`.
    pub fn empty(bounds: &'static [Duration]) -> Self {
        HistogramSnapshot {
            bounds,
            counts: vec![0; bounds.len() + 1],
            sum_nanos: 0,
        }
    }

    /// Counts one observation of `d` (a copy being built, not shared).
    pub fn observe(&mut self, d: Duration) {
        self.counts[slot_of(self.bounds, d)] += 1;
        self.sum_nanos += u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
    }

    /// Observations in all.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Adds `other`'s observations (same bounds; others are ignored).
    pub fn merge(&mut self, other: &HistogramSnapshot) {
        if self.bounds != other.bounds {
            return;
        }
        for (to, from) in self.counts.iter_mut().zip(&other.counts) {
            *to += from;
        }
        self.sum_nanos += other.sum_nanos;
    }

    /// `(bound, observations <= bound)` for every bound, as Prometheus'
    /// cumulative `_bucket{le}` samples (`+Inf` is [`Self::count`]).
    pub fn cumulative(&self) -> Vec<(Duration, u64)> {
        let mut total = 0;
        self.bounds
            .iter()
            .zip(&self.counts)
            .map(|(b, c)| {
                total += c;
                (*b, total)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_bounds_are_the_references() {
        let ms: Vec<u128> = GO_MILLISECOND_BOUNDS
            .iter()
            .map(Duration::as_millis)
            .collect();
        assert_eq!(
            ms,
            [
                1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384
            ]
        );
        let us: Vec<u128> = GO_MICROSECOND_BOUNDS
            .iter()
            .map(Duration::as_micros)
            .collect();
        assert_eq!(us, [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024]);
    }

    #[test]
    fn observations_land_in_le_buckets_and_merge() {
        let h = LatencyHistogram::new(&GO_MILLISECOND_BOUNDS);
        h.observe(Duration::from_millis(1)); // le=1 (inclusive)
        h.observe(Duration::from_micros(1500)); // le=2
        h.observe(Duration::from_secs(60)); // above every bound
        let s = h.snapshot();
        assert_eq!(s.count(), 3);
        let cumulative = s.cumulative();
        assert_eq!(cumulative[0], (Duration::from_millis(1), 1));
        assert_eq!(cumulative[1], (Duration::from_millis(2), 2));
        assert_eq!(cumulative.last().map(|c| c.1), Some(2));
        assert_eq!(s.sum_nanos, 60_002_500_000);

        let other = LatencyHistogram::new(&GO_MILLISECOND_BOUNDS);
        other.observe(Duration::from_millis(3));
        h.absorb(&other);
        let mut merged = s.clone();
        merged.merge(&other.snapshot());
        assert_eq!(h.snapshot(), merged);
        assert_eq!(merged.count(), 4);
        let mut built = HistogramSnapshot::empty(&GO_MILLISECOND_BOUNDS);
        built.observe(Duration::from_millis(3));
        assert_eq!(built, other.snapshot());

        // Different bounds never mix.
        let us = LatencyHistogram::new(&GO_MICROSECOND_BOUNDS);
        us.observe(Duration::from_micros(3));
        merged.merge(&us.snapshot());
        assert_eq!(merged.count(), 4);
    }
}
