//! Building the index: one pass over the TOC that validates every entry
//! (names, parents, duplicates, offsets, chunk coverage, limits) and lays the
//! result out in the flat vectors of [`Index`].

use std::collections::HashMap;

use base64::Engine as _;

use super::super::digest::Digest;
use super::super::error::{EntryError, Error, Result};
use super::super::toc::{Toc, TocEntry, parse_rfc3339};
use super::*;

/// Splits a TOC name into clean components, rejecting escapes.
fn components(name: &str) -> Option<Vec<&str>> {
    if name.contains('\0') || name.starts_with('/') {
        return None;
    }
    split_clean(name)
}

/// Splits a path on `/`, dropping empty and `.` components; `None` on `..`.
pub(crate) fn split_clean(path: &str) -> Option<Vec<&str>> {
    let mut out = Vec::new();
    for c in path.split('/') {
        match c {
            "" | "." => {}
            ".." => return None,
            c => out.push(c),
        }
    }
    Some(out)
}

pub(super) struct Builder {
    payload_end: u64,
    limits: Limits,
    nodes: Vec<Node>,
    dirents: Vec<(Ino, BuildEnt)>,
    chunks: Vec<Chunk>,
    xattrs: Vec<(StrRef, StrRef)>,
    xattr_sets: Vec<(u32, u32)>,
    strings: Vec<u8>,
    paths: HashMap<String, Ino>,
    prefetch: Prefetch,
}

/// A directory entry while building: the name is kept as a plain reference
/// (its LEB128 length sits just before it in the string table).
#[derive(Clone, Copy)]
struct BuildEnt {
    name: StrRef,
    ino: Ino,
}

/// A regular file whose chunks are still being collected.
#[derive(Clone, Copy)]
struct OpenFile {
    ino: Ino,
    index: usize,
}

impl Builder {
    pub(super) fn new(payload_end: u64, limits: Limits) -> Self {
        Builder {
            payload_end,
            limits,
            nodes: vec![Node::new(NodeKind::Dir, ROOT_INO)],
            dirents: Vec::new(),
            chunks: Vec::new(),
            xattrs: Vec::new(),
            // Set 0 is "no xattrs", so nodes need no separate flag.
            xattr_sets: vec![(0, 0)],
            strings: Vec::new(),
            paths: HashMap::new(),
            prefetch: Prefetch::Unknown,
        }
    }

    fn intern(&mut self, s: &[u8]) -> Result<StrRef> {
        let off = u32::try_from(self.strings.len()).map_err(|_| Error::TocTooLarge {
            cap: u32::MAX.into(),
        })?;
        let len = u32::try_from(s.len()).map_err(|_| Error::TocTooLarge {
            cap: u32::MAX.into(),
        })?;
        self.strings.extend_from_slice(s);
        Ok(StrRef { off, len })
    }

    /// Interns a directory entry name behind its LEB128 length.
    fn intern_name(&mut self, s: &[u8]) -> Result<StrRef> {
        let len = u32::try_from(s.len()).map_err(|_| Error::TocTooLarge {
            cap: u32::MAX.into(),
        })?;
        push_leb128(&mut self.strings, len);
        self.intern(s)
    }

    fn next_ino(&self) -> Result<Ino> {
        Ino::try_from(self.nodes.len() + 1).map_err(|_| Error::TocTooLarge {
            cap: u32::MAX.into(),
        })
    }

    pub(super) fn run(mut self, toc: &Toc) -> Result<Index> {
        if toc.entries.len() > self.limits.max_entries {
            return Err(Error::TocTooLarge {
                cap: self.limits.max_entries as u64,
            });
        }
        let mut open: Option<OpenFile> = None;
        for (i, e) in toc.entries.iter().enumerate() {
            let err = |kind| Error::entry(i, &e.name, kind);
            if e.kind == "chunk" {
                let file = open.as_ref().ok_or_else(|| err(EntryError::OrphanChunk))?;
                let ino = file.ino;
                self.push_chunk(i, e)?;
                self.nodes[ino as usize - 1].b += 1;
                continue;
            }
            if let Some(file) = open.take() {
                self.finish_file(file, &toc.entries[file.index])?;
            }
            open = self.add_entry(i, e)?;
        }
        if let Some(file) = open.take() {
            self.finish_file(file, &toc.entries[file.index])?;
        }
        self.finish()
    }

