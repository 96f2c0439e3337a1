//! Writer for dynamically expanding VHDX files (MS-VHDX v1.0).
//!
//! [`write_dynamic_vhdx`] turns a raw disk image into a VHDX whose virtual disk
//! reads back byte for byte as the raw image. Only payload blocks holding a
//! non-zero byte are stored; every other block is `PAYLOAD_BLOCK_NOT_PRESENT`,
//! which a non-differencing disk reads as zeros. The file therefore stays about
//! as small as the data in the image, whatever its virtual size.
//!
//! Layout (every object 1 MiB aligned, as the specification requires):
//!
//! | offset        | object                                               |
//! |---------------|------------------------------------------------------|
//! | 0             | file type identifier (`vhdxfile`, creator string)    |
//! | 64 KiB/128 KiB| headers 1 and 2 (CRC-32C, sequence numbers 1 and 2)  |
//! | 192/256 KiB   | region table and its copy (BAT, metadata)            |
//! | 1 MiB         | log region, empty (log GUID is zero: nothing to replay) |
//! | 2 MiB         | metadata region: table + five required items         |
//! | 3 MiB         | BAT, rounded up to whole MiB                         |
//! | after the BAT | payload blocks in ascending virtual order            |
//!
//! Identifiers (file/data write GUIDs, virtual disk ID) are derived from the
//! virtual size and block size, so the same input always gives the same file.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use sha2::{Digest, Sha256};

use super::sparse::data_extents;

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;

const HEADER_OFFSETS: [u64; 2] = [64 * KIB, 128 * KIB];
const HEADER_SIZE: usize = 4 * KIB as usize;
const REGION_TABLE_OFFSETS: [u64; 2] = [192 * KIB, 256 * KIB];
const REGION_TABLE_SIZE: usize = 64 * KIB as usize;
const LOG_OFFSET: u64 = MIB;
const LOG_LENGTH: u64 = MIB;
const METADATA_OFFSET: u64 = 2 * MIB;
const METADATA_LENGTH: u64 = MIB;
const METADATA_TABLE_SIZE: usize = 64 * KIB as usize;
const BAT_OFFSET: u64 = 3 * MIB;

const LOGICAL_SECTOR_SIZE: u32 = 512;
const PHYSICAL_SECTOR_SIZE: u32 = 4096;
/// Sectors described by one sector bitmap block (2^23); fixes the chunk ratio.
const SECTORS_PER_BITMAP_BLOCK: u64 = 1 << 23;
/// The specification's ceiling on the virtual disk size.
const MAX_VIRTUAL_SIZE: u64 = 64 << 40;

const PAYLOAD_BLOCK_FULLY_PRESENT: u64 = 6;

/// Smallest block size the specification allows; also the one that keeps a
/// sparse image smallest (Microsoft recommends 1 MiB blocks for Linux guests).
pub const DEFAULT_BLOCK_SIZE: u32 = 1 << 20;

/// A GUID in its on-disk (little-endian fields) byte order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Guid([u8; 16]);

impl Guid {
    /// Builds a GUID from its textual fields, e.g. `2DC27766-F623-4200-9D64-115E9BFD4A08`.
    const fn from_fields(d1: u32, d2: u16, d3: u16, d4: [u8; 8]) -> Self {
        let a = d1.to_le_bytes();
        let b = d2.to_le_bytes();
        let c = d3.to_le_bytes();
        Guid([
            a[0], a[1], a[2], a[3], b[0], b[1], c[0], c[1], d4[0], d4[1], d4[2], d4[3], d4[4],
            d4[5], d4[6], d4[7],
        ])
    }

    /// A name-based GUID (RFC 9562 version 8 layout) from a SHA-256 of `name`.
    fn derived(name: &[u8]) -> Self {
        let digest = Sha256::digest(name);
        let mut bytes = [0u8; 16];
        bytes.copy_from_slice(&digest[..16]);
        // Version nibble lives in the high bits of Data3 (little-endian: byte 7).
        bytes[7] = (bytes[7] & 0x0f) | 0x80;
        bytes[8] = (bytes[8] & 0x3f) | 0x80;
        Guid(bytes)
    }
}

