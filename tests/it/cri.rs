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
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::containerd::{Containerd, CriConfig, RunDirGuard};
use common::workload::{BUSYBOX, expected_sums, image_layers, sums_script, unmount_all_under};
use common::*;
use image_common::registry::TestRegistry;
use image_common::{at, client};
use rstargz_fs::registry::OciDigest;
use rstargz_image::Store;
use rstargz_image::build::{self, BuildOptions, LayerInput};
use rstargz_image::oci::Descriptor;
use rstargz_proto::cri;
use rstargz_proto::cri::image_service_client::ImageServiceClient;
use rstargz_proto::cri::runtime_service_client::RuntimeServiceClient;
use rstargz_snapshotter::snapshot::REMOTE_LABEL;
use rstargz_test_support::daemon::DEADLINE;
use rstargz_test_support::host::{cgroup_dirs, mounts_under};
use tonic::transport::Channel;

/// The proxy plugin's name, as CRI configs usually spell it.
pub(crate) const PLUGIN: &str = "stargz";
const CRI_IMAGE_REF: &str = "containerd.io/snapshot/cri.image-ref";
const CRI_LAYER_DIGEST: &str = "containerd.io/snapshot/cri.layer-digest";
const CRI_IMAGE_LAYERS: &str = "containerd.io/snapshot/cri.image-layers";
/// How long a container may take to run to its end.
const RUN_DEADLINE: Duration = Duration::from_secs(60);

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

