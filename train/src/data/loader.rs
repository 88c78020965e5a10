//! Decoding a split into memory and assembling batches.
//!
//! Each image is decoded once (in parallel) and resized to `preprocess.resize`; batches are cut
//! from those bytes: random crop + flip for training, centre crop for evaluation, both through
//! `dmue_deploy::preprocess`, the same code deployment uses. A missing or corrupt image is
//! skipped and listed, never a crash mid-epoch.

use super::manifest::{Dataset, Split};
use anyhow::{bail, Result};
use dmue_deploy::preprocess::Preprocess;
use rand::Rng;
use rayon::prelude::*;

/// An image that could not be used, and why.
#[derive(Debug, Clone)]
pub struct Skipped {
    pub path: String,
    pub reason: String,
}

/// A split held in memory as resized RGB bytes.
pub struct InMemorySplit {
    pub split: Split,
    pub side: u32,
    /// `len * side * side * 3` interleaved RGB bytes.
    pixels: Vec<u8>,
    pub labels: Vec<usize>,
    /// Index of each image's row in `Dataset::rows`.
    pub rows: Vec<usize>,
    pub skipped: Vec<Skipped>,
}

impl InMemorySplit {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    pub fn image(&self, i: usize) -> &[u8] {
        let n = (self.side * self.side * 3) as usize;
        &self.pixels[i * n..(i + 1) * n]
    }

    /// Decodes every image of `split` (skipping unreadable ones) and resizes it.
    pub fn load(ds: &Dataset, split: Split, pre: &Preprocess) -> Result<Self> {
        pre.validate()?;
        let rows: Vec<usize> = ds
            .rows
            .iter()
            .enumerate()
            .filter(|(_, r)| r.split == split)
            .map(|(i, _)| i)
            .collect();
        if rows.is_empty() {
            bail!("the dataset in {} has no {split} images", ds.dir.display());
        }
        let pb = crate::util::progress(rows.len() as u64, &format!("load {split}"));
        let decoded: Vec<Result<Vec<u8>, String>> = rows
            .par_iter()
            .map(|&r| {
                let path = ds.dir.join(&ds.rows[r].path);
                let out = image::open(&path)
                    .map_err(|e| e.to_string())
                    .and_then(|img| pre.resize_rgb(&img.to_rgb8()).map_err(|e| e.to_string()))
                    .map(|img| img.into_raw());
                pb.inc(1);
                out
            })
            .collect();
        pb.finish_and_clear();
        let mut pixels = Vec::with_capacity(rows.len() * (pre.resize * pre.resize * 3) as usize);
        let (mut labels, mut kept, mut skipped) = (Vec::new(), Vec::new(), Vec::new());
        for (r, d) in rows.into_iter().zip(decoded) {
            match d {
                Ok(bytes) => {
                    pixels.extend_from_slice(&bytes);
                    labels.push(ds.rows[r].label);
                    kept.push(r);
                }
                Err(reason) => skipped.push(Skipped {
                    path: ds.rows[r].path.clone(),
                    reason,
                }),
            }
        }
        if labels.is_empty() {
            bail!(
                "none of the {} {split} images of {} could be read (first: {}: {})",
                skipped.len(),
                ds.dir.display(),
                skipped[0].path,
                skipped[0].reason
            );
        }
        Ok(Self {
            split,
            side: pre.resize,
            pixels,
            labels,
            rows: kept,
            skipped,
        })
    }
}

/// A batch as host memory: `len * 3 * crop * crop` floats (NCHW) and int64 labels.
pub struct HostBatch {
    pub images: Vec<f32>,
    pub labels: Vec<i64>,
    pub indices: Vec<usize>,
}

/// Random crop (+ horizontal flip with p = 0.5 when `hflip`) of each image; the offsets come
/// from `rng` so a batch is reproducible.
pub fn train_batch<R: Rng>(
    data: &InMemorySplit,
    idx: &[usize],
    pre: &Preprocess,
    hflip: bool,
    rng: &mut R,
) -> HostBatch {
    let span = pre.resize - pre.crop;
    let params: Vec<(u32, u32, bool)> = idx
        .iter()
        .map(|_| {
            (
                rng.gen_range(0..=span),
                rng.gen_range(0..=span),
                hflip && rng.gen::<bool>(),
            )
        })
        .collect();
    assemble(data, idx, pre, &params)
}

/// Centre crop of each image: the evaluation / deployment transform.
pub fn eval_batch(data: &InMemorySplit, idx: &[usize], pre: &Preprocess) -> HostBatch {
    let o = pre.centre_offset();
    assemble(data, idx, pre, &vec![(o, o, false); idx.len()])
}

fn assemble(
    data: &InMemorySplit,
    idx: &[usize],
    pre: &Preprocess,
    params: &[(u32, u32, bool)],
) -> HostBatch {
    let per = (3 * pre.crop * pre.crop) as usize;
    let mut images = vec![0f32; idx.len() * per];
    images
        .par_chunks_mut(per)
        .zip(idx.par_iter().zip(params.par_iter()))
        .for_each(|(out, (&i, &(x, y, flip)))| {
            pre.normalise_into(data.image(i), x, y, flip, out);
        });
    HostBatch {
        images,
        labels: idx.iter().map(|&i| data.labels[i] as i64).collect(),
        indices: idx.to_vec(),
    }
}

impl HostBatch {
    /// Moves the batch to `device`: `([B, 3, crop, crop] float, [B] int64)`.
    pub fn to_device(&self, crop: u32, device: tch::Device) -> (tch::Tensor, tch::Tensor) {
        let n = self.labels.len() as i64;
        let c = crop as i64;
        let x = tch::Tensor::from_slice(&self.images)
            .view([n, 3, c, c])
            .to_device(device);
        let y = tch::Tensor::from_slice(&self.labels).to_device(device);
        (x, y)
    }
}
