//! MobileNetV2 with torchvision's weight names (`features.N...`). The paper makes the last two
//! stages the branches: trunk = `features.0..=13` (stem and the stages of 16, 24, 32, 64 and 96
//! channels, output stride 16), branch stage = `features.14..=18` (the stages of 160 and 320
//! channels and the final 1x1 convolution to 1280 channels, output stride 32).

use super::fused::{each, Stacked};
use super::{bn, conv, Conv};
use tch::nn::{self, ModuleT};
use tch::Tensor;

/// torchvision's inverted-residual settings: (expansion t, channels c, repeats n, stride s).
pub const SETTINGS: [(i64, i64, usize, i64); 7] = [
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
];
/// Stages in the trunk; the rest (and the final convolution) form the branch stage.
pub const TRUNK_STAGES: usize = 5;
/// Index of the first `features` entry of the branch stage.
pub const BRANCH_START: usize = 14;
/// Stem channels at width multiplier 1.0: `model.width` is the stem's channel count, and the
/// multiplier is `width / 32`.
pub const STANDARD_WIDTH: i64 = 32;
const LAST_CHANNELS: i64 = 1280;

/// torchvision's `_make_divisible`: the nearest multiple of 8, never below 90 % of `v`.
pub fn make_divisible(v: f64) -> i64 {
    const D: i64 = 8;
    let mut new_v = ((v + D as f64 / 2.0) as i64 / D * D).max(D);
    if (new_v as f64) < 0.9 * v {
        new_v += D;
    }
    new_v
}

/// Convolution + BatchNorm, followed by ReLU6 unless it is a linear projection.
#[derive(Debug)]
pub struct ConvBn {
    pub conv: Conv,
    pub bn: nn::BatchNorm,
    pub relu6: bool,
}

impl ConvBn {
    /// `conv_path` and `bn_path` differ by layout: `X.0`/`X.1` inside torchvision's
    /// Conv2dNormActivation, `conv.2`/`conv.3` for an expanded block's projection.
    #[allow(clippy::too_many_arguments)]
    fn new(
        conv_path: nn::Path,
        bn_path: nn::Path,
        cin: i64,
        cout: i64,
        k: i64,
        stride: i64,
        groups: i64,
        relu6: bool,
    ) -> Self {
        Self {
            conv: conv(conv_path, cin, cout, k, stride, groups),
            bn: bn(bn_path, cout),
            relu6,
        }
    }

    fn activation(p: &nn::Path, cin: i64, cout: i64, k: i64, stride: i64, groups: i64) -> Self {
        Self::new(p / "0", p / "1", cin, cout, k, stride, groups, true)
    }
}

impl ModuleT for ConvBn {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let y = xs.apply(&self.conv).apply_t(&self.bn, train);
        if self.relu6 {
            y.clamp(0.0, 6.0)
        } else {
            y
        }
    }
}

/// Inverted residual: optional 1x1 expansion, 3x3 depthwise, 1x1 linear projection, and a
/// residual connection when the shape is kept.
#[derive(Debug)]
pub struct InvertedResidual {
    pub layers: Vec<ConvBn>,
    pub residual: bool,
}

impl InvertedResidual {
    /// `p` is `features.N`.
    pub fn new(p: &nn::Path, cin: i64, cout: i64, stride: i64, expand: i64) -> Self {
        let hidden = cin * expand;
        let c = p / "conv";
        let mut layers = Vec::new();
        let mut i = 0;
        if expand != 1 {
            layers.push(ConvBn::activation(&(&c / i), cin, hidden, 1, 1, 1));
            i += 1;
        }
        layers.push(ConvBn::activation(
            &(&c / i),
            hidden,
            hidden,
            3,
            stride,
            hidden,
        ));
        layers.push(ConvBn::new(
            &c / (i + 1),
            &c / (i + 2),
            hidden,
            cout,
            1,
            1,
            1,
            false,
        ));
        Self {
            layers,
            residual: stride == 1 && cin == cout,
        }
    }
}

impl ModuleT for InvertedResidual {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let y = self
            .layers
            .iter()
            .fold(xs.shallow_clone(), |y, l| l.forward_t(&y, train));
        if self.residual {
            y + xs
        } else {
            y
        }
    }
}

/// Channels after each inverted-residual block and the stride of each, in `features` order
/// (entries 1..=17), for stem width `w`.
fn blocks(w: i64) -> Vec<(i64, i64, i64)> {
    let mult = w as f64 / STANDARD_WIDTH as f64;
    SETTINGS
        .iter()
        .flat_map(|&(t, c, n, s)| {
            let cout = make_divisible(c as f64 * mult);
            (0..n).map(move |i| (t, cout, if i == 0 { s } else { 1 }))
        })
        .collect()
}

