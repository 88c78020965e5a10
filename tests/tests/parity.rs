//! The exported ONNX file computes what the tch target branch computes: max abs diff <= 1e-4
//! on logits through tract and through ONNX Runtime, for random inputs and rendered faces, at
//! batch 1 and batch N; a batch gives the same per-image results as single calls; the file
//! passes the ONNX checker.

use dmue_deploy::engine::{self, EngineKind};
use dmue_e2e::{
    exported_model_with, face_inputs, face_resnet_config, input_side, max_abs_diff,
    onnx_full_check, tch_logits, test_configs,
};
use tch::{Device, Kind, Tensor};

const TOL: f32 = 1e-4;

fn random_inputs(n: usize, seed: i64, side: i64) -> Vec<f32> {
    dmue_e2e::seeded(seed, || {
        Vec::<f32>::try_from(&Tensor::randn(
            [n as i64 * 3 * side * side],
            (Kind::Float, Device::Cpu),
        ))
        .unwrap()
    })
}

/// Every test backbone (ResNet-18 with both stems, MobileNetV2) through one engine.
fn check_engine(kind: EngineKind) {
    for config in test_configs() {
        eprintln!("{}", config.describe());
        check_model(kind, &config);
    }
}

fn check_model(kind: EngineKind, config: &dmue_train::model::ModelConfig) {
    let dir = tempfile::tempdir().unwrap();
    let m = exported_model_with(dir.path(), 1, config);
    let mut engine = engine::load(kind, &m.path, 1).unwrap();
    let side = input_side(config);
    let s = side as usize;
    let mut logits = |x: &[f32], n: usize| engine.run(x, [n, 3, s, s]).unwrap().swap_remove(0).1;
    let per = 3 * s * s;
    for (what, inputs, n) in [
        ("random", random_inputs(5, 2, side), 5),
        ("faces", face_inputs(&m.card, 4, 5), 4),
    ] {
        let reference = tch_logits(&m.net, &inputs, n, side);
        // Batch N.
        let batch = logits(&inputs, n);
        let d = max_abs_diff(&batch, &reference);
        eprintln!(
            "{kind:?} {what} batch {n}: max abs diff vs tch {d:.2e} (logits up to {:.2})",
            reference.iter().fold(0f32, |a, v| a.max(v.abs()))
        );
        assert!(d <= TOL, "{kind:?} {what} batch {n}: max abs diff {d}");
        // Batch 1, image by image: equal to the tch reference and to the batched run.
        for i in 0..n {
            let single = logits(&inputs[i * per..(i + 1) * per], 1);
            let d = max_abs_diff(&single, &reference[i * 7..(i + 1) * 7]);
            assert!(
                d <= TOL,
                "{kind:?} {what} image {i} alone: max abs diff {d}"
            );
            let d = max_abs_diff(&single, &batch[i * 7..(i + 1) * 7]);
            assert!(d <= TOL, "{kind:?} {what} image {i}: batch vs single {d}");
        }
        // Logits are not trivially small: the comparison means something.
        assert!(
            reference.iter().any(|v| v.abs() > 0.1),
            "{what}: logits too small to compare"
        );
    }
}

#[test]
fn tract_matches_tch() {
    check_engine(EngineKind::Tract);
}

#[test]
fn onnx_runtime_matches_tch() {
    check_engine(EngineKind::Ort);
}

/// dlib's face-recognition ResNet: its average-pooled shortcuts and zero-padded sums (a 3x3
/// residual added to a 4x4 shortcut at 112 pixels) export as AveragePool and Pad.
#[test]
fn face_resnet_matches_tch_on_both_engines() {
    for kind in [EngineKind::Tract, EngineKind::Ort] {
        check_model(kind, &face_resnet_config());
    }
}

/// A calibrated export (T = 2.5): the graph's `probabilities` and dmue-serve's predictions are
/// softmax(tch logits / T), computed here in f64; `logits` stay raw.
#[test]
fn calibrated_probabilities_follow_the_temperature() {
    let dir = tempfile::tempdir().unwrap();
    let t = 2.5f64;
    let m = dmue_e2e::exported_model_card(dir.path(), 4, "test", t as f32);
    let inputs = random_inputs(3, 6, 64);
    let reference = tch_logits(&m.net, &inputs, 3, 64);
    let expected: Vec<f32> = reference
        .chunks(7)
        .flat_map(|row| {
            let e: Vec<f64> = row.iter().map(|&v| (v as f64 / t).exp()).collect();
            let s: f64 = e.iter().sum();
            e.into_iter().map(move |v| (v / s) as f32)
        })
        .collect();
    for kind in [EngineKind::Tract, EngineKind::Ort] {
        let mut engine = engine::load(kind, &m.path, 1).unwrap();
        let outputs = engine.run(&inputs, [3, 3, 64, 64]).unwrap();
        let d = max_abs_diff(&outputs[0].1, &reference);
        assert!(d <= TOL, "{kind:?} logits: {d}");
        let d = max_abs_diff(&outputs[1].1, &expected);
        assert!(
            d <= 1e-5,
            "{kind:?} probabilities vs softmax(logits / T): {d}"
        );
    }
    // The server's path: Classifier::prediction with the card read back from the file.
    let classifier =
        dmue_deploy::pipeline::Classifier::load(&m.path, EngineKind::Tract, 1).unwrap();
    assert_eq!(classifier.card.temperature, 2.5);
    let p = classifier.prediction(&reference[..7]);
    let served: Vec<f32> = m
        .card
        .classes
        .iter()
        .map(|c| p.probabilities[c].as_f64().unwrap() as f32)
        .collect();
    let d = max_abs_diff(&served, &expected[..7]);
    assert!(
        d <= 1e-6,
        "served probabilities vs softmax(logits / T): {d}"
    );
    // Flatter than the uncalibrated softmax: the temperature really is applied.
    let raw_top = dmue_deploy::numeric::softmax(&reference[..7])
        .into_iter()
        .fold(0f32, f32::max);
    assert!(p.score < raw_top, "{} vs {raw_top}", p.score);
}

#[test]
fn passes_the_onnx_checker_and_carries_the_model_card() {
    for config in test_configs() {
        check_file(&config);
    }
}

fn check_file(config: &dmue_train::model::ModelConfig) {
    let dir = tempfile::tempdir().unwrap();
    let m = exported_model_with(dir.path(), 3, config);
    assert_eq!(onnx_full_check(&m.path), "17 ['logits', 'probabilities']");
    let card = dmue_deploy::model_card::ModelCard::from_onnx(&m.path).unwrap();
    assert_eq!(card, m.card);
    // Neither the auxiliary branches nor the uncertainty module are in the file.
    let model = dmue_deploy::onnx::read_model(&m.path).unwrap();
    let names: Vec<String> = model
        .graph
        .unwrap()
        .initializer
        .into_iter()
        .filter_map(|t| t.name)
        .collect();
    assert!(
        names
            .iter()
            .all(|n| !n.starts_with("aux") && !n.starts_with("uncertainty")),
        "{names:?}"
    );
    drop(m.vs);
}
