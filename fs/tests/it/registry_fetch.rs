//! Range reads against a real docker-registry on 127.0.0.1, directly and
//! through the fault proxy: content, request counts, multi-range and its
//! fallbacks, the never-download-a-whole-blob rule, and redirects.
#![allow(clippy::unwrap_used, clippy::single_range_in_vec_init)]

use crate::common;

use std::ops::Range;
use std::time::Duration;

use bytes::Bytes;
use common::proxy::{Fault, FaultMode, FaultPlan, FaultProxy};
use common::registry::TestRegistry;
use common::{test_blob, test_config, wait_until_async};
use rstargz_fs::registry::{
    BlobFetcher, OciDigest, Purpose, Reference, Registry, RegistryConfig, RegistryError, labels,
    layer_source_from_labels,
};

struct Fixture {
    _dir: tempfile::TempDir,
    registry: Registry,
    blob: Vec<u8>,
    digest: OciDigest,
}

/// Pushes a `len`-byte blob to `upstream` and returns a client for it.
async fn fixture(upstream: &TestRegistry, len: usize) -> Fixture {
    fixture_with(upstream, len, |_| {}).await
}

/// Like [`fixture`], with the client's config adjusted by `tweak`.
async fn fixture_with(
    upstream: &TestRegistry,
    len: usize,
    tweak: impl FnOnce(&mut RegistryConfig),
) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(&dir.path().join("config.json"));
    tweak(&mut config);
    let registry = Registry::new(config).unwrap();
    let blob = test_blob(len, len as u64);
    let digest = registry
        .push_blob(
            &Reference::parse(&upstream.reference("test/blob")).unwrap(),
            Bytes::from(blob.clone()),
        )
        .await
        .unwrap();
    Fixture {
        _dir: dir,
        registry,
        blob,
        digest,
    }
}

async fn open(f: &Fixture, host: &str, size: Option<u64>) -> BlobFetcher {
    let reference = Reference::parse(&format!("{host}/test/blob:latest")).unwrap();
    f.registry
        .open_blob(&reference, &f.digest, size)
        .await
        .unwrap()
}

fn assert_content(f: &Fixture, got: &[(Range<u64>, Bytes)], want: &[Range<u64>]) {
    assert_eq!(got.len(), want.len());
    for ((r, bytes), w) in got.iter().zip(want) {
        assert_eq!(r, w);
        assert_eq!(
            &bytes[..],
            &f.blob[r.start as usize..r.end as usize],
            "range {r:?}"
        );
    }
}

fn range_requests(proxy: &FaultProxy) -> Vec<String> {
    proxy.seen().into_iter().filter_map(|s| s.range).collect()
}

#[tokio::test]
async fn push_then_probe_learns_size_and_reads_single_range() {
    let reg = TestRegistry::start().await;
    let f = fixture(&reg, 300_000).await;
    let fetcher = open(&f, &reg.host(), None).await;
    assert_eq!(fetcher.size(), Some(300_000));
    let want = [1000..5000];
    let got = fetcher
        .fetch_ranges(&want, Purpose::OnDemand)
        .await
        .unwrap();
    assert_content(&f, &got, &want);
    let whole = fetcher
        .fetch_ranges(&[0..300_000], Purpose::Background)
        .await
        .unwrap();
    assert_content(&f, &whole, &[0..300_000]);
    let m = f.registry.metrics();
    assert!(m.bytes[Purpose::Background.priority()] >= 300_000);
    assert_eq!(m.full_body_aborts, 0);
}

#[tokio::test]
async fn neighbours_merge_into_one_request_and_distant_ranges_use_multipart() {
    let reg = TestRegistry::start().await;
    let proxy = FaultProxy::start(reg.addr).await;
    let f = fixture(&reg, 1_000_000).await;
    let fetcher = open(&f, &proxy.host(), Some(1_000_000)).await;
    proxy.clear_seen();

    // Close neighbours (gap < 64 KiB) become one plain range.
    let near = [0..100, 150..200, 10_000..10_010];
    let got = fetcher
        .fetch_ranges(&near, Purpose::OnDemand)
        .await
        .unwrap();
    assert_content(&f, &got, &near);
    assert_eq!(range_requests(&proxy), ["bytes=0-10009"]);

    // Distant ranges: docker-registry answers one multipart/byteranges.
    proxy.clear_seen();
    let far = [900_000..900_100, 0..10, 400_000..400_500];
    let got = fetcher.fetch_ranges(&far, Purpose::OnDemand).await.unwrap();
    assert_content(&f, &got, &far);
    assert_eq!(
        range_requests(&proxy),
        ["bytes=0-9,400000-400499,900000-900099"]
    );
    assert!(!fetcher.is_single_range_mode());
}

