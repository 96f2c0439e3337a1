//! Randomized crash safety under a mixed load: client tasks run
//! Prepare/Commit/Remove/View/Mounts/List/Stat/Cleanup on local and remote
//! (FUSE) snapshots while threads read files through the FUSE mounts; a
//! seeded RNG picks when the daemon gets kill -9. After each restart:
//! every acknowledged change survived and nothing unacknowledged is half
//! there, rows and directories match, the mounts under the root are exactly
//! the remote layers (no stale or stacked FUSE mount), the layers' TOC
//! copies belong to live snapshots, Cleanup leaves no orphan and every file
//! of the disk cache verifies against its name.
//!
//! Live restart is on in most rounds: the next daemon takes the held FUSE
//! connections over (reads in flight at the kill finish through it, never
//! with ENOTCONN); every fifth daemon runs with `[fuse] live_restart =
//! false`, so stale mounts are also aborted, both held ones (by that
//! daemon) and unheld ones (by the live daemon after it). A final clean
//! stop leaves no mount and no fd holder process.
//!
//! `CRASH_ROUNDS` (default 20) and `CRASH_SEED` (default: from the clock,
//! printed) tune it; `scripts/crash-rounds.sh N SEED` runs long sessions.

#![allow(clippy::unwrap_used)]

use crate::common;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use common::remote::*;
use common::*;
use rstargz_fs::registry::OciDigest;
use rstargz_fs::registry::labels::STARGZ_DIGEST;
use rstargz_snapshotter::snapshot::REMOTE_LABEL;
use rstargz_test_support::registry::TestRegistry;
use rstargz_test_support::{TestLayer, push_image, test_blob};

const WORKERS: usize = 4;
const READERS: usize = 2;
/// Chunks are small and the cache bound is below the layers' size, so
/// reads keep writing and evicting cache files (a kill can hit a write).
const CHUNK: u64 = 64 << 10;
const CACHE_CONFIG: &str = "[directory_cache]\nmax_bytes = 2097152\nmemory_bytes = 131072\n\
                            [background_fetch]\nsilence_period_msec = 20\n";

/// splitmix64: small, seedable, good enough to pick moments and ops.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// The test image: three layers with known files.
struct Fixture {
    reference: String,
    layers: Vec<TestLayer>,
    digests: Vec<OciDigest>,
    /// Files of each layer (path, contents).
    files: Vec<Vec<(String, Vec<u8>)>>,
}

impl Fixture {
    fn new(reference: String) -> Fixture {
        let files: Vec<Vec<(String, Vec<u8>)>> = vec![
            vec![
                // Over 1 MiB: also assembled for FUSE passthrough.
                ("a.bin".into(), test_blob(1280 << 10, 1)),
                ("small0.txt".into(), b"layer zero\n".to_vec()),
            ],
            vec![
                ("b.bin".into(), test_blob(512 << 10, 3)),
                ("dir/c.bin".into(), test_blob(256 << 10, 5)),
            ],
            vec![("d.bin".into(), test_blob(640 << 10, 7))],
        ];
        let layers = files
            .iter()
            .map(|fs| {
                let mut entries: Vec<(&str, u32, &[u8])> = Vec::new();
                if fs.iter().any(|(p, _)| p.starts_with("dir/")) {
                    entries.push(("dir/", 0o755, b""));
                }
                entries.extend(fs.iter().map(|(p, d)| (p.as_str(), 0o644, d.as_slice())));
                estargz_layer(&entries, CHUNK)
            })
            .collect();
        Fixture {
            reference,
            layers,
            digests: Vec::new(),
            files,
        }
    }

    fn layer_of(&self, digest: &str) -> usize {
        self.digests
            .iter()
            .position(|d| d.as_str() == digest)
            .unwrap_or_else(|| panic!("unknown layer {digest}"))
    }

    fn file_shas(&self) -> HashSet<String> {
        self.files
            .iter()
            .flatten()
            .map(|(_, d)| hex_sha(d))
            .collect()
    }
}

/// What acknowledged requests promise about the state after a crash.
#[derive(Default)]
struct Expect {
    present: HashSet<String>,
    absent: HashSet<String>,
}

