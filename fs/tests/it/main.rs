//! rstargz-fs's integration tests, one binary (one link on a small
//! machine): each former `tests/<name>.rs` is the module `<name>`, and the
//! shared helpers are `common` (golden cases, registry harness) and
//! `fuse_common` (test blob sources, mounts).

mod common;
mod fuse_common;

mod cache;
mod extract;
mod fuse;
mod fuse_bench;
mod fuse_data;
mod fuse_passthrough;
mod golden;
mod hostile;
mod registry_auth;
mod registry_fetch;
mod registry_hosts;
mod roundtrip;
