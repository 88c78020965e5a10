//! dmue-deploy: everything that runs without libtorch.
//!
//! This crate is also the single home of the conventions that training and deployment must
//! share: the classifier's preprocessing ([`preprocess`]) and the face alignment template
//! ([`face`]). `dmue-train` depends on it with default features off, so both sides use the
//! same code by construction.

pub mod face;
pub mod preprocess;
