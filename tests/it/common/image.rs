//! Helpers of the image tests: the fs crate's registry harness and fault
//! proxy (`rstargz_test_support`), a registry client for tests, a fixture
//! image tree and a checker that opens every converted layer with our
//! eStargz reader and compares it with the source files.

#![allow(dead_code, clippy::unwrap_used)]

pub use rstargz_test_support::{proxy, registry};

use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use rstargz_fs::estargz::{self, FileSource, Layer, OpenOptions};
use rstargz_fs::registry::Registry;
use rstargz_image::build::{self, BuildOptions, LayerInput};
use rstargz_image::oci::{self, Descriptor};
use rstargz_image::{ConvertOptions, ImageRef, Quiet, Store};
use sha2::Digest as _;

/// A registry client without ambient credentials and with quick retries.
pub fn client(scratch: &Path) -> Registry {
    Registry::new(rstargz_test_support::test_config(
        &scratch.join("no-docker-config.json"),
    ))
    .unwrap()
}

/// Deterministic pseudo-random bytes (xorshift).
pub use rstargz_test_support::test_blob as pseudo_random;

/// Two layer trees under `dir`: the first with small files, a file larger
/// than the 1 MiB chunk size the tests use, a symlink and a hardlink; the
/// second with a whiteout of `etc/hello` and a new file.
pub fn fixture_layers(dir: &Path, seed: u64) -> Vec<PathBuf> {
    let l1 = dir.join("layer1");
    let l2 = dir.join("layer2");
    std::fs::create_dir_all(l1.join("etc")).unwrap();
    std::fs::create_dir_all(l1.join("bin")).unwrap();
    std::fs::write(l1.join("etc/hello"), b"hello\n").unwrap();
    std::fs::write(l1.join("etc/seed"), seed.to_string()).unwrap();
    std::fs::write(l1.join("bin/big"), pseudo_random(3 << 20 | 12345, seed)).unwrap();
    std::os::unix::fs::symlink("../etc/hello", l1.join("bin/link")).unwrap();
    std::fs::hard_link(l1.join("etc/hello"), l1.join("etc/hello.hard")).unwrap();
    std::fs::create_dir_all(l2.join("etc")).unwrap();
    std::fs::write(l2.join("etc/.wh.hello"), b"").unwrap();
    std::fs::write(l2.join("etc/new"), b"new file\n").unwrap();
    vec![l1, l2]
}

/// The decompressed bytes of a layer blob.
pub fn decompress(blob: &Path) -> Vec<u8> {
    let f = std::fs::File::open(blob).unwrap();
    let mut out = Vec::new();
    rstargz_fs::estargz::writer::decompressed_reader(f)
        .unwrap()
        .read_to_end(&mut out)
        .unwrap();
    out
}

/// Asserts that `extracted` holds the same tree as `source` (file bytes,
/// symlink targets, hardlinks sharing an inode).
pub fn assert_same_tree(source: &Path, extracted: &Path) {
    for entry in walk(source) {
        let rel = entry.strip_prefix(source).unwrap();
        let got = extracted.join(rel);
        let meta = std::fs::symlink_metadata(&entry).unwrap();
        let got_meta = std::fs::symlink_metadata(&got)
            .unwrap_or_else(|e| panic!("{} missing in the layer: {e}", rel.display()));
        if meta.file_type().is_symlink() {
            assert_eq!(
                std::fs::read_link(&entry).unwrap(),
                std::fs::read_link(&got).unwrap(),
                "{}",
                rel.display()
            );
        } else if meta.is_file() {
            assert!(got_meta.is_file(), "{}", rel.display());
            assert!(
                std::fs::read(&entry).unwrap() == std::fs::read(&got).unwrap(),
                "{} differs",
                rel.display()
            );
        } else {
            assert!(got_meta.is_dir(), "{}", rel.display());
        }
    }
    let hard = extracted.join("etc/hello.hard");
    if hard.exists() {
        assert_eq!(
            std::fs::metadata(&hard).unwrap().ino(),
            std::fs::metadata(extracted.join("etc/hello"))
                .unwrap()
                .ino(),
            "hardlink lost"
        );
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        out.push(p.clone());
        if std::fs::symlink_metadata(&p).unwrap().is_dir() {
            out.extend(walk(&p));
        }
    }
    out
}

/// What the checker found for one manifest.
pub struct Checked {
    /// The manifest's layer descriptors.
    pub layers: Vec<Descriptor>,
    /// The manifest media type.
    pub media_type: String,
}

