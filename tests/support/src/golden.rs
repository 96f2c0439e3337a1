//! Shared helpers of the eStargz tests: the golden cases in `testdata/estargz`
//! and a checker comparing an opened layer with a case's expected entries.

use std::collections::HashMap;
use std::io::Read;
use std::path::PathBuf;

use base64::Engine as _;
use rstargz_fs::estargz::{Index, Layer, NodeKind, ROOT_INO, ReadAt, Toc};
use serde::Deserialize;
use sha2::{Digest as _, Sha256};

/// `testdata/estargz` of the repository.
pub fn testdata() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../testdata/estargz")
}

/// One case of `cases.json`.
#[derive(Debug, Deserialize)]
pub struct Case {
    pub case: String,
    pub chunk_size: u64,
    pub prefetch: Vec<String>,
}

/// All golden cases.
pub fn cases() -> Vec<Case> {
    serde_json::from_slice(&std::fs::read(testdata().join("cases.json")).unwrap()).unwrap()
}

/// `C.expected.json`.
#[derive(Debug, Deserialize)]
pub struct Expected {
    pub entries: Vec<ExpectedEntry>,
}

/// One tar entry as the input tar defines it.
#[derive(Debug, Deserialize, Clone)]
pub struct ExpectedEntry {
    pub path: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub uname: String,
    pub gname: String,
    pub size: u64,
    pub sha256: Option<String>,
    pub linkname: String,
    pub mtime: String,
    pub xattrs: HashMap<String, String>,
    pub devmajor: Option<u32>,
    pub devminor: Option<u32>,
    pub overlay: Option<String>,
}

/// `C.<compression>.estargz.meta.json` (fields we check).
#[derive(Debug, Deserialize)]
pub struct Meta {
    pub blob_digest: String,
    pub toc_digest: String,
    pub diff_id: String,
    pub uncompressed_size: u64,
    pub toc_offset: u64,
    pub footer_size: u64,
}

pub fn expected(case: &str) -> Expected {
    serde_json::from_slice(
        &std::fs::read(testdata().join(format!("{case}.expected.json"))).unwrap(),
    )
    .unwrap()
}

pub fn meta(case: &str, comp: &str) -> Meta {
    let p = testdata().join(format!("{case}.{comp}.estargz.meta.json"));
    serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
}

pub fn blob(case: &str, comp: &str) -> Vec<u8> {
    std::fs::read(testdata().join(format!("{case}.{comp}.estargz"))).unwrap()
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// Rounds the expected decimal mtime to whole seconds, half up (as the TOC does).
pub fn rounded_mtime(s: &str) -> i64 {
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    let secs: i64 = int.parse().unwrap();
    secs + i64::from(frac.as_bytes().first().is_some_and(|d| *d >= b'5'))
}

fn clean(path: &str) -> String {
    path.split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect::<Vec<_>>()
        .join("/")
}

/// The last definition of each path (duplicates keep the last).
pub fn effective_entries(exp: &Expected) -> Vec<ExpectedEntry> {
    let mut seen = HashMap::new();
    let mut out: Vec<ExpectedEntry> = Vec::new();
    for e in &exp.entries {
        let key = clean(&e.path);
        if let Some(&i) = seen.get(&key) {
            out[i] = e.clone();
        } else {
            seen.insert(key, out.len());
            out.push(e.clone());
        }
    }
    out
}

/// userName/groupName resolved per non-chunk TOC entry, carried forward per id.
pub fn resolved_names(toc: &Toc) -> HashMap<String, (String, String)> {
    let (mut users, mut groups) = (HashMap::new(), HashMap::new());
    let mut out = HashMap::new();
    for e in toc.entries.iter().filter(|e| e.kind != "chunk") {
        if !e.user_name.is_empty() {
            users.insert(e.uid, e.user_name.clone());
        }
        if !e.group_name.is_empty() {
            groups.insert(e.gid, e.group_name.clone());
        }
        let u = users.get(&e.uid).cloned().unwrap_or_default();
        let g = groups.get(&e.gid).cloned().unwrap_or_default();
        out.insert(clean(&e.name), (u, g));
    }
    out
}

/// Every path reachable in the index (dirs without trailing slash).
pub fn all_paths(index: &Index) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![(ROOT_INO, String::new())];
    while let Some((dir, prefix)) = stack.pop() {
        for (name, ino) in index.children(dir) {
            let path = if prefix.is_empty() {
                name.to_owned()
            } else {
                format!("{prefix}/{name}")
            };
            if index.node(ino).unwrap().kind() == NodeKind::Dir {
                stack.push((ino, path.clone()));
            }
            out.push(path);
        }
    }
    out.sort();
    out
}

