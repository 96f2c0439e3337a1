//! Integration tests of `rstargz serve` over its socket, for what
//! containerd's conformance suite does not cover: List filters, Update field
//! paths, Usage against `du`, input validation, Cleanup of orphans,
//! asynchronous remove, restart and crash recovery of interrupted removes.

#![allow(clippy::unwrap_used)]

use crate::common;

use std::collections::HashMap;
use std::process::Command;

use common::*;
use rstargz_proto::prost_types::FieldMask;
use rstargz_proto::snapshots as pb;
use tonic::Code;

fn code<T: std::fmt::Debug>(r: Result<T, tonic::Status>) -> Code {
    r.unwrap_err().code()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_filters_on_labels_kind_name_and_parent() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path());
    let mut c = d.client().await;
    prepare(&mut c, "base-a", "", &[("team", "alpha")])
        .await
        .unwrap();
    commit(&mut c, "base", "base-a").await.unwrap();
    prepare(&mut c, "a1", "base", &[("team", "alpha"), ("tier", "gold")])
        .await
        .unwrap();
    prepare(&mut c, "b1", "base", &[("team", "beta")])
        .await
        .unwrap();
    prepare(&mut c, "n1", "", &[("containerd.io/gc.ref", "x")])
        .await
        .unwrap();

    assert_eq!(list(&mut c, &[]).await.unwrap(), ["a1", "b1", "base", "n1"]);
    // Commit replaces labels: "base" has none.
    assert_eq!(list(&mut c, &["labels.team==alpha"]).await.unwrap(), ["a1"]);
    assert_eq!(
        list(&mut c, &["labels.team!=alpha"]).await.unwrap(),
        ["b1", "base", "n1"]
    );
    assert_eq!(
        list(&mut c, &["labels.team~=^(al|be)"]).await.unwrap(),
        ["a1", "b1"]
    );
    assert_eq!(
        list(&mut c, &["labels.team,labels.tier==gold"])
            .await
            .unwrap(),
        ["a1"]
    );
    assert_eq!(
        list(&mut c, &["labels.team==alpha,labels.tier==silver"])
            .await
            .unwrap(),
        Vec::<String>::new()
    );
    assert_eq!(
        list(&mut c, &["labels.tier==gold", "name==n1"])
            .await
            .unwrap(),
        ["a1", "n1"]
    );
    assert_eq!(
        list(&mut c, &[r#"labels."containerd.io/gc.ref"==x"#])
            .await
            .unwrap(),
        ["n1"]
    );
    assert_eq!(list(&mut c, &["kind==committed"]).await.unwrap(), ["base"]);
    assert_eq!(
        list(&mut c, &["parent==base,kind==active"]).await.unwrap(),
        ["a1", "b1"]
    );
    assert_eq!(
        code(list(&mut c, &["labels.team=="]).await),
        Code::InvalidArgument
    );
    assert_eq!(
        code(list(&mut c, &["name~=("]).await),
        Code::InvalidArgument
    );
    drop(c);
    d.stop();
}

async fn update(
    c: &mut Client,
    name: &str,
    l: &[(&str, &str)],
    paths: &[&str],
) -> Result<HashMap<String, String>, tonic::Status> {
    c.update(pb::UpdateSnapshotRequest {
        snapshotter: String::new(),
        info: Some(pb::Info {
            name: name.into(),
            labels: labels(l),
            ..Default::default()
        }),
        update_mask: Some(FieldMask {
            paths: paths.iter().map(|p| p.to_string()).collect(),
        }),
    })
    .await
    .map(|r| r.into_inner().info.unwrap().labels)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_field_paths() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path());
    let mut c = d.client().await;
    prepare(&mut c, "s", "", &[("a", "1"), ("b", "2")])
        .await
        .unwrap();
    let before = stat(&mut c, "s").await.unwrap();

    let got = update(&mut c, "s", &[("a", "10"), ("c", "3")], &["labels.a"])
        .await
        .unwrap();
    assert_eq!(got, labels(&[("a", "10"), ("b", "2")]));
    let got = update(&mut c, "s", &[("c", "3")], &["labels.c", "labels.b"])
        .await
        .unwrap();
    assert_eq!(
        got,
        labels(&[("a", "10"), ("c", "3")]),
        "labels.b absent from info deletes it"
    );
    let got = update(&mut c, "s", &[("z", "9")], &["labels"])
        .await
        .unwrap();
    assert_eq!(got, labels(&[("z", "9")]));
    let got = update(&mut c, "s", &[("y", "8")], &[]).await.unwrap();
    assert_eq!(got, labels(&[("y", "8")]), "no mask replaces all labels");

    let after = stat(&mut c, "s").await.unwrap();
    assert_eq!(after.labels, labels(&[("y", "8")]));
    assert_eq!(after.created_at, before.created_at);
    assert!(after.updated_at.unwrap().seconds >= before.updated_at.unwrap().seconds);
    assert_ne!(after.updated_at, before.updated_at);

    assert_eq!(
        code(update(&mut c, "s", &[], &["parent"]).await),
        Code::InvalidArgument
    );
    assert_eq!(
        code(update(&mut c, "s", &[], &["kind"]).await),
        Code::InvalidArgument
    );
    assert_eq!(
        code(update(&mut c, "missing", &[], &["labels"]).await),
        Code::NotFound
    );
    let big = "v".repeat(5000);
    assert_eq!(
        code(update(&mut c, "s", &[("k", &big)], &["labels.k"]).await),
        Code::InvalidArgument
    );
    drop(c);
    d.stop();
}