#[tokio::test]
async fn range_outside_blob_is_a_typed_error() {
    let reg = TestRegistry::start().await;
    let f = fixture(&reg, 1000).await;
    let fetcher = open(&f, &reg.host(), None).await;
    let err = fetcher
        .fetch_ranges(&[990..1001], Purpose::OnDemand)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            RegistryError::RangeNotSatisfiable {
                size: Some(1000),
                ..
            }
        ),
        "{err}"
    );
    // With an unknown (wrong) descriptor size the server's 416 is reported the same way.
    let fetcher = open(&f, &reg.host(), Some(5000)).await;
    let err = fetcher
        .fetch_ranges(&[2000..2001], Purpose::OnDemand)
        .await
        .unwrap_err();
    assert!(
        matches!(err, RegistryError::RangeNotSatisfiable { .. }),
        "{err}"
    );
}

#[tokio::test]
async fn missing_blob_is_not_found() {
    let reg = TestRegistry::start().await;
    let f = fixture(&reg, 10).await;
    let reference = Reference::parse(&reg.reference("test/blob")).unwrap();
    let err = f
        .registry
        .open_blob(&reference, &OciDigest::sha256_of(b"absent"), None)
        .await
        .unwrap_err();
    assert!(matches!(err, RegistryError::NotFound { .. }), "{err}");
}

#[tokio::test]
async fn multi_range_answered_with_whole_blob_falls_back_to_single_ranges() {
    let reg = TestRegistry::start().await;
    let proxy = FaultProxy::start(reg.addr).await;
    let f = fixture(&reg, 4 << 20).await;
    let fetcher = open(&f, &proxy.host(), None).await;
    proxy.set_fault(Fault::IgnoreMultiRange);
    proxy.clear_seen();

    let far = [3_000_000..3_000_100, 0..10, 1_000_000..1_000_500];
    let got = fetcher.fetch_ranges(&far, Purpose::OnDemand).await.unwrap();
    assert_content(&f, &got, &far);
    assert!(fetcher.is_single_range_mode());
    let mut seen = range_requests(&proxy);
    assert_eq!(seen.len(), 4, "{seen:?}");
    assert!(
        seen.remove(0).contains(','),
        "the multi-range attempt comes first"
    );
    seen.sort();
    assert_eq!(
        seen,
        [
            "bytes=0-9",
            "bytes=1000000-1000499",
            "bytes=3000000-3000099"
        ]
    );
    assert_eq!(f.registry.metrics().single_range_fallbacks, 1);

    // Later reads go straight to single ranges.
    proxy.clear_seen();
    let again = [5..6, 2_000_000..2_000_001];
    fetcher
        .fetch_ranges(&again, Purpose::OnDemand)
        .await
        .unwrap();
    assert!(range_requests(&proxy).iter().all(|r| !r.contains(',')));
    assert_eq!(range_requests(&proxy).len(), 2);
}

#[tokio::test]
async fn registry_ignoring_range_never_downloads_the_whole_blob() {
    const SIZE: usize = 16 << 20;
    let reg = TestRegistry::start().await;
    let proxy = FaultProxy::start(reg.addr).await;
    let f = fixture(&reg, SIZE).await;
    let fetcher = open(&f, &proxy.host(), Some(SIZE as u64)).await;
    proxy.set_fault(Fault::IgnoreRange);
    let before = proxy.bytes_sent();
    let err = fetcher
        .fetch_ranges(&[100..200], Purpose::OnDemand)
        .await
        .unwrap_err();
    assert!(
        matches!(err, RegistryError::RangeUnsupported { .. }),
        "{err}"
    );
    assert!(wait_until_async(Duration::from_secs(20), || proxy.active_connections() == 0).await);
    let sent = proxy.bytes_sent() - before;
    eprintln!("proxy sent {sent} bytes before the client hung up");
    assert!(
        sent < (SIZE / 4) as u64,
        "proxy sent {sent} bytes of a {SIZE}-byte blob"
    );
    assert!(f.registry.metrics().bytes.iter().sum::<u64>() < (SIZE / 4) as u64);

    // Opening a blob on such a registry fails at the probe already.
    let reference = Reference::parse(&format!("{}/test/blob", proxy.host())).unwrap();
    let err = f
        .registry
        .open_blob(&reference, &f.digest, None)
        .await
        .unwrap_err();
    assert!(
        matches!(err, RegistryError::RangeUnsupported { .. }),
        "{err}"
    );
}

