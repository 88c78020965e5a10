//! Dataset readers for `prepare`: each turns a dataset as distributed into [`Item`]s, with
//! the dataset's own label order and class names (never re-typed elsewhere).

use super::{FaceLabel, Item, Note, NoteKind, Pixels, PrepareOptions, Source};
use crate::data::manifest::{Split, DATASET_FILE};
use crate::synth::{PhotoRow, PHOTOS_FILE};
use anyhow::{bail, Context, Result};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::BufRead;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// ROOT/<class>/*.jpg, or ROOT/<split>/<class>/*.jpg with split folders train, val, test.
    Folder,
    /// A CSV file (or ROOT/labels.csv) with columns path,label[,split]; paths relative to it.
    Csv,
    /// Synthetic photos from `dmue-train synth --mode photo` (ground-truth landmarks included).
    Synth,
    /// RAF-DB basic: EmoLabel/list_patition_label.txt + Image/original (or Image/aligned).
    Rafdb,
    /// AffectNet: training.csv / validation.csv (face box, 68 landmarks) + the images.
    Affectnet,
    /// FERPlus: fer2013.csv (48x48 pixels) + fer2013new.csv (10 votes per image).
    Ferplus,
    /// SFEW 2.0: Train/<Class>/ and Val/<Class>/ folders.
    Sfew,
}

/// File extensions read as images.
const IMAGE_EXTENSIONS: [&str; 9] = [
    "jpg", "jpeg", "png", "bmp", "webp", "tif", "tiff", "gif", "pgm",
];

/// Reads the dataset at `opts.root` in `opts.format`.
pub fn read(opts: &PrepareOptions) -> Result<Source> {
    if !opts.root.exists() {
        bail!("{} does not exist", opts.root.display());
    }
    let mut source = match opts.format {
        Format::Folder => folder(opts)?,
        Format::Csv => csv_list(opts)?,
        Format::Synth => synth(opts)?,
        Format::Rafdb => rafdb(opts)?,
        Format::Affectnet => affectnet(opts)?,
        Format::Ferplus => ferplus(opts)?,
        Format::Sfew => sfew(opts)?,
    };
    let groups = match &opts.group_by {
        Some(r) => Some(
            regex::Regex::new(r)
                .with_context(|| format!("--group-by: {r:?} is not a valid regex"))?,
        ),
        None => None,
    };
    if opts.test_share > 0.0 {
        if source.items.iter().any(|i| i.split == Split::Test) {
            bail!("--test-share: the dataset already has a test split");
        }
        let seed = opts.seed ^ 0x7E57;
        match &groups {
            Some(re) => move_groups(&mut source.items, opts.test_share, seed, Split::Test, re)?,
            None => move_share(&mut source.items, opts.test_share, seed, Split::Test),
        }
    }
    if opts.val_share > 0.0 {
        if source.items.iter().any(|i| i.split == Split::Val) {
            bail!("--val-share: the dataset already has a validation split");
        }
        let seed = opts.seed ^ 0x7A1;
        match &groups {
            Some(re) => move_groups(&mut source.items, opts.val_share, seed, Split::Val, re)?,
            None => move_share(&mut source.items, opts.val_share, seed, Split::Val),
        }
    }
    Ok(source)
}

/// The group of a source path under `--group-by`: the first capture group, or the whole match.
fn group_of<'a>(re: &regex::Regex, source: &'a str) -> Option<&'a str> {
    let c = re.captures(source)?;
    c.get(1).or_else(|| c.get(0)).map(|m| m.as_str())
}

/// Moves whole groups of training images (see `PrepareOptions::group_by`) to `to`, in a seeded
/// random order, until at least `share` of them have moved. Not stratified by class: a group
/// (one person) usually spans several classes.
fn move_groups(
    items: &mut [Item],
    share: f32,
    seed: u64,
    to: Split,
    re: &regex::Regex,
) -> Result<()> {
    let mut by_group: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    let mut eligible = 0;
    for (i, item) in items.iter().enumerate() {
        if item.split != Split::Train || item.faces.len() != 1 {
            continue;
        }
        let g = group_of(re, &item.source).with_context(|| {
            format!(
                "--group-by {:?} does not match {:?}: every image needs a group",
                re.as_str(),
                item.source
            )
        })?;
        by_group.entry(g).or_default().push(i);
        eligible += 1;
    }
    let mut order: Vec<Vec<usize>> = by_group.into_values().collect();
    order.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(seed));
    let wanted = (share * eligible as f32).round() as usize;
    let mut moved = 0;
    for group in order {
        if moved >= wanted {
            break;
        }
        moved += group.len();
        for i in group {
            items[i].split = to;
        }
    }
    Ok(())
}

