//! `rstargz-bench`: measurements of rstargz and its baselines against
//! running services, printed as JSON (and, for cold start, a report with
//! plots). Kept out of the product binary: it owns the plotting code.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Parser;
use rstargz_bench::coldstart::procs::Snapshotter;
use rstargz_bench::container::ContainerSnapshotter;
use rstargz_bench::{coldstart, read_path, resources, scale, scale_snapshots, snapshot_ops};
use rstargz_test_support::proxy::{Link, Shaper};

/// rstargz-bench: benchmarks of rstargz against its baselines.
#[derive(Debug, Parser)]
#[command(name = "rstargz-bench", version, about)]
struct BenchArgs {
    #[command(subcommand)]
    command: BenchCommand,
}

#[derive(Debug, clap::Subcommand)]
enum BenchCommand {
    /// Prepare+Mounts+Commit+Remove round trips per second over a Snapshots socket.
    SnapshotOps(SnapshotOpsArgs),
    /// Prepare/Commit/Remove/Usage/List rates with 10k, 100k… snapshots in
    /// the store, on every target in one run; JSON report and a PNG plot.
    ScaleSnapshots(ScaleSnapshotsArgs),
    /// Timed reads of a file and walks of a tree in a container root mounted
    /// through a snapshotter (or natively); one JSON line.
    ReadPath(ReadPathArgs),
    /// A daemon's RSS, CPU time and mount latency per mounted image; one JSON line.
    Resources(ResourcesArgs),
    /// Cold start (pull + create + run) per image, link and mode, with the Go reference.
    ColdStart(ColdStartArgs),
    /// Mounted remote layers at N = 10, 100, 1,000 (threads, RSS, fds, mount
    /// time, Prepare/Mounts latency) and a many-layer rpull, with the Go reference.
    ScaleLayers(ScaleLayersArgs),
    /// A node drain: many pods from as many eStargz images started at once
    /// through CRI over one shaped link, with the Go reference and the full pull.
    Drain(DrainArgs),
    /// A link-shaping TCP proxy (delay, shared bandwidth cap, counters) until Ctrl-C.
    Shape(ShapeArgs),
}

