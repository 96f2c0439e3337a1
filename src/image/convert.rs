//! `image convert`: reads an image (manifest or index) from one [`Store`],
//! converts every layer to eStargz (gzip) or zstd:chunked with our writer,
//! rewrites config diffIDs and manifests, and writes it all to another.
//!
//! Contract:
//! - Layers are streamed through temporary files (verified against their
//!   descriptor while downloaded); several are converted and pushed at once
//!   (`parallelism`); blobs the destination has are not uploaded again.
//! - Output is deterministic: the same source and options give the same
//!   digests, so a re-run uploads nothing new.
//! - The root manifest/index is written last: on any error nothing is tagged.
//! - gzip keeps the manifest's flavour (docker schema2 or OCI) unless `oci`
//!   asks for OCI media types; zstd turns a docker image into OCI (docker
//!   has no zstd layer type).
//! - `platforms` keeps only the index entries of those platforms (entries
//!   without a platform are kept, as containerd's converter does).
//! - Non-distributable (foreign) layers are kept as they are, not copied.
//!   Index entries that are not image manifests, and attestation manifests
//!   (`unknown/unknown` platform), describe the source image: they are dropped
//!   with a note.
//! - `prioritized` files apply to every layer; a layer without them gets
//!   `.no.prefetch.landmark` (as ctr-remote does with a prefetch list).

use std::collections::HashMap;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use rstargz_fs::estargz::{self, Compression, FileSource, WriterOptions};
use rstargz_fs::registry::{OciDigest, Registry};
use serde_json::Value;
use tokio::sync::Semaphore;

use super::error::{ImageError, Result};
use super::oci::{self, Descriptor, LayerHandling};
use super::platform::PlatformSpec;
use super::progress::{Event, LayerReport, Progress};
use super::store::{ImageRef, Store, as_registry_digest};

/// Options of [`convert`].
#[derive(Debug, Clone)]
pub struct ConvertOptions {
    /// Writer settings (compression, chunk size, prioritized files).
    pub writer: WriterOptions,
    /// Layers converted at once.
    pub parallelism: usize,
    /// Where temporary layer files go (default: the system temp dir).
    pub temp_dir: Option<PathBuf>,
    /// Write OCI media types even for a docker schema2 source.
    pub oci: bool,
    /// The platforms of an index to convert; `None`: all of them.
    pub platforms: Option<Vec<PlatformSpec>>,
}

impl Default for ConvertOptions {
    fn default() -> Self {
        ConvertOptions {
            writer: WriterOptions::default(),
            parallelism: 4,
            temp_dir: None,
            oci: false,
            platforms: None,
        }
    }
}

/// Outcome of one converted manifest.
#[derive(Debug, Clone)]
pub struct ManifestReport {
    /// Platform (`linux/amd64`) when part of an index.
    pub platform: Option<String>,
    /// New manifest digest.
    pub digest: OciDigest,
    /// New config digest.
    pub config_digest: OciDigest,
    /// Per-layer outcome, in manifest order.
    pub layers: Vec<LayerReport>,
}

/// Outcome of [`convert`].
#[derive(Debug, Clone)]
pub struct ConvertReport {
    /// The destination as given.
    pub destination: String,
    /// Digest of the new root manifest or index.
    pub digest: OciDigest,
    /// Its media type.
    pub media_type: String,
    /// Converted manifests (one, or one per platform).
    pub manifests: Vec<ManifestReport>,
}

struct Ctx {
    src: Store,
    dst: Store,
    opts: ConvertOptions,
    progress: Arc<dyn Progress>,
    /// Converted layers by source digest (shared layers across platforms).
    done: Mutex<HashMap<String, (Descriptor, LayerReport)>>,
    permits: Semaphore,
}

