//! What `image convert` and `image optimize` share: the conversion flags
//! (under ctr-remote's names too), registry access, progress and the
//! result line.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use rstargz_fs::estargz::{Compression, WriterOptions, writer::DEFAULT_CHUNK_SIZE};
use rstargz_fs::registry::{Registry, RegistryConfig};
use rstargz_image::platform::PlatformSpec;
use rstargz_image::progress::{mb, short};
use rstargz_image::{
    self as image, ConvertOptions, ConvertReport, ImageRef, Progress, StderrLines,
};

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum CompressionArg {
    Gzip,
    Zstd,
}

/// Registry access shared by the subcommands.
#[derive(Debug, clap::Args)]
pub(crate) struct RegistryArgs {
    /// Use plain HTTP for the source and destination registries
    /// (loopback registries always use it).
    #[arg(long)]
    pub(crate) plain_http: bool,
    /// containerd-style hosts directory (`<dir>/<host>/hosts.toml`).
    #[arg(long, value_name = "DIR")]
    pub(crate) hosts_dir: Option<PathBuf>,
    /// docker config.json with credentials (default: $DOCKER_CONFIG or ~/.docker).
    #[arg(long, value_name = "FILE")]
    pub(crate) docker_config: Option<PathBuf>,
}

/// The conversion flags, shared by `convert` and `optimize`.
#[derive(Debug, clap::Args)]
pub(crate) struct ConvertFlags {
    /// Layer compression: gzip (eStargz) or zstd (zstd:chunked).
    #[arg(long, value_enum, default_value = "gzip")]
    compression: CompressionArg,
    /// eStargz layers: `--compression gzip`, the default (ctr-remote's name).
    #[arg(long, conflicts_with_all = ["compression", "zstdchunked"])]
    estargz: bool,
    /// zstd:chunked layers: `--compression zstd` (ctr-remote's name).
    #[arg(long, conflicts_with = "compression")]
    zstdchunked: bool,
    /// Uncompressed chunk size of large files, in bytes (0: the default).
    #[arg(long, visible_aliases = ["estargz-chunk-size", "zstdchunked-chunk-size"], default_value_t = DEFAULT_CHUNK_SIZE)]
    chunk_size: u64,
    /// Small files share a compressed member until it holds this many
    /// bytes (0: never); readers older than stargz-snapshotter 0.13 cannot read such layers.
    #[arg(long, visible_alias = "estargz-min-chunk-size", default_value_t = 0)]
    min_chunk_size: u64,
    /// gzip level of eStargz layers, 0-9 [default: 6; ctr-remote's is 9].
    #[arg(long, value_name = "LEVEL", value_parser = clap::value_parser!(u32).range(0..=9))]
    estargz_compression_level: Option<u32>,
    /// zstd level of zstd:chunked layers, 1-22 [default: 3].
    #[arg(long, value_name = "LEVEL", value_parser = clap::value_parser!(i32).range(1..=22))]
    zstdchunked_compression_level: Option<i32>,
    /// Not supported: ctr-remote keeps the diffID by moving the TOC into a
    /// separate image (--estargz-external-toc), which rstargz does not write.
    #[arg(long)]
    estargz_keep_diff_id: bool,
    /// Write OCI media types (a docker schema2 image becomes an OCI one).
    #[arg(long)]
    oci: bool,
    /// Convert only this platform of an index (`os[/arch[/variant]]`, as
    /// containerd spells it); repeatable or comma-separated [default: all].
    #[arg(long = "platform", value_name = "PLATFORM", value_delimiter = ',')]
    platforms: Vec<String>,
    /// Convert every platform of an index (the default here; ctr-remote's
    /// default is the host's platform only).
    #[arg(long, conflicts_with = "platforms")]
    all_platforms: bool,
    /// File to prefetch, applied to every layer (absent files are ignored); repeatable.
    #[arg(long = "prioritize", value_name = "PATH")]
    prioritized: Vec<String>,
    /// File listing files to prefetch in priority order, after any
    /// --prioritize: one path a line (as `rstargz mount --record` writes
    /// it) or ctr-remote's record file (JSON lines with a "path").
    #[arg(long, visible_aliases = ["estargz-record-in", "zstdchunked-record-in"], value_name = "FILE")]
    prioritize_file: Option<PathBuf>,
    /// Layers converted at once.
    #[arg(long, default_value_t = 4)]
    jobs: usize,
    /// Directory for temporary files (layers; `optimize`'s mounts and container).
    #[arg(long, value_name = "DIR")]
    temp_dir: Option<PathBuf>,
    #[command(flatten)]
    pub(crate) registry: RegistryArgs,
}

/// Off a terminal, only what the user must know (skipped index entries) is printed.
struct NotesOnly;

impl Progress for NotesOnly {
    fn event(&self, event: &image::Event<'_>) {
        if let image::Event::Note(_) = event {
            StderrLines.event(event);
        }
    }
}