    fn add_entry(&mut self, i: usize, e: &TocEntry) -> Result<Option<OpenFile>> {
        let err = |kind| Error::entry(i, &e.name, kind);
        let comps = components(&e.name).ok_or_else(|| err(EntryError::BadName))?;
        let Some((name, parents)) = comps.split_last() else {
            // The root itself (`./`): only a directory may describe it.
            if e.kind != "dir" {
                return Err(err(EntryError::BadName));
            }
            if self.nodes[0].flags & FLAG_EXPLICIT != 0 {
                return Err(err(EntryError::Duplicate));
            }
            self.apply_attrs(i, e, ROOT_INO)?;
            return Ok(None);
        };
        let parent = self.ensure_dirs(i, e, parents)?;
        let path = comps.join("/");
        if let Some(&existing) = self.paths.get(&path) {
            let node = &self.nodes[existing as usize - 1];
            if e.kind == "dir" && node.kind == NodeKind::Dir && node.flags & FLAG_EXPLICIT == 0 {
                self.apply_attrs(i, e, existing)?;
                return Ok(None);
            }
            return Err(err(EntryError::Duplicate));
        }
        let name_ref = self.intern_name(name.as_bytes())?;
        if e.kind == "hardlink" {
            let target_path = components(&e.link_name)
                .map(|c| c.join("/"))
                .ok_or_else(|| err(EntryError::HardlinkTargetMissing(e.link_name.clone())))?;
            let target = *self
                .paths
                .get(&target_path)
                .ok_or_else(|| err(EntryError::HardlinkTargetMissing(e.link_name.clone())))?;
            let node = &mut self.nodes[target as usize - 1];
            if node.kind == NodeKind::Dir {
                return Err(err(EntryError::HardlinkToDir(e.link_name.clone())));
            }
            node.nlink = node.nlink.saturating_add(1);
            self.dirents.push((
                parent,
                BuildEnt {
                    name: name_ref,
                    ino: target,
                },
            ));
            self.paths.insert(path, target);
            return Ok(None);
        }
        let kind = NodeKind::from_toc(&e.kind)
            .ok_or_else(|| err(EntryError::UnknownType(e.kind.clone())))?;
        let ino = self.next_ino()?;
        self.nodes.push(Node::new(kind, parent));
        self.dirents.push((
            parent,
            BuildEnt {
                name: name_ref,
                ino,
            },
        ));
        self.paths.insert(path, ino);
        if kind == NodeKind::Dir {
            self.nodes[parent as usize - 1].nlink += 1;
        }
        if parent == ROOT_INO && kind == NodeKind::Reg {
            if *name == PREFETCH_LANDMARK {
                self.prefetch = Prefetch::Range { end: e.offset };
            } else if *name == NO_PREFETCH_LANDMARK {
                self.prefetch = Prefetch::Disabled;
            }
        }
        if *name == OPAQUE_MARKER {
            self.nodes[parent as usize - 1].flags |= FLAG_OPAQUE;
        }
        self.apply_attrs(i, e, ino)?;
        match kind {
            NodeKind::Symlink => {
                let target = self.intern(e.link_name.as_bytes())?;
                let n = &mut self.nodes[ino as usize - 1];
                (n.a, n.b, n.size) = (target.off, target.len, e.link_name.len() as u64);
            }
            NodeKind::Char | NodeKind::Block => {
                let major = u32::try_from(e.dev_major)
                    .map_err(|_| err(EntryError::OutOfRange("devMajor")))?;
                let minor = u32::try_from(e.dev_minor)
                    .map_err(|_| err(EntryError::OutOfRange("devMinor")))?;
                let n = &mut self.nodes[ino as usize - 1];
                (n.a, n.b) = (major, minor);
            }
            NodeKind::Reg => {
                if e.size > self.limits.max_file_size {
                    return Err(err(EntryError::OutOfRange("size")));
                }
                let start = u32::try_from(self.chunks.len())
                    .map_err(|_| err(EntryError::OutOfRange("chunk count")))?;
                let n = &mut self.nodes[ino as usize - 1];
                (n.a, n.b, n.size) = (start, 0, e.size);
                if e.size > 0 {
                    self.push_chunk(i, e)?;
                    self.nodes[ino as usize - 1].b = 1;
                }
                return Ok(Some(OpenFile { ino, index: i }));
            }
            NodeKind::Dir | NodeKind::Fifo => {}
        }
        Ok(None)
    }

