//! Data-parallel training across processes with libtorch's own distributed engine (c10d, bound
//! in `dist_shim.cpp`): a `TCPStore` hosted by rank 0 for the rendezvous, `ProcessGroupGloo`
//! for CPU tensors and `ProcessGroupNCCL` for CUDA ones.
//!
//! A job is started the way PyTorch jobs are: `torchrun` (or `srun`, or `fit --nproc N`) sets
//! `RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `MASTER_ADDR` and `MASTER_PORT` ([`Launch::from_env`]).
//! Without them, or with `WORLD_SIZE=1`, [`Comm::single`] makes every collective a no-op and
//! training is exactly the one-process code path.
//!
//! Faults: every collective and the rendezvous are bounded by a timeout. Each rank bumps a
//! heartbeat counter in the store every second from a thread of its own; when a collective
//! fails, the counters that stopped moving name the rank that died or hung.

use anyhow::{anyhow, bail, Context, Result};
use std::ffi::{c_char, c_int, c_long, c_ulong, c_void, CStr, CString};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tch::{Device, Kind, Tensor};

extern "C" {
    fn dmue_dist_init(
        backend: *const c_char,
        addr: *const c_char,
        port: c_int,
        rank: c_int,
        world: c_int,
        timeout_ms: c_long,
        out: *mut *mut c_void,
        err: *mut c_char,
        err_len: c_ulong,
    ) -> c_int;
    fn dmue_dist_free(group: *mut c_void);
    fn dmue_dist_allreduce_sum(
        group: *mut c_void,
        tensors: *const *const torch_sys::C_tensor,
        n: c_long,
        err: *mut c_char,
        err_len: c_ulong,
    ) -> c_int;
    fn dmue_dist_broadcast(
        group: *mut c_void,
        tensors: *const *const torch_sys::C_tensor,
        n: c_long,
        root: c_int,
        err: *mut c_char,
        err_len: c_ulong,
    ) -> c_int;
    fn dmue_dist_barrier(group: *mut c_void, err: *mut c_char, err_len: c_ulong) -> c_int;
    fn dmue_reducer_new(
        group: *mut c_void,
        params: *const *const torch_sys::C_tensor,
        n: c_long,
        first_cap_bytes: c_long,
        cap_bytes: c_long,
        out: *mut *mut c_void,
        err: *mut c_char,
        err_len: c_ulong,
    ) -> c_int;
    fn dmue_reducer_arm(reducer: *mut c_void, err: *mut c_char, err_len: c_ulong) -> c_int;
    fn dmue_reducer_finish(reducer: *mut c_void, err: *mut c_char, err_len: c_ulong) -> c_int;
    fn dmue_reducer_free(reducer: *mut c_void);
    fn dmue_dist_store_clone(
        group: *mut c_void,
        out: *mut *mut c_void,
        err: *mut c_char,
        err_len: c_ulong,
    ) -> c_int;
    fn dmue_dist_store_add(
        group: *mut c_void,
        key: *const c_char,
        delta: c_long,
        value: *mut c_long,
        err: *mut c_char,
        err_len: c_ulong,
    ) -> c_int;
}

/// How a rank learns its place in the job: torchrun's environment contract.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launch {
    pub rank: usize,
    pub world_size: usize,
    pub local_rank: usize,
    pub master_addr: String,
    pub master_port: u16,
}

impl Launch {
    /// The job from `RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `MASTER_ADDR`, `MASTER_PORT`; `None`
    /// when `WORLD_SIZE` is unset or 1 (one process). SLURM's `SLURM_PROCID` / `SLURM_NTASKS`
    /// / `SLURM_LOCALID` stand in for the first three under `srun`.
    pub fn from_env() -> Result<Option<Launch>> {
        Self::from_vars(|k| std::env::var(k).ok())
    }

    fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Option<Launch>> {
        let pick = |names: &[&str]| {
            names
                .iter()
                .find_map(|n| var(n).map(|v| (n.to_string(), v)))
        };
        let number = |names: &[&str]| -> Result<Option<usize>> {
            pick(names)
                .map(|(n, v)| {
                    v.trim()
                        .parse::<usize>()
                        .with_context(|| format!("{n}={v:?} is not a whole number"))
                })
                .transpose()
        };
        let Some(world_size) = number(&["WORLD_SIZE", "SLURM_NTASKS"])? else {
            return Ok(None);
        };
        if world_size <= 1 {
            return Ok(None);
        }
        let rank = number(&["RANK", "SLURM_PROCID"])?.context(
            "WORLD_SIZE is set but RANK is not: start the job with torchrun, srun or fit --nproc",
        )?;
        if rank >= world_size {
            bail!("RANK={rank} is not below WORLD_SIZE={world_size}");
        }
        let local_rank = number(&["LOCAL_RANK", "SLURM_LOCALID"])?.unwrap_or(0);
        let master_addr = var("MASTER_ADDR")
            .filter(|a| !a.is_empty())
            .context("WORLD_SIZE > 1 needs MASTER_ADDR (the host of rank 0)")?;
        let port = var("MASTER_PORT").context("WORLD_SIZE > 1 needs MASTER_PORT")?;
        let master_port = port
            .trim()
            .parse()
            .with_context(|| format!("MASTER_PORT={port:?} is not a port number"))?;
        Ok(Some(Launch {
            rank,
            world_size,
            local_rank,
            master_addr,
            master_port,
        }))
    }
}

/// The collective backend (`fit --dist-backend`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Backend {
    /// NCCL when training on CUDA, Gloo on the CPU.
    Auto,
    Gloo,
    Nccl,
}

impl Backend {
    fn resolve(self, device: Device) -> Result<&'static str> {
        Ok(match (self, device.is_cuda()) {
            (Backend::Auto, true) | (Backend::Nccl, true) => "nccl",
            (Backend::Nccl, false) => {
                bail!("--dist-backend nccl needs CUDA tensors; on the CPU use gloo")
            }
            (Backend::Auto, false) | (Backend::Gloo, false) => "gloo",
            (Backend::Gloo, true) => {
                bail!("--dist-backend gloo is for CPU training here; on CUDA use nccl (or auto)")
            }
        })
    }
}

/// Default bound of the rendezvous and of every collective (`fit --dist-timeout`).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);
/// How often each rank bumps its heartbeat counter.
const HEARTBEAT: Duration = Duration::from_secs(1);
/// Tensors are broadcast and averaged in flat buffers of at most this many bytes (fewer, larger
/// messages).
const BUCKET_BYTES: i64 = 16 << 20;
/// Gradient buckets: the first one small, so that the exchange starts early in the backward
/// pass, the others large enough that a message's fixed cost is small (PyTorch's DDP: 1 and 25
/// MB; measured here in docs/performance.md).
const FIRST_GRAD_BUCKET_BYTES: i64 = 1 << 20;
const GRAD_BUCKET_BYTES: i64 = 4 << 20;

/// A raw c10d handle (a `Group` of dist_shim.cpp).
struct Handle(*mut c_void);
// SAFETY: each handle is used by one thread at a time: the main one by the training thread, the
// heartbeat's clone by the heartbeat thread, the diagnosis clone only after a failure, from the
// training thread.
unsafe impl Send for Handle {}
unsafe impl Sync for Handle {}

impl Drop for Handle {
    fn drop(&mut self) {
        // SAFETY: created by dmue_dist_init or dmue_dist_store_clone, freed once here.
        unsafe { dmue_dist_free(self.0) }
    }
}

/// Calls a shim function with an error buffer; its message on failure.
fn call(f: impl FnOnce(*mut c_char, c_ulong) -> c_int) -> std::result::Result<(), String> {
    let mut err = [0u8; 1024];
    if f(err.as_mut_ptr() as *mut c_char, err.len() as c_ulong) == 0 {
        return Ok(());
    }
    Err(CStr::from_bytes_until_nul(&err)
        .map(|m| m.to_string_lossy().trim().to_string())
        .unwrap_or_default())
}

