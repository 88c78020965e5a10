//! `fit --init FILE`: start the backbone from pretrained weights.
//!
//! The file is safetensors (PyTorch `.pth`/`.pt` checkpoints are converted by
//! `scripts/convert-weights.sh`; Rust code never unpickles). Names are matched by the
//! backbone's PyTorch naming after removing DataParallel's `module.` and the authors' `base.`
//! prefixes:
//! - torchvision ResNet-18 / MobileNetV2, the authors' MS-Celeb ResNet-18 (`base.*`) and a
//!   `dmue-train pretrain` checkpoint all use the names of our deployed part;
//! - the branch stage (`layer4`, `features.14..=18`) initialises the target branch **and every
//!   auxiliary branch**, as the authors copy layer4 into each branch; a DMUE training
//!   checkpoint of the authors (`layer4_0..layer4_C`) fills each branch from its own copy.
//!
//! Classifier heads and the uncertainty module always start fresh. A shape mismatch, a file in
//! which no name matches, or a backbone tensor missing from the file is an error that names the
//! tensors: never a silent partial load.

use crate::model::MultiBranchNet;
use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use tch::{nn, Tensor};

/// Written to `RUN/init-report.json` and printed by `fit`.
#[derive(Debug, Clone, Serialize)]
pub struct InitReport {
    pub file: PathBuf,
    pub backbone: String,
    /// Tensors of the network that received a value from the file (each auxiliary copy of
    /// the branch stage counted).
    pub loaded: usize,
    /// Distinct tensors of the file that were used.
    pub used_from_file: usize,
    /// Copies of the branch stage filled from one set of file tensors (target + auxiliary).
    pub branch_copies: usize,
    /// Network tensors left at their random initialisation: the classifier heads and the
    /// uncertainty module (fresh by design).
    pub left_at_init: Vec<String>,
    /// File tensors that match nothing in the network (its classifiers, ...), sorted.
    pub unused: Vec<String>,
    /// BatchNorm `num_batches_tracked` counters in the file (PyTorch bookkeeping, not weights).
    pub ignored_counters: usize,
}

/// Where a name of the file goes in the network.
enum Target {
    /// Deployed part; a branch-stage name also fills every auxiliary branch.
    Root(String),
    /// One auxiliary branch (the authors' `layer4_j`).
    Aux(usize, String),
}

/// Whether a network variable is a classifier head or the uncertainty module (never loaded).
pub fn is_fresh(name: &str) -> bool {
    let local = strip_aux(name).map_or(name, |(_, n)| n);
    local.starts_with("fc.") || name.starts_with("uncertainty.")
}

fn strip_aux(name: &str) -> Option<(usize, &str)> {
    let rest = name.strip_prefix("aux.")?;
    let (j, local) = rest.split_once('.')?;
    Some((j.parse().ok()?, local))
}

/// The file's name in our naming, or None when the name can only be a head or a counter.
fn map_name(name: &str, classes: usize) -> Option<Target> {
    let mut n = name;
    while let Some(rest) = n.strip_prefix("module.") {
        n = rest;
    }
    let n = n.strip_prefix("base.").unwrap_or(n);
    if n.ends_with("num_batches_tracked") {
        return None;
    }
    // The authors' DMUE training layout: layer4_0..layer4_{C-1} auxiliary, layer4_C target.
    if let Some(rest) = n.strip_prefix("layer4_") {
        let (j, local) = rest.split_once('.')?;
        let j: usize = j.parse().ok()?;
        let local = format!("layer4.{local}");
        return Some(if j == classes {
            Target::Root(local)
        } else {
            Target::Aux(j, local)
        });
    }
    Some(Target::Root(n.to_string()))
}