const BAT_REGION: Guid = Guid::from_fields(
    0x2DC2_7766,
    0xF623,
    0x4200,
    [0x9D, 0x64, 0x11, 0x5E, 0x9B, 0xFD, 0x4A, 0x08],
);
const METADATA_REGION: Guid = Guid::from_fields(
    0x8B7C_A206,
    0x4790,
    0x4B9A,
    [0xB8, 0xFE, 0x57, 0x5F, 0x05, 0x0F, 0x88, 0x6E],
);
const FILE_PARAMETERS: Guid = Guid::from_fields(
    0xCAA1_6737,
    0xFA36,
    0x4D43,
    [0xB3, 0xB6, 0x33, 0xF0, 0xAA, 0x44, 0xE7, 0x6B],
);
const VIRTUAL_DISK_SIZE: Guid = Guid::from_fields(
    0x2FA5_4224,
    0xCD1B,
    0x4876,
    [0xB2, 0x11, 0x5D, 0xBE, 0xD8, 0x3B, 0xF4, 0xB8],
);
const PAGE_83_DATA: Guid = Guid::from_fields(
    0xBECA_12AB,
    0xB2E6,
    0x4523,
    [0x93, 0xEF, 0xC3, 0x09, 0xE0, 0x00, 0xC7, 0x46],
);
const LOGICAL_SECTOR: Guid = Guid::from_fields(
    0x8141_BF1D,
    0xA96F,
    0x4709,
    [0xBA, 0x47, 0xF2, 0x33, 0xA8, 0xFA, 0xAB, 0x5F],
);
const PHYSICAL_SECTOR: Guid = Guid::from_fields(
    0xCDA3_48C7,
    0x445D,
    0x4471,
    [0x9C, 0xC9, 0xE9, 0x88, 0x52, 0x51, 0xC5, 0x56],
);

/// Why a VHDX could not be written.
#[derive(Debug, thiserror::Error)]
pub enum VhdxError {
    /// The raw image's length cannot be a VHDX virtual size.
    #[error(
        "virtual disk size {size} must be a positive multiple of {LOGICAL_SECTOR_SIZE} bytes and at most 64 TiB"
    )]
    InvalidVirtualSize {
        /// The rejected size in bytes.
        size: u64,
    },
    /// The requested payload block size is outside the specification.
    #[error("block size {0} must be a power of two from 1 MiB to 256 MiB")]
    InvalidBlockSize(u32),
    /// Reading the raw image or writing the VHDX failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done, with the offset involved.
        context: String,
        /// The underlying error.
        source: io::Error,
    },
}

fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> VhdxError {
    let context = context.into();
    move |source| VhdxError::Io { context, source }
}

/// What [`write_dynamic_vhdx`] produced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VhdxSummary {
    /// Size of the virtual disk in bytes.
    pub virtual_size: u64,
    /// Payload block size in bytes.
    pub block_size: u32,
    /// Payload blocks stored in the file (the rest read as zeros).
    pub blocks_stored: u64,
    /// Length of the VHDX file in bytes.
    pub file_len: u64,
}

/// Sizes that follow from the virtual size and block size.
#[derive(Clone, Copy, Debug)]
struct Geometry {
    virtual_size: u64,
    block_size: u32,
    payload_blocks: u64,
    chunk_ratio: u64,
}

