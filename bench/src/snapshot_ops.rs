//! Snapshot-operation round trips: Prepare → Mounts → Commit → Remove on a
//! child of a committed base snapshot, over any Snapshots gRPC endpoint
//! (rstargz directly, or containerd's socket naming a snapshotter).

use std::path::Path;
use std::time::{Duration, Instant};

use rstargz_proto::snapshots as pb;
use serde::Serialize;
use tonic::Request;
use tonic::metadata::MetadataValue;

use rstargz_snapshotter::client::{self, Client};

/// The gRPC header containerd uses to carry the namespace.
const NAMESPACE_HEADER: &str = "containerd-namespace";
/// Marks a snapshot as a GC root: without a lease, containerd's garbage
/// collector would otherwise delete the benchmark's snapshots mid-run.
const GC_ROOT_LABEL: &str = "containerd.io/gc.root";

/// What to measure and where.
#[derive(Debug, Clone)]
pub struct Options {
    /// Snapshotter name sent in every request (containerd routes on it; a
    /// proxy snapshotter ignores it).
    pub snapshotter: String,
    /// containerd namespace for the requests.
    pub namespace: String,
    /// Measured cycles (after warm-up).
    pub iterations: u32,
    /// Cycles run before measuring.
    pub warmup: u32,
    /// Concurrent clients, each running `iterations / concurrency` cycles.
    pub concurrency: u32,
}

/// Figures of one run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Measured cycles.
    pub cycles: u64,
    /// Wall-clock seconds of the measured part.
    pub seconds: f64,
    /// Cycles (Prepare+Mounts+Commit+Remove) per second.
    pub cycles_per_sec: f64,
    /// Median cycle latency in milliseconds.
    pub p50_ms: f64,
    /// 99th-percentile cycle latency in milliseconds.
    pub p99_ms: f64,
}

/// Errors of the benchmark (a failed RPC ends the run).
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// The endpoint could not be reached.
    #[error("cannot connect to {socket}: {source}")]
    Connect {
        /// Socket path.
        socket: String,
        /// Cause.
        source: tonic::transport::Error,
    },
    /// An RPC failed.
    #[error("{op} {key}: {status}")]
    Rpc {
        /// Which call.
        op: &'static str,
        /// Snapshot key or name.
        key: String,
        /// gRPC status.
        status: tonic::Status,
    },
    /// The namespace is not a valid header value.
    #[error("invalid namespace {0:?}")]
    Namespace(String),
}

/// Runs the benchmark against the Snapshots service on `socket`.
pub async fn run(socket: &Path, opts: &Options) -> Result<Report, BenchError> {
    let connect = || connect(socket);
    let tag = format!("bench-{}-{}", std::process::id(), now_nanos());
    let ctx = Ctx::new(&opts.snapshotter, &opts.namespace)?;

    let mut setup = connect().await?;
    let base = format!("{tag}-base");
    ctx.prepare(&mut setup, &format!("{base}-active"), "")
        .await?;
    ctx.commit(&mut setup, &base, &format!("{base}-active"))
        .await?;

    for i in 0..opts.warmup {
        ctx.cycle(&mut setup, &format!("{tag}-warm-{i}"), &base)
            .await?;
    }

    let workers = opts.concurrency.max(1);
    let per_worker = opts.iterations.div_ceil(workers);
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..workers {
        let mut client = connect().await?;
        let ctx = ctx.clone();
        let (tag, base) = (tag.clone(), base.clone());
        tasks.spawn(async move {
            let mut latencies = Vec::with_capacity(per_worker as usize);
            for i in 0..per_worker {
                let t = Instant::now();
                ctx.cycle(&mut client, &format!("{tag}-{w}-{i}"), &base)
                    .await?;
                latencies.push(t.elapsed());
            }
            Ok::<_, BenchError>(latencies)
        });
    }
    let mut latencies: Vec<Duration> = Vec::new();
    let mut failure = None;
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(Ok(mut l)) => latencies.append(&mut l),
            Ok(Err(e)) => failure = Some(e),
            Err(join) => std::panic::resume_unwind(join.into_panic()),
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    // Remove the base even when a worker failed, so reruns start clean.
    let cleanup = ctx.remove(&mut setup, &base).await;
    if let Some(e) = failure {
        return Err(e);
    }
    cleanup?;

    latencies.sort();
    let cycles = latencies.len() as u64;
    Ok(Report {
        cycles,
        seconds,
        cycles_per_sec: cycles as f64 / seconds,
        p50_ms: percentile_ms(&latencies, 50),
        p99_ms: percentile_ms(&latencies, 99),
    })
}

