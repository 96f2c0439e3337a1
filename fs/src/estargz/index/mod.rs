//! The immutable, validated filesystem index built from a TOC.
//!
//! Contract:
//! - Inode numbers are dense and derived from TOC order only (root = 1, then
//!   each new path in the order it first appears; implicit parent directories
//!   get their number when first needed). The same TOC always gives the same
//!   numbers, so a restarted daemon serves the same inodes.
//! - Hardlinks are directory entries pointing at their target's inode; the
//!   target's `nlink` counts every name. Directories have `2 + subdirs` links.
//! - Whiteouts (`.wh.*`) and opaque markers (`.wh..wh..opq`) are kept as the
//!   regular entries they are in the TOC; a directory holding the opaque
//!   marker is flagged [`Node::is_opaque`].
//! - Every rejection of a hostile TOC is an [`Error::Entry`](super::error::Error::Entry) naming the entry.
//!
//! Memory: nodes, directory entries and chunks live in flat vectors and all
//! strings in one byte table, so there is no per-directory map. Nodes are
//! stored packed (16 bytes) with their attributes interned in a shared
//! table (files of one image mostly share owner, mode and time); chunks
//! are stored packed (48 bytes) with the rarely needed parts (positions in
//! multi-chunk files, inner offsets) in small side tables. [`Node`] and
//! [`Chunk`] are the unpacked values handed out.

use super::digest::Digest;
use super::error::Result;
use super::footer::Footer;
use super::toc::Toc;

mod build;
use build::Builder;
pub(crate) use build::split_clean;

/// Inode number (1-based).
pub type Ino = u32;
/// Inode number of the layer root.
pub const ROOT_INO: Ino = 1;
/// Landmark that ends the prioritized (prefetch) area.
pub const PREFETCH_LANDMARK: &str = ".prefetch.landmark";
/// Landmark meaning "do not prefetch".
pub const NO_PREFETCH_LANDMARK: &str = ".no.prefetch.landmark";
/// Prefix of overlay whiteout entries.
pub const WHITEOUT_PREFIX: &str = ".wh.";
/// Name of the opaque-directory marker.
pub const OPAQUE_MARKER: &str = ".wh..wh..opq";

/// Sanity limits applied while building the index.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest accepted regular-file size.
    pub max_file_size: u64,
    /// Largest accepted uncompressed chunk (a whole chunk is held in memory to verify it).
    pub max_chunk_size: u64,
    /// Largest accepted number of TOC entries.
    pub max_entries: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_file_size: 1 << 50,
            max_chunk_size: 256 << 20,
            max_entries: 10_000_000,
        }
    }
}

/// File type of a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum NodeKind {
    /// Directory.
    Dir,
    /// Regular file.
    Reg,
    /// Symbolic link.
    Symlink,
    /// Character device.
    Char,
    /// Block device.
    Block,
    /// Named pipe.
    Fifo,
}

impl NodeKind {
    /// `S_IFMT` bits of this kind.
    pub fn type_bits(self) -> u32 {
        match self {
            NodeKind::Dir => 0o040000,
            NodeKind::Reg => 0o100000,
            NodeKind::Symlink => 0o120000,
            NodeKind::Char => 0o020000,
            NodeKind::Block => 0o060000,
            NodeKind::Fifo => 0o010000,
        }
    }

    fn from_toc(kind: &str) -> Option<Self> {
        Some(match kind {
            "dir" => NodeKind::Dir,
            "reg" => NodeKind::Reg,
            "symlink" => NodeKind::Symlink,
            "char" => NodeKind::Char,
            "block" => NodeKind::Block,
            "fifo" => NodeKind::Fifo,
            _ => return None,
        })
    }
}

const FLAG_EXPLICIT: u8 = 1;
const FLAG_OPAQUE: u8 = 2;

