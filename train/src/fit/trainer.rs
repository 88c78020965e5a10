//! `dmue-train fit`: set-up, data, model, resume, the epoch loop, evaluation, checkpoints.

use crate::data::loader::{prefetch, train_batch, Augment, ReadyBatch, SplitImages};
use crate::data::manifest::{Dataset, Split};
use crate::data::sampler::epoch_batches;
use crate::fit::checkpoint::{self, TrainState};
use crate::fit::config::{Config, DeviceChoice, Mode, Precision};
use crate::fit::eval::{self, EvalReport};
use crate::fit::loss::{
    class_activation_maps, dmue_loss, elr_regulariser, elr_targets, flip_consistency,
    single_branch_loss, LossTerms,
};
use crate::fit::optim::Adam;
use crate::model::{count_params, is_target_param, Branches, MultiBranchNet, TrainOutput};
use crate::util::plot::{line_panels, Panel};
use anyhow::{bail, Context, Result};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;
use tch::{nn, Device, Kind, Tensor};

pub const CONFIG_FILE: &str = "config.toml";
pub const METRICS_FILE: &str = "metrics.jsonl";
pub const CURVES_FILE: &str = "curves.png";
pub const SUMMARY_FILE: &str = "summary.json";
/// What `--init` loaded (see `init.rs`).
pub const INIT_REPORT_FILE: &str = "init-report.json";

/// One line of `metrics.jsonl`: means over the epoch's training steps, then evaluation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochMetrics {
    pub epoch: usize,
    pub lr: f64,
    pub w_u: f64,
    pub w_d: f64,
    pub loss: f64,
    pub target: f64,
    pub soft: Option<f64>,
    pub sp: Option<f64>,
    pub aux: Option<f64>,
    /// A peer method's regulariser (ELR's, or EAC's consistency), before its weight.
    #[serde(default)]
    pub reg: Option<f64>,
    pub alpha_mean: Option<f64>,
    pub train_accuracy: f64,
    pub eval_accuracy: Option<f64>,
    pub images_per_second: f64,
    pub seconds: f64,
}

/// What a finished `fit` reports.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FitSummary {
    pub run_dir: PathBuf,
    pub mode: Mode,
    pub device: String,
    pub epochs: usize,
    pub train_images: usize,
    pub parameters_total: i64,
    pub parameters_deployed: i64,
    pub train_seconds: f64,
    pub images_per_second: f64,
    pub final_eval: Option<EvalReport>,
}

/// `auto` picks CUDA when libtorch sees a GPU; `cuda` without one is an error, not a fallback.
pub fn resolve_device(choice: DeviceChoice) -> Result<Device> {
    let cuda = tch::Cuda::is_available();
    match choice {
        DeviceChoice::Cpu => Ok(Device::Cpu),
        DeviceChoice::Auto => Ok(if cuda { Device::Cuda(0) } else { Device::Cpu }),
        DeviceChoice::Cuda if cuda => Ok(Device::Cuda(0)),
        DeviceChoice::Cuda => bail!(
            "CUDA was requested (--device cuda) but libtorch sees no CUDA device: check that a GPU and its driver are \
             present (nvidia-smi), or train on the CPU with --device cpu (or auto)"
        ),
    }
}

extern "C" {
    fn dmue_set_cuda_autocast_bf16();
}

/// EAC's largest erased share of the image (torchvision's RandomErasing with scale 0.02-0.25).
const EAC_ERASING_MAX_AREA: f32 = 0.25;

/// One ELR step on the batch's rows of `buffer` (`[train images, C]`): the rows move towards
/// this prediction (written back, no gradient), and the regulariser against the updated rows
/// is returned. `indices`: the batch's images in the training split.
fn elr_step(buffer: &Tensor, logits: &Tensor, indices: &Tensor, beta: f64) -> Tensor {
    let updated = elr_targets(&buffer.index_select(0, indices), logits, beta);
    tch::no_grad(|| {
        let mut b = buffer.shallow_clone();
        let _ = b.index_copy_(0, indices, &updated);
    });
    elr_regulariser(logits, &updated)
}

/// Runs `f` under bf16 autocast when `on` (CUDA only).
fn with_precision<T>(on: bool, f: impl FnOnce() -> T) -> T {
    if on {
        tch::autocast(true, f)
    } else {
        f()
    }
}

/// Adds a weighted regulariser to the terms: under DMUE it joins the ramped-up group with the
/// target term, otherwise it is added as it is.
fn add_regulariser(terms: &mut LossTerms, reg: Tensor, weight: f64) {
    terms.total = &terms.total + &reg * (weight * terms.w_u);
    terms.reg = Some(reg);
}

