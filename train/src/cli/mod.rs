//! The command line of `dmue-train`: one module per subcommand, each turning its flags into a
//! call of the library; nothing here trains or computes.

pub mod analyze;
pub mod audit;
pub mod bench_loader;
pub mod convert_dlib;
pub mod eval;
pub mod export;
pub mod fit;
pub mod launch;
pub mod openmp;
pub mod prepare;
pub mod pretrain;
pub mod synth;

use anyhow::{Context, Result};
use dmue_train::fit::config::{Config, DeviceChoice, Edit};
use dmue_train::fit::trainer;
use dmue_train::model::Backbone;
use std::path::{Path, PathBuf};

/// The configuration of a run in `out`: a resumed run keeps its own `config.toml`; a new one
/// reads the presets, then the `--config` files. Then the flags' `edits`, and last `--set`
/// (which may still change a resumed run, e.g. its epochs).
fn run_config(
    out: &Path,
    resume: bool,
    presets: &[(&str, &str)],
    files: &[PathBuf],
    edits: &[Edit],
    sets: &[String],
) -> Result<Config> {
    let own = out.join(trainer::CONFIG_FILE);
    if resume && own.exists() {
        let text = std::fs::read_to_string(&own)
            .with_context(|| format!("cannot read {}", own.display()))?;
        let missing = dmue_train::fit::config::fields_missing_from(&text)?;
        if !missing.is_empty() {
            tracing::warn!(
                "{} was written by an older dmue-train and does not name {}: the resumed run \
                 takes today's defaults for them (pass --set to keep what it trained with)",
                own.display(),
                missing.join(", ")
            );
        }
        Config::build(&[], &[own], edits, sets)
    } else {
        Config::build(presets, files, edits, sets)
    }
}

/// The first line `fit` and `pretrain` print when they finish: `verb` ("trained") N epochs...
fn finished_line(verb: &str, s: &trainer::FitSummary) -> String {
    format!(
        "{verb} {} epochs in {:.1}s ({:.0} img/s) on {}; run directory {}",
        s.epochs,
        s.train_seconds,
        s.images_per_second,
        s.device,
        s.run_dir.display()
    )
}

/// The edits of the shorthand flags `fit` and `pretrain` share.
fn shorthands(
    epochs: Option<usize>,
    backbone: Option<Backbone>,
    device: Option<DeviceChoice>,
) -> Vec<Edit<'static>> {
    let mut edits: Vec<Edit> = Vec::new();
    if let Some(e) = epochs {
        edits.push(Box::new(move |c: &mut Config| c.train.epochs = e));
    }
    if let Some(b) = backbone {
        edits.push(Box::new(move |c: &mut Config| c.model.backbone = b));
    }
    if let Some(d) = device {
        edits.push(Box::new(move |c: &mut Config| c.train.device = d));
    }
    edits
}

/// `--backbone NAME`: the model's own names, listed in `--help`.
fn backbone_parser() -> impl clap::builder::TypedValueParser<Value = Backbone> {
    use clap::builder::TypedValueParser;
    clap::builder::PossibleValuesParser::new(Backbone::ALL.map(Backbone::name))
        .map(|name: String| Backbone::from_name(&name).expect("a listed name"))
}

/// The DMUE variants of configs/variants, built into the binary (`fit --preset`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Preset {
    /// The paper's DMUE with the confidence normalised per class (the default before gce-target).
    ClassNorm,
    /// class-norm with GCE in the target and auxiliary hard-label terms.
    Gce,
    /// The previous default: class-norm with GCE in the target branch's hard-label term only.
    GceTarget,
    /// class-norm with early-learning regularisation on the target branch.
    Elr,
    /// gce-target with the auxiliary branches on the detached trunk (their CE cannot make the
    /// trunk memorise wrong labels).
    AuxDetach,
    /// gce-target with a tenth of the auxiliary branches' gradient reaching the trunk (for long
    /// schedules the default does better).
    #[value(name = "aux-grad-10")]
    AuxGrad10,
    /// The default: gce-target with each sample's share of the auxiliary branches' gradient into
    /// the trunk weighted by the target branch's belief in its label, relative to its batch's:
    /// labels it doubts more than the average barely train the trunk through them.
    AuxBeliefRel,
    /// What `--init face` starts from: DMUE settings for a short fine-tuning of a trunk trained
    /// on faces, the uncertainty module learning at 1e-3.
    FaceTrunk,
    /// The default with the uncertainty module reading the class similarities relative to the
    /// label: alpha flags wrong labels better (AUROC 0.80 at 14 epochs and 0.85 at 40, against
    /// 0.64 and 0.75); the accuracy differences measured are not resolved.
    AlphaRel,
    /// face-trunk with the label-relative similarities: from the face trunk alpha flags wrong
    /// labels with AUROC 0.90, at about 0.4 points of accuracy against plain CE.
    FaceAlphaRel,
    /// The paper's DMUE as written (alpha not normalised).
    Paper,
    /// DMUE as the authors' released code trains it.
    Authors,
    /// The paper's DMUE with the uncertainty module frozen at its initialisation.
    Frozen,
}

impl Preset {
    /// `(name, TOML text)` of the preset.
    pub fn layer(self) -> (&'static str, &'static str) {
        match self {
            Preset::ClassNorm => (
                "preset class-norm",
                include_str!("../../../configs/variants/class-norm.toml"),
            ),
            Preset::Gce => (
                "preset gce",
                include_str!("../../../configs/variants/gce.toml"),
            ),
            Preset::GceTarget => (
                "preset gce-target",
                include_str!("../../../configs/variants/gce-target.toml"),
            ),
            Preset::Elr => (
                "preset elr",
                include_str!("../../../configs/variants/elr.toml"),
            ),
            Preset::AuxDetach => (
                "preset aux-detach",
                include_str!("../../../configs/variants/aux-detach.toml"),
            ),
            Preset::AuxGrad10 => (
                "preset aux-grad-10",
                include_str!("../../../configs/variants/aux-grad-10.toml"),
            ),
            Preset::AuxBeliefRel => (
                "preset aux-belief-rel",
                include_str!("../../../configs/variants/aux-belief-rel.toml"),
            ),
            Preset::FaceTrunk => dmue_train::fit::config::FACE_TRUNK_LAYER,
            Preset::AlphaRel => (
                "preset alpha-rel",
                include_str!("../../../configs/variants/alpha-rel.toml"),
            ),
            Preset::FaceAlphaRel => (
                "preset face-alpha-rel",
                include_str!("../../../configs/variants/face-alpha-rel.toml"),
            ),
            Preset::Paper => (
                "preset paper",
                include_str!("../../../configs/variants/paper.toml"),
            ),
            Preset::Authors => (
                "preset authors",
                include_str!("../../../configs/variants/authors.toml"),
            ),
            Preset::Frozen => (
                "preset frozen",
                include_str!("../../../configs/variants/frozen.toml"),
            ),
        }
    }
}
