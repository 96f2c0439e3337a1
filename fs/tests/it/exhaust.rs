//! Resource exhaustion of the chunk caches, against a real registry: a full
//! cache disk (a small tmpfs) and cache files damaged on disk. Reads stay
//! correct and never fail while the registry answers.
#![allow(clippy::unwrap_used)]

use crate::common;
use crate::fuse_common;

use std::io;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use common::registry::TestRegistry;
use common::{TestLayer, sha256_hex, test_config};
use fuse_common::*;
use rstargz_fs::cache::{ChunkCache, ChunkCacheConfig, DiskCache, FileStore};
use rstargz_fs::estargz::Digest;
use rstargz_fs::fuse::MountOptions;
use rstargz_fs::layer::{BlobSource, LayerReader, Purpose};
use rstargz_fs::registry::{BlobFetcher, Reference, Registry};

/// A layer blob in the real registry, read with range requests.
struct RegistrySource {
    fetcher: BlobFetcher,
    size: u64,
}

#[async_trait::async_trait]
impl BlobSource for RegistrySource {
    async fn read_range(&self, range: Range<u64>, purpose: Purpose) -> io::Result<Bytes> {
        let mut parts = self
            .fetcher
            .fetch_ranges(std::slice::from_ref(&range), purpose)
            .await
            .map_err(io::Error::other)?;
        parts
            .pop()
            .map(|(_, b)| b)
            .ok_or_else(|| io::Error::other("no data"))
    }
    fn size(&self) -> u64 {
        self.size
    }
}

/// The golden `sizes` layer pushed to a fresh registry.
struct Upstream {
    _registry: TestRegistry,
    _dir: tempfile::TempDir,
    source: Arc<RegistrySource>,
}

impl Upstream {
    /// The layer read from the registry through `cache`.
    fn open(&self, rt: &tokio::runtime::Runtime, cache: Arc<ChunkCache>) -> Arc<LayerReader> {
        open_layer(rt, self.source.clone(), cache)
    }
}

fn upstream(rt: &tokio::runtime::Runtime) -> Upstream {
    rt.block_on(async {
        let registry = TestRegistry::start().await;
        let dir = tempfile::tempdir().unwrap();
        let client = Registry::new(test_config(&dir.path().join("config.json"))).unwrap();
        let blob = TestLayer::golden("sizes", "gzip").blob;
        let reference = Reference::parse(&registry.reference("test/sizes")).unwrap();
        let digest = client
            .push_blob(&reference, Bytes::from(blob.clone()))
            .await
            .unwrap();
        let fetcher = client
            .open_blob(&reference, &digest, Some(blob.len() as u64))
            .await
            .unwrap();
        Upstream {
            _registry: registry,
            _dir: dir,
            source: Arc::new(RegistrySource {
                fetcher,
                size: blob.len() as u64,
            }),
        }
    })
}

/// The caches under `root`: chunks with no memory tier, so every read goes
/// through the disk tier, and a passthrough store.
fn caches(root: &Path) -> (Arc<ChunkCache>, Arc<DiskCache>, Arc<FileStore>) {
    let disk = Arc::new(DiskCache::open(root, 1 << 30).unwrap());
    let config = ChunkCacheConfig {
        memory_bytes: 0,
        ..Default::default()
    };
    let cache = Arc::new(ChunkCache::new(&config, Some(disk.clone())));
    let store = Arc::new(FileStore::open(root, 1 << 30).unwrap());
    (cache, disk, store)
}

/// Mounts `layer` with `store`, checks every file's bytes, unmounts.
fn read_all(rt: &tokio::runtime::Runtime, layer: &Arc<LayerReader>, store: &Arc<FileStore>) {
    let opts = MountOptions {
        passthrough: Some(store.clone()),
        ..Default::default()
    };
    let m = mount_layer(rt, layer.clone(), opts);
    check_contents(&m.path, "sizes");
    m.unmount();
}

/// A tmpfs of `size` mounted in a temporary directory; unmounted on drop.
struct Tmpfs {
    path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fs");
        std::fs::create_dir(&path).unwrap();
        nix::mount::mount(
            Some("tmpfs"),
            &path,
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            Some(format!("size={size}").as_str()),
        )
        .unwrap();
        Tmpfs { path, _dir: dir }
    }

    /// Writes `filler` until the filesystem is full.
    fn fill(&self) {
        let mut f = std::fs::File::create(self.path.join("filler")).unwrap();
        let block = vec![0xa5u8; 64 << 10];
        loop {
            match io::Write::write_all(&mut f, &block) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => return,
                Err(e) => panic!("filling the tmpfs: {e}"),
            }
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.path, nix::mount::MntFlags::MNT_DETACH);
    }
}

