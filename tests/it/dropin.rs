//! A node switching from the Go stargz-snapshotter: its `config.toml` (every
//! key of the Go reference's, `tests/data/go_reference_config.toml`) works
//! unchanged, and its dashboards find the Go-named metrics with real values
//! after real reads through real FUSE mounts (needs root; a real registry,
//! with a header-recording proxy as the configured mirror).

#![allow(clippy::unwrap_used)]

use crate::common;

use std::path::Path;

use common::remote::*;
use common::*;
use rstargz_test_support::daemon::rstargz_bin;
use rstargz_test_support::proxy::FaultProxy;
use rstargz_test_support::registry::TestRegistry;
use rstargz_test_support::{TestLayer, closed_port, push_image, test_blob};

/// The size of `app/data.bin`.
const DATA: usize = 300_000;

/// A layer with a directory, a small file and a bigger one (several chunks).
fn app_layer(seed: u64) -> TestLayer {
    let data = test_blob(DATA, seed);
    estargz_layer(
        &[
            ("app/", 0o755, b""),
            ("app/conf.txt", 0o640, b"listen = 8080\n"),
            ("app/data.bin", 0o644, &data),
        ],
        64 << 10,
    )
}

/// The Go reference's config with this test's addresses, our registry
/// credentials file added under `[resolver]`.
fn go_config(dir: &Path, metrics: &str, registry: &str, mirror: &str) -> String {
    include_str!("../data/go_reference_config.toml")
        .replace("@METRICS@", metrics)
        .replace("@DEBUG@", &dir.join("debug.sock").display().to_string())
        .replace("@REGISTRY@", registry)
        .replace("@MIRROR@", mirror)
        .replace(
            "[resolver]\n",
            &format!(
                "[resolver]\ndocker_config = \"{}\"\n",
                dir.join("no-docker-config.json").display()
            ),
        )
}

/// Starts the daemon on `dir` with `config` as its file.
fn start_with_config(dir: &Path, config: &str) -> Daemon {
    let path = dir.join("config.toml");
    std::fs::write(&path, config).unwrap();
    Daemon::start_with(dir, &["--config", path.to_str().unwrap()])
}

