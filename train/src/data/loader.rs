//! The images of a split, and batches cut from them.
//!
//! Three ways to hold a split ([`LoaderKind`]):
//! - `memory`: every image decoded once (in parallel) and resized to `preprocess.resize`, kept
//!   in RAM; the fastest, for datasets that fit (RAF-DB, SFEW, FERPlus, the benchmark);
//! - `packed`: the same bytes written once to `DATASET/.cache/packed-<split>-<side>.bin` and
//!   memory-mapped: decoding leaves the training loop, the page cache holds what fits, and a
//!   second run (or a resumed one) starts at once (AffectNet-sized data);
//! - `stream`: images decoded and resized for each batch, in parallel, on the loader's threads.
//!
//! Batches are cut from those bytes: random crop + flip (+ the authors' optional Gaussian
//! noise and random erasing) for training, centre crop for evaluation, through
//! `dmue_deploy::preprocess`, the same code deployment uses. A missing or corrupt image is
//! skipped and listed, never a crash mid-epoch.

use super::manifest::{Dataset, Split};
use anyhow::{bail, Context, Result};
use dmue_deploy::preprocess::Preprocess;
use rand::{Rng, SeedableRng};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

/// An image that could not be used, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Skipped {
    pub path: String,
    pub reason: String,
}

/// How a split's images are held (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LoaderKind {
    /// `memory` when the decoded split takes at most 4 GiB, else `packed`.
    Auto,
    Memory,
    Packed,
    Stream,
}

/// Decoded splits larger than this use the packed cache under `auto`.
const AUTO_MEMORY_LIMIT: u64 = 4 << 30;

enum Pixels {
    /// `len * side * side * 3` interleaved RGB bytes.
    Memory(Vec<u8>),
    Packed(memmap2::Mmap),
    /// Image files, decoded on demand.
    Stream(Vec<PathBuf>),
}

/// The images of one split, resized to `side`, with their labels.
pub struct SplitImages {
    pub split: Split,
    pub side: u32,
    pub kind: LoaderKind,
    pixels: Pixels,
    pub labels: Vec<usize>,
    /// Index of each image's row in `Dataset::rows`.
    pub rows: Vec<usize>,
    pub skipped: Vec<Skipped>,
    /// Streamed images that failed to decode after the up-front check (fed as mean colour).
    pub stream_failures: AtomicUsize,
}

/// Sidecar of a packed cache: what the `.bin` holds and what it was built from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct PackedIndex {
    side: u32,
    rows: Vec<usize>,
    skipped: Vec<Skipped>,
    /// Size and modification time of manifest.jsonl when the cache was built.
    manifest_fingerprint: (u64, u128),
}

fn manifest_fingerprint(ds: &Dataset) -> (u64, u128) {
    std::fs::metadata(ds.dir.join(super::manifest::MANIFEST_FILE))
        .map(|m| {
            let t = m
                .modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_nanos());
            (m.len(), t)
        })
        .unwrap_or((0, 0))
}

fn decode_resized(path: &Path, pre: &Preprocess) -> std::result::Result<Vec<u8>, String> {
    image::open(path)
        .map_err(|e| e.to_string())
        .and_then(|img| pre.resize_rgb(&img.to_rgb8()).map_err(|e| e.to_string()))
        .map(|img| img.into_raw())
}

/// Rows of `split` in manifest order.
fn split_rows(ds: &Dataset, split: Split) -> Result<Vec<usize>> {
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
    Ok(rows)
}

fn none_readable(ds: &Dataset, split: Split, skipped: &[Skipped]) -> anyhow::Error {
    anyhow::anyhow!(
        "none of the {} {split} images of {} could be read (first: {}: {})",
        skipped.len(),
        ds.dir.display(),
        skipped[0].path,
        skipped[0].reason
    )
}

impl SplitImages {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Calls `f` with image `i`'s resized RGB bytes (decoding it first when streaming).
    pub fn with_image<T>(&self, i: usize, f: impl FnOnce(&[u8]) -> T) -> T {
        let n = (self.side * self.side * 3) as usize;
        match &self.pixels {
            Pixels::Memory(b) => f(&b[i * n..(i + 1) * n]),
            Pixels::Packed(m) => f(&m[i * n..(i + 1) * n]),
            Pixels::Stream(paths) => {
                let pre = Preprocess {
                    resize: self.side,
                    ..Default::default()
                };
                match decode_resized(&paths[i], &pre) {
                    Ok(b) => f(&b),
                    Err(e) => {
                        if self.stream_failures.fetch_add(1, Ordering::Relaxed) < 10 {
                            tracing::warn!("{}: {e} (fed as mean colour)", paths[i].display());
                        }
                        // Mid-grey is the mean colour under the paper's 0.5/0.5 normalisation.
                        f(&vec![128u8; n])
                    }
                }
            }
        }
    }

