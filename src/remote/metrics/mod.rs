//! Prometheus metrics of remote layers: our own families (`rstargz_*`,
//! [`ours`]) next to the Go stargz-snapshotter's (`stargz_fs_*`, [`go`]),
//! so a node switching from it keeps its dashboards and alerts. Served on
//! `metrics_address` and on the `debug_address` socket ([`http`]).

pub mod go;
pub mod http;
pub mod ours;
pub mod text;

pub use http::{serve, serve_debug};

use super::stargz::StargzFs;

/// The current metrics in the Prometheus text format (version 0.0.4).
pub fn render(fs: &StargzFs) -> String {
    let layers = fs.mounted();
    let mut out = text::Exposition::default();
    ours::render(fs, &layers, &mut out);
    go::render(fs, &layers, &mut out);
    out.finish()
}
