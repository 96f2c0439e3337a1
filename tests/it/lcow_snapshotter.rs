//! The LCOW fallback (`rstargz serve --fallback lcow`) through the gRPC API:
//! `lcow-layer` mounts, sandbox scratch disks (copied, sized, relocated,
//! shared), the cached scratch under concurrency, Remove/Usage/Commit,
//! start-up cleanup and the local fallback for remote layers. The disks are
//! checked with qemu-img and e2fsck (tests/it/common/vhdx_check.rs).

#![allow(clippy::unwrap_used)]

use crate::common;

use std::path::{Path, PathBuf};

use common::vhdx_check::{GIB, MIB, assert_valid_scratch, on_disk_bytes, qemu_info};
use common::*;
use rstargz_proto::types::Mount;
use rstargz_snapshotter::lcow::{
    OWNER_KEY_LABEL, REUSE_SCRATCH_LABEL, ROOTFS_LOCATION_LABEL, ROOTFS_SIZE_LABEL,
};
use tonic::Code;

/// A parsed `lcow-layer` mount: (source, rw/ro, parentLayerPaths).
fn lcow_mount(mounts: &[Mount]) -> (PathBuf, String, Vec<PathBuf>) {
    assert_eq!(mounts.len(), 1, "{mounts:?}");
    let m = &mounts[0];
    assert_eq!(m.r#type, "lcow-layer");
    assert_eq!(m.options.len(), 2, "{:?}", m.options);
    let json = m.options[1]
        .strip_prefix("parentLayerPaths=")
        .unwrap_or_else(|| panic!("no parentLayerPaths in {:?}", m.options));
    let parents: Vec<PathBuf> = serde_json::from_str(json).unwrap();
    (PathBuf::from(&m.source), m.options[0].clone(), parents)
}

/// The snapshot directory of a parentless Active snapshot from its mounts.
fn own_dir(mounts: &[Mount]) -> PathBuf {
    lcow_mount(mounts).0
}

/// Commits an unpack snapshot `extract-… name` on `parent` as `name` and
/// returns its directory.
async fn layer(c: &mut Client, name: &str, parent: &str) -> PathBuf {
    let key = format!("default/1/extract-123-{name} sha256:{name}");
    let dir = own_dir(&prepare(c, &key, parent, &[]).await.unwrap());
    assert!(
        !dir.join("sandbox.vhdx").exists(),
        "unpack snapshot got a sandbox"
    );
    std::fs::write(dir.join("layer.vhd"), name).unwrap();
    commit(c, name, &key).await.unwrap();
    dir
}

fn sandbox(dir: &Path) -> PathBuf {
    dir.join("sandbox.vhdx")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mounts_follow_containerd_lcow() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start_lcow(dir.path());
    let mut c = d.client().await;
    let snapshots = d.snapshots_dir();

    let base = layer(&mut c, "base", "").await;
    let mid = layer(&mut c, "mid", "base").await;
    assert_eq!(base.parent(), Some(snapshots.as_path()));

    let solo = prepare(&mut c, "solo", "", &[]).await.unwrap();
    let (source, mode, parents) = lcow_mount(&solo);
    assert_eq!(source.parent(), Some(snapshots.as_path()));
    assert_eq!((mode.as_str(), parents.len()), ("rw", 0));
    assert_eq!(solo[0].options[1], "parentLayerPaths=[]");

    let (source, mode, parents) = lcow_mount(&prepare(&mut c, "ctr", "mid", &[]).await.unwrap());
    assert_eq!(source.parent(), Some(snapshots.as_path()));
    assert!(source != mid && source != base);
    assert_eq!(mode, "rw");
    assert_eq!(parents, [mid.clone(), base.clone()]);
    assert!(sandbox(&source).is_file());
    assert_eq!(
        lcow_mount(&mounts(&mut c, "ctr").await.unwrap()),
        (source.clone(), mode, parents)
    );

    let (source, mode, parents) = lcow_mount(&view(&mut c, "v", "mid").await.unwrap());
    assert_eq!((source, mode.as_str()), (mid.clone(), "ro"));
    assert_eq!(parents, std::slice::from_ref(&base));
    let (source, mode, parents) = lcow_mount(&view(&mut c, "v0", "base").await.unwrap());
    assert_eq!((source, mode.as_str(), parents.len()), (base, "ro", 0));

    // Every sandbox is a copy of the default 20 GB scratch cached in the root.
    let cached = d.root.join("scratch.vhdx");
    let solo_sandbox = sandbox(&own_dir(&solo));
    assert_eq!(
        std::fs::read(&solo_sandbox).unwrap(),
        std::fs::read(&cached).unwrap()
    );
    let used = on_disk_bytes(&solo_sandbox);
    eprintln!("20 GB sandbox: {used} bytes on disk");
    assert!(used < 8 * MIB, "20 GB sandbox uses {used} bytes");
    assert_valid_scratch(&solo_sandbox, 20);
    d.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn size_and_location_labels_pick_the_cached_scratch() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start_lcow(dir.path());
    let mut c = d.client().await;
    let sized = own_dir(
        &prepare(&mut c, "sized", "", &[(ROOTFS_SIZE_LABEL, "1")])
            .await
            .unwrap(),
    );
    assert!(d.root.join("scratch_1.vhdx").is_file());
    assert!(!d.root.join("scratch.vhdx").exists());
    assert_valid_scratch(&sandbox(&sized), 1);

    let location = dir.path().join("scratch-cache");
    let loc = location.to_str().unwrap();
    let placed = own_dir(
        &prepare(
            &mut c,
            "placed",
            "",
            &[(ROOTFS_SIZE_LABEL, "2"), (ROOTFS_LOCATION_LABEL, loc)],
        )
        .await
        .unwrap(),
    );
    assert!(location.join("scratch_2.vhdx").is_file());
    assert!(!d.root.join("scratch_2.vhdx").exists());
    assert_eq!(qemu_info(&sandbox(&placed))["virtual-size"], 2 * GIB);

    let err = prepare(
        &mut c,
        "rel",
        "",
        &[(ROOTFS_LOCATION_LABEL, "relative/dir")],
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");
    let err = prepare(&mut c, "huge", "", &[(ROOTFS_SIZE_LABEL, "99999999")])
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");
    d.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reuse_scratch_links_the_owners_sandbox() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start_lcow(dir.path());
    let mut c = d.client().await;
    let size = (ROOTFS_SIZE_LABEL, "1");
    // containerd's metadata layer namespaces keys; the label has the plain one.
    let owner = own_dir(
        &prepare(&mut c, "k8s.io/4/owner-ctr", "", &[size])
            .await
            .unwrap(),
    );
    let shared = [
        (REUSE_SCRATCH_LABEL, "true"),
        (OWNER_KEY_LABEL, "owner-ctr"),
    ];
    let sharer = own_dir(
        &prepare(&mut c, "k8s.io/5/sharer", "", &shared)
            .await
            .unwrap(),
    );
    let link = sandbox(&sharer);
    assert!(link.symlink_metadata().unwrap().file_type().is_symlink());
    assert_eq!(std::fs::read_link(&link).unwrap(), sandbox(&owner));

    let by_exact_key = [
        (REUSE_SCRATCH_LABEL, "true"),
        (OWNER_KEY_LABEL, "k8s.io/4/owner-ctr"),
    ];
    let second = own_dir(&prepare(&mut c, "second", "", &by_exact_key).await.unwrap());
    assert_eq!(
        std::fs::read_link(sandbox(&second)).unwrap(),
        sandbox(&owner)
    );

    let missing = [(REUSE_SCRATCH_LABEL, "true"), (OWNER_KEY_LABEL, "nobody")];
    let err = prepare(&mut c, "orphan", "", &missing).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err}");
    assert_eq!(list(&mut c, &["name==orphan"]).await.unwrap().len(), 0);
    let own = [(REUSE_SCRATCH_LABEL, "true"), (OWNER_KEY_LABEL, "selfish")];
    let err = prepare(&mut c, "k8s.io/6/selfish", "", &own)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");
    // The shared disk is the owner's VHDX, readable through the link.
    assert_eq!(qemu_info(&link)["virtual-size"], GIB);
    // Without reuse-scratch=true the owner label is ignored: a copy.
    let copy = own_dir(
        &prepare(&mut c, "copy", "", &[size, (OWNER_KEY_LABEL, "owner-ctr")])
            .await
            .unwrap(),
    );
    assert!(sandbox(&copy).symlink_metadata().unwrap().is_file());
    d.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_prepares_share_one_cached_scratch() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start_lcow(dir.path());
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..8 {
        let mut c = d.client().await;
        tasks.spawn(async move {
            own_dir(
                &prepare(&mut c, &format!("ctr-{i}"), "", &[(ROOTFS_SIZE_LABEL, "3")])
                    .await
                    .unwrap(),
            )
        });
    }
    let dirs: Vec<PathBuf> = tasks.join_all().await;
    let cached = d.root.join("scratch_3.vhdx");
    let scratch_files: Vec<String> = entries(&d.root)
        .into_iter()
        .filter(|n| n.starts_with("scratch"))
        .collect();
    assert_eq!(scratch_files, ["scratch_3.vhdx"]);
    let blank = std::fs::read(&cached).unwrap();
    for dir in &dirs {
        assert_eq!(
            std::fs::read(sandbox(dir)).unwrap(),
            blank,
            "{}",
            dir.display()
        );
    }
    assert_eq!(qemu_info(&cached)["virtual-size"], 3 * GIB);
    let log = d.log_text();
    assert_eq!(
        log.matches("created cached LCOW scratch").count(),
        1,
        "{log}"
    );
    d.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_commit_and_remove() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start_lcow(dir.path());
    let mut c = d.client().await;
    let snap = own_dir(
        &prepare(&mut c, "u", "", &[(ROOTFS_SIZE_LABEL, "1")])
            .await
            .unwrap(),
    );
    let expected = on_disk_bytes(&snap) + on_disk_bytes(&sandbox(&snap));
    let (size, inodes) = usage(&mut c, "u").await.unwrap();
    assert_eq!((size as u64, inodes), (expected, 2));
    assert!(size as u64 > MIB, "sandbox not counted: {size}");

    std::fs::write(snap.join("layer.vhd"), vec![7u8; 256 * 1024]).unwrap();
    let grown = usage(&mut c, "u").await.unwrap();
    assert_eq!(grown.1, 3);
    assert!(grown.0 >= size + 256 * 1024, "{grown:?}");
    commit(&mut c, "u-done", "u").await.unwrap();
    assert_eq!(usage(&mut c, "u-done").await.unwrap(), grown);
    // Recorded at commit time, not measured again.
    std::fs::write(snap.join("extra"), vec![1u8; 64 * 1024]).unwrap();
    assert_eq!(usage(&mut c, "u-done").await.unwrap(), grown);

    remove(&mut c, "u-done").await.unwrap();
    assert!(!snap.exists());
    assert!(
        entries(&d.snapshots_dir())
            .iter()
            .all(|n| !n.starts_with("rm-"))
    );
    assert_eq!(
        remove(&mut c, "u-done").await.unwrap_err().code(),
        Code::NotFound
    );
    d.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_removes_stale_rm_dirs_and_scratch_temps() {
    let dir = tempfile::tempdir().unwrap();
    let location = dir.path().join("elsewhere");
    let loc = location.to_str().unwrap().to_string();
    let d = Daemon::start_lcow(dir.path());
    let mut c = d.client().await;
    let kept = own_dir(
        &prepare(
            &mut c,
            "kept",
            "",
            &[(ROOTFS_SIZE_LABEL, "1"), (ROOTFS_LOCATION_LABEL, &loc)],
        )
        .await
        .unwrap(),
    );
    let (root, snapshots) = (d.root.clone(), d.snapshots_dir());
    d.stop();

    let stale_rm = snapshots.join("rm-4242");
    std::fs::create_dir_all(stale_rm.join("inner")).unwrap();
    std::fs::write(stale_rm.join("sandbox.vhdx"), b"old").unwrap();
    let temps = [
        root.join("scratch.vhdx.tmp"),
        root.join("scratch_5.vhdx.raw.tmp"),
        location.join("scratch_1.vhdx.tmp"),
    ];
    for t in &temps {
        std::fs::write(t, b"half-made").unwrap();
    }

    let d = Daemon::start_lcow(dir.path());
    assert!(!stale_rm.exists());
    for t in &temps {
        assert!(!t.exists(), "{} survived start-up", t.display());
    }
    assert!(location.join("scratch_1.vhdx").is_file());
    assert!(sandbox(&kept).is_file());
    let mut c = d.client().await;
    assert_eq!(own_dir(&mounts(&mut c, "kept").await.unwrap()), kept);
    d.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_target_falls_back_to_a_local_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start_lcow(dir.path());
    let mut c = d.client().await;
    let key = "default/2/extract-9-9 sha256:chain";
    let labels = [
        ("containerd.io/snapshot.ref", "sha256:chain"),
        (
            "containerd.io/snapshot/remote/stargz.reference",
            "127.0.0.1/x:y",
        ),
    ];
    let snap = own_dir(&prepare(&mut c, key, "", &labels).await.unwrap());
    assert!(snap.is_dir());
    assert_eq!(list(&mut c, &["kind==active"]).await.unwrap(), [key]);
    assert!(
        list(&mut c, &["name==sha256:chain"])
            .await
            .unwrap()
            .is_empty()
    );
    let log = d.log_text();
    assert!(
        log.contains("remote snapshots are not offered by this fallback"),
        "{log}"
    );
    d.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_root_serves_only_the_fallback_it_was_made_with() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path());
    let mut c = d.client().await;
    prepare(&mut c, "overlay-snap", "", &[]).await.unwrap();
    d.stop();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_rstargz"))
        .arg("serve")
        .arg("--root")
        .arg(dir.path().join("root"))
        .arg("--address")
        .arg(dir.path().join("lcow.sock"))
        .args(["--fallback", "lcow"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("holds overlayfs snapshots"), "{stderr}");
}
