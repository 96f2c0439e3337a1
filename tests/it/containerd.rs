//! End to end with a real containerd: rstargz registered as a
//! `proxy_plugins` snapshotter in a scratch containerd (own root, state and
//! socket, CRI off). `ctr` drives snapshots directly, then imports a tiny
//! OCI image, which containerd unpacks through rstargz (Prepare of an
//! `extract-*` key on the overlayfs fallback, apply, Commit as the chain id).

#![allow(clippy::unwrap_used)]

use crate::common;

use std::path::{Path, PathBuf};

use common::containerd::Containerd;
use common::*;
use rstargz_proto::snapshots as pb;
use sha2::{Digest, Sha256};

fn sha256(data: &[u8]) -> String {
    format!("sha256:{}", hex(&Sha256::digest(data)))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A one-layer OCI image archive holding `hello.txt`; returns the archive
/// and the layer's diff id (= chain id).
fn oci_image(dir: &Path) -> (PathBuf, String) {
    let mut layer = tar::Builder::new(Vec::new());
    let content = b"hello from rstargz\n";
    let mut header = tar::Header::new_gnu();
    header.set_size(content.len() as u64);
    header.set_mode(0o644);
    header.set_cksum();
    layer
        .append_data(&mut header, "hello.txt", &content[..])
        .unwrap();
    let layer = layer.into_inner().unwrap();
    let diff_id = sha256(&layer);
    let config = serde_json::json!({
        "architecture": std::env::consts::ARCH.replace("x86_64", "amd64").replace("aarch64", "arm64"),
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "config": {}
    })
    .to_string()
    .into_bytes();
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": sha256(&config), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": diff_id, "size": layer.len()}]
    })
    .to_string()
    .into_bytes();
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                       "digest": sha256(&manifest), "size": manifest.len(),
                       "annotations": {"io.containerd.image.name": "docker.io/library/rstargz-test:latest",
                                       "org.opencontainers.image.ref.name": "latest"}}]
    })
    .to_string()
    .into_bytes();
    let path = dir.join("image.tar");
    let mut archive = tar::Builder::new(std::fs::File::create(&path).unwrap());
    let mut add = |name: &str, data: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        archive.append_data(&mut h, name, data).unwrap();
    };
    add("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#);
    add("index.json", &index);
    for blob in [&layer, &config, &manifest] {
        let d = sha256(blob);
        add(&format!("blobs/sha256/{}", &d["sha256:".len()..]), blob);
    }
    archive.finish().unwrap();
    (path, diff_id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containerd_uses_rstargz_as_proxy_snapshotter() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path());
    let ctrd = Containerd::start(dir.path(), &d.socket, "stargz");
    let plugins = ctrd.ctr(&["plugins", "ls"]);
    assert!(
        plugins.lines().any(|l| l.contains("snapshotter")
            && l.contains("stargz")
            && l.trim_end().ends_with("ok")),
        "{plugins}"
    );

    // Snapshot operations through containerd's metadata layer.
    let snap = |args: &[&str]| {
        let mut all = vec!["snapshot", "--snapshotter", "stargz"];
        all.extend_from_slice(args);
        ctrd.ctr(&all)
    };
    snap(&["prepare", "k1"]);
    snap(&["commit", "c1", "k1"]);
    snap(&["prepare", "k2", "c1"]);
    let mounts = snap(&["mounts", "/mnt", "k2"]);
    assert!(mounts.contains("mount -t overlay overlay /mnt"), "{mounts}");
    assert!(
        mounts.contains(&format!("lowerdir={}", d.root.join("snapshots").display())),
        "{mounts}"
    );
    let ls = snap(&["ls"]);
    assert!(
        ls.contains("c1") && ls.contains("Committed") && ls.contains("Active"),
        "{ls}"
    );
    snap(&["rm", "k2"]);
    snap(&["rm", "c1"]);
    assert_eq!(snap(&["ls"]).lines().count(), 1, "only the header remains");

    // Image import: containerd unpacks the layer through rstargz.
    let (image, chain_id) = oci_image(dir.path());
    ctrd.ctr(&[
        "images",
        "import",
        "--snapshotter",
        "stargz",
        "--no-unpack=false",
        image.to_str().unwrap(),
    ]);
    let ls = snap(&["ls"]);
    assert!(ls.contains(&chain_id), "unpacked layer missing: {ls}");

    // The committed layer holds the file: look at it through our own API.
    let mut c = d.client().await;
    let committed = list(&mut c, &["kind==committed"]).await.unwrap();
    let name = committed
        .iter()
        .find(|n| n.ends_with(&chain_id))
        .unwrap_or_else(|| panic!("{chain_id} not in {committed:?}"))
        .clone();
    let view = c
        .view(pb::ViewSnapshotRequest {
            snapshotter: String::new(),
            key: "check-view".into(),
            parent: name,
            labels: Default::default(),
        })
        .await
        .unwrap()
        .into_inner()
        .mounts;
    let fs = bind_source(&view);
    assert_eq!(
        std::fs::read(fs.join("hello.txt")).unwrap(),
        b"hello from rstargz\n"
    );
    remove(&mut c, "check-view").await.unwrap();
    drop(c);
    drop(ctrd);
    d.stop();
}