/// `{layer="<layer>",operation_type="<op>"}`.
fn op(layer: &str, op: &str) -> String {
    format!("{{layer=\"{layer}\",operation_type=\"{op}\"}}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_go_nodes_config_and_dashboards_work_unchanged() {
    let registry = TestRegistry::start().await;
    let mirror = FaultProxy::start(registry.addr).await;
    let reference = registry.reference("dropin/app");
    let layers = vec![app_layer(21), TestLayer::golden("tree", "gzip")];
    let digests = push_image(&reference, &layers).await;

    let dir = tempfile::tempdir().unwrap();
    let metrics = format!("127.0.0.1:{}", closed_port());
    let config = go_config(dir.path(), &metrics, &registry.host(), &mirror.host());
    let daemon = start_with_config(dir.path(), &config);
    let log = daemon.log_text();
    assert!(!log.contains("unknown config key"), "{log}");

    let mut c = daemon.client().await;
    let parent = prepare_remote_chain_as(&mut c, "", &reference, &layers, &digests).await;
    // Preparing the container checks every layer below it.
    let mounts = prepare(&mut c, "container", &parent, &[]).await.unwrap();
    let lowers = lowerdirs(&mounts);
    let app = &lowers[1];
    let names = entries(&app.join("app"));
    assert_eq!(names, ["conf.txt", "data.bin"]);
    let data = std::fs::read(app.join("app/data.bin")).unwrap();
    assert_eq!(data, test_blob(DATA, 21));

    // The mirror got every request, with the headers the Go config gives it.
    let seen = mirror.seen();
    assert!(!seen.is_empty(), "the mirror was used");
    for s in &seen {
        assert_eq!(s.header("x-rstargz-mirror"), ["from-go-config"], "{s:?}");
        assert_eq!(s.header("x-rstargz-list"), ["a", "b"], "{s:?}");
        assert!(s.path.contains("ns="), "{s:?}");
    }

    // log_file_access: one debug line at the file's first open.
    wait_for("the file access line", || {
        daemon
            .log_text()
            .lines()
            .any(|l| l.contains("file accessed") && l.contains("/app/data.bin"))
    });

    let d0 = digests[0].as_str();
    let text = scrape(&metrics);
    for (family, kind) in [
        ("stargz_fs_operation_duration_milliseconds", "histogram"),
        ("stargz_fs_operation_duration_microseconds", "histogram"),
        ("stargz_fs_operation_count", "counter"),
        ("stargz_fs_bytes_served", "gauge"),
        ("stargz_fs_layer_fetched_size_bytes", "counter"),
        ("stargz_fs_layer_prefetch_size_bytes", "counter"),
        ("stargz_fs_layer_size_bytes", "counter"),
    ] {
        assert!(
            text.contains(&format!("# TYPE {family} {kind}\n")),
            "{family}: {text}"
        );
    }
    // The first layer's value of `family` for `operation`.
    let of =
        |family: &str, operation: &str| sample(&text, &format!("{family}{}", op(d0, operation)));
    let ms = "stargz_fs_operation_duration_milliseconds";
    assert_eq!(of(&format!("{ms}_count"), "mount"), 1.0);
    // Go's millisecond buckets, up to 16384.
    let top_bucket = format!("{ms}_bucket{{layer=\"{d0}\",operation_type=\"mount\",le=\"16384\"}}");
    assert_eq!(sample(&text, &top_bucket), 1.0, "{text}");
    for operation in [
        "stargz_header_get",
        "stargz_footer_get",
        "stargz_toc_get",
        "stargz_toc_json_deserialize",
        "remote_registry_get",
    ] {
        assert!(
            of(&format!("{ms}_count"), operation) >= 1.0,
            "{operation}: {text}"
        );
    }
    let checks = format!(
        "{ms}_count{}",
        op(
            rstargz_remote::metrics::go::NO_LAYER,
            "all_prefetches_completed"
        )
    );
    assert!(sample(&text, &checks) >= 2.0, "a Check per layer: {text}");

    let reads = of("stargz_fs_operation_count", "on_demand_read_access_count");
    assert!(reads >= 1.0, "{text}");
    let us = "stargz_fs_operation_duration_microseconds";
    assert_eq!(of(&format!("{us}_count"), "read_on_demand"), reads);
    assert!(of(&format!("{us}_count"), "node_readdir") >= 1.0);
    let served = of("stargz_fs_bytes_served", "on_demand_bytes_served");
    assert!(served >= DATA as f64, "{served} served of {DATA} read");
    let fetches = of(
        "stargz_fs_operation_count",
        "on_demand_remote_registry_fetch_count",
    );
    assert!(fetches >= 1.0, "{text}");
    let fetched = of("stargz_fs_bytes_served", "on_demand_bytes_fetched");
    assert!(fetched > 0.0, "{text}");

    let at = format!("{{digest=\"{d0}\",mountpoint=\"{}\"}}", app.display());
    assert_eq!(
        sample(&text, &format!("stargz_fs_layer_size_bytes{at}")),
        layers[0].blob.len() as f64
    );
    let layer_fetched = sample(&text, &format!("stargz_fs_layer_fetched_size_bytes{at}"));
    assert!(layer_fetched >= fetched, "{text}");
    assert_eq!(
        sample(&text, &format!("stargz_fs_layer_prefetch_size_bytes{at}")),
        0.0
    );
    // Ours are still there.
    assert_eq!(sample(&text, "rstargz_mounted_layers"), 2.0);

    // debug_address: /debug/vars, and the metrics too.
    let debug = dir.path().join("debug.sock");
    let vars = get_unix(&debug, "/debug/vars");
    assert!(vars.starts_with("HTTP/1.1 200"), "{vars}");
    let body = vars.split("\r\n\r\n").nth(1).unwrap();
    let json: serde_json::Value = serde_json::from_str(body).unwrap();
    assert!(
        json["cmdline"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a == "serve"),
        "{json}"
    );
    assert_eq!(json["rstargz"]["mounted_layers"], 2);
    let via_debug = get_unix(&debug, "/metrics");
    assert!(via_debug.contains("# TYPE stargz_fs_operation_count counter"));

    remove(&mut c, "container").await.unwrap();
    daemon.stop();
}

/// With `metrics_max_layer_labels = 1` the second layer is counted as
/// `layer="overflow"`; series go with their layer's unmount, and the
/// overflow series never goes backwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_layer_series_are_bounded_and_go_with_their_layer() {
    let registry = TestRegistry::start().await;
    let reference = registry.reference("dropin/bounded");
    let layers = vec![app_layer(31), app_layer(32)];
    let digests = push_image(&reference, &layers).await;
    let (d0, d1) = (digests[0].as_str(), digests[1].as_str());

    let dir = tempfile::tempdir().unwrap();
    let metrics = format!("127.0.0.1:{}", closed_port());
    let top = format!(
        "no_background_fetch = true\nmetrics_address = \"{metrics}\"\nmetrics_max_layer_labels = 1\n"
    );
    let daemon = start_remote_daemon(
        dir.path(),
        &top,
        &dir.path().join("no-docker-config.json"),
        "",
    );
    let mut c = daemon.client().await;
    let parent = prepare_remote_chain_as(&mut c, "", &reference, &layers, &digests).await;
    let mounts = prepare(&mut c, "container", &parent, &[]).await.unwrap();
    for lower in lowerdirs(&mounts) {
        assert_eq!(
            std::fs::read(lower.join("app/conf.txt")).unwrap(),
            b"listen = 8080\n"
        );
    }
    let reads = |layer| {
        format!(
            "stargz_fs_operation_count{}",
            op(layer, "on_demand_read_access_count")
        )
    };
    // Mounts counted under `layer` in `text`.
    let mounts_of = |text: &str, layer| {
        let ms = "stargz_fs_operation_duration_milliseconds";
        sample(text, &format!("{ms}_count{}", op(layer, "mount")))
    };
    let text = scrape(&metrics);
    assert_eq!(mounts_of(&text, d0), 1.0);
    assert_eq!(mounts_of(&text, "overflow"), 1.0);
    assert!(!text.contains(d1), "the second layer is not named: {text}");
    assert!(text.contains(&format!("stargz_fs_layer_size_bytes{{digest=\"{d0}\"")));
    let overflow_reads = sample(&text, &reads("overflow"));
    assert!(overflow_reads >= 1.0, "{text}");

    // The overflow layer goes: what it counted stays.
    remove(&mut c, "container").await.unwrap();
    remove(&mut c, "chain-1").await.unwrap();
    let text = scrape(&metrics);
    assert_eq!(sample(&text, &reads("overflow")), overflow_reads);
    assert!(sample(&text, &reads(d0)) >= 1.0);
    // The named layer goes: its series go with it.
    remove(&mut c, "chain-0").await.unwrap();
    let text = scrape(&metrics);
    assert!(!text.contains(d0), "{text}");
    assert_eq!(sample(&text, &reads("overflow")), overflow_reads);

    // Mounted again: the first layer is named again, the second counts on
    // top of what the overflow series kept.
    prepare_remote_chain_as(&mut c, "", &reference, &layers, &digests).await;
    let text = scrape(&metrics);
    assert_eq!(mounts_of(&text, d0), 1.0);
    assert_eq!(mounts_of(&text, "overflow"), 2.0);
    daemon.stop();
}