/// One inode. Field meaning of `a`/`b` depends on the kind (children range,
/// chunk range, symlink target, device numbers), which keeps nodes small.
#[derive(Debug, Clone, Copy)]
pub struct Node {
    size: u64,
    mtime: i64,
    mode: u16,
    uid: u32,
    gid: u32,
    nlink: u32,
    parent: Ino,
    a: u32,
    b: u32,
    /// Index into `Index::xattr_sets`; 0 means none.
    xattr_set: u32,
    kind: NodeKind,
    flags: u8,
}

impl Node {
    /// A fresh node; directories start as implicit 0755 with two links.
    fn new(kind: NodeKind, parent: Ino) -> Self {
        let dir = kind == NodeKind::Dir;
        Node {
            size: 0,
            mtime: 0,
            mode: if dir { 0o755 } else { 0 },
            uid: 0,
            gid: 0,
            nlink: if dir { 2 } else { 1 },
            parent,
            a: 0,
            b: 0,
            xattr_set: 0,
            kind,
            flags: 0,
        }
    }

    /// File type.
    pub fn kind(&self) -> NodeKind {
        self.kind
    }
    /// Full `st_mode`: type bits plus permissions, suid, sgid and sticky.
    pub fn mode(&self) -> u32 {
        self.kind.type_bits() | u32::from(self.mode & 0o7777)
    }
    /// Permission bits plus suid/sgid/sticky.
    pub fn permissions(&self) -> u32 {
        u32::from(self.mode & 0o7777)
    }
    /// Owner uid.
    pub fn uid(&self) -> u32 {
        self.uid
    }
    /// Owner gid.
    pub fn gid(&self) -> u32 {
        self.gid
    }
    /// Size in bytes (regular files; symlinks: target length).
    pub fn size(&self) -> u64 {
        self.size
    }
    /// Modification time, Unix seconds.
    pub fn mtime(&self) -> i64 {
        self.mtime
    }
    /// Link count.
    pub fn nlink(&self) -> u32 {
        self.nlink
    }
    /// Parent directory (the root is its own parent).
    pub fn parent(&self) -> Ino {
        self.parent
    }
    /// Device numbers of char/block nodes.
    pub fn device(&self) -> Option<(u32, u32)> {
        matches!(self.kind, NodeKind::Char | NodeKind::Block).then_some((self.a, self.b))
    }
    /// Whether a directory holds the opaque marker.
    pub fn is_opaque(&self) -> bool {
        self.flags & FLAG_OPAQUE != 0
    }
}

/// A directory entry: where its name is in the string table (a LEB128
/// length, then the bytes) and the inode it names.
#[derive(Debug, Clone, Copy)]
struct DirEnt {
    name: u32,
    ino: Ino,
}

/// Bytes of the LEB128 encoding of `len`.
fn leb128_len(mut len: u32) -> u32 {
    let mut n = 1;
    while len >= 0x80 {
        len >>= 7;
        n += 1;
    }
    n
}

/// Appends the LEB128 encoding of `len` to `out`.
fn push_leb128(out: &mut Vec<u8>, mut len: u32) {
    while len >= 0x80 {
        out.push((len as u8) | 0x80);
        len >>= 7;
    }
    out.push(len as u8);
}

#[derive(Debug, Clone, Copy)]
struct StrRef {
    off: u32,
    len: u32,
}

/// A node as stored; the attributes are an index into `Index::attrs`. The
/// size is implied: a file's chunks tile it, a symlink's is its target's
/// length, everything else is 0.
#[derive(Debug, Clone, Copy)]
struct PackedNode {
    parent: Ino,
    a: u32,
    b: u32,
    attrs: u32,
}

/// The attributes of a node that many nodes share (interned).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Attrs {
    mtime: i64,
    uid: u32,
    gid: u32,
    nlink: u32,
    xattr_set: u32,
    mode: u16,
    kind: NodeKind,
    flags: u8,
}

impl Attrs {
    fn of(n: &Node) -> Self {
        Attrs {
            mtime: n.mtime,
            uid: n.uid,
            gid: n.gid,
            nlink: n.nlink,
            xattr_set: n.xattr_set,
            mode: n.mode,
            kind: n.kind,
            flags: n.flags,
        }
    }

