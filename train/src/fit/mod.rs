//! Training: configuration, losses, optimiser, checkpoints, the training loop, label
//! dynamics, evaluation and identity pretraining.

pub mod checkpoint;
pub mod config;
pub mod dynamics;
pub mod eval;
pub mod loss;
pub mod optim;
pub mod pretrain;
pub mod trainer;
