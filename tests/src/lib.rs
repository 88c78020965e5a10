//! Shared fixtures for the end-to-end tests: a small DMUE network with non-trivial BatchNorm
//! statistics, exported to ONNX with a model card.

use dmue_deploy::model_card::ModelCard;
use dmue_deploy::preprocess::Preprocess;
use dmue_train::model::{ModelConfig, MultiBranchNet};
use std::path::{Path, PathBuf};

pub mod serve;
use tch::{nn, Device, Kind, Tensor};

pub const CLASSES: [&str; 7] = dmue_train::synth::expr::CLASSES;

/// A network and its exported file.
pub struct Exported {
    pub vs: nn::VarStore,
    pub net: MultiBranchNet,
    pub card: ModelCard,
    pub path: PathBuf,
}

/// The small networks the end-to-end tests export: width-8 ResNet-18 with torchvision's and
/// with the authors' stem, MobileNetV2 at multiplier 0.25, width-4 ResNet-50-IBN-a, ShuffleNetV1 0.5x.
pub fn test_configs() -> Vec<ModelConfig> {
    use dmue_train::model::{Backbone, Stem};
    vec![
        ModelConfig {
            width: Some(8),
            ..Default::default()
        },
        ModelConfig {
            width: Some(8),
            stem: Stem::Authors,
            ..Default::default()
        },
        ModelConfig {
            backbone: Backbone::MobilenetV2,
            width: Some(8),
            ..Default::default()
        },
        ModelConfig {
            backbone: Backbone::Resnet50Ibn,
            width: Some(4),
            ..Default::default()
        },
        ModelConfig {
            backbone: Backbone::ShufflenetV1,
            width: Some(120),
            ..Default::default()
        },
    ]
}

/// dlib's face-recognition ResNet at its own width (not in [`test_configs`]: it needs inputs
/// of 103 pixels and more, see [`input_side`]).
pub fn face_resnet_config() -> ModelConfig {
    ModelConfig {
        backbone: dmue_train::model::Backbone::FaceResnet,
        ..Default::default()
    }
}

/// Side of the test inputs of a backbone: 64 pixels, 112 for `face-resnet`.
pub fn input_side(config: &ModelConfig) -> i64 {
    if config.backbone == dmue_train::model::Backbone::FaceResnet {
        112
    } else {
        64
    }
}

/// Builds a width-8 DMUE ResNet-18 for 64x64 inputs, gives every BatchNorm random running
/// statistics and affine parameters (so that folding is exercised), and exports it to `dir`.
pub fn exported_model(dir: &Path, seed: i64) -> Exported {
    exported_model_with(dir, seed, &test_configs()[0])
}

/// Runs `f` right after `tch::manual_seed(seed)`, holding a lock: libtorch's generator is
/// process-wide, so without it tests running in parallel draw from each other's streams and a
/// seed no longer fixes the weights or inputs it makes.
pub fn seeded<T>(seed: i64, f: impl FnOnce() -> T) -> T {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    tch::manual_seed(seed);
    f()
}

/// [`exported_model`] for any backbone configuration.
pub fn exported_model_with(dir: &Path, seed: i64, config: &ModelConfig) -> Exported {
    seeded(seed, || build_randomised(dir, config, "test", 1.0))
}

/// [`exported_model`] whose model card names `dataset` as its training data and carries the
/// calibration `temperature`.
pub fn exported_model_card(dir: &Path, seed: i64, dataset: &str, temperature: f32) -> Exported {
    seeded(seed, || {
        build_randomised(dir, &test_configs()[0], dataset, temperature)
    })
}

