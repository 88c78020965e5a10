//! `dmue-train synth`: the synthetic FER benchmark with known ground truth.
//!
//! Every image is rendered from a true expression mixture; the annotated label is a draw from
//! that mixture, then a controlled fraction of training labels is flipped. Everything is
//! deterministic by seed, whatever the number of threads.

pub mod expr;
pub mod render;

pub use crate::data::manifest::Pose;
use crate::data::manifest::{Dataset, DatasetInfo, ManifestRow, Split, SynthTruth};
use anyhow::{bail, Context, Result};
use expr::{annotate, sample_expression, ExpressionSample, MixtureConfig, CLASSES};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use render::{apply_lighting, draw_background, draw_face, finish, Identity, Nuisance};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use tiny_skia::Pixmap;

/// Where faces sit in the rendered images.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Square crops with the face in canonical (template) position, small alignment jitter.
    Aligned,
    /// Larger canvases with one or more rotated, scaled, translated faces.
    Photo,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SynthOptions {
    pub train: usize,
    pub test: usize,
    /// Validation images (clean labels, like the test split): for `export --calibrate val`.
    #[serde(default)]
    pub val: usize,
    pub seed: u64,
    /// Fraction of training labels flipped to another uniformly random class.
    pub flip_rate: f32,
    pub mode: Mode,
    /// Side of aligned crops in pixels (photo canvases are 640x480).
    pub size: u32,
    /// Most faces per photo (photo mode).
    pub max_faces: usize,
    pub mixture: MixtureConfig,
}

impl Default for SynthOptions {
    fn default() -> Self {
        Self {
            train: 2800,
            test: 700,
            val: 0,
            seed: 0,
            flip_rate: 0.0,
            mode: Mode::Aligned,
            size: dmue_deploy::face::ALIGNED_SIZE,
            max_faces: 3,
            mixture: MixtureConfig::default(),
        }
    }
}

/// One face of a rendered image: its landmarks on the image and the truth about it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FaceTruth {
    pub landmarks: [[f32; 2]; 5],
    /// The label training uses (after label-noise injection on the training split).
    pub label: usize,
    pub truth: SynthTruth,
}

/// One row of `photos.jsonl` (photo mode): an image with every face's ground truth.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PhotoRow {
    pub path: String,
    pub split: Split,
    pub faces: Vec<FaceTruth>,
}

pub const PHOTOS_FILE: &str = "photos.jsonl";
const PHOTO_SIZE: (u32, u32) = (640, 480);

/// The random stream of image `index` of `split`: independent of the thread that renders it.
fn image_rng(seed: u64, split: Split, index: usize) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let split_id = match split {
        Split::Train => 0u64,
        Split::Val => 1,
        Split::Test => 2,
    };
    rng.set_stream((split_id << 40) | index as u64);
    rng
}

/// One face as rendered: what it shows, the annotator's label, where it is.
struct RenderedFace {
    sample: ExpressionSample,
    annotated: usize,
    landmarks: [[f32; 2]; 5],
    pose: Pose,
}

struct Rendered {
    image: image::RgbImage,
    faces: Vec<RenderedFace>,
}

/// Renders one face in aligned position on a `size` x `size` crop.
fn render_aligned(opts: &SynthOptions, rng: &mut ChaCha8Rng) -> Result<Rendered> {
    render_aligned_as(opts, rng, None)
}

/// [`render_aligned`] with a fixed person (identity mode); the random draws happen in the same
/// order either way, so the benchmark's images do not depend on this option.
fn render_aligned_as(
    opts: &SynthOptions,
    rng: &mut ChaCha8Rng,
    person: Option<&Identity>,
) -> Result<Rendered> {
    let size = opts.size;
    let mut pixmap = Pixmap::new(size, size).context("bad image size")?;
    let nuisance = Nuisance::sample(rng);
    draw_background(&mut pixmap, &nuisance, rng);
    let sample = sample_expression(&opts.mixture, rng);
    let annotated = annotate(&sample.mixture, rng);
    let sampled = Identity::sample(rng);
    let identity = person.unwrap_or(&sampled);
    let k = size as f32 / dmue_deploy::face::ALIGNED_SIZE as f32;
    let pose = Pose {
        angle_deg: rng.gen_range(-3.0..3.0),
        scale: k * rng.gen_range(0.97..1.03),
        cx: size as f32 * 0.5 + rng.gen_range(-3.0..3.0) * k,
        cy: size as f32 * 0.5 + rng.gen_range(-3.0..3.0) * k,
    };
    let landmarks = draw_face(&mut pixmap, &sample.expr, identity, &pose);
    apply_lighting(&mut pixmap, &nuisance);
    let image = finish(&pixmap, &nuisance, rng);
    Ok(Rendered {
        image,
        faces: vec![RenderedFace {
            sample,
            annotated,
            landmarks,
            pose,
        }],
    })
}

