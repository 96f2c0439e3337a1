//! `rstargz mount REF DIR`: a pushed eStargz image appears at DIR (layers
//! over FUSE, stacked with overlayfs) and everything is unmounted on Ctrl-C.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rstargz_test_support::golden::check_tree;
use rstargz_test_support::registry::TestRegistry;
use rstargz_test_support::{TestLayer, push_image};

fn mounts_under(prefix: &Path) -> usize {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| Path::new(m).starts_with(prefix))
        .count()
}

fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "timed out: {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
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
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[resolver]\ndocker_config = \"{}\"\n",
            dir.path().join("none.json").display()
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_rstargz"))
        .arg("mount")
        .arg(&reference)
        .arg(&target)
        .arg("--plain-http")
        .arg("--state-dir")
        .arg(&state)
        .arg("--config")
        .arg(&config)
        .arg("--record")
        .arg(dir.path().join("record.txt"))
        .stdin(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    wait_for("the image mount", || {
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "exited {status}: {}",
                std::fs::read_to_string(&log).unwrap()
            );
        }
        mounts_under(&target) == 1
    });
    assert_eq!(mounts_under(&state), 2, "one FUSE mount per layer");
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

    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
    wait_for("exit after Ctrl-C", || child.try_wait().unwrap().is_some());
    let status = child.wait().unwrap();
    assert!(
        status.success(),
        "{}",
        std::fs::read_to_string(&log).unwrap()
    );
    assert_eq!(mounts_under(&target), 0);
    assert_eq!(mounts_under(&state), 0);

    let record = std::fs::read_to_string(dir.path().join("record.txt")).unwrap();
    let lines: Vec<&str> = record.lines().collect();
    assert_eq!(lines[..3], first[..3], "first-open order, each file once");
    let unique: std::collections::HashSet<&str> = lines.iter().copied().collect();
    assert_eq!(unique.len(), lines.len(), "duplicates in {record}");
    assert!(lines.contains(&"/opaque/new") && lines.contains(&"/d0/s1/f9.txt"));
}