/// Rebuilds a run's network (for eval/export): config from the run directory, weights from its
/// newest checkpoint.
pub fn load_run(
    run: &Path,
    device: Device,
) -> Result<(Config, Dataset, nn::VarStore, MultiBranchNet)> {
    let cfg = Config::load(&[run.join(CONFIG_FILE)], &[])
        .with_context(|| format!("{} is not a dmue run directory", run.display()))?;
    apply_threads(&cfg);
    let ds = Dataset::open(&cfg.data.dataset)?;
    let mut vs = nn::VarStore::new(device);
    let net = MultiBranchNet::new(
        &vs.root(),
        &cfg.model,
        ds.num_classes(),
        cfg.train.mode.multi_branch(),
    );
    let (dir, _) = checkpoint::latest(run)?
        .with_context(|| format!("{} has no checkpoint yet", run.display()))?;
    checkpoint::restore(&dir, &mut vs, None)?;
    Ok((cfg, ds, vs, net))
}

/// libtorch's intra-op threads as the run's config says (`train.threads`, 0 = libtorch's
/// default). Every command that loads a run uses the same count as its training did: on shared
/// cores, more threads than the run was sized for spin against each other (an audit of a
/// one-thread benchmark run took 127 s of CPU with two threads next to other jobs, 7 s with one).
pub fn apply_threads(cfg: &Config) {
    if cfg.train.threads > 0 {
        tch::set_num_threads(cfg.train.threads as i32);
    }
}

/// Where an epoch stands in the schedules: its learning rate (`train.lr_milestones`) and
/// DMUE's ramps `(w_u, w_d)` (Eq. 12; `(1, 0)` for the single-network modes).
#[derive(Debug, Clone, Copy)]
struct Schedule {
    lr: f64,
    ramps: (f64, f64),
}

/// Every epoch's [`Schedule`], computed once; index 0 is unused (epochs count from 1).
fn schedules(cfg: &Config) -> Vec<Schedule> {
    let multi = cfg.train.mode.multi_branch();
    (0..=cfg.train.epochs)
        .map(|epoch| Schedule {
            lr: cfg.train.lr_at(epoch),
            ramps: if multi {
                crate::fit::loss::ramps(epoch, cfg.loss.beta)
            } else {
                (1.0, 0.0)
            },
        })
        .collect()
}

/// Trains a run: set-up (or resume), the epochs, the final evaluation and summary.
pub fn fit(cfg: &Config, run: &Path, resume: bool) -> Result<FitSummary> {
    let mut trainer = Trainer::new(cfg, run, resume)?;
    for epoch in trainer.state.epoch + 1..=cfg.train.epochs {
        let stats = trainer.train_epoch(epoch)?;
        trainer.finish_epoch(epoch, stats)?;
    }
    trainer.finish()
}

/// Steps whose values stay on the device before they are read back together: the step's only
/// host sync, and the most steps that can run after a non-finite loss before it is reported.
pub const SYNC_EVERY: usize = 10;

/// What a step reports besides its correct count, in the order of [`StepValues`]: the loss
/// terms, then the confidence module's mean output (not a loss).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Term {
    Total,
    Target,
    Soft,
    Sp,
    Aux,
    Reg,
    Alpha,
}

impl Term {
    const ALL: [Term; 7] = [
        Term::Total,
        Term::Target,
        Term::Soft,
        Term::Sp,
        Term::Aux,
        Term::Reg,
        Term::Alpha,
    ];

    fn name(self) -> &'static str {
        match self {
            Term::Total => "total",
            Term::Target => "target",
            Term::Soft => "soft",
            Term::Sp => "sp",
            Term::Aux => "aux",
            Term::Reg => "reg",
            Term::Alpha => "alpha",
        }
    }
}

/// One step's reported values, still on the device: one f64 per [`Term`] (absent ones hold 0)
/// then the correct count, which of the terms exist, and the batch size.
struct StepValues {
    values: Tensor,
    present: [bool; Term::ALL.len()],
    images: usize,
    /// 1-based step of the epoch and global step, for a NaN report.
    step: usize,
    global_step: u64,
}

/// Means over an epoch's steps, from typed fields.
#[derive(Debug, Default)]
pub struct EpochStats {
    steps: usize,
    images: usize,
    correct: f64,
    sums: [f64; Term::ALL.len()],
    counts: [usize; Term::ALL.len()],
    seconds: f64,
}

impl EpochStats {
    fn mean(&self, term: Term) -> Option<f64> {
        let k = term as usize;
        (self.counts[k] > 0).then(|| self.sums[k] / self.counts[k] as f64)
    }

