//! `fit --nproc N`: a one-machine distributed job without torchrun. The command re-runs itself
//! N times with torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE,
//! MASTER_ADDR=127.0.0.1, MASTER_PORT a free port), waits for every rank and fails when any
//! rank failed. A SIGTERM or SIGINT sent to it (a batch scheduler's stop, `kill`) is passed on
//! to the ranks.

use anyhow::{bail, Context, Result};
use std::path::Path;
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Starts `n` ranks of this command, training into `out`, and waits for them. After a rank
/// fails, the others get `grace` (the job's `--dist-timeout`) to stop by themselves before they
/// are stopped.
pub fn spawn_local(n: usize, grace: std::time::Duration, out: &Path) -> Result<()> {
    // Registered before any rank starts, so no stop request is lost: it then reaches every rank.
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(signal, Arc::clone(&stop))
            .context("cannot watch for SIGTERM and SIGINT")?;
    }
    // A port free now; rank 0's store binds it a moment later.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .context("cannot find a free local port for the job's store")?
        .port();
    eprintln!(
        "fit --nproc {n}: starting ranks 0-{} on 127.0.0.1:{port}",
        n - 1
    );
    let ranks = start_ranks(n, port)?;
    let (failed, stopped) = wait_for_ranks(ranks, &stop, grace)?;
    let resume = match dmue_train::fit::checkpoint::latest(out) {
        Ok(Some(_)) => "; run the same command with --resume to continue from the last checkpoint",
        _ => "",
    };
    if stopped {
        bail!("stopped on request ({}){resume}", failed.join(", "));
    }
    if !failed.is_empty() {
        bail!("{} (their errors are above){resume}", failed.join(", "));
    }
    Ok(())
}

/// Starts ranks 0..n of this command with torchrun's environment; on a failed start the ranks
/// already running are killed.
fn start_ranks(n: usize, port: u16) -> Result<Vec<(usize, Child)>> {
    let exe = std::env::current_exe().context("cannot locate this executable")?;
    let mut ranks: Vec<(usize, Child)> = Vec::with_capacity(n);
    for rank in 0..n {
        let mut cmd = Command::new(&exe);
        cmd.args(std::env::args_os().skip(1))
            .env("RANK", rank.to_string())
            .env("LOCAL_RANK", rank.to_string())
            .env("WORLD_SIZE", n.to_string())
            .env("LOCAL_WORLD_SIZE", n.to_string())
            .env("MASTER_ADDR", "127.0.0.1")
            .env("MASTER_PORT", port.to_string());
        match cmd.spawn() {
            Ok(child) => ranks.push((rank, child)),
            Err(e) => {
                for (_, c) in &mut ranks {
                    let _ = c.kill();
                }
                bail!("cannot start rank {rank}: {e}");
            }
        }
    }
    Ok(ranks)
}

/// Waits for every rank; returns the failures (one line each) and whether a stop was requested
/// through `stop`, which is passed on to the ranks as SIGTERM.
fn wait_for_ranks(
    ranks: Vec<(usize, Child)>,
    stop: &AtomicBool,
    grace: std::time::Duration,
) -> Result<(Vec<String>, bool)> {
    // Each rank stops by itself when another fails (at once when the other died; within
    // --dist-timeout when it hangs). A rank still running `grace` after another failed (a hung
    // one, or one waiting for a rendezvous that will never come) is stopped here.
    let mut failed = Vec::new();
    let mut first_failure: Option<std::time::Instant> = None;
    let mut stopped = false;
    let mut running = ranks;
    while !running.is_empty() {
        let mut still = Vec::with_capacity(running.len());
        for (rank, mut child) in running {
            match child
                .try_wait()
                .with_context(|| format!("cannot wait for rank {rank}"))?
            {
                None => still.push((rank, child)),
                Some(status) if status.success() => {}
                Some(status) => {
                    first_failure.get_or_insert_with(std::time::Instant::now);
                    failed.push(match status.code() {
                        Some(code) => format!("rank {rank} exited with status {code}"),
                        None => {
                            use std::os::unix::process::ExitStatusExt;
                            let signal = status.signal().unwrap_or(0);
                            format!("rank {rank} was killed by signal {signal}")
                        }
                    });
                }
            }
        }
        running = still;
        if stop.swap(false, Ordering::Relaxed) {
            // Ctrl-C reaches the ranks by itself (same process group); a SIGTERM sent to this
            // process alone would not.
            for (rank, child) in &running {
                eprintln!("fit --nproc: stop requested, passing SIGTERM to rank {rank}");
                // SAFETY: kill(2) on a child's pid, which is not reaped while it is in `running`.
                unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
            }
            first_failure.get_or_insert_with(std::time::Instant::now);
            stopped = true;
        }
        if first_failure.is_some_and(|t| t.elapsed() > grace) {
            for (rank, child) in &mut running {
                eprintln!(
                    "fit --nproc: rank {rank} still runs {} s after another rank failed: stopping it",
                    grace.as_secs()
                );
                let _ = child.kill();
                let _ = child.wait();
                failed.push(format!("rank {rank} was stopped"));
            }
            running.clear();
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    Ok((failed, stopped))
}