fn build_randomised(dir: &Path, config: &ModelConfig, dataset: &str, temperature: f32) -> Exported {
    let vs = nn::VarStore::new(Device::Cpu);
    let net = MultiBranchNet::new(&vs.root(), config, CLASSES.len(), true);
    tch::no_grad(|| {
        // In name order: `variables()` is a HashMap, and drawing in its (random) order made
        // the same seed give different weights from one run to the next.
        let mut variables: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
        variables.sort_by(|a, b| a.0.cmp(&b.0));
        for (name, mut t) in variables {
            // Every BatchNorm (the only 1-d tensors outside the classifiers and the
            // uncertainty module: convolutions have no bias) gets non-trivial statistics and
            // affine parameters, so that each fold is really exercised.
            let is_bn = t.dim() == 1
                && !name.ends_with("fc.weight")
                && !name.ends_with("fc.bias")
                && !name.starts_with("uncertainty.");
            if !is_bn {
                continue;
            }
            if name.ends_with("running_mean") || name.ends_with(".bias") {
                t.copy_(&(Tensor::randn(t.size(), (Kind::Float, Device::Cpu)) * 0.2));
            } else if name.ends_with("running_var") || name.ends_with(".weight") {
                t.copy_(&(Tensor::rand(t.size(), (Kind::Float, Device::Cpu)) + 0.5));
            }
        }
    });
    if config.backbone == dmue_train::model::Backbone::FaceResnet {
        // Without normalisation, random affine maps compound over 14 blocks into logits in
        // the hundreds; dlib's weights (what a face-resnet is fine-tuned from) keep them in
        // the range a trained model has. Classifiers and the uncertainty module stay random.
        let dlib = root().join(dmue_train::model::dlib::CONVERTED);
        assert!(
            dlib.exists(),
            "{} is missing: run scripts/fetch-face-trunk.sh",
            dlib.display()
        );
        dmue_train::model::init::load(&vs, &net, &dlib).expect("dlib weights");
    }
    let card = ModelCard {
        classes: CLASSES.iter().map(|s| s.to_string()).collect(),
        preprocess: Preprocess {
            resize: input_side(config) as u32 + 8,
            crop: input_side(config) as u32,
            ..Default::default()
        },
        template_id: dmue_deploy::face::TEMPLATE_ID.into(),
        aligned_size: dmue_deploy::face::ALIGNED_SIZE,
        backbone: config.describe(),
        dataset: dataset.into(),
        run_id: "e2e".into(),
        version: "test".into(),
        temperature,
        int8: None,
    };
    let (model, _) = tch::no_grad(|| dmue_train::export::build(&net, &card)).expect("export");
    let path = dir.join("target.onnx");
    dmue_train::export::write(&model, &path).expect("write");
    Exported {
        vs,
        net,
        card,
        path,
    }
}

/// The tch target branch on `input` (`n * 3 * 64 * 64` floats): logits, row-major.
pub fn tch_logits(net: &MultiBranchNet, input: &[f32], n: usize, crop: i64) -> Vec<f32> {
    let x = Tensor::from_slice(input).view([n as i64, 3, crop, crop]);
    let y = tch::no_grad(|| net.forward_target(&x));
    Vec::<f32>::try_from(&y.flatten(0, -1)).expect("f32 logits")
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// `n` rendered synthetic faces (test split of `synth --seed seed`) through the model card's
/// evaluation transform: `n * 3 * crop * crop` floats.
pub fn face_inputs(card: &ModelCard, n: usize, seed: u64) -> Vec<f32> {
    let dir = tempfile::tempdir().expect("temporary directory");
    let opts = dmue_train::synth::SynthOptions {
        train: 0,
        test: n,
        size: 128,
        seed,
        ..Default::default()
    };
    dmue_train::synth::generate(&opts, dir.path()).expect("render faces");
    let mut out = Vec::new();
    for i in 0..n {
        let img = image::open(dir.path().join(format!("images/test/{i:06}.png")))
            .expect("rendered face")
            .to_rgb8();
        out.extend(card.preprocess.eval_tensor(&img).expect("preprocess"));
    }
    out
}

/// The venv's Python (made by scripts/setup.sh), for the ONNX checker.
pub fn venv_python() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python")
}