/// Renders a photo with 1..=max_faces non-overlapping faces at random poses.
fn render_photo(opts: &SynthOptions, rng: &mut ChaCha8Rng) -> Result<Rendered> {
    let (w, h) = PHOTO_SIZE;
    let mut pixmap = Pixmap::new(w, h).context("bad image size")?;
    let nuisance = Nuisance::sample(rng);
    draw_background(&mut pixmap, &nuisance, rng);
    let wanted = rng.gen_range(1..=opts.max_faces.max(1));
    let mut placed: Vec<(f32, f32, f32)> = Vec::new();
    let mut faces = Vec::new();
    for _ in 0..wanted * 20 {
        if faces.len() == wanted {
            break;
        }
        let scale = rng.gen_range(0.35..if wanted == 1 { 1.3 } else { 0.8 });
        let r = 128.0 * scale;
        let (cx, cy) = (
            rng.gen_range(r * 0.8..w as f32 - r * 0.8),
            rng.gen_range(r * 0.8..h as f32 - r * 0.8),
        );
        if placed
            .iter()
            .any(|&(x, y, rr)| (x - cx).hypot(y - cy) < (r + rr) * 0.85)
        {
            continue;
        }
        placed.push((cx, cy, r));
        let pose = Pose {
            angle_deg: rng.gen_range(-30.0..30.0),
            scale,
            cx,
            cy,
        };
        let sample = sample_expression(&opts.mixture, rng);
        let annotated = annotate(&sample.mixture, rng);
        let identity = Identity::sample(rng);
        let landmarks = draw_face(&mut pixmap, &sample.expr, &identity, &pose);
        faces.push(RenderedFace {
            sample,
            annotated,
            landmarks,
            pose,
        });
    }
    apply_lighting(&mut pixmap, &nuisance);
    let image = finish(&pixmap, &nuisance, rng);
    Ok(Rendered { image, faces })
}

/// Chooses exactly round(rate * n) of `labels` and moves each to another uniformly random
/// class. Returns the flipped indices (sorted).
pub fn flip_labels(labels: &mut [usize], num_classes: usize, rate: f32, seed: u64) -> Vec<usize> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5EED_F11B);
    let n_flip = ((rate.clamp(0.0, 1.0) * labels.len() as f32).round() as usize).min(labels.len());
    let mut order: Vec<usize> = (0..labels.len()).collect();
    order.shuffle(&mut rng);
    let mut flipped: Vec<usize> = order[..n_flip].to_vec();
    flipped.sort_unstable();
    for &i in &flipped {
        let mut to = rng.gen_range(0..num_classes - 1);
        if to >= labels[i] {
            to += 1;
        }
        labels[i] = to;
    }
    flipped
}

/// What `generate` wrote.
#[derive(Debug, Clone)]
pub struct Summary {
    pub images: usize,
    pub faces: usize,
    pub flipped: usize,
    pub out: PathBuf,
}

