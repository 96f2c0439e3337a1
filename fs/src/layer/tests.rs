//! Layer reader tests over in-memory blob sources that corrupt, gate or
//! sparsely fake their reads.

use std::ops::Range;
use std::sync::Mutex;
use std::sync::atomic::AtomicU32;

use super::*;
use crate::cache::ChunkCacheConfig;
use crate::estargz::{WriterOptions, convert};

/// An in-memory blob whose next `corrupt` reads come back with their
/// middle byte flipped.
struct Flaky {
    data: Bytes,
    corrupt: AtomicU32,
    reads: AtomicU32,
    forgotten: Mutex<Vec<Range<u64>>>,
}

#[async_trait::async_trait]
impl BlobSource for Flaky {
    async fn read_range(&self, range: Range<u64>, _: Purpose) -> io::Result<Bytes> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        let mut bytes = self.data[range.start as usize..range.end as usize].to_vec();
        let bad = self
            .corrupt
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if bad && !bytes.is_empty() {
            let at = bytes.len() / 2;
            bytes[at] ^= 0x5a;
        }
        Ok(bytes.into())
    }

    fn size(&self) -> u64 {
        self.data.len() as u64
    }

    async fn forget(&self, range: Range<u64>) {
        self.forgotten.lock().unwrap().push(range);
    }
}

/// Bytes that do not compress much.
fn noise(len: u32) -> Vec<u8> {
    (0..len)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect()
}

fn layer_blob(content: &[u8]) -> (Vec<u8>, Digest) {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_mode(0o644);
    h.set_size(content.len() as u64);
    b.append_data(&mut h, "file", content).unwrap();
    let tar = b.into_inner().unwrap();
    let mut out = Vec::new();
    let made = convert(&tar[..], &mut out, &WriterOptions::default()).unwrap();
    (out, made.toc_digest)
}

fn flaky(blob: Vec<u8>, corrupt: u32) -> Arc<Flaky> {
    Arc::new(Flaky {
        data: blob.into(),
        corrupt: AtomicU32::new(corrupt),
        reads: AtomicU32::new(0),
        forgotten: Mutex::new(Vec::new()),
    })
}

/// A blob of `head`, then a hole of zeros up to `tail_at`, then `tail`;
/// reads longer than 64 MiB fail instead of allocating, and the longest
/// read asked for is recorded.
struct Sparse {
    head: Vec<u8>,
    tail_at: u64,
    tail: Vec<u8>,
    longest: AtomicU64,
}

#[async_trait::async_trait]
impl BlobSource for Sparse {
    async fn read_range(&self, range: Range<u64>, _: Purpose) -> io::Result<Bytes> {
        let len = range.end - range.start;
        self.longest.fetch_max(len, Ordering::SeqCst);
        if len > 64 << 20 {
            return Err(io::Error::other(format!("refusing a {len}-byte read")));
        }
        let byte = |at: u64| {
            if at < self.head.len() as u64 {
                self.head[at as usize]
            } else if at >= self.tail_at {
                self.tail
                    .get((at - self.tail_at) as usize)
                    .copied()
                    .unwrap_or(0)
            } else {
                0
            }
        };
        Ok(range.map(byte).collect::<Vec<u8>>().into())
    }

    fn size(&self) -> u64 {
        self.tail_at + self.tail.len() as u64
    }
}

fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

