//! Byte-range arithmetic for HTTP: merging neighbouring ranges into fewer
//! requests, writing `Range` headers and parsing `Content-Range`.
//! All ranges are half-open `start..end`; HTTP's inclusive ends are
//! converted only at the header boundary.

use std::ops::Range;

use bytes::{Bytes, BytesMut};

/// Sorts `ranges`, drops empty ones, and merges those that overlap or are
/// separated by at most `gap` bytes (fetching a small gap is cheaper than
/// another request or multipart part).
pub fn merge_ranges(ranges: &[Range<u64>], gap: u64) -> Vec<Range<u64>> {
    let mut sorted: Vec<Range<u64>> = ranges.iter().filter(|r| r.start < r.end).cloned().collect();
    sorted.sort_by_key(|r| (r.start, r.end));
    let mut merged: Vec<Range<u64>> = Vec::with_capacity(sorted.len());
    for r in sorted {
        match merged.last_mut() {
            Some(last) if r.start <= last.end.saturating_add(gap) => last.end = last.end.max(r.end),
            _ => merged.push(r),
        }
    }
    merged
}

/// Splits ranges longer than `max_len` into consecutive pieces of at most
/// `max_len` bytes, so big reads become parallel requests of bounded size.
pub fn split_ranges(ranges: &[Range<u64>], max_len: u64) -> Vec<Range<u64>> {
    let max_len = max_len.max(1);
    let mut out = Vec::with_capacity(ranges.len());
    for r in ranges {
        let mut start = r.start;
        while start < r.end {
            let end = r.end.min(start.saturating_add(max_len));
            out.push(start..end);
            start = end;
        }
    }
    out
}

/// Groups ranges into requests of at most `max_count` ranges and (unless a
/// single range is larger) `max_bytes` bytes, keeping their order.
pub fn batch_ranges(
    ranges: &[Range<u64>],
    max_count: usize,
    max_bytes: u64,
) -> Vec<Vec<Range<u64>>> {
    let mut batches: Vec<Vec<Range<u64>>> = Vec::new();
    let mut bytes = 0u64;
    for r in ranges {
        let len = r.end - r.start;
        match batches.last_mut() {
            Some(b) if b.len() < max_count.max(1) && bytes + len <= max_bytes => {
                b.push(r.clone());
                bytes += len;
            }
            _ => {
                batches.push(vec![r.clone()]);
                bytes = len;
            }
        }
    }
    batches
}

/// Cuts `want` out of `segments` (sorted by start), without copying when
/// one segment holds it all. None if the segments leave a hole.
pub fn assemble(segments: &[(Range<u64>, Bytes)], want: &Range<u64>) -> Option<Bytes> {
    if want.start >= want.end {
        return Some(Bytes::new());
    }
    let first = segments.partition_point(|(s, _)| s.end <= want.start);
    let slice_of = |(s, b): &(Range<u64>, Bytes), from: u64, to: u64| -> Option<Bytes> {
        let (a, z) = ((from - s.start) as usize, (to - s.start) as usize);
        (z <= b.len()).then(|| b.slice(a..z))
    };
    let seg = segments.get(first)?;
    if seg.0.start <= want.start && want.end <= seg.0.end {
        return slice_of(seg, want.start, want.end);
    }
    let mut out = BytesMut::with_capacity((want.end - want.start) as usize);
    let mut cursor = want.start;
    for seg in &segments[first..] {
        if cursor >= want.end {
            break;
        }
        if seg.0.start > cursor {
            return None;
        }
        if seg.0.end <= cursor {
            continue;
        }
        let to = seg.0.end.min(want.end);
        out.extend_from_slice(&slice_of(seg, cursor, to)?);
        cursor = to;
    }
    (cursor >= want.end).then(|| out.freeze())
}

