//! eStargz format benchmark: TOC parse + index time and memory for a
//! 100k-entry layer, cold read throughput of a 256 MiB file (gzip and zstd),
//! and conversion throughput, each next to `gzip`/`zstd` CLI baselines
//! measured in the same run on the same data.
//!
//! `cargo bench -p rstargz-fs --bench format` runs the full sizes; without
//! `--bench` (i.e. under `cargo test`) it runs tiny sizes as a smoke test.
#![allow(clippy::unwrap_used)]

use std::fs::File;
use std::io::{BufWriter, Write};
use std::os::fd::AsFd;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rstargz_fs::estargz::{
    Compression, FileSource, Index, Layer, Limits, OpenOptions, Verify, WriterOptions, convert,
    convert_file, read_toc,
};

struct Sizes {
    entries: usize,
    big_file: u64,
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let sizes = if full {
        Sizes {
            entries: 100_000,
            big_file: 256 << 20,
        }
    } else {
        Sizes {
            entries: 2_000,
            big_file: 8 << 20,
        }
    };
    let dir = tempfile::tempdir().unwrap();
    index_bench(dir.path(), &sizes);
    data_bench(dir.path(), &sizes);
}

/// Deterministic, moderately compressible bytes (text runs mixed with noise).
fn fill(buf: &mut [u8], seed: &mut u64) {
    const WORDS: &[&[u8]] = &[
        b"layer ", b"chunk ", b"stargz ", b"index ", b"lazy ", b"pull ", b"fuse\n",
    ];
    let mut i = 0;
    while i < buf.len() {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        if (*seed).is_multiple_of(6) {
            let n = (buf.len() - i).min(16);
            for (k, b) in buf[i..i + n].iter_mut().enumerate() {
                *b = (*seed >> ((k % 8) * 8)) as u8 ^ k as u8;
            }
            i += n;
        } else {
            let w = WORDS[(*seed % WORDS.len() as u64) as usize];
            let n = w.len().min(buf.len() - i);
            buf[i..i + n].copy_from_slice(&w[..n]);
            i += n;
        }
    }
}

fn header(path: &str, kind: tar::EntryType, size: u64, mode: u32) -> (tar::Header, String) {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(mode);
    h.set_mtime(1_700_000_000);
    h.set_uid(0);
    h.set_gid(0);
    (h, path.to_owned())
}

fn mbps(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / 1e6 / d.as_secs_f64()
}

fn index_bench(dir: &Path, sizes: &Sizes) {
    let tar_path = dir.join("many.tar");
    let mut b = tar::Builder::new(BufWriter::new(File::create(&tar_path).unwrap()));
    let per_dir = 99;
    let dirs = sizes.entries / (per_dir + 1);
    let mut seed = 7u64;
    let mut data = [0u8; 200];
    for d in 0..dirs {
        let (mut h, p) = header(
            &format!("usr/share/d{d:05}/"),
            tar::EntryType::Directory,
            0,
            0o755,
        );
        b.append_data(&mut h, p, std::io::empty()).unwrap();
        for f in 0..per_dir {
            let len = 16 + (seed % 180) as usize;
            fill(&mut data[..len], &mut seed);
            let (mut h, p) = header(
                &format!("usr/share/d{d:05}/file-{f:03}.txt"),
                tar::EntryType::Regular,
                len as u64,
                0o644,
            );
            b.append_data(&mut h, p, &data[..len]).unwrap();
        }
    }
    b.into_inner().unwrap().flush().unwrap();
    let blob_path = dir.join("many.gz");
    convert(
        File::open(&tar_path).unwrap(),
        File::create(&blob_path).unwrap(),
        &WriterOptions::default(),
    )
    .unwrap();

    let src = FileSource::open(&blob_path).unwrap();
    let t0 = Instant::now();
    let (footer, decoded) = read_toc(&src, 256 << 20).unwrap();
    let t_toc = t0.elapsed();
    let entries = decoded.toc.entries.len();
    let t1 = Instant::now();
    let index = Index::build(&decoded.toc, &footer, &Limits::default()).unwrap();
    let t_index = t1.elapsed();
    // Where the TOC time goes: decompression + un-tar versus JSON parsing.
    let compressed = std::fs::read(&blob_path).unwrap();
    let range = footer.toc_range();
    let t2 = Instant::now();
    let json = rstargz_fs::estargz::toc::toc_json(
        &footer,
        &compressed[range.start as usize..range.end as usize],
        256 << 20,
    )
    .unwrap();
    let t_unzip = t2.elapsed();
    let t3 = Instant::now();
    let _ = rstargz_fs::estargz::toc::parse_toc_json(&json).unwrap();
    let t_json = t3.elapsed();
    drop(decoded);
    println!(
        "== TOC parse + index ({entries} TOC entries, {} inodes, compressed TOC {} bytes)",
        index.len(),
        footer.toc_compressed_size
    );
    println!(
        "  TOC read+decompress+parse: {:>8.1} ms",
        t_toc.as_secs_f64() * 1e3
    );
    println!(
        "    of which decompress:     {:>8.1} ms, JSON parse {:.1} ms ({} bytes JSON)",
        t_unzip.as_secs_f64() * 1e3,
        t_json.as_secs_f64() * 1e3,
        json.len()
    );
    println!(
        "  index build + validate:    {:>8.1} ms",
        t_index.as_secs_f64() * 1e3
    );
    println!(
        "  total:                     {:>8.1} ms  ({:.2} us/entry)",
        (t_toc + t_index).as_secs_f64() * 1e3,
        (t_toc + t_index).as_secs_f64() * 1e6 / entries as f64
    );
    println!(
        "  index heap (exact):        {:>8.1} bytes/entry ({} bytes)",
        index.heap_bytes() as f64 / entries as f64,
        index.heap_bytes()
    );
}

