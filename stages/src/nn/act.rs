//! Bias + LeakyReLU in one pass over the activations (candle would make four: add,
//! maximum, minimum, affine). The backward is built from differentiable candle ops on a
//! constant slope mask, so second-order gradients flow through it.

use candle_core::{CpuStorage, DType, Layout, Result, Shape, Tensor};
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
        let mask = slope_mask(res, self.slope)?;
        let g = grad.mul(&mask)?;
        let dh = if h.track_op() { Some(g.clone()) } else { None };
        let db = if b.track_op() {
            let c = b.dim(0)?;
            Some(g.reshape(((), c))?.sum(0)?)
        } else {
            None
        };
        Ok((dh, db))
    }
}

/// 1 where the activation is positive, `slope` elsewhere: the derivative of LeakyReLU,
/// read off its output (same sign as its input for slope >= 0). A constant of the graph.
fn slope_mask(y: &Tensor, slope: f32) -> Result<Tensor> {
    let v = y.flatten_all()?.to_vec1::<f32>()?;
    let m: Vec<f32> = v.par_iter().map(|&v| if v > 0.0 { 1.0 } else { slope }).collect();
    Tensor::from_vec(m, y.shape(), y.device())
}

/// leaky_relu(h + b) with b broadcast over the last axis of h.
pub fn bias_leaky_relu(h: &Tensor, b: &Tensor, slope: f64) -> Result<Tensor> {
    if h.device().is_cpu() && h.dtype() == DType::F32 && b.dtype() == DType::F32 {
        h.contiguous()?.apply_op2(&b.contiguous()?, BiasLeaky { slope: slope as f32 })
    } else {
        candle_nn::ops::leaky_relu(&h.broadcast_add(b)?, slope)
    }
}