fn store_add(h: &Handle, key: &str, delta: i64) -> std::result::Result<i64, String> {
    let key = CString::new(key).expect("no NUL in a store key");
    let mut value: c_long = 0;
    // SAFETY: a live handle, a NUL-terminated key, a writable value.
    call(|e, n| unsafe { dmue_dist_store_add(h.0, key.as_ptr(), delta, &mut value, e, n) })?;
    Ok(value)
}

fn ptrs(ts: &[&Tensor]) -> Vec<*const torch_sys::C_tensor> {
    ts.iter().map(|t| t.as_ptr()).collect()
}

struct Group {
    main: Handle,
    /// A second store connection, read only to diagnose a failure.
    diag: Handle,
    stop: Arc<AtomicBool>,
    heartbeat: Option<std::thread::JoinHandle<()>>,
    launch: Launch,
}

/// This process's view of the job. One process: every collective is a no-op.
pub struct Comm {
    rank: usize,
    size: usize,
    /// Where collective buffers live: the CPU for Gloo, the training GPU for NCCL.
    device: Device,
    group: Option<Group>,
}

impl Comm {
    /// A job of one process.
    pub fn single(device: Device) -> Self {
        Self {
            rank: 0,
            size: 1,
            device,
            group: None,
        }
    }

    /// Joins the job `launch` describes: waits (at most `timeout`) for every rank at rank 0's
    /// store, then builds the backend for tensors on `device`.
    pub fn join(
        launch: &Launch,
        backend: Backend,
        device: Device,
        timeout: Duration,
    ) -> Result<Self> {
        let which = backend.resolve(device)?;
        let c = |s: &str| CString::new(s).expect("no NUL");
        let (b, addr) = (c(which), c(&launch.master_addr));
        let mut raw: *mut c_void = std::ptr::null_mut();
        tracing::info!(
            "rank {}/{}: joining the job at {}:{} ({which}, timeout {} s)",
            launch.rank,
            launch.world_size,
            launch.master_addr,
            launch.master_port,
            timeout.as_secs()
        );
        // SAFETY: NUL-terminated strings, a writable out pointer, an error buffer.
        call(|e, n| unsafe {
            dmue_dist_init(
                b.as_ptr(),
                addr.as_ptr(),
                launch.master_port as c_int,
                launch.rank as c_int,
                launch.world_size as c_int,
                timeout.as_millis() as c_long,
                &mut raw,
                e,
                n,
            )
        })
        .map_err(|m| {
            anyhow!(
                "could not join the job at {}:{} within {} s as rank {}: {m}",
                launch.rank,
                launch.master_addr,
                launch.master_port,
                timeout.as_secs()
            )
        })?;
        let main = Handle(raw);
        let clone = |h: &Handle| -> Result<Handle> {
            let mut raw: *mut c_void = std::ptr::null_mut();
            // SAFETY: a live handle and a writable out pointer.
            call(|e, n| unsafe { dmue_dist_store_clone(h.0, &mut raw, e, n) })
                .map_err(|m| anyhow!("cannot open a second connection to the store: {m}"))?;
            Ok(Handle(raw))
        };
        let diag = clone(&main)?;
        let beat = clone(&main)?;
        let stop = Arc::new(AtomicBool::new(false));
        let key = format!("heartbeat/{}", launch.rank);
        store_add(&beat, &key, 1).map_err(|m| anyhow!("store: {m}"))?;
        let heartbeat = {
            let stop = Arc::clone(&stop);
            std::thread::Builder::new()
                .name("dist-heartbeat".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(HEARTBEAT);
                        // A failed bump is not an error here: the training thread's next
                        // collective reports the job's state.
                        if store_add(&beat, &key, 1).is_err() {
                            break;
                        }
                    }
                })
                .context("cannot start the heartbeat thread")?
        };
        let comm = Self {
            rank: launch.rank,
            size: launch.world_size,
            device: if which == "nccl" { device } else { Device::Cpu },
            group: Some(Group {
                main,
                diag,
                stop,
                heartbeat: Some(heartbeat),
                launch: launch.clone(),
            }),
        };
        // Every rank has started its heartbeat before anyone relies on it.
        comm.barrier()?;
        Ok(comm)
    }

    pub fn rank(&self) -> usize {
        self.rank
    }

    pub fn size(&self) -> usize {
        self.size
    }

    /// Rank 0: the one that writes files, logs and draws progress bars.
    pub fn is_main(&self) -> bool {
        self.rank == 0
    }

    /// Where collective buffers must live.
    pub fn device(&self) -> Device {
        self.device
    }

    /// In-place sum over the ranks of each tensor (on [`Comm::device`], contiguous).
    pub fn sum(&self, ts: &[&Tensor]) -> Result<()> {
        let Some(g) = &self.group else { return Ok(()) };
        let p = ptrs(ts);
        // SAFETY: live tensors borrowed for the call, a live handle.
        call(|e, n| unsafe {
            dmue_dist_allreduce_sum(g.main.0, p.as_ptr(), p.len() as c_long, e, n)
        })
        .map_err(|m| self.failure("summing tensors across the ranks", m))
    }

    /// In-place copy of rank 0's tensors to every rank (tensors on any device; moved through
    /// [`Comm::device`] when they live elsewhere).
    pub fn broadcast_from_main(&self, ts: &[&Tensor]) -> Result<()> {
        let Some(g) = &self.group else { return Ok(()) };
        for chunk in buckets(ts) {
            let flat = tch::no_grad(|| flatten(&chunk, self.device));
            // SAFETY: as in `sum`.
            call(|e, n| unsafe { dmue_dist_broadcast(g.main.0, &flat.as_ptr(), 1, 0, e, n) })
                .map_err(|m| self.failure("copying rank 0's tensors", m))?;
            tch::no_grad(|| unflatten(&flat, &chunk));
        }
        Ok(())
    }

    /// A reducer of `params`' gradients (the same list on every rank); none in a one-process
    /// job.
    pub fn grad_reducer(&self, params: &[&Tensor]) -> Result<Option<GradReducer>> {
        let Some(g) = &self.group else {
            return Ok(None);
        };
        let p = ptrs(params);
        let mut raw: *mut c_void = std::ptr::null_mut();
        // SAFETY: live tensors borrowed for the call (the reducer keeps its own references), a
        // live handle, a writable out pointer.
        call(|e, n| unsafe {
            dmue_reducer_new(
                g.main.0,
                p.as_ptr(),
                p.len() as c_long,
                FIRST_GRAD_BUCKET_BYTES as c_long,
                GRAD_BUCKET_BYTES as c_long,
                &mut raw,
                e,
                n,
            )
        })
        .map_err(|m| anyhow!("cannot lay out the gradient buckets: {m}"))?;
        Ok(Some(GradReducer(raw)))
    }

    /// Ends a backward pass started after [`GradReducer::arm`]: every gradient is then the mean
    /// over the ranks.
    pub fn average_gradients(&self, reducer: &GradReducer) -> Result<()> {
        // SAFETY: a live reducer of this job's live handle.
        call(|e, n| unsafe { dmue_reducer_finish(reducer.0, e, n) })
            .map_err(|m| self.failure("summing the gradients across the ranks", m))
    }

    /// Replaces each tensor by its mean over the ranks, summed in buckets of flat buffers.
    /// Every rank must pass the same shapes in the same order.
    pub fn mean(&self, ts: &[&Tensor]) -> Result<()> {
        if self.group.is_none() {
            return Ok(());
        }
        for chunk in buckets(ts) {
            let flat = tch::no_grad(|| flatten(&chunk, self.device));
            self.mean_flat(&flat)?;
            tch::no_grad(|| unflatten(&flat, &chunk));
        }
        Ok(())
    }

    /// One flat buffer replaced by its mean over the ranks.
    fn mean_flat(&self, flat: &Tensor) -> Result<()> {
        self.sum(&[flat])?;
        tch::no_grad(|| {
            let _ = flat.shallow_clone().divide_scalar_(self.size as f64);
        });
        Ok(())
    }

    /// Waits for every rank.
    pub fn barrier(&self) -> Result<()> {
        let Some(g) = &self.group else { return Ok(()) };
        // SAFETY: a live handle.
        call(|e, n| unsafe { dmue_dist_barrier(g.main.0, e, n) })
            .map_err(|m| self.failure("waiting for every rank", m))
    }

    /// The error of a failed collective, naming the ranks whose heartbeat stopped (or rank 0's
    /// store, when it cannot be reached at all).
    fn failure(&self, what: &str, message: String) -> anyhow::Error {
        let g = self
            .group
            .as_ref()
            .expect("a collective ran, so there is a group");
        let read = || -> std::result::Result<Vec<i64>, String> {
            (0..self.size)
                .map(|r| store_add(&g.diag, &format!("heartbeat/{r}"), 0))
                .collect()
        };
        let who = match read() {
            Err(_) => format!(
                "rank 0, which hosts the job's store at {}:{}, is gone (killed, crashed or \
                 finished with an error)",
                g.launch.master_addr, g.launch.master_port
            ),
            Ok(before) => {
                std::thread::sleep(3 * HEARTBEAT);
                match read() {
                    Err(_) => "rank 0 stopped answering while this rank looked".to_string(),
                    Ok(after) => {
                        let stale: Vec<String> = (0..self.size)
                            .filter(|&r| r != self.rank && before[r] == after[r])
                            .map(|r| r.to_string())
                            .collect();
                        match stale.len() {
                            0 => "every rank still has a heartbeat".to_string(),
                            1 => format!(
                                "rank {} stopped answering (killed, crashed or hung)",
                                stale[0]
                            ),
                            _ => format!(
                                "ranks {} stopped answering (killed, crashed or hung)",
                                stale.join(", ")
                            ),
                        }
                    }
                }
            }
        };
        anyhow!(
            "{what} failed: {who}. c10d said: {message}. Restart the job with --resume to \
             continue from the last checkpoint"
        )
    }
}