/// Converts the image at `src` and writes it to `dst`.
pub async fn convert(
    client: &Registry,
    src: &ImageRef,
    dst: &ImageRef,
    opts: &ConvertOptions,
    progress: Arc<dyn Progress>,
) -> Result<ConvertReport> {
    let ctx = Arc::new(Ctx {
        src: Store::source(client, src)?,
        dst: Store::destination(client, dst)?,
        opts: opts.clone(),
        progress,
        done: Mutex::new(HashMap::new()),
        permits: Semaphore::new(opts.parallelism.max(1)),
    });
    let root = ctx.src.root().await?;
    let what = format!("image {src}");
    let json: Value = serde_json::from_slice(&root.bytes)
        .map_err(|e| ImageError::document(&what, e.to_string()))?;
    let media_type = oci::document_media_type(&json, &root.media_type);
    let (desc, body, manifests) = if oci::is_index(&media_type) {
        convert_index(&ctx, &json, &media_type).await?
    } else if oci::is_manifest(&media_type) {
        let (desc, body, report) = convert_manifest(&ctx, &json, &media_type, None).await?;
        (desc, body, vec![report])
    } else {
        return Err(ImageError::UnsupportedMediaType { what, media_type });
    };
    let digest = ctx.dst.put_root(&desc, body).await?;
    Ok(ConvertReport {
        destination: dst.to_string(),
        digest,
        media_type: desc.media_type,
        manifests,
    })
}

/// Whether every output document and layer gets an OCI media type.
fn oci_output(ctx: &Ctx) -> bool {
    ctx.opts.oci || ctx.opts.writer.compression == Compression::Zstd
}

/// Whether `--platform` leaves out the index entry `entry`.
fn platform_unselected(ctx: &Ctx, entry: &Descriptor) -> bool {
    match (&ctx.opts.platforms, &entry.platform) {
        (Some(wanted), Some(p)) => !wanted.iter().any(|w| w.matches(p)),
        _ => false,
    }
}