/// Renders the benchmark into `out` (images/, dataset.json, manifest.jsonl or photos.jsonl).
// Long: the benchmark's one seeded pass over the images: the order of the random draws is the
// benchmark (a split must not reorder them), and both modes share it.
pub fn generate(opts: &SynthOptions, out: &Path) -> Result<Summary> {
    if !(0.0..=1.0).contains(&opts.flip_rate) {
        bail!("--flip-rate must be in [0, 1], got {}", opts.flip_rate);
    }
    if opts.size < 32 {
        bail!("--size must be at least 32 pixels, got {}", opts.size);
    }
    if opts.train + opts.test + opts.val == 0 {
        bail!("nothing to generate: --train, --test and --val are all 0");
    }
    // Each image has its own random stream (split, index): adding validation images leaves
    // the training and test images as they were.
    let jobs: Vec<(Split, usize)> = (0..opts.train)
        .map(|i| (Split::Train, i))
        .chain((0..opts.test).map(|i| (Split::Test, i)))
        .chain((0..opts.val).map(|i| (Split::Val, i)))
        .collect();
    for split in ["train", "test", "val"] {
        std::fs::create_dir_all(out.join("images").join(split))
            .with_context(|| format!("cannot create {}", out.display()))?;
    }
    let pb = crate::util::progress(jobs.len() as u64, "render");
    let rendered: Vec<(Split, String, Vec<RenderedFace>)> = jobs
        .par_iter()
        .map(|&(split, i)| {
            let mut rng = image_rng(opts.seed, split, i);
            let r = match opts.mode {
                Mode::Aligned => render_aligned(opts, &mut rng)?,
                Mode::Photo => render_photo(opts, &mut rng)?,
            };
            let rel = format!("images/{split}/{i:06}.png");
            r.image
                .save(out.join(&rel))
                .with_context(|| format!("cannot write {}", out.join(&rel).display()))?;
            pb.inc(1);
            Ok((split, rel, r.faces))
        })
        .collect::<Result<_>>()?;
    pb.finish_and_clear();

    // Label noise on the training faces only; the test and validation splits keep clean labels.
    let mut train_labels: Vec<usize> = rendered
        .iter()
        .filter(|r| r.0 == Split::Train)
        .flat_map(|r| r.2.iter().map(|f| f.annotated))
        .collect();
    let flipped_idx = flip_labels(&mut train_labels, CLASSES.len(), opts.flip_rate, opts.seed);
    let mut flipped_set = vec![false; train_labels.len()];
    for &i in &flipped_idx {
        flipped_set[i] = true;
    }

    let mut rows = Vec::new();
    let mut photos = Vec::new();
    let mut train_face = 0;
    let mut n_faces = 0;
    for (split, rel, faces) in &rendered {
        let mut photo_faces = Vec::new();
        for RenderedFace {
            sample,
            annotated,
            landmarks,
            pose,
        } in faces
        {
            n_faces += 1;
            let (label, flipped) = if *split == Split::Train {
                let l = (train_labels[train_face], flipped_set[train_face]);
                train_face += 1;
                l
            } else {
                (sample.clean_label(), false)
            };
            let truth = SynthTruth {
                mixture: sample.mixture.to_vec(),
                clean_label: sample.clean_label(),
                annotated_label: *annotated,
                flipped,
                pose: *pose,
            };
            match opts.mode {
                Mode::Aligned => rows.push(ManifestRow {
                    path: rel.clone(),
                    label,
                    split: *split,
                    source: Some(format!("synth:seed={}:{split}", opts.seed)),
                    landmarks: Some(*landmarks),
                    truth: Some(truth),
                    votes: None,
                    original_label: None,
                    relabelled_from: None,
                }),
                Mode::Photo => photo_faces.push(FaceTruth {
                    landmarks: *landmarks,
                    label,
                    truth,
                }),
            }
        }
        if opts.mode == Mode::Photo {
            photos.push(PhotoRow {
                path: rel.clone(),
                split: *split,
                faces: photo_faces,
            });
        }
    }
    let info = DatasetInfo {
        name: format!(
            "synth-{}",
            if opts.mode == Mode::Aligned {
                "aligned"
            } else {
                "photo"
            }
        ),
        classes: CLASSES.iter().map(|s| s.to_string()).collect(),
        image_size: if opts.mode == Mode::Aligned {
            opts.size
        } else {
            PHOTO_SIZE.0
        },
        template_id: dmue_deploy::face::TEMPLATE_ID.to_string(),
        source: serde_json::json!({ "format": "synth", "options": opts }),
    };
    match opts.mode {
        Mode::Aligned => Dataset::write(out, &info, &rows)?,
        Mode::Photo => {
            info.write(out)?;
            crate::util::write_jsonl(&out.join(PHOTOS_FILE), &photos)?;
        }
    }
    Ok(Summary {
        images: rendered.len(),
        faces: n_faces,
        flipped: flipped_idx.len(),
        out: out.to_path_buf(),
    })
}