/// The pause image: busybox-static alone, its entrypoint a long sleep (CRI
/// kills it with SIGKILL on StopPodSandbox). `build::from_dirs` writes a
/// `/bin/sh` Cmd, so the config is replaced.
pub(crate) async fn push_pause_image(dir: &Path, host: &str, repo: &str) {
    let layer = dir.join("l-pause");
    std::fs::create_dir_all(layer.join("bin")).unwrap();
    std::fs::copy(BUSYBOX, layer.join("bin/busybox")).unwrap();
    for d in ["proc", "sys", "dev", "etc"] {
        std::fs::create_dir_all(layer.join(d)).unwrap();
    }
    let client = client(dir);
    let dst = at(host, repo);
    build::from_dirs(
        &client,
        &dst,
        &[LayerInput::Dir(layer)],
        &BuildOptions::default(),
    )
    .await
    .unwrap();
    let store = Store::destination(&client, &dst).unwrap();
    let root = store.root().await.unwrap();
    let mut manifest: serde_json::Value = serde_json::from_slice(&root.bytes).unwrap();
    let config_desc: Descriptor = serde_json::from_value(manifest["config"].clone()).unwrap();
    let mut config: serde_json::Value =
        serde_json::from_slice(&store.document(&config_desc).await.unwrap()).unwrap();
    config["config"] = serde_json::json!({"Entrypoint": ["/bin/busybox", "sleep", "86400"]});
    let config = Bytes::from(serde_json::to_vec(&config).unwrap());
    manifest["config"]["digest"] = OciDigest::sha256_of(&config).to_string().into();
    manifest["config"]["size"] = config.len().into();
    store.put_blob_bytes(config).await.unwrap();
    let body = Bytes::from(serde_json::to_vec(&manifest).unwrap());
    let desc = Descriptor::new(
        &root.media_type,
        &OciDigest::sha256_of(&body),
        body.len() as u64,
    );
    store.put_root(&desc, body).await.unwrap();
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

/// Host-network namespaces (no CNI): the pod and its containers share the
/// node's network.
pub(crate) fn host_network() -> cri::NamespaceOption {
    cri::NamespaceOption {
        network: cri::NamespaceMode::Node as i32,
        pid: cri::NamespaceMode::Container as i32,
        ipc: cri::NamespaceMode::Pod as i32,
        ..Default::default()
    }
}

/// The CRI clients: RuntimeService over containerd's socket, ImageService
/// over containerd's or (the CRI keychain) another.
pub(crate) struct Cri {
    pub(crate) runtime: RuntimeServiceClient<Channel>,
    pub(crate) images: ImageServiceClient<Channel>,
}

impl Cri {
    /// Connects and waits (bounded) for the CRI plugin to answer.
    pub(crate) async fn connect(ctrd: &Containerd) -> Cri {
        Cri::connect_with_images(ctrd, &ctrd.socket).await
    }

    /// Connects, the ImageService over `images` (as kubelet's
    /// `--image-service-endpoint`), and waits (bounded) for the CRI plugin.
    pub(crate) async fn connect_with_images(ctrd: &Containerd, images: &Path) -> Cri {
        let channel = rstargz_snapshotter::client::channel(&ctrd.socket)
            .await
            .unwrap();
        let images = rstargz_snapshotter::client::channel(images).await.unwrap();
        let mut cri = Cri {
            runtime: RuntimeServiceClient::new(channel),
            images: ImageServiceClient::new(images),
        };
        let start = Instant::now();
        loop {
            match cri.runtime.version(cri::VersionRequest::default()).await {
                Ok(v) => {
                    let v = v.into_inner();
                    eprintln!(
                        "CRI {} {} {}",
                        v.runtime_name, v.runtime_version, v.runtime_api_version
                    );
                    return cri;
                }
                Err(e) => assert!(
                    start.elapsed() < DEADLINE,
                    "CRI plugin not serving: {e}\n{}",
                    ctrd.log_text()
                ),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// PullImage; returns the image ref (its ID), as kubelet then uses it.
    pub(crate) async fn pull(
        &mut self,
        image: &str,
        sandbox: Option<&cri::PodSandboxConfig>,
    ) -> String {
        self.pull_with_auth(image, sandbox, None).await
    }

    /// PullImage with `auth` (a pod's imagePullSecret).
    pub(crate) async fn pull_with_auth(
        &mut self,
        image: &str,
        sandbox: Option<&cri::PodSandboxConfig>,
        auth: Option<cri::AuthConfig>,
    ) -> String {
        self.images
            .pull_image(pull_request(image, sandbox, auth))
            .await
            .unwrap_or_else(|e| panic!("PullImage {image}: {e}"))
            .into_inner()
            .image_ref
    }

    /// Creates, starts and waits (bounded) for a container of `image_ref`
    /// running the checksum script; returns its CRI log's stdout lines.
    pub(crate) async fn run_sums(
        &mut self,
        sandbox_id: &str,
        sandbox: &cri::PodSandboxConfig,
        image_ref: &str,
        name: &str,
    ) -> String {
        let log_path = format!("{name}.log");
        let config = cri::ContainerConfig {
            metadata: Some(cri::ContainerMetadata {
                name: name.into(),
                attempt: 0,
            }),
            image: Some(cri::ImageSpec {
                image: image_ref.into(),
                ..Default::default()
            }),
            command: vec![
                "/bin/busybox".into(),
                "sh".into(),
                "-c".into(),
                sums_script(),
            ],
            log_path: log_path.clone(),
            linux: Some(cri::LinuxContainerConfig {
                security_context: Some(cri::LinuxContainerSecurityContext {
                    namespace_options: Some(host_network()),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let id = self
            .runtime
            .create_container(cri::CreateContainerRequest {
                pod_sandbox_id: sandbox_id.into(),
                config: Some(config),
                sandbox_config: Some(sandbox.clone()),
            })
            .await
            .unwrap_or_else(|e| panic!("CreateContainer {name}: {e}"))
            .into_inner()
            .container_id;
        self.runtime
            .start_container(cri::StartContainerRequest {
                container_id: id.clone(),
            })
            .await
            .unwrap_or_else(|e| panic!("StartContainer {name}: {e}"));
        let start = Instant::now();
        let status = loop {
            let status = self
                .runtime
                .container_status(cri::ContainerStatusRequest {
                    container_id: id.clone(),
                    verbose: false,
                })
                .await
                .unwrap()
                .into_inner()
                .status
                .unwrap();
            if status.state == cri::ContainerState::ContainerExited as i32 {
                break status;
            }
            assert!(
                start.elapsed() < RUN_DEADLINE,
                "container {name} still {:?}",
                cri::ContainerState::try_from(status.state)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let log = Path::new(&sandbox.log_directory).join(&log_path);
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        assert_eq!(
            (status.exit_code, status.reason.as_str()),
            (0, "Completed"),
            "container {name}: {} {text}",
            status.message
        );
        self.runtime
            .remove_container(cri::RemoveContainerRequest { container_id: id })
            .await
            .unwrap();
        cri_log_stdout(&text)
    }
}

/// A PullImageRequest of `image` with `auth`.
pub(crate) fn pull_request(
    image: &str,
    sandbox: Option<&cri::PodSandboxConfig>,
    auth: Option<cri::AuthConfig>,
) -> cri::PullImageRequest {
    cri::PullImageRequest {
        image: Some(cri::ImageSpec {
            image: image.into(),
            ..Default::default()
        }),
        auth,
        sandbox_config: sandbox.cloned(),
    }
}

/// A pod named `name`: host network, its own log directory under `dir` and
/// the cgroup parent `cgroup_parent`.
pub(crate) fn pod_config(dir: &Path, name: &str, cgroup_parent: &str) -> cri::PodSandboxConfig {
    let log_dir = dir.join(format!("{name}-logs"));
    std::fs::create_dir_all(&log_dir).unwrap();
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: name.into(),
            uid: format!("{name}-{}", std::process::id()),
            namespace: "default".into(),
            attempt: 0,
        }),
        log_directory: log_dir.to_str().unwrap().into(),
        linux: Some(cri::LinuxPodSandboxConfig {
            cgroup_parent: format!("/{cgroup_parent}"),
            security_context: Some(cri::LinuxSandboxSecurityContext {
                namespace_options: Some(host_network()),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The stdout lines of a CRI log (`<time> <stream> <P|F> <line>`), joined;
/// a `P` (partial) entry continues on the next one.
fn cri_log_stdout(text: &str) -> String {
    let mut out = String::new();
    for line in text.lines() {
        let mut parts = line.splitn(4, ' ');
        let (_time, stream, tag) = (parts.next(), parts.next(), parts.next());
        let content = parts.next().unwrap_or("");
        assert!(
            matches!(tag, Some("F" | "P")),
            "not a CRI log line: {line:?}"
        );
        if stream == Some("stdout") {
            out.push_str(content);
            if tag == Some("F") {
                out.push('\n');
            }
        }
    }
    out
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
        },
    );
    let mut cri = Cri::connect(&ctrd).await;

    let sandbox = pod_config(dir, "rstargz-cri", &cgroup_parent);

    // Kubelet pulls the image before creating the container; the pause
    // image comes with RunPodSandbox (not eStargz: the fallback).
    let esgz_ref = cri.pull(&esgz, Some(&sandbox)).await;
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

    let mut pod = Pod::run(&mut cri, &ctrd, &sandbox).await;
    let sandbox_id = pod.id.clone().unwrap();
    let want = expected_sums(&layers);
    assert_eq!(
        cri.run_sums(&sandbox_id, &sandbox, &esgz_ref, "esgz").await,
        want
    );
    let remote_after_esgz = prepared(&d, "true");
    assert_eq!(remote_after_esgz, esgz_layers.len());

    // The plain image: no eStargz layer, so every layer on the fallback.
    let false_before = prepared(&d, "false");
    let plain_ref = cri.pull(&plain, Some(&sandbox)).await;
    assert_eq!(
        prepared(&d, "false") - false_before,
        layers.len(),
        "one fallback per plain layer: {}",
        d.log_text()
    );
    assert_eq!(prepared(&d, "true"), remote_after_esgz);
    assert_eq!(
        cri.run_sums(&sandbox_id, &sandbox, &plain_ref, "plain")
            .await,
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
    pod.remove(&mut cri).await;
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

/// A running pod sandbox; stopped and removed over CRI on drop too (a
/// failed test), before the containerd guard kills what is left.
pub(crate) struct Pod {
    socket: PathBuf,
    pub(crate) id: Option<String>,
}

impl Pod {
    /// RunPodSandbox.
    pub(crate) async fn run(
        cri: &mut Cri,
        ctrd: &Containerd,
        config: &cri::PodSandboxConfig,
    ) -> Pod {
        let id = cri
            .runtime
            .run_pod_sandbox(cri::RunPodSandboxRequest {
                config: Some(config.clone()),
                runtime_handler: String::new(),
            })
            .await
            .unwrap_or_else(|e| panic!("RunPodSandbox: {e}\n{}", ctrd.log_text()))
            .into_inner()
            .pod_sandbox_id;
        Pod {
            socket: ctrd.socket.clone(),
            id: Some(id),
        }
    }

    /// StopPodSandbox and RemovePodSandbox, as kubelet tears a pod down.
    pub(crate) async fn remove(&mut self, cri: &mut Cri) {
        let id = self.id.take().unwrap();
        stop_and_remove(&mut cri.runtime, &id).await.unwrap();
    }
}

async fn stop_and_remove(
    runtime: &mut RuntimeServiceClient<Channel>,
    id: &str,
) -> Result<(), tonic::Status> {
    runtime
        .stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: id.into(),
        })
        .await?;
    runtime
        .remove_pod_sandbox(cri::RemovePodSandboxRequest {
            pod_sandbox_id: id.into(),
        })
        .await?;
    Ok(())
}

impl Drop for Pod {
    fn drop(&mut self) {
        let Some(id) = self.id.take() else { return };
        let socket = self.socket.clone();
        // Drop may run on the test's runtime: a thread of its own blocks.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let Ok(channel) = rstargz_snapshotter::client::channel(&socket).await else {
                    return;
                };
                let mut runtime = RuntimeServiceClient::new(channel);
                let res = tokio::time::timeout(DEADLINE, stop_and_remove(&mut runtime, &id)).await;
                eprintln!("pod {id} torn down after a failure: {res:?}");
            });
        })
        .join();
    }
}

/// The pod's cgroup parent: runc removes the containers' cgroups below it,
/// the parent itself (in every hierarchy) goes on drop; it must be empty.
pub(crate) struct CgroupParent(pub(crate) String);

impl Drop for CgroupParent {
    fn drop(&mut self) {
        let dirs: Vec<PathBuf> = cgroup_dirs(&self.0);
        for d in &dirs {
            if let Err(e) = std::fs::remove_dir(d)
                && !std::thread::panicking()
            {
                panic!("cgroup {} not empty (a container leaked): {e}", d.display());
            }
        }
    }
}
