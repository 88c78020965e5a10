//! ResNet-18 and ResNet-50-IBN-a with torchvision's (and IBN-Net's) weight names: trunk =
//! stem + layer1..layer3, branch stage = layer4.

use super::fused::{each, each_variant, Stacked};
use super::{bn, conv, Conv, Stem, BN_EPS};
use tch::nn::{self, ModuleT};
use tch::Tensor;

/// Which ResNet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Depth {
    /// BasicBlock, [2, 2, 2, 2], stage channels w, 2w, 4w, 8w.
    R18,
    /// Bottleneck (expansion 4), [3, 4, 6, 3]; IBN-a (Pan et al., ECCV 2018): in layer1..3 the
    /// first normalisation of every block is half InstanceNorm, half BatchNorm; layer4 is
    /// plain. Stage outputs 4w, 8w, 16w, 32w.
    R50Ibn,
}

impl Depth {
    fn blocks(self) -> [usize; 4] {
        match self {
            Depth::R18 => [2, 2, 2, 2],
            Depth::R50Ibn => [3, 4, 6, 3],
        }
    }

    /// Output channels of stage `i` (0-based) for width `w`.
    pub fn stage_channels(self, i: usize, w: i64) -> i64 {
        let planes = w << i;
        match self {
            Depth::R18 => planes,
            Depth::R50Ibn => 4 * planes,
        }
    }
}

/// InstanceNorm on the first `half` channels (affine, no running statistics: IBN-Net's `IN`)
/// and BatchNorm on the rest (`BN`).
#[derive(Debug)]
pub struct Ibn {
    pub half: i64,
    pub in_weight: Tensor,
    pub in_bias: Tensor,
    pub bn: nn::BatchNorm,
}

impl Ibn {
    fn new(p: nn::Path, c: i64) -> Self {
        let half = c / 2;
        let inp = &p / "IN";
        Self {
            half,
            in_weight: inp.var("weight", &[half], nn::Init::Const(1.0)),
            in_bias: inp.var("bias", &[half], nn::Init::Const(0.0)),
            bn: bn(&p / "BN", c - half),
        }
    }
}

impl ModuleT for Ibn {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let c = xs.size()[1];
        let a = xs.narrow(1, 0, self.half).instance_norm(
            Some(&self.in_weight),
            Some(&self.in_bias),
            None::<&Tensor>,
            None::<&Tensor>,
            true,
            0.1,
            BN_EPS,
            false,
        );
        let b = xs
            .narrow(1, self.half, c - self.half)
            .apply_t(&self.bn, train);
        Tensor::cat(&[a, b], 1)
    }
}

/// A normalisation after a convolution: BatchNorm, or IBN-a's split.
#[derive(Debug)]
pub enum Norm {
    Bn(nn::BatchNorm),
    Ibn(Ibn),
}

impl ModuleT for Norm {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        match self {
            Norm::Bn(b) => xs.apply_t(b, train),
            Norm::Ibn(i) => i.forward_t(xs, train),
        }
    }
}

/// ResNet Bottleneck (torchvision v1.5: the stride on the 3x3 convolution):
/// 1x1 (planes) -> 3x3 (planes, stride) -> 1x1 (4 planes), residual.
#[derive(Debug)]
pub struct Bottleneck {
    pub conv1: Conv,
    pub bn1: Norm,
    pub conv2: Conv,
    pub bn2: nn::BatchNorm,
    pub conv3: Conv,
    pub bn3: nn::BatchNorm,
    pub downsample: Option<(Conv, nn::BatchNorm)>,
}

impl Bottleneck {
    fn new(p: nn::Path, cin: i64, planes: i64, stride: i64, ibn: bool) -> Self {
        let cout = 4 * planes;
        let downsample = downsample(&p, cin, cout, stride);
        Self {
            conv1: conv(&p / "conv1", cin, planes, 1, 1, 1),
            bn1: if ibn {
                Norm::Ibn(Ibn::new(&p / "bn1", planes))
            } else {
                Norm::Bn(bn(&p / "bn1", planes))
            },
            conv2: conv(&p / "conv2", planes, planes, 3, stride, 1),
            bn2: bn(&p / "bn2", planes),
            conv3: conv(&p / "conv3", planes, cout, 1, 1, 1),
            bn3: bn(&p / "bn3", cout),
            downsample,
        }
    }
}

