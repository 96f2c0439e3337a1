//! `rstargz image convert` under `ctr-remote image convert`'s flag names:
//! what each flag does to the result (chunk size in the TOC, small files
//! sharing members, compression level, OCI media types, platform
//! selection), and the Go reference (`containerd-stargz-grpc` under a
//! scratch containerd, pulled with `ctr-remote image rpull`) lazily pulling
//! and running an image converted with them.

#![allow(clippy::unwrap_used)]

use crate::common;
use crate::common::image as image_common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::containerd::{Containerd, RunDirGuard};
use common::workload::{expected_sums, image_layers, run_sums, unmount_all_under};
use image_common::registry::TestRegistry;
use image_common::{at, check_converted, client, fixture_layers};
use rstargz_bench::coldstart::procs::{Binaries, Snapshotter, start_snapshotter};
use rstargz_fs::estargz::{Toc, read_toc};
use rstargz_image::build::{self, BuildOptions, LayerInput};
use rstargz_image::oci::{self, Descriptor};
use rstargz_image::platform::PlatformSpec;
use rstargz_image::{ImageRef, Store};
use rstargz_test_support::test_blob;

/// This machine's architecture and another one.
fn host_and_other_arch() -> (String, String) {
    let host = PlatformSpec::parse("linux").unwrap().architecture;
    let other = if host == "arm64" { "amd64" } else { "arm64" };
    (host, other.to_owned())
}

/// One layer that shows every flag: a 512 KiB incompressible file (cut
/// into chunks), 256 KiB of text (what a compression level changes) and
/// 200 small files (what shares a member).
fn flag_layers(dir: &Path) -> Vec<PathBuf> {
    let l = dir.join("flags");
    std::fs::create_dir_all(l.join("small")).unwrap();
    std::fs::write(l.join("big.bin"), test_blob(512 << 10, 31)).unwrap();
    let words: String = test_blob(256 << 10, 33)
        .iter()
        .map(|b| ["alpha ", "beta ", "gamma ", "delta\n"][usize::from(b % 4)])
        .collect::<String>();
    std::fs::write(l.join("words.txt"), &words[..256 << 10]).unwrap();
    for i in 0..200 {
        std::fs::write(
            l.join(format!("small/f{i:03}.txt")),
            format!("small file {i}\n").repeat(i % 7 + 1),
        )
        .unwrap();
    }
    vec![l]
}

/// Writes a docker manifest list at `repo`: `layers` for this machine's
/// architecture, the fixture layers for another.
async fn two_platform_source(tmp: &Path, host: &str, repo: &str, layers: &[PathBuf]) -> ImageRef {
    let (arch, other) = host_and_other_arch();
    let src = at(host, repo);
    let opts = |arch: &str| BuildOptions {
        docker: true,
        platform: ("linux".into(), arch.into()),
        ..BuildOptions::default()
    };
    let dirs = |l: &[PathBuf]| l.iter().cloned().map(LayerInput::Dir).collect::<Vec<_>>();
    let others = fixture_layers(&tmp.join("other"), 3);
    build::index_from_dirs(
        &client(tmp),
        &src,
        &[(opts(&arch), dirs(layers)), (opts(&other), dirs(&others))],
    )
    .await
    .unwrap();
    src
}

/// Runs `rstargz image convert ARGS SRC DST`.
fn convert_cli(tmp: &Path, args: &[&str], src: &ImageRef, dst: &str) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rstargz"))
        .args(["image", "convert"])
        .args(args)
        .arg(src.to_string())
        .arg(dst)
        .env("DOCKER_CONFIG", tmp)
        .output()
        .unwrap()
}

