//! `image optimize`: runs an image's workload in a real container (runc)
//! over the image mounted lazily, records the files it opens, and converts
//! the image with them prioritized (first in each layer, then
//! `.prefetch.landmark`), as `ctr-remote image optimize` does with fanotify.
//!
//! Contract:
//! - The image is mounted by a [`LazyRoot`] (the binary's: every layer over
//!   our FUSE, recording first opens, under one writable overlay), and is
//!   the container's rootfs. Only an eStargz image in a registry can be
//!   mounted so: any other source is first converted, unprioritized, to the
//!   destination (a registry then), which is mounted instead.
//! - The workload runs until it exits or `period` ends (then it is killed);
//!   the conversion follows either way. A stop request kills it and ends
//!   with [`OptimizeError::Interrupted`] before anything more is written.
//! - On every path the container is deleted, the overlay and the image are
//!   unmounted and the scratch directory is removed.
//! - The recorded list is the convert's prioritized files, after any given
//!   in the options.

pub mod runc;
pub mod spec;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rstargz_fs::registry::Registry;
use serde_json::Value;
use tokio::sync::watch;

use self::runc::{Ended, Runc};
use self::spec::WorkloadOverrides;
use super::convert::{ConvertOptions, ConvertReport, convert};
use super::error::ImageError;
use super::oci::{self, ANNOTATION_TOC_DIGEST};
use super::platform::PlatformSpec;
use super::progress::{Event, Progress};
use super::store::{ImageRef, Store};

/// A boxed error from a [`LazyRoot`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Everything that can stop an optimization.
#[derive(Debug, thiserror::Error)]
pub enum OptimizeError {
    /// Reading, converting or writing the image failed.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// A workload flag is malformed or cannot be applied.
    #[error("{flag}: {reason}")]
    Flag {
        /// The flag.
        flag: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// No runc to run the workload with.
    #[error("runc not found ({0}): install runc or point --runc at it")]
    RuncMissing(PathBuf),
    /// The source cannot be mounted lazily and there is nowhere to stage it.
    #[error(
        "{0} is not an eStargz image in a registry, so it cannot be mounted lazily; \
         give a registry destination (it is converted there first) or convert it first"
    )]
    NotMountable(String),
    /// Mounting the image lazily failed.
    #[error("mount {reference} lazily: {source}")]
    Mount {
        /// What was mounted.
        reference: String,
        /// The mounter's error.
        #[source]
        source: BoxError,
    },
    /// A local file or mount operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The caller asked to stop (Ctrl-C); everything was cleaned up.
    #[error("interrupted")]
    Interrupted,
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> OptimizeError {
    let context = context.into();
    move |source| OptimizeError::Io { context, source }
}

/// Mounts an image lazily and records the files opened in it (the binary
/// implements it with `rstargz-remote`'s FUSE layers).
pub trait LazyRoot {
    /// What [`LazyRoot::unmount`] needs.
    type Mounted;
    /// Mounts the image at `reference` writable at `target`, changes going
    /// to `upper` (overlayfs's work directory: `work`), with any per-layer
    /// directories under `scratch`.
    fn mount(
        &self,
        reference: &str,
        scratch: &Path,
        upper_work: (&Path, &Path),
        target: &Path,
    ) -> impl Future<Output = Result<Self::Mounted, BoxError>>;
    /// Unmounts what [`LazyRoot::mount`] mounted (errors are the mounter's to log).
    fn unmount(&self, mounted: Self::Mounted) -> impl Future<Output = ()>;
    /// The files opened since the mount (or the last [`LazyRoot::forget_opened`]),
    /// `/`-rooted, in first-open order.
    fn opened(&self) -> Vec<String>;
    /// Forgets the files opened so far (those we read ourselves).
    fn forget_opened(&self);
}

