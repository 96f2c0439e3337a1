//! Unit tests of the mount table and of the busy-unmount retry, with fake
//! mounts (no FUSE).

#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicU32, Ordering};

use super::*;

/// A mount that is busy for its first `busy` attempts.
struct FakeMount {
    busy: u32,
    tries: Arc<AtomicU32>,
    id: Option<MountId>,
    state: PathBuf,
}

impl FakeMount {
    fn new(busy: u32) -> (Self, Arc<AtomicU32>) {
        let tries = Arc::new(AtomicU32::new(0));
        let m = FakeMount {
            busy,
            tries: tries.clone(),
            id: None,
            state: PathBuf::from("/state"),
        };
        (m, tries)
    }
}

impl Unmount for FakeMount {
    fn try_unmount(&mut self, at: &Path) -> Result<(), String> {
        assert_eq!(at, Path::new("/mnt/a"));
        let n = self.tries.fetch_add(1, Ordering::SeqCst);
        if n < self.busy {
            Err("EBUSY".into())
        } else {
            Ok(())
        }
    }
}

impl Entry for FakeMount {
    fn id(&self) -> Option<&MountId> {
        self.id.as_ref()
    }

    fn state(&self) -> &Path {
        &self.state
    }
}

const QUICK: UnmountRetry = UnmountRetry {
    attempts: 4,
    first_delay: Duration::from_millis(1),
};

#[tokio::test]
async fn a_busy_mount_is_retried_until_it_frees_up() {
    let (m, tries) = FakeMount::new(3);
    let back = unmount_with_retry(m, Path::new("/mnt/a"), QUICK).await;
    assert!(back.is_ok());
    assert_eq!(tries.load(Ordering::SeqCst), 4);

    let (m, tries) = FakeMount::new(0);
    assert!(
        unmount_with_retry(m, Path::new("/mnt/a"), QUICK)
            .await
            .is_ok()
    );
    assert_eq!(tries.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_mount_busy_throughout_comes_back_to_be_kept() {
    let (m, tries) = FakeMount::new(u32::MAX);
    let failure = unmount_with_retry(m, Path::new("/mnt/a"), QUICK)
        .await
        .err()
        .unwrap();
    assert_eq!(tries.load(Ordering::SeqCst), QUICK.attempts);
    assert!(
        failure.target.is_some(),
        "the mount must go back in the table"
    );
    match failure.error {
        UnmountError::Busy { attempts, last } => {
            assert_eq!((attempts, last.as_str()), (QUICK.attempts, "EBUSY"))
        }
        e => panic!("{e}"),
    }
}

#[tokio::test(start_paused = true)]
async fn waits_between_attempts_double() {
    let (m, _) = FakeMount::new(u32::MAX);
    let start = tokio::time::Instant::now();
    let retry = UnmountRetry::default();
    let _ = unmount_with_retry(m, Path::new("/mnt/a"), retry).await;
    // 20 + 40 + … + 640 ms between 7 attempts.
    assert_eq!(start.elapsed(), Duration::from_millis(1260));
}

/// Panics in its attempt, as an unmount task that dies.
struct Panics;

impl Unmount for Panics {
    fn try_unmount(&mut self, _: &Path) -> Result<(), String> {
        panic!("attempt died");
    }
}

#[tokio::test]
async fn a_dead_attempt_loses_the_mount_and_says_so() {
    let failure = unmount_with_retry(Panics, Path::new("/mnt/a"), QUICK)
        .await
        .err()
        .unwrap();
    assert!(failure.target.is_none());
    assert!(matches!(failure.error, UnmountError::Task(_)));
}

#[test]
fn the_table_finds_a_moved_mount_by_its_device_and_layer_directory() {
    let id = |slot: u32| MountId {
        dev: 7,
        root: PathBuf::from(format!("/{slot}")),
    };
    let table = MountTable::<FakeMount>::default();
    let (mut a, _) = FakeMount::new(0);
    a.id = Some(id(1));
    a.state = PathBuf::from("/layers/a");
    let (mut b, _) = FakeMount::new(0);
    b.id = Some(id(2));
    b.state = PathBuf::from("/layers/b");
    table.insert("/snap/1/fs".into(), a);
    table.insert("/snap/2/fs".into(), b);
    assert!(table.uses_state(Path::new("/layers/a")));
    assert!(!table.uses_state(Path::new("/layers/c")));

    // By path, without asking the mount table.
    let (key, _) = table
        .take(Path::new("/snap/1/fs"), |_| panic!("no lookup needed"))
        .unwrap();
    assert_eq!(key, Path::new("/snap/1/fs"));
    assert!(!table.uses_state(Path::new("/layers/a")));

    // Renamed aside by Remove: found by its layer's directory (every layer
    // shares the session's device), under its old key.
    let (key, m) = table
        .take(Path::new("/snap/rm-2/fs"), |_| Some(id(2)))
        .unwrap();
    assert_eq!(
        (key.as_path(), m.id),
        (Path::new("/snap/2/fs"), Some(id(2)))
    );
    assert!(
        table
            .take(Path::new("/snap/x/fs"), |_| Some(id(3)))
            .is_none()
    );
    assert!(table.take(Path::new("/snap/x/fs"), |_| None).is_none());
    assert!(table.states().is_empty() && table.take_all().is_empty());
}
