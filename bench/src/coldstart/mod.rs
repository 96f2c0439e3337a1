//! Cold start (the hello-bench idea): pull + create + run of a container to
//! the end of its workload, per image, link and mode, with every run on a
//! fresh snapshotter root, a fresh containerd and the page cache dropped.
//!
//! The registry sits behind the in-process [`Shaper`], which counts the
//! bytes and requests of each run's window and models the shaped link.
//! Modes: containerd's overlayfs with a full pull of the plain image,
//! rstargz and the Go reference with the eStargz image without and with
//! a prioritized list (recorded by running the workload once through
//! `rstargz mount --record`). With [`Options::cri`] the pull and run go
//! through containerd's CRI plugin instead of `ctr` ([`cri`]).

pub mod cri;
pub mod floor;
pub mod images;
pub mod model;
pub mod plot;
pub mod procs;
pub mod report;

pub use model::{ImageFacts, LinkCase, Machine, Mode, Report, Sample};

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rstargz_fs::estargz::WriterOptions;
use rstargz_fs::registry::{Registry, RegistryConfig};

use self::images::{Kind, LargeShape, Workload};
use self::procs::{Binaries, Containerd, Snapshotter};
use rstargz_image::build::{self, BuildOptions};
use rstargz_image::{self as image, ConvertOptions, ImageRef, Quiet};
use rstargz_test_support::proxy::{Counters, Link, Shaper};

/// What to measure.
#[derive(Debug, Clone)]
pub struct Options {
    /// Scratch directory (registry data, layer trees, run roots).
    pub work: PathBuf,
    /// Where the report (JSON, markdown, PNG) goes.
    pub out: PathBuf,
    /// Images.
    pub images: Vec<Kind>,
    /// Links.
    pub links: Vec<LinkCase>,
    /// Runs per image, link and mode.
    pub runs: usize,
    /// Shape of the large image.
    pub large: LargeShape,
    /// Binaries.
    pub bins: Binaries,
    /// Modes to run (all when empty).
    pub modes: Vec<Mode>,
    /// Lazy snapshotters keep their default background fetch (false:
    /// `no_background_fetch = true` for both, the method before issue 8).
    pub background_fetch: bool,
    /// Pull and run through containerd's CRI plugin, as kubelet does
    /// (modes [`cri::MODES`]).
    pub cri: bool,
}

/// Runs the benchmark and writes `report.json`, `report.md` and the plots into `opts.out`.
pub async fn run(opts: &Options) -> anyhow::Result<Report> {
    for bin in [
        "containerd",
        "ctr",
        "ctr-remote",
        "runc",
        "docker-registry",
        "chroot",
    ] {
        which(bin)?;
    }
    let modes: Vec<Mode> = Mode::ALL
        .into_iter()
        .filter(|m| opts.modes.is_empty() || opts.modes.contains(m))
        .filter(|m| !opts.cri || cri::MODES.contains(m))
        .collect();
    let go = modes
        .iter()
        .any(|m| m.snapshotter() == Some(Snapshotter::GoReference));
    if go && !opts.bins.go_reference.exists() {
        bail!(
            "{} is missing: build it with scripts/setup-bench.sh (kit: GO_REFERENCE_DIR, default ../shared/bench/go-reference)",
            opts.bins.go_reference.display()
        );
    }
    std::fs::create_dir_all(&opts.work)?;
    std::fs::create_dir_all(&opts.out)?;
    let registry_addr = free_addr()?;
    let _registry = procs::start_registry(&opts.work.join("registry"), registry_addr)?;
    let shaper = Shaper::start(
        std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        registry_addr,
        Link::LOOPBACK,
    )
    .await?;
    let client = Registry::new(RegistryConfig {
        docker_config: Some(opts.work.join("no-docker-config.json")),
        ..RegistryConfig::default()
    })?;
    let direct = registry_addr.to_string();
    let shaped = shaper.addr().to_string();

    let mut workloads = Vec::new();
    let mut facts = Vec::new();
    for kind in &opts.images {
        let started = Instant::now();
        let w = images::prepare(*kind, &opts.work.join("layers"), opts.large)?;
        let f = publish(&client, &w, &direct, opts).await?;
        eprintln!(
            "{}: {} layers, plain {:.1} MB, eStargz {:.1} MB, needs {:.2} MB ({} prioritized files); built in {:.0} s",
            kind.name(),
            f.layers,
            mb(f.plain_bytes),
            mb(f.esgz_bytes),
            mb(f.needs.needed_bytes),
            f.prioritized_files,
            started.elapsed().as_secs_f64()
        );
        // The trees are in the registry now; free the disk for the runs.
        if let Err(e) = std::fs::remove_dir_all(opts.work.join("layers").join(kind.name())) {
            tracing::warn!(error = %e, "cannot remove the layer trees");
        }
        workloads.push(w);
        facts.push(f);
    }

    let pause = if opts.cri {
        Some(cri::push_pause(&client, &direct, &opts.work).await?)
    } else {
        None
    };
    let mut samples = Vec::new();
    for link in &opts.links {
        shaper.set_link(link.link());
        for w in &workloads {
            for run in 0..opts.runs {
                for &mode in &modes {
                    let reference = format!("{shaped}/bench/{}:{}", w.kind.name(), mode.tag());
                    let s = match &pause {
                        Some(pause) => {
                            cri::measure(opts, &shaper, w, &reference, pause, mode, link, run).await
                        }
                        None => measure(opts, &shaper, w, &reference, mode, link, run),
                    }
                    .with_context(|| {
                        format!("{} {} {} run {run}", w.kind.name(), link.name, mode.label())
                    })?;
                    eprintln!(
                        "{:<7} {:<12} {:<22} run {run}: {:>7.2} s (pull {:>6.2} s) {:>9.2} MB {:>5} requests",
                        w.kind.name(),
                        link.name,
                        mode.label(),
                        s.total_s,
                        s.pull_s,
                        mb(s.bytes),
                        s.requests
                    );
                    samples.push(s);
                }
            }
            // After every image, so an interrupted run still leaves figures.
            report::write(&report(opts, &facts, &samples), &opts.out)?;
        }
    }
    let report = report(opts, &facts, &samples);
    report::write(&report, &opts.out)?;
    Ok(report)
}

