//! `dmue-train`: render the synthetic benchmark, prepare datasets, train DMUE (or the
//! baseline), evaluate, export.

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use dmue_deploy::engine::EngineKind;
use dmue_deploy::face::detect::DetectorConfig;
use dmue_train::config::{Config, DeviceChoice, Mode};
use dmue_train::data::loader::{train_batch, Augment, LoaderKind, SplitImages};
use dmue_train::prepare::{self, formats::Format, PrepareOptions};
use dmue_train::synth::{self, expr::MixtureConfig, SynthOptions};
use dmue_train::{eval, trainer};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "dmue-train",
    version,
    about = "DMUE facial expression recognition training (libtorch)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Render the synthetic FER benchmark (images + dataset.json + manifest.jsonl).
    Synth(SynthArgs),
    /// Detect, align and crop every face of a raw dataset (folder, CSV, synthetic photos,
    /// RAF-DB, AffectNet, FERPlus, SFEW) into a dataset directory for `fit`. Parallel and
    /// resumable; images with no face or several faces follow the rules below and are listed
    /// in OUT/prepare-report.json, never fatal.
    #[command(after_help = PREPARE_RULES)]
    Prepare(PrepareArgs),
    /// Train DMUE (or the baseline) on a dataset directory.
    Fit(FitArgs),
    /// Pretrain the backbone as a face-recognition network (softmax over identities, as the
    /// authors' MS-Celeb-1M step) on an identity-labelled dataset (`synth --identities`, or
    /// `prepare --format folder` on `<identity>/*.jpg`). Writes OUT/backbone.safetensors for
    /// `fit --init` and reports identity accuracy on the held-out images of the same people.
    Pretrain(PretrainArgs),
    /// Evaluate a run's newest checkpoint: accuracy, per-class recall, confusion matrix.
    Eval(EvalArgs),
    /// What a trained run believes about each training sample, against the synthetic
    /// benchmark's truth: latent distributions vs true mixtures (KL), confidence alpha vs
    /// ambiguity (Spearman) and flipped vs clean labels (RUN/alpha-flipped-vs-clean.png).
    Analyze(AnalyzeArgs),
    /// Rank the training images by how probably their label is wrong (audit.jsonl, audit.html,
    /// audit-top.png in the run directory).
    Audit(AuditArgs),
    /// Write a copy of the run's dataset with the audit's top suspects relabelled.
    Relabel(RelabelArgs),
    /// Time the training input pipeline alone (decode, crop, flip, normalise): one JSON line
    /// with images/s (used by scripts/bench-loader.sh).
    #[command(hide = true)]
    BenchLoader(BenchLoaderArgs),
    /// Export the deployed part (trunk + target branch, BatchNorm folded) to ONNX, with the
    /// model card (classes, preprocessing, template...) in its metadata.
    Export(ExportArgs),
    /// Convert dlib's face-recognition ResNet (dlib_face_recognition_resnet_model_v1.dat) to
    /// safetensors for `fit --init face` (scripts/fetch-face-trunk.sh runs it).
    ConvertDlib(ConvertDlibArgs),
}

#[derive(clap::Args)]
struct ConvertDlibArgs {
    /// dlib's .dat file.
    input: PathBuf,
    /// The safetensors file to write (written beside it first, then renamed into place).
    output: PathBuf,
}

const PREPARE_RULES: &str = "\
Rules:
  no face detected        skipped (--no-face skip) or the whole image resized (--no-face whole)
  several faces, 1 label  the largest box kept (--multi-face largest) or the image skipped
  faces located by the    each labelled face is matched to the nearest detection (synthetic
  dataset                 landmarks, AffectNet boxes); unmatched faces are reported as missed
  unreadable image        skipped and reported
An interrupted run resumes from OUT/prepare-journal.jsonl: run the same command again.";

#[derive(clap::Args)]
struct PrepareArgs {
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
}

