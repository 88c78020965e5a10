//! `dmue-train analyze`: what a run believes about each training sample.

use anyhow::Result;
use dmue_train::fit::config::DeviceChoice;
use dmue_train::fit::trainer;
use dmue_train::inspect::analyze;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct AnalyzeArgs {
    /// Run directory written by `fit` (on a synthetic dataset).
    run: PathBuf,
    #[arg(long, value_enum, default_value_t = DeviceChoice::Auto, env = "DMUE_DEVICE")]
    device: DeviceChoice,
}

pub fn run(a: AnalyzeArgs) -> Result<()> {
    let device = trainer::resolve_device(a.device)?;
    let analysis = analyze::analyze(&a.run, device)?;
    print!("{analysis}");
    println!(
        "wrote {}, {} and {}",
        a.run.join(analyze::REPORT_FILE).display(),
        a.run.join(analyze::SAMPLES_FILE).display(),
        a.run.join(analyze::ALPHA_PNG).display()
    );
    Ok(())
}
