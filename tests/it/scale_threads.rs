//! Threads of the daemon per mounted layer. The check: the daemon's
//! threads do not grow with the layers it mounts (one FUSE session serves
//! them all). The measurement (ignored by default; figures are printed,
//! never asserted):
//!
//! `RSTARGZ_SCALE_LAYERS` layers (default 100) of 100 small files each, in
//! images of at most 100 layers, are mounted through the Snapshots socket
//! the way containerd does, then every file is read. The daemon's thread
//! count is sampled every 2 ms: its peak while mounting (prefetch and
//! streaming of the small layers start at once), its peak while reading,
//! and the steady count once idle for longer than tokio keeps spare
//! blocking threads (10 s). `RSTARGZ_SCALE_BIN` names another daemon
//! binary to measure (e.g. one built from an older commit).
//!
//! `cargo test -p rstargz --features rstargz/system --test it
//! scale_threads -- --ignored --nocapture`

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::common::Daemon;
use rstargz_bench::remote_layer::{self, Snapshotter};
use rstargz_bench::snapshot_ops::percentile_ms;
use rstargz_fs::estargz::WriterOptions;
use rstargz_test_support::registry::TestRegistry;
use rstargz_test_support::{TestLayer, push_image, test_blob};

const FILES_PER_LAYER: usize = 100;
const LAYERS_PER_IMAGE: usize = 100;
/// Mounts calls timed per container root.
const MOUNTS_CALLS: usize = 20;

fn small_layer(seed: usize) -> TestLayer {
    layer_of(seed, FILES_PER_LAYER)
}

/// A layer of `files` small files under `l<seed>/`.
fn layer_of(seed: usize, files: usize) -> TestLayer {
    let mut b = tar::Builder::new(Vec::new());
    for f in 0..files {
        let data = test_blob(1024 + (f * 31 + seed) % 3072, (seed * 1000 + f) as u64);
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        b.append_data(&mut h, format!("l{seed}/f{f}"), data.as_slice())
            .unwrap();
    }
    TestLayer::estargz(&b.into_inner().unwrap(), &WriterOptions::default())
}

/// The daemon's thread count and, per thread name, how many.
fn threads(pid: u32) -> (usize, BTreeMap<String, usize>) {
    let mut names = BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return (0, names);
    };
    let mut total = 0;
    for t in tasks.flatten() {
        total += 1;
        let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        // fuser-0..3 and tokio's numbered names count as one kind each.
        let kind = comm.trim().trim_end_matches(|c: char| c.is_ascii_digit());
        *names.entry(kind.to_string()).or_default() += 1;
    }
    (total, names)
}

/// Resident memory (KiB) and open descriptors of `pid`.
fn rss_and_fds(pid: u32) -> (u64, usize) {
    let rss = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0);
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count());
    (rss, fds)
}

fn count(pid: u32) -> usize {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Threads:"))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Samples the thread count of `pid` until stopped; returns the peak and
/// the kinds at the peak.
struct Sampler {
    stop: Arc<AtomicBool>,
    handle: std::thread::JoinHandle<(usize, BTreeMap<String, usize>)>,
}

impl Sampler {
    fn start(pid: u32) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut peak = (0, BTreeMap::new());
            while !flag.load(Ordering::Relaxed) {
                if count(pid) > peak.0 {
                    peak = threads(pid);
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            peak
        });
        Sampler { stop, handle }
    }

    fn finish(self) -> (usize, BTreeMap<String, usize>) {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().unwrap()
    }
}

fn read_all(dir: &Path) -> u64 {
    let mut bytes = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_dir() {
            bytes += read_all(&entry.path());
        } else {
            bytes += std::fs::read(entry.path()).unwrap().len() as u64;
        }
    }
    bytes
}

/// FUSE threads of a thread census: the workers and fuser's joiner.
fn fuser_threads(kinds: &BTreeMap<String, usize>) -> usize {
    kinds
        .iter()
        .filter(|(k, _)| k.starts_with("fuser"))
        .map(|(_, n)| n)
        .sum()
}

/// Issue 18's bound on the daemon's threads at 1,000 layers, bursts included.
const MAX_THREADS: usize = 64;