    /// Walks (creating implicit 0755 directories) to the parent of an entry.
    fn ensure_dirs(&mut self, i: usize, e: &TocEntry, parents: &[&str]) -> Result<Ino> {
        let mut dir = ROOT_INO;
        let mut path = String::new();
        for comp in parents {
            if !path.is_empty() {
                path.push('/');
            }
            path.push_str(comp);
            dir = match self.paths.get(&path) {
                Some(&ino) if self.nodes[ino as usize - 1].kind == NodeKind::Dir => ino,
                Some(_) => return Err(Error::entry(i, &e.name, EntryError::ParentNotDir(path))),
                None => {
                    let ino = self.next_ino()?;
                    let name = self.intern_name(comp.as_bytes())?;
                    self.nodes.push(Node::new(NodeKind::Dir, dir));
                    self.nodes[dir as usize - 1].nlink += 1;
                    self.dirents.push((dir, BuildEnt { name, ino }));
                    self.paths.insert(path.clone(), ino);
                    ino
                }
            };
        }
        Ok(dir)
    }

    fn apply_attrs(&mut self, i: usize, e: &TocEntry, ino: Ino) -> Result<()> {
        let err = |kind| Error::entry(i, &e.name, kind);
        let uid = u32::try_from(e.uid).map_err(|_| err(EntryError::OutOfRange("uid")))?;
        let gid = u32::try_from(e.gid).map_err(|_| err(EntryError::OutOfRange("gid")))?;
        let mtime = if e.modtime.is_empty() {
            0
        } else {
            parse_rfc3339(&e.modtime)
                .ok_or_else(|| err(EntryError::BadModtime(e.modtime.clone())))?
        };
        let xattr_start =
            u32::try_from(self.xattrs.len()).map_err(|_| err(EntryError::OutOfRange("xattrs")))?;
        let xattr_set = if e.xattrs.is_empty() {
            0
        } else {
            self.xattr_sets.push((xattr_start, e.xattrs.len() as u32));
            u32::try_from(self.xattr_sets.len() - 1)
                .map_err(|_| err(EntryError::OutOfRange("xattrs")))?
        };
        for (k, v) in &e.xattrs {
            let value = base64::engine::general_purpose::STANDARD
                .decode(v)
                .map_err(|_| err(EntryError::BadXattr(k.clone())))?;
            let kr = self.intern(k.as_bytes())?;
            let vr = self.intern(&value)?;
            self.xattrs.push((kr, vr));
        }
        let n = &mut self.nodes[ino as usize - 1];
        n.mode = (e.mode & 0o7777) as u16;
        (n.uid, n.gid, n.mtime) = (uid, gid, mtime);
        n.xattr_set = xattr_set;
        n.flags |= FLAG_EXPLICIT;
        Ok(())
    }

