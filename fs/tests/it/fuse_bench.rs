//! Read throughput of a mounted layer against the same file on local disk,
//! measured in one run. Prints figures; asserts only correctness.
//!
//! Run: `cargo test -p rstargz-fs --features system --test it fuse_bench:: -- --ignored --nocapture`
//! (`BENCH_MIB=512` to change the file size).
#![allow(clippy::unwrap_used)]

use crate::common;
use crate::fuse_common;

use std::io::Read;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fuse_common::*;
use rstargz_fs::cache::{ChunkCache, ChunkCacheConfig, DiskCache, FileStore};
use rstargz_fs::estargz::{WriterOptions, convert};
use rstargz_fs::fuse::MountOptions;
use rstargz_fs::layer::LocalBlob;

/// Sequential read with 1 MiB buffers; returns (MiB/s, sha256).
fn read_speed(path: &Path) -> (f64, String) {
    let mut f = std::fs::File::open(path).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    let mut all = Vec::new();
    let t = Instant::now();
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        all.extend_from_slice(&buf[..n]);
    }
    let secs = t.elapsed().as_secs_f64();
    (
        all.len() as f64 / (1 << 20) as f64 / secs,
        common::sha256_hex(&all),
    )
}

#[test]
#[ignore = "benchmark"]
fn sequential_read_throughput() {
    let mib: usize = std::env::var("BENCH_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    let dir = tempfile::tempdir().unwrap();
    // Half random, half repetitive: realistic gzip work per byte.
    let mut data = vec![0u8; mib << 20];
    let mut x: u64 = 0x9e3779b97f4a7c15;
    for (i, b) in data.iter_mut().enumerate() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = if (i >> 12) % 2 == 0 {
            x as u8
        } else {
            (i % 251) as u8
        };
    }
    let local = dir.path().join("local.bin");
    std::fs::write(&local, &data).unwrap();
    let mut tar = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_cksum();
    tar.append_data(&mut h, "big.bin", &data[..]).unwrap();
    let tar = tar.into_inner().unwrap();
    drop(data);
    let blob_path = dir.path().join("layer.estargz");
    convert(
        &tar[..],
        std::fs::File::create(&blob_path).unwrap(),
        &WriterOptions::default(),
    )
    .unwrap();
    drop(tar);

    let rt = runtime();
    let (local_speed, want) = {
        read_speed(&local);
        read_speed(&local)
    };
    let cache_dir = dir.path().join("cache");
    let disk = Arc::new(DiskCache::open(&cache_dir, 8 << 30).unwrap());
    let memory = ChunkCacheConfig {
        memory_bytes: 2 * ((mib as u64) << 20),
        ..ChunkCacheConfig::default()
    };
    let cache = Arc::new(ChunkCache::new(&memory, Some(disk.clone())));
    let store = Arc::new(FileStore::open(&cache_dir, 8 << 30).unwrap());
    let opts = MountOptions {
        passthrough: Some(store.clone()),
        ..Default::default()
    };
    let source = Arc::new(LocalBlob::open(&blob_path).unwrap());
    let layer = open_layer(&rt, source.clone(), cache.clone());
    let mut rows = vec![("local file, warm page cache".to_string(), local_speed)];
    let mut measure = |label: &str, layer, opts: &MountOptions, reread: bool| {
        let m = mount_layer(&rt, layer, opts.clone());
        let (speed, got) = read_speed(&m.path.join("big.bin"));
        assert_eq!(got, want, "{label}");
        rows.push((label.to_string(), speed));
        if reread {
            let (speed, _) = read_speed(&m.path.join("big.bin"));
            rows.push((format!("{label}, then page cache (2nd read)"), speed));
        }
        m.unmount();
    };
    measure(
        "FUSE cold: blob -> decompress -> verify",
        layer.clone(),
        &opts,
        true,
    );
    let key = FileStore::file_key(
        &layer
            .index()
            .chunks(layer.index().lookup_path("big.bin").unwrap()),
    )
    .unwrap();
    wait_until(Duration::from_secs(120), || store.is_ready(&key));
    let no_pt = MountOptions::default();
    measure("FUSE, chunks in memory cache", layer, &no_pt, false);
    let fresh = Arc::new(ChunkCache::new(&memory, Some(disk)));
    let layer = open_layer(&rt, source.clone(), fresh);
    measure(
        "FUSE, chunks in disk cache only",
        layer.clone(),
        &no_pt,
        false,
    );
    measure("FUSE passthrough (fully cached file)", layer, &opts, false);
    println!("\nsequential read of a {mib} MiB file (1 MiB reads):");
    for (label, speed) in rows {
        println!(
            "  {label:<55} {speed:>8.0} MiB/s  ({:.2}x local)",
            speed / local_speed
        );
    }
}
