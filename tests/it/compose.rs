//! The dev stack (docker-compose.yml and deploy/) run for real, the way
//! the README's "Dev stack with Docker Compose" tells a person to: a
//! scratch dockerd, the images built from deploy/Dockerfile on a Debian
//! base made offline with mmdebstrap, `compose up -d`, an image built and
//! pushed with docker into the stack's registry, then inside the node
//! `rstargz image convert`, `ctr-remote image rpull` and `ctr run`. The
//! container's checksums must match the files, and every layer must be a
//! remote (FUSE-mounted) snapshot. Then the same image as a pod through the
//! node's CRI plugin, driven from here over containerd's socket (the node's
//! /run/containerd is a directory of ours) with the CRI tests' client, the
//! pause image built from deploy/Dockerfile as the README says: the same
//! checksums, every layer again remote. Needs root, docker.io,
//! docker-compose, mmdebstrap and busybox-static: a missing one fails the
//! test.

#![allow(clippy::unwrap_used)]

use crate::common;
use crate::common::docker;

use std::path::Path;
use std::time::{Duration, Instant};

use common::containerd::RunDirGuard;
use common::workload::{cgroup_dirs, expected_sums, image_layers, sums_script};
use docker::{BUILD_LIMIT, COMMAND_LIMIT, Compose, Dockerd, base_rootfs, poll};
use rstargz_test_support::cri::{CgroupParent, Cri, Pod, pod_config};

/// Layers of the test image (one per `COPY`).
const LAYERS: usize = 3;
/// The node's containerd state directory, a directory of ours inside.
const NODE_RUN: &str = "/run/containerd";
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
    // The pod's cgroup parent, made by the node's containerd in the host's
    // hierarchies; removed (it must be empty) after the stack is down.
    let pod_cgroup = format!("rstargz-compose-{}", std::process::id());
    let _pod_cgroup = CgroupParent(pod_cgroup.clone());
    // The node's /run/containerd.
    let node_run = dir.join("node-run");

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
            ("RSTARGZ_CONTAINERD_RUN", node_run.to_str().unwrap()),
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

    // The pause image, as the README makes it, then one pod through CRI.
    let pause = format!("{registry}/rstargz-pause:1");
    let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy");
    dockerd.ok(
        &[
            "build",
            "--network",
            "host",
            "--build-arg",
            &format!("BASE={BASE_TAG}"),
            "--target",
            "pause",
            "-t",
            &pause,
            deploy.to_str().unwrap(),
        ],
        BUILD_LIMIT,
    );
    dockerd.ok(&["push", &pause], COMMAND_LIMIT);
    lap("pause image pushed");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let out = rt.block_on(cri_pod(&compose, &node_run, &esgz, &pod_cgroup));
    lap("pod run through CRI");
    assert_eq!(out, expected_sums(&layers));
    let log = compose.logs("node");
    assert_eq!(
        (
            log.matches("remote-snapshot-prepared=\"true\"").count(),
            log.matches("remote-snapshot-prepared=\"false\"").count()
        ),
        (2 * LAYERS, 1),
        "the CRI pull: every layer remote, the (plain) pause image on the fallback: {log}"
    );
    let infos = compose.exec_ok(
        "node",
        &[
            "sh",
            "-c",
            "for k in $(ctr -n k8s.io snapshots --snapshotter stargz ls | awk '$NF == \"Committed\" {print $1}'); \
             do ctr -n k8s.io snapshots --snapshotter stargz info \"$k\"; done",
        ],
    );
    assert_eq!(
        (
            infos.matches("\"containerd.io/snapshot/remote\":").count(),
            infos
                .matches(&format!(
                    "\"containerd.io/snapshot/cri.image-ref\": \"{esgz}\""
                ))
                .count()
        ),
        (LAYERS, LAYERS),
        "the CRI image's snapshots are remote, made from the CRI labels: {infos}"
    );
    drop(compose);
    drop(dockerd);
    lap("torn down");
}

/// Runs the checksum script in a pod of `image` through the node's CRI
/// plugin, over containerd's socket in `node_run` (the node's
/// /run/containerd); returns the container's stdout.
async fn cri_pod(compose: &Compose<'_>, node_run: &Path, image: &str, cgroup: &str) -> String {
    let socket = node_run.join("containerd.sock");
    let mut cri = Cri::connect(&socket, &socket)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", compose.logs("node")))
        .map_logs(Path::new(NODE_RUN), node_run);
    let logs = Path::new(NODE_RUN).join("pod-logs");
    std::fs::create_dir_all(node_run.join("pod-logs")).unwrap();
    let sandbox = pod_config("rstargz-compose", &logs, cgroup);
    let image_ref = cri
        .pull(image, Some(&sandbox), None)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", compose.logs("node")));
    let mut pod = Pod::run(&mut cri, &sandbox)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", compose.logs("node")));
    let command: Vec<String> = vec![
        "/bin/busybox".into(),
        "sh".into(),
        "-c".into(),
        sums_script(),
    ];
    let out = cri
        .run_container(pod.id(), &sandbox, &image_ref, "sums", &command)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", compose.logs("node")));
    pod.remove(&mut cri).await.unwrap();
    out
}
