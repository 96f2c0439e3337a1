//! Live restart: a container keeps reading its lazily pulled layer while
//! the daemon is restarted (SIGTERM, start) again and again; every read
//! succeeds with the right bytes and the FUSE mount is never replaced.
//! Real registry, real daemon, real FUSE and overlayfs (needs root).

#![allow(clippy::unwrap_used)]

use crate::common;

use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use common::*;
use rstargz_fs::estargz::WriterOptions;
use rstargz_fs::registry::labels::{STARGZ_DIGEST, STARGZ_REFERENCE, TOC_DIGEST};
use rstargz_test_support::registry::TestRegistry;
use rstargz_test_support::{TestLayer, push_image, test_blob};
use sha2::Digest as _;

const RESTARTS: usize = 10;

/// Small files (page-cache opens) and two of 1.5 MiB (passthrough once
/// fully fetched), in 64 KiB chunks so reads keep missing the cache.
fn files() -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<(String, Vec<u8>)> = (0..8)
        .map(|i| (format!("f{i}"), test_blob(300 << 10, 11 + i)))
        .collect();
    v.push(("big0".into(), test_blob(3 << 19, 3)));
    v.push(("big1".into(), test_blob(3 << 19, 4)));
    v
}

fn layer(files: &[(String, Vec<u8>)]) -> TestLayer {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        b.append_data(&mut h, name, &data[..]).unwrap();
    }
    let opts = WriterOptions {
        chunk_size: 64 << 10,
        ..WriterOptions::default()
    };
    TestLayer::estargz(&b.into_inner().unwrap(), &opts)
}

fn start(dir: &Path) -> Daemon {
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        format!(
            "no_background_fetch = true\n[resolver]\ndocker_config = \"{}\"\n",
            dir.join("none.json").display()
        ),
    )
    .unwrap();
    Daemon::start_with(dir, &["--config", config.to_str().unwrap()])
}

/// The mount id of the mount at `path` (mountinfo's first field).
fn mount_id(path: &Path) -> Option<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let p = path.to_str().unwrap();
    info.lines()
        .find(|l| l.split(' ').nth(4) == Some(p))
        .map(|l| l.split(' ').next().unwrap().to_owned())
}

fn sha(data: &[u8]) -> Vec<u8> {
    sha2::Sha256::digest(data).to_vec()
}

/// What the readers saw.
#[derive(Default)]
struct Seen {
    reads: AtomicU64,
    /// Passes of the whole-file reader over every file.
    passes: AtomicU64,
    errors: Mutex<Vec<String>>,
}

/// Opens, reads and checks every file in a loop (each open and release
/// goes to the daemon, and dropped pages make the reads go there too).
fn whole_file_reader(merged: PathBuf, stop: Arc<AtomicBool>, seen: Arc<Seen>) {
    let files: Vec<(String, Vec<u8>)> = files().into_iter().map(|(n, d)| (n, sha(&d))).collect();
    while !stop.load(Ordering::Relaxed) {
        for (name, want) in &files {
            let res = std::fs::File::open(merged.join(name)).and_then(|mut f| {
                let mut buf = Vec::new();
                std::io::Read::read_to_end(&mut f, &mut buf)?;
                forget_pages(&f);
                Ok(buf)
            });
            match res {
                Ok(buf) if sha(&buf) == *want => {
                    seen.reads.fetch_add(1, Ordering::Relaxed);
                }
                Ok(_) => seen
                    .errors
                    .lock()
                    .unwrap()
                    .push(format!("{name}: wrong bytes")),
                Err(e) => seen.errors.lock().unwrap().push(format!("{name}: {e}")),
            }
        }
        seen.passes.fetch_add(1, Ordering::Relaxed);
    }
}

