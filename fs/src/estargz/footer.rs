//! Footer detection: where the TOC is and how the blob is compressed.
//!
//! Four trailers are recognised from the last [`MAX_FOOTER_SIZE`] bytes:
//! containers/storage zstd:chunked (72 bytes, `GNUlInUx`), stargz-snapshotter
//! zstd:chunked (48 bytes, `GnUlInUx`), eStargz gzip (51 bytes) and legacy
//! stargz gzip (47 bytes). Parsing is pure: callers read the tail themselves.

use super::error::{Error, Result};

/// Largest trailer we recognise; read this many bytes (or the whole blob).
pub const MAX_FOOTER_SIZE: usize = 72;
/// Size of the eStargz gzip footer.
pub const ESTARGZ_FOOTER_SIZE: usize = 51;
/// Size of the legacy stargz footer.
pub const LEGACY_FOOTER_SIZE: usize = 47;
/// Size of the stargz-snapshotter zstd:chunked trailer (skippable frame).
pub const ZSTD_FOOTER_SIZE: usize = 48;
/// Size of the containers/storage zstd:chunked trailer.
pub const ZSTD_V2_FOOTER_SIZE: usize = 72;
/// Magic of a zstd skippable frame (`0x184D2A50`), little endian.
pub const ZSTD_SKIPPABLE_MAGIC: [u8; 4] = [0x50, 0x2a, 0x4d, 0x18];
const ZSTD_MAGIC_V1: &[u8; 8] = b"GnUlInUx";
const ZSTD_MAGIC_V2: &[u8; 8] = b"GNUlInUx";

/// Compression of the payload members.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// A concatenation of gzip members.
    Gzip,
    /// A sequence of zstd frames (zstd:chunked).
    Zstd,
}

/// Which trailer the blob ends with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FooterKind {
    /// eStargz gzip footer (51 bytes).
    Estargz,
    /// Google CRFS stargz footer (47 bytes).
    LegacyStargz,
    /// stargz-snapshotter zstd:chunked (48 bytes).
    ZstdChunked,
    /// containers/storage zstd:chunked (72 bytes).
    ZstdChunkedV2,
}

/// Where the TOC is, as read from the footer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Footer {
    /// Trailer kind.
    pub kind: FooterKind,
    /// Offset of the compressed TOC (gzip member or zstd frame).
    pub toc_offset: u64,
    /// Compressed TOC length.
    pub toc_compressed_size: u64,
    /// Uncompressed TOC length when the footer records it (zstd).
    pub toc_size: Option<u64>,
    /// Trailer length in bytes.
    pub footer_size: u64,
}

impl Footer {
    /// Compression of the blob.
    pub fn compression(&self) -> Compression {
        match self.kind {
            FooterKind::Estargz | FooterKind::LegacyStargz => Compression::Gzip,
            FooterKind::ZstdChunked | FooterKind::ZstdChunkedV2 => Compression::Zstd,
        }
    }

    /// End of the file-payload area: data offsets must lie below it.
    pub fn payload_end(&self) -> u64 {
        match self.compression() {
            Compression::Gzip => self.toc_offset,
            // The TOC frame sits inside a skippable frame whose header is 8 bytes.
            Compression::Zstd => self.toc_offset.saturating_sub(8),
        }
    }

    /// Compressed TOC byte range in the blob.
    pub fn toc_range(&self) -> std::ops::Range<u64> {
        self.toc_offset..self.toc_offset + self.toc_compressed_size
    }
}

/// Parses the trailer from `tail`, the last `min(MAX_FOOTER_SIZE, blob_size)`
/// bytes of a `blob_size`-byte blob, and checks the TOC lies inside the blob.
pub fn parse_footer(tail: &[u8], blob_size: u64) -> Result<Footer> {
    if (tail.len() as u64) > blob_size {
        return Err(Error::BadFooter);
    }
    if tail.len() < LEGACY_FOOTER_SIZE {
        return Err(Error::BlobTooSmall { size: blob_size });
    }
    let footer = match parse_zstd(tail) {
        Some(f) => f,
        None => {
            let mut f = parse_gzip(tail).ok_or(Error::BadFooter)?;
            // Gzip footers leave the TOC length implicit: it runs to the footer.
            f.toc_compressed_size = blob_size
                .saturating_sub(f.footer_size)
                .saturating_sub(f.toc_offset);
            f
        }
    };
    let end = footer
        .toc_offset
        .checked_add(footer.toc_compressed_size)
        .and_then(|e| e.checked_add(footer.footer_size));
    if end.is_none_or(|e| e > blob_size) || footer.toc_compressed_size == 0 {
        return Err(Error::TocOutOfBounds {
            offset: footer.toc_offset,
            len: footer.toc_compressed_size,
            blob_size,
        });
    }
    Ok(footer)
}

