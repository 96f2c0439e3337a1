//! Resource use of a snapshotter daemon (issue 8, point 4): its resident
//! memory and CPU time (`/proc/PID/status`, `/proc/PID/stat`) before and
//! after mounting each of a list of images, and after walking each one,
//! with the mount latency (Prepare to AlreadyExists) of each.

use std::io;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::io::walk;
use super::remote_layer::{self, MountError, Snapshotter};

/// One sample of a process's resource use.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Usage {
    /// Resident set size in bytes (`VmRSS`).
    pub rss_bytes: u64,
    /// User plus system CPU time in seconds.
    pub cpu_seconds: f64,
}

/// Samples process `pid` now.
pub fn sample(pid: u32) -> io::Result<Usage> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let rss_kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .ok_or_else(|| io::Error::other(format!("no VmRSS for pid {pid}")))?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    Ok(Usage {
        rss_bytes: rss_kb * 1024,
        cpu_seconds: cpu_ticks(&stat)? as f64 / clock_ticks(),
    })
}

/// utime + stime from a `/proc/PID/stat` line (fields 14 and 15; the
/// command name in parentheses may itself hold spaces).
fn cpu_ticks(stat: &str) -> io::Result<u64> {
    let after = stat
        .rfind(')')
        .map(|i| &stat[i + 1..])
        .ok_or_else(|| io::Error::other("malformed /proc stat"))?;
    // After ")": field 3 (state) is the first; utime is field 14.
    let fields: Vec<&str> = after.split_whitespace().collect();
    let get = |i: usize| -> io::Result<u64> {
        fields
            .get(i)
            .and_then(|f| f.parse().ok())
            .ok_or_else(|| io::Error::other("malformed /proc stat"))
    };
    Ok(get(11)? + get(12)?)
}

fn clock_ticks() -> f64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .map_or(100.0, |t| t as f64)
}

/// Figures of one image mounted on a running daemon.
#[derive(Debug, Clone, Serialize)]
pub struct ImageUse {
    /// Image reference.
    pub image: String,
    /// Names seen by a walk of the mounted root (files, directories, root).
    pub entries: u64,
    /// Milliseconds from Prepare to AlreadyExists, summed over its layers.
    pub prepare_ms: f64,
    /// Daemon RSS growth from mounting, bytes.
    pub rss_mount_bytes: i64,
    /// Daemon CPU seconds spent mounting.
    pub cpu_mount_seconds: f64,
    /// Daemon RSS growth from the walk that followed, bytes.
    pub rss_walk_bytes: i64,
    /// Daemon CPU seconds spent serving the walk.
    pub cpu_walk_seconds: f64,
    /// Seconds the walk took.
    pub walk_seconds: f64,
}

/// Everything measured on one daemon.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Daemon RSS before the first mount, bytes.
    pub rss_idle_bytes: u64,
    /// One entry per image, in mount order (earlier ones stay mounted).
    pub images: Vec<ImageUse>,
}

/// Errors of [`measure`].
#[derive(Debug, thiserror::Error)]
pub enum ResourceError {
    /// Mounting failed.
    #[error(transparent)]
    Mount(#[from] MountError),
    /// Sampling or walking failed.
    #[error("{0}: {1}")]
    Io(String, io::Error),
}

/// Mounts each image in turn on the daemon `pid` serving `socket`
/// (mountpoints under `work`), sampling around each mount and a walk.
/// Everything is unmounted at the end.
pub async fn measure(
    socket: &Path,
    pid: u32,
    images: &[String],
    work: &Path,
    hold: std::time::Duration,
) -> Result<Report, ResourceError> {
    let sample_now = || sample(pid).map_err(|e| ResourceError::Io(format!("pid {pid}"), e));
    let mut snap = Snapshotter::connect(socket).await?;
    let idle = sample_now()?;
    let mut mounted = Vec::new();
    let mut out = Vec::new();
    let result: Result<(), ResourceError> = async {
        for (i, image) in images.iter().enumerate() {
            let resolved = remote_layer::resolve(image).await?;
            let before = sample_now()?;
            let dir: PathBuf = work.join(format!("root-{i}"));
            let tag = format!("res-{}-{i}", std::process::id());
            let m = snap.mount(&resolved, &tag, &dir).await?;
            let after_mount = sample_now()?;
            let prepare_ms = m.prepare_ms.iter().sum();
            mounted.push(m);
            let walked = tokio::task::block_in_place(|| walk(&dir))
                .map_err(|e| ResourceError::Io(dir.display().to_string(), e))?;
            let after_walk = sample_now()?;
            out.push(ImageUse {
                image: image.clone(),
                entries: walked.entries,
                prepare_ms,
                rss_mount_bytes: after_mount.rss_bytes as i64 - before.rss_bytes as i64,
                cpu_mount_seconds: after_mount.cpu_seconds - before.cpu_seconds,
                rss_walk_bytes: after_walk.rss_bytes as i64 - after_mount.rss_bytes as i64,
                cpu_walk_seconds: after_walk.cpu_seconds - after_mount.cpu_seconds,
                walk_seconds: walked.seconds,
            });
        }
        Ok(())
    }
    .await;
    // Lets a person inspect the daemon with everything mounted.
    tokio::time::sleep(hold).await;
    for m in mounted.iter().rev() {
        if let Err(e) = snap.unmount(m).await {
            tracing::warn!(error = %e, "cannot unmount a benchmark image");
        }
    }
    result?;
    Ok(Report {
        rss_idle_bytes: idle.rss_bytes,
        images: out,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cpu_time_past_odd_command_names() -> io::Result<()> {
        let line = "42 (a b) c) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0";
        assert_eq!(cpu_ticks(line)?, 300);
        let me = sample(std::process::id())?;
        assert!(me.rss_bytes > 0);
        Ok(())
    }
}
