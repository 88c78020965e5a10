//! tract engine. A plan is optimised for each input shape with batch 1 (built on first use and
//! kept), and a batch is run image by image: with concrete shapes tract picks better kernels.
//! On ResNet-18 at 224 (2-core EPYC, one thread) that measured 49 ms per image, against 67 ms
//! with a symbolic batch dimension at batch 1 and 78 ms per image at batch 8
//! (docs/performance.md).

use super::{Engine, Output};
use crate::error::{Error, Result};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tract_onnx::prelude::*;

pub struct TractEngine {
    path: PathBuf,
    model: InferenceModel,
    /// Optimised plans by `[C, H, W]` of a single image, with the tick of their last use.
    plans: HashMap<[usize; 3], (Arc<TypedSimplePlan>, u64)>,
    tick: u64,
}

/// Plans kept per engine. Each input shape (for the detector: each photo size after scaling)
/// gets its own plan, so a client sending photos of many sizes would otherwise grow the cache,
/// and the server's memory, without bound; the least recently used plan goes first.
pub const MAX_PLANS: usize = 16;

impl TractEngine {
    /// `threads` > 1 runs matrix products on a thread pool of that size (process-wide).
    pub fn load(path: &Path, threads: usize) -> Result<Self> {
        let model = tract_onnx::onnx()
            .model_for_path(path)
            .map_err(|e| Error::Model(format!("tract cannot load {}: {e:#}", path.display())))?;
        Ok(Self::new(path.to_path_buf(), model, threads))
    }

    fn new(path: PathBuf, model: InferenceModel, threads: usize) -> Self {
        if threads > 1 {
            tract_linalg::multithread::set_default_executor(
                tract_linalg::multithread::Executor::multithread(threads),
            );
        }
        Self {
            path,
            model,
            plans: HashMap::new(),
            tick: 0,
        }
    }

    /// Loads a model held in memory (`name` appears in errors) whose outputs are the named
    /// tensors, in that order, instead of the graph's own outputs: `dmue-train export --int8`
    /// reads the activations of the fp32 graph this way.
    pub fn from_bytes_with_outputs(
        name: &str,
        bytes: &[u8],
        outputs: &[String],
        threads: usize,
    ) -> Result<Self> {
        let mut model = tract_onnx::onnx()
            .model_for_read(&mut std::io::Cursor::new(bytes))
            .map_err(|e| Error::Model(format!("tract cannot load {name}: {e:#}")))?;
        model
            .select_outputs_by_name(outputs)
            .map_err(|e| Error::Model(format!("{name}: cannot select outputs: {e:#}")))?;
        Ok(Self::new(PathBuf::from(name), model, threads))
    }

    /// Optimised plans held now.
    pub fn plans(&self) -> usize {
        self.plans.len()
    }

    fn plan(&mut self, chw: [usize; 3]) -> Result<Arc<TypedSimplePlan>> {
        self.tick += 1;
        if let Some((p, used)) = self.plans.get_mut(&chw) {
            *used = self.tick;
            return Ok(p.clone());
        }
        if self.plans.len() >= MAX_PLANS {
            if let Some(oldest) = self
                .plans
                .iter()
                .min_by_key(|(_, (_, t))| *t)
                .map(|(k, _)| *k)
            {
                self.plans.remove(&oldest);
            }
        }
        let mut m = self.model.clone();
        let shape: TVec<TDim> = tvec![1.into(), chw[0].into(), chw[1].into(), chw[2].into()];
        let plan = m
            .set_input_fact(0, f32::fact(shape).into())
            .and_then(|_| m.into_optimized())
            .and_then(|m| m.into_runnable())
            .map_err(|e| {
                Error::Model(format!(
                    "tract cannot prepare {} for input {chw:?}: {e:#}",
                    self.path.display()
                ))
            })?;
        self.plans.insert(chw, (plan.clone(), self.tick));
        Ok(plan)
    }
}