impl Drop for Comm {
    fn drop(&mut self) {
        if let Some(g) = &mut self.group {
            g.stop.store(true, Ordering::Relaxed);
            if let Some(h) = g.heartbeat.take() {
                let _ = h.join();
            }
        }
    }
}

/// Sums a model's gradients across the ranks while the backward pass runs (`dist_shim.cpp`,
/// PyTorch DDP's reducer): the gradients are views into flat buckets ("gradient as bucket view",
/// no copy in or out), and a hook after each parameter's gradient launches the sum of a bucket
/// once all of its parameters are done. Zeroing a gradient in place keeps the view.
pub struct GradReducer(*mut c_void);

impl GradReducer {
    /// Before the backward pass whose gradients [`Comm::average_gradients`] then averages.
    pub fn arm(&self) -> Result<()> {
        // SAFETY: a live reducer.
        call(|e, n| unsafe { dmue_reducer_arm(self.0, e, n) })
            .map_err(|m| anyhow!("cannot hook the gradients: {m}"))
    }
}

impl Drop for GradReducer {
    fn drop(&mut self) {
        // SAFETY: created by dmue_reducer_new, freed once here.
        unsafe { dmue_reducer_free(self.0) }
    }
}

/// Consecutive runs of same-kind tensors of at most [`BUCKET_BYTES`] (a larger tensor alone).
fn buckets<'a>(ts: &[&'a Tensor]) -> Vec<Vec<&'a Tensor>> {
    let mut out: Vec<Vec<&Tensor>> = Vec::new();
    let mut bytes = 0i64;
    for &t in ts {
        let size = t.numel() as i64 * t.kind().elt_size_in_bytes() as i64;
        let fits = out.last().is_some_and(|b| {
            b[0].kind() == t.kind() && b[0].device() == t.device() && bytes + size <= BUCKET_BYTES
        });
        if fits {
            out.last_mut().expect("a bucket").push(t);
            bytes += size;
        } else {
            out.push(vec![t]);
            bytes = size;
        }
    }
    out
}

