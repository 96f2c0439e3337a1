//! A scratch containerd for integration tests: its own root, state, sockets
//! and config (CRI off), with rstargz registered as a `proxy_plugins`
//! snapshotter, and `ctr`/`ctr-remote` against it. A missing binary fails
//! the test (scripts/setup.sh installs containerd and stargz-snapshotter).

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use crate::daemon::{DEADLINE, wait_for};
use crate::process::ProcessGuard;

/// A running containerd; SIGTERMed (then killed) on drop.
pub struct Containerd {
    // Held to stop containerd when dropped, after `drop` has deleted the
    // tasks (fields drop afterwards).
    #[allow(dead_code)]
    process: ProcessGuard,
    /// The gRPC socket.
    pub socket: PathBuf,
    /// The directory holding its config, root, state, sockets and log.
    pub dir: PathBuf,
}

impl Containerd {
    /// Starts containerd under `dir` with the snapshotter at
    /// `snapshotter_socket` registered as `plugin`.
    pub fn start(dir: &Path, snapshotter_socket: &Path, plugin: &str) -> Containerd {
        Containerd::start_with(
            dir,
            &format!(
                "[proxy_plugins.{plugin}]\n  type = \"snapshot\"\n  address = {snapshotter_socket:?}\n"
            ),
        )
    }

    /// Starts containerd under `dir` with `extra` appended to its config.
    pub fn start_with(dir: &Path, extra: &str) -> Containerd {
        let socket = dir.join("containerd.sock");
        let config = dir.join("containerd.toml");
        std::fs::write(
            &config,
            format!(
                "version = 2\nroot = {root:?}\nstate = {state:?}\n\
                 disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
                 [grpc]\n  address = {socket:?}\n\
                 [ttrpc]\n  address = {ttrpc:?}\n{extra}",
                root = dir.join("croot"),
                state = dir.join("cstate"),
                ttrpc = dir.join("containerd.sock.ttrpc"),
            ),
        )
        .unwrap();
        let mut cmd = Command::new("containerd");
        cmd.arg("--config").arg(&config);
        let mut process = ProcessGuard::spawn("containerd", cmd, &dir.join("containerd.log"))
            .unwrap_or_else(|e| panic!("containerd is installed (scripts/setup.sh): {e}"))
            .with_deadline(DEADLINE);
        if let Err(e) =
            process.wait_until(|| std::os::unix::net::UnixStream::connect(&socket).is_ok())
        {
            panic!("containerd socket: {e}");
        }
        Containerd {
            process,
            socket,
            dir: dir.to_path_buf(),
        }
    }

    /// Runs `tool` (`ctr` or `ctr-remote`) against this containerd.
    pub fn run_tool(&self, tool: &str, args: &[&str]) -> Output {
        Command::new(tool)
            .arg("--address")
            .arg(&self.socket)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("{tool} is installed (scripts/setup.sh): {e}"))
    }

    /// Runs `ctr` against this containerd; returns stdout, asserting success.
    pub fn ctr(&self, args: &[&str]) -> String {
        self.tool_ok("ctr", args)
    }

    /// Runs `tool`; returns stdout, asserting success.
    pub fn tool_ok(&self, tool: &str, args: &[&str]) -> String {
        let out = self.run_tool(tool, args);
        assert!(
            out.status.success(),
            "{tool} {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Polls (bounded) until containerd reaches the snapshotter `plugin`
    /// again: after the snapshotter restarts, containerd's gRPC client to it
    /// stays in reconnect backoff for a while (up to 3 s in containerd 1.6).
    pub fn wait_snapshotter(&self, plugin: &str) {
        // List and Stat are answered from containerd's own metadata; Prepare
        // reaches the snapshotter (a failed one rolls back, so the key is free).
        let snap = |op: &str| {
            self.run_tool(
                "ctr",
                &["snapshot", "--snapshotter", plugin, op, "reconnect-probe"],
            )
        };
        wait_for("containerd to reconnect to the snapshotter", || {
            snap("prepare").status.success()
        });
        let out = snap("rm");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// containerd's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.dir.join("containerd.log")).unwrap_or_default()
    }
}

impl Containerd {
    /// Kills and deletes every task in every namespace: shims outlive
    /// containerd, so a test failing mid-run would leave them (and their
    /// containers and cgroups) behind.
    fn kill_tasks(&self) {
        let lines = |args: &[&str]| -> Vec<String> {
            let out = self.run_tool("ctr", args);
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .map(str::to_owned)
                .collect()
        };
        for ns in lines(&["namespaces", "ls", "-q"]) {
            for task in lines(&["--namespace", &ns, "tasks", "ls", "-q"]) {
                let _ = self.run_tool("ctr", &["--namespace", &ns, "tasks", "delete", "-f", &task]);
            }
        }
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        // Then `process` stops containerd itself.
        self.kill_tasks();
    }
}

/// containerd 1.6 puts shim sockets under `/run/containerd/s` whatever its
/// `state` says; removes those directories on drop if they were not there
/// before (only when empty: another containerd may be using them).
pub struct RunDirGuard {
    existed: bool,
}

const RUN_DIR: &str = "/run/containerd";

impl RunDirGuard {
    /// Notes whether `/run/containerd` exists now.
    pub fn new() -> Self {
        RunDirGuard {
            existed: Path::new(RUN_DIR).exists(),
        }
    }
}

impl Default for RunDirGuard {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for RunDirGuard {
    fn drop(&mut self) {
        if !self.existed {
            for d in ["s", "runc", ""] {
                let _ = std::fs::remove_dir(Path::new(RUN_DIR).join(d));
            }
        }
    }
}
