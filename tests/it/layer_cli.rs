//! `rstargz layer convert | inspect | extract` end to end on a golden input tar.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;

fn rstargz(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_rstargz"))
        .args(args)
        .output()
        .unwrap()
}

fn testdata(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("testdata/estargz")
        .join(name)
        .to_str()
        .unwrap()
        .to_owned()
}

#[test]
fn convert_inspect_extract() {
    let dir = tempfile::tempdir().unwrap();
    for comp in ["gzip", "zstd"] {
        let blob = dir.path().join(format!("links.{comp}"));
        let blob_s = blob.to_str().unwrap();
        let out = rstargz(&[
            "layer",
            "convert",
            &testdata("links.tar"),
            blob_s,
            "--compression",
            comp,
            "--chunk-size",
            "4096",
            "--prioritize",
            "dir/big.bin",
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let res: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        for key in ["digest", "tocDigest", "diffID"] {
            assert!(res[key].as_str().unwrap().starts_with("sha256:"), "{key}");
        }
        assert_eq!(
            res["size"].as_u64(),
            Some(std::fs::metadata(&blob).unwrap().len())
        );

        let out = rstargz(&["layer", "inspect", "--json", blob_s]);
        assert!(out.status.success());
        let toc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let names: Vec<&str> = toc["entries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            &names[..3],
            ["dir/", "dir/big.bin", "dir/big.bin"],
            "prioritized file first"
        );
        assert!(names.contains(&".prefetch.landmark"));

        let dest = dir.path().join(format!("x-{comp}"));
        let toc_digest = res["tocDigest"].as_str().unwrap();
        let out = rstargz(&[
            "layer",
            "extract",
            blob_s,
            dest.to_str().unwrap(),
            "--toc-digest",
            toc_digest,
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            std::fs::read(dest.join("dir/target.txt")).unwrap(),
            std::fs::read(dest.join("hard-same-dir")).unwrap()
        );
        assert_eq!(
            std::fs::read_link(dest.join("abs-link")).unwrap(),
            Path::new("/etc/passwd")
        );

        let wrong = format!("sha256:{}", "0".repeat(64));
        let out = rstargz(&[
            "layer",
            "extract",
            blob_s,
            dir.path().join("never").to_str().unwrap(),
            "--toc-digest",
            &wrong,
        ]);
        assert!(!out.status.success());
        assert!(String::from_utf8_lossy(&out.stderr).contains("TOC digest mismatch"));
        assert!(!dir.path().join("never").exists());
    }
}