/// Compares an opened layer with a case's expected entries: every field and
/// every file's content (read through the verified reader).
pub fn check_layer<R: ReadAt>(layer: &Layer<R>, exp: &Expected, toc: &Toc, ctx: &str) {
    let index = layer.index();
    let names = resolved_names(toc);
    let entries = effective_entries(exp);
    for e in &entries {
        let path = clean(&e.path);
        let ctx = format!("{ctx}: {}", e.path);
        let ino = index
            .lookup_path(&path)
            .unwrap_or_else(|| panic!("{ctx}: missing"));
        let node = index.node(ino).unwrap();
        if e.kind == "hardlink" {
            let target = index.lookup_path(&clean(&e.linkname)).unwrap();
            assert_eq!(ino, target, "{ctx}: hardlink resolves to its target");
            assert!(node.nlink() >= 2, "{ctx}: nlink {}", node.nlink());
            continue;
        }
        let kind = match e.kind.as_str() {
            "reg" => NodeKind::Reg,
            "dir" => NodeKind::Dir,
            "symlink" => NodeKind::Symlink,
            "char" => NodeKind::Char,
            "block" => NodeKind::Block,
            "fifo" => NodeKind::Fifo,
            k => panic!("{ctx}: unexpected type {k}"),
        };
        assert_eq!(node.kind(), kind, "{ctx}: type");
        assert_eq!(node.permissions(), e.mode, "{ctx}: mode");
        assert_eq!(u64::from(node.uid()), e.uid, "{ctx}: uid");
        assert_eq!(u64::from(node.gid()), e.gid, "{ctx}: gid");
        assert_eq!(node.mtime(), rounded_mtime(&e.mtime), "{ctx}: mtime");
        let (uname, gname) = names.get(&path).cloned().unwrap_or_default();
        assert_eq!(uname, e.uname, "{ctx}: uname");
        assert_eq!(gname, e.gname, "{ctx}: gname");
        let xattrs: HashMap<String, String> = index
            .xattrs(ino)
            .map(|(k, v)| {
                (
                    k.to_owned(),
                    base64::engine::general_purpose::STANDARD.encode(v),
                )
            })
            .collect();
        assert_eq!(xattrs, e.xattrs, "{ctx}: xattrs");
        match kind {
            NodeKind::Reg => {
                assert_eq!(node.size(), e.size, "{ctx}: size");
                let mut buf = vec![0u8; e.size as usize];
                let n = layer.read_file_at(ino, 0, &mut buf).unwrap();
                assert_eq!(n as u64, e.size, "{ctx}: bytes read");
                assert_eq!(Some(sha256_hex(&buf)), e.sha256, "{ctx}: content");
                if e.size > 10 {
                    // A read that straddles chunk boundaries returns the same bytes.
                    let mut part = vec![0u8; (e.size / 2) as usize];
                    let off = e.size / 3;
                    layer.read_file_at(ino, off, &mut part).unwrap();
                    assert_eq!(
                        part,
                        buf[off as usize..off as usize + part.len()],
                        "{ctx}: partial read"
                    );
                }
            }
            NodeKind::Symlink => assert_eq!(
                index.symlink_target(ino),
                Some(e.linkname.as_str()),
                "{ctx}: link"
            ),
            NodeKind::Char | NodeKind::Block => {
                assert_eq!(
                    node.device(),
                    Some((e.devmajor.unwrap(), e.devminor.unwrap())),
                    "{ctx}: device"
                )
            }
            NodeKind::Dir | NodeKind::Fifo => {}
        }
        match e.overlay.as_deref() {
            Some("opaque") => assert!(
                index.node(node.parent()).unwrap().is_opaque(),
                "{ctx}: opaque parent"
            ),
            Some("whiteout") => assert!(
                Index::is_whiteout_name(path.rsplit('/').next().unwrap()),
                "{ctx}"
            ),
            _ => {}
        }
    }
    // Nothing more than the expected entries, their implicit parents and a landmark.
    let mut want: Vec<String> = entries.iter().map(|e| clean(&e.path)).collect();
    for e in &entries {
        let p = clean(&e.path);
        let mut acc = String::new();
        for comp in p
            .split('/')
            .collect::<Vec<_>>()
            .split_last()
            .map(|x| x.1)
            .unwrap_or(&[])
        {
            acc = if acc.is_empty() {
                comp.to_string()
            } else {
                format!("{acc}/{comp}")
            };
            want.push(acc.clone());
        }
    }
    want.retain(|p| !p.is_empty());
    want.sort();
    want.dedup();
    let mut have = all_paths(index);
    have.retain(|p| p != ".prefetch.landmark" && p != ".no.prefetch.landmark");
    assert_eq!(have, want, "{ctx}: set of paths");
}

