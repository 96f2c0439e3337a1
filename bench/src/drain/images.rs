//! The drain's images: `count` distinct small "application" images, each
//! a busybox base (with its own id file, so no two bases share a digest)
//! and an app layer shaped like a Python install: packages of modules
//! (1-24 KiB of text each, compressible) and a few native libraries
//! (incompressible). The workload imports a known third of the modules
//! and one library (reads them one after another, as an interpreter
//! does) and prints their SHA-256: the checksum says every byte was right.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};
use rstargz_image::build::LayerInput;

use crate::coldstart::images::{busybox_root, sh, write_random};
use crate::coldstart::procs::BUSYBOX;

/// Shape of one app layer.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct AppShape {
    /// Packages (directories of modules).
    pub packages: usize,
    /// Modules per package.
    pub modules: usize,
    /// Native libraries.
    pub libraries: usize,
    /// Bytes per native library.
    pub library_bytes: u64,
}

impl AppShape {
    /// ~6 MB of modules and 2 MiB of libraries (about 4 MB compressed);
    /// the workload reads a third of the modules and one library.
    pub const FULL: AppShape = AppShape {
        packages: 8,
        modules: 60,
        libraries: 4,
        library_bytes: 512 << 10,
    };
    /// A few dozen files, for the smoke test.
    pub const TINY: AppShape = AppShape {
        packages: 2,
        modules: 6,
        libraries: 1,
        library_bytes: 16 << 10,
    };
}

/// One image of the drain and its workload.
#[derive(Debug, Clone)]
pub struct App {
    /// Its index (image `bench/app-<index>`).
    pub index: usize,
    /// Layers, bottom first.
    pub layers: Vec<LayerInput>,
    /// Paths the workload reads, in order (the prioritized list).
    pub reads: Vec<String>,
    /// The command run in the container.
    pub cmd: Vec<String>,
    /// The SHA-256 (hex) it must print.
    pub checksum: String,
}

impl App {
    /// Its repository name in the registry.
    pub fn name(&self) -> String {
        format!("app-{:02}", self.index)
    }
}

/// The file list the workload reads, inside the image.
const LIST: &str = "app/imports.txt";

/// Builds the layer trees of image `index` under `dir`.
pub fn prepare(index: usize, shape: AppShape, dir: &Path) -> anyhow::Result<App> {
    let dir = dir.join(format!("app-{index:02}"));
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    let (base, app) = (dir.join("base"), dir.join("app"));
    busybox_root(&base)?;
    std::fs::write(base.join("etc/image-id"), format!("app-{index}\n"))?;
    let mut reads = Vec::new();
    let seed = |k: usize| (index as u64 + 1) * 1_000_003 + k as u64;
    for p in 0..shape.packages {
        let pkg = app.join(format!("app/lib/pkg{p}"));
        std::fs::create_dir_all(&pkg)?;
        for m in 0..shape.modules {
            let k = p * shape.modules + m;
            let len = 1024 + (seed(k).wrapping_mul(2_654_435_761) % (23 * 1024));
            write_text(&pkg.join(format!("mod{m:03}.py")), len, seed(k))?;
            if k % 3 == index % 3 {
                reads.push(format!("app/lib/pkg{p}/mod{m:03}.py"));
            }
        }
    }
    for l in 0..shape.libraries {
        let so = app.join(format!("app/lib/native{l}.so"));
        write_random(&so, shape.library_bytes, seed(100_000 + l))?;
    }
    reads.push(format!(
        "app/lib/native{}.so",
        index % shape.libraries.max(1)
    ));
    std::fs::write(app.join(LIST), reads.join("\n") + "\n")?;
    let checksum = host_checksum(&app, &reads)?;
    let mut prioritized = vec!["bin/busybox".to_string(), LIST.to_string()];
    prioritized.extend(reads.iter().cloned());
    Ok(App {
        index,
        layers: vec![LayerInput::Dir(base), LayerInput::Dir(app)],
        reads: prioritized,
        cmd: sh(&format!(
            "cd / && /bin/busybox cat $(/bin/busybox cat /{LIST}) | /bin/busybox sha256sum"
        )),
        checksum,
    })
}

/// The SHA-256 of `reads` concatenated, by the host's busybox.
fn host_checksum(root: &Path, reads: &[String]) -> anyhow::Result<String> {
    let files: Vec<PathBuf> = reads.iter().map(|r| root.join(r)).collect();
    let out = Command::new(BUSYBOX)
        .arg("sh")
        .arg("-c")
        .arg("/bin/busybox cat \"$@\" | /bin/busybox sha256sum")
        .arg("checksum")
        .args(&files)
        .output()
        .context("busybox sha256sum")?;
    let text = String::from_utf8_lossy(&out.stdout);
    match text.split_whitespace().next() {
        Some(sum) if out.status.success() && sum.len() == 64 => Ok(sum.to_string()),
        _ => bail!("checksum of the workload's files failed: {text}"),
    }
}

/// `len` bytes of source-like text: lines of words from a small
/// vocabulary, so it compresses about as well as Python modules do.
fn write_text(path: &Path, len: u64, seed: u64) -> anyhow::Result<()> {
    const WORDS: [&str; 24] = [
        "def", "return", "self", "import", "from", "class", "if", "else", "for", "in", "None",
        "value", "items", "result", "config", "path", "data", "True", "False", "raise", "with",
        "as", "try", "except",
    ];
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut text = Vec::with_capacity(len as usize + 64);
    while (text.len() as u64) < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let indent = (x % 3) as usize * 4;
        text.extend(std::iter::repeat_n(b' ', indent));
        for w in 0..(3 + (x >> 8) % 6) {
            let word = WORDS[((x >> (w * 5)) % WORDS.len() as u64) as usize];
            text.extend_from_slice(word.as_bytes());
            text.push(if w % 4 == 3 { b'_' } else { b' ' });
        }
        // A number per line keeps the text from compressing too well.
        writeln!(text, "{}", x % 100_000)?;
    }
    text.truncate(len as usize);
    std::fs::write(path, text)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_differ_and_read_a_third() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let a = prepare(0, AppShape::TINY, dir.path()).unwrap_or_else(|e| panic!("{e}"));
        let b = prepare(1, AppShape::TINY, dir.path()).unwrap_or_else(|e| panic!("{e}"));
        assert_ne!(a.checksum, b.checksum);
        let modules = AppShape::TINY.packages * AppShape::TINY.modules;
        // busybox, the list, a third of the modules, one library.
        assert_eq!(a.reads.len(), 2 + modules / 3 + 1, "{:?}", a.reads);
        assert_eq!(a.reads[0], "bin/busybox");
    }
}