/// Mounting 10 layers, then 90 more, leaves the daemon the same FUSE
/// threads (before the shared session: 2 more per layer), and its peak
/// thread count through both stays within issue 18's bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_threads_do_not_grow_with_mounted_layers() {
    let registry = TestRegistry::start().await;
    let (few, many) = (10, 90);
    let mut images = Vec::new();
    for (i, range) in [0..few, few..few + many].into_iter().enumerate() {
        let made: Vec<TestLayer> = range.map(|s| layer_of(s, 4)).collect();
        let reference = registry.reference(&format!("flat/image{i}"));
        push_image(&reference, &made).await;
        images.push(reference);
    }
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path());
    let pid = daemon.pid();
    let sampler = Sampler::start(pid);
    let mut client = Snapshotter::connect(&daemon.socket).await.unwrap();
    let mut mounted = Vec::new();
    let mut census = Vec::new();
    for (i, reference) in images.iter().enumerate() {
        let image = remote_layer::resolve(reference).await.unwrap();
        let at = dir.path().join(format!("root{i}"));
        mounted.push(
            client
                .mount(&image, &format!("flat{i}"), &at)
                .await
                .unwrap(),
        );
        census.push(threads(pid));
    }
    let (peak, kinds_at_peak) = sampler.finish();
    // Layers of both images are served, the first and the last alike.
    for (m, seed) in [
        (&mounted[0], 0),
        (&mounted[1], few),
        (&mounted[1], few + many - 1),
    ] {
        let file = m.dir.join(format!("l{seed}/f3"));
        assert!(
            !std::fs::read(&file).unwrap().is_empty(),
            "{}",
            file.display()
        );
    }
    let (at_few, at_many) = (&census[0].1, &census[1].1);
    assert!(fuser_threads(at_few) > 0, "{at_few:?}");
    assert_eq!(
        fuser_threads(at_many),
        fuser_threads(at_few),
        "FUSE threads at {few} layers: {at_few:?}; at {}: {at_many:?}",
        few + many
    );
    assert!(
        peak <= MAX_THREADS,
        "peak of {peak} threads: {kinds_at_peak:?}"
    );
    for m in &mounted {
        client.unmount(m).await.unwrap();
    }
    daemon.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: run with --ignored --nocapture"]
async fn scale_threads_per_mounted_layer() {
    let layers: usize = std::env::var("RSTARGZ_SCALE_LAYERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let registry = TestRegistry::start().await;
    let mut images = Vec::new();
    for (i, start) in (0..layers).step_by(LAYERS_PER_IMAGE).enumerate() {
        let end = (start + LAYERS_PER_IMAGE).min(layers);
        let made: Vec<TestLayer> = (start..end).map(small_layer).collect();
        let reference = registry.reference(&format!("scale/image{i}"));
        push_image(&reference, &made).await;
        images.push(reference);
    }
    let dir = tempfile::tempdir().unwrap();
    let daemon = match std::env::var_os("RSTARGZ_SCALE_BIN") {
        Some(bin) => Daemon::start_bin(&PathBuf::from(bin), dir.path(), &[]),
        None => Daemon::start(dir.path()),
    };
    let pid = daemon.pid();
    let (idle, _) = threads(pid);

    let sampler = Sampler::start(pid);
    let started = std::time::Instant::now();
    let mut client = Snapshotter::connect(&daemon.socket).await.unwrap();
    let mut mounted = Vec::new();
    for (i, reference) in images.iter().enumerate() {
        let image = remote_layer::resolve(reference).await.unwrap();
        let at = dir.path().join(format!("root{i}"));
        mounted.push(
            client
                .mount(&image, &format!("scale{i}"), &at)
                .await
                .unwrap(),
        );
    }
    let mount_secs = started.elapsed().as_secs_f64();
    // Time per layer's Prepare, and Mounts of each container root (which
    // checks every layer of its chain), as containerd calls them.
    let mut prepares: Vec<Duration> = mounted
        .iter()
        .flat_map(|m| {
            m.prepare_ms
                .iter()
                .map(|ms| Duration::from_secs_f64(ms / 1e3))
        })
        .collect();
    let mut mounts_calls = Vec::new();
    for m in &mounted {
        for _ in 0..MOUNTS_CALLS {
            mounts_calls.push(client.time_mounts(&m.active).await.unwrap());
        }
    }
    prepares.sort();
    mounts_calls.sort();
    let ms = |v: &[Duration], pct| percentile_ms(v, pct);
    // Prefetch and streaming of the small layers run on after the mounts.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (peak_mount, kinds_mount) = sampler.finish();

    let sampler = Sampler::start(pid);
    let roots: Vec<PathBuf> = mounted.iter().map(|m| m.dir.clone()).collect();
    let bytes = tokio::task::spawn_blocking(move || roots.iter().map(|r| read_all(r)).sum::<u64>())
        .await
        .unwrap();
    let (peak_read, kinds_read) = sampler.finish();

    // Longer than tokio keeps an idle blocking thread (10 s).
    tokio::time::sleep(Duration::from_secs(15)).await;
    let (steady, kinds_steady) = threads(pid);
    let (rss_kib, fds) = rss_and_fds(pid);
    let per_layer = (steady - idle) as f64 / layers as f64;
    eprintln!(
        "SCALE layers={layers} mount_s={mount_secs:.1} read_bytes={bytes} idle={idle} \
         peak_mount={peak_mount} peak_read={peak_read} steady={steady} \
         steady_per_layer={per_layer:.2} rss_mib={} fds={fds} \
         prepare_ms_p50={:.1} prepare_ms_p99={:.1} mounts_ms_p50={:.1} mounts_ms_p99={:.1}\n  \
         at mount peak: {kinds_mount:?}\n  \
         at read peak: {kinds_read:?}\n  steady: {kinds_steady:?}",
        rss_kib / 1024,
        ms(&prepares, 50),
        ms(&prepares, 99),
        ms(&mounts_calls, 50),
        ms(&mounts_calls, 99),
    );
    for m in &mounted {
        client.unmount(m).await.unwrap();
    }
    daemon.stop();
}
