//! Opening a blob one read at a time, with no I/O of its own.
//!
//! An [`Opener`] says which byte range of the blob it needs next
//! ([`Opener::wants`]) and is given those bytes ([`Opener::feed`]): first the
//! tail (footer), then the compressed TOC. Every check on the way (footer
//! bounds, the TOC size cap, decompression, the expected TOC digest) lives
//! here, so the synchronous reader ([`super::reader`]) and the async layer
//! reader cannot disagree on what a valid blob is; they only perform reads.

use std::io;
use std::ops::Range;

use super::chunk::Verify;
use super::digest::Digest;
use super::error::{Error, Result};
use super::footer::{Footer, MAX_FOOTER_SIZE, parse_footer};
use super::index::Limits;
use super::toc::{DEFAULT_MAX_TOC_SIZE, DecodedToc, decode_toc};

/// Compressed data is never larger than its JSON plus a small framing
/// overhead, so a longer compressed TOC is refused before it is read.
const COMPRESSED_TOC_SLACK: u64 = 1 << 20;

/// Options of opening a layer ([`Opener`], `Layer::open`).
#[derive(Debug, Clone)]
pub struct OpenOptions {
    /// Cap on the decompressed TOC.
    pub max_toc_size: u64,
    /// Index sanity limits.
    pub limits: Limits,
    /// Chunk verification (on by default).
    pub verify: Verify,
    /// When set, the TOC digest must equal it (the `toc.digest` annotation).
    pub expected_toc_digest: Option<Digest>,
}

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions {
            max_toc_size: DEFAULT_MAX_TOC_SIZE,
            limits: Limits::default(),
            verify: Verify::Enabled,
            expected_toc_digest: None,
        }
    }
}

/// The footer and decoded TOC of an opened blob.
#[derive(Debug, Clone)]
pub struct OpenedToc {
    /// Where the TOC is and how the blob is compressed.
    pub footer: Footer,
    /// The TOC, with the digest its JSON was checked against.
    pub toc: DecodedToc,
}

/// What an [`Opener`] needs next, or what it found.
#[derive(Debug)]
pub enum Step {
    /// More bytes are needed: read [`Opener::wants`] and feed them.
    Need(Opener),
    /// Footer and TOC are decoded and checked.
    Done(OpenedToc),
}

/// Which bytes the opener is waiting for.
#[derive(Debug, Clone, Copy)]
enum Stage {
    /// The last `min(MAX_FOOTER_SIZE, blob_size)` bytes.
    Tail,
    /// The compressed TOC the footer points at.
    Toc(Footer),
}

/// Footer and TOC opening as a state machine; the caller does the reads.
#[derive(Debug, Clone)]
pub struct Opener {
    blob_size: u64,
    max_toc_size: u64,
    expected_toc_digest: Option<Digest>,
    stage: Stage,
}

impl Opener {
    /// Starts opening a `blob_size`-byte blob under `opts`' TOC cap and
    /// expected TOC digest.
    pub fn new(blob_size: u64, opts: &OpenOptions) -> Self {
        Opener {
            blob_size,
            max_toc_size: opts.max_toc_size,
            expected_toc_digest: opts.expected_toc_digest,
            stage: Stage::Tail,
        }
    }

    /// The byte range to read next; always inside the blob.
    pub fn wants(&self) -> Range<u64> {
        match &self.stage {
            Stage::Tail => {
                self.blob_size - (MAX_FOOTER_SIZE as u64).min(self.blob_size)..self.blob_size
            }
            Stage::Toc(footer) => footer.toc_range(),
        }
    }

    /// The footer, once the tail has been fed.
    pub fn footer(&self) -> Option<&Footer> {
        match &self.stage {
            Stage::Tail => None,
            Stage::Toc(footer) => Some(footer),
        }
    }

