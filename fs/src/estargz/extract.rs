//! Writes a layer's tree to a directory through the index and the verified
//! range reader (never by untarring the stream).
//!
//! Safety contract: every path written is `DIR` joined with index names, which
//! are single validated components; the index guarantees that every parent is
//! a directory we created. Existing entries are never followed or replaced:
//! files are created with `O_EXCL|O_NOFOLLOW`, and an existing non-directory
//! (e.g. a planted symlink) where a directory must go is an error. So nothing
//! is written outside `DIR`, whatever the TOC says.

use std::collections::HashMap;
use std::fs::{self, OpenOptions as FsOpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt, lchown, symlink};
use std::path::{Path, PathBuf};

use nix::sys::stat::{Mode, SFlag, UtimensatFlags, makedev, mknod, utimensat};
use nix::sys::time::TimeSpec;

use super::index::{Ino, NodeKind, ROOT_INO};
use super::reader::{Layer, ReadAt};

/// Errors of [`extract`].
#[derive(Debug, thiserror::Error)]
pub enum ExtractError {
    /// Creating or updating a path failed.
    #[error("{path}: {source}")]
    Io {
        /// The path being written.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// Reading or verifying file content failed.
    #[error("{path}: {source}")]
    Read {
        /// The path being written.
        path: PathBuf,
        /// The format error.
        source: super::error::Error,
    },
    /// A path already exists as something we must not write through.
    #[error("{0}: exists and is not a directory; refusing to write through it")]
    Exists(PathBuf),
    /// An index name is not a single path component (defence in depth).
    #[error("refusing unsafe name {0:?}")]
    UnsafeName(String),
}

/// What [`extract`] wrote.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ExtractStats {
    /// Inodes created (hardlinks excluded).
    pub inodes: u64,
    /// Extra hardlink names.
    pub hardlinks: u64,
    /// File bytes written.
    pub bytes: u64,
    /// xattrs the filesystem refused (e.g. `user.*` on symlinks).
    pub xattrs_skipped: u64,
}

/// Extracts the whole layer under `dest` (created if missing).
pub fn extract<R: ReadAt>(layer: &Layer<R>, dest: &Path) -> Result<ExtractStats, ExtractError> {
    let io_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ExtractError::Io { path, source }
    };
    fs::create_dir_all(dest).map_err(io_err(dest))?;
    let mut x = Extractor {
        layer,
        stats: ExtractStats::default(),
        first_path: HashMap::new(),
        dirs: Vec::new(),
    };
    x.dirs.push((ROOT_INO, dest.to_path_buf()));
    x.walk(ROOT_INO, dest)?;
    // Directory metadata last, deepest first, so children do not bump mtimes.
    let dirs = std::mem::take(&mut x.dirs);
    for (ino, path) in dirs.iter().rev() {
        x.apply_metadata(*ino, path)?;
    }
    Ok(x.stats)
}

struct Extractor<'a, R> {
    layer: &'a Layer<R>,
    stats: ExtractStats,
    first_path: HashMap<Ino, PathBuf>,
    dirs: Vec<(Ino, PathBuf)>,
}