#[tokio::test]
async fn a_chunk_range_spanning_the_blob_is_fetched_only_as_far_as_the_chunk_can_need() {
    use estargz::{Toc, TocEntry};
    // "tiny"'s member is near 0; the next member ("far") starts 3 GiB on,
    // so by the TOC tiny's compressed range spans the whole hole.
    let tail_at = 3 << 30;
    let reg = |name: &str, data: &[u8], offset: u64| {
        let d = Digest::of(data).to_string();
        TocEntry {
            name: name.into(),
            kind: "reg".into(),
            size: data.len() as u64,
            offset,
            digest: d.clone(),
            chunk_digest: d,
            ..TocEntry::default()
        }
    };
    // Offset 0 means "no offset": an empty member goes first.
    let mut head = gzip(b"");
    let at = head.len() as u64;
    head.extend(gzip(b"tiny!"));
    let mut tail = gzip(b"far away");
    let toc = Toc {
        version: 1,
        entries: vec![reg("tiny", b"tiny!", at), reg("far", b"far away", tail_at)],
    };
    let json = estargz::toc::encode_toc(&toc).unwrap();
    let mut tar = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_ustar();
    h.set_size(json.len() as u64);
    h.set_mode(0o444);
    tar.append_data(&mut h, "stargz.index.json", &json[..])
        .unwrap();
    let toc_offset = tail_at + tail.len() as u64;
    tail.extend(gzip(&tar.into_inner().unwrap()));
    tail.extend(estargz::footer::estargz_footer(toc_offset));
    let source = Arc::new(Sparse {
        head,
        tail_at,
        tail,
        longest: AtomicU64::new(0),
    });
    let cache = Arc::new(ChunkCache::new(&ChunkCacheConfig::default(), None));
    let layer = LayerReader::open(source.clone(), cache, &OpenOptions::default())
        .await
        .unwrap();
    let ino = layer.index().lookup_path("tiny").unwrap();
    let chunk = layer.index().chunks(ino)[0].clone();
    assert_eq!(chunk.compressed_end, tail_at, "the TOC's range");
    assert_eq!(layer.read(ino, 0, 100).await.unwrap(), b"tiny!");
    assert!(chunk.range_is_capped());
    let far = layer.index().lookup_path("far").unwrap();
    assert_eq!(layer.read(far, 0, 100).await.unwrap(), b"far away");
    let longest = source.longest.load(Ordering::SeqCst);
    assert!(longest <= 2 << 20, "longest read {longest} bytes");
}

#[tokio::test]
async fn corrupted_reads_are_fetched_again_until_they_verify() {
    let content = noise(100_000);
    let (blob, toc) = layer_blob(&content);
    let opts = OpenOptions {
        expected_toc_digest: Some(toc),
        ..OpenOptions::default()
    };
    let cache = Arc::new(ChunkCache::new(&ChunkCacheConfig::default(), None));
    // The first two footer reads are corrupt.
    let source = flaky(blob, 2);
    let layer = LayerReader::open(source.clone(), cache, &opts)
        .await
        .unwrap();
    let tail = source.size() - estargz::footer::MAX_FOOTER_SIZE as u64..source.size();
    assert_eq!(*source.forgotten.lock().unwrap(), [tail.clone(), tail]);
    let ino = layer.index().lookup_path("file").unwrap();
    source.corrupt.store(FETCH_ATTEMPTS - 1, Ordering::SeqCst);
    let got = layer.read(ino, 0, 200_000).await.unwrap();
    assert!(got == content, "the bytes read are the file's");
    let bad = layer.stats().bad_chunks.load(Ordering::SeqCst);
    assert_eq!(bad, u64::from(FETCH_ATTEMPTS - 1));
}

/// An in-memory blob whose reads, once `armed`, wait for a permit.
struct Gated {
    data: Bytes,
    armed: std::sync::atomic::AtomicBool,
    reads: AtomicU32,
    gate: tokio::sync::Semaphore,
    /// The handle of the work that made the last read (see `urgency`).
    urgency: std::sync::Mutex<Option<Urgency>>,
}

#[async_trait::async_trait]
impl BlobSource for Gated {
    async fn read_range(&self, range: Range<u64>, _: Purpose) -> io::Result<Bytes> {
        if self.armed.load(Ordering::SeqCst) {
            *self.urgency.lock().unwrap() = Urgency::current();
            self.reads.fetch_add(1, Ordering::SeqCst);
            self.gate
                .acquire()
                .await
                .map_err(io::Error::other)?
                .forget();
        }
        Ok(self.data.slice(range.start as usize..range.end as usize))
    }

    fn size(&self) -> u64 {
        self.data.len() as u64
    }
}

