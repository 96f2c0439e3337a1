//! `rstargz bench …`: measurements against running services, printed as JSON.

use std::path::PathBuf;

use anyhow::Context as _;

use crate::bench::snapshot_ops;

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
    match args.command {
        BenchCommand::SnapshotOps(a) => {
            let runtime = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
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
            let mut out = serde_json::to_value(&report)?;
            out["label"] = a.label.into();
            println!("{out}");
            Ok(())
        }
    }
}
