//! The model card: everything deployment needs to know about an exported model, stored as
//! `metadata_props` inside the ONNX file (contract 2). The exporter writes it with
//! [`ModelCard::to_props`]; `dmue-serve` reads it with [`ModelCard::from_onnx`]. Nothing in it is
//! re-typed anywhere else.

use crate::error::{Error, Result};
use crate::preprocess::Preprocess;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Version of the card's schema.
pub const CARD_FORMAT: &str = "dmue-model-card-v1";
/// Name of the graph input: `[N, 3, crop, crop]` float32, normalised per the card.
pub const INPUT_NAME: &str = "input";
/// Raw class scores `[N, C]`.
pub const LOGITS_NAME: &str = "logits";
/// `softmax(logits)` over the classes, `[N, C]`.
pub const PROBABILITIES_NAME: &str = "probabilities";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelCard {
    /// Class names in output order.
    pub classes: Vec<String>,
    pub preprocess: Preprocess,
    /// Alignment template the training crops were cut with (`crate::face::TEMPLATE_ID`).
    pub template_id: String,
    /// Side, in pixels, of the aligned crops the model was trained on (`prepare --size`, or
    /// the synthetic crops' size): dmue-serve warps faces at this size, as `prepare` did, so
    /// serving feeds the classifier the pixels training saw.
    pub aligned_size: u32,
    pub backbone: String,
    pub dataset: String,
    pub run_id: String,
    /// dmue version that exported the model.
    pub version: String,
    /// Calibration temperature T: probabilities are `softmax(logits / T)` (1 = uncalibrated;
    /// `dmue-train export --calibrate SPLIT` fits it on held-out data). The exported graph's
    /// `probabilities` output applies it too.
    pub temperature: f32,
    /// Set when the weights and activations are int8 (`dmue-train export --int8`): how the
    /// activation ranges were chosen and on which images. `None`: a float32 model.
    pub int8: Option<Int8Card>,
}

/// How an int8 (QDQ) model was quantized: the record `dmue.int8` of the card.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Int8Card {
    /// Activation-range method: `minmax` or `percentile-99.99`.
    pub method: String,
    /// Dataset, split and number of crops the activation ranges were collected on.
    pub calibration_dataset: String,
    pub calibration_split: String,
    pub calibration_images: usize,
}

impl ModelCard {
    /// Human-readable crop rule derived from the preprocessing (also stored in the file).
    pub fn crop_rule(&self) -> String {
        format!(
            "align with template {} to {}x{}, resize to {}x{}, centre crop {}x{}, RGB scaled to [0,1], \
             (x - mean) / std per channel, NCHW",
            self.template_id,
            self.aligned_size,
            self.aligned_size,
            self.preprocess.resize,
            self.preprocess.resize,
            self.preprocess.crop,
            self.preprocess.crop
        )
    }

    /// The calibrated class probabilities of one row of logits: `softmax(logits / T)`.
    pub fn probabilities(&self, logits: &[f32]) -> Vec<f32> {
        let scaled: Vec<f32> = logits.iter().map(|v| v / self.temperature).collect();
        crate::numeric::softmax(&scaled)
    }

    /// Whether the model learnt from dmue's synthetic benchmark (`dmue-train synth`, whose
    /// datasets, raw or prepared, are all named `synth-...`): it only knows drawn faces.
    pub fn trained_on_synthetic(&self) -> bool {
        self.dataset.starts_with("synth-")
    }

    /// The card as an ONNX model's `metadata_props` (what every exporter writes).
    pub fn to_metadata_props(&self) -> Vec<crate::onnx::pb::StringStringEntryProto> {
        self.to_props()
            .into_iter()
            .map(|(k, v)| crate::onnx::pb::StringStringEntryProto {
                key: Some(k),
                value: Some(v),
            })
            .collect()
    }

