//! The daemon's TOML configuration. Every key is optional: the defaults work
//! without a file. Key names follow the Go reference where the concept is the
//! same. Command-line flags override the file.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Default root directory.
pub const DEFAULT_ROOT: &str = "/var/lib/rstargz";
/// Default socket path.
pub const DEFAULT_ADDRESS: &str = "/run/rstargz/rstargz.sock";
/// Default config file (a missing default file is not an error).
pub const DEFAULT_CONFIG: &str = "/etc/rstargz/config.toml";
/// Default log level.
pub const DEFAULT_LOG_LEVEL: &str = "info";
/// Default CRI ImageService the CRI keychain forwards to (containerd's).
pub const DEFAULT_IMAGE_SERVICE_PATH: &str = "/run/containerd/containerd.sock";

/// Errors loading the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("read config {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema.
    #[error("parse config {path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: Box<toml::de::Error>,
    },
}

/// Top-level configuration.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct Config {
    /// Root directory (`--root` overrides).
    pub root: Option<PathBuf>,
    /// Socket path (`--address` overrides).
    pub address: Option<PathBuf>,
    /// Log level (`--log-level` overrides).
    pub log_level: Option<String>,
    /// Log output (`--log-format` overrides).
    pub log_format: Option<LogFormat>,
    /// Snapshotter behaviour.
    pub snapshotter: SnapshotterConfig,
    /// `[cri_keychain]`: credentials from kubelet's PullImage requests.
    pub cri_keychain: CriKeychainConfig,
    /// `[kubeconfig_keychain]`: read so the Go reference's files load; not
    /// implemented.
    pub kubeconfig_keychain: KubeconfigKeychainConfig,
    /// Remote layers (top-level keys and sections, as the Go reference);
    /// read from the same table by [`Config::parse`].
    #[serde(skip)]
    pub remote: rstargz_remote::RemoteConfig,
    /// Keys of the file that no setting reads (typos, other versions' keys),
    /// reported as warnings rather than silently dropped.
    #[serde(skip)]
    pub unknown_keys: Vec<String>,
}

/// `[snapshotter]`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct SnapshotterConfig {
    /// Remove deletes directories only at the next Cleanup (as the Go
    /// reference's `AsynchronousRemove`), keeping Remove fast.
    pub async_remove: bool,
    /// Local snapshot format (`--fallback` overrides).
    pub fallback: Fallback,
    /// The Go reference's key: whether start-up goes on when a remote
    /// layer cannot be restored (its snapshot's children are unavailable
    /// until the layer mounts again at a later Check). Unset, it does;
    /// `false` makes start-up fail, as in Go.
    pub allow_invalid_mounts_on_restart: Option<bool>,
}

impl SnapshotterConfig {
    /// Whether start-up goes on after remote layers failed to restore.
    pub fn tolerates_failed_restores(&self) -> bool {
        self.allow_invalid_mounts_on_restart.unwrap_or(true)
    }
}

/// `[cri_keychain]` (the Go reference's keys).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct CriKeychainConfig {
    /// Serve CRI's ImageService, keeping each PullImage's credentials.
    pub enable_keychain: bool,
    /// containerd's CRI socket, where every ImageService call is forwarded
    /// [default: /run/containerd/containerd.sock].
    pub image_service_path: Option<PathBuf>,
    /// A socket of its own for the ImageService [default: the Snapshots
    /// socket].
    pub listen_path: Option<PathBuf>,
}

impl CriKeychainConfig {
    /// Where calls are forwarded.
    pub fn image_service_path(&self) -> PathBuf {
        non_empty(&self.image_service_path)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_IMAGE_SERVICE_PATH))
    }

    /// The ImageService's own socket, when it is not `address`.
    pub fn own_socket(&self, address: &Path) -> Option<PathBuf> {
        non_empty(&self.listen_path).filter(|p| p != address)
    }
}

/// A path unless unset or empty (the Go reference's files write `""`).
fn non_empty(path: &Option<PathBuf>) -> Option<PathBuf> {
    path.clone().filter(|p| !p.as_os_str().is_empty())
}

/// `[kubeconfig_keychain]` (the Go reference's keys; not implemented).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct KubeconfigKeychainConfig {
    /// Would sync imagePullSecrets from the kube-apiserver.
    pub enable_keychain: bool,
    /// The kubeconfig it would use.
    pub kubeconfig_path: Option<PathBuf>,
}

/// The local fallback: what snapshots are when a layer is not remote.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Fallback {
    /// overlayfs mounts of plain directories (Linux hosts).
    #[default]
    Overlay,
    /// `lcow-layer` mounts with VHDX scratch disks, as containerd's
    /// `windows-lcow` snapshotter hands to hcsshim.
    Lcow,
}

