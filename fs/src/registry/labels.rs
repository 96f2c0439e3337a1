//! Snapshot labels → the layer to read.
//!
//! containerd passes labels on `Prepare`. Two sets exist, with the exact keys
//! of the Go reference (`service/cri.go`, `fs/source/source.go`,
//! `fs/config`): the CRI set, tried first, and the stargz set that
//! `ctr-remote image rpull` writes. Both share the `remote/urls` keys, the
//! prefetch-size and skip-verify labels, and the layer annotation
//! `containerd.io/snapshot/stargz/toc.digest` that containerd forwards.

use std::collections::{BTreeMap, HashMap};

use super::error::{RegistryError, Result};
use super::oci_digest::OciDigest;
use super::reference::Reference;

/// CRI: image reference.
pub const CRI_IMAGE_REF: &str = "containerd.io/snapshot/cri.image-ref";
/// CRI: this layer's digest.
pub const CRI_LAYER_DIGEST: &str = "containerd.io/snapshot/cri.layer-digest";
/// CRI: comma-separated digests of this and the following layers.
pub const CRI_IMAGE_LAYERS: &str = "containerd.io/snapshot/cri.image-layers";
/// CRI: manifest digest (passed by containerd, informational).
pub const CRI_MANIFEST_DIGEST: &str = "containerd.io/snapshot/cri.manifest-digest";
/// stargz: image reference.
pub const STARGZ_REFERENCE: &str = "containerd.io/snapshot/remote/stargz.reference";
/// stargz: this layer's digest.
pub const STARGZ_DIGEST: &str = "containerd.io/snapshot/remote/stargz.digest";
/// stargz: comma-separated digests of this and the following layers.
pub const STARGZ_LAYERS: &str = "containerd.io/snapshot/remote/stargz.layers";
/// Descriptor `urls` of the target layer (comma-separated).
pub const URLS: &str = "containerd.io/snapshot/remote/urls";
/// Prefix of `urls.<i>`: descriptor urls of the i-th entry of the layers label.
pub const URLS_PREFIX: &str = "containerd.io/snapshot/remote/urls.";
/// Prefetch size hint in bytes, used when the layer has no landmark.
pub const PREFETCH_SIZE: &str = "containerd.io/snapshot/remote/stargz.prefetch";
/// Asks to skip content verification (honoured only if the config allows it).
pub const SKIP_VERIFY: &str = "containerd.io/snapshot/remote/stargz.skipverify";
/// The eStargz TOC digest annotation of the layer descriptor.
pub const TOC_DIGEST: &str = "containerd.io/snapshot/stargz/toc.digest";
/// Prefix of every label containerd lets through to a snapshotter.
pub const SNAPSHOT_LABEL_PREFIX: &str = "containerd.io/snapshot/";

/// A neighbouring layer of the same image, to be resolved ahead of time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayerDescriptor {
    /// Layer digest.
    pub digest: OciDigest,
    /// Descriptor `urls` (foreign layers), usually empty.
    pub urls: Vec<String>,
}

/// Everything the labels say about the layer to mount.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayerSource {
    /// Image the layer belongs to.
    pub reference: Reference,
    /// The layer itself.
    pub layer: LayerDescriptor,
    /// Expected TOC digest, when the image carries the annotation.
    pub toc_digest: Option<OciDigest>,
    /// The following layers of the image, without the target itself.
    pub neighbours: Vec<LayerDescriptor>,
    /// Prefetch size hint in bytes.
    pub prefetch_size: Option<u64>,
    /// Whether verification skipping was requested.
    pub skip_verify_requested: bool,
    /// Manifest digest, when the CRI set passed it.
    pub manifest_digest: Option<OciDigest>,
    /// Every `containerd.io/snapshot/…` label, like the Go reference keeps
    /// them as the target descriptor's annotations.
    pub annotations: BTreeMap<String, String>,
}

struct LabelSet {
    reference: &'static str,
    digest: &'static str,
    layers: &'static str,
}

