//! `dmue-train export`: the deployed part of a run as ONNX (optionally int8, calibrated).

use anyhow::Result;
use dmue_deploy::engine::EngineKind;
use dmue_train::export;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct ExportArgs {
    /// Run directory written by `fit`.
    run: PathBuf,
    /// Output file (default: RUN/target.onnx).
    #[arg(long, short)]
    out: Option<PathBuf>,
    /// Fit a calibration temperature on this held-out split (`val`; never `test`), store it in
    /// the model card, and report NLL and ECE before and after on the test split
    /// (RUN/calibration.json, RUN/reliability.png).
    #[arg(long, value_name = "SPLIT")]
    calibrate: Option<String>,
    /// Also write an int8 model (RUN/target.int8.onnx next to --out): QDQ, int8 weights per
    /// output channel, uint8 activations; prints its size and test accuracy beside float32's
    /// (RUN/int8.json). Runs on `dmue-serve --engine ort`.
    #[arg(long)]
    int8: bool,
    /// Split whose crops set the int8 activation ranges (`train` or `val`; never `test`).
    #[arg(long, value_name = "SPLIT", default_value = "train", requires = "int8")]
    calibration: String,
    /// Number of crops (spread evenly over the split) for the int8 activation ranges.
    #[arg(long, value_name = "N", default_value_t = export::int8::DEFAULT_IMAGES, requires = "int8")]
    calibration_images: usize,
    /// Activation-range method; default: try both, keep the more accurate (on `val` when the
    /// dataset has one, else on the calibration crops).
    #[arg(long, value_enum, requires = "int8")]
    int8_method: Option<export::int8::RangeMethod>,
    /// Engine that measures the float32 and int8 models (`auto`, `ort` or `tract`); default
    /// `auto`: ONNX Runtime when its library is present, else tract.
    #[arg(long, requires = "int8")]
    engine: Option<EngineKind>,
}

pub fn run(a: ExportArgs) -> Result<()> {
    let out = a.out.unwrap_or_else(|| a.run.join("target.onnx"));
    let split = a.calibrate.as_deref().map(str::parse).transpose()?;
    let int8 = a
        .int8
        .then(|| -> Result<_> {
            Ok(export::int8::Int8Options {
                method: a.int8_method,
                split: a.calibration.parse()?,
                images: a.calibration_images,
                engine: a.engine,
            })
        })
        .transpose()?;
    let report = export::export_run(&a.run, &out, split, int8)?;
    println!("{report}");
    if report.calibration.is_some() {
        println!(
            "wrote {} and {}",
            a.run.join(export::CALIBRATION_FILE).display(),
            a.run.join(export::RELIABILITY_PNG).display()
        );
    }
    Ok(())
}
