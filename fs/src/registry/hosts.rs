//! Which endpoints serve a registry, in the order to try them.
//!
//! Sources, tried in this order: mirrors from our own config, then the
//! `[host."…"]` entries of containerd's `<certs_dir>/<host>/hosts.toml` in
//! file order, then its `server` (or the origin when it has none). The
//! directory lookup follows containerd: `<host>_<port>_`, `<host:port>`,
//! `_default`; the first directory that exists is used, and without a
//! hosts.toml in it its Docker-style certificate files (`*.crt`,
//! `*.cert`/`*.key`) apply to the origin. Plain HTTP is used only when a
//! host is written with `http://`, is listed as insecure, or is a loopback
//! address without such certificate files; TLS verification is on unless
//! `skip_verify` says otherwise.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::error::{RegistryError, Result};
use super::reference::{DOCKER_HUB, DOCKER_HUB_API_HOST, is_loopback_host};
use super::tls::{ClientCertificate, docker_certs_dir};

/// URL scheme of a registry endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Scheme {
    /// Plain HTTP (insecure or loopback hosts only).
    Http,
    /// HTTPS.
    Https,
}

/// What an endpoint may be used for (containerd's host capabilities).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capabilities {
    /// Blobs and manifests by digest.
    pub pull: bool,
    /// Tags to digests.
    pub resolve: bool,
    /// Uploads.
    pub push: bool,
}

impl Capabilities {
    /// All capabilities (the default for an origin).
    pub const ALL: Self = Self {
        pull: true,
        resolve: true,
        push: true,
    };
}

/// One endpoint that may serve a registry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegistryHost {
    /// http or https.
    pub scheme: Scheme,
    /// `host[:port]`.
    pub host: String,
    /// API root path, normally `/v2`.
    pub path_prefix: String,
    /// What the endpoint may be used for.
    pub capabilities: Capabilities,
    /// Skip TLS certificate verification.
    pub skip_verify: bool,
    /// Extra CA certificate files (PEM).
    pub ca_files: Vec<PathBuf>,
    /// Client certificates for mutual TLS (hosts.toml `client`); the first
    /// is presented.
    pub client_certs: Vec<ClientCertificate>,
    /// Extra headers sent to this endpoint (not to redirect targets).
    pub headers: Vec<(String, String)>,
    /// Whether this is a mirror rather than the registry itself (mirrors get
    /// `?ns=<registry>` like containerd does).
    pub is_mirror: bool,
    /// How long one request to this endpoint may take.
    pub request_timeout: RequestTimeout,
}

/// The per-attempt timeout of requests to one endpoint.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RequestTimeout {
    /// The request kind's own timeout (`fetch_timeout` for range reads,
    /// `request_timeout` for the rest).
    #[default]
    Default,
    /// This long, for every request to the endpoint.
    After(Duration),
    /// No timeout at all.
    Never,
}

impl RequestTimeout {
    /// The Go reference's mirror `request_timeout_sec`: 0 is the default,
    /// a negative value none.
    pub fn from_go_seconds(secs: i64) -> Self {
        match secs {
            0 => Self::Default,
            s if s < 0 => Self::Never,
            s => Self::After(Duration::from_secs(s.unsigned_abs())),
        }
    }

    /// The timeout of a request whose own kind allows `default`.
    pub fn resolve(self, default: Duration) -> Option<Duration> {
        match self {
            Self::Default => Some(default),
            Self::After(d) => Some(d),
            Self::Never => None,
        }
    }
}

impl RegistryHost {
    /// `scheme://host/v2` without a trailing slash.
    pub fn api_root(&self) -> String {
        let scheme = match self.scheme {
            Scheme::Http => "http",
            Scheme::Https => "https",
        };
        format!(
            "{scheme}://{}{}",
            self.host,
            self.path_prefix.trim_end_matches('/')
        )
    }
}

