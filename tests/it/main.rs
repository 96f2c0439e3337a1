//! The root crate's integration tests, one binary (one link on a small
//! machine): each former `tests/<name>.rs` is the module `<name>`, and the
//! shared helpers are `common`.

mod common;

mod bench_coldstart;
mod bench_readpath;
mod compose;
mod containerd;
mod crash_consistency;
mod crash_mixed;
mod e2e_containerd;
mod faults;
mod fuzz_regressions;
mod hostile_grpc;
mod image_convert;
mod layer_cli;
mod lcow_scratch;
mod lcow_snapshotter;
mod live_restart;
mod mount_cli;
mod remote;
mod security;
mod snapshotter;
