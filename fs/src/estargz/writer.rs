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

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Read, Seek, Write};
use std::os::unix::fs::FileExt;

use base64::Engine as _;
use sha2::{Digest as _, Sha256};

use super::digest::Digest;
use super::error::{Error, Result};
use super::footer::{Compression, estargz_footer, zstd_footer_bytes};
use super::index::{Index, Limits, NO_PREFETCH_LANDMARK, PREFETCH_LANDMARK, split_clean};
use super::toc::{TOC_NAME, Toc, TocEntry, encode_toc, format_rfc3339};

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
                let e = InputEntry::landmark(name);
                w.write_entry(&e, &Source::Bytes(&[0x0f]), &mut toc, &mut names, &mut buf)?;
            }
            Item::Entry(i) => w.write_entry(
                &entries[i],
                &Source::Spool(spool),
                &mut toc,
                &mut names,
                &mut buf,
            )?,
        }
    }
    w.finish(&toc)
}

/// An input tar entry, with its payload position in the spool file.
#[derive(Debug, Clone)]
struct InputEntry {
    /// Clean path (no `./`, no trailing `/`); empty for the root.
    path: String,
    kind: &'static str,
    size: u64,
    data_pos: u64,
    mode: u32,
    uid: u64,
    gid: u64,
    uname: String,
    gname: String,
    mtime: i64,
    link: String,
    dev: (u32, u32),
    xattrs: BTreeMap<String, Vec<u8>>,
}

impl InputEntry {
    fn landmark(name: &str) -> Self {
        InputEntry {
            path: name.to_owned(),
            kind: "reg",
            size: 1,
            data_pos: 0,
            mode: 0,
            uid: 0,
            gid: 0,
            uname: String::new(),
            gname: String::new(),
            mtime: 0,
            link: String::new(),
            dev: (0, 0),
            xattrs: BTreeMap::new(),
        }
    }

    /// Name as written in the tar header and TOC (`dir/` for directories).
    fn toc_name(&self) -> String {
        match (self.kind, self.path.is_empty()) {
            ("dir", true) => "./".to_owned(),
            ("dir", false) => format!("{}/", self.path),
            _ => self.path.clone(),
        }
    }
}

/// Cleans a tar path (a leading `/` is dropped, as tar does); `None` if it climbs out of the root.
fn clean_path(raw: &str) -> Option<String> {
    split_clean(raw).map(|c| c.join("/"))
}

