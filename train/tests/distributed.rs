//! Data-parallel training (`fit --nproc`, c10d over Gloo on loopback): two ranks take the same
//! steps as one process on the whole batch, evaluation is sharded without changing a figure,
//! checkpoints remember the job's size, and a killed rank stops the other with an error that
//! names it, after which the job resumes.

mod common;

use common::{ok, run, text, TINY};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

fn dataset() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| common::tiny_synth("dist-test", 5))
}

fn fit_args(out: &Path, extra: &[&str]) -> Vec<String> {
    common::fit_args(dataset(), out, extra)
}

fn fit(out: &Path, extra: &[&str]) -> String {
    let args = fit_args(out, extra);
    ok(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

fn tensors(path: &Path) -> HashMap<String, tch::Tensor> {
    tch::Tensor::read_safetensors(path)
        .unwrap()
        .into_iter()
        .collect()
}

fn skip_without_c10d() -> bool {
    // A build without gloo's headers says so and refuses --nproc; nothing else to test then.
    let tmp = tempfile::tempdir().unwrap();
    let args = fit_args(
        &tmp.path().join("probe"),
        &[
            "--nproc",
            "2",
            "--epochs",
            "1",
            "--dist-timeout",
            "30",
            "--mode",
            "baseline",
        ],
    );
    let mut full = args.clone();
    full.extend(TINY.iter().map(|s| s.to_string()));
    let o = run(&full.iter().map(String::as_str).collect::<Vec<_>>());
    let t = text(&o);
    if t.contains("built without c10d") {
        eprintln!("SKIPPED: this dmue-train has no c10d (run scripts/setup.sh and rebuild)");
        return true;
    }
    assert!(o.status.success(), "a 2-rank run failed:\n{t}");
    false
}

/// The union-batch equality: a network without batch-dependent layers (dlib's face ResNet has
/// affine layers, no batch norm), no random crop or flip, and per-sample losses. The mean of the
/// two ranks' gradients on their halves is then the gradient on the whole batch, so after every
/// step the ranks hold what one process training on the whole batch holds: plain CE for 12
/// steps, and ELR for 6, whose running targets (a per-image table in the checkpoint) must match
/// too: each rank moves the rows of its half and receives the other's.
#[test]
fn two_ranks_train_like_one_process_on_the_union_batch() {
    if skip_without_c10d() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    for (mode, epochs) in [("baseline", "2"), ("elr", "1")] {
        let same = [
            "--mode",
            mode,
            "--backbone",
            "face-resnet",
            "--epochs",
            epochs,
            "--set",
            "model.width=4",
            "--set",
            "data.preprocess.resize=112",
            "--set",
            "data.preprocess.crop=112",
            "--set",
            "data.hflip=false",
            "--set",
            "train.batch_size=14",
            "--set",
            "train.threads=1",
        ];
        let one = tmp.path().join(format!("{mode}-one"));
        let two = tmp.path().join(format!("{mode}-two"));
        fit(&one, &same);
        let mut with_ranks = same.to_vec();
        with_ranks.extend(["--nproc", "2"]);
        let log = fit(&two, &with_ranks);
        assert!(log.contains("2 ranks of 7 images per step"), "{log}");

        let (a, b) = (
            tensors(&one.join("model.safetensors")),
            tensors(&two.join("model.safetensors")),
        );
        assert_eq!(a.len(), b.len());
        assert_eq!(a.contains_key("elr_targets"), mode == "elr");
        let mut worst = (0f64, String::new());
        for (name, t) in &a {
            let d = (t - &b[name]).abs().max().double_value(&[]);
            if d > worst.0 {
                worst = (d, name.clone());
            }
        }
        assert!(
            worst.0 <= 1e-5,
            "{mode}: 2 ranks vs 1 process: {} differs by {:e}",
            worst.1,
            worst.0
        );
        // The job's training figures are the whole batch's, as in one process.
        let metrics = |dir: &Path| -> Vec<(f64, f64)> {
            std::fs::read_to_string(dir.join("metrics.jsonl"))
                .unwrap()
                .lines()
                .map(|l| {
                    let v: serde_json::Value = serde_json::from_str(l).unwrap();
                    (
                        v["loss"].as_f64().unwrap(),
                        v["train_accuracy"].as_f64().unwrap(),
                    )
                })
                .collect()
        };
        let (ma, mb) = (metrics(&one), metrics(&two));
        assert_eq!(ma.len(), epochs.parse::<usize>().unwrap());
        for (x, y) in ma.iter().zip(&mb) {
            assert!(
                (x.0 - y.0).abs() <= 1e-5,
                "{mode}: epoch loss {x:?} vs {y:?}"
            );
            assert_eq!(x.1, y.1, "{mode}: train accuracy");
        }
    }
}

/// A DMUE run (batch norm, every loss term) on 2 ranks: the sharded evaluation equals one
/// process's evaluation of the same weights, the checkpoint records 2 ranks, and resuming it
/// on another number of ranks is refused with the reason.
#[test]
fn sharded_evaluation_matches_one_process_and_the_job_size_is_kept() {
    if skip_without_c10d() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("dmue");
    let mut args = vec!["--epochs", "2", "--nproc", "2"];
    args.extend(TINY);
    // DMUE needs 2 images of each of the 7 classes on each rank.
    args.extend(["--set", "train.batch_size=28"]);
    fit(&out, &args);
    let job: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("eval-test.json")).unwrap())
            .unwrap();
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["world_size"], 2);
    let state = std::fs::read_to_string(out.join("checkpoints/epoch-0002/state.json")).unwrap();
    assert!(state.contains("\"world_size\": 2"), "{state}");

    // One process evaluates the saved weights (and rewrites eval-test.json): the same
    // confusion matrix.
    ok(&["eval", out.to_str().unwrap(), "--device", "cpu"]);
    let one: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("eval-test.json")).unwrap())
            .unwrap();
    assert_eq!(job["confusion"], one["confusion"]);
    assert_eq!(job["images"], 28);

    // Resuming on one process: a clear error, nothing changed.
    let mut resume = vec!["--epochs", "3", "--resume"];
    resume.extend(TINY);
    resume.extend(["--set", "train.batch_size=28"]);
    let o = run(&fit_args(&out, &resume)
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>());
    assert!(!o.status.success());
    let t = text(&o);
    assert!(
        t.contains("trained on 2 process(es) and this job has 1"),
        "{t}"
    );
    // A batch that does not split across the ranks is refused before training.
    let mut odd = vec!["--epochs", "1", "--nproc", "2"];
    odd.extend(TINY);
    odd.extend(["--set", "train.batch_size=15"]);
    let o = run(&fit_args(&tmp.path().join("odd"), &odd)
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>());
    assert!(!o.status.success());
    let t = text(&o);
    assert!(t.contains("does not split evenly across 2 ranks"), "{t}");
    // Nothing to resume from: the launcher does not suggest it.
    assert!(!t.contains("--resume"), "{t}");
}