impl<R: ReadAt> Extractor<'_, R> {
    fn walk(&mut self, dir: Ino, dir_path: &Path) -> Result<(), ExtractError> {
        let index = self.layer.index();
        let children: Vec<(String, Ino)> = index
            .children(dir)
            .map(|(n, i)| (n.to_owned(), i))
            .collect();
        for (name, ino) in children {
            if name.is_empty()
                || name == "."
                || name == ".."
                || name.contains('/')
                || name.contains('\0')
            {
                return Err(ExtractError::UnsafeName(name));
            }
            let path = dir_path.join(&name);
            if let Some(first) = self.first_path.get(&ino) {
                fs::hard_link(first, &path).map_err(|source| ExtractError::Io {
                    path: path.clone(),
                    source,
                })?;
                self.stats.hardlinks += 1;
                continue;
            }
            let Some(node) = index.node(ino) else {
                continue;
            };
            self.create(ino, node.kind(), &path)?;
            self.stats.inodes += 1;
            if node.kind() == NodeKind::Dir {
                self.dirs.push((ino, path.clone()));
                self.walk(ino, &path)?;
            } else {
                self.first_path.insert(ino, path.clone());
                self.apply_metadata(ino, &path)?;
            }
        }
        Ok(())
    }

    fn create(&mut self, ino: Ino, kind: NodeKind, path: &Path) -> Result<(), ExtractError> {
        let io_err = |source| ExtractError::Io {
            path: path.to_path_buf(),
            source,
        };
        let index = self.layer.index();
        match kind {
            NodeKind::Dir => match fs::create_dir(path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    let meta = fs::symlink_metadata(path).map_err(io_err)?;
                    if !meta.file_type().is_dir() {
                        return Err(ExtractError::Exists(path.to_path_buf()));
                    }
                }
                Err(e) => return Err(io_err(e)),
            },
            NodeKind::Reg => {
                let mut file = FsOpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .custom_flags(libc_nofollow())
                    .mode(0o600)
                    .open(path)
                    .map_err(|e| {
                        if e.kind() == io::ErrorKind::AlreadyExists {
                            ExtractError::Exists(path.to_path_buf())
                        } else {
                            io_err(e)
                        }
                    })?;
                let mut buf = Vec::new();
                for chunk in &index.chunks(ino) {
                    buf.resize(chunk.size as usize, 0);
                    self.layer
                        .read_chunk_into(ino, chunk, &mut buf)
                        .map_err(|source| ExtractError::Read {
                            path: path.to_path_buf(),
                            source,
                        })?;
                    file.write_all(&buf).map_err(io_err)?;
                    self.stats.bytes += buf.len() as u64;
                }
            }
            NodeKind::Symlink => {
                let target = index.symlink_target(ino).unwrap_or_default();
                symlink(target, path).map_err(io_err)?;
            }
            NodeKind::Char | NodeKind::Block | NodeKind::Fifo => {
                let (flag, dev) = match (kind, index.node(ino).and_then(|n| n.device())) {
                    (NodeKind::Char, Some((ma, mi))) => {
                        (SFlag::S_IFCHR, makedev(ma.into(), mi.into()))
                    }
                    (NodeKind::Block, Some((ma, mi))) => {
                        (SFlag::S_IFBLK, makedev(ma.into(), mi.into()))
                    }
                    _ => (SFlag::S_IFIFO, 0),
                };
                mknod(path, flag, Mode::from_bits_truncate(0o600), dev)
                    .map_err(|e| io_err(e.into()))?;
            }
        }
        Ok(())
    }

    /// Owner, then mode (chown clears suid/sgid), xattrs and mtime.
    fn apply_metadata(&mut self, ino: Ino, path: &Path) -> Result<(), ExtractError> {
        let io_err = |source| ExtractError::Io {
            path: path.to_path_buf(),
            source,
        };
        let index = self.layer.index();
        let Some(node) = index.node(ino) else {
            return Ok(());
        };
        lchown(path, Some(node.uid()), Some(node.gid())).map_err(io_err)?;
        let is_link = node.kind() == NodeKind::Symlink;
        if !is_link {
            fs::set_permissions(path, fs::Permissions::from_mode(node.permissions()))
                .map_err(io_err)?;
        }
        for (name, value) in index.xattrs(ino) {
            if let Err(e) = xattr::set(path, name, value) {
                // Linux refuses user.* xattrs on symlinks; everything else is fatal.
                if is_link && e.raw_os_error() == Some(nix::libc::EPERM) {
                    tracing::warn!(path = %path.display(), xattr = name, "xattr not supported on symlink, skipped");
                    self.stats.xattrs_skipped += 1;
                } else {
                    return Err(io_err(e));
                }
            }
        }
        let t = TimeSpec::new(node.mtime(), 0);
        utimensat(
            nix::fcntl::AT_FDCWD,
            path,
            &t,
            &t,
            UtimensatFlags::NoFollowSymlink,
        )
        .map_err(|e| io_err(e.into()))?;
        Ok(())
    }
}

fn libc_nofollow() -> i32 {
    nix::libc::O_NOFOLLOW
}
