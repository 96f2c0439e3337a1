//! Registry credentials: the run-time [`Keychain`] (CRI), then docker's
//! `config.json` (re-read when it changes): `auths` (base64 `auth`,
//! `username`/`password`, `identitytoken`), `credHelpers` and `credsStore`
//! (the `docker-credential-<name> get` exec protocol).
//!
//! Secrets live in [`Secret`], whose Debug/Display never show the value, and
//! no error built here contains a secret or a helper's output.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde::Deserialize;
use tokio::io::AsyncWriteExt;

use super::error::{RegistryError, Result};
use super::keychain::Keychain;
pub use super::secret::{Credential, Secret, normalise_host};
use crate::file_stamp::FileStamp;

/// How long a credential helper's answer is reused before asking again.
const HELPER_ANSWER_TTL: Duration = Duration::from_secs(60);

/// Where credentials come from: the [`Keychain`] first (credentials
/// handed in at run time), then docker's `config.json`, re-read whenever
/// the file changes, and its credential helpers.
#[derive(Debug, Default)]
pub struct CredentialStore {
    keychain: Keychain,
    docker: Option<DockerConfigFile>,
    /// Directories searched for `docker-credential-*` before `$PATH`.
    helper_dirs: Vec<PathBuf>,
    // Credential helpers are processes: their answer is remembered for a
    // while instead of spawning one per request. A 401 forgets it, so
    // rotated credentials (e.g. 12 h ECR passwords) are picked up.
    helper_answers: Mutex<HashMap<String, (Option<Credential>, Instant)>>,
}

/// docker's `config.json` as last read, and how to tell it changed.
#[derive(Debug)]
struct DockerConfigFile {
    path: PathBuf,
    loaded: Mutex<(Option<FileStamp>, Arc<DockerConfig>)>,
}

#[derive(Debug, Default, Deserialize)]
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

/// Reads and parses a docker config.json; a missing file means no
/// credentials.
fn read_docker_config(path: &Path) -> Result<DockerConfig> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(DockerConfig::default()),
        Err(source) => {
            return Err(RegistryError::Io {
                context: format!("reading {}", path.display()),
                source,
            });
        }
    };
    // serde_json's message names a position, never the content.
    let mut config: DockerConfig =
        serde_json::from_str(&text).map_err(|e| RegistryError::Credentials {
            host: "*".into(),
            reason: format!(
                "{}: invalid JSON at line {} column {}",
                path.display(),
                e.line(),
                e.column()
            ),
        })?;
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
    Ok(config)
}

impl DockerConfigFile {
    /// The config as the file is now: read again when its stamp changed.
    /// A file that no longer parses keeps the last good config (a warning
    /// says so, naming no content).
    fn current(&self) -> Arc<DockerConfig> {
        let stamp = FileStamp::of(&self.path);
        let mut loaded = self.loaded.lock().unwrap_or_else(|p| p.into_inner());
        if loaded.0 != stamp {
            loaded.0 = stamp;
            match read_docker_config(&self.path) {
                Ok(config) => {
                    tracing::info!(path = %self.path.display(), "docker config changed; credentials re-read");
                    loaded.1 = Arc::new(config);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "docker config unreadable; keeping the credentials read before");
                }
            }
        }
        loaded.1.clone()
    }
}

impl CredentialStore {
    /// A store without any credentials (anonymous access only).
    pub fn anonymous() -> Self {
        Self::default()
    }

    /// Reads a docker config.json now (a missing file means no
    /// credentials) and again whenever it changes.
    pub fn from_docker_config(path: &Path) -> Result<Self> {
        let stamp = FileStamp::of(path);
        let config = read_docker_config(path)?;
        Ok(Self {
            docker: Some(DockerConfigFile {
                path: path.to_path_buf(),
                loaded: Mutex::new((stamp, Arc::new(config))),
            }),
            ..Self::default()
        })
    }

    /// Searches `dirs` for credential helpers before `$PATH` (a daemon's
    /// PATH is often minimal).
    pub fn with_helper_dirs(mut self, dirs: Vec<PathBuf>) -> Self {
        self.helper_dirs = dirs;
        self
    }

    /// Looks in `keychain` before anything else.
    pub fn with_keychain(mut self, keychain: Keychain) -> Self {
        self.keychain = keychain;
        self
    }

    /// Credentials for `host` (`host[:port]`), or None for anonymous access.
    pub async fn lookup(&self, host: &str) -> Result<Option<Credential>> {
        let key = normalise_host(host);
        if let Some(c) = self.keychain.get(&key) {
            return Ok(Some(c));
        }
        let Some(docker) = &self.docker else {
            return Ok(None);
        };
        let config = docker.current();
        if let Some(helper) = config.cred_helpers.get(&key) {
            return self.helper(helper, &key).await;
        }
        if let Some(entry) = config.auths.get(&key)
            && let Some(c) = entry_credential(entry, &key)?
        {
            return Ok(Some(c));
        }
        match &config.creds_store {
            Some(store) => self.helper(store, &key).await,
            None => Ok(None),
        }
    }

    /// The registry refused `host`'s credentials: helpers are asked again
    /// next time, and the keychain's credential is dropped if `refused`
    /// says it is the one refused.
    pub fn refused(&self, host: &str, refused: impl Fn(&Credential) -> bool) {
        self.forget_helper_answer(host);
        self.keychain.drop_refused(host, refused);
    }