fn is_image(p: &Path) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

/// Sorted subdirectories of `dir`.
fn subdirs(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    out.sort();
    Ok(out)
}

/// Every image file under `dir` (recursively), sorted.
fn images_under(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).with_context(|| format!("cannot list {}", d.display()))? {
            let p = e?.path();
            if p.is_dir() {
                stack.push(p);
            } else if is_image(&p) {
                out.push(p);
            }
        }
    }
    out.sort();
    Ok(out)
}

fn name_of(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn split_named(name: &str) -> Option<Split> {
    match name.to_ascii_lowercase().as_str() {
        "train" | "training" => Some(Split::Train),
        "val" | "valid" | "validation" => Some(Split::Val),
        "test" | "testing" => Some(Split::Test),
        _ => None,
    }
}

/// A crop name from a source path relative to the root: unique per path, readable.
fn key_for(rel: &Path) -> String {
    let s = rel.to_string_lossy().replace('\\', "/");
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '/' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn rel_to(root: &Path, p: &Path) -> PathBuf {
    p.strip_prefix(root).unwrap_or(p).to_path_buf()
}

/// Class order: `--classes` when given (entries of other classes are then rejected), else
/// the names `found`, sorted.
fn class_order(opts: &PrepareOptions, found: &BTreeSet<String>) -> Vec<String> {
    match &opts.classes {
        Some(given) => given.clone(),
        None => found.iter().cloned().collect(),
    }
}

fn one_face(label: usize) -> Vec<FaceLabel> {
    vec![FaceLabel {
        label,
        ..Default::default()
    }]
}

/// Moves round(share * n) images of each class from train to test (seeded).
/// Moves `share` of each class's single-face training items to split `to` (seeded).
fn move_share(items: &mut [Item], share: f32, seed: u64, to: Split) {
    let mut by_class: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for (i, item) in items.iter().enumerate() {
        if item.split == Split::Train && item.faces.len() == 1 {
            by_class.entry(item.faces[0].label).or_default().push(i);
        }
    }
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    for (_, mut idx) in by_class {
        idx.shuffle(&mut rng);
        let n = (share * idx.len() as f32).round() as usize;
        for &i in &idx[..n] {
            items[i].split = to;
        }
    }
}

/// Items for `root/<class>/...` folders of one split; classes are resolved later.
fn class_folders(
    root: &Path,
    dir: &Path,
    split: Split,
    out: &mut Vec<(String, Item)>,
) -> Result<()> {
    for class_dir in subdirs(dir)? {
        let class = name_of(&class_dir);
        for p in images_under(&class_dir)? {
            let rel = rel_to(root, &p);
            out.push((
                class.clone(),
                Item {
                    key: file_key(&rel),
                    source: rel.to_string_lossy().into_owned(),
                    pixels: Pixels::File(p.clone()),
                    split,
                    faces: Vec::new(),
                    pre_aligned: false,
                },
            ));
        }
    }
    Ok(())
}

/// [`key_for`] of an image file's path, its extension kept (`a.jpg` and `a.png` stay apart).
fn file_key(rel: &Path) -> String {
    let ext = rel
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    key_for(&rel.with_extension("")) + "_" + &ext
}

/// Gives each (class name, item) its label in `classes`; items of other classes are rejected.
fn label_items(classes: &[String], named: Vec<(String, Item)>) -> (Vec<Item>, Vec<Note>) {
    let index: HashMap<&str, usize> = classes
        .iter()
        .enumerate()
        .map(|(i, c)| (c.as_str(), i))
        .collect();
    let (mut items, mut rejected) = (Vec::new(), Vec::new());
    for (c, mut item) in named {
        match index.get(c.as_str()) {
            Some(&label) => {
                item.faces = one_face(label);
                items.push(item);
            }
            None => rejected.push(reject(
                &item.source,
                format!("class {c:?} is not one of {classes:?}"),
            )),
        }
    }
    (items, rejected)
}

fn folder(opts: &PrepareOptions) -> Result<Source> {
    let root = &opts.root;
    let top = subdirs(root)?;
    if top.is_empty() {
        bail!(
            "{} has no subfolders: the folder format is ROOT/<class>/*.jpg or \
             ROOT/<split>/<class>/*.jpg",
            root.display()
        );
    }
    let mut named = Vec::new();
    if top.iter().all(|d| split_named(&name_of(d)).is_some()) {
        for d in &top {
            class_folders(
                root,
                d,
                split_named(&name_of(d)).expect("checked"),
                &mut named,
            )?;
        }
    } else {
        class_folders(root, root, Split::Train, &mut named)?;
    }
    let found: BTreeSet<String> = named.iter().map(|(c, _)| c.clone()).collect();
    let classes = class_order(opts, &found);
    if classes.len() < 2 {
        bail!(
            "{} has images of {} class(es); at least 2 are needed",
            root.display(),
            classes.len()
        );
    }
    let (items, rejected) = label_items(&classes, named);
    Ok(Source {
        name: format!("folder:{}", name_of(root)),
        classes,
        template_id: dmue_deploy::face::TEMPLATE_ID.into(),
        items,
        rejected,
    })
}

fn csv_list(opts: &PrepareOptions) -> Result<Source> {
    let file = if opts.root.is_dir() {
        opts.root.join("labels.csv")
    } else {
        opts.root.clone()
    };
    let base = file.parent().unwrap_or(Path::new(".")).to_path_buf();
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_path(&file)
        .with_context(|| format!("cannot open {}", file.display()))?;
    let headers = reader.headers()?.clone();
    let col = |name: &str| headers.iter().position(|h| h.eq_ignore_ascii_case(name));
    let (Some(pc), Some(lc)) = (col("path"), col("label")) else {
        bail!(
            "{} must start with a header naming the columns path,label[,split] (found {:?})",
            file.display(),
            headers.iter().collect::<Vec<_>>()
        );
    };
    let sc = col("split");
    let mut rows = Vec::new();
    let mut rejected = Vec::new();
    for (i, rec) in reader.records().enumerate() {
        let line = i + 2;
        let where_ = format!("{}:{line}", name_of(&file));
        let rec = match rec {
            Ok(r) => r,
            Err(e) => {
                rejected.push(reject(&where_, e.to_string()));
                continue;
            }
        };
        let (path, label) = (rec.get(pc).unwrap_or(""), rec.get(lc).unwrap_or(""));
        if path.is_empty() || label.is_empty() {
            rejected.push(reject(&where_, "empty path or label".into()));
            continue;
        }
        let split = match sc.and_then(|c| rec.get(c)).filter(|s| !s.is_empty()) {
            None => Split::Train,
            Some(s) => match split_named(s) {
                Some(s) => s,
                None => {
                    rejected.push(reject(&where_, format!("unknown split {s:?}")));
                    continue;
                }
            },
        };
        rows.push((where_, PathBuf::from(path), label.to_string(), split));
    }
    // Labels are class names, or indices into --classes.
    let numeric = rows.iter().all(|r| r.2.parse::<usize>().is_ok());
    let classes = if numeric && !rows.is_empty() {
        let Some(given) = &opts.classes else {
            bail!(
                "{}: the labels are numbers; name the classes in label order with --classes",
                file.display()
            );
        };
        given.clone()
    } else {
        class_order(opts, &rows.iter().map(|r| r.2.clone()).collect())
    };
    let mut items = Vec::new();
    for (where_, path, label, split) in rows {
        let idx = if numeric {
            label.parse::<usize>().ok().filter(|&l| l < classes.len())
        } else {
            classes.iter().position(|c| *c == label)
        };
        let Some(idx) = idx else {
            rejected.push(reject(&where_, format!("label {label:?} is not a class")));
            continue;
        };
        let full = if path.is_absolute() {
            path.clone()
        } else {
            base.join(&path)
        };
        items.push(Item {
            key: file_key(&path),
            source: path.to_string_lossy().into_owned(),
            pixels: Pixels::File(full),
            split,
            faces: one_face(idx),
            pre_aligned: false,
        });
    }
    dedup_keys(&mut items);
    Ok(Source {
        name: format!("csv:{}", name_of(&file)),
        classes,
        template_id: dmue_deploy::face::TEMPLATE_ID.into(),
        items,
        rejected,
    })
}

/// Listing the same path twice would make two items with one key: number the repeats.
fn dedup_keys(items: &mut [Item]) {
    let mut seen: HashMap<String, usize> = HashMap::new();
    for item in items {
        let n = seen.entry(item.key.clone()).or_insert(0);
        if *n > 0 {
            item.key = format!("{}_{n}", item.key);
        }
        *n += 1;
    }
}

fn reject(source: &str, detail: String) -> Note {
    Note {
        source: source.to_string(),
        kind: NoteKind::Rejected,
        detail,
    }
}

fn synth(opts: &PrepareOptions) -> Result<Source> {
    let root = &opts.root;
    let info: crate::data::manifest::DatasetInfo = serde_json::from_str(
        &std::fs::read_to_string(root.join(DATASET_FILE))
            .with_context(|| format!("{} is not a synthetic dataset", root.display()))?,
    )?;
    let photos = root.join(PHOTOS_FILE);
    let file = std::fs::File::open(&photos).with_context(|| {
        format!(
            "cannot open {} (render photos with `dmue-train synth --mode photo`)",
            photos.display()
        )
    })?;
    let mut items = Vec::new();
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let row: PhotoRow = serde_json::from_str(&line)
            .with_context(|| format!("{}:{}", photos.display(), i + 1))?;
        items.push(Item {
            key: key_for(
                Path::new(row.path.strip_prefix("images/").unwrap_or(&row.path))
                    .with_extension("")
                    .as_path(),
            ),
            source: row.path.clone(),
            pixels: Pixels::File(root.join(&row.path)),
            split: row.split,
            faces: row
                .faces
                .into_iter()
                .map(|f| FaceLabel {
                    label: f.label,
                    landmarks: Some(f.landmarks),
                    bbox: None,
                    truth: Some(f.truth),
                    votes: None,
                })
                .collect(),
            pre_aligned: false,
        });
    }
    Ok(Source {
        name: format!("{}-prepared", info.name),
        classes: info.classes,
        template_id: dmue_deploy::face::TEMPLATE_ID.into(),
        items,
        rejected: Vec::new(),
    })
}

/// RAF-DB basic emotion labels 1..7, in this order.
pub const RAFDB_CLASSES: [&str; 7] = [
    "Surprise",
    "Fear",
    "Disgust",
    "Happiness",
    "Sadness",
    "Anger",
    "Neutral",
];

/// Reads RAF-DB's manual 5-point annotation (`Annotation/manual/<stem>_manu_attri.txt`: five
/// "x y" lines, in our template order, then attributes).
fn rafdb_landmarks(root: &Path, stem: &str) -> Option<[[f32; 2]; 5]> {
    let text = std::fs::read_to_string(
        root.join("Annotation/manual")
            .join(format!("{stem}_manu_attri.txt")),
    )
    .ok()?;
    let mut lm = [[0f32; 2]; 5];
    let mut lines = text.lines();
    for p in &mut lm {
        let v: Vec<f32> = lines
            .next()?
            .split_whitespace()
            .filter_map(|t| t.parse().ok())
            .collect();
        *p = [*v.first()?, *v.get(1)?];
    }
    Some(lm)
}

fn rafdb(opts: &PrepareOptions) -> Result<Source> {
    let root = &opts.root;
    let list = root.join("EmoLabel/list_patition_label.txt");
    let aligned = opts
        .format_options
        .get("rafdb_images")
        .and_then(|v| v.as_str())
        == Some("aligned");
    let file = std::fs::File::open(&list).with_context(|| {
        format!(
            "cannot open {} (ROOT must be RAF-DB's basic/ folder)",
            list.display()
        )
    })?;
    let (mut items, mut rejected) = (Vec::new(), Vec::new());
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line?;
        let where_ = format!("list_patition_label.txt:{}", i + 1);
        let mut parts = line.split_whitespace();
        let (Some(name), Some(label)) = (parts.next(), parts.next()) else {
            if !line.trim().is_empty() {
                rejected.push(reject(
                    &where_,
                    format!("expected `NAME LABEL`, got {line:?}"),
                ));
            }
            continue;
        };
        let label = match label.parse::<usize>() {
            Ok(l @ 1..=7) => l - 1,
            _ => {
                rejected.push(reject(&where_, format!("label {label:?} is not in 1..7")));
                continue;
            }
        };
        let split = if name.starts_with("train_") {
            Split::Train
        } else if name.starts_with("test_") {
            Split::Test
        } else {
            rejected.push(reject(&where_, format!("{name}: neither train_ nor test_")));
            continue;
        };
        let stem = name.rsplit_once('.').map_or(name, |(s, _)| s);
        let rel = if aligned {
            PathBuf::from(format!("Image/aligned/{stem}_aligned.jpg"))
        } else {
            PathBuf::from("Image/original").join(name)
        };
        let landmarks = if aligned || opts.landmarks == super::LandmarkSource::Detect {
            None
        } else {
            rafdb_landmarks(root, stem)
        };
        items.push(Item {
            key: format!("{split}/{stem}"),
            source: rel.to_string_lossy().into_owned(),
            pixels: Pixels::File(root.join(&rel)),
            split,
            faces: vec![FaceLabel {
                label,
                landmarks,
                ..Default::default()
            }],
            pre_aligned: aligned,
        });
    }
    Ok(Source {
        name: "rafdb-basic".into(),
        classes: RAFDB_CLASSES.iter().map(|s| s.to_string()).collect(),
        // RAF-DB's own aligned crops follow its alignment, not our template.
        template_id: if aligned {
            "rafdb-aligned-100".into()
        } else {
            dmue_deploy::face::TEMPLATE_ID.into()
        },
        items,
        rejected,
    })
}

