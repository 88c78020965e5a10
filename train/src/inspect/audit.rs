//! `dmue-train audit RUN`: which training labels are probably wrong, from what the trained run
//! already knows; `dmue-train relabel RUN` writes a dataset with the suspects corrected.
//!
//! For every training image (eval mode, centre crop, batches cut by the training sampler so that
//! alpha sees batches like the ones it was trained on) the run gives:
//! - the target branch's softmax, hence `p(label)`;
//! - for DMUE runs, the auxiliary branches' votes: every branch j != label has the annotated class
//!   among its outputs, `aux_label_prob` is their mean probability of it; the latent distribution
//!   (branch `label`, the one that never sees the annotated class, sharpened with T as in the
//!   loss); and the confidence alpha.
//!
//! Each candidate score is a function of those ([`Score`]); the default was chosen on the
//! synthetic benchmark, whose flips are recorded (docs/audit.md has the measurement). When the
//! run's dataset records its flips, the audit measures every candidate against them and says so.

use crate::data::loader::{eval_batch, SplitImages};
use crate::data::manifest::{Dataset, ManifestRow, Split};
use crate::data::sampler::epoch_batches;
use crate::fit::loss::{confidence, mined_latent};
use crate::util::stats::{auroc_lower, rows_of};
use anyhow::{bail, Context, Result};
use clap::ValueEnum;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

pub const AUDIT_FILE: &str = "audit.jsonl";
pub const REPORT_FILE: &str = "audit.json";
pub const HTML_FILE: &str = "audit.html";
pub const SHEET_FILE: &str = "audit-top.png";
pub const CHANGES_FILE: &str = "relabel-changes.jsonl";

/// What a trained run believes about one training image.
#[derive(Debug, Clone)]
pub struct Belief {
    /// Index into the split's images (`SplitImages`).
    pub index: usize,
    pub softmax: Vec<f32>,
    /// Over the C-1 classes other than the annotated one, in class order (DMUE runs).
    pub latent: Option<Vec<f32>>,
    pub alpha: Option<f32>,
    /// Mean probability of the annotated class over the auxiliary branches that output it.
    pub aux_label_prob: Option<f32>,
    /// Mean over the training epochs of the label's probability and of its margin, as
    /// training saw them (`label-dynamics.safetensors`; runs trained since it is recorded).
    pub dynamics_prob: Option<f32>,
    pub dynamics_margin: Option<f32>,
}

/// `[N]`: mean over branches j != y of branch j's probability of class y. Branch j outputs the
/// classes other than j in order, so class y sits at index `y - (y > j)`.
fn aux_label_prob(aux_logits: &[Tensor], labels: &Tensor) -> Tensor {
    let c = aux_logits.len() as i64;
    let probs: Vec<Tensor> = aux_logits
        .iter()
        .enumerate()
        .map(|(j, l)| {
            let j = j as i64;
            let p = l.softmax(-1, Kind::Float);
            let at = (labels - labels.gt(j).to_kind(Kind::Int64)).clamp(0, c - 2);
            let got = p.gather(1, &at.unsqueeze(1), false).squeeze_dim(1);
            got * labels.ne(j).to_kind(Kind::Float)
        })
        .collect();
    Tensor::stack(&probs, 1).sum_dim_intlist(1, false, Kind::Float) / (c - 1) as f64
}

