//! `dmue-train pretrain`: the authors' MS-Celeb-1M step on any identity-labelled face set.
//!
//! A plain network (trunk + branch stage + an identity classifier, the baseline mode of `fit`)
//! is trained with softmax over the identities; `RUN/backbone.safetensors` then holds every
//! weight except that classifier, with the names `fit --init` reads (the branch stage goes into
//! every DMUE branch).

use crate::fit::config::{Config, Mode};
use crate::fit::trainer::{self, FitSummary};
use anyhow::{bail, Result};
use std::path::{Path, PathBuf};
use tch::Tensor;

pub const BACKBONE_FILE: &str = "backbone.safetensors";

/// Trains the identity network in `run` (resumable like `fit`) and writes the backbone file.
pub fn pretrain(cfg: &Config, run: &Path, resume: bool) -> Result<(FitSummary, PathBuf)> {
    if cfg.train.mode != Mode::Baseline {
        bail!("pretrain trains the plain network: train.mode must be baseline");
    }
    let summary = trainer::fit(cfg, run, resume)?;
    let path = write_backbone(run)?;
    Ok((summary, path))
}

/// Writes the newest checkpoint's weights, less the identity classifier, to
/// `RUN/backbone.safetensors`.
pub fn write_backbone(run: &Path) -> Result<PathBuf> {
    let (_, _, vs, _) = trainer::load_run(run, tch::Device::Cpu)?;
    let mut named: Vec<(String, Tensor)> = vs
        .variables()
        .into_iter()
        .filter(|(n, _)| !crate::model::init::is_fresh(n))
        .collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    let path = run.join(BACKBONE_FILE);
    let tmp = run.join(format!(".{BACKBONE_FILE}.tmp"));
    Tensor::write_safetensors(&named, &tmp)?;
    std::fs::rename(&tmp, &path)?;
    Ok(path)
}
