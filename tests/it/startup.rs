//! Start-up with remote snapshots and the registry down (issue 18): the
//! daemon restores its layers from what it saved of them, serves its socket
//! without a single registry request before, reads what was cached at once,
//! and the layers read correctly once the registry is back.
//!
//! The measurement (ignored by default; figures printed, never asserted):
//! `RSTARGZ_STARTUP_LAYERS` (default 1,000) remote snapshots, then the time
//! from exec to the socket answering with the registry down, after a
//! restart with live hand-over (SIGTERM) and after a full stop (SIGINT:
//! every layer mounted afresh). `RSTARGZ_STARTUP_BIN` names another daemon
//! binary (e.g. a release build).
//!
//! `cargo test -p rstargz --features rstargz/system --test it
//! startup::startup_with_many_remote_snapshots -- --ignored --nocapture`

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::common::{Daemon, stat};
use rstargz_bench::remote_layer::{self, MountedImage, Snapshotter};
use rstargz_fs::estargz::WriterOptions;
use rstargz_test_support::proxy::{Fault, FaultProxy};
use rstargz_test_support::registry::TestRegistry;
use rstargz_test_support::{TestLayer, push_image, test_blob};

/// Files per layer: small layers, so many of them push and mount quickly.
const FILES: usize = 4;
const LAYERS_PER_IMAGE: usize = 100;

fn content(seed: usize, f: usize) -> Vec<u8> {
    test_blob(1024 + (f * 31 + seed) % 3072, (seed * 1000 + f) as u64)
}

/// A layer of `FILES` small files under `l<seed>/`.
fn layer(seed: usize) -> TestLayer {
    let mut b = tar::Builder::new(Vec::new());
    for f in 0..FILES {
        let data = content(seed, f);
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        b.append_data(&mut h, format!("l{seed}/f{f}"), data.as_slice())
            .unwrap();
    }
    TestLayer::estargz(&b.into_inner().unwrap(), &WriterOptions::default())
}

/// `layers` layers in images of at most 100, pushed to `registry` and
/// named through `host` (the fault proxy in front of it).
async fn push(registry: &TestRegistry, host: &str, layers: usize) -> Vec<(String, usize)> {
    let mut images = Vec::new();
    for (i, start) in (0..layers).step_by(LAYERS_PER_IMAGE).enumerate() {
        let end = (start + LAYERS_PER_IMAGE).min(layers);
        let made: Vec<TestLayer> = (start..end).map(layer).collect();
        push_image(&registry.reference(&format!("startup/image{i}")), &made).await;
        images.push((format!("{host}/startup/image{i}:latest"), start));
    }
    images
}

/// Mounts every image as a container root through the daemon's socket.
async fn mount_all(
    daemon: &Daemon,
    images: &[(String, usize)],
    dir: &Path,
) -> Vec<(MountedImage, usize)> {
    let mut client = Snapshotter::connect(&daemon.socket).await.unwrap();
    let mut mounted = Vec::new();
    for (i, (reference, first)) in images.iter().enumerate() {
        let image = remote_layer::resolve(reference).await.unwrap();
        let at = dir.join(format!("root{i}"));
        let m = client.mount(&image, &format!("st{i}"), &at).await.unwrap();
        mounted.push((m, *first));
    }
    mounted
}

/// Starts the daemon and times exec → its first answered Stat of `key`.
async fn start_timed(dir: &Path, extra: &[&str], key: &str) -> (Daemon, Duration) {
    let started = Instant::now();
    let daemon = start(dir, extra);
    let mut c = daemon.client().await;
    stat(&mut c, key).await.unwrap();
    (daemon, started.elapsed())
}

/// The daemon (`RSTARGZ_STARTUP_BIN`, else cargo's) on `dir`.
fn start(dir: &Path, extra: &[&str]) -> Daemon {
    match std::env::var_os("RSTARGZ_STARTUP_BIN") {
        Some(bin) => Daemon::start_bin(&PathBuf::from(bin), dir, extra),
        None => Daemon::start_with(dir, extra),
    }
}

