//! ResNet-18 with torchvision's weight names: trunk = stem + layer1..layer3, branch stage =
//! layer4.

use super::{bn, conv, Conv, Stem};
use tch::nn::{self, ModuleT};
use tch::Tensor;

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
        let downsample = (stride != 1 || cin != cout).then(|| {
            (
                conv(&p / "downsample" / "0", cin, cout, 1, stride, 1),
                bn(&p / "downsample" / "1", cout),
            )
        });
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

    /// layer4 of a ResNet-18 of width `w`: `[B, 4w, h, w] -> [B, 8w, h/2, w/2]`.
    pub fn branch_stage(p: nn::Path, w: i64) -> Self {
        Self::new(p, 4 * w, 8 * w, 2, 2)
    }
}

impl ModuleT for Layer {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        self.blocks
            .iter()
            .fold(xs.shallow_clone(), |x, b| b.forward_t(&x, train))
    }
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

/// Shared trunk: stem + layer1..layer3. `[B, 3, H, W] -> [B, 4w, H/16, W/16]`.
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
    pub fn new(p: &nn::Path, w: i64, stem: Stem) -> Self {
        let (k, s) = STEM_CONV;
        Self {
            stem,
            conv1: conv(p / "conv1", 3, w, k, s, 1),
            bn1: bn(p / "bn1", w),
            layer1: Layer::new(p / "layer1", w, w, 2, 1),
            layer2: Layer::new(p / "layer2", w, 2 * w, 2, 2),
            layer3: Layer::new(p / "layer3", 2 * w, 4 * w, 2, 2),
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
