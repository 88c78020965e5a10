//! Evaluation: accuracy, per-class recall, confusion matrix (JSON + PNG).

use crate::data::loader::{eval_batch, SplitImages};
use crate::dist::Comm;
use crate::model::MultiBranchNet;
use anyhow::Result;
use dmue_deploy::preprocess::Preprocess;
use serde::{Deserialize, Serialize};
use std::path::Path;
use tch::{Device, Kind, Tensor};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalReport {
    pub split: String,
    pub images: usize,
    pub skipped: usize,
    pub accuracy: f64,
    /// Mean of the per-class recalls (robust to class imbalance).
    pub mean_class_recall: f64,
    pub classes: Vec<String>,
    pub per_class_recall: Vec<f64>,
    /// `confusion[true][predicted]` counts.
    pub confusion: Vec<Vec<u64>>,
}

/// Target-branch logits of every image of `data` (centre crop), row-major `[N, C]`.
pub fn logits(
    net: &MultiBranchNet,
    data: &SplitImages,
    pre: &Preprocess,
    device: Device,
    batch: usize,
) -> Vec<f32> {
    let all: Vec<usize> = (0..data.len()).collect();
    logits_of(net, data, &all, pre, device, batch)
}

/// Target-branch logits of the images `which` of `data`, row-major `[which.len(), C]`.
fn logits_of(
    net: &MultiBranchNet,
    data: &SplitImages,
    which: &[usize],
    pre: &Preprocess,
    device: Device,
    batch: usize,
) -> Vec<f32> {
    let mut out = Vec::new();
    tch::no_grad(|| {
        for idx in which.chunks(batch.max(1)) {
            let (x, _) = eval_batch(data, idx, pre).to_device(pre.crop, device);
            let l = net
                .forward_target(&x)
                .to_kind(Kind::Float)
                .to_device(Device::Cpu)
                .flatten(0, -1);
            out.extend(Vec::<f32>::try_from(&l).expect("float logits"));
        }
    });
    out
}

/// Predicted class of every image of `data` (target branch, centre crop).
pub fn predict(
    net: &MultiBranchNet,
    data: &SplitImages,
    pre: &Preprocess,
    device: Device,
    batch: usize,
) -> Vec<usize> {
    let l = logits(net, data, pre, device, batch);
    let c = if data.is_empty() {
        1
    } else {
        l.len() / data.len()
    };
    l.chunks(c.max(1)).map(crate::util::stats::argmax).collect()
}

/// Accuracy, recall per class and the confusion matrix of `preds` against `labels`.
pub fn report(
    split: &str,
    classes: &[String],
    labels: &[usize],
    preds: &[usize],
    skipped: usize,
) -> EvalReport {
    let c = classes.len();
    let mut confusion = vec![vec![0u64; c]; c];
    for (&y, &p) in labels.iter().zip(preds) {
        confusion[y][p] += 1;
    }
    let correct: u64 = (0..c).map(|k| confusion[k][k]).sum();
    let per_class_recall: Vec<f64> = confusion
        .iter()
        .enumerate()
        .map(|(k, row)| {
            let n: u64 = row.iter().sum();
            if n == 0 {
                f64::NAN
            } else {
                row[k] as f64 / n as f64
            }
        })
        .collect();
    let present: Vec<f64> = per_class_recall
        .iter()
        .copied()
        .filter(|r| r.is_finite())
        .collect();
    EvalReport {
        split: split.to_string(),
        images: labels.len(),
        skipped,
        accuracy: if labels.is_empty() {
            0.0
        } else {
            correct as f64 / labels.len() as f64
        },
        mean_class_recall: present.iter().sum::<f64>() / present.len().max(1) as f64,
        classes: classes.to_vec(),
        per_class_recall,
        confusion,
    }
}

pub fn evaluate(
    net: &MultiBranchNet,
    data: &SplitImages,
    classes: &[String],
    pre: &Preprocess,
    device: Device,
) -> EvalReport {
    let preds = predict(net, data, pre, device, 128);
    report(
        &data.split.to_string(),
        classes,
        &data.labels,
        &preds,
        data.skipped.len(),
    )
}

