//! OCI image layout directories: `oci-layout`, `index.json` (tags in the
//! `org.opencontainers.image.ref.name` annotation) and `blobs/<alg>/<hex>`.
//!
//! Every write is atomic (temporary file in the same directory, fsync,
//! rename), so a crash never leaves a truncated blob under its digest name
//! nor a half-written index.json.

use std::io::Write;
use std::path::{Path, PathBuf};

use rstargz_fs::registry::OciDigest;

use super::error::{ImageError, Result};
use super::oci::{ANNOTATION_REF_NAME, Descriptor, OCI_INDEX};

const LAYOUT_FILE: &str = "oci-layout";
const LAYOUT_JSON: &[u8] = br#"{"imageLayoutVersion":"1.0.0"}"#;
const INDEX_FILE: &str = "index.json";

/// An OCI image layout on disk.
#[derive(Debug, Clone)]
pub struct OciLayout {
    dir: PathBuf,
}

impl OciLayout {
    /// Opens an existing layout (checks the `oci-layout` marker).
    pub fn open(dir: &Path) -> Result<Self> {
        if !dir.join(LAYOUT_FILE).is_file() {
            return Err(ImageError::Layout {
                dir: dir.display().to_string(),
                reason: "no oci-layout file".into(),
            });
        }
        Ok(Self {
            dir: dir.to_path_buf(),
        })
    }

