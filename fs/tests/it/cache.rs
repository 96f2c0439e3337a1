//! The chunk cache and layer reader without FUSE: single-flight under
//! concurrent tasks, and a cached entry whose size disagrees with the TOC
//! (a hostile TOC giving one digest two sizes) is an error, never a panic.
#![allow(clippy::unwrap_used)]

use crate::common;
use crate::fuse_common;

use std::sync::Arc;

use bytes::Bytes;
use common::*;
use fuse_common::*;
use rstargz_fs::cache::ChunkKey;
use rstargz_fs::layer::{LayerError, Purpose};

#[test]
fn concurrent_tasks_share_one_fetch() {
    let rt = runtime();
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let source = TestSource::new(blob("sizes", "zstd"), Behaviour::Gate(gate.clone()));
    let layer = open_layer(&rt, source.clone(), memory_cache());
    let (ino, _) = biggest_file(layer.index());
    let chunk = layer.index().chunks(ino)[0].clone();
    let tasks: Vec<_> = (0..16u64)
        .map(|i| {
            let layer = layer.clone();
            rt.spawn(async move { layer.read(ino, i * 1000, 1000).await })
        })
        .collect();
    assert!(wait_until(std::time::Duration::from_secs(20), || {
        source.reads() == 1
    }));
    gate.add_permits(100);
    let whole = rt
        .block_on(layer.read(ino, 0, u64::from(chunk.size)))
        .unwrap();
    for (i, t) in tasks.into_iter().enumerate() {
        let got = rt.block_on(t).unwrap().unwrap();
        assert_eq!(got, whole[i * 1000..i * 1000 + 1000]);
    }
    assert_eq!(source.reads(), 1);
    assert_eq!(
        layer
            .cache()
            .stats()
            .fetches
            .load(std::sync::atomic::Ordering::SeqCst),
        1
    );
}

#[test]
fn cached_chunk_of_the_wrong_size_is_an_error_not_a_panic() {
    let rt = runtime();
    let cache = memory_cache();
    let layer = open_layer(
        &rt,
        TestSource::new(blob("sizes", "gzip"), Behaviour::Serve),
        cache.clone(),
    );
    let (ino, _) = biggest_file(layer.index());
    let chunk = layer.index().chunks(ino)[0].clone();
    let key = ChunkKey::verified(chunk.digest().unwrap());
    rt.block_on(cache.get_or_fetch(key, Purpose::OnDemand, async {
        Ok::<_, LayerError>(Bytes::from_static(b"short"))
    }))
    .unwrap();
    assert!(layer.read_cached(ino, 0, 4096).is_none());
    let err = rt.block_on(layer.read(ino, 0, 4096)).unwrap_err();
    assert!(matches!(err, LayerError::ChunkSize { .. }), "{err}");
}