#[tokio::test]
async fn redirect_is_cached_and_re_resolved_when_it_expires() {
    let reg = TestRegistry::start().await;
    let proxy = FaultProxy::start(reg.addr).await;
    let f = fixture(&reg, 200_000).await;
    proxy.set_fault(Fault::Redirect);
    let fetcher = open(&f, &proxy.host(), None).await;
    assert_eq!(fetcher.size(), Some(200_000));

    proxy.clear_seen();
    let got = fetcher
        .fetch_ranges(&[10..20], Purpose::OnDemand)
        .await
        .unwrap();
    assert_content(&f, &got, &[10..20]);
    let paths: Vec<String> = proxy.seen().into_iter().map(|s| s.path).collect();
    assert_eq!(
        paths.len(),
        1,
        "cached redirect target used directly: {paths:?}"
    );
    assert!(paths[0].starts_with("/redirected/0/"));

    proxy.expire_redirects();
    proxy.clear_seen();
    let got = fetcher
        .fetch_ranges(&[100..200], Purpose::OnDemand)
        .await
        .unwrap();
    assert_content(&f, &got, &[100..200]);
    let paths: Vec<String> = proxy.seen().into_iter().map(|s| s.path).collect();
    assert_eq!(paths.len(), 3, "{paths:?}");
    assert!(
        paths[0].starts_with("/redirected/0/"),
        "expired target tried first"
    );
    assert!(paths[1].starts_with("/v2/"), "then the registry again");
    assert!(paths[2].starts_with("/redirected/1/"));
    assert!(f.registry.metrics().redirects_followed >= 2);

    // Credentials are not sent to the redirect target.
    assert!(
        proxy
            .seen()
            .iter()
            .filter(|s| s.path.starts_with("/redirected"))
            .all(|s| s.authorization.is_none())
    );
}

#[tokio::test]
async fn check_reprobes_and_manifest_round_trip() {
    let reg = TestRegistry::start().await;
    let f = fixture(&reg, 1234).await;
    let fetcher = open(&f, &reg.host(), None).await;
    fetcher.check().await.unwrap();

    let reference = Reference::parse(&reg.reference("test/blob")).unwrap();
    let config = f
        .registry
        .push_blob(&reference, Bytes::from_static(b"{}"))
        .await
        .unwrap();
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config.to_string(), "size": 2},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": f.digest.to_string(), "size": 1234}]
    });
    let body = Bytes::from(serde_json::to_vec(&manifest).unwrap());
    let digest = f
        .registry
        .put_manifest(
            &reference,
            "application/vnd.oci.image.manifest.v1+json",
            body.clone(),
        )
        .await
        .unwrap();
    let got = f.registry.get_manifest(&reference).await.unwrap();
    assert_eq!(got.digest, digest);
    assert_eq!(got.bytes, body);
    assert_eq!(got.media_type, "application/vnd.oci.image.manifest.v1+json");
    assert_eq!(
        f.registry.blob_exists(&reference, &f.digest).await.unwrap(),
        Some(1234)
    );
}

#[tokio::test]
async fn multi_range_rejected_with_400_falls_back_to_single_ranges() {
    let reg = TestRegistry::start().await;
    let proxy = FaultProxy::start(reg.addr).await;
    let f = fixture(&reg, 1 << 20).await;
    let fetcher = open(&f, &proxy.host(), None).await;
    proxy.set_fault(Fault::RejectMultiRange);
    proxy.clear_seen();
    let far = [0..10, 500_000..500_010];
    let got = fetcher.fetch_ranges(&far, Purpose::OnDemand).await.unwrap();
    assert_content(&f, &got, &far);
    assert!(fetcher.is_single_range_mode());
    assert_eq!(range_requests(&proxy).len(), 3);
    assert_eq!(f.registry.metrics().full_body_aborts, 0);
}