#[derive(clap::Args)]
struct BenchLoaderArgs {
    #[arg(long)]
    data: PathBuf,
    #[arg(long, value_enum, default_value_t = LoaderKind::Memory)]
    loader: LoaderKind,
    /// Loader threads.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    #[arg(long, default_value_t = 20)]
    batches: usize,
    #[arg(long, default_value_t = 72)]
    batch_size: usize,
    #[arg(long, default_value_t = 256)]
    resize: u32,
    #[arg(long, default_value_t = 224)]
    crop: u32,
}

#[derive(clap::Args)]
struct AnalyzeArgs {
    /// Run directory written by `fit` (on a synthetic dataset).
    run: PathBuf,
    #[arg(long, value_enum, default_value_t = DeviceChoice::Auto, env = "DMUE_DEVICE")]
    device: DeviceChoice,
}

#[derive(clap::Args)]
struct AuditArgs {
    /// Run directory written by `fit`.
    run: PathBuf,
    /// The suspicion score [default: ensemble for DMUE runs, self-confidence otherwise; chosen
    /// by measurement, docs/audit.md].
    #[arg(long, value_enum)]
    score: Option<dmue_train::audit::Score>,
    /// How many of the most suspicious images audit.html and audit-top.png show.
    #[arg(long, default_value_t = 60)]
    top: usize,
    #[arg(long, value_enum, default_value_t = DeviceChoice::Auto, env = "DMUE_DEVICE")]
    device: DeviceChoice,
}

#[derive(clap::Args)]
#[command(group(clap::ArgGroup::new("which").required(true).args(["top", "threshold"])))]
struct RelabelArgs {
    /// Run directory that `dmue-train audit` has scored.
    run: PathBuf,
    /// Relabel the K top-ranked images.
    #[arg(long, value_name = "K")]
    top: Option<usize>,
    /// Relabel every image whose score is at least T (scores are in audit.jsonl).
    #[arg(long, value_name = "T")]
    threshold: Option<f64>,
    /// New dataset directory [default: RUN/relabelled].
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(clap::Args)]
struct ExportArgs {
    /// Run directory written by `fit`.
    run: PathBuf,
    /// Output file (default: RUN/target.onnx).
    #[arg(long, short)]
    out: Option<PathBuf>,
    /// Fit a calibration temperature on this held-out split (`val`; never `test`), store it in
    /// the model card, and report NLL and ECE before and after on the test split
    /// (RUN/calibration.json, RUN/reliability.png).
    #[arg(long, value_name = "SPLIT")]
    calibrate: Option<String>,
    /// Also write an int8 model (RUN/target.int8.onnx next to --out): QDQ, int8 weights per
    /// output channel, uint8 activations; prints its size and test accuracy beside float32's
    /// (RUN/int8.json). Runs on `dmue-serve --engine ort`.
    #[arg(long)]
    int8: bool,
    /// Split whose crops set the int8 activation ranges (`train` or `val`; never `test`).
    #[arg(long, value_name = "SPLIT", default_value = "train", requires = "int8")]
    calibration: String,
    /// Number of crops (spread evenly over the split) for the int8 activation ranges.
    #[arg(long, value_name = "N", default_value_t = dmue_train::int8::DEFAULT_IMAGES, requires = "int8")]
    calibration_images: usize,
    /// Activation-range method; default: try both, keep the more accurate (on `val` when the
    /// dataset has one, else on the calibration crops).
    #[arg(long, value_enum, requires = "int8")]
    int8_method: Option<dmue_train::int8::RangeMethod>,
    /// Engine that measures the float32 and int8 models (`auto`, `ort` or `tract`); default
    /// `auto`: ONNX Runtime when its library is present, else tract.
    #[arg(long, requires = "int8")]
    engine: Option<EngineKind>,
}

