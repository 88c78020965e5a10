//! ONNX Runtime engine, loading `libonnxruntime.so` at run time (no download at build time).
//! The library is `ORT_DYLIB_PATH` when set, else `.venv/libonnxruntime.so` (made by
//! scripts/setup.sh from PyPI's onnxruntime wheel) next to the current directory or its parents.

use super::{Engine, Output};
use crate::error::{Error, Result};
use ort::session::builder::GraphOptimizationLevel;
use ort::session::Session;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

pub struct OrtEngine {
    session: Session,
}

/// Where libonnxruntime.so is looked for.
pub fn library_path() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH") {
        return Some(PathBuf::from(p));
    }
    let mut dir = std::env::current_dir().ok();
    while let Some(d) = dir {
        let candidate = d.join(".venv/libonnxruntime.so");
        if candidate.exists() {
            return Some(candidate);
        }
        dir = d.parent().map(Path::to_path_buf);
    }
    None
}

/// ONNX Runtime allows one environment per process: create it once and keep it.
fn environment() -> Result<&'static ort::environment::Environment> {
    static ENV: OnceLock<std::result::Result<ort::environment::Environment, String>> =
        OnceLock::new();
    ENV.get_or_init(|| {
        let path = library_path().ok_or_else(|| {
            "ONNX Runtime library not found: run scripts/setup.sh or set ORT_DYLIB_PATH to libonnxruntime.so".to_string()
        })?;
        let builder = ort::init_from(&path).map_err(|e| format!("cannot load ONNX Runtime from {}: {e}", path.display()))?;
        builder.with_name("dmue").build().map_err(|e| format!("ONNX Runtime environment: {e}"))
    })
    .as_ref()
    .map_err(|e| Error::Model(e.clone()))
}

impl OrtEngine {
    pub fn load(path: &Path, threads: usize) -> Result<Self> {
        let env = environment()?;
        let err = |e: ort::Error| {
            Error::Model(format!("ONNX Runtime cannot load {}: {e}", path.display()))
        };
        let session = Session::builder(env)
            .map_err(err)?
            .with_optimization_level(GraphOptimizationLevel::Level3)
            .map_err(|e| err(e.into()))?
            .with_intra_threads(threads.max(1))
            .map_err(|e| err(e.into()))?
            // Idle workers sleep instead of spinning: the detector's and the classifier's
            // sessions run one after the other, and a spinning pool would steal the cores
            // the other session needs.
            .with_intra_op_spinning(std::env::var_os("DMUE_ORT_SPIN").is_some())
            .map_err(|e| err(e.into()))?
            .commit_from_file(path)
            .map_err(err)?;
        Ok(Self { session })
    }
}

impl Engine for OrtEngine {
    fn name(&self) -> &'static str {
        "ort"
    }

    fn run(&mut self, input: &[f32], shape: [usize; 4]) -> Result<Vec<Output>> {
        let err = |e: ort::Error| Error::Engine(e.to_string());
        let dims = shape.map(|d| d as i64);
        let x = ort::value::Tensor::from_array((dims, input.to_vec())).map_err(err)?;
        let input_name = self.session.inputs()[0].name().to_string();
        let outputs = self
            .session
            .run(ort::inputs![input_name => x])
            .map_err(err)?;
        let mut result = Vec::new();
        for (_, value) in outputs.iter() {
            let (shape, data) = value.try_extract_tensor::<f32>().map_err(err)?;
            result.push((shape.iter().map(|&d| d as usize).collect(), data.to_vec()));
        }
        Ok(result)
    }
}