#[derive(Debug, clap::Args)]
struct DrainArgs {
    /// Where report.json, report.md and drain.png go.
    #[arg(long, default_value = "bench-out/drain")]
    out: PathBuf,
    /// Scratch directory (registry data, image trees, run roots).
    #[arg(long, default_value = "/var/tmp/rstargz-drain")]
    work: PathBuf,
    /// Pods started at once, each from its own image.
    #[arg(long, default_value_t = 20)]
    pods: usize,
    /// Runs per mode.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Tiny images (a few dozen files each): a smoke test of the pipeline.
    #[arg(long)]
    tiny: bool,
    /// Round trip of the shared link (0 with --rate-mbit 0: loopback).
    #[arg(long, default_value_t = 20)]
    rtt_ms: u64,
    /// Bandwidth of the shared link, Mbit/s.
    #[arg(long, default_value_t = 100)]
    rate_mbit: u64,
    /// Modes (overlayfs, rstargz, rstargz-prio, go, go-prio) [default: all].
    #[arg(long, value_delimiter = ',')]
    modes: Vec<String>,
    /// A name for this configuration in the report (e.g. the memory tier
    /// set through RSTARGZ_BENCH_CONFIG).
    #[arg(long, default_value = "default config")]
    label: String,
    /// The Go reference daemon.
    #[arg(long, default_value = "/usr/local/bin/containerd-stargz-grpc")]
    go_reference: PathBuf,
    /// The rstargz binary (default: `rstargz` beside this one).
    #[arg(long)]
    rstargz: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
struct ReadPathArgs {
    /// Snapshots socket of the snapshotter to mount through (with --image).
    #[arg(long, requires = "image", conflicts_with = "native")]
    address: Option<PathBuf>,
    /// Image reference in a registry (with --address, or --container).
    #[arg(long)]
    image: Option<String>,
    /// Instead of mounting through --address: read inside a container of
    /// --image started through a private containerd on this snapshotter
    /// (rstargz and go serve on --address; overlayfs is containerd's own).
    #[arg(long, value_parser = ["rstargz", "go", "overlayfs"], requires = "image", conflicts_with = "native")]
    container: Option<String>,
    /// Instead: a local directory holding the same tree (overlay baseline).
    #[arg(long)]
    native: Option<PathBuf>,
    /// Scratch directory for mountpoints.
    #[arg(long)]
    work: PathBuf,
    /// File to read, relative to the root.
    #[arg(long, default_value = "big.bin")]
    file: PathBuf,
    /// Tree to walk, relative to the root.
    #[arg(long, default_value = ".")]
    tree: PathBuf,
    /// Runs in order: STATE-ACCESS-BLOCK (cold|disk|page, seq|rand, e.g.
    /// 4k) or walk-cold / walk-warm; comma-separated or repeated.
    #[arg(long = "run", value_delimiter = ',', required = true)]
    runs: Vec<read_path::Run>,
    /// Reads per random run.
    #[arg(long, default_value_t = 256)]
    random_ops: u64,
    /// Time bound of each run, seconds.
    #[arg(long, default_value_t = 30.0)]
    max_seconds: f64,
    /// Repeats of each run that does not start cold (the best is reported).
    #[arg(long, default_value_t = 1)]
    repeat: u32,
    /// Seconds between the mount (or the container's start) and the first
    /// run, as a workload that starts reading later: the daemons'
    /// background fetch runs meanwhile.
    #[arg(long, default_value_t = 0.0)]
    start_after: f64,
    /// Name printed with the figures.
    #[arg(long, default_value = "target")]
    label: String,
}

#[derive(Debug, clap::Args)]
struct ResourcesArgs {
    /// Snapshots socket of the daemon.
    #[arg(long)]
    address: PathBuf,
    /// Its process id (RSS and CPU time are read from /proc).
    #[arg(long)]
    pid: u32,
    /// Images to mount one after another (all stay mounted until the end).
    #[arg(long = "image", required = true)]
    images: Vec<String>,
    /// Scratch directory for mountpoints.
    #[arg(long)]
    work: PathBuf,
    /// Seconds to keep everything mounted after measuring (for inspection).
    #[arg(long, default_value_t = 0.0, hide = true)]
    hold_seconds: f64,
    /// Name printed with the figures.
    #[arg(long, default_value = "target")]
    label: String,
}

#[derive(Debug, clap::Args)]
struct ColdStartArgs {
    /// Where report.json, report.md and the PNG plots go.
    #[arg(long, default_value = "bench-out/cold-start")]
    out: PathBuf,
    /// Scratch directory (registry data, image trees, run roots); wiped per run.
    #[arg(long, default_value = "/var/tmp/rstargz-coldstart")]
    work: PathBuf,
    /// Tiny images, one run: a smoke test of the whole pipeline.
    #[arg(long)]
    quick: bool,
    /// Runs per image, link and mode [default: 3, quick: 1].
    #[arg(long)]
    runs: Option<usize>,
    /// Images (small, python, large) [default: all; quick: large].
    #[arg(long, value_delimiter = ',')]
    images: Vec<String>,
    /// Round trip of the shaped link.
    #[arg(long, default_value_t = 20)]
    rtt_ms: u64,
    /// Bandwidth of the shaped link.
    #[arg(long, default_value_t = 100)]
    rate_mbit: u64,
    /// Modes (overlayfs, rstargz, rstargz-prio, go, go-prio) [default: all].
    #[arg(long, value_delimiter = ',')]
    modes: Vec<String>,
    /// Who makes the eStargz images (rstargz, ctr-remote,
    /// ctr-remote-optimize, rstargz-optimize); each lazy mode runs on every converter's
    /// image of its kind (with or without a list) [default: all].
    #[arg(long, value_delimiter = ',')]
    converters: Vec<String>,
    /// Only loopback (no shaped link).
    #[arg(long, conflicts_with = "shaped_only")]
    loopback_only: bool,
    /// Only the shaped link.
    #[arg(long)]
    shaped_only: bool,
    /// Run both lazy snapshotters with `no_background_fetch = true` (only
    /// what pull and workload ask for is fetched) instead of their defaults.
    #[arg(long)]
    no_background_fetch: bool,
    /// Pull and run through containerd's CRI plugin, as kubelet does
    /// (PullImage, RunPodSandbox, CreateContainer, StartContainer); modes
    /// overlayfs, rstargz and rstargz-prio.
    #[arg(long)]
    cri: bool,
    /// The Go reference daemon.
    #[arg(long, default_value = "/usr/local/bin/containerd-stargz-grpc")]
    go_reference: PathBuf,
    /// The rstargz binary (default: `rstargz` beside this one, as cargo
    /// builds them).
    #[arg(long)]
    rstargz: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
struct ScaleLayersArgs {
    /// Where report.json, report.md and scale-layers.png go.
    #[arg(long, default_value = "bench-out/scale")]
    out: PathBuf,
    /// Scratch directory (registry data, daemon roots, mountpoints); wiped.
    #[arg(long, default_value = "/var/tmp/rstargz-scale")]
    work: PathBuf,
    /// Layer counts to mount, each with fresh daemons.
    #[arg(long, value_delimiter = ',', default_value = "10,100,1000")]
    layers: Vec<usize>,
    /// The Go reference is not run above this many layers.
    #[arg(long, default_value_t = 1000)]
    go_max_layers: usize,
    /// Files (1-4 KiB) per mounted layer.
    #[arg(long, default_value_t = 100)]
    files_per_layer: usize,
    /// Layers of the rpull image (0: no rpull).
    #[arg(long, default_value_t = 100)]
    rpull_layers: usize,
    /// Files per layer of the rpull image (100 layers of 40: the issue's
    /// 4,000 small files).
    #[arg(long, default_value_t = 40)]
    rpull_files: usize,
    /// rpull runs per daemon (the median is reported).
    #[arg(long, default_value_t = 3)]
    rpull_runs: usize,
    /// Seconds to let prefetch and background fetch run after the mounts.
    #[arg(long, default_value_t = 5.0)]
    settle_seconds: f64,
    /// Seconds idle after the reads before the steady figures (longer
    /// than tokio and Go keep idle threads).
    #[arg(long, default_value_t = 15.0)]
    idle_seconds: f64,
    /// The Go reference daemon.
    #[arg(long, default_value = "/usr/local/bin/containerd-stargz-grpc")]
    go_reference: PathBuf,
    /// The rstargz binary (default: `rstargz` beside this one).
    #[arg(long)]
    rstargz: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
struct ShapeArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: std::net::SocketAddr,
    /// Where connections go.
    #[arg(long)]
    upstream: std::net::SocketAddr,
    /// Round-trip time added (half per direction, plus one per new connection).
    #[arg(long, default_value_t = 20)]
    rtt_ms: u64,
    /// Bandwidth per direction shared by all connections (0: unlimited).
    #[arg(long, default_value_t = 100)]
    rate_mbit: u64,
}

#[derive(Debug, clap::Args)]
struct SnapshotOpsArgs {
    /// Unix socket of a Snapshots service (rstargz, or containerd's own socket).
    #[arg(long)]
    address: PathBuf,
    /// Snapshotter name put in requests (containerd routes on it).
    #[arg(long, default_value = "rstargz")]
    snapshotter: String,
    /// containerd namespace of the requests.
    #[arg(long, default_value = "rstargz-bench")]
    namespace: String,
    /// Measured round trips.
    #[arg(long, default_value_t = 500)]
    iterations: u32,
    /// Unmeasured round trips first.
    #[arg(long, default_value_t = 20)]
    warmup: u32,
    /// Concurrent clients.
    #[arg(long, default_value_t = 1)]
    concurrency: u32,
    /// Name printed with the figures.
    #[arg(long, default_value = "target")]
    label: String,
}

#[derive(Debug, clap::Args)]
struct ScaleSnapshotsArgs {
    /// A target: LABEL=SOCKET or LABEL=SOCKET@SNAPSHOTTER (containerd's own
    /// socket names the snapshotter; default rstargz); repeat for each.
    #[arg(long = "target", required = true)]
    targets: Vec<String>,
    /// Snapshots in the store at each level, ascending.
    #[arg(long, value_delimiter = ',', default_values_t = [10_000, 100_000])]
    levels: Vec<u64>,
    /// Timed operations of each kind per level.
    #[arg(long, default_value_t = 500)]
    ops: u64,
    /// Timed Lists of the whole store per level.
    #[arg(long, default_value_t = 5)]
    lists: u64,
    /// Time bound of each kind of timed operation, seconds.
    #[arg(long, default_value_t = 20.0)]
    max_seconds: f64,
    /// Clients filling the store at once.
    #[arg(long, default_value_t = 8)]
    fill_concurrency: u64,
    /// containerd namespace of the requests.
    #[arg(long, default_value = "rstargz-bench")]
    namespace: String,
    /// Where scale-snapshots.json and scale-snapshots.png go.
    #[arg(long, default_value = "bench-out/scale")]
    out: PathBuf,
}

fn scale_snapshots(a: ScaleSnapshotsArgs) -> anyhow::Result<()> {
    let targets = a
        .targets
        .iter()
        .map(|t| {
            let (label, rest) = t
                .split_once('=')
                .with_context(|| format!("--target {t:?}: want LABEL=SOCKET[@SNAPSHOTTER]"))?;
            let (socket, snapshotter) = rest.split_once('@').unwrap_or((rest, "rstargz"));
            Ok(scale_snapshots::Target {
                label: label.to_owned(),
                socket: socket.into(),
                snapshotter: snapshotter.to_owned(),
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut levels = a.levels.clone();
    levels.sort_unstable();
    let opts = scale_snapshots::Options {
        targets,
        levels,
        ops: a.ops,
        lists: a.lists,
        max_time: std::time::Duration::from_secs_f64(a.max_seconds),
        fill_concurrency: a.fill_concurrency,
        namespace: a.namespace,
    };
    let report = bench_runtime()?
        .block_on(scale_snapshots::run(&opts))
        .context("scale-snapshots benchmark")?;
    std::fs::create_dir_all(&a.out).with_context(|| format!("create {}", a.out.display()))?;
    let json = serde_json::to_string_pretty(&report)?;
    std::fs::write(a.out.join("scale-snapshots.json"), &json)?;
    scale_snapshots::plot::draw(&report, &a.out.join("scale-snapshots.png"))?;
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

/// The runtime of every subcommand. Daemons and containerd are spawned from
/// blocking-pool threads with a parent-death signal (they die with a killed
/// benchmark), and that signal fires when the spawning *thread* ends: an idle
/// blocking thread must not exit (tokio's default: after 10 s) while what it
/// spawned still runs.
fn bench_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_keep_alive(std::time::Duration::from_secs(7 * 24 * 3600))
        .build()
        .context("starting the tokio runtime")
}

fn main() -> anyhow::Result<()> {
    let args = BenchArgs::parse();
    let runtime = bench_runtime;
    match args.command {
        BenchCommand::ReadPath(a) => {
            let target = match (a.container.as_deref(), a.address, a.image, a.native) {
                (Some("overlayfs"), None, Some(image), None) => read_path::Target::Container {
                    snapshotter: ContainerSnapshotter::Overlayfs,
                    image,
                },
                (Some(kind), Some(socket), Some(image), None) => {
                    let which = match kind {
                        "rstargz" => Snapshotter::Rstargz,
                        _ => Snapshotter::GoReference,
                    };
                    read_path::Target::Container {
                        snapshotter: ContainerSnapshotter::Proxy { which, socket },
                        image,
                    }
                }
                (None, Some(socket), Some(image), None) => {
                    read_path::Target::Remote { socket, image }
                }
                (None, None, None, Some(lower)) => read_path::Target::Native { lower },
                _ => anyhow::bail!(
                    "give --address and --image, --container overlayfs and --image, \
                     --container rstargz|go with --address and --image, or --native"
                ),
            };
            let opts = read_path::Options {
                target,
                work: a.work,
                file: a.file,
                tree: a.tree,
                runs: a.runs,
                random_ops: a.random_ops,
                max_time: std::time::Duration::from_secs_f64(a.max_seconds),
                repeat: a.repeat,
                start_after: std::time::Duration::from_secs_f64(a.start_after),
            };
            let report = runtime()?
                .block_on(read_path::run(&opts))
                .context("read-path benchmark")?;
            print_labelled(&report, a.label)
        }
        BenchCommand::Resources(a) => {
            let report = runtime()?
                .block_on(resources::measure(
                    &a.address,
                    a.pid,
                    &a.images,
                    &a.work,
                    std::time::Duration::from_secs_f64(a.hold_seconds),
                ))
                .context("resources benchmark")?;
            print_labelled(&report, a.label)
        }
        BenchCommand::ColdStart(a) => cold_start(a),
        BenchCommand::ScaleLayers(a) => scale_layers(a),
        BenchCommand::ScaleSnapshots(a) => scale_snapshots(a),
        BenchCommand::Shape(a) => runtime()?.block_on(shape(a)),
        BenchCommand::Drain(a) => drain(a),
        BenchCommand::SnapshotOps(a) => {
            let runtime = runtime()?;
            let opts = snapshot_ops::Options {
                snapshotter: a.snapshotter,
                namespace: a.namespace,
                iterations: a.iterations,
                warmup: a.warmup,
                concurrency: a.concurrency,
            };
            let report = runtime
                .block_on(snapshot_ops::run(&a.address, &opts))
                .with_context(|| format!("benchmarking {}", a.address.display()))?;
            print_labelled(&report, a.label)
        }
    }
}

/// Prints `report` as one JSON line with a `label` field.
fn print_labelled(report: &impl serde::Serialize, label: String) -> anyhow::Result<()> {
    let mut out = serde_json::to_value(report)?;
    out["label"] = label.into();
    println!("{out}");
    Ok(())
}

/// Runs the shaping proxy; prints its address, then its counters as a JSON
/// line on SIGUSR1 and at exit (SIGINT/SIGTERM).
async fn shape(a: ShapeArgs) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let link = Link::new(a.rtt_ms, a.rate_mbit);
    let shaper = Shaper::start(a.listen, a.upstream, link)
        .await
        .with_context(|| format!("listening on {}", a.listen))?;
    println!(
        "{}",
        serde_json::json!({"listening": shaper.addr().to_string(), "rtt_ms": a.rtt_ms, "rate_mbit": a.rate_mbit})
    );
    let mut usr1 = signal(SignalKind::user_defined1()).context("SIGUSR1 handler")?;
    let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    loop {
        tokio::select! {
            _ = usr1.recv() => println!("{}", serde_json::to_string(&shaper.counters())?),
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    println!("{}", serde_json::to_string(&shaper.counters())?);
    Ok(())
}

/// Logs to stderr at `warn` (or `RUST_LOG`) for the subcommands that build
/// images: their prioritized lists name files of every layer, and each
/// layer's writer would warn about the others' files.
fn init_image_logging() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,rstargz_fs::estargz::writer=error".into()),
        )
        .with_writer(std::io::stderr)
        .init();
}

fn cold_start(a: ColdStartArgs) -> anyhow::Result<()> {
    use coldstart::{LinkCase, images};
    init_image_logging();
    let images = if a.images.is_empty() {
        if a.quick {
            vec![images::Kind::Large]
        } else {
            vec![
                images::Kind::Small,
                images::Kind::Python,
                images::Kind::Large,
            ]
        }
    } else {
        a.images
            .iter()
            .map(|s| images::Kind::parse(s))
            .collect::<anyhow::Result<_>>()?
    };
    let mut links = Vec::new();
    if !a.shaped_only {
        links.push(LinkCase {
            name: "loopback".into(),
            rtt_ms: 0,
            rate_mbit: 0,
        });
    }
    if !a.loopback_only {
        links.push(LinkCase {
            name: format!("{}ms-{}mbit", a.rtt_ms, a.rate_mbit),
            rtt_ms: a.rtt_ms,
            rate_mbit: a.rate_mbit,
        });
    }
    let modes = parse_modes(&a.modes)?;
    let converters = if a.converters.is_empty() {
        coldstart::Converter::ALL.to_vec()
    } else {
        a.converters
            .iter()
            .map(|c| coldstart::Converter::parse(c))
            .collect::<anyhow::Result<Vec<_>>>()?
    };
    let opts = coldstart::Options {
        modes,
        converters,
        background_fetch: !a.no_background_fetch,
        cri: a.cri,
        work: a.work,
        out: a.out.clone(),
        images,
        links,
        runs: a.runs.unwrap_or(if a.quick { 1 } else { 3 }).max(1),
        large: if a.quick {
            images::LargeShape::QUICK
        } else {
            images::LargeShape::FULL
        },
        bins: coldstart::procs::Binaries {
            rstargz: match a.rstargz {
                Some(path) => path,
                None => beside_this_binary("rstargz")?,
            },
            go_reference: a.go_reference,
        },
    };
    let report = bench_runtime()?.block_on(coldstart::run(&opts))?;
    print!("{}", coldstart::report::markdown(&report));
    eprintln!("report: {}", a.out.display());
    Ok(())
}

fn scale_layers(a: ScaleLayersArgs) -> anyhow::Result<()> {
    let mut counts = a.layers;
    counts.sort_unstable();
    counts.dedup();
    let opts = scale::Options {
        counts,
        go_max_layers: a.go_max_layers,
        files_per_layer: a.files_per_layer,
        rpull_layers: a.rpull_layers,
        rpull_files: a.rpull_files,
        rpull_runs: a.rpull_runs.max(1),
        settle: std::time::Duration::from_secs_f64(a.settle_seconds),
        idle: std::time::Duration::from_secs_f64(a.idle_seconds),
        bins: coldstart::procs::Binaries {
            rstargz: match a.rstargz {
                Some(path) => path,
                None => beside_this_binary("rstargz")?,
            },
            go_reference: a.go_reference,
        },
        work: a.work,
        out: a.out.clone(),
    };
    let runtime = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
    let report = runtime.block_on(scale::run(&opts))?;
    print!("{}", scale::report::markdown(&report));
    eprintln!("report: {}", a.out.display());
    Ok(())
}

/// Modes by their names in `report.json`.
fn parse_modes(names: &[String]) -> anyhow::Result<Vec<coldstart::Mode>> {
    names
        .iter()
        .map(|m| {
            coldstart::Mode::ALL
                .into_iter()
                .find(|x| {
                    serde_json::to_value(x)
                        .ok()
                        .and_then(|v| v.as_str().map(|s| s == m))
                        == Some(true)
                })
                .with_context(|| format!("unknown mode {m:?}"))
        })
        .collect()
}

fn drain(a: DrainArgs) -> anyhow::Result<()> {
    use rstargz_bench::drain;
    init_image_logging();
    let modes = if a.modes.is_empty() {
        coldstart::Mode::ALL.to_vec()
    } else {
        parse_modes(&a.modes)?
    };
    let link = if a.rtt_ms == 0 && a.rate_mbit == 0 {
        "loopback".to_string()
    } else {
        format!("{}ms-{}mbit", a.rtt_ms, a.rate_mbit)
    };
    let opts = drain::Options {
        work: a.work,
        out: a.out.clone(),
        pods: a.pods.max(1),
        shape: if a.tiny {
            drain::images::AppShape::TINY
        } else {
            drain::images::AppShape::FULL
        },
        link: coldstart::LinkCase {
            name: link,
            rtt_ms: a.rtt_ms,
            rate_mbit: a.rate_mbit,
        },
        runs: a.runs.max(1),
        modes,
        label: a.label,
        bins: coldstart::procs::Binaries {
            rstargz: match a.rstargz {
                Some(path) => path,
                None => beside_this_binary("rstargz")?,
            },
            go_reference: a.go_reference,
        },
    };
    let runtime = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
    let report = runtime.block_on(drain::run(&opts))?;
    print!("{}", drain::report::markdown(&report));
    eprintln!("report: {}", a.out.display());
    Ok(())
}

/// `name` in the directory of this binary, where cargo puts every binary of
/// the workspace.
fn beside_this_binary(name: &str) -> anyhow::Result<PathBuf> {
    let me = std::env::current_exe().context("locating rstargz-bench")?;
    let path = me.with_file_name(name);
    anyhow::ensure!(
        path.is_file(),
        "{} not found: build it (cargo build -p rstargz) or pass --rstargz",
        path.display()
    );
    Ok(path)
}