#[derive(clap::Args)]
struct SynthArgs {
    /// Output dataset directory.
    #[arg(long, short)]
    out: PathBuf,
    /// Number of training images.
    #[arg(long, default_value_t = 2800)]
    train: usize,
    /// Number of test images (clean labels).
    #[arg(long, default_value_t = 700)]
    test: usize,
    /// Number of validation images (clean labels), for `export --calibrate val`.
    #[arg(long, default_value_t = 0)]
    val: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Fraction of training labels flipped to another uniformly random class.
    #[arg(long, default_value_t = 0.0)]
    flip_rate: f32,
    /// Share of images that are ambiguous two-class blends.
    #[arg(long, default_value_t = MixtureConfig::default().ambiguous_share)]
    ambiguity: f32,
    /// Lowest expression intensity (1 = full caricature, lower = closer to neutral).
    #[arg(long, default_value_t = MixtureConfig::default().min_intensity)]
    min_intensity: f32,
    #[arg(long, value_enum, default_value_t = synth::Mode::Aligned)]
    mode: synth::Mode,
    /// Side of aligned crops in pixels.
    #[arg(long, default_value_t = dmue_deploy::face::ALIGNED_SIZE)]
    size: u32,
    /// Most faces per photo (photo mode).
    #[arg(long, default_value_t = 3)]
    max_faces: usize,
    /// Also write OUT/preview.png: a grid of samples per class.
    #[arg(long)]
    preview: bool,
    /// Identity mode, for `pretrain`: render this many people (classes are people, not
    /// expressions; --train, --test, --flip-rate and --mode do not apply).
    #[arg(long, value_name = "K")]
    identities: Option<usize>,
    /// Identity mode: images per person (random expression, pose, lighting, background).
    #[arg(long, value_name = "M", default_value_t = 20)]
    per_identity: usize,
    /// Identity mode: images per person held out as the test split (default: M / 5, at
    /// least 1).
    #[arg(long, value_name = "N")]
    test_per_identity: Option<usize>,
}

impl SynthArgs {
    /// The expression mixtures both synth modes draw from.
    fn mixture(&self) -> MixtureConfig {
        MixtureConfig {
            ambiguous_share: self.ambiguity,
            min_intensity: self.min_intensity,
            ..Default::default()
        }
    }
}

#[derive(clap::Args)]
struct FitArgs {
    /// Dataset directory (overrides data.dataset).
    #[arg(long)]
    data: Option<PathBuf>,
    /// TOML configuration; fields not given keep the defaults. Repeatable: later files
    /// override earlier ones (`-c configs/demo-cpu.toml -c configs/variants/paper.toml`).
    #[arg(long, short)]
    config: Vec<PathBuf>,
    /// Run directory (config copy, metrics, plots, checkpoints).
    #[arg(long, short, default_value = "runs/dmue")]
    out: PathBuf,
    /// Override any config field: --set train.lr=0.0005 --set loss.latent=false (repeatable).
    #[arg(long = "set", value_name = "SECTION.FIELD=VALUE")]
    sets: Vec<String>,
    /// Shorthand for --set train.epochs=N.
    #[arg(long)]
    epochs: Option<usize>,
    /// Shorthand for --set train.mode=...
    #[arg(long, value_enum)]
    mode: Option<Mode>,
    /// A named DMUE variant (configs/variants/NAME.toml, built in), applied over the defaults
    /// before any --config file. The defaults are gce-target.
    #[arg(long, value_enum)]
    preset: Option<Preset>,
    /// Shorthand for --set train.device=...
    #[arg(long, value_enum, env = "DMUE_DEVICE")]
    device: Option<DeviceChoice>,
    /// Shorthand for --set model.backbone=...
    #[arg(long, value_enum)]
    backbone: Option<dmue_train::model::Backbone>,
    /// Start the backbone from pretrained weights (safetensors; convert .pth files with
    /// scripts/convert-weights.sh). Torchvision ResNet-18 / MobileNetV2 names, the authors'
    /// MS-Celeb ResNet-18 (with --set model.stem=authors) and `dmue-train pretrain` output
    /// are recognised; the report goes to OUT/init-report.json. Shorthand for train.init.
    /// `--init face`: dlib's face-recognition ResNet (scripts/fetch-face-trunk.sh), which also
    /// sets model.backbone=face-resnet (width 32), train.lr=1e-5, dlib's input normalisation
    /// and 150-pixel inputs (resize 171, crop 150); --set overrides any of them.
    #[arg(long, value_name = "FILE|face")]
    init: Option<PathBuf>,
    /// Freeze the loaded backbone for the first N epochs (only the classifiers train).
    #[arg(long, value_name = "N")]
    freeze_trunk_epochs: Option<usize>,
    /// Continue the run in --out from its newest checkpoint (its config.toml, plus --set).
    #[arg(long)]
    resume: bool,
}

