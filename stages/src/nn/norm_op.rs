//! gamma * x_hat of batch norm (training) and layer norm as one graph node each, on the CPU.
//!
//! Built from candle ops, one normalization is about ten nodes: each allocates and fills
//! a tensor the size of the activations, forward and backward, and each node's gradient is
//! accumulated on its own. Here the forward is two passes over x for the statistics and
//! one for the output; the backward is one pass for the two reductions it needs and one for
//! the input gradient, with the statistics kept from the forward.
//!
//! The backward is the closed form (x_hat = (x - mean) inv, gh = g gamma, means over the
//! normalized group):
//!
//! ```text
//! dx     = inv (gh - mean(gh) - x_hat mean(gh x_hat))
//! dgamma = sum over everything but the channel of g x_hat
//! ```
//!
//! When the backward pass must itself be differentiable (the WINN penalty's inner pass,
//! `candle_core::backprop::create_graph`), the same formulas are built from candle ops
//! instead, so a second derivative reaches x, gamma and the incoming gradient.

use candle_core::{backprop, CpuStorage, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
use std::sync::{Arc, OnceLock};

/// What one set of statistics normalizes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Group {
    /// Each channel over all rows N x H x W (batch norm).
    Channel,
    /// Each sample over its H x W x C values (layer norm).
    Sample,
}

/// Statistics of one forward pass: per channel (batch norm) or per sample (layer norm).
#[derive(Debug)]
pub struct Stats {
    pub mean: Vec<f32>,
    /// Biased variance (divided by the group size).
    pub var: Vec<f32>,
    inv: Vec<f32>,
}

struct NormScale {
    group: Group,
    eps: f64,
    stats: Arc<OnceLock<Stats>>,
}

/// Rows per parallel task of the per-channel reductions.
const ROWS: usize = 512;

fn slice<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [f32]> {
    let CpuStorage::F32(v) = s else { candle_core::bail!("{what}: expected f32") };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&v[a..b]),
        None => candle_core::bail!("{what}: expected a contiguous tensor"),
    }
}

/// Per-channel sums of f(row index, value, channel) over rows of `c` values, in a fixed
/// order of fixed chunks (so the result is the same on every run), in f64.
fn channel_sums(x: &[f32], c: usize, f: impl Fn(usize, f32, usize) -> f64 + Sync) -> Vec<f64> {
    let parts: Vec<Vec<f64>> = x
        .par_chunks(c * ROWS)
        .enumerate()
        .map(|(k, chunk)| {
            let mut acc = vec![0f64; c];
            for (r, row) in chunk.chunks(c).enumerate() {
                for (j, (a, &v)) in acc.iter_mut().zip(row).enumerate() {
                    *a += f(k * ROWS + r, v, j);
                }
            }
            acc
        })
        .collect();
    let mut total = vec![0f64; c];
    for p in parts {
        for (t, v) in total.iter_mut().zip(p) {
            *t += v;
        }
    }
    total
}

fn stats_of(mean: Vec<f64>, var: Vec<f64>, eps: f64) -> Stats {
    Stats { inv: var.iter().map(|v| (1.0 / (v + eps).sqrt()) as f32).collect(), mean: mean.into_iter().map(|m| m as f32).collect(), var: var.into_iter().map(|v| v as f32).collect() }
}

impl NormScale {
    fn stats(&self) -> Result<&Stats> {
        self.stats.get().ok_or_else(|| candle_core::Error::Msg("norm backward before its forward".into()))
    }

