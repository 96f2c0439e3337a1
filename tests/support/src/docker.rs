//! Docker for the dev-stack test: a scratch `dockerd` (own data root, exec
//! root, socket, pidfile and containerd; no bridge, no iptables), the
//! Debian base image made offline with `mmdebstrap` (cached), and
//! `docker compose` / `docker-compose` against the repo's
//! docker-compose.yml. Every command runs with a time limit; everything is
//! torn down on drop, also when the test fails. A missing tool fails the
//! test (scripts/setup.sh installs docker.io, docker-compose and mmdebstrap).

use std::io::{Read, Seek};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use sha2::Digest as _;

use crate::containerd::Containerd;
use crate::host::{cgroup_dirs, unmount_all_under};
use crate::process::ProcessGuard;

/// Limit of ordinary docker commands.
pub const COMMAND_LIMIT: Duration = Duration::from_secs(120);
/// Limit of image builds (the base build may run apt when the base image
/// lacks the packages).
pub const BUILD_LIMIT: Duration = Duration::from_secs(600);
/// Where the base rootfs tarball is cached between runs.
pub const CACHE_DIR: &str = "/var/cache/rstargz-test";
/// Packages of the cached base: everything both images of
/// deploy/Dockerfile need, so building them touches no network.
const BASE_PACKAGES: &[&str] = &[
    "ca-certificates",
    "containerd",
    "runc",
    "stargz-snapshotter",
    "fuse3",
    "docker-registry",
    "busybox-static",
];

/// Runs `cmd` (stdin closed) until it exits or `limit` passes; a command
/// still running then is killed and reported as an error.
pub fn run_limited(cmd: &mut Command, limit: Duration) -> std::io::Result<Output> {
    let mut out = tempfile::tempfile()?;
    let mut err = tempfile::tempfile()?;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(err.try_clone()?)
        .spawn()?;
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("{cmd:?} still running after {limit:?}"),
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let read = |f: &mut std::fs::File| -> std::io::Result<Vec<u8>> {
        let mut v = Vec::new();
        f.rewind()?;
        f.read_to_end(&mut v)?;
        Ok(v)
    };
    Ok(Output {
        status,
        stdout: read(&mut out)?,
        stderr: read(&mut err)?,
    })
}

/// [`run_limited`], asserting success; returns stdout.
pub fn run_ok(cmd: &mut Command, limit: Duration) -> String {
    let what = format!("{cmd:?}");
    let out = run_limited(cmd, limit).unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what}: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Polls `cond` every `every` until it holds; panics with `diag()` after
/// `limit`.
pub fn poll(
    what: &str,
    limit: Duration,
    every: Duration,
    mut cond: impl FnMut() -> bool,
    diag: impl Fn() -> String,
) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < limit,
            "timed out waiting for {what}: {}",
            diag()
        );
        std::thread::sleep(every);
    }
}

/// The host's Debian codename (the base must match the glibc the host
/// binary was built against).
fn host_suite() -> String {
    let release = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
    release
        .lines()
        .find_map(|l| l.strip_prefix("VERSION_CODENAME="))
        .map(|s| s.trim_matches('"').to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "bookworm".into())
}