/// Formats a `Range` header value for non-empty ranges: `bytes=0-9,20-29`.
pub fn range_header(ranges: &[Range<u64>]) -> String {
    let parts: Vec<String> = ranges
        .iter()
        .map(|r| format!("{}-{}", r.start, r.end.saturating_sub(1)))
        .collect();
    format!("bytes={}", parts.join(","))
}

/// Parses `bytes <first>-<last>/<size|*>` into the half-open range and the
/// total size if given.
pub fn parse_content_range(value: &str) -> Option<(Range<u64>, Option<u64>)> {
    let rest = value.trim().strip_prefix("bytes")?.trim_start();
    let (span, size) = rest.split_once('/')?;
    let (first, last) = span.trim().split_once('-')?;
    let first: u64 = first.trim().parse().ok()?;
    let last: u64 = last.trim().parse().ok()?;
    if last < first {
        return None;
    }
    let size = match size.trim() {
        "*" => None,
        s => Some(s.parse::<u64>().ok()?),
    };
    if size.is_some_and(|s| last >= s) {
        return None;
    }
    Some((first..last.checked_add(1)?, size))
}

/// Total bytes covered by `ranges` (which must not overlap).
pub fn total_len(ranges: &[Range<u64>]) -> u64 {
    ranges.iter().map(|r| r.end - r.start).sum()
}

#[cfg(test)]
#[allow(clippy::single_range_in_vec_init, clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn merges_overlapping_adjacent_and_close_ranges() {
        let got = merge_ranges(
            &[50..60, 0..10, 10..20, 5..8, 25..30, 100..100, 200..210],
            5,
        );
        assert_eq!(got, vec![0..30, 50..60, 200..210]);
        assert_eq!(merge_ranges(&[0..10, 11..20], 0), vec![0..10, 11..20]);
        assert!(merge_ranges(&[], 10).is_empty());
    }

    #[test]
    fn split_and_batch() {
        assert_eq!(
            split_ranges(&[0..10, 20..25], 4),
            vec![0..4, 4..8, 8..10, 20..24, 24..25]
        );
        let b = batch_ranges(&[0..4, 10..14, 20..30, 40..41, 50..51, 60..61], 2, 8);
        assert_eq!(
            b,
            vec![
                vec![0..4, 10..14],
                vec![20..30],
                vec![40..41, 50..51],
                vec![60..61]
            ]
        );
    }

    #[test]
    fn assemble_slices_or_joins_segments() {
        let data: Vec<u8> = (0..30).collect();
        let seg = |r: Range<u64>| {
            (
                r.clone(),
                Bytes::copy_from_slice(&data[r.start as usize..r.end as usize]),
            )
        };
        let segs = [seg(0..10), seg(10..20), seg(25..30)];
        assert_eq!(&assemble(&segs, &(2..5)).unwrap()[..], &data[2..5]);
        assert_eq!(&assemble(&segs, &(5..15)).unwrap()[..], &data[5..15]);
        assert_eq!(&assemble(&segs, &(0..20)).unwrap()[..], &data[0..20]);
        assert_eq!(assemble(&segs, &(15..26)), None, "hole at 20..25");
        assert_eq!(assemble(&segs, &(28..31)), None);
        assert_eq!(assemble(&segs, &(7..7)), Some(Bytes::new()));
    }

    #[test]
    fn headers_round_trip() {
        assert_eq!(range_header(&[0..10, 20..21]), "bytes=0-9,20-20");
        assert_eq!(
            parse_content_range("bytes 0-9/100"),
            Some((0..10, Some(100)))
        );
        assert_eq!(parse_content_range("bytes 5-5/*"), Some((5..6, None)));
        for bad in [
            "",
            "bytes",
            "bytes 9-0/10",
            "bytes 0-10/10",
            "items 0-1/2",
            "bytes a-b/c",
            "bytes 0-1",
        ] {
            assert_eq!(parse_content_range(bad), None, "{bad:?}");
        }
        assert_eq!(
            parse_content_range(&format!("bytes 0-{}/*", u64::MAX)),
            None
        );
    }
}
