//! The remote-snapshot protocol through the core, with a `RemoteFs` that
//! really bind-mounts a prepared directory (needs root, like the suite).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use nix::mount::{MntFlags, MsFlags};

use super::*;
use crate::remote_fs::{BoxFuture, RemoteError, RemoteFs};

#[derive(Debug)]
struct BindRemote {
    source: PathBuf,
    healthy: AtomicBool,
    unmounts: AtomicUsize,
    /// What `checked_recently` answers.
    recent: AtomicBool,
    /// `check` calls so far.
    checks: AtomicUsize,
}

impl BindRemote {
    fn new(source: &Path) -> BindRemote {
        BindRemote {
            source: source.to_path_buf(),
            healthy: AtomicBool::new(true),
            unmounts: AtomicUsize::new(0),
            recent: AtomicBool::new(false),
            checks: AtomicUsize::new(0),
        }
    }
}

impl RemoteFs for BindRemote {
    fn mount<'a>(
        &'a self,
        mountpoint: &'a Path,
        labels: &'a Labels,
    ) -> BoxFuture<'a, Result<(), RemoteError>> {
        Box::pin(async move {
            if !labels.contains_key("test/remote") {
                return Err(RemoteError::Declined("no source labels".into()));
            }
            nix::mount::mount(
                Some(&self.source),
                mountpoint,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .map_err(|e| RemoteError::Failed {
                context: "bind".into(),
                source: e.into(),
            })
        })
    }

    fn check<'a>(&'a self, _: &'a Path, _: &'a Labels) -> BoxFuture<'a, Result<(), RemoteError>> {
        self.checks.fetch_add(1, Ordering::SeqCst);
        Box::pin(async move {
            if self.healthy.load(Ordering::SeqCst) {
                Ok(())
            } else {
                Err(RemoteError::Unavailable("registry unreachable".into()))
            }
        })
    }

    fn checked_recently(&self, _: &Path) -> bool {
        self.recent.load(Ordering::SeqCst)
    }

    fn unmount<'a>(&'a self, mountpoint: &'a Path) -> BoxFuture<'a, Result<(), RemoteError>> {
        Box::pin(async move {
            self.unmounts.fetch_add(1, Ordering::SeqCst);
            nix::mount::umount2(mountpoint, MntFlags::empty()).map_err(|e| RemoteError::Failed {
                context: "umount".into(),
                source: e.into(),
            })
        })
    }
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_prepare_commits_as_target_and_checks_chain() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("layer");
    std::fs::create_dir_all(&source).unwrap();
    std::fs::write(source.join("file"), b"remote").unwrap();
    let remote = Arc::new(BindRemote::new(&source));
    let mut opts = Options::new(dir.path().join("root"));
    opts.remote = remote.clone();
    let sn = Snapshotter::open(opts).unwrap();

    // Without source labels the remote declines: a normal local snapshot.
    let m = sn
        .prepare(
            "extract-1 L0".into(),
            String::new(),
            labels(&[(TARGET_REF_LABEL, "L0")]),
        )
        .await
        .unwrap();
    assert_eq!(m[0].kind, "bind");
    sn.remove("extract-1 L0".into()).await.unwrap();

    // With them: mounted, committed as the target, AlreadyExists.
    let err = sn
        .prepare(
            "extract-2 L1".into(),
            String::new(),
            labels(&[(TARGET_REF_LABEL, "L1"), ("test/remote", "yes")]),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::AlreadyExists(_)), "{err}");
    let info = sn.stat("L1".into()).await.unwrap();
    assert_eq!(info.kind, Kind::Committed);
    assert_eq!(
        info.labels.get(REMOTE_LABEL).map(String::as_str),
        Some("remote snapshot")
    );
    assert!(matches!(
        sn.stat("extract-2 L1".into()).await,
        Err(Error::NotFound(_))
    ));

    // A container layer on top sees the remote files as its lower dir.
    let m = sn
        .prepare("c".into(), "L1".into(), Labels::new())
        .await
        .unwrap();
    let lower = m[0]
        .options
        .iter()
        .find_map(|o| o.strip_prefix("lowerdir="))
        .unwrap();
    assert_eq!(
        std::fs::read(Path::new(lower).join("file")).unwrap(),
        b"remote"
    );

    // An unusable remote layer makes Mounts and new children Unavailable.
    remote.healthy.store(false, Ordering::SeqCst);
    assert!(matches!(
        sn.mounts("c".into()).await,
        Err(Error::Unavailable(_))
    ));
    assert!(matches!(
        sn.view("v".into(), "L1".into(), Labels::new()).await,
        Err(Error::Unavailable(_))
    ));
    remote.healthy.store(true, Ordering::SeqCst);
    assert!(sn.mounts("c".into()).await.is_ok());

    // Removing unmounts through the remote fs and never deletes through
    // the mount: the source survives.
    sn.remove("c".into()).await.unwrap();
    sn.remove("L1".into()).await.unwrap();
    assert_eq!(remote.unmounts.load(Ordering::SeqCst), 1);
    assert_eq!(std::fs::read(source.join("file")).unwrap(), b"remote");
    assert!(
        std::fs::read_dir(dir.path().join("root/snapshots"))
            .unwrap()
            .next()
            .is_none()
    );
}

/// Mounts of a container on a chain of remote layers asks the remote
/// filesystem to check only the layers it has not checked recently: a
/// layer whose registry answered lately (as it does all along while its
/// background fetch runs) costs Mounts no task, no request and no lock of
/// the fetch; the others are checked as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mounts_checks_only_layers_not_checked_recently() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("layer");
    std::fs::create_dir_all(&source).unwrap();
    let remote = Arc::new(BindRemote::new(&source));
    let mut opts = Options::new(dir.path().join("root"));
    opts.remote = remote.clone();
    let sn = Snapshotter::open(opts).unwrap();
    let depth = 3;
    let mut parent = String::new();
    for i in 0..depth {
        let name = format!("L{i}");
        let err = sn
            .prepare(
                format!("extract-{i}"),
                parent.clone(),
                labels(&[(TARGET_REF_LABEL, &name), ("test/remote", "yes")]),
            )
            .await
            .unwrap_err();
        assert!(matches!(err, Error::AlreadyExists(_)), "{err}");
        parent = name;
    }
    sn.prepare("c".into(), parent, Labels::new()).await.unwrap();

    remote.recent.store(true, Ordering::SeqCst);
    remote.checks.store(0, Ordering::SeqCst);
    let m = sn.mounts("c".into()).await.unwrap();
    assert_eq!(remote.checks.load(Ordering::SeqCst), 0);
    assert_eq!(m[0].kind, "overlay");

    remote.recent.store(false, Ordering::SeqCst);
    sn.mounts("c".into()).await.unwrap();
    assert_eq!(remote.checks.load(Ordering::SeqCst), depth);
    // A layer not checked recently still fails Mounts when unusable.
    remote.healthy.store(false, Ordering::SeqCst);
    assert!(matches!(
        sn.mounts("c".into()).await,
        Err(Error::Unavailable(_))
    ));

    sn.remove("c".into()).await.unwrap();
    for i in (0..depth).rev() {
        sn.remove(format!("L{i}")).await.unwrap();
    }
}
