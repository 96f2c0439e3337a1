//! rstargz-fs's integration tests, one binary (one link on a small
//! machine): each former `tests/<name>.rs` is the module `<name>`, and the
//! shared helpers are `common` (golden cases, registry harness) and
//! `fuse_common` (test blob sources, mounts).
//!
//! Two tiers. Plain `cargo test` runs the modules that need no root and no
//! system prerequisite (only `gzip`, `zstd` and `tar` for the round trip).
//! The `system` feature (`--features rstargz-fs/system`; `scripts/test.sh`
//! and CI always turn it on) adds the modules that need root, FUSE or a
//! `docker-registry` process; with it on, a missing prerequisite fails the
//! test, never skips it.

mod common;
mod fuse_common;

// Plain tier: no root, no system prerequisites.
mod cache; // chunk cache and layer reader, in memory
mod golden; // the Go reference's golden blobs
mod hostile; // hostile and damaged input
mod roundtrip; // our writer, our reader, gzip/zstd/tar -t

// System tier.
#[cfg(feature = "system")]
mod exhaust; // root: tmpfs, FUSE; registry
#[cfg(feature = "system")]
mod extract; // root: device nodes (mknod) and owners (lchown)
#[cfg(feature = "system")]
mod fuse; // root: FUSE, overlayfs
#[cfg(feature = "system")]
mod fuse_bench; // root: FUSE (its benchmark is #[ignore]d)
#[cfg(feature = "system")]
mod fuse_data; // root: FUSE
#[cfg(feature = "system")]
mod fuse_passthrough; // root: FUSE passthrough
#[cfg(feature = "system")]
mod fuse_shared; // root: FUSE, bind mounts
#[cfg(feature = "system")]
mod registry_auth; // registry (htpasswd), token server in the fault proxy
#[cfg(feature = "system")]
mod registry_fetch; // registry, fault proxy
#[cfg(feature = "system")]
mod registry_hosts; // registry (also TLS: openssl)
