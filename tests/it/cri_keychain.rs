//! The CRI keychain end to end, as on a Kubernetes node whose kubelet runs
//! with `--image-service-endpoint` on rstargz's socket: a private eStargz
//! image on a `docker-registry` with htpasswd, its credentials only in the
//! PullImage request (rstargz has no docker config), containerd 1.6's CRI
//! plugin pulling it onto rstargz. Every layer must be remote, the
//! container's output right, and layer files nobody read yet must still
//! read after a live restart of rstargz and after kill -9 and a new daemon
//! (the credentials cross both in the fd holder). Without the keychain the
//! same pull falls back and says why. The pause image is on a registry of
//! its own, without auth (containerd pulls it without credentials).

#![allow(clippy::unwrap_used)]

use crate::common;
use crate::common::image as image_common;
use crate::cri::{
    PLUGIN, committed_labels, connect, fuse_mounts, layer_digests, pod_config, prepared,
    push_pause_image, push_workload, run_pod, run_sums,
};

use std::path::{Path, PathBuf};

use common::containerd::{Containerd, CriConfig, RunDirGuard};
use common::workload::{expected_sums, image_layers, unmount_all_under};
use common::*;
use image_common::registry::TestRegistry;
use rstargz_fs::registry::Registry;
use rstargz_proto::cri;
use rstargz_snapshotter::snapshot::REMOTE_LABEL;
use rstargz_test_support::cri::{CgroupParent, Cri, pull_request};
use rstargz_test_support::{docker_config, test_config};

const USER: &str = "kubelet";
const PASSWORD: &str = "Pull-S3cret-pw";
const IMAGE: &str = "kc/esgz:v1";

/// The private eStargz image and where everything about it is.
struct Private {
    registry: TestRegistry,
    /// The pause image's registry (no auth).
    plain: TestRegistry,
    /// The image's layer trees, bottom first.
    layers: Vec<PathBuf>,
    /// The image reference.
    image: String,
    /// Its layer digests.
    digests: Vec<String>,
}

/// Pushes the pause image (no auth) and the private image: built from the
/// workload's trees and converted to eStargz with the credentials, which
/// only the pushing side has.
async fn private_image(dir: &Path) -> Private {
    let plain = TestRegistry::start().await;
    let registry = TestRegistry::start_with_htpasswd(USER, PASSWORD).await;
    let host = registry.host();
    push_pause_image(dir, &plain.host(), "kc/pause:v1").await;
    let creds_dir = dir.join("pusher");
    std::fs::create_dir_all(&creds_dir).unwrap();
    let client = Registry::new(test_config(&docker_config(
        &creds_dir, &host, USER, PASSWORD,
    )))
    .unwrap();
    let layers = image_layers(dir);
    push_workload(&client, &host, "kc", &layers, &creds_dir).await;
    let digests = layer_digests(&client, &host, IMAGE).await;
    assert_eq!(digests.len(), layers.len());
    Private {
        image: format!("{host}/{IMAGE}"),
        registry,
        plain,
        layers,
        digests,
    }
}

/// One test's node: the private image, the pods' cgroup parent and the
/// scratch directory. Declared before the daemon and containerd, so it goes
/// after them (containerd's guard kills the containers before the cgroup
/// parent is removed).
struct Node {
    _cgroups: CgroupParent,
    cgroup_parent: String,
    p: Private,
    tmp: tempfile::TempDir,
    _run_dir: RunDirGuard,
}

impl Node {
    async fn new(name: &str) -> Node {
        let run_dir = RunDirGuard::new();
        let tmp = tempfile::tempdir().unwrap();
        let p = private_image(tmp.path()).await;
        let cgroup_parent = format!("rstargz-kc-{}-{name}", std::process::id());
        Node {
            _cgroups: CgroupParent(cgroup_parent.clone()),
            cgroup_parent,
            p,
            tmp,
            _run_dir: run_dir,
        }
    }

    fn dir(&self) -> &Path {
        self.tmp.path()
    }
}