    fn node(&self, p: &PackedNode, size: u64) -> Node {
        Node {
            size,
            mtime: self.mtime,
            mode: self.mode,
            uid: self.uid,
            gid: self.gid,
            nlink: self.nlink,
            parent: p.parent,
            a: p.a,
            b: p.b,
            xattr_set: self.xattr_set,
            kind: self.kind,
            flags: self.flags,
        }
    }
}

/// A chunk as stored: the blob offset shares its word with the flags, the
/// compressed length is 32 bits (saturated: no member is that long), and
/// the position in the file is implied for single-chunk files.
#[derive(Debug, Clone, Copy)]
struct PackedChunk {
    digest: Digest,
    offset_and_flags: u64,
    compressed_len: u32,
    size: u32,
}

const PACKED_HAS_DIGEST: u64 = 1 << 63;
const PACKED_ZEROS: u64 = 1 << 62;
const PACKED_INNER: u64 = 1 << 61;
/// Largest blob offset a chunk may have.
const MAX_CHUNK_BLOB_OFFSET: u64 = (1 << 61) - 1;

/// Hard cap on the compressed bytes fetched for one chunk, whatever its size.
pub const MAX_CHUNK_FETCH: u64 = 512 << 20;

/// Most compressed bytes a gzip member or zstd frame can need to yield its
/// first `len` decompressed bytes, capped at [`MAX_CHUNK_FETCH`]. Real
/// encoders expand incompressible data by well under 1% (deflate stored
/// blocks: 5 bytes per 64 KiB; zstd: `len/256`); a quarter plus 1 MiB also
/// covers odd Huffman choices, gzip header fields and flush markers.
pub fn max_compressed_len(len: u64) -> u64 {
    len.saturating_add(len / 4)
        .saturating_add(1 << 20)
        .min(MAX_CHUNK_FETCH)
}

/// Largest accepted `innerOffset` (its top bits hold the chunk flags).
pub const MAX_INNER_OFFSET: u64 = (1 << 30) - 1;
const CHUNK_HAS_DIGEST: u32 = 1 << 31;
const CHUNK_ZEROS: u32 = 1 << 30;

/// One chunk of a regular file and where its compressed bytes are.
///
/// Kept to 64 bytes (one per chunk of every file is held in memory): the
/// digest is stored inline and the flags share a word with `innerOffset`.
#[derive(Debug, Clone)]
pub struct Chunk {
    /// Offset of the chunk in the file.
    pub chunk_offset: u64,
    /// Start of the compressed member (gzip member or zstd frame).
    pub offset: u64,
    /// End of the compressed range to fetch: the next member's start or the payload end.
    pub compressed_end: u64,
    digest: Digest,
    /// Uncompressed chunk length.
    pub size: u32,
    inner_and_flags: u32,
}

