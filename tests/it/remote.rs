//! Remote snapshots end to end: eStargz images pushed to a real
//! `docker-registry` (behind a counting proxy), prepared through the real
//! daemon's gRPC API with the labels containerd's remote-snapshot handler
//! sets, served by FUSE and stacked with overlayfs (needs root).

#![allow(clippy::unwrap_used)]

use crate::common;

use std::path::{Path, PathBuf};

use common::remote::*;
use common::*;
use rstargz_fs::estargz::WriterOptions;
use rstargz_proto::types::Mount;
use rstargz_test_support::golden::check_tree;
use rstargz_test_support::proxy::FaultProxy;
use rstargz_test_support::registry::TestRegistry;
use rstargz_test_support::{TestLayer, docker_config, push_image, push_image_with, test_blob};

const BIG: usize = 8 << 20;

/// The bottom layer: what the whiteouts layer deletes, a small file and a
/// big incompressible one (for the laziness bound).
fn lower_layer() -> TestLayer {
    let big = test_blob(BIG, 7);
    estargz_layer(
        &[
            ("gone-file", 0o644, b"doomed"),
            ("dir/", 0o755, b""),
            ("dir/gone-dir/", 0o755, b""),
            ("dir/gone-dir/x", 0o644, b"x"),
            ("opaque/", 0o755, b""),
            ("opaque/old", 0o644, b"old"),
            ("small.txt", 0o644, b"hello lazy world\n"),
            ("big.bin", 0o644, &big),
        ],
        256 << 10,
    )
}

/// A daemon whose registry client sees no ambient credentials, without
/// background fetch (it would blur what on-demand reads fetch).
fn start_daemon(dir: &Path) -> Daemon {
    start_daemon_with(dir, "no_background_fetch = true\n")
}

/// Like [`start_daemon`] with `top` as the top-level config keys.
fn start_daemon_with(dir: &Path, top: &str) -> Daemon {
    start_daemon_full(dir, top, &dir.join("no-docker-config.json"))
}

/// Like [`start_daemon_with`] with credentials from `docker_config`.
fn start_daemon_full(dir: &Path, top: &str, docker_config: &Path) -> Daemon {
    start_remote_daemon(dir, top, docker_config, "")
}

/// Prepares each layer as a remote snapshot `chain-<i>` on the previous
/// one; returns the topmost chain name.
async fn prepare_remote_chain(
    c: &mut Client,
    reference: &str,
    layers: &[TestLayer],
    digests: &[rstargz_fs::registry::OciDigest],
) -> String {
    prepare_remote_chain_as(c, "", reference, layers, digests).await
}

/// A daemon serving metrics on a free port, and that port's address.
fn start_daemon_with_metrics(dir: &Path) -> (Daemon, String) {
    let addr = format!("127.0.0.1:{}", rstargz_test_support::closed_port());
    let top = format!("no_background_fetch = true\nmetrics_address = \"{addr}\"\n");
    (start_daemon_with(dir, &top), addr)
}

