//! What is counted of each mounted layer, below both the mounts that record
//! it and the metrics that render it: a mount's [`MountedStats`], its
//! [`labels::MountRecord`] and the daemon-wide bound on per-layer series
//! ([`labels`]), and the Go-named families' [`sample::LayerSample`].

pub mod labels;
pub mod sample;

use std::path::PathBuf;
use std::sync::Arc;

use rstargz_fs::fuse;
use rstargz_fs::layer::LayerReader;

use crate::source::RegistryBlob;
use labels::MountRecord;

/// The counters of one mounted layer.
pub struct MountedStats {
    /// Where it is mounted.
    pub mountpoint: PathBuf,
    /// The layer (fetch and verification counters).
    pub layer: Arc<LayerReader>,
    /// Its FUSE operation counters.
    pub fuse: Arc<fuse::FuseStats>,
    /// Its registry blob (what it fetched, and how fast).
    pub blob: Arc<RegistryBlob>,
    /// The mount's label, duration and prefetch.
    pub record: Arc<MountRecord>,
}