fn report(opts: &Options, facts: &[ImageFacts], samples: &[Sample]) -> Report {
    Report {
        machine: machine(&opts.bins),
        links: opts.links.clone(),
        runs: opts.runs,
        background_fetch: opts.background_fetch,
        cri: opts.cri,
        images: facts.to_vec(),
        samples: samples.to_vec(),
    }
}

fn mb(b: u64) -> f64 {
    b as f64 / 1e6
}

/// Where `bin` is on the PATH.
fn which(bin: &str) -> anyhow::Result<PathBuf> {
    std::env::var_os("PATH")
        .and_then(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join(bin))
                .find(|f| f.is_file())
        })
        .with_context(|| format!("{bin} is not installed (scripts/setup.sh)"))
}

fn free_addr() -> anyhow::Result<std::net::SocketAddr> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?)
}

/// Pushes the plain image, converts it to eStargz, records the workload's
/// opened files through `rstargz mount --record`, converts again with them
/// prioritized, and reads what the workload needs.
async fn publish(
    client: &Registry,
    w: &Workload,
    registry: &str,
    opts: &Options,
) -> anyhow::Result<ImageFacts> {
    let name = w.kind.name();
    let at = |tag: &str| ImageRef::parse(&format!("{registry}/bench/{name}:{tag}"));
    build::from_dirs(client, &at("plain")?, &w.layers, &BuildOptions::default()).await?;
    let convert = |prioritized: Vec<String>| {
        let (src, dst) = (
            at("plain"),
            at(if prioritized.is_empty() {
                "esgz"
            } else {
                "prio"
            }),
        );
        async move {
            let copts = ConvertOptions {
                writer: WriterOptions {
                    prioritized,
                    ..WriterOptions::default()
                },
                // One layer at a time: the large image's temporary files
                // would otherwise need several GB at once.
                parallelism: 1,
                temp_dir: Some(opts.work.join("tmp")),
                ..ConvertOptions::default()
            };
            image::convert(client, &src?, &dst?, &copts, Arc::new(Quiet)).await?;
            anyhow::Ok(())
        }
    };
    std::fs::create_dir_all(opts.work.join("tmp"))?;
    convert(Vec::new()).await?;
    let recorded = record(w, &format!("{registry}/bench/{name}:esgz"), opts)?;
    if recorded.is_empty() {
        bail!("recording {name}'s workload saw no opened files");
    }
    convert(recorded.clone()).await?;
    let needs = floor::needs(client, &format!("{registry}/bench/{name}:prio")).await?;
    let esgz = floor::needs(client, &format!("{registry}/bench/{name}:esgz")).await?;
    let plain = layer_bytes(client, &format!("{registry}/bench/{name}:plain")).await?;
    Ok(ImageFacts {
        image: w.kind,
        layers: needs.layers,
        plain_bytes: plain,
        esgz_bytes: esgz.layer_bytes,
        needs,
        prioritized_files: recorded.len(),
        command: w.cmd.clone(),
    })
}

