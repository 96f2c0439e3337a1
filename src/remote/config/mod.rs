//! Configuration of remote layers. Flattened into the daemon's config file,
//! with the Go reference's key names where the concept is the same
//! (`noprefetch`, `prefetch_timeout_sec`, `[blob] fetching_timeout_sec`,
//! `[fuse] attr_timeout`, `resolver.host."<h>".mirrors`, …). Every key of
//! the Go reference's file is accepted: those with a meaning here are
//! applied (see [`super::policy`]), the others (its own cache and metadata
//! designs) are read and have no effect, so a Go node's `config.toml`
//! works unchanged. The README's table says which is which.

mod sections;

use std::path::PathBuf;
use std::time::Duration;

use rstargz_fs::registry::{Backoff, HostsConfig, RegistryConfig};
use serde::Deserialize;

pub use sections::{
    BackgroundSection, BlobSection, CacheSection, DEFAULT_FUSE_THREADS,
    DEFAULT_LIVE_RESTART_TIMEOUT_SEC, DEFAULT_READ_AMPLIFY_BYTES, DEFAULT_STREAM_WINDOW_BYTES,
    FuseManagerSection, FuseSection, ResolverHost, ResolverSection,
};

/// Default of `metrics_max_layer_labels`.
pub const DEFAULT_MAX_LAYER_LABELS: usize = 100;

/// Smallest registry request body `[blob] prefetch_chunk_size` may ask for:
/// tinier requests would cost a round trip per few bytes.
pub const MIN_REQUEST_BYTES: u64 = 4096;

