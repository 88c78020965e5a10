//! The fused branches (`model/fused.rs`) compute what the branches run one after another
//! compute: outputs, gradients, and BatchNorm running statistics, in train and eval mode, for
//! every backbone that has branches.
//!
//! In fp32, outputs and the branches' own gradients agree to 1e-5 (relative to the tensor's
//! largest entry when that exceeds 1). The trunk's gradient is a sum over the G branches, which
//! the fused convolution adds in another order; through a deep trunk with random BatchNorms
//! that reassociation alone moves fp32 gradients by ~2e-5 of their scale, so the whole network's
//! gradients are compared in fp64, to 1e-9: any wrong channel, group or weight slice shows at
//! the scale of the gradient itself.

use dmue_train::model::{Backbone, Branches, ModelConfig, MultiBranchNet, TrainOutput};
use tch::{nn, Device, Kind, Tensor};

const TOL: f64 = 1e-5;
const TOL_F64: f64 = 1e-9;

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

/// Every output of a forward pass, in a fixed order, with its name.
fn outputs(o: &TrainOutput) -> Vec<(String, Tensor)> {
    let mut v = vec![
        ("target_feat".to_string(), o.target_feat.shallow_clone()),
        ("target_logits".to_string(), o.target_logits.shallow_clone()),
    ];
    for (j, (f, l)) in o.aux_feat.iter().zip(&o.aux_logits).enumerate() {
        v.push((format!("aux_feat[{j}]"), f.shallow_clone()));
        v.push((format!("aux_logits[{j}]"), l.shallow_clone()));
    }
    v
}

/// A network with random weights everywhere: BatchNorm scales, shifts and running statistics
/// too, so that no BatchNorm is an identity a wrong channel order could hide behind.
fn random_net(cfg: &ModelConfig, classes: usize) -> (nn::VarStore, MultiBranchNet) {
    let vs = nn::VarStore::new(Device::Cpu);
    let net = MultiBranchNet::new(&vs.root(), cfg, classes, true);
    tch::no_grad(|| {
        for (name, mut t) in vs.variables() {
            if name.ends_with("running_var") {
                t.copy_(&(t.rand_like() + 0.5));
            } else if name.ends_with("running_mean") || name.ends_with(".bias") {
                t.copy_(&(t.randn_like() * 0.2));
            } else if t.dim() == 1 && !name.contains("prelu") {
                t.copy_(&(t.rand_like() + 0.5));
            }
        }
    });
    (vs, net)
}

fn check(cfg: ModelConfig, size: i64) {
    check_in(&cfg, size, Kind::Float);
    check_in(&cfg, size, Kind::Double);
}

