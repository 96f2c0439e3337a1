//! What an image's workload really needs from the registry, read from the
//! prioritized eStargz image: its manifest and config, every layer's TOC
//! and footer, and the compressed prefix before each `.prefetch.landmark`
//! (exactly the files the recorded workload opened). The physical floor of
//! a cold start over a link is then `needed / bandwidth + round trips × RTT`.

use std::io;
use std::time::Duration;

use anyhow::Context;
use rstargz_fs::estargz::{self, OpenOptions, Prefetch, ReadAt, Verify};
use rstargz_fs::registry::{OciDigest, Purpose, Reference, Registry};
use serde::Deserialize;

use rstargz_test_support::proxy::Link;

/// Round trips no cold start can avoid: the connection's handshake, the
/// manifest, then the config and TOCs (in parallel), then the needed file
/// contents (in parallel).
pub const MIN_ROUND_TRIPS: u32 = 4;

/// Bytes of one image.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Needs {
    /// Manifest, config, TOCs, footers and prioritized file contents.
    pub needed_bytes: u64,
    /// All layer blobs.
    pub layer_bytes: u64,
    /// Layers.
    pub layers: usize,
    /// Compressed bytes before the layers' `.prefetch.landmark`s.
    pub prioritized_bytes: u64,
    /// Chunks of all regular files (the converter's chunking).
    pub chunks: u64,
    /// Largest chunk, uncompressed bytes.
    pub largest_chunk: u64,
}

impl Needs {
    /// The physical floor over `link` (no time for unlimited bandwidth).
    pub fn floor(&self, link: Link) -> Duration {
        let transfer = if link.bytes_per_sec == 0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(self.needed_bytes as f64 / link.bytes_per_sec as f64)
        };
        transfer + link.rtt * MIN_ROUND_TRIPS
    }
}

#[derive(Deserialize)]
struct Desc {
    digest: String,
    size: u64,
}

#[derive(Deserialize)]
struct Manifest {
    config: Desc,
    layers: Vec<Desc>,
}

/// The bytes `reference` (a prioritized eStargz image) really needs.
pub async fn needs(registry: &Registry, reference: &str) -> anyhow::Result<Needs> {
    let r = Reference::parse(reference)?;
    let fetched = registry.get_manifest(&r).await?;
    let manifest: Manifest =
        serde_json::from_slice(&fetched.bytes).context("parse the manifest")?;
    let mut needs = Needs {
        needed_bytes: fetched.bytes.len() as u64 + manifest.config.size,
        layers: manifest.layers.len(),
        ..Needs::default()
    };
    for layer in &manifest.layers {
        let digest = OciDigest::parse(&layer.digest)?;
        let (prefix, toc, chunks) = layer_needs(registry, &r, &digest, layer.size)
            .await
            .with_context(|| format!("layer {}", layer.digest))?;
        needs.needed_bytes += prefix + toc;
        needs.prioritized_bytes += prefix;
        needs.chunks += chunks.0;
        needs.largest_chunk = needs.largest_chunk.max(chunks.1);
        needs.layer_bytes += layer.size;
    }
    Ok(needs)
}

/// The landmark's offset, the TOC-plus-footer size, and the chunk count
/// and largest chunk of one layer.
async fn layer_needs(
    registry: &Registry,
    reference: &Reference,
    digest: &OciDigest,
    size: u64,
) -> anyhow::Result<(u64, u64, (u64, u64))> {
    let fetcher = registry.open_blob(reference, digest, Some(size)).await?;
    let tail_start = size.saturating_sub(64 << 10);
    let tail = fetch(&fetcher, tail_start..size).await?;
    let footer_len = (estargz::footer::MAX_FOOTER_SIZE as u64).min(size) as usize;
    let footer = estargz::parse_footer(&tail[tail.len() - footer_len..], size)?;
    let start = footer.toc_offset.min(tail_start);
    let bytes = if start < tail_start {
        fetch(&fetcher, start..size).await?
    } else {
        tail
    };
    let layer = estargz::Layer::open(
        Tail { start, bytes, size },
        &OpenOptions {
            verify: Verify::Disabled,
            ..OpenOptions::default()
        },
    )?;
    let prefix = match layer.index().prefetch() {
        Prefetch::Range { end } => end,
        Prefetch::Disabled | Prefetch::Unknown => 0,
    };
    let index = layer.index();
    let (mut chunks, mut largest) = (0u64, 0u64);
    for ino in 0..u32::try_from(index.len())? {
        for c in index.chunks(ino) {
            chunks += 1;
            let r = c.file_range();
            largest = largest.max(r.end - r.start);
        }
    }
    Ok((prefix, size - footer.toc_offset, (chunks, largest)))
}

async fn fetch(
    fetcher: &rstargz_fs::registry::BlobFetcher,
    range: std::ops::Range<u64>,
) -> anyhow::Result<Vec<u8>> {
    let mut parts = fetcher
        .fetch_ranges(std::slice::from_ref(&range), Purpose::OnDemand)
        .await?;
    let (_, bytes) = parts.pop().context("no bytes")?;
    Ok(bytes.to_vec())
}

/// The end of a blob held in memory from `start`.
struct Tail {
    start: u64,
    bytes: Vec<u8>,
    size: u64,
}

impl ReadAt for Tail {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let Some(from) = offset.checked_sub(self.start) else {
            return Err(io::Error::other("read before the fetched tail"));
        };
        let from = usize::try_from(from).map_err(io::Error::other)?;
        let avail = self.bytes.get(from..).unwrap_or_default();
        let n = avail.len().min(buf.len());
        buf[..n].copy_from_slice(&avail[..n]);
        Ok(n)
    }

    fn size(&self) -> u64 {
        self.size
    }
}