    /// Adds steps read back from the device; stops at the first non-finite total.
    fn absorb(&mut self, steps: Vec<StepValues>, epoch: usize) -> Result<()> {
        if steps.is_empty() {
            return Ok(());
        }
        let stacked = Tensor::stack(&steps.iter().map(|s| &s.values).collect::<Vec<_>>(), 0);
        // The one device-to-host transfer of these steps.
        let host = Vec::<f64>::try_from(stacked.to_device(Device::Cpu).flatten(0, -1))?;
        let width = Term::ALL.len() + 1;
        for (s, row) in steps.iter().zip(host.chunks(width)) {
            if !row[0].is_finite() {
                return Err(non_finite_report(epoch, s, row));
            }
            self.steps += 1;
            self.images += s.images;
            self.correct += row[Term::ALL.len()];
            for (k, v) in row[..Term::ALL.len()].iter().enumerate() {
                if s.present[k] {
                    self.sums[k] += v;
                    self.counts[k] += 1;
                }
            }
        }
        Ok(())
    }

    /// "total 1.2345 target ..." for the progress bar.
    fn shown(&self) -> String {
        Term::ALL
            .iter()
            .filter_map(|&t| self.mean(t).map(|v| format!("{} {v:.4}", t.name())))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// The error of a step whose total loss is not finite, naming the terms that are not.
fn non_finite_report(epoch: usize, s: &StepValues, row: &[f64]) -> anyhow::Error {
    let terms: Vec<(&str, f64)> = Term::ALL
        .iter()
        .filter(|&&t| s.present[t as usize] && t != Term::Alpha)
        .map(|&t| (t.name(), row[t as usize]))
        .collect();
    let bad: Vec<&str> = terms
        .iter()
        .skip(1)
        .filter(|(_, v)| !v.is_finite())
        .map(|(n, _)| *n)
        .collect();
    let culprit = if bad.is_empty() {
        "the weighted sum overflowed".to_string()
    } else {
        format!("term {}", bad.join(", "))
    };
    let listing: Vec<String> = terms.iter().map(|(n, v)| format!("{n} = {v}")).collect();
    anyhow::anyhow!(
        "non-finite loss at epoch {epoch}, step {} (global step {}): {culprit} is not finite ({}). Training \
         stopped within {SYNC_EVERY} steps of it and nothing after the last checkpoint was saved; the last \
         checkpoint is intact. Lower train.lr or loss.gamma and continue with --resume.",
        s.step,
        s.global_step,
        listing.join(", ")
    )
}

/// bf16 autocast when asked for and on CUDA (set up here); fp32 otherwise.
fn use_bf16(cfg: &Config, device: Device) -> bool {
    let bf16 = cfg.train.precision == Precision::Bf16 && device.is_cuda();
    if cfg.train.precision == Precision::Bf16 && !bf16 {
        tracing::warn!("precision bf16 needs CUDA; training in fp32 on the CPU");
    }
    if bf16 {
        // SAFETY: a plain setter of libtorch's global autocast dtype, no arguments.
        unsafe { dmue_set_cuda_autocast_bf16() };
    }
    bf16
}

/// The dataset, its training split and the split evaluated after each epoch; unreadable
/// images are listed in RUN/skipped.txt; fewer readable training images than a batch is an
/// error that names the fix.
fn load_data(cfg: &Config, run: &Path) -> Result<(Dataset, SplitImages, Option<SplitImages>)> {
    let ds = Dataset::open(&cfg.data.dataset)?;
    let pre = cfg.data.preprocess;
    let train = SplitImages::open(&ds, Split::Train, &pre, cfg.data.loader)?;
    let eval_data = match cfg.data.eval_split.as_str() {
        "" => None,
        s => {
            let split: Split = s.parse()?;
            if ds.split(split).next().is_none() {
                tracing::warn!("the dataset has no {split} split: no evaluation during training");
                None
            } else {
                Some(SplitImages::open(&ds, split, &pre, cfg.data.loader)?)
            }
        }
    };
    let skipped: Vec<String> = train
        .skipped
        .iter()
        .chain(eval_data.iter().flat_map(|e| e.skipped.iter()))
        .map(|s| format!("{}\t{}", s.path, s.reason))
        .collect();
    if !skipped.is_empty() {
        crate::util::write_atomic(
            &run.join("skipped.txt"),
            (skipped.join("\n") + "\n").as_bytes(),
        )?;
        tracing::warn!(
            "{} image(s) could not be read and were skipped; see {}",
            skipped.len(),
            run.join("skipped.txt").display()
        );
    }
    if train.len() < cfg.train.batch_size {
        bail!(
            "the training split has {} readable images, fewer than one batch ({}): lower \
             the batch size with --set train.batch_size=N (N at most {}; DMUE needs \
             train.min_per_class images of every class in each batch), or add images",
            train.len(),
            cfg.train.batch_size,
            train.len()
        );
    }
    Ok((ds, train, eval_data))
}

/// The state and metrics history of a resumed run from its newest checkpoint (`existing`),
/// its weights and optimizer moments restored into `vs` and `opt`; a fresh state otherwise.
fn restore(
    cfg: &Config,
    run: &Path,
    metrics_path: &Path,
    resume: bool,
    existing: Option<(PathBuf, TrainState)>,
    vs: &mut nn::VarStore,
    opt: &mut Adam,
) -> Result<(TrainState, Vec<EpochMetrics>)> {
    let mut state = TrainState {
        epoch: 0,
        global_step: 0,
        optimizer_step: 0,
        seed: cfg.train.seed,
        best_accuracy: None,
        best_epoch: None,
        version: env!("CARGO_PKG_VERSION").to_string(),
    };
    let mut history: Vec<EpochMetrics> = Vec::new();
    if let Some((dir, saved)) = existing {
        checkpoint::restore(&dir, vs, Some((opt, saved.optimizer_step)))?;
        tracing::info!(
            "resuming from {} (epoch {} done)",
            dir.display(),
            saved.epoch
        );
        state = saved;
        history = read_metrics(metrics_path)?
            .into_iter()
            .filter(|m| m.epoch <= state.epoch)
            .collect();
    } else if resume {
        tracing::warn!(
            "--resume given but {} has no checkpoint: starting from scratch",
            run.display()
        );
    }
    Ok((state, history))
}

/// A run in progress: everything `fit` sets up once, then one epoch at a time.
struct Trainer<'a> {
    cfg: &'a Config,
    run: &'a Path,
    device: Device,
    bf16: bool,
    ds: Dataset,
    /// Shared with the prefetch thread.
    train: std::sync::Arc<SplitImages>,
    eval_data: Option<SplitImages>,
    vs: nn::VarStore,
    net: MultiBranchNet,
    opt: Adam,
    /// How the branches run: fused, or the target alone when no loss reads the auxiliaries.
    branches: Branches,
    /// ELR's running-average targets, one row per training image (`--mode elr`, `loss.elr`):
    /// an untrained variable of the VarStore, so checkpoints carry it and a resumed run goes on
    /// from it.
    elr_targets: Option<Tensor>,
    backbone_vars: Vec<Tensor>,
    state: TrainState,
    history: Vec<EpochMetrics>,
    metrics_path: PathBuf,
    dynamics: crate::fit::dynamics::LabelDynamics,
    total_params: i64,
    deployed_params: i64,
    started: Instant,
    first_epoch: usize,
    images_seen: usize,
    schedule: Vec<Schedule>,
}

impl<'a> Trainer<'a> {
    /// Device, data, model, optimizer, and the state of a resumed run.
    fn new(cfg: &'a Config, run: &'a Path, resume: bool) -> Result<Self> {
        let device = resolve_device(cfg.train.device)?;
        apply_threads(cfg);
        let bf16 = use_bf16(cfg, device);
        let existing = checkpoint::latest(run)?;
        if existing.is_some() && !resume {
            bail!("{} already holds a run with checkpoints: pass --resume to continue it, or choose another --out", run.display());
        }
        std::fs::create_dir_all(run)
            .with_context(|| format!("cannot create run directory {}", run.display()))?;
        crate::util::write_atomic(&run.join(CONFIG_FILE), cfg.to_toml()?.as_bytes())?;

        // ---- data
        let (ds, train, eval_data) = load_data(cfg, run)?;
        let c = ds.num_classes();

        // ---- model and optimizer
        tch::manual_seed(cfg.train.seed as i64);
        let mut vs = nn::VarStore::new(device);
        let multi = cfg.train.mode.multi_branch();
        let net = MultiBranchNet::new(&vs.root(), &cfg.model, c, multi);
        if multi && !cfg.loss.train_uncertainty {
            // The authors' code: the module stays at its initialisation (left out of the
            // optimizer; gradients still flow through it to S when loss.similarity_detach is
            // off).
            net.freeze_uncertainty();
        }
        if let (Some(path), None) = (&cfg.train.init, &existing) {
            // A resumed run has these weights (trained further) in its checkpoint already.
            let report = crate::model::init::load(&vs, &net, path)?;
            tracing::info!("{report}");
            crate::util::write_atomic(
                &run.join(INIT_REPORT_FILE),
                serde_json::to_string_pretty(&report)?.as_bytes(),
            )?;
        }
        let backbone_vars = crate::model::init::backbone_variables(&vs);
        // Made after every weight is drawn, so the initial weights do not depend on it.
        let elr_targets = (cfg.train.mode == Mode::Elr || (multi && cfg.loss.elr)).then(|| {
            vs.root()
                .zeros_no_train("elr_targets", &[train.len() as i64, c as i64])
        });
        let mut opt = Adam::new(&vs, cfg.train.weight_decay);
        let total_params = count_params(&vs, |_| true);
        let deployed_params = count_params(&vs, is_target_param);
        // No loss term reads the auxiliary branches (e.g. the confidence-only ablation): their
        // forward pass is skipped, and they keep their initial weights.
        let branches = if multi && !(cfg.loss.latent || cfg.loss.similarity_preserving) {
            Branches::TargetOnly
        } else {
            Branches::Fused
        };
        tracing::info!(
            "dmue-train fit: {:?} on {:?}, {c} classes, {} train images, {} parameters ({} deployed)",
            cfg.train.mode,
            device,
            train.len(),
            total_params,
            deployed_params
        );

        // ---- resume
        let metrics_path = run.join(METRICS_FILE);
        let (state, history) =
            restore(cfg, run, &metrics_path, resume, existing, &mut vs, &mut opt)?;
        crate::util::write_jsonl(&metrics_path, &history)?;
        let dynamics =
            crate::fit::dynamics::LabelDynamics::start(run, train.len(), state.epoch, device)?;
        let first_epoch = state.epoch + 1;
        Ok(Self {
            cfg,
            run,
            device,
            bf16,
            ds,
            train: std::sync::Arc::new(train),
            eval_data,
            vs,
            net,
            opt,
            branches,
            elr_targets,
            backbone_vars,
            state,
            history,
            metrics_path,
            dynamics,
            total_params,
            deployed_params,
            started: Instant::now(),
            first_epoch,
            images_seen: 0,
            schedule: schedules(cfg),
        })
    }

