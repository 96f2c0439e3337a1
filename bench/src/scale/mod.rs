//! Issue 18's "layers" part: N = 10, 100, 1,000 small eStargz layers in a
//! local registry, mounted through each daemon's Snapshots socket the way
//! containerd does (Prepare with the remote-snapshot labels answered by
//! AlreadyExists, then a container root's Prepare and Mounts), rstargz
//! and the Go reference side by side in the same run, each fresh per N
//! with its default config; then `ctr-remote image rpull` of a 100-layer
//! image through a private containerd on each. Writes `report.json`,
//! `report.md` and PNG plots.

pub mod layers;
pub mod measure;
pub mod plot;
pub mod procstat;
pub mod report;
pub mod rpull;

use std::path::PathBuf;

use anyhow::Context;
use serde::Serialize;

use crate::coldstart::procs::{self, Binaries, Snapshotter as Which};
use measure::{Cell, CellInput};

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Layer counts to mount, ascending.
    pub counts: Vec<usize>,
    /// The Go reference mounts at most this many layers (it is skipped,
    /// and the skip reported, above).
    pub go_max_layers: usize,
    /// Files per mounted layer.
    pub files_per_layer: usize,
    /// Layers of the rpull image (0: no rpull).
    pub rpull_layers: usize,
    /// Files per layer of the rpull image.
    pub rpull_files: usize,
    /// rpull runs per daemon.
    pub rpull_runs: usize,
    /// The daemons.
    pub bins: Binaries,
    /// Wait after the mounts before the reads ([`measure::SETTLE`]).
    pub settle: std::time::Duration,
    /// Wait after the reads before the steady figures ([`measure::IDLE`]).
    pub idle: std::time::Duration,
    /// Scratch directory (wiped).
    pub work: PathBuf,
    /// Where the report goes.
    pub out: PathBuf,
}

/// Everything one run measured.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Cores of the machine.
    pub cores: usize,
    /// Kernel release.
    pub kernel: String,
    /// Files per mounted layer.
    pub files_per_layer: usize,
    /// Layer counts measured.
    pub counts: Vec<usize>,
    /// One per N and daemon, in run order.
    pub cells: Vec<Cell>,
    /// Counts the Go reference was not run at, and why.
    pub go_skipped: Vec<(usize, String)>,
    /// rpull of a many-layer image per daemon.
    pub rpull: Vec<rpull::Rpull>,
    /// Seconds the whole run took.
    pub seconds: f64,
}

impl Report {
    /// The cell of `daemon` at `layers`.
    pub fn cell(&self, daemon: &str, layers: usize) -> Option<&Cell> {
        self.cells
            .iter()
            .find(|c| c.daemon == daemon && c.layers == layers)
    }
}

fn free_addr() -> anyhow::Result<std::net::SocketAddr> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?)
}

fn kernel() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// Runs the benchmark; writes the report and plots under `opts.out`.
pub async fn run(opts: &Options) -> anyhow::Result<Report> {
    let started = std::time::Instant::now();
    procs::clean(&opts.work)?;
    std::fs::create_dir_all(&opts.out)?;
    let addr = free_addr()?;
    let mut registry = procs::start_registry(&opts.work.join("registry"), addr)?;
    let host = addr.to_string();
    let most = opts.counts.iter().copied().max().unwrap_or(0);
    let files = opts.files_per_layer;
    // Whole images of 100 serve every N that is a multiple of 100; others
    // get their own image of the same layers.
    let shared = layers::publish(
        &host,
        "scale/image",
        0..most,
        files,
        layers::LAYERS_PER_IMAGE,
    )
    .await?;
    let mut cells = Vec::new();
    let mut go_skipped = Vec::new();
    for &n in &opts.counts {
        let images = if n % layers::LAYERS_PER_IMAGE == 0 {
            shared[..n / layers::LAYERS_PER_IMAGE].to_vec()
        } else {
            layers::publish(
                &host,
                &format!("scale/n{n}-image"),
                0..n,
                files,
                layers::LAYERS_PER_IMAGE,
            )
            .await?
        };
        for which in [Which::Rstargz, Which::GoReference] {
            let name = measure::daemon_name(which);
            if which == Which::GoReference && n > opts.go_max_layers {
                go_skipped.push((n, format!("above --go-max-layers {}", opts.go_max_layers)));
                continue;
            }
            eprintln!("scale-layers: {name} at N = {n}");
            let input = CellInput {
                which,
                bins: &opts.bins,
                images: &images,
                layers: n,
                content_bytes: layers::content_bytes(0..n, files),
                dir: &opts.work.join(format!("{name}-{n}")),
                settle: opts.settle,
                idle: opts.idle,
            };
            let cell = measure::cell(&input)
                .await
                .with_context(|| format!("{name} at N = {n}"))?;
            eprintln!("{}", serde_json::to_string(&cell)?);
            cells.push(cell);
            procs::clean(input.dir)?;
        }
    }
    let mut rpulled = Vec::new();
    if opts.rpull_layers > 0 {
        let seeds = 100_000..100_000 + opts.rpull_layers;
        let image = layers::publish(
            &host,
            "scale/pull",
            seeds,
            opts.rpull_files,
            opts.rpull_layers,
        )
        .await?;
        let image = image.first().context("no rpull image was published")?;
        eprintln!("scale-layers: rpull of {image}");
        rpulled = rpull::compare(
            &opts.bins,
            image,
            opts.rpull_layers,
            opts.rpull_runs,
            &opts.work.join("rpull"),
        )?;
    }
    registry.stop();
    let report = Report {
        cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
        kernel: kernel(),
        files_per_layer: files,
        counts: opts.counts.clone(),
        cells,
        go_skipped,
        rpull: rpulled,
        seconds: started.elapsed().as_secs_f64(),
    };
    std::fs::write(
        opts.out.join("report.json"),
        serde_json::to_vec_pretty(&report)?,
    )?;
    std::fs::write(opts.out.join("report.md"), report::markdown(&report))?;
    plot::layers(&report, &opts.out.join("scale-layers.png"))?;
    procs::clean(&opts.work)?;
    Ok(report)
}
