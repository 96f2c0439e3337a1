//! Cold start through containerd's CRI plugin, as kubelet drives a node:
//! PullImage, RunPodSandbox, CreateContainer and StartContainer to the
//! workload's end, timed from the pull. Each run gets a fresh snapshotter
//! and a fresh containerd with CRI on (`snapshotter = "rstargz"` with
//! `disable_snapshot_annotations = false`, or `overlayfs` for the full-pull
//! baseline), a host-network pod, and the page cache dropped. The pause
//! image is pulled before the clock starts, as on a node that already has
//! it. The CRI client and containerd guard are the tests' (test support).

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, bail};
use rstargz_fs::registry::Registry;
use rstargz_image::ImageRef;
use rstargz_image::build::{self, BuildOptions, LayerInput};
use rstargz_test_support::containerd::{Containerd, CriConfig};
use rstargz_test_support::cri::{
    CgroupParent, Cri, PAUSE_ENTRYPOINT, Pod, pause_layer, pod_config,
};
use rstargz_test_support::proxy::Shaper;

use super::images::Workload;
use super::model::{LinkCase, Mode, Sample};
use super::procs::clean;
use super::procs::{self, BUSYBOX, Snapshotter};
use super::{Options, keep_logs, sample};

/// Modes measured through CRI (the Go reference is not run under CRI).
pub const MODES: [Mode; 3] = [Mode::Overlayfs, Mode::Rstargz, Mode::RstargzPrio];

/// Pushes the pause image (busybox-static, its entrypoint a long sleep) to
/// `registry`; returns its reference.
pub async fn push_pause(client: &Registry, registry: &str, work: &Path) -> anyhow::Result<String> {
    let layer = pause_layer(work, Path::new(BUSYBOX))
        .with_context(|| format!("the pause image from {BUSYBOX} (install busybox-static)"))?;
    let reference = format!("{registry}/bench/pause:1");
    let opts = BuildOptions {
        entrypoint: PAUSE_ENTRYPOINT.map(String::from).to_vec(),
        ..BuildOptions::default()
    };
    build::from_dirs(
        client,
        &ImageRef::parse(&reference)?,
        &[LayerInput::Dir(layer)],
        &opts,
    )
    .await?;
    Ok(reference)
}

/// One cold start of `reference` in `mode` through CRI.
#[allow(clippy::too_many_arguments)]
pub async fn measure(
    opts: &Options,
    shaper: &Shaper,
    w: &Workload,
    reference: &str,
    pause: &str,
    mode: Mode,
    link: &LinkCase,
    run: usize,
) -> anyhow::Result<Sample> {
    if !MODES.contains(&mode) {
        bail!("{} is not measured through CRI", mode.label());
    }
    let dir = opts.work.join("run");
    clean(&dir)?;
    std::fs::create_dir_all(&dir)?;
    let result = async {
        let snap = mode
            .snapshotter()
            .map(|s| procs::start_snapshotter(s, &opts.bins, &dir, opts.background_fetch))
            .transpose()?;
        let plugin = Snapshotter::Rstargz.plugin();
        let socket = dir.join(format!("{plugin}.sock"));
        let registries = |r: &str| r.split('/').next().unwrap_or_default().to_owned();
        let ctrd = Containerd::start_cri(
            &dir.join("containerd"),
            &socket,
            plugin,
            &CriConfig {
                sandbox_image: pause.into(),
                plain_http_registries: vec![registries(reference), registries(pause)],
                snapshotter: snap.is_none().then(|| "overlayfs".into()),
            },
        );
        let sample = timed_run(&ctrd, shaper, w, reference, pause, mode, link, run).await;
        drop(ctrd);
        drop(snap);
        keep_logs(
            &dir,
            &opts.out,
            &format!("cri-{}-{}-{:?}-{run}", w.kind.name(), link.name, mode),
        );
        let sample = sample?;
        if mode.snapshotter().is_some() {
            check_remote(&dir.join(format!("{plugin}.log")), w.layers.len())?;
        }
        anyhow::Ok(sample)
    }
    .await;
    clean(&dir)?;
    result
}

#[allow(clippy::too_many_arguments)]
async fn timed_run(
    ctrd: &Containerd,
    shaper: &Shaper,
    w: &Workload,
    reference: &str,
    pause: &str,
    mode: Mode,
    link: &LinkCase,
    run: usize,
) -> anyhow::Result<Sample> {
    let mut cri = Cri::connect(&ctrd.socket, &ctrd.socket).await?;
    let logs = ctrd.dir.join("pod-logs");
    std::fs::create_dir_all(&logs)?;
    let cgroup = format!("rstargz-bench-cri-{}-{run}", std::process::id());
    let _cgroup = CgroupParent(cgroup.clone());
    let sandbox = pod_config("cold", &logs, &cgroup);
    // On a node the pause image is already there.
    cri.pull(pause, Some(&sandbox), None).await?;

    procs::drop_caches()?;
    let before = shaper.counters();
    let start = Instant::now();
    let image_ref = cri.pull(reference, Some(&sandbox), None).await?;
    let pulled = start.elapsed();
    let mut pod = Pod::run(&mut cri, &sandbox).await?;
    let out = cri
        .run_container(
            pod.id(),
            &sandbox,
            &image_ref,
            &format!("cold-{run}"),
            &w.cmd,
        )
        .await?;
    let total = start.elapsed();
    let counted = shaper.counters().since(&before);
    if !out.contains(&w.expect) {
        bail!("unexpected output: {out}");
    }
    let local_run_s = if mode == Mode::Overlayfs {
        procs::drop_caches()?;
        let t = Instant::now();
        cri.run_container(
            pod.id(),
            &sandbox,
            &image_ref,
            &format!("local-{run}"),
            &w.cmd,
        )
        .await?;
        Some(t.elapsed().as_secs_f64())
    } else {
        None
    };
    pod.remove(&mut cri).await?;
    Ok(sample(
        w,
        link,
        mode,
        run,
        (pulled, total, counted),
        local_run_s,
    ))
}

/// Fails unless every layer of the image was mounted remotely; the pause
/// image (not eStargz) is the one fallback.
fn check_remote(log: &Path, layers: usize) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let count = |v: &str| {
        text.matches(&format!("remote-snapshot-prepared=\"{v}\""))
            .count()
    };
    if (count("true"), count("false")) != (layers, 1) {
        bail!(
            "rstargz mounted {} layers remotely and {} not (want {layers} and the pause image's 1); see {}",
            count("true"),
            count("false"),
            log.display()
        );
    }
    Ok(())
}
