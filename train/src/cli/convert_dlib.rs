//! `dmue-train convert-dlib`: dlib's face-recognition ResNet to safetensors.

use anyhow::Result;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct ConvertDlibArgs {
    /// dlib's .dat file.
    input: PathBuf,
    /// The safetensors file to write (written beside it first, then renamed into place).
    output: PathBuf,
}

pub fn run(a: ConvertDlibArgs) -> Result<()> {
    let r = dmue_train::model::dlib::convert(&a.input, &a.output)?;
    println!(
        "wrote {} ({} tensors, {} values; input {}x{}, mean {:?})",
        a.output.display(),
        r.tensors,
        r.values,
        r.input_size[0],
        r.input_size[1],
        r.input_mean
    );
    Ok(())
}
