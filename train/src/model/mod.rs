//! The DMUE multi-branch network, as typed blocks with PyTorch weight names.
//!
//! Names: the shared trunk and the target branch use torchvision's names (ResNet-18: `conv1`,
//! `bn1`, `layer1.0.conv1`, ..., `layer4`; MobileNetV2: `features.0.0`, ..., `features.18.1`),
//! so the deployed part loads and saves like a plain torchvision checkpoint; the target
//! classifier is `fc`. Auxiliary branch j lives under `aux.{j}.` with the same names
//! (`aux.{j}.layer4...`, `aux.{j}.fc`); the uncertainty module under
//! `uncertainty.{fc1,prelu,fc2}`.

pub mod dlib;
pub mod face_resnet;
pub mod fused;
pub mod init;
pub mod mobilenet_v2;
pub mod resnet;
pub mod shufflenet_v1;

use serde::{Deserialize, Serialize};
use tch::nn::{self, ModuleT};
use tch::Tensor;

/// Backbone family. The branch point is the last stage (paper Tables 6-7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Backbone {
    /// ResNet-18 (BasicBlock, [2, 2, 2, 2]); branch stage layer4; width 64 is the standard
    /// model.
    #[serde(rename = "resnet18")]
    Resnet18,
    /// MobileNetV2 (torchvision); branch stage = the last two stages + the final 1x1
    /// convolution (`features.14..=18`); width 32 (the stem's channels) is multiplier 1.0.
    #[serde(rename = "mobilenet_v2")]
    MobilenetV2,
    /// ResNet-50-IBN-a (Bottleneck, [3, 4, 6, 3], half InstanceNorm in layer1..3, IBN-Net's
    /// names); branch stage layer4; width 64 is the standard model.
    #[serde(rename = "resnet50_ibn")]
    Resnet50Ibn,
    /// ShuffleNetV1, groups 3 (Megvii's names); branch stage = the last stage
    /// (`features.12..=15`); width 480 (first-stage channels) is the paper's 2.0x.
    #[serde(rename = "shufflenet_v1")]
    ShufflenetV1,
    /// dlib's face-recognition ResNet (`face_resnet.rs`); branch stage `layer5`; width 32 is
    /// dlib's network, which `fit --init face` starts from. Inputs of 103 pixels and more.
    #[serde(rename = "face-resnet")]
    FaceResnet,
}

impl Backbone {
    /// Every backbone, in the order the command line lists them.
    pub const ALL: [Backbone; 5] = [
        Backbone::Resnet18,
        Backbone::MobilenetV2,
        Backbone::Resnet50Ibn,
        Backbone::ShufflenetV1,
        Backbone::FaceResnet,
    ];

    /// The backbone of a config or command-line name.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|b| b.name() == name)
    }

    /// `model.width` of the standard (published) network.
    pub fn standard_width(self) -> i64 {
        match self {
            Backbone::Resnet18 | Backbone::Resnet50Ibn => 64,
            Backbone::MobilenetV2 => mobilenet_v2::STANDARD_WIDTH,
            Backbone::ShufflenetV1 => shufflenet_v1::STANDARD_WIDTH,
            Backbone::FaceResnet => face_resnet::STANDARD_WIDTH,
        }
    }

    /// The name used in configs and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Backbone::Resnet18 => "resnet18",
            Backbone::MobilenetV2 => "mobilenet_v2",
            Backbone::Resnet50Ibn => "resnet50_ibn",
            Backbone::ShufflenetV1 => "shufflenet_v1",
            Backbone::FaceResnet => "face-resnet",
        }
    }

    /// Whether a weight name (relative to a branch, without `aux.{j}.`) belongs to the branch
    /// stage, the part every branch has its own copy of.
    pub fn is_branch_stage(self, name: &str) -> bool {
        match self {
            Backbone::Resnet18 | Backbone::Resnet50Ibn => name.starts_with("layer4."),
            Backbone::MobilenetV2 => features_index(name) >= Some(mobilenet_v2::BRANCH_START),
            Backbone::ShufflenetV1 => features_index(name) >= Some(shufflenet_v1::BRANCH_START),
            Backbone::FaceResnet => name.starts_with("layer5."),
        }
    }

    /// Checks that `model.width` is one this backbone can be built with.
    pub fn validate_width(self, w: i64) -> anyhow::Result<()> {
        if w < 1 {
            anyhow::bail!("model.width must be positive");
        }
        if self == Backbone::ShufflenetV1 {
            shufflenet_v1::stem_channels(w)?;
        }
        Ok(())
    }
}

/// N of a `features.N....` weight name.
fn features_index(name: &str) -> Option<usize> {
    name.strip_prefix("features.")?
        .split('.')
        .next()?
        .parse()
        .ok()
}

/// ResNet stem: torchvision's (7x7 conv, BatchNorm, ReLU, 3x3 max-pool) or the authors' (no
/// ReLU, 2x2 max-pool), in which their MS-Celeb-1M weights were trained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Stem {
    #[default]
    Torchvision,
    Authors,
}