/// A rootfs tarball of the host's Debian suite with [`BASE_PACKAGES`],
/// made by `mmdebstrap` from the machine's apt sources and cached in
/// [`CACHE_DIR`], keyed by the day and by a hash of the command and the
/// apt sources (so a day's runs share it and package updates come in
/// daily). Older tarballs are removed.
pub fn base_rootfs() -> PathBuf {
    let suite = host_suite();
    let args: Vec<String> = [
        "--variant=apt".to_owned(),
        "--format=tar".to_owned(),
        format!("--include={}", BASE_PACKAGES.join(",")),
        "--dpkgopt=path-exclude=/usr/share/doc/*".to_owned(),
        "--dpkgopt=path-exclude=/usr/share/man/*".to_owned(),
        "--dpkgopt=path-exclude=/usr/share/locale/*".to_owned(),
        suite.clone(),
    ]
    .into();
    let mut key = sha2::Sha256::new();
    key.update(args.join("\n"));
    let mut sources = vec![PathBuf::from("/etc/apt/sources.list")];
    if let Ok(dir) = std::fs::read_dir("/etc/apt/sources.list.d") {
        let mut more: Vec<PathBuf> = dir.filter_map(|e| e.ok().map(|e| e.path())).collect();
        more.sort();
        sources.extend(more);
    }
    for s in &sources {
        key.update(std::fs::read(s).unwrap_or_default());
    }
    let hash: String = key.finalize()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let day = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        / 86_400;
    let cache = Path::new(CACHE_DIR);
    std::fs::create_dir_all(cache).unwrap();
    let name = format!("base-{suite}-d{day}-{hash}.tar");
    let path = cache.join(&name);
    if path.exists() {
        return path;
    }
    // Older days' tarballs, and temp files of runs killed mid-build.
    for e in std::fs::read_dir(cache).unwrap().flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        let stale_tmp = n.starts_with('.')
            && e.metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| t.elapsed().unwrap_or_default() > 2 * BUILD_LIMIT);
        if (n.starts_with("base-") && n.ends_with(".tar")) || stale_tmp {
            let _ = std::fs::remove_file(e.path());
        }
    }
    // Concurrent runs each build their own temp file; the rename is atomic.
    let tmp = cache.join(format!(".{}.{name}", std::process::id()));
    let out = run_limited(
        Command::new("mmdebstrap").args(&args).arg(&tmp),
        BUILD_LIMIT,
    )
    .unwrap_or_else(|e| panic!("mmdebstrap (install it: scripts/setup.sh): {e}"));
    if !out.status.success() {
        let _ = std::fs::remove_file(&tmp);
        panic!(
            "mmdebstrap {args:?}: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    std::fs::rename(&tmp, &path).unwrap();
    path
}

/// A scratch `dockerd` on its own socket, with its own containerd; SIGTERMed
/// (then killed) on drop, its leftover mounts detached.
pub struct Dockerd {
    process: ProcessGuard,
    dir: PathBuf,
    /// `unix://` address for `DOCKER_HOST`.
    pub host: String,
    /// Empty docker client config (no credential helpers of the machine).
    pub client_config: PathBuf,
    /// Cgroup parent of its containers (removed on drop).
    cgroup_parent: String,
    // Dropped after dockerd has stopped (fields drop after `drop`); held
    // only for that.
    #[allow(dead_code)]
    containerd: Containerd,
}

impl Dockerd {
    /// Starts dockerd under `dir` and waits (bounded) until it answers.
    pub fn start(dir: &Path) -> Dockerd {
        let dir = dir.to_path_buf();
        // Its own containerd: dockerd would otherwise use one found at
        // /run/containerd/containerd.sock (the machine's).
        let ctrd_dir = dir.join("containerd");
        std::fs::create_dir_all(&ctrd_dir).unwrap();
        let containerd = Containerd::start_with(&ctrd_dir, "");
        let client_config = dir.join("docker-client");
        std::fs::create_dir_all(&client_config).unwrap();
        let daemon_json = dir.join("daemon.json");
        std::fs::write(&daemon_json, "{}").unwrap();
        // Images and volumes in memory: writing them to disk and removing
        // them afterwards is most of the test's time on a slow disk.
        let data_root = dir.join("data");
        std::fs::create_dir_all(&data_root).unwrap();
        nix::mount::mount(
            Some("tmpfs"),
            &data_root,
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            Some("mode=0711"),
        )
        .unwrap();
        let socket = dir.join("docker.sock");
        let log = dir.join("dockerd.log");
        // Not the default `docker`: that one may be another dockerd's.
        let cgroup_parent = format!("rstargz-dockerd-{}", std::process::id());
        let mut cmd = Command::new("dockerd");
        cmd.arg("--config-file")
            .arg(&daemon_json)
            .arg("--data-root")
            .arg(&data_root)
            .arg("--exec-root")
            .arg(dir.join("exec"))
            .arg("--pidfile")
            .arg(dir.join("docker.pid"))
            .arg("--host")
            .arg(format!("unix://{}", socket.display()))
            .arg("--containerd")
            .arg(&containerd.socket)
            .arg(format!("--cgroup-parent=/{cgroup_parent}"))
            // No container network and no host firewall or sysctl changes:
            // every service uses the host's network on 127.0.0.1.
            .args([
                "--bridge=none",
                "--iptables=false",
                "--ip-forward=false",
                "--ip-masq=false",
                "--userland-proxy=false",
            ]);
        let process = match ProcessGuard::spawn("dockerd", cmd, &log) {
            Ok(p) => p.with_deadline(Duration::from_secs(30)),
            Err(e) => {
                let _ = nix::mount::umount2(&data_root, nix::mount::MntFlags::MNT_DETACH);
                panic!("dockerd (install docker.io: scripts/setup.sh): {e}");
            }
        };
        let mut d = Dockerd {
            process,
            host: format!("unix://{}", socket.display()),
            client_config,
            cgroup_parent,
            containerd,
            dir,
        };
        let log_text = || std::fs::read_to_string(&log).unwrap_or_default();
        poll(
            "dockerd",
            Duration::from_secs(60),
            Duration::from_millis(100),
            || {
                assert!(
                    d.process.exited().is_none(),
                    "dockerd exited: {}",
                    log_text()
                );
                run_limited(d.docker().arg("version"), COMMAND_LIMIT)
                    .map(|o| o.status.success())
                    .unwrap_or(false)
            },
            log_text,
        );
        d
    }

    /// Environment of docker clients talking to this daemon.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("DOCKER_HOST".into(), self.host.clone()),
            (
                "DOCKER_CONFIG".into(),
                self.client_config.display().to_string(),
            ),
            // The classic builder: BuildKit needs the buildx plugin.
            ("DOCKER_BUILDKIT".into(), "0".into()),
            ("COMPOSE_DOCKER_CLI_BUILD".into(), "0".into()),
        ]
    }

    /// A `docker` command against this daemon.
    pub fn docker(&self) -> Command {
        let mut c = Command::new("docker");
        c.envs(self.env());
        c
    }

    /// Runs `docker ARGS` (bounded), asserting success; returns stdout.
    pub fn ok(&self, args: &[&str], limit: Duration) -> String {
        run_ok(self.docker().args(args), limit)
    }

    /// dockerd's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.dir.join("dockerd.log")).unwrap_or_default()
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        // Its mounts and cgroups go only once it has stopped.
        self.process.stop();
        unmount_all_under(&self.dir);
        for d in cgroup_dirs(&self.cgroup_parent) {
            let _ = std::fs::remove_dir(d);
        }
    }
}

