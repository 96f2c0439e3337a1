//! Kernel FUSE passthrough for fully cached files: filled by the reads of
//! a file (or assembled from verified chunks), then served by the kernel
//! without the daemon from the next open on; a damaged file is never passed
//! through.
#![allow(clippy::unwrap_used)]

use crate::common;
use crate::fuse_common;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use fuse_common::*;
use rstargz_fs::cache::FileStore;
use rstargz_fs::fuse::MountOptions;

/// A passthrough store under `root` and mount options that use it.
fn passthrough_opts(root: &std::path::Path) -> (Arc<FileStore>, MountOptions) {
    let store = Arc::new(FileStore::open(root, 1 << 30).unwrap());
    let opts = MountOptions {
        passthrough: Some(store.clone()),
        ..Default::default()
    };
    (store, opts)
}

/// The gzip `sizes` layer over a disk cache under `dir`, with a
/// passthrough store there, and its biggest file.
struct Sizes {
    store: Arc<FileStore>,
    opts: MountOptions,
    layer: Arc<rstargz_fs::layer::LayerReader>,
    path: String,
    key: rstargz_fs::estargz::Digest,
}

fn sizes(rt: &tokio::runtime::Runtime, dir: &std::path::Path) -> Sizes {
    let (store, opts) = passthrough_opts(dir);
    let cache = disk_cache(dir, 1 << 30);
    let source = TestSource::new(blob("sizes", "gzip"), Behaviour::Serve);
    let layer = open_layer(rt, source, cache);
    let (ino, path) = biggest_file(layer.index());
    let key = FileStore::file_key(&layer.index().chunks(ino)).unwrap();
    Sizes {
        store,
        opts,
        layer,
        path,
        key,
    }
}

#[test]
fn fully_cached_file_is_served_by_kernel_passthrough() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let Sizes {
        store,
        opts,
        layer,
        path,
        key,
    } = sizes(&rt, dir.path());
    let m = mount_layer(&rt, layer.clone(), opts.clone());
    let want = std::fs::read(m.path.join(&path)).unwrap();
    assert!(store.is_ready(&key), "the reads filled the copy");
    m.unmount();

    // A fresh mount (empty page cache) passes the file through.
    let m = mount_layer(&rt, layer, opts);
    let mut f = std::fs::File::open(m.path.join(&path)).expect("open");
    let mut got = Vec::new();
    std::io::Read::read_to_end(&mut f, &mut got).expect("read");
    drop(f);
    let stats = m.handle.as_ref().unwrap().stats().clone();
    assert!(got == want, "same bytes through passthrough");
    assert_eq!(stats.passthrough_opens.load(Ordering::SeqCst), 1);
    let daemon_reads =
        stats.reads_inline.load(Ordering::SeqCst) + stats.reads_async.load(Ordering::SeqCst);
    assert_eq!(daemon_reads, 0, "reads bypass the daemon");
    m.unmount();
    assert_eq!(store.stats().filled.load(Ordering::SeqCst), 1);
}

/// The re-read right after the first read of a file (the cold read) is
/// served by the kernel from the copy the first read filled: no READ
/// reaches the daemon. Through the FUSE page cache it would run at a
/// quarter of a local file's speed (4 KiB folios).
#[test]
fn the_re_read_right_after_the_first_read_is_passed_through() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let Sizes {
        store,
        opts,
        layer,
        path,
        key,
    } = sizes(&rt, dir.path());
    let m = mount_layer(&rt, layer, opts);
    let stats = m.handle.as_ref().unwrap().stats().clone();
    let reads =
        || stats.reads_inline.load(Ordering::SeqCst) + stats.reads_async.load(Ordering::SeqCst);
    let file = m.path.join(&path);
    let first = std::fs::read(&file).unwrap();
    let after_first = reads();
    assert!(after_first > 0, "the first read went through the daemon");
    assert!(
        store.is_ready(&key),
        "ready when the last read was answered"
    );
    // The kernel sends RELEASE after close() returns; a reader's next open
    // (a new process) comes later than this one would.
    let released = || stats.releases.load(Ordering::SeqCst) == stats.opens.load(Ordering::SeqCst);
    assert!(wait_until(Duration::from_secs(10), released));
    let second = std::fs::read(&file).unwrap();
    assert!(second == first, "same bytes");
    assert_eq!(
        reads(),
        after_first,
        "no READ of the re-read reached the daemon"
    );
    assert_eq!(stats.passthrough_opens.load(Ordering::SeqCst), 1);
    assert_eq!(store.stats().filled.load(Ordering::SeqCst), 1);
    assert_eq!(store.stats().assembled.load(Ordering::SeqCst), 0);
    m.unmount();
}

