//! ShuffleNetV1 with groups = 3 (Zhang et al., CVPR 2018) in the layout and weight names of
//! Megvii's reference implementation (ShuffleNet-Series): `first_conv.{0,1}`, then
//! `features.0..=15` (stages of 4, 8, 4 units), each unit `branch_main_1.{0,1,3,4}` (grouped
//! 1x1, depthwise 3x3) and `branch_main_2.{0,1}` (grouped 1x1), the channel shuffle between
//! them. The branch stage is the last stage (`features.12..=15`), as the paper says.
//!
//! `model.width` is the first stage's output channels: 120, 240, 360, 480 are the published
//! 0.5x, 1.0x, 1.5x and 2.0x (the paper's choice, the standard width here).

use super::fused::{each, Stacked};
use super::{bn, conv, Conv};
use anyhow::{bail, Result};
use tch::nn::{self, ModuleT};
use tch::Tensor;

pub const GROUPS: i64 = 3;
/// Units per stage.
pub const REPEATS: [usize; 3] = [4, 8, 4];
/// Index of the first `features` entry of the branch stage.
pub const BRANCH_START: usize = 12;
pub const STANDARD_WIDTH: i64 = 480;

/// Output channels of the stem convolution for a first-stage width (Megvii's table).
pub fn stem_channels(w: i64) -> Result<i64> {
    Ok(match w {
        120 => 12,
        240 | 360 => 24,
        480 => 48,
        _ => bail!(
            "shufflenet_v1: model.width must be 120, 240, 360 or 480 (0.5x, 1.0x, 1.5x, 2.0x), got {w}"
        ),
    })
}

/// `[B, C, H, W]`: channel `j * (C / g) + k` of the result is channel `k * g + j` of the input
/// (Megvii's order: view the channels as `[C/g, g]`, transpose).
pub fn channel_shuffle(xs: &Tensor, groups: i64) -> Tensor {
    let s = xs.size();
    let (b, c, h, w) = (s[0], s[1], s[2], s[3]);
    xs.reshape([b, c / groups, groups, h, w])
        .permute([0, 2, 1, 3, 4])
        .reshape([b, c, h, w])
}

/// One ShuffleNet unit. Stride 1: `relu(x + main(x))`; stride 2: `cat(avgpool(x), relu(main(x)))`.
#[derive(Debug)]
pub struct Unit {
    pub conv1: Conv,
    pub bn1: nn::BatchNorm,
    pub conv2: Conv,
    pub bn2: nn::BatchNorm,
    pub conv3: Conv,
    pub bn3: nn::BatchNorm,
    pub stride: i64,
}

/// Stride-2 shortcut: 3x3 average pooling, stride 2, padding 1, the padding counted (PyTorch's
/// `AvgPool2d` default).
pub const SHORTCUT_POOL: (i64, i64, i64) = (3, 2, 1);

impl Unit {
    fn new(p: &nn::Path, cin: i64, cout: i64, stride: i64, first: bool) -> Self {
        let mid = cout / 4;
        let out = if stride == 2 { cout - cin } else { cout };
        let (m1, m2) = (p / "branch_main_1", p / "branch_main_2");
        Self {
            conv1: conv(&m1 / 0, cin, mid, 1, 1, if first { 1 } else { GROUPS }),
            bn1: bn(&m1 / 1, mid),
            conv2: conv(&m1 / 3, mid, mid, 3, stride, mid),
            bn2: bn(&m1 / 4, mid),
            conv3: conv(&m2 / 0, mid, out, 1, 1, GROUPS),
            bn3: bn(&m2 / 1, out),
            stride,
        }
    }
}

impl ModuleT for Unit {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let y = xs
            .apply(&self.conv1)
            .apply_t(&self.bn1, train)
            .relu()
            .apply(&self.conv2)
            .apply_t(&self.bn2, train);
        let y = channel_shuffle(&y, GROUPS)
            .apply(&self.conv3)
            .apply_t(&self.bn3, train);
        if self.stride == 1 {
            (y + xs).relu()
        } else {
            let (k, s, p) = SHORTCUT_POOL;
            let proj = xs.avg_pool2d([k; 2], [s; 2], [p; 2], false, true, None);
            Tensor::cat(&[proj, y.relu()], 1)
        }
    }
}

