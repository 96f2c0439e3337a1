//! Hostile and damaged input: every rejection is a typed error, and no read
//! ever returns wrong bytes.
#![allow(clippy::unwrap_used)]

use crate::common;

use rstargz_fs::estargz::chunk::Verify;
use rstargz_fs::estargz::{
    Chunk, Compression, Digest, EntryError, Error, Index, Layer, Limits, NodeKind, OpenOptions,
    Toc, TocEntry, decode_chunk, read_toc,
};

const D: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000000";

fn e(name: &str, kind: &str) -> TocEntry {
    TocEntry {
        name: name.into(),
        kind: kind.into(),
        ..TocEntry::default()
    }
}

fn reg(name: &str, size: u64, offset: u64) -> TocEntry {
    TocEntry {
        size,
        offset,
        chunk_digest: D.into(),
        ..e(name, "reg")
    }
}

/// A `chunk` entry at `chunk_offset` in the file, member `offset`.
fn chunk(name: &str, chunk_offset: u64, offset: u64, chunk_size: u64) -> TocEntry {
    TocEntry {
        chunk_offset,
        chunk_size,
        offset,
        chunk_digest: D.into(),
        ..e(name, "chunk")
    }
}

fn build(entries: Vec<TocEntry>) -> rstargz_fs::estargz::Result<Index> {
    Index::build_with_payload_end(
        &Toc {
            version: 1,
            entries,
        },
        10_000,
        &Limits::default(),
    )
}

#[track_caller]
fn rejected(entries: Vec<TocEntry>, index: usize, want: EntryError) {
    match build(entries) {
        Err(Error::Entry {
            index: i,
            kind,
            name,
        }) => {
            assert_eq!((i, &kind), (index, &want), "entry {name:?}");
        }
        Err(other) => panic!("wanted {want:?}, got {other}"),
        Ok(_) => panic!("wanted {want:?}, TOC accepted"),
    }
}

#[test]
fn names_escaping_the_root() {
    for bad in ["../etc/passwd", "a/../../b", "/etc/passwd", "a\0b", "x/.."] {
        rejected(
            vec![e("ok", "dir"), reg(bad, 1, 10)],
            1,
            EntryError::BadName,
        );
    }
    // `./`, `.` and `//` are harmless spellings.
    let idx = build(vec![
        e("./", "dir"),
        e("./a//b/", "dir"),
        reg("./a/./b/c", 1, 10),
    ])
    .unwrap();
    assert!(idx.lookup_path("a/b/c").is_some());
}

#[test]
fn duplicates_and_parents() {
    rejected(
        vec![reg("a", 1, 10), reg("a", 1, 20)],
        1,
        EntryError::Duplicate,
    );
    rejected(
        vec![e("d/", "dir"), e("d", "dir")],
        1,
        EntryError::Duplicate,
    );
    rejected(
        vec![e("./", "dir"), e(".", "dir")],
        1,
        EntryError::Duplicate,
    );
    rejected(
        vec![reg("f", 1, 10), reg("f/x", 1, 20)],
        1,
        EntryError::ParentNotDir("f".into()),
    );
    let sym = TocEntry {
        link_name: "/etc".into(),
        ..e("s", "symlink")
    };
    rejected(
        vec![sym, reg("s/passwd", 1, 10)],
        1,
        EntryError::ParentNotDir("s".into()),
    );
    rejected(vec![reg("", 1, 10)], 0, EntryError::BadName);
    // A directory entry may follow its implicitly created self once.
    let idx = build(vec![
        reg("d/f", 1, 10),
        TocEntry {
            mode: 0o700,
            ..e("d/", "dir")
        },
    ])
    .unwrap();
    assert_eq!(
        idx.node(idx.lookup_path("d").unwrap())
            .unwrap()
            .permissions(),
        0o700
    );
}

