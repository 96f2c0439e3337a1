//! Fetching manifests (OCI and docker media types) by tag or digest.

use bytes::Bytes;

use super::client::{Registry, pull_scope};
use super::error::{RegistryError, Result};
use super::http::{header_str, read_body_limited};
use super::oci_digest::OciDigest;
use super::push::{endpoint_url, spec, status_error};
use super::reference::Reference;

/// Manifest and index media types we accept.
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, \
application/vnd.oci.image.index.v1+json, \
application/vnd.docker.distribution.manifest.v2+json, \
application/vnd.docker.distribution.manifest.list.v2+json";

/// Largest manifest we read (the distribution spec suggests 4 MiB).
const MAX_MANIFEST_BYTES: u64 = 4 << 20;

/// A fetched manifest.
#[derive(Clone, Debug)]
pub struct FetchedManifest {
    /// `Content-Type` as served.
    pub media_type: String,
    /// sha256 of the bytes.
    pub digest: OciDigest,
    /// The raw JSON.
    pub bytes: Bytes,
}

impl Registry {
    /// Fetches `reference`'s manifest (by digest if it has one, else by tag)
    /// and checks its digest when the reference pins one.
    pub async fn get_manifest(&self, reference: &Reference) -> Result<FetchedManifest> {
        let hosts: Vec<_> = self
            .hosts_for(reference)?
            .into_iter()
            .filter(|h| {
                h.capabilities.pull && (reference.digest.is_some() || h.capabilities.resolve)
            })
            .collect();
        let scope = pull_scope(&reference.repository);
        let mut last = None;
        for host in &hosts {
            let url = endpoint_url(
                host,
                &format!(
                    "{}/manifests/{}",
                    reference.repository,
                    reference.manifest_reference()
                ),
            )?;
            let result = async {
                let resp = self
                    .inner
                    .execute(&spec(host, reference, &scope, true), |c| {
                        c.get(url.clone())
                            .header(reqwest::header::ACCEPT, MANIFEST_ACCEPT)
                    })
                    .await?;
                let status = resp.response.status();
                if !status.is_success() {
                    return Err(status_error(&resp.response, status, reference));
                }
                let media_type = header_str(&resp.response, reqwest::header::CONTENT_TYPE)
                    .unwrap_or_default()
                    .to_string();
                let bytes =
                    read_body_limited(resp, MAX_MANIFEST_BYTES, &self.inner.metrics).await?;
                let digest = OciDigest::sha256_of(&bytes);
                if let Some(want) = &reference.digest
                    && want.as_str().starts_with("sha256:")
                    && *want != digest
                {
                    return Err(RegistryError::Protocol {
                        host: host.host.clone(),
                        reason: format!("manifest digest {digest} does not match {want}"),
                    });
                }
                Ok(FetchedManifest {
                    media_type,
                    digest,
                    bytes,
                })
            }
            .await;
            match result {
                Ok(m) => return Ok(m),
                Err(e) if e.is_host_failure() => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| RegistryError::HostsConfig {
            path: reference.registry.clone(),
            reason: "no endpoint can resolve this reference".into(),
        }))
    }
}
