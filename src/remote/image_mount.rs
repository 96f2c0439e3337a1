//! A whole eStargz image mounted lazily without containerd: each layer of
//! the image (this machine's platform of an index) over FUSE with a
//! [`StargzFs`], as the daemon mounts them, stacked with overlayfs at a
//! target: read-only for `rstargz mount`, writable (one overlay right over
//! the FUSE layers: FUSE passthrough leaves no room for an overlay on an
//! overlay) for the container of `rstargz image optimize`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use nix::mount::MntFlags;
use rstargz_fs::registry::labels::{STARGZ_DIGEST, STARGZ_REFERENCE, TOC_DIGEST};
use rstargz_fs::registry::{Reference, Registry, RegistryError};
use rstargz_snapshotter::remote_fs::{RemoteError, RemoteFs};
use rstargz_snapshotter::snapshot::mount;
use serde::Deserialize;

use crate::StargzFs;

/// Why an image could not be mounted.
#[derive(Debug, thiserror::Error)]
pub enum ImageMountError {
    /// The reference is malformed or its manifest could not be read.
    #[error("{context}: {source}")]
    Registry {
        /// What was being done.
        context: String,
        /// The registry's error.
        #[source]
        source: RegistryError,
    },
    /// The manifest is not one we can mount.
    #[error("{0}")]
    Manifest(String),
    /// A layer could not be mounted (e.g. it is not eStargz).
    #[error("layer {index} ({digest}): {source}")]
    Layer {
        /// Position in the manifest, bottom first.
        index: usize,
        /// The layer's digest.
        digest: String,
        /// What the remote layer said.
        #[source]
        source: RemoteError,
    },
    /// A local directory or the overlay mount failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

#[derive(Deserialize)]
struct Descriptor {
    digest: String,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
    #[serde(default)]
    platform: Option<Platform>,
}

#[derive(Deserialize)]
struct Platform {
    architecture: String,
    os: String,
}

#[derive(Deserialize)]
struct Manifest {
    #[serde(default)]
    layers: Vec<Descriptor>,
    #[serde(default)]
    manifests: Vec<Descriptor>,
}

/// How the layers are stacked at the target.
#[derive(Debug, Clone, Copy)]
pub enum Stacking<'a> {
    /// Read-only.
    ReadOnly,
    /// Writable: changes go to `upper`, overlayfs's scratch is `work`.
    Writable {
        /// The overlay's upper directory.
        upper: &'a Path,
        /// The overlay's work directory (same filesystem as `upper`).
        work: &'a Path,
    },
}

/// An image mounted by [`mount_image`]; [`MountedImage::unmount`] undoes it.
#[derive(Debug)]
pub struct MountedImage {
    layers: Vec<PathBuf>,
    layers_root: PathBuf,
    target: PathBuf,
}

fn registry_error(context: String) -> impl FnOnce(RegistryError) -> ImageMountError {
    move |source| ImageMountError::Registry { context, source }
}

/// The layers of `reference`'s manifest, an index resolved to this machine's platform.
async fn image_layers(
    registry: &Registry,
    reference: &Reference,
) -> Result<Vec<Descriptor>, ImageMountError> {
    let parse = |bytes: &[u8]| {
        serde_json::from_slice::<Manifest>(bytes)
            .map_err(|e| ImageMountError::Manifest(format!("parse the manifest: {e}")))
    };
    let fetched = registry
        .get_manifest(reference)
        .await
        .map_err(registry_error(format!("read the manifest of {reference}")))?;
    let manifest = parse(&fetched.bytes)?;
    if manifest.manifests.is_empty() {
        return Ok(manifest.layers);
    }
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    let chosen = manifest
        .manifests
        .iter()
        .find(|m| {
            m.platform
                .as_ref()
                .is_some_and(|p| p.os == "linux" && p.architecture == arch)
        })
        .ok_or_else(|| ImageMountError::Manifest(format!("no linux/{arch} image in the index")))?;
    let pinned = Reference::parse(&format!(
        "{}/{}@{}",
        reference.registry, reference.repository, chosen.digest
    ))
    .map_err(registry_error(format!(
        "pin {reference} to {}",
        chosen.digest
    )))?;
    let fetched = registry
        .get_manifest(&pinned)
        .await
        .map_err(registry_error(format!("read the manifest of {pinned}")))?;
    Ok(parse(&fetched.bytes)?.layers)
}

