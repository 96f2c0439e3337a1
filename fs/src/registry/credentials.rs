//! Registry credentials from docker's `config.json`: `auths` (base64
//! `auth`, `username`/`password`, `identitytoken`), `credHelpers` and
//! `credsStore` (the `docker-credential-<name> get` exec protocol).
//!
//! Secrets live in [`Secret`], whose Debug/Display never show the value, and
//! no error built here contains a secret or a helper's output.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde::Deserialize;
use tokio::io::AsyncWriteExt;

use super::error::{RegistryError, Result};

/// A secret string; formatting it prints `<redacted>`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }
    /// The secret itself, for building a request header.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Credentials for one registry host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Credential {
    /// Username and password (basic auth, or basic auth at the token realm).
    Basic {
        /// User name (not secret).
        username: String,
        /// Password.
        password: Secret,
    },
    /// An OAuth2 refresh token (`identitytoken`), exchanged at the token realm.
    IdentityToken(Secret),
}

/// Where credentials come from.
#[derive(Clone, Debug, Default)]
pub struct CredentialStore {
    config: DockerConfig,
    /// Directories searched for `docker-credential-*` before `$PATH`.
    helper_dirs: Vec<PathBuf>,
}

#[derive(Clone, Debug, Default, Deserialize)]
struct DockerConfig {
    #[serde(default)]
    auths: HashMap<String, AuthEntry>,
    #[serde(default, rename = "credHelpers")]
    cred_helpers: HashMap<String, String>,
    #[serde(default, rename = "credsStore")]
    creds_store: Option<String>,
}

#[derive(Clone, Default, Deserialize)]
struct AuthEntry {
    auth: Option<String>,
    username: Option<String>,
    password: Option<String>,
    identitytoken: Option<String>,
}

// Manual Debug: the entry holds secrets.
impl fmt::Debug for AuthEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthEntry")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct HelperAnswer {
    #[serde(rename = "Username")]
    username: String,
    #[serde(rename = "Secret")]
    secret: String,
}

/// The docker config path: `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`.
pub fn default_docker_config_path() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("DOCKER_CONFIG") {
        return Some(PathBuf::from(dir).join("config.json"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker/config.json"))
}

/// The key docker uses for a host: docker.io's aliases share one entry.
fn normalise_host(key: &str) -> String {
    let k = key.trim();
    let k = k
        .strip_prefix("https://")
        .or_else(|| k.strip_prefix("http://"))
        .unwrap_or(k);
    let k = k.split('/').next().unwrap_or(k);
    match k {
        "docker.io" | "index.docker.io" | "registry-1.docker.io" => "index.docker.io".to_string(),
        other => other.to_string(),
    }
}

impl CredentialStore {
    /// A store without any credentials (anonymous access only).
    pub fn anonymous() -> Self {
        Self::default()
    }

    /// Loads a docker config.json; a missing file means no credentials.
    pub fn from_docker_config(path: &Path) -> Result<Self> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(source) => {
                return Err(RegistryError::Io {
                    context: format!("reading {}", path.display()),
                    source,
                });
            }
        };
        // serde_json's message names a position, never the content.
        let config: DockerConfig =
            serde_json::from_str(&text).map_err(|e| RegistryError::Credentials {
                host: "*".into(),
                reason: format!(
                    "{}: invalid JSON at line {} column {}",
                    path.display(),
                    e.line(),
                    e.column()
                ),
            })?;
        let mut config = config;
        config.auths = config
            .auths
            .into_iter()
            .map(|(k, v)| (normalise_host(&k), v))
            .collect();
        config.cred_helpers = config
            .cred_helpers
            .into_iter()
            .map(|(k, v)| (normalise_host(&k), v))
            .collect();
        Ok(Self {
            config,
            helper_dirs: Vec::new(),
        })
    }

    /// Searches `dirs` for credential helpers before `$PATH` (a daemon's
    /// PATH is often minimal).
    pub fn with_helper_dirs(mut self, dirs: Vec<PathBuf>) -> Self {
        self.helper_dirs = dirs;
        self
    }

    /// Credentials for `host` (`host[:port]`), or None for anonymous access.
    pub async fn lookup(&self, host: &str) -> Result<Option<Credential>> {
        let key = normalise_host(host);
        if let Some(helper) = self.config.cred_helpers.get(&key) {
            return run_helper(&self.helper_dirs, helper, &key).await;
        }
        if let Some(entry) = self.config.auths.get(&key)
            && let Some(c) = entry_credential(entry, &key)?
        {
            return Ok(Some(c));
        }
        match &self.config.creds_store {
            Some(store) => run_helper(&self.helper_dirs, store, &key).await,
            None => Ok(None),
        }
    }
}

fn entry_credential(entry: &AuthEntry, host: &str) -> Result<Option<Credential>> {
    if let Some(token) = entry.identitytoken.as_deref().filter(|t| !t.is_empty()) {
        return Ok(Some(Credential::IdentityToken(Secret::new(token))));
    }
    if let Some(auth) = entry.auth.as_deref().filter(|a| !a.is_empty()) {
        let bad = || RegistryError::Credentials {
            host: host.to_string(),
            reason: "config.json `auth` is not base64 of user:password".into(),
        };
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(auth.trim())
            .map_err(|_| bad())?;
        let decoded = String::from_utf8(decoded).map_err(|_| bad())?;
        let (user, pass) = decoded.split_once(':').ok_or_else(bad)?;
        return Ok(Some(Credential::Basic {
            username: user.to_string(),
            password: Secret::new(pass),
        }));
    }
    match (&entry.username, &entry.password) {
        (Some(u), Some(p)) if !u.is_empty() => Ok(Some(Credential::Basic {
            username: u.clone(),
            password: Secret::new(p.clone()),
        })),
        _ => Ok(None),
    }
}

