//! Where the CRI keychain's ImageService is served: on the Snapshots socket
//! by default, on a socket of its own with `[cri_keychain] listen_path`
//! (removed at stop); not at all without `enable_keychain`. With nothing on
//! `image_service_path` a call fails with Unavailable (it is forwarded),
//! never with Unimplemented.

#![allow(clippy::unwrap_used)]

use crate::common;

use std::path::Path;

use common::*;
use rstargz_proto::cri;
use rstargz_proto::cri::image_service_client::ImageServiceClient;
use tonic::Code;

/// The code of ListImages over `socket`.
async fn list_images(socket: &Path) -> Code {
    let channel = rstargz_snapshotter::client::channel(socket).await.unwrap();
    ImageServiceClient::new(channel)
        .list_images(cri::ListImagesRequest::default())
        .await
        .map_or_else(|s| s.code(), |_| Code::Ok)
}

fn start(dir: &Path, cri_keychain: &str) -> Daemon {
    let config = dir.join("rstargz.toml");
    std::fs::write(&config, format!("[cri_keychain]\n{cri_keychain}")).unwrap();
    Daemon::start_with(dir, &["--config", config.to_str().unwrap()])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_image_service_is_on_the_snapshots_socket_or_its_own() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let absent = dir.join("no-containerd.sock");

    let d = start(dir, "enable_keychain = false\n");
    assert_eq!(list_images(&d.socket).await, Code::Unimplemented);
    d.stop();

    let d = start(
        dir,
        &format!("enable_keychain = true\nimage_service_path = {absent:?}\n"),
    );
    assert_eq!(list_images(&d.socket).await, Code::Unavailable);
    d.stop();

    let own = dir.join("cri.sock");
    let d = start(
        dir,
        &format!(
            "enable_keychain = true\nimage_service_path = {absent:?}\nlisten_path = {own:?}\n"
        ),
    );
    assert_eq!(list_images(&own).await, Code::Unavailable);
    assert_eq!(list_images(&d.socket).await, Code::Unimplemented);
    // The Snapshots service is still there.
    let mut c = d.client().await;
    assert!(list(&mut c, &[]).await.unwrap().is_empty());
    d.stop();
    assert!(!own.exists(), "its socket goes with the daemon");
}