#[tokio::test]
async fn an_on_demand_read_joins_the_window_fetching_its_chunk() {
    let content = noise(100_000);
    let (blob, _) = layer_blob(&content);
    let source = Arc::new(Gated {
        data: blob.into(),
        armed: Default::default(),
        reads: AtomicU32::new(0),
        gate: tokio::sync::Semaphore::new(0),
        urgency: Default::default(),
    });
    let cache = Arc::new(ChunkCache::new(&ChunkCacheConfig::default(), None));
    let opts = OpenOptions::default();
    let layer = Arc::new(
        LayerReader::open(source.clone(), cache, &opts)
            .await
            .unwrap(),
    );
    let ino = layer.index().lookup_path("file").unwrap();
    source.armed.store(true, Ordering::SeqCst);
    let size = layer.blob_size();
    let window = tokio::spawn({
        let layer = layer.clone();
        async move { layer.cache_range(0..size, Purpose::Background).await }
    });
    while source.reads.load(Ordering::SeqCst) == 0 {
        tokio::task::yield_now().await;
    }
    let window_urgency = source.urgency.lock().unwrap().clone();
    let window_urgency = window_urgency.expect("the window's request runs under a handle");
    assert!(
        !window_urgency.is_raised(),
        "nobody waits for the window yet"
    );
    let reader = tokio::spawn({
        let layer = layer.clone();
        async move { layer.read(ino, 0, 100).await }
    });
    // The reader raises the background window it waits for, whose request
    // is still in flight: queued work of that window goes ahead of other
    // background work from now on, and its decoding leaves SCHED_IDLE.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !window_urgency.is_raised() {
        assert!(
            std::time::Instant::now() < deadline,
            "the reader did not raise the window"
        );
        tokio::task::yield_now().await;
    }
    assert_eq!(source.reads.load(Ordering::SeqCst), 1, "fetched twice");
    source.gate.add_permits(10);
    assert_eq!(reader.await.unwrap().unwrap(), &content[..100]);
    window.await.unwrap().unwrap();
    assert_eq!(source.reads.load(Ordering::SeqCst), 1, "fetched twice");
}

#[tokio::test]
async fn streamed_windows_cache_every_file_with_one_request_each() {
    let files: Vec<Vec<u8>> = (0..12u32).map(|i| noise(30_000 + i * 1000)).collect();
    let (blob, toc_digest) = files_blob(&files, |i| format!("f{i}"));
    let opts = OpenOptions {
        expected_toc_digest: Some(toc_digest),
        ..OpenOptions::default()
    };
    let cache = Arc::new(ChunkCache::new(&ChunkCacheConfig::default(), None));
    let source = flaky(blob, 0);
    let layer = LayerReader::open(source.clone(), cache, &opts)
        .await
        .unwrap();
    let whole = layer.stream_windows(u64::MAX);
    assert_eq!(whole.len(), 1, "{whole:?}");
    // About a fifth of the data per window: two or three files each.
    let windows = layer.stream_windows((whole[0].end - whole[0].start) / 5);
    assert!((5..=7).contains(&windows.len()), "{windows:?}");
    assert!(windows.windows(2).all(|w| w[0].end <= w[1].start));
    let f3 = layer.index().lookup_path("f3").unwrap();
    layer.read(f3, 0, 1).await.unwrap();
    let before = source.reads.load(Ordering::SeqCst);
    let mut cached = 0;
    for w in &windows {
        cached += layer
            .cache_range(w.clone(), Purpose::Background)
            .await
            .unwrap();
    }
    let reads = source.reads.load(Ordering::SeqCst) - before;
    assert!(reads as usize <= windows.len(), "{reads} reads");
    assert!(cached >= files.len() - 1, "{cached} chunks cached");
    // Everything is cached now: reading every file asks nothing more.
    let before = source.reads.load(Ordering::SeqCst);
    for (i, content) in files.iter().enumerate() {
        let ino = layer.index().lookup_path(&format!("f{i}")).unwrap();
        assert!(layer.read(ino, 0, 1 << 20).await.unwrap() == *content);
    }
    assert_eq!(source.reads.load(Ordering::SeqCst), before);
    // A second pass finds nothing left to fetch.
    for w in &windows {
        assert_eq!(
            layer
                .cache_range(w.clone(), Purpose::Background)
                .await
                .unwrap(),
            0
        );
    }
    assert_eq!(source.reads.load(Ordering::SeqCst), before);
}

