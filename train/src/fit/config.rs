//! The typed training configuration (TOML). Every field has a default (the paper's), every
//! field can be overridden from the command line with `--set section.field=value`, and an
//! unknown field anywhere is an error.

use crate::fit::loss::LossConfig;
use crate::model::ModelConfig;
use anyhow::{bail, Context, Result};
use dmue_deploy::preprocess::Preprocess;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// The full method: auxiliary branches, latent distributions, pairwise uncertainty.
    Dmue,
    /// Plain cross-entropy on the same backbone (trunk + target branch only).
    Baseline,
    /// Cross-entropy with label smoothing `train.label_smoothing` (a cheap noise-robust
    /// baseline on the same backbone).
    LabelSmoothing,
    /// Generalised cross-entropy with `train.gce_q` (Zhang & Sabuncu 2018; a cheap
    /// noise-robust baseline on the same backbone).
    Gce,
    /// Symmetric cross-entropy (Wang et al. 2019): `train.sce_alpha` CE + `train.sce_beta`
    /// reverse CE, on the same backbone.
    Sce,
    /// Early-learning regularisation (Liu et al. 2020): CE + `train.elr_lambda` times
    /// `log(1 - <p, t>)`, t a running average (`train.elr_beta`) of each training sample's
    /// prediction, on the same backbone.
    Elr,
    /// Erasing attention consistency (Zhang et al. 2022): CE on a randomly erased view
    /// (`train.eac_erasing`) + `train.eac_lambda` times the squared difference between its class
    /// activation maps and those of its mirror image; two views per step.
    Eac,
}

