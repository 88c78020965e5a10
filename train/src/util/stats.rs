//! Statistics shared by training, inspection and export: ranks, rank correlation, AUROC,
//! argmax, tensors as rows.

use tch::{Device, Kind, Tensor};

/// Index of the largest value (the first one on ties).
pub fn argmax(row: &[f32]) -> usize {
    row.iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |best, (i, &v)| {
            if v > best.1 {
                (i, v)
            } else {
                best
            }
        })
        .0
}

/// Ranks with ties averaged (1-based).
fn ranks(v: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..v.len()).collect();
    order.sort_by(|&a, &b| v[a].total_cmp(&v[b]));
    let mut r = vec![0.0; v.len()];
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && v[order[j + 1]] == v[order[i]] {
            j += 1;
        }
        let mean = (i + j) as f64 / 2.0 + 1.0;
        for &k in &order[i..=j] {
            r[k] = mean;
        }
        i = j + 1;
    }
    r
}

/// Spearman's rank correlation (Pearson on tie-averaged ranks).
pub fn spearman(x: &[f64], y: &[f64]) -> f64 {
    let (rx, ry) = (ranks(x), ranks(y));
    let n = rx.len() as f64;
    let (mx, my) = (rx.iter().sum::<f64>() / n, ry.iter().sum::<f64>() / n);
    let cov: f64 = rx.iter().zip(&ry).map(|(a, b)| (a - mx) * (b - my)).sum();
    let vx: f64 = rx.iter().map(|a| (a - mx).powi(2)).sum();
    let vy: f64 = ry.iter().map(|b| (b - my).powi(2)).sum();
    cov / (vx * vy).sqrt().max(1e-12)
}

/// P(x < y) + P(x = y) / 2 for x drawn from `lower` and y from `higher`: the AUROC of the score
/// "small means positive" when `lower` holds the positives. Mann-Whitney U through tie-averaged
/// ranks. None when either side is empty.
pub fn auroc_lower(lower: &[f64], higher: &[f64]) -> Option<f64> {
    if lower.is_empty() || higher.is_empty() {
        return None;
    }
    let all: Vec<f64> = higher.iter().chain(lower).copied().collect();
    let r = ranks(&all);
    // Ranks of `higher` within the pooled sample: U counts the pairs where higher > lower.
    let (nh, nl) = (higher.len() as f64, lower.len() as f64);
    let u = r[..higher.len()].iter().sum::<f64>() - nh * (nh + 1.0) / 2.0;
    Some(u / (nh * nl))
}

/// A 2-d tensor's rows as CPU float vectors.
pub fn rows_of(t: &Tensor) -> Vec<Vec<f32>> {
    let t = t.to_kind(Kind::Float).to_device(Device::Cpu).contiguous();
    let (n, k) = t.size2().expect("2-d");
    let flat = Vec::<f32>::try_from(t.view([-1])).expect("float tensor");
    (0..n as usize)
        .map(|i| flat[i * k as usize..(i + 1) * k as usize].to_vec())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranks_spearman_and_auroc_by_hand() {
        // Monotone increasing -> 1, decreasing -> -1, ties averaged.
        assert!((spearman(&[1.0, 2.0, 3.0, 4.0], &[10.0, 20.0, 25.0, 99.0]) - 1.0).abs() < 1e-9);
        assert!((spearman(&[1.0, 2.0, 3.0], &[3.0, 2.0, 1.0]) + 1.0).abs() < 1e-9);
        assert_eq!(ranks(&[5.0, 1.0, 5.0]), vec![2.5, 1.0, 2.5]);
        // Flipped alphas [0.1, 0.5], clean [0.3, 0.5, 0.9]: of the 6 pairs, 0.1 is below all
        // three (3), 0.5 is below 0.9 (1) and ties 0.5 (1/2): 4.5 / 6 = 0.75.
        assert_eq!(auroc_lower(&[0.1, 0.5], &[0.3, 0.5, 0.9]), Some(0.75));
        assert_eq!(auroc_lower(&[0.1], &[0.2]), Some(1.0));
        assert_eq!(auroc_lower(&[0.3], &[0.2]), Some(0.0));
        assert_eq!(auroc_lower(&[], &[0.2]), None);
        assert_eq!(argmax(&[0.1, 0.7, 0.7, 0.2]), 1);
    }
}
