//! Normalization layers on NHWC tensors, built from differentiable candle ops (candle's
//! own layer norm records no gradient: DESIGN.md section 4).
//!
//! Both return gamma * x_hat without beta: callers add beta fused with the activation
//! that follows.

use super::act::bias_leaky_relu;
pub use super::norm_op::Act;
use super::norm_op::{self, Group};
use super::{Layout, Mode, TorchName};
use candle_core::{DType, Device, Result, Tensor, Var};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NormKind {
    /// Over N, H, W per channel, with running statistics for frozen use (ResNet, IGM).
    Batch,
    /// Over H, W, C per sample, per-channel gamma and beta (WINN).
    Layer,
}

/// A normalization layer. Running statistics are `Var`s so they ride in checkpoints, but
/// the optimizer never sees them.
pub struct Norm {
    pub kind: NormKind,
    pub gamma: Var,
    pub beta: Var,
    running_mean: Var,
    running_var: Var,
}

const EPS: f64 = 1e-5;
const BN_MOMENTUM: f64 = 0.1;

impl Norm {
    pub fn new(kind: NormKind, c: usize, device: &Device) -> Result<Self> {
        Ok(Norm {
            kind,
            gamma: Var::ones(c, DType::F32, device)?,
            beta: Var::zeros(c, DType::F32, device)?,
            running_mean: Var::zeros(c, DType::F32, device)?,
            running_var: Var::ones(c, DType::F32, device)?,
        })
    }

    /// Trainable parameters (`trainable`) or buffers, named under `prefix`.
    pub fn named(&self, prefix: &str, trainable: bool, out: &mut Vec<(String, Var)>) {
        match (trainable, self.kind) {
            (true, _) => {
                out.push((format!("{prefix}.gamma"), self.gamma.clone()));
                out.push((format!("{prefix}.beta"), self.beta.clone()));
            }
            (false, NormKind::Batch) => {
                out.push((format!("{prefix}.running_mean"), self.running_mean.clone()));
                out.push((format!("{prefix}.running_var"), self.running_var.clone()));
            }
            (false, NormKind::Layer) => {}
        }
    }

    /// PyTorch's names of the tensors [`Norm::named`] lists under `prefix`, for the module
    /// at `torch`: `BatchNorm2d` (batch) or `GroupNorm(1, C)` (layer: statistics over C, H,
    /// W of each sample, a gamma and beta per channel), whose gamma and beta are `weight`
    /// and `bias`.
    pub fn torch_names(&self, prefix: &str, torch: &str, out: &mut Vec<TorchName>) {
        let mut named = Vec::new();
        self.named(prefix, true, &mut named);
        self.named(prefix, false, &mut named);
        for (name, _) in named {
            let field = match &name[prefix.len() + 1..] {
                "gamma" => "weight",
                "beta" => "bias",
                stat => stat,
            };
            out.push(TorchName::new(name.clone(), format!("{torch}.{field}"), Layout::Same));
        }
    }

    /// act(gamma * x_hat + beta + residual): the normalization, its shift, an optional
    /// residual and the activation, fused on the CPU where the statistics are computed
    /// (training, and layer norm always).
    pub fn act(&self, x: &Tensor, mode: Mode, act: Act, residual: Option<&Tensor>) -> Result<Tensor> {
        let group = match (self.kind, mode) {
            (NormKind::Batch, Mode::Train) => Some(Group::Channel),
            (NormKind::Layer, _) => Some(Group::Sample),
            (NormKind::Batch, Mode::Frozen) => None,
        };
        let fast = norm_op::fast(x, self.gamma.as_tensor()) && residual.is_none_or(|r| super::fallback::fast(&[r]));
        match group {
            Some(group) if fast => {
                let gb = Tensor::stack(&[mode.param(&self.gamma), mode.param(&self.beta)], 0)?;
                let (y, stats) = norm_op::norm_act(x, &gb, residual, group, EPS, act)?;
                if group == Group::Channel {
                    let st = stats.get().expect("the forward pass sets the statistics");
                    self.update_running(st, x.elem_count() / self.gamma.elem_count())?;
                }
                Ok(y)
            }
            None if fast => {
                let gb = Tensor::stack(&[mode.param(&self.gamma), mode.param(&self.beta)], 0)?;
                let (mean, var) = (self.running_mean.as_tensor().to_vec1::<f32>()?, self.running_var.as_tensor().to_vec1::<f32>()?);
                norm_op::norm_act_fixed(x, &gb, residual, mean, var, EPS, act)
            }
            _ => {
                let mut z = self.scale(x, mode)?;
                if let Some(r) = residual {
                    z = (z + r)?;
                }
                match act {
                    Act::Leaky(slope) => bias_leaky_relu(&z, &mode.param(&self.beta), slope as f64),
                    Act::Swish => z.broadcast_add(&mode.param(&self.beta))?.silu(),
                }
            }
        }
    }

    /// One step of the running averages from a batch's statistics over m rows.
    fn update_running(&self, st: &norm_op::Stats, m: usize) -> Result<()> {
        let dev = self.gamma.device();
        let c = self.gamma.elem_count();
        let unbiased = m as f64 / (m as f64 - 1.0).max(1.0);
        let blend = |run: &Var, batch: Vec<f32>| -> Result<()> { run.set(&((run.as_tensor() * (1.0 - BN_MOMENTUM))? + (Tensor::from_vec(batch, c, dev)? * BN_MOMENTUM)?)?) };
        blend(&self.running_mean, st.mean.clone())?;
        blend(&self.running_var, st.var.iter().map(|v| (*v as f64 * unbiased) as f32).collect())
    }