impl ModuleT for Bottleneck {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let ys = xs
            .apply(&self.conv1)
            .apply_t(&self.bn1, train)
            .relu()
            .apply(&self.conv2)
            .apply_t(&self.bn2, train)
            .relu()
            .apply(&self.conv3)
            .apply_t(&self.bn3, train);
        residual(xs, ys, self.downsample.as_ref(), train)
    }
}

/// One residual block of either kind.
#[derive(Debug)]
pub enum Block {
    Basic(Box<BasicBlock>),
    Bottleneck(Box<Bottleneck>),
}

impl ModuleT for Block {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        match self {
            Block::Basic(b) => b.forward_t(xs, train),
            Block::Bottleneck(b) => b.forward_t(xs, train),
        }
    }
}

/// The 1x1 strided convolution + BatchNorm (`downsample.0`, `.1`) a block needs when its shape
/// changes.
fn downsample(p: &nn::Path, cin: i64, cout: i64, stride: i64) -> Option<(Conv, nn::BatchNorm)> {
    (stride != 1 || cin != cout).then(|| {
        (
            conv(p / "downsample" / "0", cin, cout, 1, stride, 1),
            bn(p / "downsample" / "1", cout),
        )
    })
}

/// `relu(ys + shortcut(xs))`, the shortcut projected when the block has a downsample.
fn residual(
    xs: &Tensor,
    ys: Tensor,
    downsample: Option<&(Conv, nn::BatchNorm)>,
    train: bool,
) -> Tensor {
    let shortcut = match downsample {
        Some((c, b)) => xs.apply(c).apply_t(b, train),
        None => xs.shallow_clone(),
    };
    (ys + shortcut).relu()
}

/// ResNet BasicBlock: `[B, cin, H, W] -> [B, cout, H/stride, W/stride]`.
#[derive(Debug)]
pub struct BasicBlock {
    pub conv1: Conv,
    pub bn1: nn::BatchNorm,
    pub conv2: Conv,
    pub bn2: nn::BatchNorm,
    /// 1x1 strided convolution + BatchNorm when the shape changes (`downsample.0`, `.1`).
    pub downsample: Option<(Conv, nn::BatchNorm)>,
}

impl BasicBlock {
    pub fn new(p: nn::Path, cin: i64, cout: i64, stride: i64) -> Self {
        let downsample = downsample(&p, cin, cout, stride);
        Self {
            conv1: conv(&p / "conv1", cin, cout, 3, stride, 1),
            bn1: bn(&p / "bn1", cout),
            conv2: conv(&p / "conv2", cout, cout, 3, 1, 1),
            bn2: bn(&p / "bn2", cout),
            downsample,
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
        residual(xs, ys, self.downsample.as_ref(), train)
    }
}

/// A ResNet stage: its blocks, the first with the stage's stride.
#[derive(Debug)]
pub struct Layer {
    pub blocks: Vec<Block>,
}

impl Layer {
    /// Stage `i` (0-based: `layer{i+1}`) of a ResNet of `depth` and width `w`.
    pub fn new(p: nn::Path, depth: Depth, i: usize, w: i64) -> Self {
        let stride = if i == 0 { 1 } else { 2 };
        let cin = if i == 0 {
            w
        } else {
            depth.stage_channels(i - 1, w)
        };
        let cout = depth.stage_channels(i, w);
        let blocks = (0..depth.blocks()[i])
            .map(|b| {
                let (bin, s) = if b == 0 { (cin, stride) } else { (cout, 1) };
                match depth {
                    Depth::R18 => Block::Basic(Box::new(BasicBlock::new(&p / b, bin, cout, s))),
                    Depth::R50Ibn => {
                        Block::Bottleneck(Box::new(Bottleneck::new(&p / b, bin, w << i, s, i < 3)))
                    }
                }
            })
            .collect();
        Self { blocks }
    }

    /// layer4: `[B, c3, h, w] -> [B, c4, h/2, w/2]`.
    pub fn branch_stage(p: nn::Path, depth: Depth, w: i64) -> Self {
        Self::new(p, depth, 3, w)
    }
}

impl ModuleT for Layer {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        self.blocks
            .iter()
            .fold(xs.shallow_clone(), |x, b| b.forward_t(&x, train))
    }
}