/// Mounts what a Mounts answer describes at `target` (as containerd would).
fn mount_all(mounts: &[Mount], target: &Path) {
    let m = &mounts[0];
    let opts = m.options.join(",");
    nix::mount::mount(
        Some(m.source.as_str()),
        target,
        Some(m.r#type.as_str()),
        nix::mount::MsFlags::empty(),
        Some(opts.as_str()),
    )
    .unwrap_or_else(|e| panic!("mount {m:?}: {e}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_layers_mount_lazily_and_stack_with_overlay() {
    let registry = TestRegistry::start().await;
    let proxy = FaultProxy::start(registry.addr).await;
    let reference = format!("{}/remote/stack:latest", proxy.host());
    let layers = vec![
        lower_layer(),
        TestLayer::golden("xattrs", "gzip"),
        TestLayer::golden("tree", "zstd"),
        TestLayer::golden("whiteouts", "gzip"),
    ];
    let digests = push_image(&reference, &layers).await;

    let dir = tempfile::tempdir().unwrap();
    let (daemon, metrics) = start_daemon_with_metrics(dir.path());
    let mut c = daemon.client().await;
    let before = proxy.bytes_sent();
    let parent = prepare_remote_chain(&mut c, &reference, &layers, &digests).await;
    let log = daemon.log_text();
    assert_eq!(
        log.matches("remote-snapshot-prepared=\"true\"").count(),
        layers.len(),
        "{log}"
    );

    let mounts = prepare(&mut c, "container", &parent, &[]).await.unwrap();
    let lowers = lowerdirs(&mounts);
    assert_eq!(lowers.len(), layers.len());
    for l in &lowers {
        assert!(is_mountpoint(l), "{} is a FUSE mount", l.display());
    }

    // Laziness: opening four layers (footers and TOCs) and reading one
    // small file of the big layer fetch a small share of it.
    let merged = dir.path().join("merged");
    std::fs::create_dir(&merged).unwrap();
    mount_all(&mounts, &merged);
    assert_eq!(
        std::fs::read(merged.join("small.txt")).unwrap(),
        b"hello lazy world\n"
    );
    let fetched = proxy.bytes_sent() - before;
    let blob_size = layers[0].blob.len() as u64;
    println!(
        "laziness: 4 layers opened + small.txt read: {fetched} bytes fetched; big layer {blob_size} bytes"
    );
    assert!(
        fetched * 20 < blob_size,
        "{fetched} bytes fetched of a {blob_size}-byte blob"
    );

    let text = scrape(&metrics);
    assert_eq!(sample(&text, "rstargz_mounted_layers"), 4.0);
    assert_eq!(sample(&text, "rstargz_remote_mounts_total"), 4.0);
    let on_demand = sample(&text, "rstargz_fetch_bytes_total{purpose=\"on_demand\"}");
    assert!(on_demand > 0.0 && on_demand <= fetched as f64, "{text}");
    assert!(sample(&text, "rstargz_fuse_operations_total{op=\"read\"}") >= 1.0);
    assert!(sample(&text, "rstargz_cache_misses_total") >= 1.0);
    assert_eq!(sample(&text, "rstargz_verification_failures_total"), 0.0);
    let slow_reads = sample(&text, "rstargz_fuse_async_read_seconds_bucket{le=\"+Inf\"}");
    assert!(
        slow_reads >= 1.0,
        "the small.txt read waited for its fetch: {text}"
    );
    assert_eq!(
        sample(&text, "rstargz_fuse_async_read_seconds_count"),
        slow_reads
    );

    // The overlay applies the top layer's whiteouts and opaque directory.
    assert!(!merged.join("gone-file").exists());
    assert!(!merged.join("dir/gone-dir").exists());
    assert!(!merged.join("opaque/old").exists());
    check_tree(&merged, "whiteouts");
    // Each FUSE layer matches its golden case; the big file reads whole.
    check_tree(&lowers[0], "whiteouts");
    let big = std::fs::read(merged.join("big.bin")).unwrap();
    assert_eq!(
        hex_sha(&big),
        hex_sha(&test_blob(BIG, 7)),
        "big.bin through the overlay"
    );
    check_tree(&lowers[1], "tree");
    check_tree(&lowers[2], "xattrs");
    assert_eq!(std::fs::read(lowers[3].join("opaque/old")).unwrap(), b"old");

    nix::mount::umount(&merged).unwrap();
    remove(&mut c, "container").await.unwrap();
    for i in (0..layers.len()).rev() {
        remove(&mut c, &format!("chain-{i}")).await.unwrap();
    }
    for l in &lowers {
        assert!(!is_mountpoint(l), "{} unmounted by Remove", l.display());
    }
    let state = std::fs::read_dir(daemon.root.join("layers"))
        .unwrap()
        .count();
    assert_eq!(
        state, 0,
        "layer state (TOC copies) deleted with the last user"
    );
    // Counters keep what unmounted layers counted (Prometheus counters
    // never go backwards).
    let before = text;
    let after = scrape(&metrics);
    assert_eq!(sample(&after, "rstargz_mounted_layers"), 0.0);
    for series in [
        "rstargz_fuse_operations_total{op=\"read\"}",
        "rstargz_fuse_operations_total{op=\"lookup\"}",
        "rstargz_fuse_async_read_seconds_count",
    ] {
        assert!(
            sample(&after, series) >= sample(&before, series),
            "{series} went down after unmount: {after}"
        );
    }
    daemon.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declined_layers_fall_back_with_a_reason() {
    let registry = TestRegistry::start().await;
    let reference = registry.reference("remote/plain");
    // A plain gzip tar (not eStargz), and an eStargz layer without its
    // TOC digest annotation.
    let tar = tar_of(&[("file", 0o644, b"plain")]);
    let plain = TestLayer {
        blob: gzip(&tar),
        diff_id: format!("sha256:{}", hex_sha(&tar)),
        toc_digest: None,
    };
    let mut unannotated = TestLayer::golden("tree", "gzip");
    unannotated.toc_digest = None;
    let layers = vec![plain, unannotated];
    let digests = push_image(&reference, &layers).await;

    let dir = tempfile::tempdir().unwrap();
    let (daemon, metrics) = start_daemon_with_metrics(dir.path());
    let mut c = daemon.client().await;
    let fake_toc = format!("sha256:{}", "0".repeat(64));
    let l = remote_labels("p-chain", &reference, digests[0].as_str(), Some(&fake_toc));
    let mounts = prepare(&mut c, "p", "", &l).await.unwrap();
    assert!(!mounts.is_empty(), "fallback returns local mounts");
    let l = remote_labels("u-chain", &reference, digests[1].as_str(), None);
    prepare(&mut c, "u", "", &l).await.unwrap();
    let log = daemon.log_text();
    let declined: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("remote-snapshot-prepared=\"false\""))
        .collect();
    assert_eq!(declined.len(), 2, "{log}");
    assert!(declined[0].contains("not eStargz"), "{}", declined[0]);
    assert!(
        declined[1].contains("no TOC digest annotation"),
        "{}",
        declined[1]
    );
    let text = scrape(&metrics);
    for reason in ["not eStargz", "no TOC digest annotation"] {
        let series = format!("rstargz_remote_declined_total{{reason=\"{reason}\"}}");
        assert_eq!(sample(&text, &series), 1.0, "{text}");
    }
    daemon.stop();
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut e, data).unwrap();
    e.finish().unwrap()
}

/// What [`crash_with_a_container`] leaves behind.
struct Crashed {
    parent: String,
    lowers: Vec<PathBuf>,
    digests: Vec<rstargz_fs::registry::OciDigest>,
}

/// Pushes two layers to `reference`, prepares them remotely and a container
/// on them, reads `small.txt` (now cached), and kills the daemon (-9).
async fn crash_with_a_container(dir: &Path, reference: &str) -> Crashed {
    let layers = vec![lower_layer(), TestLayer::golden("whiteouts", "gzip")];
    let digests = push_image(reference, &layers).await;
    let mut daemon = start_daemon(dir);
    let mut c = daemon.client().await;
    let parent = prepare_remote_chain(&mut c, reference, &layers, &digests).await;
    let lowers = lowerdirs(&prepare(&mut c, "container", &parent, &[]).await.unwrap());
    assert_eq!(
        std::fs::read(lowers[1].join("small.txt")).unwrap(),
        b"hello lazy world\n"
    );
    daemon.signal_and_wait(nix::sys::signal::Signal::SIGKILL);
    Crashed {
        parent,
        lowers,
        digests,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_layer_that_cannot_be_restored_heals_when_its_registry_is_back() {
    let mut registry = TestRegistry::start().await;
    let reference = registry.reference("remote/heal");
    let dir = tempfile::tempdir().unwrap();
    let crashed = crash_with_a_container(dir.path(), &reference).await;
    // Without its TOC copy and with the registry down, the top layer
    // cannot be restored; the daemon still starts and serves.
    let state = dir
        .path()
        .join("root/layers")
        .join(crashed.digests[1].as_str().replace(':', "-"));
    std::fs::remove_dir_all(&state).unwrap();
    registry.stop();
    let daemon = start_daemon(dir.path());
    let mut c = daemon.client().await;
    let log = daemon.log_text();
    assert!(log.contains("restored=1 failed=1"), "{log}");
    assert!(!is_mountpoint(&crashed.lowers[0]));
    assert!(is_mountpoint(&crashed.lowers[1]));
    stat(&mut c, "chain-1").await.unwrap();
    let err = mounts(&mut c, "container").await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");

    // Once the registry is back, the check mounts the layer again.
    registry.restart().await;
    mounts(&mut c, "container").await.unwrap();
    assert!(is_mountpoint(&crashed.lowers[0]));
    check_tree(&crashed.lowers[0], "whiteouts");
    remove(&mut c, "container").await.unwrap();
    remove(&mut c, "chain-1").await.unwrap();
    remove(&mut c, "chain-0").await.unwrap();
    daemon.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn layers_are_restored_after_a_crash_and_checked() {
    let mut registry = TestRegistry::start().await;
    let reference = registry.reference("remote/restore");
    let dir = tempfile::tempdir().unwrap();
    let crashed = crash_with_a_container(dir.path(), &reference).await;
    let (parent, lowers) = (crashed.parent, crashed.lowers);
    let small = lowers[1].join("small.txt");
    registry.stop();
    let daemon = start_daemon(dir.path());
    let mut c = daemon.client().await;
    let log = daemon.log_text();
    // The fd holder kept the mounts alive: they are taken over, not remounted.
    assert!(log.contains("live mount taken over"), "{log}");
    assert!(log.contains("restored=2"), "{log}");
    for l in &lowers {
        assert!(is_mountpoint(l), "{} restored", l.display());
    }
    // Restored from the cached TOC; what was read before comes from the cache.
    assert_eq!(std::fs::read(&small).unwrap(), b"hello lazy world\n");
    // Metadata is all there; data never fetched cannot be read yet.
    assert_eq!(
        std::fs::metadata(lowers[0].join("opaque/new"))
            .unwrap()
            .len(),
        4
    );
    let err = std::fs::read(lowers[0].join("opaque/new")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    // The registry is down: Mounts and a Prepare on the chain are unavailable.
    let err = mounts(&mut c, "container").await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    let err = prepare(&mut c, "other", &parent, &[]).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");

    registry.restart().await;
    mounts(&mut c, "container").await.unwrap();
    check_tree(&lowers[0], "whiteouts");
    let big = std::fs::read(lowers[1].join("big.bin")).unwrap();
    assert_eq!(hex_sha(&big), hex_sha(&test_blob(BIG, 7)));
    remove(&mut c, "container").await.unwrap();
    remove(&mut c, "chain-1").await.unwrap();
    remove(&mut c, "chain-0").await.unwrap();
    daemon.stop();
}

/// A layer whose `prio/` files come first, before `.prefetch.landmark`.
fn prefetch_layer() -> TestLayer {
    let (a, rest) = (test_blob(300 << 10, 11), test_blob(4 << 20, 12));
    let tar = tar_of(&[
        ("prio/", 0o755, b""),
        ("prio/a", 0o644, &a),
        ("prio/b", 0o644, b"bee\n"),
        ("rest.bin", 0o644, &rest),
    ]);
    let opts = WriterOptions {
        chunk_size: 256 << 10,
        prioritized: vec!["prio/a".into(), "prio/b".into()],
        ..WriterOptions::default()
    };
    TestLayer::estargz(&tar, &opts)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefetched_files_read_without_fetching() {
    let registry = TestRegistry::start().await;
    let proxy = FaultProxy::start(registry.addr).await;
    let reference = format!("{}/remote/prefetch:latest", proxy.host());
    let layers = vec![prefetch_layer()];
    let digests = push_image(&reference, &layers).await;
    let dir = tempfile::tempdir().unwrap();
    let daemon = start_daemon(dir.path());
    let mut c = daemon.client().await;
    let parent = prepare_remote_chain(&mut c, &reference, &layers, &digests).await;
    let lowers = lowerdirs(&prepare(&mut c, "container", &parent, &[]).await.unwrap());
    // Reads of the prioritized files wait for the prefetch (whether still
    // in flight or done) instead of asking the registry themselves.
    let requests = proxy.seen().len();
    assert_eq!(
        hex_sha(&std::fs::read(lowers[0].join("prio/a")).unwrap()),
        hex_sha(&test_blob(300 << 10, 11))
    );
    assert_eq!(std::fs::read(lowers[0].join("prio/b")).unwrap(), b"bee\n");
    // The prioritized prefix was fetched once, and no read asked for its
    // bytes again. (A read that arrives before the prefetch is decoded may
    // take the chunk just past the prefix along: amplification, not a
    // prioritized file fetched again; 2-byte ranges are availability checks.)
    let ranges: Vec<(u64, u64)> = proxy
        .seen()
        .iter()
        .filter_map(|s| {
            let (a, b) = s
                .range
                .as_deref()?
                .strip_prefix("bytes=")?
                .split_once('-')?;
            Some((a.parse().ok()?, b.parse().ok()?))
        })
        .filter(|&(a, b)| b > a + 1)
        .collect();
    let prefix_end = (ranges.iter())
        .filter(|&&(a, _)| a == 0)
        .map(|&(_, b)| b)
        .max()
        .expect("the prioritized prefix was fetched from 0");
    let in_prefix: Vec<_> = ranges.iter().filter(|&&(a, _)| a <= prefix_end).collect();
    assert_eq!(
        in_prefix.len(),
        1,
        "prioritized files fetched again: {in_prefix:?}"
    );
    // Other files are fetched on demand (the counter does count).
    std::fs::read(lowers[0].join("rest.bin")).unwrap();
    assert!(proxy.seen().len() > requests);
    remove(&mut c, "container").await.unwrap();
    remove(&mut c, "chain-0").await.unwrap();
    daemon.stop();
}

/// Ranged GETs the background fetch of `lower_layer` took under `config`,
/// after checking that it fetched the whole layer.
async fn ranged_requests_to_fill_the_layer(config: &str) -> usize {
    let registry = TestRegistry::start().await;
    let proxy = FaultProxy::start(registry.addr).await;
    let reference = format!("{}/remote/background:latest", proxy.host());
    let layers = vec![lower_layer()];
    let digests = push_image(&reference, &layers).await;
    let dir = tempfile::tempdir().unwrap();
    let daemon = start_daemon_with(dir.path(), config);
    let mut c = daemon.client().await;
    let before = proxy.bytes_sent();
    proxy.clear_seen();
    let parent = prepare_remote_chain(&mut c, &reference, &layers, &digests).await;
    let lowers = lowerdirs(&prepare(&mut c, "container", &parent, &[]).await.unwrap());
    let blob_size = layers[0].blob.len() as u64;
    // Chunks and the TOC cover all of the blob but the members holding
    // only tar headers (directories, empty files: well under 16 KiB here),
    // so this holds only once every chunk of big.bin has been sent.
    wait_for("background fetch of the layer", || {
        proxy.bytes_sent() - before >= blob_size - (16 << 10)
    });
    let requests = proxy.seen().len();
    let big = std::fs::read(lowers[0].join("big.bin")).unwrap();
    assert_eq!(hex_sha(&big), hex_sha(&test_blob(BIG, 7)));
    assert_eq!(
        proxy.seen().len(),
        requests,
        "big.bin was fetched in the background"
    );
    remove(&mut c, "container").await.unwrap();
    remove(&mut c, "chain-0").await.unwrap();
    daemon.stop();
    requests
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn background_fetch_fills_the_whole_layer() {
    // Streaming off: the silence-gated background fetch, in windows too.
    let config = "max_concurrency = 2\n[background_fetch]\nstream_layer_max_bytes = 0\n\
                  stream_window_bytes = 262144\nsilence_period_msec = 200\n";
    let requests = ranged_requests_to_fill_the_layer(config).await;
    // 256 KiB windows hold one compressed 256 KiB chunk each.
    assert!(requests >= BIG / (256 << 10), "{requests} requests");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_layer_without_a_prioritized_list_is_streamed_in_windows() {
    // Defaults: the layer has no landmark and is small, so it is streamed
    // in 1 MiB windows (three compressed 256 KiB chunks each: 11 windows)
    // plus the probes, footer and TOC: half the chunk-by-chunk requests.
    let requests = ranged_requests_to_fill_the_layer("").await;
    assert!(requests <= BIG / (512 << 10), "{requests} requests");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn layers_mount_through_an_htpasswd_registry_and_its_rotated_password() {
    let (user, password) = ("tester", "Pa55-word");
    let registry = TestRegistry::start_with_htpasswd(user, password).await;
    let reference = registry.reference("auth/image");
    let dir = tempfile::tempdir().unwrap();
    let creds = docker_config(dir.path(), &registry.host(), user, password);
    let layers = vec![TestLayer::golden("tree", "gzip")];
    let digests = push_image_with(&reference, &layers, &creds).await;

    // Without credentials the layer falls back to a local snapshot.
    let anon = dir.path().join("anon");
    std::fs::create_dir(&anon).unwrap();
    let daemon = start_daemon(&anon);
    let mut c = daemon.client().await;
    let l = remote_labels(
        "chain-0",
        &reference,
        digests[0].as_str(),
        layers[0].toc_digest.as_deref(),
    );
    prepare(&mut c, "extract-0", "", &l).await.unwrap();
    let log = daemon.log_text();
    assert!(log.contains("no credentials for the registry"), "{log}");
    assert!(!log.contains(password), "the password leaked into the log");
    daemon.stop();

    // With docker config credentials it mounts remotely.
    let authed = dir.path().join("authed");
    std::fs::create_dir(&authed).unwrap();
    let daemon = start_daemon_full(&authed, "no_background_fetch = true\n", &creds);
    let mut c = daemon.client().await;
    let parent = prepare_remote_chain(&mut c, &reference, &layers, &digests).await;
    let lowers = lowerdirs(&prepare(&mut c, "container", &parent, &[]).await.unwrap());
    check_tree(&lowers[0], "tree");
    remove(&mut c, "container").await.unwrap();
    remove(&mut c, "chain-0").await.unwrap();

    // The password is rotated at the registry and in config.json while the
    // daemon runs: new layers mount with the new one, no restart.
    let rotated = "R0tated-pw";
    registry.set_htpasswd(user, rotated);
    docker_config(dir.path(), &registry.host(), user, rotated);
    let next = registry.reference("auth/next");
    let next_layers = vec![TestLayer::golden("tree", "zstd")];
    let next_digests = push_image_with(&next, &next_layers, &creds).await;
    let l = remote_labels(
        "next-0",
        &next,
        next_digests[0].as_str(),
        next_layers[0].toc_digest.as_deref(),
    );
    let err = prepare(&mut c, "extract-next", "", &l).await.unwrap_err();
    assert_eq!(
        err.code(),
        tonic::Code::AlreadyExists,
        "mounted remotely: {err:?}\n{}",
        daemon.log_text()
    );
    let lowers = lowerdirs(&prepare(&mut c, "container", "next-0", &[]).await.unwrap());
    check_tree(&lowers[0], "tree");
    remove(&mut c, "container").await.unwrap();
    remove(&mut c, "next-0").await.unwrap();
    assert!(!daemon.log_text().contains(rotated));
    daemon.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_golden_layer_matches_through_fuse() {
    let registry = TestRegistry::start().await;
    let reference = registry.reference("remote/golden");
    let mut names = Vec::new();
    let mut layers = Vec::new();
    for case in rstargz_test_support::golden::cases() {
        for comp in ["gzip", "zstd"] {
            names.push(case.case.clone());
            layers.push(TestLayer::golden(&case.case, comp));
        }
    }
    let digests = push_image(&reference, &layers).await;
    let dir = tempfile::tempdir().unwrap();
    let daemon = start_daemon(dir.path());
    let mut c = daemon.client().await;
    for (i, ((name, layer), digest)) in names.iter().zip(&layers).zip(&digests).enumerate() {
        // Each layer on its own (no parent): its FUSE mount is the only lowerdir.
        let chain = format!("golden-{i}");
        let l = remote_labels(
            &chain,
            &reference,
            digest.as_str(),
            layer.toc_digest.as_deref(),
        );
        let err = prepare(&mut c, &format!("extract-{i}"), "", &l)
            .await
            .expect_err("remote");
        assert_eq!(err.code(), tonic::Code::AlreadyExists, "{name}: {err:?}");
        let view = format!("view-{i}");
        let mounts = c
            .view(rstargz_proto::snapshots::ViewSnapshotRequest {
                snapshotter: String::new(),
                key: view.clone(),
                parent: chain.clone(),
                labels: Default::default(),
            })
            .await
            .unwrap()
            .into_inner()
            .mounts;
        let fs = match lowerdirs_or_bind(&mounts) {
            Some(p) => p,
            None => panic!("{name}: {mounts:?}"),
        };
        assert!(is_mountpoint(&fs), "{name}: {} is FUSE", fs.display());
        check_tree(&fs, name);
        remove(&mut c, &view).await.unwrap();
        remove(&mut c, &chain).await.unwrap();
        assert!(!is_mountpoint(&fs), "{name}: unmounted by Remove");
    }
    daemon.stop();
}

/// The single lower directory of a View on one layer (a read-only bind
/// mount, or an overlay with one lowerdir).
fn lowerdirs_or_bind(mounts: &[Mount]) -> Option<PathBuf> {
    let m = mounts.first()?;
    if m.r#type == "bind" {
        return Some(PathBuf::from(&m.source));
    }
    lowerdirs(mounts).into_iter().next()
}