#[tokio::test]
async fn blob_order_lists_each_data_chunk_once_in_blob_order() {
    let mut b = tar::Builder::new(Vec::new());
    for (name, len) in [("b", 300_000u32), ("a", 10), ("empty", 0)] {
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_size(u64::from(len));
        b.append_data(&mut h, name, &noise(len)[..]).unwrap();
    }
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Link);
    h.set_mode(0o644);
    h.set_size(0);
    b.append_link(&mut h, "link", "b").unwrap();
    let tar = b.into_inner().unwrap();
    let mut blob = Vec::new();
    let opts = WriterOptions {
        chunk_size: 100_000,
        ..WriterOptions::default()
    };
    let made = convert(&tar[..], &mut blob, &opts).unwrap();
    let open = OpenOptions {
        expected_toc_digest: Some(made.toc_digest),
        ..OpenOptions::default()
    };
    let cache = Arc::new(ChunkCache::new(&ChunkCacheConfig::default(), None));
    let layer = LayerReader::open(flaky(blob, 0), cache, &open)
        .await
        .unwrap();
    let index = layer.index();
    let order = layer.blob_order();
    let listed: Vec<(Ino, Chunk)> = order.iter_from(index, 0).collect();
    // The same as sorting every file's chunks, as the code before did.
    let mut all: Vec<(Ino, Chunk)> = (1..=index.len() as Ino)
        .flat_map(|ino| index.chunks(ino).into_iter().map(move |c| (ino, c)))
        .filter(|(_, c)| !c.is_zeros())
        .collect();
    all.sort_by_key(|(ino, c)| (c.compressed_range().start, *ino));
    all.dedup_by_key(|(_, c)| c.compressed_range().start);
    let key = |v: &[(Ino, Chunk)]| -> Vec<(Ino, u64, u64)> {
        v.iter()
            .map(|(i, c)| (*i, c.chunk_offset, c.compressed_range().start))
            .collect()
    };
    assert_eq!(key(&listed), key(&all));
    assert_eq!(order.len(), listed.len());
    // "b" has several chunks, the hard link to it adds none.
    let (b, link) = (
        index.lookup_path("b").unwrap(),
        index.lookup_path("link").unwrap(),
    );
    let of_b = listed.iter().filter(|(i, _)| *i == b || *i == link).count();
    assert_eq!(of_b, index.chunk_count(b));
    assert!(of_b >= 3, "{of_b}");
    let second = listed[1].1.compressed_range().start;
    assert_eq!(order.first_from(index, second), 1);
    assert_eq!(order.first_from(index, second + 1), 2);
    assert!(order.heap_bytes() <= 8 * listed.len());
}

#[tokio::test]
async fn a_blob_that_never_verifies_fails_after_the_last_attempt() {
    let content = noise(50_000);
    let (blob, toc) = layer_blob(&content);
    let opts = OpenOptions {
        expected_toc_digest: Some(toc),
        ..OpenOptions::default()
    };
    let cache = Arc::new(ChunkCache::new(&ChunkCacheConfig::default(), None));
    let always = flaky(blob.clone(), u32::MAX);
    let err = LayerReader::open(always.clone(), cache.clone(), &opts)
        .await
        .unwrap_err();
    assert!(matches!(err, LayerError::Format(_)), "{err}");
    assert!(always.reads.load(Ordering::SeqCst) <= 2 * FETCH_ATTEMPTS);

    let source = flaky(blob, 0);
    let layer = LayerReader::open(source.clone(), cache, &opts)
        .await
        .unwrap();
    let ino = layer.index().lookup_path("file").unwrap();
    source.corrupt.store(u32::MAX, Ordering::SeqCst);
    let before = source.reads.load(Ordering::SeqCst);
    let err = layer.read(ino, 0, 10).await.unwrap_err();
    assert!(matches!(err, LayerError::Shared(_)), "{err}");
    assert_eq!(source.reads.load(Ordering::SeqCst) - before, FETCH_ATTEMPTS);
}