    /// One epoch's training steps; batches are cut on a prefetch thread while a step runs.
    fn train_epoch(&mut self, epoch: usize) -> Result<EpochStats> {
        let cfg = self.cfg;
        let frozen = epoch <= cfg.train.freeze_trunk_epochs;
        for t in &self.backbone_vars {
            let _ = t.set_requires_grad(!frozen);
        }
        if frozen && epoch == self.first_epoch {
            tracing::info!(
                "backbone frozen for epochs 1-{}: only the classifiers and the uncertainty module train",
                cfg.train.freeze_trunk_epochs
            );
        }
        let epoch_start = Instant::now();
        tch::manual_seed(
            (cfg.train.seed as i64)
                .wrapping_mul(1_000_003)
                .wrapping_add(epoch as i64),
        );
        let mut sampler_rng = ChaCha8Rng::seed_from_u64(cfg.train.seed);
        sampler_rng.set_stream(2 * epoch as u64);
        let batches = epoch_batches(
            &self.train.labels,
            self.ds.num_classes(),
            cfg.train.batch_size,
            cfg.train.min_per_class,
            &mut sampler_rng,
        );
        let pb = crate::util::progress(
            batches.len() as u64,
            &format!("epoch {epoch}/{}", cfg.train.epochs),
        );
        let lr = self.schedule[epoch].lr;
        let pre = cfg.data.preprocess;
        let eac = cfg.train.mode == Mode::Eac;
        let aug = Augment {
            hflip: cfg.data.hflip,
            gaussian_noise: cfg.data.gaussian_noise,
            random_erasing: if eac {
                cfg.train.eac_erasing
            } else {
                cfg.data.random_erasing
            },
            erasing_max_area: eac.then_some(EAC_ERASING_MAX_AREA),
        };
        let pin = self.device.is_cuda().then_some(self.device);
        let mut stats = EpochStats::default();
        let mut pending: Vec<StepValues> = Vec::with_capacity(SYNC_EVERY);
        let train = std::sync::Arc::clone(&self.train);
        std::thread::scope(|scope| -> Result<()> {
            let mut aug_rng = ChaCha8Rng::seed_from_u64(cfg.train.seed);
            aug_rng.set_stream(2 * epoch as u64 + 1);
            let images = std::sync::Arc::clone(&train);
            let rx = prefetch(scope, cfg.data.prefetch.max(1), &batches, move |idx| {
                train_batch(&images, idx, &pre, &aug, &mut aug_rng).into_tensors(pre.crop, pin)
            });
            let mut warned = epoch != self.first_epoch;
            for (i, batch) in rx.iter().enumerate() {
                pending.push(self.step(&batch, epoch, i + 1, lr));
                pb.inc(1);
                if pending.len() < SYNC_EVERY {
                    continue;
                }
                stats.absorb(std::mem::take(&mut pending), epoch)?;
                let rate = stats.images as f64 / epoch_start.elapsed().as_secs_f64().max(1e-9);
                if !warned && stats.steps >= WARN_AFTER_STEPS {
                    warned = true;
                    let left = cfg.train.epochs - self.state.epoch;
                    if let Some(msg) = long_run_warning(rate, train.len(), left, self.device) {
                        pb.suspend(|| tracing::warn!("{msg}"));
                    }
                }
                pb.set_message(format!("{} | {rate:.0} img/s", stats.shown()));
            }
            stats.absorb(pending, epoch)
        })?;
        pb.finish_and_clear();
        stats.seconds = epoch_start.elapsed().as_secs_f64();
        Ok(stats)
    }

