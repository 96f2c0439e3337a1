//! End to end with containerd, the way a user runs rstargz: a real
//! docker-registry (behind a byte-counting proxy), `rstargz serve` as a
//! containerd proxy snapshotter, an image built from busybox-static plus
//! data files, converted with `rstargz image convert`, pulled lazily with
//! `ctr-remote image rpull`, and run with `ctr run`: the container's
//! checksums of its files must match the originals, also after rstargz
//! restarts. The plain image goes through the overlayfs fallback. Needs
//! root, containerd, runc, ctr-remote (stargz-snapshotter) and
//! busybox-static: a missing one fails the test.

#![allow(clippy::unwrap_used)]

use crate::common;
use crate::common::image as image_common;

use std::path::Path;
use std::process::Command;

use common::containerd::{Containerd, RunDirGuard};
use common::workload::{expected_sums, image_layers, run_sums, unmount_all_under};
use common::*;
use image_common::proxy::FaultProxy;
use image_common::registry::TestRegistry;
use image_common::{at, client};
use rstargz_image::Store;
use rstargz_image::build::{self, BuildOptions, LayerInput};
use rstargz_snapshotter::snapshot::REMOTE_LABEL;

const PLUGIN: &str = "rstargz";
const NAMESPACE: &str = "rstargz-e2e";

/// Daemon config: no ambient credentials, no background fetch (it would
/// blur what the pull fetched).
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

/// Sum of the layer blob sizes of the image at `reference`.
async fn layer_bytes(scratch: &Path, host: &str, repo: &str) -> (u64, usize) {
    let store = Store::source(&client(scratch), &at(host, repo)).unwrap();
    let root = store.root().await.unwrap();
    let json: serde_json::Value = serde_json::from_slice(&root.bytes).unwrap();
    let layers = json["layers"].as_array().unwrap();
    (
        layers.iter().map(|l| l["size"].as_u64().unwrap()).sum(),
        layers.len(),
    )
}

/// Committed snapshots, and how many of them carry the remote label
/// (asked over our own gRPC socket).
async fn committed_and_remote(d: &Daemon) -> (usize, usize) {
    let mut c = d.client().await;
    let names = list(&mut c, &["kind==committed"]).await.unwrap();
    let mut remote = 0;
    for name in &names {
        if stat(&mut c, name)
            .await
            .unwrap()
            .labels
            .contains_key(REMOTE_LABEL)
        {
            remote += 1;
        }
    }
    (names.len(), remote)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lazy_pull_and_run_with_containerd() {
    let _run_dir = RunDirGuard::new();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let reg = TestRegistry::start().await;
    let proxy = FaultProxy::start(reg.addr).await;

    // Build the plain image and convert it (straight at the registry: the
    // proxy counts only what the pull and the container fetch).
    let layers = image_layers(dir);
    let inputs: Vec<LayerInput> = layers.iter().cloned().map(LayerInput::Dir).collect();
    let plain_src = format!("{}/e2e/plain:v1", reg.host());
    build::from_dirs(
        &client(dir),
        &at(&reg.host(), "e2e/plain:v1"),
        &inputs,
        &BuildOptions::default(),
    )
    .await
    .unwrap();
    let esgz_src = format!("{}/e2e/esgz:v1", reg.host());
    let out = Command::new(env!("CARGO_BIN_EXE_rstargz"))
        .args(["image", "convert"])
        .args([&plain_src, &esgz_src])
        .env("DOCKER_CONFIG", dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (image_size, layer_count) = layer_bytes(dir, &reg.host(), "e2e/esgz:v1").await;
    assert_eq!(layer_count, 3);

    let d = start_daemon(dir);
    let ctrd = Containerd::start(dir, &d.socket, PLUGIN);

    // Lazy pull through the proxy.
    let esgz = format!("{}/e2e/esgz:v1", proxy.host());
    let before = proxy.bytes_sent();
    ctrd.rpull(NAMESPACE, PLUGIN, &esgz);
    let pulled = proxy.bytes_sent() - before;
    eprintln!(
        "rpull fetched {pulled} bytes of {image_size} layer bytes ({:.1}%)",
        pulled as f64 * 100.0 / image_size as f64
    );
    let log = d.log_text();
    assert!(
        !log.contains("remote-snapshot-prepared=\"false\"")
            && log.matches("remote-snapshot-prepared=\"true\"").count() == layer_count,
        "rpull fell back: {log}"
    );
    assert_eq!(
        committed_and_remote(&d).await,
        (layer_count, layer_count),
        "one remote snapshot per layer"
    );
    assert!(
        pulled * 5 < image_size,
        "lazy pull fetched {pulled} of {image_size} bytes"
    );

    // The container reads the files (fetched on demand).
    let want = expected_sums(&layers);
    assert_eq!(
        run_sums(&ctrd, dir, NAMESPACE, PLUGIN, &esgz, "esgz-1"),
        want
    );
    let after_run = proxy.bytes_sent() - before;
    eprintln!("after the first run: {after_run} bytes");
    assert!(
        after_run > pulled + (5 << 20),
        "the container's reads of /data were not fetched on demand ({after_run} bytes)"
    );

    // Restart rstargz on the same root: the remote layers come back.
    d.stop();
    let d = start_daemon(dir);
    ctrd.wait_snapshotter(PLUGIN);
    assert_eq!(
        run_sums(&ctrd, dir, NAMESPACE, PLUGIN, &esgz, "esgz-2"),
        want
    );

    // The plain image: ordinary pull, unpacked on the overlayfs fallback.
    let plain = format!("{}/e2e/plain:v1", proxy.host());
    ctrd.ctr(&[
        "--namespace",
        NAMESPACE,
        "image",
        "pull",
        "--plain-http",
        "--snapshotter",
        PLUGIN,
        &plain,
    ]);
    assert_eq!(
        run_sums(&ctrd, dir, NAMESPACE, PLUGIN, &plain, "plain-1"),
        want
    );
    assert_eq!(
        committed_and_remote(&d).await,
        (2 * layer_count, layer_count),
        "the plain image's layers are local (overlayfs fallback)"
    );

    drop(ctrd);
    d.stop();
    let left = unmount_all_under(dir);
    assert!(left.is_empty(), "mounts left under the temp dir: {left:?}");
}
