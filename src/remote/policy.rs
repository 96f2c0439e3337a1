//! Typed policies made from [`RemoteConfig`] once, at start-up. The config
//! keeps the file's raw keys (`*_sec`, `*_msec`, negative switches such as
//! `noprefetch`) so that the TOML stays the Go reference's; everything
//! past start-up reads these instead, so a unit or a default is converted
//! in exactly one place.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rstargz_fs::estargz::Verify;
use rstargz_fs::fuse::MountOptions;
use rstargz_fs::layer::LayerReader;

use super::config::{DEFAULT_READ_AMPLIFY_BYTES, DEFAULT_STREAM_WINDOW_BYTES, RemoteConfig};
use super::prefetch;

/// Every policy of remote layers.
#[derive(Debug, Clone, PartialEq)]
pub struct Policies {
    /// Whether layers are mounted remotely at all.
    pub remote_enabled: bool,
    /// What is verified, and when verification may be skipped.
    pub verification: VerificationPolicy,
    /// The prioritized prefix of each layer.
    pub prefetch: PrefetchPolicy,
    /// The rest of each layer, behind on-demand reads.
    pub background: BackgroundPolicy,
    /// FUSE mount settings.
    pub mount: MountPolicy,
    /// With live restart on, how long the fd holder keeps the mounts while
    /// no daemon is connected (`None`: live restart off, SIGTERM unmounts).
    pub live_restart: Option<Duration>,
    /// Where and how much the chunk caches keep.
    pub cache: CachePolicy,
    /// How long a successful registry access vouches for a layer in Check.
    pub check_validity: Duration,
    /// Compressed bytes an on-demand read may fetch beyond its chunk.
    pub read_amplify_bytes: u64,
    /// Where metrics are served, and how many layers they name.
    pub metrics: MetricsPolicy,
}

/// The metrics listeners and the bound on per-layer series.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricsPolicy {
    /// Whether metrics are served at all (off with `no_prometheus`).
    pub enabled: bool,
    /// TCP address of `/metrics` (None: unset, or `no_prometheus`).
    pub listen: Option<String>,
    /// Unix socket of the debug listener (`debug_address`): `/debug/vars`,
    /// and `/metrics` when `enabled`.
    pub debug_socket: Option<PathBuf>,
    /// Distinct `layer` label values in the Go-named metrics (at least 1).
    pub max_layer_labels: usize,
}

/// Chunk and TOC verification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VerificationPolicy {
    /// Never verify, and mount layers without a TOC digest.
    pub disabled: bool,
    /// Honour the `stargz.skipverify` label of layers without a TOC digest.
    pub honour_skip_label: bool,
}

impl VerificationPolicy {
    /// Chunk verification for layers opened under this policy.
    pub fn verify(&self) -> Verify {
        if self.disabled {
            Verify::Disabled
        } else {
            Verify::Enabled
        }
    }
}

/// Prefetch of the prioritized files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrefetchPolicy {
    /// Whether the prioritized prefix is prefetched.
    pub enabled: bool,
    /// Prefix of layers without a landmark (the label overrides it).
    pub default_size: u64,
    /// How long a read inside the prefix waits for it before asking the
    /// registry itself.
    pub wait: Duration,
}

impl PrefetchPolicy {
    /// End offset of the prefix to prefetch of `layer` (0: none), given the
    /// layer's `stargz.prefetch` label.
    pub fn end(&self, layer: &LayerReader, label_size: Option<u64>) -> u64 {
        if self.enabled {
            prefetch::prefetch_end(layer, label_size.unwrap_or(self.default_size))
        } else {
            0
        }
    }
}

/// Background fetching of whole layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackgroundPolicy {
    /// Whether the rest of a layer is fetched in the background.
    pub enabled: bool,
    /// Background requests in flight over all layers.
    pub max_concurrency: usize,
    /// Bandwidth over all layers (0: unbounded).
    pub max_bytes_per_sec: u64,
    /// Quiet time after the last on-demand read before fetching.
    pub silence: Duration,
    /// Layers up to this size without a prefix are streamed at once (0: never).
    pub stream_layer_max_bytes: u64,
    /// Compressed bytes per request when streaming.
    pub stream_window_bytes: u64,
    /// Background decoding and verification run as `SCHED_IDLE`.
    pub idle_cpu: bool,
}

/// FUSE mount settings; `None` keeps the FUSE layer's own default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MountPolicy {
    /// Attribute TTL.
    pub attr_ttl: Option<Duration>,
    /// Entry TTL.
    pub entry_ttl: Option<Duration>,
    /// A read unanswered this long fails with EIO.
    pub read_timeout: Option<Duration>,
    /// Kernel passthrough for fully cached files.
    pub passthrough: bool,
    /// FUSE worker threads of the session serving every layer.
    pub threads: usize,
    /// A debug line at each file's first open (`log_file_access`).
    pub log_file_access: bool,
}

