//! `rstargz bench …`: measurements against running services, printed as JSON.

use std::path::PathBuf;

use anyhow::Context as _;

use crate::bench::{read_path, resources, snapshot_ops};

/// Arguments of `rstargz bench`.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    command: BenchCommand,
}

#[derive(Debug, clap::Subcommand)]
enum BenchCommand {
    /// Prepare+Mounts+Commit+Remove round trips per second over a Snapshots socket.
    SnapshotOps(SnapshotOpsArgs),
    /// Timed reads of a file and walks of a tree in a container root mounted
    /// through a snapshotter (or natively); one JSON line.
    ReadPath(ReadPathArgs),
    /// A daemon's RSS, CPU time and mount latency per mounted image; one JSON line.
    Resources(ResourcesArgs),
}

#[derive(Debug, clap::Args)]
struct ReadPathArgs {
    /// Snapshots socket of the snapshotter to mount through (with --image).
    #[arg(long, requires = "image", conflicts_with = "native")]
    address: Option<PathBuf>,
    /// Image reference in a registry (with --address).
    #[arg(long)]
    image: Option<String>,
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

/// Runs `rstargz bench`.
pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    let runtime = || tokio::runtime::Runtime::new().context("starting the tokio runtime");
    match args.command {
        BenchCommand::ReadPath(a) => {
            let target = match (a.address, a.image, a.native) {
                (Some(socket), Some(image), None) => read_path::Target::Remote { socket, image },
                (None, None, Some(lower)) => read_path::Target::Native { lower },
                _ => anyhow::bail!("give either --address and --image, or --native"),
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
