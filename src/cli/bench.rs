//! `rstargz bench …`: measurements against running services, printed as JSON.

use std::path::PathBuf;

use anyhow::Context as _;

use crate::bench::shaper::{Link, Shaper};
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
    /// A link-shaping TCP proxy (delay, shared bandwidth cap, counters) until Ctrl-C.
    Shape(ShapeArgs),
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

/// Runs `rstargz bench`.
pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    match args.command {
        BenchCommand::Shape(a) => {
            let runtime = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
            runtime.block_on(shape(a))
        }
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
