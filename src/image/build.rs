//! Builds plain (non-eStargz) images from local directories or tar files:
//! the test-image maker of the integration tests, and of `rstargz image
//! build-test-image`.
//!
//! Directories are archived deterministically: sorted names, mtime 0,
//! uid/gid 0, hardlinks detected by inode, symlinks kept as links. Layers are
//! streamed through temporary files and written with the same [`Store`] the
//! converter uses.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Read, Seek, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use rstargz_fs::registry::{OciDigest, Registry};
use sha2::{Digest as _, Sha256};

use super::error::{ImageError, Result};
use super::oci::{self, Descriptor, Platform};
use super::store::{ImageRef, Store, finish_sha256};

/// One layer's content.
#[derive(Debug, Clone)]
pub enum LayerInput {
    /// A directory tree (its contents become the layer root).
    Dir(PathBuf),
    /// An uncompressed tar file, used as is.
    Tar(PathBuf),
}

/// Compression of the built layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerCompression {
    /// Plain tar.
    None,
    /// gzip.
    Gzip,
    /// zstd.
    Zstd,
}

/// Options of [`from_dirs`].
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// Layer compression.
    pub compression: LayerCompression,
    /// Docker schema2 media types instead of OCI.
    pub docker: bool,
    /// `os`/`architecture` of the config.
    pub platform: (String, String),
    /// The config's `Entrypoint` (empty: no entrypoint, `Cmd` `/bin/sh`).
    pub entrypoint: Vec<String>,
}

impl Default for BuildOptions {
    fn default() -> Self {
        BuildOptions {
            compression: LayerCompression::Gzip,
            docker: false,
            platform: ("linux".into(), "amd64".into()),
            entrypoint: Vec::new(),
        }
    }
}

/// Builds an image from `layers` (bottom first) and writes it to `dst`
/// under its tag; returns the manifest descriptor.
pub async fn from_dirs(
    client: &Registry,
    dst: &ImageRef,
    layers: &[LayerInput],
    opts: &BuildOptions,
) -> Result<Descriptor> {
    let store = Store::destination(client, dst)?;
    let (desc, body) = build_manifest(&store, layers, opts).await?;
    store.put_root(&desc, body).await?;
    Ok(desc)
}

/// Builds one image per entry (each with its own platform) and writes an
/// index of them to `dst` under its tag; returns the index descriptor.
pub async fn index_from_dirs(
    client: &Registry,
    dst: &ImageRef,
    images: &[(BuildOptions, Vec<LayerInput>)],
) -> Result<Descriptor> {
    let store = Store::destination(client, dst)?;
    let mut manifests = Vec::new();
    let mut docker = false;
    for (opts, layers) in images {
        let (mut desc, body) = build_manifest(&store, layers, opts).await?;
        store.put_child_manifest(&desc.media_type, body).await?;
        desc.platform = Some(Platform {
            architecture: opts.platform.1.clone(),
            os: opts.platform.0.clone(),
            variant: None,
            extra: serde_json::Map::new(),
        });
        docker |= opts.docker;
        manifests.push(desc);
    }
    let media_type = if docker {
        oci::DOCKER_MANIFEST_LIST
    } else {
        oci::OCI_INDEX
    };
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": media_type,
        "manifests": manifests,
    });
    let body = Bytes::from(
        serde_json::to_vec(&index).map_err(|e| ImageError::document("index", e.to_string()))?,
    );
    let desc = Descriptor::new(media_type, &OciDigest::sha256_of(&body), body.len() as u64);
    store.put_root(&desc, body).await?;
    Ok(desc)
}

async fn build_manifest(
    store: &Store,
    layers: &[LayerInput],
    opts: &BuildOptions,
) -> Result<(Descriptor, Bytes)> {
    let mut layer_descs = Vec::new();
    let mut diff_ids = Vec::new();
    for input in layers {
        let (input, compression) = (input.clone(), opts.compression);
        let (file, digest, size, diff_id) =
            tokio::task::spawn_blocking(move || write_layer(&input, compression))
                .await
                .map_err(|e| ImageError::Task(e.to_string()))??;
        store.put_blob_file(&digest, size, file.path()).await?;
        let media_type = match (opts.docker, compression) {
            (true, LayerCompression::Gzip) => oci::DOCKER_LAYER_GZIP,
            (true, LayerCompression::None) => oci::DOCKER_LAYER_TAR,
            (_, LayerCompression::Zstd) => oci::OCI_LAYER_ZSTD,
            (false, LayerCompression::Gzip) => oci::OCI_LAYER_GZIP,
            (false, LayerCompression::None) => oci::OCI_LAYER_TAR,
        };
        layer_descs.push(Descriptor::new(media_type, &digest, size));
        diff_ids.push(diff_id.to_string());
    }
    let history: Vec<_> = (0..layers.len())
        .map(|i| serde_json::json!({"created_by": format!("rstargz build layer {}", i + 1)}))
        .collect();
    let config = serde_json::json!({
        "architecture": opts.platform.1,
        "os": opts.platform.0,
        "config": if opts.entrypoint.is_empty() {
            serde_json::json!({"Cmd": ["/bin/sh"]})
        } else {
            serde_json::json!({"Entrypoint": opts.entrypoint})
        },
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": history,
    });
    let config_body = Bytes::from(
        serde_json::to_vec(&config).map_err(|e| ImageError::document("config", e.to_string()))?,
    );
    let config_desc = Descriptor::new(
        if opts.docker {
            oci::DOCKER_CONFIG
        } else {
            oci::OCI_CONFIG
        },
        &OciDigest::sha256_of(&config_body),
        config_body.len() as u64,
    );
    store.put_blob_bytes(config_body).await?;
    let media_type = if opts.docker {
        oci::DOCKER_MANIFEST
    } else {
        oci::OCI_MANIFEST
    };
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": media_type,
        "config": config_desc,
        "layers": layer_descs,
    });
    let body = Bytes::from(
        serde_json::to_vec(&manifest)
            .map_err(|e| ImageError::document("manifest", e.to_string()))?,
    );
    let desc = Descriptor::new(media_type, &OciDigest::sha256_of(&body), body.len() as u64);
    Ok((desc, body))
}

