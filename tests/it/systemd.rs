//! The node install under systemd: `deploy/rstargz.service` passes
//! `systemd-analyze verify`, and `rstargz serve` speaks the `Type=notify`
//! protocol (READY=1 only once its socket answers, STOPPING=1 on a signal).
//! Self-contained (own helpers); runs as root like the other system tests.

#![allow(clippy::unwrap_used)]

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use rstargz_proto::snapshots as pb;

/// How long start-up, a notification and shutdown may take.
const DEADLINE: Duration = Duration::from_secs(20);

/// The unit as shipped, with `ExecStart` pointed at the binary under test
/// (verify checks that the command exists) and nothing else changed.
fn unit_under_test() -> String {
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/rstargz.service"
    ))
    .unwrap();
    let shipped = "ExecStart=/usr/local/bin/rstargz ";
    assert_eq!(
        unit.matches(shipped).count(),
        1,
        "one ExecStart of /usr/local/bin/rstargz"
    );
    unit.replace(
        shipped,
        &format!("ExecStart={} ", env!("CARGO_BIN_EXE_rstargz")),
    )
}

#[test]
fn the_unit_passes_systemd_analyze_verify() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rstargz.service");
    std::fs::write(&path, unit_under_test()).unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&path)
        .output()
        .expect("systemd-analyze (Debian package systemd, scripts/setup.sh)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "verify failed: {stderr}");
    // Warnings (unknown keys, bad values, ...) don't change the exit status:
    // none may name our unit. Lines about other units of the host are not
    // ours to judge.
    let ours: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("rstargz.service"))
        .collect();
    assert!(ours.is_empty(), "warnings about the unit: {ours:#?}");
}

#[test]
fn the_unit_keeps_the_fd_holder_and_waits_for_ready() {
    // What the README promises about the unit; verify accepts other values.
    let unit = unit_under_test();
    for line in [
        "Type=notify",
        "KillMode=process",
        "Restart=always",
        "Before=containerd.service",
    ] {
        assert!(unit.lines().any(|l| l == line), "unit lacks {line}");
    }
}

/// A running `rstargz serve`, killed (and waited for) if the test fails.
struct Serve {
    child: Option<Child>,
    log: std::path::PathBuf,
}

impl Serve {
    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Panics with its log if the daemon exited before it was told to.
    fn check_running(&mut self) {
        if let Some(child) = self.child.as_mut()
            && let Some(status) = child.try_wait().unwrap()
        {
            panic!("daemon exited with {status}: {}", self.log_text());
        }
    }

    /// Sends SIGINT (full stop, unmounts) and waits, bounded, for the exit.
    fn interrupt(&mut self) -> ExitStatus {
        let child = self.child.take().unwrap();
        match rstargz_test_support::daemon::signal_and_wait(child, nix::sys::signal::Signal::SIGINT)
        {
            Ok(status) => status,
            Err(mut child) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("daemon did not exit on SIGINT: {}", self.log_text());
            }
        }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Waits (bounded) for a notification datagram carrying the line `state`,
/// returning every line received until then; fails early if the daemon
/// exits.
fn wait_for_notification(sock: &UnixDatagram, serve: &mut Serve, state: &str) -> Vec<String> {
    // Short receive timeouts so that a daemon that died is noticed at once.
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let start = Instant::now();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match sock.recv(&mut buf) {
            Ok(n) => {
                let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                let done = msg.lines().any(|l| l == state);
                seen.extend(msg.lines().map(str::to_owned));
                if done {
                    return seen;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => panic!("receive on NOTIFY_SOCKET: {e}"),
        }
        serve.check_running();
        assert!(
            start.elapsed() < DEADLINE,
            "no {state} within {DEADLINE:?} (got {seen:?}): {}",
            serve.log_text()
        );
    }
}

/// One cheap RPC on the daemon's socket: List, drained to its end.
fn list_snapshots(socket: &Path) -> usize {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut client =
            tokio::time::timeout(DEADLINE, rstargz_snapshotter::client::connect(socket))
                .await
                .expect("connect in time")
                .expect("the socket serves once READY=1 is sent");
        let mut stream = client
            .list(pb::ListSnapshotsRequest {
                snapshotter: String::new(),
                filters: Vec::new(),
            })
            .await
            .expect("List answers")
            .into_inner();
        let mut n = 0;
        while let Some(page) = stream.message().await.expect("List stream") {
            n += page.info.len();
        }
        n
    })
}

#[test]
fn serve_sends_ready_once_its_socket_answers_and_stopping_on_sigint() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let socket = dir.path().join("s.sock");
    let notify_path = dir.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    let log = dir.path().join("serve.log");
    let child = Command::new(env!("CARGO_BIN_EXE_rstargz"))
        .arg("serve")
        .arg("--root")
        .arg(&root)
        .arg("--address")
        .arg(&socket)
        .args(["--log-level", "debug"])
        .env("NOTIFY_SOCKET", &notify_path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut serve = Serve {
        child: Some(child),
        log,
    };

    let before = wait_for_notification(&notify, &mut serve, "READY=1");
    // READY=1 is the first thing said, and by now the socket answers.
    assert_eq!(before, ["READY=1"], "notifications before READY=1");
    assert_eq!(list_snapshots(&socket), 0, "a fresh root has no snapshots");
    let log_text = serve.log_text();
    assert!(
        log_text.contains("rstargz serving"),
        "READY=1 after start-up (restore included): {log_text}"
    );

    let status = serve.interrupt();
    assert!(
        status.success(),
        "unclean exit {status}: {}",
        serve.log_text()
    );
    let after = wait_for_notification(&notify, &mut serve, "STOPPING=1");
    assert_eq!(after, ["STOPPING=1"], "notifications after READY=1");
    assert!(!socket.exists(), "the socket is removed on exit");

    // The fd holder `serve` started leaves once nothing is held and no
    // daemon is connected (after its start-up grace): leave no process.
    let holder = root.join("fdstore.sock");
    let start = Instant::now();
    while holder.exists() {
        assert!(
            start.elapsed() < DEADLINE,
            "the fd holder did not exit: {}",
            serve.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
