//! Replays saved fuzz inputs (`fs/fuzz/regressions/<target>/`) and the golden
//! seeds through the fuzz harness bodies on stable Rust: none may panic.

use std::path::Path;

use rstargz_fs::estargz::fuzzing::{fuzz_blob, fuzz_toc_json};

fn replay(dir: &Path, f: fn(&[u8])) -> usize {
    let mut n = 0;
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = entry.file_name();
        if name.to_string_lossy().starts_with('.') {
            continue;
        }
        if let Ok(data) = std::fs::read(entry.path()) {
            f(&data);
            n += 1;
        }
    }
    n
}

#[test]
fn saved_fuzz_inputs_do_not_panic() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    replay(&root.join("fuzz/regressions/blob"), fuzz_blob);
    replay(&root.join("fuzz/regressions/toc_json"), fuzz_toc_json);
    let golden = root.join("../testdata/estargz");
    assert!(replay(&golden, fuzz_blob) > 50);
    assert!(replay(&golden, fuzz_toc_json) > 50);
}

#[test]
fn truncations_of_golden_blobs_do_not_panic() {
    let golden =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata/estargz/links.zstd.estargz");
    let data = std::fs::read(golden).expect("golden blob");
    for cut in (0..data.len()).step_by(97) {
        fuzz_blob(&data[cut..]);
        fuzz_blob(&data[..cut]);
    }
}
