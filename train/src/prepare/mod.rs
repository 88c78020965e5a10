//! `dmue-train prepare`: a raw dataset (photos + labels in some format) -> an aligned-crop
//! dataset directory (contract 1: `dataset.json`, `manifest.jsonl`, `images/`).
//!
//! Every face is cut by the code `dmue-serve` uses at deployment: RetinaFace landmarks
//! (`dmue_deploy::face::detect`) or landmarks the dataset ships, then the 5-point similarity
//! alignment to the one template (`dmue_deploy::face::align`).
//!
//! Rules, also printed by `--help` and listed per image in `prepare-report.json`:
//! - an unreadable image, or a face that cannot be found or aligned, is skipped and reported,
//!   never fatal;
//! - no face detected: skipped (`--no-face skip`), or the whole image resized to the crop
//!   (`--no-face whole`, for datasets that are already roughly cropped);
//! - several faces detected in an image with one label: the largest box is kept
//!   (`--multi-face largest`) or the image is skipped (`--multi-face skip`);
//! - when the dataset says where its faces are (synthetic photos, AffectNet boxes), each
//!   labelled face is matched to the detection nearest to it, and unmatched faces are reported.
//!
//! Work is journaled in `OUT/prepare-journal.jsonl` as each image finishes, so an interrupted
//! run resumes where it stopped (finished images are not redone).

pub mod formats;
pub mod parts;

use crate::data::manifest::{DatasetInfo, ManifestRow, Split, SynthTruth, MANIFEST_FILE};
use anyhow::{bail, Context, Result};
use dmue_deploy::engine::EngineKind;
use dmue_deploy::face::align::align;
use dmue_deploy::face::detect::{iou, Detection, Detector, DetectorConfig};
use dmue_deploy::image_io::{self, DecodeLimits};
use image::RgbImage;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

pub const JOURNAL_FILE: &str = "prepare-journal.jsonl";
pub const REPORT_FILE: &str = "prepare-report.json";
pub const FLIPS_FILE: &str = "label-flips.jsonl";

/// One injected label flip (`label-flips.jsonl`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Flip {
    pub path: String,
    pub from: usize,
    pub to: usize,
}

/// Flips `opts.flip_rate` of the training rows' labels (seeded; the same selection rule as
/// the synthetic benchmark) and records each one.
fn flip_training_labels(
    rows: &mut [ManifestRow],
    classes: usize,
    opts: &PrepareOptions,
) -> Vec<Flip> {
    let train: Vec<usize> = (0..rows.len())
        .filter(|&i| rows[i].split == Split::Train)
        .collect();
    let mut labels: Vec<usize> = train.iter().map(|&i| rows[i].label).collect();
    let flipped = crate::synth::flip_labels(&mut labels, classes, opts.flip_rate, opts.seed);
    flipped
        .into_iter()
        .map(|k| {
            let row = &mut rows[train[k]];
            let from = row.label;
            row.original_label = Some(from);
            row.label = labels[k];
            Flip {
                path: row.path.clone(),
                from,
                to: labels[k],
            }
        })
        .collect()
}

/// Where the 5 landmarks of each face come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LandmarkSource {
    /// RetinaFace, as at deployment.
    Detect,
    /// The landmarks the dataset ships (synthetic photos' ground truth, AffectNet's CSV).
    Given,
}

/// What to do with an image (with one label) in which several faces are detected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum MultiFace {
    /// Keep the face with the largest box (the subject, in the usual FER photo).
    Largest,
    /// Skip the image.
    Skip,
}

/// What to do with an image in which no face is detected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum NoFace {
    Skip,
    /// Resize the whole image to the crop (for datasets of rough face crops).
    Whole,
}

