//! The benchmark's images, built from files on this machine, and their
//! workloads: a small tool image (busybox), a language runtime (the
//! machine's Python 3.11: interpreter, its libraries and the stdlib tree)
//! and a large image of generated data of which the workload reads ~3%.

use std::io::Write as _;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Component, Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

use rstargz_image::build::LayerInput;

use super::procs::BUSYBOX;
const PYTHON: &str = "/usr/bin/python3.11";
const PYTHON_LIB: &str = "/usr/lib/python3.11";

/// Which images, and how large.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// busybox-static.
    Small,
    /// Python 3.11 with its stdlib.
    Python,
    /// busybox plus generated data.
    Large,
}

impl Kind {
    /// Its name in tables and references.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Small => "small",
            Kind::Python => "python",
            Kind::Large => "large",
        }
    }

    /// Parses a name.
    pub fn parse(s: &str) -> anyhow::Result<Kind> {
        Ok(match s {
            "small" => Kind::Small,
            "python" => Kind::Python,
            "large" => Kind::Large,
            other => bail!("unknown image {other:?} (small, python, large)"),
        })
    }
}

/// Shape of the large image.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct LargeShape {
    /// Data layers.
    pub layers: usize,
    /// Files per data layer.
    pub files: usize,
    /// Bytes per file.
    pub file_bytes: u64,
    /// Files the workload reads per layer.
    pub read_per_layer: usize,
}

impl LargeShape {
    /// 4 layers × 64 files × 8 MiB = 2 GiB, of which 64 MiB (3.1%) are read.
    pub const FULL: LargeShape = LargeShape {
        layers: 4,
        files: 64,
        file_bytes: 8 << 20,
        read_per_layer: 2,
    };
    /// A few MiB for the quick mode.
    pub const QUICK: LargeShape = LargeShape {
        layers: 2,
        files: 8,
        file_bytes: 1 << 20,
        read_per_layer: 1,
    };

    /// Total bytes of data.
    pub fn total(&self) -> u64 {
        (self.layers * self.files) as u64 * self.file_bytes
    }

    /// The files read, as paths in the image: spread inside each layer so
    /// that they are not at the front of the blob.
    fn read_paths(&self) -> Vec<String> {
        (0..self.layers)
            .flat_map(|l| {
                (0..self.read_per_layer).map(move |k| {
                    let f = (k + 1) * self.files / (self.read_per_layer + 1);
                    format!("/data/l{l}/f{f:03}.bin")
                })
            })
            .collect()
    }
}

/// An image to build and the command that is its workload.
#[derive(Debug, Clone)]
pub struct Workload {
    /// Which image.
    pub kind: Kind,
    /// Layers, bottom first.
    pub layers: Vec<LayerInput>,
    /// The command run in the container.
    pub cmd: Vec<String>,
    /// A line its output must contain.
    pub expect: String,
}

/// Builds the layer trees of `kind` under `dir`.
pub fn prepare(kind: Kind, dir: &Path, large: LargeShape) -> anyhow::Result<Workload> {
    let dir = dir.join(kind.name());
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    std::fs::create_dir_all(&dir)?;
    let base = dir.join("base");
    busybox_root(&base)?;
    match kind {
        Kind::Small => Ok(Workload {
            kind,
            layers: vec![LayerInput::Dir(base)],
            cmd: sh(
                "/bin/busybox ls -l /bin >/dev/null && /bin/busybox sha256sum /bin/busybox && echo small-ok",
            ),
            expect: "small-ok".into(),
        }),
        Kind::Python => {
            let libs = dir.join("libs");
            let py = dir.join("python");
            python_trees(&libs, &py)?;
            Ok(Workload {
                kind,
                layers: vec![
                    LayerInput::Dir(base),
                    LayerInput::Tar(tar_of(&libs)?),
                    LayerInput::Tar(tar_of(&py)?),
                ],
                cmd: vec![
                    "/usr/bin/python3".into(),
                    "-c".into(),
                    "import json, email, http.server; print('python-ok')".into(),
                ],
                expect: "python-ok".into(),
            })
        }
        Kind::Large => {
            let mut layers = vec![LayerInput::Dir(base)];
            for l in 0..large.layers {
                let d = dir.join(format!("data{l}"));
                let sub = d.join(format!("data/l{l}"));
                std::fs::create_dir_all(&sub)?;
                for f in 0..large.files {
                    let seed = (l * 1000 + f) as u64 + 1;
                    write_random(&sub.join(format!("f{f:03}.bin")), large.file_bytes, seed)?;
                }
                layers.push(LayerInput::Dir(d));
            }
            let reads = large.read_paths().join(" ");
            Ok(Workload {
                kind,
                layers,
                cmd: sh(&format!(
                    "/bin/busybox cat {reads} >/dev/null && echo large-ok"
                )),
                expect: "large-ok".into(),
            })
        }
    }
}

pub(crate) fn sh(script: &str) -> Vec<String> {
    vec![
        "/bin/busybox".into(),
        "sh".into(),
        "-c".into(),
        script.into(),
    ]
}

/// busybox as `/bin/busybox` and `/bin/sh`, and the usual empty directories.
pub(crate) fn busybox_root(root: &Path) -> anyhow::Result<()> {
    if !Path::new(BUSYBOX).exists() {
        bail!("{BUSYBOX} is missing: install busybox-static (scripts/setup.sh)");
    }
    std::fs::create_dir_all(root.join("bin"))?;
    std::fs::copy(BUSYBOX, root.join("bin/busybox"))?;
    std::os::unix::fs::symlink("busybox", root.join("bin/sh"))?;
    for d in ["proc", "sys", "dev", "tmp", "etc", "run"] {
        std::fs::create_dir_all(root.join(d))?;
    }
    Ok(())
}

