//! CI smoke test of the cold-start benchmark: `rstargz-bench cold-start
//! --quick` end to end (tiny image, one run, loopback and the shaped link)
//! must produce a figure for every mode, including the Go reference, on
//! the images of every converter (rstargz's and the Go tooling's
//! `ctr-remote image convert` and `image optimize`, and `rstargz image
//! optimize`), plus the markdown
//! report and the PNG plots. Checks that the lazy modes fetch
//! less than the full pull, not how fast anything is. Needs root,
//! containerd, runc, ctr-remote, docker-registry, busybox-static (from
//! scripts/setup.sh), DejaVu fonts and the Go reference daemon (from
//! scripts/setup-bench.sh); a missing one fails the test. Takes about 2 minutes
//! on a loaded machine. The same through containerd's CRI plugin (`--cri`,
//! loopback only): a figure for the full pull and both rstargz modes.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use crate::common::bench::run_bench;

/// Each converter and the modes that pull the kind of image it makes
/// (without a list: rstargz, go; with one: rstargz-prio, go-prio).
const CELLS: [(&str, &[&str]); 4] = [
    ("rstargz", &["rstargz", "rstargz-prio", "go", "go-prio"]),
    ("ctr-remote", &["rstargz", "go"]),
    ("ctr-remote-optimize", &["rstargz-prio", "go-prio"]),
    ("rstargz-optimize", &["rstargz-prio", "go-prio"]),
];
const LINKS: [&str; 2] = ["loopback", "20ms-100mbit"];

/// Runs `rstargz-bench cold-start --quick --no-background-fetch` with
/// `extra` options under `dir`, asserting success; returns its output dir
/// and report.
fn cold_start(dir: &Path, extra: &[&str]) -> (PathBuf, serde_json::Value) {
    let (out, work) = (dir.join("out"), dir.join("work"));
    // Without background fetch the bytes counted are what pull and
    // workload asked for, which is what the laziness checks need.
    let mut args = vec!["cold-start", "--quick", "--no-background-fetch"];
    args.extend_from_slice(extra);
    let report = run_bench(&args, &out, &work);
    (out, report)
}

#[test]
fn quick_cold_start_produces_every_figure() {
    let tmp = tempfile::tempdir().unwrap();
    let (out, report) = cold_start(tmp.path(), &[]);
    let image = &report["images"][0];
    let (plain, needed) = (
        image["plain_bytes"].as_u64().unwrap(),
        image["needs"]["needed_bytes"].as_u64().unwrap(),
    );
    assert!(image["prioritized_files"].as_u64().unwrap() > 0, "{image}");
    assert!(needed > 0 && needed * 2 < plain, "{image}");
    // Every converter's images were made and are eStargz of about the
    // plain image's size.
    let converted = image["converted"].as_array().unwrap();
    for (converter, _) in CELLS {
        let c = converted
            .iter()
            .find(|c| c["converter"] == converter)
            .unwrap_or_else(|| panic!("no image by {converter}: {image}"));
        let bytes = c["needs"]["layer_bytes"].as_u64().unwrap();
        assert!(bytes > plain / 2 && bytes < plain * 2, "{c}");
    }
    let samples = report["samples"].as_array().unwrap();
    let mut lazy_cells = 0;
    for link in LINKS {
        let full = samples
            .iter()
            .find(|s| s["link"] == link && s["mode"] == "overlayfs")
            .unwrap_or_else(|| panic!("no figure for the full pull over {link}"));
        assert!(full["converter"].is_null(), "{full}");
        assert!(full["bytes"].as_u64().unwrap() >= plain, "{full}");
        assert!(full["local_run_s"].as_f64().unwrap() > 0.0, "{full}");
        for (converter, modes) in CELLS {
            for mode in modes {
                let s = samples
                    .iter()
                    .find(|s| {
                        s["link"] == link && s["mode"] == *mode && s["converter"] == converter
                    })
                    .unwrap_or_else(|| panic!("no figure for {mode} on {converter} over {link}"));
                let (total, bytes) = (s["total_s"].as_f64().unwrap(), s["bytes"].as_u64().unwrap());
                assert!(total > 0.0 && s["requests"].as_u64().unwrap() > 0, "{s}");
                // Lazy: about what the workload needs, far below the image.
                assert!(
                    bytes >= needed / 2 && bytes * 2 < plain,
                    "{mode} on {converter}: {s}"
                );
                lazy_cells += 1;
            }
        }
    }
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(
        md.contains("Go stargz + prio")
            && md.contains("| large | ctr-remote-optimize |")
            && md.contains("### Targets")
            && md.contains("large on ctr-remote over loopback: rstargz at"),
        "{md}"
    );
    for link in LINKS {
        let png = std::fs::read(out.join(format!("cold-start-{link}.png"))).unwrap();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "{link}");
    }
    // The snapshotter and containerd logs of every lazy run are kept for inspection.
    assert!(out.join("logs").read_dir().unwrap().count() >= 2 * lazy_cells);
}

#[test]
fn quick_cri_cold_start_produces_its_figures() {
    let tmp = tempfile::tempdir().unwrap();
    let (out, report) = cold_start(tmp.path(), &["--cri", "--loopback-only"]);
    assert_eq!(report["cri"], true);
    let plain = report["images"][0]["plain_bytes"].as_u64().unwrap();
    let samples = report["samples"].as_array().unwrap();
    for mode in ["overlayfs", "rstargz", "rstargz-prio"] {
        let s = samples
            .iter()
            .find(|s| s["mode"] == mode)
            .unwrap_or_else(|| panic!("no CRI figure for {mode}"));
        let bytes = s["bytes"].as_u64().unwrap();
        assert!(s["total_s"].as_f64().unwrap() > 0.0, "{s}");
        if mode == "overlayfs" {
            assert!(bytes >= plain, "the full pull fetched {bytes} of {plain}");
        } else {
            assert!(bytes * 2 < plain, "{mode} was not lazy: {s}");
        }
    }
    assert!(
        !samples.iter().any(|s| s["mode"] == "go"),
        "the Go reference is not run through CRI"
    );
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(
        md.contains("Cold start through CRI over loopback")
            && md.contains("× overlayfs")
            && !md.contains("### Targets"),
        "{md}"
    );
}
