//! Registry reader: resolves the layer named by containerd's snapshot labels
//! and reads byte ranges of it from OCI registries over HTTP(S), lazily.
//!
//! Layout (one job per module): [`reference`] and [`oci_digest`] parse names,
//! [`labels`] turns Prepare labels into a [`LayerSource`], [`hosts`] lists
//! endpoints (mirrors, containerd's hosts.toml) and [`tls`] reads their
//! CA and client certificate files, [`credentials`] (with the run-time
//! [`keychain`]; both hand out a [`secret`] credential) and [`auth`]
//! authenticate, [`client`] holds the [`Registry`] facade and its
//! request loop (`http` has the response helpers both share), [`fetch`]
//! reads ranges ([`BlobFetcher`]) with help from [`ranges`] and
//! [`multipart`] (the crate's [`PriorityGate`](crate::priority_gate::PriorityGate)
//! per endpoint orders on-demand before background requests), and
//! [`push`]/[`manifest`] write and read images.
//!
//! Guarantees: never a whole-blob download by accident, credentials never in
//! Debug/Display/errors/logs, TLS verified unless configured otherwise.

pub mod auth;
pub mod client;
pub mod credentials;
pub mod error;
pub mod fetch;
mod hedge;
pub mod hosts;
pub(crate) mod http;
pub mod keychain;
pub mod labels;
pub mod manifest;
pub mod metrics;
pub mod multipart;
pub mod oci_digest;
pub mod push;
pub mod ranges;
pub mod reference;
pub mod retry;
pub mod secret;
pub mod tls;

pub use crate::purpose::Purpose;
pub use client::{Registry, RegistryConfig};
pub use credentials::{AuthFields, Credential, CredentialStore, Secret, normalise_host};
pub use error::{RegistryError, Result};
pub use fetch::BlobFetcher;
pub use hosts::{
    Capabilities, HostsConfig, MirrorConfig, RegistryHost, RequestTimeout, Scheme, StringOrList,
};
pub use keychain::{Keychain, KeychainMirror};
pub use labels::{LayerDescriptor, LayerSource, layer_source_from_labels};
pub use manifest::FetchedManifest;
pub use metrics::MetricsSnapshot;
pub use oci_digest::OciDigest;
pub use reference::Reference;
pub use retry::Backoff;
pub use tls::ClientCertificate;
