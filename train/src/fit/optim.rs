//! Adam with L2 weight decay (PyTorch's `torch.optim.Adam(weight_decay=...)`), written over tch
//! tensors so that its moments can be checkpointed and a resumed run continues exactly.

use anyhow::{bail, Context, Result};
use std::path::Path;
use tch::{nn, Tensor};

pub struct Adam {
    /// Trainable variables, sorted by name (stable order for checkpoints).
    params: Vec<(String, Tensor)>,
    /// Each parameter's learning rate as a multiple of the one `step` is given (1 unless
    /// [`Adam::scale_lr`] changed it).
    lr_scale: Vec<f64>,
    exp_avg: Vec<Tensor>,
    exp_avg_sq: Vec<Tensor>,
    pub step: i64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// The step number as a float32 tensor on the parameters' device, for the fused kernel.
    step_tensor: Option<Tensor>,
}

extern "C" {
    fn dmue_fused_adam(
        params: *const *const torch_sys::C_tensor,
        grads: *const *const torch_sys::C_tensor,
        exp_avgs: *const *const torch_sys::C_tensor,
        exp_avg_sqs: *const *const torch_sys::C_tensor,
        step: *const torch_sys::C_tensor,
        n: std::ffi::c_long,
        lr: f64,
        beta1: f64,
        beta2: f64,
        weight_decay: f64,
        eps: f64,
        err: *mut std::ffi::c_char,
        err_len: std::ffi::c_ulong,
    ) -> std::ffi::c_int;
}

impl Adam {
    pub fn new(vs: &nn::VarStore, weight_decay: f64) -> Self {
        let mut params: Vec<(String, Tensor)> = vs
            .variables()
            .into_iter()
            .filter(|(_, t)| t.requires_grad())
            .collect();
        params.sort_by(|a, b| a.0.cmp(&b.0));
        let exp_avg = params.iter().map(|(_, p)| p.zeros_like()).collect();
        let exp_avg_sq = params.iter().map(|(_, p)| p.zeros_like()).collect();
        Self {
            lr_scale: vec![1.0; params.len()],
            params,
            exp_avg,
            exp_avg_sq,
            step: 0,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay,
            step_tensor: None,
        }
    }

    /// Multiplies the learning rate of every parameter whose name `select` accepts by `scale`
    /// (so a schedule of the base rate moves it too); returns how many it touched.
    pub fn scale_lr(&mut self, select: impl Fn(&str) -> bool, scale: f64) -> usize {
        let mut n = 0;
        for ((name, _), s) in self.params.iter().zip(&mut self.lr_scale) {
            if select(name) {
                *s = scale;
                n += 1;
            }
        }
        n
    }

    /// The parameters, in name order: the same list on every rank of a distributed job.
    pub fn parameters(&self) -> Vec<&Tensor> {
        self.params.iter().map(|(_, p)| p).collect()
    }

    /// Both moments of every parameter, in the parameters' order.
    pub fn moments(&self) -> Vec<&Tensor> {
        self.exp_avg.iter().chain(&self.exp_avg_sq).collect()
    }

    pub fn zero_grad(&mut self) {
        for (_, p) in &mut self.params {
            let mut g = p.grad();
            if g.defined() {
                let _ = g.zero_();
            }
        }
    }

    /// One Adam update at learning rate `lr`, of every parameter that has a gradient:
    /// g += wd * p; m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2;
    /// p -= lr / (1 - b1^t) * m / (sqrt(v / (1 - b2^t)) + eps).
    /// libtorch's fused kernel does it in one call (`torch_shim.cpp`), with the step number read
    /// on the device: no kernel per tensor, no host sync.
    pub fn step(&mut self, lr: f64) -> Result<()> {
        self.step += 1;
        let mut live = Vec::with_capacity(self.params.len());
        let mut grads = Vec::with_capacity(self.params.len());
        for (i, (_, p)) in self.params.iter().enumerate() {
            let g = p.grad();
            // No gradient: frozen this epoch (`train.freeze_trunk_epochs`) or unused. (A
            // distributed job gives every parameter a gradient buffer up front, see
            // `dist::GradReducer`: a frozen one then has a gradient of zeros, and is skipped by
            // its `requires_grad`.)
            if g.defined() && p.requires_grad() {
                live.push(i);
                grads.push(g);
            }
        }
        let Some(&first) = live.first() else {
            return Ok(());
        };
        let device = self.params[first].1.device();
        let _ = self
            .step_tensor
            .get_or_insert_with(|| Tensor::zeros([], (tch::Kind::Float, device)))
            .fill_(self.step as f64);
        // One fused call per learning rate (one in the usual case).
        let mut scales: Vec<f64> = live.iter().map(|&i| self.lr_scale[i]).collect();
        scales.sort_by(f64::total_cmp);
        scales.dedup();
        for scale in scales {
            let (group, group_grads): (Vec<usize>, Vec<&Tensor>) = live
                .iter()
                .zip(&grads)
                .filter(|(&i, _)| self.lr_scale[i] == scale)
                .map(|(&i, g)| (i, g))
                .unzip();
            self.fused_step(&group, &group_grads, lr * scale)?;
        }
        Ok(())
    }