    /// The card as `metadata_props` entries (one readable key per fact, `dmue.*`).
    pub fn to_props(&self) -> Vec<(String, String)> {
        let mut props = vec![
            ("dmue.format".into(), CARD_FORMAT.into()),
            ("dmue.classes".into(), to_json(&self.classes)),
            ("dmue.input".into(), format!("{INPUT_NAME}: float32 [N, 3, {0}, {0}]", self.preprocess.crop)),
            ("dmue.outputs".into(), format!("{LOGITS_NAME}: float32 [N, C] raw scores; {PROBABILITIES_NAME}: float32 [N, C] softmax")),
            ("dmue.input_size".into(), self.preprocess.crop.to_string()),
            ("dmue.resize".into(), self.preprocess.resize.to_string()),
            ("dmue.mean".into(), to_json(&self.preprocess.mean)),
            ("dmue.std".into(), to_json(&self.preprocess.std)),
            ("dmue.crop_rule".into(), self.crop_rule()),
            ("dmue.template_id".into(), self.template_id.clone()),
            ("dmue.aligned_size".into(), self.aligned_size.to_string()),
            ("dmue.backbone".into(), self.backbone.clone()),
            ("dmue.dataset".into(), self.dataset.clone()),
            ("dmue.run_id".into(), self.run_id.clone()),
            ("dmue.version".into(), self.version.clone()),
            ("dmue.temperature".into(), self.temperature.to_string()),
        ];
        if let Some(q) = &self.int8 {
            props.push(("dmue.int8".into(), to_json(q)));
        }
        props
    }

    /// Reads the card back from `metadata_props`; a missing or malformed key is an error that
    /// names it.
    pub fn from_props(props: &[(String, String)]) -> Result<Self> {
        let format: String = prop(props, "dmue.format")?;
        if format != CARD_FORMAT {
            return Err(Error::Model(format!(
                "model card format {format:?} is not supported (expected {CARD_FORMAT})"
            )));
        }
        let classes: Vec<String> = prop(props, "dmue.classes")?;
        if classes.len() < 2 {
            return Err(Error::Model(format!(
                "metadata dmue.classes lists {} classes; at least 2 are needed",
                classes.len()
            )));
        }
        let preprocess = Preprocess {
            resize: prop(props, "dmue.resize")?,
            crop: prop(props, "dmue.input_size")?,
            mean: prop(props, "dmue.mean")?,
            std: prop(props, "dmue.std")?,
        };
        preprocess.validate()?;
        Ok(Self {
            classes,
            preprocess,
            template_id: prop(props, "dmue.template_id")?,
            // Models exported before the key existed were served at the template's size.
            aligned_size: if props.iter().any(|(k, _)| k == "dmue.aligned_size") {
                prop(props, "dmue.aligned_size")?
            } else {
                crate::face::ALIGNED_SIZE
            },
            backbone: prop(props, "dmue.backbone")?,
            dataset: prop(props, "dmue.dataset")?,
            run_id: prop(props, "dmue.run_id")?,
            version: prop(props, "dmue.version")?,
            temperature: temperature(props)?,
            int8: if props.iter().any(|(k, _)| k == "dmue.int8") {
                Some(prop(props, "dmue.int8")?)
            } else {
                None
            },
        })
    }

    pub fn from_onnx(path: &Path) -> Result<Self> {
        Self::from_props(&crate::onnx::metadata(&crate::onnx::read_model(path)?))
    }
}

/// `dmue.temperature`, 1 when absent (models exported before calibration existed).
fn temperature(props: &[(String, String)]) -> Result<f32> {
    if !props.iter().any(|(k, _)| k == "dmue.temperature") {
        return Ok(1.0);
    }
    let t: f32 = prop(props, "dmue.temperature")?;
    if !(t.is_finite() && t > 0.0) {
        return Err(Error::Model(format!(
            "metadata dmue.temperature must be a positive number, got {t}"
        )));
    }
    Ok(t)
}

/// JSON text of plain data (cannot fail for the card's types).
fn to_json<T: Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

