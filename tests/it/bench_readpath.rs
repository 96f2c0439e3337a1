//! Smoke test of the read-path and resources benchmarks (the code behind
//! `scripts/bench-readpath.sh`) at small sizes: an eStargz image in a real
//! `docker-registry`, mounted through the real daemon's socket, read in every
//! cache state, walked, and compared with the native overlay of the same
//! tree; then read inside a container through containerd (rstargz and
//! containerd's overlayfs), cold and at once again. Asserts that every
//! figure is produced and adds up; never timing. Takes a few seconds (needs
//! root: FUSE, overlay, drop_caches; containerd, runc, ctr-remote,
//! busybox-static).

#![allow(clippy::unwrap_used)]

use crate::common;

use std::path::Path;
use std::time::Duration;

use common::Daemon;
use common::containerd::RunDirGuard;
use rstargz_bench::coldstart::procs::Snapshotter;
use rstargz_bench::container::ContainerSnapshotter;
use rstargz_bench::io::Access;
use rstargz_bench::read_path::{self, Options, RunReport, State, Target};
use rstargz_bench::resources;
use rstargz_fs::estargz::WriterOptions;
use rstargz_test_support::registry::TestRegistry;
use rstargz_test_support::{TestLayer, push_image, test_blob};

const FILE_LEN: usize = 3 << 20;
const TREE_FILES: usize = 50;

/// The layer's tree, written to `dir` and as an eStargz layer (64 KiB chunks).
fn layer(dir: &Path) -> TestLayer {
    let big = test_blob(FILE_LEN, 11);
    std::fs::write(dir.join("big.bin"), &big).unwrap();
    let mut b = tar::Builder::new(Vec::new());
    let mut add = |path: &str, data: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        b.append_data(&mut h, path, data).unwrap();
    };
    add("big.bin", &big);
    std::fs::create_dir_all(dir.join("tree")).unwrap();
    for i in 0..TREE_FILES {
        let data = format!("file {i}\n");
        std::fs::write(dir.join(format!("tree/f{i}")), &data).unwrap();
        add(&format!("tree/f{i}"), data.as_bytes());
    }
    let opts = WriterOptions {
        chunk_size: 64 << 10,
        ..WriterOptions::default()
    };
    TestLayer::estargz(&b.into_inner().unwrap(), &opts)
}

fn options(target: Target, work: &Path) -> Options {
    let runs = [
        "cold-seq-128k",
        "cold-rand-4k",
        "disk-seq-4k",
        "page-rand-128k",
        "walk-cold",
        "walk-warm",
    ];
    Options {
        target,
        work: work.to_path_buf(),
        file: "big.bin".into(),
        tree: "tree".into(),
        runs: runs.iter().map(|r| r.parse().unwrap()).collect(),
        random_ops: 20,
        max_time: Duration::from_secs(30),
        repeat: 2,
        start_after: Duration::ZERO,
    }
}

/// Checks the figures of `options`' runs.
fn check(report: &read_path::Report, label: &str) {
    assert_eq!(report.runs.len(), 6, "{label}: {report:?}");
    for run in &report.runs {
        match run {
            RunReport::Read {
                access, figures, ..
            } => {
                let want = match access {
                    Access::Seq => FILE_LEN as u64,
                    Access::Rand => 20,
                };
                let got = match access {
                    Access::Seq => figures.bytes,
                    Access::Rand => figures.ops,
                };
                assert_eq!(got, want, "{label}: {run:?}");
                assert!(figures.mb_per_s > 0.0 && figures.seconds > 0.0, "{run:?}");
            }
            RunReport::Walk { figures, .. } => {
                // The tree directory and its files.
                assert_eq!(figures.entries, TREE_FILES as u64 + 1, "{label}: {run:?}");
                assert!(figures.entries_per_s > 0.0);
            }
        }
    }
    assert!(matches!(
        report.runs[0],
        RunReport::Read {
            state: State::Cold,
            ..
        }
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_path_and_resources_produce_figures() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let registry = TestRegistry::start().await;
    let reference = registry.reference("bench/smoke");
    push_image(&reference, &[layer(&data)]).await;
    let config = dir.path().join("config.toml");
    std::fs::write(&config, "no_background_fetch = true\n").unwrap();
    let daemon = Daemon::start_with(dir.path(), &["--config", config.to_str().unwrap()]);

    let remote = Target::Remote {
        socket: daemon.socket.clone(),
        image: reference.clone(),
    };
    let report = read_path::run(&options(remote, &dir.path().join("w1")))
        .await
        .unwrap();
    check(&report, "rstargz");
    assert_eq!(report.prepare_ms.len(), 1);
    assert!(report.prepare_ms[0] > 0.0);

    let native = Target::Native { lower: data };
    let report = read_path::run(&options(native, &dir.path().join("w2")))
        .await
        .unwrap();
    check(&report, "native");
    assert!(report.prepare_ms.is_empty());

    // Inside a container through a private containerd: rstargz, and
    // containerd's own overlayfs as the baseline.
    let _run_dir = RunDirGuard::new();
    let proxy = ContainerSnapshotter::Proxy {
        which: Snapshotter::Rstargz,
        socket: daemon.socket.clone(),
    };
    for (label, snapshotter) in [
        ("ctr-rstargz", proxy),
        ("ctr-overlayfs", ContainerSnapshotter::Overlayfs),
    ] {
        let target = Target::Container {
            snapshotter,
            image: reference.clone(),
        };
        let mut opts = options(target, &dir.path().join(label));
        opts.runs = vec!["reread-128k".parse().unwrap()];
        let report = read_path::run(&opts).await.unwrap();
        let states: Vec<State> = report
            .runs
            .iter()
            .map(|r| match r {
                RunReport::Read { state, figures, .. } => {
                    assert_eq!(figures.bytes, FILE_LEN as u64, "{label}: {r:?}");
                    *state
                }
                RunReport::Walk { .. } => panic!("{label}: a walk in {report:?}"),
            })
            .collect();
        assert_eq!(states, [State::Cold, State::Reread], "{label}");
    }

    let usage = resources::measure(
        &daemon.socket,
        daemon.pid(),
        &[reference],
        &dir.path().join("w3"),
        Duration::ZERO,
    )
    .await
    .unwrap();
    assert!(usage.rss_idle_bytes > 0);
    assert_eq!(usage.images.len(), 1);
    // Root, big.bin, tree/ and its files.
    assert_eq!(usage.images[0].entries, TREE_FILES as u64 + 3);
    assert!(usage.images[0].prepare_ms > 0.0);
    // Everything the benchmark mounted is gone again.
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    assert!(!mounts.contains(dir.path().to_str().unwrap()), "{mounts}");
    daemon.stop();
}
