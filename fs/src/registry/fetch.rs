//! Reading byte ranges of one blob: [`BlobFetcher`].
//!
//! Contract:
//! - Requested ranges are merged when closer than `merge_gap`, split into
//!   pieces of at most `max_request_bytes`, sent as parallel multi-range
//!   requests (at most `max_ranges_per_request` ranges and
//!   `max_request_bytes` each), and cut back to exactly what was asked for.
//! - A registry that rejects multi-range (400/416), does not answer with
//!   `multipart/byteranges`, or ignores Range (200) flips the fetcher into
//!   single-range mode for good. A 200 is never read: the response is dropped
//!   at once. If even a single range gets a 200 the fetch fails with
//!   `RangeUnsupported`, so a whole layer is never downloaded by accident.
//! - Redirects are followed by hand; the final URL is cached per blob and
//!   dropped (falling back to the registry) when it fails, e.g. an expired
//!   presigned URL answering 403.
//! - When an endpoint fails, the next configured endpoint is tried.
//! - A response that breaks off or comes up short after a good status line
//!   (reset mid-body, short body, timeout while streaming) is asked for
//!   again with backoff: the request loop in `client` only retries failures
//!   before the status line.

use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use reqwest::{StatusCode, Url};

use super::client::{Registry, RegistryInner, RequestSpec, pull_scope};
use super::error::{RegistryError, Result, redact_path};
use super::hosts::RegistryHost;
use super::http::{GatedResponse, header_str, read_body_limited};
use super::labels::LayerSource;
use super::multipart::{byteranges_boundary, parse_byteranges};
use super::oci_digest::OciDigest;
use super::ranges::{
    assemble, batch_ranges, merge_ranges, parse_content_range, range_header, split_ranges,
    total_len,
};
use super::reference::Reference;
use crate::purpose::Purpose;
use crate::urgency::Urgency;

/// Most redirects followed for one request.
const MAX_REDIRECTS: usize = 5;
/// Allowance for multipart framing per part, on top of the data.
const MULTIPART_OVERHEAD_PER_PART: u64 = 512;
/// Marks an unknown size in `FetcherInner::size`.
const SIZE_UNKNOWN: u64 = u64::MAX;

/// Reads ranges of one blob from the first working endpoint.
#[derive(Clone, Debug)]
pub struct BlobFetcher {
    inner: Arc<FetcherInner>,
}

#[derive(Debug)]
struct FetcherInner {
    registry: Arc<RegistryInner>,
    repository: String,
    registry_name: String,
    digest: OciDigest,
    hosts: Vec<RegistryHost>,
    current_host: AtomicUsize,
    redirect: Mutex<Option<Url>>,
    size: AtomicU64,
    single_range: AtomicBool,
}

/// Why one request could not deliver and what to do next.
enum Attempt {
    /// Retry the same ranges one by one.
    SingleRangeFallback,
    /// The body failed after a good status; asking again may work.
    Transient(RegistryError),
    /// Give up with this error.
    Failed(RegistryError),
}

impl From<RegistryError> for Attempt {
    fn from(e: RegistryError) -> Self {
        Self::Failed(e)
    }
}

impl Registry {
    /// Opens the layer that snapshot labels point at (see
    /// [`super::labels::layer_source_from_labels`]).
    pub async fn open_layer(&self, source: &LayerSource, size: Option<u64>) -> Result<BlobFetcher> {
        self.open_blob(&source.reference, &source.layer.digest, size)
            .await
    }

    /// Finds the first endpoint that serves `digest` of `reference` (with a
    /// 2-byte probe that also learns the size and any redirect) and returns a
    /// fetcher bound to it. `size` is the descriptor size when known.
    pub async fn open_blob(
        &self,
        reference: &Reference,
        digest: &OciDigest,
        size: Option<u64>,
    ) -> Result<BlobFetcher> {
        let hosts: Vec<RegistryHost> = self
            .hosts_for(reference)?
            .into_iter()
            .filter(|h| h.capabilities.pull)
            .collect();
        let fetcher = BlobFetcher {
            inner: Arc::new(FetcherInner {
                registry: self.inner.clone(),
                repository: reference.repository.clone(),
                registry_name: reference.registry.clone(),
                digest: digest.clone(),
                hosts,
                current_host: AtomicUsize::new(0),
                redirect: Mutex::new(None),
                size: AtomicU64::new(size.unwrap_or(SIZE_UNKNOWN)),
                single_range: AtomicBool::new(self.inner.config.force_single_range),
            }),
        };
        fetcher.connect_from(0).await?;
        Ok(fetcher)
    }
}

