//! DMUE's losses (docs/method.md; the paper's section 3), each a pure function of tensors.
//!
//! Shapes: N samples, C classes, D feature size. Every division is guarded so that an empty
//! class in a batch or a zero-norm feature yields a defined value (0 contribution), not NaN.
//! Everything is computed with masks rather than data-dependent indexing, so no step needs a
//! device synchronisation.

use serde::{Deserialize, Serialize};
use tch::{Kind, Reduction, Tensor};

/// Smallest norm / count a division may see.
const EPS: f64 = 1e-8;

/// Loss hyper-parameters and the Table 2 switches.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LossConfig {
    /// Sharpening temperature T of the latent distribution (Eq. 3).
    pub temperature: f64,
    /// Weight omega of L_soft.
    pub omega: f64,
    /// Epoch threshold beta of the ramps (Eq. 11-12).
    pub beta: f64,
    /// Weight gamma of L_sp.
    pub gamma: f64,
    /// Latent distribution mining (L_soft) on/off.
    pub latent: bool,
    /// Similarity preserving (L_sp) on/off.
    pub similarity_preserving: bool,
    /// Pairwise confidence (weighted CE) on/off; off uses plain CE on the target branch.
    pub confidence: bool,
    /// Count the sample itself in its own class's mean similarity (authors' code: true).
    pub similarity_include_self: bool,
    /// Min-max scale each row of the similarity matrix to [0, 1] (authors' code: true).
    pub similarity_minmax: bool,
    /// Give the uncertainty module each row of S minus the row's entry at the sample's label,
    /// `S[a, j] - S[a, y_a]`, instead of S itself (not in the paper; default false). The
    /// paper's FC(2C -> C) -> PReLU -> FC(C -> 1) reads S and the label one-hot side by side,
    /// so it can only approximate "how similar is the sample to its own class against the
    /// others" (a product of the two); relative to the label it is linear: a positive entry
    /// says another class is closer than the annotated one, the mark of a wrong label.
    #[serde(default)]
    pub similarity_relative: bool,
    /// Use alpha as each sample's weight in the target branch's hard-label term, detached,
    /// instead of scaling its logits (not in the paper; default false). The network gets
    /// `mean_i alpha_i l(z_i, y_i)`, so a label the module doubts counts for less and the
    /// logits of the others are left as they are; the module still learns from Eq. 9 (the
    /// alpha-scaled logits), computed on detached logits, so alpha is trained as before.
    #[serde(default)]
    pub alpha_as_weight: bool,
    /// Compute S (Eq. 7) on detached features, so the confidence path cannot reshape the
    /// features (not in the paper; default true). The authors' code lets the weighted CE pull
    /// the features through S (false).
    pub similarity_detach: bool,
    /// Optimise the uncertainty module (paper: true). The authors' code leaves it out of the
    /// optimizer, so alpha is a fixed random function of S (false).
    pub train_uncertainty: bool,
    /// How alpha is normalised before it scales the logits (not in the paper). `none`: as the
    /// paper; `batch`: divided by its batch mean; `class`: divided by the mean alpha of the
    /// batch samples with the same label, so a whole class can never be turned down (the
    /// trained module otherwise learns a per-class temperature from the label one-hot).
    pub alpha_norm: AlphaNorm,
    /// Treat the auxiliary side of L_sp as a fixed teacher (not in the paper; default true).
    /// The authors' code pulls both sides (false).
    pub sp_detach_aux: bool,
    /// First (1-based) epoch at which alpha weights the target CE; before it the target CE is
    /// plain (not in the paper; default 1: from the start). A warm-up: trained from scratch,
    /// nothing is predicted confidently at first, and alpha can only learn to turn everything
    /// down.
    pub confidence_from_epoch: usize,
    /// What the auxiliary Gram matrices of L_sp are built from: the branch features (paper,
    /// appendix Eq. 13-17) or the branch logits (authors' code).
    pub sp_aux_source: SpSource,
    /// The target branch's hard-label term: `ce` (the paper's Eq. 9), or `gce` (the default,
    /// not in the paper), the generalised cross-entropy with `train.gce_q` on the same
    /// confidence-scaled logits.
    #[serde(default)]
    pub target_loss: HardLabel,
    /// The auxiliary branches' hard-label term (not in the paper): `ce` (Eq. 1-2) or `gce`.
    #[serde(default)]
    pub aux_loss: HardLabel,
    /// Add early-learning regularisation (`train.elr_lambda`, `train.elr_beta`) to the target
    /// branch's term (not in the paper; default false).
    #[serde(default)]
    pub elr: bool,
    /// The auxiliary branches read the shared trunk's features detached (not in the paper;
    /// default false): they still mine the latent distributions from those features, but their
    /// hard-label terms no longer train the trunk, so under wrong labels they cannot push it to
    /// memorise them; the trunk learns from the target branch's terms alone.
    #[serde(default)]
    pub aux_detach_trunk: bool,
    /// `aux_detach_trunk` from the first learning-rate milestone on (not in the paper; default
    /// false): while the rate is high the auxiliary branches help the trunk learn, after the
    /// drop, when a run starts to fit its wrong labels, they no longer train it.
    #[serde(default)]
    pub aux_detach_after_lr_drop: bool,
    /// The share of the auxiliary branches' gradient that reaches the shared trunk (not in the
    /// paper; default 1, the paper's; 0 is `aux_detach_trunk`): between the two, they still
    /// help the trunk learn early but push it less to fit their wrong labels.
    #[serde(default = "one")]
    pub aux_trunk_grad: f64,
    /// Each sample's share of the auxiliary gradient into the trunk (`aux_trunk_grad`) times
    /// the target branch's probability of its label to the power `train.gce_q`, detached (not in
    /// the paper; default true). The branches still learn their labels through their own loss,
    /// but the trunk gets from them the gradient of GCE with the target branch's belief: a label
    /// the target branch doubts, as it doubts most wrong labels, barely trains the trunk through
    /// them. Early on every label is doubted alike and reaches it at about (1/C)^q.
    #[serde(default)]
    pub aux_trunk_grad_by_belief: bool,
    /// With `aux_trunk_grad_by_belief`: each belief divided by the batch's mean belief (in a
    /// distributed job, the rank's share of the batch), capped at 1 (default true). Early on,
    /// when the target branch doubts every label alike, all reach the trunk in full; later only
    /// the labels it doubts more than the batch's average are held back, so with few wrong
    /// labels few samples lose their gradient.
    #[serde(default)]
    pub aux_trunk_grad_belief_relative: bool,
}

fn one() -> f64 {
    1.0
}

/// A loss against the given (hard) label; both read the per-sample negative log-likelihood.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HardLabel {
    /// Cross-entropy: `-log p_y`.
    #[default]
    Ce,
    /// Generalised cross-entropy: `(1 - p_y^q) / q`.
    Gce,
}

impl HardLabel {
    /// Per-sample loss from the per-sample `nll = -log p_y` (any shape): `nll` itself, or
    /// `(1 - exp(-q nll)) / q`, which is `(1 - p_y^q) / q`.
    pub fn from_nll(self, nll: &Tensor, q: f64) -> Tensor {
        match self {
            HardLabel::Ce => nll.shallow_clone(),
            HardLabel::Gce => ((nll * -q).exp().neg() + 1.0) / q,
        }
    }
}

/// Normalisation of the confidence alpha (see `LossConfig::alpha_norm`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AlphaNorm {
    None,
    Batch,
    Class,
}

/// Source of the auxiliary Gram matrices in L_sp.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SpSource {
    Features,
    Logits,
}

impl Default for LossConfig {
    fn default() -> Self {
        Self {
            temperature: 1.2,
            omega: 0.5,
            beta: 6.0,
            gamma: 1e3,
            latent: true,
            similarity_preserving: true,
            confidence: true,
            similarity_include_self: false,
            similarity_minmax: false,
            similarity_relative: false,
            alpha_as_weight: false,
            similarity_detach: true,
            train_uncertainty: true,
            alpha_norm: AlphaNorm::Class,
            confidence_from_epoch: 1,
            sp_detach_aux: true,
            sp_aux_source: SpSource::Features,
            // Measured best on the synthetic benchmark (docs/results.md, sections 9 and 14):
            // GCE in the target term, and the auxiliary gradient into the trunk weighted by
            // the relative label belief, chosen on seeds 1-5 and confirmed on 6-10.
            target_loss: HardLabel::Gce,
            aux_loss: HardLabel::Ce,
            elr: false,
            aux_detach_trunk: false,
            aux_detach_after_lr_drop: false,
            aux_trunk_grad: 1.0,
            aux_trunk_grad_by_belief: true,
            aux_trunk_grad_belief_relative: true,
        }
    }
}

/// `w_u(e) = exp(-(1 - e/beta)^2)` for `e <= beta`, else 1 (Eq. 11). `e` is the 1-based epoch.
pub fn ramp_up(epoch: f64, beta: f64) -> f64 {
    if beta <= 0.0 || epoch > beta {
        1.0
    } else {
        (-(1.0 - epoch / beta).powi(2)).exp()
    }
}

