//! A node drain (issue 18): `pods` pods from as many different eStargz
//! images start at once through containerd's CRI plugin, as kubelet
//! starts them after a drain, over one shaped link shared by all of them.
//! Per mode (containerd's overlayfs with a full pull, rstargz and the Go
//! reference with their default configs, without and with a prioritized
//! list) and run: the time until every workload has finished, each pod's
//! own time from the common start, the registry bytes, the snapshotter's
//! peak RSS (sampled every 100 ms) and the load average. The floor is
//! the bytes the workloads need (read from the prioritized images) over
//! the link's bandwidth, plus its round trips, plus the local run (all
//! pods again with the images local and the page cache dropped).
//!
//! The registry, shaper, snapshotter daemons, CRI driver, floor and
//! probes are the cold-start benchmark's ([`crate::coldstart`]).

pub mod images;
pub mod model;
pub mod report;
mod run;

pub use model::{DrainReport, DrainSample};

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use rstargz_fs::estargz::WriterOptions;
use rstargz_fs::registry::Registry;
use rstargz_image::build::{self, BuildOptions};
use rstargz_image::{ConvertOptions, ImageRef, Quiet};

use crate::coldstart::model::{LinkCase, Mode};
use crate::coldstart::procs::Binaries;
use crate::coldstart::{RegistryBed, cri, floor, require_go_reference, which};

use self::images::{App, AppShape};
use self::model::AppFacts;

/// What to measure.
#[derive(Debug, Clone)]
pub struct Options {
    /// Scratch directory (registry data, layer trees, run roots).
    pub work: PathBuf,
    /// Where `report.json`, `report.md` and the plot go.
    pub out: PathBuf,
    /// Pods (and images).
    pub pods: usize,
    /// Shape of each image's app layer.
    pub shape: AppShape,
    /// The link all pods share.
    pub link: LinkCase,
    /// Runs per mode.
    pub runs: usize,
    /// Modes, in run order.
    pub modes: Vec<Mode>,
    /// Binaries.
    pub bins: Binaries,
    /// A name for this configuration (e.g. the memory tier tried).
    pub label: String,
}

/// Tag of the eStargz image without and with the workload's list.
pub fn tag(prioritized: bool) -> &'static str {
    if prioritized { "esgz-prio" } else { "esgz" }
}

/// Runs the drain and writes the report into `opts.out`.
pub async fn run(opts: &Options) -> anyhow::Result<DrainReport> {
    for bin in ["containerd", "runc", "docker-registry"] {
        which(bin)?;
    }
    let go = (opts.modes.iter()).any(|m| matches!(m, Mode::Go | Mode::GoPrio));
    require_go_reference(&opts.bins, go)?;
    std::fs::create_dir_all(&opts.work)?;
    std::fs::create_dir_all(&opts.out)?;
    let RegistryBed {
        registry: _registry,
        shaper,
        client,
        direct,
    } = RegistryBed::start(&opts.work).await?;

    let started = Instant::now();
    let mut apps = Vec::new();
    let mut facts = Vec::new();
    for i in 0..opts.pods {
        let app = images::prepare(i, opts.shape, &opts.work.join("layers"))?;
        facts.push(publish(&client, &app, &direct, opts).await?);
        std::fs::remove_dir_all(opts.work.join("layers").join(app.name()))?;
        apps.push(app);
    }
    let needed: u64 = facts.iter().map(|f| f.needs.needed_bytes).sum();
    let plain: u64 = facts.iter().map(|f| f.plain_bytes).sum();
    eprintln!(
        "{} images built in {:.0} s: plain {:.1} MB, the workloads need {:.1} MB",
        apps.len(),
        started.elapsed().as_secs_f64(),
        plain as f64 / 1e6,
        needed as f64 / 1e6
    );
    let pause = cri::push_pause(&client, &direct, &opts.work).await?;
    shaper.set_link(opts.link.link());

    let mut samples = Vec::new();
    for r in 0..opts.runs {
        for mode in &opts.modes {
            let s = run::measure(opts, &shaper, &apps, &pause, *mode, r)
                .await
                .with_context(|| format!("{} run {r}", mode.label()))?;
            eprintln!(
                "{:<22} run {r}: all {:>6.2} s, worst pod {:>6.2} s, {:>7.1} MB, peak RSS {:>6.1} MB, load {:.2}",
                mode.label(),
                s.all_s,
                s.pods_s.iter().copied().fold(0.0, f64::max),
                s.bytes as f64 / 1e6,
                s.peak_rss_bytes.unwrap_or(0) as f64 / 1e6,
                s.load_avg[0]
            );
            samples.push(s);
            // After every run, so an interrupted run still leaves figures.
            report::write(&report(opts, &facts, &samples), &opts.out)?;
        }
    }
    let report = report(opts, &facts, &samples);
    report::write(&report, &opts.out)?;
    Ok(report)
}

fn report(opts: &Options, facts: &[AppFacts], samples: &[DrainSample]) -> DrainReport {
    DrainReport {
        machine: crate::coldstart::machine(&opts.bins),
        label: opts.label.clone(),
        link: opts.link.clone(),
        pods: opts.pods,
        runs: opts.runs,
        shape: opts.shape,
        images: facts.to_vec(),
        samples: samples.to_vec(),
    }
}

/// Pushes the plain image, converts it to eStargz without and with the
/// workload's list, and reads what the workload needs.
async fn publish(
    client: &Registry,
    app: &App,
    registry: &str,
    opts: &Options,
) -> anyhow::Result<AppFacts> {
    let at = |t: &str| format!("{registry}/bench/{}:{t}", app.name());
    let plain = ImageRef::parse(&at("plain"))?;
    build::from_dirs(client, &plain, &app.layers, &BuildOptions::default()).await?;
    let tmp = opts.work.join("tmp");
    std::fs::create_dir_all(&tmp)?;
    for prioritized in [false, true] {
        let copts = ConvertOptions {
            writer: WriterOptions {
                prioritized: if prioritized {
                    app.reads.clone()
                } else {
                    Vec::new()
                },
                ..WriterOptions::default()
            },
            temp_dir: Some(tmp.clone()),
            ..ConvertOptions::default()
        };
        let to = ImageRef::parse(&at(tag(prioritized)))?;
        rstargz_image::convert(client, &plain, &to, &copts, Arc::new(Quiet)).await?;
    }
    let needs = floor::needs(client, &at(tag(true))).await?;
    let esgz = floor::needs(client, &at(tag(false))).await?;
    Ok(AppFacts {
        name: app.name(),
        plain_bytes: crate::coldstart::layer_bytes(client, &at("plain")).await?,
        esgz_bytes: esgz.layer_bytes,
        needs,
        read_files: app.reads.len(),
        checksum: app.checksum.clone(),
    })
}