/// AffectNet expression codes 0..7 (8..10 are None, Uncertain, No-Face: dropped).
pub const AFFECTNET_CLASSES: [&str; 8] = [
    "Neutral", "Happy", "Sad", "Surprise", "Fear", "Disgust", "Anger", "Contempt",
];

/// The 5 template points from the 68 iBUG landmarks: eye centres (36-41, 42-47), nose tip
/// (30), mouth corners (48, 54).
pub fn five_from_68(p: &[[f32; 2]]) -> Option<[[f32; 2]; 5]> {
    if p.len() != 68 {
        return None;
    }
    let mean = |r: std::ops::Range<usize>| {
        let n = r.len() as f32;
        let (sx, sy) = p[r]
            .iter()
            .fold((0.0, 0.0), |a, q| (a.0 + q[0], a.1 + q[1]));
        [sx / n, sy / n]
    };
    Some([mean(36..42), mean(42..48), p[30], p[48], p[54]])
}

fn first_existing(root: &Path, candidates: &[&str]) -> Option<PathBuf> {
    candidates.iter().map(|c| root.join(c)).find(|p| p.exists())
}

// Long: one CSV format read column by column, with its class codes, boxes and landmarks validated
// in place so that every error names its line.
fn affectnet(opts: &PrepareOptions) -> Result<Source> {
    let root = &opts.root;
    let n_classes = opts
        .format_options
        .get("affectnet_classes")
        .and_then(|v| v.as_u64())
        .unwrap_or(7) as usize;
    if n_classes != 7 && n_classes != 8 {
        bail!("--affectnet-classes must be 7 or 8, got {n_classes}");
    }
    let images = first_existing(
        root,
        &[
            "Manually_Annotated_Images",
            "Manually_Annotated/Manually_Annotated_Images",
        ],
    )
    .with_context(|| {
        format!(
            "no Manually_Annotated_Images folder in {} (ROOT must be the AffectNet folder)",
            root.display()
        )
    })?;
    let (mut items, mut rejected) = (Vec::new(), Vec::new());
    let mut dropped = BTreeMap::new();
    for (csv_name, split) in [
        ("training.csv", Split::Train),
        ("validation.csv", Split::Test),
    ] {
        let Some(file) = first_existing(
            root,
            &[
                csv_name,
                &format!("Manually_Annotated_file_lists/{csv_name}"),
            ],
        ) else {
            bail!("{csv_name} not found in {}", root.display());
        };
        // validation.csv ships without a header in some copies: name the columns ourselves.
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .from_path(&file)
            .with_context(|| format!("cannot open {}", file.display()))?;
        for (i, rec) in reader.records().enumerate() {
            let where_ = format!("{csv_name}:{}", i + 1);
            let rec = match rec {
                Ok(r) => r,
                Err(e) => {
                    rejected.push(reject(&where_, e.to_string()));
                    continue;
                }
            };
            if rec.get(0) == Some("subDirectory_filePath") {
                continue;
            }
            let field = |k: usize| rec.get(k).unwrap_or("").trim();
            let parsed = (|| -> Result<(usize, [f32; 4], Vec<[f32; 2]>)> {
                let num = |k: usize| -> Result<f32> {
                    field(k).parse::<f32>().with_context(|| {
                        format!("column {} is {:?}, not a number", k + 1, field(k))
                    })
                };
                let code = field(6)
                    .parse::<usize>()
                    .with_context(|| format!("expression {:?} is not a code", field(6)))?;
                let (x, y, w, h) = (num(1)?, num(2)?, num(3)?, num(4)?);
                let pts: Vec<f32> = field(5)
                    .split(';')
                    .filter(|t| !t.is_empty())
                    .map(|t| t.trim().parse::<f32>())
                    .collect::<std::result::Result<_, _>>()
                    .unwrap_or_default();
                Ok((
                    code,
                    [x, y, x + w, y + h],
                    pts.chunks_exact(2).map(|c| [c[0], c[1]]).collect(),
                ))
            })();
            let (code, bbox, pts) = match parsed {
                Ok(v) => v,
                Err(e) => {
                    rejected.push(reject(&where_, format!("{e:#}")));
                    continue;
                }
            };
            if code >= n_classes {
                *dropped.entry(code).or_insert(0usize) += 1;
                continue;
            }
            items.push(Item {
                key: format!(
                    "{split}/{}",
                    key_for(Path::new(field(0)).with_extension("").as_path())
                ),
                source: field(0).to_string(),
                pixels: Pixels::File(images.join(field(0))),
                split,
                faces: vec![FaceLabel {
                    label: code,
                    landmarks: five_from_68(&pts),
                    bbox: Some(bbox),
                    ..Default::default()
                }],
                pre_aligned: false,
            });
        }
    }
    for (code, n) in dropped {
        let what = match code {
            7 => "Contempt (7-class variant)",
            8 => "None",
            9 => "Uncertain",
            10 => "No-Face",
            _ => "unknown code",
        };
        rejected.push(reject(
            "training.csv/validation.csv",
            format!("{n} rows with expression code {code} ({what}) dropped"),
        ));
    }
    dedup_keys(&mut items);
    Ok(Source {
        name: format!("affectnet-{n_classes}"),
        classes: AFFECTNET_CLASSES[..n_classes]
            .iter()
            .map(|s| s.to_string())
            .collect(),
        template_id: dmue_deploy::face::TEMPLATE_ID.into(),
        items,
        rejected,
    })
}

