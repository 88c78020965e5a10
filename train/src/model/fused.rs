//! The C auxiliary branches and the target branch as one batched computation.
//!
//! Run one after another, G = C + 1 copies of the last stage are G small convolutions per layer,
//! G BatchNorms and G heads: on a GPU the step is launch-bound. Fused, the trunk output is
//! repeated G times along the channels (branch-major: channel `g * c + k` is channel `k` of
//! branch `g`), every convolution becomes one grouped convolution (`groups = G * groups`) whose
//! weight is the concatenation of the branches' weights, every BatchNorm one BatchNorm over the
//! stacked channels, and the heads two batched matrix products (target, auxiliaries).
//!
//! The parameters stay where they are, under their own names: the concatenation happens in the
//! forward pass and autograd routes each slice of the gradient back to its branch's tensor, so
//! checkpoints, the optimizer, `--init` and the exporter see the same variables as before.
//! BatchNorm's running statistics are updated on the concatenated copy and written back to each
//! branch's buffers. `train/tests/fused.rs` proves fused == one after another (outputs,
//! gradients, running statistics) for every backbone.

use super::Conv;
use tch::nn;
use tch::Tensor;

/// BatchNorm momentum of every layer (PyTorch's default); one value for the plain and the fused
/// forward pass.
pub const BN_MOMENTUM: f64 = 0.1;

/// G branches stacked along the channel dimension.
#[derive(Debug, Clone, Copy)]
pub struct Stacked {
    /// Number of branches.
    pub g: i64,
    pub train: bool,
}

impl Stacked {
    /// One convolution for the same convolution of every branch, its weight the branches'
    /// weights concatenated. A stacked input (every branch's channels, branch-major) makes it a
    /// grouped convolution with `G * groups` groups. An input shared by every branch (the trunk
    /// output, `c` channels) is read once when the convolution is not grouped (`groups = 1`,
    /// `G * cout` outputs), and repeated per branch otherwise.
    pub fn conv(&self, convs: &[&Conv], xs: &Tensor) -> Tensor {
        debug_assert_eq!(convs.len() as i64, self.g);
        let first = convs[0];
        debug_assert!(
            first.inner.bs.is_none(),
            "branch convolutions are bias-free"
        );
        let ws: Vec<&Tensor> = convs.iter().map(|c| &c.inner.ws).collect();
        let w = Tensor::cat(&ws, 0);
        let shared = xs.size()[1] == w.size()[1] * first.groups;
        let (xs, groups) = match (shared, first.groups) {
            (true, 1) => (xs.shallow_clone(), 1),
            (true, g) => (xs.repeat([1, self.g, 1, 1]), g * self.g),
            (false, g) => (xs.shallow_clone(), g * self.g),
        };
        xs.conv2d(
            &w,
            None::<&Tensor>,
            [first.stride; 2],
            [first.padding; 2],
            [1, 1],
            groups,
        )
    }

    /// One BatchNorm over the stacked channels of the same BatchNorm of every branch. In
    /// training, each branch's running statistics receive their slice of the update.
    pub fn bn(&self, bns: &[&nn::BatchNorm], xs: &Tensor) -> Tensor {
        debug_assert_eq!(bns.len() as i64, self.g);
        let cat = |f: &dyn Fn(&nn::BatchNorm) -> &Tensor| {
            Tensor::cat(&bns.iter().map(|b| f(b)).collect::<Vec<_>>(), 0)
        };
        let weight = cat(&|b| b.ws.as_ref().expect("affine BatchNorm"));
        let bias = cat(&|b| b.bs.as_ref().expect("affine BatchNorm"));
        let mean = tch::no_grad(|| cat(&|b| &b.running_mean));
        let var = tch::no_grad(|| cat(&|b| &b.running_var));
        let y = Tensor::batch_norm(
            xs,
            Some(&weight),
            Some(&bias),
            Some(&mean),
            Some(&var),
            self.train,
            BN_MOMENTUM,
            super::BN_EPS,
            true,
        );
        if self.train {
            tch::no_grad(|| {
                let c = bns[0].running_mean.size()[0];
                for (i, b) in bns.iter().enumerate() {
                    let (mut m, mut v) = (
                        b.running_mean.shallow_clone(),
                        b.running_var.shallow_clone(),
                    );
                    m.copy_(&mean.narrow(0, i as i64 * c, c));
                    v.copy_(&var.narrow(0, i as i64 * c, c));
                }
            });
        }
        y
    }

    /// `[B, G * c, h, w] -> [B * G, c, h, w]`: each branch's channels as a batch of its own (a
    /// view: the layout is branch-major), for per-branch operations such as a channel shuffle.
    pub fn split(&self, xs: &Tensor) -> Tensor {
        let s = xs.size();
        xs.reshape([s[0] * self.g, s[1] / self.g, s[2], s[3]])
    }

    /// The inverse of [`Stacked::split`].
    pub fn join(&self, xs: &Tensor) -> Tensor {
        let s = xs.size();
        xs.reshape([s[0] / self.g, s[1] * self.g, s[2], s[3]])
    }

    /// Per-branch concatenation along the channels: `[B, G * a]` and `[B, G * b]` (+ spatial)
    /// to `[B, G * (a + b)]`, each branch's `a` channels first.
    pub fn cat_channels(&self, a: &Tensor, b: &Tensor) -> Tensor {
        self.join(&Tensor::cat(&[self.split(a), self.split(b)], 1))
    }
}

/// The field `f` of every branch's module, for a fused call.
pub fn each<'a, T, U>(items: &[&'a T], f: impl Fn(&'a T) -> &'a U) -> Vec<&'a U> {
    items.iter().map(|t| f(t)).collect()
}

/// The variant `f` picks out of every branch's module. Every branch has the same architecture,
/// so a module of another variant is a bug: `what` names the invariant in the panic.
pub fn each_variant<'a, T, U>(
    items: &[&'a T],
    what: &str,
    f: impl Fn(&'a T) -> Option<&'a U>,
) -> Vec<&'a U> {
    items
        .iter()
        .map(|t| f(t).unwrap_or_else(|| unreachable!("{what}")))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    #[test]
    fn split_join_and_per_branch_concatenation() {
        let s = Stacked { g: 2, train: false };
        // Branch 0 has channels [0, 1], branch 1 [2, 3]; b adds one channel per branch.
        let a = Tensor::arange(4, (Kind::Float, Device::Cpu)).view([1, 4, 1, 1]);
        let b = Tensor::from_slice(&[10.0f32, 20.0]).view([1, 2, 1, 1]);
        assert_eq!(s.split(&a).size(), [2, 2, 1, 1]);
        assert!(s.join(&s.split(&a)).equal(&a));
        let c = Vec::<f32>::try_from(&s.cat_channels(&a, &b).flatten(0, -1)).unwrap();
        assert_eq!(c, [0.0, 1.0, 10.0, 2.0, 3.0, 20.0]);
    }
}