#[test]
fn offsets_and_chunks() {
    rejected(
        vec![reg("a", 1, 10_000)],
        0,
        EntryError::OffsetOutOfBlob {
            offset: 10_000,
            payload_end: 10_000,
        },
    );
    rejected(vec![reg("a", 1, 0)], 0, EntryError::MissingOffset);
    let first = TocEntry {
        chunk_size: 50,
        ..reg("a", 100, 10)
    };
    rejected(
        vec![first.clone()],
        0,
        EntryError::ChunkCoverage("chunks end at 50, file size is 100".into()),
    );
    let gap = chunk("a", 60, 20, 0);
    rejected(
        vec![first.clone(), gap],
        0,
        EntryError::ChunkCoverage("chunk at 60 where 50 was expected".into()),
    );
    let over = chunk("a", 50, 20, 80);
    rejected(
        vec![first.clone(), over],
        0,
        EntryError::ChunkCoverage("chunks end at 130, file size is 100".into()),
    );
    let beyond = TocEntry {
        chunk_offset: 50,
        offset: 20_000,
        ..e("a", "chunk")
    };
    rejected(
        vec![first.clone(), beyond],
        1,
        EntryError::OffsetOutOfBlob {
            offset: 20_000,
            payload_end: 10_000,
        },
    );
    rejected(
        vec![e("d", "dir"), e("d", "chunk")],
        1,
        EntryError::OrphanChunk,
    );
    rejected(
        vec![reg("big", 1 << 60, 10)],
        0,
        EntryError::OutOfRange("size"),
    );
    rejected(
        vec![TocEntry {
            inner_offset: 1 << 31,
            ..reg("a", 1, 10)
        }],
        0,
        EntryError::OutOfRange("innerOffset"),
    );
    rejected(
        vec![TocEntry {
            chunk_size: 1 << 40,
            ..reg("big", 1 << 41, 10)
        }],
        0,
        EntryError::OutOfRange("chunkSize"),
    );
    // A good two-chunk file, and its compressed ranges end at the next member.
    let ok = chunk("a", 50, 200, 0);
    let idx = build(vec![first, ok]).unwrap();
    let chunks = idx.chunks(idx.lookup_path("a").unwrap());
    assert_eq!(
        chunks
            .iter()
            .map(Chunk::compressed_range)
            .collect::<Vec<_>>(),
        vec![10..200, 200..10_000]
    );
    assert_eq!(
        idx.chunks_for_range(idx.lookup_path("a").unwrap(), 49, 2)
            .len(),
        2
    );
    assert_eq!(
        idx.chunks_for_range(idx.lookup_path("a").unwrap(), 50, 10)
            .len(),
        1
    );
}

#[test]
fn hardlinks_types_and_fields() {
    rejected(
        vec![TocEntry {
            link_name: "nope".into(),
            ..e("h", "hardlink")
        }],
        0,
        EntryError::HardlinkTargetMissing("nope".into()),
    );
    rejected(
        vec![
            e("d/", "dir"),
            TocEntry {
                link_name: "d".into(),
                ..e("h", "hardlink")
            },
        ],
        1,
        EntryError::HardlinkToDir("d".into()),
    );
    rejected(
        vec![e("x", "socket")],
        0,
        EntryError::UnknownType("socket".into()),
    );
    rejected(
        vec![TocEntry {
            chunk_digest: "md5:00".into(),
            ..reg("a", 1, 10)
        }],
        0,
        EntryError::BadDigest("md5:00".into()),
    );
    rejected(
        vec![TocEntry {
            modtime: "yesterday".into(),
            ..e("a", "dir")
        }],
        0,
        EntryError::BadModtime("yesterday".into()),
    );
    let mut x = e("a", "fifo");
    x.xattrs.insert("user.a".into(), "!!!".into());
    rejected(vec![x], 0, EntryError::BadXattr("user.a".into()));
    rejected(
        vec![TocEntry {
            uid: 1 << 32,
            ..e("a", "dir")
        }],
        0,
        EntryError::OutOfRange("uid"),
    );
    // Symlink loops are the kernel's business: they index fine.
    let idx = build(vec![
        TocEntry {
            link_name: "b".into(),
            ..e("a", "symlink")
        },
        TocEntry {
            link_name: "a".into(),
            ..e("b", "symlink")
        },
        reg("f", 3, 10),
        TocEntry {
            link_name: "./f".into(),
            ..e("g/h", "hardlink")
        },
    ])
    .unwrap();
    let f = idx.lookup_path("f").unwrap();
    assert_eq!(idx.lookup_path("g/h"), Some(f));
    assert_eq!(idx.node(f).unwrap().nlink(), 2);
    assert_eq!(
        idx.node(idx.lookup_path("a").unwrap()).unwrap().kind(),
        NodeKind::Symlink
    );
}