    /// One optimisation step; its reported values stay on the device.
    fn step(&mut self, batch: &ReadyBatch, epoch: usize, step: usize, lr: f64) -> StepValues {
        let cfg = self.cfg;
        let (x, y, indices) = batch.to_device(self.device);
        // The forward pass may run under bf16 autocast; the losses always run in fp32 outside
        // it (small sums, divisions by counts and exp of logits need the range).
        let (out, consistency) = if cfg.train.mode == Mode::Eac {
            self.eac_forward(&x)
        } else {
            let out = with_precision(self.bf16, || self.net.forward_with(&x, true, self.branches));
            (out.to_fp32(), None)
        };
        let mut terms = if cfg.train.mode.multi_branch() {
            let (ramps, q) = (self.schedule[epoch].ramps, cfg.train.gce_q);
            dmue_loss(
                &out,
                self.net.uncertainty.as_ref(),
                &y,
                &cfg.loss,
                epoch,
                ramps,
                q,
            )
        } else {
            single_branch_loss(&out.target_logits, &y, cfg.train.single_loss())
        };
        if let Some(c) = consistency {
            add_regulariser(&mut terms, c, cfg.train.eac_lambda);
        }
        if let Some(buffer) = &self.elr_targets {
            let reg = elr_step(buffer, &out.target_logits, &indices, cfg.train.elr_beta);
            add_regulariser(&mut terms, reg, cfg.train.elr_lambda);
        }
        self.dynamics.record(&out.target_logits, &y, &indices);
        // The module's own output: the normalised weights average 1 by construction.
        let alpha = tch::no_grad(|| terms.alpha_raw.as_ref().map(|a| a.mean(Kind::Float)));
        let term = |t: Term| match t {
            Term::Total => Some(&terms.total),
            Term::Target => Some(&terms.target),
            Term::Soft => terms.soft.as_ref(),
            Term::Sp => terms.sp.as_ref(),
            Term::Aux => terms.aux.as_ref(),
            Term::Reg => terms.reg.as_ref(),
            Term::Alpha => alpha.as_ref(),
        };
        let values = tch::no_grad(|| {
            let zero = || Tensor::zeros([], (Kind::Double, self.device));
            let as_f64 =
                |t: Option<&Tensor>| t.map_or_else(zero, |t| t.detach().to_kind(Kind::Double));
            let correct = out
                .target_logits
                .argmax(1, false)
                .eq_tensor(&y)
                .sum(Kind::Double);
            let mut row: Vec<Tensor> = Term::ALL.map(|t| as_f64(term(t))).into();
            row.push(correct);
            Tensor::stack(&row, 0)
        });
        let present = Term::ALL.map(|t| term(t).is_some());
        self.opt.zero_grad();
        terms.total.backward();
        self.opt
            .step(lr)
            .expect("fused Adam on tensors it was built for");
        self.state.global_step += 1;
        StepValues {
            values,
            present,
            images: batch.len(),
            step,
            global_step: self.state.global_step,
        }
    }