#[derive(clap::Args)]
struct PretrainArgs {
    /// Identity-labelled dataset directory (classes are people).
    #[arg(long)]
    data: PathBuf,
    /// TOML configuration (repeatable, as for fit); train.mode is always baseline here.
    #[arg(long, short)]
    config: Vec<PathBuf>,
    #[arg(long, short, default_value = "runs/pretrain")]
    out: PathBuf,
    /// Override any config field (repeatable).
    #[arg(long = "set", value_name = "SECTION.FIELD=VALUE")]
    sets: Vec<String>,
    #[arg(long)]
    epochs: Option<usize>,
    #[arg(long, value_enum)]
    backbone: Option<dmue_train::model::Backbone>,
    #[arg(long, value_enum, env = "DMUE_DEVICE")]
    device: Option<DeviceChoice>,
    /// Continue the run in --out from its newest checkpoint.
    #[arg(long)]
    resume: bool,
}

#[derive(clap::Args)]
struct EvalArgs {
    /// Run directory written by `fit`.
    run: PathBuf,
    /// Split to evaluate.
    #[arg(long, default_value = "test")]
    split: String,
    /// Evaluate on another dataset directory with the same classes.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Also write every image's softmax to this JSON-lines file (path, label, predicted,
    /// probabilities), for example as out-of-sample probabilities of a held-out fold.
    #[arg(long)]
    predictions: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t = DeviceChoice::Auto, env = "DMUE_DEVICE")]
    device: DeviceChoice,
}

/// libtorch's OpenMP runtime (libgomp) lets idle worker threads spin between parallel regions.
/// On an idle machine that is the fast choice; on cores shared with anything else (a compile, a
/// second run) the spinning threads steal the time the working ones need. Measured on 2 cores,
/// one DMUE epoch at the demo size (scripts/bench-shared-cpu.sh, docs/performance.md): spinning
/// 2.7 s idle, 10.7 s next to one busy process; passive waiting 4.6 s and 4.7 s (the speed of
/// one thread); `ACTIVE` (spin without limit) beat libgomp's default in both columns (2.70 s
/// and 8.67 s against 2.79 s and 10.65 s), and on 2026-11-29 the demo's training ran at 250
/// img/s with it against 206-218 with the default. So when the cores are busy as we start we
/// wait passively, and otherwise spin. "Busy" is measured now, over [`SAMPLE`], from /proc/stat
/// (the 1-minute load average, used first, stays high for minutes after a job ends). libgomp
/// reads OMP_WAIT_POLICY once, when it is loaded (before `main`), hence the re-execution; a
/// policy the user set is never overridden.
fn openmp_wait_policy() {
    #[cfg(target_os = "linux")]
    if std::env::var_os("OMP_WAIT_POLICY").is_none() {
        use std::os::unix::process::CommandExt;
        let policy = if busy_cores().is_some_and(|b| b >= BUSY_SHARE) {
            "PASSIVE"
        } else {
            "ACTIVE"
        };
        if let Ok(exe) = std::env::current_exe() {
            let err = std::process::Command::new(exe)
                .args(std::env::args_os().skip(1))
                .env("OMP_WAIT_POLICY", policy)
                .exec();
            // exec returns only when it failed: carry on with libgomp's default.
            eprintln!("warning: could not re-run with OMP_WAIT_POLICY={policy}: {err}");
        }
    }
}