fn le64(b: &[u8], at: usize) -> Option<u64> {
    let bytes: [u8; 8] = b.get(at..at + 8)?.try_into().ok()?;
    Some(u64::from_le_bytes(bytes))
}

fn last(tail: &[u8], n: usize) -> Option<&[u8]> {
    tail.len().checked_sub(n).map(|s| &tail[s..])
}

fn parse_zstd(tail: &[u8]) -> Option<Footer> {
    if let Some(f) = last(tail, ZSTD_V2_FOOTER_SIZE).filter(|f| skippable(f, 64, ZSTD_MAGIC_V2)) {
        return zstd_footer(&f[8..], FooterKind::ZstdChunkedV2, ZSTD_V2_FOOTER_SIZE);
    }
    let f = last(tail, ZSTD_FOOTER_SIZE).filter(|f| skippable(f, 40, ZSTD_MAGIC_V1))?;
    zstd_footer(&f[8..], FooterKind::ZstdChunked, ZSTD_FOOTER_SIZE)
}

fn skippable(frame: &[u8], payload_len: u32, magic: &[u8; 8]) -> bool {
    frame[..4] == ZSTD_SKIPPABLE_MAGIC
        && frame[4..8] == payload_len.to_le_bytes()
        && &frame[frame.len() - 8..] == magic
}

fn zstd_footer(payload: &[u8], kind: FooterKind, footer_size: usize) -> Option<Footer> {
    let manifest_type = le64(payload, 24)?;
    if manifest_type != 1 {
        return None;
    }
    Some(Footer {
        kind,
        toc_offset: le64(payload, 0)?,
        toc_compressed_size: le64(payload, 8)?,
        toc_size: Some(le64(payload, 16)?),
        footer_size: footer_size as u64,
    })
}

/// Gzip header of both footers up to (not including) XLEN.
const GZIP_FOOTER_PREFIX: [u8; 4] = [0x1f, 0x8b, 0x08, 0x04];
/// Final empty stored block, then CRC32 0 and ISIZE 0: the footer member is empty.
const EMPTY_GZIP_BODY: [u8; 13] = [0x01, 0x00, 0x00, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0];

fn parse_gzip(tail: &[u8]) -> Option<Footer> {
    if let Some(f) = last(tail, ESTARGZ_FOOTER_SIZE)
        && f[..4] == GZIP_FOOTER_PREFIX
        && f[10..12] == [26, 0]
        && f[12..16] == [b'S', b'G', 22, 0]
        && f[38..] == EMPTY_GZIP_BODY
    {
        return gzip_footer(&f[16..38], FooterKind::Estargz, ESTARGZ_FOOTER_SIZE);
    }
    let f = last(tail, LEGACY_FOOTER_SIZE)?;
    if f[..4] != GZIP_FOOTER_PREFIX || f[10..12] != [22, 0] || f[34..] != EMPTY_GZIP_BODY {
        return None;
    }
    gzip_footer(&f[12..34], FooterKind::LegacyStargz, LEGACY_FOOTER_SIZE)
}

fn gzip_footer(field: &[u8], kind: FooterKind, footer_size: usize) -> Option<Footer> {
    if &field[16..22] != b"STARGZ" {
        return None;
    }
    let hex = std::str::from_utf8(&field[..16]).ok()?;
    Some(Footer {
        kind,
        toc_offset: u64::from_str_radix(hex, 16).ok()?,
        toc_compressed_size: 0,
        toc_size: None,
        footer_size: footer_size as u64,
    })
}