/// `w_d(e) = 1` for `e <= beta`, else `exp(-(1 - beta/e)^2)` (Eq. 12).
pub fn ramp_down(epoch: f64, beta: f64) -> f64 {
    if epoch <= beta {
        1.0
    } else {
        (-(1.0 - beta / epoch).powi(2)).exp()
    }
}

/// Plain cross-entropy, mean over the batch. `logits [N, C]`, `labels [N]` (int64).
pub fn cross_entropy(logits: &Tensor, labels: &Tensor) -> Tensor {
    logits.cross_entropy_loss::<Tensor>(labels, None, Reduction::Mean, -100, 0.0)
}

/// Cross-entropy against labels smoothed with `eps` (`(1 - eps) onehot + eps / C`), as
/// PyTorch's `label_smoothing`: `(1 - eps) CE + eps * mean_k(-log p_k)`, mean over the batch.
pub fn label_smoothing_ce(logits: &Tensor, labels: &Tensor, eps: f64) -> Tensor {
    logits.cross_entropy_loss::<Tensor>(labels, None, Reduction::Mean, -100, eps)
}

/// Generalised cross-entropy (Zhang & Sabuncu, 2018): `mean_i (1 - p_{i,y_i}^q) / q`; q -> 0
/// is CE, q = 1 is the (noise-robust) mean absolute error.
pub fn generalized_ce(logits: &Tensor, labels: &Tensor, q: f64) -> Tensor {
    let p_y = logits
        .softmax(-1, Kind::Float)
        .gather(1, &labels.unsqueeze(1), false)
        .squeeze_dim(1);
    (p_y.clamp_min(EPS).pow_tensor_scalar(q).neg() + 1.0).mean(Kind::Float) / q
}

/// Per-sample `-log p_y`: `logits [N, C]`, `labels [N]` -> `[N]`.
fn nll_per_sample(logits: &Tensor, labels: &Tensor) -> Tensor {
    -logits
        .log_softmax(-1, Kind::Float)
        .gather(1, &labels.unsqueeze(1), false)
        .squeeze_dim(1)
}

/// How much the network believes each label: `p_y^q` from `logits [N, C]` and `labels [N]`, no
/// gradient (`loss.aux_trunk_grad_by_belief`: the factor by which GCE's gradient is CE's).
pub fn label_belief(logits: &Tensor, labels: &Tensor, q: f64) -> Tensor {
    tch::no_grad(|| {
        nll_per_sample(logits, labels)
            .neg()
            .exp()
            .pow_tensor_scalar(q)
    })
}

/// [`label_belief`] divided by its mean over the batch and capped at 1: `[N]`, no gradient.
pub fn relative_label_belief(logits: &Tensor, labels: &Tensor, q: f64) -> Tensor {
    let belief = label_belief(logits, labels, q);
    (&belief / belief.mean(Kind::Float)).clamp_max(1.0)
}

/// The weighted target term of DMUE with `loss` as the hard-label loss: Eq. 9's
/// `CE(alpha_i W^T f_i)` for CE, the same scaled logits through GCE otherwise. Mean over the
/// batch. `alpha [N]`.
pub fn weighted_hard_label(
    target_logits: &Tensor,
    alpha: &Tensor,
    labels: &Tensor,
    loss: HardLabel,
    q: f64,
) -> Tensor {
    match loss {
        HardLabel::Ce => weighted_ce(target_logits, alpha, labels),
        HardLabel::Gce => generalized_ce(&(target_logits * alpha.unsqueeze(1)), labels, q),
    }
}

/// The target term under `loss.alpha_as_weight`: `mean_i alpha_i l(z_i, y_i)` with alpha
/// detached, for the network, where `l` is `loss` per sample. The module's gradient is that of
/// [`weighted_hard_label`] on the detached logits; that term enters as itself minus its value,
/// so the returned value is the weighted loss alone. `alpha [N]`.
pub fn alpha_weighted_hard_label(
    target_logits: &Tensor,
    alpha: &Tensor,
    labels: &Tensor,
    loss: HardLabel,
    q: f64,
) -> Tensor {
    let per_sample = loss.from_nll(&nll_per_sample(target_logits, labels), q);
    let network = (per_sample * alpha.detach()).mean(Kind::Float);
    let module = weighted_hard_label(&target_logits.detach(), alpha, labels, loss, q);
    network + &module - module.detach()
}

/// The unweighted target term: CE, or GCE with exponent q.
pub fn hard_label(target_logits: &Tensor, labels: &Tensor, loss: HardLabel, q: f64) -> Tensor {
    match loss {
        HardLabel::Ce => cross_entropy(target_logits, labels),
        HardLabel::Gce => generalized_ce(target_logits, labels, q),
    }
}

/// The clipped `log 0` of symmetric cross-entropy's reverse term (Wang et al., 2019: A = -4).
pub const SCE_LOG_ZERO: f64 = -4.0;

/// Symmetric cross-entropy (Wang et al., ICCV 2019): `alpha CE + beta RCE`, mean over the
/// batch. The reverse term `-sum_k p_k log q_k` against the one-hot label q, with `log 0`
/// clipped to A, is `-A (1 - p_y)`.
pub fn symmetric_ce(logits: &Tensor, labels: &Tensor, alpha: f64, beta: f64) -> Tensor {
    let p_y = nll_per_sample(logits, labels).neg().exp();
    let rce = (p_y.neg() + 1.0).mean(Kind::Float) * (-SCE_LOG_ZERO);
    cross_entropy(logits, labels) * alpha + rce * beta
}

/// ELR's clamp of the predicted probabilities (Liu et al., NeurIPS 2020).
const ELR_CLAMP: f64 = 1e-4;

/// Softmax clamped to `[1e-4, 1 - 1e-4]`, as ELR uses it on both of its sides. `[N, C]`.
fn elr_probabilities(logits: &Tensor) -> Tensor {
    logits
        .softmax(-1, Kind::Float)
        .clamp(ELR_CLAMP, 1.0 - ELR_CLAMP)
}

/// ELR's running-average targets of a batch after this step's update:
/// `beta t + (1 - beta) p / sum(p)`, p the clamped softmax, detached. `targets`, `logits`:
/// `[N, C]` (the rows of the batch's samples).
pub fn elr_targets(targets: &Tensor, logits: &Tensor, beta: f64) -> Tensor {
    let p = elr_probabilities(&logits.detach());
    let p = &p / p.sum_dim_intlist(-1, true, Kind::Float);
    targets * beta + p * (1.0 - beta)
}

/// ELR's regulariser `mean_i log(1 - <p_i, t_i>)` (p the clamped softmax, t the updated
/// targets, no gradient through t). It falls as the prediction agrees with the running
/// average, which holds the early, mostly clean predictions against memorisation.
pub fn elr_regulariser(logits: &Tensor, targets: &Tensor) -> Tensor {
    let dot =
        (elr_probabilities(logits) * targets.detach()).sum_dim_intlist(-1, false, Kind::Float);
    (dot.neg() + 1.0).clamp_min(EPS).log().mean(Kind::Float)
}

/// Class activation maps: the classifier applied at every position of the last feature map,
/// `features [N, F, h, w]`, `weights [C, F]` -> `[N, C, h, w]` (the bias, constant over
/// positions, is left out, as in EAC). EAC passes the weights detached.
pub fn class_activation_maps(features: &Tensor, weights: &Tensor) -> Tensor {
    Tensor::einsum("nfhw,cf->nchw", &[features, weights], None::<&[i64]>)
}

/// EAC's consistency (Zhang et al., ECCV 2022): the mean squared difference between the maps
/// of a view and the maps of its mirror image, mirrored back. Both `[N, C, h, w]`.
pub fn flip_consistency(maps: &Tensor, maps_of_mirror: &Tensor) -> Tensor {
    maps.mse_loss(&maps_of_mirror.flip([3]), Reduction::Mean)
}

/// Per branch j: label of each sample in j's (C-1)-class space (k -> k if k < j else k-1), and
/// whether the sample counts for j (label != j). Returns `([C, N] int64, [C, N] float)`.
fn remapped_labels(labels: &Tensor, c: i64) -> (Tensor, Tensor) {
    let j = Tensor::arange(c, (Kind::Int64, labels.device())).unsqueeze(1); // [C, 1]
    let y = labels.unsqueeze(0); // [1, N]
    let keep = y.ne_tensor(&j).to_kind(Kind::Float);
    let remapped = (&y - y.gt_tensor(&j).to_kind(Kind::Int64)).clamp(0, (c - 2).max(0));
    (remapped, keep)
}

/// L_aux (Eq. 1-2): branch j is trained with CE on the samples not labelled j, labels remapped
/// into its (C-1)-class space; the mean over the branches that have samples in the batch.
/// `aux_logits`: C tensors `[N, C-1]`.
pub fn aux_ce(aux_logits: &[Tensor], labels: &Tensor) -> Tensor {
    aux_hard_label(aux_logits, labels, HardLabel::Ce, 0.0)
}

