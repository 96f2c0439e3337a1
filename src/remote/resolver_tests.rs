//! Unit tests of the layer resolver: decline reasons of layers that do not
//! open, and opening a saved layer without its registry (restore). Blobs
//! are in memory; the registry is a closed port.

#![allow(clippy::unwrap_used)]

use std::io;
use std::ops::Range;
use std::path::Path;

use bytes::Bytes;
use rstargz_fs::cache::ChunkCacheConfig;
use rstargz_fs::estargz::{self, Verify};
use rstargz_fs::layer::Purpose;
use rstargz_fs::registry::labels::{STARGZ_DIGEST, STARGZ_REFERENCE};
use rstargz_snapshotter::snapshot::Labels;
use rstargz_test_support::{TestLayer, closed_port, test_config};

use super::*;
use crate::decline::source_of;

/// A blob in memory.
struct MemBlob(Bytes);

#[async_trait::async_trait]
impl BlobSource for MemBlob {
    async fn read_range(&self, range: Range<u64>, _: Purpose) -> io::Result<Bytes> {
        let (s, e) = (range.start as usize, range.end as usize);
        self.0
            .get(s..e)
            .map(|_| self.0.slice(s..e))
            .ok_or_else(|| io::Error::other("out of range"))
    }

    fn size(&self) -> u64 {
        self.0.len() as u64
    }
}

/// A blob whose every read fails, like an unreachable registry.
struct DownBlob(u64);

#[async_trait::async_trait]
impl BlobSource for DownBlob {
    async fn read_range(&self, _: Range<u64>, _: Purpose) -> io::Result<Bytes> {
        Err(io::Error::new(
            io::ErrorKind::ConnectionRefused,
            "registry down",
        ))
    }

    fn size(&self) -> u64 {
        self.0
    }
}

fn cache() -> Arc<ChunkCache> {
    Arc::new(ChunkCache::new(
        &ChunkCacheConfig {
            memory_bytes: 1 << 20,
            ..ChunkCacheConfig::default()
        },
        None,
    ))
}

fn golden() -> (Bytes, estargz::Digest) {
    let t = TestLayer::golden("tree", "gzip");
    let toc = estargz::Digest::parse(&t.toc_digest.unwrap()).unwrap();
    (Bytes::from(t.blob), toc)
}

fn expecting(toc: estargz::Digest) -> OpenOptions {
    OpenOptions {
        expected_toc_digest: Some(toc),
        ..OpenOptions::default()
    }
}

async fn reason_of(blob: Arc<dyn BlobSource>, opts: &OpenOptions) -> DeclineReason {
    let dir = tempfile::tempdir().unwrap();
    let wait = Duration::from_millis(10);
    match open_stack(blob, dir.path().join("s"), wait, cache(), opts).await {
        Ok(_) => panic!("the layer opened"),
        Err(e) => ResolveError::Open(e).reason(),
    }
}

#[tokio::test]
async fn layers_that_do_not_open_are_declined_for_the_right_reason() {
    let (blob, toc) = golden();
    let garbage = Arc::new(MemBlob(Bytes::from(vec![7u8; 4096])));
    assert_eq!(
        reason_of(garbage, &OpenOptions::default()).await,
        DeclineReason::NotEstargz
    );
    let down = Arc::new(DownBlob(blob.len() as u64));
    assert_eq!(
        reason_of(down, &expecting(toc)).await,
        DeclineReason::RegistryUnreachable
    );
    let other = estargz::Digest::parse(&format!("sha256:{}", "0".repeat(64))).unwrap();
    assert_eq!(
        reason_of(Arc::new(MemBlob(blob)), &expecting(other)).await,
        DeclineReason::TocDigestMismatch
    );
}

/// A resolver whose registry is a closed port, with its store in `root`.
fn offline_resolver(root: &Path) -> (LayerResolver, LayerSource) {
    let registry = Registry::new(test_config(&root.join("no-docker-config.json"))).unwrap();
    let store = LayerStore::new(root.join("layers"));
    let resolver = LayerResolver::new(
        registry,
        cache(),
        store,
        Arc::default(),
        Duration::from_millis(10),
    );
    let labels: Labels = [
        (
            STARGZ_REFERENCE,
            format!("127.0.0.1:{}/img:tag", closed_port()),
        ),
        (STARGZ_DIGEST, format!("sha256:{}", "3".repeat(64))),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    (resolver, source_of(&labels).unwrap())
}

#[tokio::test]
async fn a_saved_layer_opens_again_without_its_registry() {
    let dir = tempfile::tempdir().unwrap();
    let (resolver, source) = offline_resolver(dir.path());
    let (blob, toc) = golden();
    let state = resolver.store().state_dir(&source.layer.digest);
    let size = blob.len() as u64;

    // First mount: the footer and TOC reads are saved, then the size.
    let (_, first) = open_stack(
        Arc::new(MemBlob(blob)),
        state.clone(),
        Duration::from_millis(10),
        cache(),
        &expecting(toc),
    )
    .await
    .unwrap();
    resolver.remember(&source, &first).await;
    assert_eq!(
        resolver.store().saved_meta(&state).await.unwrap().blob_size,
        size
    );

    // Restore: the registry is down, the saved copies suffice.
    let restored = resolver
        .resolve(&source, &expecting(toc), Connect::Lazily)
        .await
        .unwrap();
    assert_eq!(restored.layer.toc_digest(), first.toc_digest());
    assert_eq!(restored.blob.size(), size);

    // Warm-up always probes, so it fails while the registry is down.
    let probed = resolver
        .resolve(&source, &expecting(toc), Connect::Now)
        .await;
    let e = probed.err().unwrap();
    assert!(matches!(e, ResolveError::Connect(_)), "{e}");
    assert_eq!(e.reason(), DeclineReason::RegistryUnreachable);
    assert_eq!(Declined::from(e).reason, DeclineReason::RegistryUnreachable);
}

#[tokio::test]
async fn a_layer_without_saved_size_is_probed_even_on_restore() {
    let dir = tempfile::tempdir().unwrap();
    let (resolver, source) = offline_resolver(dir.path());
    let state = resolver.store().state_dir(&source.layer.digest);
    std::fs::create_dir_all(&state).unwrap();
    std::fs::write(state.join("meta.json"), b"not json").unwrap();
    let opts = OpenOptions {
        verify: Verify::Disabled,
        ..OpenOptions::default()
    };
    let e = resolver
        .resolve(&source, &opts, Connect::Lazily)
        .await
        .err()
        .unwrap();
    assert!(matches!(e, ResolveError::Connect(_)), "{e}");
}
