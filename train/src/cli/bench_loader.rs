//! `dmue-train bench-loader`: the training input pipeline alone, timed (scripts/bench-loader.sh).

use anyhow::Result;
use dmue_train::data::loader::{self, LoaderKind};
use dmue_train::data::manifest::Dataset;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct BenchLoaderArgs {
    #[arg(long)]
    data: PathBuf,
    #[arg(long, value_enum, default_value_t = LoaderKind::Memory)]
    loader: LoaderKind,
    /// Loader threads.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    #[arg(long, default_value_t = 20)]
    batches: usize,
    #[arg(long, default_value_t = 72)]
    batch_size: usize,
    #[arg(long, default_value_t = 256)]
    resize: u32,
    #[arg(long, default_value_t = 224)]
    crop: u32,
}

pub fn run(a: BenchLoaderArgs) -> Result<()> {
    let ds = Dataset::open(&a.data)?;
    let pre = dmue_deploy::preprocess::Preprocess {
        resize: a.resize,
        crop: a.crop,
        ..Default::default()
    };
    let report = loader::bench(&ds, &pre, a.loader, a.threads, a.batches, a.batch_size)?;
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}
