//! The processes of a cold-start run: docker-registry, a snapshotter
//! daemon (rstargz or the Go reference), a private containerd, and the
//! `ctr`/`ctr-remote` commands. Each daemon is stopped (SIGTERM, then
//! SIGKILL after a bounded wait) when its guard drops.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// How long a daemon may take to come up or go down.
const DEADLINE: Duration = Duration::from_secs(30);

/// A child process stopped on drop.
#[derive(Debug)]
pub struct Guard {
    child: Child,
    name: &'static str,
    log: PathBuf,
}

impl Guard {
    /// Spawns `cmd` with stdout and stderr into `log`.
    pub fn spawn(name: &'static str, mut cmd: Command, log: &Path) -> anyhow::Result<Guard> {
        let out =
            std::fs::File::create(log).with_context(|| format!("create {}", log.display()))?;
        // Daemons die with the benchmark, however it ends.
        // SAFETY: prctl is async-signal-safe and touches no memory of ours.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("start {name} ({:?})", cmd.get_program()))?;
        Ok(Guard {
            child,
            name,
            log: log.to_path_buf(),
        })
    }

    /// Polls `ready` until it holds, failing if the process exits or the
    /// deadline passes.
    pub fn wait_until(&mut self, mut ready: impl FnMut() -> bool) -> anyhow::Result<()> {
        let start = Instant::now();
        while !ready() {
            if let Some(status) = self.child.try_wait()? {
                bail!("{} exited ({status}): {}", self.name, self.log_tail());
            }
            if start.elapsed() > DEADLINE {
                bail!(
                    "{} not ready after {DEADLINE:?}: {}",
                    self.name,
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let start = text.len().saturating_sub(2000);
        text.get(start..).unwrap_or_default().to_string()
    }

    /// SIGTERM, a bounded wait, then SIGKILL.
    pub fn stop(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        if let Ok(pid) = i32::try_from(self.child.id()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        let start = Instant::now();
        while matches!(self.child.try_wait(), Ok(None)) && start.elapsed() < DEADLINE {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.stop();
    }
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
        format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {addr}\n",
            dir.join("data").display()
        ),
    )?;
    let mut cmd = Command::new("docker-registry");
    cmd.arg("serve").arg(&config);
    let mut g = Guard::spawn("docker-registry", cmd, &dir.join("registry.log"))?;
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

/// Starts `which` with a fresh root under `dir`; returns it and its socket.
/// With `background_fetch` false both daemons run with
/// `no_background_fetch = true` (the bytes counted are then only what the
/// pull and the workload asked for); otherwise each keeps its default.
pub fn start_snapshotter(
    which: Snapshotter,
    bins: &Binaries,
    dir: &Path,
    background_fetch: bool,
) -> anyhow::Result<(Guard, PathBuf)> {
    let root = dir.join(format!("{}-root", which.plugin()));
    let socket = dir.join(format!("{}.sock", which.plugin()));
    let config = dir.join(format!("{}.toml", which.plugin()));
    std::fs::create_dir_all(&root)?;
    let top = if background_fetch {
        ""
    } else {
        "no_background_fetch = true\n"
    };
    let cmd = match which {
        Snapshotter::Rstargz => {
            std::fs::write(
                &config,
                format!(
                    "{top}{}\n[resolver]\ndocker_config = \"{}\"\n",
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
    let mut g = Guard::spawn(which.plugin(), cmd, &log)?;
    g.wait_until(|| socket_up(&socket))?;
    Ok((g, socket))
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
        let mut config = format!(
            "version = 2\nroot = {root:?}\nstate = {state:?}\n\
             [grpc]\n  address = {socket:?}\n\
             [ttrpc]\n  address = {ttrpc:?}\n\
             [plugins.\"io.containerd.grpc.v1.cri\"]\n  disable = true\n",
            root = dir.join("root"),
            state = dir.join("state"),
            ttrpc = dir.join("containerd.sock.ttrpc"),
        );
        for (which, sock) in sockets {
            config.push_str(&format!(
                "[proxy_plugins.{}]\n  type = \"snapshot\"\n  address = {sock:?}\n",
                which.plugin()
            ));
        }
        let path = dir.join("containerd.toml");
        std::fs::write(&path, config)?;
        let mut cmd = Command::new("containerd");
        cmd.arg("--config").arg(&path);
        let mut guard = Guard::spawn("containerd", cmd, &dir.join("containerd.log"))?;
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
        let fifo = self.dir.join("fifo");
        let runc = self.dir.join("runc");
        let cgroup = format!("/rstargz-bench-{}-{id}", std::process::id());
        let mut args: Vec<&str> = vec![
            "run",
            "--rm",
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
        ];
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
