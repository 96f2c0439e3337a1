//! What a drain run measured: the report's types and the figures derived
//! from them (medians, the floor, ratios), shared by the runner, the
//! markdown report and the plot.

use serde::Serialize;

use super::images::AppShape;
use crate::coldstart::floor::{MIN_ROUND_TRIPS, Needs};
use crate::coldstart::model::{LinkCase, Machine, Mode, median};
use crate::coldstart::probe::Probe;

/// Facts of one image.
#[derive(Debug, Clone, Serialize)]
pub struct AppFacts {
    /// Repository name.
    pub name: String,
    /// Compressed bytes of the plain image's layers.
    pub plain_bytes: u64,
    /// Compressed bytes of the eStargz image's layers.
    pub esgz_bytes: u64,
    /// What the workload needs (from the prioritized image).
    pub needs: Needs,
    /// Files the workload reads (its prioritized list).
    pub read_files: usize,
    /// The SHA-256 its workload prints.
    pub checksum: String,
}

/// One run of one mode: every pod started at once.
#[derive(Debug, Clone, Serialize)]
pub struct DrainSample {
    /// Mode.
    pub mode: Mode,
    /// Run number.
    pub run: usize,
    /// From the common start until the last workload finished, s.
    pub all_s: f64,
    /// Each pod's time from the common start to its workload's end, s
    /// (pod i runs image i).
    pub pods_s: Vec<f64>,
    /// Each pod's PullImage, s.
    pub pulls_s: Vec<f64>,
    /// Whether each workload printed its image's checksum.
    pub checksums_ok: Vec<bool>,
    /// Bytes from the registry in the window.
    pub bytes: u64,
    /// HTTP requests to the registry in the window.
    pub requests: u64,
    /// Overlayfs only: every pod started again (new sandboxes and
    /// workloads), all at once, with the images local and the page cache
    /// dropped, until the last workload ended, s.
    pub local_run_s: Option<f64>,
    /// The snapshotter daemon's peak RSS in the window (none for overlayfs).
    pub peak_rss_bytes: Option<u64>,
    /// Its RSS at the end of the window.
    pub end_rss_bytes: Option<u64>,
    /// Its thread count at the end of the window.
    pub end_threads: Option<u64>,
    /// What the snapshotter spent (CPU; rstargz's counters).
    pub probe: Option<Probe>,
    /// `/proc/loadavg` (1, 5, 15 min) when the run started: the machine is shared.
    pub load_avg: [f64; 3],
}

/// The whole measurement.
#[derive(Debug, Clone, Serialize)]
pub struct DrainReport {
    /// Machine.
    pub machine: Machine,
    /// The configuration's name.
    pub label: String,
    /// The link all pods share.
    pub link: LinkCase,
    /// Pods (and images).
    pub pods: usize,
    /// Runs per mode.
    pub runs: usize,
    /// Shape of each app layer.
    pub shape: AppShape,
    /// Images, pod order.
    pub images: Vec<AppFacts>,
    /// Every run.
    pub samples: Vec<DrainSample>,
}

/// Medians of one mode's runs.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct ModeSummary {
    /// Mode.
    pub mode: Mode,
    /// Runs.
    pub runs: usize,
    /// Until every workload finished, s.
    pub all_s: f64,
    /// The slowest pod, s.
    pub worst_pod_s: f64,
    /// The fastest pod, s.
    pub best_pod_s: f64,
    /// The mean pod, s.
    pub mean_pod_s: f64,
    /// Registry bytes.
    pub bytes: f64,
    /// Peak RSS of the snapshotter, bytes.
    pub peak_rss_bytes: Option<f64>,
}

impl DrainReport {
    /// The modes measured, in table order.
    pub fn modes(&self) -> Vec<Mode> {
        Mode::ALL
            .into_iter()
            .filter(|m| self.samples.iter().any(|s| s.mode == *m))
            .collect()
    }

    /// Medians over `mode`'s runs.
    pub fn summary(&self, mode: Mode) -> Option<ModeSummary> {
        let runs: Vec<&DrainSample> = self.samples.iter().filter(|s| s.mode == mode).collect();
        if runs.is_empty() {
            return None;
        }
        let of = |f: &dyn Fn(&DrainSample) -> f64| median(runs.iter().map(|s| f(s)).collect());
        let pods = |s: &DrainSample| s.pods_s.clone();
        let rss: Vec<f64> = runs
            .iter()
            .filter_map(|s| s.peak_rss_bytes.map(|b| b as f64))
            .collect();
        Some(ModeSummary {
            mode,
            runs: runs.len(),
            all_s: of(&|s| s.all_s),
            worst_pod_s: of(&|s| pods(s).into_iter().fold(0.0, f64::max)),
            best_pod_s: of(&|s| pods(s).into_iter().fold(f64::INFINITY, f64::min)),
            mean_pod_s: of(&|s| s.pods_s.iter().sum::<f64>() / s.pods_s.len().max(1) as f64),
            bytes: of(&|s| s.bytes as f64),
            peak_rss_bytes: (!rss.is_empty()).then(|| median(rss)),
        })
    }

    /// Bytes every workload needs, summed.
    pub fn needed_bytes(&self) -> u64 {
        self.images.iter().map(|f| f.needs.needed_bytes).sum()
    }

    /// The network part of the floor: the needed bytes of all pods over
    /// the shared bandwidth plus the round trips no start can avoid, s.
    pub fn network_floor_s(&self) -> f64 {
        let link = self.link.link();
        let transfer = if link.bytes_per_sec == 0 {
            0.0
        } else {
            self.needed_bytes() as f64 / link.bytes_per_sec as f64
        };
        transfer + (link.rtt * MIN_ROUND_TRIPS).as_secs_f64()
    }

    /// The local part of the floor: the median of the full pull's local runs, s.
    pub fn local_run_s(&self) -> Option<f64> {
        let v: Vec<f64> = self.samples.iter().filter_map(|s| s.local_run_s).collect();
        (!v.is_empty()).then(|| median(v))
    }

    /// The floor: network part plus local run (NaN without a full-pull run).
    pub fn floor_s(&self) -> f64 {
        self.network_floor_s() + self.local_run_s().unwrap_or(f64::NAN)
    }
}
