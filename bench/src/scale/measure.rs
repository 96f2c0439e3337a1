//! One cell of the layers benchmark: a fresh daemon mounts N layers (in
//! images of up to 100) through its Snapshots socket as containerd does,
//! every file of every container root is read, and the daemon's threads,
//! memory, descriptors and RPC latencies are taken along the way.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use serde::Serialize;

use super::procstat::{self, Census, Sampler};
use crate::coldstart::procs::{self, Binaries, Snapshotter as Which};
use crate::remote_layer::{self, MountedImage, Snapshotter};
use crate::snapshot_ops::percentile_ms;

/// Mounts calls timed per N: spread over the container roots, at least
/// [`MIN_MOUNTS_PER_ROOT`] each.
const MOUNTS_CALLS: usize = 200;
const MIN_MOUNTS_PER_ROOT: usize = 20;
/// Default of [`CellInput::settle`]: let prefetch and background fetch of
/// the mounted layers run on.
pub const SETTLE: Duration = Duration::from_secs(5);
/// Default of [`CellInput::idle`]: longer than tokio (10 s) and Go keep an
/// idle thread around.
pub const IDLE: Duration = Duration::from_secs(15);

/// p50 and p99 of a series of calls, milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Latency {
    /// Calls timed.
    pub calls: usize,
    /// Median, ms.
    pub p50_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
    /// Slowest, ms.
    pub max_ms: f64,
}

impl Latency {
    /// The percentiles of `times`.
    pub fn of(mut times: Vec<Duration>) -> Latency {
        times.sort();
        Latency {
            calls: times.len(),
            p50_ms: percentile_ms(&times, 50),
            p99_ms: percentile_ms(&times, 99),
            max_ms: percentile_ms(&times, 100),
        }
    }
}

/// Figures of one daemon holding N mounted layers.
#[derive(Debug, Clone, Serialize)]
pub struct Cell {
    /// `rstargz` or `go`.
    pub daemon: String,
    /// Layers mounted.
    pub layers: usize,
    /// Container roots (one per image), each on a chain of up to 100 layers.
    pub roots: usize,
    /// Layers every mount succeeded for (all of them, or the run fails).
    pub mounted_layers: usize,
    /// 1-minute load average at the start and at the end of the cell.
    pub load_average: (f64, f64),
    /// Threads of the fresh daemon before any mount.
    pub threads_idle: usize,
    /// Peak threads while mounting and for a few seconds after (prefetch,
    /// background fetch).
    pub threads_peak_mount: usize,
    /// Peak threads while every file was read.
    pub threads_peak_read: usize,
    /// Threads once idle for 15 s after the reads.
    pub threads_steady: usize,
    /// Thread kinds at the highest peak.
    pub census_peak: Census,
    /// Thread kinds once steady.
    pub census_steady: Census,
    /// RSS of the fresh daemon, KiB.
    pub rss_idle_kib: u64,
    /// RSS with every layer mounted, a few seconds after the mounts, before reads, KiB.
    pub rss_mounted_kib: u64,
    /// RSS once idle after reading every file, KiB.
    pub rss_steady_kib: u64,
    /// Open descriptors of the fresh daemon.
    pub fds_idle: usize,
    /// Open descriptors once steady.
    pub fds_steady: usize,
    /// Seconds to mount every layer and root.
    pub mount_seconds: f64,
    /// `mount_seconds` per layer, ms.
    pub ms_per_layer: f64,
    /// Prepare of each layer (to its AlreadyExists).
    pub prepare: Latency,
    /// Mounts of the container roots right after the mounts, while
    /// prefetch and background fetch run.
    pub mounts_busy: Latency,
    /// Mounts of the container roots once idle.
    pub mounts_idle: Latency,
    /// Bytes read back from every file (checked against what was pushed).
    pub read_bytes: u64,
    /// Seconds the reads took.
    pub read_seconds: f64,
}

/// One cell's inputs.
pub struct CellInput<'a> {
    /// Which daemon.
    pub which: Which,
    /// Its binaries.
    pub bins: &'a Binaries,
    /// Images to mount (their layers add up to `layers`).
    pub images: &'a [String],
    /// Their layers in total.
    pub layers: usize,
    /// Bytes every file of them holds.
    pub content_bytes: u64,
    /// Scratch directory (wiped).
    pub dir: &'a Path,
    /// Wait after the mounts before the reads.
    pub settle: Duration,
    /// Wait after the reads before the steady figures.
    pub idle: Duration,
}

/// Name of `which` in reports.
pub fn daemon_name(which: Which) -> &'static str {
    match which {
        Which::Rstargz => "rstargz",
        Which::GoReference => "go",
    }
}

