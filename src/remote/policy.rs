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

use super::config::RemoteConfig;
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
    /// Where and how much the chunk caches keep.
    pub cache: CachePolicy,
    /// How long a successful registry access vouches for a layer in Check.
    pub check_validity: Duration,
    /// Compressed bytes an on-demand read may fetch beyond its chunk.
    pub read_amplify_bytes: u64,
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
    /// FUSE worker threads per mounted layer.
    pub threads: usize,
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
}

impl Policies {
    /// The policies of `config` for a daemon rooted at `root`.
    pub fn new(config: &RemoteConfig, root: &Path) -> Self {
        let secs = Duration::from_secs;
        Policies {
            remote_enabled: !config.disable_remote,
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
                stream_window_bytes: config.background_fetch.stream_window_bytes,
            },
            mount: MountPolicy {
                attr_ttl: config.fuse.attr_timeout.map(secs),
                entry_ttl: config.fuse.entry_timeout.map(secs),
                read_timeout: config.fuse.read_timeout_sec.map(secs),
                passthrough: config.fuse.passthrough,
                threads: config.fuse.threads_per_mount,
            },
            cache: CachePolicy {
                dir: config
                    .directory_cache
                    .dir
                    .clone()
                    .unwrap_or_else(|| root.join("cache")),
                max_bytes: config.directory_cache.max_bytes,
                memory_bytes: config.directory_cache.memory_bytes,
            },
            check_validity: config.check_validity(),
            read_amplify_bytes: config.blob.read_amplify_bytes,
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
        assert_eq!(p.mount.threads, 2);
        assert_eq!(p.cache.dir, Path::new("/r/cache"));
        assert_eq!(p.check_validity, Duration::from_secs(60));
        assert_eq!(p.read_amplify_bytes, 256 << 10);
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
threads_per_mount = 3
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
}
