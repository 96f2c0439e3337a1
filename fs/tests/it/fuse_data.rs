//! The data path through real FUSE mounts: single-flight fetches, corrupt
//! and stalled sources, the disk cache across remounts, eviction, on-disk
//! corruption and cross-layer chunk sharing.
#![allow(clippy::unwrap_used)]

use crate::common;
use crate::fuse_common;

use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::*;
use fuse_common::*;
use rstargz_fs::fuse::MountOptions;

#[test]
fn concurrent_readers_of_one_chunk_cause_one_fetch() {
    const READERS: u64 = 8;
    let rt = runtime();
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let source = TestSource::new(blob("sizes", "gzip"), Behaviour::Gate(gate.clone()));
    let layer = open_layer(&rt, source.clone(), memory_cache());
    let (ino, path) = biggest_file(layer.index());
    let chunk = layer.index().chunks(ino)[1].clone();
    let m = mount_layer(&rt, layer, MountOptions::default());
    let file = m.path.join(&path);
    let stats = m.handle.as_ref().unwrap().stats().clone();
    let readers: Vec<_> = (0..READERS)
        .map(|i| {
            let file = file.clone();
            // Distinct 4 KiB blocks of one chunk, bypassing the page cache,
            // so each reader is its own FUSE request.
            let off = chunk.chunk_offset + i * 4096;
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 4096];
                let f = std::fs::OpenOptions::new()
                    .read(true)
                    .custom_flags(libc::O_DIRECT)
                    .open(&file)
                    .unwrap();
                f.read_exact_at(&mut buf, off).unwrap();
                (off, buf)
            })
        })
        .collect();
    // All readers are inside the daemon before the one fetch may finish.
    assert!(wait_until(Duration::from_secs(20), || {
        stats.reads_async.load(Ordering::SeqCst) >= READERS
    }));
    gate.add_permits(1000);
    let whole = std::fs::read(&file).unwrap();
    for r in readers {
        let (off, buf) = r.join().unwrap();
        assert_eq!(buf, whole[off as usize..off as usize + 4096]);
    }
    let chunks = m
        .handle
        .as_ref()
        .unwrap()
        .stats()
        .reads_async
        .load(Ordering::SeqCst);
    assert!(chunks >= READERS);
    // The whole-file read fetched each chunk once; the shared chunk was not refetched.
    let n_chunks = whole.len().div_ceil(64 << 10) as u64;
    assert_eq!(source.reads(), n_chunks, "one fetch per chunk");
    m.unmount();
}

use std::os::unix::fs::OpenOptionsExt;

fn compress(zstd: bool, data: &[u8]) -> Vec<u8> {
    if zstd {
        zstd::encode_all(data, 3).unwrap()
    } else {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        enc.write_all(data).unwrap();
        enc.finish().unwrap()
    }
}

#[test]
fn corrupted_chunk_gives_eio_never_wrong_bytes() {
    let rt = runtime();
    for comp in ["gzip", "zstd"] {
        let probe = open_layer(
            &rt,
            TestSource::new(blob("sizes", comp), Behaviour::Serve),
            memory_cache(),
        );
        let (ino, path) = biggest_file(probe.index());
        let chunk = probe.index().chunks(ino)[1].clone();
        // A well-formed member that decodes to the right length but wrong bytes.
        let lie = compress(comp == "zstd", &vec![b'X'; chunk.size as usize]);
        assert!(lie.len() as u64 <= chunk.compressed_end - chunk.offset);
        let source = TestSource::new(
            blob("sizes", comp),
            Behaviour::Replace {
                range: chunk.compressed_range(),
                bytes: lie,
            },
        );
        let layer = open_layer(&rt, source, memory_cache());
        let m = mount_layer(&rt, layer.clone(), MountOptions::default());
        let f = std::fs::File::open(m.path.join(&path)).unwrap();
        let mut buf = vec![0u8; chunk.size as usize];
        let err = f.read_exact_at(&mut buf, chunk.chunk_offset).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EIO), "{comp}: {err}");
        // The intact first chunk still reads.
        let mut first = vec![0u8; 4096];
        f.read_exact_at(&mut first, 0).unwrap();
        assert!(layer.stats().bad_chunks.load(Ordering::SeqCst) >= 1);
        drop(f);
        m.unmount();
    }
}

#[test]
fn stalled_source_gives_eio_after_the_timeout() {
    let rt = runtime();
    let source = TestSource::new(blob("sizes", "zstd"), Behaviour::Stall);
    let layer = open_layer(&rt, source, memory_cache());
    let (_, path) = biggest_file(layer.index());
    let timeout = Duration::from_millis(700);
    let opts = MountOptions {
        read_timeout: timeout,
        ..Default::default()
    };
    let m = mount_layer(&rt, layer, opts);
    let started = Instant::now();
    let err = std::fs::read(m.path.join(&path)).unwrap_err();
    let took = started.elapsed();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    assert!(took >= timeout, "answered after {took:?}");
    assert!(
        took < timeout + Duration::from_secs(15),
        "bounded: {took:?}"
    );
    m.unmount();
}