/// Like [`convert_cli`], asserting success.
fn convert_ok(tmp: &Path, args: &[&str], src: &ImageRef, dst: &str) {
    let out = convert_cli(tmp, args, src, dst);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The root document of `image` and its media type.
async fn root_of(store: &Store) -> (serde_json::Value, String) {
    let root = store.root().await.unwrap();
    let json: serde_json::Value = serde_json::from_slice(&root.bytes).unwrap();
    let media_type = oci::document_media_type(&json, &root.media_type);
    (json, media_type)
}

/// The index entries of the image at `dst`, with the index's media type.
async fn index_entries(tmp: &Path, dst: &ImageRef) -> (Vec<Descriptor>, String) {
    let store = Store::source(&client(tmp), dst).unwrap();
    let (json, media_type) = root_of(&store).await;
    (
        oci::descriptors(&json, "manifests", "index").unwrap(),
        media_type,
    )
}

/// The TOC and size of the single layer of the converted image at `dst`
/// (an index of one platform), after checking its content.
async fn only_layer(tmp: &Path, dst: &ImageRef, layers: &[PathBuf]) -> (Toc, u64) {
    let (entries, _) = index_entries(tmp, dst).await;
    assert_eq!(entries.len(), 1);
    let store = Store::source(&client(tmp), dst).unwrap();
    let checked = check_converted(&store, &entries[0], layers, false, false, tmp).await;
    let layer = &checked.layers[0];
    let mut blob = Vec::new();
    store.download(layer, &mut blob, &mut |_| {}).await.unwrap();
    (read_toc(&blob, 64 << 20).unwrap().1.toc, layer.size)
}

/// The TOC entries of `name` (the file's first entry and its chunks).
fn entries_of<'a>(toc: &'a Toc, name: &str) -> Vec<&'a rstargz_fs::estargz::TocEntry> {
    toc.entries.iter().filter(|e| e.name == name).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_flag_names_take_effect() {
    let tmp = tempfile::tempdir().unwrap();
    let tmp = tmp.path();
    let reg = TestRegistry::start().await;
    let layers = flag_layers(tmp);
    let src = two_platform_source(tmp, &reg.host(), "flags/src:v1", &layers).await;
    let (arch, other) = host_and_other_arch();
    let host_platform = format!("linux/{arch}");
    let dst = |name: &str| format!("{}/flags/{name}:v1", reg.host());
    let base = [
        "--estargz",
        "--oci",
        "--platform",
        &host_platform,
        "--estargz-chunk-size",
        "65536",
    ];

    // --oci and --platform: an OCI index of this platform only, OCI all the way down.
    let fast = dst("level1");
    convert_ok(
        tmp,
        &[&base[..], &["--estargz-compression-level", "1"]].concat(),
        &src,
        &fast,
    );
    let fast = ImageRef::parse(&fast).unwrap();
    let (entries, media_type) = index_entries(tmp, &fast).await;
    assert_eq!(media_type, oci::OCI_INDEX);
    assert_eq!(entries[0].media_type, oci::OCI_MANIFEST);
    assert_eq!(entries[0].platform.as_ref().unwrap().architecture, arch);
    let store = Store::source(&client(tmp), &fast).unwrap();
    let manifest: serde_json::Value =
        serde_json::from_slice(&store.document(&entries[0]).await.unwrap()).unwrap();
    assert_eq!(manifest["mediaType"], oci::OCI_MANIFEST);
    assert_eq!(manifest["config"]["mediaType"], oci::OCI_CONFIG);
    // --estargz-chunk-size: 512 KiB in eight 64 KiB chunks.
    let (toc, fast_size) = only_layer(tmp, &fast, &layers).await;
    let big = entries_of(&toc, "big.bin");
    assert_eq!(big.len(), 8, "{big:?}");
    assert!(big.iter().all(|e| e.chunk_size == 65536), "{big:?}");
    assert!(toc.entries.iter().all(|e| e.inner_offset == 0));
    let members = |toc: &Toc| {
        let mut offsets: Vec<u64> = toc.entries.iter().map(|e| e.offset).collect();
        offsets.sort_unstable();
        offsets.dedup();
        offsets.len()
    };

    // --estargz-compression-level: 9 packs the text tighter than 1.
    let best = dst("level9");
    convert_ok(
        tmp,
        &[&base[..], &["--estargz-compression-level", "9"]].concat(),
        &src,
        &best,
    );
    let (_, best_size) = only_layer(tmp, &ImageRef::parse(&best).unwrap(), &layers).await;
    assert!(
        best_size < fast_size,
        "level 9: {best_size} bytes, level 1: {fast_size}"
    );

    // --estargz-min-chunk-size: the small files share members.
    let packed = dst("min-chunk");
    convert_ok(
        tmp,
        &[
            &base[..],
            &[
                "--estargz-compression-level",
                "1",
                "--estargz-min-chunk-size",
                "16384",
            ],
        ]
        .concat(),
        &src,
        &packed,
    );
    let (packed_toc, _) = only_layer(tmp, &ImageRef::parse(&packed).unwrap(), &layers).await;
    let shared = packed_toc
        .entries
        .iter()
        .filter(|e| e.name.starts_with("small/") && e.inner_offset > 0)
        .count();
    assert!(shared > 150, "{shared} small files share a member");
    assert!(
        members(&packed_toc) * 4 < members(&toc),
        "{} members with a minimum chunk size, {} without",
        members(&packed_toc),
        members(&toc)
    );

    // Without --oci the docker flavour stays; --platform picks the other entry.
    let picked = dst("other");
    convert_ok(
        tmp,
        &["--platform", &format!("linux/{other}")],
        &src,
        &picked,
    );
    let (entries, media_type) = index_entries(tmp, &ImageRef::parse(&picked).unwrap()).await;
    assert_eq!(media_type, oci::DOCKER_MANIFEST_LIST);
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].media_type, oci::DOCKER_MANIFEST);
    assert_eq!(entries[0].platform.as_ref().unwrap().architecture, other);

    // --all-platforms (our default too) keeps both.
    let all = dst("all");
    convert_ok(tmp, &["--all-platforms"], &src, &all);
    let (entries, _) = index_entries(tmp, &ImageRef::parse(&all).unwrap()).await;
    assert_eq!(entries.len(), 2);

    // --zstdchunked with its level: zstd:chunked layers.
    let zstd = dst("zstd");
    convert_ok(
        tmp,
        &[
            "--zstdchunked",
            "--zstdchunked-compression-level",
            "19",
            "--platform",
            &host_platform,
        ],
        &src,
        &zstd,
    );
    let zstd = ImageRef::parse(&zstd).unwrap();
    let (entries, media_type) = index_entries(tmp, &zstd).await;
    assert_eq!(media_type, oci::OCI_INDEX);
    let store = Store::source(&client(tmp), &zstd).unwrap();
    check_converted(&store, &entries[0], &layers, true, false, tmp).await;

    // What cannot be done says so, and tags nothing.
    for (args, says) in [
        (
            vec!["--platform", "windows/amd64"],
            "no image manifest of platform windows/amd64",
        ),
        (vec!["--platform", "linux/amd 64"], "invalid platform"),
        (vec!["--estargz-keep-diff-id"], "--estargz-external-toc"),
        (
            vec!["--platform", "linux/amd64", "--all-platforms"],
            "cannot be used with",
        ),
        (vec!["--estargz-compression-level", "10"], "0..=9"),
    ] {
        let out = convert_cli(tmp, &args, &src, &dst("refused"));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains(says),
            "{args:?}: {stderr}"
        );
    }
    let store = Store::source(&client(tmp), &ImageRef::parse(&dst("refused")).unwrap()).unwrap();
    assert!(store.root().await.is_err(), "a refused conversion tagged");
}