/// A compose project of the repo's docker-compose.yml on a [`Dockerd`];
/// `down -v` on drop.
pub struct Compose<'a> {
    docker: &'a Dockerd,
    /// `docker compose` when that plugin exists, else `docker-compose`.
    program: Vec<String>,
    project: String,
    env: Vec<(String, String)>,
}

impl<'a> Compose<'a> {
    /// The project `project` with `env` (the `RSTARGZ_*` variables).
    pub fn new(docker: &'a Dockerd, project: &str, env: &[(&str, &str)]) -> Compose<'a> {
        let plugin = run_limited(docker.docker().args(["compose", "version"]), COMMAND_LIMIT)
            .map(|o| o.status.success())
            .unwrap_or(false);
        let program = if plugin {
            vec!["docker".into(), "compose".into()]
        } else {
            vec!["docker-compose".into()]
        };
        Compose {
            docker,
            program,
            project: project.into(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    /// A compose command with the project's file, name and environment.
    pub fn command(&self, args: &[&str]) -> Command {
        let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docker-compose.yml");
        let mut c = Command::new(&self.program[0]);
        c.args(&self.program[1..])
            .arg("--file")
            .arg(file)
            .args(["--project-name", &self.project])
            .args(args)
            .envs(self.docker.env())
            .envs(self.env.iter().cloned());
        c
    }

    /// Runs a compose command (bounded), asserting success; returns stdout.
    pub fn ok(&self, args: &[&str], limit: Duration) -> String {
        run_ok(&mut self.command(args), limit)
    }

    /// Runs `cmd` in the running `service` (`exec -T`).
    pub fn exec(&self, service: &str, cmd: &[&str]) -> Output {
        let mut args = vec!["exec", "-T", service];
        args.extend_from_slice(cmd);
        run_limited(&mut self.command(&args), COMMAND_LIMIT).unwrap()
    }

    /// [`Compose::exec`], asserting success; returns stdout.
    pub fn exec_ok(&self, service: &str, cmd: &[&str]) -> String {
        let out = self.exec(service, cmd);
        assert!(
            out.status.success(),
            "{cmd:?} in {service}: {}\n{}{}\nlogs:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.logs(service)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// The output of `service` so far.
    pub fn logs(&self, service: &str) -> String {
        run_limited(
            &mut self.command(&["logs", "--no-color", service]),
            COMMAND_LIMIT,
        )
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
    }
}

impl Drop for Compose<'_> {
    fn drop(&mut self) {
        match run_limited(
            &mut self.command(&["down", "--volumes", "--timeout", "10"]),
            COMMAND_LIMIT,
        ) {
            Ok(o) if o.status.success() => {}
            Ok(o) => eprintln!("compose down: {}", String::from_utf8_lossy(&o.stderr)),
            Err(e) => eprintln!("compose down: {e}"),
        }
    }
}