/// Encodes the 51-byte eStargz gzip footer pointing at `toc_offset`.
pub fn estargz_footer(toc_offset: u64) -> [u8; ESTARGZ_FOOTER_SIZE] {
    let mut f = [0u8; ESTARGZ_FOOTER_SIZE];
    f[..10].copy_from_slice(&[0x1f, 0x8b, 0x08, 0x04, 0, 0, 0, 0, 0, 0xff]);
    f[10..16].copy_from_slice(&[26, 0, b'S', b'G', 22, 0]);
    f[16..38].copy_from_slice(format!("{toc_offset:016x}STARGZ").as_bytes());
    f[38..43].copy_from_slice(&[0x01, 0x00, 0x00, 0xff, 0xff]);
    f
}

/// Encodes the 48-byte stargz-snapshotter zstd:chunked trailer.
pub fn zstd_footer_bytes(
    toc_offset: u64,
    toc_compressed: u64,
    toc_size: u64,
) -> [u8; ZSTD_FOOTER_SIZE] {
    let mut f = [0u8; ZSTD_FOOTER_SIZE];
    f[..4].copy_from_slice(&ZSTD_SKIPPABLE_MAGIC);
    f[4..8].copy_from_slice(&40u32.to_le_bytes());
    f[8..16].copy_from_slice(&toc_offset.to_le_bytes());
    f[16..24].copy_from_slice(&toc_compressed.to_le_bytes());
    f[24..32].copy_from_slice(&toc_size.to_le_bytes());
    f[32..40].copy_from_slice(&1u64.to_le_bytes());
    f[40..48].copy_from_slice(ZSTD_MAGIC_V1);
    f
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn estargz_round_trip() {
        let mut blob = vec![0u8; 200];
        blob.extend_from_slice(&estargz_footer(100));
        let f = parse_footer(&blob[blob.len() - MAX_FOOTER_SIZE..], blob.len() as u64).unwrap();
        assert_eq!(f.kind, FooterKind::Estargz);
        assert_eq!((f.toc_offset, f.toc_compressed_size), (100, 100));
    }

    #[test]
    fn zstd_round_trip_and_bounds() {
        let mut blob = vec![0u8; 200];
        blob.extend_from_slice(&zstd_footer_bytes(150, 50, 900));
        let n = blob.len() as u64;
        let f = parse_footer(&blob[blob.len() - MAX_FOOTER_SIZE..], n).unwrap();
        assert_eq!(f.kind, FooterKind::ZstdChunked);
        assert_eq!(f.payload_end(), 142);
        let mut bad = vec![0u8; 200];
        bad.extend_from_slice(&zstd_footer_bytes(190, 50, 900));
        assert!(matches!(
            parse_footer(&bad[bad.len() - 72..], n),
            Err(Error::TocOutOfBounds { .. })
        ));
    }

    #[test]
    fn v2_and_legacy() {
        let mut blob = vec![0u8; 300];
        blob.extend_from_slice(&ZSTD_SKIPPABLE_MAGIC);
        blob.extend_from_slice(&64u32.to_le_bytes());
        for v in [100u64, 20, 80, 1, 120, 10, 30] {
            blob.extend_from_slice(&v.to_le_bytes());
        }
        blob.extend_from_slice(ZSTD_MAGIC_V2);
        let f = parse_footer(&blob[blob.len() - 72..], blob.len() as u64).unwrap();
        assert_eq!(f.kind, FooterKind::ZstdChunkedV2);
        assert_eq!(f.toc_size, Some(80));

        let mut legacy = vec![0u8; 100];
        legacy.extend_from_slice(&[0x1f, 0x8b, 0x08, 0x04, 0, 0, 0, 0, 0, 0xff, 22, 0]);
        legacy.extend_from_slice(b"0000000000000010STARGZ");
        legacy.extend_from_slice(&[1, 0, 0, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0]);
        let f = parse_footer(&legacy[legacy.len() - 72..], legacy.len() as u64).unwrap();
        assert_eq!(f.kind, FooterKind::LegacyStargz);
        assert_eq!(f.toc_offset, 16);
        assert!(matches!(
            parse_footer(&[0u8; 72], 72),
            Err(Error::BadFooter)
        ));
        assert!(matches!(
            parse_footer(&[0u8; 10], 10),
            Err(Error::BlobTooSmall { .. })
        ));
    }
}
