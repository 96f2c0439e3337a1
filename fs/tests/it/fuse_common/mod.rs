//! Helpers of the FUSE and cache tests: blob sources that count, stall or
//! lie, and real mounts of a layer in a temporary directory.
#![allow(dead_code, clippy::unwrap_used)]

use std::io;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rstargz_fs::cache::{ChunkCache, ChunkCacheConfig, DiskCache};
use rstargz_fs::estargz::OpenOptions;
use rstargz_fs::fuse::{LayerMount, MountOptions, SharedSession};
use rstargz_fs::layer::{BlobSource, LayerReader, Purpose};

/// What a [`TestSource`] does with chunk (non-metadata) reads.
pub enum Behaviour {
    /// Serve the blob.
    Serve,
    /// Never answer.
    Stall,
    /// Wait until the gate has a permit, then serve.
    Gate(Arc<tokio::sync::Semaphore>),
    /// Serve `bytes` (padded with zeros) instead of the blob for `range`.
    Replace { range: Range<u64>, bytes: Vec<u8> },
}

/// An in-memory blob that counts chunk reads.
pub struct TestSource {
    blob: Bytes,
    pub chunk_reads: AtomicU64,
    behaviour: Behaviour,
}

impl TestSource {
    pub fn new(blob: Vec<u8>, behaviour: Behaviour) -> Arc<Self> {
        Arc::new(TestSource {
            blob: Bytes::from(blob),
            chunk_reads: AtomicU64::new(0),
            behaviour,
        })
    }
    pub fn reads(&self) -> u64 {
        self.chunk_reads.load(Ordering::SeqCst)
    }
}

#[async_trait::async_trait]
impl BlobSource for TestSource {
    async fn read_range(&self, range: Range<u64>, purpose: Purpose) -> io::Result<Bytes> {
        if purpose != Purpose::Metadata {
            self.chunk_reads.fetch_add(1, Ordering::SeqCst);
            match &self.behaviour {
                Behaviour::Serve => {}
                Behaviour::Stall => std::future::pending::<()>().await,
                Behaviour::Gate(sem) => {
                    sem.acquire().await.unwrap().forget();
                }
                Behaviour::Replace { range: r, bytes } if *r == range => {
                    let mut out = bytes.clone();
                    out.resize((range.end - range.start) as usize, 0);
                    return Ok(Bytes::from(out));
                }
                Behaviour::Replace { .. } => {}
            }
        }
        Ok(self.blob.slice(range.start as usize..range.end as usize))
    }
    fn size(&self) -> u64 {
        self.blob.len() as u64
    }
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A memory-only chunk cache.
pub fn memory_cache() -> Arc<ChunkCache> {
    Arc::new(ChunkCache::new(&ChunkCacheConfig::default(), None))
}

/// A chunk cache backed by a disk cache at `dir`.
pub fn disk_cache(dir: &Path, max_bytes: u64) -> Arc<ChunkCache> {
    let disk = Arc::new(DiskCache::open(dir, max_bytes).unwrap());
    Arc::new(ChunkCache::new(&ChunkCacheConfig::default(), Some(disk)))
}

pub fn open_layer(
    rt: &tokio::runtime::Runtime,
    source: Arc<dyn BlobSource>,
    cache: Arc<ChunkCache>,
) -> Arc<LayerReader> {
    Arc::new(
        rt.block_on(LayerReader::open(source, cache, &OpenOptions::default()))
            .unwrap(),
    )
}

/// A layer mounted at a temporary directory (a session of its own at
/// `<dir>/fuse`, the layer bind-mounted at `<dir>/fs`); unmounted on drop.
pub struct Mounted {
    pub handle: Option<LayerMount>,
    pub path: PathBuf,
    pub session: Arc<SharedSession>,
    _dir: tempfile::TempDir,
}

impl Mounted {
    /// Unmounts, retrying while the kernel still calls the mount busy: the
    /// last RELEASE of a closed file is answered asynchronously, so an
    /// unmount right after the reads can race it (the daemon retries too).
    pub fn unmount(mut self) {
        let mut handle = self.handle.take().unwrap();
        let mut last = None;
        let done = wait_until(Duration::from_secs(10), || match handle.unmount() {
            Ok(()) => true,
            Err(e) => {
                last = Some(e.to_string());
                false
            }
        });
        assert!(done, "unmount still failing after 10 s: {last:?}");
    }
}

pub fn mount_layer(
    rt: &tokio::runtime::Runtime,
    layer: Arc<LayerReader>,
    opts: MountOptions,
) -> Mounted {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fs");
    std::fs::create_dir(&path).unwrap();
    let fuse = dir.path().join("fuse");
    std::fs::create_dir(&fuse).unwrap();
    let opts = MountOptions {
        runtime: Some(rt.handle().clone()),
        ..opts
    };
    let session = SharedSession::mount(&fuse, &opts).unwrap();
    let handle = session
        .attach(session.reserve(), &path, layer, opts)
        .unwrap();
    Mounted {
        handle: Some(handle),
        path,
        session,
        _dir: dir,
    }
}

/// Polls `cond` until it holds or `limit` passes.
pub fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        std::thread::yield_now();
    }
    cond()
}

/// Reads a file bypassing the page cache, so every read reaches the daemon.
pub fn read_direct(path: &Path) -> io::Result<Vec<u8>> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)?;
    let mut out = Vec::new();
    f.read_to_end(&mut out)?;
    Ok(out)
}

/// The regular file of `index` with the most chunks, and its path.
pub fn biggest_file(index: &rstargz_fs::estargz::Index) -> (rstargz_fs::estargz::Ino, String) {
    use rstargz_fs::estargz::NodeKind;
    crate::common::all_paths(index)
        .into_iter()
        .filter_map(|p| index.lookup_path(&p).map(|i| (i, p)))
        .filter(|(i, _)| index.node(*i).unwrap().kind() == NodeKind::Reg)
        .max_by_key(|(i, _)| index.chunks(*i).len())
        .unwrap()
}

/// A read-only overlayfs over `lowers` (uppermost first); unmounted on drop.
pub struct Overlay {
    pub merged: PathBuf,
    _dir: tempfile::TempDir,
}

impl Overlay {
    pub fn mount(lowers: &[&Path]) -> Overlay {
        let dir = tempfile::tempdir().unwrap();
        let merged = dir.path().join("merged");
        std::fs::create_dir(&merged).unwrap();
        let lowers: Vec<String> = lowers.iter().map(|p| p.display().to_string()).collect();
        let opts = format!("lowerdir={}", lowers.join(":"));
        nix::mount::mount(
            Some("overlay"),
            &merged,
            Some("overlay"),
            nix::mount::MsFlags::MS_RDONLY,
            Some(opts.as_str()),
        )
        .unwrap();
        Overlay { merged, _dir: dir }
    }
}

impl Drop for Overlay {
    fn drop(&mut self) {
        let _ = nix::mount::umount(&self.merged);
    }
}

/// Every regular file of `case` read through `root` matches its sha256.
pub fn check_contents(root: &Path, case: &str) {
    use crate::common::{effective_entries, expected, sha256_hex};
    for e in effective_entries(&expected(case)) {
        if e.kind != "reg" || e.overlay.is_some() {
            continue;
        }
        let rel = e.path.trim_start_matches("./");
        let data = std::fs::read(root.join(rel)).unwrap();
        assert_eq!(Some(sha256_hex(&data)), e.sha256, "{case}: {rel}");
    }
}
