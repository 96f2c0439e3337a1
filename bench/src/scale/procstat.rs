//! A process's threads, resident memory and open descriptors from
//! `/proc`, and a sampler of its peak thread count: what issue 18 asks of
//! a daemon holding many mounted layers.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde::Serialize;

/// A thread census: the count and, per kind of thread, how many.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Census {
    /// Threads of the process.
    pub total: usize,
    /// Per thread name with its trailing digits dropped (`fuser-3` and
    /// tokio's numbered workers count as one kind each).
    pub kinds: BTreeMap<String, usize>,
}

/// The threads of `pid` now, by kind (empty once it is gone).
pub fn census(pid: u32) -> Census {
    let mut out = Census::default();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for t in tasks.flatten() {
        out.total += 1;
        let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        let kind = comm.trim().trim_end_matches(|c: char| c.is_ascii_digit());
        *out.kinds.entry(kind.to_string()).or_default() += 1;
    }
    out
}

/// FUSE threads of a census: fuser's workers and its joiner.
pub fn fuser_threads(c: &Census) -> usize {
    c.kinds
        .iter()
        .filter(|(k, _)| k.starts_with("fuser"))
        .map(|(_, n)| n)
        .sum()
}

fn status_field(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// Thread count of `pid` (0 once it is gone); cheaper than [`census`].
pub fn threads(pid: u32) -> usize {
    status_field(pid, "Threads:").map_or(0, |n| n as usize)
}

/// Resident memory of `pid` in KiB (0 once it is gone).
pub fn rss_kib(pid: u32) -> u64 {
    status_field(pid, "VmRSS:").unwrap_or(0)
}

/// Open descriptors of `pid`.
pub fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// The 1-minute load average (the machine is shared: every figure carries it).
pub fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN)
}

/// Samples the thread count of a process every 2 ms until finished; keeps
/// the peak and the census taken at it.
pub struct Sampler {
    stop: Arc<AtomicBool>,
    handle: std::thread::JoinHandle<Census>,
}

impl Sampler {
    /// Starts sampling `pid`.
    pub fn start(pid: u32) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut peak = Census::default();
            while !flag.load(Ordering::Relaxed) {
                if threads(pid) > peak.total {
                    peak = census(pid);
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            peak
        });
        Sampler { stop, handle }
    }

    /// Stops sampling; the census at the peak.
    pub fn finish(self) -> Census {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().unwrap_or_default()
    }
}
