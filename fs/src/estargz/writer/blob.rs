//! The converter's output side: tar bytes cut into compressed members, the
//! TOC entries that point at them, then the TOC and footer.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::FileExt;

use base64::Engine as _;
use sha2::{Digest as _, Sha256};

use super::input::InputEntry;
use super::{ConvertOutput, WriterOptions};
use crate::estargz::digest::Digest;
use crate::estargz::error::{Error, Result};
use crate::estargz::footer::{
    Compression, ZSTD_SKIPPABLE_MAGIC, estargz_footer, zstd_footer_bytes,
};
use crate::estargz::index::{Index, Limits, MAX_INNER_OFFSET};
use crate::estargz::toc::{TOC_NAME, Toc, TocEntry, encode_toc, format_rfc3339};

pub(super) enum Source<'a> {
    Spool(&'a File),
    Bytes(&'a [u8]),
}

impl Source<'_> {
    fn read_exact_at(&self, pos: u64, buf: &mut [u8]) -> io::Result<()> {
        match self {
            Source::Spool(f) => f.read_exact_at(buf, pos),
            Source::Bytes(b) => {
                let start = pos as usize;
                let src = b
                    .get(start..start + buf.len())
                    .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "landmark"))?;
                buf.copy_from_slice(src);
                Ok(())
            }
        }
    }
}

/// Emits userName/groupName only when they change for an id, like the Go writer.
#[derive(Default)]
pub(super) struct NameTracker {
    users: HashMap<u64, String>,
    groups: HashMap<u64, String>,
}

impl NameTracker {
    fn changed(map: &mut HashMap<u64, String>, id: u64, name: &str) -> String {
        if name.is_empty() || map.get(&id).is_some_and(|n| n == name) {
            return String::new();
        }
        map.insert(id, name.to_owned());
        name.to_owned()
    }
}

/// Counts and hashes the compressed bytes.
struct Counted<W: Write> {
    inner: BufWriter<W>,
    hasher: Sha256,
    pos: u64,
}

impl<W: Write> Write for Counted<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.pos += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

enum Encoder<W: Write> {
    Gzip(flate2::write::GzEncoder<Counted<W>>),
    Zstd(zstd::stream::write::Encoder<'static, Counted<W>>),
}

/// Writes uncompressed tar bytes into a sequence of compressed members.
pub(super) struct BlobWriter<W: Write> {
    enc: Option<Encoder<W>>,
    sink: Option<Counted<W>>,
    compression: Compression,
    gzip_level: u32,
    zstd_level: i32,
    chunk_size: u64,
    min_chunk_size: u64,
    member_start: u64,
    member_bytes: u64,
    diff: Sha256,
    uncompressed: u64,
    scratch: tar::Builder<Vec<u8>>,
}

impl<W: Write> BlobWriter<W> {
    pub(super) fn new(output: W, opts: &WriterOptions) -> Self {
        BlobWriter {
            enc: None,
            sink: Some(Counted {
                inner: BufWriter::with_capacity(1 << 20, output),
                hasher: Sha256::new(),
                pos: 0,
            }),
            compression: opts.compression,
            gzip_level: opts.gzip_level,
            zstd_level: opts.zstd_level,
            chunk_size: opts.chunk_size,
            min_chunk_size: opts.min_chunk_size,
            member_start: 0,
            member_bytes: 0,
            diff: Sha256::new(),
            uncompressed: 0,
            scratch: tar::Builder::new(Vec::new()),
        }
    }

    /// Closes the open member (if it holds data); returns the sink.
    fn close_member(&mut self) -> io::Result<()> {
        if let Some(enc) = self.enc.take() {
            self.sink = Some(match enc {
                Encoder::Gzip(e) => e.finish()?,
                Encoder::Zstd(e) => e.finish()?,
            });
        }
        self.member_bytes = 0;
        Ok(())
    }

    /// Starts a new member unless the open one is still empty; returns its offset.
    fn new_member(&mut self) -> io::Result<u64> {
        if self.enc.is_some() && self.member_bytes == 0 {
            return Ok(self.member_start);
        }
        self.close_member()?;
        self.open_member()?;
        Ok(self.member_start)
    }

    /// Where the chunk about to be written starts: `(member offset, inner
    /// offset)`. A new member unless `min_chunk_size` asks to keep filling
    /// the open one, the inner offset stays in what readers accept, and the
    /// member is not the first (offset 0 means "no data" in a TOC).
    fn chunk_start(&mut self, own_member: bool) -> io::Result<(u64, u64)> {
        if self.min_chunk_size > 0
            && !own_member
            && self.member_start > 0
            && self.member_bytes > 0
            && self.member_bytes <= MAX_INNER_OFFSET
        {
            // Flushing (as Go does) makes the compressed size so far known.
            let compressed = match &mut self.enc {
                Some(Encoder::Gzip(e)) => {
                    e.flush()?;
                    e.get_ref().pos
                }
                Some(Encoder::Zstd(e)) => {
                    e.flush()?;
                    e.get_ref().pos
                }
                None => self.member_start,
            } - self.member_start;
            if compressed < self.min_chunk_size {
                return Ok((self.member_start, self.member_bytes));
            }
        }
        Ok((self.new_member()?, 0))
    }