impl Expect {
    fn unsure(&mut self, key: &str) {
        self.present.remove(key);
        self.absent.remove(key);
    }
}

/// A FUSE directory readers read from: the layer it serves, and whether it
/// must stay readable until the kill.
#[derive(Clone)]
struct Target {
    dir: PathBuf,
    layer: usize,
    keep: bool,
}

/// State shared by the load of one round.
struct Shared {
    fixture: Arc<Fixture>,
    expect: Mutex<Expect>,
    targets: Mutex<Vec<Target>>,
    /// Acknowledged operations (the kill waits for a random number of them).
    events: AtomicUsize,
    /// Verified reads.
    reads: AtomicUsize,
    /// Set just before the kill: errors after it are expected.
    killed: AtomicBool,
    /// The next daemon takes the held FUSE connections over (live restart
    /// on both sides of the kill): reads of the long-lived layers pause,
    /// their connection is never aborted.
    taken_over: bool,
    stop: AtomicBool,
    violations: Mutex<Vec<String>>,
}

impl Shared {
    fn violation(&self, what: String) {
        self.violations.lock().unwrap().push(what);
    }

    fn acked(&self) {
        self.events.fetch_add(1, Ordering::Relaxed);
    }

    /// An error: expected once the daemon is killed, else a violation.
    /// Returns false (the caller stops).
    fn failed(&self, op: &str, e: &tonic::Status) -> bool {
        if !self.killed.load(Ordering::SeqCst) {
            self.violation(format!("{op} failed before the kill: {e:?}"));
        }
        false
    }

    fn unsure(&self, keys: &[&str]) {
        let mut e = self.expect.lock().unwrap();
        for k in keys {
            e.unsure(k);
        }
    }

    fn settle(&self, present: &[&str], absent: &[&str]) {
        let mut e = self.expect.lock().unwrap();
        for k in present {
            e.present.insert(k.to_string());
        }
        for k in absent {
            e.absent.insert(k.to_string());
        }
        drop(e);
        self.acked();
    }
}

/// Prepare (+ Commit, sometimes Remove) of a local snapshot on `base`.
async fn local_op(c: &mut Client, s: &Shared, rng: &mut Rng, name: &str) -> bool {
    let key = format!("{name}-active");
    s.unsure(&[&key]);
    if let Err(e) = prepare(c, &key, "base", &[("i", "x")]).await {
        return s.failed("local prepare", &e);
    }
    s.settle(&[&key], &[]);
    s.unsure(&[&key, name]);
    if let Err(e) = commit(c, name, &key).await {
        return s.failed("commit", &e);
    }
    s.settle(&[name], &[&key]);
    if rng.below(2) == 0 {
        s.unsure(&[name]);
        if let Err(e) = remove(c, name).await {
            return s.failed("remove", &e);
        }
        s.settle(&[], &[name]);
    }
    true
}

