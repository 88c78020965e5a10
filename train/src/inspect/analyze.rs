//! `dmue-train analyze`: what a trained run believes about each training sample, against the
//! synthetic benchmark's ground truth.
//!
//! For every training image (eval mode, centre crop) it records the target branch's softmax
//! and, for DMUE runs, the mined latent distribution and the confidence alpha, as
//! [`crate::inspect::audit::beliefs`] computes them for the label audit. Then:
//! - KL(true mixture restricted to the non-annotated classes || latent distribution), and the
//!   same against the target softmax restricted to those classes (the baseline's analogue),
//!   over the samples whose true mixture puts at least 5 % outside the annotated class;
//! - the Spearman correlation between alpha and the entropy of the true mixture;
//! - alpha of flipped against clean samples, as two histograms in one PNG, and the AUROC of
//!   "low alpha detects a flipped label".

use crate::data::loader::SplitImages;
use crate::data::manifest::Split;
use crate::util::stats::{auroc_lower, spearman};
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;
use tch::Device;

pub const SAMPLES_FILE: &str = "analysis-samples.jsonl";
pub const REPORT_FILE: &str = "analysis.json";
pub const ALPHA_PNG: &str = "alpha-flipped-vs-clean.png";

/// Share of the true mixture outside the annotated class below which a sample has no latent
/// distribution to recover (KL is then undefined).
const MIN_OTHER_MASS: f32 = 0.05;

/// One training sample as the trained network sees it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SampleView {
    pub path: String,
    pub label: usize,
    pub flipped: bool,
    /// The true mixture over all classes.
    pub mixture: Vec<f32>,
    pub softmax: Vec<f32>,
    /// Over the C-1 non-annotated classes, in class order (DMUE runs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latent: Option<Vec<f32>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alpha: Option<f32>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Analysis {
    pub samples: usize,
    /// Samples with at least 5 % of the true mixture outside the annotated class.
    pub ambiguous_samples: usize,
    pub kl_latent_mean: Option<f64>,
    pub kl_softmax_mean: f64,
    pub spearman_alpha_entropy: Option<f64>,
    pub alpha_clean_mean: Option<f64>,
    pub alpha_flipped_mean: Option<f64>,
    /// AUROC of "alpha below a threshold means the label was flipped": the probability that a
    /// flipped sample gets a lower alpha than a clean one (ties count half); 0.5 is chance.
    #[serde(default)]
    pub auroc_alpha_flipped: Option<f64>,
    /// The same for the final model's probability of the given label, a score every arm has:
    /// the yardstick alpha must beat to add anything.
    #[serde(default)]
    pub auroc_label_prob_flipped: Option<f64>,
    pub flipped: usize,
}

impl std::fmt::Display for Analysis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "{} training samples ({} flipped, {} with >= 5% of the truth outside their label)",
            self.samples, self.flipped, self.ambiguous_samples
        )?;
        if let Some(kl) = self.kl_latent_mean {
            writeln!(f, "  KL(truth || latent distribution)      {kl:.4}")?;
        }
        writeln!(
            f,
            "  KL(truth || target softmax, restricted) {:.4}",
            self.kl_softmax_mean
        )?;
        if let Some(r) = self.spearman_alpha_entropy {
            writeln!(f, "  Spearman(alpha, entropy of the truth)   {r:.4}")?;
        }
        if let (Some(c), Some(fl)) = (self.alpha_clean_mean, self.alpha_flipped_mean) {
            writeln!(f, "  mean alpha: clean {c:.4}, flipped {fl:.4}")?;
        }
        if let Some(a) = self.auroc_alpha_flipped {
            writeln!(f, "  AUROC(low alpha -> flipped label)     {a:.4}")?;
        }
        if let Some(a) = self.auroc_label_prob_flipped {
            writeln!(f, "  AUROC(low p(label) -> flipped label)  {a:.4}")?;
        }
        Ok(())
    }
}

/// KL(p || q) over matching entries, q floored at 1e-6.
pub fn kl(p: &[f32], q: &[f32]) -> f64 {
    p.iter()
        .zip(q)
        .filter(|(a, _)| **a > 0.0)
        .map(|(&a, &b)| a as f64 * (a as f64 / (b as f64).max(1e-6)).ln())
        .sum()
}

pub fn entropy(p: &[f32]) -> f64 {
    p.iter()
        .filter(|v| **v > 0.0)
        .map(|&v| -(v as f64) * (v as f64).ln())
        .sum()
}

/// The truth restricted to the classes other than `label`, renormalised.
fn others(p: &[f32], label: usize) -> Vec<f32> {
    let rest: Vec<f32> = p
        .iter()
        .enumerate()
        .filter(|(k, _)| *k != label)
        .map(|(_, v)| *v)
        .collect();
    let s: f32 = rest.iter().sum();
    rest.iter().map(|v| v / s.max(1e-12)).collect()
}