/// Share of all cores busy over [`SAMPLE`] (from /proc/stat's first line), `None` when unknown.
fn busy_cores() -> Option<f64> {
    let read = || -> Option<(u64, u64)> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let v: Vec<u64> = stat
            .lines()
            .next()?
            .split_whitespace()
            .skip(1)
            .filter_map(|x| x.parse().ok())
            .collect();
        // user nice system idle iowait irq softirq steal ...
        let idle = v.get(3)? + v.get(4).unwrap_or(&0);
        Some((v.iter().sum(), idle))
    };
    let (t0, i0) = read()?;
    std::thread::sleep(SAMPLE);
    let (t1, i1) = read()?;
    let total = t1.checked_sub(t0)?;
    (total > 0).then(|| 1.0 - (i1 - i0) as f64 / total as f64)
}

/// How long the cores are watched at start-up.
const SAMPLE: std::time::Duration = std::time::Duration::from_millis(150);
/// Share of the cores busy from which they count as shared (on 2 cores: one core 60 % busy).
const BUSY_SHARE: f64 = 0.3;

fn main() {
    openmp_wait_policy();
    dmue_deploy::logging::init(false);
    if let Err(e) = run(Cli::parse()) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Synth(a) if a.identities.is_some() => {
            let opts = synth::IdentityOptions {
                identities: a.identities.unwrap_or_default(),
                per_identity: a.per_identity,
                test_per_identity: a.test_per_identity.unwrap_or((a.per_identity / 5).max(1)),
                seed: a.seed,
                size: a.size,
                mixture: a.mixture(),
            };
            let s = synth::generate_identities(&opts, &a.out)?;
            println!(
                "wrote {} images of {} people ({} per person held out for test) to {}",
                s.images,
                opts.identities,
                opts.test_per_identity,
                s.out.display()
            );
        }
        Command::Synth(a) => {
            let opts = SynthOptions {
                train: a.train,
                test: a.test,
                val: a.val,
                seed: a.seed,
                flip_rate: a.flip_rate,
                mode: a.mode,
                size: a.size,
                max_faces: a.max_faces,
                mixture: a.mixture(),
            };
            let s = synth::generate(&opts, &a.out)?;
            println!(
                "wrote {} images ({} faces, {} training labels flipped) to {}",
                s.images,
                s.faces,
                s.flipped,
                s.out.display()
            );
            if a.preview {
                let path = a.out.join("preview.png");
                synth::preview(&opts, 8, &path)?;
                println!("preview grid: {}", path.display());
            }
        }
        Command::Prepare(a) => {
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
            let report = prepare::prepare(&opts, &rt, &a.out)?;
            print!("{report}");
            println!(
                "wrote {} (details per image: {})",
                a.out.display(),
                a.out.join(prepare::REPORT_FILE).display()
            );
        }
        Command::Fit(a) => {
            let mut sets = a.sets.clone();
            if let Some(d) = &a.data {
                sets.push(format!(
                    "data.dataset={}",
                    toml_string(&d.display().to_string())
                ));
            }
            if let Some(e) = a.epochs {
                sets.push(format!("train.epochs={e}"));
            }
            if let Some(m) = a.mode {
                let name = m
                    .to_possible_value()
                    .context("every mode has a name")?
                    .get_name()
                    .to_string();
                sets.push(format!("train.mode=\"{name}\""));
            }
            if let Some(b) = a.backbone {
                sets.push(format!("model.backbone=\"{}\"", b.name()));
            }
            match &a.init {
                // The named start: dlib's face-recognition ResNet, before any --set.
                Some(f) if f.as_os_str() == "face" && !f.exists() => {
                    let converted = std::fs::canonicalize(dmue_train::dlib::CONVERTED)
                        .with_context(|| {
                            format!(
                                "--init face needs {} (run scripts/fetch-face-trunk.sh in the \
                                 repository, and fit from its root)",
                                dmue_train::dlib::CONVERTED
                            )
                        })?;
                    sets.splice(0..0, dmue_train::dlib::fit_settings(&converted));
                }
                Some(f) => sets.push(format!(
                    "train.init={}",
                    toml_string(&f.display().to_string())
                )),
                None => {}
            }
            if let Some(n) = a.freeze_trunk_epochs {
                sets.push(format!("train.freeze_trunk_epochs={n}"));
            }
            if let Some(d) = a.device {
                sets.push(format!("train.device={}", toml_string(device_name(d))));
            }
            let preset = a.preset.map(Preset::layer);
            let cfg = run_config(&a.out, a.resume, preset.as_slice(), &a.config, &sets)?;
            let s = trainer::fit(&cfg, &a.out, a.resume)?;
            println!(
                "trained {} epochs in {:.1}s ({:.0} img/s) on {}; run directory {}",
                s.epochs,
                s.train_seconds,
                s.images_per_second,
                s.device,
                s.run_dir.display()
            );
            if let Some(r) = &s.final_eval {
                print!("{r}");
                println!("chance level {:.2}%", 100.0 / r.classes.len() as f64);
            }
        }
        Command::Pretrain(a) => {
            let mut sets = vec![
                format!(
                    "data.dataset={}",
                    toml_string(&a.data.display().to_string())
                ),
                // Hundreds of identities: no per-class quota in a batch.
                "train.min_per_class=0".to_string(),
            ];
            sets.extend(a.sets.iter().cloned());
            sets.push("train.mode=\"baseline\"".into());
            if let Some(e) = a.epochs {
                sets.push(format!("train.epochs={e}"));
            }
            if let Some(b) = a.backbone {
                sets.push(format!("model.backbone=\"{}\"", b.name()));
            }
            if let Some(d) = a.device {
                sets.push(format!("train.device={}", toml_string(device_name(d))));
            }
            let cfg = run_config(&a.out, a.resume, &[], &a.config, &sets)?;
            let (s, path) = dmue_train::pretrain::pretrain(&cfg, &a.out, a.resume)?;
            println!(
                "pretrained {} epochs in {:.1}s ({:.0} img/s) on {}; run directory {}",
                s.epochs,
                s.train_seconds,
                s.images_per_second,
                s.device,
                s.run_dir.display()
            );
            if let Some(r) = &s.final_eval {
                println!(
                    "identity accuracy on held-out images of the same people: {:.2}% ({} images, {} identities, chance {:.2}%)",
                    100.0 * r.accuracy,
                    r.images,
                    r.classes.len(),
                    100.0 / r.classes.len() as f64
                );
            }
            println!(
                "wrote {} (backbone without the identity classifier)\nstart DMUE from it: dmue-train fit --init {} --set model.width={} ...",
                path.display(),
                path.display(),
                cfg.model.width()
            );
        }
        Command::Eval(a) => {
            let device = trainer::resolve_device(a.device)?;
            let (cfg, mut ds, _vs, net) = trainer::load_run(&a.run, device)?;
            if let Some(d) = &a.data {
                let other = dmue_train::data::manifest::Dataset::open(d)?;
                if other.info.classes != ds.info.classes {
                    anyhow::bail!(
                        "{} has classes {:?}, the model was trained on {:?}",
                        d.display(),
                        other.info.classes,
                        ds.info.classes
                    );
                }
                ds = other;
            }
            let split = a.split.parse()?;
            let data =
                dmue_train::data::loader::SplitImages::load(&ds, split, &cfg.data.preprocess)?;
            // One forward pass gives both the report and the per-image predictions.
            let rows = eval::predictions(&net, &data, &ds, &cfg.data.preprocess, device);
            let preds: Vec<usize> = rows.iter().map(|r| r.predicted).collect();
            let report = eval::report(
                &data.split.to_string(),
                &ds.info.classes,
                &data.labels,
                &preds,
                data.skipped.len(),
            );
            eval::write(&a.run, &report).context("writing the evaluation report")?;
            print!("{report}");
            if let Some(p) = &a.predictions {
                dmue_train::util::write_jsonl(p, &rows)
                    .with_context(|| format!("writing {}", p.display()))?;
                println!("wrote {} ({} images)", p.display(), rows.len());
            }
            println!(
                "wrote {} and {}",
                a.run.join(format!("eval-{}.json", report.split)).display(),
                a.run
                    .join(format!("confusion-{}.png", report.split))
                    .display()
            );
        }
        Command::BenchLoader(a) => bench_loader(&a)?,
        Command::ConvertDlib(a) => {
            let r = dmue_train::dlib::convert(&a.input, &a.output)?;
            println!(
                "wrote {} ({} tensors, {} values; input {}x{}, mean {:?})",
                a.output.display(),
                r.tensors,
                r.values,
                r.input_size[0],
                r.input_size[1],
                r.input_mean
            );
        }
        Command::Analyze(a) => {
            let device = trainer::resolve_device(a.device)?;
            let analysis = dmue_train::analyze::analyze(&a.run, device)?;
            print!("{analysis}");
            println!(
                "wrote {}, {} and {}",
                a.run.join(dmue_train::analyze::REPORT_FILE).display(),
                a.run.join(dmue_train::analyze::SAMPLES_FILE).display(),
                a.run.join(dmue_train::analyze::ALPHA_PNG).display()
            );
        }
        Command::Audit(a) => {
            let device = trainer::resolve_device(a.device)?;
            let opts = dmue_train::audit::AuditOptions {
                score: a.score,
                top: a.top,
            };
            let report = dmue_train::audit::audit(&a.run, &opts, device)?;
            print!("{report}");
            println!(
                "wrote {} (every training image, most suspicious first), {}, {} and {}",
                a.run.join(dmue_train::audit::AUDIT_FILE).display(),
                a.run.join(dmue_train::audit::REPORT_FILE).display(),
                a.run.join(dmue_train::audit::HTML_FILE).display(),
                a.run.join(dmue_train::audit::SHEET_FILE).display()
            );
        }
        Command::Relabel(a) => {
            let selection = match (a.top, a.threshold) {
                (Some(k), _) => dmue_train::audit::Selection::Top(k),
                (_, Some(t)) => dmue_train::audit::Selection::Threshold(t),
                _ => unreachable!("clap requires one"),
            };
            let out = a.out.unwrap_or_else(|| a.run.join("relabelled"));
            let changes = dmue_train::audit::relabel(&a.run, selection, &out)?;
            println!(
                "wrote {}: {} training labels changed (listed in {})\nretrain: dmue-train fit --data {} ...",
                out.display(),
                changes.len(),
                out.join(dmue_train::audit::CHANGES_FILE).display(),
                out.display()
            );
        }
        Command::Export(a) => {
            let out = a.out.unwrap_or_else(|| a.run.join("target.onnx"));
            let split = a.calibrate.as_deref().map(str::parse).transpose()?;
            let int8 = a
                .int8
                .then(|| -> Result<_> {
                    Ok(dmue_train::int8::Int8Options {
                        method: a.int8_method,
                        split: a.calibration.parse()?,
                        images: a.calibration_images,
                        engine: a.engine,
                    })
                })
                .transpose()?;
            let report = dmue_train::export::export_run(&a.run, &out, split, int8)?;
            println!("{report}");
            if report.calibration.is_some() {
                println!(
                    "wrote {} and {}",
                    a.run.join(dmue_train::export::CALIBRATION_FILE).display(),
                    a.run.join(dmue_train::export::RELIABILITY_PNG).display()
                );
            }
        }
    }
    Ok(())
}

