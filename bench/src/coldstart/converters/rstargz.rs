//! Our own converter: `rstargz image convert` of the plain image without a
//! list, then again with the files the workload opened when run once in a
//! chroot of `rstargz mount --record` (first-open order). The benchmark
//! always makes these: the floor is read from the prioritized one.

use std::process::Command;
use std::sync::Arc;

use anyhow::{Context, bail};
use rstargz_fs::estargz::WriterOptions;
use rstargz_fs::registry::Registry;
use rstargz_image::{self as image, ConvertOptions, ImageRef, Quiet};

use super::super::Options;
use super::super::images::Workload;
use super::super::procs;
use super::{Converter, Source};

/// Converts `src`'s plain image without and with the recorded list;
/// returns the list.
pub async fn publish(
    client: &Registry,
    src: &Source<'_>,
    opts: &Options,
) -> anyhow::Result<Vec<String>> {
    let tmp = opts.work.join("tmp");
    std::fs::create_dir_all(&tmp)?;
    let convert = |prioritized: Vec<String>| {
        let tag = Converter::Rstargz.tag(!prioritized.is_empty());
        let (from, to) = (
            ImageRef::parse(&src.at("plain")),
            tag.map(|t| ImageRef::parse(&src.at(t))),
        );
        let tmp = tmp.clone();
        async move {
            let copts = ConvertOptions {
                writer: WriterOptions {
                    prioritized,
                    ..WriterOptions::default()
                },
                // One layer at a time: the large image's temporary files
                // would otherwise need several GB at once.
                parallelism: 1,
                temp_dir: Some(tmp),
                ..ConvertOptions::default()
            };
            let to = to.context("rstargz makes both kinds of image")??;
            image::convert(client, &from?, &to, &copts, Arc::new(Quiet)).await?;
            anyhow::Ok(())
        }
    };
    convert(Vec::new()).await?;
    let unlisted = Converter::Rstargz
        .tag(false)
        .context("rstargz makes an unlisted image")?;
    let recorded = record(src.workload, &src.at(unlisted), opts)?;
    if recorded.is_empty() {
        bail!(
            "recording {}'s workload saw no opened files",
            src.workload.kind.name()
        );
    }
    convert(recorded.clone()).await?;
    Ok(recorded)
}

/// Runs the workload once in a chroot of `rstargz mount --record` of
/// `reference`; returns the files it opened, in first-open order.
fn record(w: &Workload, reference: &str, opts: &Options) -> anyhow::Result<Vec<String>> {
    let dir = opts.work.join("record");
    if dir.exists() {
        procs::unmount_under(&dir);
        std::fs::remove_dir_all(&dir)?;
    }
    let rootfs = dir.join("rootfs");
    std::fs::create_dir_all(&rootfs)?;
    let config = dir.join("mount.toml");
    std::fs::write(
        &config,
        format!(
            "no_background_fetch = true\n[resolver]\ndocker_config = \"{}\"\n",
            dir.join("none.json").display()
        ),
    )?;
    let list = dir.join("record.txt");
    let mut cmd = Command::new(&opts.bins.rstargz);
    cmd.arg("mount")
        .arg(reference)
        .arg(&rootfs)
        .arg("--plain-http")
        .arg("--state-dir")
        .arg(dir.join("state"))
        .arg("--config")
        .arg(&config)
        .arg("--record")
        .arg(&list);
    let mut mount = procs::spawn("rstargz mount", cmd, &dir.join("mount.log"))?;
    mount.wait_until(|| procs::is_mountpoint(&rootfs))?;
    // The workloads redirect to /dev/null: lend the host's /dev.
    let dev = rootfs.join("dev");
    nix::mount::mount(
        Some("/dev"),
        &dev,
        None::<&str>,
        nix::mount::MsFlags::MS_BIND,
        None::<&str>,
    )
    .context("bind /dev into the recording chroot")?;
    let out = Command::new(super::super::which("chroot")?)
        .arg(&rootfs)
        .args(&w.cmd)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .output();
    let _ = nix::mount::umount2(&dev, nix::mount::MntFlags::MNT_DETACH);
    mount.stop();
    let out = out.context("chroot")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() || !stdout.contains(&w.expect) {
        bail!(
            "the workload failed in the recording chroot: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = std::fs::read_to_string(&list)
        .with_context(|| format!("no record at {}", list.display()))?;
    Ok(text.lines().map(str::to_owned).collect())
}
