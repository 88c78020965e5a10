//! `dmue-train fit`: train DMUE (or a single-network mode) on a dataset directory.

use super::run_config;
use anyhow::{Context, Result};
use dmue_train::dist;
use dmue_train::fit::config::{Config, DeviceChoice, Edit, Mode, FACE_TRUNK_LAYER};
use dmue_train::fit::trainer;
use dmue_train::model::{dlib, Backbone};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct FitArgs {
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
    /// Override any config field: --set train.lr=0.0005 --set loss.latent=false (repeatable;
    /// applied last, over the files and the other flags).
    #[arg(long = "set", value_name = "SECTION.FIELD=VALUE")]
    sets: Vec<String>,
    /// Shorthand for --set train.epochs=N.
    #[arg(long)]
    epochs: Option<usize>,
    /// Shorthand for --set train.mode=...
    #[arg(long, value_enum)]
    mode: Option<Mode>,
    /// A named DMUE variant (configs/variants/NAME.toml, built in), applied over the defaults
    /// before any --config file. The defaults are aux-belief-rel; from --init face, face-trunk.
    #[arg(long, value_enum)]
    preset: Option<super::Preset>,
    /// Shorthand for --set train.device=...
    #[arg(long, value_enum, env = "DMUE_DEVICE")]
    device: Option<DeviceChoice>,
    /// Shorthand for --set model.backbone=...
    #[arg(long, value_parser = super::backbone_parser())]
    backbone: Option<Backbone>,
    /// Start the backbone from pretrained weights (safetensors; convert .pth files with
    /// scripts/convert-weights.sh). Torchvision ResNet-18 / MobileNetV2 names, the authors'
    /// MS-Celeb ResNet-18 (with --set model.stem=authors) and `dmue-train pretrain` output
    /// are recognised; the report goes to OUT/init-report.json. Shorthand for train.init.
    /// `--init face`: dlib's face-recognition ResNet (scripts/fetch-face-trunk.sh), which also
    /// sets model.backbone=face-resnet (width 32), train.lr=1e-5, dlib's input normalisation
    /// and 150-pixel inputs (resize 171, crop 150), --set overriding any of them; and DMUE's
    /// face-trunk preset under any --preset or --config.
    #[arg(long, value_name = "FILE|face")]
    init: Option<PathBuf>,
    /// Freeze the loaded backbone for the first N epochs (only the classifiers train).
    #[arg(long, value_name = "N")]
    freeze_trunk_epochs: Option<usize>,
    /// Continue the run in --out from its newest checkpoint (its config.toml, plus --set).
    #[arg(long)]
    resume: bool,
    /// Train data-parallel on N local processes (spawned here, as torchrun would: ranks
    /// 0..N-1 on 127.0.0.1). train.batch_size stays the batch of the whole job; each rank
    /// trains on batch_size / N. Jobs over several machines are started by torchrun or srun
    /// instead (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT); see docs/training.md.
    #[arg(long, value_name = "N", default_value_t = 1)]
    nproc: usize,
    /// Collective backend of a multi-process job: NCCL on CUDA, Gloo on the CPU.
    #[arg(long, value_enum, default_value = "auto")]
    dist_backend: dist::Backend,
    /// Seconds a rank waits for the others (at the start, and in every exchange) before it
    /// stops with an error naming the rank that died or hung.
    #[arg(long, value_name = "SECONDS", default_value_t = dist::DEFAULT_TIMEOUT.as_secs())]
    dist_timeout: u64,
}

pub fn run(a: FitArgs) -> Result<()> {
    let launch = dist::Launch::from_env()?;
    let timeout = std::time::Duration::from_secs(a.dist_timeout.max(1));
    if launch.is_none() && a.nproc > 1 {
        return super::launch::spawn_local(a.nproc, timeout, &a.out);
    }
    let rank = launch.as_ref().map_or(0, |l| l.rank);
    let job = trainer::Job {
        launch,
        backend: a.dist_backend,
        timeout,
    };
    let mut edits: Vec<Edit> = Vec::new();
    if let Some(d) = a.data {
        edits.push(Box::new(move |c: &mut Config| c.data.dataset = d.clone()));
    }
    edits.extend(super::shorthands(a.epochs, a.backbone, a.device));
    if let Some(m) = a.mode {
        edits.push(Box::new(move |c: &mut Config| c.train.mode = m));
    }
    let mut layers = Vec::new();
    match a.init {
        // The named start: dlib's face-recognition ResNet (its settings, then --set), and the
        // DMUE settings measured best from it, under any preset or file.
        Some(f) if f.as_os_str() == "face" && !f.exists() => {
            layers.push(FACE_TRUNK_LAYER);
            let converted = std::fs::canonicalize(dlib::CONVERTED).with_context(|| {
                format!(
                    "--init face needs {} (run scripts/fetch-face-trunk.sh in the repository, \
                     and fit from its root)",
                    dlib::CONVERTED
                )
            })?;
            edits.insert(
                0,
                Box::new(move |c: &mut Config| c.start_from_face_trunk(&converted)),
            );
        }
        Some(f) => edits.push(Box::new(move |c: &mut Config| {
            c.train.init = Some(f.clone())
        })),
        None => {}
    }
    if let Some(n) = a.freeze_trunk_epochs {
        edits.push(Box::new(move |c: &mut Config| {
            c.train.freeze_trunk_epochs = n
        }));
    }
    layers.extend(a.preset.map(super::Preset::layer));
    let cfg = run_config(&a.out, a.resume, &layers, &a.config, &edits, &a.sets)?;
    let world = job.launch.as_ref().map_or(1, |l| l.world_size);
    let s = trainer::fit_job(&cfg, &a.out, a.resume, &job).map_err(|e| {
        if world > 1 {
            e.context(format!("rank {rank} of {world}"))
        } else {
            e
        }
    })?;
    if rank > 0 {
        return Ok(());
    }
    println!("{}", super::finished_line("trained", &s));
    if let Some(r) = &s.final_eval {
        print!("{r}");
        println!("chance level {:.2}%", 100.0 / r.classes.len() as f64);
    }
    Ok(())
}
