//! Fuzz harness bodies, shared by `fs/fuzz` (cargo-fuzz, nightly) and the
//! stable regression test that replays saved inputs. They must never panic.

use super::chunk::Verify;
use super::index::{Index, Limits, NodeKind};
use super::reader::{Layer, OpenOptions};
use super::toc::parse_toc_json;

/// Small limits so a fuzz input cannot make the harness allocate much.
fn limits() -> Limits {
    Limits {
        max_file_size: 1 << 30,
        max_chunk_size: 1 << 20,
        max_entries: 100_000,
    }
}

/// Whole-blob path: footer, TOC decompression, index, then every chunk read.
pub fn fuzz_blob(data: &[u8]) {
    let opts = OpenOptions {
        max_toc_size: 1 << 20,
        limits: limits(),
        verify: Verify::Enabled,
        expected_toc_digest: None,
    };
    let Ok(layer) = Layer::open(data, &opts) else {
        return;
    };
    let index = layer.index();
    let mut buf = vec![0u8; 4096];
    for ino in 1..=index.len() as u32 {
        if index.node(ino).is_some_and(|n| n.kind() == NodeKind::Reg) {
            let _ = layer.read_file_at(ino, 0, &mut buf);
        }
    }
}

/// TOC JSON path: parse and build the index against a 1 MiB payload.
pub fn fuzz_toc_json(data: &[u8]) {
    let Ok(toc) = parse_toc_json(data) else {
        return;
    };
    let Ok(index) = Index::build_with_payload_end(&toc, 1 << 20, &limits()) else {
        return;
    };
    for ino in 1..=index.len() as u32 {
        let _ = index.children(ino).count();
        let _ = index.chunks_for_range(ino, 0, u64::MAX);
        let _ = index.symlink_target(ino);
        let _ = index.xattrs(ino).count();
    }
}