fn scan(spool: &File) -> Result<Vec<InputEntry>> {
    let bad = |e: io::Error| Error::InputTar(e.to_string());
    let mut archive = tar::Archive::new(BufReader::with_capacity(256 << 10, spool));
    let mut out: Vec<InputEntry> = Vec::new();
    let mut by_path: HashMap<String, usize> = HashMap::new();
    for entry in archive.entries_with_seek().map_err(bad)? {
        let mut entry = entry.map_err(bad)?;
        let header = entry.header().clone();
        let kind = match header.entry_type() {
            tar::EntryType::Regular | tar::EntryType::Continuous => "reg",
            tar::EntryType::Directory => "dir",
            tar::EntryType::Symlink => "symlink",
            tar::EntryType::Link => "hardlink",
            tar::EntryType::Char => "char",
            tar::EntryType::Block => "block",
            tar::EntryType::Fifo => "fifo",
            tar::EntryType::XGlobalHeader => continue,
            other => {
                return Err(Error::InputTar(format!(
                    "unsupported tar entry type {other:?}"
                )));
            }
        };
        let raw_path = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let path = clean_path(&raw_path)
            .ok_or_else(|| Error::InputTar(format!("path {raw_path:?} escapes the root")))?;
        if path.is_empty() && kind != "dir" {
            return Err(Error::InputTar(format!(
                "non-directory entry {raw_path:?} names the root"
            )));
        }
        let mut link = entry
            .link_name_bytes()
            .map(|l| String::from_utf8_lossy(&l).into_owned())
            .unwrap_or_default();
        if kind == "hardlink" {
            link = clean_path(&link).ok_or_else(|| {
                Error::InputTar(format!("hardlink {raw_path:?} escapes the root"))
            })?;
        }
        let mut e = InputEntry {
            path,
            kind,
            size: if kind == "reg" { entry.size() } else { 0 },
            data_pos: entry.raw_file_position(),
            mode: header.mode().map_err(bad)? & 0o7777,
            // Empty numeric fields mean 0, as Go's archive/tar reads them.
            uid: header.uid().unwrap_or(0),
            gid: header.gid().unwrap_or(0),
            uname: header.username().ok().flatten().unwrap_or("").to_owned(),
            gname: header.groupname().ok().flatten().unwrap_or("").to_owned(),
            mtime: header.mtime().unwrap_or(0) as i64,
            link,
            dev: (
                header.device_major().ok().flatten().unwrap_or(0),
                header.device_minor().ok().flatten().unwrap_or(0),
            ),
            xattrs: BTreeMap::new(),
        };
        if let Some(pax) = entry.pax_extensions().map_err(bad)? {
            for ext in pax {
                let ext = ext.map_err(bad)?;
                let Ok(key) = ext.key() else { continue };
                let value = ext.value_bytes();
                if let Some(name) = key.strip_prefix("SCHILY.xattr.") {
                    e.xattrs.insert(name.to_owned(), value.to_vec());
                } else if key == "mtime" {
                    e.mtime = round_pax_time(&String::from_utf8_lossy(value)).unwrap_or(e.mtime);
                } else if key == "uname" {
                    e.uname = String::from_utf8_lossy(value).into_owned();
                } else if key == "gname" {
                    e.gname = String::from_utf8_lossy(value).into_owned();
                }
            }
        }
        let is_reserved =
            e.path == TOC_NAME || e.path == PREFETCH_LANDMARK || e.path == NO_PREFETCH_LANDMARK;
        if is_reserved {
            continue;
        }
        // Duplicates keep only the last entry, at its own position.
        if let Some(old) = by_path.insert(e.path.clone(), out.len()) {
            out[old].kind = "";
        }
        out.push(e);
    }
    Ok(out)
}

/// Rounds a PAX decimal time half up to whole seconds.
fn round_pax_time(s: &str) -> Option<i64> {
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    let secs: i64 = int.parse().ok()?;
    let up = frac.as_bytes().first().is_some_and(|d| *d >= b'5');
    Some(if up && !int.starts_with('-') {
        secs + 1
    } else {
        secs
    })
}

