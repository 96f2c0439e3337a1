//! The processes of a cold-start run: docker-registry, a snapshotter
//! daemon (rstargz or the Go reference), a private containerd, and the
//! `ctr`/`ctr-remote` commands. Each daemon is stopped (SIGTERM, then
//! SIGKILL after a bounded wait) when its guard drops.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rstargz_test_support::containerd;

pub use rstargz_test_support::process::ProcessGuard as Guard;

/// busybox-static on the host: the workloads' only executable.
pub const BUSYBOX: &str = "/bin/busybox";

/// Starts `cmd` under a [`Guard`], logging into `log`; the process dies
/// with the benchmark, however the benchmark ends.
pub fn spawn(name: &str, mut cmd: Command, log: &Path) -> std::io::Result<Guard> {
    rstargz_test_support::process::die_with_spawning_thread(&mut cmd);
    Guard::spawn(name, cmd, log)
}

fn socket_up(path: &Path) -> bool {
    std::os::unix::net::UnixStream::connect(path).is_ok()
}

/// Debian's docker-registry on `addr` storing under `dir`.
pub fn start_registry(dir: &Path, addr: std::net::SocketAddr) -> anyhow::Result<Guard> {
    std::fs::create_dir_all(dir)?;
    let config = dir.join("config.yml");
    std::fs::write(
        &config,
        rstargz_test_support::registry::config_yml(&dir.join("data"), addr),
    )?;
    let mut cmd = Command::new("docker-registry");
    cmd.arg("serve").arg(&config);
    let mut g = spawn("docker-registry", cmd, &dir.join("registry.log"))?;
    g.wait_until(|| std::net::TcpStream::connect(addr).is_ok())?;
    Ok(g)
}

/// Which snapshotter daemon serves a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Snapshotter {
    /// `rstargz serve`.
    Rstargz,
    /// The Go reference `containerd-stargz-grpc`.
    GoReference,
}

impl Snapshotter {
    /// The proxy plugin name in containerd.
    pub fn plugin(self) -> &'static str {
        match self {
            Snapshotter::Rstargz => "rstargz",
            Snapshotter::GoReference => "stargz",
        }
    }
}

/// Binaries the runs use.
#[derive(Debug, Clone)]
pub struct Binaries {
    /// The rstargz binary.
    pub rstargz: PathBuf,
    /// The Go reference daemon.
    pub go_reference: PathBuf,
}

/// A running snapshotter daemon.
#[derive(Debug)]
pub struct Daemon {
    /// Stops it when dropped.
    pub guard: Guard,
    /// Its gRPC socket.
    pub socket: PathBuf,
    /// Its metrics endpoint (rstargz only).
    pub metrics: Option<std::net::SocketAddr>,
}

/// Starts `which` with a fresh root under `dir`.
/// With `background_fetch` false both daemons run with
/// `no_background_fetch = true` (the bytes counted are then only what the
/// pull and the workload asked for); otherwise each keeps its default.
pub fn start_snapshotter(
    which: Snapshotter,
    bins: &Binaries,
    dir: &Path,
    background_fetch: bool,
) -> anyhow::Result<Daemon> {
    let root = dir.join(format!("{}-root", which.plugin()));
    let socket = dir.join(format!("{}.sock", which.plugin()));
    let config = dir.join(format!("{}.toml", which.plugin()));
    std::fs::create_dir_all(&root)?;
    let top = if background_fetch {
        ""
    } else {
        "no_background_fetch = true\n"
    };
    let metrics = match which {
        Snapshotter::Rstargz => Some(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?),
        Snapshotter::GoReference => None,
    };
    let cmd = match which {
        Snapshotter::Rstargz => {
            let metrics_line = metrics
                .map(|a| format!("metrics_address = \"{a}\"\n"))
                .unwrap_or_default();
            std::fs::write(
                &config,
                format!(
                    "{top}{metrics_line}{}\n[resolver]\ndocker_config = \"{}\"\n",
                    std::env::var("RSTARGZ_BENCH_CONFIG").unwrap_or_default(),
                    dir.join("no-docker-config.json").display()
                ),
            )?;
            let mut c = Command::new(&bins.rstargz);
            c.arg("serve")
                .arg("--root")
                .arg(&root)
                .arg("--address")
                .arg(&socket)
                .arg("--config")
                .arg(&config)
                .arg("--log-level")
                .arg(std::env::var("RSTARGZ_BENCH_LOG").unwrap_or_else(|_| "info".into()));
            c
        }
        Snapshotter::GoReference => {
            std::fs::write(&config, top)?;
            let mut c = Command::new(&bins.go_reference);
            c.arg("-address")
                .arg(&socket)
                .arg("-root")
                .arg(&root)
                .arg("-config")
                .arg(&config)
                .args(["-log-level", "info"]);
            c
        }
    };
    let log = dir.join(format!("{}.log", which.plugin()));
    let mut g = spawn(which.plugin(), cmd, &log)?;
    g.wait_until(|| socket_up(&socket))?;
    Ok(Daemon {
        guard: g,
        socket,
        metrics,
    })
}

/// A private containerd (own root, state, sockets; CRI off) with both
/// snapshotters registered as proxy plugins.
#[derive(Debug)]
pub struct Containerd {
    guard: Guard,
    /// Its gRPC socket.
    pub socket: PathBuf,
    dir: PathBuf,
}

