//! `dmue-train pretrain`: the backbone as a face-recognition network, for `fit --init`.

use super::run_config;
use anyhow::Result;
use dmue_train::fit::config::{Config, DeviceChoice, Edit, Mode};
use dmue_train::model::Backbone;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct PretrainArgs {
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
    #[arg(long, value_parser = super::backbone_parser())]
    backbone: Option<Backbone>,
    #[arg(long, value_enum, env = "DMUE_DEVICE")]
    device: Option<DeviceChoice>,
    /// Continue the run in --out from its newest checkpoint.
    #[arg(long)]
    resume: bool,
}

pub fn run(a: PretrainArgs) -> Result<()> {
    let data = a.data.clone();
    let mut edits: Vec<Edit> = vec![Box::new(move |c: &mut Config| {
        c.data.dataset = data.clone();
        // Hundreds of identities: no per-class quota in a batch.
        c.train.min_per_class = 0;
    })];
    edits.extend(super::shorthands(a.epochs, a.backbone, a.device));
    let mut cfg = run_config(&a.out, a.resume, &[], &a.config, &edits, &a.sets)?;
    // Identity classification is plain training, whatever the files and --set say.
    cfg.train.mode = Mode::Baseline;
    let (s, path) = dmue_train::fit::pretrain::pretrain(&cfg, &a.out, a.resume)?;
    println!("{}", super::finished_line("pretrained", &s));
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
    Ok(())
}
