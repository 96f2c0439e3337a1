//! A scratch containerd for integration tests: its own root, state, sockets
//! and config (CRI off, or on with [`Containerd::start_cri`]), with rstargz
//! registered as a `proxy_plugins` snapshotter, and `ctr`/`ctr-remote`
//! against it. A missing binary fails the test (scripts/setup.sh installs
//! containerd and stargz-snapshotter).

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use crate::daemon::{DEADLINE, wait_for};
use crate::process::ProcessGuard;

/// The config of a scratch containerd under `dir` (root `croot`, state
/// `cstate`, sockets `containerd.sock{,.ttrpc}`), CRI on or off, with
/// `extra` appended (e.g. [`proxy_plugin`] sections).
pub fn config_toml(dir: &Path, cri: bool, extra: &str) -> String {
    let socket = dir.join("containerd.sock");
    let disabled = if cri {
        ""
    } else {
        "disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n"
    };
    format!(
        "version = 2\nroot = {root:?}\nstate = {state:?}\n{disabled}\
         [grpc]\n  address = {socket:?}\n\
         [ttrpc]\n  address = {ttrpc:?}\n{extra}",
        root = dir.join("croot"),
        state = dir.join("cstate"),
        ttrpc = dir.join("containerd.sock.ttrpc"),
    )
}

/// A `proxy_plugins` section registering the snapshotter at `socket` as `name`.
pub fn proxy_plugin(name: &str, socket: &Path) -> String {
    format!("[proxy_plugins.{name}]\n  type = \"snapshot\"\n  address = {socket:?}\n")
}

/// A running containerd; SIGTERMed (then killed) on drop.
pub struct Containerd {
    // Stopped when dropped, after `drop` has deleted the tasks.
    process: ProcessGuard,
    /// Whether the CRI plugin is on (drop then also detaches what CRI
    /// mounted under the state and root directories, e.g. sandbox shm).
    cri: bool,
    /// The gRPC socket.
    pub socket: PathBuf,
    /// The directory holding its config, root, state, sockets and log.
    pub dir: PathBuf,
}

impl Containerd {
    /// Starts containerd under `dir` with the snapshotter at
    /// `snapshotter_socket` registered as `plugin`.
    pub fn start(dir: &Path, snapshotter_socket: &Path, plugin: &str) -> Containerd {
        Containerd::start_with(dir, &proxy_plugin(plugin, snapshotter_socket))
    }

    /// Starts containerd under `dir` with `extra` appended to its config.
    pub fn start_with(dir: &Path, extra: &str) -> Containerd {
        Containerd::start_config(dir, false, extra)
    }

    /// Starts containerd under `dir` with its CRI plugin on, as kubelet
    /// uses it: images pulled into and containers run on the snapshotter
    /// at `snapshotter_socket` (registered as `plugin`) with the CRI
    /// snapshot labels on, `cri.sandbox_image` as the pause image, the
    /// registries in `cri.plain_http_registries` spoken to over plain HTTP, and
    /// CNI pointed at empty directories under `dir` (pods must use the host
    /// network). The CRI service is served on [`Containerd::socket`].
    pub fn start_cri(
        dir: &Path,
        snapshotter_socket: &Path,
        plugin: &str,
        cri: &CriConfig,
    ) -> Containerd {
        let certs = dir.join("certs.d");
        for host in &cri.plain_http_registries {
            std::fs::create_dir_all(certs.join(host)).unwrap();
            std::fs::write(
                certs.join(host).join("hosts.toml"),
                format!(
                    "server = \"http://{host}\"\n[host.\"http://{host}\"]\n  \
                     capabilities = [\"pull\", \"resolve\"]\n"
                ),
            )
            .unwrap();
        }
        // containerd 1.6's CRI creates `conf_dir` if missing (to watch it;
        // the default is the host's /etc/cni/net.d) and reads `bin_dir` only
        // to set up a pod network, which host-network pods skip.
        let (cni_bin, cni_conf) = (dir.join("cni-bin"), dir.join("cni-conf"));
        std::fs::create_dir_all(&cni_bin).unwrap();
        std::fs::create_dir_all(&cni_conf).unwrap();
        let cri_plugin = "plugins.\"io.containerd.grpc.v1.cri\"";
        Containerd::start_config(
            dir,
            true,
            &format!(
                "{proxy}[{cri_plugin}]\n  sandbox_image = {sandbox:?}\n  \
                 restrict_oom_score_adj = true\n  disable_apparmor = true\n  \
                 enable_selinux = false\n\
                 [{cri_plugin}.containerd]\n  snapshotter = {snapshotter:?}\n  \
                 disable_snapshot_annotations = false\n\
                 [{cri_plugin}.cni]\n  bin_dir = {cni_bin:?}\n  conf_dir = {cni_conf:?}\n\
                 [{cri_plugin}.registry]\n  config_path = {certs:?}\n",
                proxy = proxy_plugin(plugin, snapshotter_socket),
                sandbox = cri.sandbox_image,
                snapshotter = cri.snapshotter.as_deref().unwrap_or(plugin),
            ),
        )
    }

    fn start_config(dir: &Path, cri: bool, extra: &str) -> Containerd {
        let socket = dir.join("containerd.sock");
        let config = dir.join("containerd.toml");
        std::fs::write(&config, config_toml(dir, cri, extra)).unwrap();
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
            cri,
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

    /// Pulls `reference` lazily over plain HTTP with `ctr-remote image rpull`
    /// into `namespace` on the snapshotter `plugin`; returns its output.
    pub fn rpull(&self, namespace: &str, plugin: &str, reference: &str) -> String {
        self.tool_ok(
            "ctr-remote",
            &[
                "--namespace",
                namespace,
                "image",
                "rpull",
                "--plain-http",
                "--snapshotter",
                plugin,
                reference,
            ],
        )
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
        self.kill_tasks();
        self.process.stop();
        if self.cri {
            // Sandbox shm and anything else CRI left mounted (a test that
            // failed before RemovePodSandbox).
            for d in ["cstate", "croot"] {
                crate::host::unmount_all_under(&self.dir.join(d));
            }
        }
    }
}

/// What [`Containerd::start_cri`] configures in the CRI plugin.
#[derive(Debug, Clone, Default)]
pub struct CriConfig {
    /// The pause image (its entrypoint must keep running).
    pub sandbox_image: String,
    /// `host:port` of the registries to reach over plain HTTP.
    pub plain_http_registries: Vec<String>,
    /// The CRI plugin's snapshotter when not the proxy plugin (e.g.
    /// `overlayfs`, a baseline).
    pub snapshotter: Option<String>,
}

/// containerd 1.6 puts shim sockets under `/run/containerd/s` whatever its
/// `state` says (and CRI's runc root under `/run/containerd/runc`); removes
/// those directories on drop if they were not there
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
            // `runc/k8s.io`: runc's root for CRI's namespace.
            for d in ["s", "runc/k8s.io", "runc", ""] {
                let _ = std::fs::remove_dir(Path::new(RUN_DIR).join(d));
            }
        }
    }
}