    /// Statistics, and y = gamma x_hat.
    fn forward(&self, x: &[f32], gamma: &[f32], n: usize) -> (Stats, Vec<f32>) {
        let c = gamma.len();
        let mut y = vec![0f32; x.len()];
        match self.group {
            Group::Channel => {
                let m = (x.len() / c) as f64;
                let mean: Vec<f64> = channel_sums(x, c, |_, v, _| v as f64).into_iter().map(|s| s / m).collect();
                let var: Vec<f64> = channel_sums(x, c, |_, v, j| (v as f64 - mean[j]).powi(2)).into_iter().map(|s| s / m).collect();
                let st = stats_of(mean, var, self.eps);
                let a: Vec<f32> = st.inv.iter().zip(gamma).map(|(i, g)| i * g).collect();
                let b: Vec<f32> = st.mean.iter().zip(&a).map(|(m, a)| -m * a).collect();
                y.par_chunks_mut(c * ROWS).zip(x.par_chunks(c * ROWS)).for_each(|(yc, xc)| {
                    for (yr, xr) in yc.chunks_mut(c).zip(xc.chunks(c)) {
                        for (((o, &v), &a), &b) in yr.iter_mut().zip(xr).zip(&a).zip(&b) {
                            *o = v * a + b;
                        }
                    }
                });
                (st, y)
            }
            Group::Sample => {
                let d = x.len() / n;
                let per: Vec<(f64, f64)> = x
                    .par_chunks(d)
                    .map(|s| {
                        let mean = s.iter().map(|&v| v as f64).sum::<f64>() / d as f64;
                        let var = s.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / d as f64;
                        (mean, var)
                    })
                    .collect();
                let st = stats_of(per.iter().map(|p| p.0).collect(), per.iter().map(|p| p.1).collect(), self.eps);
                y.par_chunks_mut(d).zip(x.par_chunks(d)).enumerate().for_each(|(s, (ys, xs))| {
                    let (m, i) = (st.mean[s], st.inv[s]);
                    for (yr, xr) in ys.chunks_mut(c).zip(xs.chunks(c)) {
                        for ((o, &v), &g) in yr.iter_mut().zip(xr).zip(gamma) {
                            *o = (v - m) * i * g;
                        }
                    }
                });
                (st, y)
            }
        }
    }

    /// (dx, dgamma) by the closed form, from the statistics of the forward pass.
    fn backward(&self, x: &[f32], gamma: &[f32], g: &[f32], n: usize) -> Result<(Vec<f32>, Vec<f32>)> {
        let st = self.stats()?;
        let c = gamma.len();
        let mut dx = vec![0f32; x.len()];
        match self.group {
            Group::Channel => {
                let m = (x.len() / c) as f64;
                let xhat = |v: f32, j: usize| (v - st.mean[j]) * st.inv[j];
                let sg = channel_sums(g, c, |_, v, _| v as f64);
                let sgx = channel_sums(g, c, |r, v, j| (v * xhat(x[r * c + j], j)) as f64);
                // dx = gamma inv (g - sg/m - x_hat sgx/m), per channel
                let k: Vec<f32> = gamma.iter().zip(&st.inv).map(|(g, i)| g * i).collect();
                let mg: Vec<f32> = sg.iter().map(|s| (s / m) as f32).collect();
                let mx: Vec<f32> = sgx.iter().map(|s| (s / m) as f32).collect();
                dx.par_chunks_mut(c * ROWS).zip(x.par_chunks(c * ROWS).zip(g.par_chunks(c * ROWS))).for_each(|(dc, (xc, gc))| {
                    for ((dr, xr), gr) in dc.chunks_mut(c).zip(xc.chunks(c)).zip(gc.chunks(c)) {
                        for j in 0..c {
                            dr[j] = k[j] * (gr[j] - mg[j] - xhat(xr[j], j) * mx[j]);
                        }
                    }
                });
                Ok((dx, sgx.into_iter().map(|v| v as f32).collect()))
            }
            Group::Sample => {
                let d = x.len() / n;
                let parts: Vec<Vec<f64>> = dx
                    .par_chunks_mut(d)
                    .zip(x.par_chunks(d).zip(g.par_chunks(d)))
                    .enumerate()
                    .map(|(s, (ds, (xs, gs)))| {
                        let (mean, inv) = (st.mean[s], st.inv[s]);
                        let mut dgamma = vec![0f64; c];
                        let (mut a, mut b) = (0f64, 0f64);
                        for (xr, gr) in xs.chunks(c).zip(gs.chunks(c)) {
                            for j in 0..c {
                                let xh = (xr[j] - mean) * inv;
                                let gh = gr[j] * gamma[j];
                                a += gh as f64;
                                b += (gh * xh) as f64;
                                dgamma[j] += (gr[j] * xh) as f64;
                            }
                        }
                        let (ma, mb) = ((a / d as f64) as f32, (b / d as f64) as f32);
                        for ((dr, xr), gr) in ds.chunks_mut(c).zip(xs.chunks(c)).zip(gs.chunks(c)) {
                            for j in 0..c {
                                let xh = (xr[j] - mean) * inv;
                                dr[j] = inv * (gr[j] * gamma[j] - ma - xh * mb);
                            }
                        }
                        dgamma
                    })
                    .collect();
                let mut dgamma = vec![0f64; c];
                for p in parts {
                    for (t, v) in dgamma.iter_mut().zip(p) {
                        *t += v;
                    }
                }
                Ok((dx, dgamma.into_iter().map(|v| v as f32).collect()))
            }
        }
    }