/// L_aux with the per-sample loss `loss` (q: GCE's exponent) in place of CE.
pub fn aux_hard_label(aux_logits: &[Tensor], labels: &Tensor, loss: HardLabel, q: f64) -> Tensor {
    let c = aux_logits.len() as i64;
    let stacked = Tensor::stack(aux_logits, 0).log_softmax(-1, Kind::Float); // [C, N, C-1]
    let (remapped, keep) = remapped_labels(labels, c);
    let nll = -stacked
        .gather(2, &remapped.unsqueeze(2), false)
        .squeeze_dim(2); // [C, N]
    let nll = loss.from_nll(&nll, q);
    let count = keep.sum_dim_intlist(1, false, Kind::Float); // [C]
    let per_branch = (nll * &keep).sum_dim_intlist(1, false, Kind::Float) / count.clamp_min(1.0);
    let present = count.gt(0.0).to_kind(Kind::Float);
    (per_branch * &present).sum(Kind::Float) / present.sum(Kind::Float).clamp_min(1.0)
}

/// Latent distribution (Sec. 3.2): for a sample labelled j, the softmax of auxiliary branch j,
/// over the C-1 classes other than j. `[N, C-1]`, no gradient.
pub fn latent_distribution(aux_logits: &[Tensor], labels: &Tensor) -> Tensor {
    let stacked = Tensor::stack(aux_logits, 1).detach(); // [N, C, C-1]
    let (n, _, k) = stacked.size3().expect("3-d");
    let index = labels.view([n, 1, 1]).expand([n, 1, k], false);
    stacked
        .gather(1, &index, false)
        .squeeze_dim(1)
        .softmax(-1, Kind::Float)
}

/// Sharpening (Eq. 3): `p_i^(1/T) / sum_k p_k^(1/T)` along the last dimension.
pub fn sharpen(p: &Tensor, temperature: f64) -> Tensor {
    let powered = p.clamp_min(0.0).pow_tensor_scalar(1.0 / temperature);
    let total = powered
        .sum_dim_intlist(-1, true, Kind::Float)
        .clamp_min(EPS);
    powered / total
}

/// Indices of the non-annotated classes of each sample, in increasing order: `[N, C-1]`.
fn other_classes(labels: &Tensor, c: i64) -> Tensor {
    let k = Tensor::arange(c - 1, (Kind::Int64, labels.device())).unsqueeze(0); // [1, C-1]
    &k + k.ge_tensor(&labels.unsqueeze(1)).to_kind(Kind::Int64)
}

/// L_soft (Eq. 4): `1/(N(C-1)) sum_p sum_{k != y_p} (latent_{p,k} - softmax(target)_{p,k})^2`.
/// `target_logits [N, C]`, `latent [N, C-1]` (already sharpened, no gradient).
pub fn soft_loss(target_logits: &Tensor, latent: &Tensor, labels: &Tensor) -> Tensor {
    let (n, c) = target_logits.size2().expect("2-d");
    let p = target_logits.softmax(-1, Kind::Float);
    let rest = p.gather(1, &other_classes(labels, c), false);
    (latent - rest).square().sum(Kind::Float) / ((n * (c - 1)).max(1) as f64)
}

/// Pairwise class similarity (Eq. 7): `S[a, j]` = mean cosine similarity between `f_a` and the
/// features of the batch samples labelled j. `[N, C]`.
///
/// Where j has no reference sample for `a` (j absent from the batch, or `a` alone in its own
/// class with `include_self` off), `S[a, j]` is the mean of `a`'s defined entries: a neutral
/// value. A 0 there would read as "least similar to its own class" and mark the sample as noisy
/// for no reason. (The sampler's default of 2 samples per class avoids the case in training.)
pub fn class_similarity(
    features: &Tensor,
    labels: &Tensor,
    c: i64,
    include_self: bool,
    minmax: bool,
) -> Tensor {
    let norm = features.norm_scalaropt_dim(2.0, [1], true).clamp_min(EPS);
    let f = features / norm;
    let cos = f.matmul(&f.tr()); // [N, N]
    let onehot = labels.one_hot(c).to_kind(Kind::Float); // [N, C]
    let mut sums = cos.matmul(&onehot);
    let mut counts = onehot
        .sum_dim_intlist(0, true, Kind::Float)
        .expand_as(&sums)
        .copy();
    if !include_self {
        sums -= cos.diagonal(0, 0, 1).unsqueeze(1) * &onehot;
        counts -= &onehot;
    }
    let defined = counts.gt(0.0).to_kind(Kind::Float);
    let s = (sums / counts.clamp_min(1.0)) * &defined;
    let row_mean = s.sum_dim_intlist(1, true, Kind::Float)
        / defined.sum_dim_intlist(1, true, Kind::Float).clamp_min(1.0);
    let s = &s + (defined.neg() + 1.0) * row_mean;
    if minmax {
        let lo = s.amin([1], true);
        let hi = s.amax([1], true);
        (&s - &lo) / (hi - lo).clamp_min(EPS)
    } else {
        s
    }
}

/// `S[a, j] - S[a, y_a]`: each row of S relative to its entry at the sample's label (see
/// `LossConfig::similarity_relative`). `[N, C]` -> `[N, C]`.
pub fn relative_to_label(similarity: &Tensor, labels: &Tensor) -> Tensor {
    similarity - similarity.gather(1, &labels.unsqueeze(1), false)
}

/// The uncertainty module's input (Eq. 8): `concat(S, onehot(y))`, `[N, 2C]`.
pub fn similarity_vector(similarity: &Tensor, labels: &Tensor, c: i64) -> Tensor {
    Tensor::cat(
        &[
            similarity.shallow_clone(),
            labels.one_hot(c).to_kind(Kind::Float),
        ],
        1,
    )
}

/// alpha after `norm` (see `LossConfig::alpha_norm`): `alpha / mean(alpha)` over the batch, or
/// over the batch samples with the same label. `alpha [N]` -> `[N]`.
pub fn normalise_alpha(alpha: &Tensor, labels: &Tensor, c: i64, norm: AlphaNorm) -> Tensor {
    match norm {
        AlphaNorm::None => alpha.shallow_clone(),
        AlphaNorm::Batch => alpha / alpha.mean(Kind::Float).clamp_min(EPS),
        AlphaNorm::Class => {
            let onehot = labels.one_hot(c).to_kind(Kind::Float); // [N, C]
            let sums = alpha.unsqueeze(0).matmul(&onehot).squeeze_dim(0); // [C]
            let counts = onehot.sum_dim_intlist(0, false, Kind::Float);
            let class_mean = (sums / counts.clamp_min(1.0)).gather(0, labels, false);
            alpha / class_mean.clamp_min(EPS)
        }
    }
}

/// Weighted CE (Eq. 9): CE of the target logits scaled per sample by alpha (`alpha_i W^T f_i`),
/// not CE multiplied by alpha. `alpha [N]`.
pub fn weighted_ce(target_logits: &Tensor, alpha: &Tensor, labels: &Tensor) -> Tensor {
    cross_entropy(&(target_logits * alpha.unsqueeze(1)), labels)
}

/// `F F^T` with every row L2-normalised: `[N, D] -> [N, N]` (or batched `[B, N, D]`).
fn normalised_gram(features: &Tensor) -> Tensor {
    let g = features.matmul(&features.transpose(-1, -2));
    let norm = g.norm_scalaropt_dim(2.0, [-1], true).clamp_min(EPS);
    g / norm
}

/// L_sp (Eq. 5, 13-17): `(1/C) sum_i (1/N_i^2) || M^i * (A_tar - A_aux^i) ||_F^2`, where `M^i`
/// drops the rows and columns of samples labelled i and `N_i` counts the others. `aux`: C
/// tensors `[N, D_aux]` (features or logits); `detach_aux` makes the auxiliary side a fixed
/// teacher.
pub fn similarity_preserving(
    target_feat: &Tensor,
    aux: &[Tensor],
    labels: &Tensor,
    detach_aux: bool,
) -> Tensor {
    let c = aux.len() as i64;
    let a_tar = normalised_gram(target_feat).unsqueeze(0); // [1, N, N]
    let stacked = Tensor::stack(aux, 0);
    let stacked = if detach_aux {
        stacked.detach()
    } else {
        stacked
    };
    let a_aux = normalised_gram(&stacked); // [C, N, N]
    let i = Tensor::arange(c, (Kind::Int64, labels.device())).unsqueeze(1);
    let keep = labels.unsqueeze(0).ne_tensor(&i).to_kind(Kind::Float); // [C, N]
    let mask = keep.unsqueeze(2) * keep.unsqueeze(1); // [C, N, N]
    let n_i = keep.sum_dim_intlist(1, false, Kind::Float); // [C]
    let sq =
        ((a_tar - a_aux) * mask)
            .square()
            .sum_dim_intlist([1, 2].as_slice(), false, Kind::Float);
    (sq / n_i.square().clamp_min(1.0)).mean(Kind::Float)
}

