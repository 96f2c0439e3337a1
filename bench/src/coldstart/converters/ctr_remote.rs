//! The Go tooling's converters: `ctr-remote image convert --estargz --oci`
//! and `ctr-remote image optimize --oci`. Both work on containerd's
//! content store, so each runs in a private containerd: pull the plain
//! image, convert (or optimize: run the workload in a sample container and
//! put the files it opened first), push the result.

use anyhow::bail;

use super::super::procs::{self, Containerd};
use super::{Converter, Source};

/// Longest the optimizer's sample container may run: it stops with the
/// workload, this only bounds a workload that hangs.
const OPTIMIZE_PERIOD_S: u32 = 60;

/// Which `ctr-remote` command makes the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum How {
    /// `image convert --estargz --oci` (no prioritized list).
    Convert,
    /// `image optimize --oci` with the workload (a recorded list).
    Optimize,
}

impl How {
    fn converter(self) -> Converter {
        match self {
            How::Convert => Converter::CtrRemote,
            How::Optimize => Converter::CtrRemoteOptimize,
        }
    }
}

/// Converts `src`'s plain image with `ctr-remote` and pushes it at the
/// converter's tag.
pub fn publish(how: How, src: &Source) -> anyhow::Result<()> {
    let converter = how.converter();
    let Some(tag) = converter.tag(how == How::Optimize) else {
        bail!("{} makes no image", converter.name());
    };
    let (plain, dst) = (src.at("plain"), src.at(tag));
    procs::clean(src.work)?;
    let result = (|| {
        let ctrd = Containerd::start(&src.work.join("containerd"), &[])?;
        let made = convert(&ctrd, how, src, &plain, &dst);
        ctrd.stop();
        made
    })();
    procs::clean(src.work)?;
    result
}

fn convert(
    ctrd: &Containerd,
    how: How,
    src: &Source,
    plain: &str,
    dst: &str,
) -> anyhow::Result<()> {
    ctrd.tool("ctr", &["image", "pull", "--plain-http", plain])?;
    match how {
        How::Convert => {
            ctrd.tool(
                "ctr-remote",
                &["image", "convert", "--estargz", "--oci", plain, dst],
            )?;
        }
        How::Optimize => {
            let w = src.workload;
            let Some((entry, args)) = w.cmd.split_first() else {
                bail!("{} has no workload command", w.kind.name());
            };
            let entrypoint = serde_json::to_string(&[entry])?;
            let args = serde_json::to_string(args)?;
            let period = OPTIMIZE_PERIOD_S.to_string();
            // Whether the workload ran is checked on the pushed image (it
            // must have a prioritized prefix): the sample container's output
            // is not reliably copied before `ctr-remote` exits.
            ctrd.tool(
                "ctr-remote",
                &[
                    "image",
                    "optimize",
                    "--oci",
                    "--period",
                    &period,
                    "--entrypoint",
                    &entrypoint,
                    "--args",
                    &args,
                    plain,
                    dst,
                ],
            )?;
        }
    }
    ctrd.tool("ctr", &["image", "push", "--plain-http", dst])?;
    Ok(())
}
