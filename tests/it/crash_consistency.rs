//! Crash consistency: kill -9 the daemon while workers loop over
//! Prepare/Commit/Remove, restart it, and check that every acknowledged
//! change survived, that Cleanup leaves no orphan directory and that no
//! snapshot points at a missing directory.

#![allow(clippy::unwrap_used)]

use crate::common;

use std::collections::{BTreeSet, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use common::*;

/// What acknowledged requests promise about the state after a crash.
#[derive(Default)]
struct Expect {
    present: HashSet<String>,
    absent: HashSet<String>,
}

impl Expect {
    fn unsure(&mut self, key: &str) {
        self.present.remove(key);
        self.absent.remove(key);
    }
}

async fn worker(d_socket: Client, w: usize, expect: Arc<Mutex<Expect>>, acked: Arc<AtomicUsize>) {
    let mut c = d_socket;
    for i in 0.. {
        let key = format!("w{w}-{i}-active");
        let name = format!("w{w}-{i}");
        if prepare(&mut c, &key, "base", &[("i", "x")]).await.is_err() {
            return;
        }
        expect.lock().unwrap().present.insert(key.clone());
        acked.fetch_add(1, Ordering::Relaxed);
        {
            let mut e = expect.lock().unwrap();
            e.unsure(&key);
            e.unsure(&name);
        }
        if commit(&mut c, &name, &key).await.is_err() {
            return;
        }
        {
            let mut e = expect.lock().unwrap();
            e.present.insert(name.clone());
            e.absent.insert(key.clone());
        }
        acked.fetch_add(1, Ordering::Relaxed);
        if i % 2 == 0 {
            expect.lock().unwrap().unsure(&name);
            if remove(&mut c, &name).await.is_err() {
                return;
            }
            expect.lock().unwrap().absent.insert(name);
            acked.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Snapshot ids in the database, read directly (daemon stopped).
fn db_ids(root: &std::path::Path) -> BTreeSet<String> {
    let conn = rusqlite::Connection::open(root.join("metadata.db")).unwrap();
    let mut stmt = conn.prepare("SELECT id FROM snapshots").unwrap();
    stmt.query_map([], |r| r.get::<_, i64>(0))
        .unwrap()
        .map(|id| id.unwrap().to_string())
        .collect()
}

fn dir_entries(dir: &std::path::Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_during_prepare_commit_remove_loop() {
    const ROUNDS: usize = 3;
    const WORKERS: usize = 4;
    const OPS_BEFORE_KILL: usize = 150;
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path());
    let mut c = d.client().await;
    prepare(&mut c, "base-active", "", &[]).await.unwrap();
    commit(&mut c, "base", "base-active").await.unwrap();
    drop(c);
    drop(d);

    let expect = Arc::new(Mutex::new(Expect::default()));
    for round in 0..ROUNDS {
        let mut d = Daemon::start(dir.path());
        let acked = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for w in 0..WORKERS {
            let c = d.client().await;
            tasks.push(tokio::spawn(worker(
                c,
                round * WORKERS + w,
                Arc::clone(&expect),
                Arc::clone(&acked),
            )));
        }
        let target = OPS_BEFORE_KILL;
        let acked2 = Arc::clone(&acked);
        tokio::task::spawn_blocking(move || {
            wait_for("acknowledged operations", || {
                acked2.load(Ordering::Relaxed) >= target
            })
        })
        .await
        .unwrap();
        d.signal_and_wait(nix::sys::signal::Signal::SIGKILL);
        for t in tasks {
            t.await.unwrap();
        }
        drop(d);

        // Restart: acknowledged state survived.
        let d = Daemon::start(dir.path());
        let mut c = d.client().await;
        let listed: HashSet<String> = list(&mut c, &[]).await.unwrap().into_iter().collect();
        {
            let e = expect.lock().unwrap();
            let lost: Vec<_> = e.present.difference(&listed).collect();
            assert!(
                lost.is_empty(),
                "round {round}: acknowledged snapshots lost: {lost:?}"
            );
            let zombies: Vec<_> = e.absent.intersection(&listed).collect();
            assert!(
                zombies.is_empty(),
                "round {round}: removed snapshots came back: {zombies:?}"
            );
        }
        assert!(listed.contains("base"));
        cleanup(&mut c).await.unwrap();
        drop(c);
        d.stop();

        // Directories and rows match one to one.
        let root = dir.path().join("root");
        let ids = db_ids(&root);
        let dirs = dir_entries(&root.join("snapshots"));
        assert_eq!(ids, dirs, "round {round}: rows vs directories");
        for id in &ids {
            assert!(root.join("snapshots").join(id).join("fs").is_dir());
        }
    }
}