/// Identity mode (`synth --identities K --per-identity M`): a face-recognition stand-in for
/// MS-Celeb-1M, for `dmue-train pretrain`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IdentityOptions {
    pub identities: usize,
    pub per_identity: usize,
    /// Images of each person held out for the test split (identity accuracy on new images of
    /// the same people).
    pub test_per_identity: usize,
    pub seed: u64,
    pub size: u32,
    pub mixture: MixtureConfig,
}

/// Random streams of identity mode: disjoint from the benchmark's (`image_rng` uses streams
/// below 3 << 40, and the seed is mixed with a constant of its own).
fn identity_rng(seed: u64, stream: u64) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x1D_E271_7135);
    rng.set_stream(stream);
    rng
}

/// Renders K people (face geometry, skin, hair, eyes, clothes, glasses fixed per person) with
/// M random expressions, poses and nuisances each; classes are the people (`id0000`, ...).
pub fn generate_identities(opts: &IdentityOptions, out: &Path) -> Result<Summary> {
    if opts.identities < 2 {
        bail!("--identities must be at least 2");
    }
    if opts.test_per_identity >= opts.per_identity {
        bail!(
            "--per-identity ({}) must exceed the held-out images per person ({})",
            opts.per_identity,
            opts.test_per_identity
        );
    }
    if opts.size < 32 {
        bail!("--size must be at least 32 pixels, got {}", opts.size);
    }
    let people: Vec<Identity> = (0..opts.identities)
        .map(|k| Identity::sample(&mut identity_rng(opts.seed, (3 << 40) | k as u64)))
        .collect();
    for split in ["train", "test"] {
        std::fs::create_dir_all(out.join("images").join(split))
            .with_context(|| format!("cannot create {}", out.display()))?;
    }
    let synth_opts = SynthOptions {
        size: opts.size,
        mixture: opts.mixture,
        ..Default::default()
    };
    let jobs: Vec<(usize, usize)> = (0..opts.identities)
        .flat_map(|k| (0..opts.per_identity).map(move |i| (k, i)))
        .collect();
    let pb = crate::util::progress(jobs.len() as u64, "render identities");
    let rows: Vec<ManifestRow> = jobs
        .par_iter()
        .map(|&(k, i)| {
            let index = (k * opts.per_identity + i) as u64;
            let mut rng = identity_rng(opts.seed, (4 << 40) | index);
            let r = render_aligned_as(&synth_opts, &mut rng, Some(&people[k]))?;
            let split = if i < opts.per_identity - opts.test_per_identity {
                Split::Train
            } else {
                Split::Test
            };
            let rel = format!("images/{split}/id{k:05}-{i:04}.png");
            r.image
                .save(out.join(&rel))
                .with_context(|| format!("cannot write {}", out.join(&rel).display()))?;
            pb.inc(1);
            Ok(ManifestRow {
                path: rel,
                label: k,
                split,
                source: Some(format!("synth-identities:seed={}", opts.seed)),
                landmarks: Some(r.faces[0].landmarks),
                truth: None,
                votes: None,
                original_label: None,
                relabelled_from: None,
            })
        })
        .collect::<Result<_>>()?;
    pb.finish_and_clear();
    let info = DatasetInfo {
        name: "synth-identities".into(),
        classes: (0..opts.identities).map(|k| format!("id{k:05}")).collect(),
        image_size: opts.size,
        template_id: dmue_deploy::face::TEMPLATE_ID.to_string(),
        source: serde_json::json!({ "format": "synth-identities", "options": opts }),
    };
    Dataset::write(out, &info, &rows)?;
    Ok(Summary {
        images: rows.len(),
        faces: rows.len(),
        flipped: 0,
        out: out.to_path_buf(),
    })
}

