//! A strict parser for `multipart/byteranges` bodies (RFC 9110 §14.6).
//!
//! Pure function over a byte slice so it can be fuzzed. Each part's length
//! comes from its `Content-Range`, so a boundary string inside the data
//! cannot confuse it; every offset is bounds-checked and the number of parts
//! and header bytes is capped. Returns body offsets, so the caller can slice
//! a shared buffer without copying.

use std::ops::Range;

use super::ranges::parse_content_range;

/// Most header lines accepted in one part.
const MAX_PART_HEADERS: usize = 16;
/// Longest header line accepted in one part.
const MAX_HEADER_LINE: usize = 4096;

/// One part of a multipart/byteranges body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BodyPart {
    /// The blob range the part carries.
    pub range: Range<u64>,
    /// Where its bytes are in the body.
    pub body_span: Range<usize>,
}

/// Why a multipart body was rejected.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MultipartError {
    /// The boundary is missing or not a valid RFC 2046 boundary.
    #[error("invalid boundary")]
    InvalidBoundary,
    /// The body does not follow the multipart framing.
    #[error("malformed multipart body at byte {at}: {reason}")]
    Malformed {
        /// Offset in the body.
        at: usize,
        /// What was expected.
        reason: &'static str,
    },
    /// More parts than the caller allows.
    #[error("too many parts (limit {limit})")]
    TooManyParts {
        /// The limit.
        limit: usize,
    },
}

/// Extracts the `boundary` parameter of a `multipart/byteranges` content type.
pub fn byteranges_boundary(content_type: &str) -> Option<String> {
    let mut params = content_type.split(';');
    let mime = params.next()?.trim();
    if !mime.eq_ignore_ascii_case("multipart/byteranges") {
        return None;
    }
    params.find_map(|p| {
        let (k, v) = p.split_once('=')?;
        if !k.trim().eq_ignore_ascii_case("boundary") {
            return None;
        }
        let v = v.trim();
        let v = v
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .unwrap_or(v);
        Some(v.to_string())
    })
}

/// Parses `body` into parts, allowing at most `max_parts`.
pub fn parse_byteranges(
    body: &[u8],
    boundary: &str,
    max_parts: usize,
) -> Result<Vec<BodyPart>, MultipartError> {
    if boundary.is_empty() || boundary.len() > 70 || !boundary.is_ascii() {
        return Err(MultipartError::InvalidBoundary);
    }
    let delimiter = format!("--{boundary}");
    let delimiter = delimiter.as_bytes();
    let malformed = |at, reason| MultipartError::Malformed { at, reason };
    // The preamble before the first delimiter is ignored.
    let mut pos =
        find(body, delimiter, 0).ok_or(malformed(0, "no opening boundary"))? + delimiter.len();
    let mut parts = Vec::new();
    loop {
        if body.get(pos..pos + 2) == Some(b"--") {
            return Ok(parts);
        }
        pos = skip_line_end(body, pos).ok_or(malformed(pos, "expected CRLF after boundary"))?;
        if parts.len() == max_parts {
            return Err(MultipartError::TooManyParts { limit: max_parts });
        }
        let mut range = None;
        let mut headers = 0;
        loop {
            let (line, next) =
                read_line(body, pos).ok_or(malformed(pos, "unterminated part header"))?;
            pos = next;
            if line.is_empty() {
                break;
            }
            headers += 1;
            if headers > MAX_PART_HEADERS {
                return Err(malformed(pos, "too many part headers"));
            }
            let line = std::str::from_utf8(line).map_err(|_| malformed(pos, "non-UTF-8 header"))?;
            if let Some((name, value)) = line.split_once(':')
                && name.trim().eq_ignore_ascii_case("content-range")
            {
                range = Some(
                    parse_content_range(value)
                        .ok_or(malformed(pos, "bad Content-Range"))?
                        .0,
                );
            }
        }
        let range = range.ok_or(malformed(pos, "part without Content-Range"))?;
        let len = usize::try_from(range.end - range.start)
            .map_err(|_| malformed(pos, "part too large"))?;
        let end = pos
            .checked_add(len)
            .filter(|e| *e <= body.len())
            .ok_or(malformed(pos, "part data truncated"))?;
        parts.push(BodyPart {
            range,
            body_span: pos..end,
        });
        pos = skip_line_end(body, end).ok_or(malformed(end, "expected CRLF after part data"))?;
        if !body[pos..].starts_with(delimiter) {
            return Err(malformed(pos, "expected boundary after part"));
        }
        pos += delimiter.len();
    }
}

fn find(haystack: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    haystack
        .get(from..)?
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|i| i + from)
}

/// Accepts CRLF (and a bare LF, which some servers send) at `pos`.
fn skip_line_end(body: &[u8], pos: usize) -> Option<usize> {
    match body.get(pos..)? {
        [b'\r', b'\n', ..] => Some(pos + 2),
        [b'\n', ..] => Some(pos + 1),
        _ => None,
    }
}

