//! The eStargz layer format: footers, TOC, index, verified chunk reads, writer.
//!
//! Everything here is I/O-free apart from the [`ReadAt`] trait: the same code
//! serves local files, HTTP range readers and fuzzers. The pieces a remote
//! reader needs are public on their own: the [`Opener`] (footer and TOC,
//! one read at a time), [`Index::build`], [`Chunk::compressed_range`] and
//! [`decode_chunk`].

pub mod chunk;
pub mod digest;
pub mod error;
pub mod extract;
pub mod footer;
pub mod index;
pub mod open;
pub mod reader;
pub mod toc;
pub mod writer;

pub use chunk::{Verify, decode_chunk, decode_chunk_into};
pub use digest::Digest;
pub use error::{EntryError, Error, Result};
pub use extract::{ExtractError, ExtractStats, extract};
pub use footer::{Compression, Footer, FooterKind, parse_footer};
pub use index::{
    BlobOrder, Chunk, Index, Ino, Limits, MAX_CHUNK_FETCH, Node, NodeKind, Prefetch, ROOT_INO,
    max_compressed_len,
};
pub use open::{OpenOptions, OpenedToc, Opener, Step};
pub use reader::{FileSource, Layer, ReadAt, open_toc, read_footer, read_toc};
pub use toc::{DecodedToc, Toc, TocEntry, decode_toc};
pub use writer::{ConvertOutput, WriterOptions, convert, convert_file};
