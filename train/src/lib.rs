//! dmue-train: DMUE (latent Distribution Mining + pairwise Uncertainty Estimation, CVPR 2021)
//! training on libtorch through tch.
//!
//! The modules form layers; each uses only its own layer and those below
//! (`scripts/check-layers.py` checks it, `docs/architecture.md` explains it):
//! - 0 `util`: numeric helpers, statistics, file writing, plots;
//! - 1 `data` (datasets on disk, loading, batching), `model` (networks, initialisation);
//! - 2 `synth` (the synthetic benchmark), `prepare` (datasets as distributed -> aligned crops),
//!   `fit` (configuration, losses, training, evaluation, run folders);
//! - 3 `inspect` (read finished runs: analysis, label audit), `export` (ONNX, int8,
//!   calibration).

pub mod data;
pub mod dist;
pub mod export;
pub mod fit;
pub mod inspect;
pub mod model;
pub mod prepare;
pub mod synth;
pub mod util;
