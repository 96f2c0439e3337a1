//! Soak (issue 18): mixed registry faults, cache eviction pressure, live
//! restarts and containers coming and going, for `RSTARGZ_SOAK_SECS`
//! (CI: 120 s; `scripts/soak.sh`: one hour). Afterwards: zero wrong bytes,
//! zero EIO, the daemon's threads, fds and RSS back to their baseline, and
//! no mount left behind.
//!
//! Three eStargz images share a busybox layer and each have their own
//! 8 MiB of data, against a 4 MiB disk cache and a 1 MiB memory tier: every
//! round reads the data of two images in two containers at once, so the
//! cache keeps evicting. A host-side reader reads image 0's files through
//! its mounted layer all the time, across the live restarts. Each round
//! removes and pulls image 1 or 2 again (a layer unmounted, a new one
//! mounted). Faults are off while containerd pulls (its own fetches of
//! the manifest and config do not retry) and on while containers read.
//! Real registry, containerd, runc, FUSE and overlayfs (needs root).

#![allow(clippy::unwrap_used)]

use crate::common;
use crate::common::image as image_common;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::containerd::{Containerd, RunDirGuard};
use common::remote::{hex_sha, mount_table};
use common::workload::{BUSYBOX, run_script, unmount_all_under};
use common::*;
use image_common::proxy::{FaultMode, FaultPlan, FaultProxy, TokenAuth};
use image_common::registry::TestRegistry;
use image_common::{build_estargz, client, pseudo_random};
use rstargz_image::build::LayerInput;

const PLUGIN: &str = "rstargz";
const NAMESPACE: &str = "rstargz-soak";
const IMAGES: usize = 3;
const FILES_PER_IMAGE: usize = 4;
const FILE_BYTES: usize = 2 << 20;
const DISK_CACHE_BYTES: u64 = 4 << 20;

/// The data file `k` of image `i` (inside the image).
fn data_path(i: usize, k: usize) -> String {
    format!("/data/i{i}-f{k}.bin")
}

fn data(i: usize, k: usize) -> Vec<u8> {
    pseudo_random(FILE_BYTES + 4096 * k, (100 * i + k) as u64)
}

/// The layer trees of image `i`: busybox (the same in every image), then
/// its own data.
fn layers(dir: &Path, i: usize) -> Vec<PathBuf> {
    let base = dir.join("l-base");
    if !base.exists() {
        std::fs::create_dir_all(base.join("bin")).unwrap();
        std::fs::copy(BUSYBOX, base.join("bin/busybox")).unwrap();
        for d in ["proc", "sys", "dev", "tmp", "etc"] {
            std::fs::create_dir_all(base.join(d)).unwrap();
        }
    }
    let own = dir.join(format!("l-data{i}"));
    std::fs::create_dir_all(own.join("data")).unwrap();
    for k in 0..FILES_PER_IMAGE {
        std::fs::write(own.join(&data_path(i, k)[1..]), data(i, k)).unwrap();
    }
    vec![base, own]
}

/// What `sha256sum` of image `i`'s data prints.
fn expected_sums(i: usize) -> String {
    (0..FILES_PER_IMAGE)
        .map(|k| format!("{}  {}\n", hex_sha(&data(i, k)), data_path(i, k)))
        .collect()
}

fn sums_script(i: usize) -> String {
    let files: Vec<String> = (0..FILES_PER_IMAGE).map(|k| data_path(i, k)).collect();
    format!("cd / && /bin/busybox sha256sum {}", files.join(" "))
}

/// The daemon with its defaults (background fetch on) but small caches,
/// quick retries and short timeouts (a hang costs one second).
fn start_daemon(dir: &Path) -> Daemon {
    let config = dir.join("rstargz.toml");
    std::fs::write(
        &config,
        format!(
            "[resolver]\ndocker_config = \"{}\"\nrequest_timeout_sec = 2\n\
             [blob]\nfetching_timeout_sec = 1\nmax_retries = 8\nmin_wait_msec = 10\nmax_wait_msec = 200\n\
             [directory_cache]\nmax_bytes = {DISK_CACHE_BYTES}\nmemory_bytes = {}\n",
            dir.join("no-docker-config.json").display(),
            1 << 20
        ),
    )
    .unwrap();
    Daemon::start_with(dir, &["--config", config.to_str().unwrap()])
}

