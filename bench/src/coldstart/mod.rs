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

pub mod analysis;
pub mod converters;
pub mod cri;
pub mod floor;
pub mod images;
pub mod model;
pub mod plot;
pub mod probe;
pub mod procs;
pub mod report;

pub use converters::Converter;
pub use model::{Converted, ImageFacts, LinkCase, Machine, Mode, Report, Sample};

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rstargz_fs::registry::{Registry, RegistryConfig};

use self::images::{Kind, LargeShape, Workload};
use self::procs::{Binaries, Containerd, Snapshotter};
use rstargz_image::ImageRef;
use rstargz_image::build::{self, BuildOptions};
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
    /// Who makes the eStargz images the lazy modes pull (each lazy mode
    /// runs on every converter's image of its kind).
    pub converters: Vec<Converter>,
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
    require_go_reference(&opts.bins, go)?;
    std::fs::create_dir_all(&opts.work)?;
    std::fs::create_dir_all(&opts.out)?;
    let RegistryBed {
        registry: _registry,
        shaper,
        client,
        direct,
    } = RegistryBed::start(&opts.work).await?;
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
                for (mode, converter) in cells(opts) {
                    let tag = match converter {
                        Some(c) => c.tag(mode.prioritized()).context("no image for the mode")?,
                        None => "plain",
                    };
                    let reference = format!("{shaped}/bench/{}:{tag}", w.kind.name());
                    let label = model::cell_label(mode, converter);
                    let s = match &pause {
                        Some(pause) => {
                            cri::measure(opts, &shaper, w, &reference, pause, mode, link, run)
                                .await
                                .map(|s| Sample { converter, ..s })
                        }
                        None => measure(opts, &shaper, w, &reference, (mode, converter), link, run),
                    }
                    .with_context(|| {
                        format!("{} {} {label} run {run}", w.kind.name(), link.name)
                    })?;
                    eprintln!(
                        "{:<7} {:<12} {:<44} run {run}: {:>7.2} s (pull {:>6.2} s) {:>9.2} MB {:>5} requests",
                        w.kind.name(),
                        link.name,
                        label,
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

/// The (mode, converter) cells of one image and run, in run order: the
/// full pull once (it pulls the plain image), then every lazy mode on
/// every converter's image of the kind the mode pulls.
fn cells(opts: &Options) -> Vec<(Mode, Option<Converter>)> {
    let chosen = |m: &Mode| {
        (opts.modes.is_empty() || opts.modes.contains(m)) && (!opts.cri || cri::MODES.contains(m))
    };
    let mut out = Vec::new();
    if chosen(&Mode::Overlayfs) {
        out.push((Mode::Overlayfs, None));
    }
    for c in &opts.converters {
        for m in Mode::ALL.into_iter().filter(|m| *m != Mode::Overlayfs) {
            if chosen(&m) && c.tag(m.prioritized()).is_some() {
                out.push((m, Some(*c)));
            }
        }
    }
    out
}

fn report(opts: &Options, facts: &[ImageFacts], samples: &[Sample]) -> Report {
    Report {
        machine: machine(&opts.bins),
        links: opts.links.clone(),
        runs: opts.runs,
        background_fetch: opts.background_fetch,
        converters: opts.converters.clone(),
        cri: opts.cri,
        images: facts.to_vec(),
        samples: samples.to_vec(),
    }
}

fn mb(b: u64) -> f64 {
    b as f64 / 1e6
}

/// Where `bin` is on the PATH.
pub(crate) fn which(bin: &str) -> anyhow::Result<PathBuf> {
    std::env::var_os("PATH")
        .and_then(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join(bin))
                .find(|f| f.is_file())
        })
        .with_context(|| format!("{bin} is not installed (scripts/setup.sh)"))
}

pub(crate) fn free_addr() -> anyhow::Result<std::net::SocketAddr> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?)
}

/// Fails when `needed` and the Go reference daemon is not built.
pub(crate) fn require_go_reference(bins: &Binaries, needed: bool) -> anyhow::Result<()> {
    if needed && !bins.go_reference.exists() {
        bail!(
            "{} is missing: build it with scripts/setup-bench.sh (kit: GO_REFERENCE_DIR, default ../shared/bench/go-reference)",
            bins.go_reference.display()
        );
    }
    Ok(())
}

/// A local registry behind a link-shaping proxy (loopback until set), and
/// a client that pushes to the registry directly.
pub(crate) struct RegistryBed {
    /// Stops the registry when dropped.
    pub registry: procs::Guard,
    /// The proxy the daemons pull through.
    pub shaper: Shaper,
    /// A client for pushing images (no credentials).
    pub client: Registry,
    /// The registry's own address, for pushes.
    pub direct: String,
}

impl RegistryBed {
    /// Starts the registry with its data under `work/registry`.
    pub async fn start(work: &Path) -> anyhow::Result<RegistryBed> {
        let registry_addr = free_addr()?;
        let registry = procs::start_registry(&work.join("registry"), registry_addr)?;
        let shaper = Shaper::start(
            std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
            registry_addr,
            Link::LOOPBACK,
        )
        .await?;
        let client = Registry::new(RegistryConfig {
            docker_config: Some(work.join("no-docker-config.json")),
            ..RegistryConfig::default()
        })?;
        Ok(RegistryBed {
            registry,
            shaper,
            client,
            direct: registry_addr.to_string(),
        })
    }
}

