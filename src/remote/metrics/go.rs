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
//! as [`crate::series::labels`] says.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use rstargz_fs::histogram::HistogramSnapshot;

use super::text::Exposition;
use crate::mounts::MountedStats;
use crate::series::labels::{LayerLabel, OVERFLOW_LAYER};
use crate::series::sample::LayerSample;
use crate::stargz::StargzFs;

/// The `layer` value Go gives measurements of no particular layer (the
/// digest of the empty string).
pub const NO_LAYER: &str =
    "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

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

    #[test]
    fn no_layer_is_the_digest_of_nothing() {
        assert_eq!(NO_LAYER, rstargz_fs::estargz::Digest::of(b"").to_string());
    }
}