/// Keeps files open across every restart and reads them at moving offsets.
fn open_file_reader(merged: PathBuf, stop: Arc<AtomicBool>, seen: Arc<Seen>) {
    let all = files();
    let held: Vec<(std::fs::File, &Vec<u8>)> = ["f0", "big1"]
        .iter()
        .map(|n| {
            let data = &all.iter().find(|(name, _)| name == n).unwrap().1;
            (std::fs::File::open(merged.join(n)).unwrap(), data)
        })
        .collect();
    let mut at = 0usize;
    while !stop.load(Ordering::Relaxed) {
        for (f, data) in &held {
            let off = (at * 12_289) % data.len();
            let len = (40 << 10).min(data.len() - off);
            let mut buf = vec![0u8; len];
            match f.read_exact_at(&mut buf, off as u64) {
                Ok(()) if buf == data[off..off + len] => {
                    seen.reads.fetch_add(1, Ordering::Relaxed);
                }
                Ok(()) => seen
                    .errors
                    .lock()
                    .unwrap()
                    .push(format!("held file at {off}: wrong bytes")),
                Err(e) => seen
                    .errors
                    .lock()
                    .unwrap()
                    .push(format!("held file at {off}: {e}")),
            }
            forget_pages(f);
        }
        at += 1;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_see_no_error_while_the_daemon_restarts() {
    let registry = TestRegistry::start().await;
    let reference = format!("{}/live/restart:latest", registry.host());
    let layer = layer(&files());
    let digests = push_image(&reference, std::slice::from_ref(&layer)).await;
    let dir = tempfile::tempdir().unwrap();
    let mut daemon = start(dir.path());
    let mut c = daemon.client().await;
    let labels = [
        ("containerd.io/snapshot.ref", "chain-0"),
        (STARGZ_REFERENCE, reference.as_str()),
        (STARGZ_DIGEST, digests[0].as_str()),
        (TOC_DIGEST, layer.toc_digest.as_deref().unwrap()),
    ];
    let err = prepare(&mut c, "extract-0", "", &labels).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::AlreadyExists, "{err:?}");
    let mounts = prepare(&mut c, "container", "chain-0", &[]).await.unwrap();
    // A container's rootfs: overlayfs on the FUSE layer.
    let lower = PathBuf::from(
        mounts[0]
            .options
            .iter()
            .find_map(|o| o.strip_prefix("lowerdir="))
            .unwrap_or_else(|| panic!("no lowerdir in {mounts:?}")),
    );
    let fuse_id = mount_id(&lower).expect("the layer is mounted");
    let merged = dir.path().join("merged");
    std::fs::create_dir(&merged).unwrap();
    let m = &mounts[0];
    nix::mount::mount(
        Some(m.source.as_str()),
        &merged,
        Some(m.r#type.as_str()),
        nix::mount::MsFlags::empty(),
        Some(m.options.join(",").as_str()),
    )
    .unwrap();

    // Once big1 is fully fetched it is assembled for kernel passthrough; an
    // open of it from then on is a passthrough open, which the kernel ties to
    // one backing id for as long as any open of it lasts (so the held open
    // below tests that the open-file table crosses each restart).
    let files_dir = daemon.root.join("cache/files");
    wait_for("big1 assembled for passthrough", || {
        std::fs::read(merged.join("big1")).unwrap();
        std::fs::read_dir(&files_dir).is_ok_and(|d| d.count() > 0)
    });
    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Seen::default());
    let readers: Vec<_> = [whole_file_reader, open_file_reader]
        .into_iter()
        .map(|f| {
            let (merged, stop, seen) = (merged.clone(), stop.clone(), seen.clone());
            std::thread::spawn(move || f(merged, stop, seen))
        })
        .collect();
    let started = std::time::Instant::now();
    for round in 0..RESTARTS {
        // Readers make progress with this daemon before it goes: a whole
        // pass over every file started under it.
        let before = seen.passes.load(Ordering::Relaxed);
        wait_for("reads through the current daemon", || {
            seen.passes.load(Ordering::Relaxed) > before + 1
        });
        daemon.stop_for_restart();
        assert_eq!(
            mount_id(&lower).as_deref(),
            Some(fuse_id.as_str()),
            "round {round}: the layer stays mounted while no daemon runs"
        );
        daemon = start(dir.path());
        let log = daemon.log_text();
        assert!(
            log.contains("live mount taken over"),
            "round {round}: {log}"
        );
        assert_eq!(
            mount_id(&lower).as_deref(),
            Some(fuse_id.as_str()),
            "round {round}: the same mount goes on (not remounted)"
        );
    }
    let before = seen.passes.load(Ordering::Relaxed);
    wait_for("reads through the last daemon", || {
        seen.passes.load(Ordering::Relaxed) > before + 1
    });
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        r.join().unwrap();
    }
    let reads = seen.reads.load(Ordering::Relaxed);
    println!(
        "live restart: {RESTARTS} restarts in {:.1} s, {reads} checked reads ({} whole passes), {} errors",
        started.elapsed().as_secs_f64(),
        seen.passes.load(Ordering::Relaxed),
        seen.errors.lock().unwrap().len()
    );
    let errors = seen.errors.lock().unwrap().clone();
    assert!(
        errors.is_empty(),
        "{} read errors: {errors:?}",
        errors.len()
    );
    let later_passthrough = (1..=RESTARTS)
        .filter(|n| {
            std::fs::read_to_string(dir.path().join(format!("serve-{n}.log")))
                .is_ok_and(|l| l.contains("passthrough open"))
        })
        .count();
    assert_eq!(
        later_passthrough, RESTARTS,
        "every daemon after a restart answers passthrough opens"
    );

    // containerd's view is unchanged: Stat and Mounts answer as before.
    let mut c = daemon.client().await;
    assert!(stat(&mut c, "chain-0").await.is_ok());
    let again = common::mounts(&mut c, "container").await.unwrap();
    assert_eq!(again, mounts);

    // A full stop (SIGINT) unmounts, and the fd holder goes away with the
    // mounts it held.
    nix::mount::umount(&merged).unwrap();
    let holder = daemon.root.join("fdstore.sock");
    assert!(holder.exists(), "the fd holder serves {}", holder.display());
    daemon.stop();
    assert_eq!(mount_id(&lower), None, "SIGINT unmounts");
    wait_for("the fd holder to exit", || !holder.exists());
}