impl Mode {
    /// Whether the network has the auxiliary branches and the uncertainty module.
    pub fn multi_branch(self) -> bool {
        self == Mode::Dmue
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum DeviceChoice {
    /// CUDA when libtorch sees a GPU, else CPU.
    Auto,
    Cpu,
    Cuda,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    Fp32,
    /// bf16 autocast of the forward pass (CUDA only; ignored with a warning on CPU).
    Bf16,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataConfig {
    /// Dataset directory (dataset.json + manifest.jsonl).
    pub dataset: PathBuf,
    /// Resize, crop and normalisation of the network input.
    pub preprocess: Preprocess,
    /// Random horizontal flip (p = 0.5) during training.
    pub hflip: bool,
    /// Split evaluated after every epoch and at the end ("test" or "val"; "" for none).
    pub eval_split: String,
    /// How training images are held: auto, memory, packed (memory-mapped cache), stream.
    pub loader: crate::data::loader::LoaderKind,
    /// Batches prepared ahead of the training step.
    pub prefetch: usize,
    /// Standard deviation of Gaussian noise on the normalised input (authors' code; 0: off).
    pub gaussian_noise: f32,
    /// Probability of random erasing per image (authors' code; 0: off).
    pub random_erasing: f32,
}

impl Default for DataConfig {
    fn default() -> Self {
        Self {
            dataset: PathBuf::from("data/synth"),
            preprocess: Preprocess::default(),
            hflip: true,
            eval_split: "test".into(),
            loader: crate::data::loader::LoaderKind::Auto,
            prefetch: 4,
            gaussian_noise: 0.0,
            random_erasing: 0.0,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    pub mode: Mode,
    pub epochs: usize,
    pub batch_size: usize,
    /// Each class appears at least this many times in every batch (paper: every class present;
    /// 2, so that every sample has another of its class for Eq. 7, as the authors' code
    /// requires by skipping batches).
    pub min_per_class: usize,
    pub lr: f64,
    /// The uncertainty module's learning rate (default: `lr`), moved at the milestones like
    /// `lr`. A fine-tuning rate such as the face trunk's 1e-5 leaves the freshly drawn module
    /// almost where it started, so alpha stays a random function of its input.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uncertainty_lr: Option<f64>,
    /// Epochs (1-based, completed) after which the learning rate is multiplied by `lr_gamma`.
    pub lr_milestones: Vec<usize>,
    pub lr_gamma: f64,
    pub weight_decay: f64,
    /// Smoothing of `--mode label-smoothing`.
    pub label_smoothing: f64,
    /// q of `--mode gce` (and of the DMUE terms that `loss.target_loss` / `loss.aux_loss` set
    /// to gce).
    pub gce_q: f64,
    /// Weight of the cross-entropy in `--mode sce` (Wang et al.: 0.1 for 10 classes).
    pub sce_alpha: f64,
    /// Weight of the reverse cross-entropy in `--mode sce` (Wang et al.: 1.0 for 10 classes).
    pub sce_beta: f64,
    /// Weight lambda of ELR's regulariser (`--mode elr`, `loss.elr`; Liu et al.: 3 for 10
    /// classes).
    pub elr_lambda: f64,
    /// Momentum beta of ELR's running-average targets (Liu et al.: 0.7 for 10 classes).
    pub elr_beta: f64,
    /// Weight lambda of EAC's consistency term (`--mode eac`; Zhang et al.: 5).
    pub eac_lambda: f64,
    /// Probability of random erasing (area 2-25 %) per image in `--mode eac` (Zhang et al.:
    /// torchvision's 0.5).
    pub eac_erasing: f32,
    pub seed: u64,
    pub device: DeviceChoice,
    pub precision: Precision,
    /// libtorch intra-op threads (0: libtorch's default).
    pub threads: usize,
    /// How many epoch checkpoints to keep (the latest ones).
    pub keep_checkpoints: usize,
    /// Pretrained backbone weights (safetensors) loaded before the first epoch
    /// (`fit --init`); heads and the uncertainty module start fresh. See `init.rs`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub init: Option<PathBuf>,
    /// Epochs during which the loaded backbone (trunk and every branch stage) is frozen, so
    /// that only the classifiers (and the uncertainty module) train: a linear warm-up.
    /// BatchNorm statistics still adapt. Needs `init`.
    pub freeze_trunk_epochs: usize,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            mode: Mode::Dmue,
            epochs: 40,
            batch_size: 72,
            min_per_class: 2,
            lr: 1e-3,
            uncertainty_lr: None,
            lr_milestones: vec![10, 20],
            lr_gamma: 0.1,
            weight_decay: 1e-4,
            label_smoothing: 0.1,
            gce_q: 0.7,
            sce_alpha: 0.1,
            sce_beta: 1.0,
            elr_lambda: 3.0,
            elr_beta: 0.7,
            eac_lambda: 5.0,
            eac_erasing: 0.5,
            seed: 0,
            device: DeviceChoice::Auto,
            precision: Precision::Fp32,
            threads: 0,
            keep_checkpoints: 2,
            init: None,
            freeze_trunk_epochs: 0,
        }
    }
}

impl TrainConfig {
    /// The loss of a single-network mode with its settings (cross-entropy for DMUE, whose
    /// loss is [`crate::fit::loss::dmue_loss`]).
    pub fn single_loss(&self) -> crate::fit::loss::SingleLoss {
        use crate::fit::loss::SingleLoss;
        match self.mode {
            Mode::LabelSmoothing => SingleLoss::LabelSmoothing(self.label_smoothing),
            Mode::Gce => SingleLoss::Gce(self.gce_q),
            Mode::Sce => SingleLoss::Sce(self.sce_alpha, self.sce_beta),
            Mode::Baseline | Mode::Dmue | Mode::Elr | Mode::Eac => SingleLoss::Ce,
        }
    }

    /// Learning rate during 1-based `epoch`.
    pub fn lr_at(&self, epoch: usize) -> f64 {
        let passed = self.lr_milestones.iter().filter(|&&m| epoch > m).count();
        self.lr * self.lr_gamma.powi(passed as i32)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub data: DataConfig,
    pub model: ModelConfig,
    pub loss: LossConfig,
    pub train: TrainConfig,
}

/// A typed change of a configuration (what a command-line flag sets), applied by
/// [`Config::build`] after the files and before `--set`.
pub type Edit<'a> = Box<dyn Fn(&mut Config) + 'a>;

/// The DMUE settings `fit --init face` starts from (`configs/variants/face-trunk.toml`, also
/// `fit --preset face-trunk`): a layer over the defaults, under any preset, file or `--set`.
pub const FACE_TRUNK_LAYER: (&str, &str) = (
    "face-trunk defaults",
    include_str!("../../../configs/variants/face-trunk.toml"),
);

impl Config {
    /// What `fit --init face` stands for: dlib's face-recognition ResNet at its width, its
    /// fine-tuning learning rate, the converted weights at `converted` (absolute, so that a
    /// resumed run finds them from anywhere), dlib's input transform, and 150-pixel inputs
    /// (dlib's chip size) cut from aligned faces resized to 171 (the default 224-of-256 framing
    /// at 150 pixels).
    pub fn start_from_face_trunk(&mut self, converted: &Path) {
        use crate::model::{dlib, face_resnet};
        self.model.backbone = crate::model::Backbone::FaceResnet;
        self.model.width = Some(face_resnet::STANDARD_WIDTH);
        self.train.lr = dlib::FINE_TUNE_LR;
        self.train.init = Some(converted.to_path_buf());
        self.data.preprocess = dlib::preprocess(171, dlib::CHIP_SIZE);
    }

    /// Defaults, then each TOML file in order, then each `section.field=value` override.
    pub fn load<P: AsRef<Path>>(files: &[P], overrides: &[String]) -> Result<Self> {
        Self::load_layers(&[], files, overrides)
    }

    /// As [`Config::load`], with named TOML texts (presets) applied over the defaults before
    /// the files.
    pub fn load_layers<P: AsRef<Path>>(
        texts: &[(&str, &str)],
        files: &[P],
        overrides: &[String],
    ) -> Result<Self> {
        Self::build(texts, files, &[], overrides)
    }

    /// The defaults, then the named TOML texts (presets), the files, the typed `edits` (what
    /// command-line flags set), and last the `section.field=value` overrides of `--set`.
    pub fn build<P: AsRef<Path>>(
        texts: &[(&str, &str)],
        files: &[P],
        edits: &[Edit],
        overrides: &[String],
    ) -> Result<Self> {
        let mut value = toml::Value::try_from(Config::default()).context("serialising defaults")?;
        for (name, text) in texts {
            let layer: toml::Value =
                toml::from_str(text).with_context(|| format!("{name} is not valid TOML"))?;
            merge(&mut value, layer);
        }
        for path in files {
            let path = path.as_ref();
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read config {}", path.display()))?;
            let file_value: toml::Value = toml::from_str(&text)
                .with_context(|| format!("{} is not valid TOML", path.display()))?;
            merge(&mut value, file_value);
        }
        let layers: Vec<String> = texts
            .iter()
            .map(|(name, _)| name.to_string())
            .chain(files.iter().map(|p| p.as_ref().display().to_string()))
            .collect();
        let what = if layers.is_empty() {
            "the defaults".to_string()
        } else {
            layers.join(", ")
        };
        if !edits.is_empty() {
            let mut config: Config = value
                .try_into()
                .with_context(|| format!("invalid configuration (from {what})"))?;
            for edit in edits {
                edit(&mut config);
            }
            value = toml::Value::try_from(&config).context("serialising the configuration")?;
        }
        for o in overrides {
            apply_override(&mut value, o)?;
        }
        let config: Config = value
            .try_into()
            .with_context(|| format!("invalid configuration (from {what} and --set overrides)"))?;
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<()> {
        self.data.preprocess.validate()?;
        let t = &self.train;
        if t.epochs == 0 {
            bail!("train.epochs must be at least 1");
        }
        if t.batch_size < 2 {
            bail!("train.batch_size must be at least 2 (pairwise similarities need pairs)");
        }
        if !(t.lr > 0.0 && t.lr.is_finite()) {
            bail!("train.lr must be positive, got {}", t.lr);
        }
        if let Some(lr) = t.uncertainty_lr {
            if !(lr > 0.0 && lr.is_finite()) {
                bail!("train.uncertainty_lr must be positive, got {lr}");
            }
        }
        if !(0.0..1.0).contains(&t.label_smoothing) {
            bail!(
                "train.label_smoothing must be in [0, 1), got {}",
                t.label_smoothing
            );
        }
        if !(t.gce_q > 0.0 && t.gce_q <= 1.0) {
            bail!("train.gce_q must be in (0, 1], got {}", t.gce_q);
        }
        for (name, v) in [
            ("sce_alpha", t.sce_alpha),
            ("sce_beta", t.sce_beta),
            ("elr_lambda", t.elr_lambda),
            ("eac_lambda", t.eac_lambda),
        ] {
            if !(v >= 0.0 && v.is_finite()) {
                bail!("train.{name} must be a finite weight >= 0, got {v}");
            }
        }
        if !(0.0..1.0).contains(&t.elr_beta) {
            bail!("train.elr_beta must be in [0, 1), got {}", t.elr_beta);
        }
        if !(0.0..=1.0).contains(&t.eac_erasing) {
            bail!("train.eac_erasing is a probability, got {}", t.eac_erasing);
        }
        let share = self.loss.aux_trunk_grad;
        if !(0.0..=1.0).contains(&share) {
            bail!("loss.aux_trunk_grad is a share of a gradient, in [0, 1]; got {share}");
        }
        if t.freeze_trunk_epochs > 0 && t.init.is_none() {
            bail!("train.freeze_trunk_epochs needs pretrained weights (train.init / --init)");
        }
        self.model.backbone.validate_width(self.model.width())?;
        let crop = self.data.preprocess.crop as i64;
        if self.model.backbone == crate::model::Backbone::FaceResnet
            && crop < crate::model::face_resnet::MIN_INPUT
        {
            bail!(
                "model.backbone = \"face-resnet\" needs data.preprocess.crop >= {} (got {crop}); \
                 dlib trained it on 150-pixel chips",
                crate::model::face_resnet::MIN_INPUT
            );
        }
        if self.loss.temperature <= 0.0 {
            bail!("loss.temperature must be positive");
        }
        let d = &self.data;
        if !(d.gaussian_noise >= 0.0 && d.gaussian_noise.is_finite()) {
            bail!("data.gaussian_noise must be a finite standard deviation >= 0");
        }
        if !(0.0..=1.0).contains(&d.random_erasing) {
            bail!(
                "data.random_erasing is a probability, got {}",
                d.random_erasing
            );
        }
        if d.prefetch == 0 {
            bail!("data.prefetch must be at least 1");
        }
        Ok(())
    }

    pub fn to_toml(&self) -> Result<String> {
        Ok(toml::to_string_pretty(self)?)
    }
}

/// The settings (`section.field = default`) that the configuration text `text` (a run's
/// config.toml) does not name: a run written by an older dmue-train resumes with today's
/// defaults for them, which may not be what it trained with.
pub fn fields_missing_from(text: &str) -> Result<Vec<String>> {
    let own: toml::Value =
        toml::from_str(text).context("the run's config.toml is not valid TOML")?;
    let defaults = toml::Value::try_from(Config::default()).context("serialising defaults")?;
    let mut missing = Vec::new();
    if let (Some(defaults), Some(own)) = (defaults.as_table(), own.as_table()) {
        for (section, fields) in defaults {
            let Some(fields) = fields.as_table() else {
                continue;
            };
            let named = own.get(section).and_then(|v| v.as_table());
            for (field, value) in fields {
                if !named.is_some_and(|t| t.contains_key(field)) {
                    missing.push(format!("{section}.{field} = {value}"));
                }
            }
        }
    }
    Ok(missing)
}

fn merge(base: &mut toml::Value, over: toml::Value) {
    match (base, over) {
        (toml::Value::Table(b), toml::Value::Table(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(slot) => merge(slot, v),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (slot, v) => *slot = v,
    }
}

/// Applies `a.b.c=value`; the value is parsed as TOML (numbers, booleans, arrays) and taken as
/// a string when it is not valid TOML (`data.dataset=data/x`).
fn apply_override(root: &mut toml::Value, spec: &str) -> Result<()> {
    let (key, raw) = spec
        .split_once('=')
        .with_context(|| format!("--set {spec:?}: expected section.field=value"))?;
    let parsed = toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_string()));
    let parts: Vec<&str> = key.trim().split('.').collect();
    let mut node = root;
    for (i, part) in parts.iter().enumerate() {
        let table = node
            .as_table_mut()
            .with_context(|| format!("--set {key}: {} is not a section", parts[..i].join(".")))?;
        if i + 1 == parts.len() {
            table.insert(part.to_string(), parsed);
            return Ok(());
        }
        node = table
            .entry(part.to_string())
            .or_insert_with(|| toml::Value::Table(Default::default()));
    }
    bail!("--set {spec:?}: empty key")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_papers() {
        let c = Config::default();
        assert_eq!(
            (
                c.train.epochs,
                c.train.batch_size,
                c.train.lr,
                c.train.weight_decay
            ),
            (40, 72, 1e-3, 1e-4)
        );
        assert_eq!(
            (c.loss.temperature, c.loss.omega, c.loss.beta, c.loss.gamma),
            (1.2, 0.5, 6.0, 1e3)
        );
        assert_eq!(
            (c.data.preprocess.resize, c.data.preprocess.crop),
            (256, 224)
        );
        assert!((c.train.lr_at(10) - 1e-3).abs() < 1e-12);
        assert!((c.train.lr_at(11) - 1e-4).abs() < 1e-12);
        assert!((c.train.lr_at(21) - 1e-5).abs() < 1e-12);
        // Where the default is not the paper's, on purpose (docs/method.md, docs/results.md):
        // alpha normalised per class, two samples of each class per batch, no classifier bias.
        assert_eq!(c.loss.alpha_norm, crate::fit::loss::AlphaNorm::Class);
        assert_eq!(c.train.min_per_class, 2);
        assert!(!c.model.classifier_bias);
    }

    #[test]
    fn overrides_reach_every_section_and_typos_are_errors() {
        let c = Config::load(
            &[] as &[PathBuf],
            &[
                "train.lr=0.01".into(),
                "data.dataset=data/x".into(),
                "train.lr_milestones=[3, 5]".into(),
                "loss.latent=false".into(),
                "train.mode=baseline".into(),
            ],
        )
        .unwrap();
        assert_eq!(c.train.lr, 0.01);
        assert_eq!(c.data.dataset, PathBuf::from("data/x"));
        assert_eq!(c.train.lr_milestones, vec![3, 5]);
        assert!(!c.loss.latent);
        assert_eq!(c.train.mode, Mode::Baseline);
        let c = Config::load(
            &[] as &[PathBuf],
            &["train.mode=\"label-smoothing\"".into()],
        )
        .unwrap();
        assert_eq!(c.train.mode, Mode::LabelSmoothing);
        let err = format!(
            "{:#}",
            Config::load(&[] as &[PathBuf], &["train.lrr=0.1".into()]).unwrap_err()
        );
        assert!(err.contains("unknown field `lrr`"), "{err}");
        let err = format!(
            "{:#}",
            Config::load(&[] as &[PathBuf], &["train.epochs=0".into()]).unwrap_err()
        );
        assert!(err.contains("epochs"), "{err}");
    }

    /// A run's config.toml written before a field existed is found out, field by field.
    #[test]
    fn fields_a_run_config_lacks_are_named() {
        let full = Config::default().to_toml().unwrap();
        assert!(fields_missing_from(&full).unwrap().is_empty());
        let old: String = full
            .lines()
            .filter(|l| !l.starts_with("aux_trunk_grad_by_belief"))
            .map(|l| format!("{l}\n"))
            .collect();
        assert_eq!(
            fields_missing_from(&old).unwrap(),
            ["loss.aux_trunk_grad_by_belief = true"]
        );
    }

    /// `fit --init face` starts from the face-trunk layer: over the defaults, under a preset.
    /// Every variant sets each field the layer sets, so a preset trains from the face trunk
    /// exactly what it trains from anywhere else.
    #[test]
    fn the_face_trunk_layer_lies_under_every_preset() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/variants");
        let none: &[PathBuf] = &[];
        assert_ne!(
            Config::build(&[FACE_TRUNK_LAYER], none, &[], &[]).unwrap(),
            Config::default()
        );
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let text = std::fs::read_to_string(&path).unwrap();
            let alone = Config::build(&[("variant", &text)], none, &[], &[]).unwrap();
            let mut layered =
                Config::build(&[FACE_TRUNK_LAYER, ("variant", &text)], none, &[], &[]).unwrap();
            // The uncertainty module's own rate is the face start's, under every preset.
            assert_eq!(
                layered.train.uncertainty_lr,
                Some(1e-3),
                "{}",
                path.display()
            );
            if alone.train.uncertainty_lr.is_none() {
                layered.train.uncertainty_lr = None;
            }
            assert_eq!(layered, alone, "{}", path.display());
            seen += 1;
        }
        assert!(seen >= 10, "{seen} variants");
    }

    #[test]
    fn file_values_merge_over_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "[train]\nepochs = 3\n[data.preprocess]\nresize = 72\ncrop = 64\n",
        )
        .unwrap();
        let c = Config::load(&[&path], &[]).unwrap();
        assert_eq!((c.train.epochs, c.train.batch_size), (3, 72));
        assert_eq!((c.data.preprocess.resize, c.data.preprocess.crop), (72, 64));
        // A later file overrides an earlier one; what it leaves out survives.
        let later = dir.path().join("later.toml");
        std::fs::write(
            &later,
            "[train]\nepochs = 5\n[loss]\nalpha_norm = \"class\"\n",
        )
        .unwrap();
        let c = Config::load(&[&path, &later], &[]).unwrap();
        assert_eq!((c.train.epochs, c.data.preprocess.crop), (5, 64));
        assert_eq!(c.loss.alpha_norm, crate::fit::loss::AlphaNorm::Class);
        std::fs::write(&path, "[trian]\nepochs = 3\n").unwrap();
        assert!(format!("{:#}", Config::load(&[&path], &[]).unwrap_err())
            .contains("unknown field `trian`"));
    }

    /// Every shipped configuration loads, and each variant preset sets what its comments say.
    #[test]
    fn shipped_configs_load_and_presets_differ_as_documented() {
        use crate::fit::loss::{AlphaNorm, HardLabel, SpSource};
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs");
        for f in ["demo-cpu.toml", "bench-cpu.toml"] {
            Config::load(&[dir.join(f)], &[]).unwrap();
        }
        let variant = |name: &str| {
            Config::load(&[dir.join("variants").join(format!("{name}.toml"))], &[]).unwrap()
        };
        let paper = variant("paper");
        assert!(paper.loss.train_uncertainty && paper.loss.similarity_detach);
        assert_eq!(paper.loss.alpha_norm, AlphaNorm::None);
        assert!(!paper.model.classifier_bias && paper.train.min_per_class == 2);
        let authors = variant("authors").loss;
        assert!(!authors.train_uncertainty && !authors.similarity_detach && !authors.sp_detach_aux);
        assert!(authors.similarity_include_self && authors.similarity_minmax);
        assert_eq!(authors.sp_aux_source, SpSource::Logits);
        let frozen = variant("frozen").loss;
        assert!(!frozen.train_uncertainty && frozen.similarity_detach);
        let class_norm = variant("class-norm");
        assert_eq!(class_norm.loss.alpha_norm, AlphaNorm::Class);
        assert_eq!(class_norm.loss.target_loss, HardLabel::Ce);
        // The hybrids are class-norm with their one change (gce-target was the default before
        // aux-belief-rel).
        let gce = variant("gce");
        assert_eq!(
            (gce.loss.target_loss, gce.loss.aux_loss),
            (HardLabel::Gce, HardLabel::Gce)
        );
        let gce_target = variant("gce-target");
        assert_eq!(
            (gce_target.loss.target_loss, gce_target.loss.aux_loss),
            (HardLabel::Gce, HardLabel::Ce)
        );
        let elr = variant("elr");
        assert!(elr.loss.elr);
        // The hybrids below are gce-target (the previous default) with one change each.
        let gce_target_config = variant("gce-target");
        let mut aux_detach = variant("aux-detach");
        assert!(aux_detach.loss.aux_detach_trunk);
        aux_detach.loss.aux_detach_trunk = false;
        assert_eq!(aux_detach, gce_target_config);
        // aux-detach-late is detached from the first learning-rate drop on.
        let mut late = variant("aux-detach-late");
        assert!(late.loss.aux_detach_after_lr_drop && !late.loss.aux_detach_trunk);
        late.loss.aux_detach_after_lr_drop = false;
        assert_eq!(late, gce_target_config);
        // aux-grad-N lets N % of the auxiliary gradient reach the trunk.
        for (name, share) in [("aux-grad-10", 0.1), ("aux-grad-30", 0.3)] {
            let mut scaled = variant(name);
            assert_eq!(scaled.loss.aux_trunk_grad, share, "{name}");
            scaled.loss.aux_trunk_grad = 1.0;
            assert_eq!(scaled, gce_target_config, "{name}");
        }
        // aux-belief weights the trunk's share by the label belief; aux-belief-rel, the
        // default, by the belief relative to the batch's.
        let mut belief = variant("aux-belief");
        assert!(belief.loss.aux_trunk_grad_by_belief);
        assert!(!belief.loss.aux_trunk_grad_belief_relative);
        belief.loss.aux_trunk_grad_by_belief = false;
        assert_eq!(belief, gce_target_config);
        let mut relative = variant("aux-belief-rel");
        assert_eq!(relative, Config::default());
        relative.loss.aux_trunk_grad_belief_relative = false;
        assert_eq!(relative, variant("aux-belief"));
        for (hybrid, mut expected) in [
            (gce, class_norm.clone()),
            (gce_target, class_norm.clone()),
            (elr, class_norm.clone()),
        ] {
            expected.loss.target_loss = hybrid.loss.target_loss;
            expected.loss.aux_loss = hybrid.loss.aux_loss;
            expected.loss.elr = hybrid.loss.elr;
            assert_eq!(hybrid, expected);
        }
        // From a face trunk: class-norm with the ramps over 2 epochs; ce-ramp2-belief adds the
        // default's belief weighting.
        let mut ce_ramp2 = variant("ce-ramp2");
        let mut face_trunk = variant("face-trunk");
        face_trunk.train.uncertainty_lr = None;
        assert_eq!(face_trunk, ce_ramp2);
        let mut ce_ramp2_belief = variant("ce-ramp2-belief");
        ce_ramp2.loss.beta = 6.0;
        assert_eq!(ce_ramp2, class_norm);
        ce_ramp2_belief.loss.beta = 6.0;
        ce_ramp2_belief.loss.target_loss = HardLabel::Gce;
        assert_eq!(ce_ramp2_belief, Config::default());
        let mut previous = Config::default();
        previous.loss.aux_trunk_grad_by_belief = false;
        previous.loss.aux_trunk_grad_belief_relative = false;
        assert_eq!(variant("gce-target"), previous);
    }

    /// The alpha presets are their base with one switch each.
    #[test]
    fn alpha_presets_add_one_switch_to_their_base() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/variants");
        let variant = |name: &str| Config::load(&[dir.join(format!("{name}.toml"))], &[]).unwrap();
        // alpha-rel: the default with the module reading S relative to the label (and, in
        // alpha-rel-minmax, each row of S min-max scaled first).
        let mut alpha_rel = variant("alpha-rel");
        assert!(alpha_rel.loss.similarity_relative && !alpha_rel.loss.similarity_minmax);
        alpha_rel.loss.similarity_relative = false;
        assert_eq!(alpha_rel, Config::default());
        let mut alpha_rel_minmax = variant("alpha-rel-minmax");
        assert!(alpha_rel_minmax.loss.similarity_minmax);
        alpha_rel_minmax.loss.similarity_minmax = false;
        assert_eq!(alpha_rel_minmax, variant("alpha-rel"));
        // face-alpha (ce-ramp2 with the uncertainty module at 1e-3) is what face-trunk became;
        // face-alpha-rel adds the label-relative similarities.
        let face_alpha = variant("face-alpha");
        assert_eq!(face_alpha.train.uncertainty_lr, Some(1e-3));
        assert_eq!(face_alpha, variant("face-trunk"));
        let mut face_alpha_rel = variant("face-alpha-rel");
        assert!(face_alpha_rel.loss.similarity_relative);
        face_alpha_rel.loss.similarity_relative = false;
        assert_eq!(face_alpha_rel, face_alpha);
        // The -weight arms use alpha as a per-sample weight instead of a logit scale.
        for (name, base) in [
            ("alpha-weight", "alpha-rel"),
            ("face-alpha-weight", "face-alpha-rel"),
        ] {
            let mut weighted = variant(name);
            assert!(weighted.loss.alpha_as_weight, "{name}");
            weighted.loss.alpha_as_weight = false;
            assert_eq!(weighted, variant(base), "{name}");
        }
    }

