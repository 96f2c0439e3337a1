//! Where images are read from and written to: a registry repository or an
//! OCI layout directory, behind one set of async operations.
//!
//! Contract: every read is verified against the descriptor (size and sha256)
//! before it is returned or, for layers, before the temporary file is handed
//! on; blobs are streamed through files, never held whole in memory (only
//! manifests and configs, capped at [`MAX_DOCUMENT_BYTES`], are).

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use rstargz_fs::registry::{OciDigest, Purpose, Reference, Registry};
use sha2::{Digest as _, Sha256};

use super::error::{ImageError, Result};
use super::layout::OciLayout;
use super::oci::Descriptor;

/// Largest manifest, index or config we read into memory.
pub const MAX_DOCUMENT_BYTES: u64 = 4 << 20;
/// Bytes fetched per round of ranged reads of a layer blob.
const DOWNLOAD_WINDOW: u64 = 16 << 20;

/// An image location as written on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageRef {
    /// A registry reference (`host/repo:tag`, `repo@sha256:…`).
    Registry(Reference),
    /// `oci:DIR[:TAG]`.
    Layout {
        /// Layout directory.
        dir: PathBuf,
        /// Tag (`org.opencontainers.image.ref.name`).
        tag: Option<String>,
    },
}

impl ImageRef {
    /// Parses `oci:DIR[:TAG]` or a registry reference. In `oci:` form the
    /// text after the last `:` is a tag when it holds no `/`.
    pub fn parse(input: &str) -> Result<Self> {
        if let Some(rest) = input.strip_prefix("oci:") {
            let (dir, tag) = match rest.rsplit_once(':') {
                Some((dir, tag)) if !tag.contains('/') => (dir, Some(tag.to_owned())),
                _ => (rest, None),
            };
            if dir.is_empty() {
                return Err(ImageError::InvalidLocation {
                    input: input.into(),
                    reason: "empty directory".into(),
                });
            }
            if let Some(t) = &tag
                && (t.is_empty() || t.len() > 128 || t.chars().any(|c| c.is_control()))
            {
                return Err(ImageError::InvalidLocation {
                    input: input.into(),
                    reason: "bad tag".into(),
                });
            }
            return Ok(ImageRef::Layout {
                dir: PathBuf::from(dir),
                tag,
            });
        }
        Reference::parse(input)
            .map(ImageRef::Registry)
            .map_err(|e| ImageError::InvalidLocation {
                input: input.into(),
                reason: e.to_string(),
            })
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImageRef::Registry(r) => write!(f, "{r}"),
            ImageRef::Layout { dir, tag: None } => write!(f, "oci:{}", dir.display()),
            ImageRef::Layout { dir, tag: Some(t) } => write!(f, "oci:{}:{t}", dir.display()),
        }
    }
}

/// A place holding blobs and manifests.
#[derive(Debug, Clone)]
pub enum Store {
    /// A registry repository.
    Registry {
        /// Client (auth, hosts).
        client: Registry,
        /// The repository (and the tag/digest the root is under).
        reference: Reference,
    },
    /// An OCI layout.
    Layout {
        /// The layout.
        layout: OciLayout,
        /// Tag of the root.
        tag: Option<String>,
    },
}

/// The root of an image: its descriptor and bytes.
#[derive(Debug, Clone)]
pub struct Root {
    /// Media type as served or recorded.
    pub media_type: String,
    /// Digest of `bytes`.
    pub digest: OciDigest,
    /// The manifest or index JSON.
    pub bytes: Bytes,
}

impl Store {
    /// Opens a source location (an OCI layout must exist).
    pub fn source(client: &Registry, at: &ImageRef) -> Result<Self> {
        Self::open(client, at, false)
    }

    /// Opens a destination location (an OCI layout is created if missing).
    pub fn destination(client: &Registry, at: &ImageRef) -> Result<Self> {
        Self::open(client, at, true)
    }

    fn open(client: &Registry, at: &ImageRef, create: bool) -> Result<Self> {
        Ok(match at {
            ImageRef::Registry(reference) => Store::Registry {
                client: client.clone(),
                reference: reference.clone(),
            },
            ImageRef::Layout { dir, tag } => Store::Layout {
                layout: if create {
                    OciLayout::create(dir)?
                } else {
                    OciLayout::open(dir)?
                },
                tag: tag.clone(),
            },
        })
    }