/// The configuration of a run in `out`: a resumed run keeps its own `config.toml` (`--set`
/// may still change it, e.g. epochs); a new one reads the presets, then the `--config` files.
fn run_config(
    out: &std::path::Path,
    resume: bool,
    presets: &[(&str, &str)],
    files: &[PathBuf],
    sets: &[String],
) -> Result<Config> {
    let own = out.join(trainer::CONFIG_FILE);
    if resume && own.exists() {
        Config::load(&[own], sets)
    } else {
        Config::load_layers(presets, files, sets)
    }
}

/// The DMUE variants of configs/variants, built into the binary (`fit --preset`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Preset {
    /// The paper's DMUE with the confidence normalised per class (the default before gce-target).
    ClassNorm,
    /// class-norm with GCE in the target and auxiliary hard-label terms.
    Gce,
    /// The default: class-norm with GCE in the target branch's hard-label term only.
    GceTarget,
    /// class-norm with early-learning regularisation on the target branch.
    Elr,
    /// The paper's DMUE as written (alpha not normalised).
    Paper,
    /// DMUE as the authors' released code trains it.
    Authors,
    /// The paper's DMUE with the uncertainty module frozen at its initialisation.
    Frozen,
}

impl Preset {
    /// `(name, TOML text)` of the preset.
    fn layer(self) -> (&'static str, &'static str) {
        match self {
            Preset::ClassNorm => (
                "preset class-norm",
                include_str!("../../configs/variants/class-norm.toml"),
            ),
            Preset::Gce => (
                "preset gce",
                include_str!("../../configs/variants/gce.toml"),
            ),
            Preset::GceTarget => (
                "preset gce-target",
                include_str!("../../configs/variants/gce-target.toml"),
            ),
            Preset::Elr => (
                "preset elr",
                include_str!("../../configs/variants/elr.toml"),
            ),
            Preset::Paper => (
                "preset paper",
                include_str!("../../configs/variants/paper.toml"),
            ),
            Preset::Authors => (
                "preset authors",
                include_str!("../../configs/variants/authors.toml"),
            ),
            Preset::Frozen => (
                "preset frozen",
                include_str!("../../configs/variants/frozen.toml"),
            ),
        }
    }
}

