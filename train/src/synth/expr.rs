//! The expression model of the synthetic benchmark: facial parameters, one prototype per class,
//! and per-image true mixtures over classes.

use rand::Rng;
use rand_distr::{Distribution, Normal};
use serde::{Deserialize, Serialize};

/// Class names of the synthetic benchmark, in label order.
pub const CLASSES: [&str; 7] = [
    "neutral", "happy", "sad", "surprise", "fear", "disgust", "anger",
];

/// Facial parameters an expression is made of. Each is roughly in [-1, 1] (signed) or [0, 1].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Expr {
    /// Eyebrows raised (+) or lowered (-) as a whole.
    pub brow_raise: f32,
    /// Inner brow ends raised (+, sadness/fear) or pulled down (-, anger).
    pub brow_tilt: f32,
    /// Eye openness: 0 closed, 0.5 relaxed, 1 wide open.
    pub eye_open: f32,
    /// Mouth corners up (+, smile) or down (-).
    pub mouth_curve: f32,
    /// Jaw drop / lips apart: 0 closed, 1 wide open.
    pub mouth_open: f32,
    /// Mouth width: 0 narrow, 0.5 relaxed, 1 stretched.
    pub mouth_width: f32,
    /// Nose wrinkle and raised upper lip (disgust).
    pub nose_wrinkle: f32,
    /// Cheeks raised, pushing the lower eyelids up (genuine smile).
    pub cheek_raise: f32,
    /// Lips pressed thin (anger).
    pub lip_press: f32,
}

impl Expr {
    pub const NAMES: [&'static str; 9] = [
        "brow_raise",
        "brow_tilt",
        "eye_open",
        "mouth_curve",
        "mouth_open",
        "mouth_width",
        "nose_wrinkle",
        "cheek_raise",
        "lip_press",
    ];

    pub fn to_array(self) -> [f32; 9] {
        [
            self.brow_raise,
            self.brow_tilt,
            self.eye_open,
            self.mouth_curve,
            self.mouth_open,
            self.mouth_width,
            self.nose_wrinkle,
            self.cheek_raise,
            self.lip_press,
        ]
    }

    pub fn from_array(a: [f32; 9]) -> Self {
        Self {
            brow_raise: a[0],
            brow_tilt: a[1],
            eye_open: a[2],
            mouth_curve: a[3],
            mouth_open: a[4],
            mouth_width: a[5],
            nose_wrinkle: a[6],
            cheek_raise: a[7],
            lip_press: a[8],
        }
    }

    /// Clamps every parameter to its drawable range.
    pub fn clamped(self) -> Self {
        let a = self.to_array();
        let lo = [-1.0, -1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 0.0];
        Self::from_array(std::array::from_fn(|i| a[i].clamp(lo[i], 1.0)))
    }
}

/// Prototype of each class in [`CLASSES`] order (FACS-inspired caricatures).
pub const PROTOTYPES: [[f32; 9]; 7] = [
    // brow_raise, brow_tilt, eye_open, mouth_curve, mouth_open, mouth_width, nose_wrinkle, cheek_raise, lip_press
    [0.0, 0.0, 0.5, 0.0, 0.0, 0.5, 0.0, 0.0, 0.0], // neutral
    [0.1, 0.0, 0.35, 1.0, 0.35, 0.95, 0.0, 1.0, 0.0], // happy
    [-0.1, 0.95, 0.3, -0.85, 0.0, 0.45, 0.0, 0.0, 0.3], // sad
    [1.0, 0.1, 1.0, 0.0, 1.0, 0.3, 0.0, 0.0, 0.0], // surprise
    [0.7, 0.85, 0.95, -0.4, 0.45, 0.9, 0.0, 0.0, 0.0], // fear
    [-0.4, -0.3, 0.3, -0.55, 0.3, 0.55, 1.0, 0.4, 0.0], // disgust
    [-0.75, -1.0, 0.6, -0.25, 0.0, 0.45, 0.3, 0.0, 1.0], // anger
];

/// How the true mixtures of a dataset are drawn.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct MixtureConfig {
    /// Share of images that are ambiguous two-class blends (minor weight 0.3..0.5).
    pub ambiguous_share: f32,
    /// Expression intensity is drawn uniformly from [min_intensity, 1]; low intensity pulls the
    /// face towards neutral.
    pub min_intensity: f32,
    /// Standard deviation of the per-image jitter added to every facial parameter.
    pub jitter: f32,
}

