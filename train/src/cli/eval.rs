//! `dmue-train eval`: a run's newest checkpoint on a split.

use anyhow::{Context, Result};
use dmue_train::fit::config::DeviceChoice;
use dmue_train::fit::{eval, trainer};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct EvalArgs {
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

pub fn run(a: EvalArgs) -> Result<()> {
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
    let data = dmue_train::data::loader::SplitImages::load(&ds, split, &cfg.data.preprocess)?;
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
    Ok(())
}