    /// libtorch's fused Adam on the parameters `idx` with their gradients `grads`.
    fn fused_step(&self, idx: &[usize], grads: &[&Tensor], lr: f64) -> Result<()> {
        let step = self.step_tensor.as_ref().expect("set by step");
        let ptrs = |ts: Vec<&Tensor>| -> Vec<*const torch_sys::C_tensor> {
            ts.into_iter().map(|t| t.as_ptr()).collect()
        };
        let params = ptrs(idx.iter().map(|&i| &self.params[i].1).collect());
        let exp_avg = ptrs(idx.iter().map(|&i| &self.exp_avg[i]).collect());
        let exp_avg_sq = ptrs(idx.iter().map(|&i| &self.exp_avg_sq[i]).collect());
        let grads = ptrs(grads.to_vec());
        let mut err = [0u8; 512];
        // SAFETY: every pointer is a live tch tensor (an `at::Tensor*`) borrowed for the call;
        // the lists have `idx.len()` entries; `err` is a writable buffer of its stated length.
        let rc = tch::no_grad(|| unsafe {
            dmue_fused_adam(
                params.as_ptr(),
                grads.as_ptr(),
                exp_avg.as_ptr(),
                exp_avg_sq.as_ptr(),
                step.as_ptr(),
                idx.len() as std::ffi::c_long,
                lr,
                self.beta1,
                self.beta2,
                self.weight_decay,
                self.eps,
                err.as_mut_ptr() as *mut std::ffi::c_char,
                err.len() as std::ffi::c_ulong,
            )
        });
        if rc != 0 {
            let msg = std::ffi::CStr::from_bytes_until_nul(&err)
                .map(|m| m.to_string_lossy().into_owned())
                .unwrap_or_default();
            bail!("libtorch's fused Adam failed: {msg}");
        }
        Ok(())
    }

