//! Contract 1: the aligned-crop dataset on disk.
//!
//! A dataset directory holds `dataset.json` (name, class names in label order, crop geometry)
//! and `manifest.jsonl` (one row per aligned face crop). Class names are read from here and
//! never re-typed anywhere else.

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::io::BufRead;
use std::path::{Path, PathBuf};

pub const DATASET_FILE: &str = "dataset.json";
pub const MANIFEST_FILE: &str = "manifest.jsonl";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    Train,
    Val,
    Test,
}

impl std::fmt::Display for Split {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Split::Train => "train",
            Split::Val => "val",
            Split::Test => "test",
        })
    }
}

impl std::str::FromStr for Split {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "train" => Ok(Split::Train),
            "val" => Ok(Split::Val),
            "test" => Ok(Split::Test),
            _ => bail!("unknown split {s:?} (expected train, val or test)"),
        }
    }
}

/// `dataset.json`: what every row's label means.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetInfo {
    pub name: String,
    /// Class names in label order: label k means `classes[k]`.
    pub classes: Vec<String>,
    /// Side of the stored aligned crops in pixels.
    pub image_size: u32,
    /// Alignment template the crops were cut with (`dmue_deploy::face::TEMPLATE_ID`).
    pub template_id: String,
    /// Where the data came from (format and options), free-form.
    #[serde(default)]
    pub source: serde_json::Value,
}

impl DatasetInfo {
    /// Writes `dir/dataset.json`, creating `dir`.
    pub fn write(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        crate::util::write_atomic(
            &dir.join(DATASET_FILE),
            serde_json::to_string_pretty(self)?.as_bytes(),
        )
    }
}

/// Ground truth the synthetic benchmark knows about each face.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SynthTruth {
    /// True expression mixture over the classes (sums to 1).
    pub mixture: Vec<f32>,
    /// argmax of the mixture.
    pub clean_label: usize,
    /// The annotator's label, drawn from the mixture.
    pub annotated_label: usize,
    /// Whether label-noise injection replaced the annotated label.
    pub flipped: bool,
    pub pose: Pose,
}

/// Similarity transform from the canonical 256x256 face frame to the canvas of a synthetic
/// photo (`crate::synth` draws with it).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Pose {
    /// In-plane rotation in degrees, in image coordinates (y down): positive turns the face
    /// clockwise on screen.
    pub angle_deg: f32,
    /// Scale relative to the canonical frame (1.0 = a 256-pixel face frame).
    pub scale: f32,
    /// Canvas position of the canonical frame's centre (128, 128).
    pub cx: f32,
    pub cy: f32,
}

impl Pose {
    pub fn identity() -> Self {
        Self {
            angle_deg: 0.0,
            scale: 1.0,
            cx: 128.0,
            cy: 128.0,
        }
    }
}

/// One row of `manifest.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestRow {
    /// Image path, relative to the dataset directory.
    pub path: String,
    /// The label training uses (index into `DatasetInfo::classes`).
    pub label: usize,
    pub split: Split,
    /// Where the crop was cut from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// The 5 landmarks in crop coordinates (order of `dmue_deploy::face::TEMPLATE_256`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub landmarks: Option<[[f32; 2]; 5]>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub truth: Option<SynthTruth>,
    /// Annotators' vote shares over the classes, when the dataset has them (FERPlus).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub votes: Option<Vec<f32>>,
    /// The dataset's label before `prepare --flip-rate` replaced it (`label` is the new one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original_label: Option<usize>,
    /// The label before `dmue-train relabel` replaced it with the audit's suggestion.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relabelled_from: Option<usize>,
}

/// A dataset directory, read and validated.
#[derive(Debug, Clone)]
pub struct Dataset {
    pub dir: PathBuf,
    pub info: DatasetInfo,
    pub rows: Vec<ManifestRow>,
}

impl Dataset {
    pub fn num_classes(&self) -> usize {
        self.info.classes.len()
    }

