//! End to end through containerd's CRI plugin, as kubelet drives it: a
//! scratch containerd 1.6 with CRI on and rstargz as its snapshotter
//! (`disable_snapshot_annotations = false`), a CRI client over its socket
//! calling PullImage, RunPodSandbox (host network, so no CNI), CreateContainer,
//! StartContainer and ContainerStatus, and the container's CRI log checked
//! against the files' checksums. The eStargz image (made with `rstargz image
//! convert`) must be prepared remotely from the CRI label set alone (no
//! `ctr-remote`): one remote snapshot per layer, carrying the
//! `containerd.io/snapshot/cri.*` labels, each a FUSE mount. The plain image
//! runs through CRI on the fallback. Needs root, containerd, runc,
//! docker-registry and busybox-static: a missing one fails the test.

#![allow(clippy::unwrap_used)]

use crate::common;
use crate::common::image as image_common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use common::containerd::{Containerd, CriConfig, RunDirGuard};
use common::workload::{BUSYBOX, expected_sums, image_layers, sums_script, unmount_all_under};
use common::*;
use image_common::registry::TestRegistry;
use image_common::{at, client};
use rstargz_image::Store;
use rstargz_image::build::{self, BuildOptions, LayerInput};
use rstargz_proto::cri;
use rstargz_snapshotter::snapshot::REMOTE_LABEL;
use rstargz_test_support::cri::{CgroupParent, Cri, PAUSE_ENTRYPOINT, Pod, pause_layer};
use rstargz_test_support::host::mounts_under;

/// The proxy plugin's name, as CRI configs usually spell it.
pub(crate) const PLUGIN: &str = "stargz";
const CRI_IMAGE_REF: &str = "containerd.io/snapshot/cri.image-ref";
const CRI_LAYER_DIGEST: &str = "containerd.io/snapshot/cri.layer-digest";
const CRI_IMAGE_LAYERS: &str = "containerd.io/snapshot/cri.image-layers";

/// Daemon config: no ambient credentials, no background fetch.
fn start_daemon(dir: &Path) -> Daemon {
    let config = dir.join("rstargz.toml");
    std::fs::write(
        &config,
        format!(
            "no_background_fetch = true\n[resolver]\ndocker_config = \"{}\"\n",
            dir.join("no-docker-config.json").display()
        ),
    )
    .unwrap();
    Daemon::start_with(dir, &["--config", config.to_str().unwrap()])
}

/// The pause image ([`pause_layer`]).
pub(crate) async fn push_pause_image(dir: &Path, host: &str, repo: &str) {
    let layer = pause_layer(dir, Path::new(BUSYBOX)).unwrap();
    let opts = BuildOptions {
        entrypoint: PAUSE_ENTRYPOINT.map(String::from).to_vec(),
        ..BuildOptions::default()
    };
    build::from_dirs(
        &client(dir),
        &at(host, repo),
        &[LayerInput::Dir(layer)],
        &opts,
    )
    .await
    .unwrap();
}