/// ctr-remote's record file (JSON lines) works as the prioritized list.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn record_file_of_ctr_remote_prioritizes() {
    let tmp = tempfile::tempdir().unwrap();
    let tmp = tmp.path();
    let reg = TestRegistry::start().await;
    let layers = flag_layers(tmp);
    let src = two_platform_source(tmp, &reg.host(), "record/src:v1", &layers).await;
    let record = tmp.join("record.json");
    std::fs::write(
        &record,
        "{\"path\":\"/words.txt\",\"manifestDigest\":\"sha256:00\",\"layerIndex\":0}\n\
         {\"path\":\"/small/f007.txt\",\"manifestDigest\":\"sha256:00\",\"layerIndex\":0}\n\
         {\"path\":\"/words.txt\",\"manifestDigest\":\"sha256:00\",\"layerIndex\":0}\n",
    )
    .unwrap();
    let (arch, _) = host_and_other_arch();
    let dst = format!("{}/record/esgz:v1", reg.host());
    convert_ok(
        tmp,
        &[
            "--estargz-record-in",
            record.to_str().unwrap(),
            "--platform",
            &format!("linux/{arch}"),
            "--oci",
        ],
        &src,
        &dst,
    );
    let (toc, _) = only_layer(tmp, &ImageRef::parse(&dst).unwrap(), &layers).await;
    let order: Vec<&str> = toc
        .entries
        .iter()
        .filter(|e| e.kind == "reg")
        .map(|e| e.name.as_str())
        .take(3)
        .collect();
    assert_eq!(
        order,
        ["words.txt", "small/f007.txt", ".prefetch.landmark"],
        "prioritized files first, then the landmark"
    );
}