/// Options of [`optimize`].
#[derive(Debug, Clone)]
pub struct OptimizeOptions {
    /// The conversion; the recorded files are appended to its prioritized ones.
    pub convert: ConvertOptions,
    /// What the flags change of the image's entrypoint, cmd, env…
    pub workload: WorkloadOverrides,
    /// How long the workload may run before it is killed.
    pub period: Duration,
    /// The runc binary (a path or a name on `PATH`).
    pub runc: PathBuf,
    /// Where the scratch directory goes (default: the system temp dir).
    pub work_dir: Option<PathBuf>,
}

/// What [`optimize`] did.
#[derive(Debug)]
pub struct OptimizeReport {
    /// The final conversion.
    pub convert: ConvertReport,
    /// The files the workload opened, in first-open order.
    pub recorded: Vec<String>,
    /// How the workload ended.
    pub ended: Ended,
    /// Whether the source was first converted to the destination to be mounted.
    pub staged: bool,
}

/// The image config (`config` object) of this machine's platform of the
/// image at `at`, and whether all its layers are eStargz.
async fn inspect(client: &Registry, at: &ImageRef) -> Result<(Value, bool), OptimizeError> {
    let store = Store::source(client, at)?;
    let root = store.root().await?;
    let parse = |bytes: &[u8], what: &str| {
        serde_json::from_slice::<Value>(bytes)
            .map_err(|e| ImageError::document(what.to_owned(), e.to_string()))
    };
    let mut doc = parse(&root.bytes, "root")?;
    if oci::is_index(&oci::document_media_type(&doc, &root.media_type)) {
        let host = PlatformSpec::parse(std::env::consts::OS)?;
        let entry = oci::descriptors(&doc, "manifests", "index")?
            .into_iter()
            .find(|d| d.platform.as_ref().is_some_and(|p| host.matches(p)))
            .ok_or_else(|| {
                ImageError::document(format!("{at}"), format!("no {host} image in the index"))
            })?;
        doc = parse(&store.document(&entry).await?, "manifest")?;
    }
    let config: oci::Descriptor = serde_json::from_value(doc["config"].clone())
        .map_err(|e| ImageError::document("manifest", format!("bad \"config\": {e}")))?;
    let config = parse(&store.document(&config).await?, "image config")?;
    let layers = oci::descriptors(&doc, "layers", "manifest")?;
    let estargz = layers
        .iter()
        .all(|l| l.annotations.contains_key(ANNOTATION_TOC_DIGEST));
    Ok((config["config"].clone(), estargz))
}

/// Optimizes `src` into `dst` (see the module docs). `stop` turning true
/// interrupts it.
pub async fn optimize<R: LazyRoot>(
    client: &Registry,
    src: &ImageRef,
    dst: &ImageRef,
    opts: &OptimizeOptions,
    root: &R,
    progress: Arc<dyn Progress>,
    mut stop: watch::Receiver<bool>,
) -> Result<OptimizeReport, OptimizeError> {
    let note = |text: String| progress.event(&Event::Note(&text));
    let scratch = tempfile::Builder::new()
        .prefix("rstargz-optimize-")
        .tempdir_in(opts.work_dir.clone().unwrap_or_else(std::env::temp_dir))
        .map_err(io("create the scratch directory"))?;
    let runc = Runc::find(&opts.runc, &scratch.path().join("runc"))?;
    let (config, estargz) = inspect(client, src).await?;
    let staged = !(estargz && matches!(src, ImageRef::Registry(_)));
    let mount_ref = if !staged {
        src.to_string()
    } else if let ImageRef::Registry(_) = dst {
        note(format!(
            "{src} is not eStargz in a registry: converting it to {dst} first, to mount it lazily"
        ));
        let mut first = opts.convert.clone();
        first.writer.prioritized.clear();
        first.platforms = Some(vec![PlatformSpec::parse(std::env::consts::OS)?]);
        until_stopped(
            &mut stop,
            convert(client, src, dst, &first, progress.clone()),
        )
        .await??;
        dst.to_string()
    } else {
        return Err(OptimizeError::NotMountable(src.to_string()));
    };

    let dirs = Dirs::new(scratch.path())?;
    note(format!("mounting {mount_ref} lazily"));
    let mounted = root
        .mount(
            &mount_ref,
            &dirs.layers,
            (&dirs.upper, &dirs.work),
            &dirs.rootfs,
        )
        .await
        .map_err(|source| OptimizeError::Mount {
            reference: mount_ref.clone(),
            source,
        })?;
    let ran = run_workload(&dirs, &config, opts, root, &runc, &mut stop, &note).await;
    root.unmount(mounted).await;
    let ended = match ran? {
        // A stop request that came as the workload ended still stops.
        Ended::Exited(_) if *stop.borrow() => Ended::Interrupted,
        ended => ended,
    };
    let recorded = root.opened();
    match ended {
        Ended::Exited(status) if !status.success() => {
            note(format!("warning: the workload exited with {status}"))
        }
        Ended::Exited(_) => note("the workload exited".into()),
        Ended::PeriodOver => note(format!(
            "the workload was stopped after {}s",
            opts.period.as_secs()
        )),
        Ended::Interrupted => return Err(OptimizeError::Interrupted),
    }
    note(format!(
        "{} files opened; converting {src} to {dst} with them prioritized",
        recorded.len()
    ));
    let mut last = opts.convert.clone();
    last.writer.prioritized.extend(recorded.iter().cloned());
    let report = until_stopped(&mut stop, convert(client, src, dst, &last, progress)).await??;
    Ok(OptimizeReport {
        convert: report,
        recorded,
        ended,
        staged,
    })
}