    /// Takes the bytes of [`Opener::wants`] and moves on. TOC decoding is
    /// CPU-heavy for large layers: async callers run this off their runtime.
    pub fn feed(self, bytes: &[u8]) -> Result<Step> {
        let wanted = self.wants();
        if bytes.len() as u64 != wanted.end - wanted.start {
            // A short read is the source's failure, as `read_exact_at` reports it.
            return Err(Error::Io(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "blob range {}..{} gave {} bytes",
                    wanted.start,
                    wanted.end,
                    bytes.len()
                ),
            )));
        }
        match self.stage {
            Stage::Tail => {
                let footer = parse_footer(bytes, self.blob_size)?;
                if footer.toc_compressed_size
                    > self.max_toc_size.saturating_add(COMPRESSED_TOC_SLACK)
                {
                    return Err(Error::TocTooLarge {
                        cap: self.max_toc_size,
                    });
                }
                Ok(Step::Need(Opener {
                    stage: Stage::Toc(footer),
                    ..self
                }))
            }
            Stage::Toc(footer) => {
                let toc = decode_toc(&footer, bytes, self.max_toc_size)?;
                if let Some(expected) = &self.expected_toc_digest {
                    check_toc_digest(&toc.digest, expected)?;
                }
                Ok(Step::Done(OpenedToc { footer, toc }))
            }
        }
    }
}

