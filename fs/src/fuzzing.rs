//! Fuzz harness bodies, shared by the cargo-fuzz crate (`fuzz/`, nightly
//! instrumentation) and the stable regression test that replays saved inputs.
//! They must never panic on any input; an `assert!` here states a property
//! the parsers promise (e.g. a converted blob always opens again).

use std::path::Path;

use crate::estargz::chunk::Verify;
use crate::estargz::footer::Compression;
use crate::estargz::index::{Index, Limits, NodeKind};
use crate::estargz::open::OpenOptions;
use crate::estargz::open::{Opener, Step};
use crate::estargz::reader::Layer;
use crate::estargz::toc::parse_toc_json;
use crate::estargz::writer::{WriterOptions, convert};
use crate::registry::hosts::parse_hosts_file;
use crate::registry::multipart::{byteranges_boundary, parse_byteranges};

/// A fuzz target: its name (`fuzz/fuzz_targets/<name>.rs`) and harness body.
pub type Target = (&'static str, fn(&[u8]));

/// Every harness of this crate by fuzz target name.
pub const TARGETS: &[Target] = &[
    ("blob", fuzz_blob),
    ("toc_json", fuzz_toc_json),
    ("tar", fuzz_tar),
    ("hosts_toml", fuzz_hosts_toml),
    ("multipart", fuzz_multipart),
];

/// Small limits so a fuzz input cannot make the harness allocate much.
fn limits() -> Limits {
    Limits {
        max_file_size: 1 << 30,
        max_chunk_size: 1 << 20,
        max_entries: 100_000,
    }
}

fn open_options() -> OpenOptions {
    OpenOptions {
        max_toc_size: 1 << 20,
        limits: limits(),
        verify: Verify::Enabled,
        expected_toc_digest: None,
    }
}

/// Reads the first 4 KiB of every regular file; returns how many reads failed.
fn read_files(layer: &Layer<&[u8]>) -> usize {
    let index = layer.index();
    let mut buf = vec![0u8; 4096];
    (1..=index.len() as u32)
        .filter(|&ino| index.node(ino).is_some_and(|n| n.kind() == NodeKind::Reg))
        .filter(|&ino| layer.read_file_at(ino, 0, &mut buf).is_err())
        .count()
}

/// Whole-blob path: footer, TOC decompression, index, then every chunk read.
/// The harness drives the [`Opener`] itself (as `Layer::open` and the async
/// layer reader do) so it can hold each asked-for range to the promise that
/// it lies inside the blob and within the TOC cap.
pub fn fuzz_blob(data: &[u8]) {
    let opts = open_options();
    let size = data.len() as u64;
    let mut opener = Opener::new(size, &opts);
    let opened = loop {
        let range = opener.wants();
        assert!(
            range.start <= range.end && range.end <= size,
            "opener asked for {range:?} of a {size}-byte blob"
        );
        assert!(
            range.end - range.start <= opts.max_toc_size + (1 << 20),
            "opener asked for {range:?}, past the TOC cap"
        );
        match opener.feed(&data[range.start as usize..range.end as usize]) {
            Ok(Step::Need(next)) => opener = next,
            Ok(Step::Done(opened)) => break opened,
            Err(_) => return,
        }
    };
    if let Ok(layer) = Layer::with_toc(data, opened, &opts) {
        read_files(&layer);
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

/// The converter's tar reader: any tar it accepts must come out as a blob
/// that opens with its own TOC digest and whose files all read back.
/// The low bit of byte 511 (padding of the first tar header, ignored by tar)
/// picks zstd instead of gzip, the next bit a minimum chunk size.
pub fn fuzz_tar(data: &[u8]) {
    // Compressed input only adds the decompressors' work (a bomb there costs
    // the converter temporary disk, which is its caller's to bound).
    if data.starts_with(&[0x1f, 0x8b]) || data.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        return;
    }
    let zstd = data.get(511).is_some_and(|b| b & 1 == 1);
    let opts = WriterOptions {
        compression: if zstd {
            Compression::Zstd
        } else {
            Compression::Gzip
        },
        chunk_size: 4096,
        // Bit 1 of the same byte packs small files into shared members.
        min_chunk_size: if data.get(511).is_some_and(|b| b & 2 == 2) {
            8192
        } else {
            0
        },
        prioritized: ["etc/hosts", "app/bin/app", "d/file", "dir/link"]
            .map(String::from)
            .to_vec(),
        gzip_level: 1,
        zstd_level: 1,
    };
    let mut blob = Vec::new();
    let Ok(out) = convert(data, &mut blob, &opts) else {
        return;
    };
    assert_eq!(out.size, blob.len() as u64, "reported blob size");
    let open = OpenOptions {
        expected_toc_digest: Some(out.toc_digest),
        limits: Limits::default(),
        ..open_options()
    };
    let layer = match Layer::open(&blob[..], &open) {
        Ok(layer) => layer,
        Err(e) => panic!("converted blob does not open: {e}"),
    };
    assert_eq!(
        read_files(&layer),
        0,
        "files of a converted blob fail to read"
    );
}

/// containerd `hosts.toml`: parse, then build every endpoint URL and header
/// map the registry client would.
pub fn fuzz_hosts_toml(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let dir = Path::new("/etc/containerd/certs.d/registry.example");
    let Ok(file) = parse_hosts_file(dir, text, "hosts.toml") else {
        return;
    };
    for host in file.mirrors.iter().chain(&file.server) {
        let root = host.api_root();
        let _ = reqwest::Url::parse(&format!("{root}/library/app/blobs/sha256:00"));
        let _ = crate::registry::http::configured_headers(host);
    }
}

/// multipart/byteranges: the first line is the Content-Type, the rest the
/// body. Accepted parts must lie inside the body and match their ranges.
pub fn fuzz_multipart(data: &[u8]) {
    const MAX_PARTS: usize = 8;
    let (head, body) = match data.iter().position(|b| *b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let content_type = String::from_utf8_lossy(head);
    // Without a usable boundary the body parser still gets exercised.
    let boundary = byteranges_boundary(&content_type).unwrap_or_else(|| "b".to_string());
    let Ok(parts) = parse_byteranges(body, &boundary, MAX_PARTS) else {
        return;
    };
    assert!(parts.len() <= MAX_PARTS);
    for p in parts {
        assert!(p.body_span.start <= p.body_span.end && p.body_span.end <= body.len());
        assert_eq!(p.range.end - p.range.start, p.body_span.len() as u64);
    }
}
