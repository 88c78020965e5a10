//! Temperature scaling (Guo et al., 2017): one scalar T fitted on held-out data so that
//! `softmax(logits / T)` means what it says. `dmue-train export --calibrate SPLIT` fits T on
//! SPLIT (never the test split), reports NLL and ECE before and after on the test split, draws
//! the reliability diagrams and stores T in the model card, where dmue-serve and the exported
//! graph's `probabilities` apply it.

use crate::util::stats::argmax;
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

/// Equal-width confidence bins of the expected calibration error (the usual 15).
pub const ECE_BINS: usize = 15;

/// `log sum exp(beta * row)` and `beta * row[y]`, in f64.
fn log_partition(row: &[f32], beta: f64) -> f64 {
    let max = row
        .iter()
        .map(|&v| beta * v as f64)
        .fold(f64::MIN, f64::max);
    max + row
        .iter()
        .map(|&v| (beta * v as f64 - max).exp())
        .sum::<f64>()
        .ln()
}

/// Mean negative log-likelihood of `labels` under `softmax(logits / t)`; `logits` is
/// row-major `[N, C]`.
pub fn nll(logits: &[f32], labels: &[usize], c: usize, t: f64) -> f64 {
    let beta = 1.0 / t;
    let total: f64 = logits
        .chunks(c)
        .zip(labels)
        .map(|(row, &y)| log_partition(row, beta) - beta * row[y] as f64)
        .sum();
    total / labels.len().max(1) as f64
}

/// The T that minimises [`nll`]. The NLL is convex in 1/T (a log-sum-exp minus a linear
/// term), so a golden-section search over log(1/T) in [1/100, 100] finds its minimum.
pub fn fit_temperature(logits: &[f32], labels: &[usize], c: usize) -> Result<f64> {
    if labels.is_empty() {
        bail!("cannot fit a temperature on an empty split");
    }
    if logits.len() != labels.len() * c || labels.iter().any(|&y| y >= c) {
        bail!(
            "logits and labels do not match ({} values, {} labels, {c} classes)",
            logits.len(),
            labels.len()
        );
    }
    let f = |log_beta: f64| nll(logits, labels, c, (-log_beta).exp());
    let (mut a, mut b) = (-(100f64.ln()), 100f64.ln());
    let g = (5f64.sqrt() - 1.0) / 2.0;
    let (mut x1, mut x2) = (b - g * (b - a), a + g * (b - a));
    let (mut f1, mut f2) = (f(x1), f(x2));
    for _ in 0..80 {
        if f1 < f2 {
            b = x2;
            x2 = x1;
            f2 = f1;
            x1 = b - g * (b - a);
            f1 = f(x1);
        } else {
            a = x1;
            x1 = x2;
            f1 = f2;
            x2 = a + g * (b - a);
            f2 = f(x2);
        }
    }
    Ok((-(a + b) / 2.0).exp())
}

pub use crate::util::plot::Bin;

/// Calibration of one set of probabilities against labels.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Calibration {
    pub temperature: f64,
    pub nll: f64,
    /// Expected calibration error: sum over bins of (bin share) x |accuracy - confidence|.
    pub ece: f64,
    pub accuracy: f64,
    pub bins: Vec<Bin>,
}

/// NLL, ECE over `bins` equal-width bins of the top-class probability, and the bins, of
/// `softmax(logits / t)` against `labels`.
pub fn measure(logits: &[f32], labels: &[usize], c: usize, t: f64, bins: usize) -> Calibration {
    let mut count = vec![0usize; bins];
    let mut correct = vec![0usize; bins];
    let mut conf = vec![0f64; bins];
    for (row, &y) in logits.chunks(c).zip(labels) {
        let beta = 1.0 / t;
        let z = log_partition(row, beta);
        let top = argmax(row);
        let p = (beta * row[top] as f64 - z).exp();
        let b = ((p * bins as f64) as usize).min(bins - 1);
        count[b] += 1;
        conf[b] += p;
        correct[b] += usize::from(top == y);
    }
    let n = labels.len().max(1) as f64;
    let bins: Vec<Bin> = (0..bins)
        .map(|b| Bin {
            lo: b as f64 / bins as f64,
            hi: (b + 1) as f64 / bins as f64,
            count: count[b],
            accuracy: correct[b] as f64 / count[b].max(1) as f64,
            confidence: conf[b] / count[b].max(1) as f64,
        })
        .collect();
    Calibration {
        temperature: t,
        nll: nll(logits, labels, c, t),
        ece: bins
            .iter()
            .map(|b| b.count as f64 / n * (b.accuracy - b.confidence).abs())
            .sum(),
        accuracy: correct.iter().sum::<usize>() as f64 / n,
        bins,
    }
}

