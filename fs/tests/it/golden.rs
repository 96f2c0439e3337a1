//! Every golden blob made by the Go reference (`testdata/estargz`) is read,
//! indexed and compared field by field with its expected JSON.
#![allow(clippy::unwrap_used)]

use crate::common;

use common::*;
use rstargz_fs::estargz::{
    Digest, FooterKind, Layer, OpenOptions, Prefetch, read_toc, toc::parse_toc_json,
};

fn check_case(case: &str, comp: &str) {
    let ctx = format!("{case}/{comp}");
    let meta = meta(case, comp);
    let blob = blob(case, comp);
    assert_eq!(
        format!("sha256:{}", sha256_hex(&blob)),
        meta.blob_digest,
        "{ctx}: fixture intact"
    );

    let (footer, decoded) = read_toc(&blob, 64 << 20).unwrap();
    let want_kind = if comp == "gzip" {
        FooterKind::Estargz
    } else {
        FooterKind::ZstdChunked
    };
    assert_eq!(footer.kind, want_kind, "{ctx}");
    assert_eq!(footer.footer_size, meta.footer_size, "{ctx}");
    assert_eq!(footer.toc_offset, meta.toc_offset, "{ctx}");
    assert_eq!(
        decoded.digest.to_string(),
        meta.toc_digest,
        "{ctx}: TOC digest"
    );
    let toc_json =
        std::fs::read(testdata().join(format!("{case}.{comp}.estargz.toc.json"))).unwrap();
    assert_eq!(
        decoded.toc,
        parse_toc_json(&toc_json).unwrap(),
        "{ctx}: TOC"
    );

    let opts = OpenOptions {
        expected_toc_digest: Some(Digest::parse(&meta.toc_digest).unwrap()),
        ..OpenOptions::default()
    };
    let layer = Layer::open(&blob[..], &opts).unwrap();
    layer.verify_toc(&meta.toc_digest).unwrap();
    assert!(
        layer
            .verify_toc(&format!("sha256:{}", "0".repeat(64)))
            .is_err()
    );
    check_layer(&layer, &expected(case), &decoded.toc, &ctx);

    match layer.index().prefetch() {
        Prefetch::Range { end } if case == "prefetch" => {
            assert!(end > 0 && end < footer.toc_offset)
        }
        Prefetch::Disabled if case != "prefetch" => {}
        other => panic!("{ctx}: prefetch {other:?}"),
    }

    let (diff_id, size) = diff_id(&blob, comp == "zstd");
    assert_eq!(diff_id, meta.diff_id, "{ctx}: diffID");
    assert_eq!(size, meta.uncompressed_size, "{ctx}: uncompressed size");
}

/// One test per case and compression, so a failure names its blob.
macro_rules! golden {
    ($($id:ident => $case:literal),* $(,)?) => {
        $(mod $id {
            #[test]
            fn gzip() {
                super::check_case($case, "gzip");
            }
            #[test]
            fn zstd() {
                super::check_case($case, "zstd");
            }
        })*

        #[test]
        fn every_case_in_cases_json_has_a_test() {
            let mut listed: Vec<String> = cases().into_iter().map(|c| c.case).collect();
            let mut covered = vec![$($case.to_owned()),*];
            listed.sort();
            covered.sort();
            assert_eq!(listed, covered);
        }
    };
}

golden! {
    empty => "empty",
    sizes => "sizes",
    default_chunk => "default-chunk",
    tree => "tree",
    links => "links",
    special => "special",
    longnames => "longnames",
    longnames_gnu => "longnames-gnu",
    unicode => "unicode",
    xattrs => "xattrs",
    whiteouts => "whiteouts",
    perms => "perms",
    mtimes => "mtimes",
    prefetch => "prefetch",
    dotslash => "dotslash",
    duplicates => "duplicates",
}

#[test]
fn prefetch_landmark_follows_prioritized_files() {
    let blob = blob("prefetch", "gzip");
    let layer = Layer::open(&blob[..], &OpenOptions::default()).unwrap();
    let Prefetch::Range { end } = layer.index().prefetch() else {
        panic!("no prefetch range")
    };
    let index = layer.index();
    let first_chunk = |p: &str| index.chunks(index.lookup_path(p).unwrap())[0].offset;
    assert!(first_chunk("app/bin/server") < end);
    assert!(first_chunk("app/config/settings.json") < end);
    assert!(first_chunk("app/data/not-prefetched.bin") > end);
}

#[test]
fn inode_numbers_are_stable_and_follow_toc_order() {
    let blob = blob("tree", "gzip");
    let a = Layer::open(&blob[..], &OpenOptions::default()).unwrap();
    let b = Layer::open(&blob[..], &OpenOptions::default()).unwrap();
    let pa = all_paths(a.index());
    assert!(pa.len() > 200);
    for p in &pa {
        assert_eq!(a.index().lookup_path(p), b.index().lookup_path(p), "{p}");
    }
    // The landmark is the first TOC entry, so it gets the first inode after the root.
    assert_eq!(a.index().lookup_path(".no.prefetch.landmark"), Some(2));
}
