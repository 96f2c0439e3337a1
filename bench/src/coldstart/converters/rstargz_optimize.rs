//! rstargz's own optimizer: `rstargz image optimize` runs the workload in a
//! runc container over the image mounted lazily by our FUSE (the plain
//! image is first converted to eStargz at the destination tag, then
//! mounted) and converts the plain image again with the files it opened
//! first: the counterpart of `ctr-remote image optimize`, with no containerd.

use std::process::Command;

use anyhow::{Context, bail};

use super::super::procs;
use super::{Converter, Source};

/// Longest the workload may run: it stops by itself, this only bounds a
/// workload that hangs (as for `ctr-remote image optimize`).
const OPTIMIZE_PERIOD_S: u32 = 60;

/// Optimizes `src`'s plain image with the `rstargz` binary and pushes it
/// at the converter's tag.
pub fn publish(src: &Source) -> anyhow::Result<()> {
    let tag = Converter::RstargzOptimize
        .tag(true)
        .context("rstargz-optimize makes a prioritized image")?;
    let w = src.workload;
    let Some((entry, args)) = w.cmd.split_first() else {
        bail!("{} has no workload command", w.kind.name());
    };
    procs::clean(src.work)?;
    std::fs::create_dir_all(src.work)?;
    let out = Command::new(src.rstargz)
        .args(["image", "optimize", "--oci", "--jobs", "1", "--period"])
        .arg(OPTIMIZE_PERIOD_S.to_string())
        .arg("--entrypoint")
        .arg(serde_json::to_string(&[entry])?)
        .arg("--args")
        .arg(serde_json::to_string(args)?)
        .arg("--temp-dir")
        .arg(src.work)
        .arg("--docker-config")
        .arg(src.work.join("no-docker-config.json"))
        .arg(src.at("plain"))
        .arg(src.at(tag))
        .output()
        .context("run rstargz image optimize")?;
    procs::clean(src.work)?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        bail!("rstargz image optimize failed: {stderr}");
    }
    // A workload that failed in the container would leave an image
    // prioritized for the wrong files (its output goes to stderr).
    if !stderr.contains(&w.expect) {
        bail!("the workload failed under rstargz image optimize: {stderr}");
    }
    Ok(())
}