    /// Decodes every image of `split` into memory (skipping unreadable ones) and resizes it.
    pub fn load(ds: &Dataset, split: Split, pre: &Preprocess) -> Result<Self> {
        Self::open(ds, split, pre, LoaderKind::Memory)
    }

    /// Opens `split` the way `kind` says.
    pub fn open(ds: &Dataset, split: Split, pre: &Preprocess, kind: LoaderKind) -> Result<Self> {
        pre.validate()?;
        let rows = split_rows(ds, split)?;
        let bytes = rows.len() as u64 * (pre.resize as u64).pow(2) * 3;
        let kind = match kind {
            LoaderKind::Auto if bytes > AUTO_MEMORY_LIMIT => LoaderKind::Packed,
            LoaderKind::Auto => LoaderKind::Memory,
            k => k,
        };
        match kind {
            LoaderKind::Memory | LoaderKind::Auto => Self::memory(ds, split, pre, rows),
            LoaderKind::Packed => Self::packed(ds, split, pre, rows),
            LoaderKind::Stream => Self::stream(ds, split, pre, rows),
        }
    }

    fn assemble_split(
        ds: &Dataset,
        split: Split,
        side: u32,
        kind: LoaderKind,
        pixels: Pixels,
        rows: Vec<usize>,
        skipped: Vec<Skipped>,
    ) -> Result<Self> {
        if rows.is_empty() {
            return Err(none_readable(ds, split, &skipped));
        }
        Ok(Self {
            split,
            side,
            kind,
            pixels,
            labels: rows.iter().map(|&r| ds.rows[r].label).collect(),
            rows,
            skipped,
            stream_failures: AtomicUsize::new(0),
        })
    }

    /// Decodes `rows` in parallel, in chunks, and hands each chunk's bytes to `sink` in order.
    fn decode_all(
        ds: &Dataset,
        split: Split,
        pre: &Preprocess,
        rows: &[usize],
        mut sink: impl FnMut(&[u8]) -> Result<()>,
    ) -> Result<(Vec<usize>, Vec<Skipped>)> {
        let pb = crate::util::progress(rows.len() as u64, &format!("load {split}"));
        let (mut kept, mut skipped) = (Vec::new(), Vec::new());
        // Chunks bound the memory in flight when the sink writes to disk.
        for chunk in rows.chunks(1024) {
            let decoded: Vec<std::result::Result<Vec<u8>, String>> = chunk
                .par_iter()
                .map(|&r| {
                    let out = decode_resized(&ds.dir.join(&ds.rows[r].path), pre);
                    pb.inc(1);
                    out
                })
                .collect();
            for (&r, d) in chunk.iter().zip(decoded) {
                match d {
                    Ok(bytes) => {
                        sink(&bytes)?;
                        kept.push(r);
                    }
                    Err(reason) => skipped.push(Skipped {
                        path: ds.rows[r].path.clone(),
                        reason,
                    }),
                }
            }
        }
        pb.finish_and_clear();
        Ok((kept, skipped))
    }

    fn memory(ds: &Dataset, split: Split, pre: &Preprocess, rows: Vec<usize>) -> Result<Self> {
        let mut pixels = Vec::with_capacity(rows.len() * (pre.resize * pre.resize * 3) as usize);
        let (kept, skipped) = Self::decode_all(ds, split, pre, &rows, |b| {
            pixels.extend_from_slice(b);
            Ok(())
        })?;
        Self::assemble_split(
            ds,
            split,
            pre.resize,
            LoaderKind::Memory,
            Pixels::Memory(pixels),
            kept,
            skipped,
        )
    }

    /// Where the packed cache of `split` at `side` lives.
    pub fn packed_path(ds: &Dataset, split: Split, side: u32) -> PathBuf {
        ds.dir
            .join(".cache")
            .join(format!("packed-{split}-{side}.bin"))
    }

