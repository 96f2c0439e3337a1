//! `ctr-remote image rpull` of one many-layer image through a private
//! containerd on each daemon, fresh every run (daemon, containerd and
//! their roots), the daemons taking turns; the median of the runs.

use std::path::Path;
use std::time::Instant;

use serde::Serialize;

use super::measure::daemon_name;
use super::procstat;
use crate::coldstart::procs::{self, Binaries, Containerd, Snapshotter as Which};

/// The rpull figures of one daemon.
#[derive(Debug, Clone, Serialize)]
pub struct Rpull {
    /// `rstargz` or `go`.
    pub daemon: String,
    /// Layers of the image.
    pub layers: usize,
    /// Seconds of every run, in order.
    pub seconds: Vec<f64>,
    /// Their median.
    pub median_s: f64,
    /// Daemon threads right after each pull.
    pub threads_after: Vec<usize>,
    /// 1-minute load average before each run.
    pub load_average: Vec<f64>,
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    match s.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => s[n / 2],
        n => (s[n / 2 - 1] + s[n / 2]) / 2.0,
    }
}

/// One fresh pull of `image` on `which`: seconds and the daemon's threads after.
fn once(which: Which, bins: &Binaries, image: &str, dir: &Path) -> anyhow::Result<(f64, usize)> {
    procs::clean(dir)?;
    std::fs::create_dir_all(dir)?;
    let mut daemon = procs::start_snapshotter(which, bins, dir, true)?;
    let ctrd = Containerd::start(&dir.join("containerd"), &[(which, daemon.socket.clone())])?;
    let started = Instant::now();
    let pulled = ctrd.tool(
        "ctr-remote",
        &[
            "image",
            "rpull",
            "--plain-http",
            "--snapshotter",
            which.plugin(),
            image,
        ],
    );
    let seconds = started.elapsed().as_secs_f64();
    let threads = procstat::threads(daemon.guard.id());
    // Removing the image and its snapshots unmounts the layers, so the
    // daemon's fd holder has nothing left to keep and exits with it.
    let removed = ctrd.tool("ctr", &["image", "rm", "--sync", image]);
    ctrd.stop();
    daemon.guard.stop();
    procs::clean(dir)?;
    pulled?;
    removed?;
    Ok((seconds, threads))
}

/// `runs` pulls of `image` (of `layers` layers) per daemon, taking turns.
pub fn compare(
    bins: &Binaries,
    image: &str,
    layers: usize,
    runs: usize,
    dir: &Path,
) -> anyhow::Result<Vec<Rpull>> {
    let mut out: Vec<Rpull> = [Which::Rstargz, Which::GoReference]
        .iter()
        .map(|w| Rpull {
            daemon: daemon_name(*w).into(),
            layers,
            seconds: Vec::new(),
            median_s: 0.0,
            threads_after: Vec::new(),
            load_average: Vec::new(),
        })
        .collect();
    for _ in 0..runs {
        for (which, r) in [Which::Rstargz, Which::GoReference]
            .into_iter()
            .zip(&mut out)
        {
            r.load_average.push(procstat::load_average());
            let (s, t) = once(which, bins, image, &dir.join(which.plugin()))?;
            r.seconds.push(s);
            r.threads_after.push(t);
        }
    }
    for r in &mut out {
        r.median_s = median(&r.seconds);
    }
    Ok(out)
}
