//! `rstargz image convert` against a real docker-registry on 127.0.0.1 and
//! OCI layout directories: media types, annotations, TOC digests, content,
//! diffIDs, indexes, idempotent re-runs and bad input.

#![allow(clippy::unwrap_used)]

use crate::common::image as image_common;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use image_common::proxy::FaultProxy;
use image_common::registry::TestRegistry;
use image_common::{at, check_converted, client, fixture_layers};
use rstargz_fs::estargz::{Compression, WriterOptions};
use rstargz_fs::registry::Reference;
use rstargz_image::build::{self, BuildOptions, LayerCompression, LayerInput};
use rstargz_image::oci::{self, Descriptor};
use rstargz_image::{self as image, ConvertOptions, ImageError, ImageRef, Quiet, Store};

/// Converts `src` to `dst` quietly with the tests' options.
async fn convert(
    client: &rstargz_fs::registry::Registry,
    src: &ImageRef,
    dst: &ImageRef,
    compression: Compression,
) -> Result<image::ConvertReport, ImageError> {
    image::convert(client, src, dst, &options(compression), Arc::new(Quiet)).await
}

fn options(compression: Compression) -> ConvertOptions {
    ConvertOptions {
        writer: WriterOptions {
            compression,
            chunk_size: 1 << 20,
            ..WriterOptions::default()
        },
        ..ConvertOptions::default()
    }
}

fn dirs(layers: &[std::path::PathBuf]) -> Vec<LayerInput> {
    layers.iter().cloned().map(LayerInput::Dir).collect()
}

async fn root_descriptor(store: &Store) -> Descriptor {
    let root = store.root().await.unwrap();
    let json: serde_json::Value = serde_json::from_slice(&root.bytes).unwrap();
    Descriptor::new(
        &oci::document_media_type(&json, &root.media_type),
        &root.digest,
        root.bytes.len() as u64,
    )
}

/// Builds a docker-flavoured gzip image, converts it with the CLI and checks
/// the printed digest is what the registry serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_to_registry_gzip_via_cli() {
    let tmp = tempfile::tempdir().unwrap();
    let reg = TestRegistry::start().await;
    let client = client(tmp.path());
    let layers = fixture_layers(tmp.path(), 1);
    let src = at(&reg.host(), "plain/app:v1");
    let opts = BuildOptions {
        docker: true,
        ..BuildOptions::default()
    };
    build::from_dirs(&client, &src, &dirs(&layers), &opts)
        .await
        .unwrap();

    let dst = format!("{}/esgz/app:v1", reg.host());
    let out = Command::new(env!("CARGO_BIN_EXE_rstargz"))
        .args(["image", "convert", "--chunk-size", "1048576"])
        .arg(src.to_string())
        .arg(&dst)
        .env("DOCKER_CONFIG", tmp.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Not a terminal: no progress on stderr.
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(printed["reference"], dst);

    let served = client
        .get_manifest(&Reference::parse(&dst).unwrap())
        .await
        .unwrap();
    assert_eq!(printed["digest"], served.digest.to_string());
    assert_eq!(served.media_type, oci::DOCKER_MANIFEST);
    let store = Store::source(&client, &ImageRef::parse(&dst).unwrap()).unwrap();
    let desc = root_descriptor(&store).await;
    let checked = check_converted(&store, &desc, &layers, false, true, tmp.path()).await;
    assert_eq!(checked.media_type, oci::DOCKER_MANIFEST);
}

/// Plain-tar OCI source converted to zstd:chunked through the library.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_to_registry_zstd() {
    let tmp = tempfile::tempdir().unwrap();
    let reg = TestRegistry::start().await;
    let client = client(tmp.path());
    let layers = fixture_layers(tmp.path(), 2);
    let src = at(&reg.host(), "plain/app:v1");
    // Docker schema2 with plain tar layers: zstd output turns it into OCI.
    let opts = BuildOptions {
        compression: LayerCompression::None,
        docker: true,
        ..BuildOptions::default()
    };
    build::from_dirs(&client, &src, &dirs(&layers), &opts)
        .await
        .unwrap();
    let dst = at(&reg.host(), "zstd/app:v1");
    let report = convert(&client, &src, &dst, Compression::Zstd)
        .await
        .unwrap();
    let store = Store::source(&client, &dst).unwrap();
    let desc = root_descriptor(&store).await;
    assert_eq!(desc.digest, report.digest.to_string());
    let checked = check_converted(&store, &desc, &layers, true, false, tmp.path()).await;
    assert_eq!(checked.media_type, oci::OCI_MANIFEST);
    let manifest: serde_json::Value =
        serde_json::from_slice(&store.document(&desc).await.unwrap()).unwrap();
    assert_eq!(manifest["config"]["mediaType"], oci::OCI_CONFIG);
    assert_eq!(report.manifests[0].layers.len(), 2);
    assert!(report.manifests[0].layers.iter().all(|l| l.uploaded));
}

