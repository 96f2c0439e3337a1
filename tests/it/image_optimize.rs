//! `rstargz image optimize SRC DST`: the workload runs in a real container
//! (runc) over the image mounted lazily by our FUSE; the files it opens come
//! first in the converted layers, before `.prefetch.landmark`; `--period`
//! stops a workload that never exits, Ctrl-C stops everything, and nothing
//! is left behind (mounts, containers, cgroups, scratch directories). The
//! Go reference lazily pulls the result, prefetches exactly the prioritized
//! part of each layer and runs it.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::common::containerd::{Containerd, RunDirGuard};
use crate::common::image::{at, build_estargz, check_converted, client};
use crate::common::wait_for_up_to;
use crate::common::workload::{
    cgroup_dirs, expected_sums, image_layers, run_sums, unmount_all_under,
};
use rstargz_fs::estargz::{Toc, read_toc};
use rstargz_image::build::{self, BuildOptions, LayerInput};
use rstargz_image::oci::{self, Descriptor};
use rstargz_image::{ImageRef, Store};
use rstargz_test_support::host::mounts_under;
use rstargz_test_support::process::ProcessGuard;
use rstargz_test_support::registry::TestRegistry;

const GO_DAEMON: &str = "/usr/local/bin/containerd-stargz-grpc";

/// `rstargz image optimize` with `args`, its scratch under `work`.
fn optimize_cmd(home: &Path, work: &Path, args: &[&str]) -> Command {
    std::fs::create_dir_all(work).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_rstargz"));
    cmd.args(["image", "optimize", "--temp-dir"])
        .arg(work)
        .args(args)
        .env("DOCKER_CONFIG", home)
        .stdin(Stdio::null());
    cmd
}