/// The options that decide what the output contains (a resumed run must use the same).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PrepareOptions {
    pub format: formats::Format,
    pub root: PathBuf,
    /// Side of the aligned crops.
    pub size: u32,
    pub landmarks: LandmarkSource,
    pub multi_face: MultiFace,
    pub no_face: NoFace,
    pub det_threshold: f32,
    /// Class names in label order, when the format does not fix them.
    pub classes: Option<Vec<String>>,
    /// Share of each class moved to the test split when the source has no test split.
    pub test_share: f32,
    /// Share of each class moved from train to a validation split (for `export --calibrate`).
    pub val_share: f32,
    /// Keeps groups whole when the shares above split the data: a regular expression searched
    /// in each image's source path, whose first capture group (or whole match) names the group
    /// (a subject, say). Every image of a group goes to the same split.
    #[serde(default)]
    pub group_by: Option<String>,
    /// Share of training labels flipped to another uniformly random class (recorded in the
    /// manifest's `original_label` and in `label-flips.jsonl`).
    pub flip_rate: f32,
    pub seed: u64,
    /// Format-specific choices (e.g. `ferplus`'s vote rule, `affectnet`'s class count).
    #[serde(default)]
    pub format_options: serde_json::Value,
}

impl Default for PrepareOptions {
    fn default() -> Self {
        Self {
            format: formats::Format::Folder,
            root: PathBuf::new(),
            size: dmue_deploy::face::ALIGNED_SIZE,
            landmarks: LandmarkSource::Detect,
            multi_face: MultiFace::Largest,
            no_face: NoFace::Skip,
            det_threshold: DetectorConfig::default().score_threshold,
            classes: None,
            test_share: 0.0,
            val_share: 0.0,
            group_by: None,
            flip_rate: 0.0,
            seed: 0,
            format_options: serde_json::Value::Null,
        }
    }
}

/// How the detector runs (does not change the output beyond float noise).
#[derive(Debug, Clone)]
pub struct Runtime {
    pub detector: PathBuf,
    pub engine: EngineKind,
    /// Images processed in parallel, one single-threaded detector each.
    pub threads: usize,
}

/// The pixels of one source image.
#[derive(Debug, Clone)]
pub enum Pixels {
    /// An image file (any format the decoder reads; EXIF orientation applied), as a path
    /// usable from the current directory.
    File(PathBuf),
    /// Pixels stored in the dataset's own files (FER2013's CSV).
    Gray {
        width: u32,
        height: u32,
        data: Vec<u8>,
    },
}

/// One labelled face of a source image.
#[derive(Debug, Clone, Default)]
pub struct FaceLabel {
    pub label: usize,
    /// Landmarks the dataset ships, in image pixels, template order.
    pub landmarks: Option<[[f32; 2]; 5]>,
    /// Face box the dataset ships `[x0, y0, x1, y1]`, in image pixels.
    pub bbox: Option<[f32; 4]>,
    pub truth: Option<SynthTruth>,
    /// Annotators' vote shares over the classes (FERPlus).
    pub votes: Option<Vec<f32>>,
}

/// One image to prepare.
#[derive(Debug, Clone)]
pub struct Item {
    /// Unique name; the crop is written to `images/{key}.png`.
    pub key: String,
    /// The source as the user knows it (path relative to the root, or CSV line).
    pub source: String,
    pub pixels: Pixels,
    pub split: Split,
    pub faces: Vec<FaceLabel>,
    /// The image is already an aligned face crop: resize only.
    pub pre_aligned: bool,
}

