//! Shared helpers for integration tests: run the real `rstargz serve` on a
//! temporary root and socket and talk to it with the generated gRPC client.

#![allow(dead_code, clippy::unwrap_used)]

// Helpers of the system tier only (see main.rs).
#[cfg(feature = "system")]
pub mod containerd;
#[cfg(feature = "system")]
pub mod docker;
#[cfg(feature = "system")]
pub mod image;
#[cfg(feature = "system")]
pub mod remote;
#[cfg(feature = "system")]
pub mod vhdx_check;
#[cfg(feature = "system")]
pub mod workload;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use rstargz_proto::snapshots as pb;

/// Generated client over our unix socket.
pub type Client = rstargz_snapshotter::client::Client;

/// How long start-up and shutdown may take before a test fails.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// A running `rstargz serve`.
pub struct Daemon {
    child: Option<Child>,
    /// Root directory (`--root`).
    pub root: PathBuf,
    /// Socket path (`--address`).
    pub socket: PathBuf,
    /// Log file (stderr of the daemon).
    pub log: PathBuf,
}

/// Polls `cond` until it holds or `DEADLINE` passes.
pub fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Daemon {
    /// Starts the daemon on `dir/root` and `dir/rstargz.sock`.
    pub fn start(dir: &Path) -> Daemon {
        Daemon::start_with(dir, &[])
    }

    /// Starts the daemon in LCOW fallback mode.
    pub fn start_lcow(dir: &Path) -> Daemon {
        Daemon::start_with(dir, &["--fallback", "lcow"])
    }

    /// Starts the daemon with extra arguments (e.g. `--config FILE`).
    pub fn start_with(dir: &Path, extra: &[&str]) -> Daemon {
        let root = dir.join("root");
        let socket = dir.join("rstargz.sock");
        // One log per start (restarts keep the earlier ones).
        static STARTS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = STARTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let log = dir.join(format!("serve-{n}.log"));
        let child = Command::new(env!("CARGO_BIN_EXE_rstargz"))
            .arg("serve")
            .arg("--root")
            .arg(&root)
            .arg("--address")
            .arg(&socket)
            .args(["--log-level", "debug"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut d = Daemon {
            child: Some(child),
            root,
            socket,
            log,
        };
        d.wait_ready();
        d
    }

    fn wait_ready(&mut self) {
        let start = Instant::now();
        loop {
            if std::os::unix::net::UnixStream::connect(&self.socket).is_ok() {
                return;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("daemon exited with {status}: {}", self.log_text());
            }
            assert!(
                start.elapsed() < DEADLINE,
                "daemon not ready: {}\nits threads:\n{}",
                self.log_text(),
                thread_states(self.pid())
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Process id of the daemon.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// The daemon's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A connected client.
    pub async fn client(&self) -> Client {
        rstargz_snapshotter::client::connect(&self.socket)
            .await
            .unwrap()
    }

    /// Sends `signal` and waits (bounded) for the exit status.
    pub fn signal_and_wait(&mut self, signal: nix::sys::signal::Signal) -> ExitStatus {
        let mut child = self.child.take().unwrap();
        let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap());
        nix::sys::signal::kill(pid, signal).unwrap();
        let start = Instant::now();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if start.elapsed() > DEADLINE {
                let states = thread_states(child.id());
                // Abort its mounts so the stuck process can go.
                rstargz_remote::restore::detach_stale_mounts(&self.root, &[]);
                let _ = child.wait();
                panic!("daemon did not exit on {signal}; its threads:\n{states}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGINT (a full stop: remote layers unmounted); asserts a clean exit.
    pub fn stop(mut self) {
        let status = self.signal_and_wait(nix::sys::signal::Signal::SIGINT);
        assert!(
            status.success(),
            "unclean exit {status}: {}",
            self.log_text()
        );
    }

    /// SIGTERM (remote layers stay mounted for the next daemon, live
    /// restart); asserts a clean exit.
    pub fn stop_for_restart(mut self) {
        let status = self.signal_and_wait(nix::sys::signal::Signal::SIGTERM);
        assert!(
            status.success(),
            "unclean exit {status}: {}",
            self.log_text()
        );
    }

    /// `snapshots/` under the root.
    pub fn snapshots_dir(&self) -> PathBuf {
        self.root.join("snapshots")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            // A killed daemon leaves its FUSE mounts behind (a failing
            // test must not leak them into the next one); aborting them
            // also frees a daemon stuck on its own mount.
            rstargz_remote::restore::detach_stale_mounts(&self.root, &[]);
            let _ = child.wait();
        }
    }
}

/// Labels from pairs.
pub fn labels(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Prepare.
pub async fn prepare(
    c: &mut Client,
    key: &str,
    parent: &str,
    l: &[(&str, &str)],
) -> Result<Vec<rstargz_proto::types::Mount>, tonic::Status> {
    c.prepare(pb::PrepareSnapshotRequest {
        snapshotter: String::new(),
        key: key.into(),
        parent: parent.into(),
        labels: labels(l),
    })
    .await
    .map(|r| r.into_inner().mounts)
}

/// View.
pub async fn view(
    c: &mut Client,
    key: &str,
    parent: &str,
) -> Result<Vec<rstargz_proto::types::Mount>, tonic::Status> {
    c.view(pb::ViewSnapshotRequest {
        snapshotter: String::new(),
        key: key.into(),
        parent: parent.into(),
        labels: HashMap::new(),
    })
    .await
    .map(|r| r.into_inner().mounts)
}

/// Mounts.
pub async fn mounts(
    c: &mut Client,
    key: &str,
) -> Result<Vec<rstargz_proto::types::Mount>, tonic::Status> {
    c.mounts(pb::MountsRequest {
        snapshotter: String::new(),
        key: key.into(),
    })
    .await
    .map(|r| r.into_inner().mounts)
}

/// Usage as (size, inodes).
pub async fn usage(c: &mut Client, key: &str) -> Result<(i64, i64), tonic::Status> {
    c.usage(pb::UsageRequest {
        snapshotter: String::new(),
        key: key.into(),
    })
    .await
    .map(|r| (r.get_ref().size, r.get_ref().inodes))
}

/// Commit.
pub async fn commit(c: &mut Client, name: &str, key: &str) -> Result<(), tonic::Status> {
    c.commit(pb::CommitSnapshotRequest {
        snapshotter: String::new(),
        name: name.into(),
        key: key.into(),
        labels: HashMap::new(),
    })
    .await
    .map(|_| ())
}

/// Remove.
pub async fn remove(c: &mut Client, key: &str) -> Result<(), tonic::Status> {
    c.remove(pb::RemoveSnapshotRequest {
        snapshotter: String::new(),
        key: key.into(),
    })
    .await
    .map(|_| ())
}

/// Stat.
pub async fn stat(c: &mut Client, key: &str) -> Result<pb::Info, tonic::Status> {
    c.stat(pb::StatSnapshotRequest {
        snapshotter: String::new(),
        key: key.into(),
    })
    .await
    .map(|r| r.into_inner().info.unwrap())
}

/// List with filters; returns sorted names.
pub async fn list(c: &mut Client, filters: &[&str]) -> Result<Vec<String>, tonic::Status> {
    let mut stream = c
        .list(pb::ListSnapshotsRequest {
            snapshotter: String::new(),
            filters: filters.iter().map(|f| f.to_string()).collect(),
        })
        .await?
        .into_inner();
    let mut names = Vec::new();
    while let Some(msg) = stream.message().await? {
        names.extend(msg.info.into_iter().map(|i| i.name));
    }
    names.sort();
    Ok(names)
}

/// Cleanup.
pub async fn cleanup(c: &mut Client) -> Result<(), tonic::Status> {
    c.cleanup(pb::CleanupRequest {
        snapshotter: String::new(),
    })
    .await
    .map(|_| ())
}

/// The directory of a snapshot without parents: the bind mount's source is
/// `<root>/snapshots/<id>/fs`.
pub fn bind_source(mounts: &[rstargz_proto::types::Mount]) -> PathBuf {
    assert_eq!(mounts.len(), 1);
    assert_eq!(mounts[0].r#type, "bind");
    PathBuf::from(&mounts[0].source)
}

/// Sorted names of the entries of `dir`.
pub fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// State, wait channel and kernel stack of every thread of `pid` (why a
/// process does not exit).
pub fn thread_states(pid: u32) -> String {
    let mut out = String::new();
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten();
    for task in tasks.flatten() {
        let dir = task.path();
        let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap_or_default();
        let state = read("status")
            .lines()
            .filter(|l| l.starts_with("Name:") || l.starts_with("State:"))
            .collect::<Vec<_>>()
            .join(" ");
        out.push_str(&format!(
            "{} {state} wchan={}\n{}\n",
            dir.display(),
            read("wchan"),
            read("stack")
        ));
    }
    out
}
