//! `dmue-train`: render the synthetic benchmark, prepare datasets, train DMUE (or the
//! baseline), evaluate, inspect, export. This file parses the command line and dispatches;
//! each subcommand lives in `cli/`.

mod cli;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "dmue-train",
    version,
    about = "DMUE facial expression recognition training (libtorch)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Render the synthetic FER benchmark (images + dataset.json + manifest.jsonl).
    Synth(cli::synth::SynthArgs),
    /// Detect, align and crop every face of a raw dataset (folder, CSV, synthetic photos,
    /// RAF-DB, AffectNet, FERPlus, SFEW) into a dataset directory for `fit`. Parallel and
    /// resumable; images with no face or several faces follow the rules below and are listed
    /// in OUT/prepare-report.json, never fatal.
    #[command(after_help = cli::prepare::PREPARE_RULES)]
    Prepare(cli::prepare::PrepareArgs),
    /// Train DMUE (or the baseline) on a dataset directory.
    Fit(cli::fit::FitArgs),
    /// Pretrain the backbone as a face-recognition network (softmax over identities, as the
    /// authors' MS-Celeb-1M step) on an identity-labelled dataset (`synth --identities`, or
    /// `prepare --format folder` on `<identity>/*.jpg`). Writes OUT/backbone.safetensors for
    /// `fit --init` and reports identity accuracy on the held-out images of the same people.
    Pretrain(cli::pretrain::PretrainArgs),
    /// Evaluate a run's newest checkpoint: accuracy, per-class recall, confusion matrix.
    Eval(cli::eval::EvalArgs),
    /// What a trained run believes about each training sample, against the synthetic
    /// benchmark's truth: latent distributions vs true mixtures (KL), confidence alpha vs
    /// ambiguity (Spearman) and flipped vs clean labels (RUN/alpha-flipped-vs-clean.png).
    Analyze(cli::analyze::AnalyzeArgs),
    /// Rank the training images by how probably their label is wrong (audit.jsonl, audit.html,
    /// audit-top.png in the run directory).
    Audit(cli::audit::AuditArgs),
    /// Write a copy of the run's dataset with the audit's top suspects relabelled.
    Relabel(cli::audit::RelabelArgs),
    /// Time the training input pipeline alone (decode, crop, flip, normalise): one JSON line
    /// with images/s (used by scripts/bench-loader.sh).
    #[command(hide = true)]
    BenchLoader(cli::bench_loader::BenchLoaderArgs),
    /// Export the deployed part (trunk + target branch, BatchNorm folded) to ONNX, with the
    /// model card (classes, preprocessing, template...) in its metadata.
    Export(cli::export::ExportArgs),
    /// Convert dlib's face-recognition ResNet (dlib_face_recognition_resnet_model_v1.dat) to
    /// safetensors for `fit --init face` (scripts/fetch-face-trunk.sh runs it).
    ConvertDlib(cli::convert_dlib::ConvertDlibArgs),
}

fn main() {
    cli::openmp::wait_policy();
    // Ranks other than 0 of a distributed job report warnings and errors only (rank 0 logs
    // the run), unless DMUE_LOG says otherwise.
    if std::env::var("RANK").is_ok_and(|r| r != "0") && std::env::var_os("DMUE_LOG").is_none() {
        std::env::set_var("DMUE_LOG", "warn");
    }
    dmue_deploy::logging::init(false);
    let result = match Cli::parse().command {
        Command::Synth(a) => cli::synth::run(a),
        Command::Prepare(a) => cli::prepare::run(a),
        Command::Fit(a) => cli::fit::run(a),
        Command::Pretrain(a) => cli::pretrain::run(a),
        Command::Eval(a) => cli::eval::run(a),
        Command::Analyze(a) => cli::analyze::run(a),
        Command::Audit(a) => cli::audit::run(a),
        Command::Relabel(a) => cli::audit::relabel(a),
        Command::BenchLoader(a) => cli::bench_loader::run(a),
        Command::Export(a) => cli::export::run(a),
        Command::ConvertDlib(a) => cli::convert_dlib::run(a),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