/// What a format reader found.
pub struct Source {
    pub name: String,
    pub classes: Vec<String>,
    /// Alignment the crops will have: our template, or the dataset's own for pre-aligned data.
    pub template_id: String,
    pub items: Vec<Item>,
    /// Entries the reader could not use (bad label, missing file...), with the reason.
    pub rejected: Vec<Note>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NoteKind {
    /// The reader rejected the entry (unknown label, dropped class, missing file).
    Rejected,
    Unreadable,
    NoFace,
    /// Several faces in an image with one label; `detail` says what was done.
    MultiFace,
    /// A labelled face that no detection matched.
    Missed,
    NoLandmarks,
    /// Landmarks that give no usable transform (all in one point, crop outside the image).
    BadLandmarks,
    /// The whole image was used as the crop (`--no-face whole`).
    WholeImage,
}

impl NoteKind {
    /// Whether a face was lost (as opposed to a remark on how it was cut).
    pub fn lost(self) -> bool {
        !matches!(self, NoteKind::MultiFace | NoteKind::WholeImage)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Note {
    pub source: String,
    pub kind: NoteKind,
    pub detail: String,
}

/// One finished image in the journal.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Entry {
    key: String,
    rows: Vec<ManifestRow>,
    notes: Vec<Note>,
    /// Mean landmark error of matched detections against the dataset's landmarks, divided by
    /// the inter-ocular distance (one value per matched face).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    nme: Vec<f32>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct JournalHeader {
    prepare: PrepareOptions,
}

/// What `prepare` did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub images: usize,
    pub faces_labelled: usize,
    pub crops: usize,
    pub per_split: BTreeMap<String, usize>,
    pub per_class: BTreeMap<String, usize>,
    /// Images taken from the journal of an earlier, interrupted run.
    pub resumed: usize,
    /// Training labels flipped by `--flip-rate`.
    pub flipped: usize,
    pub counts: BTreeMap<String, usize>,
    /// Detected landmarks against the dataset's own (normalised mean error), when both exist.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub landmark_nme_mean: Option<f32>,
    pub notes: Vec<Note>,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "prepared {} crops from {} images ({} labelled faces{})",
            self.crops,
            self.images,
            self.faces_labelled,
            if self.resumed > 0 {
                format!(", {} images from the earlier run's journal", self.resumed)
            } else {
                String::new()
            }
        )?;
        let splits: Vec<String> = self
            .per_split
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        writeln!(f, "  splits: {}", splits.join(", "))?;
        let classes: Vec<String> = self
            .per_class
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        writeln!(f, "  classes: {}", classes.join(", "))?;
        if let Some(nme) = self.landmark_nme_mean {
            writeln!(
                f,
                "  detected vs given landmarks: mean error {:.1}% of the eye distance",
                nme * 100.0
            )?;
        }
        if self.flipped > 0 {
            writeln!(
                f,
                "  training labels flipped: {} (label-flips.jsonl)",
                self.flipped
            )?;
        }
        for (k, v) in &self.counts {
            writeln!(f, "  {k}: {v}")?;
        }
        Ok(())
    }
}

/// Reads the source, cuts every face, writes the dataset into `out`, returns the report (also
/// written to `out/prepare-report.json`).
pub fn prepare(opts: &PrepareOptions, rt: &Runtime, out: &Path) -> Result<Report> {
    let source = read_source(opts)?;
    let (done, resumed) = cut_faces(opts, rt, out, &source, |_| true)?;
    assemble(opts, out, &source, done, resumed)
}

/// The options checked and the source read, with its keys unique.
fn read_source(opts: &PrepareOptions) -> Result<Source> {
    if !(32..=1024).contains(&opts.size) {
        bail!("--size must be in 32..=1024, got {}", opts.size);
    }
    if !(0.0..=1.0).contains(&opts.flip_rate) {
        bail!("--flip-rate must be in [0, 1], got {}", opts.flip_rate);
    }
    if !(0.0..1.0).contains(&opts.test_share) {
        bail!("--test-share must be in [0, 1), got {}", opts.test_share);
    }
    if !(0.0..1.0).contains(&opts.val_share) || opts.test_share + opts.val_share >= 1.0 {
        bail!(
            "--val-share must be in [0, 1) and leave training data (--test-share {} + --val-share {})",
            opts.test_share,
            opts.val_share
        );
    }
    let source = formats::read(opts)?;
    if source.items.is_empty() {
        bail!(
            "no usable images found in {} as format {:?}{}",
            opts.root.display(),
            opts.format,
            source
                .rejected
                .first()
                .map(|n| format!(" (first problem: {}: {})", n.source, n.detail))
                .unwrap_or_default()
        );
    }
    let keys: std::collections::HashSet<&str> =
        source.items.iter().map(|i| i.key.as_str()).collect();
    if keys.len() != source.items.len() {
        bail!(
            "internal error: the {:?} reader produced duplicate keys",
            opts.format
        );
    }
    Ok(source)
}

