//! What the Go-named metric families count of one layer, or of several
//! merged: taken from a mount's stats, and kept after unmount for the
//! overflow series ([`super::labels`]); rendered by `metrics::go`.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use rstargz_fs::histogram::{GO_MILLISECOND_BOUNDS, HistogramSnapshot};

use super::MountedStats;

/// What the Go-named families count of one layer (or of several merged).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LayerSample {
    /// Millisecond histograms by `operation_type`.
    pub millis: BTreeMap<&'static str, HistogramSnapshot>,
    /// Microsecond histograms by `operation_type`.
    pub micros: BTreeMap<&'static str, HistogramSnapshot>,
    /// `stargz_fs_operation_count` by `operation_type`.
    pub counts: BTreeMap<&'static str, u64>,
    /// `stargz_fs_bytes_served` by `operation_type`.
    pub bytes: BTreeMap<&'static str, u64>,
}

/// A histogram of one observation.
fn once(d: Duration) -> HistogramSnapshot {
    let mut h = HistogramSnapshot::empty(&GO_MILLISECOND_BOUNDS);
    h.observe(d);
    h
}

impl LayerSample {
    /// The counts of one mount.
    pub fn of(m: &MountedStats) -> Self {
        let open = m.layer.open_timings();
        let blob = m.blob.stats();
        let layer = m.layer.stats();
        let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        LayerSample {
            millis: BTreeMap::from([
                ("mount", once(m.record.mount_time)),
                ("remote_registry_get", blob.registry_get.snapshot()),
                ("stargz_header_get", blob.connect.snapshot()),
                ("stargz_footer_get", once(open.footer)),
                ("stargz_toc_get", once(open.toc)),
                ("stargz_toc_json_deserialize", once(open.deserialize)),
                ("background_fetch_download", blob.background_get.snapshot()),
            ]),
            micros: BTreeMap::from([
                ("read_on_demand", m.fuse.read_latency.snapshot()),
                ("node_readdir", m.fuse.readdir_latency.snapshot()),
            ]),
            counts: BTreeMap::from([
                ("on_demand_read_access_count", m.fuse.reads()),
                (
                    "on_demand_remote_registry_fetch_count",
                    load(&layer.on_demand_source_reads),
                ),
            ]),
            bytes: BTreeMap::from([
                ("on_demand_bytes_served", load(&layer.bytes_served)),
                (
                    "on_demand_bytes_fetched",
                    load(&layer.on_demand_source_bytes),
                ),
            ]),
        }
    }

    /// Adds `other`'s counts.
    pub fn merge(&mut self, other: &LayerSample) {
        for (into, from) in [
            (&mut self.millis, &other.millis),
            (&mut self.micros, &other.micros),
        ] {
            for (op, h) in from {
                match into.get_mut(op) {
                    Some(mine) => mine.merge(h),
                    None => {
                        into.insert(op, h.clone());
                    }
                }
            }
        }
        for (into, from) in [
            (&mut self.counts, &other.counts),
            (&mut self.bytes, &other.bytes),
        ] {
            for (op, n) in from {
                *into.entry(op).or_default() += n;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstargz_fs::histogram::GO_MICROSECOND_BOUNDS;

    #[test]
    fn samples_merge_by_operation() {
        let mut a = LayerSample::default();
        a.millis.insert("mount", once(Duration::from_millis(3)));
        a.counts.insert("on_demand_read_access_count", 2);
        let mut b = a.clone();
        b.bytes.insert("on_demand_bytes_served", 10);
        b.micros.insert(
            "read_on_demand",
            HistogramSnapshot::empty(&GO_MICROSECOND_BOUNDS),
        );
        a.merge(&b);
        assert_eq!(a.millis["mount"].count(), 2);
        assert_eq!(a.counts["on_demand_read_access_count"], 4);
        assert_eq!(a.bytes["on_demand_bytes_served"], 10);
        assert!(a.micros.contains_key("read_on_demand"));
    }
}
