//! The TOC (`stargz.index.json`): serde types, decoding from the blob, and
//! Go-compatible encoding.
//!
//! Decoding keeps the raw JSON bytes: the TOC digest is the sha256 of the bytes
//! as stored, never of a re-serialisation. Unknown keys are ignored (early
//! writers emitted `NumLink`, containers/storage adds more). The decompressed
//! size is capped so a hostile footer cannot make us allocate without bound.

use std::collections::BTreeMap;
use std::io::Read;

use serde::{Deserialize, Serialize};

use super::digest::Digest;
use super::error::{Error, Result};
use super::footer::{Compression, Footer};

/// Name of the TOC entry inside the gzip TOC member.
pub const TOC_NAME: &str = "stargz.index.json";
/// Default cap on the decompressed TOC size.
pub const DEFAULT_MAX_TOC_SIZE: u64 = 64 << 20;

/// The parsed TOC.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Toc {
    /// Format version; must be 1.
    pub version: i64,
    /// Entries in blob order.
    #[serde(default)]
    pub entries: Vec<TocEntry>,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

/// One TOC entry, field for field as the Go reference writes it (same order).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct TocEntry {
    /// Tar path as written (`./a`, `d/`).
    pub name: String,
    /// `dir`, `reg`, `symlink`, `hardlink`, `char`, `block`, `fifo` or `chunk`.
    #[serde(rename = "type")]
    pub kind: String,
    /// File size (reg).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub size: u64,
    /// RFC 3339 mtime, UTC, whole seconds.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub modtime: String,
    /// Symlink or hardlink target.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub link_name: String,
    /// Tar mode (permissions plus suid/sgid/sticky; old writers add type bits).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub mode: u64,
    /// Owner uid.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub uid: u64,
    /// Owner gid.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub gid: u64,
    /// User name, written only when it changes for a uid.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub user_name: String,
    /// Group name, written only when it changes for a gid.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub group_name: String,
    /// Compressed offset of the member whose output starts with this payload.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub offset: u64,
    /// Device major.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub dev_major: u64,
    /// Device minor.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub dev_minor: u64,
    /// xattr name to base64 value.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub xattrs: BTreeMap<String, String>,
    /// sha256 of the whole file (reg).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub digest: String,
    /// Offset of this chunk in the file.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub chunk_offset: u64,
    /// Chunk length; 0 means "to the end of the file".
    #[serde(default, skip_serializing_if = "is_zero")]
    pub chunk_size: u64,
    /// sha256 of the chunk's uncompressed bytes.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub chunk_digest: String,
    /// Offset of the payload inside the decompressed member (v0.13+).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub inner_offset: u64,
    /// containers/storage: `"zeros"` marks a sparse hole with no data.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub chunk_type: String,
}

/// A decoded TOC with the digest of its raw bytes.
#[derive(Debug, Clone)]
pub struct DecodedToc {
    /// The parsed TOC.
    pub toc: Toc,
    /// sha256 of the uncompressed JSON bytes as stored.
    pub digest: Digest,
    /// Uncompressed JSON length.
    pub json_size: u64,
}

/// Decompresses and parses the TOC from its compressed bytes (`footer.toc_range()`).
pub fn decode_toc(footer: &Footer, compressed: &[u8], max_size: u64) -> Result<DecodedToc> {
    let json = toc_json(footer, compressed, max_size)?;
    let toc = parse_toc_json(&json)?;
    Ok(DecodedToc {
        toc,
        digest: Digest::of(&json),
        json_size: json.len() as u64,
    })
}

/// Returns the raw, uncompressed TOC JSON.
pub fn toc_json(footer: &Footer, compressed: &[u8], max_size: u64) -> Result<Vec<u8>> {
    match footer.compression() {
        Compression::Zstd => {
            let declared = footer.toc_size.unwrap_or(0);
            if declared > max_size {
                return Err(Error::TocTooLarge { cap: max_size });
            }
            let dec = zstd::stream::read::Decoder::new(compressed)
                .map_err(|e| Error::TocDecompress(e.to_string()))?;
            read_capped(dec, max_size)
        }
        Compression::Gzip => {
            let dec = flate2::read::MultiGzDecoder::new(compressed);
            // The tar wrapper adds at most headers and padding to the JSON.
            let mut archive = tar::Archive::new(dec.take(max_size.saturating_add(1 << 20)));
            let entries = archive
                .entries()
                .map_err(|e| Error::TocDecompress(e.to_string()))?;
            for entry in entries {
                let entry = entry.map_err(|e| Error::TocDecompress(e.to_string()))?;
                let is_toc = entry
                    .path()
                    .map(|p| p.as_os_str() == TOC_NAME)
                    .unwrap_or(false);
                if is_toc {
                    if entry.size() > max_size {
                        return Err(Error::TocTooLarge { cap: max_size });
                    }
                    return read_capped(entry, max_size);
                }
            }
            Err(Error::TocMissing)
        }
    }
}

