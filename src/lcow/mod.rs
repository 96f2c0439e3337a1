//! LCOW (Linux containers on Windows) support: scratch disks.
//!
//! containerd's `windows-lcow` snapshotter gives every Active snapshot a
//! writable `sandbox.vhdx`: an empty ext4 filesystem in a dynamically
//! expanding VHDX, copied from a blank scratch cached once per size. This
//! module makes those disks on Linux: [`vhdx`] writes the VHDX format,
//! [`scratch`] keeps the cache. Wiring into the snapshotter's mounts
//! (`lcow-layer`) lives with the snapshotter.

pub mod scratch;
mod sparse;
pub mod vhdx;

pub use scratch::{
    DEFAULT_SCRATCH_SIZE_GB, ROOTFS_SIZE_LABEL, SANDBOX_FILE_NAME, ScratchError,
    cleanup_stale_temps, copy_scratch, create_sandbox, ensure_scratch, scratch_file_name,
    scratch_size_from_label,
};
