//! When Mounts may take a layer's blob as usable without waiting for a
//! check of its registry (a real `docker-registry` on 127.0.0.1).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use rstargz_fs::registry::Registry;
use rstargz_fs::registry::labels::{STARGZ_DIGEST, STARGZ_REFERENCE, layer_source_from_labels};
use rstargz_test_support::registry::TestRegistry;
use rstargz_test_support::{TestLayer, push_image, test_config, wait_until_async};

use super::*;

/// Stale at once: every answer is older than this.
const STALE: Duration = Duration::from_nanos(1);

async fn refreshed(blob: &RegistryBlob) {
    let done = wait_until_async(Duration::from_secs(30), || {
        !blob.refreshing.load(Ordering::Acquire)
    })
    .await;
    assert!(done, "the background check never ended");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_that_answered_is_usable_now_until_a_check_fails() {
    let mut registry = TestRegistry::start().await;
    let reference = registry.reference("source/usable");
    let layer = TestLayer::golden("tree", "gzip");
    let digests = push_image(&reference, &[layer]).await;
    let labels: HashMap<String, String> = [
        (STARGZ_REFERENCE.to_string(), reference.clone()),
        (STARGZ_DIGEST.to_string(), digests[0].to_string()),
    ]
    .into();
    let source = layer_source_from_labels(&labels).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let client = Registry::new(test_config(&dir.path().join("none.json"))).unwrap();
    let activity = Arc::new(Activity::default());

    // Never answered (restored while its registry is down): wait for a check.
    let lazy = Arc::new(RegistryBlob::lazy(
        client.clone(),
        source.clone(),
        1,
        activity.clone(),
    ));
    assert!(!lazy.usable_now(Duration::from_secs(60)));

    let blob = Arc::new(
        RegistryBlob::connect(client, source, activity)
            .await
            .unwrap(),
    );
    assert!(blob.usable_now(Duration::from_secs(60)));
    // `check_always`: never without a check.
    assert!(!blob.usable_now(Duration::ZERO));
    // Stale but fine so far: usable now, checked in the background.
    assert!(blob.usable_now(STALE));
    refreshed(&blob).await;
    assert!(!blob.check_failed.load(Ordering::Relaxed));

    // The registry goes away: the first caller still goes ahead and its
    // background check fails; from then on callers wait for a check.
    registry.stop();
    assert!(blob.usable_now(STALE));
    refreshed(&blob).await;
    assert!(blob.check_failed.load(Ordering::Relaxed));
    assert!(!blob.usable_now(STALE));
    assert!(blob.check(STALE).await.is_err());

    // Back: a check succeeds and clears the failure.
    registry.restart().await;
    blob.check(STALE).await.unwrap();
    assert!(blob.usable_now(STALE));
    refreshed(&blob).await;
}
