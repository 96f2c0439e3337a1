//! Random-access sources and the verified layer reader.
//!
//! [`Layer::open`] performs the reads an [`Opener`] asks for through
//! [`ReadAt`] (footer, TOC; the checks are the opener's) and builds the
//! [`Index`]. File reads fetch each needed chunk's compressed range, decode
//! and verify it ([`decode_chunk_into`]) and copy the requested bytes out.
//! Nothing is cached here: caching belongs to the layers above.

use std::fs::File;
use std::io::{self, BufReader, Read};
use std::os::unix::fs::FileExt;

use super::chunk::{Verify, decode_chunk_into};
use super::digest::Digest;
use super::error::{Error, Result};
use super::footer::Footer;
use super::index::{Chunk, Index, Ino, NodeKind};
use super::open::{OpenOptions, OpenedToc, Opener, Step, check_toc_digest};
use super::toc::DecodedToc;

/// A random-access byte source (local file, memory, later HTTP ranges).
pub trait ReadAt {
    /// Reads up to `buf.len()` bytes at `offset`; 0 means end of source.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize>;
    /// Total size in bytes.
    fn size(&self) -> u64;
}

/// Fills `buf` from `offset` or fails with `UnexpectedEof`.
pub fn read_exact_at(
    src: &(impl ReadAt + ?Sized),
    mut offset: u64,
    mut buf: &mut [u8],
) -> io::Result<()> {
    while !buf.is_empty() {
        match src.read_at(offset, buf) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "source ends early",
                ));
            }
            Ok(n) => {
                offset += n as u64;
                buf = &mut buf[n..];
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

impl ReadAt for [u8] {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(self.len());
        let n = buf.len().min(self.len() - start);
        buf[..n].copy_from_slice(&self[start..start + n]);
        Ok(n)
    }
    fn size(&self) -> u64 {
        self.len() as u64
    }
}

impl ReadAt for Vec<u8> {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        self.as_slice().read_at(offset, buf)
    }
    fn size(&self) -> u64 {
        self.len() as u64
    }
}

impl<T: ReadAt + ?Sized> ReadAt for &T {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        (**self).read_at(offset, buf)
    }
    fn size(&self) -> u64 {
        (**self).size()
    }
}

/// A local file with its size fixed at open time.
#[derive(Debug)]
pub struct FileSource {
    file: File,
    size: u64,
}

impl FileSource {
    /// Opens `path` read-only.
    pub fn open(path: impl AsRef<std::path::Path>) -> io::Result<Self> {
        let file = File::open(path)?;
        let size = file.metadata()?.len();
        Ok(FileSource { file, size })
    }
}

impl ReadAt for FileSource {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        self.file.read_at(buf, offset)
    }
    fn size(&self) -> u64 {
        self.size
    }
}

/// A `Read` over `[pos, end)` of a [`ReadAt`].
struct RangeRead<'a, R: ?Sized> {
    src: &'a R,
    pos: u64,
    end: u64,
}

impl<R: ReadAt + ?Sized> Read for RangeRead<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let want = buf
            .len()
            .min(usize::try_from(self.end.saturating_sub(self.pos)).unwrap_or(usize::MAX));
        if want == 0 {
            return Ok(0);
        }
        let n = self.src.read_at(self.pos, &mut buf[..want])?;
        self.pos += n as u64;
        Ok(n)
    }
}

/// Reads the footer of `src`.
pub fn read_footer(src: &(impl ReadAt + ?Sized)) -> Result<Footer> {
    // Only the footer is wanted: a TOC that is never read needs no cap.
    let opts = OpenOptions {
        max_toc_size: u64::MAX,
        ..OpenOptions::default()
    };
    let mut opener = Opener::new(src.size(), &opts);
    loop {
        if let Some(footer) = opener.footer() {
            return Ok(*footer);
        }
        let bytes = read_range(src, opener.wants())?;
        match opener.feed(&bytes)? {
            Step::Need(next) => opener = next,
            Step::Done(opened) => return Ok(opened.footer),
        }
    }
}

/// Reads the footer and decodes the TOC of `src`.
pub fn read_toc(src: &(impl ReadAt + ?Sized), max_toc_size: u64) -> Result<(Footer, DecodedToc)> {
    let opts = OpenOptions {
        max_toc_size,
        ..OpenOptions::default()
    };
    let opened = open_toc(src, &opts)?;
    Ok((opened.footer, opened.toc))
}

/// Reads footer and TOC of `src` as an [`Opener`] under `opts` asks.
pub fn open_toc(src: &(impl ReadAt + ?Sized), opts: &OpenOptions) -> Result<OpenedToc> {
    let mut opener = Opener::new(src.size(), opts);
    loop {
        let bytes = read_range(src, opener.wants())?;
        match opener.feed(&bytes)? {
            Step::Need(next) => opener = next,
            Step::Done(opened) => return Ok(opened),
        }
    }
}