/// Every training image's [`Belief`], in split order.
pub fn beliefs(
    cfg: &crate::fit::config::Config,
    net: &crate::model::MultiBranchNet,
    data: &SplitImages,
    c: usize,
    device: Device,
) -> Vec<Belief> {
    let pre = cfg.data.preprocess;
    // The training sampler's batches (every class in each), then the leftover images.
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(cfg.train.seed ^ 0xA11A);
    let mut batches = epoch_batches(
        &data.labels,
        c,
        cfg.train.batch_size,
        cfg.train.min_per_class,
        &mut rng,
    );
    let mut seen = vec![false; data.len()];
    batches.iter().flatten().for_each(|&i| seen[i] = true);
    let rest: Vec<usize> = (0..data.len()).filter(|&i| !seen[i]).collect();
    batches.extend(rest.chunks(cfg.train.batch_size).map(|b| b.to_vec()));

    let pb = crate::util::progress(data.len() as u64, "audit");
    let mut out: Vec<Option<Belief>> = vec![None; data.len()];
    tch::no_grad(|| {
        for idx in &batches {
            let (x, y) = eval_batch(data, idx, &pre).to_device(pre.crop, device);
            let o = net.forward_train(&x, false);
            let softmax = rows_of(&o.target_logits.softmax(-1, Kind::Float));
            let has_aux = !o.aux_logits.is_empty();
            let latent = has_aux.then(|| rows_of(&mined_latent(&o.aux_logits, &y, &cfg.loss)));
            let vote = has_aux.then(|| rows_of(&aux_label_prob(&o.aux_logits, &y).view([-1, 1])));
            let alpha = net
                .uncertainty
                .as_ref()
                .filter(|_| cfg.loss.confidence)
                .map(|m| {
                    rows_of(&confidence(&o.target_feat, &y, c as i64, m, &cfg.loss).view([-1, 1]))
                });
            for (k, &i) in idx.iter().enumerate() {
                if out[i].is_some() {
                    continue; // a sampler top-up repeat
                }
                pb.inc(1);
                out[i] = Some(Belief {
                    index: i,
                    softmax: softmax[k].clone(),
                    latent: latent.as_ref().map(|l| l[k].clone()),
                    alpha: alpha.as_ref().map(|a| a[k][0]),
                    aux_label_prob: vote.as_ref().map(|v| v[k][0]),
                    dynamics_prob: None,
                    dynamics_margin: None,
                });
            }
        }
    });
    pb.finish_and_clear();
    out.into_iter().flatten().collect()
}

/// How suspicious a label is: higher means more probably wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Score {
    /// 1 - p(label) of the target branch (what any classifier gives: the in-sample loss's rank).
    SelfConfidence,
    /// 1 - the auxiliary branches' mean probability of the label (DMUE runs).
    AuxVote,
    /// 1 - the mean probability of the label over every head that outputs it: the target branch
    /// and the C-1 auxiliary branches (DMUE runs).
    Ensemble,
    /// Largest mass of the latent distribution: how sure the branch that never sees the
    /// annotated class is that the face shows one particular other class (DMUE runs).
    Latent,
    /// -alpha: the uncertainty module's low confidence (DMUE runs with the confidence term).
    Alpha,
    /// 1 - the label's probability averaged over the training epochs (runs that recorded
    /// label-dynamics.safetensors): a wrong label is learned late or never.
    Dynamics,
    /// (1 - the label's margin averaged over the epochs) / 2: the margin is its probability
    /// minus the largest other one (area under the margin, in probabilities).
    DynamicsMargin,
}

impl Score {
    pub const ALL: [Score; 7] = [
        Score::SelfConfidence,
        Score::AuxVote,
        Score::Ensemble,
        Score::Latent,
        Score::Alpha,
        Score::Dynamics,
        Score::DynamicsMargin,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Score::SelfConfidence => "self-confidence",
            Score::AuxVote => "aux-vote",
            Score::Ensemble => "ensemble",
            Score::Latent => "latent",
            Score::Alpha => "alpha",
            Score::Dynamics => "dynamics",
            Score::DynamicsMargin => "dynamics-margin",
        }
    }

    /// The score of `b` with annotated label `label`; None when the run lacks the part.
    pub fn of(self, b: &Belief, label: usize) -> Option<f64> {
        let c = b.softmax.len() as f64;
        let p = b.softmax[label] as f64;
        match self {
            Score::SelfConfidence => Some(1.0 - p),
            Score::AuxVote => b.aux_label_prob.map(|v| 1.0 - v as f64),
            Score::Ensemble => b
                .aux_label_prob
                .map(|v| 1.0 - (p + (c - 1.0) * v as f64) / c),
            Score::Latent => b
                .latent
                .as_ref()
                .map(|l| l.iter().fold(0f32, |m, &v| m.max(v)) as f64),
            Score::Alpha => b.alpha.map(|a| -(a as f64)),
            Score::Dynamics => b.dynamics_prob.map(|v| 1.0 - v as f64),
            Score::DynamicsMargin => b.dynamics_margin.map(|v| (1.0 - v as f64) / 2.0),
        }
    }
}

