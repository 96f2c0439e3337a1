//! Benchmarks that drive running services and report figures (never
//! pass/fail): the numbers are compared with a baseline measured in the same run.

pub mod coldstart;
pub mod container;
pub mod drain;
pub mod io;
pub mod read_path;
pub mod remote_layer;
pub mod resources;
pub mod scale;
pub mod scale_snapshots;
pub mod snapshot_ops;
