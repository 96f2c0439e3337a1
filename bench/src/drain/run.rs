//! One drain run: a fresh snapshotter (its default config) and a fresh
//! containerd with CRI on, the pause image pulled first (a node has it),
//! then every pod's PullImage, RunPodSandbox and container started at
//! once, each timed to its workload's end from the common start.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rstargz_test_support::containerd::{Containerd, CriConfig};
use rstargz_test_support::cri::{CgroupParent, Cri, Pod, pod_config};
use rstargz_test_support::proxy::Shaper;

use super::images::App;
use super::model::DrainSample;
use super::{Options, tag};
use crate::coldstart::model::Mode;
use crate::coldstart::procs::{self, Daemon, Snapshotter, clean};
use crate::coldstart::{keep_logs, probe};

/// One pod after its workload: its CRI client, sandbox and image.
struct Started {
    cri: Cri,
    pod: Pod,
    image_ref: String,
    pull_s: f64,
    done_s: f64,
    out: String,
}

/// Measures `mode` once.
pub async fn measure(
    opts: &Options,
    shaper: &Shaper,
    apps: &[App],
    pause: &str,
    mode: Mode,
    run: usize,
) -> anyhow::Result<DrainSample> {
    let dir = opts.work.join("run");
    clean(&dir)?;
    std::fs::create_dir_all(&dir)?;
    let result = async {
        let which = mode.snapshotter();
        let snap = which
            .map(|s| procs::start_snapshotter(s, &opts.bins, &dir, true))
            .transpose()?;
        let plugin = which.unwrap_or(Snapshotter::Rstargz).plugin();
        let socket = dir.join(format!("{plugin}.sock"));
        let host = |r: &str| r.split('/').next().unwrap_or_default().to_owned();
        let ctrd = Containerd::start_cri(
            &dir.join("containerd"),
            &socket,
            plugin,
            &CriConfig {
                sandbox_image: pause.into(),
                plain_http_registries: vec![shaper.addr().to_string(), host(pause)],
                snapshotter: snap.is_none().then(|| "overlayfs".into()),
            },
        );
        let sample = timed_run(&ctrd, shaper, snap.as_ref(), apps, pause, mode, run).await;
        drop(ctrd);
        drop(snap);
        keep_logs(&dir, &opts.out, &format!("drain-{mode:?}-{run}"));
        let sample = sample?;
        if let Some(s) = which {
            check_remote(&dir.join(format!("{}.log", s.plugin())), s, apps.len())?;
        }
        anyhow::Ok(sample)
    }
    .await;
    clean(&dir)?;
    result
}

#[allow(clippy::too_many_arguments)]
async fn timed_run(
    ctrd: &Containerd,
    shaper: &Shaper,
    daemon: Option<&Daemon>,
    apps: &[App],
    pause: &str,
    mode: Mode,
    run: usize,
) -> anyhow::Result<DrainSample> {
    let logs = ctrd.dir.join("pod-logs");
    std::fs::create_dir_all(&logs)?;
    let cgroup = format!("rstargz-bench-drain-{}-{run}", std::process::id());
    let _cgroup = CgroupParent(cgroup.clone());
    let mut first = Cri::connect(&ctrd.socket, &ctrd.socket).await?;
    first
        .pull(pause, Some(&pod_config("warm", &logs, &cgroup)), None)
        .await?;
    let mut clients = Vec::new();
    for _ in apps {
        clients.push(Cri::connect(&ctrd.socket, &ctrd.socket).await?);
    }
    let load_avg = load_avg();
    procs::drop_caches()?;
    let sampler = daemon.map(|d| RssSampler::start(d.guard.id()));
    let cpu_before = probe::window_start(daemon)?;
    let before = shaper.counters();
    let start = Instant::now();
    let mut tasks = Vec::new();
    for (app, mut cri) in apps.iter().zip(clients) {
        let reference = format!("{}/bench/{}:{}", shaper.addr(), app.name(), image_tag(mode));
        let sandbox = pod_config(&format!("drain-{}", app.index), &logs, &cgroup);
        let cmd = app.cmd.clone();
        tasks.push(tokio::spawn(async move {
            let image_ref = cri.pull(&reference, Some(&sandbox), None).await?;
            let pull_s = start.elapsed().as_secs_f64();
            let pod = Pod::run(&mut cri, &sandbox).await?;
            let out = cri
                .run_container(pod.id(), &sandbox, &image_ref, "app", &cmd)
                .await?;
            anyhow::Ok(Started {
                cri,
                pod,
                image_ref,
                pull_s,
                done_s: start.elapsed().as_secs_f64(),
                out,
            })
        }));
    }
    let mut started = Vec::new();
    let mut failed = None;
    for (t, app) in tasks.into_iter().zip(apps) {
        match t.await.context("pod task")? {
            Ok(s) => started.push(s),
            Err(e) => failed = failed.or(Some(e.context(format!("pod of {}", app.name())))),
        }
    }
    let all = start.elapsed();
    let counted = shaper.counters().since(&before);
    let (peak_rss, end) = match sampler {
        Some(s) => {
            let (peak, end) = s.stop().await;
            (Some(peak), end)
        }
        None => (None, None),
    };
    let probe = probe::window_end(daemon, cpu_before)?;
    let local_run_s = match (&failed, mode) {
        (None, Mode::Overlayfs) => Some(local_run(&mut started, apps, &logs, &cgroup).await?),
        _ => None,
    };
    for s in &mut started {
        s.pod.remove(&mut s.cri).await?;
    }
    if let Some(e) = failed {
        return Err(e);
    }
    let checksums_ok: Vec<bool> = started
        .iter()
        .zip(apps)
        .map(|(s, a)| s.out.contains(&a.checksum))
        .collect();
    if let Some(bad) = checksums_ok.iter().position(|ok| !ok) {
        bail!(
            "pod {bad} printed {:?}, not its checksum {}",
            started[bad].out,
            apps[bad].checksum
        );
    }
    Ok(DrainSample {
        mode,
        run,
        all_s: all.as_secs_f64(),
        pods_s: started.iter().map(|s| s.done_s).collect(),
        pulls_s: started.iter().map(|s| s.pull_s).collect(),
        checksums_ok,
        bytes: counted.bytes_down,
        requests: counted.requests,
        local_run_s,
        peak_rss_bytes: peak_rss,
        end_rss_bytes: end.map(|e| e.0),
        end_threads: end.map(|e| e.1),
        probe,
        load_avg,
    })
}