    /// gamma * x_hat.
    pub fn scale(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        match self.kind {
            NormKind::Batch => self.batch(x, mode),
            NormKind::Layer if norm_op::fast(x, self.gamma.as_tensor()) => Ok(norm_op::norm_scale(x, &mode.param(&self.gamma), Group::Sample, EPS)?.0),
            NormKind::Layer => {
                let dims = x.dims().to_vec();
                let x2 = x.reshape((dims[0], ()))?;
                let mean = x2.mean_keepdim(1)?;
                let xc = x2.broadcast_sub(&mean)?;
                let var = xc.sqr()?.mean_keepdim(1)?;
                let xhat = xc.broadcast_div(&(var + EPS)?.sqrt()?)?.reshape(dims)?;
                xhat.broadcast_mul(&mode.param(&self.gamma))
            }
        }
    }

    fn batch(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let c = *dims.last().expect("NHWC");
        let x2 = x.reshape(((), c))?;
        let m = x2.dim(0)?;
        match mode {
            Mode::Train if norm_op::fast(x, self.gamma.as_tensor()) => {
                let (y, stats) = norm_op::norm_scale(x, self.gamma.as_tensor(), Group::Channel, EPS)?;
                self.update_running(stats.get().expect("the forward pass sets the statistics"), m)?;
                Ok(y)
            }
            Mode::Train => {
                // Channel sums as a GEMM with a row of ones: fast, and differentiable.
                let ones = Tensor::ones((1, m), DType::F32, x.device())?;
                let mean = (ones.matmul(&x2)? / m as f64)?;
                let xc = x2.broadcast_sub(&mean)?;
                let var = (ones.matmul(&xc.sqr()?)? / m as f64)?;
                let inv = (var.clone() + EPS)?.sqrt()?.recip()?;
                let y = xc.broadcast_mul(&(inv.broadcast_mul(&self.gamma.as_tensor().unsqueeze(0)?))?)?;
                let unbiased = (var.detach() * (m as f64 / (m as f64 - 1.0).max(1.0)))?;
                let blend = |run: &Var, batch: &Tensor| -> Result<()> {
                    run.set(&((run.as_tensor() * (1.0 - BN_MOMENTUM))? + (batch.squeeze(0)? * BN_MOMENTUM)?)?)
                };
                blend(&self.running_mean, &mean.detach())?;
                blend(&self.running_var, &unbiased)?;
                y.reshape(dims)
            }
            Mode::Frozen => {
                let inv = (self.running_var.as_detached_tensor() + EPS)?.sqrt()?.recip()?;
                let scale = (inv * self.gamma.as_detached_tensor())?;
                let shift = (self.running_mean.as_detached_tensor() * &scale)?.neg()?;
                x2.broadcast_mul(&scale.unsqueeze(0)?)?.broadcast_add(&shift.unsqueeze(0)?)?.reshape(dims)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    fn input() -> Result<Var> {
        Var::from_vec(Rng::new(1).uniform_vec(4 * 3 * 5 * 6, -2.0, 3.0), (4, 3, 5, 6), &Device::Cpu)
    }

    #[test]
    fn layer_norm_normalizes_each_sample_and_has_gradients() -> Result<()> {
        let x = input()?;
        let ln = Norm::new(NormKind::Layer, 6, &Device::Cpu)?;
        let y = ln.scale(x.as_tensor(), Mode::Train)?;
        for row in y.reshape((4, ()))?.to_vec2::<f32>()? {
            let n = row.len() as f32;
            let mean = row.iter().sum::<f32>() / n;
            let var = row.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / n;
            assert!(mean.abs() < 1e-5 && (var - 1.0).abs() < 1e-3, "{mean} {var}");
        }
        let w = Tensor::from_vec(Rng::new(2).uniform_vec(360, -1.0, 1.0), (4, 3, 5, 6), &Device::Cpu)?;
        let g = (y * w)?.sum_all()?.backward()?;
        assert!(g.get(&ln.gamma).is_some() && g.get(&x).is_some(), "layer norm must pass gradients (candle's own does not)");
        Ok(())
    }

    #[test]
    fn batch_norm_uses_batch_statistics_in_training_and_running_ones_frozen() -> Result<()> {
        let x = input()?;
        let bn = Norm::new(NormKind::Batch, 6, &Device::Cpu)?;
        let y = bn.scale(x.as_tensor(), Mode::Train)?.reshape(((), 6))?.to_vec2::<f32>()?;
        let mean0 = y.iter().map(|r| r[0]).sum::<f32>() / y.len() as f32;
        assert!(mean0.abs() < 1e-5);
        // one step of momentum 0.1 moved the running mean toward the batch mean (0.5)
        let rm = bn.running_mean.as_tensor().to_vec1::<f32>()?;
        assert!(rm.iter().all(|m| (0.0..0.1).contains(m)), "{rm:?}");
        let frozen = bn.scale(x.as_tensor(), Mode::Frozen)?;
        assert_eq!(frozen.dims(), x.dims());
        Ok(())
    }
}