/// The children of `pid` with their RANK.
#[cfg(target_os = "linux")]
fn ranks_of(pid: u32) -> Vec<(u32, String)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(child) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else {
            continue;
        };
        // pid (comm) state ppid ...: the fields after the last ')'.
        let ppid: u32 = stat
            .rsplit(')')
            .next()
            .and_then(|r| r.split_whitespace().nth(1))
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        if ppid != pid {
            continue;
        }
        let env = std::fs::read(format!("/proc/{child}/environ")).unwrap_or_default();
        if let Some(rank) = env
            .split(|&b| b == 0)
            .map(|kv| String::from_utf8_lossy(kv).into_owned())
            .find_map(|kv| kv.strip_prefix("RANK=").map(str::to_string))
        {
            out.push((child, rank));
        }
    }
    out
}

/// Starts `fit` with `extra` (a 2-rank job) into `out` and waits for its first checkpoint.
#[cfg(target_os = "linux")]
fn start_until_epoch_1(out: &Path, extra: &[&str]) -> std::process::Child {
    let launcher = common::bin()
        .args(fit_args(out, extra))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !out.join("checkpoints/epoch-0001").exists() {
        assert!(Instant::now() < deadline, "no first checkpoint");
        std::thread::sleep(Duration::from_millis(20));
    }
    launcher
}

#[cfg(target_os = "linux")]
fn send(signal: &str, pid: u32) {
    std::process::Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()
        .unwrap();
}

/// Starts `fit` with `extra` (a 2-rank job) into `out`, waits for its first checkpoint, and
/// sends `signal` to rank 1. Returns the launcher and when the signal was sent.
#[cfg(target_os = "linux")]
fn signal_rank_1_after_epoch_1(
    out: &Path,
    extra: &[&str],
    signal: &str,
) -> (std::process::Child, Instant) {
    let launcher = start_until_epoch_1(out, extra);
    let ranks = ranks_of(launcher.id());
    let victim = ranks
        .iter()
        .find(|(_, r)| r == "1")
        .unwrap_or_else(|| panic!("rank 1 not found among {ranks:?}"))
        .0;
    let sent = Instant::now();
    send(signal, victim);
    (launcher, sent)
}