#[test]
fn flipped_bytes_never_return_wrong_data() {
    for comp in ["gzip", "zstd"] {
        let golden = common::blob("sizes", comp);
        let clean = Layer::open(&golden[..], &OpenOptions::default()).unwrap();
        let ino = clean
            .index()
            .lookup_path("random-2m")
            .or_else(|| clean.index().lookup_path("two-chunks"));
        let ino = ino.unwrap_or_else(|| {
            common::all_paths(clean.index())
                .iter()
                .filter_map(|p| clean.index().lookup_path(p))
                .max_by_key(|i| clean.index().node(*i).unwrap().size())
                .unwrap()
        });
        let size = clean.index().node(ino).unwrap().size() as usize;
        let mut good = vec![0u8; size];
        clean.read_file_at(ino, 0, &mut good).unwrap();
        let chunks = clean.index().chunks(ino).to_vec();
        assert!(chunks.len() > 1);
        for (n, chunk) in chunks.iter().enumerate() {
            for frac in [2u64, 3, 5] {
                let r = chunk.compressed_range();
                let pos = r.start + (r.end - r.start) / frac;
                let mut bad = golden.clone();
                bad[pos as usize] ^= 0x55;
                let layer = Layer::open(&bad[..], &OpenOptions::default()).unwrap();
                let mut buf = vec![0u8; chunk.size as usize];
                match layer.read_file_at(ino, chunk.chunk_offset, &mut buf) {
                    Err(Error::ChunkDigestMismatch { .. } | Error::ChunkDecompress { .. }) => {}
                    Err(other) => panic!("{comp} chunk {n}: unexpected error {other}"),
                    Ok(_) => assert_eq!(
                        buf,
                        good[chunk.file_range().start as usize..chunk.file_range().end as usize],
                        "{comp} chunk {n}: wrong bytes"
                    ),
                }
            }
        }
    }
}

#[test]
fn wrong_digest_is_a_verification_error() {
    let golden = common::blob("links", "gzip");
    let layer = Layer::open(&golden[..], &OpenOptions::default()).unwrap();
    let ino = layer.index().lookup_path("dir/big.bin").unwrap();
    let mut chunk = layer.index().chunks(ino)[1].clone();
    let r = chunk.compressed_range();
    let compressed = &golden[r.start as usize..r.end as usize];
    let ok = decode_chunk(Compression::Gzip, ino, &chunk, compressed, Verify::Enabled).unwrap();
    assert_eq!(ok.len(), chunk.size as usize);
    chunk.set_digest(Some(Digest::of(b"something else")));
    assert!(matches!(
        decode_chunk(Compression::Gzip, ino, &chunk, compressed, Verify::Enabled),
        Err(Error::ChunkDigestMismatch { .. })
    ));
    // Only an explicit opt-out skips the check.
    assert_eq!(
        decode_chunk(Compression::Gzip, ino, &chunk, compressed, Verify::Disabled).unwrap(),
        ok
    );
    chunk.set_digest(None);
    assert!(matches!(
        decode_chunk(Compression::Gzip, ino, &chunk, compressed, Verify::Enabled),
        Err(Error::ChunkNoDigest { .. })
    ));
    // A lying size cannot make the decoder run past the member (bomb cut-off / short data).
    chunk.size = 1 << 20;
    assert!(matches!(
        decode_chunk(Compression::Gzip, ino, &chunk, compressed, Verify::Disabled),
        Err(Error::ChunkDecompress { .. })
    ));
}

