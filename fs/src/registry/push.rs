//! Uploading blobs: `HEAD` to skip what exists, then a monolithic upload
//! (`POST /blobs/uploads/` → `PUT <location>?digest=`). Used by tests now
//! and by the image converter later.

use bytes::Bytes;
use reqwest::{StatusCode, Url};

use super::client::{Registry, RequestSpec, push_scope};
use super::error::{RegistryError, Result, redact_path};
use super::hosts::RegistryHost;
use super::http::{header_str, read_body_limited};
use super::oci_digest::OciDigest;
use super::reference::Reference;
use crate::purpose::Purpose;

impl Registry {
    /// The first endpoint of `reference` that accepts pushes.
    pub(crate) fn push_host(&self, reference: &Reference) -> Result<RegistryHost> {
        self.hosts_for(reference)?
            .into_iter()
            .rev()
            .find(|h| h.capabilities.push)
            .ok_or_else(|| RegistryError::HostsConfig {
                path: reference.registry.clone(),
                reason: "no endpoint with the push capability".into(),
            })
    }

    /// The blob's size if the registry has it (HEAD), None if not.
    pub async fn blob_exists(
        &self,
        reference: &Reference,
        digest: &OciDigest,
    ) -> Result<Option<u64>> {
        let host = self.push_host(reference)?;
        let scope = push_scope(&reference.repository);
        let url = endpoint_url(&host, &format!("{}/blobs/{digest}", reference.repository))?;
        let spec = spec(&host, reference, &scope, true);
        let resp = self.inner.execute(&spec, |c| c.head(url.clone())).await?;
        match resp.response.status() {
            // reqwest reports a zero body length for HEAD; read the header itself.
            s if s.is_success() => Ok(Some(
                header_str(&resp.response, reqwest::header::CONTENT_LENGTH)
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0),
            )),
            StatusCode::NOT_FOUND => Ok(None),
            s => Err(status_error(&resp.response, s, reference)),
        }
    }

    /// Uploads `data` as a blob of `reference`'s repository (skipped when it
    /// already exists) and returns its sha256 digest.
    pub async fn push_blob(&self, reference: &Reference, data: Bytes) -> Result<OciDigest> {
        let digest = OciDigest::sha256_of(&data);
        if self.blob_exists(reference, &digest).await?.is_some() {
            return Ok(digest);
        }
        let host = self.push_host(reference)?;
        let scope = push_scope(&reference.repository);
        let mut location = self.start_upload(&host, reference, &scope).await?;
        location
            .query_pairs_mut()
            .append_pair("digest", digest.as_str());
        let resp = self
            .inner
            .execute(&spec(&host, reference, &scope, false), |c| {
                c.put(location.clone())
                    .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
                    .body(data.clone())
            })
            .await?;
        match resp.response.status() {
            StatusCode::CREATED | StatusCode::NO_CONTENT | StatusCode::OK => Ok(digest),
            s => Err(status_error(&resp.response, s, reference)),
        }
    }

    /// Uploads the file at `path` as blob `digest` (`size` bytes) of
    /// `reference`'s repository, streaming it in one monolithic PUT; skipped
    /// when the blob already exists. Returns whether it was uploaded. The
    /// caller vouches for the digest; the registry verifies it on commit.
    pub async fn push_blob_file(
        &self,
        reference: &Reference,
        digest: &OciDigest,
        size: u64,
        path: &std::path::Path,
    ) -> Result<bool> {
        if self.blob_exists(reference, digest).await?.is_some() {
            return Ok(false);
        }
        let file = std::fs::File::open(path).map_err(|source| RegistryError::Io {
            context: format!("opening {}", path.display()),
            source,
        })?;
        let host = self.push_host(reference)?;
        let scope = push_scope(&reference.repository);
        let mut location = self.start_upload(&host, reference, &scope).await?;
        location
            .query_pairs_mut()
            .append_pair("digest", digest.as_str());
        let resp = self
            .inner
            .execute(&spec(&host, reference, &scope, false), |c| {
                // A 401 makes the loop build the request again: each attempt
                // reads the file from the start through its own descriptor.
                // Should the dup fail, the short body makes the registry
                // refuse the upload (size/digest mismatch) rather than
                // store something wrong.
                let body = match file.try_clone().and_then(|mut f| {
                    std::io::Seek::rewind(&mut f)?;
                    Ok(f)
                }) {
                    Ok(f) => reqwest::Body::from(tokio::fs::File::from_std(f)),
                    Err(_) => reqwest::Body::from(Vec::new()),
                };
                c.put(location.clone())
                    .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
                    .header(reqwest::header::CONTENT_LENGTH, size)
                    .body(body)
            })
            .await?;
        match resp.response.status() {
            StatusCode::CREATED | StatusCode::NO_CONTENT | StatusCode::OK => Ok(true),
            s => Err(status_error(&resp.response, s, reference)),
        }
    }

    /// `POST /blobs/uploads/` and the absolute upload location it answers with.
    async fn start_upload(
        &self,
        host: &RegistryHost,
        reference: &Reference,
        scope: &str,
    ) -> Result<Url> {
        let start = endpoint_url(host, &format!("{}/blobs/uploads/", reference.repository))?;
        let resp = self
            .inner
            .execute(&spec(host, reference, scope, false), |c| {
                c.post(start.clone())
                    .header(reqwest::header::CONTENT_LENGTH, 0)
            })
            .await?;
        if resp.response.status() != StatusCode::ACCEPTED {
            return Err(status_error(
                &resp.response,
                resp.response.status(),
                reference,
            ));
        }
        header_str(&resp.response, reqwest::header::LOCATION)
            .and_then(|l| start.join(l).ok())
            .ok_or_else(|| RegistryError::Protocol {
                host: host.host.clone(),
                reason: "upload started without a Location".into(),
            })
    }

    /// Uploads a manifest under `reference`'s tag (or digest) and returns its digest.
    pub async fn put_manifest(
        &self,
        reference: &Reference,
        media_type: &str,
        body: Bytes,
    ) -> Result<OciDigest> {
        let host = self.push_host(reference)?;
        let scope = push_scope(&reference.repository);
        let url = endpoint_url(
            &host,
            &format!(
                "{}/manifests/{}",
                reference.repository,
                reference.manifest_reference()
            ),
        )?;
        let resp = self
            .inner
            .execute(&spec(&host, reference, &scope, true), |c| {
                c.put(url.clone())
                    .header(reqwest::header::CONTENT_TYPE, media_type)
                    .body(body.clone())
            })
            .await?;
        let status = resp.response.status();
        if !status.is_success() {
            let err = status_error(&resp.response, status, reference);
            // The registry's error JSON helps (e.g. MANIFEST_BLOB_UNKNOWN).
            if let Ok(text) = read_body_limited(resp, 4096, &self.inner.metrics).await {
                tracing::debug!(body = %String::from_utf8_lossy(&text), "manifest upload rejected");
            }
            return Err(err);
        }
        Ok(OciDigest::sha256_of(&body))
    }
}

