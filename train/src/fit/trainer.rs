//! `dmue-train fit`: set-up, data, model, resume, the epoch loop, evaluation, checkpoints.

use crate::data::loader::{prefetch, train_batch, Augment, ReadyBatch, SplitImages};
use crate::data::manifest::{Dataset, Split};
use crate::data::sampler::{epoch_batches, shard_positions};
use crate::dist::{Backend, Comm, GradReducer, Launch};
use crate::fit::checkpoint::{self, TrainState};
use crate::fit::config::{Config, DeviceChoice, Mode, Precision};
use crate::fit::dynamics::LabelDynamics;
use crate::fit::eval::{self, EvalReport};
use crate::fit::loss::{
    class_activation_maps, dmue_loss, elr_regulariser, elr_targets, flip_consistency, label_belief,
    relative_label_belief, single_branch_loss, LossTerms,
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
use std::time::{Duration, Instant};
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
    /// Processes that trained it.
    #[serde(default = "one_rank")]
    pub world_size: usize,
}

fn one_rank() -> usize {
    1
}

/// How `fit` runs: one process, or one rank of a distributed job ([`crate::dist`]).
#[derive(Debug, Clone)]
pub struct Job {
    /// The job's ranks and rendezvous; `None`: one process.
    pub launch: Option<Launch>,
    pub backend: Backend,
    /// Bound of the rendezvous and of every collective: a dead or hung rank stops the others
    /// within it.
    pub timeout: Duration,
}

impl Job {
    pub fn single() -> Self {
        Self {
            launch: None,
            backend: Backend::Auto,
            timeout: crate::dist::DEFAULT_TIMEOUT,
        }
    }
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

/// After an ELR step in a distributed job: the rows of `buffer` (the running targets) that
/// every rank's share of `shard`'s batch moved, copied into every rank's buffer, so the targets
/// stay one table across the job. `indices`: this rank's rows, in its share's order.
fn share_rows(comm: &Comm, buffer: &Tensor, indices: &Tensor, shard: &Shard) -> Result<()> {
    let rows = tch::no_grad(|| buffer.index_select(0, indices));
    let at: Vec<i64> = shard.positions.iter().map(|&p| p as i64).collect();
    let table = crate::dist::gather_rows(comm, &rows, &at, shard.batch.len() as i64)?;
    let all: Vec<i64> = shard.batch.iter().map(|&i| i as i64).collect();
    let all = Tensor::from_slice(&all).to_device(buffer.device());
    tch::no_grad(|| {
        let _ = buffer
            .shallow_clone()
            .index_copy_(0, &all, &table.to_device(buffer.device()));
    });
    Ok(())
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
    } else if let Some(local) = std::env::var("LOCAL_WORLD_SIZE")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|&n| n > 1)
    {
        // Ranks sharing a machine (torchrun, `fit --nproc`) share its cores.
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        tch::set_num_threads((cores / local).max(1) as i32);
    }
}

/// Where an epoch stands in the schedules: its learning rate (`train.lr_milestones`),
/// DMUE's ramps `(w_u, w_d)` (Eq. 12; `(1, 0)` for the single-network modes) and how the
/// branches run ([`branches_for`]: `loss.aux_detach_after_lr_drop` changes it mid-run).
#[derive(Debug, Clone, Copy)]
struct Schedule {
    lr: f64,
    ramps: (f64, f64),
    branches: Branches,
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
            branches: branches_for(cfg, epoch),
        })
        .collect()
}

/// Trains a run: set-up (or resume), the epochs, the final evaluation and summary.
pub fn fit(cfg: &Config, run: &Path, resume: bool) -> Result<FitSummary> {
    fit_job(cfg, run, resume, &Job::single())
}