#[test]
fn truncated_blobs_and_bad_footers() {
    for comp in ["gzip", "zstd"] {
        let golden = common::blob("tree", comp);
        for cut in [1usize, 10, 51, 100, golden.len() / 2, golden.len() - 10] {
            let short = &golden[..golden.len() - cut];
            assert!(
                Layer::open(short, &OpenOptions::default()).is_err(),
                "{comp}: cut {cut}"
            );
        }
        let mut bad = golden.clone();
        let n = bad.len();
        bad[n - 3] ^= 0xff;
        assert!(
            matches!(
                Layer::open(&bad[..], &OpenOptions::default()),
                Err(Error::BadFooter)
            ),
            "{comp}"
        );
        assert!(matches!(
            Layer::open(&golden[..20], &OpenOptions::default()),
            Err(Error::BlobTooSmall { .. })
        ));
        // A damaged TOC member is a TOC error.
        let (footer, _) = read_toc(&golden, 1 << 20).unwrap();
        let mut bad = golden.clone();
        bad[(footer.toc_offset + 20) as usize] ^= 0xff;
        assert!(
            matches!(
                Layer::open(&bad[..], &OpenOptions::default()),
                Err(Error::TocDecompress(_) | Error::TocJson(_) | Error::TocMissing)
            ),
            "{comp}"
        );
        // Size cap.
        let opts = OpenOptions {
            max_toc_size: 1000,
            ..OpenOptions::default()
        };
        assert!(
            matches!(
                Layer::open(&golden[..], &opts),
                Err(Error::TocTooLarge { cap: 1000 })
            ),
            "{comp}"
        );
        // Expected digest mismatch.
        let opts = OpenOptions {
            expected_toc_digest: Some(Digest::of(b"x")),
            ..OpenOptions::default()
        };
        assert!(
            matches!(
                Layer::open(&golden[..], &opts),
                Err(Error::TocDigestMismatch { .. })
            ),
            "{comp}"
        );
    }
}

/// Assembles a blob by hand: one shared data member, then TOC and footer.
fn hand_made_blob(comp: Compression, v2_footer: bool) -> Vec<u8> {
    use rstargz_fs::estargz::footer::{ZSTD_SKIPPABLE_MAGIC, estargz_footer, zstd_footer_bytes};
    use std::io::Write;
    let compress = |data: &[u8]| match comp {
        Compression::Gzip => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            e.write_all(data).unwrap();
            e.finish().unwrap()
        }
        Compression::Zstd => zstd::bulk::compress(data, 3).unwrap(),
    };
    let mut blob = compress(&[0u8; 512]);
    let shared = blob.len() as u64;
    blob.extend(compress(b"hello, world!!"));
    let toc = Toc {
        version: 1,
        entries: vec![
            TocEntry {
                digest: Digest::of(b"hello").to_string(),
                ..reg("a", 5, shared)
            },
            TocEntry {
                inner_offset: 5,
                digest: Digest::of(b", world!!").to_string(),
                ..reg("b", 9, shared)
            },
        ],
    };
    let mut toc = toc;
    for e in &mut toc.entries {
        e.chunk_digest = e.digest.clone();
    }
    let json = rstargz_fs::estargz::toc::encode_toc(&toc).unwrap();
    match comp {
        Compression::Gzip => {
            let mut tar = tar::Builder::new(Vec::new());
            let mut h = tar::Header::new_ustar();
            h.set_size(json.len() as u64);
            h.set_mode(0o444);
            tar.append_data(&mut h, "stargz.index.json", &json[..])
                .unwrap();
            let toc_offset = blob.len() as u64;
            blob.extend(compress(&tar.into_inner().unwrap()));
            blob.extend(estargz_footer(toc_offset));
        }
        Compression::Zstd => {
            let z = compress(&json);
            blob.extend(ZSTD_SKIPPABLE_MAGIC);
            blob.extend((z.len() as u32).to_le_bytes());
            let toc_offset = blob.len() as u64;
            blob.extend(&z);
            if v2_footer {
                blob.extend(ZSTD_SKIPPABLE_MAGIC);
                blob.extend(64u32.to_le_bytes());
                for v in [toc_offset, z.len() as u64, json.len() as u64, 1, 0, 0, 0] {
                    blob.extend(v.to_le_bytes());
                }
                blob.extend(b"GNUlInUx");
            } else {
                blob.extend(zstd_footer_bytes(
                    toc_offset,
                    z.len() as u64,
                    json.len() as u64,
                ));
            }
        }
    }
    blob
}

