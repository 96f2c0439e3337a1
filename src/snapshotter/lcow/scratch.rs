//! Cached blank scratch disks for LCOW snapshots.
//!
//! An Active LCOW snapshot gets a writable `sandbox.vhdx`: an empty ext4
//! filesystem inside a dynamically expanding VHDX. Making one (mkfs plus VHDX
//! conversion) is done once per size into a cache directory, as containerd's
//! `windows-lcow` snapshotter does: `scratch.vhdx` for the default 20 GB and
//! `scratch_<N>.vhdx` for an explicit N GB (GiB, as hcsshim counts them).
//! Each snapshot then gets a copy ([`copy_scratch`]).
//!
//! Creation is atomic and safe under concurrency: creators serialise on an
//! `flock` of `<dir>/.scratch.lock` (separate opens conflict, so threads of
//! one process exclude each other as well as other processes), build the
//! scratch in `<name>.tmp` files in the same directory and `rename` the
//! finished VHDX into place. A present `scratch*.vhdx` is therefore always
//! complete, and readers never take the lock. Temp files left by a crash are
//! removed by [`cleanup_stale_temps`] or overwritten by the next creator.
//!
//! The filesystem is made like hcsshim's own scratch
//! (`-O ^has_journal,sparse_super2,^resize_inode`, inode tables marked
//! zeroed) so the guest never runs a lazy-init pass that would write hundreds
//! of megabytes of zeros into every sandbox.

use std::ffi::OsStr;
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use super::sparse::copy_sparse;
use super::vhdx::{self, VhdxError};

/// Size of `scratch.vhdx`, the scratch used when a snapshot asks for none.
pub const DEFAULT_SCRATCH_SIZE_GB: u64 = 20;
/// Largest scratch size: the VHDX limit of 64 TiB.
pub const MAX_SCRATCH_SIZE_GB: u64 = 64 * 1024;

/// Snapshot label asking for a scratch of N GB (containerd's `windows-lcow`).
pub const ROOTFS_SIZE_LABEL: &str =
    "containerd.io/snapshot/io.microsoft.container.storage.rootfs.size-gb";
/// Name of an Active snapshot's writable disk inside its directory.
pub const SANDBOX_FILE_NAME: &str = "sandbox.vhdx";

const LOCK_FILE: &str = ".scratch.lock";
const TEMP_SUFFIX: &str = ".tmp";
const GIB: u64 = 1 << 30;

/// Why a scratch disk could not be provided.
#[derive(Debug, thiserror::Error)]
pub enum ScratchError {
    /// The requested size is zero or beyond the VHDX limit.
    #[error("scratch size {0} GB must be between 1 and {MAX_SCRATCH_SIZE_GB}")]
    InvalidSize(u64),
    /// `mkfs.ext4` is not installed (e2fsprogs).
    #[error("mkfs.ext4 not found in PATH, /usr/sbin or /sbin: install e2fsprogs")]
    MkfsMissing,
    /// `mkfs.ext4` ran and failed.
    #[error("mkfs.ext4 on {path} failed ({status}): {stderr}")]
    MkfsFailed {
        /// The raw image being formatted.
        path: PathBuf,
        /// Its exit status.
        status: std::process::ExitStatus,
        /// What it printed on stderr.
        stderr: String,
    },
    /// Converting the ext4 image into a VHDX failed.
    #[error("writing VHDX {path}: {source}")]
    Vhdx {
        /// The VHDX being written.
        path: PathBuf,
        /// The writer's error.
        source: VhdxError,
    },
    /// A file operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// The operation, e.g. "creating".
        op: &'static str,
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> ScratchError {
    let path = path.to_path_buf();
    move |source| ScratchError::Io { op, path, source }
}

/// File name of the cached scratch for `size_gb` (`None`: the default size).
pub fn scratch_file_name(size_gb: Option<u64>) -> String {
    match size_gb {
        None => "scratch.vhdx".to_string(),
        Some(n) => format!("scratch_{n}.vhdx"),
    }
}

/// The scratch size a [`ROOTFS_SIZE_LABEL`] value asks for. Like containerd,
/// a missing, unparsable or zero value means the default (`None`).
pub fn scratch_size_from_label(value: Option<&str>) -> Option<u64> {
    value
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|&gb| gb > 0)
}