/// Threads, open fds and RSS of a process.
#[derive(Debug, Clone, Copy)]
struct Resources {
    threads: usize,
    fds: usize,
    rss_kib: u64,
}

fn resources(pid: u32) -> Resources {
    let count = |d: &str| {
        std::fs::read_dir(format!("/proc/{pid}/{d}"))
            .unwrap()
            .count()
    };
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap();
    Resources {
        threads: count("task"),
        fds: count("fd"),
        rss_kib,
    }
}

/// Polls until the daemon's thread count has held still for longer than
/// tokio keeps an idle blocking worker (10 s), so background fetches are
/// done and lingering workers gone, then samples it.
fn settled(pid: u32) -> Resources {
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut count = resources(pid).threads;
    let mut since = Instant::now();
    while since.elapsed() < Duration::from_secs(12) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(250));
        let now = resources(pid).threads;
        if now != count {
            (count, since) = (now, Instant::now());
        }
    }
    resources(pid)
}

/// The daemon's threads by name.
fn thread_names(pid: u32) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("comm")).ok())
        .map(|n| n.trim().to_string())
        .collect();
    names.sort();
    names
}

/// tokio's threads (runtime workers and blocking workers, which linger
/// for 10 s after their last task) and every other thread of the daemon.
fn split_tokio(names: &[String]) -> (usize, usize) {
    let tokio = names.iter().filter(|n| *n == "tokio-rt-worker").count();
    (tokio, names.len() - tokio)
}

/// The bound of the daemon's tokio blocking pool (`src/cli/mod.rs`).
const MAX_BLOCKING_THREADS: usize = 32;

/// Mount points under the daemon's snapshot directories.
fn snapshot_mounts(root: &Path) -> Vec<PathBuf> {
    let snapshots = root.join("snapshots");
    mount_table()
        .into_iter()
        .map(|m| m.mountpoint)
        .filter(|p| p.starts_with(&snapshots))
        .collect()
}

/// The mounted layer that holds image 0's data.
fn data_layer_of_image0(root: &Path) -> PathBuf {
    snapshot_mounts(root)
        .into_iter()
        .find(|m| m.join(&data_path(0, 0)[1..]).exists())
        .unwrap_or_else(|| {
            panic!(
                "image 0's data layer is not mounted under {}",
                root.display()
            )
        })
}

/// What the host-side reader saw.
#[derive(Default)]
struct Seen {
    reads: AtomicU64,
    errors: Mutex<Vec<String>>,
}

/// Reads image 0's files through its layer until `stop`, dropping their
/// pages after each read so the next one reaches the daemon again.
fn host_reader(layer: PathBuf, stop: Arc<AtomicBool>, seen: Arc<Seen>) {
    let want: Vec<String> = (0..FILES_PER_IMAGE).map(|k| hex_sha(&data(0, k))).collect();
    while !stop.load(Ordering::Relaxed) {
        for (k, want) in want.iter().enumerate() {
            let path = layer.join(&data_path(0, k)[1..]);
            let res = std::fs::File::open(&path).and_then(|mut f| {
                let mut buf = Vec::new();
                std::io::Read::read_to_end(&mut f, &mut buf)?;
                forget_pages(&f);
                Ok(buf)
            });
            match res {
                Ok(buf) if hex_sha(&buf) == *want => {
                    seen.reads.fetch_add(1, Ordering::Relaxed);
                }
                Ok(_) => seen
                    .errors
                    .lock()
                    .unwrap()
                    .push(format!("{k}: wrong bytes")),
                Err(e) => seen.errors.lock().unwrap().push(format!("{k}: {e}")),
            }
        }
    }
}

