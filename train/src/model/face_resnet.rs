//! dlib's face-recognition ResNet (`dlib_face_recognition_resnet_model_v1`, 150x150 face
//! chips, trained on about 3 million faces) as a DMUE backbone: `face-resnet`.
//!
//! The architecture is dlib's `anet_type` (`crate::model::dlib` reads its file):
//! - stem: conv 7x7/2 (with bias, no padding) -> affine -> ReLU -> max pool 3x3/2;
//! - `layer1`: 3 residual blocks of `w` channels; `layer2`: a downsampling block and 3 blocks
//!   of `2w`; `layer3`: down + 2 of `4w`; `layer4`: down + 2 of `8w`; `layer5`: one down block
//!   of `8w` (w = 32 in dlib's network);
//! - a block is conv 3x3 -> affine -> ReLU -> conv 3x3 -> affine, added to the shortcut, then
//!   ReLU. A downsampling block's first convolution has stride 2 and no padding, and its
//!   shortcut is a 2x2/2 average pool; where the two differ in size (channels, or a spatial
//!   side: 3 against 4 after `layer3` at 150 pixels), the smaller is zero-padded at the end of
//!   each dimension, as dlib's `add_prev` does.
//! - `affine` is a per-channel scale and shift: dlib's BatchNorm frozen after training. Here
//!   both are trained like any weight (there are no batch statistics).
//!
//! The branch stage (every DMUE branch has its own copy) is `layer5`, which feeds the global
//! average pool; dlib's 128-d identity projection after it is not part of the backbone.

use super::{Conv, ModelConfig};
use tch::nn::{self, ModuleT};
use tch::Tensor;

/// `model.width` of dlib's network (the stem's channels).
/// Residual levels, input side first: (filters, plain blocks, whether a downsampling block
/// comes first). `face-resnet`'s `layer1..layer5` are these in this order.
pub const LEVELS: [(i64, usize, bool); 5] = [
    (32, 3, false),
    (64, 3, true),
    (128, 2, true),
    (256, 2, true),
    (256, 0, true),
];

pub const STANDARD_WIDTH: i64 = 32;

/// Channels of `layer{level + 1}` at width `w`.
pub fn channels(level: usize, w: i64) -> i64 {
    [1, 2, 4, 8, 8][level] * w
}

/// The smallest input side the network accepts: `layer5`'s stride-2 convolution needs 3
/// pixels, which it has from 103 pixels up.
pub const MIN_INPUT: i64 = 103;

/// A per-channel scale and shift.
#[derive(Debug)]
pub struct Affine {
    pub weight: Tensor,
    pub bias: Tensor,
}

impl Affine {
    fn new(p: nn::Path, c: i64) -> Self {
        Self {
            weight: p.var("weight", &[c], nn::Init::Const(1.0)),
            bias: p.var("bias", &[c], nn::Init::Const(0.0)),
        }
    }

    pub fn forward(&self, xs: &Tensor) -> Tensor {
        xs * self.weight.view([1, -1, 1, 1]) + self.bias.view([1, -1, 1, 1])
    }
}

/// Convolution with bias, padded by `k / 2` at stride 1 and not at all at stride 2 (dlib's
/// default), initialised as torchvision initialises ResNets.
fn conv(p: nn::Path, cin: i64, cout: i64, k: i64, stride: i64) -> Conv {
    let padding = if stride == 1 { k / 2 } else { 0 };
    let cfg = nn::ConvConfig {
        stride,
        padding,
        bias: true,
        ws_init: nn::Init::Kaiming {
            dist: nn::init::NormalOrUniform::Normal,
            fan: nn::init::FanInOut::FanOut,
            non_linearity: nn::init::NonLinearity::ReLU,
        },
        bs_init: nn::Init::Const(0.0),
        ..Default::default()
    };
    Conv {
        inner: nn::conv2d(p, cin, cout, k, cfg),
        stride,
        padding,
        groups: 1,
    }
}

