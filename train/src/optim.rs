//! Adam with L2 weight decay (PyTorch's `torch.optim.Adam(weight_decay=...)`), written over tch
//! tensors so that its moments can be checkpointed and a resumed run continues exactly.

use anyhow::{bail, Context, Result};
use std::path::Path;
use tch::{nn, Tensor};

pub struct Adam {
    /// Trainable variables, sorted by name (stable order for checkpoints).
    params: Vec<(String, Tensor)>,
    exp_avg: Vec<Tensor>,
    exp_avg_sq: Vec<Tensor>,
    pub step: i64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
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
            params,
            exp_avg,
            exp_avg_sq,
            step: 0,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay,
        }
    }

    pub fn zero_grad(&mut self) {
        for (_, p) in &mut self.params {
            let mut g = p.grad();
            if g.defined() {
                let _ = g.zero_();
            }
        }
    }

    /// One Adam update at learning rate `lr`:
    /// g += wd * p; m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2;
    /// p -= lr / (1 - b1^t) * m / (sqrt(v / (1 - b2^t)) + eps).
    pub fn step(&mut self, lr: f64) {
        self.step += 1;
        let bc1 = 1.0 - self.beta1.powi(self.step as i32);
        let bc2 = 1.0 - self.beta2.powi(self.step as i32);
        tch::no_grad(|| {
            for ((_, p), (m, v)) in self
                .params
                .iter_mut()
                .zip(self.exp_avg.iter_mut().zip(self.exp_avg_sq.iter_mut()))
            {
                let grad = p.grad();
                if !grad.defined() {
                    continue;
                }
                let g = if self.weight_decay != 0.0 {
                    &grad + &*p * self.weight_decay
                } else {
                    grad
                };
                let _ = m.lerp_(&g, 1.0 - self.beta1);
                let _ = v.g_mul_scalar_(self.beta2);
                let _ = v.addcmul_(&(&g * (1.0 - self.beta2)), &g);
                let denom = (v.sqrt() / bc2.sqrt()) + self.eps;
                let _ = p.addcdiv_(&(&*m * (-lr / bc1)), &denom);
            }
        });
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
            opt.step(0.1);
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
    fn state_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let vs = nn::VarStore::new(Device::Cpu);
        let p = vs.root().var("w", &[3], nn::Init::Const(0.5));
        let mut opt = Adam::new(&vs, 1e-4);
        (&p * 3.0).sum(Kind::Float).backward();
        opt.step(0.01);
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
