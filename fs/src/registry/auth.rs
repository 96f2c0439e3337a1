//! Registry authentication: `WWW-Authenticate` parsing, the docker token
//! flow (anonymous or with credentials, `token`/`access_token`, OAuth2
//! refresh tokens) and a token cache per (host, scope) with expiry.
//!
//! What a host wants is learned from its first 401 and remembered, so later
//! requests authenticate up front. Credentials go only to HTTPS realms, or to
//! plain-HTTP realms on loopback or when the registry itself is reached over
//! configured plain HTTP.

use std::collections::HashMap;
use std::fmt;
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde::Deserialize;
use tokio::sync::Mutex;

use super::credentials::{Credential, CredentialStore, Secret};
use super::error::{RegistryError, Result, describe_transport_error};
use super::http::read_response_limited;
use super::reference::is_loopback_host;

/// Largest token response read (real ones are a few KiB).
const MAX_TOKEN_RESPONSE: u64 = 1 << 20;

/// One challenge of a `WWW-Authenticate` header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Challenge {
    /// `Basic realm="…"`.
    Basic,
    /// `Bearer realm="…",service="…",scope="…"`.
    Bearer {
        /// Token endpoint.
        realm: String,
        /// `service` parameter, passed back to the realm.
        service: Option<String>,
        /// `scope` the registry asked for, if any.
        scope: Option<String>,
    },
}

/// Parses a `WWW-Authenticate` value into its Basic/Bearer challenges
/// (unknown schemes are skipped).
pub fn parse_www_authenticate(value: &str) -> Vec<Challenge> {
    let mut out = Vec::new();
    let mut current: Option<(String, HashMap<String, String>)> = None;
    let mut rest = value.trim();
    while !rest.is_empty() {
        rest = rest.trim_start_matches([',', ' ', '\t']);
        let token_end = rest
            .find(|c: char| c == '=' || c == ',' || c.is_whitespace())
            .unwrap_or(rest.len());
        let token = &rest[..token_end];
        let after = rest[token_end..].trim_start_matches([' ', '\t']);
        if token.is_empty() {
            break;
        }
        if let Some(v) = after.strip_prefix('=') {
            let (value, remaining) = parse_param_value(v.trim_start());
            if let Some((_, params)) = current.as_mut() {
                params.insert(token.to_ascii_lowercase(), value);
            }
            rest = remaining;
        } else {
            if let Some(c) = current.take() {
                out.extend(to_challenge(c));
            }
            current = Some((token.to_ascii_lowercase(), HashMap::new()));
            rest = after;
        }
    }
    if let Some(c) = current.take() {
        out.extend(to_challenge(c));
    }
    out
}

fn parse_param_value(s: &str) -> (String, &str) {
    if let Some(q) = s.strip_prefix('"') {
        let mut value = String::new();
        let mut chars = q.char_indices();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, e)) = chars.next() {
                        value.push(e);
                    }
                }
                '"' => return (value, &q[i + 1..]),
                c => value.push(c),
            }
        }
        (value, "")
    } else {
        let end = s.find(',').unwrap_or(s.len());
        (s[..end].trim().to_string(), &s[end..])
    }
}

fn to_challenge((scheme, mut params): (String, HashMap<String, String>)) -> Option<Challenge> {
    match scheme.as_str() {
        "basic" => Some(Challenge::Basic),
        "bearer" => Some(Challenge::Bearer {
            realm: params.remove("realm").filter(|r| !r.is_empty())?,
            service: params.remove("service"),
            scope: params.remove("scope"),
        }),
        _ => None,
    }
}

/// What a host was found to require.
#[derive(Clone, Debug, PartialEq, Eq)]
enum HostScheme {
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
    },
}

#[derive(Clone)]
struct CachedToken {
    token: Secret,
    valid_until: Instant,
}

/// Turns credentials and challenges into `Authorization` headers.
pub struct Authorizer {
    credentials: CredentialStore,
    schemes: std::sync::Mutex<HashMap<String, HostScheme>>,
    // An async mutex: concurrent requests for one scope wait for a single
    // token fetch instead of each fetching their own.
    tokens: Mutex<HashMap<(String, String), CachedToken>>,
    timeout: Duration,
}

impl fmt::Debug for Authorizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authorizer").finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct TokenResponse {
    token: Option<String>,
    access_token: Option<String>,
    expires_in: Option<u64>,
}

/// Context of one authorised request.
pub struct AuthTarget<'a> {
    /// The endpoint's HTTP client, also used for its token requests (as
    /// containerd does): it carries the endpoint's CAs and client certificate.
    pub client: &'a reqwest::Client,
    /// Registry endpoint host (`host[:port]`).
    pub host: &'a str,
    /// Repository, for error messages.
    pub repository: &'a str,
    /// Token scope, e.g. `repository:library/ubuntu:pull`.
    pub scope: &'a str,
    /// The endpoint is reached over configured plain HTTP.
    pub plain_http: bool,
}

