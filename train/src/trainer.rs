//! `dmue-train fit`: set-up, data, model, resume, the epoch loop, evaluation, checkpoints.

use crate::checkpoint::{self, TrainState};
use crate::config::{Config, DeviceChoice, Mode, Precision};
use crate::data::loader::{train_batch, Augment, HostBatch, SplitImages};
use crate::data::manifest::{Dataset, Split};
use crate::data::sampler::epoch_batches;
use crate::eval::{self, EvalReport};
use crate::loss::{cross_entropy, dmue_loss, generalized_ce, label_smoothing_ce, LossTerms};
use crate::model::{count_params, is_target_param, MultiBranchNet, TrainOutput};
use crate::optim::Adam;
use crate::plot::{line_panels, Panel};
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

/// Runs `f` under bf16 autocast when `on` (CUDA only).
fn with_precision<T>(on: bool, f: impl FnOnce() -> T) -> T {
    if on {
        tch::autocast(true, f)
    } else {
        f()
    }
}

/// The single-branch modes: plain, label-smoothed or generalised cross-entropy on the target
/// branch, no ramps.
fn single_branch_loss(out: &TrainOutput, labels: &Tensor, cfg: &Config) -> LossTerms {
    let z = &out.target_logits;
    let ce = match cfg.train.mode {
        Mode::LabelSmoothing => label_smoothing_ce(z, labels, cfg.train.label_smoothing),
        Mode::Gce => generalized_ce(z, labels, cfg.train.gce_q),
        Mode::Baseline | Mode::Dmue => cross_entropy(z, labels),
    };
    LossTerms {
        total: ce.shallow_clone(),
        target: ce,
        soft: None,
        sp: None,
        aux: None,
        alpha: None,
        alpha_raw: None,
        w_u: 1.0,
        w_d: 0.0,
    }
}

/// Running sums of one epoch's step values.
#[derive(Default)]
struct Accumulator {
    steps: usize,
    images: usize,
    correct: i64,
    sums: std::collections::BTreeMap<&'static str, f64>,
}

