//! Progress reporting of an image conversion: the library emits events, the
//! caller decides whether and how to show them (the CLI prints lines to a
//! terminal and stays quiet otherwise).

use rstargz_fs::registry::OciDigest;

/// What happened to one source layer.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerReport {
    /// Source layer digest.
    pub source_digest: String,
    /// Source blob size.
    pub source_size: u64,
    /// Converted blob digest (the source digest when passed through).
    pub digest: String,
    /// Converted blob size.
    pub size: u64,
    /// New diffID.
    pub diff_id: String,
    /// TOC digest (empty when passed through).
    pub toc_digest: String,
    /// Whether the blob was written to the destination (false: it was there already).
    pub uploaded: bool,
    /// Whether the layer was kept as is (non-distributable).
    pub passed_through: bool,
    /// Wall time spent on this layer, in seconds.
    pub seconds: f64,
}

/// A conversion event.
#[derive(Debug, Clone)]
pub enum Event<'a> {
    /// Work on layer `index` (1-based) of `total` started.
    LayerStarted {
        /// 1-based position in its manifest.
        index: usize,
        /// Layers in the manifest.
        total: usize,
        /// Source digest.
        digest: &'a str,
    },
    /// Layer `index` of `total` is converted and stored.
    LayerDone {
        /// 1-based position in its manifest.
        index: usize,
        /// Layers in the manifest.
        total: usize,
        /// The outcome.
        report: &'a LayerReport,
    },
    /// A manifest (one platform of an index, or the image) was written.
    ManifestDone {
        /// Platform, if part of an index.
        platform: Option<String>,
        /// New manifest digest.
        digest: &'a OciDigest,
    },
    /// Something the user should know (skipped entries).
    Note(&'a str),
}

/// Receives progress events; called from several tasks at once.
pub trait Progress: Send + Sync {
    /// Handles one event.
    fn event(&self, event: &Event<'_>);
}

/// Ignores every event.
#[derive(Debug, Default, Clone, Copy)]
pub struct Quiet;

impl Progress for Quiet {
    fn event(&self, _: &Event<'_>) {}
}

/// Prints one line per event to stderr.
#[derive(Debug, Default, Clone, Copy)]
pub struct StderrLines;

impl Progress for StderrLines {
    fn event(&self, event: &Event<'_>) {
        match event {
            Event::LayerStarted {
                index,
                total,
                digest,
            } => {
                eprintln!("layer {index}/{total} {} converting…", short(digest));
            }
            Event::LayerDone {
                index,
                total,
                report,
            } => {
                let rate = if report.seconds > 0.0 {
                    report.source_size as f64 / report.seconds / 1e6
                } else {
                    0.0
                };
                let what = if report.passed_through {
                    "kept as is (non-distributable)".to_owned()
                } else {
                    format!(
                        "done ({} → {}, {rate:.0} MB/s{})",
                        mb(report.source_size),
                        mb(report.size),
                        if report.uploaded {
                            ""
                        } else {
                            ", already present"
                        }
                    )
                };
                eprintln!(
                    "layer {index}/{total} {} {what}",
                    short(&report.source_digest)
                );
            }
            Event::ManifestDone { platform, digest } => match platform {
                Some(p) => eprintln!("manifest {p} {digest}"),
                None => eprintln!("manifest {digest}"),
            },
            Event::Note(text) => eprintln!("{text}"),
        }
    }
}

/// `sha256:abcdef012345…`.
pub fn short(digest: &str) -> String {
    let cut = digest
        .char_indices()
        .nth(19)
        .map_or(digest.len(), |(i, _)| i);
    if cut < digest.len() {
        format!("{}…", &digest[..cut])
    } else {
        digest.to_owned()
    }
}

/// Bytes as `12.3 MB`.
pub fn mb(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}
