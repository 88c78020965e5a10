//! The DMUE multi-branch network, as typed blocks with PyTorch ResNet weight names.
//!
//! Names: the shared trunk and the target branch use torchvision's names (`conv1`, `bn1`,
//! `layer1.0.conv1`, ..., `layer4`, `fc`), so the deployed part is a plain ResNet checkpoint;
//! auxiliary branch j lives under `aux.{j}.layer4` / `aux.{j}.fc`; the uncertainty module
//! under `uncertainty.{fc1,prelu,fc2}`.

use serde::{Deserialize, Serialize};
use tch::nn::{self, ModuleT};
use tch::Tensor;

/// Backbone family. The branch point is the last stage (layer4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Backbone {
    /// ResNet-18 (BasicBlock, [2, 2, 2, 2]); width 64 is the standard model.
    Resnet18,
}

/// What the network is built from; saved next to the weights so a run can be rebuilt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    pub backbone: Backbone,
    /// Channels of the first stage (64 in ResNet-18; 16 gives a fast CPU variant with the same
    /// architecture).
    pub width: i64,
    /// Give every classifier a bias. Off by default, as in the paper's Eq. 9 (`alpha * W^T f`:
    /// the confidence scales the whole logit) and in the authors' code. A bias-free classifier
    /// exports as a Gemm with a zero bias.
    pub classifier_bias: bool,
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            backbone: Backbone::Resnet18,
            width: 64,
            classifier_bias: false,
        }
    }
}

fn conv(p: nn::Path, cin: i64, cout: i64, k: i64, stride: i64, padding: i64) -> nn::Conv2D {
    let cfg = nn::ConvConfig {
        stride,
        padding,
        bias: false,
        // torchvision: kaiming_normal_(mode="fan_out", nonlinearity="relu").
        ws_init: nn::Init::Kaiming {
            dist: nn::init::NormalOrUniform::Normal,
            fan: nn::init::FanInOut::FanOut,
            non_linearity: nn::init::NonLinearity::ReLU,
        },
        ..Default::default()
    };
    nn::conv2d(p, cin, cout, k, cfg)
}

/// BatchNorm epsilon (PyTorch's default); the exporter folds BatchNorm with this same value.
pub const BN_EPS: f64 = 1e-5;

fn bn(p: nn::Path, c: i64) -> nn::BatchNorm {
    nn::batch_norm2d(
        p,
        c,
        nn::BatchNormConfig {
            eps: BN_EPS,
            ..Default::default()
        },
    )
}

/// ResNet BasicBlock: `[B, cin, H, W] -> [B, cout, H/stride, W/stride]`.
#[derive(Debug)]
pub struct BasicBlock {
    pub conv1: nn::Conv2D,
    pub bn1: nn::BatchNorm,
    pub conv2: nn::Conv2D,
    pub bn2: nn::BatchNorm,
    /// 1x1 strided convolution + BatchNorm when the shape changes (`downsample.0`, `.1`).
    pub downsample: Option<(nn::Conv2D, nn::BatchNorm)>,
    /// Stride of `conv1` and `downsample.0` (every ResNet conv pads by kernel/2).
    pub stride: i64,
}

impl BasicBlock {
    pub fn new(p: nn::Path, cin: i64, cout: i64, stride: i64) -> Self {
        let downsample = (stride != 1 || cin != cout).then(|| {
            (
                conv(&p / "downsample" / "0", cin, cout, 1, stride, 0),
                bn(&p / "downsample" / "1", cout),
            )
        });
        Self {
            conv1: conv(&p / "conv1", cin, cout, 3, stride, 1),
            bn1: bn(&p / "bn1", cout),
            conv2: conv(&p / "conv2", cout, cout, 3, 1, 1),
            bn2: bn(&p / "bn2", cout),
            downsample,
            stride,
        }
    }
}

impl ModuleT for BasicBlock {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let ys = xs
            .apply(&self.conv1)
            .apply_t(&self.bn1, train)
            .relu()
            .apply(&self.conv2)
            .apply_t(&self.bn2, train);
        let shortcut = match &self.downsample {
            Some((c, b)) => xs.apply(c).apply_t(b, train),
            None => xs.shallow_clone(),
        };
        (ys + shortcut).relu()
    }
}

/// A ResNet stage: `blocks` BasicBlocks, the first with `stride`.
#[derive(Debug)]
pub struct Layer {
    pub blocks: Vec<BasicBlock>,
}

