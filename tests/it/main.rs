//! The root crate's integration tests, one binary (one link on a small
//! machine): each former `tests/<name>.rs` is the module `<name>`, and the
//! shared helpers are `common`.
//!
//! Two tiers. Plain `cargo test` runs the modules that need no root and
//! nothing `scripts/setup.sh` installs: the daemon (our own binary) on a
//! socket in a temporary directory, fuzz inputs. The `system` feature
//! (`--features rstargz/system`; `scripts/test.sh` and CI always turn it on)
//! adds the modules that need root, FUSE, overlayfs, a `docker-registry`
//! process, containerd, dockerd or the disk tools (qemu-img, mkfs.ext4);
//! with the feature on, a missing prerequisite fails the test, never skips it.

mod common;

// Plain tier: no root, no system prerequisites.
mod crash_consistency; // daemon kill -9 / restart on local snapshots
mod cri_keychain_sockets; // daemon over its sockets, no containerd
mod fuzz_regressions; // the fuzz harness bodies over saved inputs
mod hostile_grpc; // daemon over its socket
mod log_format; // daemon over its socket, its stderr as JSON
mod snapshotter; // daemon over its socket, `du`

// System tier.
#[cfg(feature = "system")]
mod bench_coldstart; // root, containerd, runc, ctr-remote, registry, the Go reference
#[cfg(feature = "system")]
mod bench_drain; // root, containerd's CRI plugin, runc, registry, the Go reference
#[cfg(feature = "system")]
mod bench_readpath; // root: FUSE, overlayfs, drop_caches, containerd, runc; registry
#[cfg(feature = "system")]
mod bench_scale; // root: FUSE, overlayfs, containerd, runc, ctr-remote; registry; the Go reference
#[cfg(feature = "system")]
mod bench_scale_snapshots; // the daemon over its socket; the plot's font (fonts-dejavu-core)
#[cfg(feature = "system")]
mod compose; // root: dockerd, docker-compose, mmdebstrap
#[cfg(feature = "system")]
mod container_reread; // root: containerd, runc, ctr-remote; registry
#[cfg(feature = "system")]
mod containerd; // root: containerd
#[cfg(feature = "system")]
mod crash_mixed; // root: FUSE; registry
#[cfg(feature = "system")]
mod cri; // root: containerd's CRI plugin, runc; registry
#[cfg(feature = "system")]
mod cri_keychain; // root: containerd's CRI plugin, runc; registries (one with htpasswd)
mod dropin; // root: FUSE; registry (a Go node's config and metrics)
#[cfg(feature = "system")]
mod e2e_containerd; // root: containerd, runc, ctr-remote; registry
#[cfg(feature = "system")]
mod faults; // root: FUSE; registry behind the fault proxy
#[cfg(feature = "system")]
mod image_convert; // registry
#[cfg(feature = "system")]
mod image_convert_flags; // registry; root, containerd, runc, ctr-remote, the Go reference
#[cfg(feature = "system")]
mod image_optimize; // root: FUSE, overlayfs, runc; registry; containerd, the Go reference
#[cfg(feature = "system")]
mod layer_cli; // root: `layer extract` sets owners (lchown)
#[cfg(feature = "system")]
mod lcow_scratch; // qemu-img, e2fsck, mkfs.ext4
#[cfg(feature = "system")]
mod lcow_snapshotter; // qemu-img, e2fsck, mkfs.ext4
#[cfg(feature = "system")]
mod live_restart; // root: FUSE, overlayfs; registry
#[cfg(feature = "system")]
mod mount_cli; // root: FUSE, overlayfs; registry
#[cfg(feature = "system")]
mod remote; // root: FUSE, overlayfs; registry
#[cfg(feature = "system")]
mod scale_threads; // root: FUSE, overlayfs; registry
#[cfg(feature = "system")]
mod security; // root: FUSE; registry
#[cfg(feature = "system")]
mod soak; // root: containerd, runc, ctr-remote, FUSE; registry behind the fault proxy (RSTARGZ_SOAK_SECS)
#[cfg(feature = "system")]
mod startup; // root: FUSE, overlayfs; registry behind the fault proxy (a measurement too, ignored)
#[cfg(feature = "system")]
mod systemd; // systemd-analyze; the daemon under a NOTIFY_SOCKET