    /// Reads `dataset.json` and `manifest.jsonl`. Every malformed row, unknown label or empty
    /// path is reported with its line number (the first 20 of them), not just the first.
    pub fn open(dir: &Path) -> Result<Self> {
        let info_path = dir.join(DATASET_FILE);
        let info: DatasetInfo =
            serde_json::from_str(&std::fs::read_to_string(&info_path).with_context(|| {
                format!(
                    "cannot read {} (is {} a dataset directory?)",
                    info_path.display(),
                    dir.display()
                )
            })?)
            .with_context(|| {
                format!("{} is not a valid dataset description", info_path.display())
            })?;
        if info.classes.len() < 2 {
            bail!(
                "{} lists {} classes; at least 2 are needed",
                info_path.display(),
                info.classes.len()
            );
        }
        let manifest_path = dir.join(MANIFEST_FILE);
        let file = std::fs::File::open(&manifest_path)
            .with_context(|| format!("cannot open {}", manifest_path.display()))?;
        let rows = parse_rows(std::io::BufReader::new(file), info.classes.len())
            .with_context(|| format!("in {}", manifest_path.display()))?;
        if rows.is_empty() {
            bail!("{} has no rows", manifest_path.display());
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            info,
            rows,
        })
    }

    pub fn split(&self, split: Split) -> impl Iterator<Item = &ManifestRow> {
        self.rows.iter().filter(move |r| r.split == split)
    }

    /// Writes `dataset.json` and `manifest.jsonl` into `dir`.
    pub fn write(dir: &Path, info: &DatasetInfo, rows: &[ManifestRow]) -> Result<()> {
        info.write(dir)?;
        crate::util::write_jsonl(&dir.join(MANIFEST_FILE), rows)
    }
}

/// Parses manifest rows; collects every problem with its 1-based line number.
pub fn parse_rows<R: BufRead>(reader: R, num_classes: usize) -> Result<Vec<ManifestRow>> {
    let mut rows = Vec::new();
    let mut problems = Vec::new();
    for (i, line) in reader.lines().enumerate() {
        let line_no = i + 1;
        let line = line.with_context(|| format!("line {line_no}: cannot read"))?;
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<ManifestRow>(&line) {
            Ok(row) if row.label >= num_classes => problems.push(format!(
                "line {line_no}: unknown label {} (the dataset has {num_classes} classes, labels 0..{})",
                row.label,
                num_classes - 1
            )),
            Ok(row) if row.path.trim().is_empty() => problems.push(format!("line {line_no}: empty image path")),
            Ok(row) => rows.push(row),
            Err(e) => problems.push(format!("line {line_no}: {e}")),
        }
    }
    if !problems.is_empty() {
        let total = problems.len();
        problems.truncate(20);
        let more = if total > 20 {
            format!("\n  ... and {} more", total - 20)
        } else {
            String::new()
        };
        bail!(
            "{total} malformed manifest row(s):\n  {}{more}",
            problems.join("\n  ")
        );
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_every_bad_row_with_its_line_number() {
        let text = concat!(
            r#"{"path":"a.png","label":1,"split":"train"}"#,
            "\n\n",
            r#"{"path":"b.png","label":9,"split":"train"}"#,
            "\n",
            r#"{"path":"c.png","split":"test"}"#,
            "\n",
            "not json\n",
            r#"{"path":"d.png","label":0,"split":"train","colour":"red"}"#,
            "\n",
        );
        let err = parse_rows(text.as_bytes(), 7).unwrap_err().to_string();
        assert!(err.starts_with("4 malformed"), "{err}");
        assert!(err.contains("line 3: unknown label 9"), "{err}");
        assert!(err.contains("line 4: missing field `label`"), "{err}");
        assert!(err.contains("line 5:"), "{err}");
        assert!(err.contains("line 6: unknown field `colour`"), "{err}");
    }

    #[test]
    fn good_rows_parse() {
        let text = r#"{"path":"a.png","label":6,"split":"test","landmarks":[[1,2],[3,4],[5,6],[7,8],[9,10]]}"#;
        let rows = parse_rows(text.as_bytes(), 7).unwrap();
        assert_eq!(rows[0].split, Split::Test);
        assert_eq!(rows[0].landmarks.unwrap()[4], [9.0, 10.0]);
    }
}