/// Whether the reading end of the pipe whose writing end is `w` is closed
/// everywhere (poll reports POLLERR on the writing end then), waiting at
/// most `ms`.
fn reader_closed(w: &std::os::fd::OwnedFd, ms: u16) -> bool {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    let mut fds = [PollFd::new(w.as_fd(), PollFlags::empty())];
    poll(&mut fds, PollTimeout::from(ms)).unwrap();
    fds[0]
        .revents()
        .is_some_and(|r| r.contains(PollFlags::POLLERR))
}

#[test]
fn the_fd_holder_lets_go_when_no_daemon_comes_back() {
    use rstargz_remote::fd_holder::FdStore;
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("fdstore.sock");
    let exe = Path::new(env!("CARGO_BIN_EXE_rstargz"));
    let store =
        FdStore::connect_or_spawn(&socket, exe, std::time::Duration::from_secs(2), &[]).unwrap();
    // A pipe stands in for a FUSE connection: the holder keeps its reading
    // end, and the writing end tells when the holder has closed it.
    let (r, w) = nix::unistd::pipe().unwrap();
    store.put("layer", r.as_fd(), "{}").unwrap();
    drop(r);
    // Kept while a daemon is connected, past the timeout.
    assert!(
        !reader_closed(&w, 3000),
        "let go while a daemon was connected"
    );
    // A daemon that goes away and comes back in time finds it.
    drop(store);
    let back = FdStore::connect(&socket).unwrap();
    assert!(back.list().unwrap().iter().any(|(k, _)| k == "layer"));
    drop(back);
    // No daemon any more: after the timeout the holder closes it and exits.
    wait_for("the holder to let go", || reader_closed(&w, 100));
    wait_for("the holder to exit", || !socket.exists());
}