/// Stem channels for `model.width = w` (torchvision rounds `32 * mult` to a multiple of 8).
fn stem_channels(w: i64) -> i64 {
    make_divisible(w as f64)
}

/// Trunk: `features.0..=13`. `[B, 3, H, W] -> [B, 96 * mult, H/16, W/16]`.
#[derive(Debug)]
pub struct Trunk {
    pub stem: ConvBn,
    pub blocks: Vec<InvertedResidual>,
}

/// The branch stage: `features.14..=18`. `[B, 96 * mult, h, w] -> [B, 1280, h/2, w/2]`.
#[derive(Debug)]
pub struct Tail {
    pub blocks: Vec<InvertedResidual>,
    pub last: ConvBn,
}

/// Output channels of the trunk and of the branch stage for stem width `w`.
pub fn channels(w: i64) -> (i64, i64) {
    let b = blocks(w);
    let trunk_out = b[BRANCH_START - 2].1;
    let mult = w as f64 / STANDARD_WIDTH as f64;
    (
        trunk_out,
        make_divisible(LAST_CHANNELS as f64 * mult.max(1.0)),
    )
}

impl Trunk {
    pub fn new(p: &nn::Path, w: i64) -> Self {
        let f = p / "features";
        let mut cin = stem_channels(w);
        let stem = ConvBn::activation(&(&f / 0), 3, cin, 3, 2, 1);
        let blocks = blocks(w)[..BRANCH_START - 1]
            .iter()
            .enumerate()
            .map(|(i, &(t, cout, s))| {
                let b = InvertedResidual::new(&(&f / (i + 1)), cin, cout, s, t);
                cin = cout;
                b
            })
            .collect();
        Self { stem, blocks }
    }
}

impl ModuleT for Trunk {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        self.blocks
            .iter()
            .fold(self.stem.forward_t(xs, train), |y, b| {
                b.forward_t(&y, train)
            })
    }
}

impl Tail {
    pub fn new(p: &nn::Path, w: i64) -> Self {
        let f = p / "features";
        let all = blocks(w);
        let mut cin = all[BRANCH_START - 2].1;
        let blocks = all[BRANCH_START - 1..]
            .iter()
            .enumerate()
            .map(|(i, &(t, cout, s))| {
                let b = InvertedResidual::new(&(&f / (BRANCH_START + i)), cin, cout, s, t);
                cin = cout;
                b
            })
            .collect();
        let (_, out) = channels(w);
        let last = ConvBn::activation(&(&f / (all.len() + 1)), cin, out, 1, 1, 1);
        Self { blocks, last }
    }
}

impl ModuleT for Tail {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let y = self
            .blocks
            .iter()
            .fold(xs.shallow_clone(), |y, b| b.forward_t(&y, train));
        self.last.forward_t(&y, train)
    }
}

/// [`ConvBn`] of every branch as one computation.
fn fused_conv_bn(layers: &[&ConvBn], xs: &Tensor, s: &Stacked) -> Tensor {
    let y = s.conv(&each(layers, |l| &l.conv), xs);
    let y = s.bn(&each(layers, |l| &l.bn), &y);
    if layers[0].relu6 {
        y.clamp(0.0, 6.0)
    } else {
        y
    }
}

/// The branch stage of every branch as one computation (`fused.rs`). `xs` is the trunk output
/// shared by the branches: the first block expands it with a 1x1 convolution (`groups = 1`)
/// and has stride 2, so no residual adds the unstacked input.
pub fn fused_tail(tails: &[&Tail], xs: &Tensor, s: &Stacked) -> Tensor {
    let y = (0..tails[0].blocks.len()).fold(xs.shallow_clone(), |x, i| {
        let blocks = each(tails, |t| &t.blocks[i]);
        let y = (0..blocks[0].layers.len()).fold(x.shallow_clone(), |y, j| {
            fused_conv_bn(&each(&blocks, |b| &b.layers[j]), &y, s)
        });
        if blocks[0].residual {
            y + x
        } else {
            y
        }
    });
    fused_conv_bn(&each(tails, |t| &t.last), &y, s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn make_divisible_matches_torchvision() {
        // torchvision: _make_divisible(32 * 0.35, 8) = 16, (24 * 0.5) = 16, (96 * 0.75) = 72,
        // (1280 * 1.4) = 1792, (16 * 0.25) = 8.
        assert_eq!(make_divisible(32.0 * 0.35), 16);
        assert_eq!(make_divisible(24.0 * 0.5), 16);
        assert_eq!(make_divisible(96.0 * 0.75), 72);
        assert_eq!(make_divisible(1280.0 * 1.4), 1792);
        assert_eq!(make_divisible(16.0 * 0.25), 8);
    }
}