impl Layer {
    pub fn new(p: nn::Path, cin: i64, cout: i64, blocks: usize, stride: i64) -> Self {
        let blocks = (0..blocks)
            .map(|i| {
                BasicBlock::new(
                    &p / i,
                    if i == 0 { cin } else { cout },
                    cout,
                    if i == 0 { stride } else { 1 },
                )
            })
            .collect();
        Self { blocks }
    }
}

impl ModuleT for Layer {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        self.blocks
            .iter()
            .fold(xs.shallow_clone(), |x, b| b.forward_t(&x, train))
    }
}

/// Stem geometry (torchvision ResNet): 7x7 convolution with this stride, then max pooling.
pub const STEM_STRIDE: i64 = 2;
/// Stem max pooling: kernel, stride, padding.
pub const STEM_POOL: (i64, i64, i64) = (3, 2, 1);

/// Shared trunk: stem + layer1..layer3. `[B, 3, H, W] -> [B, 4w, H/16, W/16]`.
#[derive(Debug)]
pub struct Trunk {
    pub conv1: nn::Conv2D,
    pub bn1: nn::BatchNorm,
    pub layer1: Layer,
    pub layer2: Layer,
    pub layer3: Layer,
}

impl Trunk {
    pub fn new(p: &nn::Path, w: i64) -> Self {
        Self {
            conv1: conv(p / "conv1", 3, w, 7, STEM_STRIDE, 3),
            bn1: bn(p / "bn1", w),
            layer1: Layer::new(p / "layer1", w, w, 2, 1),
            layer2: Layer::new(p / "layer2", w, 2 * w, 2, 2),
            layer3: Layer::new(p / "layer3", 2 * w, 4 * w, 2, 2),
        }
    }
}

impl ModuleT for Trunk {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        xs.apply(&self.conv1)
            .apply_t(&self.bn1, train)
            .relu()
            .max_pool2d(
                [STEM_POOL.0; 2],
                [STEM_POOL.1; 2],
                [STEM_POOL.2; 2],
                [1, 1],
                false,
            )
            .apply_t(&self.layer1, train)
            .apply_t(&self.layer2, train)
            .apply_t(&self.layer3, train)
    }
}

/// A branch: a copy of the last stage, global average pooling, a linear classifier.
#[derive(Debug)]
pub struct Branch {
    pub layer4: Layer,
    pub fc: nn::Linear,
}

impl Branch {
    /// `p` is the parent path: the branch's weights are `p/layer4/...` and `p/fc`.
    pub fn new(p: &nn::Path, w: i64, classes: i64, bias: bool) -> Self {
        Self {
            layer4: Layer::new(p / "layer4", 4 * w, 8 * w, 2, 2),
            fc: nn::linear(
                p / "fc",
                8 * w,
                classes,
                nn::LinearConfig {
                    bias,
                    ..Default::default()
                },
            ),
        }
    }

    /// `[B, 4w, h, w] -> (features [B, 8w], logits [B, classes])`.
    pub fn forward_t(&self, trunk: &Tensor, train: bool) -> (Tensor, Tensor) {
        let feat = trunk
            .apply_t(&self.layer4, train)
            .adaptive_avg_pool2d([1, 1])
            .flatten(1, -1);
        let logits = feat.apply(&self.fc);
        (feat, logits)
    }
}

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
        let (w, bias) = (config.width, config.classifier_bias);
        // The deployed part is drawn first, so that for one seed a DMUE run and a baseline run
        // start from the same trunk and target weights (paired experiments).
        let trunk = Trunk::new(root, w);
        let target = Branch::new(root, w, c, bias);
        let (aux, uncertainty) = if multi_branch {
            (
                (0..c)
                    .map(|j| Branch::new(&(root / "aux" / j), w, c - 1, bias))
                    .collect(),
                Some(UncertaintyModule::new(&(root / "uncertainty"), c)),
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

    /// Every branch on the whole batch; the trunk runs once.
    pub fn forward_train(&self, xs: &Tensor, train: bool) -> TrainOutput {
        let trunk = self.trunk.forward_t(xs, train);
        let (target_feat, target_logits) = self.target.forward_t(&trunk, train);
        let (aux_feat, aux_logits) = self.aux.iter().map(|b| b.forward_t(&trunk, train)).unzip();
        TrainOutput {
            target_feat,
            target_logits,
            aux_feat,
            aux_logits,
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
    !name.starts_with("aux.") && !name.starts_with("uncertainty.")
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    #[test]
    fn shapes_names_and_deployed_size() {
        let vs = nn::VarStore::new(Device::Cpu);
        let cfg = ModelConfig {
            width: 8,
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
}
