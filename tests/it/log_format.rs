//! `rstargz serve --log-format json`: every line the daemon (and the fd
//! holder it starts, which shares its stderr) writes is a JSON object shaped
//! like the Go stargz-snapshotter's logrus lines, so a log pipeline written
//! for the Go daemon (e.g. `jq 'select(."remote-snapshot-prepared" ==
//! "false")'`) reads ours unchanged. Self-contained helpers.

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use rstargz_proto::snapshots as pb;
use serde_json::{Map, Value};

/// How long start-up and shutdown may take.
const DEADLINE: Duration = Duration::from_secs(20);

/// Level names logrus writes.
const LOGRUS_LEVELS: [&str; 7] = [
    "trace", "debug", "info", "warning", "error", "fatal", "panic",
];

/// A running `rstargz serve`, killed if the test ends before it stops.
struct Serve {
    child: Option<Child>,
    root: PathBuf,
    socket: PathBuf,
    log: PathBuf,
}

impl Serve {
    /// Starts `serve` on `dir` with `config` as its config file and `extra`
    /// arguments, and waits (bounded) until its socket answers.
    fn start(dir: &Path, config: &str, extra: &[&str]) -> Serve {
        let config_path = dir.join("config.toml");
        std::fs::write(&config_path, config).unwrap();
        let root = dir.join("root");
        let socket = dir.join("rstargz.sock");
        let log = dir.join("serve.log");
        let child = Command::new(env!("CARGO_BIN_EXE_rstargz"))
            .arg("serve")
            .arg("--root")
            .arg(&root)
            .arg("--address")
            .arg(&socket)
            .arg("--config")
            .arg(&config_path)
            .args(["--log-level", "debug"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut serve = Serve {
            child: Some(child),
            root,
            socket,
            log,
        };
        let start = Instant::now();
        while std::os::unix::net::UnixStream::connect(&serve.socket).is_err() {
            if let Some(status) = serve.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("serve exited with {status}: {}", serve.log_text());
            }
            assert!(
                start.elapsed() < DEADLINE,
                "serve not ready: {}",
                serve.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        serve
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGINT, then waits (bounded) for the exit.
    fn stop(&mut self) -> ExitStatus {
        let child = self.child.take().unwrap();
        match rstargz_test_support::daemon::signal_and_wait(child, nix::sys::signal::Signal::SIGINT)
        {
            Ok(status) => status,
            Err(mut child) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("serve did not exit on SIGINT: {}", self.log_text());
            }
        }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            rstargz_remote::restore::detach_stale_mounts(&self.root, &[]);
            let _ = child.wait();
        }
    }
}

/// Parses every line of `log` as a logrus JSON line, checking `level`,
/// `msg` and `time`.
fn parse_lines(log: &str) -> Vec<Map<String, Value>> {
    assert!(!log.is_empty(), "no log at all");
    log.lines()
        .map(|line| {
            let obj: Map<String, Value> = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("not a JSON object ({e}): {line}"));
            let level = obj.get("level").and_then(Value::as_str);
            assert!(
                level.is_some_and(|l| LOGRUS_LEVELS.contains(&l)),
                "level: {line}"
            );
            assert!(obj.get("msg").is_some_and(Value::is_string), "msg: {line}");
            let time = obj.get("time").and_then(Value::as_str).unwrap_or_default();
            assert!(is_rfc3339(time), "time {time:?}: {line}");
            for (k, v) in &obj {
                assert!(
                    v.is_string() || v.is_number() || v.is_boolean(),
                    "field {k} is not flat: {line}"
                );
            }
            obj
        })
        .collect()
}

/// `YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM)` with plausible ranges.
fn is_rfc3339(t: &str) -> bool {
    let b = t.as_bytes();
    let digits = |r: std::ops::Range<usize>| {
        b.get(r.clone())
            .is_some_and(|s| s.iter().all(u8::is_ascii_digit))
            .then(|| t[r].parse::<u32>().unwrap_or(u32::MAX))
    };
    let date_time = b.len() >= 20
        && b[4] == b'-'
        && b[7] == b'-'
        && (b[10] == b'T' || b[10] == b't')
        && b[13] == b':'
        && b[16] == b':'
        && digits(0..4).is_some()
        && digits(5..7).is_some_and(|m| (1..=12).contains(&m))
        && digits(8..10).is_some_and(|d| (1..=31).contains(&d))
        && digits(11..13).is_some_and(|h| h < 24)
        && digits(14..16).is_some_and(|m| m < 60)
        && digits(17..19).is_some_and(|s| s < 61);
    if !date_time {
        return false;
    }
    let mut rest = &t[19..];
    if let Some(frac) = rest.strip_prefix('.') {
        let n = frac.bytes().take_while(u8::is_ascii_digit).count();
        if n == 0 {
            return false;
        }
        rest = &frac[n..];
    }
    match rest.as_bytes() {
        [b'Z' | b'z'] => true,
        [b'+' | b'-', h1, h2, b':', m1, m2] => [h1, h2, m1, m2].iter().all(|c| c.is_ascii_digit()),
        _ => false,
    }
}

fn labels(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Prepare/Commit/Remove of local snapshots, and a Prepare with a target
/// but no remote-source labels (declined: a local snapshot, logged with
/// `remote-snapshot-prepared="false"` and a reason).
async fn drive(socket: &Path) {
    let mut c = rstargz_snapshotter::client::connect(socket).await.unwrap();
    c.prepare(pb::PrepareSnapshotRequest {
        snapshotter: String::new(),
        key: "a".into(),
        parent: String::new(),
        labels: HashMap::new(),
    })
    .await
    .unwrap();
    c.commit(pb::CommitSnapshotRequest {
        snapshotter: String::new(),
        name: "base".into(),
        key: "a".into(),
        labels: HashMap::new(),
    })
    .await
    .unwrap();
    let mounts = c
        .prepare(pb::PrepareSnapshotRequest {
            snapshotter: String::new(),
            key: "default/1/extract-b".into(),
            parent: "base".into(),
            labels: labels(&[("containerd.io/snapshot.ref", "sha256:target-b")]),
        })
        .await
        .unwrap()
        .into_inner()
        .mounts;
    assert!(!mounts.is_empty(), "a declined layer gets local mounts");
    for key in ["default/1/extract-b", "base"] {
        c.remove(pb::RemoveSnapshotRequest {
            snapshotter: String::new(),
            key: key.into(),
        })
        .await
        .unwrap();
    }
}

/// The flag (json) overrides the file (text); every line parses, and the
/// declined Prepare carries the Go daemon's key and value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_lines_from_serve_and_its_fd_holder() {
    let dir = tempfile::tempdir().unwrap();
    let mut serve = Serve::start(
        dir.path(),
        "log_format = \"text\"\n",
        &["--log-format", "json"],
    );
    drive(&serve.socket).await;
    let status = serve.stop();
    let log = serve.log_text();
    assert!(status.success(), "exit {status}: {log}");
    let lines = parse_lines(&log);

    let declined: Vec<_> = lines
        .iter()
        .filter(|l| l.get("remote-snapshot-prepared") == Some(&Value::from("false")))
        .collect();
    assert_eq!(declined.len(), 1, "{log}");
    let d = declined[0];
    assert_eq!(d["key"], "sha256:target-b", "{d:?}");
    assert!(
        d.get("reason")
            .and_then(Value::as_str)
            .is_some_and(|r| !r.is_empty()),
        "no reason: {d:?}"
    );
    assert!(
        !lines
            .iter()
            .any(|l| l.contains_key("remote-snapshot-prepared") && l != d),
        "{log}"
    );
    // The grep a Go node's scripts use matches the raw line as well.
    assert!(
        log.contains("\"remote-snapshot-prepared\":\"false\""),
        "{log}"
    );

    let serving = lines
        .iter()
        .find(|l| l["msg"] == "rstargz serving")
        .unwrap_or_else(|| panic!("{log}"));
    assert_eq!(serving["level"], "info");
    assert_eq!(serving["fallback"], "overlayfs");
    assert!(serving["async_remove"].is_boolean(), "{serving:?}");
    assert!(
        lines.iter().any(|l| l["msg"] == "fd holder serving"),
        "the fd holder logs JSON too: {log}"
    );
    assert!(lines.iter().any(|l| l["msg"] == "stopped"), "{log}");
}

/// `log_format = "json"` in the file alone selects JSON; a start-up error
/// is then a `fatal` JSON line too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_key_selects_json() {
    let dir = tempfile::tempdir().unwrap();
    let mut serve = Serve::start(
        dir.path(),
        "log_format = \"json\"\n[fuse]\nlive_restart = false\n",
        &[],
    );
    let status = serve.stop();
    let log = serve.log_text();
    assert!(status.success(), "exit {status}: {log}");
    let lines = parse_lines(&log);
    assert!(lines.iter().any(|l| l["msg"] == "rstargz serving"), "{log}");

    // A second daemon on the socket of a running one fails at start-up.
    let mut first = Serve::start(dir.path(), "log_format = \"json\"\n", &[]);
    // No fd holder for the second one (it would keep the pipe open).
    let no_holder = dir.path().join("no-holder.toml");
    std::fs::write(&no_holder, "[fuse]\nlive_restart = false\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_rstargz"))
        .arg("serve")
        .arg("--root")
        .arg(dir.path().join("root2"))
        .arg("--address")
        .arg(&first.socket)
        .args(["--log-format", "json", "--config"])
        .arg(&no_holder)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let lines = parse_lines(&err);
    let fatal = lines.last().unwrap();
    assert_eq!(fatal["level"], "fatal", "{err}");
    assert!(
        fatal["error"]
            .as_str()
            .is_some_and(|e| e.contains("in use")),
        "{err}"
    );
    assert!(first.stop().success(), "{}", first.log_text());
}
