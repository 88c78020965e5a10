//! Photo -> faces -> aligned crops -> probabilities, with the classifier's preprocessing read
//! from the model card. With a detector, every face found is aligned with the 5-point template
//! (`crate::face::align`); without one (`--no-detect`) the image is taken as one aligned crop.

use crate::engine::{self, Engine, EngineKind};
use crate::error::{Error, Result};
use crate::model_card::ModelCard;
use crate::numeric::ambiguity;
use image::RgbImage;
use serde::Serialize;
use std::path::Path;

/// What the classifier says about one face.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Prediction {
    /// Top class name.
    pub label: String,
    pub class_index: usize,
    /// Probability of the top class.
    pub score: f32,
    /// Probability of every class, in the model card's class order: `softmax(logits / T)`
    /// with the card's calibration temperature T.
    pub probabilities: serde_json::Map<String, serde_json::Value>,
    /// How spread the probabilities are: their entropy divided by ln(number of classes), from 0
    /// (all mass on one class) to 1 (uniform). See [`crate::numeric::ambiguity`].
    pub ambiguity: f32,
}

pub struct Classifier {
    pub card: ModelCard,
    engine: Box<dyn Engine>,
}

impl Classifier {
    pub fn load(model: &Path, kind: EngineKind, threads: usize) -> Result<Self> {
        let card = ModelCard::from_onnx(model)?;
        let engine = engine::load(kind, model, threads)?;
        Ok(Self { card, engine })
    }

    pub fn engine_name(&self) -> &'static str {
        self.engine.name()
    }

    /// The model card's evaluation transform of one aligned face crop.
    pub fn preprocess(&self, crop: &RgbImage) -> Result<Vec<f32>> {
        Ok(self.card.preprocess.eval_tensor(crop)?)
    }

    /// Logits of `n` preprocessed inputs laid end to end (the model's first output).
    pub fn logits(&mut self, inputs: &[f32], n: usize) -> Result<Vec<f32>> {
        let c = self.card.preprocess.crop as usize;
        let mut outputs = self.engine.run(inputs, [n, 3, c, c])?;
        if outputs.is_empty() {
            return Err(Error::Engine("the model has no outputs".into()));
        }
        let logits = outputs.swap_remove(0).1;
        if logits.len() != n * self.card.classes.len() {
            return Err(Error::Engine(format!(
                "the model returned {} values for {n} inputs and {} classes",
                logits.len(),
                self.card.classes.len()
            )));
        }
        Ok(logits)
    }

    /// Turns one row of logits into a prediction.
    pub fn prediction(&self, logits: &[f32]) -> Prediction {
        let p = self.card.probabilities(logits);
        let best = p
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map(|(i, _)| i)
            .unwrap_or(0);
        Prediction {
            label: self.card.classes[best].clone(),
            class_index: best,
            score: p[best],
            probabilities: self
                .card
                .classes
                .iter()
                .zip(&p)
                .map(|(c, v)| (c.clone(), serde_json::json!(v)))
                .collect(),
            ambiguity: ambiguity(&p),
        }
    }

    /// Classifies aligned face crops, at most `batch` per inference call.
    pub fn classify(&mut self, faces: &[FaceCrop], batch: usize) -> Result<Vec<Prediction>> {
        let classes = self.card.classes.len();
        let mut predictions = Vec::with_capacity(faces.len());
        for chunk in faces.chunks(batch.max(1)) {
            let mut inputs = Vec::new();
            for face in chunk {
                inputs.extend(self.preprocess(&face.crop)?);
            }
            let logits = self.logits(&inputs, chunk.len())?;
            predictions.extend(logits.chunks(classes).map(|row| self.prediction(row)));
        }
        Ok(predictions)
    }
}

/// One face of an image, cut the way the classifier was trained.
#[derive(Debug, Clone)]
pub struct FaceCrop {
    /// `[x0, y0, x1, y1]` in image pixels (the whole image without detection).
    pub bbox: [f32; 4],
    pub landmarks: Option<[[f32; 2]; 5]>,
    pub detection_score: Option<f32>,
    /// The aligned crop (an `aligned_size` square with detection: the model card's).
    pub crop: RgbImage,
}

/// Every face of `img` as an aligned crop: detected and aligned with `detector`, or the whole
/// image as one crop without one. No face is an empty list, not an error.
#[cfg(any(feature = "tract", feature = "ort"))]
pub fn face_crops(
    img: &RgbImage,
    detector: Option<&mut crate::face::detect::Detector>,
    aligned_size: u32,
) -> Result<Vec<FaceCrop>> {
    let Some(detector) = detector else {
        let (w, h) = img.dimensions();
        return Ok(vec![FaceCrop {
            bbox: [0.0, 0.0, w as f32, h as f32],
            landmarks: None,
            detection_score: None,
            crop: img.clone(),
        }]);
    };
    let mut faces = Vec::new();
    for d in detector.detect(img)? {
        let Some((crop, _)) = crate::face::align::align(img, &d.landmarks, aligned_size) else {
            continue;
        };
        faces.push(FaceCrop {
            bbox: d.bbox,
            landmarks: Some(d.landmarks),
            detection_score: Some(d.score),
            crop,
        });
    }
    Ok(faces)
}
