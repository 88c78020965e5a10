//! Inference engines behind one trait: tract (pure Rust, default) and ONNX Runtime (`ort`).

use crate::error::{Error, Result};
use std::path::Path;

#[cfg(feature = "ort")]
pub mod ort;
#[cfg(feature = "tract")]
pub mod tract;

/// One output of a model: its shape and its values (row-major).
pub type Output = (Vec<usize>, Vec<f32>);

/// Runs an ONNX model with one float NCHW input (the classifier, the face detector).
pub trait Engine: Send {
    fn name(&self) -> &'static str;
    /// Runs `input` of `shape` and returns every output, in the model's output order.
    fn run(&mut self, input: &[f32], shape: [usize; 4]) -> Result<Vec<Output>>;
}

/// Which engine runs the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[cfg_attr(feature = "server", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum EngineKind {
    /// ONNX Runtime when its library is found (`ORT_DYLIB_PATH`, or `.venv/libonnxruntime.so`
    /// from scripts/setup.sh) and loads, else tract: the fast path wherever it exists.
    Auto,
    /// tract: pure Rust, no native library.
    Tract,
    /// ONNX Runtime, loaded from libonnxruntime.so (feature `ort`).
    Ort,
}

impl std::str::FromStr for EngineKind {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "auto" => Ok(EngineKind::Auto),
            "tract" => Ok(EngineKind::Tract),
            "ort" => Ok(EngineKind::Ort),
            _ => Err(format!(
                "unknown engine {s:?} (expected auto, tract or ort)"
            )),
        }
    }
}

/// One thread per core: the default thread count of dmue-serve, `prepare` and `export --int8`.
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Loads `model` with the chosen engine and `threads` threads. `Auto` tries ONNX Runtime and
/// falls back to tract when its library is absent or does not load (the engine's `name()`
/// says which one runs).
pub fn load(kind: EngineKind, model: &Path, threads: usize) -> Result<Box<dyn Engine>> {
    match kind {
        EngineKind::Auto => {
            #[cfg(feature = "ort")]
            if ort::library_path().is_some_and(|p| p.exists()) {
                if let Ok(e) = ort::OrtEngine::load(model, threads) {
                    return Ok(Box::new(e));
                }
            }
            load(EngineKind::Tract, model, threads)
        }
        #[cfg(feature = "tract")]
        EngineKind::Tract => Ok(Box::new(tract::TractEngine::load(model, threads)?)),
        #[cfg(feature = "ort")]
        EngineKind::Ort => Ok(Box::new(ort::OrtEngine::load(model, threads)?)),
        #[allow(unreachable_patterns)]
        other => Err(Error::Model(format!(
            "engine {other:?} is not compiled in (enable the cargo feature of the same name)"
        ))),
    }
}