/// The loss of a single-network mode (`train.mode` other than DMUE), with its setting.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SingleLoss {
    /// Cross-entropy (the baseline, and ELR and EAC before their regularisers).
    Ce,
    /// Label smoothing with this factor.
    LabelSmoothing(f64),
    /// Generalised cross-entropy with this q.
    Gce(f64),
    /// Symmetric cross-entropy with these alpha and beta.
    Sce(f64, f64),
}

/// The single-network modes: a loss of the target branch against the given labels, no
/// ramps. ELR's and EAC's regularisers are added by the caller, which holds their state and
/// views.
pub fn single_branch_loss(logits: &Tensor, labels: &Tensor, loss: SingleLoss) -> LossTerms {
    let ce = match loss {
        SingleLoss::Ce => cross_entropy(logits, labels),
        SingleLoss::LabelSmoothing(eps) => label_smoothing_ce(logits, labels, eps),
        SingleLoss::Gce(q) => generalized_ce(logits, labels, q),
        SingleLoss::Sce(alpha, beta) => symmetric_ce(logits, labels, alpha, beta),
    };
    LossTerms {
        total: ce.shallow_clone(),
        target: ce,
        soft: None,
        sp: None,
        aux: None,
        reg: None,
        alpha: None,
        alpha_raw: None,
        w_u: 1.0,
        w_d: 0.0,
    }
}

/// The loss terms of one DMUE step (scalars), and alpha for logging.
#[derive(Debug)]
pub struct LossTerms {
    pub total: Tensor,
    /// Weighted CE (confidence on) or plain CE of the target branch.
    pub target: Tensor,
    pub soft: Option<Tensor>,
    pub sp: Option<Tensor>,
    pub aux: Option<Tensor>,
    /// A peer method's regulariser (ELR's, EAC's consistency), unweighted; its weighted value
    /// is part of `total`.
    pub reg: Option<Tensor>,
    /// The confidence that weighted the CE (after `alpha_norm`).
    pub alpha: Option<Tensor>,
    /// The uncertainty module's own output, before `alpha_norm` (what is logged: under the
    /// class normalisation the weights average 1 by construction).
    pub alpha_raw: Option<Tensor>,
    pub w_u: f64,
    pub w_d: f64,
}

impl LossTerms {
    /// Name and value of every term present, for logging and NaN reports.
    pub fn named(&self) -> Vec<(&'static str, &Tensor)> {
        let mut v = vec![("total", &self.total), ("target", &self.target)];
        for (name, t) in [
            ("soft", &self.soft),
            ("sp", &self.sp),
            ("aux", &self.aux),
            ("reg", &self.reg),
        ] {
            if let Some(t) = t {
                v.push((name, t));
            }
        }
        v
    }
}

/// The confidence alpha of each sample `[N]` (Eq. 6-8): the uncertainty module on the
/// pairwise similarity vector of the target features, then `cfg.alpha_norm`. With
/// `cfg.similarity_detach` the features are detached: the module learns from the similarity
/// pattern and cannot reshape the features.
pub fn confidence(
    target_feat: &Tensor,
    labels: &Tensor,
    c: i64,
    module: &crate::model::UncertaintyModule,
    cfg: &LossConfig,
) -> Tensor {
    normalise_alpha(
        &raw_confidence(target_feat, labels, c, module, cfg),
        labels,
        c,
        cfg.alpha_norm,
    )
}

/// The uncertainty module's output `[N]` before `cfg.alpha_norm` (see [`confidence`]).
pub fn raw_confidence(
    target_feat: &Tensor,
    labels: &Tensor,
    c: i64,
    module: &crate::model::UncertaintyModule,
    cfg: &LossConfig,
) -> Tensor {
    let feat = if cfg.similarity_detach {
        target_feat.detach()
    } else {
        target_feat.shallow_clone()
    };
    let s = class_similarity(
        &feat,
        labels,
        c,
        cfg.similarity_include_self,
        cfg.similarity_minmax,
    );
    let s = if cfg.similarity_relative {
        relative_to_label(&s, labels)
    } else {
        s
    };
    module.forward(&similarity_vector(&s, labels, c))
}

/// The latent distribution L_soft pulls towards: auxiliary branch y's softmax, sharpened
/// with T (Sec. 3.2, Eq. 3). `[N, C-1]`, no gradient.
pub fn mined_latent(aux_logits: &[Tensor], labels: &Tensor, cfg: &LossConfig) -> Tensor {
    sharpen(&latent_distribution(aux_logits, labels), cfg.temperature)
}

/// The ramps `(w_u, w_d)` of Eq. 12 at 1-based `epoch`.
pub fn ramps(epoch: usize, beta: f64) -> (f64, f64) {
    (ramp_up(epoch as f64, beta), ramp_down(epoch as f64, beta))
}