/// Reads the converted manifest `manifest` from `store` and checks every
/// layer against `layer_dirs`: media type, annotations, TOC digest, content,
/// uncompressed size and the config's diffIDs.
pub async fn check_converted(
    store: &Store,
    manifest: &Descriptor,
    layer_dirs: &[PathBuf],
    zstd: bool,
    docker: bool,
    scratch: &Path,
) -> Checked {
    let body = store.document(manifest).await.unwrap();
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let media_type = oci::document_media_type(&json, &manifest.media_type);
    let layers = oci::descriptors(&json, "layers", "manifest").unwrap();
    let config: Descriptor = serde_json::from_value(json["config"].clone()).unwrap();
    let config_json: serde_json::Value =
        serde_json::from_slice(&store.document(&config).await.unwrap()).unwrap();
    let diff_ids: Vec<String> =
        serde_json::from_value(config_json["rootfs"]["diff_ids"].clone()).unwrap();
    assert_eq!(layers.len(), layer_dirs.len());
    assert_eq!(diff_ids.len(), layers.len());
    for (i, (layer, dir)) in layers.iter().zip(layer_dirs).enumerate() {
        let want_type = match (zstd, docker) {
            (true, _) => oci::OCI_LAYER_ZSTD,
            (false, true) => oci::DOCKER_LAYER_GZIP,
            (false, false) => oci::OCI_LAYER_GZIP,
        };
        assert_eq!(layer.media_type, want_type, "layer {i}");
        let toc = layer.annotations.get(oci::ANNOTATION_TOC_DIGEST).unwrap();
        let usize_ann = layer
            .annotations
            .get(oci::ANNOTATION_UNCOMPRESSED_SIZE)
            .unwrap();
        assert_eq!(
            layer
                .annotations
                .contains_key(oci::ANNOTATION_ZSTD_MANIFEST_CHECKSUM),
            zstd
        );
        assert_eq!(
            layer
                .annotations
                .contains_key(oci::ANNOTATION_ZSTD_MANIFEST_POSITION),
            zstd
        );
        let blob_path = scratch.join(format!("blob-{}", &layer.digest[7..]));
        {
            let mut f = std::fs::File::create(&blob_path).unwrap();
            store.download(layer, &mut f, &mut |_| {}).await.unwrap();
        }
        let opts = OpenOptions {
            expected_toc_digest: Some(estargz::Digest::parse(toc).unwrap()),
            ..OpenOptions::default()
        };
        let opened = Layer::open(FileSource::open(&blob_path).unwrap(), &opts).unwrap();
        assert_eq!(opened.toc_digest().to_string(), *toc);
        let out = tempfile::tempdir_in(scratch).unwrap();
        estargz::extract(&opened, out.path()).unwrap();
        assert_same_tree(dir, out.path());
        let plain = decompress(&blob_path);
        assert_eq!(plain.len().to_string(), *usize_ann, "uncompressed size");
        // For zstd:chunked the TOC sits in skippable frames, which decompress
        // to nothing: the diffID is that of the decompressed stream either way.
        assert_eq!(
            format!("sha256:{}", hex_of(&sha2::Sha256::digest(&plain))),
            diff_ids[i],
            "diffID of layer {i}"
        );
        if zstd {
            let toc_at = layer.annotations[oci::ANNOTATION_ZSTD_MANIFEST_POSITION]
                .split(':')
                .next()
                .unwrap()
                .parse::<u64>()
                .unwrap();
            assert_eq!(toc_at, opened.footer().toc_offset);
        }
        std::fs::remove_file(&blob_path).unwrap();
    }
    Checked { layers, media_type }
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// An image location for `repo:tag` on `host`.
pub fn at(host: &str, repo: &str) -> ImageRef {
    ImageRef::parse(&format!("{host}/{repo}")).unwrap()
}

/// Builds a plain gzip image of `inputs` as `host/repo:plain` and converts
/// it to eStargz (the converter's defaults) as `host/repo:esgz`, the way a
/// user makes one; returns the eStargz image and how many layers it has.
pub async fn build_estargz(
    client: &Registry,
    host: &str,
    repo: &str,
    inputs: &[LayerInput],
) -> (ImageRef, usize) {
    let plain = at(host, &format!("{repo}:plain"));
    build::from_dirs(client, &plain, inputs, &BuildOptions::default())
        .await
        .unwrap();
    let esgz = at(host, &format!("{repo}:esgz"));
    let report = rstargz_image::convert(
        client,
        &plain,
        &esgz,
        &ConvertOptions::default(),
        std::sync::Arc::new(Quiet),
    )
    .await
    .unwrap();
    (esgz, report.manifests[0].layers.len())
}
