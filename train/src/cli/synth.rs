//! `dmue-train synth`: render the synthetic benchmark.

use anyhow::Result;
use dmue_train::synth::{self, expr::MixtureConfig, SynthOptions};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct SynthArgs {
    /// Output dataset directory.
    #[arg(long, short)]
    out: PathBuf,
    /// Number of training images.
    #[arg(long, default_value_t = 2800)]
    train: usize,
    /// Number of test images (clean labels).
    #[arg(long, default_value_t = 700)]
    test: usize,
    /// Number of validation images (clean labels), for `export --calibrate val`.
    #[arg(long, default_value_t = 0)]
    val: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Fraction of training labels flipped to another uniformly random class.
    #[arg(long, default_value_t = 0.0)]
    flip_rate: f32,
    /// Share of images that are ambiguous two-class blends.
    #[arg(long, default_value_t = MixtureConfig::default().ambiguous_share)]
    ambiguity: f32,
    /// Lowest expression intensity (1 = full caricature, lower = closer to neutral).
    #[arg(long, default_value_t = MixtureConfig::default().min_intensity)]
    min_intensity: f32,
    #[arg(long, value_enum, default_value_t = synth::Mode::Aligned)]
    mode: synth::Mode,
    /// Side of aligned crops in pixels.
    #[arg(long, default_value_t = dmue_deploy::face::ALIGNED_SIZE)]
    size: u32,
    /// Most faces per photo (photo mode).
    #[arg(long, default_value_t = 3)]
    max_faces: usize,
    /// Also write OUT/preview.png: a grid of samples per class.
    #[arg(long)]
    preview: bool,
    /// Identity mode, for `pretrain`: render this many people (classes are people, not
    /// expressions; --train, --test, --flip-rate and --mode do not apply).
    #[arg(long, value_name = "K")]
    identities: Option<usize>,
    /// Identity mode: images per person (random expression, pose, lighting, background).
    #[arg(long, value_name = "M", default_value_t = 20)]
    per_identity: usize,
    /// Identity mode: images per person held out as the test split (default: M / 5, at
    /// least 1).
    #[arg(long, value_name = "N")]
    test_per_identity: Option<usize>,
}

impl SynthArgs {
    /// The expression mixtures both synth modes draw from.
    fn mixture(&self) -> MixtureConfig {
        MixtureConfig {
            ambiguous_share: self.ambiguity,
            min_intensity: self.min_intensity,
            ..Default::default()
        }
    }
}

pub fn run(a: SynthArgs) -> Result<()> {
    if let Some(identities) = a.identities {
        let opts = synth::IdentityOptions {
            identities,
            per_identity: a.per_identity,
            test_per_identity: a.test_per_identity.unwrap_or((a.per_identity / 5).max(1)),
            seed: a.seed,
            size: a.size,
            mixture: a.mixture(),
        };
        let s = synth::generate_identities(&opts, &a.out)?;
        println!(
            "wrote {} images of {} people ({} per person held out for test) to {}",
            s.images,
            opts.identities,
            opts.test_per_identity,
            s.out.display()
        );
        return Ok(());
    }
    let opts = SynthOptions {
        train: a.train,
        test: a.test,
        val: a.val,
        seed: a.seed,
        flip_rate: a.flip_rate,
        mode: a.mode,
        size: a.size,
        max_faces: a.max_faces,
        mixture: a.mixture(),
    };
    let s = synth::generate(&opts, &a.out)?;
    println!(
        "wrote {} images ({} faces, {} training labels flipped) to {}",
        s.images,
        s.faces,
        s.flipped,
        s.out.display()
    );
    if a.preview {
        let path = a.out.join("preview.png");
        synth::preview(&opts, 8, &path)?;
        println!("preview grid: {}", path.display());
    }
    Ok(())
}
