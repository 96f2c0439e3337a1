//! LCOW scratch disks checked by independent tools: qemu-img reads our VHDX,
//! e2fsprogs checks the ext4 inside it (both installed by scripts/setup.sh).
#![allow(clippy::unwrap_used)]

use std::fs::{self, File};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::sync::{Arc, Barrier};

use crate::common;

use common::vhdx_check::{GIB, MIB, assert_valid_scratch, on_disk_bytes, run};
use rstargz_snapshotter::lcow::{self, vhdx};

#[test]
fn scratch_of_1_gb_is_a_vhdx_holding_a_clean_ext4() {
    let dir = tempfile::tempdir().unwrap();
    let path = lcow::ensure_scratch(dir.path(), Some(1)).unwrap();
    assert_eq!(path, dir.path().join("scratch_1.vhdx"));
    assert_valid_scratch(&path, 1);
    eprintln!("1 GiB scratch: {} bytes on disk", on_disk_bytes(&path));
}

#[test]
fn default_scratch_is_20_gb_and_takes_megabytes() {
    let dir = tempfile::tempdir().unwrap();
    let path = lcow::ensure_scratch(dir.path(), None).unwrap();
    assert_eq!(path, dir.path().join("scratch.vhdx"));
    let used = on_disk_bytes(&path);
    eprintln!("20 GiB scratch: {used} bytes on disk");
    assert!(used < 8 * MIB, "20 GiB scratch uses {used} bytes");
    assert_valid_scratch(&path, lcow::DEFAULT_SCRATCH_SIZE_GB);
}

#[test]
fn concurrent_ensure_scratch_creates_one_file() {
    let dir = tempfile::tempdir().unwrap();
    let barrier = Arc::new(Barrier::new(8));
    let handles: Vec<_> = (0..8)
        .map(|_| {
            let dir = dir.path().to_path_buf();
            let barrier = Arc::clone(&barrier);
            std::thread::spawn(move || {
                barrier.wait();
                let path = lcow::ensure_scratch(&dir, Some(2)).unwrap();
                // A later creator replacing the file would change its inode.
                let inode = fs::metadata(&path).unwrap().ino();
                (path, inode)
            })
        })
        .collect();
    let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert!(results.iter().all(|r| r == &results[0]), "{results:?}");
    let mut names: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, [".scratch.lock", "scratch_2.vhdx"]);
    assert_valid_scratch(&results[0].0, 2);
}

#[test]
fn copied_sandbox_is_identical_to_the_cached_scratch() {
    let dir = tempfile::tempdir().unwrap();
    let snapshot = dir.path().join("snapshots/7");
    fs::create_dir_all(&snapshot).unwrap();
    let sandbox = lcow::create_sandbox(&dir.path().join("cache"), Some(1), &snapshot).unwrap();
    assert_eq!(sandbox, snapshot.join("sandbox.vhdx"));
    let cached = dir.path().join("cache/scratch_1.vhdx");
    assert_eq!(fs::read(&sandbox).unwrap(), fs::read(&cached).unwrap());
    let (copy_used, cached_used) = (on_disk_bytes(&sandbox), on_disk_bytes(&cached));
    eprintln!("1 GiB sandbox copy: {copy_used} bytes on disk (cache: {cached_used})");
    assert!(
        copy_used <= cached_used + MIB,
        "copy filled the scratch's holes"
    );
    // A second Prepare reuses the cache instead of making another scratch.
    let inode = fs::metadata(&cached).unwrap().ino();
    let cache = dir.path().join("cache");
    assert_eq!(lcow::ensure_scratch(&cache, Some(1)).unwrap(), cached);
    assert_eq!(fs::metadata(&cached).unwrap().ino(), inode);
}

#[test]
fn failed_copy_leaves_no_sandbox() {
    let dir = tempfile::tempdir().unwrap();
    let sandbox = dir.path().join("sandbox.vhdx");
    let err = lcow::copy_scratch(&dir.path().join("missing.vhdx"), &sandbox).unwrap_err();
    assert!(matches!(err, lcow::ScratchError::Io { .. }), "{err}");
    assert!(!sandbox.exists());
}

#[test]
fn cleanup_removes_stale_temps_and_keeps_scratches() {
    let dir = tempfile::tempdir().unwrap();
    for name in [
        "scratch_3.vhdx.tmp",
        "scratch_3.vhdx.raw.tmp",
        "scratch.vhdx",
        "other.tmp",
    ] {
        fs::write(dir.path().join(name), b"x").unwrap();
    }
    assert_eq!(lcow::cleanup_stale_temps(dir.path()).unwrap(), 2);
    assert!(dir.path().join("scratch.vhdx").exists());
    assert!(dir.path().join("other.tmp").exists());
    assert!(!dir.path().join("scratch_3.vhdx.tmp").exists());
    assert!(!dir.path().join("scratch_3.vhdx.raw.tmp").exists());
    assert_eq!(
        lcow::cleanup_stale_temps(&dir.path().join("absent")).unwrap(),
        0
    );
}

/// Data placed across a sector bitmap chunk boundary (4 GiB with 512-byte
/// sectors, whatever the block size) and in a partial last block reads back
/// exactly, for the smallest and the Hyper-V default block sizes.
#[test]
fn vhdx_reads_back_as_the_raw_image() {
    let work = tempfile::tempdir().unwrap();
    let raw_path = work.path().join("in.raw");
    let raw = File::create_new(&raw_path).unwrap();
    let size = 4 * GIB + 40 * MIB + 512;
    raw.set_len(size).unwrap();
    for (i, offset) in [
        0,
        4 * GIB - 4096,
        4 * GIB,
        4 * GIB + 3 * MIB + 17,
        size - 512,
    ]
    .into_iter()
    .enumerate()
    {
        raw.write_all_at(&[i as u8 + 1; 512], offset).unwrap();
    }
    // With 32 MiB blocks the two writes just past 4 GiB share a block.
    for (block_size, blocks) in [(vhdx::DEFAULT_BLOCK_SIZE, 5), (32 << 20, 4)] {
        let out_path = work.path().join(format!("out-{block_size}.vhdx"));
        let out = File::create_new(&out_path).unwrap();
        let summary = vhdx::write_dynamic_vhdx(&raw, &out, block_size).unwrap();
        assert_eq!(summary.virtual_size, size);
        assert_eq!(summary.blocks_stored, blocks, "{summary:?}");
        let out_str = out_path.to_str().unwrap();
        run("qemu-img", &["check", "-f", "vhdx", out_str]);
        run(
            "qemu-img",
            &[
                "compare",
                "-f",
                "raw",
                "-F",
                "vhdx",
                raw_path.to_str().unwrap(),
                out_str,
            ],
        );
    }
}