    /// EAC's two views in one pass: the (erased) batch and its mirror image. Returns the first
    /// view's outputs and the flip consistency of their class activation maps.
    fn eac_forward(&self, x: &Tensor) -> (TrainOutput, Option<Tensor>) {
        let n = x.size()[0];
        let both = Tensor::cat(&[x.shallow_clone(), x.flip([3])], 0);
        let (map, out) = with_precision(self.bf16, || self.net.forward_target_map(&both, true));
        let (map, out) = (map.to_kind(Kind::Float), out.to_fp32());
        // The classifier enters detached, as in EAC's code: the consistency must shape the
        // features, and could otherwise be met by shrinking the classifier towards 0 (seen:
        // every prediction collapsed to one class).
        let cams = class_activation_maps(&map, &self.net.target.fc.ws.detach());
        let consistency = flip_consistency(&cams.narrow(0, 0, n), &cams.narrow(0, n, n));
        let first = TrainOutput {
            target_feat: out.target_feat.narrow(0, 0, n),
            target_logits: out.target_logits.narrow(0, 0, n),
            aux_feat: Vec::new(),
            aux_logits: Vec::new(),
        };
        (first, Some(consistency))
    }

    /// Evaluation, metrics, curves, label dynamics and the checkpoint of a finished epoch.
    fn finish_epoch(&mut self, epoch: usize, stats: EpochStats) -> Result<()> {
        let cfg = self.cfg;
        self.images_seen += stats.images;
        let eval_start = Instant::now();
        let eval_report = self.evaluate();
        let Schedule {
            lr,
            ramps: (w_u, w_d),
        } = self.schedule[epoch];
        let metrics = EpochMetrics {
            epoch,
            lr,
            w_u,
            w_d,
            loss: stats.mean(Term::Total).unwrap_or(f64::NAN),
            target: stats.mean(Term::Target).unwrap_or(f64::NAN),
            soft: stats.mean(Term::Soft),
            sp: stats.mean(Term::Sp),
            aux: stats.mean(Term::Aux),
            reg: stats.mean(Term::Reg),
            alpha_mean: stats.mean(Term::Alpha),
            train_accuracy: stats.correct / stats.images.max(1) as f64,
            eval_accuracy: eval_report.as_ref().map(|r| r.accuracy),
            images_per_second: stats.images as f64 / stats.seconds.max(1e-9),
            seconds: stats.seconds + eval_start.elapsed().as_secs_f64(),
        };
        let left = cfg.train.epochs - epoch;
        let per_epoch =
            self.started.elapsed().as_secs_f64() / (epoch + 1 - self.first_epoch) as f64;
        let eta = if left > 0 {
            format!("  run ETA {}", duration(per_epoch * left as f64))
        } else {
            String::new()
        };
        tracing::info!("{}{eta}", epoch_line(&metrics, cfg.train.epochs));
        append_metrics(&self.metrics_path, &metrics)?;
        self.history.push(metrics);
        plot_curves(&self.run.join(CURVES_FILE), &self.history)?;

        if let Some(r) = &eval_report {
            if self.state.best_accuracy.is_none_or(|b| r.accuracy > b) {
                self.state.best_accuracy = Some(r.accuracy);
                self.state.best_epoch = Some(epoch);
            }
        }
        self.dynamics.finish_epoch(self.run, epoch)?;
        self.state.epoch = epoch;
        self.state.optimizer_step = self.opt.step;
        checkpoint::save(
            self.run,
            &self.vs,
            &self.opt,
            &self.state,
            cfg.train.keep_checkpoints,
        )?;
        Ok(())
    }

