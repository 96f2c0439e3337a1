//! LCOW (Linux containers on Windows) fallback: snapshots with `lcow-layer`
//! mounts and VHDX scratch disks, the contract containerd's `windows-lcow`
//! snapshotter offers hcsshim.
//!
//! [`backend`] is the snapshotter's `LocalBackend` for this mode; every
//! Active snapshot gets a writable `sandbox.vhdx`, an empty ext4 filesystem
//! in a dynamically expanding VHDX, copied from a blank scratch cached once
//! per size: [`vhdx`] writes the VHDX format, [`scratch`] keeps the cache.

pub mod backend;
pub mod scratch;
mod sparse;
pub mod vhdx;

pub use backend::{
    LAYER_MOUNT_TYPE, LcowBackend, OWNER_KEY_LABEL, PARENT_LAYER_PATHS_OPTION, REUSE_SCRATCH_LABEL,
    ROOTFS_LOCATION_LABEL, UNPACK_KEY_MARKER,
};
pub use scratch::{
    DEFAULT_SCRATCH_SIZE_GB, ROOTFS_SIZE_LABEL, SANDBOX_FILE_NAME, ScratchError,
    cleanup_stale_temps, copy_scratch, create_sandbox, ensure_scratch, scratch_file_name,
    scratch_size_from_label,
};
