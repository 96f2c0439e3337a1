//! The sections of the remote-layer configuration (`[blob]`, `[fuse]`,
//! `[directory_cache]`, `[resolver]`, …): our keys and the Go reference's.

use std::collections::HashMap;
use std::path::PathBuf;

use rstargz_fs::registry::MirrorConfig;
use serde::Deserialize;

/// `[background_fetch]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default)]
pub struct BackgroundSection {
    /// Bandwidth of background fetching over all layers (0: unbounded).
    pub max_bytes_per_sec: u64,
    /// Background fetching waits until no on-demand read has gone to a
    /// registry for this long (ms). Long enough to cover the gap between a
    /// pull and its container's first reads: a shorter wait lets the
    /// background fetch take the link the workload is about to need.
    pub silence_period_msec: u64,
    /// A layer without a prioritized region and at most this many
    /// compressed bytes is streamed whole right after its mount, without
    /// waiting for silence (0: never).
    pub stream_layer_max_bytes: u64,
    /// Compressed bytes per request when a layer is streamed (default:
    /// `[blob] chunk_size` when set, else 1 MiB).
    pub stream_window_bytes: Option<u64>,
    /// Decoding and verifying what background fetch and streaming bring
    /// runs as `SCHED_IDLE` (our key): it takes only CPU that neither the
    /// containers nor on-demand reads want.
    pub idle_cpu: bool,
}

/// Default of `[background_fetch] stream_window_bytes`.
pub const DEFAULT_STREAM_WINDOW_BYTES: u64 = 1 << 20;

impl Default for BackgroundSection {
    fn default() -> Self {
        BackgroundSection {
            max_bytes_per_sec: 0,
            silence_period_msec: 3000,
            stream_layer_max_bytes: 64 << 20,
            stream_window_bytes: None,
            idle_cpu: true,
        }
    }
}

/// `[blob]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default)]
pub struct BlobSection {
    /// Timeout of one range request (s).
    pub fetching_timeout_sec: u64,
    /// Retries of a failed request.
    pub max_retries: u32,
    /// Smallest retry backoff (ms).
    pub min_wait_msec: u64,
    /// Largest retry backoff (ms).
    pub max_wait_msec: u64,
    /// Never send multi-range requests.
    pub force_single_range_mode: bool,
    /// Check skips the registry probe for a layer read successfully within
    /// this many seconds.
    pub valid_interval: u64,
    /// Always probe in Check (`valid_interval = 0`).
    pub check_always: bool,
    /// An on-demand request not answered within four times the usual
    /// latency and at least this many ms is sent again, first answer wins
    /// (our key; 0: never).
    pub hedge_after_msec: u64,
    /// Compressed bytes an on-demand read may fetch beyond its chunk, to
    /// cache the following files of the layer with the same request (our
    /// own key; 0 turns it off; default: `chunk_size` when set, else 256 KiB).
    pub read_amplify_bytes: Option<u64>,
    /// Go's fetch granularity: here the default of `read_amplify_bytes`
    /// and of `[background_fetch] stream_window_bytes` (0: unset).
    pub chunk_size: i64,
    /// Go's largest request of a prefetch: here the largest body of any
    /// range request (0: unset, 4 MiB).
    pub prefetch_chunk_size: i64,
}

/// Default of `[blob] read_amplify_bytes`.
pub const DEFAULT_READ_AMPLIFY_BYTES: u64 = 256 << 10;

impl Default for BlobSection {
    fn default() -> Self {
        BlobSection {
            fetching_timeout_sec: 300,
            max_retries: 5,
            min_wait_msec: 30,
            max_wait_msec: 300_000,
            force_single_range_mode: false,
            valid_interval: 60,
            check_always: false,
            hedge_after_msec: 200,
            read_amplify_bytes: None,
            chunk_size: 0,
            prefetch_chunk_size: 0,
        }
    }
}