/// Runs the ONNX checker with `full_check` on `path` (the venv's `onnx`), panics with its
/// message if it fails, and returns the opset and output names it read, as
/// `"17 ['logits', 'probabilities']"`.
pub fn onnx_full_check(path: &Path) -> String {
    let py = venv_python();
    assert!(
        py.exists(),
        "{} is missing: run scripts/setup.sh",
        py.display()
    );
    let out = std::process::Command::new(&py)
        .args(["-c", "import sys, onnx; m = onnx.load(sys.argv[1]); onnx.checker.check_model(m, full_check=True); print(m.opset_import[0].version, [o.name for o in m.graph.output])"])
        .arg(path)
        .output()
        .expect("run the venv's python");
    assert!(
        out.status.success(),
        "onnx checker on {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The workspace root (where `models/` and `target/test-data/` live).
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// RetinaFace from `models/` (scripts/fetch-models.sh) on tract, one thread, default settings.
pub fn detector() -> dmue_deploy::face::detect::Detector {
    let model = root().join(dmue_deploy::face::detect::DEFAULT_MODEL);
    assert!(
        model.exists(),
        "{} is missing: run scripts/fetch-models.sh",
        model.display()
    );
    dmue_deploy::face::detect::Detector::load(
        &model,
        dmue_deploy::engine::EngineKind::Tract,
        1,
        Default::default(),
    )
    .unwrap()
}

/// A crowded group photo for detection tests: a `width` x `height` canvas with `n` synthetic
/// faces (photo mode, one face per rendered photo) pasted on a grid over a noisy background,
/// each scaled so that its face is `face_px` pixels wide (2.2 eye distances, the width of the
/// alignment template's face). Returns the photo and each face's centre.
pub fn group_photo(
    dir: &Path,
    width: u32,
    height: u32,
    n: usize,
    face_px: &dyn Fn(usize) -> f32,
) -> (image::RgbImage, Vec<[f32; 2]>) {
    use dmue_train::synth::{self, Mode, PhotoRow, SynthOptions};
    let out = dir.join("group-sources");
    let opts = SynthOptions {
        mode: Mode::Photo,
        train: 0,
        test: n,
        max_faces: 1,
        seed: 11,
        ..Default::default()
    };
    synth::generate(&opts, &out).unwrap();
    let rows: Vec<PhotoRow> = std::fs::read_to_string(out.join(synth::PHOTOS_FILE))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // A deterministic noisy background (no face-like structure).
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut photo = image::RgbImage::from_fn(width, height, |_, _| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let v = 90 + (state % 60) as u8;
        image::Rgb([v, v.wrapping_add(10), v.wrapping_sub(20)])
    });
    let cols = (n as f32 * width as f32 / height as f32).sqrt().ceil() as u32;
    let rows_n = (n as u32).div_ceil(cols);
    let (cell_w, cell_h) = (width / cols, height / rows_n);
    let mut centres = Vec::new();
    for (k, row) in rows.iter().enumerate().take(n) {
        let src = image::open(out.join(&row.path)).unwrap().to_rgb8();
        let lm = row.faces[0].landmarks;
        let eye = ((lm[1][0] - lm[0][0]).powi(2) + (lm[1][1] - lm[0][1]).powi(2)).sqrt();
        let (cx, cy) = (
            lm.iter().map(|p| p[0]).sum::<f32>() / 5.0,
            lm.iter().map(|p| p[1]).sum::<f32>() / 5.0,
        );
        // Cut a square of 2 face widths around the face, scaled to the wanted face size.
        let face = 2.2 * eye;
        let half = face;
        let (x0, y0) = ((cx - half).max(0.0) as u32, (cy - half).max(0.0) as u32);
        let side = ((2.0 * half) as u32)
            .min(src.width() - x0)
            .min(src.height() - y0);
        let cut = image::imageops::crop_imm(&src, x0, y0, side, side).to_image();
        let scale = face_px(k) / face;
        let s = ((side as f32 * scale).round() as u32).max(1);
        let small = image::imageops::resize(&cut, s, s, image::imageops::FilterType::Triangle);
        let (col, r) = (k as u32 % cols, k as u32 / cols);
        let (px, py) = (
            col * cell_w + (cell_w.saturating_sub(s)) / 2,
            r * cell_h + (cell_h.saturating_sub(s)) / 2,
        );
        image::imageops::replace(&mut photo, &small, px as i64, py as i64);
        centres.push([
            px as f32 + (cx - x0 as f32) * scale,
            py as f32 + (cy - y0 as f32) * scale,
        ]);
    }
    (photo, centres)
}
