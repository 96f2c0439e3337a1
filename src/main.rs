//! The `rstargz` binary.

use clap::{Parser, Subcommand};
use rstargz::cli;

/// rstargz: lazy-pulling remote snapshotter for containerd.
#[derive(Debug, Parser)]
#[command(name = "rstargz", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the snapshotter daemon (containerd Snapshots gRPC on a unix socket).
    Serve(cli::serve::ServeArgs),
    /// Work with single eStargz layer blobs.
    #[command(subcommand_required = true)]
    Layer(cli::layer::LayerArgs),
    /// Convert whole images to eStargz or zstd:chunked.
    #[command(subcommand_required = true)]
    Image(cli::image::ImageArgs),
    /// Mount an eStargz image lazily at a directory (no containerd) until Ctrl-C.
    Mount(cli::mount::MountArgs),
    /// Keep the FUSE connections of `serve` open across its restarts (started by serve).
    #[command(hide = true)]
    FdHolder(cli::fd_holder::FdHolderArgs),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Serve(args) => cli::serve::run(args),
        Command::Layer(args) => cli::layer::run(args),
        Command::Image(args) => cli::image::run(args),
        Command::Mount(args) => cli::mount::run(args),
        Command::FdHolder(args) => cli::fd_holder::run(args),
    }
}