impl Accumulator {
    fn mean(&self, key: &str) -> Option<f64> {
        self.sums.get(key).map(|s| s / self.steps.max(1) as f64)
    }
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

pub fn fit(cfg: &Config, run: &Path, resume: bool) -> Result<FitSummary> {
    // ---- set-up
    let device = resolve_device(cfg.train.device)?;
    apply_threads(cfg);
    let bf16 = cfg.train.precision == Precision::Bf16 && device.is_cuda();
    if cfg.train.precision == Precision::Bf16 && !bf16 {
        tracing::warn!("precision bf16 needs CUDA; training in fp32 on the CPU");
    }
    if bf16 {
        // SAFETY: a plain setter of libtorch's global autocast dtype, no arguments.
        unsafe { dmue_set_cuda_autocast_bf16() };
    }
    let existing = checkpoint::latest(run)?;
    if existing.is_some() && !resume {
        bail!("{} already holds a run with checkpoints: pass --resume to continue it, or choose another --out", run.display());
    }
    std::fs::create_dir_all(run)
        .with_context(|| format!("cannot create run directory {}", run.display()))?;
    crate::util::write_atomic(&run.join(CONFIG_FILE), cfg.to_toml()?.as_bytes())?;

    // ---- data
    let ds = Dataset::open(&cfg.data.dataset)?;
    let pre = cfg.data.preprocess;
    let c = ds.num_classes();
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
            "the training split has {} readable images, fewer than one batch ({})",
            train.len(),
            cfg.train.batch_size
        );
    }

    // ---- model and optimizer
    tch::manual_seed(cfg.train.seed as i64);
    let mut vs = nn::VarStore::new(device);
    let multi = cfg.train.mode.multi_branch();
    let net = MultiBranchNet::new(&vs.root(), &cfg.model, c, multi);
    if multi && !cfg.loss.train_uncertainty {
        // The authors' code: the module stays at its initialisation (left out of the optimizer;
        // gradients still flow through it to S when loss.similarity_detach is off).
        net.freeze_uncertainty();
    }
    if let (Some(path), None) = (&cfg.train.init, &existing) {
        // A resumed run has these weights (trained further) in its checkpoint already.
        let report = crate::init::load(&vs, &net, path)?;
        eprintln!("{report}");
        crate::util::write_atomic(
            &run.join(INIT_REPORT_FILE),
            serde_json::to_string_pretty(&report)?.as_bytes(),
        )?;
    }
    let backbone_vars = crate::init::backbone_variables(&vs);
    let mut opt = Adam::new(&vs, cfg.train.weight_decay);
    let total_params = count_params(&vs, |_| true);
    let deployed_params = count_params(&vs, is_target_param);
    eprintln!(
        "dmue-train fit: {:?} on {:?}, {c} classes, {} train images, {} parameters ({} deployed)",
        cfg.train.mode,
        device,
        train.len(),
        total_params,
        deployed_params
    );

    // ---- resume
    let mut state = TrainState {
        epoch: 0,
        global_step: 0,
        optimizer_step: 0,
        seed: cfg.train.seed,
        best_accuracy: None,
        best_epoch: None,
        version: env!("CARGO_PKG_VERSION").to_string(),
    };
    let metrics_path = run.join(METRICS_FILE);
    let mut history: Vec<EpochMetrics> = Vec::new();
    if let Some((dir, saved)) = existing {
        checkpoint::restore(&dir, &mut vs, Some((&mut opt, saved.optimizer_step)))?;
        eprintln!(
            "resuming from {} (epoch {} done)",
            dir.display(),
            saved.epoch
        );
        state = saved;
        history = read_metrics(&metrics_path)?
            .into_iter()
            .filter(|m| m.epoch <= state.epoch)
            .collect();
    } else if resume {
        tracing::warn!(
            "--resume given but {} has no checkpoint: starting from scratch",
            run.display()
        );
    }
    crate::util::write_jsonl(&metrics_path, &history)?;
    let mut dynamics =
        crate::dynamics::LabelDynamics::start(run, train.len(), state.epoch, device)?;

    // ---- epochs
    let started = Instant::now();
    let first_epoch = state.epoch + 1;
    let mut images_seen = 0usize;
    for epoch in state.epoch + 1..=cfg.train.epochs {
        let lr = cfg.train.lr_at(epoch);
        let frozen = epoch <= cfg.train.freeze_trunk_epochs;
        for t in &backbone_vars {
            let _ = t.set_requires_grad(!frozen);
        }
        if frozen && epoch == state.epoch + 1 {
            eprintln!(
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
            &train.labels,
            c,
            cfg.train.batch_size,
            cfg.train.min_per_class,
            &mut sampler_rng,
        );
        let pb = crate::util::progress(
            batches.len() as u64,
            &format!("epoch {epoch}/{}", cfg.train.epochs),
        );
        let mut acc = Accumulator::default();

        std::thread::scope(|scope| -> Result<()> {
            // Batches are cut on a worker thread while the previous step runs.
            let (tx, rx) = std::sync::mpsc::sync_channel::<HostBatch>(cfg.data.prefetch.max(1));
            let (train_ref, batches_ref, dynamics_ref) = (&train, &batches, &dynamics);
            let seed = cfg.train.seed;
            let aug = Augment {
                hflip: cfg.data.hflip,
                gaussian_noise: cfg.data.gaussian_noise,
                random_erasing: cfg.data.random_erasing,
            };
            scope.spawn(move || {
                let mut aug_rng = ChaCha8Rng::seed_from_u64(seed);
                aug_rng.set_stream(2 * epoch as u64 + 1);
                for idx in batches_ref {
                    if tx
                        .send(train_batch(train_ref, idx, &pre, &aug, &mut aug_rng))
                        .is_err()
                    {
                        break;
                    }
                }
            });
            for (step, host) in rx.iter().enumerate() {
                let (x, y) = host.to_device(pre.crop, device);
                // The forward pass may run under bf16 autocast; the losses always run in fp32
                // outside it (small sums, divisions by counts and exp of logits need the range).
                let out = with_precision(bf16, || net.forward_train(&x, true)).to_fp32();
                let terms = if multi {
                    dmue_loss(&out, net.uncertainty.as_ref(), &y, &cfg.loss, epoch)
                } else {
                    single_branch_loss(&out, &y, cfg)
                };
                dynamics_ref.record(&out.target_logits, &y, &host.indices);
                let correct = out
                    .target_logits
                    .argmax(1, false)
                    .eq_tensor(&y)
                    .sum(Kind::Int64);
                let values: Vec<(&'static str, f64)> = terms
                    .named()
                    .into_iter()
                    .map(|(n, t)| (n, t.double_value(&[])))
                    .collect();
                if !values[0].1.is_finite() {
                    let bad: Vec<&str> = values
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
                    let listing: Vec<String> =
                        values.iter().map(|(n, v)| format!("{n} = {v}")).collect();
                    bail!(
                        "non-finite loss at epoch {epoch}, step {} (global step {}): {culprit} is not finite ({}). The weights \
                         were not updated; the last checkpoint is intact. Lower train.lr or loss.gamma and continue with --resume.",
                        step + 1,
                        state.global_step + 1,
                        listing.join(", ")
                    );
                }
                opt.zero_grad();
                terms.total.backward();
                opt.step(lr);
                state.global_step += 1;

                acc.steps += 1;
                acc.images += host.labels.len();
                acc.correct += correct.int64_value(&[]);
                for (n, v) in &values {
                    *acc.sums.entry(n).or_default() += v;
                }
                // The module's own output: the normalised weights average 1 by construction.
                if let Some(alpha) = &terms.alpha_raw {
                    *acc.sums.entry("alpha").or_default() +=
                        alpha.mean(Kind::Float).double_value(&[]);
                }
                let rate = acc.images as f64 / epoch_start.elapsed().as_secs_f64().max(1e-9);
                if epoch == first_epoch && step == WARN_AFTER_STEPS {
                    if let Some(msg) =
                        long_run_warning(rate, train.len(), cfg.train.epochs - state.epoch, device)
                    {
                        pb.suspend(|| eprintln!("{msg}"));
                    }
                }
                let shown: Vec<String> =
                    values.iter().map(|(n, v)| format!("{n} {v:.4}")).collect();
                pb.set_message(format!("{} | {rate:.0} img/s", shown.join(" ")));
                pb.inc(1);
            }
            Ok(())
        })?;
        pb.finish_and_clear();
        images_seen += acc.images;
        let train_seconds = epoch_start.elapsed().as_secs_f64();

        let eval_report = eval_data
            .as_ref()
            .map(|e| eval::evaluate(&net, e, &ds.info.classes, &pre, device));
        let metrics = EpochMetrics {
            epoch,
            lr,
            w_u: if multi {
                crate::loss::ramp_up(epoch as f64, cfg.loss.beta)
            } else {
                1.0
            },
            w_d: if multi {
                crate::loss::ramp_down(epoch as f64, cfg.loss.beta)
            } else {
                0.0
            },
            loss: acc.mean("total").unwrap_or(f64::NAN),
            target: acc.mean("target").unwrap_or(f64::NAN),
            soft: acc.mean("soft"),
            sp: acc.mean("sp"),
            aux: acc.mean("aux"),
            alpha_mean: acc.mean("alpha"),
            train_accuracy: acc.correct as f64 / acc.images.max(1) as f64,
            eval_accuracy: eval_report.as_ref().map(|r| r.accuracy),
            images_per_second: acc.images as f64 / train_seconds.max(1e-9),
            seconds: epoch_start.elapsed().as_secs_f64(),
        };
        let left = cfg.train.epochs - epoch;
        let per_epoch = started.elapsed().as_secs_f64() / (epoch + 1 - first_epoch) as f64;
        let eta = if left > 0 {
            format!("  run ETA {}", duration(per_epoch * left as f64))
        } else {
            String::new()
        };
        println!("{}{eta}", epoch_line(&metrics, cfg.train.epochs));
        append_metrics(&metrics_path, &metrics)?;
        history.push(metrics);
        plot_curves(&run.join(CURVES_FILE), &history)?;

        if let Some(r) = &eval_report {
            if state.best_accuracy.is_none_or(|b| r.accuracy > b) {
                state.best_accuracy = Some(r.accuracy);
                state.best_epoch = Some(epoch);
            }
        }
        dynamics.finish_epoch(run, epoch)?;
        state.epoch = epoch;
        state.optimizer_step = opt.step;
        checkpoint::save(run, &vs, &opt, &state, cfg.train.keep_checkpoints)?;
    }
    let train_seconds = started.elapsed().as_secs_f64();

    // ---- final evaluation and summary
    vs.save(run.join(checkpoint::MODEL_FILE))
        .context("cannot write the final weights")?;
    let final_eval = eval_data
        .as_ref()
        .map(|e| eval::evaluate(&net, e, &ds.info.classes, &pre, device));
    if let Some(r) = &final_eval {
        eval::write(run, r)?;
    }
    let summary = FitSummary {
        run_dir: run.to_path_buf(),
        mode: cfg.train.mode,
        device: format!("{device:?}"),
        epochs: cfg.train.epochs,
        train_images: train.len(),
        parameters_total: total_params,
        parameters_deployed: deployed_params,
        train_seconds,
        images_per_second: images_seen as f64 / train_seconds.max(1e-9),
        final_eval,
    };
    crate::util::write_atomic(
        &run.join(SUMMARY_FILE),
        serde_json::to_string_pretty(&summary)?.as_bytes(),
    )?;
    Ok(summary)
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
            title: "target branch CE (weighted when confidence is on)".into(),
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