/// Zero-pads `a` and `b` to the larger of their sizes in every dimension (at the end) and adds
/// them: dlib's `add_prev`.
pub fn add_padded(a: &Tensor, b: &Tensor) -> Tensor {
    let (sa, sb) = (a.size(), b.size());
    if sa == sb {
        return a + b;
    }
    let pad = |t: &Tensor, s: &[i64]| {
        let d = |i: usize| sa[i].max(sb[i]) - s[i];
        t.constant_pad_nd([0, d(3), 0, d(2), 0, d(1)])
    };
    pad(a, &sa) + pad(b, &sb)
}

/// A residual block (`down`: stride 2 and an average-pooled shortcut).
#[derive(Debug)]
pub struct Block {
    pub conv1: Conv,
    pub affine1: Affine,
    pub conv2: Conv,
    pub affine2: Affine,
    pub down: bool,
}

impl Block {
    fn new(p: nn::Path, cin: i64, cout: i64, down: bool) -> Self {
        Self {
            conv1: conv(&p / "conv1", cin, cout, 3, if down { 2 } else { 1 }),
            affine1: Affine::new(&p / "affine1", cout),
            conv2: conv(&p / "conv2", cout, cout, 3, 1),
            affine2: Affine::new(&p / "affine2", cout),
            down,
        }
    }

    pub fn forward(&self, xs: &Tensor) -> Tensor {
        let y = self.affine1.forward(&xs.apply(&self.conv1)).relu();
        let y = self.affine2.forward(&y.apply(&self.conv2));
        let shortcut = if self.down {
            xs.avg_pool2d([2, 2], [2, 2], [0, 0], false, true, None::<i64>)
        } else {
            xs.shallow_clone()
        };
        add_padded(&y, &shortcut).relu()
    }
}

/// The blocks of `layer{level + 1}`.
fn level(p: &nn::Path, level: usize, w: i64) -> Vec<Block> {
    let (_, plain, down) = LEVELS[level];
    let cout = channels(level, w);
    let cin = if level == 0 {
        w
    } else {
        channels(level - 1, w)
    };
    let p = p / format!("layer{}", level + 1);
    (0..plain + down as usize)
        .map(|b| {
            let first_down = down && b == 0;
            Block::new(&p / b, if b == 0 { cin } else { cout }, cout, first_down)
        })
        .collect()
}

/// Stem and `layer1..layer4`.
#[derive(Debug)]
pub struct Trunk {
    pub conv1: Conv,
    pub affine1: Affine,
    pub layers: Vec<Vec<Block>>,
}

impl Trunk {
    pub fn new(p: &nn::Path, cfg: &ModelConfig) -> Self {
        let w = cfg.width();
        Self {
            conv1: conv(p / "conv1", 3, w, 7, 2),
            affine1: Affine::new(p / "affine1", w),
            layers: (0..4).map(|l| level(p, l, w)).collect(),
        }
    }

    /// The stem alone (conv, affine, ReLU, max pool).
    pub fn stem(&self, xs: &Tensor) -> Tensor {
        self.affine1
            .forward(&xs.apply(&self.conv1))
            .relu()
            .max_pool2d([3, 3], [2, 2], [0, 0], [1, 1], false)
    }
}

impl ModuleT for Trunk {
    fn forward_t(&self, xs: &Tensor, _train: bool) -> Tensor {
        let side = *xs.size().last().unwrap_or(&0);
        assert!(
            side >= MIN_INPUT,
            "face-resnet needs inputs of at least {MIN_INPUT} pixels, got {side}"
        );
        self.layers
            .iter()
            .flatten()
            .fold(self.stem(xs), |x, b| b.forward(&x))
    }
}

/// `layer5`: the branch stage.
#[derive(Debug)]
pub struct Tail {
    pub blocks: Vec<Block>,
}

impl Tail {
    pub fn new(p: &nn::Path, w: i64) -> Self {
        Self {
            blocks: level(p, 4, w),
        }
    }
}

impl ModuleT for Tail {
    fn forward_t(&self, xs: &Tensor, _train: bool) -> Tensor {
        self.blocks
            .iter()
            .fold(xs.shallow_clone(), |x, b| b.forward(&x))
    }
}