pub(crate) fn client(args: &RegistryArgs, locations: &[&ImageRef]) -> anyhow::Result<Registry> {
    let mut config = RegistryConfig {
        docker_config: args.docker_config.clone(),
        ..RegistryConfig::default()
    };
    config.hosts.certs_dir = args.hosts_dir.clone();
    if args.plain_http {
        for at in locations {
            if let ImageRef::Registry(r) = at {
                config.hosts.insecure_hosts.push(r.registry.clone());
            }
        }
    }
    Registry::new(config).context("setting up the registry client")
}

/// The paths of a prioritized-files list: one path a line, or ctr-remote's
/// record file (one JSON object with a `path` a line); first mention wins.
fn prioritized_paths(text: &str, file: &std::path::Path) -> anyhow::Result<Vec<String>> {
    let mut paths: Vec<String> = Vec::new();
    for (n, line) in text.lines().map(str::trim).enumerate() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let path = if line.starts_with('{') {
            let entry: serde_json::Value = serde_json::from_str(line)
                .with_context(|| format!("{} line {}: not JSON", file.display(), n + 1))?;
            entry["path"]
                .as_str()
                .with_context(|| format!("{} line {}: no \"path\"", file.display(), n + 1))?
                .to_owned()
        } else {
            line.to_owned()
        };
        if !paths.contains(&path) {
            paths.push(path);
        }
    }
    Ok(paths)
}

impl ConvertFlags {
    /// The conversion these flags ask for.
    pub(crate) fn options(&self) -> anyhow::Result<ConvertOptions> {
        if self.estargz_keep_diff_id {
            anyhow::bail!(
                "--estargz-keep-diff-id is not supported: ctr-remote keeps the diffID by moving \
                 the TOC into a separate image (--estargz-external-toc), and rstargz writes the \
                 TOC into each layer, which changes its diffID"
            );
        }
        let platforms = if self.platforms.is_empty() || self.all_platforms {
            None
        } else {
            Some(
                self.platforms
                    .iter()
                    .map(|p| PlatformSpec::parse(p))
                    .collect::<Result<Vec<_>, _>>()?,
            )
        };
        let mut prioritized = self.prioritized.clone();
        if let Some(file) = &self.prioritize_file {
            let text = std::fs::read_to_string(file)
                .with_context(|| format!("reading {}", file.display()))?;
            prioritized.extend(prioritized_paths(&text, file)?);
        }
        let defaults = WriterOptions::default();
        Ok(ConvertOptions {
            writer: WriterOptions {
                compression: match self.compression {
                    _ if self.estargz => Compression::Gzip,
                    _ if self.zstdchunked => Compression::Zstd,
                    CompressionArg::Gzip => Compression::Gzip,
                    CompressionArg::Zstd => Compression::Zstd,
                },
                // ctr-remote's 0 means "the default".
                chunk_size: match self.chunk_size {
                    0 => DEFAULT_CHUNK_SIZE,
                    n => n,
                },
                min_chunk_size: self.min_chunk_size,
                prioritized,
                gzip_level: self
                    .estargz_compression_level
                    .unwrap_or(defaults.gzip_level),
                zstd_level: self
                    .zstdchunked_compression_level
                    .unwrap_or(defaults.zstd_level),
            },
            parallelism: self.jobs.max(1),
            temp_dir: self.temp_dir.clone(),
            oci: self.oci,
            platforms,
        })
    }
}

/// Progress lines on a terminal, only the notes elsewhere.
pub(crate) fn progress() -> Arc<dyn Progress> {
    if std::io::stderr().is_terminal() {
        Arc::new(StderrLines)
    } else {
        Arc::new(NotesOnly)
    }
}

/// The per-layer table (on a terminal) and the result line on stdout, with `extra` fields.
pub(crate) fn print_report(
    report: &ConvertReport,
    started: std::time::Instant,
    extra: serde_json::Map<String, serde_json::Value>,
) {
    if std::io::stderr().is_terminal() {
        let secs = started.elapsed().as_secs_f64();
        eprintln!(
            "{:<24} {:<24} {:>10} {:>10}  uploaded",
            "source", "converted", "in", "out"
        );
        for m in &report.manifests {
            if let Some(p) = &m.platform {
                eprintln!("{p}:");
            }
            for l in &m.layers {
                eprintln!(
                    "{:<24} {:<24} {:>10} {:>10}  {}",
                    short(&l.source_digest),
                    short(&l.digest),
                    mb(l.source_size),
                    mb(l.size),
                    if l.uploaded { "yes" } else { "no" }
                );
            }
        }
        eprintln!("done in {secs:.1}s");
    }
    let mut line = serde_json::json!({
        "reference": report.destination,
        "digest": report.digest.to_string(),
        "mediaType": report.media_type,
    });
    if let Some(fields) = line.as_object_mut() {
        fields.extend(extra);
    }
    println!("{line}");
}