/// The label suggested instead of `label`: the target branch's most probable other class.
fn suggestion(b: &Belief, label: usize) -> (usize, f32) {
    (0..b.softmax.len())
        .filter(|&k| k != label)
        .map(|k| (k, b.softmax[k]))
        .fold((usize::MAX, f32::MIN), |best, (k, p)| {
            if p > best.1 {
                (k, p)
            } else {
                best
            }
        })
}

/// One line of `audit.jsonl` (sorted by rank: the most suspicious first).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditRow {
    pub rank: usize,
    pub path: String,
    pub score: f64,
    pub label: usize,
    pub label_name: String,
    /// The target branch's probability of the annotated label.
    pub label_probability: f32,
    /// The most probable other class (target branch) and its probability.
    pub suggested: usize,
    pub suggested_name: String,
    pub suggested_probability: f32,
    /// Target branch softmax over all classes.
    pub probabilities: Vec<f32>,
    /// Latent distribution over all classes, 0 at the annotated one (DMUE runs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latent: Option<Vec<f32>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alpha: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aux_label_probability: Option<f32>,
    /// Whether the dataset records this label as flipped (synthetic benchmark, `prepare
    /// --flip-rate`); absent when it does not know.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flipped: Option<bool>,
}

/// How well one score finds the recorded flips.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Detection {
    pub score: Score,
    /// P(a flipped label scores above a clean one), ties half.
    pub auroc: f64,
    /// Share of flips among the k top-ranked images, k = the number of flips.
    pub precision_at_k: f64,
}

/// `audit.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditReport {
    pub run: String,
    pub score: Score,
    pub images: usize,
    /// Recorded flips among the training images (None: the dataset does not record them).
    pub flipped: Option<usize>,
    /// Every score the run supports, against the recorded flips.
    pub detection: Vec<Detection>,
    /// Share of the flipped images whose suggestion is the right label (the synthetic face's
    /// dominant expression, or the label before `prepare --flip-rate`).
    pub suggestion_accuracy_on_flips: Option<f64>,
    pub seconds: f64,
}

impl std::fmt::Display for AuditReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "{} training images ranked by {} (most suspicious first)",
            self.images,
            self.score.name()
        )?;
        if let Some(n) = self.flipped {
            writeln!(
                f,
                "the dataset records {n} flipped labels; how each score finds them:"
            )?;
            for d in &self.detection {
                let mark = if d.score == self.score {
                    " <- used"
                } else {
                    ""
                };
                writeln!(
                    f,
                    "  {:<16} AUROC {:.4}  precision@{n} {:.4}{mark}",
                    d.score.name(),
                    d.auroc,
                    d.precision_at_k
                )?;
            }
            if let Some(a) = self.suggestion_accuracy_on_flips {
                writeln!(
                    f,
                    "  the suggested label is the right one for {:.1}% of them",
                    100.0 * a
                )?;
            }
        }
        Ok(())
    }
}

/// The flip status of every row when the dataset records flips (synthetic truth or `prepare
/// --flip-rate`'s `original_label`), else None.
fn recorded_flips(rows: &[&ManifestRow]) -> Option<Vec<bool>> {
    let known = rows
        .iter()
        .any(|r| r.truth.is_some() || r.original_label.is_some());
    known.then(|| {
        rows.iter()
            .map(|r| r.original_label.is_some() || r.truth.as_ref().is_some_and(|t| t.flipped))
            .collect()
    })
}