/// containerd's namespace for the benchmark.
pub const NAMESPACE: &str = "rstargz-bench";

impl Containerd {
    /// Starts containerd under `dir`; `sockets` are the proxy plugins' sockets.
    pub fn start(dir: &Path, sockets: &[(Snapshotter, PathBuf)]) -> anyhow::Result<Containerd> {
        std::fs::create_dir_all(dir)?;
        let socket = dir.join("containerd.sock");
        let plugins: String = sockets
            .iter()
            .map(|(which, sock)| containerd::proxy_plugin(which.plugin(), sock))
            .collect();
        let path = dir.join("containerd.toml");
        std::fs::write(&path, containerd::config_toml(dir, false, &plugins))?;
        let mut cmd = Command::new("containerd");
        cmd.arg("--config").arg(&path);
        let mut guard = spawn("containerd", cmd, &dir.join("containerd.log"))?;
        let probe = socket.clone();
        guard.wait_until(|| {
            Command::new("ctr")
                .arg("--address")
                .arg(&probe)
                .arg("version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })?;
        Ok(Containerd {
            guard,
            socket,
            dir: dir.to_path_buf(),
        })
    }

    /// Runs `tool` (`ctr` or `ctr-remote`) in the benchmark namespace; returns stdout.
    pub fn tool(&self, tool: &str, args: &[&str]) -> anyhow::Result<String> {
        let out = Command::new(tool)
            .arg("--address")
            .arg(&self.socket)
            .args(["--namespace", NAMESPACE])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("run {tool} (install containerd / stargz-snapshotter)"))?;
        if !out.status.success() {
            bail!(
                "{tool} {args:?} failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Runs `cmd` in a new container `id` of `image` on `snapshotter`;
    /// returns its stdout. runc's state and the cgroup are private to the
    /// run (runc removes the one-level cgroup with the container).
    pub fn run(
        &self,
        snapshotter: &str,
        image: &str,
        id: &str,
        cmd: &[String],
    ) -> anyhow::Result<String> {
        self.run_with(&["--rm"], snapshotter, image, id, cmd)
    }

    /// Like [`Self::run`] with `extra` options of `ctr run` (`-d`, `--mount …`).
    pub fn run_with(
        &self,
        extra: &[&str],
        snapshotter: &str,
        image: &str,
        id: &str,
        cmd: &[String],
    ) -> anyhow::Result<String> {
        let fifo = self.dir.join("fifo");
        let runc = self.dir.join("runc");
        let cgroup = format!("/rstargz-bench-{}-{id}", std::process::id());
        let mut args: Vec<&str> = vec!["run"];
        args.extend(extra);
        args.extend([
            "--snapshotter",
            snapshotter,
            "--fifo-dir",
            path_str(&fifo)?,
            "--runc-root",
            path_str(&runc)?,
            "--cgroup",
            &cgroup,
            image,
            id,
        ]);
        args.extend(cmd.iter().map(String::as_str));
        self.tool("ctr", &args)
    }

    /// Kills and deletes leftover tasks (shims outlive containerd), then stops it.
    pub fn stop(mut self) {
        if let Ok(tasks) = self.tool("ctr", &["tasks", "ls", "-q"]) {
            for t in tasks.lines() {
                let _ = self.tool("ctr", &["tasks", "delete", "-f", t]);
            }
        }
        self.guard.stop();
    }
}

fn path_str(p: &Path) -> anyhow::Result<&str> {
    p.to_str()
        .with_context(|| format!("non-UTF-8 path {}", p.display()))
}

/// Writes dirty pages and drops the page cache, dentries and inodes.
pub fn drop_caches() -> anyhow::Result<()> {
    nix::unistd::sync();
    std::fs::write("/proc/sys/vm/drop_caches", "3").context("drop caches (needs root)")
}

/// Unmounts (lazily) everything mounted under `dir`, deepest first.
pub fn unmount_under(dir: &Path) {
    let Ok(table) = rstargz_fs::fuse::mountinfo::read() else {
        return;
    };
    let mut found: Vec<PathBuf> = table
        .into_iter()
        .map(|m| m.mountpoint)
        .filter(|p| p.starts_with(dir))
        .collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for m in found {
        if let Err(e) = nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH) {
            tracing::warn!(mount = %m.display(), error = %e, "cannot unmount");
        }
    }
}

/// Whether anything is mounted exactly at `dir`.
pub fn is_mountpoint(dir: &Path) -> bool {
    std::fs::read_to_string("/proc/self/mountinfo").is_ok_and(|info| {
        info.lines()
            .filter_map(|l| l.split(' ').nth(4))
            .any(|m| Path::new(m) == dir)
    })
}

/// Unmounts and removes `dir` (a previous run's leftovers included).
pub fn clean(dir: &Path) -> anyhow::Result<()> {
    if dir.exists() {
        unmount_under(dir);
        // Lazy unmounts of FUSE mounts finish asynchronously; retry briefly.
        let start = Instant::now();
        loop {
            match std::fs::remove_dir_all(dir) {
                Ok(()) => break,
                Err(e) if start.elapsed() < Duration::from_secs(10) => {
                    tracing::debug!(error = %e, "retrying removal of {}", dir.display());
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => return Err(e).with_context(|| format!("remove {}", dir.display())),
            }
        }
    }
    Ok(())
}
