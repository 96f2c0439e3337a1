//! Where a lazy run's time goes, in counts that do not depend on the
//! machine's load (issue 19): the snapshotter daemon's CPU in the measured
//! window (either daemon, from `/proc/PID/stat`) and, for rstargz, its own
//! counters read from its metrics endpoint at the workload's end: bytes
//! and requests by purpose, chunk-cache misses, FUSE reads that waited for
//! a fetch or decode (count and total wait), and the blocking pool's CPU by
//! purpose (decoding and verification of on-demand, prefetched and
//! background-fetched chunks).

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::{Context, bail};
use serde::Serialize;

use super::procs::Daemon;

/// Purposes in the metrics' order (most urgent first).
pub const PURPOSES: [&str; 3] = ["on_demand", "prefetch", "background"];

/// What the daemon spent in one run's window.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Probe {
    /// CPU of the daemon process (all threads, user + system), s.
    pub daemon_cpu_s: f64,
    /// rstargz's own counters (none for the Go reference).
    pub rstargz: Option<Counters>,
}

/// Opens a probe's window on `daemon` (none without one): its CPU so far.
pub fn window_start(daemon: Option<&Daemon>) -> anyhow::Result<Option<Duration>> {
    daemon.map(|d| process_cpu(d.guard.id())).transpose()
}

/// Closes the window [`window_start`] opened: the daemon's CPU since then
/// and, for rstargz, its counters.
pub fn window_end(
    daemon: Option<&Daemon>,
    cpu_before: Option<Duration>,
) -> anyhow::Result<Option<Probe>> {
    let (Some(d), Some(cpu_before)) = (daemon, cpu_before) else {
        return Ok(None);
    };
    Ok(Some(Probe {
        daemon_cpu_s: process_cpu(d.guard.id())?
            .saturating_sub(cpu_before)
            .as_secs_f64(),
        rstargz: d
            .metrics
            .map(scrape)
            .transpose()
            .context("read rstargz's metrics")?,
    }))
}

/// rstargz's counters at the workload's end (the daemon starts with each
/// run, so they cover the pull and the run).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Counters {
    /// Registry bytes by purpose ([`PURPOSES`] order).
    pub fetch_bytes: [u64; 3],
    /// Registry range requests by purpose.
    pub fetch_requests: [u64; 3],
    /// Chunks fetched because no cache had them.
    pub cache_misses: u64,
    /// FUSE reads that waited for a fetch or decode.
    pub waited_reads: u64,
    /// Their total wait, s.
    pub waited_s: f64,
    /// Blocking pool CPU by purpose, s.
    pub blocking_cpu_s: [f64; 3],
    /// Bytes in the memory tier at the end.
    pub memory_cache_bytes: u64,
}

/// CPU (user + system) the process `pid` has used so far, all threads.
pub fn process_cpu(pid: u32) -> anyhow::Result<Duration> {
    let usage = crate::resources::sample(pid).with_context(|| format!("sample pid {pid}"))?;
    Ok(Duration::from_secs_f64(usage.cpu_seconds))
}

/// Reads rstargz's counters from its metrics endpoint at `addr`.
pub fn scrape(addr: SocketAddr) -> anyhow::Result<Counters> {
    let mut conn = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        conn,
        "GET /metrics HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut text = String::new();
    conn.read_to_string(&mut text)?;
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        bail!("no HTTP response from the metrics endpoint");
    };
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        bail!(
            "metrics endpoint: {}",
            head.lines().next().unwrap_or_default()
        );
    }
    Ok(parse(body))
}

/// The counters in a Prometheus text exposition (absent ones are 0).
pub fn parse(body: &str) -> Counters {
    let mut c = Counters::default();
    for line in body.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(v) = value.parse::<f64>() else {
            continue;
        };
        let (name, labels) = series.split_once('{').unwrap_or((series, ""));
        let purpose = PURPOSES
            .iter()
            .position(|p| labels.contains(&format!("purpose=\"{p}\"")));
        match (name, purpose) {
            ("rstargz_fetch_bytes_total", Some(i)) => c.fetch_bytes[i] = v as u64,
            ("rstargz_fetch_requests_total", Some(i)) => c.fetch_requests[i] = v as u64,
            ("rstargz_blocking_cpu_seconds_total", Some(i)) => c.blocking_cpu_s[i] = v,
            ("rstargz_cache_misses_total", _) => c.cache_misses = v as u64,
            ("rstargz_memory_cache_bytes", _) => c.memory_cache_bytes = v as u64,
            ("rstargz_fuse_async_read_seconds_count", _) => c.waited_reads = v as u64,
            ("rstargz_fuse_async_read_seconds_sum", _) => c.waited_s = v,
            _ => {}
        }
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_our_families() {
        let body = "# HELP x y\n\
            rstargz_fetch_bytes_total{purpose=\"on_demand\"} 100\n\
            rstargz_fetch_bytes_total{purpose=\"background\"} 300\n\
            rstargz_fetch_requests_total{purpose=\"prefetch\"} 2\n\
            rstargz_blocking_cpu_seconds_total{purpose=\"background\"} 0.25\n\
            rstargz_cache_misses_total 7\n\
            rstargz_memory_cache_bytes 4096\n\
            rstargz_fuse_async_read_seconds_bucket{le=\"+Inf\"} 9\n\
            rstargz_fuse_async_read_seconds_sum 0.5\n\
            rstargz_fuse_async_read_seconds_count 9\n";
        let c = parse(body);
        assert_eq!(c.fetch_bytes, [100, 0, 300]);
        assert_eq!(c.fetch_requests, [0, 2, 0]);
        assert_eq!(c.blocking_cpu_s, [0.0, 0.0, 0.25]);
        assert_eq!((c.cache_misses, c.waited_reads), (7, 9));
        assert_eq!(c.memory_cache_bytes, 4096);
        assert!((c.waited_s - 0.5).abs() < 1e-9);
    }

    #[test]
    fn reads_this_process_cpu() {
        let start = std::time::Instant::now();
        let mut x = 0u64;
        while start.elapsed() < Duration::from_millis(50) {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        assert!(
            process_cpu(std::process::id()).unwrap_or_default() > Duration::ZERO,
            "{x}"
        );
    }
}