impl Geometry {
    fn new(virtual_size: u64, block_size: u32) -> Result<Self, VhdxError> {
        if !block_size.is_power_of_two() || !(1 << 20..=256 << 20).contains(&block_size) {
            return Err(VhdxError::InvalidBlockSize(block_size));
        }
        if virtual_size == 0
            || !virtual_size.is_multiple_of(u64::from(LOGICAL_SECTOR_SIZE))
            || virtual_size > MAX_VIRTUAL_SIZE
        {
            return Err(VhdxError::InvalidVirtualSize { size: virtual_size });
        }
        Ok(Geometry {
            virtual_size,
            block_size,
            payload_blocks: virtual_size.div_ceil(u64::from(block_size)),
            chunk_ratio: SECTORS_PER_BITMAP_BLOCK * u64::from(LOGICAL_SECTOR_SIZE)
                / u64::from(block_size),
        })
    }

    /// BAT entries: payload entries with a sector bitmap entry after every
    /// `chunk_ratio` of them (the last, partial chunk has none on a
    /// non-differencing disk).
    fn bat_entries(&self) -> u64 {
        self.payload_blocks + (self.payload_blocks - 1) / self.chunk_ratio
    }

    /// BAT index of payload block `block`, skipping interleaved bitmap entries.
    fn bat_index(&self, block: u64) -> usize {
        // The BAT has at most a few million entries (64 TiB / 1 MiB), so this fits.
        (block + block / self.chunk_ratio) as usize
    }

    fn bat_length(&self) -> u64 {
        (self.bat_entries() * 8).next_multiple_of(MIB)
    }

    fn first_payload_offset(&self) -> u64 {
        BAT_OFFSET + self.bat_length()
    }
}

/// Writes `raw` (a raw disk image whose length is the virtual size) into
/// `out` as a dynamically expanding VHDX with `block_size`-byte payload
/// blocks ([`DEFAULT_BLOCK_SIZE`] keeps sparse images smallest).
///
/// `out` is truncated first. The caller decides on `fsync` and renaming.
pub fn write_dynamic_vhdx(
    raw: &File,
    out: &File,
    block_size: u32,
) -> Result<VhdxSummary, VhdxError> {
    let virtual_size = raw
        .metadata()
        .map_err(io_err("reading raw image size"))?
        .len();
    let geometry = Geometry::new(virtual_size, block_size)?;
    out.set_len(0).map_err(io_err("truncating VHDX"))?;

    let (bat, blocks_stored, file_len) = write_payload(raw, out, &geometry)?;
    // Metadata before headers: a reader trusts nothing until a header is valid.
    write_at(out, &bat, BAT_OFFSET, "BAT")?;
    write_at(
        out,
        &metadata_region(&geometry),
        METADATA_OFFSET,
        "metadata",
    )?;
    // The empty log and unused header space stay holes; they read as zeros.
    out.set_len(file_len).map_err(io_err("sizing VHDX"))?;
    let region_table = region_table(&geometry);
    for offset in REGION_TABLE_OFFSETS {
        write_at(out, &region_table, offset, "region table")?;
    }
    for (sequence, offset) in (1..).zip(HEADER_OFFSETS) {
        write_at(out, &header(&geometry, sequence), offset, "header")?;
    }
    write_at(out, &file_identifier(), 0, "file identifier")?;
    Ok(VhdxSummary {
        virtual_size,
        block_size,
        blocks_stored,
        file_len,
    })
}

