//! `extract` writes every golden layer to disk with all metadata, through the
//! verified reader, and never outside the destination.
#![allow(clippy::unwrap_used)]

use crate::common;

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use base64::Engine as _;
use common::*;
use rstargz_fs::estargz::{ExtractError, Layer, OpenOptions, extract};

fn check_tree(root: &Path, exp: &Expected, ctx: &str) {
    let entries = effective_entries(exp);
    let mut inode_of = HashMap::new();
    for e in &entries {
        let rel = e.path.trim_start_matches("./").trim_end_matches('/');
        if rel.is_empty() || rel == "." {
            continue;
        }
        let path = root.join(rel);
        let ctx = format!("{ctx}: {}", e.path);
        let meta = std::fs::symlink_metadata(&path).unwrap_or_else(|err| panic!("{ctx}: {err}"));
        inode_of.insert(rel.to_owned(), meta.ino());
        if e.kind == "hardlink" {
            continue;
        }
        assert_attrs(&ctx, &meta, e);
        assert_eq!(meta.mtime(), rounded_mtime(&e.mtime), "{ctx}: mtime");
        match e.kind.as_str() {
            "reg" => assert_eq!(
                Some(sha256_hex(&std::fs::read(&path).unwrap())),
                e.sha256,
                "{ctx}: content"
            ),
            "symlink" => assert_eq!(
                std::fs::read_link(&path).unwrap().to_str(),
                Some(e.linkname.as_str()),
                "{ctx}"
            ),
            "char" | "block" => {
                let rdev = meta.rdev();
                let (ma, mi) = (nix::sys::stat::major(rdev), nix::sys::stat::minor(rdev));
                assert_eq!(
                    (ma as u32, mi as u32),
                    (e.devmajor.unwrap(), e.devminor.unwrap()),
                    "{ctx}: rdev"
                );
            }
            _ => {}
        }
        for (name, value) in &e.xattrs {
            let got = xattr::get(&path, name).unwrap();
            if e.kind == "symlink" && got.is_none() {
                continue; // Linux refuses user.* xattrs on symlinks.
            }
            let got = got.map(|v| base64::engine::general_purpose::STANDARD.encode(v));
            assert_eq!(got.as_deref(), Some(value.as_str()), "{ctx}: xattr {name}");
        }
    }
    for e in entries.iter().filter(|e| e.kind == "hardlink") {
        let rel = e.path.trim_start_matches("./");
        assert_eq!(
            inode_of[rel],
            inode_of[e.linkname.trim_start_matches("./")],
            "{ctx}: hardlink {}",
            e.path
        );
    }
}

#[test]
fn extracts_every_golden_layer() {
    for case in cases() {
        for comp in ["gzip", "zstd"] {
            let blob = blob(&case.case, comp);
            let layer = Layer::open(&blob[..], &OpenOptions::default()).unwrap();
            let dir = tempfile::tempdir().unwrap();
            let dest = dir.path().join("out");
            let stats = extract(&layer, &dest).unwrap();
            assert!(stats.inodes > 0);
            check_tree(
                &dest,
                &expected(&case.case),
                &format!("{}/{comp}", case.case),
            );
        }
    }
}

#[test]
fn refuses_to_write_through_planted_symlinks() {
    let blob = blob("tree", "gzip");
    let layer = Layer::open(&blob[..], &OpenOptions::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (dest, outside) = (dir.path().join("out"), dir.path().join("outside"));
    std::fs::create_dir_all(&dest).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    std::os::unix::fs::symlink(&outside, dest.join("d0")).unwrap();
    let err = extract(&layer, &dest).unwrap_err();
    assert!(matches!(err, ExtractError::Exists(_)), "{err}");
    assert_eq!(
        std::fs::read_dir(&outside).unwrap().count(),
        0,
        "nothing written outside"
    );

    let dest2 = dir.path().join("out2");
    std::fs::create_dir_all(&dest2).unwrap();
    std::os::unix::fs::symlink(outside.join("victim"), dest2.join(".no.prefetch.landmark"))
        .unwrap();
    assert!(matches!(
        extract(&layer, &dest2),
        Err(ExtractError::Exists(_))
    ));
    assert!(!outside.join("victim").exists());
}

#[test]
fn corrupt_chunk_aborts_extraction() {
    let mut blob = blob("sizes", "gzip");
    let layer = Layer::open(&blob[..], &OpenOptions::default()).unwrap();
    let big = all_paths(layer.index())
        .iter()
        .filter_map(|p| layer.index().lookup_path(p))
        .max_by_key(|i| layer.index().node(*i).unwrap().size())
        .unwrap();
    let r = layer.index().chunks(big)[0].compressed_range();
    drop(layer);
    blob[(r.start + (r.end - r.start) / 2) as usize] ^= 0x40;
    let layer = Layer::open(&blob[..], &OpenOptions::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    assert!(matches!(
        extract(&layer, dir.path()),
        Err(ExtractError::Read { .. })
    ));
}
