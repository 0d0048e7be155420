//! Optimizers whose whole state can be saved and restored (candle-nn's keep theirs private
//! and its SGD has no momentum). State is a name -> tensor map so it rides in the same
//! safetensors checkpoint as the weights.

use candle_core::backprop::GradStore;
use candle_core::{CpuStorage, DType, Layout, Result, Tensor, Var};
use rayon::prelude::*;
use std::collections::HashMap;

/// A training optimizer as a setting: the kind and its hyper-parameters.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum OptimizerConfig {
    Sgd { lr: f64, momentum: f64 },
    Adam { lr: f64, beta1: f64, beta2: f64 },
}

impl OptimizerConfig {
    pub fn lr(&self) -> f64 {
        match *self {
            OptimizerConfig::Sgd { lr, .. } | OptimizerConfig::Adam { lr, .. } => lr,
        }
    }

    /// A fresh optimizer (no moments yet).
    pub fn build(&self) -> Box<dyn Optimizer> {
        match *self {
            OptimizerConfig::Sgd { lr, momentum } => Box::new(SgdMomentum::new(lr, momentum)),
            OptimizerConfig::Adam { lr, beta1, beta2 } => Box::new(Adam::new(lr, beta1, beta2, 1e-8)),
        }
    }
}

pub trait Optimizer {
    /// One update of `vars` from `grads`; a var without a gradient is left alone.
    fn step(&mut self, vars: &[Var], grads: &GradStore) -> Result<()>;
    fn learning_rate(&self) -> f64;
    fn set_learning_rate(&mut self, lr: f64);
    /// Everything needed to continue bit-exactly after a restart.
    fn state(&self) -> Vec<(String, Tensor)>;
    fn load_state(&mut self, vars: &[Var], state: &HashMap<String, Tensor>) -> Result<()>;
}

/// SGD with heavy-ball momentum as PyTorch defines it: v = mu v + g; p -= lr v.
pub struct SgdMomentum {
    pub lr: f64,
    pub momentum: f64,
    velocity: Vec<Option<Tensor>>,
}

impl SgdMomentum {
    pub fn new(lr: f64, momentum: f64) -> Self {
        SgdMomentum { lr, momentum, velocity: Vec::new() }
    }
}

fn grow<T: Clone>(v: &mut Vec<Option<T>>, n: usize) {
    if v.len() < n {
        v.resize(n, None);
    }
}

/// y = a * y + x, in place (one pass, no allocation).
struct Axpby {
    a: f32,
    b: f32,
}

impl candle_core::InplaceOp2 for Axpby {
    fn name(&self) -> &'static str {
        "axpby"
    }
    fn cpu_fwd(&self, s1: &mut CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<()> {
        let (CpuStorage::F32(y), CpuStorage::F32(x)) = (s1, s2) else { candle_core::bail!("axpby: expected f32") };
        let (Some((y0, y1)), Some((x0, x1))) = (l1.contiguous_offsets(), l2.contiguous_offsets()) else {
            candle_core::bail!("axpby: expected contiguous tensors")
        };
        if y1 - y0 != x1 - x0 {
            candle_core::bail!("axpby: {} vs {} elements", y1 - y0, x1 - x0);
        }
        let (a, b) = (self.a, self.b);
        y[y0..y1].par_chunks_mut(1 << 14).zip(x[x0..x1].par_chunks(1 << 14)).for_each(|(y, x)| {
            for (y, x) in y.iter_mut().zip(x) {
                *y = a * *y + b * *x;
            }
        });
        Ok(())
    }
}

/// y <- a y + b x in place on the CPU; a new tensor elsewhere (returned either way).
fn axpby(y: &Tensor, a: f64, b: f64, x: &Tensor) -> Result<Tensor> {
    if y.device().is_cpu() && y.dtype() == DType::F32 && x.dtype() == DType::F32 && y.is_contiguous() && x.is_contiguous() {
        y.inplace_op2(x, &Axpby { a: a as f32, b: b as f32 })?;
        Ok(y.clone())
    } else {
        (y * a)? + (x * b)?
    }
}

impl Optimizer for SgdMomentum {
    fn step(&mut self, vars: &[Var], grads: &GradStore) -> Result<()> {
        grow(&mut self.velocity, vars.len());
        for (i, var) in vars.iter().enumerate() {
            let Some(g) = grads.get(var) else { continue };
            let v = match self.velocity[i].take() {
                Some(v) if self.momentum != 0.0 => axpby(&v, self.momentum, 1.0, g)?,
                _ => g.detach().copy()?,
            };
            if var.device().is_cpu() && var.is_contiguous() {
                axpby(var.as_tensor(), 1.0, -self.lr, &v)?;
            } else {
                var.set(&(var.as_tensor() - (&v * self.lr)?)?)?;
            }
            self.velocity[i] = Some(v);
        }
        Ok(())
    }
    fn learning_rate(&self) -> f64 {
        self.lr
    }
    fn set_learning_rate(&mut self, lr: f64) {
        self.lr = lr;
    }
    fn state(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        for (i, v) in self.velocity.iter().enumerate() {
            if let Some(v) = v {
                // a copy: the optimizer keeps updating its own buffer in place
                out.push((format!("sgd.velocity.{i}"), v.copy().expect("copy of a velocity")));
            }
        }
        out
    }
    fn load_state(&mut self, vars: &[Var], state: &HashMap<String, Tensor>) -> Result<()> {
        self.velocity = load_slots(vars, state, "sgd.velocity")?;
        Ok(())
    }
}