/// Reads one header line starting at `pos`; returns it without its line end.
fn read_line(body: &[u8], pos: usize) -> Option<(&[u8], usize)> {
    let rest = body.get(pos..)?;
    let window = &rest[..rest.len().min(MAX_HEADER_LINE + 2)];
    let nl = window.iter().position(|b| *b == b'\n')?;
    let line = &rest[..nl];
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    Some((line, pos + nl + 1))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn body(parts: &[(&str, &[u8])], boundary: &str) -> Vec<u8> {
        let mut b = Vec::new();
        for (cr, data) in parts {
            b.extend_from_slice(format!("\r\n--{boundary}\r\nContent-Type: application/octet-stream\r\nContent-Range: {cr}\r\n\r\n").as_bytes());
            b.extend_from_slice(data);
        }
        b.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
        b
    }

    #[test]
    fn parses_go_style_body_even_with_boundary_in_data() {
        let data2: &[u8] = b"--xyz\r\n";
        let b = body(
            &[("bytes 0-4/46", b"hello"), ("bytes 10-16/46", data2)],
            "xyz",
        );
        let parts = parse_byteranges(&b, "xyz", 10).unwrap();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0].range, 0..5);
        assert_eq!(&b[parts[0].body_span.clone()], b"hello");
        assert_eq!(parts[1].range, 10..17);
        assert_eq!(&b[parts[1].body_span.clone()], data2);
    }

    #[test]
    fn boundary_from_content_type() {
        assert_eq!(
            byteranges_boundary("multipart/byteranges; boundary=abc").as_deref(),
            Some("abc")
        );
        assert_eq!(
            byteranges_boundary("Multipart/ByteRanges;boundary=\"a b\"").as_deref(),
            Some("a b")
        );
        assert_eq!(byteranges_boundary("application/octet-stream"), None);
        assert_eq!(byteranges_boundary("multipart/byteranges"), None);
    }

    #[test]
    fn rejects_hostile_bodies() {
        let ok = body(&[("bytes 0-4/46", b"hello")], "b");
        // Truncations at every length must fail cleanly, never panic.
        for cut in 0..ok.len() - 4 {
            assert!(parse_byteranges(&ok[..cut], "b", 4).is_err(), "cut {cut}");
        }
        let too_long = body(&[("bytes 0-999999999/9999999999", b"x")], "b");
        assert!(parse_byteranges(&too_long, "b", 4).is_err());
        let huge = body(&[(&format!("bytes 0-{}/*", u64::MAX - 1), b"x")], "b");
        assert!(parse_byteranges(&huge, "b", 4).is_err());
        let no_range = b"--b\r\nContent-Type: x\r\n\r\nhello\r\n--b--".to_vec();
        assert!(parse_byteranges(&no_range, "b", 4).is_err());
        let many = body(
            &[
                ("bytes 0-0/9", b"a"),
                ("bytes 1-1/9", b"b"),
                ("bytes 2-2/9", b"c"),
            ],
            "b",
        );
        assert_eq!(
            parse_byteranges(&many, "b", 2),
            Err(MultipartError::TooManyParts { limit: 2 })
        );
        let mut header_flood = b"--b\r\n".to_vec();
        for _ in 0..100 {
            header_flood.extend_from_slice(b"X: y\r\n");
        }
        assert!(parse_byteranges(&header_flood, "b", 4).is_err());
        let long_line = [b"--b\r\nX: ".as_slice(), &vec![b'a'; 10_000], b"\r\n\r\n"].concat();
        assert!(parse_byteranges(&long_line, "b", 4).is_err());
        assert_eq!(
            parse_byteranges(&ok, "", 4),
            Err(MultipartError::InvalidBoundary)
        );
        assert!(parse_byteranges(&[0xff; 64], "b", 4).is_err());
        let wrong_tail = [&ok[..ok.len() - 6], b"XX--\r\n"].concat();
        assert!(parse_byteranges(&wrong_tail, "b", 4).is_err());
    }

    #[test]
    fn random_mutations_never_panic_and_parts_stay_in_bounds() {
        let base = body(
            &[("bytes 0-4/46", b"hello"), ("bytes 10-16/46", b"0123456")],
            "bnd",
        );
        let mut x: u64 = 0x1234_5678_9abc_def1;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..20_000 {
            let mut b = base.clone();
            for _ in 0..(next() % 4 + 1) {
                let i = (next() as usize) % b.len();
                match next() % 3 {
                    0 => b[i] = next() as u8,
                    1 => {
                        b.remove(i);
                    }
                    _ => b.insert(i, next() as u8),
                }
            }
            if let Ok(parts) = parse_byteranges(&b, "bnd", 8) {
                for p in parts {
                    assert!(p.body_span.end <= b.len());
                    assert_eq!((p.range.end - p.range.start) as usize, p.body_span.len());
                }
            }
        }
    }

    #[test]
    fn empty_multipart_has_no_parts() {
        assert!(parse_byteranges(b"--b--\r\n", "b", 4).unwrap().is_empty());
    }
}