/// Renders a grid with `per_class` aligned samples of each class (one row per class, ambiguous
/// blends marked with their two weights) and writes it as PNG.
pub fn preview(opts: &SynthOptions, per_class: usize, path: &Path) -> Result<()> {
    let cell = 128u32;
    let label_w = 110u32;
    let caption_h = 16u32;
    let c = CLASSES.len();
    let (w, h) = (
        label_w + cell * per_class as u32,
        (cell + caption_h) * c as u32,
    );
    let mut canvas = image::RgbImage::from_pixel(w, h, image::Rgb([255, 255, 255]));
    let mut captions = Vec::new();
    let cell_opts = SynthOptions {
        size: cell,
        mode: Mode::Aligned,
        ..opts.clone()
    };
    for (class, class_name) in CLASSES.iter().enumerate() {
        let mut found = 0;
        let mut i = 0usize;
        while found < per_class && i < 100_000 {
            let mut rng = image_rng(opts.seed ^ 0xC0FFEE, Split::Val, i);
            i += 1;
            let r = render_aligned(&cell_opts, &mut rng)?;
            let sample = &r.faces[0].sample;
            if sample.clean_label() != class {
                continue;
            }
            let (x0, y0) = (
                label_w + cell * found as u32,
                (cell + caption_h) * class as u32,
            );
            image::imageops::overlay(&mut canvas, &r.image, x0 as i64, y0 as i64);
            let mut order: Vec<usize> = (0..c).collect();
            order.sort_by(|&a, &b| sample.mixture[b].total_cmp(&sample.mixture[a]));
            let caption = if sample.mixture[order[1]] >= 0.3 {
                format!(
                    "{} {:.2} / {} {:.2}",
                    short(order[0]),
                    sample.mixture[order[0]],
                    short(order[1]),
                    sample.mixture[order[1]]
                )
            } else {
                format!("{} {:.2}", short(order[0]), sample.mixture[order[0]])
            };
            captions.push((x0 + 4, y0 + cell + 2, caption));
            found += 1;
        }
        captions.push((
            6,
            (cell + caption_h) * class as u32 + cell / 2 - 8,
            class_name.to_string(),
        ));
    }
    crate::util::plot::draw_texts(&mut canvas, &captions, 13.0)?;
    canvas
        .save(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

fn short(class: usize) -> &'static str {
    &CLASSES[class][..3]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flips_exactly_the_requested_share_to_other_classes() {
        let original: Vec<usize> = (0..1000).map(|i| i % 7).collect();
        let mut labels = original.clone();
        let flipped = flip_labels(&mut labels, 7, 0.3, 42);
        assert_eq!(flipped.len(), 300);
        for i in 0..labels.len() {
            assert_eq!(labels[i] != original[i], flipped.binary_search(&i).is_ok());
        }
        let mut again = original.clone();
        assert_eq!(flip_labels(&mut again, 7, 0.3, 42), flipped);
        assert_eq!(again, labels);
    }

    #[test]
    fn aligned_faces_land_near_the_template_and_are_deterministic() {
        let opts = SynthOptions::default();
        let a = render_aligned(&opts, &mut image_rng(3, Split::Train, 5)).unwrap();
        let b = render_aligned(&opts, &mut image_rng(3, Split::Train, 5)).unwrap();
        assert_eq!(a.image, b.image);
        let lm = a.faces[0].landmarks;
        for (p, t) in lm.iter().zip(dmue_deploy::face::TEMPLATE_256) {
            let d = (p[0] - t[0]).hypot(p[1] - t[1]);
            assert!(d < 25.0, "landmark {p:?} too far from template {t:?}");
        }
    }

    #[test]
    fn photo_landmarks_follow_the_pose() {
        let opts = SynthOptions {
            mode: Mode::Photo,
            ..Default::default()
        };
        let r = render_photo(&opts, &mut image_rng(9, Split::Test, 1)).unwrap();
        assert!(!r.faces.is_empty());
        for RenderedFace {
            landmarks: lm,
            pose,
            ..
        } in &r.faces
        {
            let eyes = (lm[1][0] - lm[0][0]).hypot(lm[1][1] - lm[0][1]);
            let angle = (lm[1][1] - lm[0][1])
                .atan2(lm[1][0] - lm[0][0])
                .to_degrees();
            assert!(
                (angle - pose.angle_deg).abs() < 0.5,
                "{angle} vs {}",
                pose.angle_deg
            );
            assert!((eyes / pose.scale - 76.0).abs() < 76.0 * 0.1);
        }
    }
}