impl Engine for TractEngine {
    fn name(&self) -> &'static str {
        "tract"
    }

    fn run(&mut self, input: &[f32], shape: [usize; 4]) -> Result<Vec<Output>> {
        let [n, c, h, w] = shape;
        let per = c * h * w;
        if input.len() != n * per {
            return Err(Error::Engine(format!(
                "{} input values for shape {shape:?}",
                input.len()
            )));
        }
        let plan = self.plan([c, h, w])?;
        let err = |e: TractError| Error::Engine(format!("{e:#}"));
        let mut outputs: Vec<Output> = Vec::new();
        for image in input.chunks(per) {
            let x = Tensor::from_shape(&[1, c, h, w], image).map_err(err)?;
            let out = plan.run(tvec!(x.into())).map_err(err)?;
            if outputs.is_empty() {
                outputs = out
                    .iter()
                    .map(|t| (t.shape().to_vec(), Vec::new()))
                    .collect();
            }
            for (slot, t) in outputs.iter_mut().zip(out.iter()) {
                slot.1
                    .extend(t.to_plain_array_view::<f32>().map_err(err)?.iter().copied());
            }
        }
        for slot in &mut outputs {
            if let Some(b) = slot.0.first_mut() {
                *b = n;
            }
        }
        Ok(outputs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::onnx::pb;
    use prost::Message;

    /// `y = relu(x)` with every input dimension symbolic: any shape makes a plan of its own.
    fn relu_model() -> Vec<u8> {
        use pb::tensor_shape_proto::{dimension::Value, Dimension};
        let any = |names: &[&str]| {
            Some(pb::TypeProto {
                value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                    elem_type: Some(pb::tensor_proto::DataType::Float as i32),
                    shape: Some(pb::TensorShapeProto {
                        dim: names
                            .iter()
                            .map(|n| Dimension {
                                value: Some(Value::DimParam(n.to_string())),
                                ..Default::default()
                            })
                            .collect(),
                    }),
                })),
                ..Default::default()
            })
        };
        pb::ModelProto {
            ir_version: Some(8),
            opset_import: vec![pb::OperatorSetIdProto {
                domain: Some(String::new()),
                version: Some(17),
            }],
            graph: Some(pb::GraphProto {
                name: Some("relu".into()),
                node: vec![pb::NodeProto {
                    op_type: Some("Relu".into()),
                    input: vec!["x".into()],
                    output: vec!["y".into()],
                    ..Default::default()
                }],
                input: vec![pb::ValueInfoProto {
                    name: Some("x".into()),
                    r#type: any(&["n", "c", "h", "w"]),
                    ..Default::default()
                }],
                output: vec![pb::ValueInfoProto {
                    name: Some("y".into()),
                    r#type: any(&["n", "c", "h", "w"]),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        }
        .encode_to_vec()
    }

    #[test]
    fn plans_are_bounded_and_the_least_recently_used_goes() {
        let mut e =
            TractEngine::from_bytes_with_outputs("relu", &relu_model(), &["y".into()], 1).unwrap();
        let run = |e: &mut TractEngine, h: usize| {
            let out = e.run(&vec![-1.0; 2 * h], [1, 1, h, 2]).unwrap();
            assert_eq!(out[0].1, vec![0.0; 2 * h]);
        };
        for h in 1..=MAX_PLANS {
            run(&mut e, h);
        }
        assert_eq!(e.plans(), MAX_PLANS);
        run(&mut e, 1); // shape 1 is now the most recently used; shape 2 the least
        run(&mut e, MAX_PLANS + 1);
        assert_eq!(e.plans(), MAX_PLANS);
        assert!(e.plans.contains_key(&[1, 1, 2]));
        assert!(!e.plans.contains_key(&[1, 2, 2]));
        for h in 100..140 {
            run(&mut e, h);
        }
        assert_eq!(e.plans(), MAX_PLANS);
    }
}