#[test]
fn damaged_materialized_file_is_never_passed_through() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let cache = disk_cache(dir.path(), 1 << 30);
    let source = TestSource::new(blob("sizes", "zstd"), Behaviour::Serve);
    let layer = open_layer(&rt, source, cache);
    let (ino, path) = biggest_file(layer.index());
    let key = FileStore::file_key(&layer.index().chunks(ino)).unwrap();
    let want;
    {
        let (store, opts) = passthrough_opts(dir.path());
        let m = mount_layer(&rt, layer.clone(), opts);
        want = std::fs::read(m.path.join(&path)).unwrap();
        assert!(wait_until(Duration::from_secs(20), || store.is_ready(&key)));
        m.unmount();
        // Damage the copy behind the daemon's back.
        let p = store.path(&key);
        let mut bytes = std::fs::read(&p).unwrap();
        bytes[70_000] ^= 1;
        std::fs::write(&p, bytes).unwrap();
    }
    // A restarted daemon: the copy is re-verified before any passthrough.
    let (store, opts) = passthrough_opts(dir.path());
    let m = mount_layer(&rt, layer, opts);
    // A part only: reading it all would fill a fresh copy over the damaged
    // one before the check of the open ran.
    let mut head = vec![0u8; 4096];
    std::io::Read::read_exact(
        &mut std::fs::File::open(m.path.join(&path)).unwrap(),
        &mut head,
    )
    .unwrap();
    let expect = effective_entries(&expected("sizes"))
        .into_iter()
        .find(|e| e.path.trim_start_matches("./") == path)
        .unwrap();
    assert_eq!(Some(sha256_hex(&want)), expect.sha256);
    assert!(head == want[..4096]);
    let stats = m.handle.as_ref().unwrap().stats().clone();
    assert_eq!(stats.passthrough_opens.load(Ordering::SeqCst), 0);
    // The check finds the damage, deletes it and reassembles from verified chunks.
    assert!(wait_until(Duration::from_secs(20), || store.is_ready(&key)));
    assert_eq!(store.stats().corrupt.load(Ordering::SeqCst), 1);
    assert_eq!(
        sha256_hex(&std::fs::read(store.path(&key)).unwrap()),
        expect.sha256.unwrap()
    );
    m.unmount();
}

#[test]
fn open_during_a_cached_open_and_overlay_on_top_both_work() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let Sizes {
        store,
        opts,
        layer,
        path,
        key,
    } = sizes(&rt, dir.path());
    let m = mount_layer(&rt, layer.clone(), opts.clone());
    let file = m.path.join(&path);
    // Held open (page-cache mode) while the file becomes ready.
    let held = std::fs::File::open(&file).unwrap();
    let want = std::fs::read(&file).unwrap();
    assert!(wait_until(Duration::from_secs(20), || store.is_ready(&key)));
    // The inode is in page-cache mode: a new open must not fail.
    assert!(std::fs::read(&file).unwrap() == want);
    drop(held);
    m.unmount();

    // Overlay stacked on a passthrough-capable mount reads passthrough files.
    let m = mount_layer(&rt, layer, opts);
    let empty = dir.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let overlay = Overlay::mount(&[&m.path, &empty]);
    let got = std::fs::read(overlay.merged.join(&path)).unwrap();
    drop(overlay);
    assert!(got == want);
    let stats = m.handle.as_ref().unwrap().stats().clone();
    assert_eq!(stats.passthrough_opens.load(Ordering::SeqCst), 1);
    m.unmount();
}

#[test]
fn file_store_stays_within_its_bound() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let source = TestSource::new(blob("sizes", "gzip"), Behaviour::Serve);
    let layer = open_layer(&rt, source, disk_cache(dir.path(), 1 << 30));
    // Room for the small files but not the biggest one.
    let (ino, path) = biggest_file(layer.index());
    let big = layer.index().node(ino).unwrap().size();
    let store = Arc::new(FileStore::open(dir.path(), big - 1).unwrap());
    let opts = MountOptions {
        passthrough: Some(store.clone()),
        ..Default::default()
    };
    let m = mount_layer(&rt, layer.clone(), opts);
    check_contents(&m.path, "sizes");
    m.unmount();
    let key = FileStore::file_key(&layer.index().chunks(ino)).unwrap();
    assert!(!store.is_ready(&key), "{path} does not fit");
    assert!(store.used_bytes() < big);
}

/// A layer holding a copy of this machine's `true` binary as `bin/true`.
fn layer_with_true_binary() -> Vec<u8> {
    let bin = std::fs::read("/usr/bin/true").unwrap();
    let mut tar = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(bin.len() as u64);
    h.set_mode(0o755);
    h.set_cksum();
    tar.append_data(&mut h, "bin/true", &bin[..]).unwrap();
    let mut blob = Vec::new();
    rstargz_fs::estargz::convert(
        &tar.into_inner().unwrap()[..],
        &mut blob,
        &Default::default(),
    )
    .unwrap();
    blob
}

#[test]
fn binaries_execute_from_the_mount_cached_and_passed_through() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let (store, opts) = passthrough_opts(dir.path());
    let opts = MountOptions {
        passthrough_min_bytes: 1,
        ..opts
    };
    let source = TestSource::new(layer_with_true_binary(), Behaviour::Serve);
    let layer = open_layer(&rt, source, disk_cache(dir.path(), 1 << 30));
    let ino = layer.index().lookup_path("bin/true").unwrap();
    let key = FileStore::file_key(&layer.index().chunks(ino)).unwrap();
    // First run: mmap through the page cache; then the file is materialized.
    let m = mount_layer(&rt, layer.clone(), opts.clone());
    let status = std::process::Command::new(m.path.join("bin/true"))
        .status()
        .unwrap();
    assert!(status.success());
    assert!(wait_until(Duration::from_secs(20), || store.is_ready(&key)));
    m.unmount();
    // Second run: mmap through the passthrough backing file.
    let m = mount_layer(&rt, layer, opts);
    let status = std::process::Command::new(m.path.join("bin/true"))
        .status()
        .unwrap();
    assert!(status.success());
    let stats = m.handle.as_ref().unwrap().stats().clone();
    assert!(stats.passthrough_opens.load(Ordering::SeqCst) >= 1);
    m.unmount();
}