/// sha256 and length of the whole blob decompressed (gzip members or zstd frames).
pub fn diff_id(blob: &[u8], zstd: bool) -> (String, u64) {
    let mut out = Vec::new();
    if zstd {
        zstd::stream::read::Decoder::new(blob)
            .unwrap()
            .read_to_end(&mut out)
            .unwrap();
    } else {
        flate2::read::MultiGzDecoder::new(blob)
            .read_to_end(&mut out)
            .unwrap();
    }
    (format!("sha256:{}", sha256_hex(&out)), out.len() as u64)
}

/// Asserts that `md` (of an entry seen through the kernel) has the file
/// type, permissions and owner `e` expects. Hardlinks are checked by inode.
pub fn assert_attrs(ctx: &str, md: &std::fs::Metadata, e: &ExpectedEntry) {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let ft = md.file_type();
    let kind_ok = match e.kind.as_str() {
        "reg" => ft.is_file(),
        "dir" => ft.is_dir(),
        "symlink" => ft.is_symlink(),
        "char" => ft.is_char_device(),
        "block" => ft.is_block_device(),
        "fifo" => ft.is_fifo(),
        k => panic!("{ctx}: unexpected type {k}"),
    };
    assert!(kind_ok, "{ctx}: type {ft:?}, expected {}", e.kind);
    if e.kind != "symlink" {
        assert_eq!(md.mode() & 0o7777, e.mode, "{ctx}: mode");
    }
    assert_eq!(u64::from(md.uid()), e.uid, "{ctx}: uid");
    assert_eq!(u64::from(md.gid()), e.gid, "{ctx}: gid");
}

/// Compares a directory tree (a mounted layer or an overlay of layers) with
/// `case`'s expected entries through the kernel: type, permissions, owner,
/// size, content, symlink target, device numbers and xattrs. Whiteout and
/// opaque markers are skipped (an overlay consumes them).
pub fn check_tree(root: &std::path::Path, case: &str) {
    use std::os::unix::fs::MetadataExt;
    for e in effective_entries(&expected(case)) {
        if e.overlay.is_some() {
            continue;
        }
        let rel = clean(&e.path);
        let ctx = format!("{case}: {rel}");
        let path = root.join(&rel);
        let md = std::fs::symlink_metadata(&path).unwrap_or_else(|err| panic!("{ctx}: {err}"));
        if e.kind == "hardlink" {
            assert!(
                md.file_type().is_file(),
                "{ctx}: hardlink to a regular file"
            );
            let target = std::fs::symlink_metadata(root.join(clean(&e.linkname))).unwrap();
            assert_eq!(md.ino(), target.ino(), "{ctx}: hardlink shares the inode");
            continue;
        }
        assert_attrs(&ctx, &md, &e);
        match e.kind.as_str() {
            "reg" => {
                assert_eq!(md.len(), e.size, "{ctx}: size");
                let data = std::fs::read(&path).unwrap();
                assert_eq!(Some(sha256_hex(&data)), e.sha256, "{ctx}: content");
            }
            "symlink" => assert_eq!(
                std::fs::read_link(&path).unwrap().to_str(),
                Some(e.linkname.as_str()),
                "{ctx}: link"
            ),
            "char" | "block" => {
                let rdev = md.rdev();
                assert_eq!(
                    (libc::major(rdev), libc::minor(rdev)),
                    (e.devmajor.unwrap(), e.devminor.unwrap()),
                    "{ctx}: device"
                );
            }
            _ => {}
        }
        if e.kind != "symlink" {
            let mut have = HashMap::new();
            for name in xattr::list(&path).unwrap() {
                let name = name.to_string_lossy().into_owned();
                if name.starts_with("trusted.overlay.") || name.starts_with("user.overlay.") {
                    continue;
                }
                let value = xattr::get(&path, &name).unwrap().unwrap_or_default();
                have.insert(
                    name,
                    base64::engine::general_purpose::STANDARD.encode(value),
                );
            }
            assert_eq!(have, e.xattrs, "{ctx}: xattrs");
        }
    }
}