fn drop_cache(path: &Path) {
    let f = File::open(path).unwrap();
    let _ = nix::fcntl::posix_fadvise(
        f.as_fd(),
        0,
        0,
        nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
    );
}

fn time_cmd(cmd: &str, args: &[&str], input: &Path) -> Duration {
    drop_cache(input);
    let t = Instant::now();
    let st = Command::new(cmd)
        .args(args)
        .stdin(File::open(input).unwrap())
        .stdout(Stdio::null())
        .status()
        .unwrap_or_else(|e| panic!("{cmd} must be installed: {e}"));
    assert!(st.success(), "{cmd} {args:?}");
    t.elapsed()
}

fn data_bench(dir: &Path, sizes: &Sizes) {
    let tar_path = dir.join("big.tar");
    {
        let mut b = tar::Builder::new(BufWriter::new(File::create(&tar_path).unwrap()));
        let (mut h, p) = header("big.bin", tar::EntryType::Regular, sizes.big_file, 0o644);
        let mut seed = 42u64;
        let mut source = Gen {
            left: sizes.big_file,
            seed: &mut seed,
        };
        b.append_data(&mut h, p, &mut source).unwrap();
        b.into_inner().unwrap().flush().unwrap();
    }
    let tar_len = std::fs::metadata(&tar_path).unwrap().len();
    println!("== {} MiB file, 4 MiB chunks", sizes.big_file >> 20);
    for (name, compression, cli, cargs) in [
        ("gzip", Compression::Gzip, "gzip", ["-6", "-c"]),
        ("zstd", Compression::Zstd, "zstd", ["-3", "-c"]),
    ] {
        let blob = dir.join(format!("big.{name}"));
        drop_cache(&tar_path);
        let t = Instant::now();
        let out = convert_file(
            &File::open(&tar_path).unwrap(),
            File::create(&blob).unwrap(),
            &WriterOptions {
                compression,
                ..WriterOptions::default()
            },
        )
        .unwrap();
        let t_conv = t.elapsed();
        let t_cli = time_cmd(cli, &cargs, &tar_path);
        let t_cli_d = time_cmd(cli, &["-dc"], &blob);

        let read = cold_read(&blob, sizes.big_file, Verify::Enabled);
        let read_unverified = cold_read(&blob, sizes.big_file, Verify::Disabled);
        let base = mbps(out.uncompressed_size, t_cli_d);
        println!(
            "  {name}: blob {:.1} MiB (ratio {:.2})",
            out.size as f64 / 1048576.0,
            tar_len as f64 / out.size as f64
        );
        println!(
            "    cold read, verified:  {read:>8.1} MB/s   baseline `{cli} -dc` {base:>8.1} MB/s   ratio {:.2}",
            read / base
        );
        println!(
            "    cold read, no verify: {read_unverified:>8.1} MB/s   (what sha256 verification costs)"
        );
        let conv = mbps(tar_len, t_conv);
        let cbase = mbps(tar_len, t_cli);
        println!(
            "    convert (tar in):     {conv:>8.1} MB/s   baseline `{cli} {}` {cbase:>8.1} MB/s   ratio {:.2}",
            cargs[0],
            conv / cbase
        );
    }
}

/// Reads the whole `big.bin` of a blob (page cache dropped first); MB/s.
fn cold_read(blob: &Path, size: u64, verify: Verify) -> f64 {
    let opts = OpenOptions {
        verify,
        ..OpenOptions::default()
    };
    let layer = Layer::open(FileSource::open(blob).unwrap(), &opts).unwrap();
    let ino = layer.index().lookup_path("big.bin").unwrap();
    drop_cache(blob);
    let mut buf = vec![0u8; 4 << 20];
    let t = Instant::now();
    let mut off = 0u64;
    while off < size {
        let n = layer.read_file_at(ino, off, &mut buf).unwrap();
        assert!(n > 0);
        off += n as u64;
    }
    mbps(size, t.elapsed())
}

/// Streams `left` generated bytes.
struct Gen<'a> {
    left: u64,
    seed: &'a mut u64,
}

impl std::io::Read for Gen<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = buf.len().min(self.left as usize).min(1 << 20);
        fill(&mut buf[..n], self.seed);
        self.left -= n as u64;
        Ok(n)
    }
}
