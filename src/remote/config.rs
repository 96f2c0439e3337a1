//! Configuration of remote layers. Flattened into the daemon's config file,
//! with the Go reference's key names where the concept is the same
//! (`noprefetch`, `prefetch_timeout_sec`, `[blob] fetching_timeout_sec`,
//! `[fuse] attr_timeout`, `resolver.host."<h>".mirrors`, …).

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use rstargz_fs::registry::{Backoff, HostsConfig, MirrorConfig, RegistryConfig};
use serde::Deserialize;

/// Top-level remote keys and their sections.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default)]
pub struct RemoteConfig {
    /// Mount no layer remotely (every snapshot is local).
    pub disable_remote: bool,
    /// TCP `host:port` serving Prometheus `/metrics` (off when unset).
    pub metrics_address: Option<String>,
    /// Prefetch size (compressed bytes) of layers without a landmark; the
    /// `stargz.prefetch` label overrides it.
    pub prefetch_size: u64,
    /// How long a read inside a layer's prioritized prefix waits for the
    /// prefetch (Prepare itself does not wait) before fetching by itself.
    pub prefetch_timeout_sec: u64,
    /// Do not prefetch the prioritized files.
    pub noprefetch: bool,
    /// Do not fetch the rest of a layer in the background.
    pub no_background_fetch: bool,
    /// Honour the `stargz.skipverify` label (legacy layers without digests).
    pub allow_no_verification: bool,
    /// Never verify chunks, and mount layers without a TOC digest.
    pub disable_verification: bool,
    /// Concurrent background fetches over all layers.
    pub max_concurrency: usize,
    /// `[background_fetch]`: bandwidth and pausing (our own keys).
    pub background_fetch: BackgroundSection,
    /// `[blob]`: registry reads.
    pub blob: BlobSection,
    /// `[fuse]`: mounts.
    pub fuse: FuseSection,
    /// `[directory_cache]`: chunk caches.
    pub directory_cache: CacheSection,
    /// `[resolver]`: endpoints and credentials.
    pub resolver: ResolverSection,
}

impl Default for RemoteConfig {
    fn default() -> Self {
        RemoteConfig {
            disable_remote: false,
            metrics_address: None,
            prefetch_size: 0,
            prefetch_timeout_sec: 10,
            noprefetch: false,
            no_background_fetch: false,
            allow_no_verification: false,
            disable_verification: false,
            max_concurrency: 2,
            background_fetch: BackgroundSection::default(),
            blob: BlobSection::default(),
            fuse: FuseSection::default(),
            directory_cache: CacheSection::default(),
            resolver: ResolverSection::default(),
        }
    }
}

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
    /// Compressed bytes per request when a layer is streamed.
    pub stream_window_bytes: u64,
}

impl Default for BackgroundSection {
    fn default() -> Self {
        BackgroundSection {
            max_bytes_per_sec: 0,
            silence_period_msec: 3000,
            stream_layer_max_bytes: 64 << 20,
            stream_window_bytes: 1 << 20,
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
    /// own key; 0 turns it off).
    pub read_amplify_bytes: u64,
}

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
            read_amplify_bytes: 256 << 10,
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
    /// Threads reading each layer's FUSE requests (our key; fuser adds one
    /// more per mount that only waits for them). Handlers never wait on
    /// disk or network; two keep a reader's request from waiting behind
    /// the read-ahead the kernel sent just before it (one thread halved
    /// random 4 KiB reads from memory, four did no better than two). Every
    /// thread counts once per mounted layer: 1,000 layers at 5 threads
    /// would pass systemd's default TasksMax.
    pub threads_per_mount: usize,
}

/// Default of `[fuse] threads_per_mount`.
pub const DEFAULT_THREADS_PER_MOUNT: usize = 2;

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
            threads_per_mount: DEFAULT_THREADS_PER_MOUNT,
        }
    }
}