/// The Go reference lazily pulls and runs an image converted with
/// `--oci --platform --estargz-chunk-size --estargz-compression-level`.
/// Not `--estargz-min-chunk-size`: the Go reference installed here
/// (Debian's stargz-snapshotter 0.12) predates `innerOffset` (0.13) and
/// cannot read such layers, Go's own included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_reference_runs_image_converted_with_go_flags() {
    const NAMESPACE: &str = "rstargz-flags";
    let _run_dir = RunDirGuard::new();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let reg = TestRegistry::start().await;
    let layers = image_layers(dir);
    let src = two_platform_source(dir, &reg.host(), "go/plain:v1", &layers).await;
    let (arch, _) = host_and_other_arch();
    let esgz = format!("{}/go/esgz:v1", reg.host());
    convert_ok(
        dir,
        &[
            "--estargz",
            "--oci",
            "--platform",
            &format!("linux/{arch}"),
            "--estargz-chunk-size",
            "65536",
            "--estargz-compression-level",
            "9",
        ],
        &src,
        &esgz,
    );

    let go_dir = dir.join("go");
    std::fs::create_dir_all(&go_dir).unwrap();
    let bins = Binaries {
        rstargz: PathBuf::from(env!("CARGO_BIN_EXE_rstargz")),
        go_reference: PathBuf::from("/usr/local/bin/containerd-stargz-grpc"),
    };
    assert!(
        bins.go_reference.exists(),
        "the Go reference daemon is missing: scripts/setup-bench.sh installs it"
    );
    let go = Snapshotter::GoReference;
    let go_daemon = start_snapshotter(go, &bins, &go_dir, false).unwrap();
    std::fs::create_dir_all(dir.join("containerd")).unwrap();
    let ctrd = Containerd::start(&dir.join("containerd"), &go_daemon.socket, go.plugin());
    ctrd.rpull(NAMESPACE, go.plugin(), &esgz);
    // Every layer is a FUSE mount of the Go daemon: pulled lazily.
    let go_root = go_dir.join(format!("{}-root", go.plugin()));
    let fuse_mounts = rstargz_fs::fuse::mountinfo::read()
        .unwrap()
        .into_iter()
        .filter(|m| m.mountpoint.starts_with(&go_root) && m.fstype.starts_with("fuse"))
        .count();
    let go_log = go_dir.join(format!("{}.log", go.plugin()));
    let log = std::fs::read_to_string(&go_log).unwrap_or_default();
    assert_eq!(fuse_mounts, layers.len(), "{log}");
    assert!(
        !log.contains("\"remote-snapshot-prepared\":\"false\""),
        "{log}"
    );
    // The container reads its files through the Go reader.
    assert_eq!(
        run_sums(&ctrd, dir, NAMESPACE, go.plugin(), &esgz, "go-flags"),
        expected_sums(&layers)
    );
    drop(ctrd);
    drop(go_daemon);
    unmount_all_under(dir);
}