/// FERPlus vote columns 2..11 of fer2013new.csv: the 8 emotions, then unknown and NF.
pub const FERPLUS_CLASSES: [&str; 8] = [
    "neutral",
    "happiness",
    "surprise",
    "sadness",
    "anger",
    "disgust",
    "fear",
    "contempt",
];

/// The FERPlus majority vote over 10 counts: the label, or why the image is dropped (a tie
/// for the top count, or the top being unknown / not a face).
pub fn ferplus_majority(votes: &[f32; 10]) -> std::result::Result<usize, &'static str> {
    let max = votes.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if max <= 0.0 {
        return Err("no votes");
    }
    let top: Vec<usize> = (0..10).filter(|&k| votes[k] == max).collect();
    if top.len() > 1 {
        return Err("tie for the most votes");
    }
    match top[0] {
        8 => Err("majority says unknown"),
        9 => Err("majority says not a face"),
        k => Ok(k),
    }
}

// Long: one CSV format read column by column (votes, majority, usage), with every error naming
// its line.
fn ferplus(opts: &PrepareOptions) -> Result<Source> {
    let root = &opts.root;
    let old = root.join("fer2013.csv");
    let new = root.join("fer2013new.csv");
    let mut old_r = csv::Reader::from_path(&old).with_context(|| {
        format!(
            "cannot open {} (ROOT holds fer2013.csv and fer2013new.csv)",
            old.display()
        )
    })?;
    let mut new_r =
        csv::Reader::from_path(&new).with_context(|| format!("cannot open {}", new.display()))?;
    let (mut items, mut rejected) = (Vec::new(), Vec::new());
    let mut dropped: BTreeMap<&'static str, usize> = BTreeMap::new();
    let mut old_iter = old_r.records();
    for (i, rec) in new_r.records().enumerate() {
        let where_ = format!("fer2013new.csv:{}", i + 2);
        let (rec, pix) = match (rec, old_iter.next()) {
            (Ok(r), Some(Ok(p))) => (r, p),
            (_, None) => bail!("fer2013.csv has fewer rows than fer2013new.csv ({where_})"),
            (Err(e), _) | (_, Some(Err(e))) => {
                rejected.push(reject(&where_, e.to_string()));
                continue;
            }
        };
        let name = rec.get(1).unwrap_or("").trim();
        if name.is_empty() {
            // FERPlus removed this image (not a face).
            *dropped
                .entry("removed by FERPlus (no image name)")
                .or_insert(0) += 1;
            continue;
        }
        let split = match rec.get(0).unwrap_or("").trim() {
            "Training" => Split::Train,
            "PublicTest" => Split::Val,
            "PrivateTest" => Split::Test,
            other => {
                rejected.push(reject(&where_, format!("unknown Usage {other:?}")));
                continue;
            }
        };
        let mut votes = [0f32; 10];
        let mut ok = rec.len() >= 12;
        for (k, v) in votes.iter_mut().enumerate() {
            match rec.get(k + 2).and_then(|t| t.trim().parse::<f32>().ok()) {
                Some(x) => *v = x,
                None => ok = false,
            }
        }
        if !ok {
            rejected.push(reject(&where_, "expected 10 vote counts".into()));
            continue;
        }
        let label = match ferplus_majority(&votes) {
            Ok(l) => l,
            Err(why) => {
                *dropped.entry(why).or_insert(0) += 1;
                continue;
            }
        };
        let data: Vec<u8> = pix
            .get(1)
            .unwrap_or("")
            .split_whitespace()
            .filter_map(|t| t.parse::<u8>().ok())
            .collect();
        if data.len() != 48 * 48 {
            rejected.push(reject(
                &where_,
                format!("fer2013.csv row has {} pixels, expected 2304", data.len()),
            ));
            continue;
        }
        let emotion_total: f32 = votes[..8].iter().sum();
        let stem = name.rsplit_once('.').map_or(name, |(s, _)| s);
        items.push(Item {
            key: format!("{split}/{}", key_for(Path::new(stem))),
            source: name.to_string(),
            pixels: Pixels::Gray {
                width: 48,
                height: 48,
                data,
            },
            split,
            faces: vec![FaceLabel {
                label,
                votes: Some(votes[..8].iter().map(|v| v / emotion_total).collect()),
                ..Default::default()
            }],
            pre_aligned: true,
        });
    }
    for (why, n) in dropped {
        rejected.push(reject(
            "fer2013new.csv",
            format!("{n} images dropped: {why}"),
        ));
    }
    Ok(Source {
        name: "ferplus".into(),
        classes: FERPLUS_CLASSES.iter().map(|s| s.to_string()).collect(),
        // FER2013's 48x48 faces are registered by its authors, not by our template.
        template_id: "fer2013-48".into(),
        items,
        rejected,
    })
}