impl Default for MixtureConfig {
    fn default() -> Self {
        Self {
            ambiguous_share: 0.25,
            min_intensity: 0.55,
            jitter: 0.08,
        }
    }
}

/// What one face shows: its true mixture and the parameters rendered from it.
#[derive(Debug, Clone, PartialEq)]
pub struct ExpressionSample {
    pub mixture: [f32; 7],
    pub expr: Expr,
}

impl ExpressionSample {
    /// The class with the largest true weight.
    pub fn clean_label(&self) -> usize {
        argmax(&self.mixture)
    }
}

pub fn argmax(v: &[f32]) -> usize {
    v.iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map(|(i, _)| i)
        .unwrap_or(0)
}

/// Draws a true mixture (mostly one dominant class, `ambiguous_share` two-class blends) and
/// renders it into facial parameters: neutral + intensity * (mixture-weighted prototype -
/// neutral) + jitter.
pub fn sample_expression<R: Rng>(cfg: &MixtureConfig, rng: &mut R) -> ExpressionSample {
    let c = CLASSES.len();
    let major = rng.gen_range(0..c);
    let mut minor = rng.gen_range(0..c - 1);
    if minor >= major {
        minor += 1;
    }
    let minor_w = if rng.gen::<f32>() < cfg.ambiguous_share {
        rng.gen_range(0.3..0.5)
    } else {
        rng.gen_range(0.0..0.15)
    };
    let mut mixture = [0.0f32; 7];
    mixture[major] = 1.0 - minor_w;
    mixture[minor] = minor_w;

    let intensity = rng.gen_range(cfg.min_intensity.min(1.0)..=1.0);
    let neutral = PROTOTYPES[0];
    let noise = Normal::new(0.0, cfg.jitter.max(0.0)).expect("finite jitter");
    let params: [f32; 9] = std::array::from_fn(|i| {
        let blended: f32 = (0..c).map(|k| mixture[k] * PROTOTYPES[k][i]).sum();
        neutral[i] + intensity * (blended - neutral[i]) + noise.sample(rng)
    });
    ExpressionSample {
        mixture,
        expr: Expr::from_array(params).clamped(),
    }
}

/// The annotator's label: a draw from the true mixture.
pub fn annotate<R: Rng>(mixture: &[f32], rng: &mut R) -> usize {
    let total: f32 = mixture.iter().sum();
    let mut u = rng.gen::<f32>() * total;
    for (k, &w) in mixture.iter().enumerate() {
        if u < w {
            return k;
        }
        u -= w;
    }
    argmax(mixture)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn mixtures_sum_to_one_and_blends_have_the_configured_share() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let cfg = MixtureConfig::default();
        let n = 4000;
        let mut blends = 0;
        for _ in 0..n {
            let s = sample_expression(&cfg, &mut rng);
            assert!((s.mixture.iter().sum::<f32>() - 1.0).abs() < 1e-5);
            let mut w = s.mixture;
            w.sort_by(|a, b| b.total_cmp(a));
            if w[1] >= 0.3 {
                blends += 1;
            }
        }
        let share = blends as f32 / n as f32;
        assert!(
            (share - cfg.ambiguous_share).abs() < 0.03,
            "blend share {share}"
        );
    }

    #[test]
    fn annotation_follows_the_mixture() {
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        let m = [0.0, 0.7, 0.0, 0.3, 0.0, 0.0, 0.0];
        let n = 10_000;
        let happy = (0..n).filter(|_| annotate(&m, &mut rng) == 1).count();
        let p = happy as f32 / n as f32;
        assert!((p - 0.7).abs() < 0.02, "{p}");
    }

    #[test]
    fn prototypes_are_distinct() {
        for a in 0..7 {
            for b in a + 1..7 {
                let d: f32 = (0..9)
                    .map(|i| (PROTOTYPES[a][i] - PROTOTYPES[b][i]).powi(2))
                    .sum();
                assert!(
                    d.sqrt() > 0.7,
                    "{} vs {} too close: {}",
                    CLASSES[a],
                    CLASSES[b],
                    d.sqrt()
                );
            }
        }
    }
}
