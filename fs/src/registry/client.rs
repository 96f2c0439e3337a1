//! The public facade [`Registry`]: configuration, HTTP clients per TLS
//! setting, the authorizer, per-endpoint priority gates and metrics, plus
//! the one request loop every call goes through (auth header, 401 → fresh
//! credentials, retries with backoff for idempotent requests, per-attempt
//! timeout).
//!
//! Redirects are never followed by reqwest; callers that expect them
//! (blob reads) follow them themselves so the target can be cached.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::auth::{AuthTarget, Authorizer};
use super::credentials::{CredentialStore, default_docker_config_path};
use super::error::{RegistryError, Result, describe_transport_error};
use super::hedge::{self, Latency};
use super::hosts::{HostsConfig, RegistryHost, Scheme, resolve_hosts};
use super::http::{GatedResponse, configured_headers, header_str};
use super::keychain::Keychain;
use super::metrics::{FetchMetrics, MetricsSnapshot};
use super::reference::Reference;
use super::retry::{Backoff, parse_retry_after, retryable_status};
use super::tls::{ClientCertificate, explain_refusal, load_ca_bundle, load_identity};
use crate::priority_gate::PriorityGate;
use crate::purpose::Purpose;
use crate::urgency::Urgency;

/// Settings of the registry reader.
#[derive(Clone, Debug)]
pub struct RegistryConfig {
    /// Endpoints: mirrors, hosts.toml directory, insecure hosts.
    pub hosts: HostsConfig,
    /// docker config.json; None means `$DOCKER_CONFIG` or `~/.docker`.
    pub docker_config: Option<PathBuf>,
    /// Extra directories searched for `docker-credential-*` helpers.
    pub credential_helper_dirs: Vec<PathBuf>,
    /// Credentials handed in at run time (CRI), looked up before the docker
    /// config.
    pub keychain: Keychain,
    /// Timeout of one small request (probe, token, manifest).
    pub request_timeout: Duration,
    /// Timeout of one range request including its body.
    pub fetch_timeout: Duration,
    /// TCP/TLS connect timeout.
    pub connect_timeout: Duration,
    /// Retry policy.
    pub backoff: Backoff,
    /// Concurrent requests per endpoint.
    pub max_concurrency_per_host: usize,
    /// Ranges closer than this are fetched as one.
    pub merge_gap: u64,
    /// Most ranges in one multi-range request.
    pub max_ranges_per_request: usize,
    /// Largest body of one request: longer reads are split into parallel
    /// requests, which also bounds the memory one response can take.
    pub max_request_bytes: u64,
    /// Never send multi-range requests.
    pub force_single_range: bool,
    /// An on-demand request without an answer after four times the usual
    /// latency, and at least this long, is sent a second time and the first
    /// answer wins (None: never).
    pub hedge_after_min: Option<Duration>,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        Self {
            hosts: HostsConfig::default(),
            docker_config: None,
            credential_helper_dirs: Vec::new(),
            keychain: Keychain::default(),
            request_timeout: Duration::from_secs(30),
            fetch_timeout: Duration::from_secs(300),
            connect_timeout: Duration::from_secs(10),
            backoff: Backoff::default(),
            max_concurrency_per_host: 8,
            merge_gap: 64 * 1024,
            max_ranges_per_request: 64,
            max_request_bytes: 4 << 20,
            force_single_range: false,
            hedge_after_min: Some(Duration::from_millis(200)),
        }
    }
}

/// Entry point for reading from (and pushing to) OCI registries.
#[derive(Clone, Debug)]
pub struct Registry {
    pub(crate) inner: Arc<RegistryInner>,
}

/// What tells one endpoint's HTTP client from another's.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
struct TlsKey {
    skip_verify: bool,
    ca_files: Vec<PathBuf>,
    client_cert: Option<ClientCertificate>,
}

#[derive(Debug)]
pub(crate) struct RegistryInner {
    pub(crate) config: RegistryConfig,
    authorizer: Authorizer,
    clients: Mutex<HashMap<TlsKey, reqwest::Client>>,
    gates: Mutex<HashMap<String, Arc<PriorityGate>>>,
    pub(crate) metrics: FetchMetrics,
    latency: Latency,
}

/// Where and how one request is sent.
pub(crate) struct RequestSpec<'a> {
    /// The registry endpoint the request belongs to (gate, TLS, auth).
    pub host: &'a RegistryHost,
    /// Repository (auth scope and error messages).
    pub repository: &'a str,
    /// Token scope.
    pub scope: &'a str,
    /// Send the endpoint's Authorization and configured headers
    /// (false for redirect targets such as presigned URLs).
    pub authorize: bool,
    /// Retry on connection errors, 429 and 5xx.
    pub idempotent: bool,
    /// Priority and metrics bucket.
    pub purpose: Purpose,
    /// Per-attempt timeout, unless the endpoint sets its own.
    pub timeout: Duration,
}