impl Chunk {
    /// A chunk; `inner_offset` must not exceed [`MAX_INNER_OFFSET`].
    pub fn new(
        chunk_offset: u64,
        offset: u64,
        compressed_end: u64,
        size: u32,
        inner_offset: u64,
        digest: Option<Digest>,
        zeros: bool,
    ) -> Option<Self> {
        let inner = u32::try_from(inner_offset)
            .ok()
            .filter(|i| u64::from(*i) <= MAX_INNER_OFFSET)?;
        let mut chunk = Chunk {
            chunk_offset,
            offset,
            compressed_end,
            digest: Digest::default(),
            size,
            inner_and_flags: inner | if zeros { CHUNK_ZEROS } else { 0 },
        };
        chunk.set_digest(digest);
        Some(chunk)
    }
    /// sha256 of the uncompressed chunk, when recorded.
    pub fn digest(&self) -> Option<Digest> {
        (self.inner_and_flags & CHUNK_HAS_DIGEST != 0).then_some(self.digest)
    }
    /// Replaces the recorded digest.
    pub fn set_digest(&mut self, digest: Option<Digest>) {
        self.digest = digest.unwrap_or_default();
        if digest.is_some() {
            self.inner_and_flags |= CHUNK_HAS_DIGEST;
        } else {
            self.inner_and_flags &= !CHUNK_HAS_DIGEST;
        }
    }
    /// Bytes to skip in the decompressed member before the chunk starts.
    pub fn inner_offset(&self) -> u64 {
        u64::from(self.inner_and_flags) & MAX_INNER_OFFSET
    }
    /// A sparse hole (`chunkType: "zeros"`): no data, reads as zeros.
    pub fn is_zeros(&self) -> bool {
        self.inner_and_flags & CHUNK_ZEROS != 0
    }
    /// Compressed byte range to fetch for this chunk: up to the next member
    /// start, but no further than the member can need to yield the chunk
    /// ([`max_compressed_len`]), so a hostile TOC whose next offset lies
    /// gigabytes away costs a bounded fetch, not a buffer of the blob's size.
    pub fn compressed_range(&self) -> std::ops::Range<u64> {
        let need = self.inner_offset() + u64::from(self.size);
        let bound = self.offset.saturating_add(max_compressed_len(need));
        self.offset..self.compressed_end.min(bound)
    }
    /// Whether the TOC's range for this chunk is longer than
    /// [`Chunk::compressed_range`] fetches (the rest cannot be this chunk's).
    pub fn range_is_capped(&self) -> bool {
        self.compressed_range().end < self.compressed_end
    }
    /// Uncompressed range of the file this chunk covers.
    pub fn file_range(&self) -> std::ops::Range<u64> {
        self.chunk_offset..self.chunk_offset + u64::from(self.size)
    }
}

/// What the landmarks say about prefetching.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prefetch {
    /// `.prefetch.landmark`: prefetch compressed bytes `[0, end)`.
    Range {
        /// Compressed offset of the landmark's member.
        end: u64,
    },
    /// `.no.prefetch.landmark`: do not prefetch.
    Disabled,
    /// No landmark (legacy layers): the caller's default applies.
    Unknown,
}

/// An [`Index`]'s data chunks in blob order (see [`Index::blob_order`]):
/// (owner inode, position in the chunk table) pairs; the chunks themselves
/// stay in the index.
#[derive(Debug, Clone, Default)]
pub struct BlobOrder {
    order: Vec<(Ino, u32)>,
}

impl BlobOrder {
    /// Number of data chunks.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// Whether the layer has no data chunk.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// Heap bytes held.
    pub fn heap_bytes(&self) -> usize {
        self.order.capacity() * std::mem::size_of::<(Ino, u32)>()
    }

    /// Position of the first chunk whose member starts at or after `offset`.
    pub fn first_from(&self, index: &Index, offset: u64) -> usize {
        self.order
            .partition_point(|&(_, i)| index.chunk_blob_offset(i) < offset)
    }

    /// The `n`th chunk (0-based, blob order) with its owner inode.
    pub fn get(&self, index: &Index, n: usize) -> Option<(Ino, Chunk)> {
        let &(ino, i) = self.order.get(n)?;
        let span = index.chunk_span(ino)?;
        let k = (i as usize).checked_sub(span.0).filter(|&k| k < span.1)?;
        Some((ino, index.unpack(span, k)))
    }

    /// The chunks from position `from` on, in blob order.
    pub fn iter_from<'a>(
        &'a self,
        index: &'a Index,
        from: usize,
    ) -> impl Iterator<Item = (Ino, Chunk)> + 'a {
        (from..self.len()).filter_map(move |n| self.get(index, n))
    }
}

/// The immutable index of one layer.
#[derive(Debug, Clone)]
pub struct Index {
    nodes: Vec<PackedNode>,
    attrs: Vec<Attrs>,
    dirents: Vec<DirEnt>,
    chunks: Vec<PackedChunk>,
    /// File offsets of the chunks of multi-chunk files, one run per file.
    extents: Vec<u64>,
    /// (first chunk index, start of its run in `extents`), sorted.
    multi: Vec<(u32, u32)>,
    /// (chunk index, inner offset) of chunks with a non-zero inner offset, sorted.
    inner: Vec<(u32, u32)>,
    xattrs: Vec<(StrRef, StrRef)>,
    xattr_sets: Vec<(u32, u32)>,
    strings: Vec<u8>,
    prefetch: Prefetch,
}

