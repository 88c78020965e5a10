//! Checkpoints: `checkpoints/epoch-NNNN/{model.safetensors, optimizer.safetensors, state.json}`,
//! written into a temporary directory and renamed into place, then `checkpoints/latest` (the
//! name of the newest complete one) is replaced atomically. A crash at any point leaves the
//! previous checkpoint usable.

use crate::fit::optim::Adam;
use crate::util::write_atomic;
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use tch::nn::VarStore;

pub const MODEL_FILE: &str = "model.safetensors";
const OPTIM_FILE: &str = "optimizer.safetensors";
const STATE_FILE: &str = "state.json";
const LATEST: &str = "latest";

/// Everything besides the tensors that a resumed run needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// Number of completed epochs.
    pub epoch: usize,
    pub global_step: u64,
    pub optimizer_step: i64,
    /// Seed of the run; batches and augmentation of epoch e are drawn from (seed, e).
    pub seed: u64,
    pub best_accuracy: Option<f64>,
    pub best_epoch: Option<usize>,
    pub version: String,
    /// Processes the run trains on (1 without a distributed launch). The batches each rank
    /// draws depend on it, so a run resumes only on as many ranks as it was saved from.
    /// Written only when above 1, so one-process checkpoints are as before.
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub world_size: usize,
}

fn one() -> usize {
    1
}

fn is_one(n: &usize) -> bool {
    *n == 1
}

pub fn checkpoints_dir(run: &Path) -> PathBuf {
    run.join("checkpoints")
}

fn epoch_dir_name(epoch: usize) -> String {
    format!("epoch-{epoch:04}")
}

/// Saves a complete checkpoint, points `latest` at it and prunes old ones (keeping `keep`).
pub fn save(
    run: &Path,
    vs: &VarStore,
    opt: &Adam,
    state: &TrainState,
    keep: usize,
) -> Result<PathBuf> {
    let root = checkpoints_dir(run);
    std::fs::create_dir_all(&root).with_context(|| format!("cannot create {}", root.display()))?;
    let name = epoch_dir_name(state.epoch);
    let tmp = root.join(format!(".{name}.tmp"));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp)?;
    }
    std::fs::create_dir_all(&tmp)?;
    vs.save(tmp.join(MODEL_FILE))
        .with_context(|| format!("cannot write weights into {}", tmp.display()))?;
    opt.save(&tmp.join(OPTIM_FILE))?;
    write_atomic(
        &tmp.join(STATE_FILE),
        serde_json::to_string_pretty(state)?.as_bytes(),
    )?;
    let dst = root.join(&name);
    if dst.exists() {
        std::fs::remove_dir_all(&dst)?;
    }
    std::fs::rename(&tmp, &dst)
        .with_context(|| format!("cannot move checkpoint into {}", dst.display()))?;
    write_atomic(&root.join(LATEST), name.as_bytes())?;
    let existing = list_epochs(&root)?;
    for epoch in to_prune(&existing, keep.max(1)) {
        std::fs::remove_dir_all(root.join(epoch_dir_name(epoch))).ok();
    }
    Ok(dst)
}

fn list_epochs(root: &Path) -> Result<Vec<usize>> {
    let mut epochs = Vec::new();
    for entry in std::fs::read_dir(root)? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if let Some(e) = name.strip_prefix("epoch-").and_then(|s| s.parse().ok()) {
            epochs.push(e);
        }
    }
    Ok(epochs)
}

/// Which epochs to delete so that only the newest `keep` remain.
pub fn to_prune(epochs: &[usize], keep: usize) -> Vec<usize> {
    let mut sorted = epochs.to_vec();
    sorted.sort_unstable();
    let n = sorted.len().saturating_sub(keep);
    sorted.truncate(n);
    sorted
}

/// The newest complete checkpoint of a run, if any.
pub fn latest(run: &Path) -> Result<Option<(PathBuf, TrainState)>> {
    let root = checkpoints_dir(run);
    let Ok(name) = std::fs::read_to_string(root.join(LATEST)) else {
        return Ok(None);
    };
    let dir = root.join(name.trim());
    let state_path = dir.join(STATE_FILE);
    let state: TrainState = serde_json::from_str(
        &std::fs::read_to_string(&state_path)
            .with_context(|| format!("checkpoint {} is incomplete", dir.display()))?,
    )
    .with_context(|| format!("{} is corrupt", state_path.display()))?;
    Ok(Some((dir, state)))
}

/// Loads weights (and optimizer moments when `opt` is given) from a checkpoint directory.
pub fn restore(dir: &Path, vs: &mut VarStore, opt: Option<(&mut Adam, i64)>) -> Result<()> {
    vs.load(dir.join(MODEL_FILE))
        .with_context(|| format!("cannot load weights from {}", dir.display()))?;
    if let Some((opt, step)) = opt {
        opt.load(&dir.join(OPTIM_FILE), step)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prune_keeps_the_newest() {
        assert_eq!(to_prune(&[3, 1, 2, 5], 2), vec![1, 2]);
        assert_eq!(to_prune(&[1], 2), Vec::<usize>::new());
    }
}