    fn open_member(&mut self) -> io::Result<()> {
        let sink = self
            .sink
            .take()
            .ok_or_else(|| io::Error::other("blob writer has no sink"))?;
        self.member_start = sink.pos;
        self.enc = Some(match self.compression {
            Compression::Gzip => Encoder::Gzip(flate2::write::GzEncoder::new(
                sink,
                flate2::Compression::new(self.gzip_level),
            )),
            Compression::Zstd => {
                Encoder::Zstd(zstd::stream::write::Encoder::new(sink, self.zstd_level)?)
            }
        });
        Ok(())
    }

    fn write_tar(&mut self, data: &[u8]) -> io::Result<()> {
        if self.enc.is_none() {
            self.open_member()?;
        }
        match &mut self.enc {
            Some(Encoder::Gzip(e)) => e.write_all(data)?,
            Some(Encoder::Zstd(e)) => e.write_all(data)?,
            None => return Err(io::Error::other("no open member")),
        }
        self.diff.update(data);
        self.uncompressed += data.len() as u64;
        self.member_bytes += data.len() as u64;
        Ok(())
    }

    fn pad(&mut self, size: u64) -> io::Result<()> {
        let rem = (512 - size % 512) % 512;
        self.write_tar(&[0u8; 512][..rem as usize])
    }

    /// Encodes the tar header(s) of `e` (PAX xattrs, GNU long names) into bytes.
    fn header_bytes(&mut self, e: &InputEntry) -> Result<Vec<u8>> {
        let bad = |err: io::Error| Error::InputTar(format!("{}: {err}", e.path));
        self.scratch.get_mut().clear();
        if !e.xattrs.is_empty() {
            let recs: Vec<(String, &[u8])> = e
                .xattrs
                .iter()
                .map(|(k, v)| (format!("SCHILY.xattr.{k}"), v.as_slice()))
                .collect();
            self.scratch
                .append_pax_extensions(recs.iter().map(|(k, v)| (k.as_str(), *v)))
                .map_err(bad)?;
        }
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(match e.kind {
            "reg" => tar::EntryType::Regular,
            "dir" => tar::EntryType::Directory,
            "symlink" => tar::EntryType::Symlink,
            "hardlink" => tar::EntryType::Link,
            "char" => tar::EntryType::Char,
            "block" => tar::EntryType::Block,
            _ => tar::EntryType::Fifo,
        });
        h.set_size(e.size);
        h.set_mode(e.mode);
        h.set_uid(e.uid);
        h.set_gid(e.gid);
        h.set_mtime(e.mtime.max(0) as u64);
        // Names longer than the field are dropped from the header; the ids remain.
        let _ = h.set_username(&e.uname);
        let _ = h.set_groupname(&e.gname);
        if matches!(e.kind, "char" | "block") {
            h.set_device_major(e.dev.0).map_err(bad)?;
            h.set_device_minor(e.dev.1).map_err(bad)?;
        }
        let name = if e.path.is_empty() {
            "./".to_owned()
        } else {
            e.path.clone()
        };
        if matches!(e.kind, "symlink" | "hardlink") {
            self.scratch
                .append_link(&mut h, &name, &e.link)
                .map_err(bad)?;
        } else {
            self.scratch
                .append_data(&mut h, &name, io::empty())
                .map_err(bad)?;
        }
        Ok(std::mem::take(self.scratch.get_mut()))
    }

