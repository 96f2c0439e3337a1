//! Command-line interface: one module per subcommand group.

pub mod fd_holder;
pub mod image;
pub mod image_flags;
pub mod layer;
pub mod mount;
pub mod optimize;
pub mod serve;

/// Bound of the tokio blocking pool of `serve` and `mount` (FUSE mounts and
/// unmounts, metadata store transactions, layer state files). The data
/// path's own blocking work is bounded separately, by priority
/// (`rstargz_fs::work`); tokio's default bound, 512, let a burst of it
/// start hundreds of threads.
const MAX_BLOCKING_THREADS: usize = 32;

/// The runtime of the long-running subcommands (`serve`, `mount`), which
/// mount layers: the same thread bounds for both.
pub(crate) fn service_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    use anyhow::Context as _;
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(MAX_BLOCKING_THREADS)
        .build()
        .context("start tokio runtime")
}