fn check_in(cfg: &ModelConfig, size: i64, kind: Kind) {
    let cfg = cfg.clone();
    let classes = 5;
    let (mut vs_a, net_a) = random_net(&cfg, classes);
    let (mut vs_b, net_b) = random_net(&cfg, classes);
    vs_a.set_kind(kind);
    vs_b.set_kind(kind);
    vs_b.copy(&vs_a).unwrap();
    let x = Tensor::randn([6, 3, size, size], (kind, Device::Cpu));
    let tol = if kind == Kind::Double { TOL_F64 } else { TOL };
    // In fp32 only the branches' own gradients (see the module note).
    let compared = |name: &str| {
        kind == Kind::Double
            || name.starts_with("aux.")
            || name.starts_with("fc.")
            || cfg.backbone.is_branch_stage(name)
    };

    for train in [true, false] {
        let fused = net_a.forward_with(&x, train, Branches::Fused);
        let seq = net_b.forward_with(&x, train, Branches::Sequential);
        let (of, os) = (outputs(&fused), outputs(&seq));
        assert_eq!(of.len(), 2 + 2 * classes);
        for ((name, a), (_, b)) in of.iter().zip(&os) {
            assert_eq!(a.size(), b.size(), "{name}");
            let d = max_abs_diff(a, b);
            // Relative to the largest entry when that exceeds 1, as the module note says: with
            // random BatchNorms the logits reach tens, where fp32's rounding alone is 1e-5
            // (seen: 1.5e-5 on ResNet-50-IBN's target logits in one run).
            let scale = b.abs().max().double_value(&[]).max(1.0);
            assert!(
                d <= tol * scale,
                "{} {kind:?} train={train}: {name} differs by {d} (largest entry {scale})",
                cfg.describe()
            );
        }
        if !train {
            continue;
        }
        // The same scalar of both: every output against fixed random weights.
        let weights: Vec<Tensor> = of.iter().map(|(_, t)| t.randn_like()).collect();
        let loss = |o: &[(String, Tensor)]| {
            o.iter()
                .zip(&weights)
                .map(|((_, t), w)| (t * w).sum(kind))
                .fold(Tensor::zeros([], (kind, Device::Cpu)), |a, b| a + b)
        };
        loss(&of).backward();
        loss(&os).backward();
        let (va, vb) = (vs_a.variables(), vs_b.variables());
        // Gradients are compared on the scale of the network's largest one: a parameter whose
        // true gradient is 0 (a BatchNorm shift that the next BatchNorm removes) carries only
        // rounding noise of that scale, which differs between the two summation orders (seen:
        // 1.1e-5 apart, both under 1e-5, in fp32).
        let net_scale = va
            .iter()
            .filter(|(name, a)| {
                a.requires_grad() && !name.starts_with("uncertainty.") && compared(name)
            })
            .map(|(name, _)| vb[name].grad().abs().max().double_value(&[]))
            .fold(1.0f64, f64::max);
        let mut grads = 0;
        for (name, a) in &va {
            let b = &vb[name];
            if name.starts_with("uncertainty.") {
                continue; // not part of the forward pass
            }
            if a.requires_grad() {
                if !compared(name) {
                    continue;
                }
                let (ga, gb) = (a.grad(), b.grad());
                assert!(ga.defined() && gb.defined(), "{name} has no gradient");
                let d = max_abs_diff(&ga, &gb);
                let scale = gb.abs().max().double_value(&[]);
                assert!(
                    d <= tol * net_scale,
                    "{} {kind:?}: gradient of {name} differs by {d} (largest entry {scale}, \
                     network's largest {net_scale})",
                    cfg.describe()
                );
                grads += 1;
            } else {
                // Buffers: the running statistics after one training step.
                let d = max_abs_diff(a, b);
                assert!(
                    d <= tol,
                    "{} {kind:?}: {name} differs by {d}",
                    cfg.describe()
                );
            }
        }
        assert!(grads > 20, "only {grads} parameters compared");
    }
}

/// One test for every backbone: `tch::manual_seed` seeds a process-wide generator, and tests
/// running in parallel would draw from it in any order. Seeded, the draws are fixed, so an
/// element that sits on a ReLU's kink in one order and not in the other cannot make the fp32
/// comparison flaky. One libtorch thread for the same reason: with two, a parallel reduction's
/// order can vary from run to run (seen once: an fp32 gradient 1.9e-5 of the network's scale
/// apart).
#[test]
fn fused_branches_equal_sequential_for_every_backbone() {
    tch::set_num_threads(1);
    tch::manual_seed(0);
    let r18 = ModelConfig {
        width: Some(8),
        classifier_bias: true,
        ..Default::default()
    };
    check(r18.clone(), 64);
    check(
        ModelConfig {
            backbone: Backbone::Resnet50Ibn,
            width: Some(4),
            ..Default::default()
        },
        64,
    );
    check(
        ModelConfig {
            backbone: Backbone::MobilenetV2,
            width: Some(8),
            ..Default::default()
        },
        64,
    );
    check(
        ModelConfig {
            backbone: Backbone::ShufflenetV1,
            width: Some(120),
            ..Default::default()
        },
        64,
    );
    check(
        ModelConfig {
            backbone: Backbone::FaceResnet,
            width: Some(8),
            ..Default::default()
        },
        112,
    );

    // Without a loss that reads them, the auxiliary branches are not run at all.
    let (_vs, net) = random_net(&r18, 4);
    let x = Tensor::randn([2, 3, 32, 32], (Kind::Float, Device::Cpu));
    let t = net.forward_with(&x, false, Branches::TargetOnly);
    let f = net.forward_with(&x, false, Branches::Fused);
    assert!(t.aux_logits.is_empty() && t.aux_feat.is_empty());
    assert!(max_abs_diff(&t.target_logits, &f.target_logits) <= TOL);
}