fn read_capped(r: impl Read, max_size: u64) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    r.take(max_size.saturating_add(1))
        .read_to_end(&mut out)
        .map_err(|e| Error::TocDecompress(e.to_string()))?;
    if out.len() as u64 > max_size {
        return Err(Error::TocTooLarge { cap: max_size });
    }
    Ok(out)
}

/// Parses TOC JSON and checks its version.
pub fn parse_toc_json(json: &[u8]) -> Result<Toc> {
    let toc: Toc = serde_json::from_slice(json)?;
    if toc.version != 1 {
        return Err(Error::TocVersion(toc.version));
    }
    Ok(toc)
}

/// Encodes a TOC like Go's `json.MarshalIndent(toc, "", "\t")`, escaping
/// `<`, `>`, `&`, U+2028 and U+2029 as Go does.
pub fn encode_toc(toc: &Toc) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut ser = serde_json::Serializer::with_formatter(
        &mut out,
        serde_json::ser::PrettyFormatter::with_indent(b"\t"),
    );
    toc.serialize(&mut ser)?;
    Ok(go_escape(out))
}

fn go_escape(json: Vec<u8>) -> Vec<u8> {
    let needs = |b: &[u8]| {
        b.iter().any(|c| matches!(c, b'<' | b'>' | b'&'))
            || b.windows(3)
                .any(|w| w == "\u{2028}".as_bytes() || w == "\u{2029}".as_bytes())
    };
    if !needs(&json) {
        return json;
    }
    // These characters only occur inside strings, so escaping them everywhere is exact.
    let s = String::from_utf8_lossy(&json);
    let mut out = String::with_capacity(s.len() + 16);
    for c in s.chars() {
        match c {
            '<' => out.push_str("\\u003c"),
            '>' => out.push_str("\\u003e"),
            '&' => out.push_str("\\u0026"),
            '\u{2028}' => out.push_str("\\u2028"),
            '\u{2029}' => out.push_str("\\u2029"),
            c => out.push(c),
        }
    }
    out.into_bytes()
}

/// Unix seconds of an RFC 3339 timestamp (fractions are rounded half up,
/// as the Go writer rounds before formatting).
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let part = s.get(r)?;
        if part.is_empty() || !part.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        part.parse().ok()
    };
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, min, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || min > 59 || sec > 60 {
        return None;
    }
    let mut i = 19;
    let mut round_up = 0;
    if b.get(i) == Some(&b'.') {
        let start = i + 1;
        i = start;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        if i == start {
            return None;
        }
        round_up = i64::from(b[start] >= b'5');
    }
    let offset = match b.get(i..)? {
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let digits = [*h1, *h2, *m1, *m2];
            if !digits.iter().all(u8::is_ascii_digit) {
                return None;
            }
            let d = |x: u8| i64::from(x - b'0');
            let secs =
                (d(digits[0]) * 10 + d(digits[1])) * 3600 + (d(digits[2]) * 10 + d(digits[3])) * 60;
            if *sign == b'+' { secs } else { -secs }
        }
        _ => return None,
    };
    Some(
        days_from_civil(year, month, day) * 86400 + hour * 3600 + min * 60 + sec + round_up
            - offset,
    )
}

/// Formats Unix seconds as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn format_rfc3339(secs: i64) -> String {
    let days = secs.div_euclid(86400);
    let rem = secs.rem_euclid(86400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

// Howard Hinnant's civil-date algorithms.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146097 + doe - 719468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719468;
    let era = z.div_euclid(146097);
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339() {
        assert_eq!(parse_rfc3339("2023-11-14T22:13:20Z"), Some(1_700_000_000));
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_rfc3339("2023-11-14T22:13:20.5Z"), Some(1_700_000_001));
        assert_eq!(
            parse_rfc3339("2023-11-14T23:13:20+01:00"),
            Some(1_700_000_000)
        );
        assert_eq!(parse_rfc3339("1969-12-31T23:59:59Z"), Some(-1));
        assert_eq!(parse_rfc3339("garbage"), None);
        assert_eq!(parse_rfc3339("2023-13-14T22:13:20Z"), None);
        assert_eq!(format_rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(format_rfc3339(-1), "1969-12-31T23:59:59Z");
    }

    #[test]
    fn go_escapes() {
        let toc = Toc {
            version: 1,
            entries: vec![TocEntry {
                name: "a<b>&".into(),
                kind: "reg".into(),
                ..Default::default()
            }],
        };
        let json = String::from_utf8(encode_toc(&toc).unwrap()).unwrap();
        assert!(json.contains(r#""name": "a\u003cb\u003e\u0026""#), "{json}");
        assert!(json.starts_with("{\n\t\"version\": 1,\n\t\"entries\": [\n\t\t{"));
        assert_eq!(parse_toc_json(json.as_bytes()).unwrap(), toc);
    }

    #[test]
    fn rejects_bad_version_and_ignores_unknown() {
        assert!(matches!(
            parse_toc_json(br#"{"version":2,"entries":[]}"#),
            Err(Error::TocVersion(2))
        ));
        let t =
            parse_toc_json(br#"{"version":1,"entries":[{"name":"a","type":"reg","NumLink":0}]}"#)
                .unwrap();
        assert_eq!(t.entries[0].name, "a");
    }
}
