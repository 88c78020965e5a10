//! tract engine. The model is optimised once for batch 1 and a batch is run image by image:
//! with concrete shapes tract picks better kernels, and on ResNet-18 at 224 (2-core EPYC, one
//! thread) that measured 49 ms per image, against 67 ms with a symbolic batch dimension at
//! batch 1 and 78 ms per image at batch 8 (docs/performance.md).

use super::Engine;
use crate::error::{Error, Result};
use std::path::Path;
use std::sync::Arc;
use tract_onnx::prelude::*;

pub struct TractEngine {
    plan: Arc<TypedSimplePlan>,
    crop: usize,
}

impl TractEngine {
    /// `threads` > 1 runs matrix products on a thread pool of that size (process-wide).
    pub fn load(path: &Path, crop: u32, threads: usize) -> Result<Self> {
        if threads > 1 {
            tract_linalg::multithread::set_default_executor(
                tract_linalg::multithread::Executor::multithread(threads),
            );
        }
        let err =
            |e: TractError| Error::Model(format!("tract cannot load {}: {e:#}", path.display()));
        let mut model = tract_onnx::onnx().model_for_path(path).map_err(err)?;
        let c = crop as i64;
        let shape: TVec<TDim> = tvec![1.into(), 3.into(), c.into(), c.into()];
        model
            .set_input_fact(0, f32::fact(shape).into())
            .map_err(err)?;
        let plan = model
            .into_optimized()
            .and_then(|m| m.into_runnable())
            .map_err(err)?;
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
        let err = |e: TractError| Error::Engine(format!("{e:#}"));
        let per = 3 * self.crop * self.crop;
        if input.len() != n * per {
            return Err(Error::Engine(format!(
                "{} input values for {n} images of {per}",
                input.len()
            )));
        }
        let mut logits = Vec::new();
        for image in input.chunks(per) {
            let x = Tensor::from_shape(&[1, 3, self.crop, self.crop], image).map_err(err)?;
            let out = self.plan.run(tvec!(x.into())).map_err(err)?;
            logits.extend(
                out[0]
                    .to_plain_array_view::<f32>()
                    .map_err(err)?
                    .iter()
                    .copied(),
            );
        }
        Ok(logits)
    }
}
