//! Per-image training dynamics (`RUN/label-dynamics.safetensors`), for the label audit.
//!
//! Every epoch, for every training image: the mean over its appearances in that epoch (training
//! mode, augmented, as the loss saw it) of the target branch's probability of the annotated
//! label, and of its margin (that probability minus the largest other one). A wrong label is
//! learned late or never, so its probability stays low across epochs even when the last epoch
//! has half memorised it (Swayamdipta et al. 2020's "confidence", Pleiss et al. 2020's margin).
//!
//! Accumulated on the device with `index_add_` (no host sync per step) and written once per
//! epoch, before the checkpoint, so a resumed run keeps the epochs it has.

use anyhow::{Context, Result};
use std::path::Path;
use tch::{Device, Kind, Tensor};

pub const FILE: &str = "label-dynamics.safetensors";

pub struct LabelDynamics {
    sum_prob: Tensor,
    sum_margin: Tensor,
    count: Tensor,
    /// Finished epochs: their numbers and `[N]` rows (CPU).
    epochs: Vec<i64>,
    prob: Vec<Tensor>,
    margin: Vec<Tensor>,
}

/// The recorded dynamics: `prob[e][i]` and `margin[e][i]` for epoch `epochs[e]` and training
/// image i (split order); NaN when the image was not drawn that epoch.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub epochs: Vec<i64>,
    pub prob: Vec<Vec<f32>>,
    pub margin: Vec<Vec<f32>>,
}

impl Recorded {
    /// Mean over the recorded epochs of `rows[e][i]` for each image, NaN epochs left out.
    pub fn mean(rows: &[Vec<f32>]) -> Vec<f32> {
        let n = rows.first().map_or(0, |r| r.len());
        (0..n)
            .map(|i| {
                let vals: Vec<f32> = rows
                    .iter()
                    .map(|r| r[i])
                    .filter(|v| v.is_finite())
                    .collect();
                if vals.is_empty() {
                    f32::NAN
                } else {
                    vals.iter().sum::<f32>() / vals.len() as f32
                }
            })
            .collect()
    }
}

fn to_rows(t: &Tensor) -> Result<Vec<Vec<f32>>> {
    t.size2().context("label dynamics must be 2-d")?;
    Ok(crate::util::stats::rows_of(t))
}

/// Reads `run`'s dynamics; None when the run has none (trained before they were recorded).
pub fn read(run: &Path) -> Result<Option<Recorded>> {
    let path = run.join(FILE);
    if !path.exists() {
        return Ok(None);
    }
    let named = Tensor::read_safetensors(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let get = |name: &str| {
        named
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, t)| t.shallow_clone())
            .with_context(|| format!("{} has no tensor {name}", path.display()))
    };
    let epochs = Vec::<i64>::try_from(get("epochs")?.to_kind(Kind::Int64))?;
    Ok(Some(Recorded {
        epochs,
        prob: to_rows(&get("label_prob")?)?,
        margin: to_rows(&get("margin")?)?,
    }))
}

impl LabelDynamics {
    /// Empty accumulators for `n` training images; a resumed run (`epochs_done` > 0) keeps the
    /// epochs its file has up to `epochs_done`.
    pub fn start(run: &Path, n: usize, epochs_done: usize, device: Device) -> Result<Self> {
        let zeros = || Tensor::zeros([n as i64], (Kind::Float, device));
        let mut d = Self {
            sum_prob: zeros(),
            sum_margin: zeros(),
            count: zeros(),
            epochs: Vec::new(),
            prob: Vec::new(),
            margin: Vec::new(),
        };
        if epochs_done > 0 {
            if let Some(r) = read(run)? {
                for (k, &e) in r.epochs.iter().enumerate() {
                    if e as usize <= epochs_done && r.prob[k].len() == n {
                        d.epochs.push(e);
                        d.prob.push(Tensor::from_slice(&r.prob[k]));
                        d.margin.push(Tensor::from_slice(&r.margin[k]));
                    }
                }
            }
        }
        Ok(d)
    }

