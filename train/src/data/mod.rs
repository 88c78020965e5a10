//! Datasets: the manifest contract, loading crops into memory, batches and augmentation.

pub mod loader;
pub mod manifest;
pub mod sampler;