/// Top-level remote keys and their sections.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default)]
pub struct RemoteConfig {
    /// Mount no layer remotely (every snapshot is local).
    pub disable_remote: bool,
    /// TCP `host:port` serving Prometheus `/metrics` (off when unset).
    pub metrics_address: Option<String>,
    /// No metrics listener even with `metrics_address` (Go's key).
    pub no_prometheus: bool,
    /// Unix socket serving `/debug/vars` (and `/metrics` unless
    /// `no_prometheus`), as the Go reference's `debug_address`.
    pub debug_address: Option<PathBuf>,
    /// Distinct `layer` label values in the Go-named per-layer metrics
    /// (our key); layers mounted beyond it are summed as `layer="overflow"`.
    pub metrics_max_layer_labels: usize,
    /// A debug log line at the first open of each file of a layer (Go's key).
    pub log_file_access: bool,
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
    /// Go's go-fuse debug log; no effect (`log_level` says what is logged).
    pub debug: bool,
    /// Go's lazy pulling from IPFS; not supported (a warning when on).
    pub ipfs: bool,
    /// Go's TOC store (`memory`, `db`); no effect (TOCs are indexed in
    /// memory and their copies kept under `<root>/layers`).
    pub metadata_store: Option<String>,
    /// Go's cache of compressed blob ranges; no effect.
    pub http_cache_type: Option<String>,
    /// Go's cache of file contents; no effect (`[directory_cache]` sizes ours).
    pub filesystem_cache_type: Option<String>,
    /// Go's cache of resolved layers; no effect (a layer is resolved once
    /// per mount, and the following layers of an image are warmed).
    pub resolve_result_entry_ttl_sec: Option<i64>,
    /// Go's deprecated form of the key above; no effect.
    pub resolve_result_entry: Option<i64>,
    /// Go's threshold for not waiting on prefetch; no effect (Prepare never
    /// waits for the prefetch here).
    pub prefetch_async_size: Option<i64>,
    /// `[background_fetch]`: bandwidth and pausing (our own keys).
    pub background_fetch: BackgroundSection,
    /// `[blob]`: registry reads.
    pub blob: BlobSection,
    /// `[fuse]`: mounts.
    pub fuse: FuseSection,
    /// `[fuse_manager]`: Go's separate FUSE process; no effect (the fd
    /// holder keeps mounts across restarts, see `[fuse] live_restart`).
    pub fuse_manager: FuseManagerSection,
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
            no_prometheus: false,
            debug_address: None,
            metrics_max_layer_labels: DEFAULT_MAX_LAYER_LABELS,
            log_file_access: false,
            prefetch_size: 0,
            prefetch_timeout_sec: 10,
            noprefetch: false,
            no_background_fetch: false,
            allow_no_verification: false,
            disable_verification: false,
            max_concurrency: 2,
            debug: false,
            ipfs: false,
            metadata_store: None,
            http_cache_type: None,
            filesystem_cache_type: None,
            resolve_result_entry_ttl_sec: None,
            resolve_result_entry: None,
            prefetch_async_size: None,
            background_fetch: BackgroundSection::default(),
            blob: BlobSection::default(),
            fuse: FuseSection::default(),
            fuse_manager: FuseManagerSection::default(),
            directory_cache: CacheSection::default(),
            resolver: ResolverSection::default(),
        }
    }
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

    /// Settings that ask for something rstargz does not do, as warnings
    /// to log at start-up.
    pub fn unsupported_settings(&self) -> Vec<&'static str> {
        let mut out = Vec::new();
        if self.ipfs {
            out.push("ipfs = true: lazy pulling from IPFS is not supported; such layers are pulled whole");
        }
        out
    }

    /// The registry client's settings.
    pub fn registry_config(&self) -> RegistryConfig {
        let defaults = RegistryConfig::default();
        // Go splits a prefetch into requests of `prefetch_chunk_size`; here
        // every long read is split at the largest request body.
        let max_request_bytes = match u64::try_from(self.blob.prefetch_chunk_size) {
            Ok(n) if n > 0 => n.max(MIN_REQUEST_BYTES),
            _ => defaults.max_request_bytes,
        };
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
            max_request_bytes,
            force_single_range: self.blob.force_single_range_mode,
            hedge_after_min: (self.blob.hedge_after_msec > 0)
                .then(|| Duration::from_millis(self.blob.hedge_after_msec)),
            ..defaults
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use rstargz_fs::registry::StringOrList;

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
request_timeout_sec = 9
header = { x-mirror-token = "t", x-list = ["a", "b"] }
"#,
        )
        .unwrap();
        assert!(c.noprefetch);
        assert_eq!(c.prefetch_timeout_sec, 3);
        assert_eq!(c.fuse.attr_timeout, Some(1));
        let r = c.registry_config();
        assert_eq!(r.fetch_timeout, Duration::from_secs(7));
        let mirror = &r.hosts.mirrors["docker.io"][0];
        assert_eq!(mirror.host, "mirror.example:5000");
        assert_eq!(mirror.request_timeout_sec, 9);
        assert_eq!(
            mirror.header.get("x-mirror-token"),
            Some(&StringOrList::One("t".into()))
        );
        assert!(toml::from_str::<RemoteConfig>("noprefetch = 3").is_err());
        assert_eq!(c.background_fetch, BackgroundSection::default());
    }

    #[test]
    fn prefetch_chunk_size_bounds_each_request() {
        let d = RegistryConfig::default().max_request_bytes;
        let size = |toml: &str| {
            toml::from_str::<RemoteConfig>(toml)
                .unwrap()
                .registry_config()
                .max_request_bytes
        };
        assert_eq!(size(""), d);
        assert_eq!(size("[blob]\nprefetch_chunk_size = 0\n"), d);
        assert_eq!(size("[blob]\nprefetch_chunk_size = -1\n"), d);
        assert_eq!(size("[blob]\nprefetch_chunk_size = 1048576\n"), 1 << 20);
        assert_eq!(
            size("[blob]\nprefetch_chunk_size = 10\n"),
            MIN_REQUEST_BYTES
        );
    }

    #[test]
    fn only_ipfs_is_reported_unsupported() {
        let c: RemoteConfig =
            toml::from_str("ipfs = true\nmetadata_store = \"db\"\ndebug = true\n").unwrap();
        assert_eq!(c.unsupported_settings().len(), 1);
        assert!(RemoteConfig::default().unsupported_settings().is_empty());
    }

    #[test]
    fn layer_streaming_keys_parse() {
        let c: RemoteConfig = toml::from_str(
            "[background_fetch]\nstream_layer_max_bytes = 0\nstream_window_bytes = 4096\n",
        )
        .unwrap();
        assert_eq!(c.background_fetch.stream_layer_max_bytes, 0);
        assert_eq!(c.background_fetch.stream_window_bytes, Some(4096));
        assert_eq!(c.background_fetch.silence_period_msec, 3000);
        let d = BackgroundSection::default();
        assert_eq!(
            (d.stream_layer_max_bytes, d.stream_window_bytes),
            (64 << 20, None)
        );
        let bad = "[background_fetch]\nstream_layer_max_bytes = \"big\"\n";
        assert!(toml::from_str::<RemoteConfig>(bad).is_err());
    }
}