/// Value of metadata key `k`: parsed as JSON (numbers, arrays), or taken as a plain string.
fn prop<T: serde::de::DeserializeOwned>(props: &[(String, String)], k: &str) -> Result<T> {
    let raw = props
        .iter()
        .find(|(key, _)| key == k)
        .map(|(_, v)| v.as_str())
        .ok_or_else(|| {
            Error::Model(format!(
                "the model has no {k} metadata: was it exported by dmue-train export?"
            ))
        })?;
    serde_json::from_str(raw)
        .or_else(|_| serde_json::from_value(serde_json::Value::String(raw.to_string())))
        .map_err(|e| Error::Model(format!("metadata {k} is malformed ({raw:?}): {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn card() -> ModelCard {
        ModelCard {
            classes: vec!["neutral".into(), "happy".into(), "sad".into()],
            preprocess: Preprocess {
                resize: 72,
                crop: 64,
                mean: [0.5, 0.4, 0.3],
                std: [0.2, 0.25, 0.3],
            },
            template_id: crate::face::TEMPLATE_ID.into(),
            aligned_size: 128,
            backbone: "resnet18 (width 16)".into(),
            dataset: "synth-aligned".into(),
            run_id: "runs/demo".into(),
            version: "0.1.0".into(),
            temperature: 1.5,
            int8: Some(Int8Card {
                method: "minmax".into(),
                calibration_dataset: "synth-aligned".into(),
                calibration_split: "train".into(),
                calibration_images: 200,
            }),
        }
    }

    #[test]
    fn temperature_scales_logits_and_defaults_to_one() {
        let c = card();
        // softmax([ln 3, 0, 0] / 1.5) = [3^(2/3), 1, 1] / (3^(2/3) + 2), by hand.
        let p = c.probabilities(&[3f32.ln(), 0.0, 0.0]);
        let a = 3f32.powf(2.0 / 3.0);
        assert!((p[0] - a / (a + 2.0)).abs() < 1e-6, "{p:?}");
        let mut props = c.to_props();
        props.retain(|(k, _)| k != "dmue.temperature");
        assert_eq!(ModelCard::from_props(&props).unwrap().temperature, 1.0);
        let mut props = c.to_props();
        props
            .iter_mut()
            .find(|(k, _)| k == "dmue.temperature")
            .unwrap()
            .1 = "0".into();
        assert!(ModelCard::from_props(&props)
            .unwrap_err()
            .to_string()
            .contains("temperature"));
    }

    /// The card's keys and values as written by hand (what the ONNX file carries, and what
    /// another exporter must write): the card writes exactly these, reads them back, and
    /// reads a changed value as a different card.
    #[test]
    fn round_trips_through_props() {
        let by_hand: Vec<(&str, &str)> = vec![
            ("dmue.format", CARD_FORMAT),
            ("dmue.classes", r#"["neutral","happy","sad"]"#),
            ("dmue.input", "input: float32 [N, 3, 64, 64]"),
            ("dmue.outputs", "logits: float32 [N, C] raw scores; probabilities: float32 [N, C] softmax"),
            ("dmue.input_size", "64"),
            ("dmue.resize", "72"),
            ("dmue.mean", "[0.5,0.4,0.3]"),
            ("dmue.std", "[0.2,0.25,0.3]"),
            ("dmue.crop_rule", "align with template dmue-5pt-256-v1 to 128x128, resize to 72x72, centre crop 64x64, RGB scaled to [0,1], (x - mean) / std per channel, NCHW"),
            ("dmue.template_id", "dmue-5pt-256-v1"),
            ("dmue.aligned_size", "128"),
            ("dmue.backbone", "resnet18 (width 16)"),
            ("dmue.dataset", "synth-aligned"),
            ("dmue.run_id", "runs/demo"),
            ("dmue.version", "0.1.0"),
            ("dmue.temperature", "1.5"),
            ("dmue.int8", r#"{"method":"minmax","calibration_dataset":"synth-aligned","calibration_split":"train","calibration_images":200}"#),
        ];
        let by_hand: Vec<(String, String)> = by_hand
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let c = card();
        assert_eq!(c.to_props(), by_hand);
        assert_eq!(ModelCard::from_props(&by_hand).unwrap(), c);
        for (key, value) in [
            ("dmue.mean", "[0.5,0.4,0.31]"),
            ("dmue.resize", "80"),
            ("dmue.classes", r#"["neutral","sad","happy"]"#),
            ("dmue.temperature", "1.25"),
        ] {
            let mut props = by_hand.clone();
            props.iter_mut().find(|(k, _)| k == key).unwrap().1 = value.into();
            assert_ne!(ModelCard::from_props(&props).unwrap(), c, "{key} = {value}");
        }
    }

    #[test]
    fn missing_and_malformed_keys_are_named() {
        let mut props = card().to_props();
        props.retain(|(k, _)| k != "dmue.classes");
        assert!(ModelCard::from_props(&props)
            .unwrap_err()
            .to_string()
            .contains("dmue.classes"));
        let mut props = card().to_props();
        props.iter_mut().find(|(k, _)| k == "dmue.mean").unwrap().1 = "[1, 2]".into();
        assert!(ModelCard::from_props(&props)
            .unwrap_err()
            .to_string()
            .contains("mean"));
        assert!(ModelCard::from_props(&[])
            .unwrap_err()
            .to_string()
            .contains("dmue-train export"));
    }
}
