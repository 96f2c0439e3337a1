//! HTTP plumbing shared by the request loop ([`super::client`]), the token
//! exchange ([`super::auth`]) and the readers and writers of blobs: a
//! response with its concurrency slot, header helpers, and body reads
//! bounded by a byte limit.

use bytes::{Bytes, BytesMut};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};

use super::error::{RegistryError, Result, describe_transport_error};
use super::hosts::RegistryHost;
use super::metrics::FetchMetrics;
use crate::priority_gate::GatePermit;
use crate::purpose::Purpose;

/// A response together with the concurrency slot it occupies.
pub(crate) struct GatedResponse {
    pub response: reqwest::Response,
    pub purpose: Purpose,
    pub _permit: GatePermit,
}

/// A response header as text, if present and printable.
pub(crate) fn header_str(response: &reqwest::Response, name: HeaderName) -> Option<&str> {
    response.headers().get(name).and_then(|v| v.to_str().ok())
}

/// The extra headers `hosts.toml` sets for `host` (invalid ones are skipped).
pub(crate) fn configured_headers(host: &RegistryHost) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (k, v) in &host.headers {
        if let (Ok(k), Ok(v)) = (
            HeaderName::from_bytes(k.as_bytes()),
            HeaderValue::from_str(v),
        ) {
            map.append(k, v);
        }
    }
    map
}

/// Reads a response body, failing as soon as it would exceed `limit` bytes
/// (checked against Content-Length first, then while streaming).
pub(crate) async fn read_body_limited(
    gated: GatedResponse,
    limit: u64,
    metrics: &FetchMetrics,
) -> Result<Bytes> {
    let GatedResponse {
        response,
        purpose,
        _permit,
    } = gated;
    read_response_limited(response, limit, |n| metrics.bytes(purpose, n)).await
}

/// Like [`read_body_limited`] for any response; `received` sees each piece's length.
pub(crate) async fn read_response_limited(
    mut response: reqwest::Response,
    limit: u64,
    mut received: impl FnMut(u64),
) -> Result<Bytes> {
    let host = response.url().host_str().unwrap_or_default().to_string();
    let too_large = |host: String| RegistryError::Protocol {
        host,
        reason: format!("response body larger than the expected {limit} bytes"),
    };
    if response.content_length().is_some_and(|l| l > limit) {
        return Err(too_large(host));
    }
    let mut buf =
        BytesMut::with_capacity(response.content_length().unwrap_or(0).min(limit) as usize);
    loop {
        let chunk = response.chunk().await.map_err(|e| {
            if e.is_timeout() {
                RegistryError::Timeout { host: host.clone() }
            } else {
                RegistryError::Unreachable {
                    host: host.clone(),
                    reason: describe_transport_error(e),
                }
            }
        })?;
        let Some(chunk) = chunk else { break };
        received(chunk.len() as u64);
        if buf.len() as u64 + chunk.len() as u64 > limit {
            return Err(too_large(host));
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}