    fn evaluate(&self) -> Option<EvalReport> {
        self.eval_data.as_ref().map(|e| {
            eval::evaluate(
                &self.net,
                e,
                &self.ds.info.classes,
                &self.cfg.data.preprocess,
                self.device,
            )
        })
    }

    /// Final weights, final evaluation, summary.
    fn finish(self) -> Result<FitSummary> {
        let train_seconds = self.started.elapsed().as_secs_f64();
        self.vs
            .save(self.run.join(checkpoint::MODEL_FILE))
            .context("cannot write the final weights")?;
        let final_eval = self.evaluate();
        if let Some(r) = &final_eval {
            eval::write(self.run, r)?;
        }
        let summary = FitSummary {
            run_dir: self.run.to_path_buf(),
            mode: self.cfg.train.mode,
            device: format!("{:?}", self.device),
            epochs: self.cfg.train.epochs,
            train_images: self.train.len(),
            parameters_total: self.total_params,
            parameters_deployed: self.deployed_params,
            train_seconds,
            images_per_second: self.images_seen as f64 / train_seconds.max(1e-9),
            final_eval,
        };
        crate::util::write_atomic(
            &self.run.join(SUMMARY_FILE),
            serde_json::to_string_pretty(&summary)?.as_bytes(),
        )?;
        Ok(summary)
    }
}

/// Steps measured before the start-up estimate of the whole run's time.
const WARN_AFTER_STEPS: usize = 5;

/// "1h05m", "12m30s", "42s".
fn duration(seconds: f64) -> String {
    let s = seconds.max(0.0).round() as u64;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

/// Said once at start-up when the run, at the throughput of its first steps, will take more
/// than an hour: the paper's size on a CPU takes hours, and the user should know before.
fn long_run_warning(
    images_per_second: f64,
    images: usize,
    epochs_left: usize,
    device: Device,
) -> Option<String> {
    let seconds = images as f64 * epochs_left as f64 / images_per_second.max(1e-9);
    (seconds > 3600.0).then(|| {
        let hint = if device.is_cuda() {
            "fewer epochs (--epochs) or a smaller backbone"
        } else {
            "`-c configs/demo-cpu.toml` (width 16 on 64x64 crops, minutes on 2 cores)"
        };
        format!(
            "note: at {images_per_second:.0} img/s on {device:?}, the {epochs_left} epochs left will take about {}. For a quick run, use {hint}.",
            duration(seconds)
        )
    })
}

fn epoch_line(m: &EpochMetrics, epochs: usize) -> String {
    let mut s = format!(
        "epoch {:>3}/{epochs}  loss {:.4}  target {:.4}",
        m.epoch, m.loss, m.target
    );
    for (name, v) in [
        ("soft", m.soft),
        ("sp", m.sp),
        ("aux", m.aux),
        ("alpha", m.alpha_mean),
    ] {
        if let Some(v) = v {
            s += &format!("  {name} {v:.4}");
        }
    }
    s += &format!("  train acc {:.1}%", 100.0 * m.train_accuracy);
    if let Some(a) = m.eval_accuracy {
        s += &format!("  eval acc {:.1}%", 100.0 * a);
    }
    s + &format!(
        "  lr {:.0e}  {:.0} img/s  {:.1}s",
        m.lr, m.images_per_second, m.seconds
    )
}

pub fn read_metrics(path: &Path) -> Result<Vec<EpochMetrics>> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(Vec::new());
    };
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l)
                .with_context(|| format!("{}:{}: malformed metrics line", path.display(), i + 1))
        })
        .collect()
}