/// oci:DIR (zstd-compressed source) → registry (gzip), then the eStargz
/// image in the registry → oci:DIR again (re-conversion of eStargz input).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn layout_to_registry_and_back() {
    let tmp = tempfile::tempdir().unwrap();
    let reg = TestRegistry::start().await;
    let client = client(tmp.path());
    let layers = fixture_layers(tmp.path(), 3);
    let layout_dir = tmp.path().join("layout-src");
    let src = ImageRef::parse(&format!("oci:{}:v1", layout_dir.display())).unwrap();
    let opts = BuildOptions {
        compression: LayerCompression::Zstd,
        ..BuildOptions::default()
    };
    build::from_dirs(&client, &src, &dirs(&layers), &opts)
        .await
        .unwrap();

    let mid = at(&reg.host(), "esgz/app:v1");
    let first = convert(&client, &src, &mid, Compression::Gzip)
        .await
        .unwrap();
    let store = Store::source(&client, &mid).unwrap();
    let desc = root_descriptor(&store).await;
    assert_eq!(desc.digest, first.digest.to_string());
    check_converted(&store, &desc, &layers, false, false, tmp.path()).await;

    let out_dir = tmp.path().join("layout-dst");
    let dst = ImageRef::parse(&format!("oci:{}:converted", out_dir.display())).unwrap();
    let second = convert(&client, &mid, &dst, Compression::Gzip)
        .await
        .unwrap();
    assert!(out_dir.join("oci-layout").is_file());
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out_dir.join("index.json")).unwrap()).unwrap();
    let entry = &index["manifests"][0];
    assert_eq!(entry["annotations"][oci::ANNOTATION_REF_NAME], "converted");
    assert_eq!(entry["digest"], second.digest.to_string());
    // Converting an eStargz image again yields the same layers (the old TOC is dropped).
    assert_eq!(second.digest, first.digest);
    let store = Store::source(&client, &dst).unwrap();
    let desc = root_descriptor(&store).await;
    check_converted(&store, &desc, &layers, false, false, tmp.path()).await;
}

/// A two-platform index: both manifests are converted, platforms kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_platform_index() {
    let tmp = tempfile::tempdir().unwrap();
    let reg = TestRegistry::start().await;
    let client = client(tmp.path());
    let amd = fixture_layers(&tmp.path().join("amd64"), 4);
    let arm = fixture_layers(&tmp.path().join("arm64"), 5);
    let src = at(&reg.host(), "multi/app:v1");
    let platform = |arch: &str| BuildOptions {
        platform: ("linux".into(), arch.into()),
        ..BuildOptions::default()
    };
    build::index_from_dirs(
        &client,
        &src,
        &[
            (platform("amd64"), dirs(&amd)),
            (platform("arm64"), dirs(&arm)),
        ],
    )
    .await
    .unwrap();
    // An attestation entry (as BuildKit adds) must be left out, not converted.
    let src_store = Store::source(&client, &src).unwrap();
    let root = src_store.root().await.unwrap();
    let mut index: serde_json::Value = serde_json::from_slice(&root.bytes).unwrap();
    let mut attestation = index["manifests"][0].clone();
    attestation["platform"] = serde_json::json!({"architecture": "unknown", "os": "unknown"});
    index["manifests"].as_array_mut().unwrap().push(attestation);
    let body = serde_json::to_vec(&index).unwrap();
    let ImageRef::Registry(src_ref) = &src else {
        unreachable!()
    };
    client
        .put_manifest(src_ref, oci::OCI_INDEX, body.into())
        .await
        .unwrap();

    let dst = at(&reg.host(), "multi-esgz/app:v1");
    let report = convert(&client, &src, &dst, Compression::Gzip)
        .await
        .unwrap();
    assert_eq!(report.media_type, oci::OCI_INDEX);
    assert_eq!(report.manifests.len(), 2);
    let store = Store::source(&client, &dst).unwrap();
    let root = store.root().await.unwrap();
    assert_eq!(root.digest, report.digest);
    let index: serde_json::Value = serde_json::from_slice(&root.bytes).unwrap();
    let entries = oci::descriptors(&index, "manifests", "index").unwrap();
    let archs: Vec<_> = entries
        .iter()
        .map(|e| e.platform.as_ref().unwrap().architecture.clone())
        .collect();
    assert_eq!(archs, ["amd64", "arm64"]);
    for (entry, layers) in entries.iter().zip([&amd, &arm]) {
        check_converted(&store, entry, layers, false, false, tmp.path()).await;
    }
}