/// `libs`: the shared libraries of the interpreter and of its extension
/// modules; `py`: the interpreter and the stdlib (without the static
/// library and third-party packages). Modification times are kept (a
/// tar, not the deterministic directory archiver) so the stdlib's `.pyc`
/// files stay valid.
fn python_trees(libs: &Path, py: &Path) -> anyhow::Result<()> {
    if !Path::new(PYTHON).exists() || !Path::new(PYTHON_LIB).is_dir() {
        bail!(
            "{PYTHON} or {PYTHON_LIB} is missing: install python3-minimal (scripts/setup-bench.sh)"
        );
    }
    std::fs::create_dir_all(libs)?;
    let mut objects = vec![PathBuf::from(PYTHON)];
    for e in std::fs::read_dir(Path::new(PYTHON_LIB).join("lib-dynload"))? {
        objects.push(e?.path());
    }
    let mut needed = std::collections::BTreeSet::new();
    for o in &objects {
        let out = Command::new("ldd").arg(o).output().context("ldd")?;
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            // "libm.so.6 => /lib/x86_64-linux-gnu/libm.so.6 (0x…)" or "/lib64/ld-linux… (0x…)"
            if let Some(path) = line.split_whitespace().find(|w| w.starts_with('/')) {
                needed.insert(PathBuf::from(path));
            }
        }
    }
    for lib in &needed {
        replicate(lib, libs)?;
    }
    replicate(Path::new(PYTHON), py)?;
    std::os::unix::fs::symlink("python3.11", py.join("usr/bin/python3"))?;
    std::fs::create_dir_all(py.join("usr/lib"))?;
    let status = Command::new("cp")
        .arg("-a")
        .arg(PYTHON_LIB)
        .arg(py.join("usr/lib/"))
        .status()
        .context("cp")?;
    if !status.success() {
        bail!("copying {PYTHON_LIB} failed");
    }
    let lib = py.join("usr/lib/python3.11");
    for e in std::fs::read_dir(&lib)? {
        let p = e?.path();
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if name.starts_with("config-") || name == "dist-packages" || name == "site-packages" {
            std::fs::remove_dir_all(&p)?;
        }
    }
    Ok(())
}

/// Copies the host file `host` into `root` at the same path, recreating
/// the symlinks met on the way (merged-/usr: `/lib` → `usr/lib`).
fn replicate(host: &Path, root: &Path) -> anyhow::Result<()> {
    let mut at = PathBuf::from("/");
    let parts: Vec<Component> = host.components().skip(1).collect();
    for (i, part) in parts.iter().enumerate() {
        at.push(part);
        let inside = root.join(at.strip_prefix("/")?);
        let md = std::fs::symlink_metadata(&at).with_context(|| format!("{}", at.display()))?;
        if md.file_type().is_symlink() {
            let target = std::fs::read_link(&at)?;
            if std::fs::symlink_metadata(&inside).is_err() {
                if let Some(parent) = inside.parent() {
                    std::fs::create_dir_all(parent)?;
                }
                std::os::unix::fs::symlink(&target, &inside)?;
            }
            let base = at.parent().unwrap_or(Path::new("/"));
            let mut resolved = normalize(&base.join(target));
            resolved.extend(&parts[i + 1..]);
            return replicate(&resolved, root);
        }
        if md.is_dir() {
            std::fs::create_dir_all(&inside)?;
        } else if !inside.exists() {
            std::fs::copy(&at, &inside)?;
            let f = std::fs::File::options().write(true).open(&inside)?;
            f.set_modified(
                std::time::UNIX_EPOCH + std::time::Duration::from_secs(md.mtime().max(0) as u64),
            )?;
        }
    }
    Ok(())
}

/// `a/b/../c` → `a/c`, lexically.
fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for c in p.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(n) => out.push(n),
            _ => {}
        }
    }
    out
}

/// A tar of `dir` with its modification times (root-owned, sorted).
fn tar_of(dir: &Path) -> anyhow::Result<PathBuf> {
    let out = dir.with_extension("tar");
    let status = Command::new("tar")
        .args([
            "--sort=name",
            "--numeric-owner",
            "--owner=0",
            "--group=0",
            "-C",
        ])
        .arg(dir)
        .arg("-cf")
        .arg(&out)
        .arg(".")
        .status()
        .context("tar")?;
    if !status.success() {
        bail!("tar of {} failed", dir.display());
    }
    Ok(out)
}

/// `len` incompressible bytes from a xorshift generator.
pub(crate) fn write_random(path: &Path, len: u64, seed: u64) -> anyhow::Result<()> {
    let mut f = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut block = vec![0u8; 1 << 16];
    let mut left = len;
    while left > 0 {
        for word in block.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            word.copy_from_slice(&x.to_le_bytes());
        }
        let n = left.min(block.len() as u64) as usize;
        f.write_all(&block[..n])?;
        left -= n as u64;
    }
    f.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_reads_are_spread_and_under_five_percent() {
        let s = LargeShape::FULL;
        let reads = s.read_paths();
        assert_eq!(
            reads[..2],
            [
                "/data/l0/f021.bin".to_string(),
                "/data/l0/f042.bin".to_string()
            ]
        );
        let read = reads.len() as u64 * s.file_bytes;
        assert!(read * 20 < s.total(), "{read} of {}", s.total());
    }

    #[test]
    fn normalize_is_lexical() {
        assert_eq!(
            normalize(Path::new("/usr/lib64/../lib/x")),
            PathBuf::from("/usr/lib/x")
        );
    }
}
