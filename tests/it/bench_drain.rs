//! CI smoke test of the drain benchmark (issue 18): `rstargz-bench drain
//! --tiny --pods 2 --runs 1` over loopback, every mode (the full pull,
//! rstargz and the Go reference, without and with a list), through
//! containerd's CRI plugin. Checks the report's shape, that every pod's
//! workload printed its own image's checksum, and that the full pull gave
//! the floor's local part; not how fast anything is. Needs root,
//! containerd, runc, docker-registry, busybox-static, DejaVu fonts and the
//! Go reference daemon (scripts/setup.sh, scripts/setup-bench.sh).

#![allow(clippy::unwrap_used)]

use crate::common::bench::run_bench;

const MODES: [&str; 5] = ["overlayfs", "rstargz", "rstargz-prio", "go", "go-prio"];

#[test]
fn tiny_drain_reports_every_pod_of_every_mode() {
    let tmp = tempfile::tempdir().unwrap();
    let (out, work) = (tmp.path().join("out"), tmp.path().join("work"));
    let report = run_bench(
        &[
            "drain",
            "--tiny",
            "--pods",
            "2",
            "--runs",
            "1",
            "--rtt-ms",
            "0",
            "--rate-mbit",
            "0",
        ],
        &out,
        &work,
    );
    assert_eq!(report["pods"], 2);
    let images = report["images"].as_array().unwrap();
    assert_eq!(images.len(), 2);
    let sums: Vec<&str> = images
        .iter()
        .map(|i| i["checksum"].as_str().unwrap())
        .collect();
    assert!(
        sums.iter().all(|s| s.len() == 64) && sums[0] != sums[1],
        "{sums:?}"
    );
    for i in images {
        let needed = i["needs"]["needed_bytes"].as_u64().unwrap();
        let esgz = i["esgz_bytes"].as_u64().unwrap();
        assert!(
            needed > 0 && i["needs"]["prioritized_bytes"].as_u64().unwrap() > 0,
            "{i}"
        );
        assert!(esgz > 0, "{i}");
    }
    let samples = report["samples"].as_array().unwrap();
    for mode in MODES {
        let s = samples
            .iter()
            .find(|s| s["mode"] == mode)
            .unwrap_or_else(|| panic!("no figure for {mode}"));
        let pods: Vec<f64> = s["pods_s"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_f64().unwrap())
            .collect();
        assert_eq!(pods.len(), 2, "{s}");
        let all = s["all_s"].as_f64().unwrap();
        assert!(pods.iter().all(|p| *p > 0.0 && *p <= all), "{s}");
        assert_eq!(s["checksums_ok"], serde_json::json!([true, true]), "{s}");
        assert_eq!(s["load_avg"].as_array().unwrap().len(), 3, "{s}");
        if mode == "overlayfs" {
            assert!(s["local_run_s"].as_f64().unwrap() > 0.0, "{s}");
            assert!(s["peak_rss_bytes"].is_null(), "{s}");
        } else {
            assert!(s["peak_rss_bytes"].as_u64().unwrap() > 0, "{s}");
        }
        if mode.starts_with("rstargz") {
            let counters = &s["probe"]["rstargz"];
            assert!(
                counters["fetch_bytes"].as_array().unwrap().len() == 3,
                "{s}"
            );
        }
    }
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(
        md.contains("### Drain: 2 pods") && md.contains("× floor"),
        "{md}"
    );
    let png = std::fs::read(out.join("drain.png")).unwrap();
    assert!(png.starts_with(b"\x89PNG"), "drain.png is not a PNG");
}