/// What the network is built from; saved next to the weights so a run can be rebuilt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    pub backbone: Backbone,
    /// Channels of the first layer: ResNet-18 64 (16 gives a fast CPU variant with the same
    /// architecture), MobileNetV2 32 (= width multiplier 1.0; 8 is 0.25). Unset: the standard
    /// width of the backbone.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub width: Option<i64>,
    /// Give every classifier a bias. Off by default, as in the paper's Eq. 9 (`alpha * W^T f`:
    /// the confidence scales the whole logit) and in the authors' code. A bias-free classifier
    /// exports as a Gemm with a zero bias.
    pub classifier_bias: bool,
    /// ResNet-18 stem (`torchvision` or `authors`); other backbones ignore it.
    pub stem: Stem,
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            backbone: Backbone::Resnet18,
            width: None,
            classifier_bias: false,
            stem: Stem::Torchvision,
        }
    }
}

impl ModelConfig {
    /// The configured width, or the backbone's standard one.
    pub fn width(&self) -> i64 {
        self.width.unwrap_or(self.backbone.standard_width())
    }

    /// One line for model cards and logs: `resnet18 width 16`, `resnet18 (authors' stem)`.
    pub fn describe(&self) -> String {
        let mut s = self.backbone.name().to_string();
        if self.width() != self.backbone.standard_width() {
            s += &format!(" width {}", self.width());
        }
        if self.backbone == Backbone::Resnet18 && self.stem == Stem::Authors {
            s += " (authors' stem)";
        }
        s
    }
}

/// A convolution that remembers its geometry (tch keeps it private).
#[derive(Debug)]
pub struct Conv {
    pub inner: nn::Conv2D,
    pub stride: i64,
    pub padding: i64,
    pub groups: i64,
}

impl nn::Module for Conv {
    fn forward(&self, xs: &Tensor) -> Tensor {
        xs.apply(&self.inner)
    }
}

/// Bias-free convolution padded by `k / 2`, with torchvision's initialisation.
fn conv(p: nn::Path, cin: i64, cout: i64, k: i64, stride: i64, groups: i64) -> Conv {
    let cfg = nn::ConvConfig {
        stride,
        padding: k / 2,
        groups,
        bias: false,
        // torchvision: kaiming_normal_(mode="fan_out", nonlinearity="relu").
        ws_init: nn::Init::Kaiming {
            dist: nn::init::NormalOrUniform::Normal,
            fan: nn::init::FanInOut::FanOut,
            non_linearity: nn::init::NonLinearity::ReLU,
        },
        ..Default::default()
    };
    Conv {
        inner: nn::conv2d(p, cin, cout, k, cfg),
        stride,
        padding: k / 2,
        groups,
    }
}

/// BatchNorm epsilon (PyTorch's default); the exporter folds BatchNorm with this same value.
pub const BN_EPS: f64 = 1e-5;

fn bn(p: nn::Path, c: i64) -> nn::BatchNorm {
    nn::batch_norm2d(
        p,
        c,
        nn::BatchNormConfig {
            eps: BN_EPS,
            momentum: fused::BN_MOMENTUM,
            ..Default::default()
        },
    )
}

/// The shared trunk of one backbone.
#[derive(Debug)]
pub enum Trunk {
    Resnet(resnet::Trunk),
    MobilenetV2(mobilenet_v2::Trunk),
    ShufflenetV1(shufflenet_v1::Trunk),
    FaceResnet(face_resnet::Trunk),
}

impl Trunk {
    pub fn new(p: &nn::Path, cfg: &ModelConfig) -> Self {
        match cfg.backbone {
            Backbone::Resnet18 => Trunk::Resnet(resnet::Trunk::new(
                p,
                resnet::Depth::R18,
                cfg.width(),
                cfg.stem,
            )),
            Backbone::Resnet50Ibn => Trunk::Resnet(resnet::Trunk::new(
                p,
                resnet::Depth::R50Ibn,
                cfg.width(),
                Stem::Torchvision,
            )),
            Backbone::MobilenetV2 => Trunk::MobilenetV2(mobilenet_v2::Trunk::new(p, cfg.width())),
            Backbone::ShufflenetV1 => {
                Trunk::ShufflenetV1(shufflenet_v1::Trunk::new(p, cfg.width()))
            }
            Backbone::FaceResnet => Trunk::FaceResnet(face_resnet::Trunk::new(p, cfg)),
        }
    }
}

impl ModuleT for Trunk {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        match self {
            Trunk::Resnet(t) => t.forward_t(xs, train),
            Trunk::MobilenetV2(t) => t.forward_t(xs, train),
            Trunk::ShufflenetV1(t) => t.forward_t(xs, train),
            Trunk::FaceResnet(t) => t.forward_t(xs, train),
        }
    }
}

/// The branch stage (the part of the backbone every branch has its own copy of).
#[derive(Debug)]
pub enum Stage {
    Resnet(resnet::Layer),
    MobilenetV2(Box<mobilenet_v2::Tail>),
    ShufflenetV1(shufflenet_v1::Tail),
    FaceResnet(face_resnet::Tail),
}

