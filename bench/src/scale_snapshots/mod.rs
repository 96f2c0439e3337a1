//! Snapshot metadata at scale (issue 18): with N snapshots in the store
//! (10k, 100k), the rates of Prepare, Commit, Usage, List (containerd's
//! Walk) and Remove, over any Snapshots socket (rstargz or the Go
//! reference directly, or containerd's own socket naming a snapshotter).
//!
//! Per level, for every target in turn (so they share the machine's load
//! alike): the store is filled up to N with active snapshots on one
//! committed base (Prepare from several clients at once; that rate is
//! reported too), then one client times, each bounded by an op count and a
//! time bound: Prepare of new snapshots, their Commit, Usage of them, List
//! of the whole store, and Remove of them (so the store is at N again).
//! The filled snapshots stay: the caller throws the daemon's state away.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::snapshot_ops::{self, BenchError, Ctx, now_nanos, percentile_ms};

pub mod plot;

/// One Snapshots endpoint to measure.
#[derive(Debug, Clone)]
pub struct Target {
    /// Name in the report.
    pub label: String,
    /// Its unix socket.
    pub socket: PathBuf,
    /// Snapshotter name in requests (containerd routes on it).
    pub snapshotter: String,
}

/// What to measure.
#[derive(Debug, Clone)]
pub struct Options {
    /// The endpoints, measured one after another at each level.
    pub targets: Vec<Target>,
    /// Snapshots in the store at each level, ascending.
    pub levels: Vec<u64>,
    /// Timed operations of each kind per level (List: `lists`).
    pub ops: u64,
    /// Timed Lists per level.
    pub lists: u64,
    /// Time bound of each timed kind of operation.
    pub max_time: Duration,
    /// Clients filling the store at once.
    pub fill_concurrency: u64,
    /// containerd namespace of the requests.
    pub namespace: String,
}

/// Figures of one kind of operation.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Rate {
    /// Operations timed.
    pub ops: u64,
    /// Wall-clock seconds they took.
    pub seconds: f64,
    /// Operations per second.
    pub per_sec: f64,
    /// Median latency, ms.
    pub p50_ms: f64,
    /// 99th-percentile latency, ms.
    pub p99_ms: f64,
}

impl Rate {
    fn of(mut latencies: Vec<Duration>, seconds: f64) -> Rate {
        latencies.sort();
        let ops = latencies.len() as u64;
        Rate {
            ops,
            seconds,
            per_sec: if seconds > 0.0 {
                ops as f64 / seconds
            } else {
                0.0
            },
            p50_ms: percentile_ms(&latencies, 50),
            p99_ms: percentile_ms(&latencies, 99),
        }
    }
}

/// One target at one level.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Level {
    /// Snapshots in the store while timing.
    pub snapshots: u64,
    /// 1/5/15-minute load average when the level's timing started.
    pub load_avg: [f64; 3],
    /// Filling the store up to the level (Prepare, concurrent clients).
    pub fill: Rate,
    /// Prepare of an active snapshot on the committed base.
    pub prepare: Rate,
    /// Commit of those.
    pub commit: Rate,
    /// Usage of the committed ones.
    pub usage: Rate,
    /// List of the whole store.
    pub list: Rate,
    /// Snapshots the last List returned.
    pub listed: u64,
    /// Remove of the committed ones.
    pub remove: Rate,
}

/// Every level of one target.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TargetReport {
    /// Its name.
    pub label: String,
    /// Snapshotter named in requests.
    pub snapshotter: String,
    /// Levels, ascending.
    pub levels: Vec<Level>,
}

/// The whole run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    /// Cores of the machine.
    pub cores: usize,
    /// Every target.
    pub targets: Vec<TargetReport>,
}

/// A target during the run: its client, requests and what it holds.
struct Live {
    target: Target,
    ctx: Ctx,
    client: rstargz_snapshotter::client::Client,
    tag: String,
    base: String,
    /// Snapshots of this run in the store (the base included).
    held: u64,
    report: TargetReport,
}