#[test]
fn inner_offset_entries_share_a_member() {
    for (comp, v2) in [
        (Compression::Gzip, false),
        (Compression::Zstd, false),
        (Compression::Zstd, true),
    ] {
        let blob = hand_made_blob(comp, v2);
        let layer = Layer::open(&blob[..], &OpenOptions::default()).unwrap();
        let want = if v2 {
            rstargz_fs::estargz::FooterKind::ZstdChunkedV2
        } else if comp == Compression::Gzip {
            rstargz_fs::estargz::FooterKind::Estargz
        } else {
            rstargz_fs::estargz::FooterKind::ZstdChunked
        };
        assert_eq!(layer.footer().kind, want);
        let idx = layer.index();
        let (a, b) = (idx.lookup_path("a").unwrap(), idx.lookup_path("b").unwrap());
        assert_eq!(idx.chunks(a)[0].offset, idx.chunks(b)[0].offset);
        let mut buf = [0u8; 9];
        assert_eq!(layer.read_file_at(a, 0, &mut buf).unwrap(), 5);
        assert_eq!(&buf[..5], b"hello");
        assert_eq!(layer.read_file_at(b, 0, &mut buf).unwrap(), 9);
        assert_eq!(&buf, b", world!!");
        assert_eq!(layer.read_file_at(b, 2, &mut buf).unwrap(), 7);
        assert_eq!(&buf[..7], b"world!!");
    }
}

#[test]
fn legacy_stargz_footer_without_digests() {
    use rstargz_fs::estargz::{FooterKind, Verify};
    // Rebuild the gzip hand-made blob with a 47-byte CRFS footer and no digests.
    let blob = hand_made_blob(Compression::Gzip, false);
    let layer = Layer::open(&blob[..], &OpenOptions::default()).unwrap();
    let toc_offset = layer.footer().toc_offset;
    let mut toc = read_toc(&blob, 1 << 20).unwrap().1.toc;
    for e in &mut toc.entries {
        e.digest.clear();
        e.chunk_digest.clear();
    }
    let json = rstargz_fs::estargz::toc::encode_toc(&toc).unwrap();
    let mut tar = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_ustar();
    h.set_size(json.len() as u64);
    h.set_mode(0o444);
    tar.append_data(&mut h, "stargz.index.json", &json[..])
        .unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut gz, &tar.into_inner().unwrap()).unwrap();
    let mut legacy = blob[..toc_offset as usize].to_vec();
    legacy.extend(gz.finish().unwrap());
    legacy.extend([0x1f, 0x8b, 0x08, 0x04, 0, 0, 0, 0, 0, 0xff, 22, 0]);
    legacy.extend(format!("{toc_offset:016x}STARGZ").as_bytes());
    legacy.extend([1, 0, 0, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0]);

    let layer = Layer::open(&legacy[..], &OpenOptions::default()).unwrap();
    assert_eq!(layer.footer().kind, FooterKind::LegacyStargz);
    let a = layer.index().lookup_path("a").unwrap();
    let mut buf = [0u8; 5];
    assert!(matches!(
        layer.read_file_at(a, 0, &mut buf),
        Err(Error::ChunkNoDigest { .. })
    ));
    let opts = OpenOptions {
        verify: Verify::Disabled,
        ..OpenOptions::default()
    };
    let layer = Layer::open(&legacy[..], &opts).unwrap();
    assert_eq!(layer.read_file_at(a, 0, &mut buf).unwrap(), 5);
    assert_eq!(&buf, b"hello");
}

fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

/// A BufRead that counts the compressed bytes the decoder consumed.
struct Counted<'a>(&'a [u8], usize);

impl std::io::Read for Counted<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.0.read(buf)?;
        self.1 += n;
        Ok(n)
    }
}

impl std::io::BufRead for Counted<'_> {
    fn fill_buf(&mut self) -> std::io::Result<&[u8]> {
        Ok(self.0)
    }
    fn consume(&mut self, n: usize) {
        self.0 = &self.0[n..];
        self.1 += n;
    }
}

#[test]
fn decompression_bomb_is_cut_off_at_the_declared_size() {
    // One gzip member of 64 MiB of zeros (~64 KiB compressed), read as a
    // 4 KiB file; a second file points into the same member cut in half,
    // a member that never ends.
    let bomb = gzip(&vec![0u8; 64 << 20]);
    let mut blob = gzip(b"");
    let at = blob.len() as u64;
    blob.extend_from_slice(&bomb);
    let endless_at = blob.len() as u64;
    blob.extend_from_slice(&bomb[..bomb.len() / 2]);
    let zeros = Digest::of(&[0u8; 4096]).to_string();
    let file = |name: &str, offset, digest: &str| TocEntry {
        chunk_digest: digest.into(),
        ..reg(name, 4096, offset)
    };
    let toc = Toc {
        version: 1,
        entries: vec![
            file("bomb", at, &zeros),
            file("endless", endless_at, &zeros),
            file("liar", at, D),
        ],
    };
    let json = rstargz_fs::estargz::toc::encode_toc(&toc).unwrap();
    let mut tar = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_ustar();
    h.set_size(json.len() as u64);
    h.set_mode(0o644);
    h.set_cksum();
    tar.append_data(&mut h, "stargz.index.json", &json[..])
        .unwrap();
    let toc_offset = blob.len() as u64;
    blob.extend_from_slice(&gzip(&tar.into_inner().unwrap()));
    blob.extend_from_slice(&rstargz_fs::estargz::footer::estargz_footer(toc_offset));

    let layer = Layer::open(&blob[..], &OpenOptions::default()).unwrap();
    let mut buf = vec![1u8; 1 << 20];
    for name in ["bomb", "endless"] {
        let ino = layer.index().lookup_path(name).unwrap();
        assert_eq!(
            layer.read_file_at(ino, 0, &mut buf).unwrap(),
            4096,
            "{name}"
        );
        assert!(buf[..4096].iter().all(|b| *b == 0), "{name}");
        // The decoder consumed a few compressed bytes, not the member.
        let chunk = layer.index().chunks(ino)[0].clone();
        let range = chunk.compressed_range();
        let mut src = Counted(&blob[range.start as usize..range.end as usize], 0);
        let mut out = vec![0u8; 4096];
        rstargz_fs::estargz::decode_chunk_into(
            Compression::Gzip,
            ino,
            &chunk,
            &mut src,
            Verify::Enabled,
            &mut out,
        )
        .unwrap();
        assert!(src.1 < 8 << 10, "{name}: {} compressed bytes read", src.1);
    }
    // Cut off or not, the bytes must match the digest.
    let liar = layer.index().lookup_path("liar").unwrap();
    assert!(matches!(
        layer.read_file_at(liar, 0, &mut buf),
        Err(Error::ChunkDigestMismatch { .. })
    ));
}