fn flatten(ts: &[&Tensor], device: Device) -> Tensor {
    let parts: Vec<Tensor> = ts.iter().map(|t| t.reshape([-1])).collect();
    Tensor::cat(&parts, 0).to_device(device)
}

fn unflatten(flat: &Tensor, ts: &[&Tensor]) {
    let mut offset = 0i64;
    for t in ts {
        let n = t.numel() as i64;
        let part = flat.narrow(0, offset, n).view_as(t).to_device(t.device());
        t.shallow_clone().copy_(&part);
        offset += n;
    }
}

/// Sums `rows` (`[k, C]`, this rank's rows) into a `[total, C]` table at `positions` (this
/// rank's places in it) across the ranks: every rank gets every rank's rows. The ranks' places
/// are disjoint, so the sum assembles the table.
pub fn gather_rows(comm: &Comm, rows: &Tensor, positions: &[i64], total: i64) -> Result<Tensor> {
    let width = rows.size()[1];
    let table = Tensor::zeros([total, width], (Kind::Float, comm.device()));
    let at = Tensor::from_slice(positions).to_device(comm.device());
    tch::no_grad(|| {
        let _ = table.shallow_clone().index_copy_(
            0,
            &at,
            &rows.to_kind(Kind::Float).to_device(comm.device()),
        );
    });
    comm.sum(&[&table])?;
    Ok(table)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn torchrun_and_slurm_environments() {
        let none = Launch::from_vars(vars(&[])).unwrap();
        assert_eq!(none, None);
        let one = Launch::from_vars(vars(&[("WORLD_SIZE", "1"), ("RANK", "0")])).unwrap();
        assert_eq!(one, None);
        let torchrun = Launch::from_vars(vars(&[
            ("WORLD_SIZE", "4"),
            ("RANK", "3"),
            ("LOCAL_RANK", "1"),
            ("MASTER_ADDR", "node7"),
            ("MASTER_PORT", "29500"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(
            torchrun,
            Launch {
                rank: 3,
                world_size: 4,
                local_rank: 1,
                master_addr: "node7".into(),
                master_port: 29500
            }
        );
        let slurm = Launch::from_vars(vars(&[
            ("SLURM_NTASKS", "2"),
            ("SLURM_PROCID", "1"),
            ("SLURM_LOCALID", "0"),
            ("MASTER_ADDR", "10.0.0.1"),
            ("MASTER_PORT", "1234"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!((slurm.rank, slurm.world_size), (1, 2));
        let errors = [
            vec![
                ("WORLD_SIZE", "2"),
                ("MASTER_ADDR", "a"),
                ("MASTER_PORT", "1"),
            ],
            vec![
                ("WORLD_SIZE", "2"),
                ("RANK", "2"),
                ("MASTER_ADDR", "a"),
                ("MASTER_PORT", "1"),
            ],
            vec![("WORLD_SIZE", "2"), ("RANK", "0"), ("MASTER_PORT", "1")],
            vec![
                ("WORLD_SIZE", "2"),
                ("RANK", "0"),
                ("MASTER_ADDR", "a"),
                ("MASTER_PORT", "x"),
            ],
            vec![("WORLD_SIZE", "two"), ("RANK", "0")],
        ];
        for e in &errors {
            assert!(Launch::from_vars(vars(e)).is_err(), "{e:?} was accepted");
        }
    }

    #[test]
    fn buckets_keep_order_and_split_by_size_and_kind() {
        let a = Tensor::zeros([10], (Kind::Float, Device::Cpu));
        let big = Tensor::zeros([BUCKET_BYTES / 4 + 1], (Kind::Float, Device::Cpu));
        let d = Tensor::zeros([3], (Kind::Double, Device::Cpu));
        let b = buckets(&[&a, &a, &big, &a, &d, &d]);
        let sizes: Vec<usize> = b.iter().map(|v| v.len()).collect();
        assert_eq!(sizes, vec![2, 1, 1, 2]);
        // Round trip through a flat buffer.
        let x = Tensor::from_slice(&[1f32, 2., 3., 4., 5., 6.]).view([2, 3]);
        let y = Tensor::from_slice(&[7f32, 8.]);
        let flat = flatten(&[&x, &y], Device::Cpu);
        let (x2, y2) = (x.zeros_like(), y.zeros_like());
        unflatten(&flat, &[&x2, &y2]);
        assert!(x2.equal(&x) && y2.equal(&y));
    }
}