/// Cuts the faces of the source items `wanted` (by position in source order) that `out`'s
/// journal does not have yet, appending each to the journal as it finishes. Returns every
/// journaled entry and how many were there before.
fn cut_faces(
    opts: &PrepareOptions,
    rt: &Runtime,
    out: &Path,
    source: &Source,
    wanted: impl Fn(usize) -> bool,
) -> Result<(HashMap<String, Entry>, usize)> {
    std::fs::create_dir_all(out.join("images"))
        .with_context(|| format!("cannot create {}", out.display()))?;

    let journal_path = out.join(JOURNAL_FILE);
    let mut done = read_journal(&journal_path, opts)?;
    let resumed = done.len();
    let mut journal = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&journal_path)
        .with_context(|| format!("cannot open {}", journal_path.display()))?;
    if resumed == 0 {
        // A fresh journal (a torn one from a crash before the first image is rewritten).
        journal.set_len(0)?;
        serde_json::to_writer(
            &mut journal,
            &JournalHeader {
                prepare: opts.clone(),
            },
        )?;
        journal.write_all(b"\n")?;
    } else {
        // A crash may have torn the last line: start on a fresh one.
        journal.write_all(b"\n")?;
    }
    let journal = Mutex::new(journal);

    let todo: Vec<&Item> = source
        .items
        .iter()
        .enumerate()
        .filter(|&(k, i)| wanted(k) && !done.contains_key(&i.key))
        .map(|(_, i)| i)
        .collect();
    let threads = rt.threads.max(1);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .context("cannot start the worker threads")?;
    let needs_detector = opts.landmarks == LandmarkSource::Detect
        && todo.iter().any(|i| !i.pre_aligned && !i.faces.is_empty());
    let detectors: Vec<Mutex<Detector>> = if needs_detector {
        let config = DetectorConfig {
            score_threshold: opts.det_threshold,
            ..Default::default()
        };
        (0..threads)
            .map(|_| Detector::load(&rt.detector, rt.engine, 1, config).map(Mutex::new))
            .collect::<std::result::Result<_, _>>()
            .with_context(|| {
                format!(
                    "cannot load the face detector {} (or pass --landmarks given when the \
                     dataset ships landmarks)",
                    rt.detector.display()
                )
            })?
    } else {
        Vec::new()
    };

    let pb = crate::util::progress(todo.len() as u64, "prepare");
    let fresh: Vec<Entry> = pool.install(|| {
        todo.par_iter()
            .map(|item| {
                let mut detector = detectors
                    .get(rayon::current_thread_index().unwrap_or(0) % threads.max(1))
                    .map(|d| d.lock().expect("detector lock"));
                let entry = process(item, opts, out, detector.as_deref_mut())?;
                let mut line = serde_json::to_vec(&entry)?;
                line.push(b'\n');
                {
                    let mut j = journal.lock().expect("journal lock");
                    j.write_all(&line)
                        .and_then(|_| j.flush())
                        .context("cannot append to the journal")?;
                }
                pb.inc(1);
                Ok(entry)
            })
            .collect::<Result<Vec<_>>>()
    })?;
    pb.finish_and_clear();
    for e in fresh {
        done.insert(e.key.clone(), e);
    }
    Ok((done, resumed))
}

