//! `dmue-train export`: a run's deployed network as ONNX (`onnx`), optionally with a
//! calibration temperature fitted on held-out data (`calibrate`) and an int8 copy (`int8`),
//! and the report of what was written.

pub mod calibrate;
pub mod int8;
pub mod onnx;

pub use onnx::{build, write, ExportStats, OPSET};

use crate::model::MultiBranchNet;
use anyhow::{bail, Result};
use dmue_deploy::model_card::ModelCard;
use std::path::Path;
use tch::nn;

/// What `export_run` produced, with the plain backbone's figures for comparison.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ExportReport {
    pub path: std::path::PathBuf,
    pub card: ModelCard,
    pub exported: ExportStats,
    /// The same backbone with a C-way classifier and nothing else (the baseline network).
    pub plain_backbone: ExportStats,
    /// Trainable parameters of the auxiliary branches and the uncertainty module, not exported.
    pub dropped_parameters: i64,
    /// Temperature scaling, with `--calibrate`.
    pub calibration: Option<crate::export::calibrate::CalibrationReport>,
    /// The int8 model, with `--int8`.
    pub int8: Option<crate::export::int8::Int8Report>,
}

/// The run's name for the model card: its directory's name, never the training machine's
/// absolute path (the card travels with the model).
pub fn run_id(run: &Path) -> String {
    std::fs::canonicalize(run)
        .unwrap_or_else(|_| run.to_path_buf())
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "run".into())
}

/// The card's backbone line: the architecture, and where its weights started when that was
/// dlib's face-recognition ResNet (whose source and licence travel with the model).
fn describe_start(cfg: &crate::fit::config::Config) -> String {
    let arch = cfg.model.describe();
    let from_dlib = cfg
        .train
        .init
        .as_ref()
        .is_some_and(|p| p.file_name() == Path::new(crate::model::dlib::CONVERTED).file_name());
    if from_dlib {
        format!("{arch}, {}", crate::model::dlib::PROVENANCE)
    } else {
        arch
    }
}

/// Exports a run's newest checkpoint (trunk + target branch) to `out`.
pub fn export_run(
    run: &Path,
    out: &Path,
    calibrate: Option<crate::data::manifest::Split>,
    int8: Option<crate::export::int8::Int8Options>,
) -> Result<ExportReport> {
    let (cfg, ds, vs, net) = crate::fit::trainer::load_run(run, tch::Device::Cpu)?;
    let calibration = match calibrate {
        Some(split) => Some(calibrate_run(run, &cfg, &ds, &net, split)?),
        None => None,
    };
    let card = ModelCard {
        classes: ds.info.classes.clone(),
        preprocess: cfg.data.preprocess,
        template_id: ds.info.template_id.clone(),
        aligned_size: ds.info.image_size,
        backbone: describe_start(&cfg),
        dataset: ds.info.name.clone(),
        run_id: run_id(run),
        version: env!("CARGO_PKG_VERSION").into(),
        temperature: calibration.as_ref().map_or(1.0, |c| c.temperature as f32),
        int8: None,
    };
    let (model, exported) = tch::no_grad(|| build(&net, &card))?;
    write(&model, out)?;
    let int8 = int8
        .map(|o| {
            crate::export::int8::export_int8(run, &ds, &cfg.data.preprocess, &model, out, &card, o)
        })
        .transpose()?;
    let plain_vs = nn::VarStore::new(tch::Device::Cpu);
    let plain = MultiBranchNet::new(&plain_vs.root(), &cfg.model, ds.num_classes(), false);
    let (_, plain_backbone) = tch::no_grad(|| build(&plain, &card))?;
    let dropped_parameters = crate::model::count_params(&vs, |n| !crate::model::is_target_param(n));
    Ok(ExportReport {
        path: out.to_path_buf(),
        card,
        exported,
        plain_backbone,
        dropped_parameters,
        calibration,
        int8,
    })
}

/// Calibration results of a run (`export --calibrate`).
pub const CALIBRATION_FILE: &str = "calibration.json";
/// Reliability diagrams before and after, on the evaluation split.
pub const RELIABILITY_PNG: &str = "reliability.png";