/// The daemon: no docker config, nothing fetched but what is read (no
/// background fetch, no read-ahead), and the CRI keychain forwarding to the
/// containerd that will run under `dir` when `keychain`.
fn start(dir: &Path, keychain: bool) -> Daemon {
    let config = dir.join("rstargz.toml");
    let mut text = format!(
        "no_background_fetch = true\n[blob]\nread_amplify_bytes = 0\n\
         [resolver]\ndocker_config = {:?}\n",
        dir.join("no-docker-config.json")
    );
    if keychain {
        text.push_str(&format!(
            "[cri_keychain]\nenable_keychain = true\nimage_service_path = {:?}\n",
            dir.join("containerd.sock")
        ));
    }
    std::fs::write(&config, text).unwrap();
    Daemon::start_with(dir, &["--config", config.to_str().unwrap()])
}

/// containerd with CRI on `d`, the pause image from `p.plain`.
fn containerd(dir: &Path, d: &Daemon, p: &Private) -> Containerd {
    Containerd::start_cri(
        dir,
        &d.socket,
        PLUGIN,
        &CriConfig {
            sandbox_image: format!("{}/kc/pause:v1", p.plain.host()),
            plain_http_registries: vec![p.plain.host(), p.registry.host()],
            ..CriConfig::default()
        },
    )
}

/// The pod's imagePullSecret, as kubelet passes it.
fn pull_secret() -> cri::AuthConfig {
    cri::AuthConfig {
        username: USER.into(),
        password: PASSWORD.into(),
        ..Default::default()
    }
}

/// Reads the 25 files of `tree/d<n>` (nobody read them before) through
/// the tree layer's FUSE mount and compares them with their sources.
fn read_tree_dir(d: &Daemon, p: &Private, n: usize) {
    let rel = format!("tree/d{n:02}");
    let mount = rstargz_fs::fuse::mountinfo::read()
        .unwrap()
        .into_iter()
        .filter(|m| m.mountpoint.starts_with(d.snapshots_dir()) && m.fstype.starts_with("fuse"))
        .map(|m| m.mountpoint)
        .find(|m| m.join(&rel).is_dir())
        .unwrap_or_else(|| panic!("no FUSE mount has {rel}"));
    let source = p.layers[2].join(&rel);
    for f in 0..25 {
        let name = format!("f{f:03}.txt");
        let got = std::fs::read(mount.join(&rel).join(&name))
            .unwrap_or_else(|e| panic!("{rel}/{name}: {e}\n{}", d.log_text()));
        assert_eq!(
            got,
            std::fs::read(source.join(&name)).unwrap(),
            "{rel}/{name}"
        );
    }
}

/// Every daemon log under `dir` so far.
fn all_logs(dir: &Path) -> String {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("serve-"))
        .map(|e| std::fs::read_to_string(e.path()).unwrap())
        .collect()
}

