//! Converter from a tar stream (plain, gzip or zstd) to an eStargz blob.
//!
//! Layout follows the Go writer: the tar header of a regular file closes the
//! previous compressed member, every file payload and every chunk starts a new
//! member (gzip member or zstd frame), `.no.prefetch.landmark` comes first
//! (or the prioritized files, then `.prefetch.landmark`), and the TOC plus the
//! footer end the blob. gzip output is a valid multi-member tar.gz; zstd output
//! is a valid zstd stream of the tar (TOC and footer live in skippable frames).
//!
//! Memory stays bounded: the decompressed input is spooled to an anonymous
//! temporary file and payloads are copied through a fixed buffer; only entry
//! metadata (the TOC) is held in memory. Output is deterministic for the same
//! input and options.

mod blob;
mod input;

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Seek, Write};
use std::os::unix::fs::FileExt;

use super::digest::Digest;
use super::error::{Error, Result};
use super::footer::Compression;
use super::toc::Toc;
use blob::{BlobWriter, NameTracker, Source};
use input::{InputEntry, Item, order, scan};

/// Default chunk size (4 MiB, as the Go writer).
pub const DEFAULT_CHUNK_SIZE: u64 = 4 << 20;
const COPY_BUF: usize = 1 << 20;

/// Options of [`convert`].
#[derive(Debug, Clone)]
pub struct WriterOptions {
    /// Blob compression.
    pub compression: Compression,
    /// Uncompressed chunk size of large files.
    pub chunk_size: u64,
    /// A chunk starts a new compressed member only once the open one holds
    /// at least this many compressed bytes; smaller files then share a
    /// member and their TOC entries carry `innerOffset` (Go's
    /// `WithMinChunkSize`; readers older than stargz-snapshotter 0.13 do not
    /// understand it). 0: every chunk starts a member.
    pub min_chunk_size: u64,
    /// Files to move to the front (prefetch), in access order.
    pub prioritized: Vec<String>,
    /// gzip level (0-9).
    pub gzip_level: u32,
    /// zstd level.
    pub zstd_level: i32,
}

impl Default for WriterOptions {
    fn default() -> Self {
        WriterOptions {
            compression: Compression::Gzip,
            chunk_size: DEFAULT_CHUNK_SIZE,
            min_chunk_size: 0,
            prioritized: Vec::new(),
            gzip_level: 6,
            zstd_level: 3,
        }
    }
}

/// What [`convert`] produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConvertOutput {
    /// sha256 of the blob.
    pub digest: Digest,
    /// sha256 of the uncompressed TOC JSON (`toc.digest` annotation).
    pub toc_digest: Digest,
    /// sha256 of the decompressed blob.
    pub diff_id: Digest,
    /// Blob size in bytes.
    pub size: u64,
    /// Size of the decompressed blob.
    pub uncompressed_size: u64,
}

/// Wraps `input` in the decompressor its magic bytes call for.
pub fn decompressed_reader<'a>(input: impl Read + 'a) -> io::Result<Box<dyn Read + 'a>> {
    let mut buf = BufReader::with_capacity(256 << 10, input);
    let head = buf.fill_buf()?;
    Ok(if head.starts_with(&[0x1f, 0x8b]) {
        Box::new(flate2::bufread::MultiGzDecoder::new(buf))
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Box::new(zstd::stream::read::Decoder::with_buffer(buf)?)
    } else {
        Box::new(buf)
    })
}

/// Converts a tar stream into an eStargz blob written to `output`.
pub fn convert(
    input: impl Read,
    output: impl Write,
    opts: &WriterOptions,
) -> Result<ConvertOutput> {
    check_chunk_size(opts)?;
    let mut spool = tempfile::tempfile()?;
    io::copy(&mut decompressed_reader(input)?, &mut spool)?;
    convert_spooled(&spool, output, opts)
}

/// Like [`convert`] for a tar file; a plain (uncompressed) tar is read in place
/// instead of being spooled to a temporary file.
pub fn convert_file(
    input: &File,
    output: impl Write,
    opts: &WriterOptions,
) -> Result<ConvertOutput> {
    let mut magic = [0u8; 4];
    let n = input.read_at(&mut magic, 0)?;
    if magic[..n].starts_with(&[0x1f, 0x8b]) || magic[..n] == [0x28, 0xb5, 0x2f, 0xfd] {
        return convert(input, output, opts);
    }
    check_chunk_size(opts)?;
    convert_spooled(input, output, opts)
}

fn check_chunk_size(opts: &WriterOptions) -> Result<()> {
    if opts.chunk_size == 0 || opts.chunk_size > (256 << 20) {
        return Err(Error::InputTar(format!(
            "chunk size {} out of range",
            opts.chunk_size
        )));
    }
    Ok(())
}

/// Converts an uncompressed tar held in a file.
fn convert_spooled(
    mut spool: &File,
    output: impl Write,
    opts: &WriterOptions,
) -> Result<ConvertOutput> {
    spool.rewind()?;
    let entries = scan(spool)?;
    let order = order(&entries, &opts.prioritized);
    let mut w = BlobWriter::new(output, opts);
    let mut toc = Toc {
        version: 1,
        entries: Vec::with_capacity(entries.len() + 1),
    };
    let mut names = NameTracker::default();
    let mut buf = vec![0u8; COPY_BUF];
    for item in order {
        match item {
            Item::Landmark(name) => {
                // A landmark always starts a member of its own: prefetch
                // reads up to its offset.
                let e = InputEntry::landmark(name);
                let bytes = Source::Bytes(&[0x0f]);
                w.write_entry(&e, true, &bytes, &mut toc, &mut names, &mut buf)?;
            }
            Item::Entry(i) => w.write_entry(
                &entries[i],
                false,
                &Source::Spool(spool),
                &mut toc,
                &mut names,
                &mut buf,
            )?,
        }
    }
    w.finish(&toc)
}