fn detection(score: Score, values: &[f64], flipped: &[bool]) -> Detection {
    let pick = |f: bool| -> Vec<f64> {
        values
            .iter()
            .zip(flipped)
            .filter(|(_, &x)| x == f)
            .map(|(v, _)| -v)
            .collect()
    };
    // auroc_lower counts "positives below": negate so that high scores mean flipped.
    let auroc = auroc_lower(&pick(true), &pick(false)).unwrap_or(f64::NAN);
    let k = flipped.iter().filter(|&&f| f).count();
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_by(|&a, &b| values[b].total_cmp(&values[a]));
    let hits = order[..k].iter().filter(|&&i| flipped[i]).count();
    Detection {
        score,
        auroc,
        precision_at_k: hits as f64 / k.max(1) as f64,
    }
}

pub struct AuditOptions {
    /// None: the default for the run (ensemble for DMUE runs, self-confidence otherwise).
    pub score: Option<Score>,
    /// How many of the most suspicious images the HTML page and the contact sheet show.
    pub top: usize,
}

/// The default score: measured best on the synthetic benchmark (docs/audit.md).
pub fn default_score(has_aux: bool) -> Score {
    if has_aux {
        Score::Ensemble
    } else {
        Score::SelfConfidence
    }
}

/// Audits the training split of `run`; writes `audit.jsonl`, `audit.json`, `audit.html` and
/// `audit-top.png` into it.
// Long: the audit of one run from start to end: beliefs, the chosen score, the ranking and the
// four files it writes share the same per-sample rows.
pub fn audit(run: &Path, opts: &AuditOptions, device: Device) -> Result<AuditReport> {
    let t0 = std::time::Instant::now();
    let (cfg, ds, _vs, net) = crate::fit::trainer::load_run(run, device)?;
    let data = SplitImages::open(&ds, Split::Train, &cfg.data.preprocess, cfg.data.loader)?;
    if data.is_empty() {
        bail!("{} has no training images to audit", ds.dir.display());
    }
    let c = ds.num_classes();
    let mut beliefs = beliefs(&cfg, &net, &data, c, device);
    if let Some(d) = crate::fit::dynamics::read(run)? {
        if d.prob.first().is_some_and(|r| r.len() == beliefs.len()) {
            let (prob, margin) = (
                crate::fit::dynamics::Recorded::mean(&d.prob),
                crate::fit::dynamics::Recorded::mean(&d.margin),
            );
            for b in &mut beliefs {
                b.dynamics_prob = Some(prob[b.index]).filter(|v| v.is_finite());
                b.dynamics_margin = Some(margin[b.index]).filter(|v| v.is_finite());
            }
        } else {
            tracing::warn!(
                "{}: recorded for another training split; not used",
                crate::fit::dynamics::FILE
            );
        }
    }
    let has_aux = beliefs[0].aux_label_prob.is_some();
    let score = opts.score.unwrap_or(default_score(has_aux));
    let rows: Vec<&ManifestRow> = beliefs
        .iter()
        .map(|b| &ds.rows[data.rows[b.index]])
        .collect();
    let labels: Vec<usize> = beliefs.iter().map(|b| data.labels[b.index]).collect();
    let values = |s: Score| -> Option<Vec<f64>> {
        beliefs
            .iter()
            .zip(&labels)
            .map(|(b, &y)| s.of(b, y))
            .collect()
    };
    let chosen = values(score).with_context(|| match score {
        Score::Dynamics | Score::DynamicsMargin => format!(
            "score {} needs {} in {}: runs trained by this version record it",
            score.name(),
            crate::fit::dynamics::FILE,
            run.display()
        ),
        _ => format!(
            "score {} needs a DMUE run{} ({} is a {:?} run)",
            score.name(),
            if score == Score::Alpha {
                " with the confidence term"
            } else {
                ""
            },
            run.display(),
            cfg.train.mode
        ),
    })?;
    let flips = recorded_flips(&rows);

    let mut out: Vec<AuditRow> = beliefs
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let y = labels[i];
            let (s, ps) = suggestion(b, y);
            AuditRow {
                rank: 0,
                path: rows[i].path.clone(),
                score: chosen[i],
                label: y,
                label_name: ds.info.classes[y].clone(),
                label_probability: b.softmax[y],
                suggested: s,
                suggested_name: ds.info.classes[s].clone(),
                suggested_probability: ps,
                probabilities: b.softmax.clone(),
                latent: b.latent.as_ref().map(|l| {
                    let mut full = l.clone();
                    full.insert(y, 0.0);
                    full
                }),
                alpha: b.alpha,
                aux_label_probability: b.aux_label_prob,
                flipped: flips.as_ref().map(|f| f[i]),
            }
        })
        .collect();
    // Ties keep the split order, so the ranking is deterministic.
    out.sort_by(|a, b| b.score.total_cmp(&a.score));
    for (r, row) in out.iter_mut().enumerate() {
        row.rank = r + 1;
    }

    let (detection, suggestion_accuracy_on_flips) = match &flips {
        Some(f) => {
            let d = Score::ALL
                .iter()
                .filter_map(|&s| values(s).map(|v| detection(s, &v, f)))
                .collect();
            let flipped_rows: Vec<usize> = (0..rows.len()).filter(|&i| f[i]).collect();
            let right = flipped_rows
                .iter()
                .filter(|&&i| {
                    let right_label = rows[i]
                        .truth
                        .as_ref()
                        .map(|t| t.clean_label)
                        .or(rows[i].original_label);
                    right_label == Some(suggestion(&beliefs[i], labels[i]).0)
                })
                .count();
            (
                d,
                (!flipped_rows.is_empty()).then(|| right as f64 / flipped_rows.len() as f64),
            )
        }
        None => (Vec::new(), None),
    };
    crate::util::write_jsonl(&run.join(AUDIT_FILE), &out)?;
    let report = AuditReport {
        run: run.display().to_string(),
        score,
        images: out.len(),
        flipped: flips.as_ref().map(|f| f.iter().filter(|&&x| x).count()),
        detection,
        suggestion_accuracy_on_flips,
        seconds: t0.elapsed().as_secs_f64(),
    };
    crate::util::write_atomic(
        &run.join(REPORT_FILE),
        serde_json::to_string_pretty(&report)?.as_bytes(),
    )?;
    let top = &out[..opts.top.min(out.len())];
    write_html(&run.join(HTML_FILE), &ds, &report, top)?;
    contact_sheet(&run.join(SHEET_FILE), &ds, top)?;
    Ok(report)
}