    fn push_chunk(&mut self, i: usize, e: &TocEntry) -> Result<()> {
        let err = |kind| Error::entry(i, &e.name, kind);
        let digest_str = if !e.chunk_digest.is_empty() {
            &e.chunk_digest
        } else if e.kind == "reg" && e.chunk_size == 0 {
            // An unchunked file may record only the whole-file digest.
            &e.digest
        } else {
            ""
        };
        let digest = if digest_str.is_empty() {
            None
        } else {
            Some(
                Digest::parse(digest_str)
                    .map_err(|_| err(EntryError::BadDigest(digest_str.to_owned())))?,
            )
        };
        if !e.digest.is_empty() {
            Digest::parse(&e.digest).map_err(|_| err(EntryError::BadDigest(e.digest.clone())))?;
        }
        let zeros = e.chunk_type == "zeros";
        if !zeros {
            if e.offset == 0 {
                return Err(err(EntryError::MissingOffset));
            }
            if e.offset > MAX_CHUNK_BLOB_OFFSET {
                return Err(err(EntryError::OutOfRange("offset")));
            }
            if e.offset >= self.payload_end {
                return Err(err(EntryError::OffsetOutOfBlob {
                    offset: e.offset,
                    payload_end: self.payload_end,
                }));
            }
        }
        let provisional_size = u32::try_from(e.chunk_size)
            .ok()
            .filter(|_| e.chunk_size <= self.limits.max_chunk_size)
            .ok_or_else(|| err(EntryError::OutOfRange("chunkSize")))?;
        // The size is provisional: `finish_file` sets the real length (0 means "to the end").
        let chunk = Chunk::new(
            e.chunk_offset,
            e.offset,
            0,
            provisional_size,
            e.inner_offset,
            digest,
            zeros,
        )
        .ok_or_else(|| err(EntryError::OutOfRange("innerOffset")))?;
        self.chunks.push(chunk);
        Ok(())
    }

    /// Checks that the chunks of a file tile `[0, size)` and fixes their sizes.
    fn finish_file(&mut self, file: OpenFile, e: &TocEntry) -> Result<()> {
        let err = |msg: String| Error::entry(file.index, &e.name, EntryError::ChunkCoverage(msg));
        let n = &self.nodes[file.ino as usize - 1];
        let (start, count, size) = (n.a as usize, n.b as usize, n.size);
        let mut expect = 0u64;
        for idx in start..start + count {
            let c = &mut self.chunks[idx];
            if c.chunk_offset != expect {
                return Err(err(format!(
                    "chunk at {} where {expect} was expected",
                    c.chunk_offset
                )));
            }
            let len = if c.size > 0 {
                u64::from(c.size)
            } else if idx + 1 == start + count {
                size.saturating_sub(c.chunk_offset)
            } else {
                return Err(err(format!(
                    "chunk at {} has no size but is not last",
                    c.chunk_offset
                )));
            };
            c.size = u32::try_from(len)
                .ok()
                .filter(|&l| l > 0 && u64::from(l) <= self.limits.max_chunk_size)
                .ok_or_else(|| {
                    Error::entry(file.index, &e.name, EntryError::OutOfRange("chunk size"))
                })?;
            expect = c.chunk_offset + len;
        }
        if expect != size {
            return Err(err(format!("chunks end at {expect}, file size is {size}")));
        }
        Ok(())
    }