impl Stage {
    /// The stage and its output channels.
    fn new(p: &nn::Path, cfg: &ModelConfig) -> (Self, i64) {
        let w = cfg.width();
        match cfg.backbone {
            Backbone::Resnet18 | Backbone::Resnet50Ibn => {
                let depth = if cfg.backbone == Backbone::Resnet18 {
                    resnet::Depth::R18
                } else {
                    resnet::Depth::R50Ibn
                };
                (
                    Stage::Resnet(resnet::Layer::branch_stage(p / "layer4", depth, w)),
                    depth.stage_channels(3, w),
                )
            }
            Backbone::MobilenetV2 => (
                Stage::MobilenetV2(Box::new(mobilenet_v2::Tail::new(p, w))),
                mobilenet_v2::channels(w).1,
            ),
            Backbone::ShufflenetV1 => (Stage::ShufflenetV1(shufflenet_v1::Tail::new(p, w)), 4 * w),
            Backbone::FaceResnet => (
                Stage::FaceResnet(face_resnet::Tail::new(p, w)),
                face_resnet::channels(4, w),
            ),
        }
    }
}

impl ModuleT for Stage {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        match self {
            Stage::Resnet(l) => l.forward_t(xs, train),
            Stage::MobilenetV2(t) => t.forward_t(xs, train),
            Stage::ShufflenetV1(t) => t.forward_t(xs, train),
            Stage::FaceResnet(t) => t.forward_t(xs, train),
        }
    }
}

/// A branch: a copy of the last stage, global average pooling, a linear classifier.
#[derive(Debug)]
pub struct Branch {
    pub stage: Stage,
    pub fc: nn::Linear,
}

impl Branch {
    /// `p` is the parent path: the branch's weights are `p/layer4/...` (or `p/features/...`)
    /// and `p/fc`.
    pub fn new(p: &nn::Path, cfg: &ModelConfig, classes: i64) -> Self {
        let (stage, features) = Stage::new(p, cfg);
        Self {
            stage,
            fc: nn::linear(
                p / "fc",
                features,
                classes,
                nn::LinearConfig {
                    bias: cfg.classifier_bias,
                    ..Default::default()
                },
            ),
        }
    }

    /// `[B, c, h, w] -> (features [B, F], logits [B, classes])`.
    pub fn forward_t(&self, trunk: &Tensor, train: bool) -> (Tensor, Tensor) {
        let feat = trunk
            .apply_t(&self.stage, train)
            .adaptive_avg_pool2d([1, 1])
            .flatten(1, -1);
        let logits = feat.apply(&self.fc);
        (feat, logits)
    }
}

/// Where the uncertainty module's variables live in the network's variable store.
pub const UNCERTAINTY_PATH: &str = "uncertainty";

/// FC(2C -> C) -> PReLU -> FC(C -> 1) -> sigmoid: the confidence alpha of each sample.
#[derive(Debug)]
pub struct UncertaintyModule {
    pub fc1: nn::Linear,
    pub prelu: Tensor,
    pub fc2: nn::Linear,
}

impl UncertaintyModule {
    pub fn new(p: &nn::Path, classes: i64) -> Self {
        Self {
            fc1: nn::linear(p / "fc1", 2 * classes, classes, Default::default()),
            prelu: (p / "prelu").var("weight", &[1], nn::Init::Const(0.25)),
            fc2: nn::linear(p / "fc2", classes, 1, Default::default()),
        }
    }

    /// `[B, 2C] -> alpha [B]` in (0, 1).
    pub fn forward(&self, sv: &Tensor) -> Tensor {
        sv.apply(&self.fc1)
            .prelu(&self.prelu)
            .apply(&self.fc2)
            .sigmoid()
            .squeeze_dim(1)
    }
}

/// Everything `forward_train` computes for one batch.
#[derive(Debug)]
pub struct TrainOutput {
    /// Target-branch features `[B, 8w]` and logits `[B, C]`.
    pub target_feat: Tensor,
    pub target_logits: Tensor,
    /// Auxiliary branch j's features `[B, 8w]` and logits `[B, C-1]` (over classes != j).
    pub aux_feat: Vec<Tensor>,
    pub aux_logits: Vec<Tensor>,
}

impl TrainOutput {
    /// Every output as fp32 (a no-op for fp32 outputs; after bf16 autocast, the losses need
    /// fp32's range and precision).
    pub fn to_fp32(self) -> Self {
        let f = |t: Tensor| t.to_kind(tch::Kind::Float);
        Self {
            target_feat: f(self.target_feat),
            target_logits: f(self.target_logits),
            aux_feat: self.aux_feat.into_iter().map(f).collect(),
            aux_logits: self.aux_logits.into_iter().map(f).collect(),
        }
    }
}

/// How [`MultiBranchNet::forward_with`] runs the branches.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Branches {
    /// Target and auxiliary branches as one stacked computation (the training default).
    Fused,
    /// One branch after another (the reference the fused path is tested against).
    Sequential,
    /// The target branch only: the auxiliary outputs stay empty (for losses that do not use
    /// them).
    TargetOnly,
    /// The target branch on the trunk's features, the auxiliary branches one after another on
    /// the same features with their gradient into the trunk scaled by the given share in
    /// [0, 1] (`loss.aux_trunk_grad`; 0: detached, `loss.aux_detach_trunk`). The forward
    /// values are unchanged. (With `loss.aux_trunk_grad_by_belief` the trainer runs it as
    /// [`MultiBranchNet::forward_aux_share_per_sample`].)
    AuxOnScaledTrunk(f64),
}

