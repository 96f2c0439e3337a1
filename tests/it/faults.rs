//! Transient registry faults under parallel readers: eStargz images are
//! pushed to a real `docker-registry`, a fault proxy in front of it
//! (`rstargz_test_support::proxy`) resets connections, answers 5xx/429/401,
//! stalls, hangs, cuts and corrupts bodies and redirects, at random per blob
//! request, while the real daemon mounts the layers lazily through FUSE and
//! parallel readers check the sha256 of every file. A read may fail with EIO
//! after the FUSE read timeout but must never return a wrong byte or hang
//! longer; once faults stop, everything reads correctly without a restart.
//! Needs root (FUSE).
//!
//! `bench_full_read_under_faults` (ignored; `scripts/bench-faults.sh`) times
//! a full read of a bigger image with and without faults.

#![allow(clippy::unwrap_used)]

use crate::common;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use rstargz_fs::estargz::WriterOptions;
use rstargz_fs::registry::labels::{STARGZ_DIGEST, STARGZ_REFERENCE, TOC_DIGEST};
use rstargz_snapshotter::snapshot::REMOTE_LABEL;
use rstargz_test_support::proxy::{FaultMode, FaultPlan, FaultProxy, TokenAuth};
use rstargz_test_support::registry::TestRegistry;
use rstargz_test_support::{TestLayer, push_image, test_blob};
use sha2::Digest as _;

/// FUSE read timeout of the daemon under test.
const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Parallel readers, each reading every file.
const READERS: usize = 4;

/// One file of a test image and the sha256 of its content.
#[derive(Clone)]
struct File {
    path: String,
    sha256: [u8; 32],
}

/// An eStargz layer of files with different sizes (empty to multi-chunk,
/// random and compressible) and the list of its files.
fn image(seed: u64, dirs: usize, scale: usize) -> (TestLayer, Vec<File>) {
    const SIZES: [usize; 9] = [0, 1, 17, 4096, 65_535, 65_537, 200_000, 700_000, 1_500_000];
    let mut b = tar::Builder::new(Vec::new());
    let mut files = Vec::new();
    for d in 0..dirs {
        for (i, size) in SIZES.iter().enumerate() {
            let size = size * scale + (seed as usize + d) % 7;
            let n = (seed * 1000 + (d * 100 + i) as u64) | 1;
            let data = if i % 2 == 0 {
                test_blob(size, n)
            } else {
                // Compressible: text with a counter.
                (0..size)
                    .map(|k| b"rstargz fault test "[k % 19] ^ (k / 4096) as u8)
                    .collect()
            };
            let path = format!("d{d}/f{i}-{size}");
            let mut h = tar::Header::new_gnu();
            h.set_mode(0o644);
            h.set_mtime(1_700_000_000);
            h.set_size(data.len() as u64);
            b.append_data(&mut h, &path, &data[..]).unwrap();
            files.push(File {
                path,
                sha256: sha2::Sha256::digest(&data).into(),
            });
        }
    }
    let opts = WriterOptions {
        chunk_size: 64 << 10,
        ..WriterOptions::default()
    };
    let layer = TestLayer::estargz(&b.into_inner().unwrap(), &opts);
    (layer, files)
}

/// What the readers of one round saw.
#[derive(Clone, Copy, Debug, Default)]
struct Counts {
    tried: u64,
    correct: u64,
    eio: u64,
    wrong: u64,
    /// Errors other than EIO.
    other: u64,
    /// Longest single read(2).
    slowest: Duration,
}

impl Counts {
    fn add(&mut self, o: &Counts) {
        self.tried += o.tried;
        self.correct += o.correct;
        self.eio += o.eio;
        self.wrong += o.wrong;
        self.other += o.other;
        self.slowest = self.slowest.max(o.slowest);
    }
}