/// layer4 of every branch as one computation (`fused.rs`). `xs` is the trunk output shared by
/// the branches (the first block's convolutions and downsample read it with `groups = 1`);
/// the result is stacked `[B, G * c4, h/2, w/2]`.
pub fn fused_layer(layers: &[&Layer], xs: &Tensor, s: &Stacked) -> Tensor {
    const SAME: &str = "one depth per network";
    (0..layers[0].blocks.len()).fold(xs.shallow_clone(), |x, i| {
        let blocks = each(layers, |l| &l.blocks[i]);
        match blocks[0] {
            Block::Basic(_) => {
                let b = each_variant(&blocks, SAME, |b| match b {
                    Block::Basic(b) => Some(b.as_ref()),
                    Block::Bottleneck(_) => None,
                });
                let y = s.conv(&each(&b, |b| &b.conv1), &x);
                let y = s.bn(&each(&b, |b| &b.bn1), &y).relu();
                let y = s.conv(&each(&b, |b| &b.conv2), &y);
                let y = s.bn(&each(&b, |b| &b.bn2), &y);
                fused_residual(&x, y, &each(&b, |b| &b.downsample), s)
            }
            Block::Bottleneck(_) => {
                let b = each_variant(&blocks, SAME, |b| match b {
                    Block::Bottleneck(b) => Some(b.as_ref()),
                    Block::Basic(_) => None,
                });
                let y = s.conv(&each(&b, |b| &b.conv1), &x);
                let y = s.bn(&each(&b, |b| plain_bn(&b.bn1)), &y).relu();
                let y = s.conv(&each(&b, |b| &b.conv2), &y);
                let y = s.bn(&each(&b, |b| &b.bn2), &y).relu();
                let y = s.conv(&each(&b, |b| &b.conv3), &y);
                let y = s.bn(&each(&b, |b| &b.bn3), &y);
                fused_residual(&x, y, &each(&b, |b| &b.downsample), s)
            }
        }
    })
}

/// The BatchNorm of a branch-stage block: IBN-a's split lives in layer1..3 only.
fn plain_bn(n: &Norm) -> &nn::BatchNorm {
    match n {
        Norm::Bn(b) => b,
        Norm::Ibn(_) => unreachable!("IBN-a has no InstanceNorm in layer4, the branch stage"),
    }
}

/// [`residual`] for stacked branches.
fn fused_residual(
    xs: &Tensor,
    ys: Tensor,
    downsample: &[&Option<(Conv, nn::BatchNorm)>],
    s: &Stacked,
) -> Tensor {
    let shortcut = if downsample[0].is_some() {
        let d: Vec<&(Conv, nn::BatchNorm)> =
            downsample.iter().map(|d| d.as_ref().unwrap()).collect();
        let y = s.conv(&each(&d, |d| &d.0), xs);
        s.bn(&each(&d, |d| &d.1), &y)
    } else {
        // Only blocks after the first lack a downsample, and their input is already stacked.
        xs.shallow_clone()
    };
    (ys + shortcut).relu()
}

/// Stem convolution: kernel 7, stride 2 (padding 3, as every convolution pads by kernel / 2).
pub const STEM_CONV: (i64, i64) = (7, 2);

impl Stem {
    /// Max pooling after the stem: (kernel, stride, padding).
    pub fn pool(self) -> (i64, i64, i64) {
        match self {
            Stem::Torchvision => (3, 2, 1),
            Stem::Authors => (2, 2, 0),
        }
    }

    /// Whether a ReLU follows the stem BatchNorm.
    pub fn relu(self) -> bool {
        self == Stem::Torchvision
    }
}

/// Shared trunk: stem + layer1..layer3. `[B, 3, H, W] -> [B, c3, H/16, W/16]`.
#[derive(Debug)]
pub struct Trunk {
    pub stem: Stem,
    pub conv1: Conv,
    pub bn1: nn::BatchNorm,
    pub layer1: Layer,
    pub layer2: Layer,
    pub layer3: Layer,
}

impl Trunk {
    pub fn new(p: &nn::Path, depth: Depth, w: i64, stem: Stem) -> Self {
        let (k, s) = STEM_CONV;
        Self {
            stem,
            conv1: conv(p / "conv1", 3, w, k, s, 1),
            bn1: bn(p / "bn1", w),
            layer1: Layer::new(p / "layer1", depth, 0, w),
            layer2: Layer::new(p / "layer2", depth, 1, w),
            layer3: Layer::new(p / "layer3", depth, 2, w),
        }
    }
}

impl ModuleT for Trunk {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let y = xs.apply(&self.conv1).apply_t(&self.bn1, train);
        let y = if self.stem.relu() { y.relu() } else { y };
        let (k, s, p) = self.stem.pool();
        y.max_pool2d([k; 2], [s; 2], [p; 2], [1, 1], false)
            .apply_t(&self.layer1, train)
            .apply_t(&self.layer2, train)
            .apply_t(&self.layer3, train)
    }
}