/// Eq. 10: `w_u(e) (L_wce + omega L_soft + gamma L_sp) + w_d(e) L_aux` at 1-based `epoch`
/// with its ramps `(w_u, w_d)` ([`ramps`]), with the Table 2 switches. Needs the multi-branch
/// outputs and the uncertainty module. `gce_q`: the exponent of the hard-label terms that
/// `cfg` sets to GCE.
pub fn dmue_loss(
    out: &crate::model::TrainOutput,
    uncertainty: Option<&crate::model::UncertaintyModule>,
    labels: &Tensor,
    cfg: &LossConfig,
    epoch: usize,
    (w_u, w_d): (f64, f64),
    gce_q: f64,
) -> LossTerms {
    let c = out.target_logits.size()[1];
    let (target, alpha, alpha_raw) = match (cfg.confidence, uncertainty) {
        (true, Some(module)) if epoch >= cfg.confidence_from_epoch => {
            let raw = raw_confidence(&out.target_feat, labels, c, module, cfg);
            let alpha = normalise_alpha(&raw, labels, c, cfg.alpha_norm);
            let term = if cfg.alpha_as_weight {
                alpha_weighted_hard_label
            } else {
                weighted_hard_label
            };
            (
                term(&out.target_logits, &alpha, labels, cfg.target_loss, gce_q),
                Some(alpha),
                Some(raw),
            )
        }
        _ => (
            hard_label(&out.target_logits, labels, cfg.target_loss, gce_q),
            None,
            None,
        ),
    };
    let has_aux = !out.aux_logits.is_empty();
    let soft = (cfg.latent && has_aux).then(|| {
        soft_loss(
            &out.target_logits,
            &mined_latent(&out.aux_logits, labels, cfg),
            labels,
        )
    });
    let sp = (cfg.similarity_preserving && has_aux).then(|| {
        let aux = match cfg.sp_aux_source {
            SpSource::Features => &out.aux_feat,
            SpSource::Logits => &out.aux_logits,
        };
        similarity_preserving(&out.target_feat, aux, labels, cfg.sp_detach_aux)
    });
    let aux = (has_aux && (cfg.latent || cfg.similarity_preserving))
        .then(|| aux_hard_label(&out.aux_logits, labels, cfg.aux_loss, gce_q));

    // No in-place ops here: `target` is reported on its own and must not absorb the others.
    let upper_terms: Vec<Tensor> = [
        Some(target.shallow_clone()),
        soft.as_ref().map(|s| s * cfg.omega),
        sp.as_ref().map(|s| s * cfg.gamma),
    ]
    .into_iter()
    .flatten()
    .collect();
    let upper = Tensor::stack(&upper_terms, 0).sum(Kind::Float) * w_u;
    let total = match &aux {
        Some(a) => upper + a * w_d,
        None => upper,
    };
    LossTerms {
        total,
        target,
        soft,
        sp,
        aux,
        reg: None,
        alpha,
        alpha_raw,
        w_u,
        w_d,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A `[rows, cols]` float tensor from row slices (shared with the audit's tests).
    pub(crate) fn t2(rows: &[&[f32]]) -> Tensor {
        let n = rows.len() as i64;
        let flat: Vec<f32> = rows.iter().flat_map(|r| r.iter().copied()).collect();
        Tensor::from_slice(&flat).view([n, -1])
    }
    pub(crate) fn labels(v: &[i64]) -> Tensor {
        Tensor::from_slice(v)
    }
    fn scalar(t: &Tensor) -> f64 {
        t.double_value(&[])
    }
    fn close(a: f64, b: f64) {
        assert!((a - b).abs() < 1e-5, "{a} != {b}");
    }
    fn ce(logits: &[f64], y: usize) -> f64 {
        let lse = logits.iter().map(|v| v.exp()).sum::<f64>().ln();
        lse - logits[y]
    }

    // Ramps, Eq. 11-12 with beta = 6:
    //   w_u(3) = exp(-(1 - 3/6)^2) = exp(-0.25) = 0.778801; w_u(0) = exp(-1) = 0.367879;
    //   w_u(e >= 6) = 1. w_d(e <= 6) = 1; w_d(12) = exp(-(1 - 6/12)^2) = 0.778801;
    //   w_d(60) = exp(-0.81) = 0.444858.
    #[test]
    fn ramps_match_eq_11_12() {
        close(ramp_up(3.0, 6.0), 0.778801);
        close(ramp_up(0.0, 6.0), 0.367879);
        close(ramp_up(6.0, 6.0), 1.0);
        close(ramp_up(7.0, 6.0), 1.0);
        close(ramp_down(6.0, 6.0), 1.0);
        close(ramp_down(12.0, 6.0), 0.778801);
        close(ramp_down(60.0, 6.0), 0.444858);
    }

    // C = 3, labels [0, 2]. Branch j sees the samples not labelled j:
    //   branch 0: sample 1 (label 2 -> 1); branch 1: sample 0 (0 -> 0) and sample 1 (2 -> 1);
    //   branch 2: sample 0 (0 -> 0).
    // L_aux = (CE(b0[1], 1) + (CE(b1[0], 0) + CE(b1[1], 1)) / 2 + CE(b2[0], 0)) / 3.
    // With b0[1] = [0, ln 3]: softmax = [1/4, 3/4], CE = -ln(3/4) = 0.287682.
    #[test]
    fn aux_ce_remaps_labels_and_averages_branches() {
        let b0 = t2(&[&[5.0, -5.0], &[0.0, 3f32.ln()]]);
        let b1 = t2(&[&[1.0, 0.0], &[0.5, 2.0]]);
        let b2 = t2(&[&[0.2, 0.1], &[9.0, 9.0]]);
        let got = scalar(&aux_ce(&[b0, b1, b2], &labels(&[0, 2])));
        let expected =
            (0.287682 + (ce(&[1.0, 0.0], 0) + ce(&[0.5, 2.0], 1)) / 2.0 + ce(&[0.2, 0.1], 0)) / 3.0;
        close(got, expected);
    }

    // C = 2, every sample labelled 0: branch 0 has no samples and is left out of the mean
    // (not counted as 0, no NaN). Branch 1 sees both, label 0 -> 0: mean of CE([a, b], 0).
    #[test]
    fn aux_ce_skips_branches_without_samples() {
        let b0 = t2(&[&[3.0], &[1.0]]);
        let b1 = t2(&[&[2.0], &[-1.0]]);
        // One logit: the 1-class softmax is 1, so CE is 0 whatever the logit.
        close(scalar(&aux_ce(&[b0, b1], &labels(&[0, 0]))), 0.0);
        let b0 = t2(&[&[3.0, 0.0], &[1.0, 0.0]]);
        let b1 = t2(&[&[1.0, 0.0], &[0.0, 1.0]]);
        let b2 = t2(&[&[0.0, 0.0], &[0.0, 0.0]]);
        let got = scalar(&aux_ce(&[b0, b1, b2], &labels(&[0, 0])));
        // Branch 0: nobody. Branches 1 and 2: both samples with label 0 -> 0.
        let expected = ((ce(&[1.0, 0.0], 0) + ce(&[0.0, 1.0], 0)) / 2.0 + ce(&[0.0, 0.0], 0)) / 2.0;
        close(got, expected);
    }

    // Sharpen [0.5, 0.3, 0.2] with T = 1.2: p^(1/1.2) = [0.561231, 0.366664, 0.261532],
    // sum 1.189427 -> [0.471850, 0.308269, 0.219881] (python: [x**(1/1.2) for x in p]).
    #[test]
    fn sharpen_matches_eq_3() {
        let s = sharpen(&t2(&[&[0.5, 0.3, 0.2]]), 1.2);
        let v: Vec<f64> = (0..3).map(|i| s.double_value(&[0, i])).collect();
        let raw = [0.5f64, 0.3, 0.2].map(|p| p.powf(1.0 / 1.2));
        let sum: f64 = raw.iter().sum();
        for i in 0..3 {
            close(v[i], raw[i] / sum);
        }
        close(v[0], 0.471850);
        close(v[2], 0.219881);
    }

    // Sample 0 labelled 1 must take branch 1's softmax, sample 1 labelled 0 branch 0's.
    // Branch 1, sample 0: [ln 1, ln 3] -> [0.25, 0.75]; branch 0, sample 1: [ln 4, 0] -> [0.8, 0.2].
    #[test]
    fn latent_distribution_uses_the_annotated_branch() {
        let b0 = t2(&[&[9.0, -9.0], &[4f32.ln(), 0.0]]);
        let b1 = t2(&[&[0.0, 3f32.ln()], &[-9.0, 9.0]]);
        let b2 = t2(&[&[5.0, 5.0], &[5.0, 5.0]]);
        let l = latent_distribution(&[b0, b1, b2], &labels(&[1, 0]));
        close(l.double_value(&[0, 0]), 0.25);
        close(l.double_value(&[0, 1]), 0.75);
        close(l.double_value(&[1, 0]), 0.8);
        close(l.double_value(&[1, 1]), 0.2);
    }

    // N = 1, C = 3, label 1, target logits 0 -> softmax [1/3, 1/3, 1/3]; classes != 1 are
    // {0, 2}; latent [0.9, 0.1]:
    //   L_soft = ((0.9 - 1/3)^2 + (0.1 - 1/3)^2) / (1 * 2) = (0.321111 + 0.054444) / 2 = 0.187778.
    // N = 2 adds sample 2 (label 2, logits [ln 2, 0, 0] -> [0.5, 0.25, 0.25], classes {0, 1},
    // latent [0.5, 0.5]): ((0.5-0.5)^2 + (0.5-0.25)^2) = 0.0625; L = (0.375556 + 0.0625) / 4.
    #[test]
    fn soft_loss_matches_eq_4() {
        let got = soft_loss(&t2(&[&[0.0, 0.0, 0.0]]), &t2(&[&[0.9, 0.1]]), &labels(&[1]));
        close(scalar(&got), 0.187778);
        let got = soft_loss(
            &t2(&[&[0.0, 0.0, 0.0], &[2f32.ln(), 0.0, 0.0]]),
            &t2(&[&[0.9, 0.1], &[0.5, 0.5]]),
            &labels(&[1, 2]),
        );
        close(scalar(&got), (0.375556 + 0.0625) / 4.0);
    }

    // f0 = (1, 0), f1 = (0, 2), f2 = (1, 1), labels [0, 1, 0], C = 2.
    // cos(f0, f1) = 0, cos(f0, f2) = cos(f1, f2) = 1/sqrt(2) = 0.707107.
    // Without self: S[0] = [cos(f0,f2), cos(f0,f1)] = [0.707107, 0];
    //   S[1] = [(cos(f1,f0) + cos(f1,f2)) / 2, nobody else in class 1 -> the mean of the
    //   row's defined entries] = [0.353553, 0.353553] (not 0, "least similar");
    //   S[2] = [0.707107, 0.707107].
    // With self: S[0][0] = (1 + 0.707107) / 2 = 0.853553, S[1][1] = 1.
    #[test]
    fn class_similarity_matches_eq_7() {
        let f = t2(&[&[1.0, 0.0], &[0.0, 2.0], &[1.0, 1.0]]);
        let y = labels(&[0, 1, 0]);
        let s = class_similarity(&f, &y, 2, false, false);
        let r = std::f64::consts::FRAC_1_SQRT_2;
        for (i, j, v) in [
            (0, 0, r),
            (0, 1, 0.0),
            (1, 0, r / 2.0),
            (1, 1, r / 2.0),
            (2, 0, r),
            (2, 1, r),
        ] {
            close(s.double_value(&[i, j]), v);
        }
        let s = class_similarity(&f, &y, 2, true, false);
        close(s.double_value(&[0, 0]), (1.0 + r) / 2.0);
        close(s.double_value(&[1, 1]), 1.0);
        // Min-max per row: S[2] = [r, r] has zero range -> 0, no NaN.
        let s = class_similarity(&f, &y, 2, false, true);
        close(s.double_value(&[0, 0]), 1.0);
        close(s.double_value(&[2, 1]), 0.0);
    }

    // S rows [0.2, 0.5, 0.1] (label 1) and [0.3, 0.3, 0.9] (label 0), each minus its entry at
    // the label: [-0.3, 0, -0.4] and [0, 0, 0.6] (the second sample is closer to class 2).
    #[test]
    fn similarity_relative_to_the_label_by_hand() {
        let s = t2(&[&[0.2, 0.5, 0.1], &[0.3, 0.3, 0.9]]);
        let got = relative_to_label(&s, &labels(&[1, 0]));
        for (i, j, v) in [
            (0, 0, -0.3),
            (0, 1, 0.0),
            (0, 2, -0.4),
            (1, 0, 0.0),
            (1, 1, 0.0),
            (1, 2, 0.6),
        ] {
            close(got.double_value(&[i, j]), v);
        }
        // The module reads the relative rows when the option is on, S itself when it is off.
        let vs = tch::nn::VarStore::new(tch::Device::Cpu);
        let module = crate::model::UncertaintyModule::new(&vs.root(), 2);
        let f = t2(&[&[1.0, 0.0], &[0.0, 2.0], &[1.0, 1.0], &[1.0, -1.0]]);
        let y = labels(&[0, 1, 0, 1]);
        let s = class_similarity(&f, &y, 2, false, false);
        let relative = LossConfig {
            similarity_relative: true,
            ..LossConfig::default()
        };
        let want = module.forward(&similarity_vector(&relative_to_label(&s, &y), &y, 2));
        let got = raw_confidence(&f, &y, 2, &module, &relative);
        assert!(f64::try_from((got - &want).abs().max()).unwrap() < 1e-7);
        let plain = raw_confidence(&f, &y, 2, &module, &LossConfig::default());
        assert!(f64::try_from((plain - want).abs().max()).unwrap() > 1e-4);
    }

    #[test]
    fn zero_features_and_missing_classes_give_no_nan() {
        let f = t2(&[&[0.0, 0.0], &[0.0, 0.0]]);
        let y = labels(&[0, 0]);
        let s = class_similarity(&f, &y, 3, false, true);
        assert!(s.isfinite().all().int64_value(&[]) == 1);
        let sp = similarity_preserving(&f, &[f.copy(), f.copy(), f.copy()], &y, true);
        assert!(scalar(&sp).is_finite());
    }

    // Logits [2, 0], label 0, alpha 0.5 -> scaled logits [1, 0]:
    //   L_wce = -ln(e / (e + 1)) = ln(1 + e^-1) = 0.313262.
    // (CE times alpha would be 0.5 * ln(1 + e^-2) = 0.063464.)
    #[test]
    fn weighted_ce_scales_logits_not_the_loss() {
        let got = weighted_ce(
            &t2(&[&[2.0, 0.0]]),
            &Tensor::from_slice(&[0.5f32]),
            &labels(&[0]),
        );
        close(scalar(&got), 0.313262);
    }

    // Two samples, C = 2: logits [0, ln 3] label 1 (p_y = 3/4) and [0, 0] label 0 (p_y = 1/2).
    //   CE = (-ln 0.75 - ln 0.5) / 2 = 0.490415; RCE = -A (1 - p_y), A = -4: (4 * 0.25 + 4 * 0.5) / 2
    //   = 1.5. alpha 0.1, beta 1 (CIFAR-10): 0.0490415 + 1.5 = 1.549041; alpha 6, beta 0.1
    //   (CIFAR-100): 2.942487 + 0.15 = 3.092488.
    #[test]
    fn symmetric_ce_matches_hand_values() {
        let z = t2(&[&[0.0, 3f32.ln()], &[0.0, 0.0]]);
        let y = labels(&[1, 0]);
        close(scalar(&symmetric_ce(&z, &y, 0.1, 1.0)), 1.549041);
        close(scalar(&symmetric_ce(&z, &y, 6.0, 0.1)), 3.092488);
        // beta 0 is CE scaled by alpha.
        close(
            scalar(&symmetric_ce(&z, &y, 1.0, 0.0)),
            scalar(&cross_entropy(&z, &y)),
        );
    }

    // ELR with beta 0.7. Sample 0: target row [0.5, 0.5], logits [0, ln 3] -> p = [0.25, 0.75]:
    //   t = 0.7 [0.5, 0.5] + 0.3 [0.25, 0.75] = [0.425, 0.575]; <p, t> = 0.5375.
    // Sample 1: target row [0, 0] (never seen), logits [0, 0] -> p = [0.5, 0.5]:
    //   t = [0.15, 0.15]; <p, t> = 0.15.
    // Regulariser: (ln(1 - 0.5375) + ln(1 - 0.15)) / 2 = -0.466814.
    #[test]
    fn elr_targets_and_regulariser_match_hand_values() {
        let z = t2(&[&[0.0, 3f32.ln()], &[0.0, 0.0]]).set_requires_grad(true);
        let rows = t2(&[&[0.5, 0.5], &[0.0, 0.0]]).set_requires_grad(true);
        let t = elr_targets(&rows, &z, 0.7);
        let got = Vec::<f32>::try_from(t.flatten(0, -1)).unwrap();
        for (g, e) in got.iter().zip([0.425, 0.575, 0.15, 0.15]) {
            close(*g as f64, e);
        }
        let reg = elr_regulariser(&z, &t);
        close(scalar(&reg), -0.466814);
        // No gradient reaches the targets (ELR detaches them): only the prediction moves.
        reg.backward();
        assert!(!rows.grad().defined());
        assert!(z.grad().abs().sum(Kind::Float).double_value(&[]) > 0.0);
        // A confident prediction is clamped to [1e-4, 1 - 1e-4] before it enters the targets.
        let t = elr_targets(&t2(&[&[0.0, 0.0]]), &t2(&[&[40.0, -40.0]]), 0.0);
        let got = Vec::<f32>::try_from(t.flatten(0, -1)).unwrap();
        close(got[1] as f64, 1e-4);
    }

    // CAMs: features at two positions f(0, 0) = [1, 2], f(0, 1) = [3, 4]; W = [[1, 1], [1, -1]]:
    //   class 0: [3, 7]; class 1: [-1, -1].
    // The mirror view's maps [[7, 3], [-1, -1]] mirror back to the same maps: consistency 0.
    // Maps [[3, 7], [0, -1]] mirror back to [[7, 3], [-1, 0]]: squared differences 16, 16, 0, 1,
    //   mean 33 / 4 = 8.25.
    #[test]
    fn class_activation_maps_and_flip_consistency_match_hand_values() {
        let f = Tensor::from_slice(&[1.0f32, 3.0, 2.0, 4.0]).view([1, 2, 1, 2]);
        let w = t2(&[&[1.0, 1.0], &[1.0, -1.0]]);
        let cams = class_activation_maps(&f, &w);
        assert_eq!(cams.size(), [1, 2, 1, 2]);
        let got = Vec::<f32>::try_from(cams.flatten(0, -1)).unwrap();
        assert_eq!(got, [3.0, 7.0, -1.0, -1.0]);
        let mirror = Tensor::from_slice(&[7.0f32, 3.0, -1.0, -1.0]).view([1, 2, 1, 2]);
        close(scalar(&flip_consistency(&cams, &mirror)), 0.0);
        let other = Tensor::from_slice(&[3.0f32, 7.0, 0.0, -1.0]).view([1, 2, 1, 2]);
        close(scalar(&flip_consistency(&cams, &other)), 8.25);
    }

    // alpha as a detached weight: logits [2, 0] and [0, 1], labels [0, 0], alpha [0.5, 1.5].
    //   Per-sample CE ln(1 + e^-2) = 0.126928, ln(1 + e) = 1.313262;
    //   value (0.5 * 0.126928 + 1.5 * 1.313262) / 2 = 1.016679.
    //   d/dz: alpha_i (softmax(z_i) - onehot) / 2: [-0.029801, 0.029801], [-0.548294, 0.548294].
    //   d/dalpha, as Eq. 9's: (softmax(alpha_i z_i) - onehot) . z_i / 2:
    //     softmax([1, 0]) = [0.731059, 0.268941] -> -0.268941;
    //     softmax([0, 1.5]) = [0.182426, 0.817574] -> 0.408787.
    //   GCE (q = 0.7): logits [0, ln 3] twice, label 1, alpha [1, 2]:
    //     (1 - 0.75^0.7) / 0.7 = 0.260566 per sample, value (1 + 2) * 0.260566 / 2 = 0.390849.
    #[test]
    fn alpha_as_weight_by_hand() {
        let z = t2(&[&[2.0, 0.0], &[0.0, 1.0]]).set_requires_grad(true);
        let alpha = Tensor::from_slice(&[0.5f32, 1.5]).set_requires_grad(true);
        let y = labels(&[0, 0]);
        let t = alpha_weighted_hard_label(&z, &alpha, &y, HardLabel::Ce, 0.7);
        close(scalar(&t), 1.016679);
        t.backward();
        let gz = Vec::<f32>::try_from(z.grad().flatten(0, -1)).unwrap();
        for (g, e) in gz.iter().zip([-0.029801, 0.029801, -0.548294, 0.548294]) {
            close(*g as f64, e);
        }
        let ga = Vec::<f32>::try_from(alpha.grad()).unwrap();
        close(ga[0] as f64, -0.268941);
        close(ga[1] as f64, 0.408787);
        let z = t2(&[&[0.0, 3f32.ln()], &[0.0, 3f32.ln()]]);
        let alpha = Tensor::from_slice(&[1.0f32, 2.0]);
        let gce = alpha_weighted_hard_label(&z, &alpha, &labels(&[1, 1]), HardLabel::Gce, 0.7);
        close(scalar(&gce), 0.390849);
    }

    // GCE with q = 0.7 through the confidence: logits [0, ln 3], label 1.
    //   alpha 1: p_y = 3/4, (1 - 0.75^0.7) / 0.7 = 0.260566.
    //   alpha 2: logits [0, 2 ln 3], p_y = 9/10, (1 - 0.9^0.7) / 0.7 = 0.101569.
    // CE keeps Eq. 9 (the weighted CE).
    #[test]
    fn weighted_gce_scales_logits_then_applies_gce() {
        let z = t2(&[&[0.0, 3f32.ln()], &[0.0, 3f32.ln()]]);
        let y = labels(&[1, 1]);
        let alpha = Tensor::from_slice(&[1.0f32, 2.0]);
        let got = weighted_hard_label(&z, &alpha, &y, HardLabel::Gce, 0.7);
        close(scalar(&got), (0.260566 + 0.101569) / 2.0);
        let ce = weighted_hard_label(&z, &alpha, &y, HardLabel::Ce, 0.7);
        close(scalar(&ce), scalar(&weighted_ce(&z, &alpha, &y)));
    }

    // The auxiliary term through GCE: the aux_ce example above with each branch's CE replaced by
    // (1 - p^q) / q of the same probability (q = 0.7).
    #[test]
    fn aux_gce_replaces_each_branch_ce() {
        let gce = |logits: &[f64], y: usize| (1.0 - (-ce(logits, y)).exp().powf(0.7)) / 0.7;
        let b0 = t2(&[&[5.0, -5.0], &[0.0, 3f32.ln()]]);
        let b1 = t2(&[&[1.0, 0.0], &[0.5, 2.0]]);
        let b2 = t2(&[&[0.2, 0.1], &[9.0, 9.0]]);
        let got = aux_hard_label(&[b0, b1, b2], &labels(&[0, 2]), HardLabel::Gce, 0.7);
        let expected =
            (0.260566 + (gce(&[1.0, 0.0], 0) + gce(&[0.5, 2.0], 1)) / 2.0 + gce(&[0.2, 0.1], 0))
                / 3.0;
        close(scalar(&got), expected);
    }

    // N = 2, D = 2, C = 2, labels [0, 1].
    // Target f0 = (1, 0), f1 = (1, 1): G = [[1, 1], [1, 2]], row norms sqrt2, sqrt5 ->
    //   A_tar = [[0.707107, 0.707107], [0.447214, 0.894427]].
    // Aux 0: g0 = (1, 0), g1 = (0, 1) -> A = I. M^0 keeps sample 1 only (N_0 = 1):
    //   term_0 = (0.894427 - 1)^2 = 0.011146.
    // Aux 1: h0 = (2, 0), h1 = (0, 1) -> A = I. M^1 keeps sample 0 (N_1 = 1):
    //   term_1 = (0.707107 - 1)^2 = 0.085786.
    // L_sp = (0.011146 + 0.085786) / 2 = 0.048466.
    #[test]
    fn similarity_preserving_matches_eq_5() {
        let tar = t2(&[&[1.0, 0.0], &[1.0, 1.0]]);
        let a0 = t2(&[&[1.0, 0.0], &[0.0, 1.0]]);
        let a1 = t2(&[&[2.0, 0.0], &[0.0, 1.0]]);
        let got = scalar(&similarity_preserving(
            &tar,
            &[a0, a1],
            &labels(&[0, 1]),
            true,
        ));
        close(got, 0.048466);
    }

    // Same target features, labels [0, 0]: M^0 is empty (term 0, N_0 = 0 guarded);
    // M^1 keeps everything, N_1 = 2, aux 1 = identity Gram:
    //   ||A_tar - I||^2 = 0.292893^2 + 0.707107^2 + 0.447214^2 + 0.105573^2
    //                   = 0.085786 + 0.5 + 0.2 + 0.011146 = 0.796932
    //   term_1 = 0.796932 / 4 = 0.199233; L_sp = (0 + 0.199233) / 2 = 0.099617.
    #[test]
    fn similarity_preserving_handles_an_absent_class() {
        let tar = t2(&[&[1.0, 0.0], &[1.0, 1.0]]);
        let eye = t2(&[&[1.0, 0.0], &[0.0, 1.0]]);
        let got = scalar(&similarity_preserving(
            &tar,
            &[eye.copy(), eye],
            &labels(&[0, 0]),
            true,
        ));
        close(got, 0.099617);
    }

    // A class seen once in the batch (label 2, sample 3) with the sample itself excluded: its
    // own-class entry has no reference and must not be the row's minimum.
    // f = (1,0), (1,0.1), (0,1), (0.6,0.8); labels [0, 0, 1, 2], C = 3.
    // Sample 3: cos to f0 = 0.6, to f1 = (0.6 + 0.08)/sqrt(1.01) = 0.676627, to f2 = 0.8.
    //   S[3] = [(0.6 + 0.676627)/2, 0.8, undefined] = [0.638314, 0.8, mean = 0.719157].
    #[test]
    fn a_class_seen_once_is_neutral_not_least_similar() {
        let f = t2(&[&[1.0, 0.0], &[1.0, 0.1], &[0.0, 1.0], &[0.6, 0.8]]);
        let s = class_similarity(&f, &labels(&[0, 0, 1, 2]), 3, false, false);
        let c01 = 0.68 / 1.01f64.sqrt();
        close(s.double_value(&[3, 0]), (0.6 + c01) / 2.0);
        close(s.double_value(&[3, 1]), 0.8);
        close(s.double_value(&[3, 2]), ((0.6 + c01) / 2.0 + 0.8) / 2.0);
        // Class 1 (sample 2) is also alone: its own entry is the mean of its other two.
        let c21 = 0.1 / 1.01f64.sqrt();
        let s20 = (0.0 + c21) / 2.0;
        close(s.double_value(&[2, 1]), (s20 + 0.8) / 2.0);
    }

    // alpha [0.2, 0.6, 0.4, 0.8], labels [0, 0, 1, 1]:
    //   batch: mean 0.5 -> [0.4, 1.2, 0.8, 1.6];
    //   class: class 0 mean 0.4, class 1 mean 0.6 -> [0.5, 1.5, 0.666667, 1.333333].
    #[test]
    fn alpha_normalisations_by_hand() {
        let a = Tensor::from_slice(&[0.2f32, 0.6, 0.4, 0.8]);
        let y = labels(&[0, 0, 1, 1]);
        let got = |n| {
            let t = normalise_alpha(&a, &y, 3, n);
            (0..4).map(|i| t.double_value(&[i])).collect::<Vec<_>>()
        };
        for (g, w) in got(AlphaNorm::None).iter().zip([0.2, 0.6, 0.4, 0.8]) {
            close(*g, w);
        }
        for (g, w) in got(AlphaNorm::Batch).iter().zip([0.4, 1.2, 0.8, 1.6]) {
            close(*g, w);
        }
        for (g, w) in got(AlphaNorm::Class)
            .iter()
            .zip([0.5, 1.5, 2.0 / 3.0, 4.0 / 3.0])
        {
            close(*g, w);
        }
    }

    // logits [2, 0], label 0: p0 = e^2 / (e^2 + 1) = 0.880797.
    //   GCE, q = 0.7: (1 - 0.880797^0.7) / 0.7 = (1 - 0.914983) / 0.7 = 0.121453.
    //   Label smoothing 0.1: -log p = [0.126928, 2.126928];
    //   0.9 * 0.126928 + 0.1 * (0.126928 + 2.126928) / 2 = 0.226928.
    #[test]
    fn gce_and_label_smoothing_by_hand() {
        let z = t2(&[&[2.0, 0.0]]);
        close(scalar(&generalized_ce(&z, &labels(&[0]), 0.7)), 0.121453);
        close(
            scalar(&label_smoothing_ce(&z, &labels(&[0]), 0.1)),
            0.226928,
        );
        // q -> 0 approaches CE (0.126928).
        assert!((scalar(&generalized_ce(&z, &labels(&[0]), 1e-4)) - 0.126928).abs() < 1e-4);
        // The belief in each label: 0.880797^0.7 = 0.914983, 0.119203^0.7 = 0.225632.
        let zz = t2(&[&[2.0, 0.0], &[2.0, 0.0]]);
        let belief = label_belief(&zz, &labels(&[0, 1]), 0.7);
        close(belief.double_value(&[0]), 0.914983);
        close(belief.double_value(&[1]), 0.225632);
        // Relative to their mean 0.570308: 1.604 capped at 1, and 0.395632.
        let relative = relative_label_belief(&zz, &labels(&[0, 1]), 0.7);
        close(relative.double_value(&[0]), 1.0);
        close(relative.double_value(&[1]), 0.395632);
    }

    /// The stop-gradient options do what their names say: `sp_detach_aux` decides whether L_sp
    /// reaches the auxiliary side, `similarity_detach` whether alpha reaches the features.
    #[test]
    fn stop_gradient_options() {
        let y = labels(&[0, 1, 0, 1]);
        let tar = Tensor::randn([4, 3], (Kind::Float, tch::Device::Cpu)).set_requires_grad(true);
        for detach in [true, false] {
            let aux: Vec<Tensor> = (0..2)
                .map(|_| {
                    Tensor::randn([4, 3], (Kind::Float, tch::Device::Cpu)).set_requires_grad(true)
                })
                .collect();
            similarity_preserving(&tar, &aux, &y, detach).backward();
            assert_eq!(aux[0].grad().defined(), !detach, "sp_detach_aux = {detach}");
        }
        let vs = tch::nn::VarStore::new(tch::Device::Cpu);
        let module = crate::model::UncertaintyModule::new(&vs.root(), 2);
        for detach in [true, false] {
            let f = t2(&[
                &[1.0, 0.2, 0.0],
                &[0.1, 1.0, 0.3],
                &[0.8, 0.5, 0.1],
                &[0.0, 0.4, 1.0],
            ])
            .set_requires_grad(true);
            let cfg = LossConfig {
                similarity_detach: detach,
                ..Default::default()
            };
            // Squared: the plain sum of class-normalised alpha is a constant (the class
            // counts), whose gradient would be zero even through an attached graph.
            confidence(&f, &y, 2, &module, &cfg)
                .square()
                .sum(Kind::Float)
                .backward();
            assert_eq!(f.grad().defined(), !detach, "similarity_detach = {detach}");
            if !detach {
                let g = f.grad().abs().sum(Kind::Float).double_value(&[]);
                // Measured 0.40 here; the plain sum's rounding noise is about 1e-7.
                assert!(g > 1e-4, "no gradient reaches the features through S ({g})");
            }
        }
    }

    /// Eq. 10 wiring: the total equals the terms recomputed here from the network outputs with
    /// the individually hand-checked functions (T = 1.2, omega = 0.5, gamma = 1000, the ramps
    /// by hand at epoch 3 and 10), and each switch removes exactly its term.
    #[test]
    // Long: one wiring test of Eq. 10: the network outputs, the hand-checked terms and each
    // switch's effect are compared on the same batch.
    fn total_combines_terms_with_ramps_and_switches() {
        tch::manual_seed(0);
        let vs = tch::nn::VarStore::new(tch::Device::Cpu);
        let net = crate::model::MultiBranchNet::new(
            &vs.root(),
            &crate::model::ModelConfig {
                width: Some(4),
                ..Default::default()
            },
            3,
            true,
        );
        let x = Tensor::randn([6, 3, 32, 32], (Kind::Float, tch::Device::Cpu));
        let y = labels(&[0, 1, 2, 0, 1, 2]);
        let out = net.forward_train(&x, false);
        let module = net.uncertainty.as_ref().unwrap();
        // Independently: alpha from the module on S of the detached features, normalised as
        // the default says (per class); the paper's CE in the target term (the default's GCE
        // is checked below).
        let cfg = LossConfig {
            target_loss: HardLabel::Ce,
            ..LossConfig::default()
        };
        assert_eq!(cfg.alpha_norm, AlphaNorm::Class);
        let s = class_similarity(&out.target_feat, &y, 3, false, false);
        let alpha = normalise_alpha(
            &module.forward(&similarity_vector(&s, &y, 3)),
            &y,
            3,
            cfg.alpha_norm,
        );
        let wce = scalar(&weighted_ce(&out.target_logits, &alpha, &y));
        let latent = sharpen(&latent_distribution(&out.aux_logits, &y), 1.2);
        let soft = scalar(&soft_loss(&out.target_logits, &latent, &y));
        let sp = scalar(&similarity_preserving(
            &out.target_feat,
            &out.aux_feat,
            &y,
            true,
        ));
        let aux = scalar(&aux_ce(&out.aux_logits, &y));
        // Epoch 3, beta 6: w_u = exp(-0.25) = 0.778801, w_d = 1.
        let t = dmue_loss(&out, Some(module), &y, &cfg, 3, ramps(3, cfg.beta), 0.7);
        // What is logged is the module's own output; the CE weights are that divided by the
        // mean of each class (so they average 1 per class, and the raw values do not).
        let raw = Vec::<f32>::try_from(t.alpha_raw.as_ref().unwrap()).unwrap();
        let weights = Vec::<f32>::try_from(t.alpha.as_ref().unwrap()).unwrap();
        let raw_ref = Vec::<f32>::try_from(&module.forward(&similarity_vector(&s, &y, 3))).unwrap();
        for i in 0..6 {
            let class_mean = (raw[i % 3] + raw[i % 3 + 3]) / 2.0;
            assert!((raw[i] - raw_ref[i]).abs() < 1e-6);
            assert!((weights[i] - raw[i] / class_mean).abs() < 1e-5);
        }
        assert!((raw.iter().sum::<f32>() / 6.0 - 1.0).abs() > 1e-3);
        let expected = 0.778801 * (wce + 0.5 * soft + 1e3 * sp) + aux;
        assert!(
            (scalar(&t.total) - expected).abs() < 1e-4 * expected.abs().max(1.0),
            "{} != {expected}",
            scalar(&t.total)
        );
        // Epoch 10: w_u = 1, w_d = exp(-(1 - 0.6)^2) = exp(-0.16) = 0.852144.
        let t = dmue_loss(&out, Some(module), &y, &cfg, 10, ramps(10, cfg.beta), 0.7);
        let expected = (wce + 0.5 * soft + 1e3 * sp) + 0.852144 * aux;
        assert!((scalar(&t.total) - expected).abs() < 1e-4 * expected.abs().max(1.0));
        // Each switch removes exactly its own term.
        let no_sp = LossConfig {
            similarity_preserving: false,
            ..cfg.clone()
        };
        let t = dmue_loss(
            &out,
            Some(module),
            &y,
            &no_sp,
            10,
            ramps(10, no_sp.beta),
            0.7,
        );
        let expected = (wce + 0.5 * soft) + 0.852144 * aux;
        assert!((scalar(&t.total) - expected).abs() < 1e-4 * expected.abs().max(1.0));
        // Confidence warm-up: before `confidence_from_epoch` the target CE is plain.
        let warm = LossConfig {
            confidence_from_epoch: 4,
            ..cfg.clone()
        };
        let ce = scalar(&cross_entropy(&out.target_logits, &y));
        let t = dmue_loss(&out, Some(module), &y, &warm, 3, ramps(3, warm.beta), 0.7);
        assert!(t.alpha.is_none());
        close(scalar(&t.target), ce);
        let t = dmue_loss(&out, Some(module), &y, &warm, 4, ramps(4, warm.beta), 0.7);
        close(scalar(&t.target), wce);
        // alpha as a weight: the target term is the alpha-weighted per-sample CE. The logits
        // are scaled up first: near 0 (a fresh network) CE barely depends on their scale, and
        // the weighted and the scaled readings would agree.
        let weighted = LossConfig {
            alpha_as_weight: true,
            ..cfg.clone()
        };
        let sharp = crate::model::TrainOutput {
            target_feat: out.target_feat.shallow_clone(),
            target_logits: &out.target_logits * 50.0,
            aux_feat: out.aux_feat.iter().map(|t| t.shallow_clone()).collect(),
            aux_logits: out.aux_logits.iter().map(|t| t.shallow_clone()).collect(),
        };
        let t = dmue_loss(&sharp, Some(module), &y, &weighted, 10, (1.0, 1.0), 0.7);
        let per_sample =
            sharp
                .target_logits
                .cross_entropy_loss::<Tensor>(&y, None, Reduction::None, -100, 0.0);
        let want = scalar(&(per_sample * &alpha).mean(Kind::Float));
        let scaled = scalar(&weighted_ce(&sharp.target_logits, &alpha, &y));
        assert!((want - scaled).abs() > 1e-3, "{want} vs {scaled}");
        close(scalar(&t.target), want);
        let off = LossConfig {
            latent: false,
            similarity_preserving: false,
            confidence: false,
            ..cfg
        };
        let t = dmue_loss(&out, Some(module), &y, &off, 10, ramps(10, off.beta), 0.7);
        assert!(t.soft.is_none() && t.sp.is_none() && t.aux.is_none() && t.alpha.is_none());
        close(
            scalar(&t.total),
            scalar(&cross_entropy(&out.target_logits, &y)),
        );
        // The default: the same terms, with the alpha-scaled logits through GCE (q = 0.7) in
        // the target term: mean_i (1 - softmax(alpha_i z_i)_y^0.7) / 0.7, computed here from
        // the scaled logits' softmax.
        let default = LossConfig::default();
        assert_eq!(
            (default.target_loss, default.aux_loss),
            (HardLabel::Gce, HardLabel::Ce)
        );
        let scaled = &out.target_logits * t_alpha(&out, module, &y);
        let p_y = Vec::<f32>::try_from(
            scaled
                .softmax(-1, Kind::Float)
                .gather(1, &y.unsqueeze(1), false)
                .squeeze_dim(1),
        )
        .unwrap();
        let gce = p_y
            .iter()
            .map(|p| (1.0 - (*p as f64).powf(0.7)) / 0.7)
            .sum::<f64>()
            / 6.0;
        let t = dmue_loss(
            &out,
            Some(module),
            &y,
            &default,
            10,
            ramps(10, default.beta),
            0.7,
        );
        close(scalar(&t.target), gce);
        let expected = (gce + 0.5 * soft + 1e3 * sp) + 0.852144 * aux;
        assert!((scalar(&t.total) - expected).abs() < 1e-4 * expected.abs().max(1.0));
    }

    /// The class-normalised alpha of the default as a `[N, 1]` column.
    fn t_alpha(
        out: &crate::model::TrainOutput,
        module: &crate::model::UncertaintyModule,
        y: &Tensor,
    ) -> Tensor {
        let s = class_similarity(&out.target_feat, y, 3, false, false);
        normalise_alpha(
            &module.forward(&similarity_vector(&s, y, 3)),
            y,
            3,
            AlphaNorm::Class,
        )
        .unsqueeze(1)
    }
}