/// Gives an Active snapshot its writable disk: copies the cached scratch
/// for `size_gb` (made in `cache_dir` if needed) to
/// `snapshot_dir/sandbox.vhdx`, and returns that path.
pub fn create_sandbox(
    cache_dir: &Path,
    size_gb: Option<u64>,
    snapshot_dir: &Path,
) -> Result<PathBuf, ScratchError> {
    let cached = ensure_scratch(cache_dir, size_gb)?;
    let sandbox = snapshot_dir.join(SANDBOX_FILE_NAME);
    copy_scratch(&cached, &sandbox)?;
    Ok(sandbox)
}

/// Returns the cached scratch VHDX for `size_gb` GiB (`None`: 20 GiB in
/// `scratch.vhdx`) in `dir`, creating it and `dir` first if needed.
///
/// Concurrent callers, in any process, wait for a single creator and all get
/// the same complete file.
pub fn ensure_scratch(dir: &Path, size_gb: Option<u64>) -> Result<PathBuf, ScratchError> {
    let gb = size_gb.unwrap_or(DEFAULT_SCRATCH_SIZE_GB);
    if gb == 0 || gb > MAX_SCRATCH_SIZE_GB {
        return Err(ScratchError::InvalidSize(gb));
    }
    let path = dir.join(scratch_file_name(size_gb));
    if path.exists() {
        return Ok(path);
    }
    fs::create_dir_all(dir).map_err(io_err("creating", dir))?;
    let _lock = DirLock::acquire(dir)?;
    // Another creator may have finished while we waited for the lock.
    if path.exists() {
        return Ok(path);
    }
    create_scratch(dir, &path, gb * GIB)?;
    Ok(path)
}

/// Copies the cached scratch `cached` to `dest` (a snapshot's
/// `sandbox.vhdx`) and syncs it; a failed copy leaves no `dest` behind.
pub fn copy_scratch(cached: &Path, dest: &Path) -> Result<(), ScratchError> {
    let copy = || -> Result<(), ScratchError> {
        let src = File::open(cached).map_err(io_err("opening", cached))?;
        let dst = File::create(dest).map_err(io_err("creating", dest))?;
        // Keep the holes of zero pages: std::fs::copy fills them on
        // filesystems without reflinks, tripling the sandbox's footprint.
        copy_sparse(&src, &dst).map_err(io_err("copying scratch to", dest))?;
        dst.sync_all().map_err(io_err("syncing", dest))
    };
    copy().inspect_err(|_| {
        let _ = fs::remove_file(dest);
    })
}

/// Removes temp files a crashed creator left in `dir`; returns how many.
/// Call at startup; it waits for any creator running now.
pub fn cleanup_stale_temps(dir: &Path) -> Result<usize, ScratchError> {
    if !dir.exists() {
        return Ok(0);
    }
    let _lock = DirLock::acquire(dir)?;
    let mut removed = 0;
    for entry in fs::read_dir(dir).map_err(io_err("listing", dir))? {
        let entry = entry.map_err(io_err("listing", dir))?;
        if is_temp_name(&entry.file_name()) {
            let path = entry.path();
            fs::remove_file(&path).map_err(io_err("removing", &path))?;
            tracing::info!(path = %path.display(), "removed stale scratch temp file");
            removed += 1;
        }
    }
    Ok(removed)
}

fn is_temp_name(name: &OsStr) -> bool {
    name.to_str()
        .is_some_and(|n| n.starts_with("scratch") && n.ends_with(TEMP_SUFFIX))
}

/// An exclusive `flock` on `<dir>/.scratch.lock`, released on drop (when
/// the file closes).
struct DirLock {
    _file: File,
}

impl DirLock {
    fn acquire(dir: &Path) -> Result<Self, ScratchError> {
        let path = dir.join(LOCK_FILE);
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io_err("opening lock", &path))?;
        file.lock().map_err(io_err("locking", &path))?;
        Ok(DirLock { _file: file })
    }
}

/// Builds the scratch in temp files next to `path` and renames it into
/// place; on failure no temp file is left. Runs under the directory lock.
fn create_scratch(dir: &Path, path: &Path, size: u64) -> Result<(), ScratchError> {
    let started = Instant::now();
    let raw_path = temp_path(path, ".raw");
    let vhdx_path = temp_path(path, "");
    let result = build_scratch(&raw_path, &vhdx_path, size).and_then(|summary| {
        fs::rename(&vhdx_path, path).map_err(io_err("renaming into place", path))?;
        // The rename must survive a crash before anyone copies the scratch.
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err("syncing", dir))?;
        Ok(summary)
    });
    let _ = fs::remove_file(&raw_path);
    let summary = result.inspect_err(|_| {
        let _ = fs::remove_file(&vhdx_path);
    })?;
    tracing::info!(
        path = %path.display(),
        virtual_size = summary.virtual_size,
        file_len = summary.file_len,
        blocks_stored = summary.blocks_stored,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "created cached LCOW scratch"
    );
    Ok(())
}

