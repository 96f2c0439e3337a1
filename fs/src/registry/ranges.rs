//! Byte-range arithmetic for HTTP: merging neighbouring ranges into fewer
//! requests, writing `Range` headers and parsing `Content-Range`.
//! All ranges are half-open `start..end`; HTTP's inclusive ends are
//! converted only at the header boundary.

use std::ops::Range;

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
#[allow(clippy::single_range_in_vec_init)]
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
