//! dmue-deploy: everything that runs without libtorch.
//!
//! This crate is also the single home of the conventions that training and deployment must
//! share: the classifier's preprocessing ([`preprocess`]), the face alignment template
//! ([`face`]) and the model card stored in every exported model ([`model_card`]).
//! `dmue-train` depends on it with default features off, so both sides use the same code by
//! construction.

pub mod engine;
pub mod error;
pub mod face;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod image_io;
#[cfg(feature = "logging")]
pub mod logging;
pub mod model_card;
pub mod numeric;
pub mod onnx;
pub mod pipeline;
pub mod preprocess;
#[cfg(feature = "server")]
pub mod server;
#[cfg(feature = "server")]
pub mod web;