/// The dataset from every item's journaled entry: splits, label flips, manifest, report.
fn assemble(
    opts: &PrepareOptions,
    out: &Path,
    source: &Source,
    done: HashMap<String, Entry>,
    resumed: usize,
) -> Result<Report> {
    // Assemble in source order, so the manifest does not depend on scheduling.
    let mut rows = Vec::new();
    let mut notes = source.rejected.clone();
    let mut nme = Vec::new();
    for item in &source.items {
        let e = &done[&item.key];
        rows.extend(e.rows.iter().cloned());
        notes.extend(e.notes.iter().cloned());
        nme.extend(&e.nme);
    }
    if rows.is_empty() {
        bail!(
            "no face could be prepared from {} images (first problem: {})",
            source.items.len(),
            notes
                .first()
                .map(|n| format!("{}: {}", n.source, n.detail))
                .unwrap_or_default()
        );
    }
    let flips = flip_training_labels(&mut rows, source.classes.len(), opts);
    crate::util::write_jsonl(&out.join(FLIPS_FILE), &flips)?;
    let info = DatasetInfo {
        name: source.name.clone(),
        classes: source.classes.clone(),
        image_size: opts.size,
        template_id: source.template_id.clone(),
        source: serde_json::json!({ "format": opts.format, "prepare": opts }),
    };
    crate::data::manifest::Dataset::write(out, &info, &rows)?;

    let mut counts = BTreeMap::new();
    for n in &notes {
        *counts
            .entry(
                serde_json::to_value(n.kind)?
                    .as_str()
                    .unwrap_or("?")
                    .to_string(),
            )
            .or_insert(0) += 1;
    }
    let mut per_split = BTreeMap::new();
    let mut per_class = BTreeMap::new();
    for r in &rows {
        *per_split.entry(r.split.to_string()).or_insert(0) += 1;
        *per_class
            .entry(source.classes[r.label].clone())
            .or_insert(0) += 1;
    }
    let report = Report {
        images: source.items.len(),
        faces_labelled: source.items.iter().map(|i| i.faces.len().max(1)).sum(),
        crops: rows.len(),
        per_split,
        per_class,
        resumed,
        flipped: flips.len(),
        counts,
        landmark_nme_mean: (!nme.is_empty()).then(|| nme.iter().sum::<f32>() / nme.len() as f32),
        notes,
    };
    crate::util::write_atomic(
        &out.join(REPORT_FILE),
        serde_json::to_string_pretty(&report)?.as_bytes(),
    )?;
    tracing::debug!("wrote {}", out.join(MANIFEST_FILE).display());
    Ok(report)
}

/// Finished entries of an earlier run with the same options (empty without a journal).
fn read_journal(path: &Path, opts: &PrepareOptions) -> Result<HashMap<String, Entry>> {
    let mut done = HashMap::new();
    let Ok(file) = std::fs::File::open(path) else {
        return Ok(done);
    };
    let mut lines = std::io::BufReader::new(file).lines();
    let Some(Ok(first)) = lines.next() else {
        return Ok(done);
    };
    let Ok(header) = serde_json::from_str::<JournalHeader>(&first) else {
        return Ok(done);
    };
    if header.prepare != *opts {
        let (before, now) = (
            serde_json::to_value(&header.prepare)?,
            serde_json::to_value(opts)?,
        );
        let changed: Vec<String> = now
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(k, v)| before.get(k.as_str()) != Some(v))
            .map(|(k, v)| format!("{k}: {} then, {v} now", before[k.as_str()]))
            .collect();
        bail!(
            "{} was prepared with other options ({}); use another --out, or delete {} to \
             start over",
            path.parent().unwrap_or(path).display(),
            changed.join("; "),
            path.display()
        );
    }
    for line in lines {
        let line = line.with_context(|| format!("cannot read {}", path.display()))?;
        // A torn last line (the run was killed mid-write) is simply redone.
        if let Ok(e) = serde_json::from_str::<Entry>(&line) {
            done.insert(e.key.clone(), e);
        }
    }
    Ok(done)
}

fn load_pixels(p: &Pixels) -> Result<RgbImage, String> {
    match p {
        Pixels::File(path) => {
            let bytes =
                std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            image_io::decode(&bytes, &DecodeLimits::default()).map_err(|e| e.to_string())
        }
        Pixels::Gray {
            width,
            height,
            data,
        } => image::GrayImage::from_raw(*width, *height, data.clone())
            .map(|g| image::DynamicImage::ImageLuma8(g).to_rgb8())
            .ok_or_else(|| format!("{} values for a {width}x{height} image", data.len())),
    }
}

/// Mean landmark distance divided by the inter-ocular distance of `truth`.
fn nme(a: &[[f32; 2]; 5], truth: &[[f32; 2]; 5]) -> f32 {
    let iod = (truth[1][0] - truth[0][0])
        .hypot(truth[1][1] - truth[0][1])
        .max(1.0);
    a.iter()
        .zip(truth)
        .map(|(p, q)| (p[0] - q[0]).hypot(p[1] - q[1]))
        .sum::<f32>()
        / 5.0
        / iod
}