fn device_name(d: DeviceChoice) -> &'static str {
    match d {
        DeviceChoice::Auto => "auto",
        DeviceChoice::Cpu => "cpu",
        DeviceChoice::Cuda => "cuda",
    }
}

/// A TOML string literal (paths with quotes or backslashes survive --set).
fn toml_string(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// Opens the training split as `--loader` says (timed: the up-front cost), then cuts
/// `--batches` training batches on a pool of `--threads` threads (timed: the per-epoch cost).
fn bench_loader(a: &BenchLoaderArgs) -> Result<()> {
    use rand::SeedableRng;
    let ds = dmue_train::data::manifest::Dataset::open(&a.data)?;
    let pre = dmue_deploy::preprocess::Preprocess {
        resize: a.resize,
        crop: a.crop,
        ..Default::default()
    };
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(a.threads.max(1))
        .build()?;
    let t = std::time::Instant::now();
    let split = pool.install(|| {
        SplitImages::open(
            &ds,
            dmue_train::data::manifest::Split::Train,
            &pre,
            a.loader,
        )
    })?;
    let open_s = t.elapsed().as_secs_f64();
    let aug = Augment {
        hflip: true,
        ..Default::default()
    };
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let n = split.len();
    let batches: Vec<Vec<usize>> = (0..a.batches)
        .map(|b| {
            (0..a.batch_size)
                .map(|k| (b * a.batch_size + k) % n)
                .collect()
        })
        .collect();
    // One warm-up batch (page cache, allocator), then the timed ones.
    pool.install(|| train_batch(&split, &batches[0], &pre, &aug, &mut rng));
    let t = std::time::Instant::now();
    for idx in &batches {
        std::hint::black_box(pool.install(|| train_batch(&split, idx, &pre, &aug, &mut rng)));
    }
    let secs = t.elapsed().as_secs_f64();
    let images = (a.batches * a.batch_size) as f64;
    println!(
        "{}",
        serde_json::json!({
            "loader": split.kind, "threads": a.threads, "images": split.len(),
            "open_seconds": open_s, "images_per_second": images / secs,
            "images_per_second_per_thread": images / secs / a.threads.max(1) as f64,
        })
    );
    Ok(())
}