fn quiet_config(dir: &Path) -> PathBuf {
    // Nothing fetched by itself: every registry request the proxy sees
    // comes from restore or from a read.
    let config = dir.join("config.toml");
    std::fs::write(&config, "noprefetch = true\nno_background_fetch = true\n").unwrap();
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_registry_down_the_daemon_serves_before_any_registry_request() {
    let registry = TestRegistry::start().await;
    let proxy = FaultProxy::start(registry.addr).await;
    let dir = tempfile::tempdir().unwrap();
    let config = quiet_config(dir.path());
    let config = config.to_str().unwrap();
    let images = push(&registry, &proxy.host(), 20).await;
    let images = [images[0].clone()];
    let daemon = Daemon::start_with(dir.path(), &["--config", config]);
    let mounted = mount_all(&daemon, &images, dir.path()).await;
    let (root, first) = (&mounted[0].0, mounted[0].1);
    // Read (and so cache) the first file of every layer.
    for seed in first..first + 20 {
        let read = std::fs::read(root.dir.join(format!("l{seed}/f0"))).unwrap();
        assert_eq!(read, content(seed, 0), "l{seed}/f0");
    }

    // A restart (SIGTERM: the layers stay mounted for the next daemon).
    daemon.stop_for_restart();
    // The registry stops answering (connections accepted, never answered:
    // a request on the start-up path would hang it).
    proxy.set_fault(Fault::Stall);
    proxy.clear_seen();
    let (daemon, took) = start_timed(dir.path(), &["--config", config], &root.chain[0]).await;
    let seen = proxy.seen();
    assert!(
        seen.is_empty(),
        "registry requests before the socket answered: {:?}",
        seen.iter().map(|s| &s.path).collect::<Vec<_>>()
    );
    let log = daemon.log_text();
    assert!(log.contains("restored=20 failed=0"), "{log}");
    eprintln!("start-up with 20 remote snapshots, registry down: {took:?}");
    // What was read before is served at once, the registry still down.
    for seed in first..first + 20 {
        let read = std::fs::read(root.dir.join(format!("l{seed}/f0"))).unwrap();
        assert_eq!(read, content(seed, 0), "cached l{seed}/f0");
    }
    assert!(proxy.seen().is_empty(), "cached reads reached the registry");

    // The registry is back: every file reads right, fetched on demand.
    proxy.set_fault(Fault::PassThrough);
    let mut client = Snapshotter::connect(&daemon.socket).await.unwrap();
    client.time_mounts(&root.active).await.unwrap();
    for seed in first..first + 20 {
        for f in 0..FILES {
            let read = std::fs::read(root.dir.join(format!("l{seed}/f{f}"))).unwrap();
            assert_eq!(read, content(seed, f), "l{seed}/f{f}");
        }
    }
    assert!(!proxy.seen().is_empty(), "new reads fetched nothing");
    client.unmount(root).await.unwrap();
    daemon.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: run with --ignored --nocapture"]
async fn startup_with_many_remote_snapshots() {
    let layers: usize = std::env::var("RSTARGZ_STARTUP_LAYERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let registry = TestRegistry::start().await;
    let proxy = FaultProxy::start(registry.addr).await;
    let images = push(&registry, &proxy.host(), layers).await;
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let daemon = start(dir.path(), &[]);
    let first_start = started.elapsed();
    let mounted = mount_all(&daemon, &images, dir.path()).await;
    let key = mounted[0].0.chain[0].clone();

    // Restart with live hand-over, the registry down.
    daemon.stop_for_restart();
    proxy.set_fault(Fault::Stall);
    proxy.clear_seen();
    let (daemon, live) = start_timed(dir.path(), &[], &key).await;
    let before_serving = proxy.seen().len();
    let live_log = daemon.log_text();
    // A full stop (every layer unmounted), then a start that mounts them all afresh.
    for (m, _) in &mounted {
        nix::mount::umount2(&m.dir, nix::mount::MntFlags::MNT_DETACH).unwrap();
    }
    daemon.stop();
    let (daemon, fresh) = start_timed(dir.path(), &[], &key).await;
    let fresh_log = daemon.log_text();
    let restored = |log: &str| {
        log.lines()
            .rev()
            .find(|l| l.contains("remote layers restored"))
            .unwrap_or("")
            .to_owned()
    };
    eprintln!(
        "STARTUP layers={layers} registry=down first_start_s={:.2} live_restart_s={:.2} \
         fresh_mount_s={:.2} requests_before_serving={before_serving}\n  live: {}\n  fresh: {}",
        first_start.as_secs_f64(),
        live.as_secs_f64(),
        fresh.as_secs_f64(),
        restored(&live_log),
        restored(&fresh_log),
    );
    proxy.set_fault(Fault::PassThrough);
    daemon.stop();
}