/// [`evaluate`] in a distributed job: rank r computes the logits of images r, r + n, r + 2n...
/// and the ranks add their rows into one table, so every rank reports on the whole split, as
/// one process would (with rank 0's batch-norm statistics, which the caller shares first).
pub fn evaluate_sharded(
    net: &MultiBranchNet,
    data: &SplitImages,
    classes: &[String],
    pre: &Preprocess,
    device: Device,
    comm: &Comm,
) -> Result<EvalReport> {
    if comm.size() == 1 {
        return Ok(evaluate(net, data, classes, pre, device));
    }
    let mine: Vec<usize> = (comm.rank()..data.len()).step_by(comm.size()).collect();
    let c = classes.len() as i64;
    let local = logits_of(net, data, &mine, pre, device, 128);
    let rows = Tensor::from_slice(&local).view([mine.len() as i64, c]);
    let at: Vec<i64> = mine.iter().map(|&i| i as i64).collect();
    let table = crate::dist::gather_rows(comm, &rows, &at, data.len() as i64)?;
    let all = Vec::<f32>::try_from(table.to_device(Device::Cpu).flatten(0, -1))?;
    let preds: Vec<usize> = all
        .chunks(classes.len().max(1))
        .map(crate::util::stats::argmax)
        .collect();
    Ok(report(
        &data.split.to_string(),
        classes,
        &data.labels,
        &preds,
        data.skipped.len(),
    ))
}

/// One image's prediction (`dmue-train eval --predictions FILE`, one JSON line each).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Prediction {
    /// As in the manifest (relative to the dataset directory).
    pub path: String,
    /// The annotated label.
    pub label: usize,
    pub predicted: usize,
    /// Softmax of the target branch's logits (temperature 1: the run, not an exported model).
    pub probabilities: Vec<f32>,
}

/// Every image of `data` with its softmax, in split order.
pub fn predictions(
    net: &MultiBranchNet,
    data: &SplitImages,
    ds: &crate::data::manifest::Dataset,
    pre: &Preprocess,
    device: Device,
) -> Vec<Prediction> {
    let l = logits(net, data, pre, device, 128);
    let c = ds.num_classes();
    l.chunks(c)
        .enumerate()
        .map(|(i, row)| Prediction {
            path: ds.rows[data.rows[i]].path.clone(),
            label: data.labels[i],
            predicted: crate::util::stats::argmax(row),
            probabilities: dmue_deploy::numeric::softmax(row),
        })
        .collect()
}

/// Writes `eval-SPLIT.json` and `confusion-SPLIT.png` into `dir`.
pub fn write(dir: &Path, r: &EvalReport) -> Result<()> {
    crate::util::write_atomic(
        &dir.join(format!("eval-{}.json", r.split)),
        serde_json::to_string_pretty(r)?.as_bytes(),
    )?;
    let title = format!(
        "{} split: accuracy {:.2}% ({} images)",
        r.split,
        100.0 * r.accuracy,
        r.images
    );
    crate::util::plot::confusion_png(
        &dir.join(format!("confusion-{}.png", r.split)),
        &r.classes,
        &r.confusion,
        &title,
    )
}

impl std::fmt::Display for EvalReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "{} split: {} images ({} skipped)",
            self.split, self.images, self.skipped
        )?;
        writeln!(f, "  accuracy          {:6.2}%", 100.0 * self.accuracy)?;
        writeln!(
            f,
            "  mean class recall {:6.2}%",
            100.0 * self.mean_class_recall
        )?;
        for (name, r) in self.classes.iter().zip(&self.per_class_recall) {
            writeln!(f, "  {name:>12} {:6.2}%", 100.0 * r)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_counts() {
        let classes: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        let r = report("test", &classes, &[0, 0, 1, 1, 2], &[0, 1, 1, 1, 0], 0);
        assert_eq!(
            r.confusion,
            vec![vec![1, 1, 0], vec![0, 2, 0], vec![1, 0, 0]]
        );
        assert!((r.accuracy - 0.6).abs() < 1e-12);
        assert_eq!(r.per_class_recall, vec![0.5, 1.0, 0.0]);
        assert!((r.mean_class_recall - 0.5).abs() < 1e-12);
    }
}