impl MountPolicy {
    /// Writes the configured timeouts into `opts`.
    pub fn apply(&self, opts: &mut MountOptions) {
        if let Some(t) = self.attr_ttl {
            opts.attr_ttl = t;
        }
        if let Some(t) = self.entry_ttl {
            opts.entry_ttl = t;
        }
        if let Some(t) = self.read_timeout {
            opts.read_timeout = t;
        }
        opts.threads = self.threads.max(1);
    }
}

/// Chunk caches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachePolicy {
    /// Directory of the disk caches (chunks, passthrough files).
    pub dir: PathBuf,
    /// Bound of each disk cache in bytes.
    pub max_bytes: u64,
    /// Bound of the in-memory chunk cache in bytes.
    pub memory_bytes: u64,
    /// Drop chunk files from the page cache once written or read.
    pub drop_page_cache: bool,
}

impl Policies {
    /// The policies of `config` for a daemon rooted at `root`.
    pub fn new(config: &RemoteConfig, root: &Path) -> Self {
        let secs = Duration::from_secs;
        // Go's fetch granularity stands in for our sizes the file leaves unset.
        let chunk_size = u64::try_from(config.blob.chunk_size)
            .ok()
            .filter(|n| *n > 0);
        Policies {
            remote_enabled: !config.disable_remote,
            live_restart: config
                .fuse
                .live_restart
                .then(|| secs(config.fuse.live_restart_timeout_sec)),
            verification: VerificationPolicy {
                disabled: config.disable_verification,
                honour_skip_label: config.allow_no_verification,
            },
            prefetch: PrefetchPolicy {
                enabled: !config.noprefetch,
                default_size: config.prefetch_size,
                wait: secs(config.prefetch_timeout_sec),
            },
            background: BackgroundPolicy {
                enabled: !config.no_background_fetch,
                max_concurrency: config.max_concurrency,
                max_bytes_per_sec: config.background_fetch.max_bytes_per_sec,
                silence: Duration::from_millis(config.background_fetch.silence_period_msec),
                stream_layer_max_bytes: config.background_fetch.stream_layer_max_bytes,
                stream_window_bytes: config
                    .background_fetch
                    .stream_window_bytes
                    .or(chunk_size)
                    .unwrap_or(DEFAULT_STREAM_WINDOW_BYTES),
                idle_cpu: config.background_fetch.idle_cpu,
            },
            mount: MountPolicy {
                attr_ttl: config.fuse.attr_timeout.map(secs),
                entry_ttl: config.fuse.entry_timeout.map(secs),
                read_timeout: config.fuse.read_timeout_sec.map(secs),
                passthrough: config.fuse.passthrough,
                threads: config.fuse.threads,
                log_file_access: config.log_file_access,
            },
            cache: CachePolicy {
                dir: config
                    .directory_cache
                    .dir
                    .clone()
                    .unwrap_or_else(|| root.join("cache")),
                max_bytes: config.directory_cache.max_bytes,
                memory_bytes: config.directory_cache.memory_bytes,
                drop_page_cache: config.directory_cache.fadv_dontneed,
            },
            check_validity: config.check_validity(),
            read_amplify_bytes: config
                .blob
                .read_amplify_bytes
                .or(chunk_size)
                .unwrap_or(DEFAULT_READ_AMPLIFY_BYTES),
            metrics: MetricsPolicy {
                enabled: !config.no_prometheus,
                listen: config
                    .metrics_address
                    .clone()
                    .filter(|_| !config.no_prometheus),
                debug_socket: config.debug_address.clone(),
                max_layer_labels: config.metrics_max_layer_labels.max(1),
            },
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn defaults_become_the_documented_policies() {
        let p = Policies::new(&RemoteConfig::default(), Path::new("/r"));
        assert!(p.remote_enabled);
        assert_eq!(
            p.live_restart,
            Some(Duration::from_secs(
                crate::config::DEFAULT_LIVE_RESTART_TIMEOUT_SEC
            ))
        );
        assert_eq!(p.verification.verify(), Verify::Enabled);
        assert!(!p.verification.honour_skip_label);
        assert_eq!(
            p.prefetch,
            PrefetchPolicy {
                enabled: true,
                default_size: 0,
                wait: Duration::from_secs(10)
            }
        );
        assert_eq!(p.background.silence, Duration::from_millis(3000));
        assert_eq!(p.background.max_concurrency, 2);
        assert_eq!(p.background.stream_layer_max_bytes, 64 << 20);
        assert_eq!(p.mount.attr_ttl, None);
        assert!(p.mount.passthrough);
        assert_eq!(p.mount.threads, 4);
        assert_eq!(p.cache.dir, Path::new("/r/cache"));
        assert_eq!(p.check_validity, Duration::from_secs(60));
        assert_eq!(p.read_amplify_bytes, 256 << 10);
        assert_eq!(p.background.stream_window_bytes, 1 << 20);
        assert!(!p.mount.log_file_access && !p.cache.drop_page_cache);
        assert_eq!(
            p.metrics,
            MetricsPolicy {
                enabled: true,
                listen: None,
                debug_socket: None,
                max_layer_labels: 100
            }
        );
    }

    #[test]
    fn go_keys_with_a_meaning_here_take_effect() {
        let c: RemoteConfig = toml::from_str(
            r#"
metrics_address = "127.0.0.1:9999"
debug_address = "/run/debug.sock"
log_file_access = true
[blob]
chunk_size = 50000
[directory_cache]
fadv_dontneed = true
"#,
        )
        .unwrap();
        let p = Policies::new(&c, Path::new("/r"));
        assert_eq!(p.metrics.listen.as_deref(), Some("127.0.0.1:9999"));
        assert_eq!(
            p.metrics.debug_socket.as_deref(),
            Some(Path::new("/run/debug.sock"))
        );
        assert!(p.metrics.enabled);
        assert!(p.mount.log_file_access);
        assert!(p.cache.drop_page_cache);
        // chunk_size sizes on-demand and background requests ...
        assert_eq!(p.read_amplify_bytes, 50000);
        assert_eq!(p.background.stream_window_bytes, 50000);
        // ... unless our own keys say otherwise.
        let ours: RemoteConfig = toml::from_str(
            r#"
[blob]
chunk_size = 50000
read_amplify_bytes = 0
[background_fetch]
stream_window_bytes = 4096
"#,
        )
        .unwrap();
        let p = Policies::new(&ours, Path::new("/r"));
        assert_eq!(p.read_amplify_bytes, 0);
        assert_eq!(p.background.stream_window_bytes, 4096);
        // no_prometheus: no listener, whatever metrics_address says; the
        // debug socket stays (as in Go) but serves no metrics.
        let off: RemoteConfig = toml::from_str(
            r#"
no_prometheus = true
metrics_address = "127.0.0.1:9999"
debug_address = "/run/debug.sock"
metrics_max_layer_labels = 0
"#,
        )
        .unwrap();
        let p = Policies::new(&off, Path::new("/r"));
        assert_eq!(p.metrics.listen, None);
        assert!(!p.metrics.enabled);
        assert!(p.metrics.debug_socket.is_some());
        assert_eq!(p.metrics.max_layer_labels, 1);
    }

    #[test]
    fn units_and_switches_are_converted_once() {
        let c: RemoteConfig = toml::from_str(
            r#"
noprefetch = true
no_background_fetch = true
disable_verification = true
prefetch_timeout_sec = 3
[background_fetch]
silence_period_msec = 250
[blob]
check_always = true
[fuse]
attr_timeout = 1
read_timeout_sec = 7
threads = 3
[directory_cache]
dir = "/elsewhere"
"#,
        )
        .unwrap();
        let p = Policies::new(&c, Path::new("/r"));
        assert!(!p.prefetch.enabled && !p.background.enabled);
        assert_eq!(p.verification.verify(), Verify::Disabled);
        assert_eq!(p.prefetch.wait, Duration::from_secs(3));
        assert_eq!(p.background.silence, Duration::from_millis(250));
        assert_eq!(p.check_validity, Duration::ZERO);
        assert_eq!(p.cache.dir, Path::new("/elsewhere"));
        let mut opts = MountOptions::default();
        let untouched = opts.entry_ttl;
        p.mount.apply(&mut opts);
        assert_eq!(opts.attr_ttl, Duration::from_secs(1));
        assert_eq!(opts.read_timeout, Duration::from_secs(7));
        assert_eq!(opts.threads, 3);
        assert_eq!(opts.entry_ttl, untouched);
    }

    #[test]
    fn live_restart_off_has_no_orphan_timeout() {
        let mut c = RemoteConfig::default();
        c.fuse.live_restart_timeout_sec = 7;
        let on = Policies::new(&c, Path::new("/r"));
        assert_eq!(on.live_restart, Some(Duration::from_secs(7)));
        c.fuse.live_restart = false;
        assert_eq!(Policies::new(&c, Path::new("/r")).live_restart, None);
    }
}