/// `[directory_cache]` (our own keys: the Go reference's are specific to
/// its cache design).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default)]
pub struct CacheSection {
    /// Directory of the disk chunk cache (default `<root>/cache`).
    pub dir: Option<PathBuf>,
    /// Bound of the disk chunk cache in bytes.
    pub max_bytes: u64,
    /// Bound of the in-memory chunk cache in bytes.
    pub memory_bytes: u64,
}

impl Default for CacheSection {
    fn default() -> Self {
        CacheSection {
            dir: None,
            max_bytes: 10 << 30,
            memory_bytes: 256 << 20,
        }
    }
}

/// `[resolver]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default)]
pub struct ResolverSection {
    /// Timeout of one small request (s).
    pub request_timeout_sec: u64,
    /// Mirrors per registry host (`[[resolver.host."docker.io".mirrors]]`).
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

impl RemoteConfig {
    /// How long a successful registry access vouches for a layer in Check.
    pub fn check_validity(&self) -> Duration {
        if self.blob.check_always {
            Duration::ZERO
        } else {
            Duration::from_secs(self.blob.valid_interval)
        }
    }

    /// The registry client's settings.
    pub fn registry_config(&self) -> RegistryConfig {
        RegistryConfig {
            hosts: HostsConfig {
                certs_dir: self.resolver.config_path.clone(),
                mirrors: self
                    .resolver
                    .host
                    .iter()
                    .map(|(h, c)| (h.clone(), c.mirrors.clone()))
                    .collect(),
                insecure_hosts: self.resolver.insecure_hosts.clone(),
            },
            docker_config: self.resolver.docker_config.clone(),
            request_timeout: Duration::from_secs(self.resolver.request_timeout_sec),
            fetch_timeout: Duration::from_secs(self.blob.fetching_timeout_sec),
            backoff: Backoff {
                min: Duration::from_millis(self.blob.min_wait_msec),
                max: Duration::from_millis(self.blob.max_wait_msec),
                max_retries: self.blob.max_retries,
            },
            force_single_range: self.blob.force_single_range_mode,
            hedge_after_min: (self.blob.hedge_after_msec > 0)
                .then(|| Duration::from_millis(self.blob.hedge_after_msec)),
            ..RegistryConfig::default()
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn go_reference_keys_parse() {
        let c: RemoteConfig = toml::from_str(
            r#"
noprefetch = true
prefetch_timeout_sec = 3
metrics_address = "127.0.0.1:8234"
[blob]
fetching_timeout_sec = 7
[fuse]
attr_timeout = 1
[[resolver.host."docker.io".mirrors]]
host = "mirror.example:5000"
insecure = true
"#,
        )
        .unwrap();
        assert!(c.noprefetch);
        assert_eq!(c.prefetch_timeout_sec, 3);
        assert_eq!(c.fuse.attr_timeout, Some(1));
        let r = c.registry_config();
        assert_eq!(r.fetch_timeout, Duration::from_secs(7));
        assert_eq!(r.hosts.mirrors["docker.io"][0].host, "mirror.example:5000");
        assert!(toml::from_str::<RemoteConfig>("noprefetch = 3").is_err());
        assert_eq!(c.background_fetch, BackgroundSection::default());
    }

    #[test]
    fn layer_streaming_keys_parse() {
        let c: RemoteConfig = toml::from_str(
            "[background_fetch]\nstream_layer_max_bytes = 0\nstream_window_bytes = 4096\n",
        )
        .unwrap();
        assert_eq!(c.background_fetch.stream_layer_max_bytes, 0);
        assert_eq!(c.background_fetch.stream_window_bytes, 4096);
        assert_eq!(c.background_fetch.silence_period_msec, 3000);
        let d = BackgroundSection::default();
        assert_eq!(
            (d.stream_layer_max_bytes, d.stream_window_bytes),
            (64 << 20, 1 << 20)
        );
        let bad = "[background_fetch]\nstream_layer_max_bytes = \"big\"\n";
        assert!(toml::from_str::<RemoteConfig>(bad).is_err());
    }
}
