//! `rstargz image …`: convert whole images to eStargz / zstd:chunked.
//!
//! `convert` prints one JSON line on stdout (destination, digest, media
//! type); progress lines and a per-layer summary go to stderr only when
//! stderr is a terminal.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use rstargz_fs::estargz::{Compression, WriterOptions, writer::DEFAULT_CHUNK_SIZE};
use rstargz_fs::registry::{Registry, RegistryConfig};

use rstargz_image::build::{BuildOptions, LayerCompression, LayerInput};
use rstargz_image::progress::{mb, short};
use rstargz_image::{self as image, ConvertOptions, ImageRef, Progress, StderrLines};

/// Arguments of `rstargz image`.
#[derive(Debug, clap::Args)]
pub struct ImageArgs {
    #[command(subcommand)]
    command: ImageCommand,
}

#[derive(Debug, clap::Subcommand)]
enum ImageCommand {
    /// Convert an image (registry reference or oci:DIR[:TAG]) to eStargz or zstd:chunked.
    Convert(ConvertArgs),
    /// Build a plain image from directories or tar files (for tests).
    #[command(hide = true)]
    BuildTestImage(BuildArgs),
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum CompressionArg {
    Gzip,
    Zstd,
}

/// Registry access shared by the subcommands.
#[derive(Debug, clap::Args)]
struct RegistryArgs {
    /// Use plain HTTP for the source and destination registries
    /// (loopback registries always use it).
    #[arg(long)]
    plain_http: bool,
    /// containerd-style hosts directory (`<dir>/<host>/hosts.toml`).
    #[arg(long, value_name = "DIR")]
    hosts_dir: Option<PathBuf>,
    /// docker config.json with credentials (default: $DOCKER_CONFIG or ~/.docker).
    #[arg(long, value_name = "FILE")]
    docker_config: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
struct ConvertArgs {
    /// Source image: `registry/repo:tag`, `repo@sha256:…` or `oci:DIR[:TAG]`.
    src: String,
    /// Destination image, same forms.
    dst: String,
    /// Layer compression: gzip (eStargz) or zstd (zstd:chunked).
    #[arg(long, value_enum, default_value = "gzip")]
    compression: CompressionArg,
    /// Uncompressed chunk size of large files, in bytes.
    #[arg(long, default_value_t = DEFAULT_CHUNK_SIZE)]
    chunk_size: u64,
    /// File to prefetch, applied to every layer (absent files are ignored); repeatable.
    #[arg(long = "prioritize", value_name = "PATH")]
    prioritized: Vec<String>,
    /// File listing files to prefetch, one path a line, in priority order
    /// (as `rstargz mount --record` writes it); after any --prioritize.
    #[arg(long, value_name = "FILE")]
    prioritize_file: Option<PathBuf>,
    /// Layers converted at once.
    #[arg(long, default_value_t = 4)]
    jobs: usize,
    /// Directory for temporary layer files.
    #[arg(long, value_name = "DIR")]
    temp_dir: Option<PathBuf>,
    #[command(flatten)]
    registry: RegistryArgs,
}

#[derive(Debug, clap::Args)]
struct BuildArgs {
    /// Destination image.
    dst: String,
    /// Layer directories or tar files, bottom first.
    #[arg(required = true)]
    layers: Vec<PathBuf>,
    /// Use docker schema2 media types.
    #[arg(long)]
    docker: bool,
    #[command(flatten)]
    registry: RegistryArgs,
}

/// Runs `rstargz image`.
pub fn run(args: ImageArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("start tokio runtime")?;
    match args.command {
        ImageCommand::Convert(a) => runtime.block_on(convert(a)),
        ImageCommand::BuildTestImage(a) => runtime.block_on(build(a)),
    }
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

fn client(args: &RegistryArgs, locations: &[&ImageRef]) -> anyhow::Result<Registry> {
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

async fn convert(a: ConvertArgs) -> anyhow::Result<()> {
    let src = ImageRef::parse(&a.src)?;
    let dst = ImageRef::parse(&a.dst)?;
    let client = client(&a.registry, &[&src, &dst])?;
    let mut prioritized = a.prioritized;
    if let Some(file) = &a.prioritize_file {
        let text =
            std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        prioritized.extend(
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(str::to_owned),
        );
    }
    let opts = ConvertOptions {
        writer: WriterOptions {
            compression: match a.compression {
                CompressionArg::Gzip => Compression::Gzip,
                CompressionArg::Zstd => Compression::Zstd,
            },
            chunk_size: a.chunk_size,
            prioritized,
            ..WriterOptions::default()
        },
        parallelism: a.jobs.max(1),
        temp_dir: a.temp_dir,
    };
    let terminal = std::io::stderr().is_terminal();
    let progress: Arc<dyn Progress> = if terminal {
        Arc::new(StderrLines)
    } else {
        Arc::new(NotesOnly)
    };
    let started = std::time::Instant::now();
    let report = image::convert(&client, &src, &dst, &opts, progress)
        .await
        .with_context(|| format!("converting {src} to {dst}"))?;
    if terminal {
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
    println!(
        "{}",
        serde_json::json!({
            "reference": report.destination,
            "digest": report.digest.to_string(),
            "mediaType": report.media_type,
        })
    );
    Ok(())
}

async fn build(a: BuildArgs) -> anyhow::Result<()> {
    let dst = ImageRef::parse(&a.dst)?;
    let client = client(&a.registry, &[&dst])?;
    let layers: Vec<LayerInput> = a
        .layers
        .into_iter()
        .map(|p| {
            if p.is_dir() {
                LayerInput::Dir(p)
            } else {
                LayerInput::Tar(p)
            }
        })
        .collect();
    let opts = BuildOptions {
        compression: LayerCompression::Gzip,
        docker: a.docker,
        ..BuildOptions::default()
    };
    let desc = image::build::from_dirs(&client, &dst, &layers, &opts).await?;
    println!(
        "{}",
        serde_json::json!({"reference": dst.to_string(), "digest": desc.digest, "mediaType": desc.media_type})
    );
    Ok(())
}