/// Reads `file` under `root` in 128 KiB read(2) calls and records the outcome.
fn read_one(root: &Path, file: &File, counts: &mut Counts) {
    counts.tried += 1;
    let mut f = match std::fs::File::open(root.join(&file.path)) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("open {}: {e}", file.path);
            counts.other += 1;
            return;
        }
    };
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; 128 << 10];
    loop {
        let started = Instant::now();
        let n = f.read(&mut buf);
        counts.slowest = counts.slowest.max(started.elapsed());
        match n {
            Ok(0) => break,
            Ok(n) => hasher.update(&buf[..n]),
            Err(e) if e.raw_os_error() == Some(libc::EIO) => {
                counts.eio += 1;
                return;
            }
            Err(e) => {
                eprintln!("read {}: {e}", file.path);
                counts.other += 1;
                return;
            }
        }
    }
    if <[u8; 32]>::from(hasher.finalize()) == file.sha256 {
        counts.correct += 1;
    } else {
        counts.wrong += 1;
    }
}

/// `READERS` threads each read every file of `root` (each starting at a
/// different file), bounded by `deadline` in total.
async fn read_all(root: &Path, files: &[File], readers: usize, deadline: Duration) -> Counts {
    let mut tasks = tokio::task::JoinSet::new();
    for r in 0..readers {
        let (root, files) = (root.to_path_buf(), files.to_vec());
        tasks.spawn_blocking(move || {
            let mut counts = Counts::default();
            let start = r * files.len() / readers;
            for i in 0..files.len() {
                read_one(&root, &files[(start + i) % files.len()], &mut counts);
            }
            counts
        });
    }
    let mut total = Counts::default();
    let joined = tokio::time::timeout(deadline, async {
        while let Some(c) = tasks.join_next().await {
            total.add(&c.unwrap());
        }
    })
    .await;
    assert!(joined.is_ok(), "readers still running after {deadline:?}");
    total
}

/// A daemon behind no proxy of its own: quick retries, a 1 s per-request
/// timeout (hangs cost that much), `READ_TIMEOUT` for FUSE reads and no
/// background fetch (so the readers' own reads meet the faults).
fn start_daemon(dir: &Path, top: &str) -> Daemon {
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        format!(
            "no_background_fetch = true\n{top}\
             [resolver]\ndocker_config = \"{}\"\nrequest_timeout_sec = 2\n\
             [blob]\nfetching_timeout_sec = 1\nmax_retries = 5\nmin_wait_msec = 10\nmax_wait_msec = 200\n\
             [fuse]\nread_timeout_sec = {}\n",
            dir.join("no-docker-config.json").display(),
            READ_TIMEOUT.as_secs()
        ),
    )
    .unwrap();
    Daemon::start_with(dir, &["--config", config.to_str().unwrap()])
}

/// A registry with a token-demanding fault proxy in front (anonymous tokens,
/// so 401 faults make the client fetch a new one).
async fn registry_behind_proxy() -> (TestRegistry, FaultProxy) {
    let registry = TestRegistry::start().await;
    let proxy = FaultProxy::start(registry.addr).await;
    proxy.require_tokens(TokenAuth {
        user_password: None,
        refresh_token: None,
    });
    (registry, proxy)
}

/// Pushes `layer` as `repo` and prepares it as the remote snapshot `name`
/// through the proxy; asserts it is remote (not a local fallback) and
/// returns the directory a View of it shows.
async fn mount_remote(
    c: &mut Client,
    registry: &TestRegistry,
    proxy: &FaultProxy,
    repo: &str,
    name: &str,
    layer: &TestLayer,
) -> PathBuf {
    let digests = push_image(&registry.reference(repo), std::slice::from_ref(layer)).await;
    try_mount_remote(c, proxy, repo, name, layer, &digests[0])
        .await
        .unwrap()
}

/// Prepares the pushed `layer` (blob `digest`) of `repo` as the remote
/// snapshot `name` and returns the directory a View of it shows; an error
/// says why it is not a remote snapshot.
async fn try_mount_remote(
    c: &mut Client,
    proxy: &FaultProxy,
    repo: &str,
    name: &str,
    layer: &TestLayer,
    digest: &rstargz_fs::registry::OciDigest,
) -> Result<PathBuf, String> {
    let reference = format!("{}/{repo}:latest", proxy.host());
    let labels = [
        ("containerd.io/snapshot.ref", name),
        (STARGZ_REFERENCE, reference.as_str()),
        (STARGZ_DIGEST, digest.as_str()),
        (TOC_DIGEST, layer.toc_digest.as_deref().unwrap()),
    ];
    match prepare(c, &format!("extract-{name}"), "", &labels).await {
        Err(e) if e.code() == tonic::Code::AlreadyExists => {}
        other => {
            return Err(format!(
                "{name}: Prepare answered {other:?}, not AlreadyExists"
            ));
        }
    }
    let info = stat(c, name).await.map_err(|e| e.to_string())?;
    if !info.labels.contains_key(REMOTE_LABEL) {
        return Err(format!("{name} fell back to a local snapshot: {info:?}"));
    }
    let mounts = view(c, &format!("view-{name}"), name)
        .await
        .map_err(|e| e.to_string())?;
    Ok(bind_source(&mounts))
}