/// A second identical conversion uploads no blob and gives the same digests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rerun_skips_existing_blobs() {
    let tmp = tempfile::tempdir().unwrap();
    let reg = TestRegistry::start().await;
    let proxy = FaultProxy::start(reg.addr).await;
    let client = client(tmp.path());
    let layers = fixture_layers(tmp.path(), 6);
    let src = at(&proxy.host(), "plain/app:v1");
    build::from_dirs(&client, &src, &dirs(&layers), &BuildOptions::default())
        .await
        .unwrap();
    let dst = at(&proxy.host(), "esgz/app:v1");
    let uploads = |p: &FaultProxy| {
        p.seen()
            .iter()
            .filter(|s| s.method == "POST" && s.path.contains("/blobs/uploads/"))
            .count()
    };
    proxy.clear_seen();
    let first = convert(&client, &src, &dst, Compression::Gzip)
        .await
        .unwrap();
    // Two layers and the config.
    assert_eq!(uploads(&proxy), 3);
    proxy.clear_seen();
    let second = convert(&client, &src, &dst, Compression::Gzip)
        .await
        .unwrap();
    assert_eq!(uploads(&proxy), 0, "{:?}", proxy.seen());
    assert_eq!(first.digest, second.digest);
    assert!(second.manifests[0].layers.iter().all(|l| !l.uploaded));
    assert_eq!(
        first.manifests[0]
            .layers
            .iter()
            .map(|l| &l.digest)
            .collect::<Vec<_>>(),
        second.manifests[0]
            .layers
            .iter()
            .map(|l| &l.digest)
            .collect::<Vec<_>>()
    );
}

/// Builds a gzip image into an OCI layout and returns its layout dir and manifest.
async fn layout_image(tmp: &Path) -> (std::path::PathBuf, serde_json::Value) {
    let client = client(tmp);
    let layers = fixture_layers(tmp, 7);
    let dir = tmp.join("layout");
    let src = ImageRef::parse(&format!("oci:{}:v1", dir.display())).unwrap();
    let desc = build::from_dirs(&client, &src, &dirs(&layers), &BuildOptions::default())
        .await
        .unwrap();
    let manifest = std::fs::read(dir.join("blobs/sha256").join(&desc.digest[7..])).unwrap();
    (dir, serde_json::from_slice(&manifest).unwrap())
}

/// Replaces the layout's v1 manifest with `manifest`.
fn retag(dir: &Path, manifest: &serde_json::Value) {
    let layout = rstargz_image::layout::OciLayout::open(dir).unwrap();
    let body = serde_json::to_vec(manifest).unwrap();
    let digest = rstargz_fs::registry::OciDigest::sha256_of(&body);
    layout.write_blob_bytes(&digest, &body).unwrap();
    layout
        .set_tag(
            &Descriptor::new(oci::OCI_MANIFEST, &digest, body.len() as u64),
            Some("v1"),
        )
        .unwrap();
}