/// Nanoseconds since the epoch (unique tags per run).
pub fn now_nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default()
}

/// The `pct` percentile of `sorted` durations, in milliseconds (0 when empty).
pub fn percentile_ms(sorted: &[Duration], pct: usize) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((sorted.len() - 1) * pct) / 100;
    sorted[idx].as_secs_f64() * 1e3
}

/// Per-request settings shared by all workers, and the calls the
/// benchmarks make with them.
#[derive(Clone)]
pub struct Ctx {
    snapshotter: String,
    namespace: MetadataValue<tonic::metadata::Ascii>,
}

/// Connects to the Snapshots service on `socket`.
pub async fn connect(socket: &Path) -> Result<Client, BenchError> {
    client::connect(socket)
        .await
        .map_err(|source| BenchError::Connect {
            socket: socket.display().to_string(),
            source,
        })
}

impl Ctx {
    /// Requests naming `snapshotter` in the containerd `namespace`.
    pub fn new(snapshotter: &str, namespace: &str) -> Result<Ctx, BenchError> {
        let namespace = namespace
            .parse()
            .map_err(|_| BenchError::Namespace(namespace.to_owned()))?;
        Ok(Ctx {
            snapshotter: snapshotter.to_owned(),
            namespace,
        })
    }

    fn request<T>(&self, msg: T) -> Request<T> {
        let mut req = Request::new(msg);
        req.metadata_mut()
            .insert(NAMESPACE_HEADER, self.namespace.clone());
        req
    }

    /// One measured round trip: Prepare → Mounts → Commit → Remove.
    async fn cycle(&self, c: &mut Client, key: &str, parent: &str) -> Result<(), BenchError> {
        self.prepare(c, key, parent).await?;
        c.mounts(self.request(pb::MountsRequest {
            snapshotter: self.snapshotter.clone(),
            key: key.to_owned(),
        }))
        .await
        .map_err(rpc("Mounts", key))?;
        let name = format!("{key}-c");
        self.commit(c, &name, key).await?;
        self.remove(c, &name).await
    }

    /// Prepare of the active snapshot `key` on `parent` (a GC root).
    pub async fn prepare(&self, c: &mut Client, key: &str, parent: &str) -> Result<(), BenchError> {
        c.prepare(self.request(pb::PrepareSnapshotRequest {
            snapshotter: self.snapshotter.clone(),
            key: key.to_owned(),
            parent: parent.to_owned(),
            labels: gc_root(),
        }))
        .await
        .map_err(rpc("Prepare", key))?;
        Ok(())
    }

    /// Commit of the active `key` as `name` (a GC root).
    pub async fn commit(&self, c: &mut Client, name: &str, key: &str) -> Result<(), BenchError> {
        c.commit(self.request(pb::CommitSnapshotRequest {
            snapshotter: self.snapshotter.clone(),
            name: name.to_owned(),
            key: key.to_owned(),
            labels: gc_root(),
        }))
        .await
        .map_err(rpc("Commit", key))?;
        Ok(())
    }

    /// Remove of `key`.
    pub async fn remove(&self, c: &mut Client, key: &str) -> Result<(), BenchError> {
        c.remove(self.request(pb::RemoveSnapshotRequest {
            snapshotter: self.snapshotter.clone(),
            key: key.to_owned(),
        }))
        .await
        .map_err(rpc("Remove", key))?;
        Ok(())
    }
}

impl Ctx {
    /// Usage of `key`.
    pub async fn usage(&self, c: &mut Client, key: &str) -> Result<(), BenchError> {
        c.usage(self.request(pb::UsageRequest {
            snapshotter: self.snapshotter.clone(),
            key: key.to_owned(),
        }))
        .await
        .map_err(rpc("Usage", key))?;
        Ok(())
    }

    /// List (containerd's Walk) of every snapshot; returns how many.
    pub async fn list(&self, c: &mut Client) -> Result<u64, BenchError> {
        let mut stream = c
            .list(self.request(pb::ListSnapshotsRequest {
                snapshotter: self.snapshotter.clone(),
                filters: Vec::new(),
            }))
            .await
            .map_err(rpc("List", ""))?
            .into_inner();
        let mut n = 0;
        while let Some(msg) = stream.message().await.map_err(rpc("List", ""))? {
            n += msg.info.len() as u64;
        }
        Ok(n)
    }
}

fn gc_root() -> std::collections::HashMap<String, String> {
    [(GC_ROOT_LABEL.to_owned(), "bench".to_owned())].into()
}

fn rpc(op: &'static str, key: &str) -> impl FnOnce(tonic::Status) -> BenchError {
    let key = key.to_owned();
    move |status| BenchError::Rpc { op, key, status }
}