impl Registry {
    /// Builds a registry reader; loads docker credentials now.
    pub fn new(config: RegistryConfig) -> Result<Self> {
        let credentials = match config
            .docker_config
            .clone()
            .or_else(default_docker_config_path)
        {
            Some(path) => CredentialStore::from_docker_config(&path)?,
            None => CredentialStore::anonymous(),
        }
        .with_helper_dirs(config.credential_helper_dirs.clone())
        .with_keychain(config.keychain.clone());
        let authorizer = Authorizer::new(credentials, config.request_timeout);
        let mut clients = HashMap::new();
        clients.insert(
            TlsKey::default(),
            build_client(&config, &TlsKey::default())?,
        );
        Ok(Self {
            inner: Arc::new(RegistryInner {
                config,
                authorizer,
                clients: Mutex::new(clients),
                gates: Mutex::new(HashMap::new()),
                metrics: FetchMetrics::default(),
                latency: Latency::default(),
            }),
        })
    }

    /// Endpoints for `reference`, in the order they are tried.
    pub fn hosts_for(&self, reference: &Reference) -> Result<Vec<RegistryHost>> {
        resolve_hosts(&self.inner.config.hosts, &reference.registry)
    }

    /// The run-time credentials (CRI) this registry looks up first.
    pub fn keychain(&self) -> &Keychain {
        &self.inner.config.keychain
    }

    /// Traffic counters.
    pub fn metrics(&self) -> MetricsSnapshot {
        self.inner.metrics.snapshot()
    }
}

fn build_client(config: &RegistryConfig, tls: &TlsKey) -> Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(config.connect_timeout)
        .pool_idle_timeout(Duration::from_secs(90))
        .danger_accept_invalid_certs(tls.skip_verify);
    for path in &tls.ca_files {
        for c in load_ca_bundle(path)? {
            builder = builder.add_root_certificate(c);
        }
    }
    if let Some(client) = &tls.client_cert {
        builder = builder.identity(load_identity(client)?);
    }
    builder.build().map_err(|e| RegistryError::HostsConfig {
        // With a client certificate, building fails when its key is
        // unusable or does not match it (rustls checks both).
        path: match &tls.client_cert {
            Some(c) => c.cert.display().to_string(),
            None => "TLS".into(),
        },
        reason: match &tls.client_cert {
            Some(_) => format!(
                "the client certificate or its key is unusable: {}",
                describe_transport_error(e)
            ),
            None => describe_transport_error(e),
        },
    })
}

/// Token scope for reading a repository.
pub(crate) fn pull_scope(repository: &str) -> String {
    format!("repository:{repository}:pull")
}

/// Token scope for writing a repository.
pub(crate) fn push_scope(repository: &str) -> String {
    format!("repository:{repository}:pull,push")
}

impl RegistryInner {
    fn client_for(&self, host: &RegistryHost) -> Result<reqwest::Client> {
        let key = TlsKey {
            skip_verify: host.skip_verify && host.scheme == Scheme::Https,
            ca_files: host.ca_files.clone(),
            client_cert: host.client_certs.first().cloned(),
        };
        if let Some(c) = self.clients.lock().ok().and_then(|m| m.get(&key).cloned()) {
            return Ok(c);
        }
        if host.client_certs.len() > 1 {
            // Go's TLS stack picks among several by the CAs the server
            // names; reqwest presents exactly one.
            tracing::warn!(host = %host.host, used = %host.client_certs[0].cert.display(), ignored = host.client_certs.len() - 1, "several client certificates configured; only the first is presented");
        }
        let client = build_client(&self.config, &key)?;
        if let Ok(mut m) = self.clients.lock() {
            m.insert(key, client.clone());
        }
        Ok(client)
    }

    fn gate_for(&self, host: &RegistryHost) -> Arc<PriorityGate> {
        let capacity = self.config.max_concurrency_per_host;
        match self.gates.lock() {
            Ok(mut m) => m
                .entry(host.host.clone())
                .or_insert_with(|| PriorityGate::new(capacity))
                .clone(),
            Err(_) => PriorityGate::new(capacity),
        }
    }

