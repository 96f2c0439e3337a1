//! The converter's input side: the spooled tar's entries and the order in
//! which they go into the blob.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{self, BufReader};

use crate::estargz::error::{Error, Result};
use crate::estargz::index::{NO_PREFETCH_LANDMARK, PREFETCH_LANDMARK, split_clean};
use crate::estargz::toc::TOC_NAME;

/// An input tar entry, with its payload position in the spool file.
#[derive(Debug, Clone)]
pub(super) struct InputEntry {
    /// Clean path (no `./`, no trailing `/`); empty for the root.
    pub(super) path: String,
    pub(super) kind: &'static str,
    pub(super) size: u64,
    pub(super) data_pos: u64,
    pub(super) mode: u32,
    pub(super) uid: u64,
    pub(super) gid: u64,
    pub(super) uname: String,
    pub(super) gname: String,
    pub(super) mtime: i64,
    pub(super) link: String,
    pub(super) dev: (u32, u32),
    pub(super) xattrs: BTreeMap<String, Vec<u8>>,
}

impl InputEntry {
    pub(super) fn landmark(name: &str) -> Self {
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
    pub(super) fn toc_name(&self) -> String {
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

pub(super) fn scan(spool: &File) -> Result<Vec<InputEntry>> {
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

pub(super) enum Item {
    Landmark(&'static str),
    Entry(usize),
}

/// Output order: prioritized files (with parents and hardlink targets) and
/// `.prefetch.landmark`, or `.no.prefetch.landmark`, then the rest in tar order.
pub(super) fn order(entries: &[InputEntry], prioritized: &[String]) -> Vec<Item> {
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
