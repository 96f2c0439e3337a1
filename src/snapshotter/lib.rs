//! The snapshotter core of rstargz: containerd's snapshot model and the
//! `Snapshotter` over its metadata store, the local backends (overlayfs and
//! LCOW), the seam remote layers plug into, and the thin gRPC adapter that
//! serves it as containerd's Snapshots service (plus a client for it).

pub mod client;
pub mod grpc;
pub mod lcow;
pub mod model;
pub mod remote_fs;
pub mod snapshot;
pub mod store;