// Memory per entry matters (the FUSE layer holds one index per layer).
const _: () = assert!(std::mem::size_of::<PackedNode>() == 16);
const _: () = assert!(std::mem::size_of::<PackedChunk>() == 48);
const _: () = assert!(std::mem::size_of::<DirEnt>() == 8);

impl Index {
    /// Validates `toc` against the blob layout described by `footer` and builds the index.
    pub fn build(toc: &Toc, footer: &Footer, limits: &Limits) -> Result<Index> {
        Builder::new(footer.payload_end(), *limits).run(toc)
    }

    /// Like [`Index::build`] with an explicit payload end (for tests and fuzzing).
    pub fn build_with_payload_end(toc: &Toc, payload_end: u64, limits: &Limits) -> Result<Index> {
        Builder::new(payload_end, *limits).run(toc)
    }

    /// Number of inodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }
    /// Never true: the root always exists.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }
    /// The node of `ino`.
    pub fn node(&self, ino: Ino) -> Option<Node> {
        let p = self.packed(ino)?;
        let attrs = &self.attrs[p.attrs as usize];
        let size = match attrs.kind {
            NodeKind::Reg => self.chunk_span(ino).map_or(0, |span| {
                let last = span.1 - 1;
                self.chunk_offset_at(span, last) + u64::from(self.chunks[span.0 + last].size)
            }),
            NodeKind::Symlink => u64::from(p.b),
            _ => 0,
        };
        Some(attrs.node(p, size))
    }

    fn packed(&self, ino: Ino) -> Option<&PackedNode> {
        self.nodes.get((ino as usize).checked_sub(1)?)
    }

    fn kind_of(&self, p: &PackedNode) -> NodeKind {
        self.attrs[p.attrs as usize].kind
    }
    /// Prefetch hint from the landmarks.
    pub fn prefetch(&self) -> Prefetch {
        self.prefetch
    }

    fn str(&self, r: StrRef) -> &[u8] {
        &self.strings[r.off as usize..(r.off + r.len) as usize]
    }

    fn dir_entries(&self, ino: Ino) -> &[DirEnt] {
        match self.packed(ino) {
            Some(n) if self.kind_of(n) == NodeKind::Dir => {
                &self.dirents[n.a as usize..(n.a + n.b) as usize]
            }
            _ => &[],
        }
    }