/// What `export --calibrate` found: T, the split it was fitted on, and the test split before
/// and after (`RUN/calibration.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CalibrationReport {
    pub fitted_on: String,
    pub fitted_images: usize,
    pub temperature: f64,
    pub evaluated_on: String,
    pub before: Calibration,
    pub after: Calibration,
}

impl std::fmt::Display for CalibrationReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "calibration: temperature {:.3} fitted on the {} split ({} images)",
            self.temperature, self.fitted_on, self.fitted_images
        )?;
        writeln!(
            f,
            "  {} split ({} images): NLL {:.4} -> {:.4}, ECE ({ECE_BINS} bins) {:.2} % -> {:.2} %, accuracy {:.2} % (unchanged)",
            self.evaluated_on,
            self.before.bins.iter().map(|b| b.count).sum::<usize>(),
            self.before.nll,
            self.after.nll,
            100.0 * self.before.ece,
            100.0 * self.after.ece,
            100.0 * self.after.accuracy
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// Logits whose labels are drawn from softmax(logits / t_true): the fitted T must come back.
    fn draw(t_true: f64, n: usize, c: usize, seed: u64) -> (Vec<f32>, Vec<usize>) {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let mut logits = Vec::with_capacity(n * c);
        let mut labels = Vec::with_capacity(n);
        for _ in 0..n {
            let row: Vec<f32> = (0..c).map(|_| rng.gen_range(-4.0..4.0)).collect();
            let p: Vec<f64> = row.iter().map(|&v| (v as f64 / t_true).exp()).collect();
            let total: f64 = p.iter().sum();
            let mut u = rng.gen::<f64>() * total;
            let mut y = c - 1;
            for (k, pk) in p.iter().enumerate() {
                if u < *pk {
                    y = k;
                    break;
                }
                u -= pk;
            }
            logits.extend(row);
            labels.push(y);
        }
        (logits, labels)
    }

    #[test]
    fn fit_recovers_a_known_temperature() {
        for t_true in [0.5, 1.0, 2.5] {
            let (logits, labels) = draw(t_true, 20_000, 7, 3);
            let t = fit_temperature(&logits, &labels, 7).unwrap();
            assert!((t / t_true - 1.0).abs() < 0.05, "true {t_true}, fitted {t}");
            // The fitted T is the minimum: a little either side is worse.
            let at = nll(&logits, &labels, 7, t);
            assert!(
                at <= nll(&logits, &labels, 7, t * 1.1) && at <= nll(&logits, &labels, 7, t / 1.1)
            );
        }
    }

    #[test]
    fn nll_and_ece_by_hand() {
        // Two images, two classes. Row 1: logits [ln 3, 0] -> p = [0.75, 0.25], label 0.
        // Row 2: logits [0, 0] -> p = [0.5, 0.5], label 1, top class 0 (first on ties): wrong.
        let logits = [3f32.ln(), 0.0, 0.0, 0.0];
        let labels = [0, 1];
        let want_nll = (-(0.75f64.ln()) - 0.5f64.ln()) / 2.0;
        assert!((nll(&logits, &labels, 2, 1.0) - want_nll).abs() < 1e-6);
        // 4 bins: 0.75 falls in bin 3 (right, confidence 0.75), 0.5 in bin 2 (wrong, 0.5).
        // ECE = 1/2 |1 - 0.75| + 1/2 |0 - 0.5| = 0.375.
        let m = measure(&logits, &labels, 2, 1.0, 4);
        assert!((m.ece - 0.375).abs() < 1e-6, "{m:?}");
        assert_eq!((m.bins[3].count, m.bins[2].count), (1, 1));
        assert!((m.accuracy - 0.5).abs() < 1e-12);
        // T = 2 on row 1: p = softmax([ln 3 / 2, 0]) = [sqrt 3, 1] / (sqrt 3 + 1).
        let p = 3f64.sqrt() / (3f64.sqrt() + 1.0);
        let m2 = measure(&logits[..2], &labels[..1], 2, 2.0, 4);
        assert!((m2.nll + p.ln()).abs() < 1e-6);
    }

    #[test]
    fn bad_input_is_refused() {
        assert!(fit_temperature(&[], &[], 3).is_err());
        assert!(fit_temperature(&[0.0, 1.0], &[2], 2).is_err());
    }
}