/// A mirror in our own configuration (the Go reference's
/// `[[resolver.host."<h>".mirrors]]`).
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
pub struct MirrorConfig {
    /// `host[:port]`, optionally with `http(s)://` and a path prefix.
    pub host: String,
    /// Use plain HTTP.
    #[serde(default)]
    pub insecure: bool,
    /// Timeout of every request to this mirror in seconds: 0 keeps the
    /// defaults, a negative value means none.
    #[serde(default)]
    pub request_timeout_sec: i64,
    /// Extra headers sent to this mirror (a value or a list of values).
    #[serde(default)]
    pub header: HashMap<String, StringOrList>,
}

/// Registry endpoint configuration.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostsConfig {
    /// containerd's certs.d directory, e.g. `/etc/containerd/certs.d`.
    pub certs_dir: Option<PathBuf>,
    /// Mirrors per registry name (as written in references, e.g. `docker.io`).
    pub mirrors: HashMap<String, Vec<MirrorConfig>>,
    /// Registry hosts to reach over plain HTTP.
    pub insecure_hosts: Vec<String>,
}

/// The ordered endpoints for `registry` (a reference's registry name).
pub fn resolve_hosts(config: &HostsConfig, registry: &str) -> Result<Vec<RegistryHost>> {
    let origin_host = if registry == DOCKER_HUB {
        DOCKER_HUB_API_HOST
    } else {
        registry
    };
    let listed_insecure = |h: &str| config.insecure_hosts.iter().any(|i| i == h);
    let insecure = |h: &str| is_loopback_host(h) || listed_insecure(h);
    let mut hosts = Vec::new();
    for mirror in config.mirrors.get(registry).into_iter().flatten() {
        let default_scheme = if mirror.insecure {
            Scheme::Http
        } else {
            Scheme::Https
        };
        let mut h = endpoint_from_url(&mirror.host, default_scheme, false, "mirror config")?;
        if insecure(&h.host) && !mirror.host.starts_with("https://") {
            h.scheme = Scheme::Http;
        }
        h.is_mirror = true;
        h.request_timeout = RequestTimeout::from_go_seconds(mirror.request_timeout_sec);
        h.headers = header_pairs(mirror.header.clone());
        hosts.push(h);
    }
    let from_file = match &config.certs_dir {
        Some(dir) => load_host_dir(dir, registry)?,
        None => None,
    };
    let (server, origin_tls) = match from_file {
        Some(file) => {
            hosts.extend(file.mirrors.into_iter().map(|mut h| {
                h.is_mirror = h.host != origin_host;
                h
            }));
            (file.server, file.origin_tls)
        }
        None => (None, DirCerts::default()),
    };
    let mut last = match server {
        Some(s) => s,
        None => RegistryHost {
            // TLS files for the origin ask for TLS, also on loopback.
            scheme: if listed_insecure(origin_host)
                || listed_insecure(registry)
                || (is_loopback_host(origin_host) && origin_tls.is_empty())
            {
                Scheme::Http
            } else {
                Scheme::Https
            },
            host: origin_host.to_string(),
            path_prefix: "/v2".to_string(),
            capabilities: Capabilities::ALL,
            skip_verify: false,
            ca_files: origin_tls.ca_files,
            client_certs: origin_tls.client_certs,
            headers: Vec::new(),
            is_mirror: false,
            request_timeout: RequestTimeout::Default,
        },
    };
    last.is_mirror = last.host != origin_host;
    hosts.push(last);
    Ok(hosts)
}

/// Settings shared by `server` (top level) and `[host."…"]` tables.
#[derive(Debug, Default, Deserialize)]
struct HostFields {
    capabilities: Option<Vec<String>>,
    ca: Option<StringOrList>,
    skip_verify: Option<bool>,
    header: Option<HashMap<String, StringOrList>>,
    #[serde(default)]
    override_path: bool,
    /// Client certificates (mutual TLS): a file, a list of files, or a list
    /// of `["cert", "key"]` pairs (read by [`client_certificates`]).
    client: Option<toml::Value>,
}

/// A header value in a config file: one string or a list of them.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum StringOrList {
    /// One value.
    One(String),
    /// Several values (the header is sent once per value).
    Many(Vec<String>),
}

