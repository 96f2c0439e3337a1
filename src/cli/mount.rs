//! `rstargz mount REF DIR`: mounts a whole eStargz image lazily without
//! containerd — each layer over FUSE (as the daemon does), stacked with a
//! read-only overlayfs at DIR — until Ctrl-C or SIGTERM, then unmounts
//! everything. For demos, debugging and benchmarks.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use nix::mount::MntFlags;
use rstargz_fs::fuse::AccessLog;
use rstargz_fs::registry::labels::{STARGZ_DIGEST, STARGZ_REFERENCE, TOC_DIGEST};
use rstargz_fs::registry::{Reference, Registry};
use serde::Deserialize;
use tokio::signal::unix::{SignalKind, signal};

use crate::config::Config;
use rstargz_remote::StargzFs;
use rstargz_snapshotter::remote_fs::RemoteFs;
use rstargz_snapshotter::snapshot::mount;

/// Arguments of `rstargz mount`.
#[derive(Debug, clap::Args)]
pub struct MountArgs {
    /// Image reference (`host/repo:tag` or `host/repo@sha256:…`).
    pub reference: String,
    /// Where the image's root filesystem appears.
    pub dir: PathBuf,
    /// Reach the registry over plain HTTP.
    #[arg(long)]
    pub plain_http: bool,
    /// Layer mountpoints, TOC copies and chunk cache [default: /var/lib/rstargz/mount].
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// TOML config file (remote-layer keys as for `serve`).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Write the files the image's users open, in first-open order, one
    /// `/`-rooted path a line, to FILE at unmount (for `image convert --prioritize-file`).
    #[arg(long, value_name = "FILE")]
    pub record: Option<PathBuf>,
    /// Log level or tracing filter.
    #[arg(long, default_value = "info")]
    pub log_level: String,
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

/// Runs the mount until a signal.
pub fn run(args: MountArgs) -> anyhow::Result<()> {
    // As `serve` does. Without it each FUSE worker's 16 MiB request buffer
    // came from the heap, zeroed: 3.6 GB resident for 127 layers.
    rstargz_remote::memory::tune_allocator();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&args.log_level)
                .with_context(|| format!("bad --log-level {:?}", args.log_level))?,
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = super::service_runtime()?;
    runtime.block_on(mount(args))
}

/// The image manifest of `reference`, resolving an index to this machine's platform.
async fn image_layers(
    registry: &Registry,
    reference: &Reference,
) -> anyhow::Result<Vec<Descriptor>> {
    let fetched = registry.get_manifest(reference).await?;
    let manifest: Manifest = serde_json::from_slice(&fetched.bytes).context("parse manifest")?;
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
        .with_context(|| format!("no linux/{arch} image in the index"))?;
    let pinned = Reference::parse(&format!(
        "{}/{}@{}",
        reference.registry, reference.repository, chosen.digest
    ))?;
    let fetched = registry.get_manifest(&pinned).await?;
    let manifest: Manifest = serde_json::from_slice(&fetched.bytes).context("parse manifest")?;
    Ok(manifest.layers)
}

async fn mount(args: MountArgs) -> anyhow::Result<()> {
    let reference = Reference::parse(&args.reference)?;
    let mut config = Config::load(args.config.as_deref())?.remote;
    if args.plain_http {
        config
            .resolver
            .insecure_hosts
            .push(reference.registry.clone());
    }
    let state = args
        .state_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from("/var/lib/rstargz/mount"));
    let layers_root = state.join(format!("mnt-{}", std::process::id()));
    let mut fs = StargzFs::new(&state, config).context("set up remote layers")?;
    let access_log = args.record.as_ref().map(|_| AccessLog::default());
    if let Some(log) = &access_log {
        fs.record_opens(log.clone());
    }
    let layers = image_layers(fs.registry(), &reference).await?;
    if layers.is_empty() {
        bail!("{} has no layers", args.reference);
    }
    let mut mounted: Vec<PathBuf> = Vec::new();
    let result = async {
        for (i, layer) in layers.iter().enumerate() {
            let dir = layers_root.join(i.to_string());
            std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
            let mut labels = BTreeMap::new();
            labels.insert(STARGZ_REFERENCE.to_string(), args.reference.clone());
            labels.insert(STARGZ_DIGEST.to_string(), layer.digest.clone());
            if let Some(toc) = layer.annotations.get(TOC_DIGEST) {
                labels.insert(TOC_DIGEST.to_string(), toc.clone());
            }
            fs.mount(&dir, &labels)
                .await
                .with_context(|| format!("layer {i} ({})", layer.digest))?;
            mounted.push(dir);
        }
        stack(&mounted, &args.dir)
    }
    .await;
    if let Err(e) = result {
        unmount_layers(&fs, &mounted, &layers_root).await;
        return Err(e);
    }
    tracing::info!(reference = %args.reference, dir = %args.dir.display(), layers = mounted.len(), "mounted; Ctrl-C to unmount");
    let mut sigterm = signal(SignalKind::terminate()).context("install SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("install SIGINT handler")?;
    tokio::select! {
        _ = sigterm.recv() => {}
        _ = sigint.recv() => {}
    }
    if let (Some(file), Some(log)) = (&args.record, &access_log) {
        let paths = log.paths();
        let text: String = paths.iter().map(|p| format!("{p}\n")).collect();
        match std::fs::write(file, text) {
            Ok(()) => {
                tracing::info!(file = %file.display(), files = paths.len(), "recorded opened files")
            }
            Err(e) => {
                tracing::error!(file = %file.display(), error = %e, "cannot write the record")
            }
        }
    }
    if let Err(e) = nix::mount::umount(&args.dir) {
        tracing::warn!(dir = %args.dir.display(), error = %e, "busy; detaching");
        nix::mount::umount2(&args.dir, MntFlags::MNT_DETACH)
            .with_context(|| format!("unmount {}", args.dir.display()))?;
    }
    unmount_layers(&fs, &mounted, &layers_root).await;
    tracing::info!("unmounted");
    Ok(())
}

/// Stacks the layer mounts (bottom first) read-only at `target`.
fn stack(layers: &[PathBuf], target: &Path) -> anyhow::Result<()> {
    let uppermost_first: Vec<PathBuf> = layers.iter().rev().cloned().collect();
    mount::mount_read_only(&uppermost_first, target)
        .with_context(|| format!("mount the image at {}", target.display()))
}

async fn unmount_layers(fs: &StargzFs, mounted: &[PathBuf], root: &Path) {
    for dir in mounted.iter().rev() {
        if let Err(e) = fs.unmount(dir).await {
            tracing::warn!(dir = %dir.display(), error = %e, "layer unmount failed");
        }
    }
    if let Err(e) = std::fs::remove_dir_all(root) {
        tracing::warn!(dir = %root.display(), error = %e, "cannot remove layer mountpoints");
    }
}
