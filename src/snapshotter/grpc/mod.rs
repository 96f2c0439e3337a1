//! The thin gRPC adapter: containerd's `Snapshots` service over the core
//! `Snapshotter`. `convert` translates messages, `status` is the one place
//! where core errors become gRPC status codes, `service` wires RPCs.

pub mod convert;
pub mod service;
pub mod status;

pub use service::SnapshotsService;