impl StringOrList {
    fn into_vec(self) -> Vec<String> {
        match self {
            Self::One(s) => vec![s],
            Self::Many(v) => v,
        }
    }
}

/// `(name, value)` pairs of configured headers, sorted by name (a map
/// has no order of its own), one pair per value.
fn header_pairs(header: HashMap<String, StringOrList>) -> Vec<(String, String)> {
    let mut pairs: Vec<(String, String)> = header
        .into_iter()
        .flat_map(|(k, v)| v.into_vec().into_iter().map(move |v| (k.clone(), v)))
        .collect();
    pairs.sort();
    pairs
}

#[derive(Debug, Deserialize)]
struct HostsFile {
    server: Option<String>,
    #[serde(flatten)]
    root: HostFields,
    // With toml's preserve_order feature this map keeps file order, which is
    // the order containerd tries mirrors in.
    #[serde(default)]
    host: toml::Table,
}

/// The endpoints one host directory lists.
pub(crate) struct LoadedHostsFile {
    /// `[host."…"]` entries in file order.
    pub(crate) mirrors: Vec<RegistryHost>,
    /// The top-level `server`, if set.
    pub(crate) server: Option<RegistryHost>,
    /// TLS files for the origin when there is no `server` (from a
    /// directory without hosts.toml).
    pub(crate) origin_tls: DirCerts,
}

/// The TLS files of a Docker-style certs directory.
#[derive(Default)]
pub(crate) struct DirCerts {
    ca_files: Vec<PathBuf>,
    client_certs: Vec<ClientCertificate>,
}

impl DirCerts {
    fn is_empty(&self) -> bool {
        self.ca_files.is_empty() && self.client_certs.is_empty()
    }
}

fn host_dir_candidates(root: &Path, registry: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Some(i) = registry.rfind(':')
        && i > 0
    {
        out.push(root.join(format!("{}_{}_", &registry[..i], &registry[i + 1..])));
    }
    out.push(root.join(registry));
    out.push(root.join("_default"));
    out
}

fn load_host_dir(root: &Path, registry: &str) -> Result<Option<LoadedHostsFile>> {
    // Like containerd, the first directory that exists is the one.
    let Some(dir) = host_dir_candidates(root, registry)
        .into_iter()
        .find(|d| d.is_dir())
    else {
        return Ok(None);
    };
    let file = dir.join("hosts.toml");
    match std::fs::read_to_string(&file) {
        Ok(text) => parse_hosts_file(&dir, &text, &file.display().to_string()).map(Some),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let (ca_files, client_certs) = docker_certs_dir(&dir)?;
            Ok(Some(LoadedHostsFile {
                mirrors: Vec::new(),
                server: None,
                origin_tls: DirCerts {
                    ca_files,
                    client_certs,
                },
            }))
        }
        Err(source) => Err(RegistryError::Io {
            context: format!("reading {}", file.display()),
            source,
        }),
    }
}

/// Parses the text of `dir/hosts.toml` (`origin` names it in errors).
pub(crate) fn parse_hosts_file(dir: &Path, text: &str, origin: &str) -> Result<LoadedHostsFile> {
    let bad = |reason: String| RegistryError::HostsConfig {
        path: origin.to_string(),
        reason,
    };
    let file: HostsFile = toml::from_str(text).map_err(|e| bad(e.message().to_string()))?;
    let mut mirrors = Vec::new();
    for (url, table) in file.host {
        let fields: HostFields = table
            .try_into()
            .map_err(|e: toml::de::Error| bad(format!("[host.{url:?}]: {}", e.message())))?;
        mirrors.push(configured_host(dir, &url, fields, origin)?);
    }
    let server = match file.server {
        Some(url) => Some(configured_host(dir, &url, file.root, origin)?),
        None => None,
    };
    Ok(LoadedHostsFile {
        mirrors,
        server,
        origin_tls: DirCerts::default(),
    })
}