impl BlobFetcher {
    /// The blob's digest.
    pub fn digest(&self) -> &OciDigest {
        &self.inner.digest
    }

    /// The blob size, if known (from the descriptor or the probe).
    pub fn size(&self) -> Option<u64> {
        match self.inner.size.load(Ordering::Relaxed) {
            SIZE_UNKNOWN => None,
            s => Some(s),
        }
    }

    /// The endpoint currently used.
    pub fn current_host(&self) -> Option<&RegistryHost> {
        self.inner
            .hosts
            .get(self.inner.current_host.load(Ordering::Relaxed))
    }

    /// Whether the fetcher has given up on multi-range requests.
    pub fn is_single_range_mode(&self) -> bool {
        self.inner.single_range.load(Ordering::Relaxed)
    }

    /// Cheap connectivity check for Mounts/Check: a fresh 2-byte probe that
    /// re-resolves the redirect and refreshes auth, falling back to other
    /// endpoints if the current one fails.
    pub async fn check(&self) -> Result<()> {
        self.clear_redirect();
        let start = self.inner.current_host.load(Ordering::Relaxed);
        match self.probe(start).await {
            Ok(()) => Ok(()),
            Err(e) if e.is_host_failure() && self.inner.hosts.len() > 1 => {
                self.connect_from(0).await
            }
            Err(e) => Err(e),
        }
    }

    /// Fetches `ranges` and returns, for each requested range in order, the
    /// range and its bytes. Empty ranges yield empty buffers.
    pub async fn fetch_ranges(
        &self,
        ranges: &[Range<u64>],
        purpose: Purpose,
    ) -> Result<Vec<(Range<u64>, Bytes)>> {
        let size = self.size();
        if let Some(bad) = ranges
            .iter()
            .find(|r| r.start > r.end || size.is_some_and(|s| r.end > s))
        {
            return Err(RegistryError::RangeNotSatisfiable {
                host: self.host_name(),
                range: bad.clone(),
                size,
            });
        }
        let config = &self.inner.registry.config;
        let merged = split_ranges(
            &merge_ranges(ranges, config.merge_gap),
            config.max_request_bytes,
        );
        let mut segments = match self.fetch_merged(&merged, purpose).await {
            Ok(s) => s,
            Err(e) if e.is_host_failure() && self.inner.hosts.len() > 1 => {
                let failed = self.inner.current_host.load(Ordering::Relaxed);
                tracing::warn!(host = %self.host_name(), error = %e, "registry endpoint failed; trying the next");
                self.connect_from((failed + 1) % self.inner.hosts.len())
                    .await?;
                self.fetch_merged(&merged, purpose).await?
            }
            Err(e) => return Err(e),
        };
        segments.sort_by_key(|(r, _)| r.start);
        ranges
            .iter()
            .map(|r| {
                assemble(&segments, r)
                    .map(|b| (r.clone(), b))
                    .ok_or_else(|| self.protocol("response does not cover a requested range"))
            })
            .collect()
    }

