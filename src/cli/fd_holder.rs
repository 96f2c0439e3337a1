//! `rstargz fd-holder` (hidden): keeps the FUSE connections of `rstargz
//! serve` open across its restarts; started by `serve` itself.

use std::io::IsTerminal;
use std::path::PathBuf;

/// Arguments of `rstargz fd-holder`.
#[derive(Debug, clap::Args)]
pub struct FdHolderArgs {
    /// Unix socket to serve (`<root>/fdstore.sock` when started by serve).
    #[arg(long)]
    pub socket: PathBuf,
    /// How long to keep connections while no daemon is connected.
    #[arg(long, default_value_t = rstargz_remote::config::DEFAULT_LIVE_RESTART_TIMEOUT_SEC)]
    pub orphan_timeout_sec: u64,
}

/// Holds connections until none is left and no daemon is connected.
pub fn run(args: FdHolderArgs) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("info"))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    // The daemon's Ctrl-C or SIGTERM is not ours to obey: we outlive it.
    for sig in [
        nix::sys::signal::Signal::SIGINT,
        nix::sys::signal::Signal::SIGHUP,
        nix::sys::signal::Signal::SIGPIPE,
    ] {
        // SAFETY: SIG_IGN installs no handler code.
        unsafe { nix::sys::signal::signal(sig, nix::sys::signal::SigHandler::SigIgn) }?;
    }
    let orphan_timeout = std::time::Duration::from_secs(args.orphan_timeout_sec);
    rstargz_remote::fd_holder::server::run(&args.socket, orphan_timeout)?;
    Ok(())
}
