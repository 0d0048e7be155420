//! Bias + LeakyReLU in one pass over the activations (candle would make four: add,
//! maximum, minimum, affine). The backward is built from differentiable candle ops on a
//! constant slope mask, so second-order gradients flow through it.

use candle_core::{CpuStorage, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

struct BiasLeaky {
    slope: f32,
}

impl candle_core::CustomOp2 for BiasLeaky {
    fn name(&self) -> &'static str {
        "bias-leaky-relu"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (CpuStorage::F32(h), CpuStorage::F32(b)) = (s1, s2) else { candle_core::bail!("bias-leaky-relu: expected f32") };
        let (Some((h0, h1)), Some((b0, b1))) = (l1.contiguous_offsets(), l2.contiguous_offsets()) else {
            candle_core::bail!("bias-leaky-relu: expected contiguous tensors")
        };
        let (h, b) = (&h[h0..h1], &b[b0..b1]);
        let c = b.len();
        if l1.dims().last() != Some(&c) {
            candle_core::bail!("bias-leaky-relu: bias of {c} for activations {:?}", l1.dims());
        }
        let slope = self.slope;
        let mut out = vec![0f32; h.len()];
        out.par_chunks_mut(c * 64).zip(h.par_chunks(c * 64)).for_each(|(o, h)| {
            for (orow, hrow) in o.chunks_mut(c).zip(h.chunks(c)) {
                for ((o, &h), &b) in orow.iter_mut().zip(hrow).zip(b) {
                    let v = h + b;
                    *o = if v > 0.0 { v } else { v * slope };
                }
            }
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(&self, h: &Tensor, b: &Tensor, res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let g = leaky_grad(grad, res, self.slope)?;
        let dh = if h.track_op() { Some(g.clone()) } else { None };
        let db = if b.track_op() && super::wanted::params() { Some(column_sums(&g)?) } else { None };
        Ok((dh, db))
    }
}

/// g * (1 where y > 0, slope elsewhere): the LeakyReLU backward, read off the output y
/// (same sign as the input for slope >= 0). Linear in g, and y only selects, so its own
/// derivative is itself in g and zero in y: every order of gradient stays on this path.
struct LeakyGrad {
    slope: f32,
}

impl candle_core::CustomOp2 for LeakyGrad {
    fn name(&self) -> &'static str {
        "leaky-relu-grad"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (CpuStorage::F32(g), CpuStorage::F32(y)) = (s1, s2) else { candle_core::bail!("leaky-relu-grad: expected f32") };
        let (Some((g0, g1)), Some((y0, y1))) = (l1.contiguous_offsets(), l2.contiguous_offsets()) else {
            candle_core::bail!("leaky-relu-grad: expected contiguous tensors")
        };
        if g1 - g0 != y1 - y0 {
            candle_core::bail!("leaky-relu-grad: {:?} vs {:?}", l1.dims(), l2.dims());
        }
        let slope = self.slope;
        let out: Vec<f32> = g[g0..g1].par_iter().zip(&y[y0..y1]).map(|(&g, &y)| if y > 0.0 { g } else { g * slope }).collect();
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(&self, g: &Tensor, y: &Tensor, _res: &Tensor, up: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let dg = if g.track_op() { Some(leaky_grad(up, y, self.slope)?) } else { None };
        // y only selects the slope: its derivative is zero, but candle expects a gradient
        // for every tracked operand of a node it walks.
        let dy = if y.track_op() { Some(y.zeros_like()?) } else { None };
        Ok((dg, dy))
    }
}

/// Sums over every axis but the last (a bias gradient), as a GEMM with a row of ones:
/// fast, and differentiable again.
pub(crate) fn column_sums(g: &Tensor) -> Result<Tensor> {
    let c = *g.dims().last().expect("at least one axis");
    let g2 = g.reshape(((), c))?;
    let ones = Tensor::ones((1, g2.dim(0)?), g2.dtype(), g2.device())?;
    ones.matmul(&g2)?.reshape(c)
}

/// y goes in detached: it only selects the slope, so its derivative is zero anyway, and a
/// tracked y would make a second-order backward pass walk the whole forward graph with
/// zero gradients (about a third of a gradient-penalty step on CNN4).
pub(crate) fn leaky_grad(g: &Tensor, y: &Tensor, slope: f32) -> Result<Tensor> {
    g.contiguous()?.apply_op2(&y.detach().contiguous()?, LeakyGrad { slope })
}

/// leaky_relu(h + b) with b broadcast over the last axis of h.
pub fn bias_leaky_relu(h: &Tensor, b: &Tensor, slope: f64) -> Result<Tensor> {
    if super::fallback::fast(&[h, b]) {
        h.contiguous()?.apply_op2(&b.contiguous()?, BiasLeaky { slope: slope as f32 })
    } else {
        candle_nn::ops::leaky_relu(&h.broadcast_add(b)?, slope)
    }
}