impl Authorizer {
    /// An authorizer whose token requests time out after `timeout`.
    pub fn new(credentials: CredentialStore, timeout: Duration) -> Self {
        Self {
            credentials,
            schemes: std::sync::Mutex::new(HashMap::new()),
            tokens: Mutex::new(HashMap::new()),
            timeout,
        }
    }

    /// The header to send up front, if the host's scheme is already known.
    pub async fn header(&self, target: &AuthTarget<'_>) -> Result<Option<String>> {
        let scheme = self
            .schemes
            .lock()
            .ok()
            .and_then(|s| s.get(target.host).cloned());
        match scheme {
            None => Ok(None),
            Some(HostScheme::Basic) => self.basic_header(target).await,
            Some(HostScheme::Bearer { realm, service }) => self
                .bearer_header(target, &realm, service.as_deref(), None, false)
                .await
                .map(Some),
        }
    }

    /// Handles a 401 to a request sent with the header `sent`: learns the
    /// scheme, drops the stale token (and the credential, when `sent` was
    /// made of it) and returns the header for one retry. `None` means there
    /// is nothing to retry with.
    pub async fn on_unauthorized(
        &self,
        target: &AuthTarget<'_>,
        www_authenticate: &str,
        sent: Option<&str>,
    ) -> Result<Option<String>> {
        match sent.filter(|s| s.starts_with("Basic ")) {
            Some(sent) => self.credentials.refused(target.host, |c| {
                matches!(c, Credential::Basic { username, password } if basic_value(username, password) == sent)
            }),
            None => self.credentials.forget_helper_answer(target.host),
        }
        let challenges = parse_www_authenticate(www_authenticate);
        let bearer = challenges.iter().find_map(|c| match c {
            Challenge::Bearer {
                realm,
                service,
                scope,
            } => Some((realm.clone(), service.clone(), scope.clone())),
            Challenge::Basic => None,
        });
        if let Some((realm, service, scope)) = bearer {
            if let Ok(mut s) = self.schemes.lock() {
                s.insert(
                    target.host.to_string(),
                    HostScheme::Bearer {
                        realm: realm.clone(),
                        service: service.clone(),
                    },
                );
            }
            return self
                .bearer_header(target, &realm, service.as_deref(), scope.as_deref(), true)
                .await
                .map(Some);
        }
        if challenges.contains(&Challenge::Basic) {
            if let Ok(mut s) = self.schemes.lock() {
                s.insert(target.host.to_string(), HostScheme::Basic);
            }
            return self.basic_header(target).await;
        }
        Ok(None)
    }

    async fn credential(&self, host: &str) -> Result<Option<Credential>> {
        self.credentials.lookup(host).await
    }

    /// The error for a request the registry still refuses, last sent with
    /// the header `sent`: credentials refused, or none known for the host.
    pub async fn refusal(&self, target: &AuthTarget<'_>, sent: Option<&str>) -> RegistryError {
        let sent_credential = sent.is_some_and(|s| s.starts_with("Basic "));
        match self.credential(target.host).await {
            Ok(None) if !sent_credential => RegistryError::NoCredentials {
                host: target.host.to_string(),
                repository: target.repository.to_string(),
            },
            _ => RegistryError::Unauthorized {
                host: target.host.to_string(),
                repository: target.repository.to_string(),
            },
        }
    }

    async fn basic_header(&self, target: &AuthTarget<'_>) -> Result<Option<String>> {
        match self.credential(target.host).await? {
            Some(Credential::Basic { username, password }) => {
                Ok(Some(basic_value(&username, &password)))
            }
            _ => Ok(None),
        }
    }

    async fn bearer_header(
        &self,
        target: &AuthTarget<'_>,
        realm: &str,
        service: Option<&str>,
        challenge_scope: Option<&str>,
        force_refresh: bool,
    ) -> Result<String> {
        let key = (target.host.to_string(), target.scope.to_string());
        let mut tokens = self.tokens.lock().await;
        if !force_refresh
            && let Some(t) = tokens.get(&key)
            && t.valid_until > Instant::now()
        {
            return Ok(format!("Bearer {}", t.token.expose()));
        }
        tokens.remove(&key);
        let fetched = self
            .fetch_token(target, realm, service, challenge_scope)
            .await?;
        let header = format!("Bearer {}", fetched.token.expose());
        tokens.insert(key, fetched);
        Ok(header)
    }