fn shape_str(s: &[i64]) -> String {
    format!(
        "[{}]",
        s.iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// Reads `path` and copies its backbone tensors into `vs` (built for `net`).
// Long: the file's tensors matched to the network's variables in one place: name schemes,
// branch-stage copies, shape checks and the report grow together.
pub fn load(vs: &nn::VarStore, net: &MultiBranchNet, path: &Path) -> Result<InitReport> {
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    if matches!(ext, "pth" | "pt" | "tar" | "ckpt" | "bin") {
        bail!(
            "{} looks like a PyTorch pickle; dmue reads safetensors only. Convert it first:\n  \
             bash scripts/convert-weights.sh {} {}",
            path.display(),
            path.display(),
            path.with_extension("safetensors").display()
        );
    }
    if !path.is_file() {
        bail!("--init: {} does not exist", path.display());
    }
    let file = Tensor::read_safetensors(path).with_context(|| {
        format!(
            "cannot read {} as safetensors (truncated or not a safetensors file?)",
            path.display()
        )
    })?;
    let vars = vs.variables();
    let backbone = net.config.backbone;
    let classes = net.num_classes as usize;
    let aux = net.aux.len();

    // Plan every copy before writing anything: errors leave the network untouched.
    let mut plan: Vec<(String, usize)> = Vec::new(); // (network name, file index)
    let mut unused = Vec::new();
    let mut explicit_aux: BTreeSet<usize> = BTreeSet::new();
    let mut mismatches = Vec::new();
    let mut used = BTreeSet::new();
    let mut ignored_counters = 0;
    for (i, (name, t)) in file.iter().enumerate() {
        let targets: Vec<String> = match map_name(name, classes) {
            None => Vec::new(),
            Some(Target::Aux(j, local)) => {
                explicit_aux.insert(j);
                vec![format!("aux.{j}.{local}")]
            }
            Some(Target::Root(local)) => vec![local],
        };
        let targets: Vec<String> = targets
            .into_iter()
            .filter(|n| vars.contains_key(n) && !is_fresh(n))
            .collect();
        // A DMUE checkpoint of ours names its auxiliary branches itself: keep their own copies.
        for n in &targets {
            if let Some((j, _)) = strip_aux(n) {
                explicit_aux.insert(j);
            }
        }
        if targets.is_empty() {
            if name.ends_with("num_batches_tracked") {
                ignored_counters += 1;
            } else {
                unused.push(name.clone());
            }
            continue;
        }
        for n in targets {
            let want = vars[&n].size();
            if want != t.size() {
                mismatches.push(format!(
                    "{name}: file {} vs network {} ({n})",
                    shape_str(&t.size()),
                    shape_str(&want)
                ));
            } else {
                plan.push((n, i));
                used.insert(i);
            }
        }
    }
    if !mismatches.is_empty() {
        bail!(
            "{} tensor(s) of {} do not fit the {} network (model.width, model.backbone or the \
             class count differ?):\n  {}",
            mismatches.len(),
            path.display(),
            net.config.describe(),
            mismatches.join("\n  ")
        );
    }
    if plan.is_empty() {
        let first: Vec<&str> = file.iter().take(5).map(|(n, _)| n.as_str()).collect();
        bail!(
            "unknown layout: none of the {} tensors in {} has a {} name (first: {}). \
             Expected torchvision names (conv1.weight, layer1.0.bn1.running_mean, ... or \
             features.0.0.weight, ...), optionally under module. or base.",
            file.len(),
            path.display(),
            backbone.name(),
            first.join(", ")
        );
    }
    // The branch stage from the file fills every auxiliary branch it did not name itself.
    let stage_plan: Vec<(String, usize)> = plan
        .iter()
        .filter(|(n, _)| !n.starts_with("aux.") && backbone.is_branch_stage(n))
        .cloned()
        .collect();
    let copies_per_stage = (0..aux).filter(|j| !explicit_aux.contains(j)).count();
    for j in (0..aux).filter(|j| !explicit_aux.contains(j)) {
        plan.extend(stage_plan.iter().map(|(n, i)| (format!("aux.{j}.{n}"), *i)));
    }
    let planned: BTreeMap<&str, usize> = plan.iter().map(|(n, i)| (n.as_str(), *i)).collect();
    let missing: Vec<&str> = vars
        .keys()
        .map(String::as_str)
        .filter(|n| !is_fresh(n) && !planned.contains_key(n))
        .collect();
    if !missing.is_empty() {
        bail!(
            "partial load refused: {} backbone tensor(s) of the {} network are not in {} \
             (first: {}). Is it a checkpoint of another backbone or stem?",
            missing.len(),
            net.config.describe(),
            path.display(),
            missing
                .iter()
                .take(5)
                .copied()
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    tch::no_grad(|| {
        for (n, i) in &plan {
            let mut dst = vars[n].shallow_clone();
            dst.copy_(&file[*i].1);
        }
    });
    let mut left_at_init: Vec<String> = vars
        .keys()
        .filter(|n| !planned.contains_key(n.as_str()))
        .cloned()
        .collect();
    left_at_init.sort();
    unused.sort();
    Ok(InitReport {
        file: path.to_path_buf(),
        backbone: net.config.describe(),
        loaded: plan.len(),
        used_from_file: used.len(),
        branch_copies: 1 + copies_per_stage + explicit_aux.len(),
        left_at_init,
        unused,
        ignored_counters,
    })
}

impl std::fmt::Display for InitReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "init: {} tensors loaded from {} ({} distinct file tensors; branch stage copied into {} branch(es))",
            self.loaded,
            self.file.display(),
            self.used_from_file,
            self.branch_copies
        )?;
        let show = |v: &[String]| {
            let mut s = v.iter().take(6).cloned().collect::<Vec<_>>().join(", ");
            if v.len() > 6 {
                s += &format!(", ... ({} more)", v.len() - 6);
            }
            s
        };
        writeln!(
            f,
            "  left at random init (heads, uncertainty module): {} [{}]",
            self.left_at_init.len(),
            show(&self.left_at_init)
        )?;
        write!(
            f,
            "  in the file but not used: {} [{}], plus {} BatchNorm counters",
            self.unused.len(),
            show(&self.unused),
            self.ignored_counters
        )
    }
}

/// The backbone tensors (everything `load` fills): frozen during `--freeze-trunk-epochs`.
pub fn backbone_variables(vs: &nn::VarStore) -> Vec<Tensor> {
    vs.variables()
        .into_iter()
        .filter(|(n, t)| !is_fresh(n) && t.requires_grad())
        .map(|(_, t)| t)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Backbone, ModelConfig};
    use tch::Device;

    fn net(width: i64, backbone: Backbone, multi: bool) -> (nn::VarStore, MultiBranchNet) {
        let vs = nn::VarStore::new(Device::Cpu);
        let cfg = ModelConfig {
            backbone,
            width: Some(width),
            ..Default::default()
        };
        let net = MultiBranchNet::new(&vs.root(), &cfg, 4, multi);
        (vs, net)
    }

    /// Writes `tensors` (renamed by `rename`, dropped when it returns None) as safetensors.
    fn write(dir: &Path, vs: &nn::VarStore, rename: impl Fn(&str) -> Option<String>) -> PathBuf {
        let path = dir.join("w.safetensors");
        let named: Vec<(String, Tensor)> = vs
            .variables()
            .into_iter()
            .filter_map(|(n, t)| rename(&n).map(|n| (n, t)))
            .collect();
        Tensor::write_safetensors(&named, &path).unwrap();
        path
    }

    fn err(r: Result<InitReport>) -> String {
        format!("{:#}", r.expect_err("an error was expected"))
    }

    #[test]
    fn the_authors_training_layout_fills_each_branch_from_its_own_copy() {
        let dir = tempfile::tempdir().unwrap();
        let (src_vs, _) = net(4, Backbone::Resnet18, true);
        // Ours -> theirs: aux.j.layer4 -> module.base.layer4_j, layer4 -> layer4_C (C = 4).
        let path = write(dir.path(), &src_vs, |n| {
            let n = match n.strip_prefix("aux.") {
                Some(rest) => {
                    let (j, local) = rest.split_once('.').unwrap();
                    local
                        .strip_prefix("layer4.")
                        .map(|l| format!("layer4_{j}.{l}"))?
                }
                None => match n.strip_prefix("layer4.") {
                    Some(l) => format!("layer4_4.{l}"),
                    None => n.to_string(),
                },
            };
            Some(format!("module.base.{n}"))
        });
        let (vs, dst) = net(4, Backbone::Resnet18, true);
        let report = load(&vs, &dst, &path).unwrap();
        assert_eq!(report.branch_copies, 5);
        let (a, b) = (src_vs.variables(), vs.variables());
        for (n, t) in &b {
            if is_fresh(n) {
                assert!(!t.equal(&a[n]) || t.numel() == 1, "{n} should be fresh");
            } else {
                assert!(t.equal(&a[n]), "{n} was not loaded from its own copy");
            }
        }
        // The auxiliary branches really differ from each other in the source.
        assert!(!a["aux.0.layer4.0.conv1.weight"].equal(&a["aux.1.layer4.0.conv1.weight"]));
    }

    #[test]
    fn a_dmue_checkpoint_keeps_each_auxiliary_branch() {
        let dir = tempfile::tempdir().unwrap();
        let (src_vs, _) = net(4, Backbone::Resnet18, true);
        let path = write(dir.path(), &src_vs, |n| Some(n.to_string()));
        let (vs, dst) = net(4, Backbone::Resnet18, true);
        let report = load(&vs, &dst, &path).unwrap();
        assert_eq!(report.branch_copies, 5);
        let (a, b) = (src_vs.variables(), vs.variables());
        for (n, t) in &b {
            if !is_fresh(n) {
                assert!(t.equal(&a[n]), "{n} was not loaded from its own copy");
            }
        }
    }

    #[test]
    fn the_branch_stage_is_copied_into_every_branch() {
        let dir = tempfile::tempdir().unwrap();
        let (src_vs, _) = net(8, Backbone::MobilenetV2, false);
        let path = write(dir.path(), &src_vs, |n| Some(n.to_string()));
        let (vs, dst) = net(8, Backbone::MobilenetV2, true);
        let report = load(&vs, &dst, &path).unwrap();
        assert_eq!(report.branch_copies, 5);
        assert_eq!(report.unused, ["fc.weight"]);
        let (a, b) = (src_vs.variables(), vs.variables());
        for j in 0..4 {
            for n in ["features.14.conv.0.0.weight", "features.18.1.running_var"] {
                assert!(b[&format!("aux.{j}.{n}")].equal(&a[n]), "aux.{j}.{n}");
            }
        }
        assert!(b["features.3.conv.1.0.weight"].equal(&a["features.3.conv.1.0.weight"]));
    }

    #[test]
    fn bad_files_are_errors_that_name_the_problem() {
        let dir = tempfile::tempdir().unwrap();
        let (vs, dst) = net(4, Backbone::Resnet18, true);
        let before: BTreeMap<String, Tensor> = vs
            .variables()
            .into_iter()
            .map(|(n, t)| (n, t.copy()))
            .collect();

        // Another width: every mismatch is named with both shapes.
        let (wide, _) = net(8, Backbone::Resnet18, false);
        let e = err(load(
            &vs,
            &dst,
            &write(dir.path(), &wide, |n| Some(n.into())),
        ));
        assert!(
            e.contains("conv1.weight: file [8, 3, 7, 7] vs network [4, 3, 7, 7]"),
            "{e}"
        );

        // Another backbone: nothing matches.
        let (mnv2, _) = net(8, Backbone::MobilenetV2, false);
        let e = err(load(
            &vs,
            &dst,
            &write(dir.path(), &mnv2, |n| Some(n.into())),
        ));
        assert!(
            e.contains("unknown layout") && e.contains("features."),
            "{e}"
        );

        // One tensor missing: a partial load is refused and the tensor named.
        let (src, _) = net(4, Backbone::Resnet18, false);
        let path = write(dir.path(), &src, |n| {
            (n != "layer2.1.bn1.running_var").then(|| n.to_string())
        });
        let e = err(load(&vs, &dst, &path));
        assert!(
            e.contains("partial load") && e.contains("layer2.1.bn1.running_var"),
            "{e}"
        );

        // A truncated file.
        let path = write(dir.path(), &src, |n| Some(n.into()));
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
        let e = err(load(&vs, &dst, &path));
        assert!(e.contains("cannot read") && e.contains("truncated"), "{e}");

        // A pickle: pointed to the converter, never opened.
        let e = err(load(&vs, &dst, &dir.path().join("resnet18.pth")));
        assert!(e.contains("scripts/convert-weights.sh"), "{e}");

        // None of the failed loads wrote anything.
        for (n, t) in vs.variables() {
            assert!(t.equal(&before[&n]), "{n} changed");
        }
    }
}
