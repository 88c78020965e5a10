//! dmue-train: DMUE (latent Distribution Mining + pairwise Uncertainty Estimation, CVPR 2021)
//! training on libtorch through tch.

pub mod analyze;
pub mod audit;
pub mod calibrate;
pub mod checkpoint;
pub mod config;
pub mod data;
pub mod dlib;
pub mod dynamics;
pub mod eval;
pub mod export;
pub mod init;
pub mod int8;
pub mod loss;
pub mod model;
pub mod optim;
pub mod plot;
pub mod prepare;
pub mod pretrain;
pub mod synth;
pub mod trainer;
pub mod util;
