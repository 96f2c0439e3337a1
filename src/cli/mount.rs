//! `rstargz mount REF DIR`: mounts a whole eStargz image lazily without
//! containerd — each layer over FUSE (as the daemon does), stacked with a
//! read-only overlayfs at DIR — until Ctrl-C or SIGTERM, then unmounts
//! everything. For demos, debugging and benchmarks.

use std::path::PathBuf;

use anyhow::Context;
use rstargz_fs::fuse::AccessLog;
use rstargz_fs::registry::Reference;
use tokio::signal::unix::{SignalKind, signal};

use crate::config::Config;
use rstargz_remote::StargzFs;
use rstargz_remote::image_mount::{Stacking, mount_image};

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
    let image = mount_image(
        &fs,
        &args.reference,
        &layers_root,
        &args.dir,
        Stacking::ReadOnly,
    )
    .await
    .with_context(|| format!("mount {}", args.reference))?;
    tracing::info!(reference = %args.reference, dir = %args.dir.display(), layers = image.layer_count(), "mounted; Ctrl-C to unmount");
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
    image.unmount(&fs).await;
    tracing::info!("unmounted");
    Ok(())
}