    /// The same backward from candle ops, differentiable in x, gamma and g.
    fn backward_graph(&self, x: &Tensor, gamma: &Tensor, g: &Tensor) -> Result<(Tensor, Tensor)> {
        let dims = x.dims().to_vec();
        let c = gamma.dim(0)?;
        // rows are the groups being normalized: (channels, m) or (samples, d)
        let (x2, g2) = match self.group {
            Group::Channel => (x.reshape(((), c))?.t()?, g.reshape(((), c))?.t()?),
            Group::Sample => (x.reshape((dims[0], ()))?, g.reshape((dims[0], ()))?),
        };
        let mean = x2.mean_keepdim(1)?;
        let xc = x2.broadcast_sub(&mean)?;
        let inv = (xc.sqr()?.mean_keepdim(1)? + self.eps)?.sqrt()?.recip()?;
        let xhat = xc.broadcast_mul(&inv)?;
        let back = |t: Tensor| -> Result<Tensor> {
            match self.group {
                Group::Channel => t.t()?.reshape(dims.clone()),
                Group::Sample => t.reshape(dims.clone()),
            }
        };
        let gx = (&g2 * &xhat)?;
        let dgamma = match self.group {
            Group::Channel => gx.sum(1)?,
            Group::Sample => gx.reshape(((), c))?.sum(0)?,
        };
        let gamma_rows = match self.group {
            Group::Channel => gamma.unsqueeze(1)?,
            Group::Sample => gamma.unsqueeze(0)?.broadcast_as((x2.dim(0)? * x2.dim(1)? / c, c))?.reshape(x2.shape())?,
        };
        let gh = g2.broadcast_mul(&gamma_rows)?;
        let dx = gh.broadcast_sub(&gh.mean_keepdim(1)?)?.sub(&xhat.broadcast_mul(&(&gh * &xhat)?.mean_keepdim(1)?)?)?.broadcast_mul(&inv)?;
        Ok((back(dx)?, dgamma))
    }
}

impl candle_core::CustomOp2 for NormScale {
    fn name(&self) -> &'static str {
        match self.group {
            Group::Channel => "batch-norm-scale",
            Group::Sample => "layer-norm-scale",
        }
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = slice(s1, l1, self.name())?;
        let gamma = slice(s2, l2, self.name())?;
        let c = gamma.len();
        let n = l1.dims().first().copied().unwrap_or(0);
        if l1.dims().last() != Some(&c) || x.is_empty() {
            candle_core::bail!("{}: gamma of {c} for activations {:?}", self.name(), l1.dims());
        }
        let (st, y) = self.forward(x, gamma, n);
        let _ = self.stats.set(st);
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, gamma: &Tensor, _y: &Tensor, g: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (dx, dgamma) = if backprop::create_graph() {
            self.backward_graph(x, gamma, g)?
        } else {
            let (xs, gs, ups) = (x.contiguous()?, gamma.contiguous()?, g.contiguous()?);
            let (dx, dgamma) = {
                let (sx, lx) = xs.storage_and_layout();
                let (sg, lg) = gs.storage_and_layout();
                let (su, lu) = ups.storage_and_layout();
                let (candle_core::Storage::Cpu(sx), candle_core::Storage::Cpu(sg), candle_core::Storage::Cpu(su)) = (&*sx, &*sg, &*su) else {
                    candle_core::bail!("{}: expected CPU tensors", candle_core::CustomOp2::name(self))
                };
                let what = candle_core::CustomOp2::name(self);
                self.backward(slice(sx, lx, what)?, slice(sg, lg, what)?, slice(su, lu, what)?, x.dim(0)?)?
            };
            (Tensor::from_vec(dx, x.shape(), x.device())?, Tensor::from_vec(dgamma, gamma.shape(), x.device())?)
        };
        Ok((x.track_op().then_some(dx), gamma.track_op().then_some(dgamma)))
    }
}