#[tokio::test]
async fn transient_errors_are_retried_with_backoff_and_501_is_not() {
    let reg = TestRegistry::start().await;
    let proxy = FaultProxy::start(reg.addr).await;
    let f = fixture(&reg, 10_000).await;
    let fetcher = open(&f, &proxy.host(), None).await;

    proxy.fail_next(503, 2, None);
    let got = fetcher
        .fetch_ranges(&[0..10], Purpose::OnDemand)
        .await
        .unwrap();
    assert_content(&f, &got, &[0..10]);
    assert_eq!(f.registry.metrics().retries, 2);

    proxy.fail_next(429, 1, Some(0));
    fetcher
        .fetch_ranges(&[10..20], Purpose::OnDemand)
        .await
        .unwrap();
    assert_eq!(f.registry.metrics().retries, 3);

    // More failures than retries: the status surfaces, typed.
    proxy.fail_next(500, 10, None);
    let err = fetcher
        .fetch_ranges(&[20..30], Purpose::OnDemand)
        .await
        .unwrap_err();
    assert!(
        matches!(err, RegistryError::Status { status: 500, .. }),
        "{err}"
    );

    proxy.fail_next(501, 1, None);
    let before = f.registry.metrics().retries;
    let err = fetcher
        .fetch_ranges(&[20..30], Purpose::OnDemand)
        .await
        .unwrap_err();
    assert!(
        matches!(err, RegistryError::Status { status: 501, .. }),
        "{err}"
    );
    assert_eq!(f.registry.metrics().retries, before);
}

/// Faults on the first `count` blob requests, then none.
fn first(mode: FaultMode, count: u64) -> Option<FaultPlan> {
    Some(FaultPlan {
        max_faults: Some(count),
        ..FaultPlan::blobs(mode, 1.0)
    })
}

#[tokio::test]
async fn cut_bodies_resets_hangs_and_dated_retry_after_are_retried() {
    let reg = TestRegistry::start().await;
    let proxy = FaultProxy::start(reg.addr).await;
    let f = fixture_with(&reg, 300_000, |c| {
        c.fetch_timeout = Duration::from_millis(500);
    })
    .await;
    let fetcher = open(&f, &proxy.host(), None).await;
    let ranges = [1000..50_000, 200_000..200_010, 250_000..300_000];
    // test_config allows two retries: two faults in a row are hidden.
    for mode in [
        FaultMode::ShortBody,
        FaultMode::Reset,
        FaultMode::Hang,
        FaultMode::Status(503),
    ] {
        for single in [false, true] {
            let want: &[Range<u64>] = if single { &ranges[..1] } else { &ranges };
            proxy.set_plan(first(mode, 2));
            let before = f.registry.metrics().retries;
            let got = fetcher.fetch_ranges(want, Purpose::OnDemand).await.unwrap();
            assert_content(&f, &got, want);
            assert_eq!(proxy.faults_injected(), 2, "{mode:?}");
            assert_eq!(f.registry.metrics().retries, before + 2, "{mode:?}");
        }
    }
    assert!(
        !fetcher.is_single_range_mode(),
        "faults are not a reason to give up multi-range"
    );
    // More cut bodies in a row than retries: the failure surfaces.
    proxy.set_plan(first(FaultMode::ShortBody, 3));
    let err = fetcher
        .fetch_ranges(&ranges[..1], Purpose::OnDemand)
        .await
        .unwrap_err();
    assert!(matches!(err, RegistryError::Unreachable { .. }), "{err}");
    // Opening a blob (the probe) gets the same retries.
    proxy.set_plan(first(FaultMode::ShortBody, 2));
    let reopened = open(&f, &proxy.host(), None).await;
    assert_eq!(reopened.size(), Some(300_000));
}

#[tokio::test]
async fn a_hanging_on_demand_request_is_hedged_long_before_its_timeout() {
    let reg = TestRegistry::start().await;
    let proxy = FaultProxy::start(reg.addr).await;
    let f = fixture_with(&reg, 10_000, |c| {
        c.fetch_timeout = Duration::from_secs(20);
        c.hedge_after_min = Some(Duration::from_millis(50));
    })
    .await;
    let fetcher = open(&f, &proxy.host(), None).await;
    proxy.set_plan(first(FaultMode::Hang, 1));
    let started = std::time::Instant::now();
    let got = fetcher
        .fetch_ranges(&[100..200], Purpose::OnDemand)
        .await
        .unwrap();
    assert_content(&f, &got, &[100..200]);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let m = f.registry.metrics();
    assert_eq!((m.hedges, m.retries), (1, 0));
    // Background reads wait for their answer instead.
    proxy.set_plan(first(FaultMode::Stall(Duration::from_millis(400)), 1));
    fetcher
        .fetch_ranges(&[300..400], Purpose::Background)
        .await
        .unwrap();
    assert_eq!(f.registry.metrics().hedges, 1);
}

