//! Lazily mounts an image from a registry through any snapshotter's
//! Snapshots socket (rstargz or the Go reference), the way containerd's
//! remote-snapshot handler does, and mounts a container's rw snapshot on top
//! so reads go through overlayfs exactly as in a container.
//!
//! Per layer (bottom first): `Prepare` with the `ctr-remote rpull` labels,
//! which a remote snapshotter answers with AlreadyExists once the layer is
//! mounted; then `Prepare` of an active snapshot on the chain, whose mounts
//! (overlay on the layer mounts) are mounted at a directory of ours.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use rstargz_fs::registry::labels::{STARGZ_DIGEST, STARGZ_LAYERS, STARGZ_REFERENCE, TOC_DIGEST};
use rstargz_fs::registry::{Reference, Registry, RegistryConfig};
use rstargz_proto::snapshots as pb;
use rstargz_proto::types::Mount;
use serde::Serialize;

use rstargz_snapshotter::client::{self, Client};
use rstargz_snapshotter::snapshot::{MAX_LABEL_BYTES, TARGET_REF_LABEL};

/// One layer of an image as the labels describe it.
#[derive(Debug, Clone)]
pub struct LayerInfo {
    /// Layer blob digest.
    pub digest: String,
    /// The eStargz TOC digest annotation, if any.
    pub toc_digest: Option<String>,
}

/// An image in a registry, resolved to its layers (bottom first).
#[derive(Debug, Clone)]
pub struct RemoteImage {
    /// The image reference as given.
    pub reference: String,
    /// Layers, bottom first.
    pub layers: Vec<LayerInfo>,
}

