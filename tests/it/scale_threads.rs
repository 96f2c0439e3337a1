//! Threads of the daemon per mounted layer: they do not grow with the
//! layers it mounts (one FUSE session serves them all). The measurement at
//! N = 10, 100, 1,000 with the Go reference beside it is
//! `rstargz-bench scale-layers` (`scripts/bench-scale.sh layers`), whose
//! thread census this test shares.

#![allow(clippy::unwrap_used)]

use crate::common::Daemon;
use rstargz_bench::remote_layer::{self, Snapshotter};
use rstargz_bench::scale::layers::small_layer;
use rstargz_bench::scale::procstat::{Sampler, census, fuser_threads};
use rstargz_test_support::registry::TestRegistry;
use rstargz_test_support::{TestLayer, push_image};

/// Issue 18's bound on the daemon's threads at 1,000 layers, bursts included.
const MAX_THREADS: usize = 64;

/// Mounting 10 layers, then 90 more, leaves the daemon the same FUSE
/// threads (before the shared session: 2 more per layer), and its peak
/// thread count through both stays within issue 18's bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_threads_do_not_grow_with_mounted_layers() {
    let registry = TestRegistry::start().await;
    let (few, many) = (10, 90);
    let mut images = Vec::new();
    for (i, range) in [0..few, few..few + many].into_iter().enumerate() {
        let made: Vec<TestLayer> = range.map(|s| small_layer(s, 4).unwrap()).collect();
        let reference = registry.reference(&format!("flat/image{i}"));
        push_image(&reference, &made).await;
        images.push(reference);
    }
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path());
    let pid = daemon.pid();
    let sampler = Sampler::start(pid);
    let mut client = Snapshotter::connect(&daemon.socket).await.unwrap();
    let mut mounted = Vec::new();
    let mut censuses = Vec::new();
    for (i, reference) in images.iter().enumerate() {
        let image = remote_layer::resolve(reference).await.unwrap();
        let at = dir.path().join(format!("root{i}"));
        mounted.push(
            client
                .mount(&image, &format!("flat{i}"), &at)
                .await
                .unwrap(),
        );
        censuses.push(census(pid));
    }
    let peak = sampler.finish();
    // Layers of both images are served, the first and the last alike.
    for (m, seed) in [
        (&mounted[0], 0),
        (&mounted[1], few),
        (&mounted[1], few + many - 1),
    ] {
        let file = m.dir.join(format!("l{seed}/f3"));
        assert!(
            !std::fs::read(&file).unwrap().is_empty(),
            "{}",
            file.display()
        );
    }
    let (at_few, at_many) = (&censuses[0], &censuses[1]);
    assert!(fuser_threads(at_few) > 0, "{at_few:?}");
    assert_eq!(
        fuser_threads(at_many),
        fuser_threads(at_few),
        "FUSE threads at {few} layers: {at_few:?}; at {}: {at_many:?}",
        few + many
    );
    assert!(
        peak.total <= MAX_THREADS,
        "peak of {} threads: {:?}",
        peak.total,
        peak.kinds
    );
    for m in &mounted {
        client.unmount(m).await.unwrap();
    }
    daemon.stop();
}