/// A `Write` that hashes what passes through.
struct Hashing<W> {
    inner: W,
    hasher: Sha256,
    len: u64,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Writes the compressed layer to a temporary file; returns it with its
/// digest, size and diffID.
fn write_layer(
    input: &LayerInput,
    compression: LayerCompression,
) -> Result<(tempfile::NamedTempFile, OciDigest, u64, OciDigest)> {
    let io = |what: &str| ImageError::io(format!("building a layer: {what}"));
    let out = tempfile::NamedTempFile::new().map_err(io("temporary file"))?;
    let (digest, len, diff_id) = {
        let blob = Hashing {
            inner: BufWriter::new(out.as_file()),
            hasher: Sha256::new(),
            len: 0,
        };
        let (blob, diff_id) = match compression {
            LayerCompression::None => tar_into(input, blob)?,
            LayerCompression::Gzip => {
                let (gz, diff) = tar_into(
                    input,
                    flate2::write::GzEncoder::new(blob, flate2::Compression::new(6)),
                )?;
                (gz.finish().map_err(io("gzip"))?, diff)
            }
            LayerCompression::Zstd => {
                let enc = zstd::stream::write::Encoder::new(blob, 3).map_err(io("zstd"))?;
                let (enc, diff) = tar_into(input, enc)?;
                (enc.finish().map_err(io("zstd"))?, diff)
            }
        };
        let Hashing {
            mut inner,
            hasher,
            len,
        } = blob;
        inner.flush().map_err(io("flush"))?;
        drop(inner);
        (finish_sha256(hasher)?, len, diff_id)
    };
    Ok((out, digest, len, diff_id))
}

/// Writes the layer's tar into `w`; returns `w` and the tar's sha256.
fn tar_into<W: Write>(input: &LayerInput, w: W) -> Result<(W, OciDigest)> {
    let io = |what: String| ImageError::io(format!("building a layer: {what}"));
    let mut tar = Hashing {
        inner: w,
        hasher: Sha256::new(),
        len: 0,
    };
    match input {
        LayerInput::Tar(path) => {
            let mut f = File::open(path).map_err(io(path.display().to_string()))?;
            f.rewind().map_err(io(path.display().to_string()))?;
            let mut buf = vec![0u8; 1 << 20];
            loop {
                let n = f.read(&mut buf).map_err(io(path.display().to_string()))?;
                if n == 0 {
                    break;
                }
                tar.write_all(&buf[..n]).map_err(io("writing".into()))?;
            }
        }
        LayerInput::Dir(dir) => {
            let mut builder = tar::Builder::new(&mut tar);
            let mut seen = HashMap::new();
            append_tree(&mut builder, dir, Path::new(""), &mut seen)?;
            builder.finish().map_err(io("finishing tar".into()))?;
        }
    }
    let Hashing { inner, hasher, .. } = tar;
    Ok((inner, finish_sha256(hasher)?))
}

fn append_tree<W: Write>(
    builder: &mut tar::Builder<W>,
    root: &Path,
    rel: &Path,
    seen: &mut HashMap<(u64, u64), PathBuf>,
) -> Result<()> {
    let dir = root.join(rel);
    let io = |p: &Path| ImageError::io(format!("archiving {}", p.display()));
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .map_err(io(&dir))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<std::io::Result<_>>()
        .map_err(io(&dir))?;
    names.sort();
    for name in names {
        let rel_path = rel.join(&name);
        let path = root.join(&rel_path);
        let meta = std::fs::symlink_metadata(&path).map_err(io(&path))?;
        let mut header = tar::Header::new_gnu();
        header.set_metadata_in_mode(&meta, tar::HeaderMode::Deterministic);
        let ft = meta.file_type();
        if ft.is_dir() {
            builder
                .append_data(&mut header, &rel_path, std::io::empty())
                .map_err(io(&path))?;
            append_tree(builder, root, &rel_path, seen)?;
        } else if ft.is_symlink() {
            let target = std::fs::read_link(&path).map_err(io(&path))?;
            header.set_size(0);
            builder
                .append_link(&mut header, &rel_path, &target)
                .map_err(io(&path))?;
        } else if ft.is_file() {
            if meta.nlink() > 1 {
                if let Some(first) = seen.get(&(meta.dev(), meta.ino())) {
                    header.set_entry_type(tar::EntryType::Link);
                    header.set_size(0);
                    builder
                        .append_link(&mut header, &rel_path, first)
                        .map_err(io(&path))?;
                    continue;
                }
                seen.insert((meta.dev(), meta.ino()), rel_path.clone());
            }
            let file = File::open(&path).map_err(io(&path))?;
            builder
                .append_data(&mut header, &rel_path, file)
                .map_err(io(&path))?;
        }
        // Sockets and devices are not needed for test images.
    }
    Ok(())
}
