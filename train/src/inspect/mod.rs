//! Reading finished runs, never training: what a run believes about each training sample
//! (`analyze`) and the ranking of suspect labels (`audit`, `relabel`).

pub mod analyze;
pub mod audit;