fn configured_host(
    dir: &Path,
    url: &str,
    fields: HostFields,
    origin: &str,
) -> Result<RegistryHost> {
    let mut h = endpoint_from_url(url, Scheme::Https, fields.override_path, origin)?;
    if let Some(caps) = fields.capabilities {
        let mut c = Capabilities {
            pull: false,
            resolve: false,
            push: false,
        };
        for cap in caps {
            match cap.to_ascii_lowercase().as_str() {
                "pull" => c.pull = true,
                "resolve" => c.resolve = true,
                "push" => c.push = true,
                other => {
                    return Err(RegistryError::HostsConfig {
                        path: origin.to_string(),
                        reason: format!("unknown capability {other:?}"),
                    });
                }
            }
        }
        h.capabilities = c;
    }
    if let Some(client) = fields.client {
        h.client_certs =
            client_certificates(dir, client).map_err(|reason| RegistryError::HostsConfig {
                path: origin.to_string(),
                reason: format!("{url}: {reason}"),
            })?;
    }
    h.skip_verify = fields.skip_verify.unwrap_or(false);
    h.ca_files = fields
        .ca
        .map(StringOrList::into_vec)
        .unwrap_or_default()
        .into_iter()
        .map(|p| dir.join(p)) // join keeps absolute paths as they are
        .collect();
    h.headers = header_pairs(fields.header.unwrap_or_default());
    Ok(h)
}

/// The `client` value of a host, as containerd reads it: `"file"` (key in
/// the same file), `["file", …]` (one certificate each), or
/// `[["cert", "key"], …]` (an empty key means the same file). Relative
/// paths are relative to the host's directory.
fn client_certificates(
    dir: &Path,
    value: toml::Value,
) -> std::result::Result<Vec<ClientCertificate>, String> {
    use toml::Value;
    let path = |s: &str| -> std::result::Result<PathBuf, String> {
        if s.is_empty() {
            return Err("`client` names an empty file".into());
        }
        Ok(dir.join(s)) // join keeps absolute paths as they are
    };
    let one = |item: &Value| match item {
        Value::String(cert) => Ok(ClientCertificate {
            cert: path(cert)?,
            key: None,
        }),
        Value::Array(pair) => match pair.as_slice() {
            [Value::String(cert), Value::String(key)] => Ok(ClientCertificate {
                cert: path(cert)?,
                key: if key.is_empty() {
                    None
                } else {
                    Some(path(key)?)
                },
            }),
            _ => Err("a `client` pair is [\"cert file\", \"key file\"]".to_string()),
        },
        _ => Err("`client` lists files or [\"cert\", \"key\"] pairs".to_string()),
    };
    match &value {
        Value::String(_) => Ok(vec![one(&value)?]),
        Value::Array(items) => items.iter().map(one).collect(),
        _ => {
            Err("`client` is a file, a list of files or a list of [\"cert\", \"key\"] pairs".into())
        }
    }
}

