//! `rstargz mount REF DIR`: a pushed eStargz image appears at DIR (layers
//! over FUSE, stacked with overlayfs) and everything is unmounted on Ctrl-C.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::common::image::{build_estargz, client};
use crate::common::wait_for_up_to;
use rstargz_image::build::LayerInput;
use rstargz_test_support::golden::check_tree;
use rstargz_test_support::registry::TestRegistry;
use rstargz_test_support::{TestLayer, push_image, test_blob};

fn mounts_under(prefix: &Path) -> usize {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| Path::new(m).starts_with(prefix))
        .count()
}

fn wait_for(what: &str, cond: impl FnMut() -> bool) {
    wait_for_up_to(Duration::from_secs(30), what, cond)
}

/// A config without ambient registry credentials, in `dir`.
fn config(dir: &Path) -> PathBuf {
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[resolver]\ndocker_config = \"{}\"\n",
            dir.join("none.json").display()
        ),
    )
    .unwrap();
    config
}

/// Starts `rstargz mount REFERENCE TARGET` with its state under `state`
/// and its stderr in `log`.
fn start_mount(
    reference: &str,
    target: &Path,
    state: &Path,
    config: &Path,
    log: &Path,
    extra: &[&std::ffi::OsStr],
) -> Child {
    Command::new(env!("CARGO_BIN_EXE_rstargz"))
        .arg("mount")
        .arg(reference)
        .arg(target)
        .arg("--plain-http")
        .arg("--state-dir")
        .arg(state)
        .arg("--config")
        .arg(config)
        .args(extra)
        .stdin(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap()
}

/// Waits until the image is mounted at `target` (fails if the process exits).
fn wait_mounted(child: &mut Child, target: &Path, log: &Path, limit: Duration) {
    wait_for_up_to(limit, "the image mount", || {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("exited {status}: {}", std::fs::read_to_string(log).unwrap());
        }
        mounts_under(target) == 1
    });
}

/// Sends SIGINT and checks a clean exit.
fn stop_mount(mut child: Child, log: &Path) {
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
    wait_for("exit after Ctrl-C", || child.try_wait().unwrap().is_some());
    let status = child.wait().unwrap();
    assert!(
        status.success(),
        "{}",
        std::fs::read_to_string(log).unwrap()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mount_shows_the_image_and_unmounts_on_ctrl_c() {
    let registry = TestRegistry::start().await;
    let reference = registry.reference("mount/image");
    push_image(
        &reference,
        &[
            TestLayer::golden("tree", "gzip"),
            TestLayer::golden("whiteouts", "zstd"),
        ],
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let (target, state) = (dir.path().join("rootfs"), dir.path().join("state"));
    std::fs::create_dir(&target).unwrap();
    let log = dir.path().join("mount.log");
    let record = dir.path().join("record.txt");
    let mut child = start_mount(
        &reference,
        &target,
        &state,
        &config(dir.path()),
        &log,
        &["--record".as_ref(), record.as_os_str()],
    );
    wait_mounted(&mut child, &target, &log, Duration::from_secs(30));
    assert_eq!(
        mounts_under(&state),
        3,
        "one FUSE session and a bind mount of it per layer"
    );
    // Opened first, in this order (over both layers), then everything.
    let first = [
        "/d0/s2/f3.txt",
        "/dir/kept",
        "/d0/s0/f1.txt",
        "/d0/s2/f3.txt",
    ];
    for p in first {
        std::fs::read(target.join(&p[1..])).unwrap();
    }
    check_tree(&target, "whiteouts");
    check_tree(&target, "tree");

    stop_mount(child, &log);
    assert_eq!(mounts_under(&target), 0);
    assert_eq!(mounts_under(&state), 0);

    let record = std::fs::read_to_string(&record).unwrap();
    let lines: Vec<&str> = record.lines().collect();
    assert_eq!(lines[..3], first[..3], "first-open order, each file once");
    let unique: std::collections::HashSet<&str> = lines.iter().copied().collect();
    assert_eq!(unique.len(), lines.len(), "duplicates in {record}");
    assert!(lines.contains(&"/opaque/new") && lines.contains(&"/d0/s1/f9.txt"));
}

/// Layers of the deep image: layer `i` adds `l{i}/data` and rewrites `top`.
const DEEP_LAYERS: usize = 127;

fn deep_layer_data(i: usize) -> Vec<u8> {
    let mut data = format!("layer {i}\n").into_bytes();
    data.extend(test_blob(100 + i * 13, i as u64 + 1));
    data
}

/// An eStargz image of the most layers an image may have, each tiny, made
/// the way a user would: built plain, then converted.
async fn push_deep_image(registry: &TestRegistry, scratch: &Path) -> String {
    let mut inputs = Vec::new();
    for i in 0..DEEP_LAYERS {
        let layer = scratch.join(format!("src/{i}"));
        std::fs::create_dir_all(layer.join(format!("l{i}"))).unwrap();
        std::fs::write(layer.join(format!("l{i}/data")), deep_layer_data(i)).unwrap();
        std::fs::write(layer.join("top"), i.to_string()).unwrap();
        inputs.push(LayerInput::Dir(layer));
    }
    let (esgz, layers) =
        build_estargz(&client(scratch), &registry.host(), "deep/image", &inputs).await;
    assert_eq!(layers, DEEP_LAYERS);
    esgz.to_string()
}

/// `Threads` and `VmHWM` (peak RSS, KiB) of process `pid`.
fn threads_and_peak_rss(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap()
    };
    (field("Threads:"), field("VmHWM:"))
}

/// An image of 127 layers under a state directory long enough that the
/// absolute `lowerdir=` is several pages: it mounts, every file reads back
/// right, and reading all of it keeps the process's memory bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mount_of_127_layers_under_a_long_state_dir() {
    let registry = TestRegistry::start().await;
    let dir = tempfile::tempdir().unwrap();
    let reference = push_deep_image(&registry, dir.path()).await;
    let target = dir.path().join("rootfs");
    std::fs::create_dir(&target).unwrap();
    let state = dir.path().join("s".repeat(100)).join("t".repeat(100));
    let log = dir.path().join("mount.log");
    let mut child = start_mount(&reference, &target, &state, &config(dir.path()), &log, &[]);
    wait_mounted(&mut child, &target, &log, Duration::from_secs(300));
    assert_eq!(
        mounts_under(&state),
        DEEP_LAYERS + 1,
        "one FUSE session and a bind mount of it per layer"
    );

    for i in 0..DEEP_LAYERS {
        let got = std::fs::read(target.join(format!("l{i}/data"))).unwrap();
        assert!(got == deep_layer_data(i), "l{i}/data differs");
    }
    assert_eq!(
        std::fs::read_to_string(target.join("top")).unwrap(),
        (DEEP_LAYERS - 1).to_string(),
        "the uppermost layer wins"
    );
    let (threads, peak_kib) = threads_and_peak_rss(child.id());
    eprintln!("{DEEP_LAYERS} layers read: {threads} threads, peak RSS {peak_kib} KiB");
    // 3.6 GB before the allocator was tuned as the daemon's is (each FUSE
    // worker's 16 MiB request buffer zeroed on the heap); ~40 MB after.
    assert!(peak_kib < 512 << 10, "peak RSS {peak_kib} KiB");
    stop_mount(child, &log);
    assert_eq!(mounts_under(&target), 0);
    assert_eq!(mounts_under(&state), 0);
}
