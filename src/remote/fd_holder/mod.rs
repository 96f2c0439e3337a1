//! The fd holder: a tiny process (`rstargz fd-holder`) that keeps each
//! mounted layer's `/dev/fuse` file open while the daemon restarts, so the
//! mounts stay alive and the next daemon takes them over. [`server`] is the
//! process, [`client`] the daemon's side ([`FdStore`]) and the protocol.

pub mod client;
pub mod server;

pub use client::{FdStore, FdStoreError};