/// Trunk + target branch (+ C auxiliary branches + uncertainty module when multi-branch).
#[derive(Debug)]
pub struct MultiBranchNet {
    pub config: ModelConfig,
    pub num_classes: i64,
    pub trunk: Trunk,
    pub target: Branch,
    pub aux: Vec<Branch>,
    pub uncertainty: Option<UncertaintyModule>,
}

impl MultiBranchNet {
    /// `multi_branch`: build the C auxiliary branches and the uncertainty module (DMUE); without
    /// them this is the baseline network.
    pub fn new(
        root: &nn::Path,
        config: &ModelConfig,
        num_classes: usize,
        multi_branch: bool,
    ) -> Self {
        let c = num_classes as i64;
        // The deployed part is drawn first, so that for one seed a DMUE run and a baseline run
        // start from the same trunk and target weights (paired experiments).
        let trunk = Trunk::new(root, config);
        let target = Branch::new(root, config, c);
        let (aux, uncertainty) = if multi_branch {
            (
                (0..c)
                    .map(|j| Branch::new(&(root / "aux" / j), config, c - 1))
                    .collect(),
                Some(UncertaintyModule::new(&(root / UNCERTAINTY_PATH), c)),
            )
        } else {
            (Vec::new(), None)
        };
        Self {
            config: config.clone(),
            num_classes: c,
            trunk,
            target,
            aux,
            uncertainty,
        }
    }

    /// Every branch on the whole batch; the trunk runs once and the branches run fused
    /// (`fused.rs`).
    pub fn forward_train(&self, xs: &Tensor, train: bool) -> TrainOutput {
        self.forward_with(xs, train, Branches::Fused)
    }

    /// The trunk once, then the branches as `how` says.
    pub fn forward_with(&self, xs: &Tensor, train: bool, how: Branches) -> TrainOutput {
        let trunk = self.trunk.forward_t(xs, train);
        match how {
            Branches::Fused if !self.aux.is_empty() => self.fused_branches(&trunk, train),
            Branches::Fused
            | Branches::Sequential
            | Branches::TargetOnly
            | Branches::AuxOnScaledTrunk(_) => {
                let (target_feat, target_logits) = self.target.forward_t(&trunk, train);
                let aux_input = match how {
                    Branches::AuxOnScaledTrunk(0.0) => trunk.detach(),
                    // The value of `trunk`, the gradient `s` times its own.
                    Branches::AuxOnScaledTrunk(s) => trunk.detach() * (1.0 - s) + &trunk * s,
                    _ => trunk.shallow_clone(),
                };
                let (aux_feat, aux_logits) = match how {
                    Branches::TargetOnly => (Vec::new(), Vec::new()),
                    _ => self
                        .aux
                        .iter()
                        .map(|b| b.forward_t(&aux_input, train))
                        .unzip(),
                };
                TrainOutput {
                    target_feat,
                    target_logits,
                    aux_feat,
                    aux_logits,
                }
            }
        }
    }

    /// As [`Branches::AuxOnScaledTrunk`] with one share per sample: `shares` maps the target
    /// branch's logits `[B, C]` to the samples' shares `[B]` in [0, 1]. The auxiliary branches
    /// run one after another; the forward values are those of the other paths.
    pub fn forward_aux_share_per_sample(
        &self,
        xs: &Tensor,
        train: bool,
        shares: impl FnOnce(&Tensor) -> Tensor,
    ) -> TrainOutput {
        let trunk = self.trunk.forward_t(xs, train);
        let (target_feat, target_logits) = self.target.forward_t(&trunk, train);
        let mut shape = vec![1i64; trunk.dim()];
        shape[0] = -1;
        let share = shares(&target_logits.detach())
            .detach()
            .to_kind(trunk.kind())
            .reshape(&shape);
        let fixed = trunk.detach();
        // `trunk - fixed` is exactly 0 with `trunk`'s gradient: the value stays `trunk` to the
        // bit, the gradient is each sample's share of it.
        let aux_input = (&trunk - &fixed) * share + &fixed;
        let (aux_feat, aux_logits) = self
            .aux
            .iter()
            .map(|b| b.forward_t(&aux_input, train))
            .unzip();
        TrainOutput {
            target_feat,
            target_logits,
            aux_feat,
            aux_logits,
        }
    }

    /// The trunk and the target branch alone, also returning the target stage's last feature
    /// map `[B, F, h, w]` (class activation maps are read from it). The outputs are those of
    /// [`Branches::TargetOnly`].
    pub fn forward_target_map(&self, xs: &Tensor, train: bool) -> (Tensor, TrainOutput) {
        let map = self
            .trunk
            .forward_t(xs, train)
            .apply_t(&self.target.stage, train);
        let target_feat = map.adaptive_avg_pool2d([1, 1]).flatten(1, -1);
        let target_logits = target_feat.apply(&self.target.fc);
        let out = TrainOutput {
            target_feat,
            target_logits,
            aux_feat: Vec::new(),
            aux_logits: Vec::new(),
        };
        (map, out)
    }