#[test]
fn a_full_cache_disk_serves_from_the_registry_and_caching_resumes() {
    let rt = runtime();
    let up = upstream(&rt);
    let tmpfs = Tmpfs::mount("16m");
    let (cache, disk, store) = caches(&tmpfs.path);
    let layer = up.open(&rt, cache.clone());
    tmpfs.fill();

    // Full: every file still reads right, nothing is cached, one warning.
    read_all(&rt, &layer, &store);
    let stats = cache.stats();
    assert!(stats.disk_write_errors.load(Ordering::SeqCst) > 1);
    assert_eq!(stats.disk_write_outages.load(Ordering::SeqCst), 1);
    assert_eq!(disk.len(), 0);
    // No half-written passthrough copy is left holding space.
    let left = std::fs::read_dir(tmpfs.path.join("files-tmp"))
        .unwrap()
        .count();
    assert_eq!(left, 0, "passthrough copies left behind");

    // Space is back: the next reads cache their chunks again.
    std::fs::remove_file(tmpfs.path.join("filler")).unwrap();
    let errors = stats.disk_write_errors.load(Ordering::SeqCst);
    read_all(&rt, &layer, &store);
    assert_eq!(stats.disk_write_errors.load(Ordering::SeqCst), errors);
    assert!(!disk.is_empty(), "chunks are cached again");
    let (ino, _) = biggest_file(layer.index());
    for c in layer.index().chunks(ino) {
        assert!(disk.contains(&c.digest().unwrap()));
    }
    let hits = stats.disk_hits.load(Ordering::SeqCst);
    let fetches = stats.fetches.load(Ordering::SeqCst);
    read_all(&rt, &layer, &store);
    assert!(stats.disk_hits.load(Ordering::SeqCst) > hits);
    assert_eq!(stats.fetches.load(Ordering::SeqCst), fetches);
    assert_eq!(stats.disk_write_outages.load(Ordering::SeqCst), 1);
}

/// Whether the file at `path` holds exactly the chunk `digest`.
fn holds(path: &Path, digest: &Digest) -> bool {
    std::fs::read(path).is_ok_and(|b| Digest::of(&b) == *digest)
}

#[test]
fn damaged_cache_files_are_dropped_and_fetched_again() {
    let rt = runtime();
    let up = upstream(&rt);
    let dir = tempfile::tempdir().unwrap();
    let (cache, disk, store) = caches(dir.path());
    let layer = up.open(&rt, cache.clone());
    let (ino, _) = biggest_file(layer.index());
    let chunks = layer.index().chunks(ino);
    assert!(chunks.len() >= 2, "the test needs a file of two chunks");
    let key = FileStore::file_key(&chunks).unwrap();
    read_all(&rt, &layer, &store);
    assert!(wait_until(Duration::from_secs(20), || store.is_ready(&key)));

    // Behind the daemon's back: flip a byte of one chunk file, truncate
    // another, and truncate the ready passthrough copy.
    let flipped = chunks[0].digest().unwrap();
    let truncated = chunks[1].digest().unwrap();
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(disk.chunk_path(&flipped))
        .unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, 100).unwrap();
    f.write_all_at(&[b[0] ^ 1], 100).unwrap();
    drop(f);
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(disk.chunk_path(&truncated))
        .unwrap();
    f.set_len(f.metadata().unwrap().len() / 2).unwrap();
    drop(f);
    let copy = std::fs::OpenOptions::new()
        .write(true)
        .open(store.path(&key))
        .unwrap();
    copy.set_len(copy.metadata().unwrap().len() - 1).unwrap();
    drop(copy);

    // Every read is still right; the damage is found and repaired.
    read_all(&rt, &layer, &store);
    assert!(disk.stats().corrupt.load(Ordering::SeqCst) >= 2);
    assert!(holds(&disk.chunk_path(&flipped), &flipped));
    assert!(holds(&disk.chunk_path(&truncated), &truncated));
    assert_eq!(store.stats().corrupt.load(Ordering::SeqCst), 1);
    assert!(wait_until(Duration::from_secs(20), || store.is_ready(&key)));
    let want = common::effective_entries(&common::expected("sizes"))
        .into_iter()
        .find(|e| layer.index().lookup_path(e.path.trim_start_matches("./")) == Some(ino))
        .and_then(|e| e.sha256)
        .unwrap();
    assert_eq!(sha256_hex(&std::fs::read(store.path(&key)).unwrap()), want);
    read_all(&rt, &layer, &store);
}