async fn convert_index(
    ctx: &Arc<Ctx>,
    json: &Value,
    media_type: &str,
) -> Result<(Descriptor, Bytes, Vec<ManifestReport>)> {
    let entries = oci::descriptors(json, "manifests", "index")?;
    let mut new_entries = Vec::new();
    let mut reports = Vec::new();
    for entry in entries {
        let attestation = entry
            .platform
            .as_ref()
            .is_some_and(|p| p.os == "unknown" && p.architecture == "unknown")
            || entry.annotations.contains_key("vnd.docker.reference.type");
        if platform_unselected(ctx, &entry) {
            tracing::info!(digest = %entry.digest, "skipping index entry of a platform not asked for");
            continue;
        }
        if !oci::is_manifest(&entry.media_type) || attestation {
            let text = format!(
                "skipping index entry {} ({}{}): it describes the source image",
                entry.digest,
                entry.media_type,
                if attestation { ", attestation" } else { "" }
            );
            tracing::info!("{text}");
            ctx.progress.event(&Event::Note(&text));
            continue;
        }
        let bytes = ctx.src.document(&entry).await?;
        let what = format!("manifest {}", entry.digest);
        let child: Value = serde_json::from_slice(&bytes)
            .map_err(|e| ImageError::document(&what, e.to_string()))?;
        let child_type = oci::document_media_type(&child, &entry.media_type);
        let platform = entry.platform.as_ref().map(|p| p.to_string());
        let (desc, body, report) = convert_manifest(ctx, &child, &child_type, platform).await?;
        ctx.dst.put_child_manifest(&desc.media_type, body).await?;
        let mut new_entry = desc;
        new_entry.platform = entry.platform.clone();
        new_entry.annotations = entry.annotations.clone();
        new_entry.extra = entry.extra.clone();
        new_entries.push(new_entry);
        reports.push(report);
    }
    if new_entries.is_empty() {
        let reason = match &ctx.opts.platforms {
            Some(p) => format!(
                "no image manifest of platform {} to convert",
                p.iter()
                    .map(|p| p.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            None => "no image manifest to convert".into(),
        };
        return Err(ImageError::document("index", reason));
    }
    let out_type = if oci_output(ctx) {
        oci::OCI_INDEX
    } else {
        media_type
    };
    let mut index = json.clone();
    set_field(&mut index, "manifests", to_value(&new_entries)?);
    if index.get("mediaType").is_some() || out_type == oci::DOCKER_MANIFEST_LIST {
        set_field(&mut index, "mediaType", Value::String(out_type.to_owned()));
    }
    let body = to_bytes(&index)?;
    let desc = Descriptor::new(out_type, &OciDigest::sha256_of(&body), body.len() as u64);
    Ok((desc, body, reports))
}

async fn convert_manifest(
    ctx: &Arc<Ctx>,
    json: &Value,
    media_type: &str,
    platform: Option<String>,
) -> Result<(Descriptor, Bytes, ManifestReport)> {
    let docker = media_type == oci::DOCKER_MANIFEST && !oci_output(ctx);
    let config: Descriptor = serde_json::from_value(
        json.get("config")
            .cloned()
            .ok_or_else(|| ImageError::document("manifest", "no config"))?,
    )
    .map_err(|e| ImageError::document("manifest", format!("bad config descriptor: {e}")))?;
    let layers = oci::descriptors(json, "layers", "manifest")?;
    let config_bytes = ctx.src.document(&config).await?;
    let what = format!("config {}", config.digest);
    let mut config_json: Value = serde_json::from_slice(&config_bytes)
        .map_err(|e| ImageError::document(&what, e.to_string()))?;
    let diff_ids: Vec<String> = config_json
        .pointer("/rootfs/diff_ids")
        .cloned()
        .map(serde_json::from_value)
        .transpose()
        .map_err(|e| ImageError::document(&what, format!("bad rootfs.diff_ids: {e}")))?
        .unwrap_or_default();
    if diff_ids.len() != layers.len() {
        return Err(ImageError::document(
            &what,
            format!("{} diff_ids for {} layers", diff_ids.len(), layers.len()),
        ));
    }
    for layer in &layers {
        oci::layer_handling(&layer.digest, &layer.media_type)?;
    }

    let total = layers.len();
    let mut tasks = tokio::task::JoinSet::new();
    for (i, (layer, diff_id)) in layers.into_iter().zip(diff_ids).enumerate() {
        let ctx = ctx.clone();
        tasks.spawn(async move {
            let out = convert_layer(&ctx, i + 1, total, layer, diff_id).await;
            (i, out)
        });
    }
    let mut results: Vec<Option<(Descriptor, LayerReport)>> = vec![None; total];
    while let Some(joined) = tasks.join_next().await {
        let (i, out) = joined.map_err(|e| ImageError::Task(e.to_string()))?;
        // Dropping the JoinSet on error aborts the other layers.
        results[i] = Some(out?);
    }
    let (new_layers, reports): (Vec<Descriptor>, Vec<LayerReport>) =
        results.into_iter().flatten().unzip();

    let new_diff_ids: Vec<Value> = reports
        .iter()
        .map(|r| Value::String(r.diff_id.clone()))
        .collect();
    if let Some(rootfs) = config_json.get_mut("rootfs") {
        set_field(rootfs, "diff_ids", Value::Array(new_diff_ids));
    }
    let config_body = to_bytes(&config_json)?;
    let config_type = if !docker && config.media_type == oci::DOCKER_CONFIG {
        oci::OCI_CONFIG
    } else {
        config.media_type.as_str()
    };
    let config_digest = OciDigest::sha256_of(&config_body);
    let mut new_config = Descriptor::new(config_type, &config_digest, config_body.len() as u64);
    new_config.annotations = config.annotations.clone();
    ctx.dst.put_blob_bytes(config_body).await?;

    let out_type = if docker {
        oci::DOCKER_MANIFEST
    } else {
        oci::OCI_MANIFEST
    };
    let mut manifest = json.clone();
    set_field(&mut manifest, "config", to_value(&new_config)?);
    set_field(&mut manifest, "layers", to_value(&new_layers)?);
    if manifest.get("mediaType").is_some() || docker {
        set_field(
            &mut manifest,
            "mediaType",
            Value::String(out_type.to_owned()),
        );
    }
    let body = to_bytes(&manifest)?;
    let digest = OciDigest::sha256_of(&body);
    ctx.progress.event(&Event::ManifestDone {
        platform: platform.clone(),
        digest: &digest,
    });
    let desc = Descriptor::new(out_type, &digest, body.len() as u64);
    Ok((
        desc,
        body,
        ManifestReport {
            platform,
            digest,
            config_digest,
            layers: reports,
        },
    ))
}

async fn convert_layer(
    ctx: &Ctx,
    index: usize,
    total: usize,
    layer: Descriptor,
    diff_id: String,
) -> Result<(Descriptor, LayerReport)> {
    if oci::layer_handling(&layer.digest, &layer.media_type)? == LayerHandling::PassThrough {
        let mut layer = layer;
        if oci_output(ctx) {
            layer.media_type = oci::docker_to_oci(&layer.media_type).to_owned();
        }
        let report = LayerReport {
            source_digest: layer.digest.clone(),
            source_size: layer.size,
            digest: layer.digest.clone(),
            size: layer.size,
            diff_id,
            toc_digest: String::new(),
            uploaded: false,
            passed_through: true,
            seconds: 0.0,
        };
        ctx.progress.event(&Event::LayerDone {
            index,
            total,
            report: &report,
        });
        return Ok((layer, report));
    }
    let _permit = ctx
        .permits
        .acquire()
        .await
        .map_err(|e| ImageError::Task(e.to_string()))?;
    if let Some(done) = ctx
        .done
        .lock()
        .ok()
        .and_then(|m| m.get(&layer.digest).cloned())
    {
        return Ok(done);
    }
    ctx.progress.event(&Event::LayerStarted {
        index,
        total,
        digest: &layer.digest,
    });
    let started = Instant::now();
    let temp_dir = ctx.opts.temp_dir.clone().unwrap_or_else(std::env::temp_dir);
    let source = tempfile::NamedTempFile::new_in(&temp_dir).map_err(ImageError::io(format!(
        "creating a temporary file in {}",
        temp_dir.display()
    )))?;
    {
        let mut out = BufWriter::with_capacity(1 << 20, source.as_file());
        ctx.src.download(&layer, &mut out, &mut |_| {}).await?;
        std::io::Write::flush(&mut out).map_err(ImageError::io("writing a temporary file"))?;
    }
    let writer = ctx.opts.writer.clone();
    let source_digest = layer.digest.clone();
    let (output, converted, zstd_annotations) = tokio::task::spawn_blocking(move || {
        convert_blob(&source, &temp_dir, &writer, &source_digest)
    })
    .await
    .map_err(|e| ImageError::Task(e.to_string()))??;
    let digest = as_registry_digest(&converted.digest.to_string())?;
    let uploaded = ctx
        .dst
        .put_blob_file(&digest, converted.size, output.path())
        .await?;
    let media_type = match ctx.opts.writer.compression {
        Compression::Zstd => oci::OCI_LAYER_ZSTD,
        Compression::Gzip
            if layer.media_type.starts_with("application/vnd.docker.") && !ctx.opts.oci =>
        {
            oci::DOCKER_LAYER_GZIP
        }
        Compression::Gzip => oci::OCI_LAYER_GZIP,
    };
    let mut desc = Descriptor::new(media_type, &digest, converted.size);
    // Annotations of the source layer survive unless they describe its old encoding.
    desc.annotations = layer
        .annotations
        .iter()
        .filter(|(k, _)| {
            !k.starts_with("containerd.io/snapshot/stargz/")
                && !k.starts_with("io.containers.")
                && !k.starts_with("io.github.containers.")
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    desc.annotations.insert(
        oci::ANNOTATION_TOC_DIGEST.into(),
        converted.toc_digest.to_string(),
    );
    desc.annotations.insert(
        oci::ANNOTATION_UNCOMPRESSED_SIZE.into(),
        converted.uncompressed_size.to_string(),
    );
    if let Some((checksum, position)) = zstd_annotations {
        desc.annotations
            .insert(oci::ANNOTATION_ZSTD_MANIFEST_CHECKSUM.into(), checksum);
        desc.annotations
            .insert(oci::ANNOTATION_ZSTD_MANIFEST_POSITION.into(), position);
    }
    let report = LayerReport {
        source_digest: layer.digest.clone(),
        source_size: layer.size,
        digest: digest.to_string(),
        size: converted.size,
        diff_id: converted.diff_id.to_string(),
        toc_digest: converted.toc_digest.to_string(),
        uploaded,
        passed_through: false,
        seconds: started.elapsed().as_secs_f64(),
    };
    ctx.progress.event(&Event::LayerDone {
        index,
        total,
        report: &report,
    });
    if let Ok(mut m) = ctx.done.lock() {
        m.insert(layer.digest.clone(), (desc.clone(), report.clone()));
    }
    Ok((desc, report))
}

/// The zstd:chunked annotations: checksum and position of the compressed TOC.
type ZstdAnnotations = Option<(String, String)>;

/// Converts the verified source blob in `source` into a new temporary file.
fn convert_blob(
    source: &tempfile::NamedTempFile,
    temp_dir: &Path,
    writer: &WriterOptions,
    source_digest: &str,
) -> Result<(
    tempfile::NamedTempFile,
    estargz::ConvertOutput,
    ZstdAnnotations,
)> {
    let layer_err = |source| ImageError::Layer {
        digest: source_digest.to_owned(),
        source,
    };
    let output = tempfile::NamedTempFile::new_in(temp_dir).map_err(ImageError::io(format!(
        "creating a temporary file in {}",
        temp_dir.display()
    )))?;
    // The download left the file offset at the end; the writer reads from it.
    let mut input = source.as_file();
    std::io::Seek::rewind(&mut input).map_err(ImageError::io("rewinding the source layer"))?;
    let converted = {
        let out = BufWriter::with_capacity(1 << 20, output.as_file());
        estargz::convert_file(input, out, writer).map_err(layer_err)?
    };
    let annotations = match writer.compression {
        Compression::Gzip => None,
        Compression::Zstd => {
            let blob = FileSource::open(output.path())
                .map_err(ImageError::io("reopening the converted layer"))?;
            let footer = estargz::read_footer(&blob).map_err(layer_err)?;
            let range = footer.toc_range();
            let mut toc = vec![0u8; (range.end - range.start) as usize];
            estargz::reader::read_exact_at(&blob, range.start, &mut toc)
                .map_err(ImageError::io("reading the converted layer's TOC"))?;
            Some((
                OciDigest::sha256_of(&toc).to_string(),
                format!(
                    "{}:{}:{}:1",
                    footer.toc_offset,
                    footer.toc_compressed_size,
                    footer.toc_size.unwrap_or_default()
                ),
            ))
        }
    };
    Ok((output, converted, annotations))
}

fn set_field(doc: &mut Value, key: &str, value: Value) {
    if let Some(obj) = doc.as_object_mut() {
        obj.insert(key.to_owned(), value);
    }
}

fn to_value(v: &impl serde::Serialize) -> Result<Value> {
    serde_json::to_value(v).map_err(|e| ImageError::document("encoding", e.to_string()))
}

fn to_bytes(v: &Value) -> Result<Bytes> {
    serde_json::to_vec(v)
        .map(Bytes::from)
        .map_err(|e| ImageError::document("encoding", e.to_string()))
}