/// Analyses the training split of `run`; writes the per-sample file, the report and the PNG.
pub fn analyze(run: &Path, device: Device) -> Result<Analysis> {
    let (cfg, ds, _vs, net) = crate::fit::trainer::load_run(run, device)?;
    let pre = cfg.data.preprocess;
    let data = SplitImages::open(&ds, Split::Train, &pre, cfg.data.loader)?;
    let c = ds.num_classes();
    if ds.rows[data.rows[0]].truth.is_none() {
        bail!(
            "{} has no ground truth (analyze needs the synthetic benchmark's mixtures)",
            ds.dir.display()
        );
    }
    let views: Vec<SampleView> = crate::inspect::audit::beliefs(&cfg, &net, &data, c, device)
        .into_iter()
        .map(|b| {
            let row = &ds.rows[data.rows[b.index]];
            let truth = row.truth.as_ref().expect("checked");
            SampleView {
                path: row.path.clone(),
                label: row.label,
                flipped: truth.flipped || row.original_label.is_some(),
                mixture: truth.mixture.clone(),
                softmax: b.softmax,
                latent: b.latent,
                alpha: b.alpha,
            }
        })
        .collect();
    crate::util::write_jsonl(&run.join(SAMPLES_FILE), &views)?;

    let ambiguous: Vec<&SampleView> = views
        .iter()
        .filter(|v| 1.0 - v.mixture[v.label] >= MIN_OTHER_MASS)
        .collect();
    let mean = |xs: &[f64]| (!xs.is_empty()).then(|| xs.iter().sum::<f64>() / xs.len() as f64);
    let kl_latent: Vec<f64> = ambiguous
        .iter()
        .filter_map(|v| {
            v.latent
                .as_ref()
                .map(|l| kl(&others(&v.mixture, v.label), l))
        })
        .collect();
    let kl_softmax: Vec<f64> = ambiguous
        .iter()
        .map(|v| kl(&others(&v.mixture, v.label), &others(&v.softmax, v.label)))
        .collect();
    let alphas: Vec<(f64, f64, bool)> = views
        .iter()
        .filter_map(|v| v.alpha.map(|a| (a as f64, entropy(&v.mixture), v.flipped)))
        .collect();
    let pick = |flipped: bool| -> Vec<f64> {
        alphas
            .iter()
            .filter(|a| a.2 == flipped)
            .map(|a| a.0)
            .collect()
    };
    let (clean, flipped) = (pick(false), pick(true));
    let label_prob = |flipped: bool| -> Vec<f64> {
        views
            .iter()
            .filter(|v| v.flipped == flipped)
            .map(|v| v.softmax[v.label] as f64)
            .collect()
    };
    let analysis = Analysis {
        samples: views.len(),
        ambiguous_samples: ambiguous.len(),
        kl_latent_mean: mean(&kl_latent),
        kl_softmax_mean: mean(&kl_softmax).unwrap_or(f64::NAN),
        spearman_alpha_entropy: (alphas.len() > 2).then(|| {
            let (a, e): (Vec<f64>, Vec<f64>) = alphas.iter().map(|x| (x.0, x.1)).unzip();
            spearman(&a, &e)
        }),
        alpha_clean_mean: mean(&clean),
        alpha_flipped_mean: mean(&flipped),
        auroc_alpha_flipped: auroc_lower(&flipped, &clean),
        auroc_label_prob_flipped: auroc_lower(&label_prob(true), &label_prob(false)),
        flipped: views.iter().filter(|v| v.flipped).count(),
    };
    crate::util::write_atomic(
        &run.join(REPORT_FILE),
        serde_json::to_string_pretty(&analysis)?.as_bytes(),
    )?;
    if !clean.is_empty() {
        // alpha is in (0, 1) from the sigmoid; normalised (loss.alpha_norm) it can exceed 1.
        let top = clean.iter().chain(&flipped).fold(1.0f64, |m, &a| m.max(a));
        crate::util::plot::histograms(
            &run.join(ALPHA_PNG),
            "confidence alpha of training samples",
            "alpha",
            &[("clean labels", clean), ("flipped labels", flipped)],
            (0.0, top),
            25,
        )
        .context("drawing the alpha histograms")?;
    }
    Ok(analysis)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statistics_by_hand() {
        // KL([.5,.5] || [.25,.75]) = .5 ln 2 + .5 ln(2/3).
        let want = 0.5 * 2f64.ln() + 0.5 * (2.0f64 / 3.0).ln();
        assert!((kl(&[0.5, 0.5], &[0.25, 0.75]) - want).abs() < 1e-9);
        assert!((entropy(&[0.5, 0.5]) - 2f64.ln()).abs() < 1e-9);
        assert_eq!(others(&[0.2, 0.6, 0.2], 1), vec![0.5, 0.5]);
    }
}
