//! Where a layer's compressed bytes come from: the [`BlobSource`] trait and
//! its local-file implementation. The registry reader implements the same
//! trait, so everything above it is unaware of HTTP.

use std::fs::File;
use std::io;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;

pub use crate::purpose::Purpose;

/// A random-access source of a blob's compressed bytes.
#[async_trait::async_trait]
pub trait BlobSource: Send + Sync + 'static {
    /// Reads exactly `range`; a short range is an error.
    async fn read_range(&self, range: Range<u64>, purpose: Purpose) -> io::Result<Bytes>;
    /// Total blob size in bytes.
    fn size(&self) -> u64;
    /// Drops any copy of `range` kept along the way: its bytes failed
    /// verification, so the next read must come from the origin.
    async fn forget(&self, _range: Range<u64>) {}
}

/// A blob stored in a local file.
#[derive(Debug, Clone)]
pub struct LocalBlob {
    file: Arc<File>,
    size: u64,
}

impl LocalBlob {
    /// Opens `path` read-only.
    pub fn open(path: impl AsRef<Path>) -> io::Result<Self> {
        let file = File::open(path)?;
        let size = file.metadata()?.len();
        Ok(LocalBlob {
            file: Arc::new(file),
            size,
        })
    }
}

#[async_trait::async_trait]
impl BlobSource for LocalBlob {
    async fn read_range(&self, range: Range<u64>, _purpose: Purpose) -> io::Result<Bytes> {
        if range.start > range.end || range.end > self.size {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("range {range:?} outside the {}-byte blob", self.size),
            ));
        }
        let file = self.file.clone();
        tokio::task::spawn_blocking(move || {
            let mut buf = vec![0u8; (range.end - range.start) as usize];
            file.read_exact_at(&mut buf, range.start)?;
            Ok(Bytes::from(buf))
        })
        .await
        .map_err(io::Error::other)?
    }

    fn size(&self) -> u64 {
        self.size
    }
}