    /// Opens `dir` as a layout, creating the directory and marker files if missing.
    pub fn create(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir.join("blobs"))
            .map_err(ImageError::io(format!("creating {}", dir.display())))?;
        let layout = Self {
            dir: dir.to_path_buf(),
        };
        if !dir.join(LAYOUT_FILE).is_file() {
            write_atomic(&dir.join(LAYOUT_FILE), LAYOUT_JSON)?;
        }
        if !dir.join(INDEX_FILE).is_file() {
            layout.write_index(&serde_json::json!({
                "schemaVersion": 2,
                "mediaType": OCI_INDEX,
                "manifests": [],
            }))?;
        }
        Ok(layout)
    }

    /// The layout directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where blob `digest` lives.
    pub fn blob_path(&self, digest: &OciDigest) -> PathBuf {
        // Digest validation guarantees `alg` and `enc` are path-safe.
        let (alg, enc) = digest.as_str().split_once(':').unwrap_or(("sha256", ""));
        self.dir.join("blobs").join(alg).join(enc)
    }

    /// Whether the blob exists.
    pub fn has_blob(&self, digest: &OciDigest) -> bool {
        self.blob_path(digest).is_file()
    }

    /// Writes `data` as blob `digest` (skipped if present); returns whether it wrote.
    pub fn write_blob_bytes(&self, digest: &OciDigest, data: &[u8]) -> Result<bool> {
        let path = self.blob_path(digest);
        if path.is_file() {
            return Ok(false);
        }
        self.ensure_blob_dir(&path)?;
        write_atomic(&path, data)?;
        Ok(true)
    }

    /// Copies the file at `src` in as blob `digest` (skipped if present).
    pub fn write_blob_file(&self, digest: &OciDigest, src: &Path) -> Result<bool> {
        let path = self.blob_path(digest);
        if path.is_file() {
            return Ok(false);
        }
        let dir = self.ensure_blob_dir(&path)?;
        let tmp = tempfile::NamedTempFile::new_in(dir).map_err(ImageError::io(format!(
            "creating a temporary file in {}",
            dir.display()
        )))?;
        let mut input = std::fs::File::open(src)
            .map_err(ImageError::io(format!("opening {}", src.display())))?;
        let ctx = || format!("writing blob {digest} to {}", path.display());
        std::io::copy(&mut input, &mut tmp.as_file()).map_err(ImageError::io(ctx()))?;
        publish_mode(tmp.as_file()).map_err(ImageError::io(ctx()))?;
        tmp.as_file().sync_all().map_err(ImageError::io(ctx()))?;
        tmp.persist(&path)
            .map_err(|e| ImageError::io(ctx())(e.error))?;
        Ok(true)
    }

    fn ensure_blob_dir<'a>(&self, path: &'a Path) -> Result<&'a Path> {
        let dir = path.parent().unwrap_or(path);
        std::fs::create_dir_all(dir)
            .map_err(ImageError::io(format!("creating {}", dir.display())))?;
        Ok(dir)
    }

    /// The parsed index.json.
    pub fn index(&self) -> Result<serde_json::Value> {
        let path = self.dir.join(INDEX_FILE);
        let bytes =
            std::fs::read(&path).map_err(ImageError::io(format!("reading {}", path.display())))?;
        serde_json::from_slice(&bytes).map_err(|e| ImageError::Layout {
            dir: self.dir.display().to_string(),
            reason: format!("index.json: {e}"),
        })
    }

    fn write_index(&self, index: &serde_json::Value) -> Result<()> {
        let bytes = serde_json::to_vec(index).map_err(|e| ImageError::Layout {
            dir: self.dir.display().to_string(),
            reason: format!("encoding index.json: {e}"),
        })?;
        write_atomic(&self.dir.join(INDEX_FILE), &bytes)
    }

    /// The index.json entry tagged `tag`, or the only entry when `tag` is None.
    pub fn resolve(&self, tag: Option<&str>) -> Result<Descriptor> {
        let index = self.index()?;
        let entries = super::oci::descriptors(&index, "manifests", "index.json")?;
        let err = |reason: String| ImageError::Layout {
            dir: self.dir.display().to_string(),
            reason,
        };
        match tag {
            Some(tag) => entries
                .into_iter()
                .find(|d| d.annotations.get(ANNOTATION_REF_NAME).map(String::as_str) == Some(tag))
                .ok_or_else(|| err(format!("no image tagged {tag:?}"))),
            None if entries.len() == 1 => entries
                .into_iter()
                .next()
                .ok_or_else(|| err("empty index.json".into())),
            None => Err(err(format!(
                "{} images in index.json: name one with oci:DIR:TAG",
                entries.len()
            ))),
        }
    }

    /// Records `desc` in index.json under `tag` (replacing the entry that had
    /// the tag), or untagged (replacing an untagged entry of the same digest).
    pub fn set_tag(&self, desc: &Descriptor, tag: Option<&str>) -> Result<()> {
        let mut index = self.index()?;
        let mut entries = super::oci::descriptors(&index, "manifests", "index.json")?;
        let mut desc = desc.clone();
        match tag {
            Some(tag) => {
                entries.retain(|d| {
                    d.annotations.get(ANNOTATION_REF_NAME).map(String::as_str) != Some(tag)
                });
                desc.annotations
                    .insert(ANNOTATION_REF_NAME.into(), tag.into());
            }
            None => entries.retain(|d| {
                d.digest != desc.digest || d.annotations.contains_key(ANNOTATION_REF_NAME)
            }),
        }
        entries.push(desc);
        let value = serde_json::to_value(&entries).map_err(|e| ImageError::Layout {
            dir: self.dir.display().to_string(),
            reason: format!("encoding index.json: {e}"),
        })?;
        if let Some(obj) = index.as_object_mut() {
            obj.insert("manifests".into(), value);
        }
        self.write_index(&index)
    }
}

/// Writes `data` to `path` through a temporary file in the same directory.
fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let ctx = || format!("writing {}", path.display());
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(ImageError::io(ctx()))?;
    tmp.write_all(data).map_err(ImageError::io(ctx()))?;
    publish_mode(tmp.as_file()).map_err(ImageError::io(ctx()))?;
    tmp.as_file().sync_all().map_err(ImageError::io(ctx()))?;
    tmp.persist(path)
        .map_err(|e| ImageError::io(ctx())(e.error))?;
    Ok(())
}

/// Temporary files are private (0600); published layout files are world-readable like docker's.
fn publish_mode(file: &std::fs::File) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    file.set_permissions(std::fs::Permissions::from_mode(0o644))
}