    fn finish(mut self) -> Result<Index> {
        // The compressed range of a chunk runs to the next distinct member start.
        let mut starts: Vec<u64> = self
            .chunks
            .iter()
            .filter(|c| !c.is_zeros())
            .map(|c| c.offset)
            .collect();
        starts.sort_unstable();
        starts.dedup();
        for c in self.chunks.iter_mut().filter(|c| !c.is_zeros()) {
            let next = starts.partition_point(|&s| s <= c.offset);
            c.compressed_end = starts.get(next).copied().unwrap_or(self.payload_end);
        }
        // Children sorted by (parent, name): stable for equal names cannot happen
        // (duplicates were rejected), so the order is fully determined.
        let strings = &self.strings;
        let s = |r: StrRef| &strings[r.off as usize..(r.off + r.len) as usize];
        self.dirents
            .sort_unstable_by(|(pa, a), (pb, b)| pa.cmp(pb).then_with(|| s(a.name).cmp(s(b.name))));
        let mut dirents = Vec::with_capacity(self.dirents.len());
        let mut idx = 0;
        while idx < self.dirents.len() {
            let parent = self.dirents[idx].0;
            let begin = idx;
            while idx < self.dirents.len() && self.dirents[idx].0 == parent {
                let e = self.dirents[idx].1;
                dirents.push(DirEnt {
                    name: e.name.off - leb128_len(e.name.len),
                    ino: e.ino,
                });
                idx += 1;
            }
            let n = &mut self.nodes[parent as usize - 1];
            (n.a, n.b) = (begin as u32, (idx - begin) as u32);
        }
        let (nodes, attrs) = pack_nodes(&self.nodes);
        let (chunks, extents, multi, inner) = pack_chunks(&self.nodes, &self.chunks);
        self.xattrs.shrink_to_fit();
        self.xattr_sets.shrink_to_fit();
        self.strings.shrink_to_fit();
        Ok(Index {
            nodes,
            attrs,
            dirents,
            chunks,
            extents,
            multi,
            inner,
            xattrs: self.xattrs,
            xattr_sets: self.xattr_sets,
            strings: self.strings,
            prefetch: self.prefetch,
        })
    }
}

/// Packs the nodes, interning their shared attributes.
fn pack_nodes(nodes: &[Node]) -> (Vec<PackedNode>, Vec<Attrs>) {
    let mut attrs = Vec::new();
    let mut ids: HashMap<Attrs, u32> = HashMap::new();
    let packed = nodes
        .iter()
        .map(|n| {
            let a = Attrs::of(n);
            // At most one set per node, so the count fits the inode type.
            let id = *ids.entry(a).or_insert_with(|| {
                attrs.push(a);
                (attrs.len() - 1) as u32
            });
            PackedNode {
                parent: n.parent,
                a: n.a,
                b: n.b,
                attrs: id,
            }
        })
        .collect();
    attrs.shrink_to_fit();
    (packed, attrs)
}

/// Packed chunks plus the side tables: file offsets of multi-chunk files'
/// chunks (with each file's first chunk and run start) and non-zero inner offsets.
type PackedChunks = (Vec<PackedChunk>, Vec<u64>, Vec<(u32, u32)>, Vec<(u32, u32)>);

fn pack_chunks(nodes: &[Node], chunks: &[Chunk]) -> PackedChunks {
    let mut extents = Vec::new();
    let mut multi = Vec::new();
    for n in nodes.iter().filter(|n| n.kind == NodeKind::Reg && n.b > 1) {
        multi.push((n.a, extents.len() as u32));
        extents.extend(
            chunks[n.a as usize..(n.a + n.b) as usize]
                .iter()
                .map(|c| c.chunk_offset),
        );
    }
    multi.sort_unstable();
    let mut inner = Vec::new();
    let packed = chunks
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let mut word = if c.is_zeros() {
                PACKED_ZEROS
            } else {
                c.offset & MAX_CHUNK_BLOB_OFFSET
            };
            if c.digest().is_some() {
                word |= PACKED_HAS_DIGEST;
            }
            if c.inner_offset() != 0 {
                word |= PACKED_INNER;
                inner.push((i as u32, c.inner_offset() as u32));
            }
            let len = if c.is_zeros() {
                0
            } else {
                c.compressed_end.saturating_sub(c.offset)
            };
            PackedChunk {
                digest: c.digest,
                offset_and_flags: word,
                compressed_len: u32::try_from(len).unwrap_or(u32::MAX),
                size: c.size,
            }
        })
        .collect();
    extents.shrink_to_fit();
    inner.shrink_to_fit();
    (packed, extents, multi, inner)
}