    async fn fetch_token(
        &self,
        target: &AuthTarget<'_>,
        realm: &str,
        service: Option<&str>,
        challenge_scope: Option<&str>,
    ) -> Result<CachedToken> {
        let realm_url = reqwest::Url::parse(realm).map_err(|_| RegistryError::Protocol {
            host: target.host.to_string(),
            reason: "token realm is not a URL".into(),
        })?;
        let realm_host = realm_url.host_str().unwrap_or_default().to_string();
        let http_ok = realm_url.scheme() == "https"
            || (realm_url.scheme() == "http"
                && (target.plain_http || is_loopback_host(&realm_host)));
        if !http_ok {
            return Err(RegistryError::Protocol {
                host: target.host.to_string(),
                reason: format!(
                    "refusing token realm with scheme {:?} on {realm_host}",
                    realm_url.scheme()
                ),
            });
        }
        let mut scopes = vec![target.scope.to_string()];
        if let Some(s) = challenge_scope.filter(|s| *s != target.scope && !s.is_empty()) {
            scopes.push(s.to_string());
        }
        let credential = self.credential(target.host).await?;
        let mut params: Vec<(&str, &str)> = Vec::new();
        if let Some(s) = service {
            params.push(("service", s));
        }
        for s in &scopes {
            params.push(("scope", s));
        }
        let request = match &credential {
            Some(Credential::IdentityToken(refresh)) => {
                params.extend([
                    ("grant_type", "refresh_token"),
                    ("refresh_token", refresh.expose()),
                    ("client_id", "rstargz"),
                ]);
                target.client.post(realm_url).form(&params)
            }
            Some(Credential::Basic { username, password }) => {
                target.client.get(realm_url).query(&params).header(
                    reqwest::header::AUTHORIZATION,
                    basic_value(username, password),
                )
            }
            None => target.client.get(realm_url).query(&params),
        };
        let unreachable = |e: reqwest::Error| {
            if e.is_timeout() {
                RegistryError::Timeout {
                    host: realm_host.clone(),
                }
            } else {
                RegistryError::Unreachable {
                    host: realm_host.clone(),
                    reason: describe_transport_error(e),
                }
            }
        };
        let response = request
            .timeout(self.timeout)
            .send()
            .await
            .map_err(unreachable)?;
        let status = response.status();
        if status == reqwest::StatusCode::UNAUTHORIZED
            && let Some(sent) = &credential
        {
            self.credentials.refused(target.host, |c| c == sent);
        }
        if status == reqwest::StatusCode::UNAUTHORIZED || status == reqwest::StatusCode::FORBIDDEN {
            return Err(match credential {
                None => RegistryError::NoCredentials {
                    host: target.host.to_string(),
                    repository: target.repository.to_string(),
                },
                Some(_) => RegistryError::Unauthorized {
                    host: target.host.to_string(),
                    repository: target.repository.to_string(),
                },
            });
        }
        if !status.is_success() {
            return Err(RegistryError::Status {
                host: realm_host,
                path: String::new(),
                status: status.as_u16(),
            });
        }
        // Read with a cap: a hostile token server can send a body without end.
        let body = read_response_limited(response, MAX_TOKEN_RESPONSE, |_| {}).await?;
        let parsed: TokenResponse =
            serde_json::from_slice(&body).map_err(|_| RegistryError::Protocol {
                host: realm_host.clone(),
                reason: "token response is not JSON".into(),
            })?;
        let token = parsed
            .token
            .or(parsed.access_token)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| RegistryError::Protocol {
                host: realm_host,
                reason: "token response has no token".into(),
            })?;
        // The spec's default lifetime is 60 s; renew a little early.
        let lifetime = Duration::from_secs(parsed.expires_in.unwrap_or(60).max(1));
        let margin = (lifetime / 2).min(Duration::from_secs(10));
        Ok(CachedToken {
            token: Secret::new(token),
            valid_until: Instant::now() + lifetime - margin,
        })
    }
}

fn basic_value(username: &str, password: &Secret) -> String {
    let raw = format!("{username}:{}", password.expose());
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(raw)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_docker_hub_challenge() {
        let c = parse_www_authenticate(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/ubuntu:pull""#,
        );
        assert_eq!(
            c,
            vec![Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into()),
                scope: Some("repository:library/ubuntu:pull".into()),
            }]
        );
    }

    #[test]
    fn parses_basic_multiple_and_odd_spacing() {
        assert_eq!(
            parse_www_authenticate(r#"Basic realm="Registry Realm""#),
            vec![Challenge::Basic]
        );
        let c = parse_www_authenticate(
            r#"Basic realm="a, b", Bearer realm = "http://x/t" , scope="a:b:pull,push""#,
        );
        assert_eq!(c.len(), 2);
        assert!(matches!(&c[1], Challenge::Bearer { scope: Some(s), .. } if s == "a:b:pull,push"));
        let c = parse_www_authenticate(r#"bearer realm=http://x/t,service=svc"#);
        assert!(matches!(&c[0], Challenge::Bearer { service: Some(s), .. } if s == "svc"));
        let c = parse_www_authenticate(r#"Bearer realm="with \"quote\"""#);
        assert!(matches!(&c[0], Challenge::Bearer { realm, .. } if realm == "with \"quote\""));
    }

    #[test]
    fn hostile_headers_do_not_panic() {
        for h in [
            "",
            "Bearer",
            "Bearer realm",
            "Bearer realm=\"unterminated",
            "=,=,=",
            "Negotiate abc==",
            ",,,,",
        ] {
            let c = parse_www_authenticate(h);
            assert!(
                c.iter()
                    .all(|c| !matches!(c, Challenge::Bearer { realm, .. } if realm.is_empty()))
            );
        }
        assert!(parse_www_authenticate("Bearer service=x").is_empty());
    }
}
