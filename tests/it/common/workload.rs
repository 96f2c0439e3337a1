//! The end-to-end tests' workload: an image of busybox-static, a few MB of
//! incompressible data and many small files, the checksum command a
//! container runs over it, how `ctr run` runs it and the expected output,
//! plus host-side checks of what containers leave behind (cgroups, mounts).

use std::path::{Path, PathBuf};

use rstargz_test_support::containerd::Containerd;
pub use rstargz_test_support::host::{cgroup_dirs, unmount_all_under};
use rstargz_test_support::test_blob;
use sha2::Digest as _;

/// busybox-static on the host: the image's only executable.
pub const BUSYBOX: &str = "/bin/busybox";
/// Files the container checksums (paths inside the image).
pub const CHECKED: &[&str] = &["/data/a.bin", "/data/b.bin", "/tree/d07/f013.txt"];

/// Three layer trees under `dir`: busybox, a few MB of incompressible data,
/// and many small files.
pub fn image_layers(dir: &Path) -> Vec<PathBuf> {
    assert!(
        Path::new(BUSYBOX).exists(),
        "{BUSYBOX} is missing: install busybox-static (scripts/setup.sh)"
    );
    let base = dir.join("l-base");
    std::fs::create_dir_all(base.join("bin")).unwrap();
    std::fs::copy(BUSYBOX, base.join("bin/busybox")).unwrap();
    for d in ["proc", "sys", "dev", "tmp", "etc"] {
        std::fs::create_dir_all(base.join(d)).unwrap();
    }
    let data = dir.join("l-data");
    std::fs::create_dir_all(data.join("data")).unwrap();
    std::fs::write(data.join("data/a.bin"), test_blob(3 << 20, 11)).unwrap();
    std::fs::write(data.join("data/b.bin"), test_blob((2 << 20) + 4321, 12)).unwrap();
    let tree = dir.join("l-tree");
    for d in 0..20 {
        let sub = tree.join(format!("tree/d{d:02}"));
        std::fs::create_dir_all(&sub).unwrap();
        for f in 0..25 {
            std::fs::write(
                sub.join(format!("f{f:03}.txt")),
                format!("file {d}/{f}\n").repeat(f + 1),
            )
            .unwrap();
        }
    }
    vec![base, data, tree]
}

/// The shell command a container of the image runs: `sha256sum` of
/// [`CHECKED`].
pub fn sums_script() -> String {
    format!("cd / && /bin/busybox sha256sum {}", CHECKED.join(" "))
}

/// What [`sums_script`] prints for the image made of `layers`.
pub fn expected_sums(layers: &[PathBuf]) -> String {
    CHECKED
        .iter()
        .map(|p| {
            let host = layers
                .iter()
                .map(|l| l.join(&p[1..]))
                .find(|f| f.exists())
                .unwrap();
            let sum = sha2::Sha256::digest(std::fs::read(host).unwrap());
            let hex: String = sum.iter().map(|b| format!("{b:02x}")).collect();
            format!("{hex}  {p}\n")
        })
        .collect()
}

/// Runs [`sums_script`] in a fresh container of `image` (see [`run_script`]).
pub fn run_sums(
    ctrd: &Containerd,
    dir: &Path,
    namespace: &str,
    snapshotter: &str,
    image: &str,
    id: &str,
) -> String {
    run_script(
        ctrd,
        dir,
        namespace,
        snapshotter,
        image,
        id,
        &[],
        &sums_script(),
    )
}

/// Runs the shell command `script` in a fresh container of `image`
/// (namespace `namespace`, snapshotter `snapshotter`), with runc's state
/// under `dir` and a one-level cgroup runc removes with the container;
/// asserts the container left no cgroup behind. `extra` goes to `ctr run`
/// before the image (e.g. `--mount`). Returns its output.
#[allow(clippy::too_many_arguments)]
pub fn run_script(
    ctrd: &Containerd,
    dir: &Path,
    namespace: &str,
    snapshotter: &str,
    image: &str,
    id: &str,
    extra: &[&str],
    script: &str,
) -> String {
    let fifo_dir = dir.join("fifo");
    let runc_root = dir.join("runc");
    let cgroup = format!("rstargz-e2e-{}-{id}", std::process::id());
    let cgroup_path = format!("/{cgroup}");
    let args = [
        &[
            "--namespace",
            namespace,
            "run",
            "--rm",
            "--snapshotter",
            snapshotter,
            "--fifo-dir",
            fifo_dir.to_str().unwrap(),
            "--runc-root",
            runc_root.to_str().unwrap(),
            "--cgroup",
            &cgroup_path,
        ][..],
        extra,
        &[image, id, "/bin/busybox", "sh", "-c", script][..],
    ]
    .concat();
    let out = ctrd.ctr(&args);
    assert_eq!(cgroup_dirs(&cgroup), Vec::<PathBuf>::new(), "cgroup leaked");
    out
}
