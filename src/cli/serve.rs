//! `rstargz serve`: the snapshotter daemon.

/// Arguments of `rstargz serve`.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {}

/// Runs the daemon until SIGINT/SIGTERM.
pub fn run(_args: ServeArgs) -> anyhow::Result<()> {
    anyhow::bail!("not implemented yet")
}
