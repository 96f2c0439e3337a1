//! Decompression and verification of one chunk: the pure step a range
//! fetcher (local file, HTTP) calls after fetching [`Chunk::compressed_range`].
//!
//! Decoding starts at the member's first byte, skips `inner_offset` bytes and
//! stops after exactly the chunk's declared size, so a decompression bomb is
//! cut off there. With [`Verify::Enabled`] (the default) the bytes are only
//! returned once their sha256 matches the chunk's recorded digest.

use std::io::{self, BufRead, Read};

use super::digest::Digest;
use super::error::{Error, Result};
use super::footer::Compression;
use super::index::{Chunk, Ino};

/// Whether chunk contents are checked against their digests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Verify {
    /// Check every chunk (default).
    #[default]
    Enabled,
    /// Skip checks (legacy layers without digests); must be chosen explicitly.
    Disabled,
}

/// Decompresses `chunk` from `compressed` (the bytes of its compressed range)
/// and verifies it. Returns exactly `chunk.size` bytes.
pub fn decode_chunk(
    compression: Compression,
    ino: Ino,
    chunk: &Chunk,
    compressed: &[u8],
    verify: Verify,
) -> Result<Vec<u8>> {
    let mut out = vec![0u8; chunk.size as usize];
    decode_chunk_into(compression, ino, chunk, compressed, verify, &mut out)?;
    Ok(out)
}

/// Like [`decode_chunk`], reading the compressed bytes from any buffered
/// reader positioned at `chunk.offset`, into `out` (`chunk.size` bytes long).
pub fn decode_chunk_into(
    compression: Compression,
    ino: Ino,
    chunk: &Chunk,
    compressed: impl BufRead,
    verify: Verify,
    out: &mut [u8],
) -> Result<()> {
    let fail = |reason: String| Error::ChunkDecompress {
        ino,
        chunk_offset: chunk.chunk_offset,
        reason,
    };
    if out.len() != chunk.size as usize {
        return Err(fail(format!(
            "buffer of {} bytes for a {}-byte chunk",
            out.len(),
            chunk.size
        )));
    }
    if chunk.is_zeros() {
        out.fill(0);
    } else {
        let res = match compression {
            Compression::Gzip => skip_and_read(
                flate2::bufread::MultiGzDecoder::new(compressed),
                chunk.inner_offset(),
                out,
            ),
            Compression::Zstd => zstd::stream::read::Decoder::with_buffer(compressed)
                .and_then(|d| skip_and_read(d, chunk.inner_offset(), out)),
        };
        res.map_err(|e| fail(e.to_string()))?;
    }
    if verify == Verify::Enabled {
        let expected = chunk.digest().ok_or(Error::ChunkNoDigest {
            ino,
            chunk_offset: chunk.chunk_offset,
        })?;
        let actual = Digest::of(out);
        if actual != expected {
            return Err(Error::ChunkDigestMismatch {
                ino,
                chunk_offset: chunk.chunk_offset,
                expected: expected.to_string(),
                actual: actual.to_string(),
            });
        }
    }
    Ok(())
}

fn skip_and_read(mut r: impl Read, skip: u64, out: &mut [u8]) -> io::Result<()> {
    let skipped = io::copy(&mut (&mut r).take(skip), &mut io::sink())?;
    if skipped != skip {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "member ends before the chunk",
        ));
    }
    r.read_exact(out)
}