/// A private remote chain of `layers` (or the shared keep chain when
/// empty), a container and a View on it, Mounts, reads through its FUSE
/// layers; then sometimes everything is removed again.
async fn remote_op(
    c: &mut Client,
    s: &Shared,
    rng: &mut Rng,
    name: &str,
    layers: &[usize],
) -> bool {
    let f = &s.fixture;
    let mut parent = if layers.is_empty() {
        "keep-chain-1".to_string()
    } else {
        String::new()
    };
    let mut chain_names = Vec::new();
    for (i, &l) in layers.iter().enumerate() {
        let chain = format!("{name}-chain-{i}");
        let extract = format!("{name}-extract-{i}");
        let labels = remote_labels(
            &chain,
            &f.reference,
            f.digests[l].as_str(),
            f.layers[l].toc_digest.as_deref(),
        );
        s.unsure(&[&chain, &extract]);
        match prepare(c, &extract, &parent, &labels).await {
            Err(e) if e.code() == tonic::Code::AlreadyExists => s.settle(&[&chain], &[&extract]),
            Err(e) => return s.failed("remote prepare", &e),
            Ok(m) => {
                s.violation(format!("layer {l} fell back to a local snapshot: {m:?}"));
                return false;
            }
        }
        chain_names.push(chain.clone());
        parent = chain;
    }
    let container = format!("{name}-c");
    s.unsure(&[&container]);
    let mounts = match prepare(c, &container, &parent, &[]).await {
        Ok(m) => m,
        Err(e) => return s.failed("container prepare", &e),
    };
    s.settle(&[&container], &[]);
    match common::mounts(c, &container).await {
        Ok(again) if again == mounts => s.acked(),
        Ok(again) => s.violation(format!("Mounts {again:?} != Prepare {mounts:?}")),
        Err(e) => return s.failed("mounts", &e),
    }
    // Lowerdirs are uppermost first; those of the keep chain are read
    // already.
    let mine: Vec<Target> = lowerdirs(&mounts)
        .into_iter()
        .zip(layers.iter().rev())
        .map(|(dir, &layer)| Target {
            dir,
            layer,
            keep: false,
        })
        .collect();
    s.targets.lock().unwrap().extend(mine.iter().cloned());
    let view = format!("{name}-v");
    s.unsure(&[&view]);
    if let Err(e) = common::view(c, &view, &parent).await {
        return s.failed("view", &e);
    }
    s.settle(&[&view], &[]);
    if rng.below(4) == 0 {
        return true; // left for the restart to find
    }
    s.targets
        .lock()
        .unwrap()
        .retain(|t| !mine.iter().any(|m| m.dir == t.dir));
    for key in [view, container].iter().chain(chain_names.iter().rev()) {
        s.unsure(&[key]);
        if let Err(e) = remove(c, key).await {
            return s.failed("remove", &e);
        }
        s.settle(&[], &[key]);
    }
    true
}

/// List, Stat of a snapshot that must exist, sometimes Cleanup.
async fn query_op(c: &mut Client, s: &Shared, rng: &mut Rng) -> bool {
    let listed = match list(c, &[]).await {
        Ok(l) => l,
        Err(e) => return s.failed("list", &e),
    };
    for key in ["base", "keep-chain-0", "keep-chain-1", "keep-c"] {
        if !listed.iter().any(|l| l == key) {
            s.violation(format!("{key} missing from List"));
        }
    }
    if let Err(e) = stat(c, "keep-chain-1").await {
        return s.failed("stat", &e);
    }
    if rng.below(4) == 0
        && let Err(e) = cleanup(c).await
    {
        return s.failed("cleanup", &e);
    }
    s.acked();
    true
}

async fn worker(mut c: Client, s: Arc<Shared>, mut rng: Rng, tag: String) {
    for i in 0.. {
        if s.stop.load(Ordering::SeqCst) {
            return;
        }
        let name = format!("{tag}i{i}");
        let ok = match rng.below(10) {
            0..=3 => local_op(&mut c, &s, &mut rng, &name).await,
            4 => remote_op(&mut c, &s, &mut rng, &name, &[2]).await,
            5 => remote_op(&mut c, &s, &mut rng, &name, &[0, 1]).await,
            6 => remote_op(&mut c, &s, &mut rng, &name, &[0, 1, 2]).await,
            7 => remote_op(&mut c, &s, &mut rng, &name, &[]).await,
            _ => query_op(&mut c, &s, &mut rng).await,
        };
        if !ok {
            return;
        }
    }
}

