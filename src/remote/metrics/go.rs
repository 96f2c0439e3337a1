//! The Go stargz-snapshotter's metric families (`fs/metrics/common` and
//! `fs/metrics/layer`), with its names, label names, types, units and
//! buckets, so dashboards and alerts built on it keep working:
//!
//! - `stargz_fs_operation_duration_milliseconds` and
//!   `stargz_fs_operation_duration_microseconds` (histograms,
//!   `operation_type`, `layer`);
//! - `stargz_fs_operation_count` (counter) and `stargz_fs_bytes_served`
//!   (gauge), same labels;
//! - `stargz_fs_layer_fetched_size_bytes`, `…_prefetch_size_bytes`,
//!   `…_size_bytes` (counters, `digest`, `mountpoint`).
//!
//! What each operation measures here is in the README. Series are bounded
//! as [`super::layers`] says.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use rstargz_fs::histogram::{GO_MILLISECOND_BOUNDS, HistogramSnapshot};

use super::layers::{LayerLabel, OVERFLOW_LAYER};
use super::text::Exposition;
use crate::mounts::MountedStats;
use crate::stargz::StargzFs;

/// The `layer` value Go gives measurements of no particular layer (the
/// digest of the empty string).
pub const NO_LAYER: &str =
    "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

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

/// The labels of an operation's series, in Go's (sorted) order.
fn labels<'a>(layer: &'a str, op: &'a str) -> [(&'static str, &'a str); 2] {
    [("layer", layer), ("operation_type", op)]
}

const MILLIS: &str = "stargz_fs_operation_duration_milliseconds";
const MICROS: &str = "stargz_fs_operation_duration_microseconds";
const COUNT: &str = "stargz_fs_operation_count";
const BYTES: &str = "stargz_fs_bytes_served";

/// Writes the Go-named families for the mounts `layers`.
pub fn render(fs: &StargzFs, layers: &[MountedStats], out: &mut Exposition) {
    let series = fs.go_series();
    let mut by_layer: BTreeMap<&str, LayerSample> = BTreeMap::new();
    for m in layers {
        by_layer
            .entry(m.record.layer_label())
            .or_default()
            .merge(&LayerSample::of(m));
    }
    let retired = series.retired_overflow();
    if retired != LayerSample::default() {
        by_layer.entry(OVERFLOW_LAYER).or_default().merge(&retired);
    }

    type Histograms = fn(&LayerSample) -> &BTreeMap<&'static str, HistogramSnapshot>;
    let histograms: [(&str, &str, Duration, Histograms); 2] = [
        (MILLIS, "milliseconds", Duration::from_millis(1), |s| {
            &s.millis
        }),
        (MICROS, "microseconds", Duration::from_micros(1), |s| {
            &s.micros
        }),
    ];
    for (name, unit_name, unit, pick) in histograms {
        out.family(
            name,
            "histogram",
            &format!("Latency in {unit_name} of stargz snapshotter operations, by operation type and layer."),
        );
        let checks = series.check_latency();
        if name == MILLIS && checks.count() > 0 {
            let no_layer = labels(NO_LAYER, "all_prefetches_completed");
            out.histogram(name, &no_layer, &checks, unit);
        }
        for (layer, sample) in &by_layer {
            for (op, h) in pick(sample).iter().filter(|(_, h)| h.count() > 0) {
                out.histogram(name, &labels(layer, op), h, unit);
            }
        }
    }
    type Values = fn(&LayerSample) -> &BTreeMap<&'static str, u64>;
    let values: [(&str, &str, &str, Values); 2] = [
        (COUNT, "counter", "Count", |s| &s.counts),
        (BYTES, "gauge", "Bytes served", |s| &s.bytes),
    ];
    for (name, kind, what, pick) in values {
        out.family(
            name,
            kind,
            &format!("{what} of stargz snapshotter operations, by operation type and layer."),
        );
        for (layer, sample) in &by_layer {
            for (op, n) in pick(sample).iter().filter(|(_, n)| **n > 0) {
                out.sample(name, &labels(layer, op), n);
            }
        }
    }
    render_layer_sizes(layers, out);
}

/// `stargz_fs_layer_*_bytes` of each named mount (overflow mounts have no
/// series of their own: a sum over them would go down as they unmount).
fn render_layer_sizes(layers: &[MountedStats], out: &mut Exposition) {
    let mut named: Vec<&MountedStats> = layers
        .iter()
        .filter(|m| m.record.label == LayerLabel::Own)
        .collect();
    named.sort_by(|a, b| a.mountpoint.cmp(&b.mountpoint));
    type Size = fn(&MountedStats) -> u64;
    let families: [(&str, &str, Size); 3] = [
        (
            "stargz_fs_layer_fetched_size_bytes",
            "Total fetched size of the layer",
            |m| m.blob.stats().fetched_bytes.load(Ordering::Relaxed),
        ),
        (
            "stargz_fs_layer_prefetch_size_bytes",
            "Total prefetched size of the layer",
            |m| m.record.prefetched_bytes.load(Ordering::Relaxed),
        ),
        (
            "stargz_fs_layer_size_bytes",
            "Total size of the layer",
            |m| m.layer.blob_size(),
        ),
    ];
    for (name, help, value) in families {
        out.family(name, "counter", help);
        for m in &named {
            let mountpoint = m.mountpoint.to_string_lossy();
            out.sample(
                name,
                &[("digest", &m.record.digest), ("mountpoint", &mountpoint)],
                value(m),
            );
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

    #[test]
    fn no_layer_is_the_digest_of_nothing() {
        assert_eq!(NO_LAYER, rstargz_fs::estargz::Digest::of(b"").to_string());
    }
}