    fn packed(ds: &Dataset, split: Split, pre: &Preprocess, rows: Vec<usize>) -> Result<Self> {
        let bin = Self::packed_path(ds, split, pre.resize);
        let index_path = bin.with_extension("json");
        let fingerprint = manifest_fingerprint(ds);
        let index: Option<PackedIndex> = std::fs::read_to_string(&index_path)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .filter(|i: &PackedIndex| {
                i.side == pre.resize
                    && i.manifest_fingerprint == fingerprint
                    && i.rows.len() + i.skipped.len() == rows.len()
            });
        let n = (pre.resize * pre.resize * 3) as u64;
        let index = match index {
            Some(i)
                if std::fs::metadata(&bin).is_ok_and(|m| m.len() == i.rows.len() as u64 * n) =>
            {
                i
            }
            _ => {
                std::fs::create_dir_all(bin.parent().expect("has a parent"))
                    .with_context(|| format!("cannot create {}", bin.display()))?;
                let tmp = crate::util::tmp_path(&bin);
                let file = std::fs::File::create(&tmp)
                    .with_context(|| format!("cannot create {}", tmp.display()))?;
                let mut w = std::io::BufWriter::new(file);
                let (kept, skipped) = Self::decode_all(ds, split, pre, &rows, |b| {
                    std::io::Write::write_all(&mut w, b)
                        .with_context(|| format!("cannot write {}", tmp.display()))
                })?;
                let file = w.into_inner().map_err(|e| e.into_error())?;
                file.sync_all().ok();
                std::fs::rename(&tmp, &bin)
                    .with_context(|| format!("cannot write {}", bin.display()))?;
                let index = PackedIndex {
                    side: pre.resize,
                    rows: kept,
                    skipped,
                    manifest_fingerprint: fingerprint,
                };
                crate::util::write_atomic(&index_path, serde_json::to_string(&index)?.as_bytes())?;
                tracing::info!("packed cache written: {}", bin.display());
                index
            }
        };
        if index.rows.is_empty() {
            return Err(none_readable(ds, split, &index.skipped));
        }
        let file =
            std::fs::File::open(&bin).with_context(|| format!("cannot open {}", bin.display()))?;
        // Safety: the cache file is ours, written whole and renamed into place; nothing
        // truncates it while a run maps it (a rebuild writes a new file and renames it).
        let map = unsafe { memmap2::Mmap::map(&file) }
            .with_context(|| format!("cannot map {}", bin.display()))?;
        Self::assemble_split(
            ds,
            split,
            pre.resize,
            LoaderKind::Packed,
            Pixels::Packed(map),
            index.rows,
            index.skipped,
        )
    }

    fn stream(ds: &Dataset, split: Split, pre: &Preprocess, rows: Vec<usize>) -> Result<Self> {
        // Only the headers are read up front: missing and non-image files are skipped now.
        let checked: Vec<std::result::Result<(), String>> = rows
            .par_iter()
            .map(|&r| {
                image::ImageReader::open(ds.dir.join(&ds.rows[r].path))
                    .map_err(|e| e.to_string())
                    .and_then(|rd| rd.with_guessed_format().map_err(|e| e.to_string()))
                    .and_then(|rd| rd.into_dimensions().map_err(|e| e.to_string()))
                    .map(|_| ())
            })
            .collect();
        let (mut kept, mut skipped, mut paths) = (Vec::new(), Vec::new(), Vec::new());
        for (r, c) in rows.into_iter().zip(checked) {
            match c {
                Ok(()) => {
                    kept.push(r);
                    paths.push(ds.dir.join(&ds.rows[r].path));
                }
                Err(reason) => skipped.push(Skipped {
                    path: ds.rows[r].path.clone(),
                    reason,
                }),
            }
        }
        Self::assemble_split(
            ds,
            split,
            pre.resize,
            LoaderKind::Stream,
            Pixels::Stream(paths),
            kept,
            skipped,
        )
    }
}

/// Training augmentation beyond crop and flip (the authors' code has both; off by default).
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Augment {
    pub hflip: bool,
    /// Standard deviation of Gaussian noise added to the normalised input (0: off).
    pub gaussian_noise: f32,
    /// Probability of random erasing (torchvision's defaults: area 2-33 %, aspect 0.3-3.3,
    /// value 0) per image (0: off).
    pub random_erasing: f32,
    /// Largest erased share of the image, when not torchvision's 0.33 (EAC erases up to 0.25).
    pub erasing_max_area: Option<f32>,
}

