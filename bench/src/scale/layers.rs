//! The scale benchmark's images: many small eStargz layers (files of
//! 1–4 KiB under `l<seed>/`), pushed to a local registry in images of at
//! most [`LAYERS_PER_IMAGE`] layers.

use std::ops::Range;

use rstargz_fs::estargz::WriterOptions;
use rstargz_test_support::{TestLayer, push_image, test_blob};

/// Layers per image (images may have up to 127; the case had 101).
pub const LAYERS_PER_IMAGE: usize = 100;

/// Bytes of file `f` of layer `seed`: 1–4 KiB.
fn file_len(seed: usize, f: usize) -> usize {
    1024 + (f * 31 + seed) % 3072
}

/// The tar of a layer of `files` small files under `l<seed>/`.
fn layer_tar(seed: usize, files: usize) -> std::io::Result<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::new());
    for f in 0..files {
        let data = test_blob(file_len(seed, f), (seed * 1000 + f) as u64);
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        b.append_data(&mut h, format!("l{seed}/f{f}"), data.as_slice())?;
    }
    b.into_inner()
}

/// The eStargz layer of `files` small files under `l<seed>/`.
pub fn small_layer(seed: usize, files: usize) -> std::io::Result<TestLayer> {
    Ok(TestLayer::estargz(
        &layer_tar(seed, files)?,
        &WriterOptions::default(),
    ))
}

/// Bytes of every file of the layers `seeds`, `files` each: what reading
/// every file of their mounted roots must return.
pub fn content_bytes(seeds: Range<usize>, files: usize) -> u64 {
    seeds
        .flat_map(|s| (0..files).map(move |f| file_len(s, f) as u64))
        .sum()
}

/// Pushes images of the layers `seeds` (at most `per_image` each) as
/// `<registry>/<repo><i>:latest`; returns their references.
pub async fn publish(
    registry: &str,
    repo: &str,
    seeds: Range<usize>,
    files: usize,
    per_image: usize,
) -> std::io::Result<Vec<String>> {
    let mut references = Vec::new();
    let starts: Vec<usize> = seeds.clone().step_by(per_image.max(1)).collect();
    for (i, start) in starts.into_iter().enumerate() {
        let end = (start + per_image.max(1)).min(seeds.end);
        let made = (start..end)
            .map(|s| small_layer(s, files))
            .collect::<std::io::Result<Vec<_>>>()?;
        let reference = format!("{registry}/{repo}{i}:latest");
        push_image(&reference, &made).await;
        references.push(reference);
    }
    Ok(references)
}