fn du(path: &std::path::Path, inodes: bool) -> i64 {
    let mut cmd = Command::new("du");
    cmd.arg("-s");
    if inodes {
        cmd.arg("--inodes");
    } else {
        cmd.arg("-B1");
    }
    let out = cmd.arg(path).output().expect("du is installed (coreutils)");
    assert!(out.status.success());
    String::from_utf8(out.stdout)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_matches_du_and_counts_hardlinks_once() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path());
    let mut c = d.client().await;
    let fs = bind_source(&prepare(&mut c, "u", "", &[]).await.unwrap());
    std::fs::create_dir_all(fs.join("d/e")).unwrap();
    std::fs::write(fs.join("d/big"), vec![7u8; 300 * 1024]).unwrap();
    std::fs::write(fs.join("small"), b"hello").unwrap();
    std::fs::hard_link(fs.join("d/big"), fs.join("d/e/big-link")).unwrap();
    std::os::unix::fs::symlink("d/big", fs.join("sym")).unwrap();

    let (size, inodes) = usage(&mut c, "u").await.unwrap();
    assert_eq!(size, du(&fs, false));
    assert_eq!(inodes, du(&fs, true));
    assert_eq!(inodes, 6, "fs, d, e, big (2 links), small, sym");
    assert!(size >= 300 * 1024);

    commit(&mut c, "u-committed", "u").await.unwrap();
    assert_eq!(usage(&mut c, "u-committed").await.unwrap(), (size, inodes));
    assert_eq!(code(usage(&mut c, "u").await), Code::NotFound);
    drop(c);
    d.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_carry_containerd_codes() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path());
    let mut c = d.client().await;
    prepare(&mut c, "p-a", "", &[]).await.unwrap();
    assert_eq!(
        code(prepare(&mut c, "p-a", "", &[]).await),
        Code::AlreadyExists
    );
    assert_eq!(
        code(prepare(&mut c, "x", "nope", &[]).await),
        Code::NotFound
    );
    assert_eq!(
        code(prepare(&mut c, "x", "p-a", &[]).await),
        Code::InvalidArgument,
        "active parent"
    );
    commit(&mut c, "p", "p-a").await.unwrap();
    assert_eq!(
        code(commit(&mut c, "p2", "p").await),
        Code::FailedPrecondition
    );
    prepare(&mut c, "child", "p", &[]).await.unwrap();
    assert_eq!(
        code(commit(&mut c, "p", "child").await),
        Code::AlreadyExists
    );

    let err = remove(&mut c, "p").await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("remove"), "{}", err.message());
    assert_eq!(
        code(
            c.mounts(pb::MountsRequest {
                snapshotter: String::new(),
                key: "p".into()
            })
            .await
        ),
        Code::FailedPrecondition
    );
    assert_eq!(code(remove(&mut c, "missing").await), Code::NotFound);
    assert_eq!(code(stat(&mut c, "missing").await), Code::NotFound);

    // Bad input.
    assert_eq!(
        code(prepare(&mut c, "", "", &[]).await),
        Code::InvalidArgument
    );
    assert_eq!(
        code(prepare(&mut c, "a\0b", "", &[]).await),
        Code::InvalidArgument
    );
    assert_eq!(
        code(prepare(&mut c, &"k".repeat(5000), "", &[]).await),
        Code::InvalidArgument
    );
    let big = "v".repeat(4096);
    assert_eq!(
        code(prepare(&mut c, "lbl", "", &[("k", &big)]).await),
        Code::InvalidArgument
    );
    assert_eq!(
        code(commit(&mut c, "", "child").await),
        Code::InvalidArgument
    );
    // Nothing of the rejected requests was stored.
    assert_eq!(list(&mut c, &[]).await.unwrap(), ["child", "p"]);

    remove(&mut c, "child").await.unwrap();
    remove(&mut c, "p").await.unwrap();
    assert!(list(&mut c, &[]).await.unwrap().is_empty());
    drop(c);
    d.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cleanup_deletes_only_unowned_directories() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path());
    let mut c = d.client().await;
    let keep = bind_source(&prepare(&mut c, "keep", "", &[]).await.unwrap());
    std::fs::write(keep.join("data"), b"x").unwrap();
    let snaps = d.snapshots_dir();
    for junk in [
        "987654/fs/a",
        "new-1-2-3/fs",
        "rm-424242/fs",
        "rm-orphan-5-1-2-3/fs",
    ] {
        std::fs::create_dir_all(snaps.join(junk)).unwrap();
    }
    cleanup(&mut c).await.unwrap();
    let keep_id = keep
        .parent()
        .unwrap()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    assert_eq!(entries(&snaps), [keep_id]);
    assert!(keep.join("data").exists());
    drop(c);
    d.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_remove_defers_deletion_to_cleanup() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(&config, "[snapshotter]\nasync_remove = true\n").unwrap();
    let d = Daemon::start_with(dir.path(), &["--config", config.to_str().unwrap()]);
    let mut c = d.client().await;
    let fs = bind_source(&prepare(&mut c, "a", "", &[]).await.unwrap());
    let id = fs
        .parent()
        .unwrap()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    remove(&mut c, "a").await.unwrap();
    assert_eq!(entries(&d.snapshots_dir()), [format!("rm-{id}")]);
    assert_eq!(code(stat(&mut c, "a").await), Code::NotFound);
    cleanup(&mut c).await.unwrap();
    assert!(entries(&d.snapshots_dir()).is_empty());
    drop(c);
    d.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_remove_deletes_directory() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path());
    let mut c = d.client().await;
    prepare(&mut c, "a", "", &[]).await.unwrap();
    remove(&mut c, "a").await.unwrap();
    assert!(entries(&d.snapshots_dir()).is_empty());
    drop(c);
    d.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_snapshots_and_recovers_interrupted_remove() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path());
    let mut c = d.client().await;
    let fs = bind_source(&prepare(&mut c, "base-a", "", &[("k", "v")]).await.unwrap());
    std::fs::write(fs.join("f"), b"data").unwrap();
    commit(&mut c, "base", "base-a").await.unwrap();
    prepare(&mut c, "top", "base", &[]).await.unwrap();
    let before = stat(&mut c, "base").await.unwrap();

    // A second daemon must not steal a live socket.
    let second = std::process::Command::new(env!("CARGO_BIN_EXE_rstargz"))
        .args(["serve", "--root"])
        .arg(dir.path().join("root2"))
        .arg("--address")
        .arg(&d.socket)
        .output()
        .unwrap();
    assert!(!second.status.success());
    assert!(String::from_utf8_lossy(&second.stderr).contains("in use"));
    drop(c);
    d.stop();

    // Simulate a crash between Remove's rename and its commit, plus an
    // orphan of a create that never committed.
    let root = dir.path().join("root/snapshots");
    let id = fs
        .parent()
        .unwrap()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    std::fs::rename(root.join(&id), root.join(format!("rm-{id}"))).unwrap();
    std::fs::create_dir_all(root.join("55555/fs")).unwrap();
    std::fs::create_dir_all(root.join("new-9-9-9/fs")).unwrap();

    let d = Daemon::start(dir.path());
    let mut c = d.client().await;
    let after = stat(&mut c, "base").await.unwrap();
    assert_eq!(after, before);
    assert_eq!(list(&mut c, &[]).await.unwrap(), ["base", "top"]);
    assert_eq!(std::fs::read(root.join(&id).join("fs/f")).unwrap(), b"data");
    assert!(!root.join("55555").exists());
    assert!(!root.join("new-9-9-9").exists());
    assert!(!root.join(format!("rm-{id}")).exists());
    drop(c);
    d.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_socket_after_kill_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let mut d = Daemon::start(dir.path());
    let mut c = d.client().await;
    prepare(&mut c, "a", "", &[]).await.unwrap();
    drop(c);
    d.signal_and_wait(nix::sys::signal::Signal::SIGKILL);
    assert!(d.socket.exists(), "kill -9 leaves the socket file");
    drop(d);
    let d = Daemon::start(dir.path());
    let mut c = d.client().await;
    assert_eq!(
        stat(&mut c, "a").await.unwrap().kind,
        pb::Kind::Active as i32
    );
    drop(c);
    d.stop();
}

#[test]
fn bad_config_fails_fast_with_the_file_name() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bad.toml");
    std::fs::write(&config, "[snapshotter]\nasync_remove = \"maybe\"\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_rstargz"))
        .args(["serve", "--root"])
        .arg(dir.path().join("root"))
        .arg("--address")
        .arg(dir.path().join("s.sock"))
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("bad.toml"));
    assert!(!dir.path().join("s.sock").exists());
}