    /// Target and auxiliary branches as one stacked computation over the shared trunk output.
    fn fused_branches(&self, trunk: &Tensor, train: bool) -> TrainOutput {
        let branches: Vec<&Branch> = std::iter::once(&self.target).chain(&self.aux).collect();
        let g = branches.len() as i64;
        let s = fused::Stacked { g, train };
        let stages = fused::each(&branches, |b| &b.stage);
        const SAME: &str = "one backbone per network";
        let y = match stages[0] {
            Stage::Resnet(_) => {
                let layers = fused::each_variant(&stages, SAME, |st| match st {
                    Stage::Resnet(l) => Some(l),
                    _ => None,
                });
                resnet::fused_layer(&layers, trunk, &s)
            }
            Stage::MobilenetV2(_) => {
                let tails = fused::each_variant(&stages, SAME, |st| match st {
                    Stage::MobilenetV2(t) => Some(t.as_ref()),
                    _ => None,
                });
                mobilenet_v2::fused_tail(&tails, trunk, &s)
            }
            Stage::ShufflenetV1(_) => {
                let tails = fused::each_variant(&stages, SAME, |st| match st {
                    Stage::ShufflenetV1(t) => Some(t),
                    _ => None,
                });
                shufflenet_v1::fused_tail(&tails, trunk, &s)
            }
            // One block on a 2x2 map (dlib's zero-padded shortcut makes a stacked version
            // awkward): the branches run one after another and their outputs are stacked.
            Stage::FaceResnet(_) => Tensor::cat(
                &stages
                    .iter()
                    .map(|st| st.forward_t(trunk, train))
                    .collect::<Vec<_>>(),
                1,
            ),
        };
        // [B, G * F, h, w] -> [B, G, F]: global average pooling per branch.
        let b = y.size()[0];
        let feats = y.mean_dim(&[2i64, 3][..], false, None).view([b, g, -1]);
        let target_feat = feats.select(1, 0);
        let target_logits = target_feat.apply(&self.target.fc);
        // The C auxiliary heads as one batched product: [B, C, F] x [C, C-1, F] -> [B, C, C-1].
        let c = g - 1;
        let aux_ws: Vec<&Tensor> = self.aux.iter().map(|a| &a.fc.ws).collect();
        let products = Tensor::einsum(
            "bgf,gkf->bgk",
            &[feats.narrow(1, 1, c), Tensor::stack(&aux_ws, 0)],
            None::<&[i64]>,
        );
        let aux_bs: Vec<&Tensor> = self.aux.iter().filter_map(|a| a.fc.bs.as_ref()).collect();
        let aux = if aux_bs.is_empty() {
            products
        } else {
            products + Tensor::stack(&aux_bs, 0)
        };
        TrainOutput {
            target_feat,
            target_logits,
            aux_feat: (0..c).map(|j| feats.select(1, j + 1)).collect(),
            aux_logits: (0..c).map(|j| aux.select(1, j)).collect(),
        }
    }

    /// Keeps the uncertainty module at its current weights: no gradient is stored for its
    /// parameters, so the optimizer (built after this) leaves them out. Gradients still flow
    /// through the module to its input.
    pub fn freeze_uncertainty(&self) {
        if let Some(u) = &self.uncertainty {
            let mut params = vec![&u.fc1.ws, &u.prelu, &u.fc2.ws];
            params.extend(u.fc1.bs.iter().chain(u.fc2.bs.iter()));
            for p in params {
                let _ = p.set_requires_grad(false);
            }
        }
    }

    /// The deployed network: trunk + target branch. `[B, 3, H, W] -> logits [B, C]`.
    pub fn forward_target(&self, xs: &Tensor) -> Tensor {
        self.target
            .forward_t(&self.trunk.forward_t(xs, false), false)
            .1
    }
}

/// Number of trainable parameters whose name passes `keep` (BatchNorm running statistics are
/// buffers, not parameters, as in PyTorch's count).
pub fn count_params(vs: &nn::VarStore, keep: impl Fn(&str) -> bool) -> i64 {
    vs.variables()
        .iter()
        .filter(|(name, t)| t.requires_grad() && keep(name))
        .map(|(_, t)| t.numel() as i64)
        .sum()
}

/// Whether a variable belongs to the deployed part (trunk + target branch).
pub fn is_target_param(name: &str) -> bool {
    !name.starts_with("aux.") && !is_uncertainty_param(name)
}

/// Whether the variable `name` belongs to the uncertainty module.
pub fn is_uncertainty_param(name: &str) -> bool {
    name.strip_prefix(UNCERTAINTY_PATH)
        .is_some_and(|rest| rest.starts_with('.'))
}