const CRI: LabelSet = LabelSet {
    reference: CRI_IMAGE_REF,
    digest: CRI_LAYER_DIGEST,
    layers: CRI_IMAGE_LAYERS,
};
const STARGZ: LabelSet = LabelSet {
    reference: STARGZ_REFERENCE,
    digest: STARGZ_DIGEST,
    layers: STARGZ_LAYERS,
};

/// Resolves the layer from Prepare labels: the CRI set first, then the stargz
/// set. When both fail, the error of the set whose reference label is present
/// is returned (the CRI one if both are).
pub fn layer_source_from_labels(labels: &HashMap<String, String>) -> Result<LayerSource> {
    match from_set(labels, &CRI) {
        Ok(source) => Ok(source),
        Err(cri_err) => match from_set(labels, &STARGZ) {
            Ok(source) => Ok(source),
            Err(_) if labels.contains_key(CRI.reference) => Err(cri_err),
            Err(stargz_err) => Err(stargz_err),
        },
    }
}

fn from_set(labels: &HashMap<String, String>, set: &LabelSet) -> Result<LayerSource> {
    let reference = labels
        .get(set.reference)
        .ok_or(RegistryError::MissingLabel {
            label: set.reference,
        })?;
    let reference = Reference::parse(reference)?;
    let digest = digest_label(labels, set.digest)?
        .ok_or(RegistryError::MissingLabel { label: set.digest })?;
    let mut neighbours = Vec::new();
    if let Some(list) = labels.get(set.layers).filter(|l| !l.is_empty()) {
        for (i, item) in list.split(',').enumerate() {
            let d = OciDigest::parse(item.trim())
                .map_err(|_| invalid(set.layers, "bad digest in list"))?;
            if d != digest {
                neighbours.push(LayerDescriptor {
                    digest: d,
                    urls: urls_label(labels, &format!("{URLS_PREFIX}{i}")),
                });
            }
        }
    }
    let prefetch_size = match labels.get(PREFETCH_SIZE) {
        Some(v) => Some(
            v.trim()
                .parse::<u64>()
                .map_err(|_| invalid(PREFETCH_SIZE, "not a byte count"))?,
        ),
        None => None,
    };
    Ok(LayerSource {
        reference,
        layer: LayerDescriptor {
            digest,
            urls: urls_label(labels, URLS),
        },
        toc_digest: digest_label(labels, TOC_DIGEST)?,
        neighbours,
        prefetch_size,
        skip_verify_requested: labels.get(SKIP_VERIFY).is_some_and(|v| v.trim() == "true"),
        manifest_digest: digest_label(labels, CRI_MANIFEST_DIGEST).ok().flatten(),
        annotations: labels
            .iter()
            .filter(|(k, _)| k.starts_with(SNAPSHOT_LABEL_PREFIX))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    })
}

fn invalid(label: &str, reason: &str) -> RegistryError {
    RegistryError::InvalidLabel {
        label: label.to_string(),
        reason: reason.to_string(),
    }
}

fn digest_label(labels: &HashMap<String, String>, key: &str) -> Result<Option<OciDigest>> {
    labels
        .get(key)
        .map(|v| OciDigest::parse(v.trim()).map_err(|_| invalid(key, "not a digest")))
        .transpose()
}

