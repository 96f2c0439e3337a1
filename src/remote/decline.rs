//! Why a layer is not mounted remotely. Every decline carries a reason in
//! plain words (metric label, log line, gRPC status) and its details; the
//! snapshotter core then falls back to a local snapshot.

use std::collections::HashMap;

use rstargz_fs::estargz::{self, OpenOptions, Verify};
use rstargz_fs::layer::LayerError;
use rstargz_fs::registry::{LayerSource, RegistryError, layer_source_from_labels};
use rstargz_snapshotter::snapshot::Labels;

use super::policy::VerificationPolicy;

/// Why a layer was not mounted remotely (counted in metrics, logged).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeclineReason {
    /// Remote mounts are switched off in the config.
    Disabled,
    /// The labels name no registry source.
    NoSource,
    /// No `toc.digest` annotation and verification not waived.
    NoTocDigest,
    /// The blob is not eStargz (no footer or TOC).
    NotEstargz,
    /// The TOC does not match the annotation.
    TocDigestMismatch,
    /// The registry refused the credentials.
    AuthRefused,
    /// The registry wants credentials and none are known for it.
    NoCredentials,
    /// The registry could not be reached or failed.
    RegistryUnreachable,
    /// Mounting FUSE failed.
    MountFailed,
}

impl DeclineReason {
    /// Plain words for logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Disabled => "remote snapshots disabled",
            Self::NoSource => "no registry source in labels",
            Self::NoTocDigest => "no TOC digest annotation",
            Self::NotEstargz => "not eStargz",
            Self::TocDigestMismatch => "TOC digest mismatch",
            Self::AuthRefused => "auth refused",
            Self::NoCredentials => "no credentials for the registry",
            Self::RegistryUnreachable => "registry unreachable",
            Self::MountFailed => "FUSE mount failed",
        }
    }

    /// This reason with `detail`.
    pub fn decline(self, detail: impl std::fmt::Display) -> Declined {
        Declined {
            reason: self,
            detail: detail.to_string(),
        }
    }

    /// The reason a registry failure declines a layer for.
    pub fn of_registry(e: &RegistryError) -> Self {
        match e {
            RegistryError::AllHostsFailed { last, .. } => Self::of_registry(last),
            RegistryError::NoCredentials { .. } => Self::NoCredentials,
            RegistryError::Unauthorized { .. }
            | RegistryError::Forbidden { .. }
            | RegistryError::Credentials { .. } => Self::AuthRefused,
            _ => Self::RegistryUnreachable,
        }
    }

    /// The reason a failure to open a layer declines it for.
    pub fn of_layer(e: &LayerError) -> Self {
        match e {
            // The registry's own error, when a registry blob failed.
            LayerError::Source { source, .. } => source
                .get_ref()
                .and_then(|e| e.downcast_ref::<RegistryError>())
                .map_or(Self::RegistryUnreachable, Self::of_registry),
            LayerError::Format(estargz::Error::TocDigestMismatch { .. }) => Self::TocDigestMismatch,
            _ => Self::NotEstargz,
        }
    }
}

/// A decline: its reason and details.
#[derive(Debug, thiserror::Error)]
#[error("{}: {detail}", reason.as_str())]
pub struct Declined {
    /// Why.
    pub reason: DeclineReason,
    /// What exactly (the underlying error).
    pub detail: String,
}

/// The registry source named by a snapshot's labels.
pub fn source_of(labels: &Labels) -> Result<LayerSource, RegistryError> {
    let labels: HashMap<String, String> =
        labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    layer_source_from_labels(&labels)
}

/// The layer a Prepare's `labels` ask to mount, and how to open it; or why
/// it is not mounted remotely. Decided from the labels and the policies
/// alone, before any registry request.
pub fn plan(
    remote_enabled: bool,
    verification: VerificationPolicy,
    labels: &Labels,
) -> Result<(LayerSource, OpenOptions), Declined> {
    if !remote_enabled {
        return Err(DeclineReason::Disabled.decline("disable_remote = true"));
    }
    let source = source_of(labels).map_err(|e| DeclineReason::NoSource.decline(e))?;
    let opts = open_options(verification, &source)?;
    Ok((source, opts))
}

/// How to open `source`'s layer under `verification`.
fn open_options(
    verification: VerificationPolicy,
    source: &LayerSource,
) -> Result<OpenOptions, Declined> {
    let mut opts = OpenOptions::default();
    if verification.disabled {
        opts.verify = Verify::Disabled;
        return Ok(opts);
    }
    match &source.toc_digest {
        Some(d) => {
            opts.expected_toc_digest = Some(
                estargz::Digest::parse(d.as_str())
                    .map_err(|e| DeclineReason::NoTocDigest.decline(e))?,
            );
        }
        None if source.skip_verify_requested && verification.honour_skip_label => {
            tracing::warn!(layer = %source.layer.digest, "mounting without verification (skipverify label)");
            opts.verify = Verify::Disabled;
        }
        None => return Err(DeclineReason::NoTocDigest.decline(&source.layer.digest)),
    }
    Ok(opts)
}

#[cfg(test)]
#[path = "decline_tests.rs"]
mod tests;
