//! `dmue-train`: render the synthetic benchmark, train DMUE (or the baseline), evaluate.

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use dmue_train::config::{Config, DeviceChoice, Mode};
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
    /// Train DMUE (or the baseline) on a dataset directory.
    Fit(FitArgs),
    /// Evaluate a run's newest checkpoint: accuracy, per-class recall, confusion matrix.
    Eval(EvalArgs),
    /// Export the deployed part (trunk + target branch, BatchNorm folded) to ONNX, with the
    /// model card (classes, preprocessing, template...) in its metadata.
    Export(ExportArgs),
}

#[derive(clap::Args)]
struct ExportArgs {
    /// Run directory written by `fit`.
    run: PathBuf,
    /// Output file (default: RUN/target.onnx).
    #[arg(long, short)]
    out: Option<PathBuf>,
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
}

#[derive(clap::Args)]
struct FitArgs {
    /// Dataset directory (overrides data.dataset).
    #[arg(long)]
    data: Option<PathBuf>,
    /// TOML configuration; fields not given keep the paper's defaults.
    #[arg(long, short)]
    config: Option<PathBuf>,
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
    /// Shorthand for --set train.device=...
    #[arg(long, value_enum, env = "DMUE_DEVICE")]
    device: Option<DeviceChoice>,
    /// Continue the run in --out from its newest checkpoint (its config.toml, plus --set).
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
    #[arg(long, value_enum, default_value_t = DeviceChoice::Auto, env = "DMUE_DEVICE")]
    device: DeviceChoice,
}

fn main() {
    dmue_deploy::logging::init(false);
    if let Err(e) = run(Cli::parse()) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Synth(a) => {
            let opts = SynthOptions {
                train: a.train,
                test: a.test,
                seed: a.seed,
                flip_rate: a.flip_rate,
                mode: a.mode,
                size: a.size,
                max_faces: a.max_faces,
                mixture: MixtureConfig {
                    ambiguous_share: a.ambiguity,
                    min_intensity: a.min_intensity,
                    ..Default::default()
                },
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
        Command::Fit(a) => {
            let mut sets = a.sets.clone();
            if let Some(d) = &a.data {
                sets.push(format!("data.dataset={}", d.display()));
            }
            if let Some(e) = a.epochs {
                sets.push(format!("train.epochs={e}"));
            }
            if let Some(m) = a.mode {
                sets.push(format!(
                    "train.mode=\"{}\"",
                    if m == Mode::Dmue { "dmue" } else { "baseline" }
                ));
            }
            if let Some(d) = a.device {
                let name = match d {
                    DeviceChoice::Auto => "auto",
                    DeviceChoice::Cpu => "cpu",
                    DeviceChoice::Cuda => "cuda",
                };
                sets.push(format!("train.device=\"{name}\""));
            }
            // A resumed run keeps its own configuration; --set may still change it (e.g. epochs).
            let run_config = a.out.join(trainer::CONFIG_FILE);
            let file = if a.resume && run_config.exists() {
                Some(run_config)
            } else {
                a.config.clone()
            };
            let cfg = Config::load(file.as_deref(), &sets)?;
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
                dmue_train::data::loader::InMemorySplit::load(&ds, split, &cfg.data.preprocess)?;
            let report =
                eval::evaluate(&net, &data, &ds.info.classes, &cfg.data.preprocess, device);
            eval::write(&a.run, &report).context("writing the evaluation report")?;
            print!("{report}");
            println!(
                "wrote {} and {}",
                a.run.join(format!("eval-{}.json", report.split)).display(),
                a.run
                    .join(format!("confusion-{}.png", report.split))
                    .display()
            );
        }
        Command::Export(a) => {
            let out = a.out.unwrap_or_else(|| a.run.join("target.onnx"));
            let report = dmue_train::export::export_run(&a.run, &out)?;
            println!("{report}");
        }
    }
    Ok(())
}
