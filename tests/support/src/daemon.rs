//! The daemon under test: `rstargz serve` on a temporary root and socket,
//! killed on drop (its FUSE mounts aborted), with a connected gRPC client.
//! The binary is `target/<profile>/rstargz` beside the running test
//! executable ([`rstargz_bin`]), or one given to [`Daemon::start_bin`].

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// `rstargz` of the cargo build that built the running test: a test
/// executable is `target/<profile>/deps/<name>-<hash>`, the binaries are in
/// `target/<profile>/`. Cargo builds the binary for its own package's
/// integration tests (`env!("CARGO_BIN_EXE_rstargz")` is this path there);
/// a missing one fails the test.
pub fn rstargz_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let exe = std::env::current_exe().expect("the test executable's path");
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .unwrap_or_else(|| panic!("{} is not in target/<profile>/deps", exe.display()));
        let bin = profile_dir.join("rstargz");
        assert!(
            bin.is_file(),
            "{} not built: run the tests through cargo (`cargo test -p rstargz` builds it)",
            bin.display()
        );
        bin
    })
    .clone()
}

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
pub fn wait_for(what: &str, cond: impl FnMut() -> bool) {
    wait_for_up_to(DEADLINE, what, cond)
}

/// Polls `cond` until it holds or `limit` passes (for waits longer than
/// start-up's, such as a container's run).
pub fn wait_for_up_to(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
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
        Daemon::start_bin(&rstargz_bin(), dir, extra)
    }

    /// Starts the daemon binary `bin` with extra arguments.
    pub fn start_bin(bin: &Path, dir: &Path, extra: &[&str]) -> Daemon {
        let root = dir.join("root");
        let socket = dir.join("rstargz.sock");
        // One log per start in `dir`, numbered from 0 (restarts keep the
        // earlier ones): `serve-<n>.log` is this directory's n-th daemon,
        // whatever other tests in the same process start.
        let (log, log_file) = (0..)
            .find_map(|n| {
                let log = dir.join(format!("serve-{n}.log"));
                match std::fs::File::create_new(&log) {
                    Ok(f) => Some((log, f)),
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => None,
                    Err(e) => panic!("create {}: {e}", log.display()),
                }
            })
            .unwrap();
        let child = Command::new(bin)
            .arg("serve")
            .arg("--root")
            .arg(&root)
            .arg("--address")
            .arg(&socket)
            .args(["--log-level", "debug"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
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
        let child = self.child.take().unwrap();
        match signal_and_wait(child, signal) {
            Ok(status) => status,
            Err(mut child) => {
                let states = thread_states(child.id());
                // Abort its mounts so the stuck process can go.
                rstargz_remote::restore::detach_stale_mounts(&self.root, &[]);
                let _ = child.wait();
                panic!("daemon did not exit on {signal}; its threads:\n{states}");
            }
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

/// Sends `signal` to `child` and waits up to [`DEADLINE`] for its exit
/// status; the child comes back, still running, if it does not exit.
pub fn signal_and_wait(
    mut child: Child,
    signal: nix::sys::signal::Signal,
) -> Result<ExitStatus, Child> {
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap());
    nix::sys::signal::kill(pid, signal).unwrap();
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Ok(status);
        }
        if start.elapsed() > DEADLINE {
            return Err(child);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
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