/// torchvision's largest erased share of the image.
const ERASING_MAX_AREA: f32 = 0.33;

/// A batch as host memory: `len * 3 * crop * crop` floats (NCHW) and int64 labels.
pub struct HostBatch {
    pub images: Vec<f32>,
    pub labels: Vec<i64>,
    pub indices: Vec<usize>,
}

/// Per-image random choices of a training batch.
#[derive(Debug, Clone, Copy)]
struct Params {
    x: u32,
    y: u32,
    flip: bool,
    /// Seed of the image's noise / erasing draws (0 when neither is on).
    extra_seed: u64,
}

/// Random crop (+ horizontal flip with p = 0.5, + the optional noise and erasing) of each
/// image; every choice comes from `rng`, so a batch is reproducible whatever the threads.
pub fn train_batch<R: Rng>(
    data: &SplitImages,
    idx: &[usize],
    pre: &Preprocess,
    aug: &Augment,
    rng: &mut R,
) -> HostBatch {
    let span = pre.resize - pre.crop;
    let extra = aug.gaussian_noise > 0.0 || aug.random_erasing > 0.0;
    let mut params: Vec<Params> = idx
        .iter()
        .map(|_| Params {
            x: rng.gen_range(0..=span),
            y: rng.gen_range(0..=span),
            flip: aug.hflip && rng.gen::<bool>(),
            extra_seed: 0,
        })
        .collect();
    // Drawn after the crops, so that switching noise or erasing on keeps the same crops.
    if extra {
        let batch_seed: u64 = rng.gen();
        for (k, p) in params.iter_mut().enumerate() {
            p.extra_seed = (batch_seed ^ (k as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)) | 1;
        }
    }
    assemble(data, idx, pre, &params, aug)
}

/// Centre crop of each image: the evaluation / deployment transform.
pub fn eval_batch(data: &SplitImages, idx: &[usize], pre: &Preprocess) -> HostBatch {
    let o = pre.centre_offset();
    let p = Params {
        x: o,
        y: o,
        flip: false,
        extra_seed: 0,
    };
    assemble(data, idx, pre, &vec![p; idx.len()], &Augment::default())
}

/// Gaussian noise and random erasing on one normalised `[3, c, c]` image.
fn extra_augment(out: &mut [f32], c: usize, aug: &Augment, seed: u64) {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    if aug.gaussian_noise > 0.0 {
        let normal = rand_distr::Normal::new(0.0, aug.gaussian_noise).expect("finite std");
        for v in out.iter_mut() {
            *v += rng.sample(normal);
        }
    }
    if aug.random_erasing > 0.0 && rng.gen::<f32>() < aug.random_erasing {
        let area = (c * c) as f32;
        for _ in 0..10 {
            let max = aug.erasing_max_area.unwrap_or(ERASING_MAX_AREA);
            let target = area * rng.gen_range(0.02..max);
            let ratio = rng.gen_range(0.3f32.ln()..3.3f32.ln()).exp();
            let h = (target * ratio).sqrt().round() as usize;
            let w = (target / ratio).sqrt().round() as usize;
            if h == 0 || w == 0 || h >= c || w >= c {
                continue;
            }
            let (y0, x0) = (rng.gen_range(0..=c - h), rng.gen_range(0..=c - w));
            for k in 0..3 {
                for y in y0..y0 + h {
                    out[k * c * c + y * c + x0..k * c * c + y * c + x0 + w].fill(0.0);
                }
            }
            break;
        }
    }
}

fn assemble(
    data: &SplitImages,
    idx: &[usize],
    pre: &Preprocess,
    params: &[Params],
    aug: &Augment,
) -> HostBatch {
    let per = (3 * pre.crop * pre.crop) as usize;
    let mut images = vec![0f32; idx.len() * per];
    images
        .par_chunks_mut(per)
        .zip(idx.par_iter().zip(params.par_iter()))
        .for_each(|(out, (&i, p))| {
            data.with_image(i, |rgb| pre.normalise_into(rgb, p.x, p.y, p.flip, out));
            if p.extra_seed != 0 {
                extra_augment(out, pre.crop as usize, aug, p.extra_seed);
            }
        });
    HostBatch {
        images,
        labels: idx.iter().map(|&i| data.labels[i] as i64).collect(),
        indices: idx.to_vec(),
    }
}

