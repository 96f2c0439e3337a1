//! Our own metric families (`rstargz_*`).
//!
//! Counters of one layer (FUSE operations, verification failures) are
//! summed over the layers mounted now plus those already unmounted, so
//! they never go backwards.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rstargz_fs::fuse::FuseStats;
use rstargz_fs::registry::Purpose;

use super::text::Exposition;
use crate::stargz::{MountedStats, StargzFs};

/// Reads one FUSE counter.
type FuseCounter = fn(&FuseStats) -> u64;

fn purpose_name(p: Purpose) -> &'static str {
    match p {
        Purpose::Metadata | Purpose::OnDemand => "on_demand",
        Purpose::Prefetch => "prefetch",
        Purpose::Background => "background",
    }
}

/// One family of plain samples.
fn family(out: &mut Exposition, name: &str, kind: &str, help: &str, samples: &[(&str, &str, u64)]) {
    out.family(name, kind, help);
    for (label, value, n) in samples {
        if label.is_empty() {
            out.sample(name, &[], n);
        } else {
            out.sample(name, &[(label, value)], n);
        }
    }
}

/// Writes our families.
pub fn render(fs: &StargzFs, layers: &[MountedStats], out: &mut Exposition) {
    let reg = fs.registry().metrics();
    let by_purpose = |values: &[u64; 3]| -> Vec<(&str, &str, u64)> {
        Purpose::BY_PRIORITY
            .iter()
            .map(|p| ("purpose", purpose_name(*p), values[p.priority()]))
            .collect()
    };
    family(
        out,
        "rstargz_fetch_requests_total",
        "counter",
        "Registry range requests by purpose.",
        &by_purpose(&reg.requests),
    );
    family(
        out,
        "rstargz_fetch_bytes_total",
        "counter",
        "Bytes fetched from registries by purpose.",
        &by_purpose(&reg.bytes),
    );
    family(
        out,
        "rstargz_fetch_retries_total",
        "counter",
        "Retried registry requests.",
        &[("", "", reg.retries)],
    );
    family(
        out,
        "rstargz_fetch_hedged_total",
        "counter",
        "On-demand registry requests sent a second time because the first was slow to answer.",
        &[("", "", reg.hedges)],
    );
    let cache = fs.cache().stats();
    let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
    family(
        out,
        "rstargz_cache_hits_total",
        "counter",
        "Chunk cache hits by tier.",
        &[
            ("tier", "memory", load(&cache.memory_hits)),
            ("tier", "disk", load(&cache.disk_hits)),
        ],
    );
    family(
        out,
        "rstargz_cache_misses_total",
        "counter",
        "Chunks fetched because no cache had them.",
        &[("", "", load(&cache.fetches))],
    );
    family(
        out,
        "rstargz_memory_cache_bytes",
        "gauge",
        "Bytes of decoded chunks in the memory tier now.",
        &[("", "", fs.cache().memory_bytes())],
    );
    let cpu = fs.cache().work().cpu_by_priority();
    let name = "rstargz_blocking_cpu_seconds_total";
    out.family(
        name,
        "counter",
        "CPU taken by the blocking pool (decoding, verifying, disk cache, indexing) by purpose.",
    );
    for p in Purpose::BY_PRIORITY {
        let secs = cpu[p.priority()].as_secs_f64();
        out.sample(name, &[("purpose", purpose_name(p))], secs);
    }
    if let Some(files) = fs.passthrough_files() {
        let st = files.stats();
        family(
            out,
            "rstargz_passthrough_files_total",
            "counter",
            "Files made ready for kernel passthrough: filled by the reads of them, assembled from cached chunks, or an earlier copy verified.",
            &[
                ("how", "filled", load(&st.filled)),
                ("how", "assembled", load(&st.assembled)),
                ("how", "verified", load(&st.verified)),
            ],
        );
    }
    family(
        out,
        "rstargz_remote_mounts_total",
        "counter",
        "Layers mounted remotely (Prepare, restore, remount).",
        &[("", "", load(&fs.metrics().mounted))],
    );
    family(
        out,
        "rstargz_mounted_layers",
        "gauge",
        "Layers mounted now.",
        &[("", "", layers.len() as u64)],
    );
    let retired = fs.retired();
    let sum = |f: &dyn Fn(&MountedStats) -> u64| layers.iter().map(f).sum::<u64>();
    // FUSE totals: mounted layers plus those already unmounted.
    let fuse_sum = |f: &dyn Fn(&FuseStats) -> u64| sum(&|m| f(&m.fuse)) + f(&retired.fuse);
    family(
        out,
        "rstargz_verification_failures_total",
        "counter",
        "Chunks that failed to decode or verify.",
        &[(
            "",
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
        ("read", FuseStats::reads),
        ("read_error", |s| s.read_errors.load(Ordering::Relaxed)),
    ];
    let op_samples: Vec<(&str, &str, u64)> = ops
        .iter()
        .map(|(name, get)| ("op", *name, fuse_sum(get)))
        .collect();
    family(
        out,
        "rstargz_fuse_operations_total",
        "counter",
        "FUSE operations.",
        &op_samples,
    );
    let mut async_reads = retired.fuse.async_read_latency.snapshot();
    for m in layers {
        async_reads.merge(&m.fuse.async_read_latency.snapshot());
    }
    let name = "rstargz_fuse_async_read_seconds";
    out.family(
        name,
        "histogram",
        "Latency of FUSE reads that waited for a fetch or decode.",
    );
    out.histogram(name, &[], &async_reads, Duration::from_secs(1));
    let declined = fs.declines();
    let declined: Vec<(&str, &str, u64)> = declined
        .iter()
        .map(|(reason, n)| ("reason", *reason, *n))
        .collect();
    family(
        out,
        "rstargz_remote_declined_total",
        "counter",
        "Prepares that fell back to a local snapshot, by reason.",
        &declined,
    );
}
