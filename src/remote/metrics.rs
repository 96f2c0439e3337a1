//! Prometheus text exposition of the remote-layer counters, served on an
//! optional TCP address (`metrics_address`) at `GET /metrics`.
//!
//! Counters of one layer (FUSE operations, verification failures) are
//! summed over the layers mounted now, so they drop when a layer is
//! unmounted; Prometheus treats such a drop as a counter reset.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use rstargz_fs::fuse::READ_LATENCY_BUCKETS;
use rstargz_fs::registry::Purpose;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::stargz::StargzFs;

/// Reads one FUSE counter.
type FuseCounter = fn(&rstargz_fs::fuse::FuseStats) -> u64;

/// Largest request head read before answering.
const MAX_REQUEST: usize = 8 << 10;

fn purpose_name(p: Purpose) -> &'static str {
    match p {
        Purpose::Metadata | Purpose::OnDemand => "on_demand",
        Purpose::Prefetch => "prefetch",
        Purpose::Background => "background",
    }
}

/// Appends one metric family with its samples (`labels` without braces).
fn family<L: AsRef<str>>(
    out: &mut String,
    name: &str,
    kind: &str,
    help: &str,
    samples: &[(L, u64)],
) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    for (labels, value) in samples {
        let labels = labels.as_ref();
        if labels.is_empty() {
            let _ = writeln!(out, "{name} {value}");
        } else {
            let _ = writeln!(out, "{name}{{{labels}}} {value}");
        }
    }
}

/// The current metrics in the Prometheus text format (version 0.0.4).
pub fn render(fs: &StargzFs) -> String {
    let mut out = String::new();
    let reg = fs.registry().metrics();
    let by_purpose = |values: &[u64; 3]| -> Vec<(String, u64)> {
        Purpose::BY_PRIORITY
            .iter()
            .map(|p| {
                (
                    format!("purpose=\"{}\"", purpose_name(*p)),
                    values[p.priority()],
                )
            })
            .collect()
    };
    let requests = by_purpose(&reg.requests);
    family(
        &mut out,
        "rstargz_fetch_requests_total",
        "counter",
        "Registry range requests by purpose.",
        &requests,
    );
    let bytes = by_purpose(&reg.bytes);
    family(
        &mut out,
        "rstargz_fetch_bytes_total",
        "counter",
        "Bytes fetched from registries by purpose.",
        &bytes,
    );
    family(
        &mut out,
        "rstargz_fetch_retries_total",
        "counter",
        "Retried registry requests.",
        &[("", reg.retries)],
    );
    family(
        &mut out,
        "rstargz_fetch_hedged_total",
        "counter",
        "On-demand registry requests sent a second time because the first was slow to answer.",
        &[("", reg.hedges)],
    );
    let cache = fs.cache().stats();
    let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    family(
        &mut out,
        "rstargz_cache_hits_total",
        "counter",
        "Chunk cache hits by tier.",
        &[
            ("tier=\"memory\"", load(&cache.memory_hits)),
            ("tier=\"disk\"", load(&cache.disk_hits)),
        ],
    );
    family(
        &mut out,
        "rstargz_cache_misses_total",
        "counter",
        "Chunks fetched because no cache had them.",
        &[("", load(&cache.fetches))],
    );
    if let Some(files) = fs.passthrough_files() {
        let st = files.stats();
        family(
            &mut out,
            "rstargz_passthrough_files_total",
            "counter",
            "Files made ready for kernel passthrough: filled by the reads of them, assembled from cached chunks, or an earlier copy verified.",
            &[
                ("how=\"filled\"", load(&st.filled)),
                ("how=\"assembled\"", load(&st.assembled)),
                ("how=\"verified\"", load(&st.verified)),
            ],
        );
    }
    family(
        &mut out,
        "rstargz_remote_mounts_total",
        "counter",
        "Layers mounted remotely (Prepare, restore, remount).",
        &[("", load(&fs.metrics().mounted))],
    );
    let layers = fs.mounted();
    family(
        &mut out,
        "rstargz_mounted_layers",
        "gauge",
        "Layers mounted now.",
        &[("", layers.len() as u64)],
    );
    let retired = fs.retired();
    let sum = |f: &dyn Fn(&super::stargz::MountedStats) -> u64| layers.iter().map(f).sum::<u64>();
    // FUSE totals: mounted layers plus those already unmounted.
    let fuse_sum =
        |f: &dyn Fn(&rstargz_fs::fuse::FuseStats) -> u64| sum(&|m| f(&m.fuse)) + f(&retired.fuse);
    family(
        &mut out,
        "rstargz_verification_failures_total",
        "counter",
        "Chunks that failed to decode or verify.",
        &[(
            "",
            sum(&|m| load(&m.layer.stats().bad_chunks)) + load(&retired.bad_chunks),
        )],
    );
    let ops: [(&str, FuseCounter); 8] = [
        ("lookup", |s| s.lookups.load(Ordering::Relaxed)),
        ("getattr", |s| s.getattrs.load(Ordering::Relaxed)),
        ("readdir", |s| s.readdirs.load(Ordering::Relaxed)),
        ("open", |s| s.opens.load(Ordering::Relaxed)),
        // Opens the kernel serves from a local file without the daemon.
        ("passthrough_open", |s| {
            s.passthrough_opens.load(Ordering::Relaxed)
        }),
        ("release", |s| s.releases.load(Ordering::Relaxed)),
        ("read", |s| {
            s.reads_inline.load(Ordering::Relaxed) + s.reads_async.load(Ordering::Relaxed)
        }),
        ("read_error", |s| s.read_errors.load(Ordering::Relaxed)),
    ];
    let op_samples: Vec<(String, u64)> = ops
        .iter()
        .map(|(name, get)| (format!("op=\"{name}\""), fuse_sum(get)))
        .collect();
    family(
        &mut out,
        "rstargz_fuse_operations_total",
        "counter",
        "FUSE operations.",
        &op_samples,
    );
    let nanos = fuse_sum(&|f| load(&f.async_read_nanos));
    let name = "rstargz_fuse_async_read_seconds";
    let _ = writeln!(
        out,
        "# HELP {name} Latency of FUSE reads that waited for a fetch or decode.\n# TYPE {name} histogram"
    );
    let mut cumulative = 0;
    for (i, bound) in READ_LATENCY_BUCKETS.iter().enumerate() {
        cumulative += fuse_sum(&|f| load(&f.async_read_buckets[i]));
        let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
    }
    cumulative += fuse_sum(&|f| load(&f.async_read_buckets[READ_LATENCY_BUCKETS.len()]));
    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
    let _ = writeln!(out, "{name}_sum {}", nanos as f64 / 1e9);
    let _ = writeln!(out, "{name}_count {cumulative}");
    let declined: Vec<(String, u64)> = fs
        .declines()
        .into_iter()
        .map(|(reason, n)| (format!("reason=\"{reason}\""), n))
        .collect();
    family(
        &mut out,
        "rstargz_remote_declined_total",
        "counter",
        "Prepares that fell back to a local snapshot, by reason.",
        &declined,
    );
    out
}

/// Serves `GET /metrics` on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, fs: Arc<StargzFs>) {
    loop {
        let Ok((mut conn, _)) = listener.accept().await else {
            continue;
        };
        let fs = fs.clone();
        tokio::spawn(async move {
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_REQUEST {
                match conn.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            let response = if head.starts_with(b"GET /metrics ") {
                let body = render(&fs);
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                )
            } else {
                "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".into()
            };
            let _ = conn.write_all(response.as_bytes()).await;
            let _ = conn.shutdown().await;
        });
    }
}