pub(crate) fn spec<'a>(
    host: &'a RegistryHost,
    reference: &'a Reference,
    scope: &'a str,
    idempotent: bool,
) -> RequestSpec<'a> {
    RequestSpec {
        host,
        repository: &reference.repository,
        scope,
        authorize: true,
        idempotent,
        purpose: Purpose::OnDemand,
        timeout: std::time::Duration::from_secs(300),
    }
}

pub(crate) fn endpoint_url(host: &RegistryHost, path: &str) -> Result<Url> {
    Url::parse(&format!("{}/{path}", host.api_root())).map_err(|_| RegistryError::HostsConfig {
        path: host.host.clone(),
        reason: "endpoint does not form a valid URL".into(),
    })
}

pub(crate) fn status_error(
    response: &reqwest::Response,
    status: StatusCode,
    reference: &Reference,
) -> RegistryError {
    let host = response.url().host_str().unwrap_or_default().to_string();
    match status {
        StatusCode::NOT_FOUND => RegistryError::NotFound {
            host,
            what: redact_path(response.url()),
        },
        StatusCode::UNAUTHORIZED => RegistryError::Unauthorized {
            host,
            repository: reference.repository.clone(),
        },
        StatusCode::FORBIDDEN => RegistryError::Forbidden {
            host,
            path: redact_path(response.url()),
        },
        s => RegistryError::Status {
            host,
            path: redact_path(response.url()),
            status: s.as_u16(),
        },
    }
}