    /// Resolves the root manifest or index (by tag, digest or the layout's only entry).
    pub async fn root(&self) -> Result<Root> {
        match self {
            Store::Registry { client, reference } => {
                let m = client
                    .get_manifest(reference)
                    .await
                    .map_err(ImageError::registry(format!(
                        "fetching manifest of {reference}"
                    )))?;
                Ok(Root {
                    media_type: m.media_type,
                    digest: m.digest,
                    bytes: m.bytes,
                })
            }
            Store::Layout { layout, tag } => {
                let desc = layout.resolve(tag.as_deref())?;
                let bytes = self.document(&desc).await?;
                Ok(Root {
                    media_type: desc.media_type.clone(),
                    digest: desc.parsed_digest()?,
                    bytes,
                })
            }
        }
    }

    /// Reads a small verified blob (manifest, index, config).
    pub async fn document(&self, desc: &Descriptor) -> Result<Bytes> {
        let digest = desc.parsed_digest()?;
        let what = format!("{} {digest}", desc.media_type);
        if desc.size > MAX_DOCUMENT_BYTES {
            return Err(ImageError::document(what, "larger than 4 MiB"));
        }
        let bytes = match self {
            Store::Registry { client, reference } => {
                let by_digest = Reference {
                    tag: None,
                    digest: Some(digest.clone()),
                    ..reference.clone()
                };
                if super::oci::is_manifest(&desc.media_type)
                    || super::oci::is_index(&desc.media_type)
                {
                    client
                        .get_manifest(&by_digest)
                        .await
                        .map_err(ImageError::registry(format!("fetching {what}")))?
                        .bytes
                } else {
                    let mut out = Vec::new();
                    self.download(desc, &mut out, &mut |_| {}).await?;
                    Bytes::from(out)
                }
            }
            Store::Layout { layout, .. } => {
                let path = layout.blob_path(&digest);
                Bytes::from(
                    tokio::fs::read(&path)
                        .await
                        .map_err(ImageError::io(format!("reading {}", path.display())))?,
                )
            }
        };
        verify(
            &what,
            desc,
            bytes.len() as u64,
            &OciDigest::sha256_of(&bytes),
        )?;
        Ok(bytes)
    }

    /// Streams blob `desc` into `out`, verifying size and digest at the end;
    /// `progress` gets the byte count of every piece written.
    pub async fn download(
        &self,
        desc: &Descriptor,
        out: &mut (impl Write + Send),
        progress: &mut (dyn FnMut(u64) + Send),
    ) -> Result<()> {
        let digest = desc.parsed_digest()?;
        let what = format!("blob {digest}");
        let mut hasher = Sha256::new();
        let mut written = 0u64;
        let write_err = || format!("writing {what} to a temporary file");
        match self {
            Store::Registry { client, reference } => {
                if desc.size > 0 {
                    let fetcher = client
                        .open_blob(reference, &digest, Some(desc.size))
                        .await
                        .map_err(ImageError::registry(format!("opening {what}")))?;
                    while written < desc.size {
                        let end = (written + DOWNLOAD_WINDOW).min(desc.size);
                        let parts = fetcher
                            .fetch_ranges(
                                std::slice::from_ref(&(written..end)),
                                Purpose::Background,
                            )
                            .await
                            .map_err(ImageError::registry(format!("reading {what}")))?;
                        for (_, data) in parts {
                            hasher.update(&data);
                            out.write_all(&data).map_err(ImageError::io(write_err()))?;
                            written += data.len() as u64;
                            progress(data.len() as u64);
                        }
                    }
                }
            }
            Store::Layout { layout, .. } => {
                let path = layout.blob_path(&digest);
                let mut file = std::fs::File::open(&path)
                    .map_err(ImageError::io(format!("opening {}", path.display())))?;
                let mut buf = vec![0u8; 1 << 20];
                loop {
                    let n = std::io::Read::read(&mut file, &mut buf)
                        .map_err(ImageError::io(format!("reading {}", path.display())))?;
                    if n == 0 {
                        break;
                    }
                    hasher.update(&buf[..n]);
                    out.write_all(&buf[..n])
                        .map_err(ImageError::io(write_err()))?;
                    written += n as u64;
                    progress(n as u64);
                }
            }
        }
        verify(&what, desc, written, &finish_sha256(hasher)?)
    }

    /// Whether the store already has blob `digest`.
    pub async fn has_blob(&self, digest: &OciDigest) -> Result<bool> {
        match self {
            Store::Registry { client, reference } => Ok(client
                .blob_exists(reference, digest)
                .await
                .map_err(ImageError::registry(format!("checking blob {digest}")))?
                .is_some()),
            Store::Layout { layout, .. } => Ok(layout.has_blob(digest)),
        }
    }