    /// Sends a request built by `build` (called once per attempt) and returns
    /// the first response that is neither retryable nor a 401 we could fix.
    pub(crate) async fn execute(
        &self,
        spec: &RequestSpec<'_>,
        build: impl Fn(&reqwest::Client) -> reqwest::RequestBuilder,
    ) -> Result<GatedResponse> {
        let client = self.client_for(spec.host)?;
        let gate = self.gate_for(spec.host);
        let target = AuthTarget {
            client: &client,
            host: &spec.host.host,
            repository: spec.repository,
            scope: spec.scope,
            plain_http: spec.host.scheme == Scheme::Http,
        };
        let host_name = spec.host.host.clone();
        let mut auth_override: Option<String> = None;
        let mut sent_auth: Option<String> = None;
        let mut auth_refreshes = 0u32;
        let mut attempt = 0u32;
        let timeout = spec.host.request_timeout.resolve(spec.timeout);
        loop {
            let permit = gate
                .acquire_raisable(spec.purpose, Urgency::current().as_ref())
                .await;
            let mut request = build(&client).header(reqwest::header::ACCEPT_ENCODING, "identity");
            if let Some(t) = timeout {
                request = request.timeout(t);
            }
            if spec.authorize {
                request = request.headers(configured_headers(spec.host));
                let auth = match &auth_override {
                    Some(a) => Some(a.clone()),
                    None => self.authorizer.header(&target).await?,
                };
                if let Some(a) = &auth {
                    request = request.header(reqwest::header::AUTHORIZATION, a);
                }
                sent_auth = auth;
            }
            self.metrics.request(spec.purpose);
            let hedge_after = self
                .config
                .hedge_after_min
                .filter(|_| spec.idempotent && spec.purpose.is_urgent())
                .map(|floor| {
                    self.latency
                        .hedge_after(floor, timeout.unwrap_or(spec.timeout) / 2)
                });
            let sent = std::time::Instant::now();
            let outcome = hedge::send(request, hedge_after, || {
                self.metrics.request(spec.purpose);
                self.metrics.hedge();
            })
            .await;
            if outcome.is_ok() {
                self.latency.record(sent.elapsed());
            }
            let retry_after;
            match outcome {
                Err(e) => {
                    let err = if e.is_timeout() {
                        RegistryError::Timeout {
                            host: host_name.clone(),
                        }
                    } else {
                        RegistryError::Unreachable {
                            host: host_name.clone(),
                            reason: explain_refusal(
                                describe_transport_error(e),
                                &spec.host.client_certs,
                            ),
                        }
                    };
                    if !spec.idempotent || attempt >= self.config.backoff.max_retries {
                        return Err(err);
                    }
                    tracing::debug!(host = %host_name, attempt, error = %err, "retrying registry request");
                    retry_after = None;
                }
                Ok(response) => {
                    let status = response.status().as_u16();
                    if status == 401 && spec.authorize {
                        // A token can expire or be revoked between any two
                        // requests, so a 401 is retried as long as the
                        // authorizer comes up with a different header;
                        // the same one refused twice (basic auth) is final.
                        if auth_refreshes > self.config.backoff.max_retries {
                            return Err(self
                                .authorizer
                                .refusal(&target, sent_auth.as_deref())
                                .await);
                        }
                        auth_refreshes += 1;
                        let challenge = response
                            .headers()
                            .get_all(reqwest::header::WWW_AUTHENTICATE)
                            .iter()
                            .filter_map(|v| v.to_str().ok())
                            .collect::<Vec<_>>()
                            .join(", ");
                        drop(response);
                        drop(permit);
                        let retry = self
                            .authorizer
                            .on_unauthorized(&target, &challenge, sent_auth.as_deref())
                            .await?;
                        match retry {
                            Some(header) if sent_auth.as_ref() != Some(&header) => {
                                auth_override = Some(header);
                                continue;
                            }
                            _ => {
                                return Err(self
                                    .authorizer
                                    .refusal(&target, sent_auth.as_deref())
                                    .await);
                            }
                        }
                    }
                    if !(spec.idempotent
                        && retryable_status(status)
                        && attempt < self.config.backoff.max_retries)
                    {
                        return Ok(GatedResponse {
                            response,
                            purpose: spec.purpose,
                            _permit: permit,
                        });
                    }
                    retry_after = header_str(&response, reqwest::header::RETRY_AFTER)
                        .and_then(parse_retry_after);
                    tracing::debug!(host = %host_name, attempt, status, "retrying registry request");
                }
            }
            drop(permit);
            self.metrics.retry();
            tokio::time::sleep(self.config.backoff.delay(attempt, retry_after)).await;
            attempt += 1;
        }
    }
}