/// Runs the benchmark.
pub async fn run(opts: &Options) -> Result<Report, BenchError> {
    let mut live = Vec::new();
    for (i, target) in opts.targets.iter().enumerate() {
        let ctx = Ctx::new(&target.snapshotter, &opts.namespace)?;
        let mut client = snapshot_ops::connect(&target.socket).await?;
        let tag = format!("scale-{}-{i}-{}", std::process::id(), now_nanos());
        let base = format!("{tag}-base");
        ctx.prepare(&mut client, &format!("{base}-a"), "").await?;
        ctx.commit(&mut client, &base, &format!("{base}-a")).await?;
        live.push(Live {
            report: TargetReport {
                label: target.label.clone(),
                snapshotter: target.snapshotter.clone(),
                levels: Vec::new(),
            },
            target: target.clone(),
            ctx,
            client,
            tag,
            base,
            held: 1,
        });
    }
    for &level in &opts.levels {
        for t in &mut live {
            let fill = fill(t, level, opts).await?;
            let measured = measure(t, opts, fill).await?;
            tracing::info!(target = %t.target.label, level, "measured");
            t.report.levels.push(measured);
        }
    }
    Ok(Report {
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        targets: live.into_iter().map(|t| t.report).collect(),
    })
}

/// Adds active snapshots on the base until the target holds `level`.
async fn fill(t: &mut Live, level: u64, opts: &Options) -> Result<Rate, BenchError> {
    let first = t.held;
    let todo = level.saturating_sub(first);
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..opts.fill_concurrency.max(1) {
        let mut client = snapshot_ops::connect(&t.target.socket).await?;
        let (ctx, next) = (t.ctx.clone(), next.clone());
        let (tag, base) = (t.tag.clone(), t.base.clone());
        workers.spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= todo {
                    return Ok::<_, BenchError>(latencies);
                }
                let began = Instant::now();
                ctx.prepare(&mut client, &format!("{tag}-f{}", first + i), &base)
                    .await?;
                latencies.push(began.elapsed());
            }
        });
    }
    let mut all = Vec::new();
    while let Some(joined) = workers.join_next().await {
        match joined {
            Ok(Ok(mut l)) => all.append(&mut l),
            Ok(Err(e)) => return Err(e),
            Err(join) => std::panic::resume_unwind(join.into_panic()),
        }
    }
    t.held = first + todo;
    Ok(Rate::of(all, started.elapsed().as_secs_f64()))
}

/// Times `op` over `items` (at most `max` of them, within `bound`).
macro_rules! timed {
    ($items:expr, $bound:expr, |$item:ident| $op:expr) => {{
        let started = Instant::now();
        let mut latencies = Vec::new();
        for $item in $items {
            if started.elapsed() > $bound {
                break;
            }
            let began = Instant::now();
            $op;
            latencies.push(began.elapsed());
        }
        Rate::of(latencies, started.elapsed().as_secs_f64())
    }};
}

/// The timed operations at the target's current level.
async fn measure(t: &mut Live, opts: &Options, fill: Rate) -> Result<Level, BenchError> {
    let load_avg = load_average();
    let (ctx, c) = (&t.ctx, &mut t.client);
    let level = t.held;
    let key = |i: u64| format!("{}-m{level}-{i}", t.tag);
    let name = |i: u64| format!("{}-m{level}-{i}-c", t.tag);
    let bound = opts.max_time;
    let prepare = timed!(0..opts.ops, bound, |i| ctx
        .prepare(c, &key(i), &t.base)
        .await?);
    let prepared = prepare.ops;
    let commit = timed!(0..prepared, bound, |i| ctx
        .commit(c, &name(i), &key(i))
        .await?);
    let committed = commit.ops;
    let usage = timed!(0..committed.min(opts.ops), bound, |i| ctx
        .usage(c, &name(i))
        .await?);
    let mut listed = 0;
    let list = timed!(0..opts.lists, bound, |_i| listed = ctx.list(c).await?);
    // Every snapshot made here goes again; only the committed are timed.
    let remove = timed!(0..committed, Duration::MAX, |i| ctx
        .remove(c, &name(i))
        .await?);
    for i in committed..prepared {
        ctx.remove(c, &key(i)).await?;
    }
    Ok(Level {
        snapshots: level,
        load_avg,
        fill,
        prepare,
        commit,
        usage,
        list,
        listed,
        remove,
    })
}

/// The machine's load average (zeros if unreadable).
pub fn load_average() -> [f64; 3] {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mut out = [0.0; 3];
    for (slot, field) in out.iter_mut().zip(text.split_whitespace()) {
        *slot = field.parse().unwrap_or(0.0);
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn rates_come_from_sorted_latencies() {
        let ms = Duration::from_millis;
        let r = Rate::of(vec![ms(3), ms(1), ms(2), ms(100)], 2.0);
        assert_eq!(r.ops, 4);
        assert_eq!(r.per_sec, 2.0);
        assert_eq!(r.p50_ms, 2.0);
        assert_eq!(r.p99_ms, 3.0);
        assert_eq!(Rate::of(Vec::new(), 0.0).per_sec, 0.0);
    }
}