/// SFEW 2.0 classes (its folder names).
pub const SFEW_CLASSES: [&str; 7] = [
    "Angry", "Disgust", "Fear", "Happy", "Neutral", "Sad", "Surprise",
];

fn sfew(opts: &PrepareOptions) -> Result<Source> {
    let root = &opts.root;
    let mut named = Vec::new();
    // SFEW's Test labels are not public: Val is the evaluation split, stored as test.
    for (dir, split) in [("Train", Split::Train), ("Val", Split::Test)] {
        let d = root.join(dir);
        if !d.is_dir() {
            bail!(
                "{} not found (ROOT must hold SFEW's Train/ and Val/)",
                d.display()
            );
        }
        class_folders(root, &d, split, &mut named)?;
    }
    let mut rejected = Vec::new();
    let classes: Vec<String> = SFEW_CLASSES.iter().map(|s| s.to_string()).collect();
    let (items, more) = label_items(&classes, named);
    rejected.extend(more);
    Ok(Source {
        name: "sfew-2.0".into(),
        classes,
        template_id: dmue_deploy::face::TEMPLATE_ID.into(),
        items,
        rejected,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ferplus_majority_follows_the_convention() {
        let v = |a: [f32; 10]| ferplus_majority(&a);
        assert_eq!(v([0., 6., 2., 0., 0., 0., 0., 0., 2., 0.]), Ok(1));
        assert!(v([4., 4., 2., 0., 0., 0., 0., 0., 0., 0.]).is_err()); // tie
        assert!(v([1., 0., 0., 0., 0., 0., 0., 0., 7., 2.]).is_err()); // unknown
        assert!(v([0., 0., 0., 0., 0., 0., 0., 0., 2., 8.]).is_err()); // not a face
        assert_eq!(v([0., 0., 0., 0., 0., 0., 0., 10., 0., 0.]), Ok(7));
    }

    #[test]
    fn val_share_moves_that_share_of_each_class_and_only_training_items() {
        let item = |k: usize, label: usize, split: Split| Item {
            key: format!("i{k}"),
            source: format!("i{k}.png"),
            pixels: Pixels::File(PathBuf::from(format!("i{k}.png"))),
            split,
            faces: vec![FaceLabel {
                label,
                landmarks: None,
                bbox: None,
                truth: None,
                votes: None,
            }],
            pre_aligned: false,
        };
        // 20 training items of class 0, 8 of class 1, 6 test items.
        let mut items: Vec<Item> = (0..28)
            .map(|k| item(k, usize::from(k >= 20), Split::Train))
            .chain((28..34).map(|k| item(k, 0, Split::Test)))
            .collect();
        move_share(&mut items, 0.25, 9, Split::Val);
        let val = |c: usize| {
            items
                .iter()
                .filter(|i| i.split == Split::Val && i.faces[0].label == c)
                .count()
        };
        assert_eq!((val(0), val(1)), (5, 2));
        assert_eq!(items.iter().filter(|i| i.split == Split::Test).count(), 6);
        // Seeded: the same seed picks the same items.
        let mut again: Vec<Item> = (0..28)
            .map(|k| item(k, usize::from(k >= 20), Split::Train))
            .collect();
        move_share(&mut again, 0.25, 9, Split::Val);
        let picked = |v: &[Item]| -> Vec<String> {
            v.iter()
                .filter(|i| i.split == Split::Val)
                .map(|i| i.key.clone())
                .collect()
        };
        assert_eq!(picked(&items[..28]), picked(&again));
    }

    #[test]
    fn five_points_from_68() {
        let mut p = vec![[0f32, 0.0]; 68];
        for (i, q) in p.iter_mut().enumerate() {
            *q = [i as f32, 2.0 * i as f32];
        }
        let f = five_from_68(&p).unwrap();
        // Mean of 36..=41 is 38.5; of 42..=47 is 44.5.
        assert_eq!(f[0], [38.5, 77.0]);
        assert_eq!(f[1], [44.5, 89.0]);
        assert_eq!(f[2], [30.0, 60.0]);
        assert_eq!([f[3][0], f[4][0]], [48.0, 54.0]);
        assert!(five_from_68(&p[..67]).is_none());
    }
}
