//! The OpenMP wait policy of libtorch's thread pool, chosen before libgomp starts.

/// libtorch's OpenMP runtime (libgomp) lets idle worker threads spin between parallel regions.
/// On an idle machine that is the fast choice; on cores shared with anything else (a compile, a
/// second run) the spinning threads steal the time the working ones need. Measured on 2 cores,
/// one DMUE epoch at the demo size (scripts/bench-shared-cpu.sh, docs/performance.md): spinning
/// 2.7 s idle, 10.7 s next to one busy process; passive waiting 4.6 s and 4.7 s (the speed of
/// one thread); `ACTIVE` (spin without limit) beat libgomp's default in both columns (2.70 s
/// and 8.67 s against 2.79 s and 10.65 s), and on 2026-11-29 the demo's training ran at 250
/// img/s with it against 206-218 with the default. So when the cores are busy as we start we
/// wait passively, and otherwise spin. "Busy" is measured now, over [`SAMPLE`], from /proc/stat
/// (the 1-minute load average, used first, stays high for minutes after a job ends). libgomp
/// reads OMP_WAIT_POLICY once, when it is loaded (before `main`), hence the re-execution; a
/// policy the user set is never overridden.
pub fn wait_policy() {
    #[cfg(target_os = "linux")]
    if std::env::var_os("OMP_WAIT_POLICY").is_none() {
        use std::os::unix::process::CommandExt;
        let policy = if busy_cores().is_some_and(|b| b >= BUSY_SHARE) {
            "PASSIVE"
        } else {
            "ACTIVE"
        };
        if let Ok(exe) = std::env::current_exe() {
            let err = std::process::Command::new(exe)
                .args(std::env::args_os().skip(1))
                .env("OMP_WAIT_POLICY", policy)
                .exec();
            // exec returns only when it failed: carry on with libgomp's default.
            eprintln!("warning: could not re-run with OMP_WAIT_POLICY={policy}: {err}");
        }
    }
}

/// Share of all cores busy over [`SAMPLE`] (from /proc/stat's first line), `None` when unknown.
fn busy_cores() -> Option<f64> {
    let read = || -> Option<(u64, u64)> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let v: Vec<u64> = stat
            .lines()
            .next()?
            .split_whitespace()
            .skip(1)
            .filter_map(|x| x.parse().ok())
            .collect();
        // user nice system idle iowait irq softirq steal ...
        let idle = v.get(3)? + v.get(4).unwrap_or(&0);
        Some((v.iter().sum(), idle))
    };
    let (t0, i0) = read()?;
    std::thread::sleep(SAMPLE);
    let (t1, i1) = read()?;
    let total = t1.checked_sub(t0)?;
    (total > 0).then(|| 1.0 - (i1 - i0) as f64 / total as f64)
}

/// How long the cores are watched at start-up.
const SAMPLE: std::time::Duration = std::time::Duration::from_millis(150);
/// Share of the cores busy from which they count as shared (on 2 cores: one core 60 % busy).
const BUSY_SHARE: f64 = 0.3;
