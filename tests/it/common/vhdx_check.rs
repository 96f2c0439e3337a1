//! Independent checks of VHDX scratch disks: qemu-img reads the VHDX,
//! e2fsprogs checks the ext4 inside it (scripts/setup.sh installs both).

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Command, Output};

/// One GiB.
pub const GIB: u64 = 1 << 30;
/// One MiB.
pub const MIB: u64 = 1 << 20;

/// Runs `program`; fails the test unless it succeeds.
pub fn run(program: &str, args: &[&str]) -> Output {
    let output = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program} (scripts/setup.sh installs it): {e}"));
    assert!(
        output.status.success(),
        "{program} {args:?} failed: {}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// Standard output as text.
pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Bytes allocated on disk for `path`.
pub fn on_disk_bytes(path: &Path) -> u64 {
    fs::metadata(path).unwrap().blocks() * 512
}

/// `qemu-img info` of `path` as JSON.
pub fn qemu_info(path: &Path) -> serde_json::Value {
    let out = run(
        "qemu-img",
        &["info", "--output=json", path.to_str().unwrap()],
    );
    serde_json::from_str(&stdout(&out)).unwrap()
}

/// The independent checks the issue asks for, on a scratch of `gib` GiB.
pub fn assert_valid_scratch(vhdx_path: &Path, gib: u64) {
    let path = vhdx_path.to_str().unwrap();
    let info = qemu_info(vhdx_path);
    assert_eq!(info["format"], "vhdx", "{info}");
    assert_eq!(info["virtual-size"], gib * GIB, "{info}");
    run("qemu-img", &["check", "-f", "vhdx", path]);

    let work = tempfile::tempdir().unwrap();
    let raw = work.path().join("disk.raw");
    let raw_str = raw.to_str().unwrap();
    // -S 4k keeps the raw image sparse: only the ext4 metadata takes space.
    run(
        "qemu-img",
        &[
            "convert", "-f", "vhdx", "-O", "raw", "-S", "4k", path, raw_str,
        ],
    );
    assert_eq!(fs::metadata(&raw).unwrap().len(), gib * GIB);
    assert!(on_disk_bytes(&raw) < 256 * MIB, "raw image not sparse");
    run("e2fsck", &["-fn", raw_str]);

    let header = stdout(&run("dumpe2fs", &["-h", raw_str]));
    let field = |name: &str| -> u64 {
        header
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .unwrap_or_else(|| panic!("no {name} in dumpe2fs output:\n{header}"))
            .trim()
            .parse()
            .unwrap()
    };
    assert_eq!(field("Block count:") * field("Block size:"), gib * GIB);
    assert!(
        header.contains("Filesystem state:         clean"),
        "{header}"
    );
}
