//! `rstargz image optimize SRC DST`: the flags of `ctr-remote image
//! optimize`'s workload and of `image convert`, and the lazy root the
//! library runs the workload on (every layer over our FUSE, through
//! `rstargz-remote`, recording first opens). The work is
//! `rstargz_image::optimize`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use rstargz_fs::fuse::AccessLog;
use rstargz_image::optimize::spec::{self, MountSpec, WorkloadOverrides};
use rstargz_image::optimize::{BoxError, LazyRoot, OptimizeOptions, optimize};
use rstargz_image::{ConvertOptions, ImageRef};
use rstargz_remote::image_mount::{MountedImage, Stacking, mount_image};
use rstargz_remote::{RemoteConfig, StargzFs};
use tokio::signal::unix::{SignalKind, signal};

use super::image_flags::{ConvertFlags, client, print_report, progress};

/// Arguments of `rstargz image optimize`.
#[derive(Debug, clap::Args)]
pub struct OptimizeArgs {
    /// Source image: `registry/repo:tag`, `repo@sha256:…` or `oci:DIR[:TAG]`.
    src: String,
    /// Destination image, same forms (a registry unless SRC is eStargz in one).
    dst: String,
    /// Entrypoint instead of the image's, as a JSON array (`'["/bin/sh","-c"]'`).
    #[arg(long, value_name = "JSON")]
    entrypoint: Option<String>,
    /// Command arguments instead of the image's Cmd, as a JSON array.
    #[arg(long, value_name = "JSON")]
    args: Option<String>,
    /// Environment variable `KEY=VALUE` added to the image's (or replacing it); repeatable.
    #[arg(long, value_name = "KEY=VALUE")]
    env: Vec<String>,
    /// Working directory instead of the image's.
    #[arg(long, value_name = "DIR")]
    cwd: Option<String>,
    /// `user[:group]` instead of the image's.
    #[arg(long, value_name = "USER")]
    user: Option<String>,
    /// Seconds the workload may run before it is killed (the recording also
    /// ends when it exits).
    #[arg(long, value_name = "SECONDS", default_value_t = 10)]
    period: u64,
    /// Extra mount, ctr-remote's syntax:
    /// `type=bind,source=/host,destination=/in,options=rbind:ro`; repeatable.
    #[arg(long = "mount", value_name = "SPEC")]
    mounts: Vec<String>,
    /// The runc binary.
    #[arg(long, value_name = "PATH", default_value = "runc")]
    runc: PathBuf,
    #[command(flatten)]
    convert: ConvertFlags,
}

/// The image over our FUSE layers, recording the files opened.
struct FuseRoot {
    fs: StargzFs,
    log: AccessLog,
}

impl LazyRoot for FuseRoot {
    type Mounted = MountedImage;

    async fn mount(
        &self,
        reference: &str,
        scratch: &Path,
        (upper, work): (&Path, &Path),
        target: &Path,
    ) -> Result<MountedImage, BoxError> {
        let stacking = Stacking::Writable { upper, work };
        Ok(mount_image(&self.fs, reference, scratch, target, stacking).await?)
    }

    async fn unmount(&self, mounted: MountedImage) {
        mounted.unmount(&self.fs).await;
    }

    fn opened(&self) -> Vec<String> {
        self.log.paths()
    }

    fn forget_opened(&self) {
        self.log.clear();
    }
}

/// Runs `rstargz image optimize`.
pub fn run(args: OptimizeArgs) -> anyhow::Result<()> {
    // As `mount` does: FUSE workers' request buffers off the zeroed heap.
    rstargz_remote::memory::tune_allocator();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                // The recorded list is applied to every layer, so the
                // writer's "prioritized file not in the layer" is expected;
                // fuser's notes (ioctls it does not serve, its second
                // unmount of a layer we unmounted) say nothing to a user.
                .unwrap_or_else(|_| {
                    tracing_subscriber::EnvFilter::new(
                        "warn,fuser=error,rstargz_fs::estargz::writer=error",
                    )
                }),
        )
        .with_writer(std::io::stderr)
        .init();
    let convert = args.convert.options()?;
    let work_dir = convert.temp_dir.clone().unwrap_or_else(std::env::temp_dir);
    let state = tempfile::Builder::new()
        .prefix("rstargz-optimize-state-")
        .tempdir_in(&work_dir)
        .with_context(|| format!("create a state directory in {}", work_dir.display()))?;
    let runtime = super::service_runtime()?;
    let result = runtime.block_on(run_async(args, convert, work_dir, state.path()));
    // The remote layers' background tasks may still write to the state
    // directory: stop them before removing it.
    runtime.shutdown_timeout(Duration::from_secs(10));
    let state_dir = state.path().to_path_buf();
    if let Err(e) = state.close() {
        tracing::warn!(dir = %state_dir.display(), error = %e, "cannot remove the state directory");
    }
    result
}

fn overrides(args: &OptimizeArgs) -> anyhow::Result<WorkloadOverrides> {
    Ok(WorkloadOverrides {
        entrypoint: args
            .entrypoint
            .as_deref()
            .map(|v| spec::json_array("--entrypoint", v))
            .transpose()?,
        args: args
            .args
            .as_deref()
            .map(|v| spec::json_array("--args", v))
            .transpose()?,
        env: args.env.clone(),
        cwd: args.cwd.clone(),
        user: args.user.clone(),
        mounts: args
            .mounts
            .iter()
            .map(|m| MountSpec::parse(m))
            .collect::<Result<_, _>>()?,
    })
}

async fn run_async(
    args: OptimizeArgs,
    convert: ConvertOptions,
    work_dir: PathBuf,
    state: &Path,
) -> anyhow::Result<()> {
    let workload = overrides(&args)?;
    let src = ImageRef::parse(&args.src)?;
    let dst = ImageRef::parse(&args.dst)?;
    let registry = &args.convert.registry;
    let client = client(registry, &[&src, &dst])?;

    let mut config = RemoteConfig::default();
    config.resolver.docker_config = registry.docker_config.clone();
    config.resolver.config_path = registry.hosts_dir.clone();
    if registry.plain_http {
        for at in [&src, &dst] {
            if let ImageRef::Registry(r) = at {
                config.resolver.insecure_hosts.push(r.registry.clone());
            }
        }
    }
    let mut fs = StargzFs::new(state, config).context("set up remote layers")?;
    let log = AccessLog::default();
    fs.record_opens(log.clone());
    let root = FuseRoot { fs, log };

    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let mut sigint = signal(SignalKind::interrupt()).context("install SIGINT handler")?;
    let mut sigterm = signal(SignalKind::terminate()).context("install SIGTERM handler")?;
    let watcher = tokio::spawn(async move {
        tokio::select! {
            _ = sigint.recv() => {}
            _ = sigterm.recv() => {}
        }
        eprintln!("stopping: cleaning up");
        let _ = stop_tx.send(true);
    });

    let opts = OptimizeOptions {
        convert,
        workload,
        period: Duration::from_secs(args.period),
        runc: args.runc.clone(),
        work_dir: Some(work_dir),
    };
    let started = std::time::Instant::now();
    let result = optimize(&client, &src, &dst, &opts, &root, progress(), stop).await;
    watcher.abort();
    let report = result.with_context(|| format!("optimizing {src} into {dst}"))?;
    let mut extra = serde_json::Map::new();
    extra.insert("prioritized".into(), report.recorded.len().into());
    print_report(&report.convert, started, extra);
    Ok(())
}