#[test]
fn disk_cache_survives_a_remount() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    for case in ["tree", "sizes"] {
        let first = TestSource::new(blob(case, "gzip"), Behaviour::Serve);
        let layer = open_layer(&rt, first.clone(), disk_cache(dir.path(), 1 << 30));
        let m = mount_layer(&rt, layer, MountOptions::default());
        check_contents(&m.path, case);
        m.unmount();
        assert!(first.reads() > 0);

        // A new process's view: fresh memory tier, disk tier reopened.
        let second = TestSource::new(blob(case, "gzip"), Behaviour::Serve);
        let cache = disk_cache(dir.path(), 1 << 30);
        let layer = open_layer(&rt, second.clone(), cache.clone());
        let m = mount_layer(&rt, layer, MountOptions::default());
        check_contents(&m.path, case);
        m.unmount();
        assert_eq!(second.reads(), 0, "{case}: no fetch after remount");
        assert!(cache.stats().disk_hits.load(Ordering::SeqCst) > 0);
    }
}

#[test]
fn disk_cache_evicts_when_over_its_bound() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let bound = 256 << 10;
    let cache = disk_cache(dir.path(), bound);
    let source = TestSource::new(blob("sizes", "gzip"), Behaviour::Serve);
    let layer = open_layer(&rt, source, cache.clone());
    let m = mount_layer(&rt, layer, MountOptions::default());
    check_contents(&m.path, "sizes");
    m.unmount();
    let disk = cache.disk().unwrap();
    assert!(disk.used_bytes() <= bound, "{} bytes", disk.used_bytes());
    assert!(disk.evictions() > 0);
    let on_disk: u64 = walk_files(&dir.path().join("chunks"))
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum();
    assert_eq!(
        on_disk,
        disk.used_bytes(),
        "accounting matches the directory"
    );
}

fn walk_files(root: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for shard in std::fs::read_dir(root).unwrap() {
        for f in std::fs::read_dir(shard.unwrap().path()).unwrap() {
            out.push(f.unwrap().path());
        }
    }
    out
}

#[test]
fn corrupted_disk_chunk_is_detected_and_refetched() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let source = TestSource::new(blob("sizes", "zstd"), Behaviour::Serve);
    let layer = open_layer(&rt, source, disk_cache(dir.path(), 1 << 30));
    let (ino, path) = biggest_file(layer.index());
    let digest = layer.index().chunks(ino)[0].digest().unwrap();
    let m = mount_layer(&rt, layer, MountOptions::default());
    let want = std::fs::read(m.path.join(&path)).unwrap();
    m.unmount();

    let cache = disk_cache(dir.path(), 1 << 30);
    let chunk_file = cache.disk().unwrap().chunk_path(&digest);
    let mut bytes = std::fs::read(&chunk_file).unwrap();
    bytes[100] ^= 0xff;
    std::fs::write(&chunk_file, &bytes).unwrap();

    let source = TestSource::new(blob("sizes", "zstd"), Behaviour::Serve);
    let layer = open_layer(&rt, source.clone(), cache.clone());
    let m = mount_layer(&rt, layer, MountOptions::default());
    let got = std::fs::read(m.path.join(&path)).unwrap();
    m.unmount();
    assert!(got == want, "served bytes are the verified ones");
    assert_eq!(source.reads(), 1, "only the corrupt chunk is refetched");
    let disk = cache.disk().unwrap();
    assert_eq!(disk.stats().corrupt.load(Ordering::SeqCst), 1);
    assert_eq!(
        std::fs::read(&chunk_file).unwrap()[100],
        bytes[100] ^ 0xff,
        "rewritten"
    );
}

#[test]
fn identical_chunks_in_two_layers_are_fetched_once() {
    let rt = runtime();
    let cache = memory_cache();
    let gz = TestSource::new(blob("tree", "gzip"), Behaviour::Serve);
    let zs = TestSource::new(blob("tree", "zstd"), Behaviour::Serve);
    let a = mount_layer(
        &rt,
        open_layer(&rt, gz.clone(), cache.clone()),
        MountOptions::default(),
    );
    check_contents(&a.path, "tree");
    let b = mount_layer(
        &rt,
        open_layer(&rt, zs.clone(), cache.clone()),
        MountOptions::default(),
    );
    check_contents(&b.path, "tree");
    assert!(gz.reads() > 0);
    assert_eq!(
        zs.reads(),
        0,
        "same chunk digests, served from the shared cache"
    );
    a.unmount();
    b.unmount();
}

#[test]
fn large_reads_reach_the_daemon_as_large_requests() {
    let rt = runtime();
    let source = TestSource::new(blob("default-chunk", "gzip"), Behaviour::Serve);
    let layer = open_layer(&rt, source, memory_cache());
    let (_, path) = biggest_file(layer.index());
    let m = mount_layer(&rt, layer, MountOptions::default());
    let data = std::fs::read(m.path.join(&path)).unwrap();
    assert!(data.len() > 4 << 20);
    let max = m
        .handle
        .as_ref()
        .unwrap()
        .stats()
        .max_read_request
        .load(Ordering::SeqCst);
    println!("largest FUSE read request: {max} bytes");
    assert!(max >= 1 << 20, "largest request {max} bytes");
    m.unmount();
}