/// Pushes the plain image, makes rstargz's eStargz images (without and
/// with the recorded list), reads what the workload needs, then makes the
/// other converters' images.
async fn publish(
    client: &Registry,
    w: &Workload,
    registry: &str,
    opts: &Options,
) -> anyhow::Result<ImageFacts> {
    let name = w.kind.name();
    let src = converters::Source {
        registry,
        workload: w,
        work: &opts.work.join("convert"),
        rstargz: &opts.bins.rstargz,
    };
    build::from_dirs(
        client,
        &ImageRef::parse(&src.at("plain"))?,
        &w.layers,
        &BuildOptions::default(),
    )
    .await?;
    let started = Instant::now();
    let recorded = converters::rstargz::publish(client, &src, opts).await?;
    let ours_s = started.elapsed().as_secs_f64();
    let tag = |c: Converter, prioritized| {
        c.tag(prioritized)
            .with_context(|| format!("{} makes no such image", c.name()))
    };
    let needs = floor::needs(client, &src.at(tag(Converter::Rstargz, true)?)).await?;
    let esgz = floor::needs(client, &src.at(tag(Converter::Rstargz, false)?)).await?;
    let plain = layer_bytes(client, &src.at("plain")).await?;
    let mut converted = Vec::new();
    let measured = cells(opts);
    for c in &opts.converters {
        if !measured.iter().any(|(_, x)| *x == Some(*c)) {
            continue;
        }
        let started = Instant::now();
        converters::publish(*c, &src).with_context(|| format!("{name} by {}", c.name()))?;
        for (prioritized, t) in [false, true]
            .into_iter()
            .filter_map(|p| c.tag(p).map(|t| (p, t)))
        {
            let needs = floor::needs(client, &src.at(t)).await?;
            // A workload that failed while its list was recorded leaves an
            // image without a prioritized prefix.
            if prioritized && needs.prioritized_bytes == 0 {
                bail!("{name}:{t} by {} has no prioritized files", c.name());
            }
            converted.push(Converted {
                converter: *c,
                tag: t.to_string(),
                needs,
                seconds: if *c == Converter::Rstargz {
                    ours_s
                } else {
                    started.elapsed().as_secs_f64()
                },
            });
        }
    }
    Ok(ImageFacts {
        image: w.kind,
        layers: needs.layers,
        plain_bytes: plain,
        esgz_bytes: esgz.layer_bytes,
        needs,
        prioritized_files: recorded.len(),
        command: w.cmd.clone(),
        converted,
    })
}

pub(crate) async fn layer_bytes(client: &Registry, reference: &str) -> anyhow::Result<u64> {
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

/// One cold start of `reference` in `mode`.
fn measure(
    opts: &Options,
    shaper: &Shaper,
    w: &Workload,
    reference: &str,
    (mode, converter): (Mode, Option<Converter>),
    link: &LinkCase,
    run: usize,
) -> anyhow::Result<Sample> {
    let dir = opts.work.join("run");
    procs::clean(&dir)?;
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
        let sample = timed_run(
            &ctrd,
            shaper,
            snap.as_ref(),
            w,
            reference,
            (mode, converter),
            link,
            run,
        );
        ctrd.stop();
        drop(snap);
        keep_logs(
            &dir,
            &opts.out,
            &format!(
                "{}-{}-{:?}-{}-{run}",
                w.kind.name(),
                link.name,
                mode,
                converter.map_or("plain", Converter::name)
            ),
        );
        let sample = sample?;
        if let Some(s) = mode.snapshotter() {
            check_remote(&dir.join(format!("{}.log", s.plugin())), s)?;
        }
        anyhow::Ok(sample)
    })();
    procs::clean(&dir)?;
    result
}

#[allow(clippy::too_many_arguments)]
fn timed_run(
    ctrd: &Containerd,
    shaper: &Shaper,
    daemon: Option<&procs::Daemon>,
    w: &Workload,
    reference: &str,
    (mode, converter): (Mode, Option<Converter>),
    link: &LinkCase,
    run: usize,
) -> anyhow::Result<Sample> {
    let plugin = mode.snapshotter().map_or("overlayfs", Snapshotter::plugin);
    procs::drop_caches()?;
    let cpu_before = probe::window_start(daemon)?;
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
    let probe = probe::window_end(daemon, cpu_before)?;
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
    Ok(Sample {
        converter,
        probe,
        ..sample(w, link, mode, run, (pulled, total, counted), local_run_s)
    })
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
        converter: None,
        run,
        pull_s: pulled.as_secs_f64(),
        total_s: total.as_secs_f64(),
        bytes: counted.bytes_down,
        requests: counted.requests,
        connections: counted.connections,
        local_run_s,
        probe: None,
    }
}

/// Copies the run's daemon logs to `<out>/logs/<name>-*.log`.
pub(crate) fn keep_logs(dir: &Path, out: &Path, name: &str) {
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

pub(crate) fn machine(bins: &Binaries) -> Machine {
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