    /// Forgets the remembered helper answer for `host` (the registry
    /// answered 401: it may have rotated).
    pub fn forget_helper_answer(&self, host: &str) {
        if let Ok(mut answers) = self.helper_answers.lock() {
            answers.remove(&normalise_host(host));
        }
    }

    /// `helper`'s answer for `host`, remembered for [`HELPER_ANSWER_TTL`].
    async fn helper(&self, helper: &str, host: &str) -> Result<Option<Credential>> {
        let now = Instant::now();
        if let Some((c, at)) = self
            .helper_answers
            .lock()
            .ok()
            .and_then(|a| a.get(host).cloned())
            && now.duration_since(at) < HELPER_ANSWER_TTL
        {
            return Ok(c);
        }
        let c = run_helper(&self.helper_dirs, helper, host).await?;
        if let Ok(mut answers) = self.helper_answers.lock() {
            answers.insert(host.to_string(), (c.clone(), now));
        }
        Ok(c)
    }
}

fn entry_credential(entry: &AuthEntry, host: &str) -> Result<Option<Credential>> {
    fn field(f: &Option<String>) -> &str {
        f.as_deref().unwrap_or_default()
    }
    let fields = AuthFields {
        username: field(&entry.username),
        password: field(&entry.password),
        auth: field(&entry.auth),
        identity_token: field(&entry.identitytoken),
    };
    fields.credential(host)
}

/// Docker's auth fields, as config.json's `auths` entries and CRI's
/// `AuthConfig` carry them (empty means absent).
#[derive(Clone, Copy, Default)]
pub struct AuthFields<'a> {
    /// User name.
    pub username: &'a str,
    /// Password.
    pub password: &'a str,
    /// base64 of `user:password`.
    pub auth: &'a str,
    /// OAuth2 refresh token.
    pub identity_token: &'a str,
}

impl AuthFields<'_> {
    /// The credential these fields give for `host` (an identity token
    /// first, then `auth`, then username and password, as docker reads
    /// them); None when they are all empty.
    pub fn credential(&self, host: &str) -> Result<Option<Credential>> {
        if !self.identity_token.is_empty() {
            return Ok(Some(Credential::IdentityToken(Secret::new(
                self.identity_token,
            ))));
        }
        if !self.auth.is_empty() {
            let bad = || RegistryError::Credentials {
                host: host.to_string(),
                reason: "`auth` is not base64 of user:password".into(),
            };
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(self.auth.trim())
                .map_err(|_| bad())?;
            let decoded = String::from_utf8(decoded).map_err(|_| bad())?;
            let (user, pass) = decoded.split_once(':').ok_or_else(bad)?;
            return Ok(Some(Credential::Basic {
                username: user.to_string(),
                // Some clients pad the encoded pair with NULs.
                password: Secret::new(pass.trim_end_matches('\0')),
            }));
        }
        if self.username.is_empty() {
            return Ok(None);
        }
        Ok(Some(Credential::Basic {
            username: self.username.to_string(),
            password: Secret::new(self.password),
        }))
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

    fn basic(user: &str, password: &str) -> Option<Credential> {
        Some(Credential::Basic {
            username: user.into(),
            password: Secret::new(password),
        })
    }

    #[tokio::test]
    async fn a_changed_config_is_read_again() {
        let config = |password: &str| {
            format!(r#"{{"auths": {{"reg:5000": {{"username": "u", "password": "{password}"}}}}}}"#)
        };
        let (dir, s) = store(&config("one"));
        let path = dir.path().join("config.json");
        assert_eq!(s.lookup("reg:5000").await.unwrap(), basic("u", "one"));
        // Replaced as docker does (a new file renamed over it), same size.
        let tmp = dir.path().join("config.json.tmp");
        std::fs::write(&tmp, config("two")).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        assert_eq!(s.lookup("reg:5000").await.unwrap(), basic("u", "two"));
        // Rewritten in place.
        std::fs::write(&path, config("three")).unwrap();
        assert_eq!(s.lookup("reg:5000").await.unwrap(), basic("u", "three"));
        // A broken file keeps what was read before; a removed one means
        // no credentials.
        std::fs::write(&path, "{ half").unwrap();
        assert_eq!(s.lookup("reg:5000").await.unwrap(), basic("u", "three"));
        std::fs::remove_file(&path).unwrap();
        assert_eq!(s.lookup("reg:5000").await.unwrap(), None);
        std::fs::write(&path, config("four")).unwrap();
        assert_eq!(s.lookup("reg:5000").await.unwrap(), basic("u", "four"));
    }

    #[tokio::test]
    async fn the_keychain_comes_first_and_loses_a_refused_credential() {
        let (_d, s) = store(r#"{"auths": {"reg:5000": {"username": "file", "password": "f"}}}"#);
        let keychain = Keychain::default();
        let s = s.with_keychain(keychain.clone());
        keychain.insert("reg:5000", Credential::IdentityToken(Secret::new("t")));
        assert!(matches!(
            s.lookup("reg:5000").await.unwrap(),
            Some(Credential::IdentityToken(_))
        ));
        // Refusing the file's credential does not touch the keychain's.
        s.refused("reg:5000", |c| c == &basic("file", "f").unwrap());
        assert!(keychain.get("reg:5000").is_some());
        s.refused("reg:5000", |c| matches!(c, Credential::IdentityToken(_)));
        assert_eq!(keychain.get("reg:5000"), None);
        assert_eq!(s.lookup("reg:5000").await.unwrap(), basic("file", "f"));
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
