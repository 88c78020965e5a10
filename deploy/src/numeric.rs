//! Numeric helpers of the deploy crate, in one place: softmax and the ambiguity of a
//! probability vector (the training crate uses them too).

/// Numerically stable softmax of one row.
pub fn softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exp: Vec<f32> = logits.iter().map(|&v| (v - max).exp()).collect();
    let sum: f32 = exp.iter().sum();
    exp.iter().map(|v| v / sum).collect()
}

/// Normalised entropy of a probability vector, `-sum p ln p / ln C`, in [0, 1]: 0 when one
/// class has all the mass, 1 when every class is equally likely. It measures how much the
/// model hesitates between classes, whatever the top class is.
pub fn ambiguity(p: &[f32]) -> f32 {
    if p.len() < 2 {
        return 0.0;
    }
    let h: f32 = p.iter().filter(|&&v| v > 0.0).map(|&v| -v * v.ln()).sum();
    (h / (p.len() as f32).ln()).clamp(0.0, 1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn softmax_is_stable_and_normalised() {
        let p = softmax(&[1000.0, 1000.0, 0.0]);
        assert!((p[0] - 0.5).abs() < 1e-6 && p[2] < 1e-30);
        let q = softmax(&[0.0, 2f32.ln()]);
        assert!((q[1] - 2.0 / 3.0).abs() < 1e-6);
    }

    #[test]
    fn ambiguity_is_normalised_entropy() {
        assert_eq!(ambiguity(&[1.0, 0.0, 0.0, 0.0]), 0.0);
        assert!((ambiguity(&[0.25; 4]) - 1.0).abs() < 1e-6);
        // Two of four classes at 0.5: entropy ln 2 over ln 4 = 1/2.
        assert!((ambiguity(&[0.5, 0.5, 0.0, 0.0]) - 0.5).abs() < 1e-6);
        // 0.7/0.2/0.1 over 3 classes, by hand: 0.8018 nats / ln 3 = 0.7298.
        assert!((ambiguity(&[0.7, 0.2, 0.1]) - 0.7298).abs() < 1e-3);
    }
}