    /// Stores the file at `path` as blob `digest`; false if it was already there.
    pub async fn put_blob_file(&self, digest: &OciDigest, size: u64, path: &Path) -> Result<bool> {
        match self {
            Store::Registry { client, reference } => client
                .push_blob_file(reference, digest, size, path)
                .await
                .map_err(ImageError::registry(format!("pushing blob {digest}"))),
            Store::Layout { layout, .. } => {
                let (layout, digest, path) = (layout.clone(), digest.clone(), path.to_path_buf());
                tokio::task::spawn_blocking(move || layout.write_blob_file(&digest, &path))
                    .await
                    .map_err(|e| ImageError::Task(e.to_string()))?
            }
        }
    }

    /// Stores `data` as a blob (config); false if it was already there.
    pub async fn put_blob_bytes(&self, data: Bytes) -> Result<bool> {
        let digest = OciDigest::sha256_of(&data);
        match self {
            Store::Registry { client, reference } => {
                if self.has_blob(&digest).await? {
                    return Ok(false);
                }
                client
                    .push_blob(reference, data)
                    .await
                    .map_err(ImageError::registry(format!("pushing blob {digest}")))?;
                Ok(true)
            }
            Store::Layout { layout, .. } => layout.write_blob_bytes(&digest, &data),
        }
    }

    /// Stores a manifest or index by digest (a child of an index).
    pub async fn put_child_manifest(&self, media_type: &str, body: Bytes) -> Result<OciDigest> {
        let digest = OciDigest::sha256_of(&body);
        match self {
            Store::Registry { client, reference } => {
                let by_digest = Reference {
                    tag: None,
                    digest: Some(digest.clone()),
                    ..reference.clone()
                };
                client
                    .put_manifest(&by_digest, media_type, body)
                    .await
                    .map_err(ImageError::registry(format!("pushing manifest {digest}")))
            }
            Store::Layout { layout, .. } => {
                layout.write_blob_bytes(&digest, &body)?;
                Ok(digest)
            }
        }
    }

    /// Stores the root manifest or index under the location's tag.
    pub async fn put_root(&self, desc: &Descriptor, body: Bytes) -> Result<OciDigest> {
        match self {
            Store::Registry { client, reference } => client
                .put_manifest(reference, &desc.media_type, body)
                .await
                .map_err(ImageError::registry(format!(
                    "pushing manifest to {reference}"
                ))),
            Store::Layout { layout, tag } => {
                let digest = OciDigest::sha256_of(&body);
                layout.write_blob_bytes(&digest, &body)?;
                let mut entry = Descriptor::new(&desc.media_type, &digest, body.len() as u64);
                entry.platform = desc.platform.clone();
                layout.set_tag(&entry, tag.as_deref())?;
                Ok(digest)
            }
        }
    }
}

/// The registry digest of a finished sha256 hash.
pub(crate) fn finish_sha256(hasher: Sha256) -> Result<OciDigest> {
    as_registry_digest(&format!("sha256:{}", hex::encode(hasher.finalize())))
}

/// Re-validates a digest produced elsewhere (e.g. the eStargz writer's) as a registry digest.
pub(crate) fn as_registry_digest(digest: &str) -> Result<OciDigest> {
    OciDigest::parse(digest).map_err(|_| ImageError::document(digest, "not a valid digest"))
}

fn verify(what: &str, desc: &Descriptor, size: u64, actual: &OciDigest) -> Result<()> {
    if size != desc.size {
        return Err(ImageError::SizeMismatch {
            what: what.to_owned(),
            expected: desc.size,
            actual: size,
        });
    }
    if actual.as_str() != desc.digest {
        return Err(ImageError::DigestMismatch {
            what: what.to_owned(),
            expected: desc.digest.clone(),
            actual: actual.to_string(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_layout_and_registry_locations() {
        assert_eq!(
            ImageRef::parse("oci:/tmp/x:v1").ok(),
            Some(ImageRef::Layout {
                dir: "/tmp/x".into(),
                tag: Some("v1".into())
            })
        );
        assert_eq!(
            ImageRef::parse("oci:rel/dir").ok(),
            Some(ImageRef::Layout {
                dir: "rel/dir".into(),
                tag: None
            })
        );
        // A ':' inside the path (before a '/') is not a tag separator.
        assert_eq!(
            ImageRef::parse("oci:/a:b/c").ok(),
            Some(ImageRef::Layout {
                dir: "/a:b/c".into(),
                tag: None
            })
        );
        assert!(ImageRef::parse("oci:").is_err());
        assert!(ImageRef::parse("oci::tag").is_err());
        assert!(matches!(
            ImageRef::parse("localhost:5000/app:1"),
            Ok(ImageRef::Registry(r)) if r.tag.as_deref() == Some("1")
        ));
        assert!(ImageRef::parse("Bad Name").is_err());
        assert_eq!(
            ImageRef::parse("oci:/tmp/x:v1").map(|r| r.to_string()).ok(),
            Some("oci:/tmp/x:v1".to_owned())
        );
    }
}