async fn layer_bytes(client: &Registry, reference: &str) -> anyhow::Result<u64> {
    let fetched = client
        .get_manifest(&rstargz_fs::registry::Reference::parse(reference)?)
        .await?;
    let m: serde_json::Value = serde_json::from_slice(&fetched.bytes)?;
    Ok(m["layers"]
        .as_array()
        .context("manifest without layers")?
        .iter()
        .filter_map(|l| l["size"].as_u64())
        .sum())
}

/// Runs the workload once in a chroot of `rstargz mount --record` of
/// `reference`; returns the files it opened, in first-open order.
fn record(w: &Workload, reference: &str, opts: &Options) -> anyhow::Result<Vec<String>> {
    let dir = opts.work.join("record");
    if dir.exists() {
        procs::unmount_under(&dir);
        std::fs::remove_dir_all(&dir)?;
    }
    let rootfs = dir.join("rootfs");
    std::fs::create_dir_all(&rootfs)?;
    let config = dir.join("mount.toml");
    std::fs::write(
        &config,
        format!(
            "no_background_fetch = true\n[resolver]\ndocker_config = \"{}\"\n",
            dir.join("none.json").display()
        ),
    )?;
    let list = dir.join("record.txt");
    let mut cmd = Command::new(&opts.bins.rstargz);
    cmd.arg("mount")
        .arg(reference)
        .arg(&rootfs)
        .arg("--plain-http")
        .arg("--state-dir")
        .arg(dir.join("state"))
        .arg("--config")
        .arg(&config)
        .arg("--record")
        .arg(&list);
    let mut mount = procs::spawn("rstargz mount", cmd, &dir.join("mount.log"))?;
    mount.wait_until(|| procs::is_mountpoint(&rootfs))?;
    // The workloads redirect to /dev/null: lend the host's /dev.
    let dev = rootfs.join("dev");
    nix::mount::mount(
        Some("/dev"),
        &dev,
        None::<&str>,
        nix::mount::MsFlags::MS_BIND,
        None::<&str>,
    )
    .context("bind /dev into the recording chroot")?;
    let out = Command::new(which("chroot")?)
        .arg(&rootfs)
        .args(&w.cmd)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .output();
    let _ = nix::mount::umount2(&dev, nix::mount::MntFlags::MNT_DETACH);
    mount.stop();
    let out = out.context("chroot")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() || !stdout.contains(&w.expect) {
        bail!(
            "the workload failed in the recording chroot: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = std::fs::read_to_string(&list)
        .with_context(|| format!("no record at {}", list.display()))?;
    Ok(text.lines().map(str::to_owned).collect())
}

/// One cold start of `reference` in `mode`.
fn measure(
    opts: &Options,
    shaper: &Shaper,
    w: &Workload,
    reference: &str,
    mode: Mode,
    link: &LinkCase,
    run: usize,
) -> anyhow::Result<Sample> {
    let dir = opts.work.join("run");
    clean(&dir)?;
    std::fs::create_dir_all(&dir)?;
    let sockets = [
        (Snapshotter::Rstargz, dir.join("rstargz.sock")),
        (Snapshotter::GoReference, dir.join("stargz.sock")),
    ];
    let result = (|| {
        let snap = mode
            .snapshotter()
            .map(|s| procs::start_snapshotter(s, &opts.bins, &dir, opts.background_fetch))
            .transpose()?;
        let ctrd = Containerd::start(&dir.join("containerd"), &sockets)?;
        let sample = timed_run(&ctrd, shaper, w, reference, mode, link, run);
        ctrd.stop();
        drop(snap);
        keep_logs(
            &dir,
            &opts.out,
            &format!("{}-{}-{:?}-{run}", w.kind.name(), link.name, mode),
        );
        let sample = sample?;
        if let Some(s) = mode.snapshotter() {
            check_remote(&dir.join(format!("{}.log", s.plugin())), s)?;
        }
        anyhow::Ok(sample)
    })();
    clean(&dir)?;
    result
}

fn timed_run(
    ctrd: &Containerd,
    shaper: &Shaper,
    w: &Workload,
    reference: &str,
    mode: Mode,
    link: &LinkCase,
    run: usize,
) -> anyhow::Result<Sample> {
    let plugin = mode.snapshotter().map_or("overlayfs", Snapshotter::plugin);
    procs::drop_caches()?;
    let before = shaper.counters();
    let start = Instant::now();
    match mode {
        Mode::Overlayfs => {
            ctrd.tool(
                "ctr",
                &[
                    "image",
                    "pull",
                    "--plain-http",
                    "--snapshotter",
                    plugin,
                    reference,
                ],
            )?;
        }
        _ => {
            ctrd.tool(
                "ctr-remote",
                &[
                    "image",
                    "rpull",
                    "--plain-http",
                    "--snapshotter",
                    plugin,
                    reference,
                ],
            )?;
        }
    }
    let pulled = start.elapsed();
    let out = ctrd.run(plugin, reference, &format!("cold-{run}"), &w.cmd)?;
    let total = start.elapsed();
    let counted = shaper.counters().since(&before);
    if !out.contains(&w.expect) {
        bail!("unexpected output: {out}");
    }
    let local_run_s = if mode == Mode::Overlayfs {
        procs::drop_caches()?;
        let t = Instant::now();
        ctrd.run(plugin, reference, &format!("local-{run}"), &w.cmd)?;
        Some(t.elapsed().as_secs_f64())
    } else {
        None
    };
    Ok(sample(
        w,
        link,
        mode,
        run,
        (pulled, total, counted),
        local_run_s,
    ))
}

/// The sample of one timed window: `(pull, total, registry counters)`.
fn sample(
    w: &Workload,
    link: &LinkCase,
    mode: Mode,
    run: usize,
    (pulled, total, counted): (Duration, Duration, Counters),
    local_run_s: Option<f64>,
) -> Sample {
    Sample {
        image: w.kind,
        link: link.name.clone(),
        mode,
        run,
        pull_s: pulled.as_secs_f64(),
        total_s: total.as_secs_f64(),
        bytes: counted.bytes_down,
        requests: counted.requests,
        connections: counted.connections,
        local_run_s,
    }
}

/// Copies the run's daemon logs to `<out>/logs/<name>-*.log`.
fn keep_logs(dir: &Path, out: &Path, name: &str) {
    let logs = out.join("logs");
    if std::fs::create_dir_all(&logs).is_err() {
        return;
    }
    for (from, to) in [
        (dir.join("rstargz.log"), "rstargz"),
        (dir.join("stargz.log"), "go"),
        (dir.join("containerd/containerd.log"), "containerd"),
    ] {
        if from.exists() {
            let _ = std::fs::copy(&from, logs.join(format!("{name}-{to}.log")));
        }
    }
}

/// Fails when a lazy mode fell back to a full pull (the log says why).
fn check_remote(log: &Path, which: Snapshotter) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let fell_back = match which {
        Snapshotter::Rstargz => text.contains("remote-snapshot-prepared=\"false\""),
        Snapshotter::GoReference => text.contains("\"remote-snapshot-prepared\":\"false\""),
    };
    if fell_back {
        bail!(
            "{} did not mount the layers remotely; see {}",
            which.plugin(),
            log.display()
        );
    }
    Ok(())
}

/// Unmounts and removes `dir` (a previous run's leftovers included).
fn clean(dir: &Path) -> anyhow::Result<()> {
    if dir.exists() {
        procs::unmount_under(dir);
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

fn machine(bins: &Binaries) -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_default();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_kb: f64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0.0);
    let output = |cmd: &str, args: &[&str]| {
        Command::new(cmd)
            .args(args)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    };
    let commit = output("git", &["rev-parse", "--short", "HEAD"]);
    Machine {
        cpu,
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        memory_gib: mem_kb / (1024.0 * 1024.0),
        kernel: output("uname", &["-r"]),
        containerd: output("containerd", &["--version"]),
        go_reference: format!(
            "{} ({})",
            output(
                "dpkg-query",
                &[
                    "-W",
                    "-f=${Version}",
                    "golang-github-containerd-stargz-snapshotter-dev"
                ]
            ),
            bins.go_reference.display()
        ),
        rstargz: format!("{} {commit}", env!("CARGO_PKG_VERSION")),
    }
}