/// Units `range` of a network of width `w`, named `features.N`.
fn units(p: &nn::Path, w: i64, range: std::ops::Range<usize>) -> Vec<Unit> {
    let f = p / "features";
    let mut cin = stem(w);
    let mut out = Vec::new();
    let mut index = 0;
    for (stage, &n) in REPEATS.iter().enumerate() {
        let cout = w << stage;
        for i in 0..n {
            if range.contains(&index) {
                out.push(Unit::new(
                    &(&f / index),
                    cin,
                    cout,
                    if i == 0 { 2 } else { 1 },
                    stage == 0 && i == 0,
                ));
            }
            cin = cout;
            index += 1;
        }
    }
    out
}

/// [`stem_channels`] of a width that `Config::validate` accepted.
fn stem(w: i64) -> i64 {
    stem_channels(w).unwrap_or_else(|e| panic!("{e}"))
}

/// Trunk: stem (3x3 convolution stride 2, BatchNorm, ReLU, 3x3 max-pool) and
/// `features.0..=11`. `[B, 3, H, W] -> [B, 2w, H/16, W/16]`.
#[derive(Debug)]
pub struct Trunk {
    pub conv: Conv,
    pub bn: nn::BatchNorm,
    pub units: Vec<Unit>,
}

/// Stem max pooling (kernel, stride, padding).
pub const STEM_POOL: (i64, i64, i64) = (3, 2, 1);

impl Trunk {
    pub fn new(p: &nn::Path, w: i64) -> Self {
        let c = stem(w);
        let f = p / "first_conv";
        Self {
            conv: conv(&f / 0, 3, c, 3, 2, 1),
            bn: bn(&f / 1, c),
            units: units(p, w, 0..BRANCH_START),
        }
    }
}

impl ModuleT for Trunk {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let (k, s, p) = STEM_POOL;
        let y = xs
            .apply(&self.conv)
            .apply_t(&self.bn, train)
            .relu()
            .max_pool2d([k; 2], [s; 2], [p; 2], [1, 1], false);
        self.units.iter().fold(y, |y, u| u.forward_t(&y, train))
    }
}

/// The branch stage: `features.12..=15`. `[B, 2w, h, w] -> [B, 4w, h/2, w/2]`.
#[derive(Debug)]
pub struct Tail {
    pub units: Vec<Unit>,
}

impl Tail {
    pub fn new(p: &nn::Path, w: i64) -> Self {
        Self {
            units: units(p, w, BRANCH_START..REPEATS.iter().sum()),
        }
    }
}

impl ModuleT for Tail {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        self.units
            .iter()
            .fold(xs.shallow_clone(), |y, u| u.forward_t(&y, train))
    }
}

/// The branch stage of every branch as one computation (`fused.rs`). The shared trunk output
/// is repeated per branch first: the stage opens with a grouped convolution and concatenates
/// its pooled input per branch.
pub fn fused_tail(tails: &[&Tail], xs: &Tensor, s: &Stacked) -> Tensor {
    let stacked = xs.repeat([1, s.g, 1, 1]);
    (0..tails[0].units.len()).fold(stacked, |x, i| {
        let u = each(tails, |t| &t.units[i]);
        let y = s.conv(&each(&u, |u| &u.conv1), &x);
        let y = s.bn(&each(&u, |u| &u.bn1), &y).relu();
        let y = s.conv(&each(&u, |u| &u.conv2), &y);
        let y = s.bn(&each(&u, |u| &u.bn2), &y);
        let y = s.join(&channel_shuffle(&s.split(&y), GROUPS));
        let y = s.conv(&each(&u, |u| &u.conv3), &y);
        let y = s.bn(&each(&u, |u| &u.bn3), &y);
        if u[0].stride == 1 {
            (y + x).relu()
        } else {
            let (k, st, p) = SHORTCUT_POOL;
            let proj = x.avg_pool2d([k; 2], [st; 2], [p; 2], false, true, None);
            s.cat_channels(&proj, &y.relu())
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_shuffle_interleaves_the_groups() {
        // 6 channels, 3 groups: [[0, 1, 2], [3, 4, 5]] transposed -> [0, 3, 1, 4, 2, 5].
        let x = Tensor::arange(6, (tch::Kind::Float, tch::Device::Cpu)).view([1, 6, 1, 1]);
        let y = Vec::<f32>::try_from(&channel_shuffle(&x, 3).flatten(0, -1)).unwrap();
        assert_eq!(y, [0.0, 3.0, 1.0, 4.0, 2.0, 5.0]);
    }
}