#[tokio::test]
async fn stalled_registry_times_out() {
    let reg = TestRegistry::start().await;
    let proxy = FaultProxy::start(reg.addr).await;
    let f = fixture_with(&reg, 10, |c| {
        c.fetch_timeout = Duration::from_millis(300);
        c.backoff.max_retries = 1;
    })
    .await;
    let fetcher = open(&f, &proxy.host(), None).await;
    proxy.set_fault(Fault::Stall);
    let started = std::time::Instant::now();
    let err = fetcher
        .fetch_ranges(&[0..5], Purpose::OnDemand)
        .await
        .unwrap_err();
    assert!(matches!(err, RegistryError::Timeout { .. }), "{err}");
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[tokio::test]
async fn labels_from_prepare_open_the_layer() {
    let reg = TestRegistry::start().await;
    let f = fixture(&reg, 5000).await;
    let labels: std::collections::HashMap<String, String> = [
        (labels::CRI_IMAGE_REF, reg.reference("test/blob")),
        (labels::CRI_LAYER_DIGEST, f.digest.to_string()),
        (labels::CRI_IMAGE_LAYERS, f.digest.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let source = layer_source_from_labels(&labels).unwrap();
    assert!(source.neighbours.is_empty());
    let fetcher = f.registry.open_layer(&source, None).await.unwrap();
    let got = fetcher
        .fetch_ranges(&[4990..5000], Purpose::OnDemand)
        .await
        .unwrap();
    assert_content(&f, &got, &[4990..5000]);
}

#[tokio::test]
async fn large_reads_are_split_into_parallel_bounded_requests() {
    let reg = TestRegistry::start().await;
    let proxy = FaultProxy::start(reg.addr).await;
    let f = fixture_with(&reg, 300_000, |c| c.max_request_bytes = 64 * 1024).await;
    let fetcher = open(&f, &proxy.host(), None).await;
    proxy.clear_seen();
    let want = [1..300_000, 70_000..70_010];
    let got = fetcher
        .fetch_ranges(&want, Purpose::Background)
        .await
        .unwrap();
    for ((r, bytes), w) in got.iter().zip(&want) {
        assert_eq!(r, w);
        assert_eq!(&bytes[..], &f.blob[w.start as usize..w.end as usize]);
    }
    let mut seen = range_requests(&proxy);
    seen.sort();
    assert_eq!(seen.len(), 5, "300 KB in 64 KiB pieces: {seen:?}");
    assert!(seen.iter().all(|r| !r.contains(',')));
}

#[tokio::test]
async fn whole_blob_answer_is_accepted_only_when_the_whole_blob_was_asked_for() {
    let reg = TestRegistry::start().await;
    let proxy = FaultProxy::start(reg.addr).await;
    let f = fixture(&reg, 1000).await;
    let fetcher = open(&f, &proxy.host(), None).await;
    proxy.set_fault(Fault::IgnoreRange);
    let got = fetcher
        .fetch_ranges(&[0..1000], Purpose::Background)
        .await
        .unwrap();
    assert_content(&f, &got, &[0..1000]);
    let err = fetcher
        .fetch_ranges(&[0..10], Purpose::OnDemand)
        .await
        .unwrap_err();
    assert!(
        matches!(err, RegistryError::RangeUnsupported { .. }),
        "{err}"
    );
}

#[tokio::test]
async fn on_demand_reads_overtake_queued_background_requests() {
    let reg = TestRegistry::start().await;
    let proxy = FaultProxy::start(reg.addr).await;
    let f = fixture_with(&reg, 1_400_000, |c| {
        c.max_request_bytes = 64 * 1024;
        c.max_concurrency_per_host = 1;
    })
    .await;
    let blob = &f.blob;
    let fetcher = open(&f, &proxy.host(), None).await;
    proxy.clear_seen();

    let background = {
        let fetcher = fetcher.clone();
        tokio::spawn(async move {
            fetcher
                .fetch_ranges(&[0..1_310_720], Purpose::Background)
                .await
        })
    };
    assert!(wait_until_async(Duration::from_secs(10), || !proxy.seen().is_empty()).await);
    let issued_at = proxy.seen().len();
    let got = fetcher
        .fetch_ranges(&[1_399_990..1_400_000], Purpose::OnDemand)
        .await
        .unwrap();
    assert_eq!(&got[0].1[..], &blob[1_399_990..]);
    let background = background.await.unwrap().unwrap();
    assert_eq!(&background[0].1[..], &blob[..1_310_720]);

    let seen = range_requests(&proxy);
    assert_eq!(
        seen.len(),
        21,
        "20 background pieces and one on-demand read"
    );
    let position = seen
        .iter()
        .position(|r| r == "bytes=1399990-1399999")
        .unwrap();
    eprintln!("on-demand read served at {position}, issued at {issued_at}");
    assert!(
        position <= issued_at + 2 && position < 19,
        "on-demand read served at {position}, issued when {issued_at} requests had been seen"
    );
}