/// The gradient `param` gets from the squared sum of the auxiliary outputs of `forward`, its
/// earlier gradient cleared first (tests of how the auxiliary branches reach the trunk).
#[cfg(test)]
pub(crate) fn grad_from_aux_outputs(
    param: &Tensor,
    forward: impl FnOnce() -> TrainOutput,
) -> Tensor {
    let mut g = param.grad();
    if g.defined() {
        let _ = g.zero_();
    }
    let out = forward();
    let aux: Tensor = out
        .aux_logits
        .iter()
        .map(|l| l.square().sum(tch::Kind::Float))
        .sum();
    aux.backward();
    param.grad().copy()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    /// With the auxiliary branches on the detached trunk, a loss on their outputs alone trains
    /// them and leaves the trunk without gradient; on the attached trunk it reaches the trunk,
    /// and on a scaled one the trunk's gradient is that share of the attached one.
    #[test]
    fn detached_auxiliary_branches_do_not_train_the_trunk() {
        let vs = nn::VarStore::new(Device::Cpu);
        let cfg = ModelConfig {
            width: Some(4),
            ..Default::default()
        };
        let net = MultiBranchNet::new(&vs.root(), &cfg, 7, true);
        let x = Tensor::randn([2, 3, 32, 32], (Kind::Float, Device::Cpu));
        let vars = vs.variables();
        let grad_norm = |name: &str| {
            let g = vars[name].grad();
            if g.defined() {
                g.abs().sum(Kind::Float).double_value(&[])
            } else {
                0.0
            }
        };
        let mut attached = None;
        for (how, share) in [
            (Branches::Sequential, 1.0),
            (Branches::AuxOnScaledTrunk(0.25), 0.25),
            (Branches::AuxOnScaledTrunk(0.0), 0.0),
        ] {
            for t in vars.values() {
                let mut g = t.grad();
                if g.defined() {
                    let _ = g.zero_();
                }
            }
            let out = net.forward_with(&x, true, how);
            let aux: Tensor = out
                .aux_logits
                .iter()
                .map(|l| l.square().sum(Kind::Float))
                .sum();
            aux.backward();
            let trunk = grad_norm("conv1.weight");
            let full = *attached.get_or_insert(trunk);
            assert!(full > 0.0);
            assert!(
                (trunk - share * full).abs() <= 1e-4 * full,
                "{how:?}: {trunk} of {full}"
            );
            assert!(grad_norm("aux.0.fc.weight") > 0.0, "{how:?}");
            // The same outputs either way.
            let reference = net.forward_with(&x, true, Branches::Sequential);
            assert!(out.aux_logits[3].allclose(&reference.aux_logits[3], 1e-5, 1e-6, false));
        }
    }

    /// Each sample's gradient into the trunk through the auxiliary branches is scaled by its own
    /// share: the trunk's gradient is linear in the per-sample gradients at its output, so
    /// shares (1, 0) plus shares (0, 0.4) / 0.4 give shares (1, 1).
    #[test]
    fn per_sample_shares_scale_each_samples_trunk_gradient() {
        let vs = nn::VarStore::new(Device::Cpu);
        let cfg = ModelConfig {
            width: Some(4),
            ..Default::default()
        };
        let net = MultiBranchNet::new(&vs.root(), &cfg, 7, true);
        let x = Tensor::randn([2, 3, 32, 32], (Kind::Float, Device::Cpu));
        let conv1 = vs.variables()["conv1.weight"].shallow_clone();
        let trunk_grad = |shares: [f32; 2]| {
            grad_from_aux_outputs(&conv1, || {
                let out = net.forward_aux_share_per_sample(&x, true, |logits| {
                    assert_eq!(logits.size(), [2, 7]);
                    Tensor::from_slice(&shares)
                });
                let reference = net.forward_with(&x, true, Branches::Sequential);
                assert!(out.aux_logits[2].equal(&reference.aux_logits[2]));
                out
            })
        };
        let both = trunk_grad([1.0, 1.0]);
        let first = trunk_grad([1.0, 0.0]);
        let second = trunk_grad([0.0, 0.4]);
        let norm = |t: &Tensor| t.abs().sum(Kind::Float).double_value(&[]);
        let second_full = &second / 0.4;
        // Each sample's part differs from the other's (one share for the batch would not).
        assert!(norm(&(&first - &second_full)) > 0.01 * norm(&both));
        let sum = &first + &second_full;
        assert!(
            norm(&(&sum - &both)) <= 1e-4 * norm(&both),
            "{} of {}",
            norm(&(&sum - &both)),
            norm(&both)
        );
    }

    #[test]
    fn shapes_names_and_deployed_size() {
        let vs = nn::VarStore::new(Device::Cpu);
        let cfg = ModelConfig {
            width: Some(8),
            ..Default::default()
        };
        let net = MultiBranchNet::new(&vs.root(), &cfg, 7, true);
        let x = Tensor::randn([3, 3, 64, 64], (Kind::Float, Device::Cpu));
        let out = net.forward_train(&x, true);
        assert_eq!(out.target_logits.size(), [3, 7]);
        assert_eq!(out.target_feat.size(), [3, 64]);
        assert_eq!(out.aux_logits.len(), 7);
        assert_eq!(out.aux_logits[0].size(), [3, 6]);
        assert_eq!(net.forward_target(&x).size(), [3, 7]);
        let names: Vec<String> = vs.variables().into_keys().collect();
        for expected in [
            "conv1.weight",
            "layer1.0.conv1.weight",
            "layer2.0.downsample.0.weight",
            "layer4.1.bn2.bias",
            "fc.weight",
            "aux.6.layer4.0.conv1.weight",
            "aux.0.fc.weight",
            "uncertainty.prelu.weight",
        ] {
            assert!(names.iter().any(|n| n == expected), "missing {expected}");
        }
        // The deployed part has exactly the parameters of a plain ResNet-18 with a 7-way head.
        let plain = nn::VarStore::new(Device::Cpu);
        let _ = MultiBranchNet::new(&plain.root(), &cfg, 7, false);
        assert_eq!(
            count_params(&vs, is_target_param),
            count_params(&plain, |_| true)
        );
    }

    #[test]
    fn resnet18_has_the_torchvision_parameter_count() {
        // torchvision.models.resnet18(num_classes=1000): 11,689,512 parameters.
        let vs = nn::VarStore::new(Device::Cpu);
        let cfg = ModelConfig {
            classifier_bias: true,
            ..Default::default()
        };
        let _ = MultiBranchNet::new(&vs.root(), &cfg, 1000, false);
        assert_eq!(count_params(&vs, |_| true), 11_689_512);
        // Without the classifier bias (the default): 1,000 fewer.
        let vs = nn::VarStore::new(Device::Cpu);
        let _ = MultiBranchNet::new(&vs.root(), &ModelConfig::default(), 1000, false);
        assert_eq!(count_params(&vs, |_| true), 11_688_512);
    }

    #[test]
    fn mobilenet_v2_has_the_torchvision_parameter_count_and_names() {
        // torchvision.models.mobilenet_v2(num_classes=1000): 3,504,872 parameters.
        let vs = nn::VarStore::new(Device::Cpu);
        let cfg = ModelConfig {
            backbone: Backbone::MobilenetV2,
            classifier_bias: true,
            ..Default::default()
        };
        let _ = MultiBranchNet::new(&vs.root(), &cfg, 1000, false);
        assert_eq!(count_params(&vs, |_| true), 3_504_872);
        let names: Vec<String> = vs.variables().into_keys().collect();
        for expected in [
            "features.0.0.weight",
            "features.0.1.running_var",
            "features.1.conv.0.0.weight",
            "features.1.conv.2.bias",
            "features.2.conv.3.running_mean",
            "features.13.conv.1.0.weight",
            "features.17.conv.2.weight",
            "features.18.1.weight",
        ] {
            assert!(names.iter().any(|n| n == expected), "missing {expected}");
        }
        // Branch point: features.14 onwards belongs to every branch.
        let b = Backbone::MobilenetV2;
        assert!(b.is_branch_stage("features.14.conv.0.0.weight"));
        assert!(b.is_branch_stage("features.18.1.bias"));
        assert!(!b.is_branch_stage("features.13.conv.0.0.weight"));
        assert!(!b.is_branch_stage("features.1.conv.0.0.weight"));
        assert!(Backbone::Resnet18.is_branch_stage("layer4.0.conv1.weight"));
        assert!(!Backbone::Resnet18.is_branch_stage("layer3.1.bn2.bias"));
        // A DMUE MobileNetV2 runs at a small size: trunk stride 16, branch stride 32.
        let vs = nn::VarStore::new(Device::Cpu);
        let small = ModelConfig {
            backbone: Backbone::MobilenetV2,
            width: Some(8),
            ..Default::default()
        };
        let net = MultiBranchNet::new(&vs.root(), &small, 7, true);
        let x = Tensor::randn([2, 3, 64, 64], (Kind::Float, Device::Cpu));
        assert_eq!(net.trunk.forward_t(&x, false).size(), [2, 24, 4, 4]);
        let out = net.forward_train(&x, true);
        assert_eq!(out.target_feat.size(), [2, 1280]);
        assert_eq!(out.aux_logits[3].size(), [2, 6]);
    }

    #[test]
    fn authors_stem_has_no_relu_and_a_2x2_pool() {
        let vs = nn::VarStore::new(Device::Cpu);
        let cfg = ModelConfig {
            width: Some(4),
            stem: Stem::Authors,
            ..Default::default()
        };
        let net = MultiBranchNet::new(&vs.root(), &cfg, 7, false);
        let Trunk::Resnet(t) = &net.trunk else {
            panic!("ResNet trunk expected")
        };
        // 64 -> conv stride 2 -> 32 -> 2x2 pool -> 16; layer2, layer3 halve twice: 4x4.
        let x = Tensor::randn([1, 3, 64, 64], (Kind::Float, Device::Cpu));
        assert_eq!(net.trunk.forward_t(&x, false).size(), [1, 16, 4, 4]);
        // The trunk is exactly: conv, BatchNorm, no ReLU, 2x2 pool, layer1..3; with a ReLU
        // it would differ (the BatchNorm output has negative values).
        let rest = |y: Tensor| {
            y.max_pool2d([2, 2], [2, 2], [0, 0], [1, 1], false)
                .apply_t(&t.layer1, false)
                .apply_t(&t.layer2, false)
                .apply_t(&t.layer3, false)
        };
        tch::no_grad(|| {
            let stem = x.apply(&t.conv1).apply_t(&t.bn1, false);
            let trunk = net.trunk.forward_t(&x, false);
            assert!(trunk.allclose(&rest(stem.shallow_clone()), 1e-6, 1e-6, false));
            assert!(!trunk.allclose(&rest(stem.relu()), 1e-3, 1e-3, false));
        });
        assert_eq!(cfg.describe(), "resnet18 width 4 (authors' stem)");
    }

    #[test]
    fn resnet50_ibn_has_the_resnet50_parameter_count_and_ibn_names() {
        // torchvision.models.resnet50(num_classes=1000): 25,557,032 parameters; IBN-a swaps
        // BatchNorm(planes) for InstanceNorm(planes/2, affine) + BatchNorm(planes/2): the same
        // number of affine parameters.
        let vs = nn::VarStore::new(Device::Cpu);
        let cfg = ModelConfig {
            backbone: Backbone::Resnet50Ibn,
            classifier_bias: true,
            ..Default::default()
        };
        let _ = MultiBranchNet::new(&vs.root(), &cfg, 1000, false);
        assert_eq!(count_params(&vs, |_| true), 25_557_032);
        let vars = vs.variables();
        assert_eq!(vars["layer1.0.bn1.IN.weight"].size(), [32]);
        assert_eq!(vars["layer3.5.bn1.BN.running_var"].size(), [128]);
        assert_eq!(vars["layer4.2.conv3.weight"].size(), [2048, 512, 1, 1]);
        assert!(vars.contains_key("layer4.0.bn1.running_mean"));
        assert!(!vars
            .keys()
            .any(|n| n.starts_with("layer4") && n.contains(".IN.")));
        // A small DMUE version runs: 2048 = 32 * width features.
        let vs = nn::VarStore::new(Device::Cpu);
        let small = ModelConfig {
            backbone: Backbone::Resnet50Ibn,
            width: Some(4),
            ..Default::default()
        };
        let net = MultiBranchNet::new(&vs.root(), &small, 7, true);
        let out = net.forward_train(
            &Tensor::randn([2, 3, 64, 64], (Kind::Float, Device::Cpu)),
            true,
        );
        assert_eq!(out.target_feat.size(), [2, 128]);
        assert_eq!(out.aux_logits[6].size(), [2, 6]);
    }

    #[test]
    fn face_resnet_has_dlibs_parameter_count_and_shapes() {
        let cfg = ModelConfig {
            backbone: Backbone::FaceResnet,
            ..Default::default()
        };
        let vs = nn::VarStore::new(Device::Cpu);
        let net = MultiBranchNet::new(&vs.root(), &cfg, 7, true);
        // dlib's network holds 5,614,592 values, 128 x 256 of them in its descriptor
        // projection, which the 7-way classifier replaces.
        let deployed = count_params(&vs, is_target_param);
        assert_eq!(deployed, 5_614_592 - 128 * 256 + 256 * 7);
        let x = Tensor::randn([2, 3, 150, 150], (tch::Kind::Float, Device::Cpu));
        let trunk = net.trunk.forward_t(&x, false);
        // 150 -> 72 (stem) -> 35 (pool) -> 17 -> 8 -> 4: layer4's 3x3 residual is padded to
        // its 4x4 shortcut, as dlib's add_prev does.
        assert_eq!(trunk.size(), [2, 256, 4, 4]);
        let out = net.forward_train(&x, true);
        assert_eq!(out.target_feat.size(), [2, 256]);
        assert_eq!(out.aux_logits[6].size(), [2, 6]);
        for n in ["layer5.0.affine2.bias", "aux.3.layer5.0.conv1.weight"] {
            assert!(vs.variables().contains_key(n), "missing {n}");
        }
        assert!(Backbone::FaceResnet.is_branch_stage("layer5.0.conv1.weight"));
        assert!(!Backbone::FaceResnet.is_branch_stage("layer4.2.conv1.weight"));
    }

    #[test]
    fn shufflenet_v1_names_branch_point_and_widths() {
        let e = Backbone::ShufflenetV1.validate_width(100).unwrap_err();
        assert!(e.to_string().contains("120, 240, 360 or 480"), "{e}");
        assert!(Backbone::ShufflenetV1.validate_width(480).is_ok());
        assert!(Backbone::Resnet18.validate_width(0).is_err());
        let vs = nn::VarStore::new(Device::Cpu);
        let cfg = ModelConfig {
            backbone: Backbone::ShufflenetV1,
            width: Some(120),
            ..Default::default()
        };
        let net = MultiBranchNet::new(&vs.root(), &cfg, 7, true);
        let vars = vs.variables();
        // The first unit's 1x1 convolution is not grouped (24 -> 30 channels), the others are.
        assert_eq!(
            vars["features.0.branch_main_1.0.weight"].size(),
            [30, 12, 1, 1]
        );
        assert_eq!(
            vars["features.1.branch_main_1.0.weight"].size(),
            [30, 40, 1, 1]
        );
        assert_eq!(
            vars["aux.2.features.15.branch_main_2.1.running_var"].size(),
            [480]
        );
        assert!(Backbone::ShufflenetV1.is_branch_stage("features.12.branch_main_1.0.weight"));
        assert!(!Backbone::ShufflenetV1.is_branch_stage("features.11.branch_main_1.0.weight"));
        assert!(!Backbone::ShufflenetV1.is_branch_stage("first_conv.0.weight"));
        let x = Tensor::randn([2, 3, 64, 64], (Kind::Float, Device::Cpu));
        assert_eq!(net.trunk.forward_t(&x, false).size(), [2, 240, 4, 4]);
        assert_eq!(net.forward_train(&x, true).target_feat.size(), [2, 480]);
    }
}