/// A thumbnail of a dataset image at `side` pixels (Catmull-Rom), or a grey square when the
/// file no longer decodes (the audit still lists it).
fn thumbnail(ds: &Dataset, path: &str, side: u32) -> image::RgbImage {
    match image::open(ds.dir.join(path)) {
        Ok(img) => image::imageops::resize(
            &img.to_rgb8(),
            side,
            side,
            image::imageops::FilterType::CatmullRom,
        ),
        Err(e) => {
            tracing::warn!("{path}: {e}");
            image::RgbImage::from_pixel(side, side, image::Rgb([200, 200, 200]))
        }
    }
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A self-contained page (thumbnails inlined as data URIs, no script, no network).
fn write_html(path: &Path, ds: &Dataset, report: &AuditReport, top: &[AuditRow]) -> Result<()> {
    use base64::Engine;
    let mut h = String::new();
    h.push_str(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>dmue label audit</title><style>\
         body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}\
         .grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(230px,1fr));gap:12px}\
         .card{border:1px solid #ccc;border-radius:6px;padding:8px}\
         .card img{width:112px;height:112px;image-rendering:auto;float:left;margin-right:8px}\
         .lab{font-size:.9em;line-height:1.4}.was{color:#b00}.sug{color:#070}\
         .bars{clear:both;padding-top:6px;font-size:.75em}\
         .bar{display:flex;align-items:center;gap:4px}.bar span{width:5.5em}\
         .bar div{background:#58a;height:.7em}.flip{color:#b00;font-weight:bold}\
         </style></head><body>",
    );
    h.push_str(&format!(
        "<h1>Label audit: {} most suspicious of {} training images</h1>\
         <p>Run <code>{}</code>, score <b>{}</b>. Each card: the annotated label (red) with the \
         target branch's probability, the suggested label (green), and the latent distribution \
         (what the branch that never sees the annotated class thinks the face shows).</p>",
        top.len(),
        report.images,
        html_escape(&report.run),
        report.score.name()
    ));
    if let Some(n) = report.flipped {
        let found: Vec<String> = report
            .detection
            .iter()
            .map(|d| format!("{} {:.3}", d.score.name(), d.auroc))
            .collect();
        h.push_str(&format!(
            "<p>The dataset records {n} flipped labels. AUROC of each score at finding them: {}.</p>",
            found.join(", ")
        ));
    }
    h.push_str("<div class=\"grid\">");
    for r in top {
        let mut png = Vec::new();
        thumbnail(ds, &r.path, 112)
            .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
            .context("encoding a thumbnail")?;
        let flip = match r.flipped {
            Some(true) => " <span class=\"flip\">recorded flip</span>",
            _ => "",
        };
        h.push_str(&format!(
            "<div class=\"card\"><img alt=\"{}\" src=\"data:image/png;base64,{}\">\
             <div class=\"lab\">#{} score {:.3}{}<br><span class=\"was\">label: {} {:.2}</span><br>\
             <span class=\"sug\">&rarr; {} {:.2}</span>{}<br><small>{}</small></div>",
            html_escape(&r.path),
            base64::engine::general_purpose::STANDARD.encode(&png),
            r.rank,
            r.score,
            flip,
            html_escape(&r.label_name),
            r.label_probability,
            html_escape(&r.suggested_name),
            r.suggested_probability,
            r.alpha
                .map(|a| format!("<br>alpha {a:.2}"))
                .unwrap_or_default(),
            html_escape(&r.path),
        ));
        if let Some(l) = &r.latent {
            h.push_str("<div class=\"bars\">latent distribution");
            for (k, v) in l.iter().enumerate() {
                if k == r.label {
                    continue;
                }
                h.push_str(&format!(
                    "<div class=\"bar\"><span>{}</span><div style=\"width:{:.0}px\"></div>{:.2}</div>",
                    html_escape(&ds.info.classes[k]),
                    (v * 120.0).max(1.0),
                    v
                ));
            }
            h.push_str("</div>");
        }
        h.push_str("</div>");
    }
    h.push_str("</div></body></html>\n");
    crate::util::write_atomic(path, h.as_bytes())
}

/// A PNG grid of the top images with "annotated -> suggested" captions (for the README).
fn contact_sheet(path: &Path, ds: &Dataset, top: &[AuditRow]) -> Result<()> {
    let shown = &top[..top.len().min(24)];
    let (cell, caption, cols) = (112u32, 34u32, 6u32);
    let rows = (shown.len() as u32).div_ceil(cols).max(1);
    let mut canvas = image::RgbImage::from_pixel(
        cols * (cell + 8),
        rows * (cell + caption),
        image::Rgb([255, 255, 255]),
    );
    let mut texts = Vec::new();
    for (i, r) in shown.iter().enumerate() {
        let (x, y) = (
            (i as u32 % cols) * (cell + 8),
            (i as u32 / cols) * (cell + caption),
        );
        image::imageops::overlay(
            &mut canvas,
            &thumbnail(ds, &r.path, cell),
            x as i64,
            y as i64,
        );
        let short = |s: &str| s.chars().take(4).collect::<String>();
        texts.push((
            x + 2,
            y + cell + 2,
            format!(
                "#{} {} -> {}",
                r.rank,
                short(&r.label_name),
                short(&r.suggested_name)
            ),
        ));
        texts.push((
            x + 2,
            y + cell + 17,
            format!(
                "p {:.2} -> {:.2}{}",
                r.label_probability,
                r.suggested_probability,
                if r.flipped == Some(true) { " flip" } else { "" }
            ),
        ));
    }
    crate::util::plot::draw_texts(&mut canvas, &texts, 13.0)?;
    canvas
        .save(path)
        .with_context(|| format!("cannot write {}", path.display()))
}

/// Which suspects `relabel` changes.
#[derive(Debug, Clone, Copy)]
pub enum Selection {
    /// The K top-ranked images.
    Top(usize),
    /// Every image whose score is at least t.
    Threshold(f64),
}

/// One change `relabel` made (`relabel-changes.jsonl` in the new dataset).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Change {
    pub path: String,
    pub rank: usize,
    pub score: f64,
    pub from: usize,
    pub from_name: String,
    pub to: usize,
    pub to_name: String,
}