    /// Tries endpoints from index `start` on (wrapping), keeping the first
    /// that answers the probe.
    async fn connect_from(&self, start: usize) -> Result<()> {
        let n = self.inner.hosts.len();
        let mut last = None;
        for i in 0..n {
            let idx = (start + i) % n;
            self.clear_redirect();
            match self.probe(idx).await {
                Ok(()) => {
                    self.inner.current_host.store(idx, Ordering::Relaxed);
                    return Ok(());
                }
                Err(e) if e.is_host_failure() => {
                    tracing::debug!(host = %self.inner.hosts[idx].host, error = %e, "registry endpoint unusable");
                    last = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(match last {
            Some(e) if n == 1 => e,
            Some(e) => RegistryError::AllHostsFailed {
                tried: n,
                last: Box::new(e),
            },
            None => RegistryError::HostsConfig {
                path: self.inner.registry_name.clone(),
                reason: "no endpoint with the pull capability".into(),
            },
        })
    }

    /// `GET Range: bytes=0-1` against endpoint `idx`; learns the size.
    async fn probe(&self, idx: usize) -> Result<()> {
        match self.retrying(|| self.probe_once(idx)).await {
            Ok(()) => Ok(()),
            Err(Attempt::Failed(e) | Attempt::Transient(e)) => Err(e),
            Err(Attempt::SingleRangeFallback) => Err(self.protocol("unusable probe answer")),
        }
    }

    async fn probe_once(&self, idx: usize) -> Result<(), Attempt> {
        let resp = self.get(idx, "bytes=0-1", Purpose::OnDemand).await?;
        let status = resp.response.status();
        match status {
            StatusCode::PARTIAL_CONTENT => {
                let (_, total) = self.content_range(&resp)?;
                if let Some(total) = total {
                    self.inner.size.store(total, Ordering::Relaxed);
                }
                read_body_limited(resp, 2, &self.inner.registry.metrics)
                    .await
                    .map_err(Attempt::Transient)?;
                Ok(())
            }
            // A tiny blob may legitimately come back whole.
            StatusCode::OK if resp.response.content_length().is_some_and(|l| l <= 2) => {
                if let Some(l) = resp.response.content_length() {
                    self.inner.size.store(l, Ordering::Relaxed);
                }
                Ok(())
            }
            StatusCode::OK => {
                self.inner.registry.metrics.full_body_abort();
                Err(Attempt::Failed(RegistryError::RangeUnsupported {
                    host: self.inner.hosts[idx].host.clone(),
                }))
            }
            StatusCode::RANGE_NOT_SATISFIABLE => {
                // An empty blob cannot satisfy bytes=0-1.
                self.inner.size.store(0, Ordering::Relaxed);
                Ok(())
            }
            s => Err(Attempt::Failed(self.status_error(&resp.response, s))),
        }
    }

    async fn fetch_merged(
        &self,
        merged: &[Range<u64>],
        purpose: Purpose,
    ) -> Result<Vec<(Range<u64>, Bytes)>> {
        let config = &self.inner.registry.config;
        let mut tasks = tokio::task::JoinSet::new();
        for batch in batch_ranges(
            merged,
            config.max_ranges_per_request,
            config.max_request_bytes,
        ) {
            let this = self.clone();
            // Inherit a waiting reader's raise (see `urgency`).
            tasks.spawn(Urgency::inherit(async move {
                this.fetch_batch(batch, purpose).await
            }));
        }
        let mut out = Vec::with_capacity(merged.len());
        while let Some(joined) = tasks.join_next().await {
            let parts = joined.map_err(|e| self.protocol(&format!("fetch task failed: {e}")))??;
            out.extend(parts);
        }
        Ok(out)
    }

    async fn fetch_batch(
        &self,
        batch: Vec<Range<u64>>,
        purpose: Purpose,
    ) -> Result<Vec<(Range<u64>, Bytes)>> {
        if batch.len() > 1 && !self.is_single_range_mode() {
            match self.request_retrying(&batch, purpose).await {
                Ok(parts) => return Ok(parts),
                Err(Attempt::SingleRangeFallback) => {
                    if !self.inner.single_range.swap(true, Ordering::Relaxed) {
                        self.inner.registry.metrics.single_range_fallback();
                        tracing::info!(host = %self.host_name(), "registry does not serve multi-range requests; using single ranges");
                    }
                }
                Err(Attempt::Failed(e) | Attempt::Transient(e)) => return Err(e),
            }
        }
        let mut tasks = tokio::task::JoinSet::new();
        for r in batch {
            let this = self.clone();
            tasks.spawn(Urgency::inherit(async move {
                match this
                    .request_retrying(std::slice::from_ref(&r), purpose)
                    .await
                {
                    Ok(parts) => Ok(parts),
                    Err(Attempt::Failed(e) | Attempt::Transient(e)) => Err(e),
                    Err(Attempt::SingleRangeFallback) => Err(RegistryError::RangeUnsupported {
                        host: this.host_name(),
                    }),
                }
            }));
        }
        let mut out = Vec::new();
        while let Some(joined) = tasks.join_next().await {
            out.extend(joined.map_err(|e| self.protocol(&format!("fetch task failed: {e}")))??);
        }
        Ok(out)
    }

    /// [`Self::request`], asked again with backoff while its body fails.
    async fn request_retrying(
        &self,
        ranges: &[Range<u64>],
        purpose: Purpose,
    ) -> Result<Vec<(Range<u64>, Bytes)>, Attempt> {
        self.retrying(|| self.request(ranges, purpose)).await
    }

    /// Runs `once` again with backoff while it fails with [`Attempt::Transient`].
    async fn retrying<T, F>(&self, mut once: impl FnMut() -> F) -> Result<T, Attempt>
    where
        F: std::future::Future<Output = Result<T, Attempt>>,
    {
        let registry = &self.inner.registry;
        let backoff = registry.config.backoff;
        let mut attempt = 0;
        loop {
            match once().await {
                Err(Attempt::Transient(e)) if attempt < backoff.max_retries => {
                    tracing::debug!(host = %self.host_name(), attempt, error = %e, "response body failed; asking again");
                    registry.metrics.retry();
                    tokio::time::sleep(backoff.delay(attempt, None)).await;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    /// One GET for `ranges`; interprets the status and body.
    async fn request(
        &self,
        ranges: &[Range<u64>],
        purpose: Purpose,
    ) -> Result<Vec<(Range<u64>, Bytes)>, Attempt> {
        let idx = self.inner.current_host.load(Ordering::Relaxed);
        let multi = ranges.len() > 1;
        let header = range_header(ranges);
        tracing::debug!(blob = %self.inner.digest, range = %header, ?purpose, "registry range request");
        let resp = self.get(idx, &header, purpose).await?;
        let metrics = &self.inner.registry.metrics;
        let whole_blob = !multi
            && ranges[0].start == 0
            && self.size().is_some_and(|s| s == ranges[0].end)
            && resp.response.content_length() == self.size();
        match resp.response.status() {
            StatusCode::PARTIAL_CONTENT => {}
            // Asking for every byte and getting every byte is fine.
            StatusCode::OK if whole_blob => {
                let body = read_body_limited(resp, ranges[0].end, metrics)
                    .await
                    .map_err(Attempt::Transient)?;
                if body.len() as u64 != ranges[0].end {
                    return Err(Attempt::Transient(
                        self.protocol("body shorter than the blob"),
                    ));
                }
                return Ok(vec![(ranges[0].clone(), body)]);
            }
            StatusCode::OK => {
                // The server ignored Range: drop the response unread.
                drop(resp);
                metrics.full_body_abort();
                return Err(if multi {
                    Attempt::SingleRangeFallback
                } else {
                    Attempt::Failed(RegistryError::RangeUnsupported {
                        host: self.host_name(),
                    })
                });
            }
            StatusCode::BAD_REQUEST | StatusCode::RANGE_NOT_SATISFIABLE if multi => {
                return Err(Attempt::SingleRangeFallback);
            }
            StatusCode::RANGE_NOT_SATISFIABLE => {
                return Err(Attempt::Failed(RegistryError::RangeNotSatisfiable {
                    host: self.host_name(),
                    range: ranges[0].clone(),
                    size: self.size(),
                }));
            }
            s => return Err(Attempt::Failed(self.status_error(&resp.response, s))),
        }
        let content_type = header_str(&resp.response, reqwest::header::CONTENT_TYPE)
            .unwrap_or_default()
            .to_string();
        let wanted = total_len(ranges);
        let parts: Vec<(Range<u64>, Bytes)> = if let Some(boundary) =
            byteranges_boundary(&content_type)
        {
            let limit = wanted + MULTIPART_OVERHEAD_PER_PART * (ranges.len() as u64 + 1);
            let body = read_body_limited(resp, limit, metrics)
                .await
                .map_err(Attempt::Transient)?;
            let parsed = match parse_byteranges(&body, &boundary, ranges.len()) {
                Ok(p) => p,
                Err(e) if multi => {
                    tracing::info!(host = %self.host_name(), error = %e, "unusable multipart answer");
                    return Err(Attempt::SingleRangeFallback);
                }
                Err(e) => return Err(Attempt::Transient(self.protocol(&e.to_string()))),
            };
            parsed
                .into_iter()
                .map(|p| (p.range, body.slice(p.body_span)))
                .collect()
        } else {
            let (range, total) = self.content_range(&resp)?;
            if let Some(total) = total {
                self.inner.size.store(total, Ordering::Relaxed);
            }
            let len = range.end - range.start;
            // A single part for a multi-range request is only useful if it
            // is small; a server that coalesces to a huge span is treated as
            // lacking multi-range support.
            if len > wanted + self.inner.registry.config.merge_gap * ranges.len() as u64 {
                drop(resp);
                metrics.full_body_abort();
                return Err(if multi {
                    Attempt::SingleRangeFallback
                } else {
                    Attempt::Failed(self.protocol("Content-Range larger than requested"))
                });
            }
            let body = read_body_limited(resp, len, metrics)
                .await
                .map_err(Attempt::Transient)?;
            if body.len() as u64 != len {
                return Err(Attempt::Transient(
                    self.protocol("body shorter than Content-Range"),
                ));
            }
            vec![(range, body)]
        };
        for r in ranges {
            if !parts
                .iter()
                .any(|(p, _)| p.start <= r.start && r.end <= p.end)
            {
                return Err(if multi {
                    Attempt::SingleRangeFallback
                } else {
                    Attempt::Failed(self.protocol("response does not cover the requested range"))
                });
            }
        }
        Ok(parts)
    }

    /// GET the blob with a Range header on endpoint `idx`, through the
    /// cached redirect if there is one, following new redirects by hand.
    async fn get(&self, idx: usize, range: &str, purpose: Purpose) -> Result<GatedResponse> {
        let host = &self.inner.hosts[idx];
        let registry = &self.inner.registry;
        let scope = pull_scope(&self.inner.repository);
        let timeout = registry.config.fetch_timeout;
        let spec = |authorize| RequestSpec {
            host,
            repository: &self.inner.repository,
            scope: &scope,
            authorize,
            idempotent: true,
            purpose,
            timeout,
        };
        let cached = self.inner.redirect.lock().ok().and_then(|r| r.clone());
        if let Some(url) = cached {
            match registry
                .execute(&spec(false), |c| c.get(url.clone()).header("Range", range))
                .await
            {
                Ok(r) if r.response.status().is_success() || r.response.status() == 416 => {
                    return Ok(r);
                }
                Ok(r) => {
                    tracing::debug!(status = %r.response.status(), "cached redirect failed; asking the registry again")
                }
                Err(e) => {
                    tracing::debug!(error = %e, "cached redirect failed; asking the registry again")
                }
            }
            self.clear_redirect();
        }
        let mut url = self.blob_url(host)?;
        let mut authorize = true;
        for hop in 0..=MAX_REDIRECTS {
            let target = url.clone();
            let resp = registry
                .execute(&spec(authorize), |c| {
                    c.get(target.clone()).header("Range", range)
                })
                .await?;
            if !resp.response.status().is_redirection() {
                if hop > 0
                    && resp.response.status().is_success()
                    && let Ok(mut r) = self.inner.redirect.lock()
                {
                    *r = Some(url);
                }
                return Ok(resp);
            }
            let location = header_str(&resp.response, reqwest::header::LOCATION)
                .and_then(|l| url.join(l).ok())
                .ok_or_else(|| self.protocol("redirect without a usable Location"))?;
            if !matches!(location.scheme(), "http" | "https") {
                return Err(self.protocol("redirect to a non-HTTP URL"));
            }
            registry.metrics.redirect();
            // Credentials stay with the registry: presigned targets carry
            // their own authorisation and reject extra headers.
            authorize =
                authorize && location.host_str() == url.host_str() && location.port() == url.port();
            url = location;
        }
        Err(self.protocol("too many redirects"))
    }

    fn blob_url(&self, host: &RegistryHost) -> Result<Url> {
        let mut s = format!(
            "{}/{}/blobs/{}",
            host.api_root(),
            self.inner.repository,
            self.inner.digest
        );
        if host.is_mirror {
            s.push_str("?ns=");
            s.push_str(&self.inner.registry_name);
        }
        Url::parse(&s).map_err(|_| RegistryError::HostsConfig {
            path: host.host.clone(),
            reason: "endpoint does not form a valid URL".into(),
        })
    }

    fn content_range(&self, resp: &GatedResponse) -> Result<(Range<u64>, Option<u64>)> {
        header_str(&resp.response, reqwest::header::CONTENT_RANGE)
            .and_then(parse_content_range)
            .ok_or_else(|| self.protocol("206 without a valid Content-Range"))
    }

    fn status_error(&self, response: &reqwest::Response, status: StatusCode) -> RegistryError {
        let host = response.url().host_str().unwrap_or_default().to_string();
        let path = redact_path(response.url());
        match status {
            StatusCode::NOT_FOUND => RegistryError::NotFound {
                host,
                what: format!("blob {} in {}", self.inner.digest, self.inner.repository),
            },
            StatusCode::FORBIDDEN => RegistryError::Forbidden { host, path },
            StatusCode::UNAUTHORIZED => RegistryError::Unauthorized {
                host,
                repository: self.inner.repository.clone(),
            },
            s => RegistryError::Status {
                host,
                path,
                status: s.as_u16(),
            },
        }
    }

    fn clear_redirect(&self) {
        if let Ok(mut r) = self.inner.redirect.lock() {
            *r = None;
        }
    }

    fn host_name(&self) -> String {
        self.current_host()
            .map(|h| h.host.clone())
            .unwrap_or_default()
    }

    fn protocol(&self, reason: &str) -> RegistryError {
        RegistryError::Protocol {
            host: self.host_name(),
            reason: reason.to_string(),
        }
    }
}
