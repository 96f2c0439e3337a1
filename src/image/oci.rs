//! OCI and docker schema2 media types, annotation keys and the descriptor
//! type. Manifests, indexes and configs stay `serde_json` maps elsewhere so
//! that fields we do not know survive a rewrite.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::error::{ImageError, Result};
use rstargz_fs::registry::OciDigest;

/// OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// Docker schema2 manifest.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker manifest list.
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// OCI image config.
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// Docker image config.
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
/// OCI uncompressed layer.
pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
/// OCI gzip layer (also eStargz).
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// OCI zstd layer (also zstd:chunked).
pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
/// Docker gzip layer.
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
/// Docker uncompressed layer.
pub const DOCKER_LAYER_TAR: &str = "application/vnd.docker.image.rootfs.diff.tar";
/// Docker foreign (non-distributable) layer.
pub const DOCKER_LAYER_FOREIGN: &str = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip";
/// Prefix of OCI non-distributable layer types.
pub const OCI_LAYER_NONDISTRIBUTABLE_PREFIX: &str =
    "application/vnd.oci.image.layer.nondistributable.v1.tar";

/// sha256 of the uncompressed TOC JSON.
pub const ANNOTATION_TOC_DIGEST: &str = "containerd.io/snapshot/stargz/toc.digest";
/// Decimal size of the decompressed blob.
pub const ANNOTATION_UNCOMPRESSED_SIZE: &str = "io.containers.estargz.uncompressed-size";
/// Digest of the compressed zstd:chunked TOC.
pub const ANNOTATION_ZSTD_MANIFEST_CHECKSUM: &str = "io.containers.zstd-chunked.manifest-checksum";
/// `offset:compressed:uncompressed:1` of the zstd:chunked TOC.
pub const ANNOTATION_ZSTD_MANIFEST_POSITION: &str = "io.containers.zstd-chunked.manifest-position";
/// Tag of a manifest in an OCI layout's index.json.
pub const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";

/// An OCI content descriptor; fields we do not model are kept in `extra`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// Media type of the referenced content.
    pub media_type: String,
    /// Content digest.
    pub digest: String,
    /// Content size in bytes.
    pub size: u64,
    /// Annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Platform (index entries only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    /// Everything else (urls, artifactType, data…).
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl Descriptor {
    /// A descriptor for `digest`/`size` without annotations.
    pub fn new(media_type: &str, digest: &OciDigest, size: u64) -> Self {
        Descriptor {
            media_type: media_type.to_owned(),
            digest: digest.to_string(),
            size,
            annotations: BTreeMap::new(),
            platform: None,
            extra: serde_json::Map::new(),
        }
    }

    /// The digest, validated.
    pub fn parsed_digest(&self) -> Result<OciDigest> {
        OciDigest::parse(&self.digest).map_err(|_| {
            ImageError::document(format!("descriptor {:?}", self.digest), "invalid digest")
        })
    }
}

/// An index entry's platform.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Platform {
    /// CPU architecture (`amd64`, `arm64`, `unknown` for attestations).
    pub architecture: String,
    /// Operating system.
    pub os: String,
    /// CPU variant (`v8`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    /// Everything else (`os.version`, `os.features`).
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// What the converter does with a layer of a given media type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerHandling {
    /// A tar (plain, gzip or zstd): converted to eStargz.
    Convert,
    /// A non-distributable/foreign layer: kept as is and not copied.
    PassThrough,
}

/// How a layer of `media_type` is handled; an error for anything else.
pub fn layer_handling(digest: &str, media_type: &str) -> Result<LayerHandling> {
    match media_type {
        OCI_LAYER_TAR | OCI_LAYER_GZIP | OCI_LAYER_ZSTD | DOCKER_LAYER_GZIP | DOCKER_LAYER_TAR => {
            Ok(LayerHandling::Convert)
        }
        DOCKER_LAYER_FOREIGN => Ok(LayerHandling::PassThrough),
        m if m.starts_with(OCI_LAYER_NONDISTRIBUTABLE_PREFIX) => Ok(LayerHandling::PassThrough),
        m => Err(ImageError::UnsupportedMediaType {
            what: format!("layer {digest}"),
            media_type: m.to_owned(),
        }),
    }
}

/// OCI non-distributable gzip layer.
pub const OCI_LAYER_NONDISTRIBUTABLE_GZIP: &str =
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip";

/// The OCI media type of a docker schema2 one (others unchanged), as
/// containerd's converter maps them for `--oci`.
pub fn docker_to_oci(media_type: &str) -> &str {
    match media_type {
        DOCKER_MANIFEST_LIST => OCI_INDEX,
        DOCKER_MANIFEST => OCI_MANIFEST,
        DOCKER_CONFIG => OCI_CONFIG,
        DOCKER_LAYER_GZIP => OCI_LAYER_GZIP,
        DOCKER_LAYER_TAR => OCI_LAYER_TAR,
        DOCKER_LAYER_FOREIGN => OCI_LAYER_NONDISTRIBUTABLE_GZIP,
        other => other,
    }
}

/// Whether `media_type` names an image manifest (OCI or docker).
pub fn is_manifest(media_type: &str) -> bool {
    matches!(media_type, OCI_MANIFEST | DOCKER_MANIFEST)
}

/// Whether `media_type` names an index or manifest list.
pub fn is_index(media_type: &str) -> bool {
    matches!(media_type, OCI_INDEX | DOCKER_MANIFEST_LIST)
}

/// The media type a JSON document declares, falling back to `served`
/// (a registry's Content-Type); OCI manifests may omit `mediaType`.
pub fn document_media_type(json: &serde_json::Value, served: &str) -> String {
    if let Some(m) = json.get("mediaType").and_then(|m| m.as_str()) {
        return m.to_owned();
    }
    if is_manifest(served) || is_index(served) {
        return served.to_owned();
    }
    if json.get("manifests").is_some() {
        OCI_INDEX.to_owned()
    } else {
        OCI_MANIFEST.to_owned()
    }
}

/// Reads `key` of a JSON object as descriptors.
pub fn descriptors(doc: &serde_json::Value, key: &str, what: &str) -> Result<Vec<Descriptor>> {
    let value = doc
        .get(key)
        .ok_or_else(|| ImageError::document(what, format!("no {key:?}")))?;
    serde_json::from_value(value.clone())
        .map_err(|e| ImageError::document(what, format!("bad {key:?}: {e}")))
}