async fn convert_fails(tmp: &Path, reg: &TestRegistry, dir: &Path, repo: &str) -> ImageError {
    let client = client(tmp);
    let src = ImageRef::parse(&format!("oci:{}:v1", dir.display())).unwrap();
    let dst = at(&reg.host(), repo);
    let err = convert(&client, &src, &dst, Compression::Gzip)
        .await
        .unwrap_err();
    // Nothing was tagged at the destination.
    let ImageRef::Registry(r) = &dst else {
        unreachable!()
    };
    assert!(client.get_manifest(r).await.is_err(), "{repo} was tagged");
    err
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_a_clear_error_and_tags_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let reg = TestRegistry::start().await;

    // Unknown layer media type.
    let (dir, manifest) = layout_image(&tmp.path().join("a")).await;
    let mut odd = manifest.clone();
    odd["layers"][1]["mediaType"] = "application/x-mystery".into();
    retag(&dir, &odd);
    let err = convert_fails(tmp.path(), &reg, &dir, "bad/media:v1").await;
    assert!(
        matches!(&err, ImageError::UnsupportedMediaType { media_type, .. } if media_type == "application/x-mystery"),
        "{err}"
    );

    // A missing layer blob.
    let (dir, manifest) = layout_image(&tmp.path().join("b")).await;
    let digest = manifest["layers"][0]["digest"].as_str().unwrap().to_owned();
    std::fs::remove_file(dir.join("blobs/sha256").join(&digest[7..])).unwrap();
    let err = convert_fails(tmp.path(), &reg, &dir, "bad/missing:v1").await;
    assert!(err.to_string().contains(&digest[7..]), "{err}");

    // A corrupt layer blob (same size, different bytes).
    let (dir, manifest) = layout_image(&tmp.path().join("c")).await;
    let digest = manifest["layers"][0]["digest"].as_str().unwrap().to_owned();
    let path = dir.join("blobs/sha256").join(&digest[7..]);
    let mut bytes = std::fs::read(&path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&path, bytes).unwrap();
    let err = convert_fails(tmp.path(), &reg, &dir, "bad/corrupt:v1").await;
    assert!(
        matches!(&err, ImageError::DigestMismatch { expected, .. } if *expected == digest),
        "{err}"
    );
}

/// A foreign (non-distributable) layer is kept as is: same descriptor, same
/// diffID, blob not copied; the other layers are converted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_layers_pass_through() {
    let tmp = tempfile::tempdir().unwrap();
    let client = client(tmp.path());
    let (dir, mut manifest) = layout_image(tmp.path()).await;
    let layout = rstargz_image::layout::OciLayout::open(&dir).unwrap();
    let config_digest = manifest["config"]["digest"].as_str().unwrap().to_owned();
    let mut config: serde_json::Value = serde_json::from_slice(
        &std::fs::read(dir.join("blobs/sha256").join(&config_digest[7..])).unwrap(),
    )
    .unwrap();
    let foreign_digest = format!("sha256:{}", "ab".repeat(32));
    let foreign_diff_id = format!("sha256:{}", "cd".repeat(32));
    let foreign = serde_json::json!({
        "mediaType": oci::DOCKER_LAYER_FOREIGN,
        "digest": foreign_digest,
        "size": 1234,
        "urls": ["https://example.invalid/layer"],
    });
    manifest["layers"]
        .as_array_mut()
        .unwrap()
        .insert(0, foreign.clone());
    config["rootfs"]["diff_ids"]
        .as_array_mut()
        .unwrap()
        .insert(0, foreign_diff_id.clone().into());
    let config_body = serde_json::to_vec(&config).unwrap();
    let new_config = rstargz_fs::registry::OciDigest::sha256_of(&config_body);
    layout.write_blob_bytes(&new_config, &config_body).unwrap();
    manifest["config"]["digest"] = new_config.to_string().into();
    manifest["config"]["size"] = config_body.len().into();
    retag(&dir, &manifest);

    let src = ImageRef::parse(&format!("oci:{}:v1", dir.display())).unwrap();
    let out = tmp.path().join("out");
    let dst = ImageRef::parse(&format!("oci:{}:v1", out.display())).unwrap();
    let report = convert(&client, &src, &dst, Compression::Gzip)
        .await
        .unwrap();
    let layers = &report.manifests[0].layers;
    assert!(layers[0].passed_through && !layers[0].uploaded);
    assert_eq!(layers[0].diff_id, foreign_diff_id);
    assert!(!layers[1].passed_through && !layers[2].passed_through);
    let store = Store::source(&client, &dst).unwrap();
    let root = store.root().await.unwrap();
    let converted: serde_json::Value = serde_json::from_slice(&root.bytes).unwrap();
    assert_eq!(converted["layers"][0], foreign);
    assert_eq!(converted["layers"][1]["mediaType"], oci::OCI_LAYER_GZIP);
    assert!(!out.join("blobs/sha256").join(&foreign_digest[7..]).exists());
}
