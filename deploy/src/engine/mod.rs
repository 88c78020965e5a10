//! Inference engines behind one trait: tract (pure Rust, default) and ONNX Runtime (`ort`).

use crate::error::{Error, Result};
use std::path::Path;

#[cfg(feature = "ort")]
pub mod ort;
#[cfg(feature = "tract")]
pub mod tract;

/// Runs the exported classifier.
pub trait Engine: Send {
    fn name(&self) -> &'static str;
    /// `input`: `n * 3 * crop * crop` normalised floats (NCHW) -> logits, `n * classes`.
    fn logits(&mut self, input: &[f32], n: usize) -> Result<Vec<f32>>;
}

/// Which engine runs the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[cfg_attr(feature = "server", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum EngineKind {
    /// tract: pure Rust, no native library.
    Tract,
    /// ONNX Runtime, loaded from libonnxruntime.so (feature `ort`).
    Ort,
}

/// Loads `model` for inputs of `crop x crop` with the chosen engine and `threads` threads.
pub fn load(kind: EngineKind, model: &Path, crop: u32, threads: usize) -> Result<Box<dyn Engine>> {
    match kind {
        #[cfg(feature = "tract")]
        EngineKind::Tract => Ok(Box::new(tract::TractEngine::load(model, crop, threads)?)),
        #[cfg(feature = "ort")]
        EngineKind::Ort => Ok(Box::new(ort::OrtEngine::load(model, threads)?)),
        #[allow(unreachable_patterns)]
        other => Err(Error::Model(format!(
            "engine {other:?} is not compiled in (enable the cargo feature of the same name)"
        ))),
    }
}