enum Item {
    Landmark(&'static str),
    Entry(usize),
}

/// Output order: prioritized files (with parents and hardlink targets) and
/// `.prefetch.landmark`, or `.no.prefetch.landmark`, then the rest in tar order.
fn order(entries: &[InputEntry], prioritized: &[String]) -> Vec<Item> {
    let live = |i: &usize| !entries[*i].kind.is_empty();
    let by_path: HashMap<&str, usize> = (0..entries.len())
        .filter(live)
        .map(|i| (entries[i].path.as_str(), i))
        .collect();
    let mut placed = vec![false; entries.len()];
    let mut out = Vec::with_capacity(entries.len() + 1);
    // Parents first, then the hardlink target, then the entry itself, with
    // an explicit stack: a hostile tar's hardlink chain or directory depth
    // can be as long as its entry count, too deep to recurse.
    fn place(
        i: usize,
        entries: &[InputEntry],
        by_path: &HashMap<&str, usize>,
        placed: &mut [bool],
        out: &mut Vec<Item>,
    ) {
        enum Step {
            Visit(usize),
            Emit(usize),
        }
        let mut stack = vec![Step::Visit(i)];
        while let Some(step) = stack.pop() {
            let i = match step {
                Step::Emit(i) => {
                    out.push(Item::Entry(i));
                    continue;
                }
                Step::Visit(i) if placed[i] => continue,
                Step::Visit(i) => i,
            };
            placed[i] = true;
            stack.push(Step::Emit(i));
            let e = &entries[i];
            if e.kind == "hardlink"
                && let Some(&t) = by_path.get(e.link.as_str())
            {
                stack.push(Step::Visit(t));
            }
            // The nearest present ancestor places its own ancestors first;
            // visiting it alone keeps deep paths linear.
            if let Some(&p) = e
                .path
                .rmatch_indices('/')
                .find_map(|(pos, _)| by_path.get(&e.path[..pos]))
            {
                stack.push(Step::Visit(p));
            }
        }
    }
    let mut any = false;
    for p in prioritized {
        match clean_path(p).and_then(|c| by_path.get(c.as_str()).copied()) {
            Some(i) => {
                place(i, entries, &by_path, &mut placed, &mut out);
                any = true;
            }
            None => tracing::warn!(path = %p, "prioritized file not in the layer"),
        }
    }
    if any {
        out.push(Item::Landmark(PREFETCH_LANDMARK));
    } else {
        out.insert(0, Item::Landmark(NO_PREFETCH_LANDMARK));
    }
    out.extend(
        (0..entries.len())
            .filter(|i| live(i) && !placed[*i])
            .map(Item::Entry),
    );
    out
}

enum Source<'a> {
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
struct NameTracker {
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
struct BlobWriter<W: Write> {
    enc: Option<Encoder<W>>,
    sink: Option<Counted<W>>,
    compression: Compression,
    gzip_level: u32,
    zstd_level: i32,
    chunk_size: u64,
    member_start: u64,
    member_bytes: u64,
    diff: Sha256,
    uncompressed: u64,
    scratch: tar::Builder<Vec<u8>>,
}

impl<W: Write> BlobWriter<W> {
    fn new(output: W, opts: &WriterOptions) -> Self {
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

    fn write_entry(
        &mut self,
        e: &InputEntry,
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
            let offset = self.new_member()?;
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

    fn finish(mut self, toc: &Toc) -> Result<ConvertOutput> {
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
                sink.write_all(&super::footer::ZSTD_SKIPPABLE_MAGIC)?;
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn entry(path: &str, kind: &'static str, link: &str) -> InputEntry {
        InputEntry {
            kind,
            link: link.to_owned(),
            ..InputEntry::landmark(path)
        }
    }

    fn placed(items: &[Item], entries: &[InputEntry]) -> Vec<String> {
        items
            .iter()
            .map(|it| match it {
                Item::Landmark(l) => (*l).to_owned(),
                Item::Entry(i) => entries[*i].path.clone(),
            })
            .collect()
    }

    #[test]
    fn prioritized_files_bring_parents_and_link_targets_first() {
        let entries = vec![
            entry("a", "dir", ""),
            entry("a/b", "dir", ""),
            entry("a/b/f", "reg", ""),
            entry("x", "reg", ""),
            entry("a/b/l", "hardlink", "x"),
        ];
        let got = placed(&order(&entries, &["a/b/l".into()]), &entries);
        assert_eq!(got, ["a", "a/b", "x", "a/b/l", PREFETCH_LANDMARK, "a/b/f"]);
    }

    #[test]
    fn long_hardlink_chains_and_deep_paths_do_not_overflow_the_stack() {
        // Recursing once per link needs far more than the 256 KiB stack.
        const N: usize = 50_000;
        let mut entries = vec![entry("l0", "reg", "")];
        entries.extend((1..N).map(|i| entry(&format!("l{i}"), "hardlink", &format!("l{}", i - 1))));
        // Directory depth: every prefix is an entry, so keep it smaller.
        const DEPTH: usize = 3_000;
        let mut path = String::from("d");
        for _ in 0..DEPTH {
            entries.push(entry(&path, "dir", ""));
            path.push_str("/d");
        }
        let last = format!("l{}", N - 1);
        let deepest = entries.last().unwrap().path.clone();
        let (chain, deep) = std::thread::Builder::new()
            .stack_size(256 << 10)
            .spawn(move || {
                let o = order(&entries, &[last, deepest]);
                let got = placed(&o, &entries);
                (got[..N].to_vec(), got[N..N + DEPTH].to_vec())
            })
            .unwrap()
            .join()
            .unwrap();
        assert_eq!(chain.first().map(String::as_str), Some("l0"));
        assert_eq!(chain.last(), Some(&format!("l{}", N - 1)));
        assert_eq!(deep[0], "d");
        assert_eq!(deep[DEPTH - 1].len(), 2 * DEPTH - 1, "deepest last");
    }
}