/// Writes a copy of `run`'s dataset into `out` with the selected suspects' labels replaced by
/// their suggestions (`relabelled_from` keeps the old label). Images are hard-linked (copied
/// across file systems); the original dataset is not touched.
pub fn relabel(run: &Path, selection: Selection, out: &Path) -> Result<Vec<Change>> {
    let audit_path = run.join(AUDIT_FILE);
    if !audit_path.exists() {
        bail!(
            "{} has no {AUDIT_FILE}: run `dmue-train audit {}` first",
            run.display(),
            run.display()
        );
    }
    let cfg = crate::fit::config::Config::load(&[run.join(crate::fit::trainer::CONFIG_FILE)], &[])
        .with_context(|| format!("{} is not a dmue run directory", run.display()))?;
    let ds = Dataset::open(&cfg.data.dataset)?;
    let text = std::fs::read_to_string(&audit_path)
        .with_context(|| format!("cannot read {}", audit_path.display()))?;
    let audit: Vec<AuditRow> = text
        .lines()
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str(l)
                .with_context(|| format!("{} line {}", audit_path.display(), i + 1))
        })
        .collect::<Result<_>>()?;
    let picked: Vec<&AuditRow> = match selection {
        Selection::Top(k) => audit.iter().filter(|r| r.rank <= k).collect(),
        Selection::Threshold(t) => audit.iter().filter(|r| r.score >= t).collect(),
    };
    let src = std::fs::canonicalize(&ds.dir)?;
    if out.exists() && std::fs::canonicalize(out)? == src {
        bail!("--out must be a new directory, not the run's dataset");
    }
    if out.join(crate::data::manifest::MANIFEST_FILE).exists() {
        bail!(
            "{} already holds a dataset; choose a new directory",
            out.display()
        );
    }
    let by_path: std::collections::HashMap<&str, &AuditRow> =
        picked.iter().map(|r| (r.path.as_str(), *r)).collect();
    let mut changes = Vec::new();
    let mut rows = ds.rows.clone();
    for row in rows.iter_mut().filter(|r| r.split == Split::Train) {
        let Some(a) = by_path.get(row.path.as_str()) else {
            continue;
        };
        if a.label != row.label {
            bail!(
                "{}: the audit saw label {} but the dataset now says {}; audit again",
                row.path,
                a.label,
                row.label
            );
        }
        changes.push(Change {
            path: row.path.clone(),
            rank: a.rank,
            score: a.score,
            from: row.label,
            from_name: ds.info.classes[row.label].clone(),
            to: a.suggested,
            to_name: ds.info.classes[a.suggested].clone(),
        });
        row.relabelled_from = Some(row.label);
        row.label = a.suggested;
    }
    if changes.len() != picked.len() {
        bail!(
            "{} of the audit's images are not in {}'s training split; audit again",
            picked.len() - changes.len(),
            ds.dir.display()
        );
    }
    changes.sort_by_key(|c| c.rank);
    let pb = crate::util::progress(rows.len() as u64, "linking");
    for row in &rows {
        link_or_copy(&ds.dir.join(&row.path), &out.join(&row.path))?;
        pb.inc(1);
    }
    pb.finish_and_clear();
    let mut info = ds.info.clone();
    info.source = serde_json::json!({
        "format": "relabel",
        "dataset": src.display().to_string(),
        "run": run.display().to_string(),
        "selection": match selection {
            Selection::Top(k) => format!("top {k}"),
            Selection::Threshold(t) => format!("score >= {t}"),
        },
        "changes": changes.len(),
        "original_source": ds.info.source,
    });
    Dataset::write(out, &info, &rows)?;
    crate::util::write_jsonl(&out.join(CHANGES_FILE), &changes)?;
    Ok(changes)
}

