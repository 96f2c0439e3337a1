//! What a cold-start run measured: the report's types, shared by the
//! runner, the markdown report and the plots.

use serde::Serialize;

use super::converters::Converter;
use super::floor::Needs;
use super::images::Kind;
use super::procs::Snapshotter;
use rstargz_test_support::proxy::Link;

/// How an image is pulled and run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// containerd's overlayfs snapshotter, `ctr image pull` of the plain image.
    Overlayfs,
    /// rstargz, eStargz image without a prioritized list.
    Rstargz,
    /// rstargz, eStargz image with the recorded list.
    RstargzPrio,
    /// The Go reference, eStargz image without a list.
    Go,
    /// The Go reference, eStargz image with the recorded list.
    GoPrio,
}

impl Mode {
    /// Every mode, in table order.
    pub const ALL: [Mode; 5] = [
        Mode::Overlayfs,
        Mode::Rstargz,
        Mode::RstargzPrio,
        Mode::Go,
        Mode::GoPrio,
    ];

    /// Its label in tables and plots.
    pub fn label(self) -> &'static str {
        match self {
            Mode::Overlayfs => "overlayfs (full pull)",
            Mode::Rstargz => "rstargz",
            Mode::RstargzPrio => "rstargz + prio",
            Mode::Go => "Go stargz",
            Mode::GoPrio => "Go stargz + prio",
        }
    }

    /// The lazy snapshotter this mode runs (none for the full pull).
    pub(crate) fn snapshotter(self) -> Option<Snapshotter> {
        match self {
            Mode::Overlayfs => None,
            Mode::Rstargz | Mode::RstargzPrio => Some(Snapshotter::Rstargz),
            Mode::Go | Mode::GoPrio => Some(Snapshotter::GoReference),
        }
    }

    /// Whether this mode pulls an image with a prioritized list.
    pub fn prioritized(self) -> bool {
        matches!(self, Mode::RstargzPrio | Mode::GoPrio)
    }

    /// The same kind of image on the Go reference (itself for the others).
    pub fn go_counterpart(self) -> Mode {
        match self {
            Mode::Rstargz => Mode::Go,
            Mode::RstargzPrio => Mode::GoPrio,
            other => other,
        }
    }
}

/// A cell's name in logs: the mode, and the converter of its image.
pub fn cell_label(mode: Mode, converter: Option<Converter>) -> String {
    match converter {
        Some(c) => format!("{} on {}", mode.label(), c.name()),
        None => mode.label().to_string(),
    }
}

/// A link the runs go over.
#[derive(Debug, Clone, Serialize)]
pub struct LinkCase {
    /// Its name in tables.
    pub name: String,
    /// Round trip, ms.
    pub rtt_ms: u64,
    /// Bandwidth, Mbit/s (0: unlimited).
    pub rate_mbit: u64,
}

impl LinkCase {
    /// The shaper's link.
    pub fn link(&self) -> Link {
        if self.rtt_ms == 0 && self.rate_mbit == 0 {
            Link::LOOPBACK
        } else {
            Link::new(self.rtt_ms, self.rate_mbit)
        }
    }
}

/// One measured run.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    /// Image.
    pub image: Kind,
    /// Link name.
    pub link: String,
    /// Mode.
    pub mode: Mode,
    /// Who made the image (none: the plain image of the full pull).
    pub converter: Option<Converter>,
    /// Run number.
    pub run: usize,
    /// Pull (or rpull) wall time, s.
    pub pull_s: f64,
    /// Pull + create + run to the workload's end, s.
    pub total_s: f64,
    /// Bytes from the registry in the window.
    pub bytes: u64,
    /// HTTP requests to the registry in the window.
    pub requests: u64,
    /// TCP connections to the registry in the window.
    pub connections: u64,
    /// Overlayfs only: the same container again with the image local and
    /// the page cache dropped (the local part of the floor), s.
    pub local_run_s: Option<f64>,
    /// What the lazy snapshotter spent in the window (none for the full pull).
    pub probe: Option<super::probe::Probe>,
}

/// Facts of one image.
#[derive(Debug, Clone, Serialize)]
pub struct ImageFacts {
    /// Image.
    pub image: Kind,
    /// Layer count.
    pub layers: usize,
    /// Compressed bytes of the plain image's layers.
    pub plain_bytes: u64,
    /// Compressed bytes of the eStargz image's layers.
    pub esgz_bytes: u64,
    /// What the workload needs (from the prioritized image).
    pub needs: Needs,
    /// Files in the recorded prioritized list.
    pub prioritized_files: usize,
    /// The workload.
    pub command: Vec<String>,
    /// The images each converter made.
    pub converted: Vec<Converted>,
}

/// One converter's image of one image.
#[derive(Debug, Clone, Serialize)]
pub struct Converted {
    /// Who made it.
    pub converter: Converter,
    /// Its tag.
    pub tag: String,
    /// Its bytes: layers, chunks, and what its prioritized prefix holds.
    pub needs: Needs,
    /// Time the converter took (pull, convert, push), s.
    pub seconds: f64,
}

/// Machine and versions.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    /// CPU model.
    pub cpu: String,
    /// Cores.
    pub cores: usize,
    /// Memory, GiB.
    pub memory_gib: f64,
    /// Kernel release.
    pub kernel: String,
    /// containerd version.
    pub containerd: String,
    /// Go reference package version.
    pub go_reference: String,
    /// rstargz version and commit.
    pub rstargz: String,
}

/// The whole measurement.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Machine.
    pub machine: Machine,
    /// Links.
    pub links: Vec<LinkCase>,
    /// Runs per cell.
    pub runs: usize,
    /// Whether the lazy snapshotters ran with their default background fetch.
    pub background_fetch: bool,
    /// Who made the eStargz images, in table order.
    pub converters: Vec<Converter>,
    /// Whether pulls and runs went through containerd's CRI plugin.
    pub cri: bool,
    /// Images.
    pub images: Vec<ImageFacts>,
    /// Every run.
    pub samples: Vec<Sample>,
}

/// A link in words.
pub fn describe(link: &LinkCase) -> String {
    if link.rtt_ms == 0 && link.rate_mbit == 0 {
        "loopback".to_string()
    } else {
        format!(
            "a shaped link ({} ms RTT, {} Mbit/s)",
            link.rtt_ms, link.rate_mbit
        )
    }
}

/// The median of `v` (NaN when empty).
pub fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}