#[tokio::test]
async fn the_async_open_refuses_what_the_opener_refuses_and_forgets_what_it_read() {
    let content = noise(10_000);
    let (blob, toc) = layer_blob(&content);
    let cache = Arc::new(ChunkCache::new(&ChunkCacheConfig::default(), None));
    let opts = OpenOptions {
        expected_toc_digest: Some(Digest::of(b"x")),
        ..OpenOptions::default()
    };
    let source = flaky(blob.clone(), 0);
    let err = LayerReader::open(source.clone(), cache.clone(), &opts)
        .await
        .unwrap_err();
    match &err {
        LayerError::Format(estargz::Error::TocDigestMismatch { expected, actual }) => {
            assert_eq!(*expected, Digest::of(b"x").to_string());
            assert_eq!(*actual, toc.to_string());
        }
        other => panic!("{other}"),
    }
    // Every failed attempt but the last forgets the tail and the TOC it read.
    let size = blob.len() as u64;
    let tail = size - estargz::footer::MAX_FOOTER_SIZE as u64..size;
    let footer = estargz::read_footer(&blob).unwrap();
    let forgotten = source.forgotten.lock().unwrap().clone();
    assert_eq!(forgotten.len(), 2 * (FETCH_ATTEMPTS as usize - 1));
    for pair in forgotten.chunks(2) {
        assert_eq!(pair, [tail.clone(), footer.toc_range()]);
    }

    // A footer pointing at a TOC past the cap costs no TOC read.
    let source = Arc::new(Sparse {
        head: Vec::new(),
        tail_at: 3 << 30,
        tail: estargz::footer::estargz_footer(100).to_vec(),
        longest: AtomicU64::new(0),
    });
    let err = LayerReader::open(source.clone(), cache, &OpenOptions::default())
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            LayerError::Format(estargz::Error::TocTooLarge {
                cap: estargz::toc::DEFAULT_MAX_TOC_SIZE
            })
        ),
        "{err}"
    );
    let longest = source.longest.load(Ordering::SeqCst);
    assert_eq!(longest, estargz::footer::MAX_FOOTER_SIZE as u64);
}

/// Many small files, each a chunk of a few KiB, in one blob.
fn small_files_blob(files: u32) -> (Vec<Vec<u8>>, Vec<u8>, Digest) {
    let contents: Vec<Vec<u8>> = (0..files).map(|i| noise(3000 + i * 100)).collect();
    let (blob, toc_digest) = files_blob(&contents, |i| format!("f{i:02}"));
    (contents, blob, toc_digest)
}

/// An eStargz blob (default writer options) of regular files `contents`,
/// named by `name` from their index, and its TOC digest.
fn files_blob(contents: &[Vec<u8>], name: impl Fn(usize) -> String) -> (Vec<u8>, Digest) {
    let mut b = tar::Builder::new(Vec::new());
    for (i, content) in contents.iter().enumerate() {
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_size(content.len() as u64);
        b.append_data(&mut h, name(i), &content[..]).unwrap();
    }
    let mut blob = Vec::new();
    let made = convert(
        &b.into_inner().unwrap()[..],
        &mut blob,
        &WriterOptions::default(),
    )
    .unwrap();
    (blob, made.toc_digest)
}

#[tokio::test]
async fn a_sequential_reader_finds_the_next_files_in_flight_with_the_first_read() {
    // The amplified range of the first read holds the next files; reading
    // them right after (before the decode of those followers has had a
    // chance to run, as when many layers are read at once) joins that
    // decode instead of fetching each file's range again.
    let (contents, blob, toc_digest) = small_files_blob(12);
    let opts = OpenOptions {
        expected_toc_digest: Some(toc_digest),
        ..OpenOptions::default()
    };
    let cache = Arc::new(ChunkCache::new(&ChunkCacheConfig::default(), None));
    let source = flaky(blob, 0);
    let mut layer = LayerReader::open(source.clone(), cache, &opts)
        .await
        .unwrap();
    layer.set_read_amplification(256 << 10);
    let before = source.reads.load(Ordering::SeqCst);
    for (i, content) in contents.iter().enumerate() {
        let ino = layer.index().lookup_path(&format!("f{i:02}")).unwrap();
        assert!(
            layer.read(ino, 0, 1 << 20).await.unwrap() == *content,
            "f{i:02}"
        );
    }
    assert_eq!(
        source.reads.load(Ordering::SeqCst) - before,
        1,
        "the followers were fetched again"
    );
}