/// An ImageService call through rstargz answers as containerd's own: the
/// same message, or the same error code and message.
async fn assert_passed_through(cri: &mut Cri, ctrd: &Containerd, missing: &str) {
    let channel = rstargz_snapshotter::client::channel(&ctrd.socket)
        .await
        .unwrap();
    let mut direct = cri::image_service_client::ImageServiceClient::new(channel);
    let ours = cri
        .images
        .pull_image(pull_request(missing, None, None))
        .await
        .unwrap_err();
    let theirs = direct
        .pull_image(pull_request(missing, None, None))
        .await
        .unwrap_err();
    eprintln!("PullImage of a missing image: {:?}", theirs.code());
    assert_ne!(theirs.code(), tonic::Code::Unknown, "{theirs:?}");
    assert_eq!(
        (ours.code(), ours.message()),
        (theirs.code(), theirs.message())
    );
    let ours = cri
        .images
        .list_images(cri::ListImagesRequest::default())
        .await
        .unwrap()
        .into_inner();
    let theirs = direct
        .list_images(cri::ListImagesRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ours, theirs);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_layers_read_with_the_pull_credentials_across_restarts() {
    let node = Node::new("remote").await;
    let (dir, p, cgroup_parent) = (node.dir(), &node.p, &node.cgroup_parent);
    // rstargz starts before containerd (its ImageService connects lazily).
    let mut d = start(dir, true);
    let ctrd = containerd(dir, &d, p);
    let mut cri = connect(&ctrd, &d.socket).await;
    assert_passed_through(
        &mut cri,
        &ctrd,
        &format!("{}/kc/missing:v1", p.plain.host()),
    )
    .await;

    let sandbox = pod_config(dir, "rstargz-kc-remote", cgroup_parent);
    let image_ref = cri
        .pull(&p.image, Some(&sandbox), Some(pull_secret()))
        .await
        .unwrap();
    let log = d.log_text();
    assert!(
        !log.contains("remote-snapshot-prepared=\"false\"")
            && prepared(&d, "true") == p.digests.len(),
        "the private pull fell back: {log}"
    );
    let labels = committed_labels(&d).await;
    assert_eq!(labels.len(), p.digests.len(), "{labels:?}");
    assert!(
        labels.iter().all(|l| l.contains_key(REMOTE_LABEL)),
        "{labels:?}"
    );
    assert_eq!(fuse_mounts(&d), p.digests.len(), "one FUSE mount per layer");

    let mut pod = run_pod(&mut cri, &ctrd, &sandbox).await;
    assert_eq!(
        run_sums(&mut cri, &pod, &sandbox, &image_ref, "sums").await,
        expected_sums(&p.layers)
    );

    // A live restart: the new daemon takes the mounts and the credentials.
    d.stop_for_restart();
    d = start(dir, true);
    let log = d.log_text();
    assert!(log.contains("live mount taken over"), "{log}");
    assert!(
        log.contains("CRI keychain: credentials taken over"),
        "{log}"
    );
    read_tree_dir(&d, p, 1);

    // kill -9: the fd holder still has both for the next daemon.
    d.signal_and_wait(nix::sys::signal::Signal::SIGKILL);
    let killed = std::mem::replace(&mut d, start(dir, true));
    drop(killed);
    assert!(
        d.log_text()
            .contains("CRI keychain: credentials taken over"),
        "{}",
        d.log_text()
    );
    read_tree_dir(&d, p, 2);

    // Teardown as kubelet does; a full stop leaves nothing in the holder.
    ctrd.wait_snapshotter(PLUGIN);
    pod.remove(&mut cri).await.unwrap();
    drop(cri);
    drop(ctrd);
    let holder = d.root.join("fdstore.sock");
    d.stop();
    wait_for("the fd holder to exit", || !holder.exists());
    let left = unmount_all_under(dir);
    assert!(left.is_empty(), "mounts left under the temp dir: {left:?}");
    let logs = all_logs(dir);
    assert!(!logs.contains(PASSWORD), "the password reached a log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_keychain_a_private_pull_falls_back_and_says_why() {
    let node = Node::new("fallback").await;
    let (dir, p, cgroup_parent) = (node.dir(), &node.p, &node.cgroup_parent);
    let d = start(dir, false);
    let ctrd = containerd(dir, &d, p);
    // kubelet talks to containerd alone.
    let mut cri = connect(&ctrd, &ctrd.socket).await;
    let sandbox = pod_config(dir, "rstargz-kc-fallback", cgroup_parent);
    let image_ref = cri
        .pull(&p.image, Some(&sandbox), Some(pull_secret()))
        .await
        .unwrap();
    let log = d.log_text();
    assert_eq!(prepared(&d, "true"), 0, "{log}");
    assert_eq!(prepared(&d, "false"), p.digests.len(), "{log}");
    let declined = log
        .lines()
        .filter(|l| l.contains("remote-snapshot-prepared=\"false\""))
        .filter(|l| l.contains("no credentials for the registry"))
        .count();
    assert_eq!(
        declined,
        p.digests.len(),
        "the reason names the credentials: {log}"
    );

    let mut pod = run_pod(&mut cri, &ctrd, &sandbox).await;
    assert_eq!(
        run_sums(&mut cri, &pod, &sandbox, &image_ref, "sums").await,
        expected_sums(&p.layers)
    );
    pod.remove(&mut cri).await.unwrap();
    drop(cri);
    drop(ctrd);
    d.stop();
    let left = unmount_all_under(dir);
    assert!(left.is_empty(), "mounts left under the temp dir: {left:?}");
    assert!(!all_logs(dir).contains(PASSWORD));
}
