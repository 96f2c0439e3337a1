//! The dev stack (docker-compose.yml and deploy/) run for real, the way
//! the README's "Dev stack with Docker Compose" tells a person to: a
//! scratch dockerd, the images built from deploy/Dockerfile on a Debian
//! base made offline with mmdebstrap, `compose up -d`, an image built and
//! pushed with docker into the stack's registry, then inside the node
//! `rstargz image convert`, `ctr-remote image rpull` and `ctr run`. The
//! container's checksums must match the files, and every layer must be a
//! remote (FUSE-mounted) snapshot. Needs root, docker.io, docker-compose,
//! mmdebstrap and busybox-static: a missing one fails the test.

#![allow(clippy::unwrap_used)]

use crate::common;
use crate::common::docker;

use std::path::Path;
use std::time::{Duration, Instant};

use common::containerd::RunDirGuard;
use common::workload::{cgroup_dirs, expected_sums, image_layers, sums_script};
use docker::{BUILD_LIMIT, COMMAND_LIMIT, Compose, Dockerd, base_rootfs, poll};

/// Layers of the test image (one per `COPY`).
const LAYERS: usize = 3;
/// Base image tag in the scratch dockerd.
const BASE_TAG: &str = "rstargz-base:test";

/// Cgroup directories `name` made by the node's containerd in the host's
/// hierarchies (the node mounts the host's /sys/fs/cgroup): removed on drop
/// if they were not there before and are empty.
struct CgroupGuard {
    name: &'static str,
    existed: Vec<std::path::PathBuf>,
}

impl CgroupGuard {
    fn new(name: &'static str) -> Self {
        CgroupGuard {
            name,
            existed: cgroup_dirs(name),
        }
    }
}

impl Drop for CgroupGuard {
    fn drop(&mut self) {
        for d in cgroup_dirs(self.name) {
            if !self.existed.contains(&d) {
                let _ = std::fs::remove_dir(d);
            }
        }
    }
}

/// Writes a Dockerfile putting each layer tree in its own layer.
fn test_image_context(dir: &Path) -> Vec<std::path::PathBuf> {
    let layers = image_layers(dir);
    let mut dockerfile = String::from("FROM scratch\n");
    for l in &layers {
        let name = l.file_name().unwrap().to_str().unwrap();
        dockerfile.push_str(&format!("COPY {name}/ /\n"));
    }
    std::fs::write(dir.join("Dockerfile"), dockerfile).unwrap();
    layers
}

#[test]
fn dev_stack_lazy_pulls_and_runs() {
    let start = Instant::now();
    let lap = |what: &str| eprintln!("{what}: {:.1} s", start.elapsed().as_secs_f64());
    let _run_dir = RunDirGuard::new();
    let _cgroups = CgroupGuard::new("default");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();

    let rootfs = base_rootfs();
    lap("base rootfs ready");
    let dockerd = Dockerd::start(dir);
    dockerd.ok(
        &["import", rootfs.to_str().unwrap(), BASE_TAG],
        COMMAND_LIMIT,
    );
    lap("dockerd up, base imported");

    // A free port, so concurrent runs (and a registry on 5000) never clash.
    let port = rstargz_test_support::closed_port().to_string();
    let registry = format!("127.0.0.1:{port}");
    let compose = Compose::new(
        &dockerd,
        &format!("rstargz-test-{}", std::process::id()),
        &[
            ("RSTARGZ_BASE", BASE_TAG),
            ("RSTARGZ_BIN", env!("CARGO_BIN_EXE_rstargz")),
            ("RSTARGZ_REGISTRY_PORT", &port),
        ],
    );
    compose.ok(&["build"], BUILD_LIMIT);
    lap("images built");
    compose.ok(&["up", "-d"], COMMAND_LIMIT);
    poll(
        "the registry",
        Duration::from_secs(60),
        Duration::from_millis(100),
        || std::net::TcpStream::connect(&registry).is_ok(),
        || compose.logs("registry"),
    );
    poll(
        "the node's containerd",
        Duration::from_secs(60),
        Duration::from_millis(200),
        || compose.exec("node", &["ctr", "version"]).status.success(),
        || compose.logs("node"),
    );
    lap("stack up");

    // The image, built and pushed with docker as a person would.
    let context = dir.join("image");
    let layers = test_image_context(&context);
    let plain = format!("{registry}/demo:1");
    let esgz = format!("{registry}/demo:1-esgz");
    dockerd.ok(
        &["build", "-t", &plain, context.to_str().unwrap()],
        BUILD_LIMIT,
    );
    dockerd.ok(&["push", &plain], COMMAND_LIMIT);
    lap("test image pushed");

    // The README's commands, inside the node.
    compose.exec_ok("node", &["rstargz", "image", "convert", &plain, &esgz]);
    compose.exec_ok(
        "node",
        &["ctr-remote", "image", "rpull", "--plain-http", &esgz],
    );
    let id = format!("demo-{}", std::process::id());
    let script = sums_script();
    let out = compose.exec_ok(
        "node",
        &[
            "ctr",
            "run",
            "--rm",
            "--snapshotter",
            "stargz",
            &esgz,
            &id,
            "/bin/busybox",
            "sh",
            "-c",
            &script,
        ],
    );
    lap("converted, pulled lazily and run");
    assert_eq!(out, expected_sums(&layers));
    assert_eq!(
        cgroup_dirs(&format!("default/{id}")),
        Vec::<std::path::PathBuf>::new(),
        "the container's cgroup leaked"
    );

    // Every layer a remote snapshot: the log, containerd's view of the
    // snapshots' labels and the node's FUSE mounts agree.
    let log = compose.logs("node");
    assert!(
        !log.contains("remote-snapshot-prepared=\"false\"")
            && log.matches("remote-snapshot-prepared=\"true\"").count() == LAYERS,
        "rpull fell back: {log}"
    );
    let infos = compose.exec_ok(
        "node",
        &[
            "sh",
            "-c",
            "for k in $(ctr snapshots --snapshotter stargz ls | awk '$NF == \"Committed\" {print $1}'); \
             do ctr snapshots --snapshotter stargz info \"$k\"; done",
        ],
    );
    assert_eq!(
        infos.matches("\"containerd.io/snapshot/remote\":").count(),
        LAYERS,
        "remote label on every committed snapshot: {infos}"
    );
    let mounts = compose.exec_ok("node", &["cat", "/proc/self/mountinfo"]);
    let fuse = mounts
        .lines()
        .filter(|l| l.contains(" /var/lib/rstargz/snapshots/") && l.contains(" - fuse "))
        .count();
    assert_eq!(fuse, LAYERS, "one FUSE mount per layer: {mounts}");
    lap("checked");
    drop(compose);
    drop(dockerd);
    lap("torn down");
}