/// Reads random ranges of random files through the FUSE layers and
/// compares them with the files' contents: wrong bytes are never allowed,
/// errors only after the kill (or on a layer being removed).
fn reader(s: Arc<Shared>, mut rng: Rng) {
    // A file table of its own: the next daemon is spawned while reads on a
    // held connection wait for it, and a spawn's exec closes its copies of
    // the parent's files, which would FLUSH through that very connection
    // (nobody to answer yet: the spawn would hang).
    // SAFETY: unshare(CLONE_FILES) only copies this thread's file table.
    let unshared = unsafe { libc::unshare(libc::CLONE_FILES) };
    assert_eq!(unshared, 0, "unshare");
    while !s.stop.load(Ordering::SeqCst) {
        let target = {
            let t = s.targets.lock().unwrap();
            t[rng.below(t.len() as u64) as usize].clone()
        };
        let files = &s.fixture.files[target.layer];
        let (path, data) = &files[rng.below(files.len() as u64) as usize];
        let off = rng.below(data.len() as u64) as usize;
        let len = 1 + rng.below((200 << 10).min(data.len() - off) as u64) as usize;
        let mut buf = vec![0u8; len];
        let read = std::fs::File::open(target.dir.join(path))
            .and_then(|f| f.read_at(&mut buf, off as u64));
        match read {
            Ok(n) if n > 0 && buf[..n] == data[off..off + n] => {
                s.reads.fetch_add(1, Ordering::Relaxed);
            }
            Ok(n) => s.violation(format!(
                "wrong bytes: {} at {off}+{n} of layer {}",
                target.dir.join(path).display(),
                target.layer
            )),
            Err(e) if target.keep && !s.killed.load(Ordering::SeqCst) => s.violation(format!(
                "read {} before the kill: {e}",
                target.dir.join(path).display()
            )),
            Err(e) if target.keep && s.taken_over && e.raw_os_error() == Some(libc::ENOTCONN) => s
                .violation(format!(
                    "read {} across a take-over: connection aborted ({e})",
                    target.dir.join(path).display()
                )),
            Err(_) => {}
        }
    }
}

/// One row of the metadata database.
#[derive(Debug)]
struct Row {
    id: i64,
    key: String,
    remote_layer: Option<String>,
}