/// Awaits `work` unless `stop` turns true first (then `work` is dropped).
async fn until_stopped<T>(
    stop: &mut watch::Receiver<bool>,
    work: impl Future<Output = T>,
) -> Result<T, OptimizeError> {
    tokio::select! {
        done = work => Ok(done),
        _ = stop.wait_for(|stopped| *stopped) => Err(OptimizeError::Interrupted),
    }
}

/// The scratch directory's layout.
struct Dirs {
    /// Per-layer mountpoints of the lazy root.
    layers: PathBuf,
    upper: PathBuf,
    work: PathBuf,
    bundle: PathBuf,
    /// The container's root: the image, writable.
    rootfs: PathBuf,
}

impl Dirs {
    fn new(scratch: &Path) -> Result<Dirs, OptimizeError> {
        let bundle = scratch.join("bundle");
        let dirs = Dirs {
            layers: scratch.join("layers"),
            upper: scratch.join("upper"),
            work: scratch.join("work"),
            rootfs: bundle.join("rootfs"),
            bundle,
        };
        for d in [&dirs.layers, &dirs.upper, &dirs.work, &dirs.rootfs] {
            std::fs::create_dir_all(d).map_err(io(format!("create {}", d.display())))?;
        }
        Ok(dirs)
    }
}

/// Writes the bundle and runs it.
async fn run_workload<R: LazyRoot>(
    dirs: &Dirs,
    config: &Value,
    opts: &OptimizeOptions,
    root: &R,
    runc: &Runc,
    stop: &mut watch::Receiver<bool>,
    note: &impl Fn(String),
) -> Result<Ended, OptimizeError> {
    let process = spec::process(config, &opts.workload)?;
    let ids = spec::resolve_user(&process.user, &dirs.rootfs)?;
    // The user lookup read /etc/passwd through the lazy root: not the workload's.
    root.forget_opened();
    let id = format!("rstargz-optimize-{}", std::process::id());
    let bundle_config =
        spec::runtime_config(&process, ids, &opts.workload.mounts, &format!("/{id}"));
    let path = dirs.bundle.join("config.json");
    std::fs::write(&path, bundle_config.to_string())
        .map_err(io(format!("write {}", path.display())))?;
    if *stop.borrow() {
        return Ok(Ended::Interrupted);
    }
    note(format!(
        "running {:?} for up to {}s",
        process.args,
        opts.period.as_secs()
    ));
    runc.run(&dirs.bundle, &id, opts.period, stop).await
}
