//! `dmue-train prepare`: a dataset as distributed -> aligned face crops and a manifest.

use anyhow::Result;
use dmue_deploy::engine::EngineKind;
use dmue_deploy::face::detect::DetectorConfig;
use dmue_train::prepare::{self, formats::Format, PrepareOptions};
use std::path::PathBuf;

pub const PREPARE_RULES: &str = "\
Rules:
  no face detected        skipped (--no-face skip) or the whole image resized (--no-face whole)
  several faces, 1 label  the largest box kept (--multi-face largest) or the image skipped
  faces located by the    each labelled face is matched to the nearest detection (synthetic
  dataset                 landmarks, AffectNet boxes); unmatched faces are reported as missed
  unreadable image        skipped and reported
An interrupted run resumes from OUT/prepare-journal.jsonl: run the same command again.";

#[derive(clap::Args)]
pub struct PrepareArgs {
    #[arg(long, value_enum)]
    format: prepare::formats::Format,
    /// The dataset as distributed (a folder; for csv, the CSV file or a folder with labels.csv).
    #[arg(long)]
    root: PathBuf,
    /// Output dataset directory.
    #[arg(long, short)]
    out: PathBuf,
    /// Side of the aligned crops in pixels.
    #[arg(long, default_value_t = dmue_deploy::face::ALIGNED_SIZE)]
    size: u32,
    /// Where the 5 landmarks come from: the detector, or the dataset's own annotations.
    #[arg(long, value_enum, default_value_t = prepare::LandmarkSource::Detect)]
    landmarks: prepare::LandmarkSource,
    #[arg(long, value_enum, default_value_t = prepare::MultiFace::Largest)]
    multi_face: prepare::MultiFace,
    #[arg(long, value_enum, default_value_t = prepare::NoFace::Skip)]
    no_face: prepare::NoFace,
    /// Lowest detection score kept.
    #[arg(long, default_value_t = DetectorConfig::default().score_threshold)]
    det_threshold: f32,
    /// Face detector (scripts/fetch-models.sh).
    #[arg(long, default_value = dmue_deploy::face::detect::DEFAULT_MODEL)]
    detector: PathBuf,
    /// Engine that runs the detector: tract or ort.
    #[arg(long, default_value = "tract")]
    engine: EngineKind,
    /// Images processed in parallel (default: every core).
    #[arg(long)]
    threads: Option<usize>,
    /// Class names in label order (folder, csv): required for numeric CSV labels; otherwise
    /// the sorted folder or label names.
    #[arg(long, value_delimiter = ',')]
    classes: Option<Vec<String>>,
    /// Move this share of each class to the test split (sources without one).
    #[arg(long, default_value_t = 0.0)]
    test_share: f32,
    /// Then move this share of each class's training images to a validation split (for
    /// `export --calibrate val`).
    #[arg(long, default_value_t = 0.0)]
    val_share: f32,
    /// With --test-share / --val-share, keep every image of one person in one split: a regular
    /// expression searched in each image's path under --root, whose first capture group (or
    /// whole match) names the person. Use it whenever one person appears in several images
    /// (video frames, CK+-style names such as S074_004_00000010.png: --group-by '(S[0-9]+)_'),
    /// or the test split measures memory of faces, not expressions.
    #[arg(long, value_name = "REGEX")]
    group_by: Option<String>,
    /// Flip this share of training labels to another uniformly random class (recorded).
    #[arg(long, default_value_t = 0.0)]
    flip_rate: f32,
    /// Seed of --test-share and --flip-rate.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// rafdb: align the original images, or use the dataset's 100x100 aligned crops as they are.
    #[arg(long, default_value = "original", value_parser = ["original", "aligned"])]
    rafdb_images: String,
    /// affectnet: 7 classes (Contempt dropped, the usual protocol) or 8.
    #[arg(long, default_value_t = 7)]
    affectnet_classes: u8,
    /// Cut only part I of N (from 0) into --out: the source images at positions I, I+N,
    /// I+2N... For an array job of a batch scheduler (SLURM_ARRAY_TASK_ID/SLURM_ARRAY_TASK_COUNT);
    /// join the parts with --merge.
    #[arg(long, value_name = "I/N", conflicts_with = "merge")]
    shard: Option<prepare::parts::Part>,
    /// Join the part directories written by --shard into --out (every part once, each
    /// complete, all made with these options), then split, flip and write the manifest as one
    /// run would.
    #[arg(long, value_name = "PART_DIR", num_args = 1..)]
    merge: Vec<PathBuf>,
}

pub fn run(a: PrepareArgs) -> Result<()> {
    let opts = PrepareOptions {
        format: a.format,
        root: a.root,
        size: a.size,
        landmarks: a.landmarks,
        multi_face: a.multi_face,
        no_face: a.no_face,
        det_threshold: a.det_threshold,
        classes: a.classes,
        test_share: a.test_share,
        val_share: a.val_share,
        group_by: a.group_by.clone(),
        flip_rate: a.flip_rate,
        seed: a.seed,
        format_options: match a.format {
            Format::Rafdb => serde_json::json!({ "rafdb_images": a.rafdb_images }),
            Format::Affectnet => {
                serde_json::json!({ "affectnet_classes": a.affectnet_classes })
            }
            _ => serde_json::Value::Null,
        },
    };
    let rt = prepare::Runtime {
        detector: a.detector,
        engine: a.engine,
        threads: a.threads.unwrap_or_else(dmue_deploy::engine::cores),
    };
    if let Some(part) = a.shard {
        let r = prepare::parts::prepare_part(&opts, &rt, &a.out, part)?;
        println!(
            "part {part}: {} of the source's {} images done in {}; when every part is done, \
             join them with the same command, --merge PART_DIR... instead of --shard, and the \
             dataset's --out",
            r.items,
            r.source_items,
            a.out.display()
        );
        return Ok(());
    }
    let report = if a.merge.is_empty() {
        prepare::prepare(&opts, &rt, &a.out)?
    } else {
        prepare::parts::merge(&opts, &a.out, &a.merge)?
    };
    print!("{report}");
    println!(
        "wrote {} (details per image: {})",
        a.out.display(),
        a.out.join(prepare::REPORT_FILE).display()
    );
    Ok(())
}
