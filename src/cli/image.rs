//! `rstargz image …`: convert whole images to eStargz / zstd:chunked.
//!
//! `convert` prints one JSON line on stdout (destination, digest, media
//! type); progress lines and a per-layer summary go to stderr only when
//! stderr is a terminal. Its flags also answer to `ctr-remote image
//! convert`'s names where they mean the same. `optimize` (in `optimize.rs`)
//! runs a workload first.

use std::path::PathBuf;

use anyhow::Context as _;
use rstargz_image::build::{BuildOptions, LayerCompression, LayerInput};
use rstargz_image::{self as image, ImageRef};

use super::image_flags::{ConvertFlags, RegistryArgs, client, print_report, progress};

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
    /// Run an image's workload in a container (runc) over the image mounted
    /// lazily, and convert it with the files it opened prioritized.
    Optimize(Box<super::optimize::OptimizeArgs>),
    /// Build a plain image from directories or tar files (for tests).
    #[command(hide = true)]
    BuildTestImage(BuildArgs),
}

#[derive(Debug, clap::Args)]
struct ConvertArgs {
    /// Source image: `registry/repo:tag`, `repo@sha256:…` or `oci:DIR[:TAG]`.
    src: String,
    /// Destination image, same forms.
    dst: String,
    #[command(flatten)]
    flags: ConvertFlags,
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
    if let ImageCommand::Optimize(a) = args.command {
        return super::optimize::run(*a);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("start tokio runtime")?;
    match args.command {
        ImageCommand::Convert(a) => runtime.block_on(convert(a)),
        ImageCommand::BuildTestImage(a) => runtime.block_on(build(a)),
        ImageCommand::Optimize(_) => unreachable!("handled above"),
    }
}

async fn convert(a: ConvertArgs) -> anyhow::Result<()> {
    let opts = a.flags.options()?;
    let src = ImageRef::parse(&a.src)?;
    let dst = ImageRef::parse(&a.dst)?;
    let client = client(&a.flags.registry, &[&src, &dst])?;
    let started = std::time::Instant::now();
    let report = image::convert(&client, &src, &dst, &opts, progress())
        .await
        .with_context(|| format!("converting {src} to {dst}"))?;
    print_report(&report, started, serde_json::Map::new());
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