    /// Adds one step's target logits `[B, C]` for the images `indices` (int64 `[B]`, on the
    /// logits' device) with `labels` `[B]`.
    pub fn record(&self, logits: &Tensor, labels: &Tensor, indices: &Tensor) {
        tch::no_grad(|| {
            let p = logits
                .detach()
                .to_kind(Kind::Float)
                .softmax(-1, Kind::Float);
            let y = labels.unsqueeze(1);
            let py = p.gather(1, &y, false).squeeze_dim(1);
            let other = p.scatter_value(1, &y, -1.0).amax([1].as_slice(), false);
            let idx = indices;
            let _ = self.sum_prob.shallow_clone().index_add_(0, idx, &py);
            let _ = self
                .sum_margin
                .shallow_clone()
                .index_add_(0, idx, &(&py - other));
            let _ = self
                .count
                .shallow_clone()
                .index_add_(0, idx, &py.ones_like());
        });
    }

    /// The epoch's running sums (a distributed job adds them up across its ranks before
    /// [`LabelDynamics::finish_epoch`]).
    pub fn accumulators(&self) -> [&Tensor; 3] {
        [&self.sum_prob, &self.sum_margin, &self.count]
    }

    /// Restarts the running sums (what [`LabelDynamics::finish_epoch`] does after using them;
    /// ranks other than 0 of a distributed job, which write nothing, call it alone).
    pub fn clear(&self) {
        for t in [&self.sum_prob, &self.sum_margin, &self.count] {
            let _ = t.shallow_clone().zero_();
        }
    }

    /// Closes `epoch`: its means become a row (NaN for images not drawn), the accumulators
    /// restart, and the file is rewritten atomically.
    pub fn finish_epoch(&mut self, run: &Path, epoch: usize) -> Result<()> {
        let mean = |sum: &Tensor| {
            let nan = Tensor::full_like(sum, f64::NAN);
            (sum / self.count.clamp_min(1.0))
                .where_self(&self.count.gt(0.0), &nan)
                .to_device(Device::Cpu)
        };
        self.epochs.push(epoch as i64);
        self.prob.push(mean(&self.sum_prob));
        self.margin.push(mean(&self.sum_margin));
        self.clear();
        let tmp = crate::util::tmp_path(&run.join(FILE));
        Tensor::write_safetensors(
            &[
                ("epochs", Tensor::from_slice(&self.epochs)),
                ("label_prob", Tensor::stack(&self.prob, 0)),
                ("margin", Tensor::stack(&self.margin, 0)),
            ],
            &tmp,
        )
        .with_context(|| format!("cannot write {}", tmp.display()))?;
        std::fs::rename(&tmp, run.join(FILE))
            .with_context(|| format!("cannot write {}", run.join(FILE).display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dynamics_by_hand() {
        let dir = std::env::temp_dir().join(format!("dmue-dyn-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut d = LabelDynamics::start(&dir, 3, 0, Device::Cpu).unwrap();
        // Image 0 label 0, logits [ln 3, 0] -> p = [0.75, 0.25]: prob 0.75, margin 0.5.
        // Image 2 drawn twice: label 1 with [0, 0] (0.5, 0) and [0, ln 3] (0.75, 0.5).
        let logits = Tensor::from_slice(&[3f32.ln(), 0.0, 0.0, 0.0, 0.0, 3f32.ln()]).view([3, 2]);
        d.record(
            &logits,
            &Tensor::from_slice(&[0i64, 1, 1]),
            &Tensor::from_slice(&[0i64, 2, 2]),
        );
        d.finish_epoch(&dir, 1).unwrap();
        // Epoch 2: only image 1 (label 0, p 0.25, margin -0.5).
        let logits = Tensor::from_slice(&[0.0f32, 3f32.ln()]).view([1, 2]);
        d.record(
            &logits,
            &Tensor::from_slice(&[0i64]),
            &Tensor::from_slice(&[1i64]),
        );
        d.finish_epoch(&dir, 2).unwrap();
        let r = read(&dir).unwrap().unwrap();
        assert_eq!(r.epochs, vec![1, 2]);
        let close = |a: f32, b: f32| assert!((a - b).abs() < 1e-6, "{a} vs {b}");
        close(r.prob[0][0], 0.75);
        assert!(r.prob[0][1].is_nan());
        close(r.prob[0][2], 0.625);
        close(r.margin[0][2], 0.25);
        close(r.margin[1][1], -0.5);
        let m = Recorded::mean(&r.prob);
        close(m[0], 0.75);
        close(m[1], 0.25);
        // A resumed run keeps only the epochs it has finished.
        let again = LabelDynamics::start(&dir, 3, 1, Device::Cpu).unwrap();
        assert_eq!(again.epochs, vec![1]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
