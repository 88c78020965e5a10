//! `dmue-train audit` (rank the training labels by suspicion) and `relabel` (a copy of the
//! dataset with the top suspects relabelled).

use anyhow::Result;
use dmue_train::fit::config::DeviceChoice;
use dmue_train::fit::trainer;
use dmue_train::inspect::audit;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct AuditArgs {
    /// Run directory written by `fit`.
    run: PathBuf,
    /// The suspicion score [default: ensemble for DMUE runs, self-confidence otherwise; chosen
    /// by measurement, docs/audit.md].
    #[arg(long, value_enum)]
    score: Option<audit::Score>,
    /// How many of the most suspicious images audit.html and audit-top.png show.
    #[arg(long, default_value_t = 60)]
    top: usize,
    #[arg(long, value_enum, default_value_t = DeviceChoice::Auto, env = "DMUE_DEVICE")]
    device: DeviceChoice,
}

#[derive(clap::Args)]
#[command(group(clap::ArgGroup::new("which").required(true).args(["top", "threshold"])))]
pub struct RelabelArgs {
    /// Run directory that `dmue-train audit` has scored.
    run: PathBuf,
    /// Relabel the K top-ranked images.
    #[arg(long, value_name = "K")]
    top: Option<usize>,
    /// Relabel every image whose score is at least T (scores are in audit.jsonl).
    #[arg(long, value_name = "T")]
    threshold: Option<f64>,
    /// New dataset directory [default: RUN/relabelled].
    #[arg(long)]
    out: Option<PathBuf>,
}

pub fn run(a: AuditArgs) -> Result<()> {
    let device = trainer::resolve_device(a.device)?;
    let opts = audit::AuditOptions {
        score: a.score,
        top: a.top,
    };
    let report = audit::audit(&a.run, &opts, device)?;
    print!("{report}");
    println!(
        "wrote {} (every training image, most suspicious first), {}, {} and {}",
        a.run.join(audit::AUDIT_FILE).display(),
        a.run.join(audit::REPORT_FILE).display(),
        a.run.join(audit::HTML_FILE).display(),
        a.run.join(audit::SHEET_FILE).display()
    );
    Ok(())
}

pub fn relabel(a: RelabelArgs) -> Result<()> {
    let selection = match (a.top, a.threshold) {
        (Some(k), _) => audit::Selection::Top(k),
        (_, Some(t)) => audit::Selection::Threshold(t),
        _ => unreachable!("clap requires one"),
    };
    let out = a.out.unwrap_or_else(|| a.run.join("relabelled"));
    let changes = audit::relabel(&a.run, selection, &out)?;
    println!(
        "wrote {}: {} training labels changed (listed in {})\nretrain: dmue-train fit --data {} ...",
        out.display(),
        changes.len(),
        out.join(audit::CHANGES_FILE).display(),
        out.display()
    );
    Ok(())
}