/// Runs it to the end, asserting success; returns its output and pid.
fn optimize_ok(home: &Path, work: &Path, args: &[&str]) -> (Output, u32) {
    let child = optimize_cmd(home, work, args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (out, pid)
}

/// Nothing of a run is left: no mount under `dir`, no scratch directory in
/// `work`, no cgroup of the container of process `pid`.
fn assert_clean(dir: &Path, work: &Path, pid: u32) {
    assert_eq!(mounts_under(dir), Vec::<PathBuf>::new(), "mounts left");
    let left: Vec<_> = std::fs::read_dir(work)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(
        left.is_empty(),
        "scratch left in {}: {left:?}",
        work.display()
    );
    let cgroup = format!("rstargz-optimize-{pid}");
    assert_eq!(cgroup_dirs(&cgroup), Vec::<PathBuf>::new(), "cgroup left");
}

/// A plain (gzip, not eStargz) image of `layers` at `host/repo`.
async fn plain_image(tmp: &Path, host: &str, repo: &str, layers: &[PathBuf]) -> ImageRef {
    let src = at(host, repo);
    let inputs: Vec<LayerInput> = layers.iter().cloned().map(LayerInput::Dir).collect();
    build::from_dirs(&client(tmp), &src, &inputs, &BuildOptions::default())
        .await
        .unwrap();
    src
}

/// The manifest descriptor of the image at `at` and its layers' TOCs.
async fn tocs(tmp: &Path, at: &ImageRef) -> (Descriptor, Vec<(Descriptor, Toc)>) {
    let store = Store::source(&client(tmp), at).unwrap();
    let root = store.root().await.unwrap();
    let desc = Descriptor::new(&root.media_type, &root.digest, root.bytes.len() as u64);
    let json: serde_json::Value = serde_json::from_slice(&root.bytes).unwrap();
    let mut out = Vec::new();
    for layer in oci::descriptors(&json, "layers", "manifest").unwrap() {
        let mut blob = Vec::new();
        store
            .download(&layer, &mut blob, &mut |_| {})
            .await
            .unwrap();
        let toc = read_toc(&blob, 64 << 20).unwrap().1.toc;
        out.push((layer, toc));
    }
    (desc, out)
}

/// The regular files of `toc` before its prefetch landmark, or `None` if the
/// layer has `.no.prefetch.landmark` instead.
fn prioritized(toc: &Toc) -> Option<Vec<String>> {
    let files: Vec<&str> = toc
        .entries
        .iter()
        .filter(|e| e.kind == "reg" && e.chunk_offset == 0)
        .map(|e| e.name.as_str())
        .collect();
    if files.contains(&".no.prefetch.landmark") {
        return None;
    }
    let end = files
        .iter()
        .position(|f| *f == ".prefetch.landmark")
        .expect("a prefetch landmark");
    Some(files[..end].iter().map(|f| (*f).to_owned()).collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn optimize_prioritizes_what_the_workload_opens() {
    let tmp = tempfile::tempdir().unwrap();
    let tmp = tmp.path();
    let reg = TestRegistry::start().await;
    let layers = image_layers(tmp);
    let src = plain_image(tmp, &reg.host(), "opt/plain:v1", &layers).await;
    let dst = format!("{}/opt/optimized:v1", reg.host());
    let work = tmp.join("work");
    let script = "cd / && /bin/busybox cat /data/a.bin > /dev/null \
                  && /bin/busybox cat /tree/d03/f001.txt \
                  && /bin/busybox sha256sum /data/$WHICH";
    let (out, pid) = optimize_ok(
        tmp,
        &work,
        &[
            "--entrypoint",
            r#"["/bin/busybox","sh","-c"]"#,
            "--args",
            &serde_json::json!([script]).to_string(),
            "--env",
            "WHICH=b.bin",
            "--env",
            "UNUSED=1",
            "--period",
            "120",
            &src.to_string(),
            &dst,
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    // --args ran, with --env's value, and its output reached our stderr.
    assert!(stderr.contains("file 3/1\nfile 3/1\n"), "{stderr}");
    let b_sum = expected_sums(&layers)
        .lines()
        .find(|l| l.ends_with("/data/b.bin"))
        .unwrap()
        .to_owned();
    assert!(stderr.contains(&b_sum), "{stderr}");
    assert!(stderr.contains("the workload exited"), "{stderr}");
    let line: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(line["reference"], dst);
    assert_eq!(line["prioritized"], 4, "{line}");

    // Exactly the opened files come first, in the order they were opened.
    let dst = ImageRef::parse(&dst).unwrap();
    let (desc, layer_tocs) = tocs(tmp, &dst).await;
    let got: Vec<Option<Vec<String>>> = layer_tocs.iter().map(|(_, t)| prioritized(t)).collect();
    let want = |files: &[&str]| Some(files.iter().map(|f| (*f).to_owned()).collect::<Vec<_>>());
    assert_eq!(
        got,
        [
            want(&["bin/busybox"]),
            want(&["data/a.bin", "data/b.bin"]),
            want(&["tree/d03/f001.txt"]),
        ]
    );
    // And every file is there, intact.
    let store = Store::source(&client(tmp), &dst).unwrap();
    check_converted(&store, &desc, &layers, false, false, tmp).await;
    assert_clean(tmp, &work, pid);
}

/// An eStargz image of the workload's layers (mounted directly, no staging).
async fn estargz_image(tmp: &Path, reg: &TestRegistry, repo: &str) -> (ImageRef, Vec<PathBuf>) {
    let layers = image_layers(tmp);
    let inputs: Vec<LayerInput> = layers.iter().cloned().map(LayerInput::Dir).collect();
    let (esgz, _) = build_estargz(&client(tmp), &reg.host(), repo, &inputs).await;
    (esgz, layers)
}

/// `optimize SRC DST` of a workload that reads `/data/b.bin`, says
/// `started` and never exits, for up to `period` seconds.
fn never_exiting(tmp: &Path, work: &Path, period: &str, src: &ImageRef, dst: &str) -> Command {
    const SCRIPT: &str = r#"["cd / && /bin/busybox cat /data/b.bin > /dev/null && echo started && while :; do /bin/busybox sleep 1; done"]"#;
    let entrypoint = r#"["/bin/busybox","sh","-c"]"#;
    let args = [
        "--entrypoint",
        entrypoint,
        "--args",
        SCRIPT,
        "--period",
        period,
    ];
    let mut cmd = optimize_cmd(tmp, work, &args);
    cmd.arg(src.to_string()).arg(dst);
    cmd
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn period_stops_a_workload_that_never_exits() {
    let tmp = tempfile::tempdir().unwrap();
    let tmp = tmp.path();
    let reg = TestRegistry::start().await;
    let (src, layers) = estargz_image(tmp, &reg, "period/app").await;
    let dst = format!("{}/period/optimized:v1", reg.host());
    let work = tmp.join("work");
    let child = never_exiting(tmp, &work, "2", &src, &dst)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("started"), "{stderr}");
    assert!(stderr.contains("stopped after 2s"), "{stderr}");
    assert!(!stderr.contains("converting it to"), "no staging: {stderr}");
    let (desc, layer_tocs) = tocs(tmp, &ImageRef::parse(&dst).unwrap()).await;
    let got: Vec<Option<Vec<String>>> = layer_tocs.iter().map(|(_, t)| prioritized(t)).collect();
    assert_eq!(got[1], Some(vec!["data/b.bin".to_owned()]));
    assert_eq!(got[2], None, "nothing opened in the tree layer");
    let store = Store::source(&client(tmp), &ImageRef::parse(&dst).unwrap()).unwrap();
    check_converted(&store, &desc, &layers, false, false, tmp).await;
    assert_clean(tmp, &work, pid);
}

/// Polls `cond` for up to a minute.
fn wait_for(what: &str, cond: impl FnMut() -> bool) {
    wait_for_up_to(Duration::from_secs(60), what, cond)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_cleans_up_and_tags_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let tmp = tmp.path();
    let reg = TestRegistry::start().await;
    let (src, _) = estargz_image(tmp, &reg, "intr/app").await;
    let dst = format!("{}/intr/optimized:v1", reg.host());
    let work = tmp.join("work");
    let log = tmp.join("optimize.log");
    let mut child: Child = never_exiting(tmp, &work, "600", &src, &dst)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let pid = child.id();
    wait_for("the workload to start", || {
        std::fs::read_to_string(&log).unwrap().contains("started")
    });
    let as_pid = nix::unistd::Pid::from_raw(i32::try_from(pid).unwrap());
    nix::sys::signal::kill(as_pid, nix::sys::signal::Signal::SIGINT).unwrap();
    wait_for("exit after Ctrl-C", || child.try_wait().unwrap().is_some());
    let status = child.wait().unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!status.success() && text.contains("interrupted"), "{text}");
    assert_clean(tmp, &work, pid);
    let store = Store::source(&client(tmp), &ImageRef::parse(&dst).unwrap()).unwrap();
    assert!(
        store.root().await.is_err(),
        "an interrupted optimize tagged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clear_errors_for_missing_runc_and_image() {
    let tmp = tempfile::tempdir().unwrap();
    let tmp = tmp.path();
    let reg = TestRegistry::start().await;
    let dst = format!("{}/err/optimized:v1", reg.host());
    let work = tmp.join("work");
    let src = format!("{}/err/missing:v1", reg.host());
    for (args, says) in [
        (vec!["--runc", "/nonexistent/runc"], "runc not found"),
        (vec![], "not found"),
        (vec!["--args", "sh -c true"], "not a JSON array"),
        (vec!["--mount", "/a:/b"], "--mount"),
    ] {
        let out = optimize_cmd(tmp, &work, &args)
            .args([&src, &dst])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains(says),
            "{args:?}: {stderr}"
        );
    }
    assert_clean(tmp, &work, 0);
}

/// The Go reference lazily pulls an image rstargz optimized, prefetches
/// exactly its prioritized part (up to each layer's landmark) and runs it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_reference_pulls_and_prefetches_an_optimized_image() {
    const NAMESPACE: &str = "rstargz-optimize";
    let _run_dir = RunDirGuard::new();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let reg = TestRegistry::start().await;
    let layers = image_layers(dir);
    let src = plain_image(dir, &reg.host(), "go/plain:v1", &layers).await;
    let dst = format!("{}/go/optimized:v1", reg.host());
    optimize_ok(
        dir,
        &dir.join("work"),
        &[
            "--entrypoint",
            r#"["/bin/busybox","sh","-c"]"#,
            "--args",
            r#"["cd / && /bin/busybox sha256sum /data/a.bin /tree/d07/f013.txt"]"#,
            &src.to_string(),
            &dst,
        ],
    );
    let (_, layer_tocs) = tocs(dir, &ImageRef::parse(&dst).unwrap()).await;
    // Each layer's prefetch range ends at its landmark.
    let landmarks: Vec<(String, u64)> = layer_tocs
        .iter()
        .map(|(layer, toc)| {
            let landmark = toc
                .entries
                .iter()
                .find(|e| e.name == ".prefetch.landmark")
                .unwrap();
            (layer.digest.clone(), landmark.offset)
        })
        .collect();

    assert!(
        Path::new(GO_DAEMON).exists(),
        "{GO_DAEMON} is missing: scripts/setup-bench.sh"
    );
    let (root, socket, config) = (
        dir.join("go-root"),
        dir.join("go.sock"),
        dir.join("go.toml"),
    );
    std::fs::write(&config, "no_background_fetch = true\n").unwrap();
    let mut cmd = Command::new(GO_DAEMON);
    cmd.arg("-address")
        .arg(&socket)
        .arg("-root")
        .arg(&root)
        .arg("-config")
        .arg(&config)
        // Its prefetch lines are debug lines.
        .args(["-log-level", "debug"]);
    let mut go = ProcessGuard::spawn("containerd-stargz-grpc", cmd, &dir.join("go.log")).unwrap();
    go.wait_until(|| std::os::unix::net::UnixStream::connect(&socket).is_ok())
        .unwrap();
    std::fs::create_dir_all(dir.join("containerd")).unwrap();
    let ctrd = Containerd::start(&dir.join("containerd"), &socket, "stargz");
    ctrd.rpull(NAMESPACE, "stargz", &dst);
    let fuse_mounts = rstargz_fs::fuse::mountinfo::read()
        .unwrap()
        .into_iter()
        .filter(|m| m.mountpoint.starts_with(&root) && m.fstype.starts_with("fuse"))
        .count();
    assert_eq!(fuse_mounts, layers.len(), "{}", go.log_text());
    for (digest, offset) in &landmarks {
        let want = format!("prefetch_size={offset} bytes");
        let seen = || {
            go.log_text()
                .lines()
                .any(|l| l.contains("prefetch_total") && l.contains(digest) && l.contains(&want))
        };
        let start = Instant::now();
        while !seen() {
            let prefetch: Vec<String> = go
                .log_text()
                .lines()
                .filter(|l| l.contains("prefetch"))
                .map(str::to_owned)
                .collect();
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "no prefetch of {want} for {digest}: {prefetch:#?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    assert_eq!(
        run_sums(&ctrd, dir, NAMESPACE, "stargz", &dst, "go-optimized"),
        expected_sums(&layers)
    );
    drop(ctrd);
    go.stop();
    unmount_all_under(dir);
}