#[test]
fn the_fd_holder_keeps_credentials_for_the_next_daemon_and_only_in_time() {
    use rstargz_fs::registry::{Credential, KeychainMirror, Secret};
    use rstargz_remote::fd_holder::FdStore;
    use rstargz_remote::held_credentials::HeldCredentials;
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("fdstore.sock");
    let exe = Path::new(env!("CARGO_BIN_EXE_rstargz"));
    let store =
        FdStore::connect_or_spawn(&socket, exe, std::time::Duration::from_secs(2), &[]).unwrap();
    let held = HeldCredentials::new(Arc::new(store));
    let basic = |password: &str| Credential::Basic {
        username: "u".into(),
        password: Secret::new(password),
    };
    held.put("reg:5000", &basic("old"));
    held.put("reg:5000", &basic("new"));
    held.put("other:5000", &basic("x"));
    held.remove("other:5000");
    drop(held);
    // The daemon died; the next one finds the credentials (nothing else
    // keeps the holder alive).
    let held = HeldCredentials::new(Arc::new(FdStore::connect(&socket).unwrap()));
    assert_eq!(held.load(), [("reg:5000".to_string(), basic("new"))]);
    drop(held);
    // Nobody came back in time: they are forgotten and the holder exits.
    wait_for("the holder to exit", || !socket.exists());
}

/// The slots (`/<slot>`, the mountinfo root of each layer's bind mount of
/// the FUSE session) of the layers mounted under `root`, by mountpoint.
fn layer_slots(root: &Path) -> std::collections::BTreeMap<PathBuf, u32> {
    remote::mount_table()
        .into_iter()
        .filter(|m| m.mountpoint.starts_with(root.join("snapshots")) && m.source == "rstargz")
        .map(|m| {
            let slot = m.root.to_str().unwrap().trim_start_matches('/');
            (m.mountpoint, slot.parse().unwrap())
        })
        .collect()
}

/// A retired layer's slot is never handed out again, not even by the next
/// daemon after a restart (the kernel may still cache the retired layer's
/// inodes under its node ids), and a layer kept across the restart keeps
/// its slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slots_are_never_reused_across_a_restart() {
    let registry = TestRegistry::start().await;
    let reference = format!("{}/live/slots:latest", registry.host());
    let layer = layer(&files());
    let digests = push_image(&reference, std::slice::from_ref(&layer)).await;
    let dir = tempfile::tempdir().unwrap();
    let mut daemon = start(dir.path());
    let root = daemon.root.clone();
    let mut c = daemon.client().await;
    let toc = layer.toc_digest.clone().unwrap();
    let mount = async |c: &mut Client, chain: &str| {
        let labels = [
            ("containerd.io/snapshot.ref", chain),
            (STARGZ_REFERENCE, reference.as_str()),
            (STARGZ_DIGEST, digests[0].as_str()),
            (TOC_DIGEST, toc.as_str()),
        ];
        let err = prepare(c, &format!("extract-{chain}"), "", &labels)
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::AlreadyExists, "{err:?}");
    };
    mount(&mut c, "chain-a").await;
    mount(&mut c, "chain-b").await;
    let first = layer_slots(&root);
    assert_eq!(first.len(), 2, "{first:?}");
    let highest = *first.values().max().unwrap();
    remove(&mut c, "chain-b").await.unwrap();
    let kept = layer_slots(&root);
    assert_eq!(kept.len(), 1, "{kept:?}");

    daemon.stop_for_restart();
    daemon = start(dir.path());
    let mut c = daemon.client().await;
    assert_eq!(layer_slots(&root), kept, "the kept layer keeps its slot");
    mount(&mut c, "chain-c").await;
    let now = layer_slots(&root);
    let new: Vec<u32> = now
        .iter()
        .filter(|(p, _)| !kept.contains_key(*p))
        .map(|(_, s)| *s)
        .collect();
    assert_eq!(new.len(), 1, "{now:?}");
    assert!(
        new[0] > highest,
        "slot {} handed out again: {now:?}",
        new[0]
    );
    daemon.stop();
    assert!(layer_slots(&root).is_empty());
}