impl HostBatch {
    /// Moves the batch to `device`: `([B, 3, crop, crop] float, [B] int64)`.
    /// The batch as CPU tensors, in page-locked memory when `pin` names the CUDA device that
    /// will read them (the copies can then run asynchronously). Called on the prefetch thread.
    pub fn into_tensors(self, crop: u32, pin: Option<tch::Device>) -> ReadyBatch {
        let n = self.labels.len() as i64;
        let c = crop as i64;
        let indices: Vec<i64> = self.indices.iter().map(|&i| i as i64).collect();
        let pinned = |t: tch::Tensor| match pin {
            Some(d) => t.pin_memory(d),
            None => t,
        };
        ReadyBatch {
            images: pinned(tch::Tensor::from_slice(&self.images).view([n, 3, c, c])),
            labels: pinned(tch::Tensor::from_slice(&self.labels)),
            indices: pinned(tch::Tensor::from_slice(&indices)),
        }
    }

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

/// A training batch ready for the device: images `[B, 3, crop, crop]`, labels `[B]` and the
/// images' indices in the split `[B]` (int64), as CPU tensors (pinned for a CUDA device).
pub struct ReadyBatch {
    pub images: tch::Tensor,
    pub labels: tch::Tensor,
    pub indices: tch::Tensor,
}

impl ReadyBatch {
    /// `(images, labels, indices)` on `device`; non-blocking from pinned memory.
    pub fn to_device(&self, device: tch::Device) -> (tch::Tensor, tch::Tensor, tch::Tensor) {
        let move_ = |t: &tch::Tensor| t.to_device_(device, t.kind(), true, false);
        (
            move_(&self.images),
            move_(&self.labels),
            move_(&self.indices),
        )
    }

    pub fn len(&self) -> usize {
        self.labels.size()[0] as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Runs `make` on each of `batches` on a worker thread of `scope`, at most `depth` results
/// ahead of the consumer; the receiver yields them in order. Dropping the receiver stops the
/// worker at its next batch.
pub fn prefetch<'scope, T: Send + 'scope>(
    scope: &'scope std::thread::Scope<'scope, '_>,
    depth: usize,
    batches: &'scope [Vec<usize>],
    mut make: impl FnMut(&[usize]) -> T + Send + 'scope,
) -> std::sync::mpsc::Receiver<T> {
    let (tx, rx) = std::sync::mpsc::sync_channel::<T>(depth.max(1));
    scope.spawn(move || {
        for idx in batches {
            if tx.send(make(idx)).is_err() {
                break;
            }
        }
    });
    rx
}

/// What [`bench`] measured: the up-front cost of opening a split and the per-epoch cost of
/// cutting its training batches.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub loader: LoaderKind,
    pub threads: usize,
    pub images: usize,
    pub open_seconds: f64,
    pub images_per_second: f64,
    pub images_per_second_per_thread: f64,
}

/// Opens the training split of `ds` with `kind` (timed), then cuts `batches` training batches
/// of `batch_size` (with flips) on a pool of `threads` threads, after one warm-up batch (timed).
pub fn bench(
    ds: &Dataset,
    pre: &Preprocess,
    kind: LoaderKind,
    threads: usize,
    batches: usize,
    batch_size: usize,
) -> Result<BenchReport> {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads.max(1))
        .build()?;
    let t = std::time::Instant::now();
    let split = pool.install(|| SplitImages::open(ds, Split::Train, pre, kind))?;
    let open_seconds = t.elapsed().as_secs_f64();
    let aug = Augment {
        hflip: true,
        ..Default::default()
    };
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let n = split.len();
    let batches: Vec<Vec<usize>> = (0..batches)
        .map(|b| (0..batch_size).map(|k| (b * batch_size + k) % n).collect())
        .collect();
    // One warm-up batch (page cache, allocator), then the timed ones.
    pool.install(|| train_batch(&split, &batches[0], pre, &aug, &mut rng));
    let t = std::time::Instant::now();
    for idx in &batches {
        std::hint::black_box(pool.install(|| train_batch(&split, idx, pre, &aug, &mut rng)));
    }
    let secs = t.elapsed().as_secs_f64();
    let images = (batches.len() * batch_size) as f64;
    Ok(BenchReport {
        loader: split.kind,
        threads,
        images: split.len(),
        open_seconds,
        images_per_second: images / secs,
        images_per_second_per_thread: images / secs / threads.max(1) as f64,
    })
}