/// Reads `prefix.i` for each var, checking shapes; missing slots mean "not started yet".
fn load_slots(vars: &[Var], state: &HashMap<String, Tensor>, prefix: &str) -> Result<Vec<Option<Tensor>>> {
    vars.iter()
        .enumerate()
        .map(|(i, var)| match state.get(&format!("{prefix}.{i}")) {
            None => Ok(None),
            Some(t) if t.dims() == var.dims() => Ok(Some(t.to_device(var.device())?.copy()?)),
            Some(t) => candle_core::bail!("optimizer slot {prefix}.{i}: shape {:?}, parameter {:?}", t.dims(), var.dims()),
        })
        .collect()
}

/// Adam (Kingma & Ba) with bias correction.
pub struct Adam {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    t: u64,
    m: Vec<Option<Tensor>>,
    v: Vec<Option<Tensor>>,
}

impl Adam {
    pub fn new(lr: f64, beta1: f64, beta2: f64, eps: f64) -> Self {
        Adam { lr, beta1, beta2, eps, t: 0, m: Vec::new(), v: Vec::new() }
    }
}

impl Optimizer for Adam {
    fn step(&mut self, vars: &[Var], grads: &GradStore) -> Result<()> {
        grow(&mut self.m, vars.len());
        grow(&mut self.v, vars.len());
        self.t += 1;
        let c1 = 1.0 - self.beta1.powi(self.t as i32);
        let c2 = 1.0 - self.beta2.powi(self.t as i32);
        for (i, var) in vars.iter().enumerate() {
            let Some(g) = grads.get(var) else { continue };
            let m = match &self.m[i] {
                Some(m) => ((m * self.beta1)? + (g * (1.0 - self.beta1))?)?,
                None => (g * (1.0 - self.beta1))?,
            };
            let v = match &self.v[i] {
                Some(v) => ((v * self.beta2)? + (g.sqr()? * (1.0 - self.beta2))?)?,
                None => (g.sqr()? * (1.0 - self.beta2))?,
            };
            let denom = ((&v / c2)?.sqrt()? + self.eps)?;
            let update = ((&m / c1)? / denom)?;
            var.set(&(var.as_tensor() - (update * self.lr)?)?)?;
            self.m[i] = Some(m.detach());
            self.v[i] = Some(v.detach());
        }
        Ok(())
    }
    fn learning_rate(&self) -> f64 {
        self.lr
    }
    fn set_learning_rate(&mut self, lr: f64) {
        self.lr = lr;
    }
    fn state(&self) -> Vec<(String, Tensor)> {
        let mut out = vec![("adam.t".to_string(), Tensor::new(&[self.t as i64], &candle_core::Device::Cpu).expect("scalar"))];
        for (name, slots) in [("adam.m", &self.m), ("adam.v", &self.v)] {
            for (i, s) in slots.iter().enumerate() {
                if let Some(s) = s {
                    out.push((format!("{name}.{i}"), s.clone()));
                }
            }
        }
        out
    }
    fn load_state(&mut self, vars: &[Var], state: &HashMap<String, Tensor>) -> Result<()> {
        self.t = match state.get("adam.t") {
            Some(t) => t.to_vec1::<i64>()?.first().copied().unwrap_or(0) as u64,
            None => 0,
        };
        self.m = load_slots(vars, state, "adam.m")?;
        self.v = load_slots(vars, state, "adam.v")?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Minimizes sum((p - 3)^2) and checks that a save/restore mid-way changes nothing.
    fn resume_is_exact(make: impl Fn() -> Box<dyn Optimizer>) -> Result<()> {
        let dev = Device::Cpu;
        let run = |split: Option<usize>| -> Result<Vec<f32>> {
            let p = Var::from_vec(vec![0f32, 1.0, -2.0], 3, &dev)?;
            let mut opt = make();
            for i in 0..20 {
                if Some(i) == split {
                    let saved: HashMap<String, Tensor> = opt.state().into_iter().collect();
                    opt = make();
                    opt.load_state(std::slice::from_ref(&p), &saved)?;
                }
                let loss = (p.as_tensor() - 3.0)?.sqr()?.sum_all()?;
                opt.step(std::slice::from_ref(&p), &loss.backward()?)?;
            }
            p.as_tensor().to_vec1::<f32>()
        };
        let whole = run(None)?;
        assert_eq!(whole, run(Some(7))?);
        for (v, start) in whole.iter().zip([0f32, 1.0, -2.0]) {
            assert!((v - 3.0).abs() < 0.5 * (start - 3.0).abs(), "did not move toward the minimum: {whole:?}");
        }
        Ok(())
    }

    #[test]
    fn sgd_momentum_resumes_exactly() -> Result<()> {
        resume_is_exact(|| Box::new(SgdMomentum::new(0.05, 0.9)))
    }

    #[test]
    fn adam_resumes_exactly() -> Result<()> {
        resume_is_exact(|| Box::new(Adam::new(0.3, 0.5, 0.999, 1e-8)))
    }

    #[test]
    fn sgd_momentum_matches_hand_computation() -> Result<()> {
        let p = Var::from_vec(vec![1f32], 1, &Device::Cpu)?;
        let mut opt = SgdMomentum::new(0.1, 0.9);
        for _ in 0..2 {
            let loss = (p.as_tensor() * 2.0)?.sum_all()?; // gradient 2
            opt.step(std::slice::from_ref(&p), &loss.backward()?)?;
        }
        // v1 = 2, p1 = 0.8; v2 = 0.9*2 + 2 = 3.8, p2 = 0.8 - 0.38 = 0.42
        let got = p.as_tensor().to_vec1::<f32>()?[0];
        assert!((got - 0.42).abs() < 1e-6, "{got}");
        Ok(())
    }
}
