//! Replays the committed fuzz seeds (`fuzz/seeds/<target>/`), every saved
//! crash input (`fuzz/regressions/<target>/`) and the golden eStargz files
//! through the fuzz harness bodies on stable Rust: none may panic.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use rstargz::fuzzing::targets;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs `f` over every file of `dir` (dot files and subdirectories excepted); returns how many.
fn replay(dir: &Path, f: fn(&[u8])) -> usize {
    let mut n = 0;
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let is_file = entry.file_type().is_ok_and(|t| t.is_file());
        if !is_file || entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        let data = std::fs::read(entry.path()).expect("readable fuzz input");
        f(&data);
        n += 1;
    }
    n
}

#[test]
fn every_fuzz_target_has_a_binary_and_replays_its_inputs() {
    for (name, f) in targets() {
        let bin = repo().join(format!("fuzz/fuzz_targets/{name}.rs"));
        assert!(bin.exists(), "{} missing", bin.display());
        assert!(
            repo().join(format!("fuzz/regressions/{name}")).is_dir(),
            "fuzz/regressions/{name} missing"
        );
        replay(&repo().join(format!("fuzz/regressions/{name}")), f);
        replay(&repo().join(format!("fuzz/seeds/{name}")), f);
    }
    let bins = std::fs::read_dir(repo().join("fuzz/fuzz_targets")).unwrap();
    assert_eq!(
        bins.count(),
        targets().len(),
        "a fuzz target is not in targets()"
    );
}

#[test]
fn golden_blobs_tars_and_tocs_do_not_panic() {
    let golden = repo().join("testdata/estargz");
    assert!(replay(&golden, rstargz_fs::fuzzing::fuzz_blob) > 50);
    assert!(replay(&golden, rstargz_fs::fuzzing::fuzz_toc_json) > 50);
    let mut tars = 0;
    for entry in std::fs::read_dir(&golden).unwrap().flatten() {
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "tar") && entry.metadata().unwrap().len() < 1 << 20
        {
            rstargz_fs::fuzzing::fuzz_tar(&std::fs::read(&path).unwrap());
            tars += 1;
        }
    }
    assert!(tars > 10, "{tars} golden tars");
}

#[test]
fn truncations_of_golden_blobs_do_not_panic() {
    let data = std::fs::read(repo().join("testdata/estargz/links.zstd.estargz")).unwrap();
    for cut in (0..data.len()).step_by(97) {
        rstargz_fs::fuzzing::fuzz_blob(&data[cut..]);
        rstargz_fs::fuzzing::fuzz_blob(&data[..cut]);
    }
}