/// How the daemon writes its log lines (stderr).
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// `tracing`'s human-readable lines (`key=value` fields).
    #[default]
    Text,
    /// One JSON object a line, shaped like the Go stargz-snapshotter's
    /// (logrus): `level`, `msg`, `time` and the fields at the top level.
    Json,
}

impl LogFormat {
    /// The value's spelling on the command line and in the config.
    pub fn name(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }
}

impl Config {
    /// Loads `path`, or the default file if `path` is None (a missing
    /// default file yields the defaults).
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let (path, must_exist) = match path {
            Some(p) => (p.to_path_buf(), true),
            None => (PathBuf::from(DEFAULT_CONFIG), false),
        };
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if !must_exist && e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Config::default());
            }
            Err(source) => return Err(ConfigError::Read { path, source }),
        };
        Config::parse(&text).map_err(|source| ConfigError::Parse {
            path,
            source: Box::new(source),
        })
    }

    /// Parses TOML text.
    pub fn parse(text: &str) -> Result<Config, toml::de::Error> {
        // The daemon's keys and the remote-layer keys share one namespace (as
        // in the Go reference), so each half reads the whole table and a key
        // is unknown only when neither half reads it.
        let table: toml::Table = text.parse()?;
        let mut core_ignored = Vec::new();
        let mut config: Config =
            serde_ignored::deserialize(toml::Value::Table(table.clone()), |path| {
                core_ignored.push(path.to_string())
            })?;
        let mut remote_ignored = Vec::new();
        config.remote = serde_ignored::deserialize(toml::Value::Table(table), |path| {
            remote_ignored.push(path.to_string())
        })?;
        let ignored_by = |ignored: &[String], key: &str| {
            ignored
                .iter()
                .any(|i| key == i || key.starts_with(&format!("{i}.")))
        };
        let mut unknown: Vec<String> = core_ignored
            .iter()
            .filter(|k| ignored_by(&remote_ignored, k))
            .chain(
                remote_ignored
                    .iter()
                    .filter(|k| ignored_by(&core_ignored, k)),
            )
            .cloned()
            .collect();
        unknown.sort();
        unknown.dedup();
        config.unknown_keys = unknown;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_keys_are_reported() {
        let c = Config::parse(
            "prefetch_szie = 1\n[snapshotter]\nasync_remov = true\n[blob]\nmax_retries = 2\nmax_retrys = 3\n",
        );
        let Ok(c) = c else { panic!("parse: {c:?}") };
        let mut keys = c.unknown_keys.clone();
        keys.sort();
        assert_eq!(
            keys,
            [
                "blob.max_retrys",
                "prefetch_szie",
                "snapshotter.async_remov"
            ]
        );
    }

    /// The README's configuration reference must stay valid: every key in its
    /// TOML block is one the daemon reads.
    #[test]
    fn readme_configuration_block_is_all_known_keys() {
        let readme = include_str!("../README.md");
        let section = readme
            .split("## Configuration")
            .nth(1)
            .expect("README has a Configuration section");
        let block = section
            .split("```toml\n")
            .nth(1)
            .and_then(|b| b.split("```").next())
            .expect("Configuration section has a toml block");
        let c = Config::parse(block);
        let Ok(c) = c else {
            panic!("README config does not parse: {c:?}")
        };
        assert!(
            c.unknown_keys.is_empty(),
            "README names unknown keys: {:?}",
            c.unknown_keys
        );
        assert!(
            c.remote.metrics_address.is_some(),
            "block was parsed, not skipped"
        );
    }

    #[test]
    fn empty_and_full_configs() {
        assert_eq!(Config::parse("").ok(), Some(Config::default()));
        let c = Config::parse(
            "root = \"/r\"\naddress = \"/s.sock\"\nlog_level = \"debug\"\nlog_format = \"json\"\n[snapshotter]\nasync_remove = true\n",
        );
        let Ok(c) = c else { panic!("parse: {c:?}") };
        assert_eq!(c.root.as_deref(), Some(Path::new("/r")));
        assert_eq!(c.log_format, Some(LogFormat::Json));
        assert!(c.unknown_keys.is_empty(), "{:?}", c.unknown_keys);
        assert!(c.snapshotter.async_remove);
        assert_eq!(c.snapshotter.fallback, Fallback::Overlay);
        let lcow = Config::parse("[snapshotter]\nfallback = \"lcow\"\n");
        assert_eq!(
            lcow.ok().map(|c| c.snapshotter.fallback),
            Some(Fallback::Lcow)
        );
        assert!(Config::parse("[snapshotter]\nfallback = \"zfs\"").is_err());
        assert!(Config::parse("[snapshotter]\nasync_remove = \"yes\"").is_err());
        assert!(Config::parse("log_format = \"logfmt\"").is_err());
    }

    /// A Go stargz-snapshotter node's `config.toml` (every key of the Go
    /// reference's) loads without an unknown key, and the keys that mean
    /// something here take effect.
    #[test]
    fn every_go_reference_key_is_accepted_and_applied() {
        use rstargz_fs::registry::RequestTimeout;
        use rstargz_fs::registry::hosts::resolve_hosts;
        use rstargz_remote::policy::Policies;
        let text = include_str!("../tests/data/go_reference_config.toml")
            .replace("@METRICS@", "127.0.0.1:8234")
            .replace("@DEBUG@", "/run/stargz-debug.sock")
            .replace("@REGISTRY@", "registry.example")
            .replace("@MIRROR@", "mirror.example:5000");
        let c = Config::parse(&text);
        let Ok(c) = c else { panic!("parse: {c:?}") };
        assert!(c.unknown_keys.is_empty(), "{:?}", c.unknown_keys);
        assert!(c.remote.unsupported_settings().is_empty());
        assert!(c.snapshotter.tolerates_failed_restores());

        let p = Policies::new(&c.remote, Path::new("/r"));
        assert_eq!(p.metrics.listen.as_deref(), Some("127.0.0.1:8234"));
        assert_eq!(
            p.metrics.debug_socket.as_deref(),
            Some(Path::new("/run/stargz-debug.sock"))
        );
        assert!(p.mount.log_file_access && p.cache.drop_page_cache);
        assert!(!p.background.enabled && !p.mount.passthrough);
        assert_eq!(p.read_amplify_bytes, 50000);
        assert_eq!(p.background.stream_window_bytes, 50000);
        assert_eq!(p.mount.attr_ttl, Some(std::time::Duration::from_secs(1)));
        assert_eq!(p.check_validity, std::time::Duration::ZERO);

        let r = c.remote.registry_config();
        assert_eq!(r.backoff.max_retries, 2);
        let hosts = resolve_hosts(&r.hosts, "registry.example");
        let Ok(hosts) = hosts else {
            panic!("hosts: {hosts:?}")
        };
        assert_eq!(hosts[0].api_root(), "http://mirror.example:5000/v2");
        assert_eq!(
            hosts[0].request_timeout,
            RequestTimeout::After(std::time::Duration::from_secs(10))
        );
        assert!(
            hosts[0]
                .headers
                .contains(&("x-rstargz-mirror".into(), "from-go-config".into()))
        );
        assert_eq!(hosts[0].headers.len(), 3, "{:?}", hosts[0].headers);
        assert!(hosts[1].headers.is_empty());
    }

    #[test]
    fn allow_invalid_mounts_on_restart_false_stops_start_up() {
        let strict = Config::parse("[snapshotter]\nallow_invalid_mounts_on_restart = false\n");
        let Ok(strict) = strict else {
            panic!("parse: {strict:?}")
        };
        assert!(!strict.snapshotter.tolerates_failed_restores());
        assert!(Config::default().snapshotter.tolerates_failed_restores());
    }

    #[test]
    fn keychain_sections_take_the_go_keys() {
        let c = Config::parse(
            "[cri_keychain]\nenable_keychain = true\nimage_service_path = \"/run/ctrd.sock\"\n\
             [kubeconfig_keychain]\nenable_keychain = true\nkubeconfig_path = \"/etc/kube\"\n",
        );
        let Ok(c) = c else { panic!("parse: {c:?}") };
        assert!(c.unknown_keys.is_empty(), "{:?}", c.unknown_keys);
        assert!(c.cri_keychain.enable_keychain && c.kubeconfig_keychain.enable_keychain);
        let k = &c.cri_keychain;
        assert_eq!(k.image_service_path(), Path::new("/run/ctrd.sock"));
        let address = Path::new("/run/rstargz/rstargz.sock");
        assert_eq!(k.own_socket(address), None);
        // The Go reference's defaults are empty strings.
        let c = Config::parse("[cri_keychain]\nimage_service_path = \"\"\nlisten_path = \"\"\n");
        let Ok(c) = c else { panic!("parse: {c:?}") };
        let k = &c.cri_keychain;
        assert!(!k.enable_keychain);
        assert_eq!(
            k.image_service_path(),
            Path::new(DEFAULT_IMAGE_SERVICE_PATH)
        );
        assert_eq!(k.own_socket(address), None);
        let own = CriKeychainConfig {
            listen_path: Some("/run/cri.sock".into()),
            ..CriKeychainConfig::default()
        };
        assert_eq!(
            own.own_socket(address),
            Some(PathBuf::from("/run/cri.sock"))
        );
        assert_eq!(own.own_socket(Path::new("/run/cri.sock")), None);
    }

    #[test]
    fn missing_default_is_fine_missing_explicit_is_not() {
        assert!(Config::load(Some(Path::new("/nonexistent/rstargz.toml"))).is_err());
    }
}
