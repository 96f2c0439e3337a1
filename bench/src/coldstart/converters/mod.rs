//! Who made the eStargz images the lazy modes pull: the converter
//! dimension of the cold-start benchmark (issue 19). Most users' images
//! come from the Go tooling (`ctr-remote`, nerdctl, BuildKit), so each
//! image is also converted by `ctr-remote` and every lazy mode runs on
//! every converter's output.
//!
//! A converter makes an image without a prioritized list, one with a
//! list, or both; a lazy mode runs on a converter's image when the
//! converter makes the kind of image the mode pulls
//! ([`Converter::tag`]). Adding a converter: a variant of [`Converter`]
//! (its name, tags and one line of description) and the function that
//! pushes its images in [`publish`].

pub mod ctr_remote;
pub mod rstargz;
pub mod rstargz_optimize;

use std::path::Path;

use anyhow::bail;
use serde::Serialize;

use super::images::Workload;

/// A tool that converts the plain image to eStargz.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Converter {
    /// `rstargz image convert`, without and with the recorded list.
    Rstargz,
    /// `ctr-remote image convert --estargz --oci` (no list).
    CtrRemote,
    /// `ctr-remote image optimize --oci` with the workload as the sample
    /// container's command (its own recorded list).
    CtrRemoteOptimize,
    /// `rstargz image optimize --oci` with the same workload (runc over
    /// the image mounted lazily by our FUSE; its own list).
    RstargzOptimize,
}

impl Converter {
    /// Every converter, in table order.
    pub const ALL: [Converter; 4] = [
        Converter::Rstargz,
        Converter::CtrRemote,
        Converter::CtrRemoteOptimize,
        Converter::RstargzOptimize,
    ];

    /// Its name on the command line, in tables and in `report.json`.
    pub fn name(self) -> &'static str {
        match self {
            Converter::Rstargz => "rstargz",
            Converter::CtrRemote => "ctr-remote",
            Converter::CtrRemoteOptimize => "ctr-remote-optimize",
            Converter::RstargzOptimize => "rstargz-optimize",
        }
    }

    /// Parses a name.
    pub fn parse(s: &str) -> anyhow::Result<Converter> {
        match Converter::ALL.into_iter().find(|c| c.name() == s) {
            Some(c) => Ok(c),
            None => bail!(
                "unknown converter {s:?} ({})",
                Converter::ALL.map(Converter::name).join(", ")
            ),
        }
    }

    /// The tag of its image with (`prioritized`) or without a
    /// prioritized list; `None` when it makes no such image.
    pub fn tag(self, prioritized: bool) -> Option<&'static str> {
        match (self, prioritized) {
            (Converter::Rstargz, false) => Some("esgz"),
            (Converter::Rstargz, true) => Some("prio"),
            (Converter::CtrRemote, false) => Some("ctr-esgz"),
            (Converter::CtrRemoteOptimize, true) => Some("ctr-opt"),
            (Converter::RstargzOptimize, true) => Some("rs-opt"),
            (Converter::CtrRemote, true)
            | (Converter::CtrRemoteOptimize, false)
            | (Converter::RstargzOptimize, false) => None,
        }
    }

    /// How its images are made, in words (the report's method line).
    pub fn describe(self) -> &'static str {
        match self {
            Converter::Rstargz => {
                "`rstargz image convert`; with a list: the files the workload opened under `rstargz mount --record`"
            }
            Converter::CtrRemote => "`ctr-remote image convert --estargz --oci` (no list)",
            Converter::CtrRemoteOptimize => {
                "`ctr-remote image optimize --oci`, the workload as the sample container's entrypoint and args (its own list)"
            }
            Converter::RstargzOptimize => {
                "`rstargz image optimize --oci`, the same workload as entrypoint and args, in runc over the image mounted lazily by rstargz (its own list)"
            }
        }
    }
}

/// What a converter makes its images from.
#[derive(Debug, Clone, Copy)]
pub struct Source<'a> {
    /// The registry's address, not shaped (`HOST:PORT`).
    pub registry: &'a str,
    /// The image and its workload; the plain image is at tag `plain`.
    pub workload: &'a Workload,
    /// A scratch directory of the converter's own.
    pub work: &'a Path,
    /// The `rstargz` binary (for `rstargz image optimize`).
    pub rstargz: &'a Path,
}

impl Source<'_> {
    /// The reference of this image at `tag`.
    pub fn at(&self, tag: &str) -> String {
        format!(
            "{}/bench/{}:{tag}",
            self.registry,
            self.workload.kind.name()
        )
    }
}

/// Pushes `converter`'s images of `src` to the registry. rstargz's are
/// made earlier by [`rstargz::publish`]: the floor is read from them.
pub fn publish(converter: Converter, src: &Source) -> anyhow::Result<()> {
    match converter {
        Converter::Rstargz => Ok(()),
        Converter::CtrRemote => ctr_remote::publish(ctr_remote::How::Convert, src),
        Converter::CtrRemoteOptimize => ctr_remote::publish(ctr_remote::How::Optimize, src),
        Converter::RstargzOptimize => rstargz_optimize::publish(src),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_back_and_tags_are_distinct() {
        let mut tags = Vec::new();
        for c in Converter::ALL {
            assert_eq!(Converter::parse(c.name()).ok(), Some(c));
            let made: Vec<&str> = [false, true].into_iter().filter_map(|p| c.tag(p)).collect();
            assert!(!made.is_empty(), "{c:?} makes no image");
            tags.extend(made);
        }
        let n = tags.len();
        tags.sort_unstable();
        tags.dedup();
        assert_eq!(tags.len(), n, "two converters share a tag");
        assert!(!tags.contains(&"plain"));
        assert!(Converter::parse("buildkit").is_err());
    }
}