/// Fits the temperature on `split` and measures it on the test split (or, without one, on
/// `split` itself, which the report says); writes `RUN/calibration.json` and
/// `RUN/reliability.png`.
fn calibrate_run(
    run: &Path,
    cfg: &crate::fit::config::Config,
    ds: &crate::data::manifest::Dataset,
    net: &MultiBranchNet,
    split: crate::data::manifest::Split,
) -> Result<crate::export::calibrate::CalibrationReport> {
    use crate::data::loader::SplitImages;
    use crate::data::manifest::Split;
    use crate::export::calibrate::{fit_temperature, measure, CalibrationReport, ECE_BINS};
    if split == Split::Test {
        bail!(
            "--calibrate test is refused: the test split is where calibration is measured. \
             Fit it on held-out labelled data: `synth --val N`, or `prepare --val-share F`"
        );
    }
    let pre = &cfg.data.preprocess;
    let c = ds.num_classes();
    let fit_on = SplitImages::load(ds, split, pre)?;
    if fit_on.is_empty() {
        bail!(
            "the dataset has no {split} images to calibrate on (carve them with `synth --val N` \
             or `prepare --val-share F`)"
        );
    }
    let logits = crate::fit::eval::logits(net, &fit_on, pre, tch::Device::Cpu, 128);
    let temperature = fit_temperature(&logits, &fit_on.labels, c)?;
    let test = SplitImages::load(ds, Split::Test, pre)?;
    let (eval_on, eval_logits, eval_labels) = if test.is_empty() {
        (split, logits, fit_on.labels.clone())
    } else {
        let l = crate::fit::eval::logits(net, &test, pre, tch::Device::Cpu, 128);
        (Split::Test, l, test.labels.clone())
    };
    let before = measure(&eval_logits, &eval_labels, c, 1.0, ECE_BINS);
    let after = measure(&eval_logits, &eval_labels, c, temperature, ECE_BINS);
    crate::util::plot::reliability_png(
        &run.join(RELIABILITY_PNG),
        &[
            (
                format!("{eval_on}, uncalibrated: ECE {:.1} %", 100.0 * before.ece),
                before.bins.clone(),
            ),
            (
                format!(
                    "{eval_on}, T = {temperature:.2}: ECE {:.1} %",
                    100.0 * after.ece
                ),
                after.bins.clone(),
            ),
        ],
    )?;
    let report = CalibrationReport {
        fitted_on: split.to_string(),
        fitted_images: fit_on.len(),
        temperature,
        evaluated_on: eval_on.to_string(),
        before,
        after,
    };
    crate::util::write_atomic(
        &run.join(CALIBRATION_FILE),
        serde_json::to_string_pretty(&report)?.as_bytes(),
    )?;
    Ok(report)
}

impl std::fmt::Display for ExportReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let crop = self.card.preprocess.crop;
        let c = self.card.classes.len();
        writeln!(
            f,
            "exported trunk + target branch to {} ({} nodes, opset {OPSET})",
            self.path.display(),
            self.exported.nodes
        )?;
        writeln!(
            f,
            "  {:<32} {:>14} {:>14}",
            "",
            "exported",
            format!("plain + {c}-way fc")
        )?;
        writeln!(
            f,
            "  {:<32} {:>14} {:>14}",
            "parameters (BatchNorm folded)",
            self.exported.parameters,
            self.plain_backbone.parameters
        )?;
        writeln!(
            f,
            "  {:<32} {:>14} {:>14}",
            format!("MACs per image at {crop}x{crop}"),
            self.exported.macs,
            self.plain_backbone.macs
        )?;
        if self.dropped_parameters > 0 {
            writeln!(
                f,
                "  not exported: {c} auxiliary branches + uncertainty module ({} parameters)",
                self.dropped_parameters
            )?;
        } else {
            writeln!(
                f,
                "  nothing left out: the run trained the plain network alone"
            )?;
        }
        write!(f, "  classes: {}", self.card.classes.join(", "))?;
        if let Some(c) = &self.calibration {
            write!(f, "\n{c}")?;
        }
        if let Some(q) = &self.int8 {
            write!(f, "\n{q}")?;
        }
        Ok(())
    }
}