/// [`fit`] as one rank of `job`: rank 0 reads and writes the run directory (checkpoints,
/// metrics, plots, summary); every rank trains on its share of each batch and evaluates its
/// share of the evaluation split.
pub fn fit_job(cfg: &Config, run: &Path, resume: bool, job: &Job) -> Result<FitSummary> {
    let mut trainer = Trainer::new(cfg, run, resume, job)?;
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

    /// Adds steps read back from the device; stops at the first non-finite total. In a
    /// distributed job the values are first added up across the ranks (the loss terms then
    /// averaged, the correct counts and images summed), so every rank keeps the job's figures
    /// and stops at the same step when any rank's loss is not finite.
    fn absorb(&mut self, steps: Vec<StepValues>, epoch: usize, comm: &Comm) -> Result<()> {
        if steps.is_empty() {
            return Ok(());
        }
        let mut stacked = Tensor::stack(&steps.iter().map(|s| &s.values).collect::<Vec<_>>(), 0);
        if comm.size() > 1 {
            stacked = stacked.to_device(comm.device());
            comm.sum(&[&stacked])?;
            let n = Term::ALL.len() as i64;
            let _ = stacked.narrow(1, 0, n).divide_scalar_(comm.size() as f64);
        }
        // The one device-to-host transfer of these steps.
        let host = Vec::<f64>::try_from(stacked.to_device(Device::Cpu).flatten(0, -1))?;
        let width = Term::ALL.len() + 1;
        for (s, row) in steps.iter().zip(host.chunks(width)) {
            if !row[0].is_finite() {
                return Err(non_finite_report(epoch, s, row));
            }
            self.steps += 1;
            self.images += s.images * comm.size();
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
fn load_data(
    cfg: &Config,
    run: &Path,
    main: bool,
) -> Result<(Dataset, SplitImages, Option<SplitImages>)> {
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
    if !skipped.is_empty() && main {
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
/// A checkpoint saved by another number of ranks is refused: the batches depend on it.
#[allow(clippy::too_many_arguments)]
fn restore(
    cfg: &Config,
    run: &Path,
    metrics_path: &Path,
    resume: bool,
    existing: Option<(PathBuf, TrainState)>,
    vs: &mut nn::VarStore,
    opt: &mut Adam,
    world_size: usize,
) -> Result<(TrainState, Vec<EpochMetrics>)> {
    let mut state = TrainState {
        epoch: 0,
        global_step: 0,
        optimizer_step: 0,
        seed: cfg.train.seed,
        best_accuracy: None,
        best_epoch: None,
        version: env!("CARGO_PKG_VERSION").to_string(),
        world_size,
    };
    let mut history: Vec<EpochMetrics> = Vec::new();
    if let Some((dir, saved)) = existing {
        if saved.world_size != world_size {
            bail!(
                "{} was trained on {} process(es) and this job has {world_size}: resume it with \
                 the same number (WORLD_SIZE, --nproc), since each rank's share of every batch \
                 depends on it",
                run.display(),
                saved.world_size
            );
        }
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

/// Whether `train.batch_size` splits into `world_size` equal shares and, once the dataset's
/// `classes` are known, whether each rank's share can hold DMUE's `train.min_per_class` of each
/// class.
fn check_shares(cfg: &Config, world_size: usize, classes: Option<usize>) -> Result<()> {
    let batch = cfg.train.batch_size;
    if batch % world_size != 0 {
        bail!(
            "train.batch_size {batch} does not split evenly across {world_size} ranks: choose \
             a multiple of {world_size} (it is the batch of the whole job; each rank trains on \
             batch_size / ranks)"
        );
    }
    let (share, need) = (batch / world_size, cfg.train.min_per_class);
    // One process keeps its behaviour (the sampler tops up what the batch can hold).
    let multi = cfg.train.mode.multi_branch() && world_size > 1;
    if let Some(c) = classes.filter(|&c| multi && share < need * c) {
        bail!(
            "each of the {world_size} ranks trains on {share} images per step, and DMUE needs \
             train.min_per_class ({need}) of each of the {c} classes in them: raise \
             train.batch_size to at least {}",
            need * c * world_size
        );
    }
    Ok(())
}

/// How the training forward pass runs the branches in `epoch` (1-based). When no loss term
/// reads the auxiliary branches (e.g. the confidence-only ablation) their forward pass is
/// skipped, and they keep their initial weights.
fn branches_for(cfg: &Config, epoch: usize) -> Branches {
    let multi = cfg.train.mode.multi_branch();
    // Past the first learning-rate drop: the epochs in which a run fits its wrong labels.
    let lr_dropped = cfg
        .train
        .lr_milestones
        .iter()
        .min()
        .is_some_and(|&m| epoch > m);
    let share = if cfg.loss.aux_detach_trunk || cfg.loss.aux_detach_after_lr_drop && lr_dropped {
        0.0
    } else {
        cfg.loss.aux_trunk_grad
    };
    if multi && !(cfg.loss.latent || cfg.loss.similarity_preserving) {
        Branches::TargetOnly
    } else if multi && (share < 1.0 || cfg.loss.aux_trunk_grad_by_belief) {
        // With `aux_trunk_grad_by_belief` the step scales each sample's share further.
        Branches::AuxOnScaledTrunk(share)
    } else {
        Branches::Fused
    }
}

/// The training forward pass of a step with the branches run as `how` says; with
/// `loss.aux_trunk_grad_by_belief` each sample's share of the auxiliary gradient into the trunk
/// is further scaled by the target branch's belief in its label `y`.
fn training_forward(
    net: &MultiBranchNet,
    x: &Tensor,
    y: &Tensor,
    how: Branches,
    cfg: &Config,
) -> TrainOutput {
    match how {
        Branches::AuxOnScaledTrunk(share) if share > 0.0 && cfg.loss.aux_trunk_grad_by_belief => {
            net.forward_aux_share_per_sample(x, true, |logits| {
                let q = cfg.train.gce_q;
                if cfg.loss.aux_trunk_grad_belief_relative {
                    relative_label_belief(logits, y, q) * share
                } else {
                    label_belief(logits, y, q) * share
                }
            })
        }
        _ => net.forward_with(x, true, how),
    }
}

/// Pretrained weights into the fresh network (`train.init`), the report logged and written.
fn load_init(run: &Path, vs: &nn::VarStore, net: &MultiBranchNet, path: &Path) -> Result<()> {
    let report = crate::model::init::load(vs, net, path)?;
    tracing::info!("{report}");
    crate::util::write_atomic(
        &run.join(INIT_REPORT_FILE),
        serde_json::to_string_pretty(&report)?.as_bytes(),
    )
}

/// ", 2 ranks of 36 images per step" in a distributed job, else nothing.
fn ranks_note(cfg: &Config, world_size: usize) -> String {
    if world_size > 1 {
        let share = cfg.train.batch_size / world_size;
        format!(", {world_size} ranks of {share} images per step")
    } else {
        String::new()
    }
}

/// Adam over every trainable variable, the uncertainty module at `train.uncertainty_lr` when
/// one is set (its share of the schedule's rate, so the milestones move it too).
fn optimizer(cfg: &Config, vs: &nn::VarStore) -> Adam {
    let mut opt = Adam::new(vs, cfg.train.weight_decay);
    if let Some(lr) = cfg.train.uncertainty_lr {
        if opt.scale_lr(crate::model::is_uncertainty_param, lr / cfg.train.lr) > 0 {
            tracing::info!(
                "the uncertainty module learns at {lr:e}, the rest at {:e}",
                cfg.train.lr
            );
        }
    }
    opt
}

/// The network for `classes` classes, its weights drawn from `train.seed`.
fn network(cfg: &Config, device: Device, classes: usize) -> (nn::VarStore, MultiBranchNet) {
    tch::manual_seed(cfg.train.seed as i64);
    let vs = nn::VarStore::new(device);
    let multi = cfg.train.mode.multi_branch();
    let net = MultiBranchNet::new(&vs.root(), &cfg.model, classes, multi);
    if multi && !cfg.loss.train_uncertainty {
        // The authors' code: the module stays at its initialisation (left out of the optimizer;
        // gradients still flow through it to S when loss.similarity_detach is off).
        net.freeze_uncertainty();
    }
    (vs, net)
}

/// A run in progress: everything `fit` sets up once, then one epoch at a time.
struct Trainer<'a> {
    cfg: &'a Config,
    run: &'a Path,
    device: Device,
    bf16: bool,
    /// Sums the gradients across the ranks during the backward pass (a distributed job only).
    /// Declared before `comm`, so it is dropped before the job's handle.
    grad_reducer: Option<GradReducer>,
    /// This process's place in the job (one process: every collective is a no-op).
    comm: Comm,
    ds: Dataset,
    /// Shared with the prefetch thread.
    train: std::sync::Arc<SplitImages>,
    eval_data: Option<SplitImages>,
    vs: nn::VarStore,
    net: MultiBranchNet,
    opt: Adam,
    /// ELR's running-average targets, one row per training image (`--mode elr`, `loss.elr`):
    /// an untrained variable of the VarStore, so checkpoints carry it and a resumed run goes on
    /// from it.
    elr_targets: Option<Tensor>,
    backbone_vars: Vec<Tensor>,
    state: TrainState,
    history: Vec<EpochMetrics>,
    metrics_path: PathBuf,
    dynamics: LabelDynamics,
    total_params: i64,
    deployed_params: i64,
    started: Instant,
    first_epoch: usize,
    images_seen: usize,
    schedule: Vec<Schedule>,
}

/// One rank's part of a batch: the whole batch (training-split indices) and the positions in
/// it of this rank's samples (all of them in one process).
struct Shard {
    batch: Vec<usize>,
    positions: Vec<usize>,
}

impl Shard {
    fn indices(&self) -> Vec<usize> {
        self.positions.iter().map(|&p| self.batch[p]).collect()
    }
}

impl<'a> Trainer<'a> {
    /// Device, the job, data, model, optimizer, and the state of a resumed run; in a
    /// distributed job every rank then starts from rank 0's weights, moments and state.
    fn new(cfg: &'a Config, run: &'a Path, resume: bool, job: &Job) -> Result<Self> {
        let device = match (resolve_device(cfg.train.device)?, &job.launch) {
            // One GPU per rank of a machine, as torchrun's LOCAL_RANK says.
            (Device::Cuda(_), Some(l)) => Device::Cuda(l.local_rank),
            (d, _) => d,
        };
        let comm = match &job.launch {
            Some(l) => Comm::join(l, job.backend, device, job.timeout)?,
            None => Comm::single(device),
        };
        apply_threads(cfg);
        // Each rank sets up on its own; they go on only if every one succeeded.
        let set_up = Self::set_up(cfg, run, resume, device, comm.rank(), comm.size());
        let failed = Tensor::from_slice(&[set_up.is_err() as i64]).to_device(comm.device());
        comm.sum(&[&failed])?;
        let mut t = match set_up {
            Err(e) => return Err(e),
            Ok(_) if failed.int64_value(&[0]) > 0 => {
                bail!("another rank could not start the run (its error says why)")
            }
            Ok(f) => f(comm),
        };
        t.start_from_main()?;
        Ok(t)
    }

    /// Everything [`Trainer::new`] does on one rank without talking to the others: the
    /// trainer, once it is handed its [`Comm`]. Only rank 0 touches the run directory.
    fn set_up(
        cfg: &'a Config,
        run: &'a Path,
        resume: bool,
        device: Device,
        rank: usize,
        world_size: usize,
    ) -> Result<impl FnOnce(Comm) -> Self> {
        let main = rank == 0;
        let bf16 = use_bf16(cfg, device);
        let existing = if main { checkpoint::latest(run)? } else { None };
        if existing.is_some() && !resume {
            bail!("{} already holds a run with checkpoints: pass --resume to continue it, or choose another --out", run.display());
        }
        if main {
            std::fs::create_dir_all(run)
                .with_context(|| format!("cannot create run directory {}", run.display()))?;
            crate::util::write_atomic(&run.join(CONFIG_FILE), cfg.to_toml()?.as_bytes())?;
        }
        check_shares(cfg, world_size, None)?;

        // ---- data
        let (ds, train, eval_data) = load_data(cfg, run, main)?;
        let c = ds.num_classes();
        check_shares(cfg, world_size, Some(c))?;

        // ---- model and optimizer
        let (mut vs, net) = network(cfg, device, c);
        if let (Some(path), None, true) = (&cfg.train.init, &existing, main) {
            // A resumed run has these weights (trained further) in its checkpoint already;
            // the other ranks receive rank 0's.
            load_init(run, &vs, &net, path)?;
        }
        let backbone_vars = crate::model::init::backbone_variables(&vs);
        // Made after every weight is drawn, so the initial weights do not depend on it.
        let elr = cfg.train.mode == Mode::Elr || (cfg.train.mode.multi_branch() && cfg.loss.elr);
        let elr_targets = elr.then(|| {
            vs.root()
                .zeros_no_train("elr_targets", &[train.len() as i64, c as i64])
        });
        let mut opt = optimizer(cfg, &vs);
        let total_params = count_params(&vs, |_| true);
        let deployed_params = count_params(&vs, is_target_param);
        tracing::info!(
            "dmue-train fit: {:?} on {:?}, {c} classes, {} train images, {total_params} \
             parameters ({deployed_params} deployed){}",
            cfg.train.mode,
            device,
            train.len(),
            ranks_note(cfg, world_size)
        );

        // ---- resume
        let metrics_path = run.join(METRICS_FILE);
        let (state, history) = restore(
            cfg,
            run,
            &metrics_path,
            resume && main,
            existing,
            &mut vs,
            &mut opt,
            world_size,
        )?;
        if main {
            crate::util::write_jsonl(&metrics_path, &history)?;
        }
        // Only rank 0 writes the dynamics, so only it goes on from the file's epochs.
        let done = if main { state.epoch } else { 0 };
        let dynamics = LabelDynamics::start(run, train.len(), done, device)?;
        Ok(move |comm| Self {
            cfg,
            run,
            device,
            bf16,
            comm,
            grad_reducer: None,
            ds,
            train: std::sync::Arc::new(train),
            eval_data,
            vs,
            net,
            opt,
            elr_targets,
            backbone_vars,
            state,
            history,
            metrics_path,
            dynamics,
            total_params,
            deployed_params,
            started: Instant::now(),
            first_epoch: 0,
            images_seen: 0,
            schedule: schedules(cfg),
        })
    }

    /// Every rank takes rank 0's weights (initial, loaded or resumed), optimizer moments and
    /// position in the run; a no-op in one process.
    fn start_from_main(&mut self) -> Result<()> {
        if self.comm.size() > 1 {
            let mut vars: Vec<(String, Tensor)> = self.vs.variables().into_iter().collect();
            vars.sort_by(|a, b| a.0.cmp(&b.0));
            let mut all: Vec<&Tensor> = vars.iter().map(|(_, t)| t).collect();
            all.extend(self.opt.moments());
            self.comm.broadcast_from_main(&all)?;
            let s = &self.state;
            let numbers =
                Tensor::from_slice(&[s.epoch as i64, s.global_step as i64, s.optimizer_step]);
            self.comm.broadcast_from_main(&[&numbers])?;
            let n = Vec::<i64>::try_from(&numbers)?;
            self.state.epoch = n[0] as usize;
            self.state.global_step = n[1] as u64;
            self.state.optimizer_step = n[2];
            self.opt.step = n[2];
            self.grad_reducer = self.comm.grad_reducer(&self.opt.parameters())?;
        }
        self.first_epoch = self.state.epoch + 1;
        Ok(())
    }

    /// Freezes or thaws the backbone for `epoch` and says when a phase starts (the frozen
    /// backbone, the auxiliary branches leaving the trunk).
    fn enter_epoch(&self, epoch: usize) {
        let cfg = self.cfg;
        let frozen = epoch <= cfg.train.freeze_trunk_epochs;
        for t in &self.backbone_vars {
            let _ = t.set_requires_grad(!frozen);
        }
        if !self.comm.is_main() {
            return;
        }
        if frozen && epoch == self.first_epoch {
            tracing::info!(
                "backbone frozen for epochs 1-{}: only the classifiers and the uncertainty module train",
                cfg.train.freeze_trunk_epochs
            );
        }
        let detached = |e: usize| self.schedule[e].branches == Branches::AuxOnScaledTrunk(0.0);
        if detached(epoch) && (epoch == 1 || !detached(epoch - 1)) {
            tracing::info!(
                "from epoch {epoch} the auxiliary branches read the trunk detached: their terms no \
                 longer train it"
            );
        }
    }

    /// One epoch's training steps; batches are cut on a prefetch thread while a step runs.
    fn train_epoch(&mut self, epoch: usize) -> Result<EpochStats> {
        let cfg = self.cfg;
        self.enter_epoch(epoch);
        let main = self.comm.is_main();
        let epoch_start = Instant::now();
        // Each rank draws its own augmentation (rank 0 as one process would).
        let (rank, world) = (self.comm.rank(), self.comm.size());
        tch::manual_seed(
            (cfg.train.seed as i64)
                .wrapping_mul(1_000_003)
                .wrapping_add(epoch as i64)
                .wrapping_add((rank as i64) << 40),
        );
        // The same batches on every rank (seeded by the run and the epoch), each rank taking
        // its share of every batch: the job's batch is train.batch_size, as in one process.
        let mut sampler_rng = ChaCha8Rng::seed_from_u64(cfg.train.seed);
        sampler_rng.set_stream(2 * epoch as u64);
        let labels = &self.train.labels;
        let shards: Vec<Shard> = epoch_batches(
            labels,
            self.ds.num_classes(),
            cfg.train.batch_size,
            cfg.train.min_per_class * world,
            &mut sampler_rng,
        )
        .into_iter()
        .map(|batch| Shard {
            positions: shard_positions(&batch, labels, world, rank),
            batch,
        })
        .collect();
        let batches: Vec<Vec<usize>> = shards.iter().map(Shard::indices).collect();
        let pb = if main {
            crate::util::progress(
                batches.len() as u64,
                &format!("epoch {epoch}/{}", cfg.train.epochs),
            )
        } else {
            indicatif::ProgressBar::hidden()
        };
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
            aug_rng.set_stream(2 * epoch as u64 + 1 + ((rank as u64) << 32));
            let images = std::sync::Arc::clone(&train);
            let rx = prefetch(scope, cfg.data.prefetch.max(1), &batches, move |idx| {
                train_batch(&images, idx, &pre, &aug, &mut aug_rng).into_tensors(pre.crop, pin)
            });
            let mut warned = epoch != self.first_epoch || !main;
            for (i, batch) in rx.iter().enumerate() {
                pending.push(self.step(&batch, &shards[i], epoch, i + 1, lr)?);
                pb.inc(1);
                if pending.len() < SYNC_EVERY {
                    continue;
                }
                stats.absorb(std::mem::take(&mut pending), epoch, &self.comm)?;
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
            stats.absorb(pending, epoch, &self.comm)
        })?;
        pb.finish_and_clear();
        stats.seconds = epoch_start.elapsed().as_secs_f64();
        Ok(stats)
    }

    /// One optimisation step; its reported values stay on the device. In a distributed job
    /// `batch` is this rank's share of `shard`'s batch, and the gradients are averaged across
    /// the ranks before the update (summed while the backward pass runs, see
    /// `dist::GradReducer`), so every rank applies the same update.
    fn step(
        &mut self,
        batch: &ReadyBatch,
        shard: &Shard,
        epoch: usize,
        step: usize,
        lr: f64,
    ) -> Result<StepValues> {
        let cfg = self.cfg;
        let (x, y, indices) = batch.to_device(self.device);
        // The forward pass may run under bf16 autocast; the losses always run in fp32 outside
        // it (small sums, divisions by counts and exp of logits need the range).
        let (out, consistency) = if cfg.train.mode == Mode::Eac {
            self.eac_forward(&x)
        } else {
            let how = self.schedule[epoch].branches;
            let out = with_precision(self.bf16, || training_forward(&self.net, &x, &y, how, cfg));
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
            if self.comm.size() > 1 {
                // Every rank's targets: the rows this step moved on each rank.
                share_rows(&self.comm, buffer, &indices, shard)?;
            }
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
        if let Some(reducer) = &self.grad_reducer {
            reducer.arm()?;
        }
        terms.total.backward();
        if let Some(reducer) = &self.grad_reducer {
            self.comm.average_gradients(reducer)?;
        }
        self.opt
            .step(lr)
            .expect("fused Adam on tensors it was built for");
        self.state.global_step += 1;
        Ok(StepValues {
            values,
            present,
            images: batch.len(),
            step,
            global_step: self.state.global_step,
        })
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
        if self.comm.size() > 1 {
            // Batch-norm statistics are kept per rank during the epoch; the model evaluated
            // and saved has their mean. The label dynamics add up every rank's images.
            let running: Vec<Tensor> = self
                .vs
                .variables()
                .into_iter()
                .filter(|(n, _)| n.ends_with("running_mean") || n.ends_with("running_var"))
                .collect::<std::collections::BTreeMap<_, _>>()
                .into_values()
                .collect();
            self.comm.mean(&running.iter().collect::<Vec<_>>())?;
            self.comm.sum(&self.dynamics.accumulators())?;
        }
        let eval_report = self.evaluate()?;
        let Schedule {
            lr,
            ramps: (w_u, w_d),
            ..
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
        if let Some(r) = &eval_report {
            if self.state.best_accuracy.is_none_or(|b| r.accuracy > b) {
                self.state.best_accuracy = Some(r.accuracy);
                self.state.best_epoch = Some(epoch);
            }
        }
        self.state.epoch = epoch;
        self.state.optimizer_step = self.opt.step;
        if !self.comm.is_main() {
            self.dynamics.clear();
            return Ok(());
        }
        tracing::info!("{}{eta}", epoch_line(&metrics, cfg.train.epochs));
        append_metrics(&self.metrics_path, &metrics)?;
        self.history.push(metrics);
        plot_curves(&self.run.join(CURVES_FILE), &self.history)?;
        self.dynamics.finish_epoch(self.run, epoch)?;
        checkpoint::save(
            self.run,
            &self.vs,
            &self.opt,
            &self.state,
            cfg.train.keep_checkpoints,
        )?;
        Ok(())
    }

    /// The evaluation split, sharded across the ranks of a distributed job.
    fn evaluate(&self) -> Result<Option<EvalReport>> {
        self.eval_data
            .as_ref()
            .map(|e| {
                eval::evaluate_sharded(
                    &self.net,
                    e,
                    &self.ds.info.classes,
                    &self.cfg.data.preprocess,
                    self.device,
                    &self.comm,
                )
            })
            .transpose()
    }

    /// Final weights, final evaluation, summary.
    fn finish(self) -> Result<FitSummary> {
        let train_seconds = self.started.elapsed().as_secs_f64();
        let main = self.comm.is_main();
        if main {
            self.vs
                .save(self.run.join(checkpoint::MODEL_FILE))
                .context("cannot write the final weights")?;
        }
        let final_eval = self.evaluate()?;
        if let (Some(r), true) = (&final_eval, main) {
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
            world_size: self.comm.size(),
        };
        if main {
            crate::util::write_atomic(
                &self.run.join(SUMMARY_FILE),
                serde_json::to_string_pretty(&summary)?.as_bytes(),
            )?;
        }
        // Rank 0 hosts the job's store: it leaves last.
        self.comm.barrier()?;
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
        ("reg", m.reg),
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
        ("regulariser (ELR, EAC), unweighted", &|m: &EpochMetrics| {
            m.reg
        }),
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

    // Adam's first step moves each weight by about the rate: with `uncertainty_lr` ten times
    // `lr`, the module's weights move ten times as far as the target classifier's.
    #[test]
    fn the_uncertainty_module_steps_at_its_own_rate() {
        let mut cfg = Config::default();
        cfg.model.width = Some(8);
        cfg.train.lr = 1e-4;
        cfg.train.uncertainty_lr = Some(1e-3);
        let (vs, net) = network(&cfg, Device::Cpu, 3);
        let mut opt = optimizer(&cfg, &vs);
        let before = |name: &str| vs.variables()[name].copy();
        let (module0, target0) = (before("uncertainty.fc1.weight"), before("fc.weight"));
        let x = Tensor::randn([6, 3, 32, 32], (Kind::Float, Device::Cpu));
        let out = net.forward_train(&x, true);
        let module = net.uncertainty.as_ref().unwrap();
        let alpha = module.forward(&Tensor::randn([6, 6], (Kind::Float, Device::Cpu)));
        (out.target_logits.sum(Kind::Float) + alpha.sum(Kind::Float)).backward();
        opt.step(cfg.train.lr).unwrap();
        let moved = |name: &str, was: &Tensor| {
            f64::try_from((vs.variables()[name].copy() - was).abs().max()).unwrap()
        };
        let (m, t) = (
            moved("uncertainty.fc1.weight", &module0),
            moved("fc.weight", &target0),
        );
        assert!(
            (m - 1e-3).abs() < 1e-4 && (t - 1e-4).abs() < 1e-5,
            "{m} {t}"
        );
    }

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

    /// With `loss.aux_trunk_grad_by_belief` a step's auxiliary gradient reaches the trunk scaled
    /// per sample by `share * p_y^q` of the target branch: the trunk's gradient is that of the
    /// per-sample path with those shares, and not the uniform one's.
    #[test]
    fn a_step_scales_the_trunk_gradient_by_each_labels_belief() {
        let mut cfg = Config::default();
        cfg.model.width = Some(4);
        cfg.loss.aux_trunk_grad = 0.5;
        cfg.loss.aux_trunk_grad_by_belief = false;
        cfg.loss.aux_trunk_grad_belief_relative = false;
        let (vs, net) = network(&cfg, Device::Cpu, 7);
        let x = Tensor::randn([4, 3, 32, 32], (Kind::Float, Device::Cpu));
        let y = Tensor::from_slice(&[0i64, 3, 5, 6]);
        let conv1 = vs.variables()["conv1.weight"].shallow_clone();
        let trunk_grad = |forward: &dyn Fn() -> TrainOutput| {
            crate::model::grad_from_aux_outputs(&conv1, forward)
        };
        let q = cfg.train.gce_q;
        let step = |cfg: &Config| training_forward(&net, &x, &y, branches_for(cfg, 1), cfg);
        // The per-sample path with share 0.5 times p_y^q, or p_y^q over its batch mean, capped.
        let expected = |relative: bool| {
            trunk_grad(&|| {
                net.forward_aux_share_per_sample(&x, true, |logits| {
                    let p = logits
                        .softmax(-1, Kind::Float)
                        .gather(1, &y.unsqueeze(1), false);
                    let b = p.squeeze_dim(1).pow_tensor_scalar(q);
                    let b = if relative {
                        (&b / b.mean(Kind::Float)).clamp_max(1.0)
                    } else {
                        b
                    };
                    b * 0.5
                })
            })
        };
        let norm = |t: &Tensor| t.abs().sum(Kind::Float).double_value(&[]);
        let uniform = trunk_grad(&|| step(&cfg));
        cfg.loss.aux_trunk_grad_by_belief = true;
        let by_belief = trunk_grad(&|| step(&cfg));
        let wanted = expected(false);
        assert!(norm(&(&by_belief - &wanted)) <= 1e-5 * norm(&wanted));
        assert!(norm(&(&by_belief - &uniform)) > 0.1 * norm(&uniform));
        // Relative: each belief over the batch's mean, capped at 1.
        cfg.loss.aux_trunk_grad_belief_relative = true;
        let relative = trunk_grad(&|| step(&cfg));
        let wanted = expected(true);
        assert!(norm(&(&relative - &wanted)) <= 1e-5 * norm(&wanted));
        assert!(norm(&(&relative - &by_belief)) > 0.1 * norm(&by_belief));
    }

    /// `loss.aux_detach_after_lr_drop` keeps the auxiliary branches on the trunk up to the
    /// first milestone (whichever order the list has) and detaches them after it.
    #[test]
    fn the_auxiliary_branches_leave_the_trunk_after_the_first_lr_drop() {
        let mut cfg = Config::default();
        cfg.loss.aux_trunk_grad_by_belief = false;
        cfg.train.lr_milestones = vec![9, 6];
        let at = |cfg: &Config| (1..=8).map(|e| branches_for(cfg, e)).collect::<Vec<_>>();
        assert_eq!(at(&cfg), vec![Branches::Fused; 8]);
        cfg.loss.aux_detach_after_lr_drop = true;
        let mut expected = vec![Branches::Fused; 6];
        expected.extend([Branches::AuxOnScaledTrunk(0.0); 2]);
        assert_eq!(at(&cfg), expected);
        cfg.loss.aux_detach_trunk = true;
        assert_eq!(at(&cfg), vec![Branches::AuxOnScaledTrunk(0.0); 8]);
        cfg.loss.aux_detach_trunk = false;
        cfg.loss.aux_detach_after_lr_drop = false;
        cfg.loss.aux_trunk_grad = 0.3;
        assert_eq!(at(&cfg), vec![Branches::AuxOnScaledTrunk(0.3); 8]);
        // Single-network modes have no auxiliary branches to detach.
        cfg.train.mode = Mode::Gce;
        assert_eq!(at(&cfg), vec![Branches::Fused; 8]);
        // The default weighs each sample's share by its label belief, from the first epoch.
        let default = Config::default();
        assert_eq!(at(&default), vec![Branches::AuxOnScaledTrunk(1.0); 8]);
    }
}
