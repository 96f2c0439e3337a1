//! Bounding the per-layer series of the Go-named metrics. A node with
//! thousands of layers must not export thousands of label values, so:
//!
//! - a layer's series exist while it is mounted and go when it is
//!   unmounted (as the Go reference's layer metrics do);
//! - at most `metrics_max_layer_labels` layers are named at once; a layer
//!   mounted while that many are named is counted under
//!   `layer="overflow"` for the whole life of its mount, and what it
//!   counted stays in that series after it is unmounted, so the overflow
//!   series never goes backwards.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use rstargz_fs::histogram::{GO_MILLISECOND_BOUNDS, HistogramSnapshot, LatencyHistogram};

use super::MountedStats;
use super::sample::LayerSample;

/// The `layer` label value of layers beyond the bound.
pub const OVERFLOW_LAYER: &str = "overflow";

/// How a mount's series are labelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerLabel {
    /// By the layer's digest.
    Own,
    /// As [`OVERFLOW_LAYER`].
    Overflow,
}

/// Which layers are named now (digest → mounts of it), at most `max`.
#[derive(Debug)]
pub struct LayerLabels {
    max: usize,
    named: Mutex<HashMap<String, usize>>,
}

impl LayerLabels {
    /// At most `max` named layers (at least one).
    pub fn new(max: usize) -> Self {
        LayerLabels {
            max: max.max(1),
            named: Mutex::new(HashMap::new()),
        }
    }

    /// The label of a new mount of `digest`: its own when the layer is
    /// named already (another mount of it) or there is room.
    pub fn assign(&self, digest: &str) -> LayerLabel {
        let Ok(mut named) = self.named.lock() else {
            return LayerLabel::Overflow;
        };
        if let Some(mounts) = named.get_mut(digest) {
            *mounts += 1;
            return LayerLabel::Own;
        }
        if named.len() < self.max {
            named.insert(digest.to_string(), 1);
            return LayerLabel::Own;
        }
        LayerLabel::Overflow
    }

    /// A mount labelled `label` is gone; its layer's name is freed with its
    /// last mount.
    pub fn release(&self, digest: &str, label: LayerLabel) {
        if label == LayerLabel::Overflow {
            return;
        }
        if let Ok(mut named) = self.named.lock()
            && let Some(mounts) = named.get_mut(digest)
        {
            *mounts -= 1;
            if *mounts == 0 {
                named.remove(digest);
            }
        }
    }

    /// Layers named now.
    pub fn named(&self) -> usize {
        self.named.lock().map_or(0, |n| n.len())
    }
}

/// What the Go-named metrics keep of one mount beyond its layer's, blob's
/// and FUSE counters.
#[derive(Debug)]
pub struct MountRecord {
    /// The layer's digest.
    pub digest: String,
    /// How its series are labelled.
    pub label: LayerLabel,
    /// How long the mount took (resolve, open, FUSE mount).
    pub mount_time: Duration,
    /// Compressed bytes prefetched, once the prefetch is done.
    pub prefetched_bytes: AtomicU64,
}

impl MountRecord {
    /// The `layer` label value of its series.
    pub fn layer_label(&self) -> &str {
        match self.label {
            LayerLabel::Own => &self.digest,
            LayerLabel::Overflow => OVERFLOW_LAYER,
        }
    }
}

/// The daemon-wide state of the Go-named metrics.
#[derive(Debug)]
pub struct GoSeries {
    labels: LayerLabels,
    /// What unmounted overflow mounts counted.
    retired_overflow: Mutex<LayerSample>,
    /// How long each Check took (Go's `all_prefetches_completed`, the time a
    /// container start waits on the snapshotter).
    check_latency: LatencyHistogram,
}

impl GoSeries {
    /// At most `max_layer_labels` layers named at once.
    pub fn new(max_layer_labels: usize) -> Self {
        GoSeries {
            labels: LayerLabels::new(max_layer_labels),
            retired_overflow: Mutex::new(LayerSample::default()),
            check_latency: LatencyHistogram::new(&GO_MILLISECOND_BOUNDS),
        }
    }

    /// The record of a new mount of `digest` that took `mount_time`.
    pub fn record_mount(&self, digest: &str, mount_time: Duration) -> MountRecord {
        MountRecord {
            digest: digest.to_string(),
            label: self.labels.assign(digest),
            mount_time,
            prefetched_bytes: AtomicU64::new(0),
        }
    }

    /// A mount is gone: its name is freed, and an overflow mount's counts
    /// stay in the overflow series.
    pub fn retire(&self, mount: &MountedStats) {
        let record = &mount.record;
        self.labels.release(&record.digest, record.label);
        if record.label == LayerLabel::Overflow
            && let Ok(mut retired) = self.retired_overflow.lock()
        {
            retired.merge(&LayerSample::of(mount));
        }
    }

    /// Counts one Check that took `d`.
    pub fn observe_check(&self, d: Duration) {
        self.check_latency.observe(d);
    }

    /// The Check latencies so far.
    pub fn check_latency(&self) -> HistogramSnapshot {
        self.check_latency.snapshot()
    }

    /// What unmounted overflow mounts counted.
    pub fn retired_overflow(&self) -> LayerSample {
        self.retired_overflow
            .lock()
            .map(|s| s.clone())
            .unwrap_or_default()
    }

    /// Layers named now.
    pub fn named_layers(&self) -> usize {
        self.labels.named()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_beyond_the_bound_share_the_overflow_label_for_their_whole_mount() {
        let labels = LayerLabels::new(2);
        assert_eq!(labels.assign("a"), LayerLabel::Own);
        assert_eq!(labels.assign("b"), LayerLabel::Own);
        assert_eq!(labels.assign("c"), LayerLabel::Overflow);
        // A second mount of a named layer keeps its name.
        assert_eq!(labels.assign("a"), LayerLabel::Own);
        assert_eq!(labels.named(), 2);
        // The name goes with the layer's last mount, and a later layer
        // takes the room; overflow mounts free nothing.
        labels.release("a", LayerLabel::Own);
        assert_eq!(labels.assign("d"), LayerLabel::Overflow);
        labels.release("c", LayerLabel::Overflow);
        assert_eq!(labels.assign("d"), LayerLabel::Overflow);
        labels.release("a", LayerLabel::Own);
        assert_eq!(labels.named(), 1);
        assert_eq!(labels.assign("d"), LayerLabel::Own);
        // Never more than the bound, whatever the churn.
        for i in 0..1000 {
            let _ = labels.assign(&format!("x{i}"));
        }
        assert_eq!(labels.named(), 2);
        assert_eq!(LayerLabels::new(0).assign("a"), LayerLabel::Own);
    }

    #[test]
    fn the_label_value_is_the_digest_or_overflow() {
        let series = GoSeries::new(1);
        let own = series.record_mount("sha256:aa", Duration::from_millis(3));
        let over = series.record_mount("sha256:bb", Duration::from_millis(3));
        assert_eq!(own.layer_label(), "sha256:aa");
        assert_eq!(over.layer_label(), OVERFLOW_LAYER);
        assert_eq!(series.named_layers(), 1);
    }
}