/// `[fuse]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default)]
pub struct FuseSection {
    /// Attribute TTL (s); layers are immutable, so the default is long.
    pub attr_timeout: Option<u64>,
    /// Entry TTL (s).
    pub entry_timeout: Option<u64>,
    /// A read not answered within this many seconds fails with EIO (our
    /// key; default 30).
    pub read_timeout_sec: Option<u64>,
    /// Kernel FUSE passthrough for fully cached large files. On by default:
    /// a mount whose kernel refuses it falls back to normal reads by itself.
    pub passthrough: bool,
    /// Keep the FUSE connections open across a SIGTERM restart (through
    /// `rstargz fd-holder`), so running containers never lose their layers.
    pub live_restart: bool,
    /// How long the fd holder keeps the connections of a daemon that died
    /// for the next one (our key); then it lets go, and reads on those
    /// mounts fail with ENOTCONN instead of waiting.
    pub live_restart_timeout_sec: u64,
    /// Go's buffer for assembling passthrough files; no effect (files are
    /// assembled from the disk cache, one at a time per file).
    pub merge_buffer_size: Option<i64>,
    /// Go's workers assembling passthrough files; no effect.
    pub merge_worker_count: Option<i64>,
    /// Threads reading the FUSE requests of every layer (our key; fuser
    /// adds one more that only waits for them). One FUSE session serves
    /// all layers, so the count stays flat however many are mounted.
    /// Handlers never wait on disk or network; more than one keeps a
    /// reader's request from waiting behind the read-ahead the kernel sent
    /// just before it.
    pub threads: usize,
    /// Threads per mounted layer: accepted from older configs, no effect
    /// (one session serves every layer; see `threads`).
    pub threads_per_mount: Option<usize>,
}

/// Default of `[fuse] threads`.
pub const DEFAULT_FUSE_THREADS: usize = 4;

/// Default of `[fuse] live_restart_timeout_sec`: long enough for a service
/// manager to restart a crashed daemon.
pub const DEFAULT_LIVE_RESTART_TIMEOUT_SEC: u64 = 300;

impl Default for FuseSection {
    fn default() -> Self {
        FuseSection {
            attr_timeout: None,
            entry_timeout: None,
            read_timeout_sec: None,
            passthrough: true,
            live_restart: true,
            live_restart_timeout_sec: DEFAULT_LIVE_RESTART_TIMEOUT_SEC,
            merge_buffer_size: None,
            merge_worker_count: None,
            threads: DEFAULT_FUSE_THREADS,
            threads_per_mount: None,
        }
    }
}

/// `[directory_cache]`: our own keys, and the Go reference's (most are
/// specific to its cache design).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default)]
pub struct CacheSection {
    /// Directory of the disk chunk cache (default `<root>/cache`).
    pub dir: Option<PathBuf>,
    /// Bound of the disk chunk cache in bytes.
    pub max_bytes: u64,
    /// Bound of the in-memory chunk cache in bytes.
    pub memory_bytes: u64,
    /// Drop cached chunk files from the page cache once written or read (Go's key).
    pub fadv_dontneed: bool,
    /// Go's in-memory cache entries; no effect (`memory_bytes` bounds ours).
    pub max_lru_cache_entry: Option<i64>,
    /// Go's open cache files; no effect (files are not kept open).
    pub max_cache_fds: Option<i64>,
    /// Go's synchronous cache writes; no effect (writes always complete
    /// before the read that caused them).
    pub sync_add: bool,
    /// Go's switch off of its memory cache; no effect (`memory_bytes`).
    pub direct: Option<bool>,
}

impl Default for CacheSection {
    fn default() -> Self {
        CacheSection {
            dir: None,
            max_bytes: 10 << 30,
            memory_bytes: 256 << 20,
            fadv_dontneed: false,
            max_lru_cache_entry: None,
            max_cache_fds: None,
            sync_add: false,
            direct: None,
        }
    }
}

/// `[resolver]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default)]
pub struct ResolverSection {
    /// Timeout of one small request (s).
    pub request_timeout_sec: u64,
    /// Mirrors per registry host (`[[resolver.host."docker.io".mirrors]]`,
    /// each with Go's `host`, `insecure`, `request_timeout_sec`, `header`).
    pub host: HashMap<String, ResolverHost>,
    /// Hosts reached over plain HTTP (loopback always is).
    pub insecure_hosts: Vec<String>,
    /// containerd's `certs.d` directory.
    pub config_path: Option<PathBuf>,
    /// docker `config.json` with credentials.
    pub docker_config: Option<PathBuf>,
}

impl Default for ResolverSection {
    fn default() -> Self {
        ResolverSection {
            request_timeout_sec: 30,
            host: HashMap::new(),
            insecure_hosts: Vec::new(),
            config_path: None,
            docker_config: None,
        }
    }
}

/// `resolver.host."<h>"`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct ResolverHost {
    /// Tried in order before the host itself.
    pub mirrors: Vec<MirrorConfig>,
}

/// `[fuse_manager]`: the Go reference's separate FUSE server process. The
/// fd holder plays its part here (always, with `[fuse] live_restart`), so
/// these keys have no effect.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct FuseManagerSection {
    /// Run the FUSE manager.
    pub enable: bool,
    /// Its socket.
    pub address: Option<String>,
    /// Its binary.
    pub path: Option<String>,
    /// Its metrics listener.
    pub metrics_address: Option<String>,
}
