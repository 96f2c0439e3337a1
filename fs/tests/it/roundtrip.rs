//! Round trip: every golden input tar is converted by our writer, read back by
//! our reader and compared with the same expectations as the Go blobs; the
//! output must also satisfy `gzip -t`/`zstd -t` and `tar -t`.
#![allow(clippy::unwrap_used)]

use crate::common;

use std::io::Write;
use std::process::{Command, Stdio};

use common::*;
use rstargz_fs::estargz::{Compression, Layer, OpenOptions, WriterOptions, convert, read_toc};

fn options(case: &Case, compression: Compression) -> WriterOptions {
    options_min(case, compression, 0)
}

fn options_min(case: &Case, compression: Compression, min_chunk_size: u64) -> WriterOptions {
    WriterOptions {
        compression,
        min_chunk_size,
        chunk_size: if case.chunk_size == 0 {
            4 << 20
        } else {
            case.chunk_size
        },
        prioritized: case.prefetch.clone(),
        ..WriterOptions::default()
    }
}

fn run_with_stdin(cmd: &str, args: &[&str], input: &[u8]) -> Vec<u8> {
    let mut child = Command::new(cmd)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{cmd} must be installed (scripts/setup.sh): {e}"));
    let mut stdin = child.stdin.take().unwrap();
    let data = input.to_vec();
    let feeder = std::thread::spawn(move || stdin.write_all(&data));
    let out = child.wait_with_output().unwrap();
    feeder.join().unwrap().unwrap();
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn tar_listing(blob: &[u8], compression: Compression) -> Vec<String> {
    let tar = match compression {
        Compression::Gzip => {
            run_with_stdin("gzip", &["-t"], blob);
            run_with_stdin("gzip", &["-dc"], blob)
        }
        Compression::Zstd => {
            run_with_stdin("zstd", &["-t", "-q"], blob);
            run_with_stdin("zstd", &["-dc", "-q"], blob)
        }
    };
    let list = run_with_stdin("tar", &["-t", "--quoting-style=literal"], &tar);
    let mut names: Vec<String> = String::from_utf8(list)
        .unwrap()
        .lines()
        .map(|l| l.trim_start_matches("./").trim_end_matches('/').to_owned())
        .filter(|l| !l.is_empty() && *l != ".")
        .collect();
    names.sort();
    names.dedup();
    names
}

/// Converts, reads back and checks `case`; returns how many TOC entries
/// carry an `innerOffset`.
fn check_round_trip(case: &Case, compression: Compression, min_chunk_size: u64) -> usize {
    let ctx = format!(
        "{} / {compression:?} / min chunk {min_chunk_size} (our writer)",
        case.case
    );
    let tar = std::fs::read(testdata().join(format!("{}.tar", case.case))).unwrap();
    let opts = options_min(case, compression, min_chunk_size);
    let mut blob = Vec::new();
    let out = convert(&tar[..], &mut blob, &opts).unwrap();
    assert_eq!(out.size, blob.len() as u64, "{ctx}");
    assert_eq!(
        out.digest.to_string(),
        format!("sha256:{}", sha256_hex(&blob)),
        "{ctx}"
    );

    let (_, decoded) = read_toc(&blob, 64 << 20).unwrap();
    assert_eq!(decoded.digest, out.toc_digest, "{ctx}: TOC digest");
    let layer = Layer::open(&blob[..], &OpenOptions::default()).unwrap();
    check_layer(&layer, &expected(&case.case), &decoded.toc, &ctx);

    let (diff_id, size) = diff_id(&blob, compression == Compression::Zstd);
    assert_eq!(diff_id, out.diff_id.to_string(), "{ctx}: diffID");
    assert_eq!(size, out.uncompressed_size, "{ctx}");

    // Ordinary tools accept the blob and see every file.
    let listed = tar_listing(&blob, compression);
    let mut want: Vec<String> = all_paths(layer.index());
    if compression == Compression::Gzip {
        want.push("stargz.index.json".into());
    }
    // Implicit parent dirs have no tar entry of their own.
    let exp = expected(&case.case);
    let with_entry: std::collections::HashSet<String> = exp
        .entries
        .iter()
        .map(|e| {
            e.path
                .trim_start_matches("./")
                .trim_end_matches('/')
                .to_owned()
        })
        .collect();
    want.retain(|p| with_entry.contains(p) || p.ends_with("landmark") || p == "stargz.index.json");
    want.sort();
    assert_eq!(listed, want, "{ctx}: tar -t listing");

    // Deterministic, and the same whatever the input compression.
    let mut again = Vec::new();
    let gz = {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(&tar).unwrap();
        e.finish().unwrap()
    };
    convert(&gz[..], &mut again, &opts).unwrap();
    assert!(again == blob, "{ctx}: output differs for gzip input");
    let zst = zstd::bulk::compress(&tar, 1).unwrap();
    again.clear();
    convert(&zst[..], &mut again, &opts).unwrap();
    assert!(again == blob, "{ctx}: output differs for zstd input");
    // The in-place path for tar files gives the same blob.
    again.clear();
    let file = std::fs::File::open(testdata().join(format!("{}.tar", case.case))).unwrap();
    rstargz_fs::estargz::convert_file(&file, &mut again, &opts).unwrap();
    assert!(again == blob, "{ctx}: convert_file differs");
    decoded
        .toc
        .entries
        .iter()
        .filter(|e| e.inner_offset > 0)
        .count()
}

#[test]
fn round_trip_gzip() {
    for case in cases() {
        assert_eq!(check_round_trip(&case, Compression::Gzip, 0), 0);
    }
}

#[test]
fn round_trip_zstd() {
    for case in cases() {
        assert_eq!(check_round_trip(&case, Compression::Zstd, 0), 0);
    }
}

/// With a minimum chunk size small files share compressed members (their
/// entries carry `innerOffset`), and every case still reads back.
#[test]
fn round_trip_min_chunk_size() {
    for compression in [Compression::Gzip, Compression::Zstd] {
        let packed: usize = cases()
            .iter()
            .map(|case| check_round_trip(case, compression, 64 << 10))
            .sum();
        assert!(packed > 0, "{compression:?}: no chunk shares a member");
    }
}

#[test]
fn layout_matches_go_writer() {
    // Same entry order, chunking and field set as the Go reference TOC.
    for case in cases() {
        let tar = std::fs::read(testdata().join(format!("{}.tar", case.case))).unwrap();
        let mut blob = Vec::new();
        convert(&tar[..], &mut blob, &options(&case, Compression::Gzip)).unwrap();
        let ours = read_toc(&blob, 64 << 20).unwrap().1.toc;
        let go = read_toc(&common::blob(&case.case, "gzip"), 64 << 20)
            .unwrap()
            .1
            .toc;
        let shape = |t: &rstargz_fs::estargz::Toc| {
            t.entries
                .iter()
                .map(|e| {
                    let name = e
                        .name
                        .trim_start_matches("./")
                        .trim_end_matches('/')
                        .to_owned();
                    (
                        name,
                        e.kind.clone(),
                        e.size,
                        e.chunk_offset,
                        e.chunk_size,
                        e.chunk_digest.clone(),
                        e.digest.clone(),
                        e.mode,
                        e.modtime.clone(),
                        e.xattrs.clone(),
                    )
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(shape(&ours), shape(&go), "{}", case.case);
    }
}

/// A tar with raw names (the `tar` crate's path checks would refuse `..`).
fn tar_of(entries: &[(&str, tar::EntryType, &str)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, kind, link) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(*kind);
        h.set_mode(0o644);
        let data: &[u8] = if *kind == tar::EntryType::Regular {
            b"abc"
        } else {
            b""
        };
        h.set_size(data.len() as u64);
        let old = h.as_old_mut();
        old.name[..path.len()].copy_from_slice(path.as_bytes());
        old.linkname[..link.len()].copy_from_slice(link.as_bytes());
        h.set_cksum();
        b.append(&h, data).unwrap();
    }
    b.into_inner().unwrap()
}

#[test]
fn writer_refuses_inputs_that_cannot_form_a_layer() {
    use tar::EntryType::{Directory, Link, Regular};
    let bad_inputs = [
        tar_of(&[("a", Regular, ""), ("h", Link, "missing")]),
        tar_of(&[("f", Regular, ""), ("f/x", Regular, "")]),
        tar_of(&[("../escape", Regular, "")]),
    ];
    for (i, tar) in bad_inputs.iter().enumerate() {
        let res = convert(&tar[..], Vec::new(), &WriterOptions::default());
        assert!(
            matches!(res, Err(rstargz_fs::estargz::Error::InputTar(_))),
            "input {i}: {res:?}"
        );
    }
    // Re-converting an eStargz blob drops the old TOC and landmark.
    let tar = tar_of(&[("d", Directory, ""), ("d/f", Regular, "")]);
    let mut first = Vec::new();
    convert(&tar[..], &mut first, &WriterOptions::default()).unwrap();
    let mut second = Vec::new();
    convert(&first[..], &mut second, &WriterOptions::default()).unwrap();
    assert_eq!(first, second);
}