/// Pushes the workload image made of `layers` as `<host>/<repo>/plain:v1`
/// with `client`, and its eStargz conversion (`rstargz image convert`, with
/// the credentials in `docker_config_dir`) as `<host>/<repo>/esgz:v1`.
pub(crate) async fn push_workload(
    client: &rstargz_fs::registry::Registry,
    host: &str,
    repo: &str,
    layers: &[PathBuf],
    docker_config_dir: &Path,
) {
    let inputs: Vec<LayerInput> = layers.iter().cloned().map(LayerInput::Dir).collect();
    let plain = format!("{repo}/plain:v1");
    build::from_dirs(client, &at(host, &plain), &inputs, &BuildOptions::default())
        .await
        .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_rstargz"))
        .args([
            "image",
            "convert",
            &format!("{host}/{plain}"),
            &format!("{host}/{repo}/esgz:v1"),
        ])
        .env("DOCKER_CONFIG", docker_config_dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The layer digests of the image at `repo`, read with `client`.
pub(crate) async fn layer_digests(
    client: &rstargz_fs::registry::Registry,
    host: &str,
    repo: &str,
) -> Vec<String> {
    let store = Store::source(client, &at(host, repo)).unwrap();
    let root = store.root().await.unwrap();
    let json: serde_json::Value = serde_json::from_slice(&root.bytes).unwrap();
    json["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_owned())
        .collect()
}

/// Labels of every committed snapshot, asked over rstargz's own socket.
pub(crate) async fn committed_labels(d: &Daemon) -> Vec<HashMap<String, String>> {
    let mut c = d.client().await;
    let mut out = Vec::new();
    for name in list(&mut c, &["kind==committed"]).await.unwrap() {
        out.push(stat(&mut c, &name).await.unwrap().labels);
    }
    out
}

/// Count of `remote-snapshot-prepared="<v>"` in the daemon's log.
pub(crate) fn prepared(d: &Daemon, v: &str) -> usize {
    d.log_text()
        .matches(&format!("remote-snapshot-prepared=\"{v}\""))
        .count()
}

/// FUSE mounts under the daemon's snapshots directory.
pub(crate) fn fuse_mounts(d: &Daemon) -> usize {
    rstargz_fs::fuse::mountinfo::read()
        .unwrap()
        .into_iter()
        .filter(|m| m.mountpoint.starts_with(d.snapshots_dir()) && m.fstype.starts_with("fuse"))
        .count()
}

/// Connects to `ctrd`'s CRI plugin, the ImageService over `images` (as
/// kubelet's `--image-service-endpoint`).
pub(crate) async fn connect(ctrd: &Containerd, images: &Path) -> Cri {
    Cri::connect(&ctrd.socket, images)
        .await
        .unwrap_or_else(|e| panic!("CRI plugin not serving: {e}\n{}", ctrd.log_text()))
}

/// A pod named `name` with its logs under `dir` (see [`cri::pod_config`]).
pub(crate) fn pod_config(dir: &Path, name: &str, cgroup_parent: &str) -> cri::PodSandboxConfig {
    let log_dir = dir.join(format!("{name}-logs"));
    std::fs::create_dir_all(&log_dir).unwrap();
    rstargz_test_support::cri::pod_config(name, &log_dir, cgroup_parent)
}

/// RunPodSandbox, failing with containerd's log.
pub(crate) async fn run_pod(
    cri: &mut Cri,
    ctrd: &Containerd,
    sandbox: &cri::PodSandboxConfig,
) -> Pod {
    Pod::run(cri, sandbox)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", ctrd.log_text()))
}

/// Runs the checksum script in a container of `image_ref`; its stdout.
pub(crate) async fn run_sums(
    cri: &mut Cri,
    pod: &Pod,
    sandbox: &cri::PodSandboxConfig,
    image_ref: &str,
    name: &str,
) -> String {
    let command: Vec<String> = vec![
        "/bin/busybox".into(),
        "sh".into(),
        "-c".into(),
        sums_script(),
    ];
    cri.run_container(pod.id(), sandbox, image_ref, name, &command)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cri_pull_and_run_through_containerd() {
    let started = Instant::now();
    let _run_dir = RunDirGuard::new();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let reg = TestRegistry::start().await;
    let host = reg.host();

    // The pause image, the plain image and its eStargz conversion.
    push_pause_image(dir, &host, "cri/pause:v1").await;
    let layers = image_layers(dir);
    let plain = format!("{host}/cri/plain:v1");
    let esgz = format!("{host}/cri/esgz:v1");
    push_workload(&client(dir), &host, "cri", &layers, dir).await;
    let esgz_layers = layer_digests(&client(dir), &host, "cri/esgz:v1").await;
    assert_eq!(esgz_layers.len(), 3);

    // The pod's cgroup parent (declared before containerd: on a failure
    // containerd's guard kills the containers first).
    let cgroup_parent = format!("rstargz-cri-{}", std::process::id());
    let _cgroups = CgroupParent(cgroup_parent.clone());
    let d = start_daemon(dir);
    let ctrd = Containerd::start_cri(
        dir,
        &d.socket,
        PLUGIN,
        &CriConfig {
            sandbox_image: format!("{host}/cri/pause:v1"),
            plain_http_registries: vec![host.clone()],
            ..CriConfig::default()
        },
    );
    let mut cri = connect(&ctrd, &ctrd.socket).await;

    let sandbox = pod_config(dir, "rstargz-cri", &cgroup_parent);

    // Kubelet pulls the image before creating the container; the pause
    // image comes with RunPodSandbox (not eStargz: the fallback).
    let esgz_ref = cri.pull(&esgz, Some(&sandbox), None).await.unwrap();
    eprintln!("pulled {esgz} as {esgz_ref}");
    let log = d.log_text();
    assert!(
        !log.contains("remote-snapshot-prepared=\"false\"")
            && prepared(&d, "true") == esgz_layers.len(),
        "the CRI pull fell back: {log}"
    );
    // Every layer a remote snapshot made from the CRI labels alone.
    let labels = committed_labels(&d).await;
    assert_eq!(labels.len(), esgz_layers.len(), "{labels:?}");
    for l in &labels {
        assert!(l.contains_key(REMOTE_LABEL), "not remote: {l:?}");
        assert_eq!(l.get(CRI_IMAGE_REF), Some(&esgz), "{l:?}");
        assert!(!l.contains_key(rstargz_fs::registry::labels::STARGZ_REFERENCE));
    }
    let mut digests: Vec<&str> = labels
        .iter()
        .map(|l| l[CRI_LAYER_DIGEST].as_str())
        .collect();
    digests.sort_unstable();
    let mut want: Vec<&str> = esgz_layers.iter().map(String::as_str).collect();
    want.sort_unstable();
    assert_eq!(digests, want, "one remote snapshot per layer");
    for l in &labels {
        let listed = &l[CRI_IMAGE_LAYERS];
        assert!(
            listed.contains(&l[CRI_LAYER_DIGEST]),
            "{CRI_IMAGE_LAYERS}={listed}"
        );
    }
    assert_eq!(
        fuse_mounts(&d),
        esgz_layers.len(),
        "one FUSE mount per layer"
    );

    let mut pod = run_pod(&mut cri, &ctrd, &sandbox).await;
    let want = expected_sums(&layers);
    assert_eq!(
        run_sums(&mut cri, &pod, &sandbox, &esgz_ref, "esgz").await,
        want
    );
    let remote_after_esgz = prepared(&d, "true");
    assert_eq!(remote_after_esgz, esgz_layers.len());

    // The plain image: no eStargz layer, so every layer on the fallback.
    let false_before = prepared(&d, "false");
    let plain_ref = cri.pull(&plain, Some(&sandbox), None).await.unwrap();
    assert_eq!(
        prepared(&d, "false") - false_before,
        layers.len(),
        "one fallback per plain layer: {}",
        d.log_text()
    );
    assert_eq!(prepared(&d, "true"), remote_after_esgz);
    assert_eq!(
        run_sums(&mut cri, &pod, &sandbox, &plain_ref, "plain").await,
        want
    );
    let labels = committed_labels(&d).await;
    let plain_snaps: Vec<_> = labels
        .iter()
        .filter(|l| l.get(CRI_IMAGE_REF) == Some(&plain))
        .collect();
    assert_eq!(plain_snaps.len(), layers.len(), "{labels:?}");
    assert!(
        plain_snaps.iter().all(|l| !l.contains_key(REMOTE_LABEL)),
        "plain layers are local: {plain_snaps:?}"
    );

    // Tear the pod down as kubelet does; nothing of it stays mounted.
    pod.remove(&mut cri).await.unwrap();
    for d in ["cstate", "croot"] {
        let left = mounts_under(&dir.join(d));
        assert!(
            left.is_empty(),
            "left mounted after RemovePodSandbox: {left:?}"
        );
    }
    drop(cri);
    drop(ctrd);
    d.stop();
    let left = unmount_all_under(dir);
    assert!(left.is_empty(), "mounts left under the temp dir: {left:?}");
    eprintln!("CRI end to end in {:?}", started.elapsed());
}