/// Errors of resolving or mounting.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    /// Registry access failed.
    #[error("registry: {0}")]
    Registry(#[from] rstargz_fs::registry::RegistryError),
    /// The manifest is not a single-platform image manifest.
    #[error("manifest of {0}: {1}")]
    Manifest(String, String),
    /// The snapshotter socket could not be reached.
    #[error("connecting to {0}: {1}")]
    Connect(String, tonic::transport::Error),
    /// An RPC failed.
    #[error("{0} {1}: {2}")]
    Rpc(&'static str, String, tonic::Status),
    /// The snapshotter extracted the layer instead of mounting it remotely.
    #[error("layer {0} was not mounted remotely (Prepare succeeded instead of AlreadyExists)")]
    NotRemote(String),
    /// Mounting the returned mounts failed.
    #[error("mounting {0}: {1}")]
    Mount(PathBuf, std::io::Error),
}

/// Fetches the manifest of `reference` and lists its layers.
pub async fn resolve(reference: &str) -> Result<RemoteImage, MountError> {
    let parsed = Reference::parse(reference)?;
    let registry = Registry::new(RegistryConfig::default())?;
    let manifest = registry.get_manifest(&parsed).await?;
    let bad = |why: &str| MountError::Manifest(reference.to_owned(), why.to_owned());
    let json: serde_json::Value =
        serde_json::from_slice(&manifest.bytes).map_err(|e| bad(&e.to_string()))?;
    let layers = json["layers"]
        .as_array()
        .ok_or_else(|| bad("no layers (an index is not supported)"))?
        .iter()
        .map(|l| {
            Ok(LayerInfo {
                digest: l["digest"]
                    .as_str()
                    .ok_or_else(|| bad("layer without digest"))?
                    .to_owned(),
                toc_digest: l["annotations"][TOC_DIGEST].as_str().map(str::to_owned),
            })
        })
        .collect::<Result<Vec<_>, MountError>>()?;
    Ok(RemoteImage {
        reference: reference.to_owned(),
        layers,
    })
}

/// A mounted image: the container's root at `dir`.
#[derive(Debug)]
pub struct MountedImage {
    /// Where the container's root is mounted.
    pub dir: PathBuf,
    /// Names of the committed layer snapshots, bottom first.
    pub chain: Vec<String>,
    /// Key of the active snapshot on top.
    pub active: String,
    /// Per layer: milliseconds from Prepare to its AlreadyExists answer.
    pub prepare_ms: Vec<f64>,
}

/// Timing of a mount, for reports.
#[derive(Debug, Clone, Serialize)]
pub struct MountFigures {
    /// Milliseconds from Prepare to AlreadyExists, per layer.
    pub prepare_ms: Vec<f64>,
}

/// A client of one snapshotter socket.
pub struct Snapshotter {
    client: Client,
}

fn rpc(op: &'static str, key: &str) -> impl FnOnce(tonic::Status) -> MountError {
    let key = key.to_owned();
    move |s| MountError::Rpc(op, key, s)
}

impl Snapshotter {
    /// Connects to the Snapshots service on `socket`.
    pub async fn connect(socket: &Path) -> Result<Self, MountError> {
        let client = client::connect(socket)
            .await
            .map_err(|e| MountError::Connect(socket.display().to_string(), e))?;
        Ok(Snapshotter { client })
    }

    /// Mounts `image` lazily and a container root on it at `dir`; `tag`
    /// makes the snapshot names unique.
    pub async fn mount(
        &mut self,
        image: &RemoteImage,
        tag: &str,
        dir: &Path,
    ) -> Result<MountedImage, MountError> {
        let all_layers = image
            .layers
            .iter()
            .map(|l| l.digest.as_str())
            .collect::<Vec<_>>();
        let mut parent = String::new();
        let mut chain = Vec::new();
        let mut prepare_ms = Vec::new();
        for (i, layer) in image.layers.iter().enumerate() {
            let name = format!("{tag}-layer-{i}");
            let mut labels: HashMap<String, String> = [
                (TARGET_REF_LABEL, name.as_str()),
                (STARGZ_REFERENCE, image.reference.as_str()),
                (STARGZ_DIGEST, layer.digest.as_str()),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
            labels.insert(STARGZ_LAYERS.to_owned(), layers_label(&all_layers[i..]));
            if let Some(toc) = &layer.toc_digest {
                labels.insert(TOC_DIGEST.to_owned(), toc.clone());
            }
            let key = format!("{tag}-extract-{i}");
            let started = Instant::now();
            let res = self
                .client
                .prepare(pb::PrepareSnapshotRequest {
                    snapshotter: String::new(),
                    key: key.clone(),
                    parent: parent.clone(),
                    labels,
                })
                .await;
            prepare_ms.push(started.elapsed().as_secs_f64() * 1e3);
            match res {
                Err(s) if s.code() == tonic::Code::AlreadyExists => {}
                Err(s) => return Err(MountError::Rpc("Prepare", key, s)),
                Ok(_) => {
                    let _ = self.remove(&key).await;
                    return Err(MountError::NotRemote(layer.digest.clone()));
                }
            }
            chain.push(name.clone());
            parent = name;
        }
        let active = format!("{tag}-container");
        let mounts = self
            .client
            .prepare(pb::PrepareSnapshotRequest {
                snapshotter: String::new(),
                key: active.clone(),
                parent,
                labels: HashMap::new(),
            })
            .await
            .map_err(rpc("Prepare", &active))?
            .into_inner()
            .mounts;
        std::fs::create_dir_all(dir).map_err(|e| MountError::Mount(dir.to_owned(), e))?;
        mount_all(&mounts, dir).map_err(|e| MountError::Mount(dir.to_owned(), e))?;
        Ok(MountedImage {
            dir: dir.to_owned(),
            chain,
            active,
            prepare_ms,
        })
    }

    /// Times one Mounts call for `key` (containerd makes one per container
    /// start; it checks every remote layer of the chain).
    pub async fn time_mounts(&mut self, key: &str) -> Result<std::time::Duration, MountError> {
        let started = Instant::now();
        self.client
            .mounts(pb::MountsRequest {
                snapshotter: String::new(),
                key: key.to_owned(),
            })
            .await
            .map_err(rpc("Mounts", key))?;
        Ok(started.elapsed())
    }

    /// Unmounts the container root and removes its snapshots (top first).
    pub async fn unmount(&mut self, m: &MountedImage) -> Result<(), MountError> {
        nix::mount::umount2(&m.dir, nix::mount::MntFlags::MNT_DETACH)
            .map_err(|e| MountError::Mount(m.dir.clone(), e.into()))?;
        self.remove(&m.active).await?;
        for name in m.chain.iter().rev() {
            self.remove(name).await?;
        }
        Ok(())
    }

    async fn remove(&mut self, key: &str) -> Result<(), MountError> {
        self.client
            .remove(pb::RemoveSnapshotRequest {
                snapshotter: String::new(),
                key: key.to_owned(),
            })
            .await
            .map_err(rpc("Remove", key))?;
        Ok(())
    }
}

/// The `stargz.layers` label of a layer: it and the layers above it, as
/// many as fit the label size limit (as containerd's stargz handler does:
/// leaving some out only costs the warm-up of those).
fn layers_label(layers: &[&str]) -> String {
    let mut label = String::new();
    for l in layers {
        let sep = usize::from(!label.is_empty());
        if STARGZ_LAYERS.len() + label.len() + sep + l.len() > MAX_LABEL_BYTES {
            break;
        }
        if sep == 1 {
            label.push(',');
        }
        label.push_str(l);
    }
    label
}

/// Mounts containerd-style `mounts` (one bind or overlay) at `target`, as
/// containerd would (deep overlays included).
pub fn mount_all(mounts: &[Mount], target: &Path) -> std::io::Result<()> {
    let [m] = mounts else {
        return Err(std::io::Error::other(format!(
            "expected one mount, got {mounts:?}"
        )));
    };
    rstargz_snapshotter::snapshot::mount::mount(&m.r#type, &m.source, &m.options, target)
}

/// Mounts an overlay of `lower` (read-only) with a fresh upper layer under
/// `scratch` at `target`: the native baseline of a container's root.
pub fn mount_native(lower: &Path, scratch: &Path, target: &Path) -> std::io::Result<()> {
    let (upper, work) = (scratch.join("upper"), scratch.join("work"));
    for d in [&upper, &work, &target.to_path_buf()] {
        std::fs::create_dir_all(d)?;
    }
    let m = Mount {
        r#type: "overlay".into(),
        source: "overlay".into(),
        target: String::new(),
        options: vec![
            format!("lowerdir={}", lower.display()),
            format!("upperdir={}", upper.display()),
            format!("workdir={}", work.display()),
        ],
    };
    mount_all(std::slice::from_ref(&m), target)
}