/// The snapshots table, read directly (SQLite WAL allows a second reader).
fn db_rows(root: &Path) -> Vec<Row> {
    let conn = rusqlite::Connection::open_with_flags(
        root.join("metadata.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let mut stmt = conn
        .prepare(
            "SELECT s.id, s.key, d.value, r.key IS NOT NULL FROM snapshots s \
             LEFT JOIN labels r ON r.snapshot_id = s.id AND r.key = ?1 \
             LEFT JOIN labels d ON d.snapshot_id = s.id AND d.key = ?2 ORDER BY s.id",
        )
        .unwrap();
    stmt.query_map([REMOTE_LABEL, STARGZ_DIGEST], |r| {
        let (id, key) = (r.get(0)?, r.get(1)?);
        let digest: Option<String> = r.get(2)?;
        let remote: bool = r.get(3)?;
        assert!(
            !remote || digest.is_some(),
            "remote snapshot {key} without digest"
        );
        Ok(Row {
            id,
            key,
            remote_layer: digest.filter(|_| remote),
        })
    })
    .unwrap()
    .map(Result::unwrap)
    .collect()
}

fn names_in(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Every file under `dir/<shard>/<name>`.
fn sharded_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for shard in names_in(dir) {
        for name in names_in(&dir.join(&shard)) {
            out.push(dir.join(&shard).join(name));
        }
    }
    out
}

fn read_unless_evicted(path: &Path) -> Option<Vec<u8>> {
    match std::fs::read(path) {
        Ok(data) => Some(data),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => panic!("{}: {e}", path.display()),
    }
}

/// Checks the restarted daemon's state against what was acknowledged.
async fn check_state(round: usize, d: &Daemon, c: &mut Client, s: &Shared) {
    let f = &s.fixture;
    let listed: BTreeSet<String> = list(c, &[]).await.unwrap().into_iter().collect();
    {
        let e = s.expect.lock().unwrap();
        let lost: Vec<_> = e.present.iter().filter(|k| !listed.contains(*k)).collect();
        assert!(
            lost.is_empty(),
            "round {round}: acknowledged snapshots lost: {lost:?}"
        );
        let back: Vec<_> = e.absent.iter().filter(|k| listed.contains(*k)).collect();
        assert!(
            back.is_empty(),
            "round {round}: removed snapshots came back: {back:?}"
        );
    }
    let rows = db_rows(&d.root);
    let keys: BTreeSet<String> = rows.iter().map(|r| r.key.clone()).collect();
    assert_eq!(keys, listed, "round {round}: List vs database");
    for r in &rows {
        let info = stat(c, &r.key).await.unwrap();
        assert_eq!(info.name, r.key);
        assert_eq!(
            info.labels.contains_key(REMOTE_LABEL),
            r.remote_layer.is_some(),
            "{info:?}"
        );
    }

    // Mounts under the root: the one FUSE session (when a remote layer is
    // mounted) and exactly one bind mount of it per remote layer.
    let snapshots = d.snapshots_dir();
    let session = d.root.join("fuse");
    let ours: Vec<_> = mount_table()
        .into_iter()
        .filter(|m| m.mountpoint.starts_with(&d.root))
        .inspect(|m| {
            assert!(
                m.fstype.starts_with("fuse") && m.source == "rstargz",
                "round {round}: unexpected mount {m:?}"
            );
        })
        .collect();
    let sessions: Vec<_> = ours.iter().filter(|m| m.mountpoint == session).collect();
    assert!(sessions.len() <= 1, "round {round}: {sessions:?}");
    let mut mounted: Vec<PathBuf> = ours
        .iter()
        .filter(|m| m.mountpoint != session)
        .map(|m| {
            let dev = sessions.first().map(|s| &s.dev);
            assert_eq!(
                Some(&m.dev),
                dev,
                "round {round}: a layer outside the session: {m:?}"
            );
            assert_ne!(
                m.root,
                Path::new("/"),
                "round {round}: not a layer's bind mount: {m:?}"
            );
            m.mountpoint.clone()
        })
        .collect();
    mounted.sort();
    let mut want: Vec<PathBuf> = rows
        .iter()
        .filter(|r| r.remote_layer.is_some())
        .map(|r| snapshots.join(r.id.to_string()).join("fs"))
        .collect();
    want.sort();
    assert_eq!(mounted, want, "round {round}: FUSE mounts vs remote layers");
    for r in &rows {
        let fs = snapshots.join(r.id.to_string()).join("fs");
        let meta = std::fs::metadata(&fs)
            .unwrap_or_else(|e| panic!("round {round}: {} ({}): {e}", fs.display(), r.key));
        assert!(meta.is_dir());
        // Every remote layer serves its files again (small ones whole).
        if let Some(digest) = &r.remote_layer {
            let layer = f.layer_of(digest);
            let (path, data) = f.files[layer].iter().min_by_key(|(_, d)| d.len()).unwrap();
            let got = std::fs::read(fs.join(path))
                .unwrap_or_else(|e| panic!("round {round}: read {} of {}: {e}", path, r.key));
            assert!(got == *data, "round {round}: {path} of {} differs", r.key);
        }
    }

    // TOC copies only for layers in use.
    let states = names_in(&d.root.join("layers"));
    let used: BTreeSet<String> = rows
        .iter()
        .filter_map(|r| r.remote_layer.as_ref())
        .map(|d| d.replace(':', "-"))
        .collect();
    assert_eq!(states, used, "round {round}: layer state directories");

    // Cleanup leaves exactly one directory per row.
    cleanup(c).await.unwrap();
    let dirs = names_in(&snapshots);
    let ids: BTreeSet<String> = rows.iter().map(|r| r.id.to_string()).collect();
    assert_eq!(
        dirs, ids,
        "round {round}: directories vs rows after Cleanup"
    );

    // The disk cache holds only whole, verified files (the daemon keeps
    // fetching and evicting meanwhile: a file may vanish, never tear).
    let cache = d.root.join("cache");
    for chunk in sharded_files(&cache.join("chunks/chunks")) {
        let Some(data) = read_unless_evicted(&chunk) else {
            continue;
        };
        let name = chunk.file_name().unwrap().to_string_lossy().into_owned();
        assert_eq!(
            hex_sha(&data),
            name,
            "round {round}: chunk {} is torn",
            chunk.display()
        );
    }
    let shas = f.file_shas();
    for file in sharded_files(&cache.join("files/files")) {
        let Some(data) = read_unless_evicted(&file) else {
            continue;
        };
        assert!(
            shas.contains(&hex_sha(&data)),
            "round {round}: passthrough file {} is not a whole layer file",
            file.display()
        );
    }
}

/// Removes every snapshot but the long-lived ones, children first.
async fn prune(c: &mut Client, root: &Path, s: &Shared) {
    let keep = ["base", "keep-chain-0", "keep-chain-1", "keep-c"];
    let mut rows = db_rows(root);
    rows.sort_by_key(|r| std::cmp::Reverse(r.id));
    for r in rows.iter().filter(|r| !keep.contains(&r.key.as_str())) {
        remove(c, &r.key).await.unwrap();
    }
    let mut e = s.expect.lock().unwrap();
    e.present.retain(|k| keep.contains(&k.as_str()));
    e.absent.clear();
}

fn seed() -> u64 {
    std::env::var("CRASH_SEED")
        .ok()
        .map(|s| s.parse().expect("CRASH_SEED is a number"))
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        })
}

