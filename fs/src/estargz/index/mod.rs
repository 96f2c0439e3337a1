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
//! strings in one byte table, so there is no per-directory map.

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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
#[derive(Debug, Clone)]
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

/// A directory entry: name (in the string table) and the inode it names.
#[derive(Debug, Clone, Copy)]
struct DirEnt {
    name: StrRef,
    ino: Ino,
}

#[derive(Debug, Clone, Copy)]
struct StrRef {
    off: u32,
    len: u32,
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
    /// Compressed byte range to fetch for this chunk.
    pub fn compressed_range(&self) -> std::ops::Range<u64> {
        self.offset..self.compressed_end
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

/// The immutable index of one layer.
#[derive(Debug, Clone)]
pub struct Index {
    nodes: Vec<Node>,
    dirents: Vec<DirEnt>,
    chunks: Vec<Chunk>,
    xattrs: Vec<(StrRef, StrRef)>,
    xattr_sets: Vec<(u32, u32)>,
    strings: Vec<u8>,
    prefetch: Prefetch,
}

// Memory per entry matters (the FUSE layer holds one index per layer).
const _: () = assert!(std::mem::size_of::<Node>() == 48);
const _: () = assert!(std::mem::size_of::<Chunk>() == 64);

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
    pub fn node(&self, ino: Ino) -> Option<&Node> {
        self.nodes.get((ino as usize).checked_sub(1)?)
    }
    /// Prefetch hint from the landmarks.
    pub fn prefetch(&self) -> Prefetch {
        self.prefetch
    }

    fn str(&self, r: StrRef) -> &[u8] {
        &self.strings[r.off as usize..(r.off + r.len) as usize]
    }

    fn dir_entries(&self, ino: Ino) -> &[DirEnt] {
        match self.node(ino) {
            Some(n) if n.kind == NodeKind::Dir => &self.dirents[n.a as usize..(n.a + n.b) as usize],
            _ => &[],
        }
    }

    /// Children of a directory, sorted by name.
    pub fn children(&self, dir: Ino) -> impl ExactSizeIterator<Item = (&str, Ino)> + '_ {
        self.dir_entries(dir)
            .iter()
            .map(|d| (self.name_str(d.name), d.ino))
    }

    fn name_str(&self, r: StrRef) -> &str {
        // Names come from JSON strings, so they are UTF-8.
        std::str::from_utf8(self.str(r)).unwrap_or("")
    }

    /// Looks `name` up in directory `dir`.
    pub fn lookup(&self, dir: Ino, name: &str) -> Option<Ino> {
        let ents = self.dir_entries(dir);
        ents.binary_search_by(|d| self.str(d.name).cmp(name.as_bytes()))
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
        let n = self.node(ino)?;
        (n.kind == NodeKind::Symlink).then(|| self.name_str(StrRef { off: n.a, len: n.b }))
    }

    /// Extended attributes of a node.
    pub fn xattrs(&self, ino: Ino) -> impl Iterator<Item = (&str, &[u8])> + '_ {
        let range = self
            .node(ino)
            .and_then(|n| self.xattr_sets.get(n.xattr_set as usize))
            .map(|&(start, len)| start as usize..(start + len) as usize)
            .unwrap_or(0..0);
        self.xattrs[range]
            .iter()
            .map(|(k, v)| (self.name_str(*k), self.str(*v)))
    }

    /// Chunks of a regular file, sorted by file offset.
    pub fn chunks(&self, ino: Ino) -> &[Chunk] {
        match self.node(ino) {
            Some(n) if n.kind == NodeKind::Reg => &self.chunks[n.a as usize..(n.a + n.b) as usize],
            _ => &[],
        }
    }

    /// The chunks overlapping `[offset, offset + len)` of a file (binary search).
    pub fn chunks_for_range(&self, ino: Ino, offset: u64, len: u64) -> &[Chunk] {
        let chunks = self.chunks(ino);
        let end = offset.saturating_add(len);
        let first = chunks.partition_point(|c| c.chunk_offset + u64::from(c.size) <= offset);
        let last = chunks.partition_point(|c| c.chunk_offset < end);
        chunks.get(first..last.max(first)).unwrap_or(&[])
    }

    /// Heap bytes held by the index (for memory accounting).
    pub fn heap_bytes(&self) -> usize {
        use std::mem::size_of;
        self.nodes.capacity() * size_of::<Node>()
            + self.dirents.capacity() * size_of::<DirEnt>()
            + self.chunks.capacity() * size_of::<Chunk>()
            + self.xattrs.capacity() * size_of::<(StrRef, StrRef)>()
            + self.xattr_sets.capacity() * size_of::<(u32, u32)>()
            + self.strings.capacity()
    }

    /// Whether `name` is an overlay whiteout (`.wh.x`, not the opaque marker).
    pub fn is_whiteout_name(name: &str) -> bool {
        name.starts_with(WHITEOUT_PREFIX) && name != OPAQUE_MARKER
    }
}