fn soak_duration() -> Duration {
    let secs = std::env::var("RSTARGZ_SOAK_SECS")
        .ok()
        .map(|v| v.parse().expect("RSTARGZ_SOAK_SECS is a number of seconds"))
        .unwrap_or(120);
    Duration::from_secs(secs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_faults_eviction_live_restarts_and_containers() {
    let duration = soak_duration();
    // "Every few minutes" in the long run; at least three times in CI's.
    let restart_every = (duration / 4).clamp(Duration::from_secs(20), Duration::from_secs(180));
    let _run_dir = RunDirGuard::new();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let reg = TestRegistry::start().await;
    let proxy = FaultProxy::start(reg.addr).await;
    // Anonymous tokens, as Docker Hub hands out: a 401 fault then makes the
    // client fetch a new token instead of failing the read.
    proxy.require_tokens(TokenAuth {
        user_password: None,
        refresh_token: None,
    });
    let mut refs = Vec::new();
    for i in 0..IMAGES {
        let inputs: Vec<LayerInput> = layers(&dir, i).into_iter().map(LayerInput::Dir).collect();
        let (esgz, count) =
            build_estargz(&client(&dir), &reg.host(), &format!("soak/i{i}"), &inputs).await;
        assert_eq!(count, 2);
        // Pulled through the proxy, so the daemon's fetches meet its faults.
        refs.push(esgz.to_string().replace(&reg.host(), &proxy.host()));
    }
    let data_bytes = (IMAGES * FILES_PER_IMAGE * FILE_BYTES) as u64;
    assert!(data_bytes >= 3 * DISK_CACHE_BYTES, "no eviction pressure");

    let mut daemon = start_daemon(&dir);
    let ctrd = Containerd::start(&dir, &daemon.socket, PLUGIN);
    for r in &refs {
        ctrd.rpull(NAMESPACE, PLUGIN, r);
    }
    // The sums go to a file on a bind mount, not through `ctr run`'s
    // stdout: containerd can lose the output of a task that exits right
    // after printing (containerd/nerdctl#3877), seen here once in a few
    // hundred containers.
    let out_dir = dir.join("out");
    std::fs::create_dir_all(&out_dir).unwrap();
    let mount = format!(
        "type=bind,src={},dst=/out,options=rbind:rw",
        out_dir.display()
    );
    let run = |i: usize, id: &str| {
        let script = format!(
            "{} > /out/{id}.tmp && mv /out/{id}.tmp /out/{id}",
            sums_script(i)
        );
        run_script(
            &ctrd,
            &dir,
            NAMESPACE,
            PLUGIN,
            &refs[i],
            id,
            &["--mount", &mount],
            &script,
        );
        let file = out_dir.join(id);
        let out = std::fs::read_to_string(&file)
            .unwrap_or_else(|e| panic!("container {id} of image {i} wrote no sums: {e}"));
        std::fs::remove_file(&file).unwrap();
        assert_eq!(out, expected_sums(i), "container {id} of image {i}");
    };
    // Warm-up: each image once, then the baseline.
    for i in 0..IMAGES {
        run(i, &format!("warm-{i}"));
    }
    let baseline = settled(daemon.pid());
    let baseline_names = thread_names(daemon.pid());
    eprintln!("soak for {duration:?}, live restart every {restart_every:?}; baseline {baseline:?}");

    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Seen::default());
    let reader = {
        let layer = data_layer_of_image0(&daemon.root);
        let (stop, seen) = (stop.clone(), seen.clone());
        std::thread::spawn(move || host_reader(layer, stop, seen))
    };
    let started = Instant::now();
    let mut last_restart = Instant::now();
    let (mut rounds, mut restarts, mut containers, mut repulls) = (0usize, 0usize, 0usize, 0usize);
    let (mut faults, mut blob_gets) = (0u64, 0usize);
    while started.elapsed() < duration {
        // An image goes and comes back: containerd removes its snapshots
        // (the daemon unmounts the layer), then pulls it lazily again.
        // (`set_plan` zeroes the proxy's count, and what it saw would grow
        // for an hour.)
        faults += proxy.faults_injected();
        blob_gets += proxy
            .seen()
            .iter()
            .filter(|r| r.path.contains("/blobs/"))
            .count();
        proxy.clear_seen();
        proxy.set_plan(None);
        let gone = 1 + rounds % (IMAGES - 1);
        ctrd.ctr(&[
            "--namespace",
            NAMESPACE,
            "image",
            "rm",
            "--sync",
            &refs[gone],
        ]);
        ctrd.rpull(NAMESPACE, PLUGIN, &refs[gone]);
        repulls += 1;

        // Two containers at once, under faults.
        proxy.set_plan(Some(FaultPlan {
            seed: rounds as u64,
            ..FaultPlan::blobs(FaultMode::Mixed, 0.1)
        }));
        std::thread::scope(|s| {
            for c in 0..2 {
                let i = (rounds + c) % IMAGES;
                let run = &run;
                s.spawn(move || run(i, &format!("r{rounds}-c{c}")));
            }
        });
        containers += 2;
        for layer in snapshot_mounts(&daemon.root) {
            drop_pages_under(&layer);
        }

        if last_restart.elapsed() >= restart_every {
            daemon.stop_for_restart();
            daemon = start_daemon(&dir);
            ctrd.wait_snapshotter(PLUGIN);
            restarts += 1;
            last_restart = Instant::now();
        }
        rounds += 1;
        let errors = seen.errors.lock().unwrap().clone();
        assert!(errors.is_empty(), "host reads failed: {errors:?}");
    }
    faults += proxy.faults_injected();
    proxy.set_plan(None);
    stop.store(true, Ordering::Relaxed);
    reader.join().unwrap();
    let errors = seen.errors.lock().unwrap().clone();
    assert!(errors.is_empty(), "host reads failed: {errors:?}");
    let reads = seen.reads.load(Ordering::Relaxed);
    eprintln!(
        "{rounds} rounds, {containers} containers, {repulls} re-pulls, {restarts} live restarts, \
         {reads} host reads; {blob_gets} blob requests, {faults} faults injected"
    );
    assert!(restarts >= 1, "no live restart in {duration:?}");
    assert!(reads > 0, "the host reader read nothing");
    assert!(
        faults > 0,
        "no fault met a read ({blob_gets} blob requests)"
    );

    // The same work as before the baseline, then the same settling.
    for i in 0..IMAGES {
        run(i, &format!("final-{i}"));
    }
    let end = settled(daemon.pid());
    let end_names = thread_names(daemon.pid());
    eprintln!(
        "at the end {end:?} (baseline {baseline:?})\n threads now: {}\n threads then: {}",
        end_names.join(", "),
        baseline_names.join(", ")
    );
    // Every thread but tokio's is back at its count; tokio's are within
    // the blocking pool's bound above it (workers linger after a busy
    // round, and the pool is what bounds them).
    let ((tokio_then, other_then), (tokio_now, other_now)) =
        (split_tokio(&baseline_names), split_tokio(&end_names));
    assert!(
        other_now <= other_then && tokio_now <= tokio_then + MAX_BLOCKING_THREADS,
        "threads {end_names:?} against {baseline_names:?}"
    );
    assert!(
        end.fds <= baseline.fds + 8,
        "fds {end:?} against {baseline:?}"
    );
    assert!(
        end.rss_kib <= baseline.rss_kib + (64 << 10),
        "RSS {end:?} against {baseline:?}"
    );

    // Every image removed: no layer stays mounted; after a full stop no
    // mount is left at all.
    for r in &refs {
        ctrd.ctr(&["--namespace", NAMESPACE, "image", "rm", "--sync", r]);
    }
    let root = daemon.root.clone();
    wait_for("the removed images' layers to be unmounted", || {
        snapshot_mounts(&root).is_empty()
    });
    drop(ctrd);
    daemon.stop();
    let left = unmount_all_under(&dir);
    assert!(left.is_empty(), "mounts left under the temp dir: {left:?}");
}

/// Drops the page cache of every regular file under `dir`, so the next
/// container's reads reach the daemon (and its evicting cache) again.
fn drop_pages_under(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        match entry.file_type() {
            Ok(t) if t.is_dir() => drop_pages_under(&path),
            Ok(t) if t.is_file() => {
                if let Ok(f) = std::fs::File::open(&path) {
                    forget_pages(&f);
                }
            }
            _ => {}
        }
    }
}
