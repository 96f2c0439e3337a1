//! `rstargz layer …`: convert, inspect and extract eStargz blobs.

/// Arguments of `rstargz layer`.
#[derive(Debug, clap::Args)]
pub struct LayerArgs {}

/// Runs `rstargz layer`.
pub fn run(_args: LayerArgs) -> anyhow::Result<()> {
    anyhow::bail!("not implemented yet")
}