/// Times `per_root` Mounts calls of every root.
async fn time_mounts(
    client: &mut Snapshotter,
    mounted: &[MountedImage],
    per_root: usize,
) -> anyhow::Result<Vec<Duration>> {
    let mut times = Vec::new();
    for _ in 0..per_root {
        for m in mounted {
            times.push(client.time_mounts(&m.active).await?);
        }
    }
    Ok(times)
}

/// Reads every file under `dir`; the bytes read.
fn read_all(dir: &Path) -> std::io::Result<u64> {
    let mut bytes = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            bytes += read_all(&entry.path())?;
        } else {
            bytes += std::fs::read(entry.path())?.len() as u64;
        }
    }
    Ok(bytes)
}

/// Measures one cell with a fresh daemon.
pub async fn cell(input: &CellInput<'_>) -> anyhow::Result<Cell> {
    procs::clean(input.dir)?;
    std::fs::create_dir_all(input.dir)?;
    let load_start = procstat::load_average();
    let daemon = procs::start_snapshotter(input.which, input.bins, input.dir, true)?;
    let pid = daemon.guard.id();
    let idle = procstat::census(pid);
    let (rss_idle_kib, fds_idle) = (procstat::rss_kib(pid), procstat::fds(pid));

    let sampler = Sampler::start(pid);
    let started = Instant::now();
    let mut client = Snapshotter::connect(&daemon.socket).await?;
    let mut mounted = Vec::new();
    for (i, reference) in input.images.iter().enumerate() {
        let image = remote_layer::resolve(reference).await?;
        let at = input.dir.join(format!("root{i}"));
        let m = client
            .mount(&image, &format!("scale{i}"), &at)
            .await
            .with_context(|| format!("mounting {reference}"))?;
        mounted.push(m);
    }
    let mount_seconds = started.elapsed().as_secs_f64();
    let prepares = mounted
        .iter()
        .flat_map(|m| {
            m.prepare_ms
                .iter()
                .map(|ms| Duration::from_secs_f64(ms / 1e3))
        })
        .collect::<Vec<_>>();
    let mounted_layers = prepares.len();
    ensure!(
        mounted_layers == input.layers,
        "{} of {} layers mounted",
        mounted_layers,
        input.layers
    );
    let per_root = (MOUNTS_CALLS / mounted.len().max(1)).max(MIN_MOUNTS_PER_ROOT);
    let mounts_busy = Latency::of(time_mounts(&mut client, &mounted, per_root).await?);
    tokio::time::sleep(input.settle).await;
    let peak_mount = sampler.finish();
    let rss_mounted_kib = procstat::rss_kib(pid);

    let sampler = Sampler::start(pid);
    let roots: Vec<PathBuf> = mounted.iter().map(|m| m.dir.clone()).collect();
    let read_started = Instant::now();
    let read_bytes = tokio::task::spawn_blocking(move || -> std::io::Result<u64> {
        let mut bytes = 0;
        for r in &roots {
            bytes += read_all(r)?;
        }
        Ok(bytes)
    })
    .await??;
    let read_seconds = read_started.elapsed().as_secs_f64();
    let peak_read = sampler.finish();
    ensure!(
        read_bytes == input.content_bytes,
        "read {read_bytes} bytes from the roots, pushed {}",
        input.content_bytes
    );

    tokio::time::sleep(input.idle).await;
    let steady = procstat::census(pid);
    let (rss_steady_kib, fds_steady) = (procstat::rss_kib(pid), procstat::fds(pid));
    let mounts_idle = Latency::of(time_mounts(&mut client, &mounted, per_root).await?);
    for m in &mounted {
        client.unmount(m).await?;
    }
    drop(client);
    let mut guard = daemon.guard;
    guard.stop();
    let census_peak = if peak_read.total > peak_mount.total {
        peak_read.clone()
    } else {
        peak_mount.clone()
    };
    Ok(Cell {
        daemon: daemon_name(input.which).into(),
        layers: input.layers,
        roots: mounted.len(),
        mounted_layers,
        load_average: (load_start, procstat::load_average()),
        threads_idle: idle.total,
        threads_peak_mount: peak_mount.total,
        threads_peak_read: peak_read.total,
        threads_steady: steady.total,
        census_peak,
        census_steady: steady,
        rss_idle_kib,
        rss_mounted_kib,
        rss_steady_kib,
        fds_idle,
        fds_steady,
        mount_seconds,
        ms_per_layer: mount_seconds * 1e3 / input.layers.max(1) as f64,
        prepare: Latency::of(prepares),
        mounts_busy,
        mounts_idle,
        read_bytes,
        read_seconds,
    })
}