/// How well detection `d` fits labelled face `f` (higher is better; None: not the same face).
fn match_score(f: &FaceLabel, d: &Detection) -> Option<f32> {
    if let Some(lm) = &f.landmarks {
        let e = nme(&d.landmarks, lm);
        return (e < 0.5).then_some(-e);
    }
    if let Some(b) = &f.bbox {
        let o = iou(b, &d.bbox);
        return (o > 0.3).then_some(o);
    }
    None
}

/// The landmarks to align each labelled face with (None: lost, with a note).
// Long: one match over the landmark sources (detector, given landmarks, given boxes), each with
// its own matching rule and notes.
fn locate_faces(
    item: &Item,
    img: &RgbImage,
    opts: &PrepareOptions,
    detector: Option<&mut Detector>,
    notes: &mut Vec<Note>,
    nmes: &mut Vec<f32>,
) -> Result<Vec<Option<[[f32; 2]; 5]>>> {
    let note = |kind, detail: String| Note {
        source: item.source.clone(),
        kind,
        detail,
    };
    if opts.landmarks == LandmarkSource::Given {
        return Ok(item
            .faces
            .iter()
            .enumerate()
            .map(|(k, f)| {
                if f.landmarks.is_none() {
                    notes.push(note(
                        NoteKind::NoLandmarks,
                        format!("face {k}: the dataset gives no landmarks for it"),
                    ));
                }
                f.landmarks
            })
            .collect());
    }
    let detector = detector.context("internal error: no detector")?;
    let dets = detector.detect(img)?;
    let hinted = item
        .faces
        .iter()
        .any(|f| f.landmarks.is_some() || f.bbox.is_some());
    if !hinted {
        // One label for the image: the rules for no face and several faces.
        let chosen = match dets.len() {
            0 => {
                notes.push(note(NoteKind::NoFace, "no face detected".into()));
                None
            }
            1 => Some(dets[0].landmarks),
            n => match opts.multi_face {
                MultiFace::Largest => {
                    let area = |d: &Detection| (d.bbox[2] - d.bbox[0]) * (d.bbox[3] - d.bbox[1]);
                    let best = dets
                        .iter()
                        .max_by(|a, b| area(a).total_cmp(&area(b)))
                        .expect("n > 1");
                    notes.push(note(
                        NoteKind::MultiFace,
                        format!("{n} faces detected, kept the largest"),
                    ));
                    Some(best.landmarks)
                }
                MultiFace::Skip => {
                    notes.push(note(
                        NoteKind::MultiFace,
                        format!("{n} faces detected, image skipped (--multi-face skip)"),
                    ));
                    None
                }
            },
        };
        return Ok(item.faces.iter().map(|_| chosen).collect());
    }
    // The dataset says where its faces are: pair faces and detections, best pairs first.
    let mut pairs: Vec<(f32, usize, usize)> = Vec::new();
    for (fi, f) in item.faces.iter().enumerate() {
        for (di, d) in dets.iter().enumerate() {
            if let Some(s) = match_score(f, d) {
                pairs.push((s, fi, di));
            }
        }
    }
    pairs.sort_by(|a, b| b.0.total_cmp(&a.0));
    let mut face_det = vec![None; item.faces.len()];
    let mut used = vec![false; dets.len()];
    for (_, fi, di) in pairs {
        if face_det[fi].is_none() && !used[di] {
            face_det[fi] = Some(di);
            used[di] = true;
        }
    }
    Ok(face_det
        .iter()
        .enumerate()
        .map(|(fi, m)| match m {
            Some(di) => {
                if let Some(lm) = &item.faces[fi].landmarks {
                    nmes.push(nme(&dets[*di].landmarks, lm));
                }
                Some(dets[*di].landmarks)
            }
            None => {
                notes.push(note(
                    NoteKind::Missed,
                    format!(
                        "face {fi}: not detected ({} detections, none at its place)",
                        dets.len()
                    ),
                ));
                None
            }
        })
        .collect())
}

