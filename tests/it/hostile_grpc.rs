//! Hostile gRPC input over the real socket: huge keys, NUL bytes, `/../`,
//! oversized labels and filters. Each gets a clean status with a bounded
//! message, the daemon stays up, and nothing rejected reaches the store.

#![allow(clippy::unwrap_used)]

use crate::common;

use common::*;
use rstargz_proto::prost_types::FieldMask;
use rstargz_proto::snapshots as pb;
use tonic::Code;

/// The status code, after checking the message stayed small.
fn code<T: std::fmt::Debug>(r: Result<T, tonic::Status>) -> Code {
    let status = r.unwrap_err();
    assert!(
        status.message().len() <= 2048,
        "{} byte message",
        status.message().len()
    );
    status.code()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_keys_labels_and_filters_get_clean_errors() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path());
    let mut c = d.client().await;
    let mib = "k".repeat(1 << 20);
    let mib_nul = format!("{}\0", "k".repeat(1 << 20));
    let big_value = "v".repeat(4096);

    for key in ["", "a\0b", &mib, &mib_nul] {
        assert_eq!(
            code(prepare(&mut c, key, "", &[]).await),
            Code::InvalidArgument
        );
        assert_eq!(code(view(&mut c, key, "").await), Code::InvalidArgument);
        assert_eq!(code(commit(&mut c, key, "x").await), Code::InvalidArgument);
    }
    // Lookups of keys that cannot exist: NotFound, as containerd answers.
    for key in [&mib, &mib_nul, "a\0b"] {
        assert_eq!(code(stat(&mut c, key).await), Code::NotFound);
        assert_eq!(code(remove(&mut c, key).await), Code::NotFound);
        assert_eq!(code(usage(&mut c, key).await), Code::NotFound);
    }
    // containerd's labels.Validate: key + value at most 4096 bytes.
    for l in [
        vec![("k", big_value.as_str())],
        vec![("", "v")],
        vec![("a\0", "v")],
        vec![("k", "v\0")],
        vec![(mib.as_str(), "")],
    ] {
        assert_eq!(
            code(prepare(&mut c, "lbl", "", &l).await),
            Code::InvalidArgument
        );
    }
    // Filters: a 1 MiB garbage expression and a huge regular expression.
    let huge_filter = format!("labels.{mib}=={mib}\0");
    assert_eq!(
        code(list(&mut c, &[&huge_filter, "name~=(((("]).await),
        Code::InvalidArgument
    );
    assert_eq!(
        code(list(&mut c, &["name~=(a{1000}){1000}"]).await),
        Code::InvalidArgument
    );

    // Keys are opaque names: `/../` is stored as is and never becomes a path.
    let sneaky = "../../../../escape/../x";
    let mounts = prepare(&mut c, sneaky, "", &[]).await.unwrap();
    let source = bind_source(&mounts);
    assert!(
        source.starts_with(d.snapshots_dir()),
        "{}",
        source.display()
    );
    assert!(!dir.path().join("escape").exists());
    // Update: oversized label and a field path naming a huge key.
    let update = |labels, path: &str| pb::UpdateSnapshotRequest {
        snapshotter: String::new(),
        info: Some(pb::Info {
            name: sneaky.into(),
            labels,
            ..Default::default()
        }),
        update_mask: Some(FieldMask {
            paths: vec![path.to_string()],
        }),
    };
    assert_eq!(
        code(
            c.update(update(labels(&[("k", &big_value)]), "labels"))
                .await
        ),
        Code::InvalidArgument
    );
    assert_eq!(
        code(c.update(update(labels(&[]), &mib)).await),
        Code::InvalidArgument
    );

    // Still serving; only the one valid snapshot exists, with no labels.
    assert_eq!(list(&mut c, &[]).await.unwrap(), [sneaky]);
    assert!(stat(&mut c, sneaky).await.unwrap().labels.is_empty());
    assert_eq!(entries(&d.snapshots_dir()).len(), 1);
    drop(c);
    d.stop();
}
