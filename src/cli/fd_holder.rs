//! `rstargz fd-holder` (hidden): keeps the FUSE connections of `rstargz
//! serve` open across its restarts; started by `serve` itself.

use std::path::PathBuf;

use crate::config::LogFormat;

/// Arguments of `rstargz fd-holder`.
#[derive(Debug, clap::Args)]
pub struct FdHolderArgs {
    /// Unix socket to serve (`<root>/fdstore.sock` when started by serve).
    #[arg(long)]
    pub socket: PathBuf,
    /// How long to keep connections while no daemon is connected.
    #[arg(long, default_value_t = rstargz_remote::config::DEFAULT_LIVE_RESTART_TIMEOUT_SEC)]
    pub orphan_timeout_sec: u64,
    /// Log output; `serve` passes its own, since both write to the same stderr.
    #[arg(long, value_enum, default_value = "text")]
    pub log_format: LogFormat,
}

/// Holds connections until none is left and no daemon is connected.
pub fn run(args: FdHolderArgs) -> anyhow::Result<()> {
    crate::logging::init(tracing_subscriber::EnvFilter::new("info"), args.log_format);
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
