//! tract engine: the model is optimised once for a symbolic batch `N` and run on any batch size.

use super::Engine;
use crate::error::{Error, Result};
use std::path::Path;
use tract_onnx::prelude::*;

pub struct TractEngine {
    plan: std::sync::Arc<TypedSimplePlan>,
    crop: usize,
}

fn model_err(path: &Path) -> impl Fn(TractError) -> Error + '_ {
    move |e| Error::Model(format!("tract cannot load {}: {e:#}", path.display()))
}

impl TractEngine {
    /// `threads` > 1 runs matrix products on a thread pool of that size (process-wide).
    pub fn load(path: &Path, crop: u32, threads: usize) -> Result<Self> {
        if threads > 1 {
            tract_linalg::multithread::set_default_executor(
                tract_linalg::multithread::Executor::multithread(threads),
            );
        }
        let mut model = tract_onnx::onnx()
            .model_for_path(path)
            .map_err(model_err(path))?;
        let n = model.symbols.sym("N");
        let c = crop as i64;
        let shape: TVec<TDim> = tvec![n.into(), 3.into(), c.into(), c.into()];
        model
            .set_input_fact(0, f32::fact(shape).into())
            .map_err(model_err(path))?;
        let plan = model
            .into_optimized()
            .and_then(|m| m.into_runnable())
            .map_err(model_err(path))?;
        Ok(Self {
            plan,
            crop: crop as usize,
        })
    }
}

impl Engine for TractEngine {
    fn name(&self) -> &'static str {
        "tract"
    }

    fn logits(&mut self, input: &[f32], n: usize) -> Result<Vec<f32>> {
        let c = self.crop;
        let x = Tensor::from_shape(&[n, 3, c, c], input)
            .map_err(|e| Error::Engine(format!("{e:#}")))?;
        let out = self
            .plan
            .run(tvec!(x.into()))
            .map_err(|e| Error::Engine(format!("{e:#}")))?;
        let logits = out[0]
            .to_plain_array_view::<f32>()
            .map_err(|e| Error::Engine(format!("{e:#}")))?;
        Ok(logits.iter().copied().collect())
    }
}