/// Copies every block with a non-zero byte after the BAT; returns the BAT
/// bytes, the number of blocks stored and the resulting file length.
fn write_payload(
    raw: &File,
    out: &File,
    geometry: &Geometry,
) -> Result<(Vec<u8>, u64, u64), VhdxError> {
    let block_size = u64::from(geometry.block_size);
    let extents =
        data_extents(raw, geometry.virtual_size).map_err(io_err("finding data in raw image"))?;
    let mut bat = vec![0u8; geometry.bat_length() as usize];
    let mut buf = vec![0u8; geometry.block_size as usize];
    let mut next_offset = geometry.first_payload_offset();
    let mut blocks_stored = 0;
    let mut next_block = 0u64;
    for extent in extents {
        let first = (extent.start / block_size).max(next_block);
        let last = (extent.end - 1) / block_size;
        for block in first..=last {
            let start = block * block_size;
            let len = block_size.min(geometry.virtual_size - start) as usize;
            buf.fill(0);
            raw.read_exact_at(&mut buf[..len], start)
                .map_err(io_err(format!("reading raw image at {start}")))?;
            if buf.iter().all(|&b| b == 0) {
                continue;
            }
            write_nonzero_pages(out, &buf, next_offset)?;
            let entry = ((next_offset / MIB) << 20) | PAYLOAD_BLOCK_FULLY_PRESENT;
            let at = geometry.bat_index(block) * 8;
            bat[at..at + 8].copy_from_slice(&entry.to_le_bytes());
            next_offset += block_size;
            blocks_stored += 1;
        }
        next_block = last + 1;
    }
    Ok((bat, blocks_stored, next_offset))
}

/// Writes the runs of non-zero 4 KiB pages of `block` at `offset`, leaving
/// zero pages as holes: they read back as zeros and cost no disk space.
/// (The file is later extended past the last block, so every block the BAT
/// points at lies entirely inside it.)
fn write_nonzero_pages(out: &File, block: &[u8], offset: u64) -> Result<(), VhdxError> {
    const PAGE: usize = 4096;
    let pages: Vec<bool> = block
        .chunks(PAGE)
        .map(|page| page.iter().any(|&b| b != 0))
        .collect();
    let mut page = 0;
    while page < pages.len() {
        if !pages[page] {
            page += 1;
            continue;
        }
        let run_end = (page..pages.len())
            .find(|&p| !pages[p])
            .unwrap_or(pages.len());
        let bytes = &block[page * PAGE..(run_end * PAGE).min(block.len())];
        write_at(out, bytes, offset + (page * PAGE) as u64, "payload block")?;
        page = run_end;
    }
    Ok(())
}

fn write_at(out: &File, bytes: &[u8], offset: u64, what: &str) -> Result<(), VhdxError> {
    out.write_all_at(bytes, offset)
        .map_err(io_err(format!("writing {what} at {offset}")))
}

/// CRC-32C (Castagnoli) of `bytes`, as VHDX checksums use.
fn crc32c(bytes: &[u8]) -> u32 {
    crc::Crc::<u32>::new(&crc::CRC_32_ISCSI).checksum(bytes)
}

/// Stores the CRC-32C of `buf` (computed with the field zeroed) at `at`.
fn seal_checksum(buf: &mut [u8], at: usize) {
    buf[at..at + 4].fill(0);
    let sum = crc32c(buf);
    buf[at..at + 4].copy_from_slice(&sum.to_le_bytes());
}

fn file_identifier() -> Vec<u8> {
    let mut buf = Vec::with_capacity(8 + 512);
    buf.extend_from_slice(b"vhdxfile");
    let creator = concat!("rstargz ", env!("CARGO_PKG_VERSION"));
    for unit in creator.encode_utf16().take(255) {
        buf.extend_from_slice(&unit.to_le_bytes());
    }
    buf
}

fn identity(geometry: &Geometry, what: &str) -> Guid {
    Guid::derived(
        format!(
            "rstargz vhdx {what} size={} block={}",
            geometry.virtual_size, geometry.block_size
        )
        .as_bytes(),
    )
}

fn header(geometry: &Geometry, sequence: u64) -> Vec<u8> {
    let mut buf = vec![0u8; HEADER_SIZE];
    buf[0..4].copy_from_slice(b"head");
    buf[8..16].copy_from_slice(&sequence.to_le_bytes());
    buf[16..32].copy_from_slice(&identity(geometry, "file-write").0);
    buf[32..48].copy_from_slice(&identity(geometry, "data-write").0);
    // 48..64: log GUID stays zero, meaning there is no log to replay.
    buf[64..66].copy_from_slice(&0u16.to_le_bytes()); // log version
    buf[66..68].copy_from_slice(&1u16.to_le_bytes()); // format version
    buf[68..72].copy_from_slice(&(LOG_LENGTH as u32).to_le_bytes());
    buf[72..80].copy_from_slice(&LOG_OFFSET.to_le_bytes());
    seal_checksum(&mut buf, 4);
    buf
}