fn read_range(src: &(impl ReadAt + ?Sized), range: std::ops::Range<u64>) -> Result<Vec<u8>> {
    let len = usize::try_from(range.end - range.start)
        .map_err(|_| io::Error::new(io::ErrorKind::OutOfMemory, "blob range longer than memory"))?;
    let mut buf = vec![0u8; len];
    read_exact_at(src, range.start, &mut buf)?;
    Ok(buf)
}

/// An opened layer: its index plus verified reads from the source.
#[derive(Debug)]
pub struct Layer<R> {
    src: R,
    footer: Footer,
    toc_digest: Digest,
    index: Index,
    verify: Verify,
}

impl<R: ReadAt> Layer<R> {
    /// Reads footer and TOC, checks the expected TOC digest and builds the index.
    pub fn open(src: R, opts: &OpenOptions) -> Result<Self> {
        let opened = open_toc(&src, opts)?;
        Self::with_toc(src, opened, opts)
    }

    /// Builds the index of a TOC already opened from `src` (by [`open_toc`]
    /// or a caller driving its own [`Opener`]).
    pub fn with_toc(src: R, opened: OpenedToc, opts: &OpenOptions) -> Result<Self> {
        let OpenedToc { footer, toc } = opened;
        let index = Index::build(&toc.toc, &footer, &opts.limits)?;
        Ok(Layer {
            src,
            footer,
            toc_digest: toc.digest,
            index,
            verify: opts.verify,
        })
    }

    /// The footer.
    pub fn footer(&self) -> &Footer {
        &self.footer
    }
    /// The index.
    pub fn index(&self) -> &Index {
        &self.index
    }
    /// sha256 of the TOC JSON as stored.
    pub fn toc_digest(&self) -> Digest {
        self.toc_digest
    }
    /// The underlying source.
    pub fn source(&self) -> &R {
        &self.src
    }

    /// Checks the TOC digest against `expected` (`sha256:…`).
    pub fn verify_toc(&self, expected: &str) -> Result<()> {
        check_toc_digest(&self.toc_digest, &Digest::parse(expected)?)
    }

    /// Fetches, decompresses and verifies one chunk of `ino` into `out` (`chunk.size` bytes).
    pub fn read_chunk_into(&self, ino: Ino, chunk: &Chunk, out: &mut [u8]) -> Result<()> {
        let range = chunk.compressed_range();
        let reader = BufReader::with_capacity(
            (range.end - range.start).clamp(1, 256 << 10) as usize,
            RangeRead {
                src: &self.src,
                pos: range.start,
                end: range.end,
            },
        );
        decode_chunk_into(
            self.footer.compression(),
            ino,
            chunk,
            reader,
            self.verify,
            out,
        )
    }

    /// Reads file bytes at `offset` into `buf`; returns the count (short at EOF).
    pub fn read_file_at(&self, ino: Ino, offset: u64, buf: &mut [u8]) -> Result<usize> {
        let node = self
            .index
            .node(ino)
            .filter(|n| n.kind() == NodeKind::Reg)
            .ok_or(Error::NotAFile(ino))?;
        let end = node.size().min(offset.saturating_add(buf.len() as u64));
        if offset >= end {
            return Ok(0);
        }
        let mut scratch = Vec::new();
        for chunk in &self.index.chunks_for_range(ino, offset, end - offset) {
            let range = chunk.file_range();
            let (from, to) = (offset.max(range.start), end.min(range.end));
            let dst = &mut buf[(from - offset) as usize..(to - offset) as usize];
            if from == range.start && to == range.end {
                self.read_chunk_into(ino, chunk, dst)?;
            } else {
                scratch.resize(chunk.size as usize, 0);
                self.read_chunk_into(ino, chunk, &mut scratch)?;
                dst.copy_from_slice(
                    &scratch[(from - range.start) as usize..(to - range.start) as usize],
                );
            }
        }
        Ok((end - offset) as usize)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::estargz::footer::{FooterKind, estargz_footer};
    use crate::estargz::toc::DEFAULT_MAX_TOC_SIZE;

    /// A blob of zeros ending in `tail`, `size` bytes long, held sparsely.
    struct Tail {
        size: u64,
        tail: Vec<u8>,
    }

    impl ReadAt for Tail {
        fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
            let tail_at = self.size - self.tail.len() as u64;
            for (at, b) in (offset..).zip(buf.iter_mut()) {
                *b = at
                    .checked_sub(tail_at)
                    .and_then(|i| self.tail.get(i as usize).copied())
                    .unwrap_or(0);
            }
            Ok(buf.len().min(self.size.saturating_sub(offset) as usize))
        }
        fn size(&self) -> u64 {
            self.size
        }
    }

    #[test]
    fn the_footer_alone_is_read_whatever_the_toc_cap() {
        let src = Tail {
            size: DEFAULT_MAX_TOC_SIZE * 4,
            tail: estargz_footer(100).to_vec(),
        };
        let footer = read_footer(&src).unwrap();
        assert_eq!(footer.kind, FooterKind::Estargz);
        assert!(footer.toc_compressed_size > DEFAULT_MAX_TOC_SIZE * 2);
        assert!(matches!(
            read_toc(&src, DEFAULT_MAX_TOC_SIZE),
            Err(Error::TocTooLarge { .. })
        ));
    }
}