/// The first byte of a `bytes=A-B` Range header.
fn range_start(range: &str) -> Option<u64> {
    range
        .strip_prefix("bytes=")?
        .split('-')
        .next()?
        .parse()
        .ok()
}

fn table_row(name: &str, injected: u64, faulted: &Counts, after: &Counts) -> String {
    format!(
        "{name:<14}{injected:>9}{:>7}{:>8}{:>5}{:>6}{:>11.2}{:>8}{:>8}",
        faulted.tried,
        faulted.correct,
        faulted.eio,
        faulted.wrong,
        faulted.slowest.as_secs_f64(),
        after.tried,
        after.correct
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_readers_get_correct_bytes_or_eio_under_every_fault() {
    let (registry, proxy) = registry_behind_proxy().await;
    let dir = tempfile::tempdir().unwrap();
    let daemon = start_daemon(dir.path(), "");
    let mut c = daemon.client().await;
    let modes: &[(&str, FaultMode, f64)] = &[
        ("reset", FaultMode::Reset, 0.3),
        ("500", FaultMode::Status(500), 0.3),
        ("502", FaultMode::Status(502), 0.3),
        ("503+date", FaultMode::Status(503), 0.3),
        ("429+secs", FaultMode::Status(429), 0.3),
        (
            "stall-200ms",
            FaultMode::Stall(Duration::from_millis(200)),
            0.3,
        ),
        ("hang", FaultMode::Hang, 0.2),
        ("short-body", FaultMode::ShortBody, 0.3),
        ("corrupt", FaultMode::Corrupt, 0.3),
        ("401", FaultMode::Unauthorized, 0.3),
        ("redirect", FaultMode::Redirect, 0.3),
        ("mixed", FaultMode::Mixed, 0.2),
    ];
    let mut rows = Vec::new();
    let mut totals = (Counts::default(), Counts::default());
    for (i, (name, mode, probability)) in modes.iter().enumerate() {
        let (layer, files) = image(i as u64 + 1, 2, 1);
        proxy.set_plan(Some(FaultPlan {
            seed: i as u64 + 7,
            ..FaultPlan::blobs(*mode, *probability)
        }));
        // Prepare (footer, TOC) and every read meet the faults.
        let root = mount_remote(
            &mut c,
            &registry,
            &proxy,
            &format!("faults/{i}"),
            &format!("m{i}"),
            &layer,
        )
        .await;
        let faulted = read_all(&root, &files, READERS, Duration::from_secs(120)).await;
        let injected = proxy.faults_injected();
        proxy.set_plan(None);
        let after = read_all(&root, &files, READERS, Duration::from_secs(60)).await;
        rows.push(table_row(name, injected, &faulted, &after));
        eprintln!("{}", rows.last().unwrap());
        assert!(injected > 0, "{name}: no fault was injected");
        assert_eq!(faulted.wrong, 0, "{name}: a wrong byte was read");
        assert_eq!(faulted.other, 0, "{name}: an error other than EIO");
        assert_eq!(
            faulted.correct + faulted.eio,
            faulted.tried,
            "{name}: {faulted:?}"
        );
        // A read(2) covers at most a readahead request and a retry of it.
        assert!(
            faulted.slowest < READ_TIMEOUT * 2 + Duration::from_secs(2),
            "{name}: a read took {:?}",
            faulted.slowest
        );
        assert_eq!(
            (after.correct, after.tried),
            (files.len() as u64 * READERS as u64, after.tried),
            "{name}: without faults every file reads correctly: {after:?}"
        );
        if *mode == FaultMode::Mixed {
            assert_eq!(faulted.eio, 0, "mixed faults are all retried away");
        }
        totals.0.add(&faulted);
        totals.1.add(&after);
    }
    eprintln!(
        "{:<14}{:>9}{:>7}{:>8}{:>5}{:>6}{:>11}{:>8}{:>8}",
        "mode", "injected", "tried", "correct", "EIO", "wrong", "slowest s", "after", "correct"
    );
    for r in &rows {
        eprintln!("{r}");
    }
    eprintln!("{}", table_row("total", 0, &totals.0, &totals.1));
    daemon.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_while_a_layer_mounts_are_retried_never_a_fallback() {
    let (registry, proxy) = registry_behind_proxy().await;
    let dir = tempfile::tempdir().unwrap();
    let daemon = start_daemon(dir.path(), "");
    let mut c = daemon.client().await;
    let mut mounted = Vec::new();
    for (m, mode) in [FaultMode::Mixed, FaultMode::Corrupt, FaultMode::ShortBody]
        .into_iter()
        .enumerate()
    {
        // Fresh layers until a fault hits a footer or TOC read (the seeds
        // make this the same every run).
        let mut tail_faults = 0;
        for i in (m * 10..).take(6) {
            let (layer, files) = image(100 + i as u64, 1, 1);
            proxy.clear_seen();
            // Most blob requests of Prepare (probe, footer, TOC) fail.
            proxy.set_plan(Some(FaultPlan {
                seed: 40 + i as u64,
                ..FaultPlan::blobs(mode, 0.6)
            }));
            let root = mount_remote(
                &mut c,
                &registry,
                &proxy,
                &format!("mount/{i}"),
                &format!("p{i}"),
                &layer,
            )
            .await;
            proxy.set_plan(None);
            mounted.push((root, files));
            let blob_len = layer.blob.len() as u64;
            tail_faults += proxy
                .seen()
                .iter()
                .filter(|s| s.fault.is_some())
                .filter_map(|s| range_start(s.range.as_deref()?))
                .filter(|start| *start > blob_len / 2)
                .count();
            if tail_faults > 0 {
                break;
            }
        }
        assert!(
            tail_faults > 0,
            "{mode:?}: no fault hit a footer or TOC read"
        );
    }
    for (root, files) in &mounted {
        let counts = read_all(root, files, 1, Duration::from_secs(60)).await;
        assert_eq!(counts.correct, files.len() as u64, "{counts:?}");
    }
    let log = daemon.log_text();
    assert!(
        !log.contains("remote-snapshot-prepared=\"false\"")
            && !log.contains("remote-snapshot-prepared=false"),
        "{log}"
    );
    daemon.stop();
}

/// Path of the Go reference daemon (built by scripts/bench-faults.sh).
const GO_DAEMON: &str = "/usr/local/bin/containerd-stargz-grpc";

/// A snapshotter under benchmark: ours or the Go reference.
enum Bench {
    Ours(Daemon),
    Go {
        child: std::process::Child,
        root: PathBuf,
        socket: PathBuf,
    },
}

impl Bench {
    /// The same retry and timeout settings for both, in each one's keys.
    fn start(go: bool, dir: &Path) -> Bench {
        if !go {
            return Bench::Ours(start_daemon(dir, "noprefetch = true\n"));
        }
        let (root, socket, config) = (dir.join("root"), dir.join("go.sock"), dir.join("go.toml"));
        std::fs::write(
            &config,
            "noprefetch = true\nno_background_fetch = true\n\
             [blob]\nfetching_timeout_sec = 1\nmax_retries = 5\nmin_wait_msec = 10\nmax_wait_msec = 200\n",
        )
        .unwrap();
        let child = std::process::Command::new(GO_DAEMON)
            .arg("-address")
            .arg(&socket)
            .arg("-root")
            .arg(&root)
            .arg("-config")
            .arg(&config)
            .args(["-log-level", "warn"])
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(dir.join("go.log")).unwrap())
            .spawn()
            .unwrap();
        wait_for("the Go daemon's socket", || {
            std::os::unix::net::UnixStream::connect(&socket).is_ok()
        });
        Bench::Go {
            child,
            root,
            socket,
        }
    }

    async fn client(&self) -> Client {
        match self {
            Bench::Ours(d) => d.client().await,
            Bench::Go { socket, .. } => rstargz_snapshotter::client::connect(socket).await.unwrap(),
        }
    }
}

impl Drop for Bench {
    fn drop(&mut self) {
        if let Bench::Go { child, root, .. } = self {
            let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap());
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            wait_for("the Go daemon to exit", || {
                child.try_wait().ok().flatten().is_some()
            });
            let table = rstargz_fs::fuse::mountinfo::read().unwrap_or_default();
            for m in rstargz_remote::restore::stale_mounts(table, root) {
                let _ = nix::mount::umount2(&m.mountpoint, nix::mount::MntFlags::MNT_DETACH);
            }
        }
    }
}

/// Full read of every file of an image by `READERS` parallel readers, with
/// no faults and with 20 % of blob requests faulted (mixed), for rstargz and
/// (when installed) the Go reference, each on a fresh root. Prints the times,
/// the ratio to the fault-free time and the read outcomes.
/// `FAULT_BENCH_DIRS` scales the image (9 files, ~2.5 MB per directory).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: scripts/bench-faults.sh"]
async fn bench_full_read_under_faults() {
    let dirs: usize = std::env::var("FAULT_BENCH_DIRS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(16);
    let (registry, proxy) = registry_behind_proxy().await;
    let (layer, files) = image(1, dirs, 1);
    let repo = "bench/image";
    let digest =
        push_image(&registry.reference(repo), std::slice::from_ref(&layer)).await[0].clone();
    let size: u64 = files.len() as u64;
    eprintln!(
        "image: {size} files in {dirs} directories, blob {:.1} MB, 64 KiB chunks; {READERS} readers",
        layer.blob.len() as f64 / 1e6
    );
    let mut impls = vec![false];
    if Path::new(GO_DAEMON).exists() {
        impls.push(true);
    } else {
        eprintln!("{GO_DAEMON} not installed: rstargz only");
    }
    let mut lines = Vec::new();
    for go in impls {
        let name = if go { "go-reference" } else { "rstargz" };
        let mut clean = None;
        for faulted in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let bench = Bench::start(go, dir.path());
            let mut c = bench.client().await;
            proxy.set_plan(faulted.then(|| FaultPlan {
                seed: 2024,
                ..FaultPlan::blobs(FaultMode::Mixed, 0.2)
            }));
            proxy.clear_seen();
            let started = Instant::now();
            let root = match try_mount_remote(&mut c, &proxy, repo, "bench", &layer, &digest).await
            {
                Ok(root) => root,
                Err(e) => {
                    lines.push(format!(
                        "{name:<13}{:<8} not mounted remotely: {e}",
                        if faulted { "mixed" } else { "clean" }
                    ));
                    proxy.set_plan(None);
                    continue;
                }
            };
            let mounted = started.elapsed();
            let counts = read_all(&root, &files, READERS, Duration::from_secs(1800)).await;
            let total = started.elapsed();
            let injected = proxy.faults_injected();
            let blob_requests = proxy
                .seen()
                .iter()
                .filter(|s| s.path.contains("/blobs/"))
                .count();
            proxy.set_plan(None);
            let after = read_all(&root, &files, 1, Duration::from_secs(600)).await;
            let base = *clean.get_or_insert(total);
            lines.push(format!(
                "{name:<13}{:<8}{:>9.2}{:>9.2}{:>8.1}x{:>9}{:>9}{:>7}{:>8}{:>6}{:>6}{:>10}",
                if faulted { "mixed" } else { "clean" },
                mounted.as_secs_f64(),
                total.as_secs_f64(),
                total.as_secs_f64() / base.as_secs_f64(),
                blob_requests,
                injected,
                counts.tried,
                counts.correct,
                counts.eio,
                counts.wrong,
                format!("{}/{}", after.correct, after.tried),
            ));
            eprintln!("{}", lines.last().unwrap());
            drop(c);
            drop(bench);
        }
    }
    eprintln!(
        "\n{:<13}{:<8}{:>9}{:>9}{:>9}{:>9}{:>9}{:>7}{:>8}{:>6}{:>6}{:>10}",
        "snapshotter",
        "faults",
        "mount s",
        "total s",
        "ratio",
        "requests",
        "faulted",
        "tried",
        "correct",
        "EIO",
        "wrong",
        "after"
    );
    for l in &lines {
        eprintln!("{l}");
    }
    eprintln!("(ratio: total time against the same snapshotter without faults, same run)");
}