    /// Each single-branch mode applies its own loss with the configured settings: logits
    /// [2, 0], label 0, p_y = e^2 / (e^2 + 1) = 0.880797, -log p_y = 0.126928 (CE: baseline,
    /// and ELR and EAC before their regularisers, which the caller adds).
    ///   label smoothing 0.1: 0.9 * 0.126928 + 0.1 * (0.126928 + 2.126928) / 2 = 0.226928;
    ///   GCE q 0.7: (1 - 0.880797^0.7) / 0.7 = 0.121453;
    ///   SCE alpha 0.1, beta 1, A = -4: 0.1 * 0.126928 + 4 * (1 - 0.880797) = 0.489505.
    #[test]
    fn each_single_branch_mode_applies_its_loss() {
        use crate::fit::loss::single_branch_loss;
        use crate::fit::loss::tests::{labels, t2};
        let z = t2(&[&[2.0, 0.0]]);
        let y = labels(&[0]);
        for (mode, want) in [
            (Mode::Baseline, 0.126928),
            (Mode::LabelSmoothing, 0.226928),
            (Mode::Gce, 0.121453),
            (Mode::Sce, 0.489505),
            (Mode::Elr, 0.126928),
            (Mode::Eac, 0.126928),
        ] {
            let mut cfg = Config::default();
            cfg.train.mode = mode;
            let got = single_branch_loss(&z, &y, cfg.train.single_loss())
                .total
                .double_value(&[]);
            assert!((got - want).abs() < 1e-5, "{mode:?}: {got} for {want}");
        }
    }
}