fn link_or_copy(from: &Path, to: &PathBuf) -> Result<()> {
    if let Some(parent) = to.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    if to.exists() {
        return Ok(());
    }
    if std::fs::hard_link(from, to).is_err() {
        std::fs::copy(from, to)
            .with_context(|| format!("cannot copy {} to {}", from.display(), to.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::fit::loss::tests::t2;

    #[test]
    fn aux_vote_by_hand() {
        // C = 3. Branch j outputs the classes != j. Label 1: branches 0 ([1, 2]) and 2 ([0, 1])
        // vote; class 1 is index 0 in branch 0 and index 1 in branch 2.
        // Branch 0 logits [ln 3, 0] -> p(1) = 0.75; branch 2 logits [0, 0] -> p(1) = 0.5;
        // branch 1 (never outputs class 1) is ignored: mean (0.75 + 0.5) / 2 = 0.625.
        let b0 = t2(&[&[3f32.ln(), 0.0], &[0.0, 0.0]]);
        let b1 = t2(&[&[9.0, -9.0], &[4f32.ln(), 0.0]]);
        let b2 = t2(&[&[0.0, 0.0], &[0.0, 9.0]]);
        let labels = Tensor::from_slice(&[1i64, 0]);
        let v = aux_label_prob(&[b0, b1, b2], &labels);
        assert!((v.double_value(&[0]) - 0.625).abs() < 1e-6);
        // Label 0: branches 1 ([0, 2], p(0) = 0.8) and 2 ([0, 1], logits [0, 9]).
        let p2 = 1.0 / (1.0 + 9f64.exp());
        assert!((v.double_value(&[1]) - (0.8 + p2) / 2.0).abs() < 1e-6);
    }

    fn belief(softmax: &[f32], vote: Option<f32>) -> Belief {
        Belief {
            index: 0,
            softmax: softmax.to_vec(),
            latent: vote.map(|_| vec![0.7, 0.2, 0.1]),
            alpha: vote.map(|_| 0.4),
            aux_label_prob: vote,
            dynamics_prob: vote.map(|_| 0.5),
            dynamics_margin: vote.map(|_| -0.2),
        }
    }

    #[test]
    fn scores_by_hand() {
        let b = belief(&[0.1, 0.6, 0.2, 0.1], Some(0.3));
        assert!((Score::SelfConfidence.of(&b, 1).unwrap() - 0.4).abs() < 1e-6);
        assert!((Score::AuxVote.of(&b, 1).unwrap() - 0.7).abs() < 1e-6);
        // 1 - (0.6 + 3 * 0.3) / 4 = 0.625
        assert!((Score::Ensemble.of(&b, 1).unwrap() - 0.625).abs() < 1e-6);
        assert!((Score::Latent.of(&b, 1).unwrap() - 0.7).abs() < 1e-6);
        assert!((Score::Alpha.of(&b, 1).unwrap() + 0.4).abs() < 1e-6);
        assert!((Score::Dynamics.of(&b, 1).unwrap() - 0.5).abs() < 1e-6);
        assert!((Score::DynamicsMargin.of(&b, 1).unwrap() - 0.6).abs() < 1e-6);
        assert_eq!(suggestion(&b, 1), (2, 0.2));
        assert_eq!(suggestion(&b, 2), (1, 0.6));
        let plain = belief(&[0.1, 0.6, 0.2, 0.1], None);
        assert!(Score::Ensemble.of(&plain, 1).is_none());
        assert_eq!(default_score(false), Score::SelfConfidence);
    }

    #[test]
    fn detection_by_hand() {
        // Flips score 0.9 and 0.4; clean 0.5, 0.1, 0.2: of the 6 pairs, 0.9 beats all three
        // and 0.4 beats two -> AUROC 5/6; the top 2 are 0.9 (flip) and 0.5 (clean) -> 0.5.
        let d = detection(
            Score::SelfConfidence,
            &[0.9, 0.5, 0.1, 0.4, 0.2],
            &[true, false, false, true, false],
        );
        assert!((d.auroc - 5.0 / 6.0).abs() < 1e-9);
        assert!((d.precision_at_k - 0.5).abs() < 1e-9);
    }
}