/// SIGTERM to `fit --nproc` (how a batch scheduler or `kill` stops a job): both ranks get it and
/// stop, and the launcher says so and how to resume. Without the forwarding the ranks would go
/// on training, orphaned.
#[test]
#[cfg(target_os = "linux")]
fn a_stopped_launcher_stops_its_ranks() {
    if skip_without_c10d() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("stopped");
    let mut extra = vec!["--epochs", "20", "--nproc", "2", "--dist-timeout", "60"];
    extra.extend(TINY);
    extra.extend(["--set", "train.batch_size=28"]);
    let launcher = start_until_epoch_1(&out, &extra);
    let ranks = ranks_of(launcher.id());
    assert_eq!(ranks.len(), 2, "{ranks:?}");
    let sent = Instant::now();
    send("-TERM", launcher.id());
    let o = launcher.wait_with_output().unwrap();
    let took = sent.elapsed();
    let running: Vec<u32> = ranks
        .iter()
        .map(|&(pid, _)| pid)
        .filter(|pid| Path::new(&format!("/proc/{pid}")).exists())
        .collect();
    for &pid in &running {
        send("-KILL", pid);
    }
    let t = text(&o);
    assert!(running.is_empty(), "ranks {running:?} still ran:\n{t}");
    assert!(!o.status.success(), "{t}");
    assert!(t.contains("stopped on request"), "{t}");
    assert!(t.contains("--resume"), "{t}");
    assert!(took < Duration::from_secs(30), "took {took:?}");
}

/// SIGKILL rank 1 in the middle of epoch 2: rank 0 stops within the timeout with an error
/// naming rank 1, the launcher fails, and the same command with --resume finishes the run from
/// the last checkpoint.
#[test]
#[cfg(target_os = "linux")]
fn a_killed_rank_stops_the_job_with_its_name_and_the_job_resumes() {
    if skip_without_c10d() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("killed");
    let mut extra = vec!["--epochs", "6", "--nproc", "2", "--dist-timeout", "60"];
    extra.extend(TINY);
    extra.extend(["--set", "train.batch_size=28"]);
    let (launcher, killed_at) = signal_rank_1_after_epoch_1(&out, &extra, "-KILL");
    let o = launcher.wait_with_output().unwrap();
    let took = killed_at.elapsed();
    let t = text(&o);
    assert!(!o.status.success(), "the job survived a killed rank:\n{t}");
    assert!(
        took < Duration::from_secs(60),
        "rank 0 took {took:?} to stop"
    );
    assert!(t.contains("rank 1 was killed by signal 9"), "{t}");
    assert!(
        t.contains("rank 0 of 2:"),
        "rank 0's error is missing:\n{t}"
    );
    assert!(t.contains("rank 1 stopped answering"), "{t}");

    let mut again = extra.clone();
    again.push("--resume");
    let log = fit(&out, &again);
    assert!(log.contains("resuming from"), "{log}");
    let epochs = common::metrics_epochs(&out);
    assert_eq!(epochs, vec![1, 2, 3, 4, 5, 6]);
    assert!(out.join("model.safetensors").exists());
}

/// SIGSTOP rank 1 (a hung rank: alive, silent): rank 0 stops within --dist-timeout naming it,
/// and the launcher stops the hung rank a timeout later.
#[test]
#[cfg(target_os = "linux")]
fn a_hung_rank_stops_the_job_within_the_timeout() {
    if skip_without_c10d() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("hung");
    let mut extra = vec!["--epochs", "20", "--nproc", "2", "--dist-timeout", "5"];
    extra.extend(TINY);
    extra.extend(["--set", "train.batch_size=28"]);
    let (launcher, stopped_at) = signal_rank_1_after_epoch_1(&out, &extra, "-STOP");
    let o = launcher.wait_with_output().unwrap();
    let took = stopped_at.elapsed();
    let t = text(&o);
    assert!(!o.status.success(), "{t}");
    assert!(t.contains("rank 1 stopped answering"), "{t}");
    assert!(t.contains("rank 1 was stopped"), "{t}");
    // 5 s of timeout, 3 s of heartbeat check, 5 s of grace, and start-up slack.
    assert!(took < Duration::from_secs(40), "took {took:?}");
}