/// Starts the daemon, with live restart (the default) or without.
fn start(dir: &Path, live: bool) -> Daemon {
    let extra = if live {
        CACHE_CONFIG.to_string()
    } else {
        format!("{CACHE_CONFIG}[fuse]\nlive_restart = false\n")
    };
    start_remote_daemon(dir, "", &dir.join("no-docker-config.json"), &extra)
}

/// Whether the daemon of `round` runs with live restart: every fifth one
/// does not, so besides held connections taken over (most kills) the kills
/// cover held ones a daemon without live restart aborts, and unheld ones a
/// daemon with it aborts. The last daemon (`round == rounds`) always has it.
fn live_in(round: usize) -> bool {
    round % 5 != 4
}

/// Checks what the start-up of the daemon after a kill did with the FUSE
/// mounts the killed one left (the long-lived chain is always among them).
fn check_start_up(round: usize, d: &Daemon, taken_over: bool) {
    let log = d.log_text();
    let took = log.contains("live mount taken over");
    let aborted = log.contains("detached stale FUSE mount");
    if taken_over {
        assert!(took, "round {round}: held mounts not taken over:\n{log}");
    } else {
        assert!(
            !took && aborted,
            "round {round}: unheld stale mounts not aborted:\n{log}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn random_kill_9_under_mixed_load() {
    let rounds: usize = std::env::var("CRASH_ROUNDS").map_or(20, |r| r.parse().unwrap());
    let seed = seed();
    println!("crash rounds: {rounds}, CRASH_SEED={seed}");
    let mut rng = Rng(seed);
    let started = Instant::now();

    let registry = TestRegistry::start().await;
    let mut fixture = Fixture::new(registry.reference("crash/mixed"));
    fixture.digests = push_image(&fixture.reference, &fixture.layers).await;
    let fixture = Arc::new(fixture);
    let tmp = tempfile::tempdir().unwrap();
    // CRASH_KEEP=1 keeps the root and the daemon logs for a post-mortem.
    let dir = match std::env::var_os("CRASH_KEEP") {
        Some(_) => tmp.keep(),
        None => tmp.path().to_path_buf(),
    };
    println!("crash root: {}", dir.display());

    // Long-lived snapshots: a local base, a remote chain and a container.
    let d = start(&dir, true);
    let mut c = d.client().await;
    prepare(&mut c, "base-active", "", &[]).await.unwrap();
    commit(&mut c, "base", "base-active").await.unwrap();
    let top = prepare_remote_chain_as(
        &mut c,
        "keep-",
        &fixture.reference,
        &fixture.layers[..2],
        &fixture.digests[..2],
    )
    .await;
    let keep_dirs = lowerdirs(&prepare(&mut c, "keep-c", &top, &[]).await.unwrap());
    drop(c);
    // A clean stop: the first round starts from unmounted layers.
    d.stop();
    let keep_targets: Vec<Target> = keep_dirs
        .into_iter()
        .zip([1, 0])
        .map(|(dir, layer)| Target {
            dir,
            layer,
            keep: true,
        })
        .collect();

    let mut expect = Expect::default();
    expect
        .present
        .extend(["base", "keep-chain-0", "keep-chain-1", "keep-c"].map(String::from));
    let mut kills_at = BTreeMap::new();
    let (mut total_reads, mut take_overs, mut held_aborts) = (0, 0, 0);
    let mut d = start(&dir, live_in(0));
    for round in 0..rounds {
        let next_live = round + 1 == rounds || live_in(round + 1);
        let taken_over = live_in(round) && next_live;
        let s = Arc::new(Shared {
            fixture: fixture.clone(),
            expect: Mutex::new(expect),
            targets: Mutex::new(keep_targets.clone()),
            events: AtomicUsize::new(0),
            reads: AtomicUsize::new(0),
            killed: AtomicBool::new(false),
            taken_over,
            stop: AtomicBool::new(false),
            violations: Mutex::new(Vec::new()),
        });
        let mut c = d.client().await;
        check_state(round, &d, &mut c, &s).await;
        prune(&mut c, &d.root, &s).await;

        let mut tasks = Vec::new();
        for w in 0..WORKERS {
            let c = d.client().await;
            let r = Rng(rng.next());
            tasks.push(tokio::spawn(worker(
                c,
                s.clone(),
                r,
                format!("r{round}w{w}"),
            )));
        }
        let readers: Vec<_> = (0..READERS)
            .map(|_| {
                let (s, r) = (s.clone(), Rng(rng.next()));
                std::thread::spawn(move || reader(s, r))
            })
            .collect();
        let kill_after = 1 + rng.below(60) as usize;
        let s2 = s.clone();
        tokio::task::spawn_blocking(move || {
            wait_for("load events", || {
                s2.events.load(Ordering::Relaxed) >= kill_after
            })
        })
        .await
        .unwrap();
        s.killed.store(true, Ordering::SeqCst);
        d.signal_and_wait(nix::sys::signal::Signal::SIGKILL);
        s.stop.store(true, Ordering::SeqCst);
        for t in tasks {
            t.await.unwrap();
        }
        drop(c);
        // Reads in flight on a held connection wait for the next daemon
        // (the kernel resends them to it), so it starts before the readers
        // are joined.
        let killed = std::mem::replace(&mut d, start(&dir, next_live));
        for r in readers {
            r.join().unwrap();
        }
        kills_at.insert(round, kill_after);
        total_reads += s.reads.load(Ordering::Relaxed);
        let violations = s.violations.lock().unwrap().clone();
        assert!(
            violations.is_empty(),
            "round {round} (CRASH_SEED={seed}): {violations:#?}\n{}",
            killed.log_text()
        );
        check_start_up(round, &d, taken_over);
        take_overs += usize::from(taken_over);
        held_aborts += usize::from(live_in(round) && !next_live);
        drop(killed);
        expect = Arc::into_inner(s).unwrap().expect.into_inner().unwrap();
    }

    // Last restart: checked, then a clean stop unmounts every layer.
    let s = Shared {
        fixture: fixture.clone(),
        expect: Mutex::new(expect),
        targets: Mutex::new(Vec::new()),
        events: AtomicUsize::new(0),
        reads: AtomicUsize::new(0),
        killed: AtomicBool::new(false),
        taken_over: false,
        stop: AtomicBool::new(false),
        violations: Mutex::new(Vec::new()),
    };
    let mut c = d.client().await;
    check_state(rounds, &d, &mut c, &s).await;
    let root = d.root.clone();
    drop(c);
    d.stop();
    let left: Vec<_> = mount_table()
        .into_iter()
        .filter(|m| m.mountpoint.starts_with(&root))
        .collect();
    assert!(left.is_empty(), "mounts left after a clean stop: {left:?}");
    // No process outlives the daemon: the fd holder exits once it holds
    // nothing and no daemon is connected.
    let holder = root.join("fdstore.sock");
    wait_for("the fd holder to exit", || !holder.exists());
    println!(
        "crash rounds: {rounds} kills ({take_overs} taken over live, {held_aborts} held and {} unheld aborted) after {:?} acknowledged operations; {total_reads} verified reads; {:.1} s",
        rounds - take_overs - held_aborts,
        kills_at.values().collect::<Vec<_>>(),
        started.elapsed().as_secs_f64()
    );
}
