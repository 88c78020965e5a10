//! Running the `dmue-train` binary from integration tests.
#![allow(dead_code)] // each test crate uses a different subset

use std::path::PathBuf;
use std::process::{Command, Output};

/// The workspace root, where `models/` and `target/test-data/` live.
pub fn root() -> PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

pub fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_dmue-train"));
    // Info level: the tests read what a user sees (epoch lines, "resuming from", notes).
    c.env("DMUE_NO_PROGRESS", "1").env("DMUE_LOG", "info");
    c
}

pub fn run(args: &[&str]) -> Output {
    bin().args(args).output().expect("binary runs")
}

/// stdout and stderr together.
pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Runs and asserts success; returns the output text.
pub fn ok(args: &[&str]) -> String {
    let o = run(args);
    assert!(
        o.status.success(),
        "dmue-train {args:?} failed:\n{}",
        text(&o)
    );
    text(&o)
}

/// Runs and asserts failure; returns the output text.
pub fn fails(args: &[&str]) -> String {
    let o = run(args);
    assert!(
        !o.status.success(),
        "dmue-train {args:?} should have failed:\n{}",
        text(&o)
    );
    text(&o)
}

/// `fit --data DATA --out OUT --device cpu` followed by `extra`, as owned arguments (for
/// `bin().args(..)` on runs that are spawned, killed or repeated).
pub fn fit_args(data: &std::path::Path, out: &std::path::Path, extra: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = ["fit", "--data", data.to_str().unwrap(), "--out"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    a.push(out.to_str().unwrap().to_string());
    a.extend(["--device", "cpu"].iter().map(|s| s.to_string()));
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

/// An empty temporary directory `dmue-NAME-PID` for a fixture that lives as long as this test
/// process (a static, so it is never dropped). Directories of the same name left by processes
/// that have ended are removed first, so repeated test runs do not fill the temporary disk.
pub fn fixture_dir(name: &str) -> PathBuf {
    let tmp = std::env::temp_dir();
    let prefix = format!("dmue-{name}-");
    for entry in std::fs::read_dir(&tmp).into_iter().flatten().flatten() {
        let file_name = entry.file_name();
        let Some(pid) = file_name
            .to_str()
            .and_then(|n| n.strip_prefix(&prefix))
            .and_then(|rest| rest.parse::<u32>().ok())
        else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
    let dir = tmp.join(format!("{prefix}{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// The tiny synthetic dataset the CLI tests train on (84 training and 28 test faces of 48
/// pixels, 20 % of the training labels flipped), rendered from `seed` into a temporary
/// directory named after `name` and this process.
pub fn tiny_synth(name: &str, seed: u64) -> std::path::PathBuf {
    let dir = fixture_dir(name);
    let seed = seed.to_string();
    ok(&[
        "synth",
        "--out",
        dir.to_str().unwrap(),
        "--train",
        "84",
        "--test",
        "28",
        "--size",
        "48",
        "--seed",
        &seed,
        "--flip-rate",
        "0.2",
    ]);
    dir
}

/// The epoch numbers of a run's metrics.jsonl, in order.
pub fn metrics_epochs(run: &std::path::Path) -> Vec<u64> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["epoch"]
                .as_u64()
                .unwrap()
        })
        .collect()
}

/// `fit` settings for a fast run: width-4 ResNet-18 on 32x32 crops, batches of 14.
pub const TINY: [&str; 10] = [
    "--set",
    "data.preprocess.resize=36",
    "--set",
    "data.preprocess.crop=32",
    "--set",
    "model.width=4",
    "--set",
    "train.batch_size=14",
    "--set",
    "train.threads=1",
];