fn append_metrics(path: &Path, m: &EpochMetrics) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    writeln!(f, "{}", serde_json::to_string(m)?)?;
    Ok(())
}

fn plot_curves(path: &Path, history: &[EpochMetrics]) -> Result<()> {
    let series = |f: &dyn Fn(&EpochMetrics) -> Option<f64>| -> Vec<(f64, f64)> {
        history
            .iter()
            .filter_map(|m| f(m).map(|v| (m.epoch as f64, v)))
            .collect()
    };
    let mut panels = vec![
        Panel {
            title: "total loss".into(),
            series: vec![("total".into(), series(&|m| Some(m.loss)))],
        },
        Panel {
            title: "target branch term (CE or GCE; alpha-weighted in DMUE)".into(),
            series: vec![("target".into(), series(&|m| Some(m.target)))],
        },
        Panel {
            title: "accuracy".into(),
            series: vec![
                ("train".into(), series(&|m| Some(m.train_accuracy))),
                ("eval".into(), series(&|m| m.eval_accuracy)),
            ],
        },
    ];
    for (title, f) in [
        (
            "L_soft (latent distribution)",
            &(|m: &EpochMetrics| m.soft) as &dyn Fn(&EpochMetrics) -> Option<f64>,
        ),
        ("L_sp (similarity preserving)", &|m: &EpochMetrics| m.sp),
        ("L_aux (auxiliary branches)", &|m: &EpochMetrics| m.aux),
        ("mean alpha (module output)", &|m: &EpochMetrics| {
            m.alpha_mean
        }),
    ] {
        let s = series(f);
        if !s.is_empty() {
            panels.push(Panel {
                title: title.into(),
                series: vec![(title.into(), s)],
            });
        }
    }
    if history.iter().any(|m| m.w_d > 0.0) {
        panels.push(Panel {
            title: "ramps w_u, w_d".into(),
            series: vec![
                ("w_u".into(), series(&|m| Some(m.w_u))),
                ("w_d".into(), series(&|m| Some(m.w_d))),
            ],
        });
    }
    line_panels(path, &panels, 3)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_the_long_run_warning() {
        assert_eq!(duration(42.4), "42s");
        assert_eq!(duration(750.0), "12m30s");
        assert_eq!(duration(3900.0), "1h05m");
        // 6 img/s, 2,800 images, 40 epochs: 18,667 s = 5h11m.
        let w = long_run_warning(6.0, 2800, 40, Device::Cpu).unwrap();
        assert!(w.contains("5h11m") && w.contains("demo-cpu.toml"), "{w}");
        assert!(long_run_warning(700.0, 2800, 20, Device::Cpu).is_none());
    }
}