    /// Writes entry `e` (a `landmark` payload always starts its own member).
    pub(super) fn write_entry(
        &mut self,
        e: &InputEntry,
        landmark: bool,
        src: &Source<'_>,
        toc: &mut Toc,
        names: &mut NameTracker,
        buf: &mut [u8],
    ) -> Result<()> {
        let header = self.header_bytes(e)?;
        self.write_tar(&header)?;
        let mut te = TocEntry {
            name: e.toc_name(),
            kind: e.kind.to_owned(),
            size: e.size,
            modtime: if e.mtime != 0 {
                format_rfc3339(e.mtime)
            } else {
                String::new()
            },
            link_name: e.link.clone(),
            mode: u64::from(e.mode),
            uid: e.uid,
            gid: e.gid,
            user_name: NameTracker::changed(&mut names.users, e.uid, &e.uname),
            group_name: NameTracker::changed(&mut names.groups, e.gid, &e.gname),
            xattrs: e
                .xattrs
                .iter()
                .map(|(k, v)| {
                    (
                        k.clone(),
                        base64::engine::general_purpose::STANDARD.encode(v),
                    )
                })
                .collect(),
            ..TocEntry::default()
        };
        if matches!(e.kind, "char" | "block") {
            (te.dev_major, te.dev_minor) = (u64::from(e.dev.0), u64::from(e.dev.1));
        }
        if e.kind != "reg" {
            toc.entries.push(te);
            return Ok(());
        }
        if e.size == 0 {
            te.digest = Digest::of(b"").to_string();
            toc.entries.push(te);
            return Ok(());
        }
        let first = toc.entries.len();
        // A single-chunk file's digest is its chunk digest: hash once.
        let single_chunk = e.size <= self.chunk_size;
        let mut file_hash = Sha256::new();
        let mut chunk_offset = 0u64;
        while chunk_offset < e.size {
            let len = self.chunk_size.min(e.size - chunk_offset);
            let (offset, inner_offset) = self.chunk_start(landmark)?;
            let mut chunk_hash = Sha256::new();
            let mut done = 0u64;
            while done < len {
                let n = (len - done).min(buf.len() as u64) as usize;
                src.read_exact_at(e.data_pos + chunk_offset + done, &mut buf[..n])?;
                chunk_hash.update(&buf[..n]);
                if !single_chunk {
                    file_hash.update(&buf[..n]);
                }
                self.write_tar(&buf[..n])?;
                done += n as u64;
            }
            let mut ce = if chunk_offset == 0 {
                std::mem::take(&mut te)
            } else {
                TocEntry {
                    name: e.toc_name(),
                    kind: "chunk".to_owned(),
                    chunk_offset,
                    ..TocEntry::default()
                }
            };
            ce.offset = offset;
            ce.inner_offset = inner_offset;
            // Like Go: chunkSize on full chunks only; a shorter last chunk runs to EOF.
            ce.chunk_size = if len == self.chunk_size { len } else { 0 };
            ce.chunk_digest = Digest::from_hasher(chunk_hash).to_string();
            toc.entries.push(ce);
            chunk_offset += len;
        }
        toc.entries[first].digest = if single_chunk {
            toc.entries[first].chunk_digest.clone()
        } else {
            Digest::from_hasher(file_hash).to_string()
        };
        self.pad(e.size)?;
        Ok(())
    }

    pub(super) fn finish(mut self, toc: &Toc) -> Result<ConvertOutput> {
        // Refuse to emit a blob our own reader would reject (e.g. a hardlink to a
        // missing target, or a file used as a directory in the input tar).
        // Offsets are ours, so only the structure is in question here.
        Index::build_with_payload_end(toc, u64::MAX, &Limits::default())
            .map_err(|e| Error::InputTar(format!("input cannot form a valid layer: {e}")))?;
        let json = encode_toc(toc)?;
        let toc_digest = Digest::of(&json);
        let toc_offset;
        match self.compression {
            Compression::Gzip => {
                toc_offset = self.new_member()?;
                let mut h = tar::Header::new_ustar();
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(json.len() as u64);
                h.set_mode(0o444);
                h.set_mtime(0);
                self.scratch.get_mut().clear();
                self.scratch
                    .append_data(&mut h, TOC_NAME, io::empty())
                    .map_err(|e| Error::InputTar(e.to_string()))?;
                let header = std::mem::take(self.scratch.get_mut());
                self.write_tar(&header)?;
                self.write_tar(&json)?;
                self.pad(json.len() as u64)?;
                self.write_tar(&[0u8; 1024])?;
                self.close_member()?;
                let sink = self.sink_mut()?;
                sink.write_all(&estargz_footer(toc_offset))?;
            }
            Compression::Zstd => {
                // End of archive inside the data frames, so `zstd -d | tar -t` is clean.
                self.write_tar(&[0u8; 1024])?;
                self.close_member()?;
                let compressed = zstd::bulk::compress(&json, self.zstd_level)?;
                let sink = self.sink_mut()?;
                sink.write_all(&ZSTD_SKIPPABLE_MAGIC)?;
                let len = u32::try_from(compressed.len()).map_err(|_| Error::TocTooLarge {
                    cap: u32::MAX.into(),
                })?;
                sink.write_all(&len.to_le_bytes())?;
                toc_offset = sink.pos;
                sink.write_all(&compressed)?;
                sink.write_all(&zstd_footer_bytes(
                    toc_offset,
                    compressed.len() as u64,
                    json.len() as u64,
                ))?;
            }
        }
        let mut sink = self
            .sink
            .take()
            .ok_or_else(|| io::Error::other("blob writer has no sink"))?;
        sink.flush()?;
        Ok(ConvertOutput {
            digest: Digest::from_hasher(sink.hasher),
            toc_digest,
            diff_id: Digest::from_hasher(self.diff),
            size: sink.pos,
            uncompressed_size: self.uncompressed,
        })
    }

    fn sink_mut(&mut self) -> io::Result<&mut Counted<W>> {
        self.sink
            .as_mut()
            .ok_or_else(|| io::Error::other("blob writer has no sink"))
    }
}
