//! `rstargz layer …`: convert, inspect and extract single eStargz blobs.
//!
//! Thin wrappers over `rstargz_fs::estargz`; output formats are part of the
//! interface (`convert` prints one JSON object, `inspect --json` prints the TOC).

use std::fs::File;
use std::io::Write;
use std::path::PathBuf;

use anyhow::Context as _;
use rstargz_fs::estargz::{
    self, Compression, Digest, FileSource, Layer, OpenOptions, Verify, WriterOptions, read_toc,
};

/// Arguments of `rstargz layer`.
#[derive(Debug, clap::Args)]
pub struct LayerArgs {
    #[command(subcommand)]
    command: LayerCommand,
}

#[derive(Debug, clap::Subcommand)]
enum LayerCommand {
    /// Convert a tar (plain, gzip or zstd) into an eStargz blob; prints JSON digests.
    Convert(ConvertArgs),
    /// Print the TOC entries of a blob.
    Inspect(InspectArgs),
    /// Extract a blob's tree into a directory through the verified reader.
    Extract(ExtractArgs),
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum CompressionArg {
    Gzip,
    Zstd,
}

#[derive(Debug, clap::Args)]
struct ConvertArgs {
    /// Input tar (plain, gzip or zstd compressed).
    input: PathBuf,
    /// Output blob.
    output: PathBuf,
    /// Blob compression.
    #[arg(long, value_enum, default_value = "gzip")]
    compression: CompressionArg,
    /// Uncompressed chunk size of large files, in bytes.
    #[arg(long, default_value_t = estargz::writer::DEFAULT_CHUNK_SIZE)]
    chunk_size: u64,
    /// Small files share a compressed member until it holds this many
    /// bytes (0: never); readers older than stargz-snapshotter 0.13 cannot read such blobs.
    #[arg(long, default_value_t = 0)]
    min_chunk_size: u64,
    /// File to prefetch (moved to the front, before `.prefetch.landmark`); repeatable.
    #[arg(long = "prioritize", value_name = "PATH")]
    prioritized: Vec<String>,
    /// Compression level (default: gzip 6, zstd 3).
    #[arg(long)]
    level: Option<i32>,
}

#[derive(Debug, clap::Args)]
struct InspectArgs {
    /// eStargz or zstd:chunked blob.
    blob: PathBuf,
    /// Print the TOC as JSON (the fields as parsed).
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
struct ExtractArgs {
    /// eStargz or zstd:chunked blob.
    blob: PathBuf,
    /// Destination directory (created if missing).
    dir: PathBuf,
    /// Expected TOC digest (`containerd.io/snapshot/stargz/toc.digest`).
    #[arg(long)]
    toc_digest: Option<String>,
    /// Do not verify chunk digests (legacy layers without digests).
    #[arg(long)]
    insecure_skip_verify: bool,
}

/// Runs `rstargz layer`.
pub fn run(args: LayerArgs) -> anyhow::Result<()> {
    match args.command {
        LayerCommand::Convert(a) => convert(a),
        LayerCommand::Inspect(a) => ignore_broken_pipe(inspect(a)),
        LayerCommand::Extract(a) => extract(a),
    }
}

/// `inspect | head` closes stdout early; that is not a failure.
fn ignore_broken_pipe(res: anyhow::Result<()>) -> anyhow::Result<()> {
    match res {
        Err(e)
            if e.downcast_ref::<std::io::Error>()
                .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe) =>
        {
            Ok(())
        }
        Err(e)
            if e.downcast_ref::<serde_json::Error>()
                .and_then(|e| e.io_error_kind())
                == Some(std::io::ErrorKind::BrokenPipe) =>
        {
            Ok(())
        }
        other => other,
    }
}

fn convert(a: ConvertArgs) -> anyhow::Result<()> {
    let compression = match a.compression {
        CompressionArg::Gzip => Compression::Gzip,
        CompressionArg::Zstd => Compression::Zstd,
    };
    let mut opts = WriterOptions {
        compression,
        chunk_size: a.chunk_size,
        min_chunk_size: a.min_chunk_size,
        prioritized: a.prioritized,
        ..WriterOptions::default()
    };
    if let Some(level) = a.level {
        match compression {
            Compression::Gzip => {
                opts.gzip_level = u32::try_from(level)
                    .ok()
                    .filter(|l| *l <= 9)
                    .context("gzip level must be 0-9")?
            }
            Compression::Zstd => opts.zstd_level = level,
        }
    }
    let input = File::open(&a.input).with_context(|| format!("opening {}", a.input.display()))?;
    let tmp = a.output.with_extension("partial");
    let out = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let res = estargz::convert_file(&input, &out, &opts)
        .with_context(|| format!("converting {}", a.input.display()))?;
    out.sync_all()?;
    std::fs::rename(&tmp, &a.output)?;
    let json = serde_json::json!({
        "digest": res.digest.to_string(),
        "tocDigest": res.toc_digest.to_string(),
        "diffID": res.diff_id.to_string(),
        "size": res.size,
        "uncompressedSize": res.uncompressed_size,
    });
    println!("{json}");
    Ok(())
}

fn inspect(a: InspectArgs) -> anyhow::Result<()> {
    let src = FileSource::open(&a.blob).with_context(|| format!("opening {}", a.blob.display()))?;
    let (footer, decoded) = read_toc(&src, estargz::toc::DEFAULT_MAX_TOC_SIZE)?;
    let mut out = std::io::stdout().lock();
    if a.json {
        serde_json::to_writer_pretty(&mut out, &decoded.toc)?;
        writeln!(out)?;
        return Ok(());
    }
    writeln!(
        out,
        "footer: {:?}, TOC at {} ({} bytes compressed, {} bytes JSON)",
        footer.kind, footer.toc_offset, footer.toc_compressed_size, decoded.json_size
    )?;
    writeln!(out, "tocDigest: {}", decoded.digest)?;
    for e in &decoded.toc.entries {
        let link = if e.link_name.is_empty() {
            String::new()
        } else {
            format!(" -> {}", e.link_name)
        };
        let at = if e.offset > 0 {
            format!(" @{}", e.offset)
        } else {
            String::new()
        };
        let size = if e.kind == "chunk" {
            e.chunk_size
        } else {
            e.size
        };
        writeln!(
            out,
            "{:<8} {:06o} {:>5}:{:<5} {:>10} {}{link}{at}",
            e.kind, e.mode, e.uid, e.gid, size, e.name
        )?;
    }
    Ok(())
}

fn extract(a: ExtractArgs) -> anyhow::Result<()> {
    let src = FileSource::open(&a.blob).with_context(|| format!("opening {}", a.blob.display()))?;
    let opts = OpenOptions {
        expected_toc_digest: a.toc_digest.as_deref().map(Digest::parse).transpose()?,
        verify: if a.insecure_skip_verify {
            Verify::Disabled
        } else {
            Verify::Enabled
        },
        ..OpenOptions::default()
    };
    let layer = Layer::open(src, &opts).with_context(|| format!("opening {}", a.blob.display()))?;
    let stats = estargz::extract(&layer, &a.dir)?;
    println!(
        "{}",
        serde_json::json!({
            "inodes": stats.inodes,
            "hardlinks": stats.hardlinks,
            "bytes": stats.bytes,
            "xattrsSkipped": stats.xattrs_skipped,
            "tocDigest": layer.toc_digest().to_string(),
        })
    );
    Ok(())
}