/// Fails with [`Error::TocDigestMismatch`] unless `actual` is `expected`.
pub(crate) fn check_toc_digest(actual: &Digest, expected: &Digest) -> Result<()> {
    if actual != expected {
        return Err(Error::TocDigestMismatch {
            expected: expected.to_string(),
            actual: actual.to_string(),
        });
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::estargz::footer::{FooterKind, estargz_footer, zstd_footer_bytes};
    use crate::estargz::writer::{WriterOptions, convert};

    /// A converted one-file blob and its TOC digest.
    fn blob() -> (Vec<u8>, Digest) {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_size(5);
        b.append_data(&mut h, "file", &b"hello"[..]).unwrap();
        let mut out = Vec::new();
        let made = convert(
            &b.into_inner().unwrap()[..],
            &mut out,
            &WriterOptions::default(),
        )
        .unwrap();
        (out, made.toc_digest)
    }

    fn slice(blob: &[u8], r: Range<u64>) -> &[u8] {
        &blob[r.start as usize..r.end as usize]
    }

    /// `footer` as the last `MAX_FOOTER_SIZE` bytes of a blob.
    fn tail(footer: &[u8]) -> Vec<u8> {
        let mut t = vec![0u8; MAX_FOOTER_SIZE - footer.len()];
        t.extend_from_slice(footer);
        t
    }

    /// Feeds `opener` the bytes of `blob` it asks for.
    fn feed_from(opener: Opener, blob: &[u8]) -> Result<Step> {
        let bytes = slice(blob, opener.wants()).to_vec();
        opener.feed(&bytes)
    }

    fn need(step: Step) -> Opener {
        match step {
            Step::Need(next) => next,
            Step::Done(_) => panic!("finished early"),
        }
    }

    fn done(step: Step) -> OpenedToc {
        match step {
            Step::Done(opened) => opened,
            Step::Need(next) => panic!("still wants {:?}", next.wants()),
        }
    }

    #[test]
    fn each_step_asks_for_the_next_range_and_ends_with_the_checked_toc() {
        let (blob, digest) = blob();
        let size = blob.len() as u64;
        let opts = OpenOptions {
            expected_toc_digest: Some(digest),
            ..OpenOptions::default()
        };
        let opener = Opener::new(size, &opts);
        assert_eq!(opener.wants(), size - MAX_FOOTER_SIZE as u64..size);
        assert!(opener.footer().is_none());

        let tail = slice(&blob, opener.wants());
        let opener = need(opener.feed(tail).unwrap());
        let footer = *opener.footer().unwrap();
        assert_eq!(footer.kind, FooterKind::Estargz);
        assert_eq!(opener.wants(), footer.toc_range());

        let toc = slice(&blob, opener.wants());
        let opened = done(opener.feed(toc).unwrap());
        assert_eq!(opened.footer, footer);
        assert_eq!(opened.toc.digest, digest);
        assert!(opened.toc.toc.entries.iter().any(|e| e.name == "file"));
    }

    #[test]
    fn a_blob_shorter_than_the_largest_footer_is_asked_for_whole() {
        let opener = Opener::new(20, &OpenOptions::default());
        assert_eq!(opener.wants(), 0..20);
        assert!(matches!(
            opener.feed(&[0u8; 20]),
            Err(Error::BlobTooSmall { size: 20 })
        ));
    }

    #[test]
    fn a_truncated_tail_or_toc_is_a_short_read() {
        let (blob, _) = blob();
        let opener = Opener::new(blob.len() as u64, &OpenOptions::default());
        let tail = slice(&blob, opener.wants());
        let err = opener.clone().feed(&tail[1..]).unwrap_err();
        assert!(
            matches!(&err, Error::Io(e) if e.kind() == io::ErrorKind::UnexpectedEof),
            "{err}"
        );

        let opener = need(opener.feed(tail).unwrap());
        let toc = slice(&blob, opener.wants());
        let err = opener.feed(&toc[..toc.len() - 1]).unwrap_err();
        assert!(
            matches!(&err, Error::Io(e) if e.kind() == io::ErrorKind::UnexpectedEof),
            "{err}"
        );
    }

    #[test]
    fn a_compressed_toc_beyond_the_cap_is_refused_before_it_is_read() {
        let cap = 1000;
        let opts = OpenOptions {
            max_toc_size: cap,
            ..OpenOptions::default()
        };
        // A gzip TOC runs from its offset to the footer: only the blob size
        // decides its length, so no TOC bytes need exist for this step.
        let footer = estargz_footer(100);
        let fits = 100 + cap + COMPRESSED_TOC_SLACK + footer.len() as u64;
        let footer = tail(&footer);
        let step = Opener::new(fits, &opts).feed(&footer);
        let opener = need(step.unwrap());
        assert_eq!(opener.wants(), 100..100 + cap + COMPRESSED_TOC_SLACK);

        let err = Opener::new(fits + 1, &opts).feed(&footer).unwrap_err();
        assert!(matches!(err, Error::TocTooLarge { cap: 1000 }), "{err}");

        // zstd footers state the length outright.
        let size = 1 << 40;
        let zstd = tail(&zstd_footer_bytes(0, cap + COMPRESSED_TOC_SLACK + 1, 10));
        let err = Opener::new(size, &opts).feed(&zstd).unwrap_err();
        assert!(matches!(err, Error::TocTooLarge { cap: 1000 }), "{err}");
    }

    #[test]
    fn the_decompressed_toc_cap_still_applies() {
        let (blob, _) = blob();
        let opts = OpenOptions {
            max_toc_size: 10,
            ..OpenOptions::default()
        };
        let opener = Opener::new(blob.len() as u64, &opts);
        let opener = need(feed_from(opener, &blob).unwrap());
        let err = feed_from(opener, &blob).unwrap_err();
        assert!(matches!(err, Error::TocTooLarge { cap: 10 }), "{err}");
    }

    #[test]
    fn a_toc_with_another_digest_than_expected_is_refused() {
        let (blob, digest) = blob();
        let other = Digest::of(b"x");
        let opts = OpenOptions {
            expected_toc_digest: Some(other),
            ..OpenOptions::default()
        };
        let opener = Opener::new(blob.len() as u64, &opts);
        let opener = need(feed_from(opener, &blob).unwrap());
        match feed_from(opener, &blob) {
            Err(Error::TocDigestMismatch { expected, actual }) => {
                assert_eq!(expected, other.to_string());
                assert_eq!(actual, digest.to_string());
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_bad_footer_stops_at_the_first_step() {
        let (mut blob, _) = blob();
        let n = blob.len();
        blob[n - 3] ^= 0xff;
        let opener = Opener::new(n as u64, &OpenOptions::default());
        let err = feed_from(opener, &blob).unwrap_err();
        assert!(matches!(err, Error::BadFooter), "{err}");
    }
}