    /// Writes the moments (safetensors, `exp_avg.NAME` / `exp_avg_sq.NAME`).
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut named: Vec<(String, &Tensor)> = Vec::with_capacity(2 * self.params.len());
        for (i, (name, _)) in self.params.iter().enumerate() {
            named.push((format!("exp_avg.{name}"), &self.exp_avg[i]));
            named.push((format!("exp_avg_sq.{name}"), &self.exp_avg_sq[i]));
        }
        Tensor::write_safetensors(&named, path)
            .with_context(|| format!("cannot write {}", path.display()))
    }

    /// Restores the moments written by [`Adam::save`]; `step` comes from the JSON state.
    pub fn load(&mut self, path: &Path, step: i64) -> Result<()> {
        let stored: std::collections::HashMap<String, Tensor> = Tensor::read_safetensors(path)
            .with_context(|| format!("cannot read {}", path.display()))?
            .into_iter()
            .collect();
        for (i, (name, _)) in self.params.iter().enumerate() {
            for (prefix, slot) in [
                ("exp_avg", &mut self.exp_avg[i]),
                ("exp_avg_sq", &mut self.exp_avg_sq[i]),
            ] {
                let key = format!("{prefix}.{name}");
                let Some(t) = stored.get(&key) else {
                    bail!(
                        "{} has no {key}: it belongs to another model",
                        path.display()
                    )
                };
                if t.size() != slot.size() {
                    bail!(
                        "{}: {key} has shape {:?}, the model needs {:?}",
                        path.display(),
                        t.size(),
                        slot.size()
                    );
                }
                tch::no_grad(|| slot.copy_(t));
            }
        }
        self.step = step;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    // One step from p = 1 with gradient of p^2 (g = 2), lr 0.1, wd 0: the bias-corrected update
    // is lr * m_hat / (sqrt(v_hat) + eps) = 0.1 * 2 / (2 + 1e-8) ~= 0.1 -> p = 0.9.
    // With wd 0.5: g = 2 + 0.5 = 2.5, update again ~= lr -> 0.9 (Adam's first step is lr*sign).
    // Second step (wd 0): g = 1.8, m = 0.9*0.2 + 0.1*1.8 ... computed below in f64.
    #[test]
    fn matches_the_adam_formula() {
        let vs = nn::VarStore::new(Device::Cpu);
        let p = vs.root().var("p", &[1], nn::Init::Const(1.0));
        let mut opt = Adam::new(&vs, 0.0);
        let (mut m, mut v, mut x) = (0.0f64, 0.0f64, 1.0f64);
        for t in 1..=3 {
            opt.zero_grad();
            (&p * &p).sum(Kind::Float).backward();
            opt.step(0.1).unwrap();
            let g = 2.0 * x;
            m = 0.9 * m + 0.1 * g;
            v = 0.999 * v + 0.001 * g * g;
            let (mh, vh) = (m / (1.0 - 0.9f64.powi(t)), v / (1.0 - 0.999f64.powi(t)));
            x -= 0.1 * mh / (vh.sqrt() + 1e-8);
            assert!(
                (p.double_value(&[0]) - x).abs() < 1e-6,
                "step {t}: {} vs {x}",
                p.double_value(&[0])
            );
        }
    }

    #[test]
    fn weight_decay_is_l2_on_the_gradient_and_parameters_without_gradient_stay() {
        let vs = nn::VarStore::new(Device::Cpu);
        let p = vs.root().var("p", &[2], nn::Init::Const(1.0));
        let q = vs.root().var("q", &[1], nn::Init::Const(3.0));
        let mut opt = Adam::new(&vs, 0.5);
        let (mut m, mut v, mut x) = (0.0f64, 0.0f64, 1.0f64);
        for t in 1..=3 {
            opt.zero_grad();
            (&p * 2.0).sum(Kind::Float).backward(); // q takes no part: no gradient
            opt.step(0.1).unwrap();
            let g = 2.0 + 0.5 * x;
            m = 0.9 * m + 0.1 * g;
            v = 0.999 * v + 0.001 * g * g;
            let (mh, vh) = (m / (1.0 - 0.9f64.powi(t)), v / (1.0 - 0.999f64.powi(t)));
            x -= 0.1 * mh / (vh.sqrt() + 1e-8);
            for i in 0..2 {
                assert!((p.double_value(&[i]) - x).abs() < 1e-6, "step {t}");
            }
        }
        assert_eq!(q.double_value(&[0]), 3.0);
        let qi = opt.params.iter().position(|(n, _)| n == "q").unwrap();
        assert_eq!(
            opt.exp_avg[qi].abs().sum(Kind::Float).double_value(&[]),
            0.0
        );
    }

    // Adam's first step moves each parameter by about lr * sign(g): 0.01 for `a`, ten times that
    // for `b.w`, whose rate is scaled by 10.
    #[test]
    fn a_scaled_group_moves_at_its_own_rate() {
        let vs = nn::VarStore::new(Device::Cpu);
        let a = vs.root().var("a", &[1], nn::Init::Const(5.0));
        let b = vs.root().sub("b").var("w", &[1], nn::Init::Const(5.0));
        let mut opt = Adam::new(&vs, 0.0);
        assert_eq!(opt.scale_lr(|name| name.starts_with("b."), 10.0), 1);
        opt.zero_grad();
        (&a + &b).sum(Kind::Float).backward();
        opt.step(0.01).unwrap();
        assert!((a.double_value(&[0]) - 4.99).abs() < 1e-6);
        assert!((b.double_value(&[0]) - 4.9).abs() < 1e-6);
    }

    #[test]
    fn state_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let vs = nn::VarStore::new(Device::Cpu);
        let p = vs.root().var("w", &[3], nn::Init::Const(0.5));
        let mut opt = Adam::new(&vs, 1e-4);
        (&p * 3.0).sum(Kind::Float).backward();
        opt.step(0.01).unwrap();
        opt.save(&dir.path().join("o.safetensors")).unwrap();
        let mut other = Adam::new(&vs, 1e-4);
        other
            .load(&dir.path().join("o.safetensors"), opt.step)
            .unwrap();
        assert_eq!(other.step, 1);
        assert!(other.exp_avg[0].allclose(&opt.exp_avg[0], 0.0, 0.0, false));
        assert!(other.exp_avg_sq[0].allclose(&opt.exp_avg_sq[0], 0.0, 0.0, false));
    }
}
