//! rstargz: a lazy-pulling remote snapshotter for containerd.
//!
//! The library half of the `rstargz` binary: the snapshotter core (no gRPC),
//! its metadata store, the thin gRPC adapter, configuration and the CLI
//! subcommands.

pub mod bench;
pub mod cli;
pub mod client;
pub mod config;
#[doc(hidden)]
pub mod fuzzing;
pub mod grpc;
pub mod image;
pub mod lcow;
pub mod memory;
pub mod remote;
pub mod snapshot;
pub mod store;