/// A face's aligned crop and its landmarks in crop pixels (None for whole-image crops).
type Crop = (RgbImage, Option<[[f32; 2]; 5]>);

/// Cuts every face of one image and writes the crops.
fn process(
    item: &Item,
    opts: &PrepareOptions,
    out: &Path,
    detector: Option<&mut Detector>,
) -> Result<Entry> {
    let mut entry = Entry {
        key: item.key.clone(),
        rows: Vec::new(),
        notes: Vec::new(),
        nme: Vec::new(),
    };
    let img = match load_pixels(&item.pixels) {
        Ok(img) => img,
        Err(reason) => {
            entry.notes.push(Note {
                source: item.source.clone(),
                kind: NoteKind::Unreadable,
                detail: reason,
            });
            return Ok(entry);
        }
    };
    let size = opts.size;
    // dmue's one resizer, as the classifier transform uses (an empty image cannot reach here:
    // decoding refuses it).
    let whole = |img: &RgbImage| {
        dmue_deploy::preprocess::resize_square(img, size).unwrap_or_else(|_| img.clone())
    };
    let crops: Vec<Option<Crop>> = if item.pre_aligned {
        item.faces
            .iter()
            .map(|_| Some((whole(&img), None)))
            .collect()
    } else {
        let located = locate_faces(item, &img, opts, detector, &mut entry.notes, &mut entry.nme)?;
        let no_face = entry.notes.iter().any(|n| n.kind == NoteKind::NoFace);
        located
            .into_iter()
            .enumerate()
            .map(|(k, lm)| match lm {
                Some(lm) => match align(&img, &lm, size) {
                    Some((crop, t)) => Some((crop, Some(lm.map(|p| t.apply(p))))),
                    None => {
                        entry.notes.push(Note {
                            source: item.source.clone(),
                            kind: NoteKind::BadLandmarks,
                            detail: format!("face {k}: landmarks {lm:?} give no usable alignment"),
                        });
                        None
                    }
                },
                None if no_face && opts.no_face == NoFace::Whole => {
                    entry.notes.push(Note {
                        source: item.source.clone(),
                        kind: NoteKind::WholeImage,
                        detail: "no face detected: the whole image was used".into(),
                    });
                    Some((whole(&img), None))
                }
                None => None,
            })
            .collect()
    };
    for (k, (face, crop)) in item.faces.iter().zip(crops).enumerate() {
        let Some((crop, landmarks)) = crop else {
            continue;
        };
        let rel = if item.faces.len() == 1 {
            format!("images/{}.png", item.key)
        } else {
            format!("images/{}_f{k}.png", item.key)
        };
        let path = out.join(&rel);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        // Written under a temporary name, then renamed: a crop on disk is always whole.
        let tmp = crate::util::tmp_path(&path);
        crop.save_with_format(&tmp, image::ImageFormat::Png)
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        std::fs::rename(&tmp, &path).with_context(|| format!("cannot write {}", path.display()))?;
        entry.rows.push(ManifestRow {
            path: rel,
            label: face.label,
            split: item.split,
            source: Some(item.source.clone()),
            landmarks,
            truth: face.truth.clone(),
            votes: face.votes.clone(),
            original_label: None,
            relabelled_from: None,
        });
    }
    Ok(entry)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nme_and_iou_by_hand() {
        let t = [[0.0, 0.0], [10.0, 0.0], [5.0, 5.0], [2.0, 9.0], [8.0, 9.0]];
        let mut a = t;
        a[2][0] += 5.0; // one point off by 5 px: mean 1 px, over 10 px eye distance
        assert!((nme(&a, &t) - 0.1).abs() < 1e-6);
        // 10x10 boxes overlapping by 5x10: 50 / 150.
        assert!((iou(&[0.0, 0.0, 10.0, 10.0], &[5.0, 0.0, 15.0, 10.0]) - 1.0 / 3.0).abs() < 1e-6);
    }
}