/// Formats an ext4 image of `size` bytes at `raw_path` and writes it as a
/// synced VHDX at `vhdx_path`.
fn build_scratch(
    raw_path: &Path,
    vhdx_path: &Path,
    size: u64,
) -> Result<vhdx::VhdxSummary, ScratchError> {
    make_ext4_image(raw_path, size)?;
    let raw = File::open(raw_path).map_err(io_err("opening", raw_path))?;
    let out = File::create(vhdx_path).map_err(io_err("creating", vhdx_path))?;
    let summary =
        vhdx::write_dynamic_vhdx(&raw, &out, vhdx::DEFAULT_BLOCK_SIZE).map_err(|source| {
            ScratchError::Vhdx {
                path: vhdx_path.to_path_buf(),
                source,
            }
        })?;
    out.sync_all().map_err(io_err("syncing", vhdx_path))?;
    Ok(summary)
}

/// `scratch_5.vhdx` -> `scratch_5.vhdx<extra>.tmp`.
fn temp_path(path: &Path, extra: &str) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(extra);
    name.push(TEMP_SUFFIX);
    path.with_file_name(name)
}

/// Formats a fresh sparse file of `size` bytes at `raw_path` as ext4.
fn make_ext4_image(raw_path: &Path, size: u64) -> Result<(), ScratchError> {
    let mkfs = find_mkfs().ok_or(ScratchError::MkfsMissing)?;
    // A new file, so every block reads as zeros: that is what
    // assume_storage_prezeroed tells mkfs (e2fsprogs >= 1.47).
    let _ = fs::remove_file(raw_path);
    File::create_new(raw_path)
        .and_then(|f| f.set_len(size))
        .map_err(io_err("creating", raw_path))?;
    let run = |extended: &str| {
        Command::new(&mkfs)
            .args(["-F", "-q", "-E", extended])
            .args(["-O", "^has_journal,sparse_super2,^resize_inode"])
            .arg(raw_path)
            .output()
            .map_err(io_err("running mkfs.ext4 on", raw_path))
    };
    let mut output = run("lazy_itable_init=0,nodiscard,assume_storage_prezeroed=1")?;
    if !output.status.success()
        && String::from_utf8_lossy(&output.stderr).contains("assume_storage_prezeroed")
    {
        // Older e2fsprogs: zeroing the inode tables of a sparse file only
        // allocates unwritten extents, and the VHDX skips zero blocks anyway.
        output = run("lazy_itable_init=0,nodiscard")?;
    }
    if !output.status.success() {
        return Err(ScratchError::MkfsFailed {
            path: raw_path.to_path_buf(),
            status: output.status,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        });
    }
    Ok(())
}

/// `mkfs.ext4` from PATH, or the sbin directories a daemon's PATH may lack.
fn find_mkfs() -> Option<PathBuf> {
    let path_dirs = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    path_dirs
        .into_iter()
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|dir| dir.join("mkfs.ext4"))
        .find(|candidate| candidate.is_file())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_containerd_lcow() {
        assert_eq!(scratch_file_name(None), "scratch.vhdx");
        assert_eq!(scratch_file_name(Some(5)), "scratch_5.vhdx");
    }

    #[test]
    fn size_label_follows_containerd() {
        assert_eq!(scratch_size_from_label(None), None);
        assert_eq!(scratch_size_from_label(Some("0")), None);
        assert_eq!(scratch_size_from_label(Some("many")), None);
        assert_eq!(scratch_size_from_label(Some("-3")), None);
        assert_eq!(scratch_size_from_label(Some("50")), Some(50));
    }

    #[test]
    fn temp_names_are_recognised_and_finals_are_not() {
        let final_path = Path::new("/x/scratch_5.vhdx");
        for extra in ["", ".raw"] {
            let temp = temp_path(final_path, extra);
            assert!(is_temp_name(temp.file_name().unwrap()), "{temp:?}");
        }
        assert!(!is_temp_name(OsStr::new("scratch_5.vhdx")));
        assert!(!is_temp_name(OsStr::new(LOCK_FILE)));
    }

    #[test]
    fn rejects_sizes_out_of_range() {
        let dir = tempfile::tempdir().unwrap();
        for bad in [0, MAX_SCRATCH_SIZE_GB + 1] {
            assert!(matches!(
                ensure_scratch(dir.path(), Some(bad)),
                Err(ScratchError::InvalidSize(n)) if n == bad
            ));
        }
    }
}