    /// Children of a directory, sorted by name.
    pub fn children(&self, dir: Ino) -> impl ExactSizeIterator<Item = (&str, Ino)> + '_ {
        self.dir_entries(dir)
            .iter()
            .map(|d| (self.name_str(self.ent_name(d)), d.ino))
    }

    /// The name of a directory entry.
    fn ent_name(&self, d: &DirEnt) -> StrRef {
        let (mut len, mut shift, mut off) = (0u32, 0, d.name as usize);
        while let Some(&b) = self.strings.get(off) {
            len |= u32::from(b & 0x7f) << shift;
            off += 1;
            shift += 7;
            if b & 0x80 == 0 || shift > 28 {
                break;
            }
        }
        StrRef {
            off: off as u32,
            len,
        }
    }

    fn name_str(&self, r: StrRef) -> &str {
        // Names come from JSON strings, so they are UTF-8.
        std::str::from_utf8(self.str(r)).unwrap_or("")
    }

    /// Looks `name` up in directory `dir`.
    pub fn lookup(&self, dir: Ino, name: &str) -> Option<Ino> {
        let ents = self.dir_entries(dir);
        ents.binary_search_by(|d| self.str(self.ent_name(d)).cmp(name.as_bytes()))
            .ok()
            .map(|i| ents[i].ino)
    }

    /// Looks a path up from the root (`a/b`, `./a/b/` and `/a/b` are the same).
    pub fn lookup_path(&self, path: &str) -> Option<Ino> {
        path.split('/')
            .filter(|c| !c.is_empty() && *c != ".")
            .try_fold(ROOT_INO, |dir, name| self.lookup(dir, name))
    }

    /// A path of `ino` from the root without a leading `/` (the root is
    /// `""`); for a hard-linked file, one of its names.
    pub fn path(&self, ino: Ino) -> Option<String> {
        let mut names = Vec::new();
        let mut at = ino;
        // Bounded by the node count: a hostile TOC cannot loop us.
        for _ in 0..=self.len() {
            if at == ROOT_INO {
                names.reverse();
                return Some(names.join("/"));
            }
            let parent = self.node(at)?.parent();
            let (name, _) = self.children(parent).find(|(_, i)| *i == at)?;
            names.push(name);
            at = parent;
        }
        None
    }

    /// Target of a symlink.
    pub fn symlink_target(&self, ino: Ino) -> Option<&str> {
        let n = self.packed(ino)?;
        (self.kind_of(n) == NodeKind::Symlink).then(|| self.name_str(StrRef { off: n.a, len: n.b }))
    }

    /// Extended attributes of a node.
    pub fn xattrs(&self, ino: Ino) -> impl Iterator<Item = (&str, &[u8])> + '_ {
        let range = self
            .packed(ino)
            .and_then(|n| {
                self.xattr_sets
                    .get(self.attrs[n.attrs as usize].xattr_set as usize)
            })
            .map(|&(start, len)| start as usize..(start + len) as usize)
            .unwrap_or(0..0);
        self.xattrs[range]
            .iter()
            .map(|(k, v)| (self.name_str(*k), self.str(*v)))
    }

    /// Where the chunks of regular file `ino` are: (first index, count,
    /// start of its run in `extents` for multi-chunk files).
    fn chunk_span(&self, ino: Ino) -> Option<(usize, usize, Option<usize>)> {
        let n = self.packed(ino)?;
        if self.kind_of(n) != NodeKind::Reg || n.b == 0 {
            return None;
        }
        let ext = (n.b > 1).then(|| {
            let i = self.multi.partition_point(|&(f, _)| f < n.a);
            self.multi.get(i).map_or(0, |&(_, e)| e as usize)
        });
        Some((n.a as usize, n.b as usize, ext))
    }

    fn chunk_blob_offset(&self, i: u32) -> u64 {
        self.chunks[i as usize].offset_and_flags & MAX_CHUNK_BLOB_OFFSET
    }

    /// Unpacks chunk `k` (0-based within the file) of a span.
    fn unpack(&self, (first, _, ext): (usize, usize, Option<usize>), k: usize) -> Chunk {
        let idx = first + k;
        let p = &self.chunks[idx];
        let chunk_offset = ext.map_or(0, |e| self.extents[e + k]);
        let offset = p.offset_and_flags & MAX_CHUNK_BLOB_OFFSET;
        let inner = if p.offset_and_flags & PACKED_INNER != 0 {
            let i = self.inner.partition_point(|&(c, _)| (c as usize) < idx);
            self.inner.get(i).map_or(0, |&(_, v)| v)
        } else {
            0
        };
        let mut flags = inner;
        if p.offset_and_flags & PACKED_HAS_DIGEST != 0 {
            flags |= CHUNK_HAS_DIGEST;
        }
        if p.offset_and_flags & PACKED_ZEROS != 0 {
            flags |= CHUNK_ZEROS;
        }
        Chunk {
            chunk_offset,
            offset,
            compressed_end: offset + u64::from(p.compressed_len),
            digest: p.digest,
            size: p.size,
            inner_and_flags: flags,
        }
    }

    /// Number of chunks of a regular file.
    pub fn chunk_count(&self, ino: Ino) -> usize {
        self.chunk_span(ino).map_or(0, |s| s.1)
    }

    /// Chunk `k` (0-based) of a regular file.
    pub fn chunk(&self, ino: Ino, k: usize) -> Option<Chunk> {
        let span = self.chunk_span(ino)?;
        (k < span.1).then(|| self.unpack(span, k))
    }

    /// Chunks of a regular file, sorted by file offset.
    pub fn chunks(&self, ino: Ino) -> Vec<Chunk> {
        self.chunk_span(ino).map_or_else(Vec::new, |span| {
            (0..span.1).map(|k| self.unpack(span, k)).collect()
        })
    }

    /// How many chunks of a file start before file offset `offset`.
    pub fn chunks_before(&self, ino: Ino, offset: u64) -> usize {
        let Some(span) = self.chunk_span(ino) else {
            return 0;
        };
        partition(span.1, |k| self.chunk_offset_at(span, k) < offset)
    }

    fn chunk_offset_at(&self, (_, _, ext): (usize, usize, Option<usize>), k: usize) -> u64 {
        ext.map_or(0, |e| self.extents[e + k])
    }

    /// The chunks overlapping `[offset, offset + len)` of a file (binary search).
    pub fn chunks_for_range(&self, ino: Ino, offset: u64, len: u64) -> Vec<Chunk> {
        let Some(span) = self.chunk_span(ino) else {
            return Vec::new();
        };
        let end = offset.saturating_add(len);
        let chunk_end =
            |k: usize| self.chunk_offset_at(span, k) + u64::from(self.chunks[span.0 + k].size);
        let first = partition(span.1, |k| chunk_end(k) <= offset);
        let last = partition(span.1, |k| self.chunk_offset_at(span, k) < end);
        (first..last.max(first))
            .map(|k| self.unpack(span, k))
            .collect()
    }

    /// Every data chunk (no holes) once, in blob order (hard links share
    /// chunks): 8 bytes per chunk, resolved through this index on use.
    pub fn blob_order(&self) -> BlobOrder {
        let mut order: Vec<(Ino, u32)> = (1..=self.len() as Ino)
            .filter_map(|ino| self.chunk_span(ino).map(|span| (ino, span)))
            .flat_map(|(ino, (first, count, _))| {
                (first..first + count).map(move |i| (ino, i as u32))
            })
            .filter(|&(_, i)| self.chunks[i as usize].offset_and_flags & PACKED_ZEROS == 0)
            .collect();
        let offset = |i: u32| self.chunks[i as usize].offset_and_flags & MAX_CHUNK_BLOB_OFFSET;
        order.sort_unstable_by_key(|&(ino, i)| (offset(i), ino));
        order.dedup_by_key(|&mut (_, i)| offset(i));
        order.shrink_to_fit();
        BlobOrder { order }
    }

    /// Heap bytes held by the index (for memory accounting).
    pub fn heap_bytes(&self) -> usize {
        use std::mem::size_of;
        self.nodes.capacity() * size_of::<PackedNode>()
            + self.attrs.capacity() * size_of::<Attrs>()
            + self.dirents.capacity() * size_of::<DirEnt>()
            + self.chunks.capacity() * size_of::<PackedChunk>()
            + self.extents.capacity() * size_of::<u64>()
            + (self.multi.capacity() + self.inner.capacity()) * size_of::<(u32, u32)>()
            + self.xattrs.capacity() * size_of::<(StrRef, StrRef)>()
            + self.xattr_sets.capacity() * size_of::<(u32, u32)>()
            + self.strings.capacity()
    }

    /// Whether `name` is an overlay whiteout (`.wh.x`, not the opaque marker).
    pub fn is_whiteout_name(name: &str) -> bool {
        name.starts_with(WHITEOUT_PREFIX) && name != OPAQUE_MARKER
    }
}

/// The number of leading `k` in `0..len` for which `pred` holds (`pred`
/// must be true then false, like [`slice::partition_point`]).
fn partition(len: usize, pred: impl Fn(usize) -> bool) -> usize {
    let (mut lo, mut hi) = (0, len);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if pred(mid) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    lo
}