/// gamma * x_hat with statistics over `group`, and the statistics (for running averages).
/// CPU and f32 only: callers use candle ops elsewhere.
pub fn norm_scale(x: &Tensor, gamma: &Tensor, group: Group, eps: f64) -> Result<(Tensor, Arc<OnceLock<Stats>>)> {
    let stats = Arc::new(OnceLock::new());
    let op = NormScale { group, eps, stats: stats.clone() };
    let y = x.contiguous()?.apply_op2_arc(&gamma.contiguous()?, Arc::new(Box::new(op)))?;
    Ok((y, stats))
}

/// Whether [`norm_scale`] runs on these tensors.
pub fn fast(x: &Tensor, gamma: &Tensor) -> bool {
    x.device().is_cpu() && x.dtype() == DType::F32 && gamma.dtype() == DType::F32
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;
    use candle_core::{Device, Var};

    /// gamma * x_hat from candle ops: the reference, differentiated by candle's autograd.
    fn reference(x: &Tensor, gamma: &Tensor, group: Group) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let c = gamma.dim(0)?;
        let x2 = match group {
            Group::Channel => x.reshape(((), c))?.t()?,
            Group::Sample => x.reshape((dims[0], ()))?,
        };
        let xc = x2.broadcast_sub(&x2.mean_keepdim(1)?)?;
        let xhat = xc.broadcast_div(&(xc.sqr()?.mean_keepdim(1)? + 1e-5)?.sqrt()?)?;
        let xhat = match group {
            Group::Channel => xhat.t()?.reshape(dims)?,
            Group::Sample => xhat.reshape(dims)?,
        };
        xhat.broadcast_mul(gamma)
    }

    fn rand(shape: &[usize], seed: u64, lo: f32, hi: f32) -> Tensor {
        Tensor::from_vec(Rng::new(seed).uniform_vec(shape.iter().product(), lo as f64, hi as f64), shape, &Device::Cpu).unwrap()
    }

    fn max_rel(a: &Tensor, b: &Tensor) -> f32 {
        let a = a.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let b = b.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let scale = b.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
        a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max) / scale
    }

    /// Odd, non-square, batch-1 and multi-chunk shapes (ROWS rows per task: 2 x 23 x 17
    /// rows cross chunk boundaries).
    const SHAPES: &[&[usize]] = &[&[2, 3, 5, 16], &[1, 4, 4, 3], &[3, 7, 2, 5], &[2, 23, 17, 4], &[1, 1, 3, 2]];

    #[test]
    fn forward_and_gradients_match_candle_ops() -> Result<()> {
        for group in [Group::Channel, Group::Sample] {
            for (i, &shape) in SHAPES.iter().enumerate() {
                let c = shape[3];
                let x = Var::from_tensor(&rand(shape, 10 + i as u64, -2.0, 3.0))?;
                let gamma = Var::from_tensor(&rand(&[c], 20 + i as u64, 0.5, 1.5))?;
                let r = rand(shape, 30 + i as u64, -1.0, 1.0);
                let (fast, stats) = norm_scale(x.as_tensor(), gamma.as_tensor(), group, 1e-5)?;
                let slow = reference(x.as_tensor(), gamma.as_tensor(), group)?;
                assert!(max_rel(&fast, &slow) < 1e-5, "{group:?} {shape:?}: forward");
                let groups = if group == Group::Channel { c } else { shape[0] };
                assert_eq!(stats.get().unwrap().mean.len(), groups);
                let gf = (fast * &r)?.sum_all()?.backward()?;
                let gs = (slow * &r)?.sum_all()?.backward()?;
                for (name, v) in [("x", &x), ("gamma", &gamma)] {
                    assert!(max_rel(gf.get(v).unwrap(), gs.get(v).unwrap()) < 1e-4, "{group:?} {shape:?}: d{name}");
                }
            }
        }
        Ok(())
    }

    /// The graph-building backward (the penalty's inner pass): the same first-order values,
    /// and second derivatives, d/d(x, gamma) of ||d <y, r> / dx||^2, equal to those of the
    /// candle-op reference.
    #[test]
    fn differentiable_backward_gives_the_reference_second_derivatives() -> Result<()> {
        for group in [Group::Channel, Group::Sample] {
            for (i, &shape) in SHAPES.iter().enumerate() {
                let c = shape[3];
                let gamma = Var::from_tensor(&rand(&[c], 40 + i as u64, 0.5, 1.5))?;
                let r = rand(shape, 50 + i as u64, -1.0, 1.0);
                let x0 = rand(shape, 60 + i as u64, -2.0, 3.0);
                let run = |fast: bool| -> Result<(Tensor, Tensor, Tensor)> {
                    let x = Var::from_tensor(&x0)?;
                    let y = if fast { norm_scale(x.as_tensor(), gamma.as_tensor(), group, 1e-5)?.0 } else { reference(x.as_tensor(), gamma.as_tensor(), group)? };
                    let before = backprop::set_create_graph(true);
                    let dx = (y * &r)?.sum_all()?.backward()?.get(x.as_tensor()).unwrap().clone();
                    backprop::set_create_graph(before);
                    // weight the squares so the second derivative is not symmetric by accident
                    let p = (dx.sqr()? * &r)?.sum_all()?;
                    let g = p.backward()?;
                    Ok((dx, g.get(x.as_tensor()).unwrap().clone(), g.get(gamma.as_tensor()).unwrap().clone()))
                };
                let (dx_f, ddx_f, ddg_f) = run(true)?;
                let (dx_s, ddx_s, ddg_s) = run(false)?;
                assert!(max_rel(&dx_f, &dx_s) < 1e-4, "{group:?} {shape:?}: dx");
                assert!(max_rel(&ddx_f, &ddx_s) < 1e-3, "{group:?} {shape:?}: d2/dx");
                assert!(max_rel(&ddg_f, &ddg_s) < 1e-3, "{group:?} {shape:?}: d2/dgamma");
            }
        }
        Ok(())
    }

    /// Central differences of <gamma x_hat, r> in x and gamma (f64 sums, f32 storage).
    #[test]
    fn gradients_match_finite_differences() -> Result<()> {
        for group in [Group::Channel, Group::Sample] {
            let shape = [2usize, 3, 5, 4];
            let x = Var::from_tensor(&rand(&shape, 70, -2.0, 3.0))?;
            let gamma = Var::from_tensor(&rand(&[4], 71, 0.5, 1.5))?;
            let r = rand(&shape, 72, -1.0, 1.0);
            let f = |x: &Tensor, g: &Tensor| -> Result<f64> { Ok((norm_scale(x, g, group, 1e-5)?.0 * &r)?.sum_all()?.to_scalar::<f32>()? as f64) };
            let grads = (norm_scale(x.as_tensor(), gamma.as_tensor(), group, 1e-5)?.0 * &r)?.sum_all()?.backward()?;
            for (var, is_x) in [(&x, true), (&gamma, false)] {
                let analytic = grads.get(var).unwrap().flatten_all()?.to_vec1::<f32>()?;
                let base = var.as_tensor().flatten_all()?.to_vec1::<f32>()?;
                for j in (0..base.len()).step_by(7) {
                    let at = |d: f32| -> Result<f64> {
                        let mut v = base.clone();
                        v[j] += d;
                        let t = Tensor::from_vec(v, var.dims(), &Device::Cpu)?;
                        if is_x { f(&t, gamma.as_tensor()) } else { f(x.as_tensor(), &t) }
                    };
                    let fd = (at(1e-2)? - at(-1e-2)?) / 2e-2;
                    let a = analytic[j] as f64;
                    assert!((fd - a).abs() < 1e-2 * a.abs().max(0.3), "{group:?} {} [{j}]: analytic {a} fd {fd}", if is_x { "dx" } else { "dgamma" });
                }
            }
        }
        Ok(())
    }
}