/// Mounts every layer of `reference` with `fs` under `layers_root` (one
/// directory per layer, bottom first) and stacks them at `target`. On
/// error, whatever was mounted is unmounted again.
pub async fn mount_image(
    fs: &StargzFs,
    reference: &str,
    layers_root: &Path,
    target: &Path,
    stacking: Stacking<'_>,
) -> Result<MountedImage, ImageMountError> {
    let parsed = Reference::parse(reference)
        .map_err(registry_error(format!("parse the reference {reference:?}")))?;
    let layers = image_layers(fs.registry(), &parsed).await?;
    if layers.is_empty() {
        return Err(ImageMountError::Manifest(format!(
            "{reference} has no layers"
        )));
    }
    let mut image = MountedImage {
        layers: Vec::new(),
        layers_root: layers_root.to_path_buf(),
        target: target.to_path_buf(),
    };
    let result = async {
        for (index, layer) in layers.iter().enumerate() {
            let dir = layers_root.join(index.to_string());
            std::fs::create_dir_all(&dir).map_err(|source| ImageMountError::Io {
                context: format!("create {}", dir.display()),
                source,
            })?;
            let mut labels = BTreeMap::new();
            labels.insert(STARGZ_REFERENCE.to_string(), reference.to_string());
            labels.insert(STARGZ_DIGEST.to_string(), layer.digest.clone());
            if let Some(toc) = layer.annotations.get(TOC_DIGEST) {
                labels.insert(TOC_DIGEST.to_string(), toc.clone());
            }
            fs.mount(&dir, &labels)
                .await
                .map_err(|source| ImageMountError::Layer {
                    index,
                    digest: layer.digest.clone(),
                    source,
                })?;
            image.layers.push(dir);
        }
        let uppermost_first: Vec<PathBuf> = image.layers.iter().rev().cloned().collect();
        stack(&uppermost_first, target, stacking).map_err(|source| ImageMountError::Io {
            context: format!("mount the image at {}", target.display()),
            source,
        })
    }
    .await;
    match result {
        Ok(()) => Ok(image),
        Err(e) => {
            image.unmount_layers(fs).await;
            Err(e)
        }
    }
}

fn stack(
    uppermost_first: &[PathBuf],
    target: &Path,
    stacking: Stacking<'_>,
) -> std::io::Result<()> {
    let Stacking::Writable { upper, work } = stacking else {
        return mount::mount_read_only(uppermost_first, target);
    };
    let lowers: Vec<String> = uppermost_first
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    let options = [
        format!("lowerdir={}", lowers.join(":")),
        format!("upperdir={}", upper.display()),
        format!("workdir={}", work.display()),
    ];
    mount::mount("overlay", "overlay", &options, target)
}

impl MountedImage {
    /// How many layers are mounted.
    pub fn layer_count(&self) -> usize {
        self.layers.len()
    }

    /// Unmounts the stacked image (detaching it if busy), then every layer,
    /// and removes the layer mountpoints. Failures are logged: the caller
    /// is tearing down and can do nothing better.
    pub async fn unmount(self, fs: &StargzFs) {
        if let Err(e) = nix::mount::umount(&self.target) {
            tracing::warn!(dir = %self.target.display(), error = %e, "busy; detaching");
            if let Err(e) = nix::mount::umount2(&self.target, MntFlags::MNT_DETACH) {
                tracing::error!(dir = %self.target.display(), error = %e, "cannot unmount the image");
            }
        }
        self.unmount_layers(fs).await;
    }

    async fn unmount_layers(&self, fs: &StargzFs) {
        for dir in self.layers.iter().rev() {
            if let Err(e) = fs.unmount(dir).await {
                tracing::warn!(dir = %dir.display(), error = %e, "layer unmount failed");
            }
        }
        if let Err(e) = std::fs::remove_dir_all(&self.layers_root)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(dir = %self.layers_root.display(), error = %e, "cannot remove layer mountpoints");
        }
    }
}
