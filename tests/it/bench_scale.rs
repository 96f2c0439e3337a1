//! CI smoke test of `rstargz-bench scale-layers` (issue 18's layers part,
//! `scripts/bench-scale.sh layers`) at tiny N: a few small eStargz layers
//! mounted through rstargz's and the Go reference's Snapshots sockets,
//! every file read back, and a 2-layer rpull through a private containerd
//! on each. Asserts the report's shape and that every mount succeeded and
//! every byte came back, never a time. Needs root, FUSE, overlayfs,
//! docker-registry, containerd, runc, ctr-remote, DejaVu fonts and the Go
//! reference daemon (scripts/setup.sh, scripts/setup-bench.sh).

#![allow(clippy::unwrap_used)]

use crate::common::bench::run_bench;

#[test]
fn scale_layers_reports_every_daemon_and_count() {
    let dir = tempfile::tempdir().unwrap();
    let (out, work) = (dir.path().join("out"), dir.path().join("work"));
    let report = run_bench(
        &[
            "scale-layers",
            "--layers",
            "2,3",
            "--files-per-layer",
            "3",
            "--rpull-layers",
            "2",
            "--rpull-files",
            "2",
            "--rpull-runs",
            "1",
            "--settle-seconds",
            "0",
            "--idle-seconds",
            "0",
        ],
        &out,
        &work,
    );
    let cells = report["cells"].as_array().unwrap();
    assert_eq!(cells.len(), 4, "{report:#}");
    for (daemon, layers) in [("rstargz", 2), ("go", 2), ("rstargz", 3), ("go", 3)] {
        let cell = cells
            .iter()
            .find(|c| c["daemon"] == daemon && c["layers"] == layers)
            .unwrap_or_else(|| panic!("no cell of {daemon} at {layers}: {report:#}"));
        assert_eq!(cell["mounted_layers"], layers, "{cell:#}");
        assert_eq!(cell["roots"], 1, "{cell:#}");
        // 3 files of 1-4 KiB per layer, all read back.
        let bytes = cell["read_bytes"].as_u64().unwrap();
        assert!(bytes >= layers * 3 * 1024, "{cell:#}");
        for field in [
            "threads_idle",
            "threads_peak_mount",
            "threads_steady",
            "fds_steady",
        ] {
            assert!(cell[field].as_u64().unwrap() > 0, "{field}: {cell:#}");
        }
        for field in ["rss_idle_kib", "rss_mounted_kib", "rss_steady_kib"] {
            assert!(cell[field].as_u64().unwrap() > 0, "{field}: {cell:#}");
        }
        assert_eq!(cell["prepare"]["calls"], layers, "{cell:#}");
        for series in ["mounts_busy", "mounts_idle"] {
            assert!(cell[series]["calls"].as_u64().unwrap() >= 20, "{cell:#}");
            let (p50, p99) = (
                cell[series]["p50_ms"].as_f64().unwrap(),
                cell[series]["p99_ms"].as_f64().unwrap(),
            );
            assert!(p50 > 0.0 && p99 >= p50, "{series}: {cell:#}");
        }
    }
    let rpull = report["rpull"].as_array().unwrap();
    let daemons: Vec<&str> = rpull
        .iter()
        .map(|r| r["daemon"].as_str().unwrap())
        .collect();
    assert_eq!(daemons, ["rstargz", "go"], "{report:#}");
    for r in rpull {
        assert_eq!(r["seconds"].as_array().unwrap().len(), 1, "{r:#}");
        assert!(r["median_s"].as_f64().unwrap() > 0.0, "{r:#}");
    }
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(md.contains("## N = 3") && md.contains("rpull"), "{md}");
    let png = std::fs::read(out.join("scale-layers.png")).unwrap();
    assert!(png.starts_with(b"\x89PNG"), "not a PNG");
    // The scratch directory is left clean: nothing mounted under it.
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(work.to_str().unwrap()), "{mounts}");
}