/// Parses `[http(s)://]host[:port][/path]` the way containerd does: no
/// scheme means https, and the path gets `/v2` appended unless overridden.
fn endpoint_from_url(
    url: &str,
    default_scheme: Scheme,
    override_path: bool,
    origin: &str,
) -> Result<RegistryHost> {
    let (scheme, rest) = if let Some(r) = url.strip_prefix("https://") {
        (Scheme::Https, r)
    } else if let Some(r) = url.strip_prefix("http://") {
        (Scheme::Http, r)
    } else {
        (default_scheme, url)
    };
    let (host, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    if host.is_empty() || host.contains(['@', '?', '#', ' ']) {
        return Err(RegistryError::HostsConfig {
            path: origin.to_string(),
            reason: format!("invalid host URL {url:?}"),
        });
    }
    let path = path.trim_end_matches('/');
    let path_prefix = if override_path || path.ends_with("/v2") {
        path.to_string()
    } else {
        format!("{path}/v2")
    };
    Ok(RegistryHost {
        scheme,
        host: host.to_string(),
        path_prefix,
        capabilities: Capabilities::ALL,
        skip_verify: false,
        ca_files: Vec::new(),
        client_certs: Vec::new(),
        headers: Vec::new(),
        is_mirror: false,
        request_timeout: RequestTimeout::Default,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn origin_defaults() {
        let c = HostsConfig::default();
        let h = resolve_hosts(&c, "docker.io").unwrap();
        assert_eq!(h.len(), 1);
        assert_eq!(h[0].api_root(), "https://registry-1.docker.io/v2");
        assert!(!h[0].is_mirror);
        let h = resolve_hosts(&c, "127.0.0.1:5000").unwrap();
        assert_eq!(h[0].api_root(), "http://127.0.0.1:5000/v2");
        let c = HostsConfig {
            insecure_hosts: vec!["reg.lan:5000".into()],
            ..Default::default()
        };
        assert_eq!(
            resolve_hosts(&c, "reg.lan:5000").unwrap()[0].scheme,
            Scheme::Http
        );
        assert_eq!(
            resolve_hosts(&c, "reg.lan").unwrap()[0].scheme,
            Scheme::Https
        );
    }

    #[test]
    fn hosts_toml_in_file_order_then_server() {
        let dir = tempfile::tempdir().unwrap();
        let host_dir = dir.path().join("reg.example_5000_");
        std::fs::create_dir_all(&host_dir).unwrap();
        std::fs::write(
            host_dir.join("hosts.toml"),
            r#"
server = "https://reg.example:5000"
ca = "root.pem"

[host."https://zzz.mirror/prefix"]
  capabilities = ["pull", "resolve"]
  skip_verify = true
  ca = ["/abs/ca.pem", "rel.pem"]
  [host."https://zzz.mirror/prefix".header]
    x-custom = "1"

[host."http://aaa.mirror:8080"]
  capabilities = ["pull"]
  override_path = true
"#,
        )
        .unwrap();
        let mut c = HostsConfig {
            certs_dir: Some(dir.path().to_path_buf()),
            ..Default::default()
        };
        c.mirrors.insert(
            "reg.example:5000".into(),
            vec![MirrorConfig {
                host: "first.mirror".into(),
                ..Default::default()
            }],
        );
        let h = resolve_hosts(&c, "reg.example:5000").unwrap();
        let roots: Vec<_> = h.iter().map(RegistryHost::api_root).collect();
        assert_eq!(
            roots,
            [
                "https://first.mirror/v2",
                "https://zzz.mirror/prefix/v2",
                "http://aaa.mirror:8080",
                "https://reg.example:5000/v2"
            ]
        );
        assert!(h[1].skip_verify && h[1].is_mirror && !h[1].capabilities.push);
        assert_eq!(
            h[1].ca_files,
            [PathBuf::from("/abs/ca.pem"), host_dir.join("rel.pem")]
        );
        assert_eq!(h[1].headers, [("x-custom".to_string(), "1".to_string())]);
        assert!(!h[2].capabilities.resolve && h[2].capabilities.pull);
        assert!(!h[3].is_mirror && h[3].capabilities.push);
        assert_eq!(h[3].ca_files, [host_dir.join("root.pem")]);
    }

    #[test]
    fn mirror_headers_and_timeouts_as_the_go_reference() {
        let mirrors: HashMap<String, Vec<MirrorConfig>> = toml::from_str(
            r#"
[["docker.io"]]
host = "slow.mirror"
request_timeout_sec = 7
header = { x-one = "1", x-many = ["a", "b"] }
[["docker.io"]]
host = "patient.mirror"
request_timeout_sec = -1
"#,
        )
        .unwrap();
        let c = HostsConfig {
            mirrors,
            ..Default::default()
        };
        let h = resolve_hosts(&c, "docker.io").unwrap();
        assert_eq!(
            h[0].request_timeout,
            RequestTimeout::After(Duration::from_secs(7))
        );
        let pair = |k: &str, v: &str| (k.to_string(), v.to_string());
        assert_eq!(
            h[0].headers,
            [pair("x-many", "a"), pair("x-many", "b"), pair("x-one", "1")]
        );
        assert_eq!(h[1].request_timeout, RequestTimeout::Never);
        assert!(h[1].headers.is_empty());
        // The origin keeps the defaults.
        assert_eq!(h[2].request_timeout, RequestTimeout::Default);
        let default = Duration::from_secs(30);
        assert_eq!(h[2].request_timeout.resolve(default), Some(default));
        assert_eq!(RequestTimeout::Never.resolve(default), None);
        assert_eq!(RequestTimeout::from_go_seconds(0), RequestTimeout::Default);
        // Go refuses other header types too.
        let bad = "[[\"docker.io\"]]\nhost = \"m\"\nheader = { x = 3 }\n";
        assert!(toml::from_str::<HashMap<String, Vec<MirrorConfig>>>(bad).is_err());
    }

    #[test]
    fn client_certificates_in_containerd_forms() {
        let dir = Path::new("/etc/containerd/certs.d/reg.example");
        let cert = |c: &str, k: Option<&str>| ClientCertificate {
            cert: dir.join(c),
            key: k.map(|k| dir.join(k)),
        };
        let text = r#"
server = "https://reg.example"
client = "both.pem"

[host."https://a.mirror"]
  client = ["one.pem", "/abs/two.pem"]

[host."https://b.mirror"]
  client = [["c.cert", "/abs/c.key"], ["d.pem", ""]]
"#;
        let file = parse_hosts_file(dir, text, "hosts.toml").unwrap();
        assert_eq!(file.server.unwrap().client_certs, [cert("both.pem", None)]);
        assert_eq!(
            file.mirrors[0].client_certs,
            [cert("one.pem", None), cert("/abs/two.pem", None)]
        );
        assert_eq!(
            file.mirrors[1].client_certs,
            [cert("c.cert", Some("/abs/c.key")), cert("d.pem", None)]
        );
        for bad in [
            "client = 3",
            "client = [[\"only-cert\"]]",
            "client = [[\"a\", \"b\", \"c\"]]",
            "client = [\"\"]",
        ] {
            let err = parse_hosts_file(dir, &format!("server = \"https://r\"\n{bad}\n"), "h.toml")
                .err()
                .unwrap();
            assert!(
                matches!(err, RegistryError::HostsConfig { .. })
                    && err.to_string().contains("client"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn first_existing_dir_wins_and_docker_layout_applies_to_origin() {
        let dir = tempfile::tempdir().unwrap();
        let host_dir = dir.path().join("reg.example_5000_");
        std::fs::create_dir_all(&host_dir).unwrap();
        for f in ["ca.crt", "client.cert", "client.key"] {
            std::fs::write(host_dir.join(f), "x").unwrap();
        }
        // Not used: the more specific directory exists.
        std::fs::create_dir_all(dir.path().join("_default")).unwrap();
        std::fs::write(
            dir.path().join("_default/hosts.toml"),
            "server = \"https://elsewhere\"\n",
        )
        .unwrap();
        let c = HostsConfig {
            certs_dir: Some(dir.path().to_path_buf()),
            ..Default::default()
        };
        let h = resolve_hosts(&c, "reg.example:5000").unwrap();
        assert_eq!(h.len(), 1);
        assert_eq!(h[0].api_root(), "https://reg.example:5000/v2");
        assert_eq!(h[0].ca_files, [host_dir.join("ca.crt")]);
        assert_eq!(
            h[0].client_certs,
            [ClientCertificate {
                cert: host_dir.join("client.cert"),
                key: Some(host_dir.join("client.key")),
            }]
        );
        assert_eq!(
            resolve_hosts(&c, "other.example").unwrap()[0].host,
            "elsewhere"
        );
    }

    #[test]
    fn bad_hosts_toml_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("_default")).unwrap();
        std::fs::write(
            dir.path().join("_default/hosts.toml"),
            "[host.\"x\"]\ncapabilities = [\"fly\"]\n",
        )
        .unwrap();
        let c = HostsConfig {
            certs_dir: Some(dir.path().to_path_buf()),
            ..Default::default()
        };
        assert!(matches!(
            resolve_hosts(&c, "any.io"),
            Err(RegistryError::HostsConfig { .. })
        ));
    }
}