/// `no_prometheus`: no metrics listener even with `metrics_address`; the
/// debug socket still answers `/debug/vars`, but not `/metrics`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_prometheus_serves_no_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = format!("127.0.0.1:{}", closed_port());
    let debug = dir.path().join("debug.sock");
    let daemon = start_with_config(
        dir.path(),
        &format!(
            "no_prometheus = true\nmetrics_address = \"{metrics}\"\ndebug_address = \"{}\"\n",
            debug.display()
        ),
    );
    assert!(std::net::TcpStream::connect(&metrics).is_err());
    assert!(get_unix(&debug, "/debug/vars").starts_with("HTTP/1.1 200"));
    assert!(get_unix(&debug, "/metrics").starts_with("HTTP/1.1 404"));
    daemon.stop();
}

/// `[snapshotter] allow_invalid_mounts_on_restart`: a restart that cannot
/// restore a remote layer (registry gone, saved TOC gone) goes on with
/// `true`, and fails with `false`, as in Go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_invalid_mounts_on_restart_decides_whether_start_up_goes_on() {
    let mut registry = TestRegistry::start().await;
    let reference = registry.reference("dropin/restart");
    let layers = vec![app_layer(41)];
    let digests = push_image(&reference, &layers).await;
    let dir = tempfile::tempdir().unwrap();
    let config = |allow: bool| {
        format!(
            "[resolver]\ndocker_config = \"{}\"\n[snapshotter]\nallow_invalid_mounts_on_restart = {allow}\n",
            dir.path().join("no-docker-config.json").display()
        )
    };
    let daemon = start_with_config(dir.path(), &config(false));
    let mut c = daemon.client().await;
    prepare_remote_chain_as(&mut c, "", &reference, &layers, &digests).await;
    let root = daemon.root.clone();
    daemon.stop();
    registry.stop();
    std::fs::remove_dir_all(root.join("layers")).unwrap();

    // false: start-up fails and says why.
    let path = dir.path().join("config.toml");
    std::fs::write(&path, config(false)).unwrap();
    let log = dir.path().join("strict.log");
    let mut strict = std::process::Command::new(rstargz_bin())
        .arg("serve")
        .arg("--root")
        .arg(&root)
        .arg("--address")
        .arg(dir.path().join("strict.sock"))
        .arg("--config")
        .arg(&path)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut status = None;
    wait_for("the strict daemon to give up", || {
        status = strict.try_wait().unwrap();
        status.is_some()
    });
    let stderr = std::fs::read_to_string(&log).unwrap();
    assert!(!status.unwrap().success(), "{stderr}");
    assert!(stderr.contains("cannot restore remote layer"), "{stderr}");
    assert!(
        stderr.contains("allow_invalid_mounts_on_restart"),
        "{stderr}"
    );

    // true: it starts, and says which layer it could not restore.
    let daemon = start_with_config(dir.path(), &config(true));
    let log = daemon.log_text();
    assert!(log.contains("cannot restore remote layer"), "{log}");
    daemon.stop();
}