/// Runs `docker-credential-<helper> get` with the host on stdin.
async fn run_helper(dirs: &[PathBuf], helper: &str, host: &str) -> Result<Option<Credential>> {
    let fail = |reason: String| RegistryError::Credentials {
        host: host.to_string(),
        reason,
    };
    if helper.is_empty()
        || !helper
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err(fail(format!("invalid credential helper name {helper:?}")));
    }
    let program = format!("docker-credential-{helper}");
    let path = dirs
        .iter()
        .map(|d| d.join(&program))
        .find(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from(&program));
    let mut child = tokio::process::Command::new(path)
        .arg("get")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| fail(format!("cannot run {program}: {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(host.as_bytes())
            .await
            .map_err(|e| fail(format!("writing to {program}: {e}")))?;
    }
    let out = tokio::time::timeout(std::time::Duration::from_secs(30), child.wait_with_output())
        .await
        .map_err(|_| fail(format!("{program} timed out")))?
        .map_err(|e| fail(format!("{program}: {e}")))?;
    if !out.status.success() {
        // Helpers print "credentials not found in native keychain" for unknown hosts.
        if String::from_utf8_lossy(&out.stdout).contains("credentials not found") {
            return Ok(None);
        }
        return Err(fail(format!("{program} exited with {}", out.status)));
    }
    let answer: HelperAnswer = serde_json::from_slice(&out.stdout)
        .map_err(|_| fail(format!("{program} printed invalid JSON")))?;
    if answer.username == "<token>" {
        return Ok(Some(Credential::IdentityToken(Secret::new(answer.secret))));
    }
    Ok(Some(Credential::Basic {
        username: answer.username,
        password: Secret::new(answer.secret),
    }))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn store(json: &str) -> (tempfile::TempDir, CredentialStore) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        std::fs::write(&path, json).unwrap();
        let s = CredentialStore::from_docker_config(&path).unwrap();
        (dir, s)
    }

    #[tokio::test]
    async fn auths_entries() {
        let (_d, s) = store(
            r#"{"auths": {
                "https://index.docker.io/v1/": {"auth": "dXNlcjpwYXNzOndvcmQ="},
                "reg.example:5000": {"username": "u2", "password": "p2"},
                "tok.example": {"identitytoken": "refresh"}
            }}"#,
        );
        let hub = s.lookup("registry-1.docker.io").await.unwrap().unwrap();
        assert_eq!(
            hub,
            Credential::Basic {
                username: "user".into(),
                password: Secret::new("pass:word")
            }
        );
        assert!(
            matches!(s.lookup("reg.example:5000").await.unwrap(), Some(Credential::Basic { username, .. }) if username == "u2")
        );
        assert!(matches!(
            s.lookup("tok.example").await.unwrap(),
            Some(Credential::IdentityToken(_))
        ));
        assert_eq!(s.lookup("other.example").await.unwrap(), None);
        assert!(!format!("{hub:?}").contains("pass:word"));
    }

    #[tokio::test]
    async fn credential_helper_protocol() {
        let dir = tempfile::tempdir().unwrap();
        let helper = dir.path().join("docker-credential-rstargztest");
        std::fs::write(
            &helper,
            "#!/bin/sh\nread host\n[ \"$1\" = get ] || exit 3\necho \"{\\\"ServerURL\\\":\\\"$host\\\",\\\"Username\\\":\\\"h-$host\\\",\\\"Secret\\\":\\\"s3cret\\\"}\"\n",
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&helper, std::fs::Permissions::from_mode(0o755)).unwrap();
        let (_d, s) = store(r#"{"credHelpers": {"helped.example": "rstargztest"}, "auths": {}}"#);
        let s = s.with_helper_dirs(vec![dir.path().to_path_buf()]);
        let c = s.lookup("helped.example").await.unwrap().unwrap();
        assert_eq!(
            c,
            Credential::Basic {
                username: "h-helped.example".into(),
                password: Secret::new("s3cret")
            }
        );
        let (_d, s) = store(r#"{"credsStore": "missing-helper-xyz"}"#);
        let err = s.lookup("x.example").await.unwrap_err();
        assert!(matches!(err, RegistryError::Credentials { .. }));
    }

    #[test]
    fn bad_config_errors_do_not_leak_content() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        std::fs::write(&path, r#"{"auths": {"h": {"auth": "c2VjcmV0LXZhbHVl"}"#).unwrap();
        let err = CredentialStore::from_docker_config(&path)
            .unwrap_err()
            .to_string();
        assert!(
            !err.contains("c2VjcmV0") && !err.contains("secret-value"),
            "{err}"
        );
        assert!(CredentialStore::from_docker_config(&dir.path().join("none.json")).is_ok());
    }
}