fn image_tag(mode: Mode) -> &'static str {
    match mode {
        Mode::Overlayfs => "plain",
        m => tag(m.prioritized()),
    }
}

/// Every pod started again, all at once, with the images local and the
/// page cache dropped (new sandboxes, then the workloads): the local part
/// of the floor, the same work as the timed start without the network.
async fn local_run(
    started: &mut [Started],
    apps: &[App],
    logs: &Path,
    cgroup: &str,
) -> anyhow::Result<f64> {
    procs::drop_caches()?;
    let start = Instant::now();
    let runs = started.iter_mut().zip(apps).map(|(s, app)| async move {
        let sandbox = pod_config(&format!("local-{}", app.index), logs, cgroup);
        let mut pod = Pod::run(&mut s.cri, &sandbox).await?;
        let out = s
            .cri
            .run_container(pod.id(), &sandbox, &s.image_ref, "local", &app.cmd)
            .await;
        let took = start.elapsed();
        pod.remove(&mut s.cri).await?;
        if !out?.contains(&app.checksum) {
            bail!("the local run of {} printed the wrong checksum", app.name());
        }
        anyhow::Ok(took)
    });
    let mut last = Duration::ZERO;
    for r in futures_util::future::join_all(runs).await {
        last = last.max(r?);
    }
    Ok(last.as_secs_f64())
}

/// `/proc/loadavg`'s three averages (zeros when unreadable).
fn load_avg() -> [f64; 3] {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mut v = text.split_whitespace().filter_map(|w| w.parse().ok());
    [
        v.next().unwrap_or(0.0),
        v.next().unwrap_or(0.0),
        v.next().unwrap_or(0.0),
    ]
}

/// Samples a process's RSS every 100 ms and keeps the peak.
struct RssSampler {
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
    pid: u32,
    task: tokio::task::JoinHandle<()>,
}

impl RssSampler {
    fn start(pid: u32) -> Self {
        let (stop, peak) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicU64::new(0)),
        );
        let (s, p) = (stop.clone(), peak.clone());
        let task = tokio::spawn(async move {
            while !s.load(Ordering::Relaxed) {
                if let Ok(u) = crate::resources::sample(pid) {
                    p.fetch_max(u.rss_bytes, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        RssSampler {
            stop,
            peak,
            pid,
            task,
        }
    }

    /// The peak RSS, and the RSS and thread count now.
    async fn stop(self) -> (u64, Option<(u64, u64)>) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.task.await;
        let end = crate::resources::sample(self.pid).ok().map(|u| u.rss_bytes);
        let threads = threads(self.pid);
        let peak = self.peak.load(Ordering::Relaxed).max(end.unwrap_or(0));
        (peak, end.zip(threads))
    }
}

/// The thread count of `pid`.
fn threads(pid: u32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|v| v.trim().parse().ok())
}

/// Fails unless the snapshotter mounted every app layer remotely; the
/// pause image (not eStargz) is the one fallback.
fn check_remote(log: &Path, which: Snapshotter, pods: usize) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let count = |v: &str| {
        let pattern = match which {
            Snapshotter::Rstargz => format!("remote-snapshot-prepared=\"{v}\""),
            Snapshotter::GoReference => format!("\"remote-snapshot-prepared\":\"{v}\""),
        };
        text.matches(&pattern).count()
    };
    let (yes, no) = (count("true"), count("false"));
    if no > 1 || (which == Snapshotter::Rstargz && yes != 2 * pods) {
        bail!(
            "{} mounted {yes} layers remotely and {no} not (want {} and the pause image's 1); see {}",
            which.plugin(),
            2 * pods,
            log.display()
        );
    }
    Ok(())
}
