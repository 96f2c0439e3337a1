//! Typed errors of the eStargz format code.
//!
//! Every rejection of a hostile or damaged blob is a distinct variant; errors
//! about one TOC entry carry its position and name so an operator can find it.

use std::io;

/// Result alias used throughout `estargz`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Anything that can go wrong while reading, verifying or writing a layer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The underlying source or sink failed.
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
    /// The blob is shorter than the smallest footer.
    #[error("blob of {size} bytes is too small to hold an eStargz footer")]
    BlobTooSmall {
        /// Blob size in bytes.
        size: u64,
    },
    /// No known footer matched the tail of the blob.
    #[error("no eStargz, stargz or zstd:chunked footer at the end of the blob")]
    BadFooter,
    /// The footer points outside the blob.
    #[error("TOC at offset {offset} (+{len} bytes) lies outside the {blob_size}-byte blob")]
    TocOutOfBounds {
        /// TOC offset from the footer.
        offset: u64,
        /// Compressed TOC length.
        len: u64,
        /// Blob size.
        blob_size: u64,
    },
    /// The decompressed TOC exceeds the configured cap.
    #[error("TOC is larger than the {cap}-byte limit")]
    TocTooLarge {
        /// The configured cap.
        cap: u64,
    },
    /// The TOC could not be decompressed or un-tarred.
    #[error("cannot decompress the TOC: {0}")]
    TocDecompress(String),
    /// The TOC tar holds no `stargz.index.json`.
    #[error("the TOC member holds no stargz.index.json")]
    TocMissing,
    /// The TOC JSON does not parse.
    #[error("TOC JSON is invalid: {0}")]
    TocJson(#[from] serde_json::Error),
    /// The TOC has a version other than 1.
    #[error("unsupported TOC version {0}")]
    TocVersion(i64),
    /// The TOC digest differs from the expected one.
    #[error("TOC digest mismatch: expected {expected}, got {actual}")]
    TocDigestMismatch {
        /// Digest the caller expected (layer annotation).
        expected: String,
        /// Digest of the TOC bytes as stored.
        actual: String,
    },
    /// A digest string is not `sha256:<64 hex>`.
    #[error("malformed digest {0:?}")]
    BadDigest(String),
    /// One TOC entry is invalid or hostile.
    #[error("TOC entry #{index} {name:?}: {kind}")]
    Entry {
        /// Position of the entry in the TOC.
        index: usize,
        /// The entry name as written in the TOC.
        name: String,
        /// What is wrong with it.
        kind: EntryError,
    },
    /// A chunk's content does not match its recorded digest.
    #[error(
        "chunk at {chunk_offset} of inode {ino}: digest mismatch (expected {expected}, got {actual})"
    )]
    ChunkDigestMismatch {
        /// Inode of the file.
        ino: u32,
        /// Offset of the chunk in the file.
        chunk_offset: u64,
        /// Recorded digest.
        expected: String,
        /// Digest of the bytes read.
        actual: String,
    },
    /// A chunk has no digest while verification is on.
    #[error("chunk at {chunk_offset} of inode {ino} has no recorded digest")]
    ChunkNoDigest {
        /// Inode of the file.
        ino: u32,
        /// Offset of the chunk in the file.
        chunk_offset: u64,
    },
    /// A chunk's compressed bytes are corrupt or too short.
    #[error("chunk at {chunk_offset} of inode {ino}: {reason}")]
    ChunkDecompress {
        /// Inode of the file.
        ino: u32,
        /// Offset of the chunk in the file.
        chunk_offset: u64,
        /// Decoder message.
        reason: String,
    },
    /// The inode does not exist or is not a regular file.
    #[error("inode {0} is not a regular file of this layer")]
    NotAFile(u32),
    /// The input tar could not be read by the writer.
    #[error("input tar: {0}")]
    InputTar(String),
}

/// Why a TOC entry was rejected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EntryError {
    /// Name contains `..`, starts with `/` or holds NUL.
    #[error("name escapes the layer root or is malformed")]
    BadName,
    /// The same path appears twice.
    #[error("duplicate path")]
    Duplicate,
    /// A path component names something other than a directory.
    #[error("parent {0:?} is not a directory")]
    ParentNotDir(String),
    /// `type` is unknown.
    #[error("unknown type {0:?}")]
    UnknownType(String),
    /// A `chunk` entry does not follow a regular file.
    #[error("chunk entry without a preceding regular file")]
    OrphanChunk,
    /// Data offset is outside the payload area of the blob.
    #[error("offset {offset} lies outside the payload (ends at {payload_end})")]
    OffsetOutOfBlob {
        /// Recorded offset.
        offset: u64,
        /// End of the payload area.
        payload_end: u64,
    },
    /// Chunks do not tile `[0, size)` exactly.
    #[error("chunks do not cover the file: {0}")]
    ChunkCoverage(String),
    /// Size, chunk size or id beyond sane limits.
    #[error("{0} is out of range")]
    OutOfRange(&'static str),
    /// Hardlink target missing (or not earlier in the TOC).
    #[error("hardlink target {0:?} not found")]
    HardlinkTargetMissing(String),
    /// Hardlink to a directory.
    #[error("hardlink target {0:?} is a directory")]
    HardlinkToDir(String),
    /// A digest field is malformed.
    #[error("malformed digest {0:?}")]
    BadDigest(String),
    /// `modtime` does not parse as RFC 3339.
    #[error("malformed modtime {0:?}")]
    BadModtime(String),
    /// An xattr value is not valid base64.
    #[error("xattr {0:?} is not base64")]
    BadXattr(String),
    /// A non-empty regular file has no data offset.
    #[error("regular file with data has no offset")]
    MissingOffset,
}

impl Error {
    /// Builds an [`Error::Entry`].
    pub(crate) fn entry(index: usize, name: &str, kind: EntryError) -> Self {
        Error::Entry {
            index,
            name: name.to_owned(),
            kind,
        }
    }
}