fn region_table(geometry: &Geometry) -> Vec<u8> {
    let mut buf = vec![0u8; REGION_TABLE_SIZE];
    buf[0..4].copy_from_slice(b"regi");
    let regions = [
        (BAT_REGION, BAT_OFFSET, geometry.bat_length()),
        (METADATA_REGION, METADATA_OFFSET, METADATA_LENGTH),
    ];
    buf[8..12].copy_from_slice(&(regions.len() as u32).to_le_bytes());
    for (i, (guid, offset, length)) in regions.into_iter().enumerate() {
        let entry = &mut buf[16 + i * 32..16 + (i + 1) * 32];
        entry[0..16].copy_from_slice(&guid.0);
        entry[16..24].copy_from_slice(&offset.to_le_bytes());
        // A BAT is at most 64 TiB / 1 MiB * 8 bytes = 512 MiB: fits in u32.
        entry[24..28].copy_from_slice(&(length as u32).to_le_bytes());
        entry[28..32].copy_from_slice(&1u32.to_le_bytes()); // required
    }
    seal_checksum(&mut buf, 4);
    buf
}

const META_IS_VIRTUAL_DISK: u32 = 1 << 1;
const META_IS_REQUIRED: u32 = 1 << 2;

fn metadata_region(geometry: &Geometry) -> Vec<u8> {
    let mut file_parameters = geometry.block_size.to_le_bytes().to_vec();
    // LeaveBlocksAllocated = 0 (dynamic), HasParent = 0.
    file_parameters.extend_from_slice(&0u32.to_le_bytes());
    let items: [(Guid, u32, Vec<u8>); 5] = [
        (FILE_PARAMETERS, META_IS_REQUIRED, file_parameters),
        (
            VIRTUAL_DISK_SIZE,
            META_IS_VIRTUAL_DISK | META_IS_REQUIRED,
            geometry.virtual_size.to_le_bytes().to_vec(),
        ),
        (
            PAGE_83_DATA,
            META_IS_VIRTUAL_DISK | META_IS_REQUIRED,
            identity(geometry, "virtual-disk-id").0.to_vec(),
        ),
        (
            LOGICAL_SECTOR,
            META_IS_VIRTUAL_DISK | META_IS_REQUIRED,
            LOGICAL_SECTOR_SIZE.to_le_bytes().to_vec(),
        ),
        (
            PHYSICAL_SECTOR,
            META_IS_VIRTUAL_DISK | META_IS_REQUIRED,
            PHYSICAL_SECTOR_SIZE.to_le_bytes().to_vec(),
        ),
    ];
    let mut buf = vec![0u8; METADATA_TABLE_SIZE];
    buf[0..8].copy_from_slice(b"metadata");
    buf[10..12].copy_from_slice(&(items.len() as u16).to_le_bytes());
    for (i, (guid, flags, data)) in items.into_iter().enumerate() {
        // Items follow the 64 KiB table; offsets are relative to the region.
        let offset = buf.len() as u32;
        let entry = &mut buf[32 + i * 32..32 + (i + 1) * 32];
        entry[0..16].copy_from_slice(&guid.0);
        entry[16..20].copy_from_slice(&offset.to_le_bytes());
        entry[20..24].copy_from_slice(&(data.len() as u32).to_le_bytes());
        entry[24..28].copy_from_slice(&flags.to_le_bytes());
        buf.extend_from_slice(&data);
    }
    buf
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn guid_fields_are_stored_little_endian() {
        assert_eq!(
            BAT_REGION.0,
            [
                0x66, 0x77, 0xC2, 0x2D, 0x23, 0xF6, 0x00, 0x42, 0x9D, 0x64, 0x11, 0x5E, 0x9B, 0xFD,
                0x4A, 0x08
            ]
        );
    }

    #[test]
    fn crc32c_matches_the_standard_check_value() {
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
    }

    #[test]
    fn header_checksum_covers_the_whole_4k() {
        let geometry = Geometry::new(1 << 30, DEFAULT_BLOCK_SIZE).unwrap();
        let mut buf = header(&geometry, 7);
        let stored = u32::from_le_bytes(buf[4..8].try_into().unwrap());
        buf[4..8].fill(0);
        assert_eq!(crc32c(&buf), stored);
        buf[HEADER_SIZE - 1] = 1;
        assert_ne!(crc32c(&buf), stored);
    }

    #[test]
    fn bat_interleaves_a_bitmap_entry_per_chunk() {
        // 1 MiB blocks, 512-byte sectors: 4096 payload blocks per chunk.
        let geometry = Geometry::new(20 << 30, DEFAULT_BLOCK_SIZE).unwrap();
        assert_eq!(geometry.chunk_ratio, 4096);
        assert_eq!(geometry.payload_blocks, 20 * 1024);
        assert_eq!(geometry.bat_entries(), 20 * 1024 + 4);
        assert_eq!(geometry.bat_index(4095), 4095);
        assert_eq!(geometry.bat_index(4096), 4097);
        assert_eq!(geometry.bat_index(20 * 1024 - 1), 20 * 1024 + 3);
        // 32 MiB blocks: 128 per chunk.
        let geometry = Geometry::new(20 << 30, 32 << 20).unwrap();
        assert_eq!(geometry.chunk_ratio, 128);
        assert_eq!(geometry.bat_entries(), 640 + 4);
    }

    #[test]
    fn rejects_sizes_outside_the_specification() {
        assert!(matches!(
            Geometry::new(0, DEFAULT_BLOCK_SIZE),
            Err(VhdxError::InvalidVirtualSize { size: 0 })
        ));
        assert!(matches!(
            Geometry::new(1000, DEFAULT_BLOCK_SIZE),
            Err(VhdxError::InvalidVirtualSize { .. })
        ));
        assert!(matches!(
            Geometry::new((64 << 40) + 512, DEFAULT_BLOCK_SIZE),
            Err(VhdxError::InvalidVirtualSize { .. })
        ));
        for bad in [512 << 10, 3 << 20, 512 << 20] {
            assert!(matches!(
                Geometry::new(1 << 30, bad),
                Err(VhdxError::InvalidBlockSize(_))
            ));
        }
    }

    #[test]
    fn stores_only_blocks_with_data() {
        let raw = tempfile::tempfile().unwrap();
        raw.set_len(64 << 20).unwrap();
        raw.write_all_at(&[0xAB; 4096], 5 << 20).unwrap();
        // Written zeros are data to the filesystem but not worth storing.
        raw.write_all_at(&vec![0u8; 2 << 20], 8 << 20).unwrap();
        let out = tempfile::tempfile().unwrap();
        let summary = write_dynamic_vhdx(&raw, &out, DEFAULT_BLOCK_SIZE).unwrap();
        assert_eq!(summary.blocks_stored, 1);
        assert_eq!(summary.file_len, 5 * MIB);
        let mut bat = [0u8; 8];
        out.read_exact_at(&mut bat, BAT_OFFSET + 5 * 8).unwrap();
        assert_eq!(
            u64::from_le_bytes(bat),
            (4 << 20) | PAYLOAD_BLOCK_FULLY_PRESENT
        );
        let mut block = vec![0u8; 4096];
        out.read_exact_at(&mut block, 4 * MIB).unwrap();
        assert!(block.iter().all(|&b| b == 0xAB));
    }
}