fn urls_label(labels: &HashMap<String, String>, key: &str) -> Vec<String> {
    labels
        .get(key)
        .map(|v| {
            v.split(',')
                .filter(|u| !u.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn d(c: char) -> String {
        format!("sha256:{}", c.to_string().repeat(64))
    }

    fn labels(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn cri_set_with_neighbours_toc_and_urls() {
        let layers = format!("{},{},{}", d('a'), d('b'), d('c'));
        let l = labels(&[
            (CRI_IMAGE_REF, "docker.io/library/ubuntu:22.04"),
            (CRI_LAYER_DIGEST, &d('a')),
            (CRI_IMAGE_LAYERS, &layers),
            (CRI_MANIFEST_DIGEST, &d('f')),
            (TOC_DIGEST, &d('e')),
            (URLS, "https://a.example/x,https://b.example/x"),
            (
                "containerd.io/snapshot/remote/urls.2",
                "https://c.example/c",
            ),
            ("containerd.io/snapshot.ref", "chain"),
        ]);
        let s = layer_source_from_labels(&l).unwrap();
        assert_eq!(s.reference.repository, "library/ubuntu");
        assert_eq!(s.layer.digest.as_str(), d('a'));
        assert_eq!(s.layer.urls.len(), 2);
        assert_eq!(s.toc_digest.unwrap().as_str(), d('e'));
        assert_eq!(s.manifest_digest.unwrap().as_str(), d('f'));
        let n: Vec<_> = s.neighbours.iter().map(|n| n.digest.to_string()).collect();
        assert_eq!(n, vec![d('b'), d('c')]);
        assert!(s.neighbours[0].urls.is_empty());
        assert_eq!(
            s.neighbours[1].urls,
            vec!["https://c.example/c".to_string()]
        );
        assert_eq!(s.prefetch_size, None);
        assert_eq!(
            s.annotations.len(),
            7,
            "every containerd.io/snapshot/ label"
        );
        assert!(!s.annotations.contains_key("containerd.io/snapshot.ref"));
    }

    #[test]
    fn stargz_set_as_written_by_rpull() {
        let l = labels(&[
            (STARGZ_REFERENCE, "127.0.0.1:5000/img:tag"),
            (STARGZ_DIGEST, &d('b')),
            (STARGZ_LAYERS, &format!("{},{}", d('b'), d('c'))),
            (PREFETCH_SIZE, "10485760"),
            (SKIP_VERIFY, "true"),
        ]);
        let s = layer_source_from_labels(&l).unwrap();
        assert_eq!(s.reference.registry, "127.0.0.1:5000");
        assert_eq!(s.layer.digest.as_str(), d('b'));
        assert_eq!(s.neighbours.len(), 1);
        assert_eq!(s.prefetch_size, Some(10 * 1024 * 1024));
        assert!(s.skip_verify_requested);
        assert!(s.toc_digest.is_none());
    }

    #[test]
    fn cri_wins_and_broken_cri_falls_back_to_stargz() {
        let both = labels(&[
            (CRI_IMAGE_REF, "a.io/cri"),
            (CRI_LAYER_DIGEST, &d('a')),
            (STARGZ_REFERENCE, "b.io/stargz"),
            (STARGZ_DIGEST, &d('b')),
        ]);
        assert_eq!(
            layer_source_from_labels(&both)
                .unwrap()
                .reference
                .repository,
            "cri"
        );
        let broken_cri = labels(&[
            (CRI_IMAGE_REF, "a.io/cri"),
            (STARGZ_REFERENCE, "b.io/stargz"),
            (STARGZ_DIGEST, &d('b')),
        ]);
        assert_eq!(
            layer_source_from_labels(&broken_cri)
                .unwrap()
                .reference
                .repository,
            "stargz"
        );
    }

    #[test]
    fn missing_and_invalid_labels_are_typed_errors() {
        assert!(matches!(
            layer_source_from_labels(&HashMap::new()),
            Err(RegistryError::MissingLabel {
                label: STARGZ_REFERENCE
            })
        ));
        let only_ref = labels(&[(CRI_IMAGE_REF, "a.io/x")]);
        assert!(matches!(
            layer_source_from_labels(&only_ref),
            Err(RegistryError::MissingLabel {
                label: CRI_LAYER_DIGEST
            })
        ));
        let bad_layers = labels(&[
            (CRI_IMAGE_REF, "a.io/x"),
            (CRI_LAYER_DIGEST, &d('a')),
            (CRI_IMAGE_LAYERS, "junk"),
        ]);
        assert!(matches!(
            layer_source_from_labels(&bad_layers),
            Err(RegistryError::InvalidLabel { .. })
        ));
        let bad_toc = labels(&[
            (CRI_IMAGE_REF, "a.io/x"),
            (CRI_LAYER_DIGEST, &d('a')),
            (TOC_DIGEST, "nope"),
        ]);
        assert!(layer_source_from_labels(&bad_toc).is_err());
    }
}
