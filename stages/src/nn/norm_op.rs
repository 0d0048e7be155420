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

/// (dx, d[gamma; beta], dr) of a fused node, as flat vectors.
type Grads = (Vec<f32>, Vec<f32>, Option<Vec<f32>>);

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

/// Per-channel sums of f(a, b, channel) over rows of `c` values of a and b, in a fixed
/// order of fixed chunks (so the result is the same on every run): f32 within a chunk of
/// ROWS rows (so the loop vectorizes), f64 across chunks.
fn channel_sums(a: &[f32], b: &[f32], c: usize, f: impl Fn(f32, f32, usize) -> f32 + Sync) -> Vec<f64> {
    let parts: Vec<Vec<f32>> = a
        .par_chunks(c * ROWS)
        .zip(b.par_chunks(c * ROWS))
        .map(|(ac, bc)| {
            let mut acc = vec![0f32; c];
            for (ar, br) in ac.chunks_exact(c).zip(bc.chunks_exact(c)) {
                for j in 0..c {
                    acc[j] += f(ar[j], br[j], j);
                }
            }
            acc
        })
        .collect();
    let mut total = vec![0f64; c];
    for p in parts {
        for (t, v) in total.iter_mut().zip(p) {
            *t += v as f64;
        }
    }
    total
}

/// The sum of f over v in 16 f32 lanes (so it vectorizes), added up in f64.
fn lane_sum(v: &[f32], f: impl Fn(f32) -> f32) -> f64 {
    let mut acc = [0f32; 16];
    let mut chunks = v.chunks_exact(16);
    for ch in &mut chunks {
        for (a, &x) in acc.iter_mut().zip(ch) {
            *a += f(x);
        }
    }
    let tail: f64 = chunks.remainder().iter().map(|&x| f(x) as f64).sum();
    acc.iter().map(|&a| a as f64).sum::<f64>() + tail
}

/// How many values one set of statistics covers: all rows (batch norm) or one sample.
fn chunks_len(group: Group, len: usize, c: usize, chunk: usize) -> usize {
    match group {
        Group::Channel => len / c,
        Group::Sample => chunk,
    }
}

fn stats_of(mean: Vec<f64>, var: Vec<f64>, eps: f64) -> Stats {
    Stats { inv: var.iter().map(|v| (1.0 / (v + eps).sqrt()) as f32).collect(), mean: mean.into_iter().map(|m| m as f32).collect(), var: var.into_iter().map(|v| v as f32).collect() }
}

impl NormScale {
    fn stats(&self) -> Result<&Stats> {
        self.stats.get().ok_or_else(|| candle_core::Error::Msg("norm backward before its forward".into()))
    }

    /// Per-channel or per-sample statistics of x (rows of c values, n samples).
    fn statistics(&self, x: &[f32], c: usize, n: usize) -> Stats {
        match self.group {
            Group::Channel => {
                let m = (x.len() / c) as f64;
                let mean: Vec<f64> = channel_sums(x, x, c, |v, _, _| v).into_iter().map(|s| s / m).collect();
                let mean32: Vec<f32> = mean.iter().map(|&m| m as f32).collect();
                let var: Vec<f64> = channel_sums(x, x, c, |v, _, j| (v - mean32[j]) * (v - mean32[j])).into_iter().map(|s| s / m).collect();
                stats_of(mean, var, self.eps)
            }
            Group::Sample => {
                let d = x.len() / n;
                let per: Vec<(f64, f64)> = x
                    .par_chunks(d)
                    .map(|s| {
                        let mean = lane_sum(s, |v| v) / d as f64;
                        let m = mean as f32;
                        let var = lane_sum(s, |v| (v - m) * (v - m)) / d as f64;
                        (mean, var)
                    })
                    .collect();
                stats_of(per.iter().map(|p| p.0).collect(), per.iter().map(|p| p.1).collect(), self.eps)
            }
        }
    }

    /// (x_hat, inv) from candle ops, in the group's layout: rows are the groups, (C, m) or
    /// (N, d).
    fn xhat_graph(&self, x: &Tensor, c: usize) -> Result<(Tensor, Tensor)> {
        let x2 = match self.group {
            Group::Channel => x.reshape(((), c))?.t()?,
            Group::Sample => x.reshape((x.dim(0)?, ()))?,
        };
        let xc = x2.broadcast_sub(&x2.mean_keepdim(1)?)?;
        let inv = (xc.sqr()?.mean_keepdim(1)? + self.eps)?.sqrt()?.recip()?;
        Ok((xc.broadcast_mul(&inv)?, inv))
    }

    /// A tensor in the group's layout back in x's shape.
    fn ungroup(&self, t: Tensor, dims: &[usize]) -> Result<Tensor> {
        match self.group {
            Group::Channel => t.t()?.reshape(dims),
            Group::Sample => t.reshape(dims),
        }
    }

    /// gamma x_hat from candle ops (differentiable).
    fn scale_graph(&self, x: &Tensor, gamma: &Tensor) -> Result<Tensor> {
        let (xhat, _) = self.xhat_graph(x, gamma.dim(0)?)?;
        self.ungroup(xhat, x.dims())?.broadcast_mul(gamma)
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
                let sg = channel_sums(g, g, c, |v, _, _| v);
                let sgx = channel_sums(g, x, c, |v, xv, j| v * xhat(xv, j));
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
        let c = gamma.dim(0)?;
        let (xhat, inv) = self.xhat_graph(x, c)?;
        let gh = g.broadcast_mul(gamma)?;
        let (gh2, g2) = match self.group {
            Group::Channel => (gh.reshape(((), c))?.t()?, g.reshape(((), c))?.t()?),
            Group::Sample => (gh.reshape((x.dim(0)?, ()))?, g.reshape((x.dim(0)?, ()))?),
        };
        let dgamma = self.ungroup((&g2 * &xhat)?, x.dims())?.reshape(((), c))?.sum(0)?;
        let dx = gh2.broadcast_sub(&gh2.mean_keepdim(1)?)?.sub(&xhat.broadcast_mul(&(&gh2 * &xhat)?.mean_keepdim(1)?)?)?.broadcast_mul(&inv)?;
        Ok((self.ungroup(dx, x.dims())?, dgamma))
    }
}

/// The activation after a normalization.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Act {
    /// max(z, slope z): ReLU for slope 0.
    Leaky(f32),
    /// z sigmoid(z) (WINN's Table 5 net).
    Swish,
}

/// act(gamma x_hat + beta [+ r]): a normalization, its shift, an optional residual and the
/// activation as one node. gamma and beta come stacked as one 2 x C tensor.
struct NormAct {
    norm: NormScale,
    act: Act,
    /// Statistics given (batch norm's running averages, frozen), not computed: x_hat is
    /// then an affine map of x alone.
    fixed: bool,
}

/// An activation and its derivative as plain functions, so the loops over elements are
/// compiled once per activation and vectorize (a `match` per element does not).
trait ActFn: Copy + Send + Sync {
    fn f(self, z: f32) -> f32;
    fn d(self, z: f32) -> f32;
}

#[derive(Clone, Copy)]
struct LeakyFn(f32);

impl ActFn for LeakyFn {
    #[inline(always)]
    fn f(self, z: f32) -> f32 {
        if z > 0.0 {
            z
        } else {
            z * self.0
        }
    }
    #[inline(always)]
    fn d(self, z: f32) -> f32 {
        if z > 0.0 {
            1.0
        } else {
            self.0
        }
    }
}

#[derive(Clone, Copy)]
struct SwishFn;

impl ActFn for SwishFn {
    #[inline(always)]
    fn f(self, z: f32) -> f32 {
        z / (1.0 + (-z).exp())
    }
    #[inline(always)]
    fn d(self, z: f32) -> f32 {
        let s = 1.0 / (1.0 + (-z).exp());
        s * (1.0 + z * (1.0 - s))
    }
}

/// Per-chunk vectors (one value per channel) of the statistics in x_hat = (x - mean) inv:
/// per channel for batch norm, the chunk's sample's for layer norm. (x - mean) comes
/// first: folded into x inv - mean inv, an activation far from zero with a small spread
/// would lose its low bits to cancellation.
fn coefficients(group: Group, st: &Stats, k: usize, c: usize) -> (Vec<f32>, Vec<f32>) {
    match group {
        Group::Channel => (st.inv.clone(), st.mean.clone()),
        Group::Sample => (vec![st.inv[k]; c], vec![st.mean[k]; c]),
    }
}

/// What the backward passes read, and how they walk one chunk.
struct Rows<'a, A> {
    x: &'a [f32],
    g: &'a [f32],
    r: Option<&'a [f32]>,
    gamma: &'a [f32],
    beta: &'a [f32],
    c: usize,
    chunk: usize,
    group: Group,
    st: &'a Stats,
    act: A,
}

impl<A: ActFn> Rows<'_, A> {
    /// For each row of chunk k: `each(offset in the chunk, g through the activation, x_hat)`.
    #[inline(always)]
    fn each(&self, k: usize, mut each: impl FnMut(usize, &[f32], &[f32])) {
        let c = self.c;
        let (inv, mean) = coefficients(self.group, self.st, k, c);
        let end = ((k + 1) * self.chunk).min(self.x.len());
        let mut gp = vec![0f32; c];
        let mut xh = vec![0f32; c];
        for at in (k * self.chunk..end).step_by(c) {
            let (xr, gr) = (&self.x[at..at + c], &self.g[at..at + c]);
            match self.r {
                Some(r) => {
                    let rr = &r[at..at + c];
                    for j in 0..c {
                        xh[j] = (xr[j] - mean[j]) * inv[j];
                        gp[j] = gr[j] * self.act.d(xh[j] * self.gamma[j] + self.beta[j] + rr[j]);
                    }
                }
                None => {
                    for j in 0..c {
                        xh[j] = (xr[j] - mean[j]) * inv[j];
                        gp[j] = gr[j] * self.act.d(xh[j] * self.gamma[j] + self.beta[j]);
                    }
                }
            }
            each(at - k * self.chunk, &gp, &xh);
        }
    }
}

impl NormAct {
    /// Elements per parallel chunk: rows of one sample (layer norm), or ROWS rows.
    fn chunk(&self, len: usize, c: usize, n: usize) -> usize {
        match self.norm.group {
            Group::Channel => c * ROWS,
            Group::Sample => len / n.max(1),
        }
    }

    /// The statistics it computed (none when fixed), and the output.
    fn forward(&self, x: &[f32], gb: &[f32], r: Option<&[f32]>, n: usize) -> (Option<Stats>, Vec<f32>) {
        match self.act {
            Act::Leaky(s) => self.forward_with(LeakyFn(s), x, gb, r, n),
            Act::Swish => self.forward_with(SwishFn, x, gb, r, n),
        }
    }

    fn forward_with<A: ActFn>(&self, act: A, x: &[f32], gb: &[f32], r: Option<&[f32]>, n: usize) -> (Option<Stats>, Vec<f32>) {
        let c = gb.len() / 2;
        let (gamma, beta) = gb.split_at(c);
        let computed = (!self.fixed).then(|| self.norm.statistics(x, c, n));
        let st = computed.as_ref().unwrap_or_else(|| self.norm.stats().expect("fixed statistics are set before the forward pass"));
        let chunk = self.chunk(x.len(), c, n);
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(chunk).enumerate().for_each(|(k, yc)| {
            // z = (x - mean) (inv gamma) + beta + r
            let (inv, mean) = coefficients(self.norm.group, st, k, c);
            let a: Vec<f32> = inv.iter().zip(gamma).map(|(i, g)| i * g).collect();
            let xc = &x[k * chunk..k * chunk + yc.len()];
            match r {
                Some(r) => {
                    let rc = &r[k * chunk..k * chunk + yc.len()];
                    for ((yr, xr), rr) in yc.chunks_mut(c).zip(xc.chunks(c)).zip(rc.chunks(c)) {
                        for j in 0..c {
                            yr[j] = act.f((xr[j] - mean[j]) * a[j] + beta[j] + rr[j]);
                        }
                    }
                }
                None => {
                    for (yr, xr) in yc.chunks_mut(c).zip(xc.chunks(c)) {
                        for j in 0..c {
                            yr[j] = act.f((xr[j] - mean[j]) * a[j] + beta[j]);
                        }
                    }
                }
            }
        });
        (computed, y)
    }

    /// (dx, d[gamma; beta], dr) by the closed form.
    fn backward(&self, x: &[f32], gb: &[f32], r: Option<&[f32]>, g: &[f32], n: usize, need_gb: bool) -> Result<Grads> {
        match self.act {
            Act::Leaky(s) => self.backward_with(LeakyFn(s), x, gb, r, g, n, need_gb),
            Act::Swish => self.backward_with(SwishFn, x, gb, r, g, n, need_gb),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn backward_with<A: ActFn>(&self, act: A, x: &[f32], gb: &[f32], r: Option<&[f32]>, g: &[f32], n: usize, need_gb: bool) -> Result<Grads> {
        let st = self.norm.stats()?;
        let c = gb.len() / 2;
        let (gamma, beta) = gb.split_at(c);
        let group = self.norm.group;
        let chunk = self.chunk(x.len(), c, n);
        let chunks = x.len().div_ceil(chunk);
        let rows = Rows { x, g, r, gamma, beta, c, chunk, group, st, act };
        // pass 1: per chunk and channel, sum gpre and sum gpre x_hat (f32 within a chunk,
        // f64 across chunks, in order)
        // (fixed statistics need them only for d[gamma; beta])
        let chunks = if self.fixed && !need_gb { 0 } else { chunks };
        let parts: Vec<(Vec<f32>, Vec<f32>)> = (0..chunks)
            .into_par_iter()
            .map(|k| {
                let (mut sg, mut sgx) = (vec![0f32; c], vec![0f32; c]);
                rows.each(k, |_, gp, xh| {
                    for j in 0..c {
                        sg[j] += gp[j];
                        sgx[j] += gp[j] * xh[j];
                    }
                });
                (sg, sgx)
            })
            .collect();
        let (mut dgamma, mut dbeta) = (vec![0f64; c], vec![0f64; c]);
        for (sg, sgx) in &parts {
            for j in 0..c {
                dbeta[j] += sg[j] as f64;
                dgamma[j] += sgx[j] as f64;
            }
        }
        // pass 2: dx = P gpre + Q + R x_hat per channel, and dr = gpre
        let size = (chunks_len(group, x.len(), c, chunk)) as f64;
        let coef = |k: usize| -> (Vec<f32>, Vec<f32>, Vec<f32>) {
            match group {
                // x_hat does not depend on x through the statistics: dx = gamma inv gpre
                Group::Channel if self.fixed => (gamma.iter().zip(&st.inv).map(|(g, i)| g * i).collect(), vec![0.0; c], vec![0.0; c]),
                Group::Channel => {
                    let kk: Vec<f32> = gamma.iter().zip(&st.inv).map(|(g, i)| g * i).collect();
                    let q = (0..c).map(|j| -kk[j] * (dbeta[j] / size) as f32).collect();
                    let rr = (0..c).map(|j| -kk[j] * (dgamma[j] / size) as f32).collect();
                    (kk, q, rr)
                }
                Group::Sample => {
                    let inv = st.inv[k];
                    let (sg, sgx) = &parts[k];
                    let a: f64 = (0..c).map(|j| (gamma[j] * sg[j]) as f64).sum();
                    let b: f64 = (0..c).map(|j| (gamma[j] * sgx[j]) as f64).sum();
                    (gamma.iter().map(|g| g * inv).collect(), vec![-inv * (a / size) as f32; c], vec![-inv * (b / size) as f32; c])
                }
            }
        };
        let mut dx = vec![0f32; x.len()];
        let mut dr = r.map(|_| vec![0f32; x.len()]);
        let fill = |k: usize, dc: &mut [f32], mut rc: Option<&mut [f32]>| {
            let (pp, q, rr) = coef(k);
            rows.each(k, |off, gp, xh| {
                let d = &mut dc[off..off + c];
                for j in 0..c {
                    d[j] = pp[j] * gp[j] + q[j] + rr[j] * xh[j];
                }
                if let Some(rc) = rc.as_deref_mut() {
                    rc[off..off + c].copy_from_slice(gp);
                }
            });
        };
        match dr.as_mut() {
            Some(dr) => dx.par_chunks_mut(chunk).zip(dr.par_chunks_mut(chunk)).enumerate().for_each(|(k, (dc, rc))| fill(k, dc, Some(rc))),
            None => dx.par_chunks_mut(chunk).enumerate().for_each(|(k, dc)| fill(k, dc, None)),
        }
        let dgb = dgamma.iter().chain(&dbeta).map(|v| *v as f32).collect();
        Ok((dx, dgb, dr))
    }

    /// The backward as nodes a second backward pass can go through: g through the
    /// activation (a candle-differentiable node), then the normalization's backward as one
    /// fused node with its own closed-form derivative ([`NormBack`]).
    fn backward_second_order(&self, x: &Tensor, gb: &Tensor, r: Option<&Tensor>, y: &Tensor, g: &Tensor, want_gb: bool) -> Result<(Tensor, Option<Tensor>, Option<Tensor>)> {
        let (gamma, beta) = (gb.get(0)?, gb.get(1)?);
        let gpre = match self.act {
            Act::Leaky(s) => super::act::leaky_grad(g, y, s)?,
            Act::Swish => {
                let mut z = self.norm.scale_graph(x, &gamma)?.broadcast_add(&beta)?;
                if let Some(r) = r {
                    z = (z + r)?;
                }
                let sg = candle_nn::ops::sigmoid(&z)?;
                (g * (&sg * ((&z * sg.affine(-1.0, 1.0)?)? + 1.0)?)?)?
            }
        };
        let op = NormBack { norm: NormScale { group: self.norm.group, eps: self.norm.eps, stats: self.norm.stats.clone() } };
        let dx = x.contiguous()?.apply_op3(&gamma.contiguous()?, &gpre.contiguous()?, op)?;
        let dgb = if want_gb {
            let c = gamma.dim(0)?;
            let (_, dgamma) = self.norm.backward_graph(x, &gamma, &gpre)?;
            Some(Tensor::stack(&[dgamma, gpre.reshape(((), c))?.sum(0)?], 0)?)
        } else {
            None
        };
        Ok((dx, dgb, r.map(|_| gpre)))
    }

    /// The same backward from candle ops, differentiable in x, gamma, beta, r and g.
    fn backward_graph(&self, x: &Tensor, gb: &Tensor, r: Option<&Tensor>, y: &Tensor, g: &Tensor, want_gb: bool) -> Result<(Tensor, Option<Tensor>, Option<Tensor>)> {
        let (gamma, beta) = (gb.get(0)?, gb.get(1)?);
        let c = gamma.dim(0)?;
        // fixed statistics: x_hat = (x - mean) inv with constant mean and inv
        let fixed = if self.fixed {
            let st = self.norm.stats()?;
            let (mean, inv) = (Tensor::new(st.mean.as_slice(), x.device())?, Tensor::new(st.inv.as_slice(), x.device())?);
            Some((x.broadcast_sub(&mean)?.broadcast_mul(&inv)?, inv))
        } else {
            None
        };
        let gpre = match self.act {
            // the slope only selects: its derivative is zero, so the mask is a constant
            Act::Leaky(s) => g.mul(&(y.detach().gt(0.0)?.to_dtype(DType::F32)? * (1.0 - s as f64))?.affine(1.0, s as f64)?)?,
            Act::Swish => {
                let scaled = match &fixed {
                    Some((xhat, _)) => xhat.broadcast_mul(&gamma)?,
                    None => self.norm.scale_graph(x, &gamma)?,
                };
                let mut z = scaled.broadcast_add(&beta)?;
                if let Some(r) = r {
                    z = (z + r)?;
                }
                let sg = candle_nn::ops::sigmoid(&z)?;
                let d = (&sg * ((&z * sg.affine(-1.0, 1.0)?)? + 1.0)?)?;
                (g * d)?
            }
        };
        let (dx, dgamma) = match &fixed {
            Some((xhat, inv)) => (gpre.broadcast_mul(&(&gamma * inv)?)?, (&gpre * xhat)?.reshape(((), c))?.sum(0)?),
            None => self.norm.backward_graph(x, &gamma, &gpre)?,
        };
        let dgb = if want_gb { Some(Tensor::stack(&[dgamma, gpre.reshape(((), c))?.sum(0)?], 0)?) } else { None };
        Ok((dx, dgb, r.map(|_| gpre)))
    }
}

/// dx = inv P(gpre gamma) of a normalization, P(u) = u - mean(u) - x_hat mean(u x_hat) per
/// group, as a node of its own, so that the WINN penalty's second backward pass goes
/// through one fused kernel per layer rather than some twenty candle ops. Its derivative,
/// for a cotangent v of dx (u = gpre gamma, sums S over the group of size D, x_hat and inv
/// from the forward pass):
///
/// ```text
/// T      = S(v u) - mean(u) S(v) - mean(u x_hat) S(v x_hat)
/// d x    = -inv^2 (T x_hat / D + S(v x_hat) P(u) / D + mean(u x_hat) P(v))
/// d gpre = inv P(v) gamma,    d gamma = sum over the channel of inv P(v) gpre
/// ```
///
/// (P is symmetric, and d x_hat / d x = inv P, which gives every term.)
struct NormBack {
    norm: NormScale,
}

impl NormBack {
    /// (d x, d gamma, d gpre) for the cotangent v.
    fn second(&self, x: &[f32], gamma: &[f32], gpre: &[f32], v: &[f32], n: usize) -> Result<(Vec<f32>, Vec<f32>, Vec<f32>)> {
        let st = self.norm.stats()?;
        let c = gamma.len();
        let group = self.norm.group;
        // elements of one group: a sample (layer norm), or a chunk of rows of every
        // channel at once (batch norm, groups are the channels)
        let chunk = match group {
            Group::Channel => c * ROWS,
            Group::Sample => x.len() / n,
        };
        let chunks = x.len().div_ceil(chunk);
        // pass 1: per chunk and channel, S(u), S(u x_hat), S(v), S(v x_hat), S(v u)
        let parts: Vec<[Vec<f64>; 5]> = (0..chunks)
            .into_par_iter()
            .map(|k| {
                let (inv, mean) = coefficients(group, st, k, c);
                let mut acc: [Vec<f64>; 5] = std::array::from_fn(|_| vec![0f64; c]);
                let end = ((k + 1) * chunk).min(x.len());
                for at in (k * chunk..end).step_by(c) {
                    for j in 0..c {
                        let xh = (x[at + j] - mean[j]) * inv[j];
                        let u = gpre[at + j] * gamma[j];
                        let vv = v[at + j];
                        acc[0][j] += u as f64;
                        acc[1][j] += (u * xh) as f64;
                        acc[2][j] += vv as f64;
                        acc[3][j] += (vv * xh) as f64;
                        acc[4][j] += (vv * u) as f64;
                    }
                }
                acc
            })
            .collect();
        // the group sums: per channel over every chunk, or per sample over its channels
        let sums = |k: usize| -> ([f64; 5], f64) {
            match group {
                Group::Channel => unreachable!("per-channel sums are vectors"),
                Group::Sample => {
                    let mut t = [0f64; 5];
                    for (q, tq) in t.iter_mut().enumerate() {
                        *tq = parts[k][q].iter().sum();
                    }
                    (t, chunk as f64)
                }
            }
        };
        let channel: Option<[Vec<f64>; 5]> = (group == Group::Channel).then(|| {
            let mut t: [Vec<f64>; 5] = std::array::from_fn(|_| vec![0f64; c]);
            for p in &parts {
                for q in 0..5 {
                    for j in 0..c {
                        t[q][j] += p[q][j];
                    }
                }
            }
            t
        });
        let mut dx = vec![0f32; x.len()];
        let mut dg = vec![0f32; x.len()];
        let dgamma_parts: Vec<Vec<f64>> = dx
            .par_chunks_mut(chunk)
            .zip(dg.par_chunks_mut(chunk))
            .enumerate()
            .map(|(k, (dxc, dgc))| {
                let (inv, mean) = coefficients(group, st, k, c);
                // per channel j: (D, S(u), S(u x_hat), S(v), S(v x_hat), S(v u))
                let stat = |j: usize| -> (f32, f32, f32, f32, f32, f32) {
                    let (t, d) = match &channel {
                        Some(t) => ([t[0][j], t[1][j], t[2][j], t[3][j], t[4][j]], (x.len() / c) as f64),
                        None => sums(k),
                    };
                    (d as f32, t[0] as f32, t[1] as f32, t[2] as f32, t[3] as f32, t[4] as f32)
                };
                let per: Vec<_> = (0..c).map(stat).collect();
                let mut dgamma = vec![0f64; c];
                let base = k * chunk;
                for (i, (dxv, dgv)) in dxc.iter_mut().zip(dgc.iter_mut()).enumerate() {
                    let (at, j) = (base + i, i % c);
                    let (d, su, sux, sv, svx, svu) = per[j];
                    let s = inv[j];
                    let xh = (x[at] - mean[j]) * s;
                    let u = gpre[at] * gamma[j];
                    let (a, b) = (su / d, sux / d);
                    let t = svu - a * sv - b * svx;
                    let pu = u - a - xh * b;
                    let pv = v[at] - sv / d - xh * (svx / d);
                    *dxv = -s * s * (t * xh / d + svx * pu / d + b * pv);
                    let w = s * pv;
                    *dgv = w * gamma[j];
                    dgamma[j] += (w * gpre[at]) as f64;
                }
                dgamma
            })
            .collect();
        let mut dgamma = vec![0f64; c];
        for p in dgamma_parts {
            for (t, v) in dgamma.iter_mut().zip(p) {
                *t += v;
            }
        }
        Ok((dx, dgamma.into_iter().map(|v| v as f32).collect(), dg))
    }
}

impl candle_core::CustomOp3 for NormBack {
    fn name(&self) -> &'static str {
        "norm-backward"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout, s3: &CpuStorage, l3: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = slice(s1, l1, "norm-backward")?;
        let gamma = slice(s2, l2, "norm-backward")?;
        let gpre = slice(s3, l3, "norm-backward")?;
        if l1.dims() != l3.dims() || l1.dims().last() != Some(&gamma.len()) {
            candle_core::bail!("norm-backward: x {:?}, gamma {:?}, gradient {:?}", l1.dims(), l2.dims(), l3.dims());
        }
        let (dx, _) = self.norm.backward(x, gamma, gpre, l1.dims()[0])?;
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, gamma: &Tensor, gpre: &Tensor, _dx: &Tensor, v: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        if backprop::create_graph() {
            candle_core::bail!("norm-backward: third-order gradients are not supported");
        }
        let (xs, gs, ps, vs) = (x.contiguous()?, gamma.contiguous()?, gpre.contiguous()?, v.contiguous()?);
        let what = "norm-backward";
        let (ddx, ddgamma, ddgpre) = {
            let (sx, lx) = xs.storage_and_layout();
            let (sg, lg) = gs.storage_and_layout();
            let (sp, lp) = ps.storage_and_layout();
            let (sv, lv) = vs.storage_and_layout();
            self.second(cpu(&sx, lx, what)?, cpu(&sg, lg, what)?, cpu(&sp, lp, what)?, cpu(&sv, lv, what)?, x.dim(0)?)?
        };
        let dev = x.device();
        Ok((
            x.track_op().then(|| Tensor::from_vec(ddx, x.shape(), dev)).transpose()?,
            gamma.track_op().then(|| Tensor::from_vec(ddgamma, gamma.shape(), dev)).transpose()?,
            gpre.track_op().then(|| Tensor::from_vec(ddgpre, gpre.shape(), dev)).transpose()?,
        ))
    }
}

fn cpu<'a>(t: &'a candle_core::Storage, l: &Layout, what: &str) -> Result<&'a [f32]> {
    match t {
        candle_core::Storage::Cpu(s) => slice(s, l, what),
        _ => candle_core::bail!("{what}: expected CPU tensors"),
    }
}

impl NormAct {
    fn name(&self) -> &'static str {
        match self.norm.group {
            Group::Channel => "batch-norm-act",
            Group::Sample => "layer-norm-act",
        }
    }

    fn fwd(&self, x: (&CpuStorage, &Layout), gb: (&CpuStorage, &Layout), r: Option<(&CpuStorage, &Layout)>) -> Result<(CpuStorage, Shape)> {
        let what = self.name();
        let xs = slice(x.0, x.1, what)?;
        let gbs = slice(gb.0, gb.1, what)?;
        let c = gbs.len() / 2;
        let n = x.1.dims().first().copied().unwrap_or(0);
        if gb.1.dims() != [2, c] || x.1.dims().last() != Some(&c) || xs.is_empty() {
            candle_core::bail!("{what}: gamma and beta {:?} for activations {:?}", gb.1.dims(), x.1.dims());
        }
        let rs = match r {
            Some((s, l)) if l.dims() == x.1.dims() => Some(slice(s, l, what)?),
            Some((_, l)) => candle_core::bail!("{what}: residual {:?} for activations {:?}", l.dims(), x.1.dims()),
            None => None,
        };
        let (st, y) = self.forward(xs, gbs, rs, n);
        if let Some(st) = st {
            let _ = self.norm.stats.set(st);
        }
        Ok((CpuStorage::F32(y), x.1.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, gb: &Tensor, r: Option<&Tensor>, y: &Tensor, g: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let want_gb = gb.track_op() && super::wanted::params();
        let (dx, dgb, dr) = if backprop::create_graph() && !self.fixed {
            self.backward_second_order(x, gb, r, y, g, want_gb)?
        } else if backprop::create_graph() {
            self.backward_graph(x, gb, r, y, g, want_gb)?
        } else {
            let what = self.name();
            let (xs, gbs, gs) = (x.contiguous()?, gb.contiguous()?, g.contiguous()?);
            let rs = r.map(|r| r.contiguous()).transpose()?;
            let (sx, lx) = xs.storage_and_layout();
            let (sb, lb) = gbs.storage_and_layout();
            let (sg, lg) = gs.storage_and_layout();
            let rguard = rs.as_ref().map(|r| r.storage_and_layout());
            let rslice = match &rguard {
                Some((s, l)) => Some(cpu(s, l, what)?),
                None => None,
            };
            let (dx, dgb, dr) = self.backward(cpu(&sx, lx, what)?, cpu(&sb, lb, what)?, rslice, cpu(&sg, lg, what)?, x.dim(0)?, want_gb)?;
            let dr = dr.map(|v| Tensor::from_vec(v, x.shape(), x.device())).transpose()?;
            (Tensor::from_vec(dx, x.shape(), x.device())?, want_gb.then(|| Tensor::from_vec(dgb, gb.shape(), x.device())).transpose()?, dr)
        };
        let dr = match r {
            Some(r) if r.track_op() => dr,
            _ => None,
        };
        Ok((x.track_op().then_some(dx), dgb, dr))
    }
}

struct NormAct2(NormAct);
struct NormAct3(NormAct);

impl candle_core::CustomOp2 for NormAct2 {
    fn name(&self) -> &'static str {
        self.0.name()
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        self.0.fwd((s1, l1), (s2, l2), None)
    }

    fn bwd(&self, x: &Tensor, gb: &Tensor, y: &Tensor, g: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (dx, dgb, _) = self.0.bwd(x, gb, None, y, g)?;
        Ok((dx, dgb))
    }
}

impl candle_core::CustomOp3 for NormAct3 {
    fn name(&self) -> &'static str {
        self.0.name()
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout, s3: &CpuStorage, l3: &Layout) -> Result<(CpuStorage, Shape)> {
        self.0.fwd((s1, l1), (s2, l2), Some((s3, l3)))
    }

    fn bwd(&self, x: &Tensor, gb: &Tensor, r: &Tensor, y: &Tensor, g: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        self.0.bwd(x, gb, Some(r), y, g)
    }
}

/// act(gamma x_hat + beta + r) with statistics over `group`; `gb` is gamma and beta stacked
/// (2 x C). Returns the statistics too (for running averages). CPU and f32 only.
pub fn norm_act(x: &Tensor, gb: &Tensor, r: Option<&Tensor>, group: Group, eps: f64, act: Act) -> Result<(Tensor, Arc<OnceLock<Stats>>)> {
    let stats = Arc::new(OnceLock::new());
    let op = NormAct { norm: NormScale { group, eps, stats: stats.clone() }, act, fixed: false };
    Ok((apply_norm_act(op, x, gb, r)?, stats))
}

/// act(gamma (x - mean) / sqrt(var + eps) + beta + r) with given per-channel statistics:
/// batch norm frozen, one pass each way.
pub fn norm_act_fixed(x: &Tensor, gb: &Tensor, r: Option<&Tensor>, mean: Vec<f32>, var: Vec<f32>, eps: f64, act: Act) -> Result<Tensor> {
    let st = stats_of(mean.iter().map(|&m| m as f64).collect(), var.iter().map(|&v| v as f64).collect(), eps);
    let op = NormAct { norm: NormScale { group: Group::Channel, eps, stats: Arc::new(OnceLock::from(st)) }, act, fixed: true };
    apply_norm_act(op, x, gb, r)
}

fn apply_norm_act(op: NormAct, x: &Tensor, gb: &Tensor, r: Option<&Tensor>) -> Result<Tensor> {
    let (x, gb) = (x.contiguous()?, gb.contiguous()?);
    let y = match r {
        None => x.apply_op2_arc(&gb, Arc::new(Box::new(NormAct2(op))))?,
        Some(r) => x.apply_op3_arc(&gb, &r.contiguous()?, Arc::new(Box::new(NormAct3(op))))?,
    };
    Ok(y)
}

/// gamma * x_hat with statistics over `group`, and the statistics (for running averages).
/// CPU and f32 only: callers use candle ops elsewhere.
/// It is [`norm_act`] with beta 0 and the identity (a LeakyReLU of slope 1).
pub fn norm_scale(x: &Tensor, gamma: &Tensor, group: Group, eps: f64) -> Result<(Tensor, Arc<OnceLock<Stats>>)> {
    let gb = Tensor::stack(&[gamma, &gamma.zeros_like()?], 0)?;
    norm_act(x, &gb, None, group, eps, Act::Leaky(1.0))
}

/// Whether [`norm_scale`] runs on these tensors.
pub fn fast(x: &Tensor, gamma: &Tensor) -> bool {
    super::fallback::fast(&[x, gamma])
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

    /// act(gamma x_hat + beta + r) from candle ops.
    fn reference_act(x: &Tensor, gb: &Tensor, r: Option<&Tensor>, group: Group, act: Act) -> Result<Tensor> {
        let mut z = reference(x, &gb.get(0)?, group)?.broadcast_add(&gb.get(1)?)?;
        if let Some(r) = r {
            z = (z + r)?;
        }
        match act {
            Act::Leaky(s) => candle_nn::ops::leaky_relu(&z, s as f64),
            Act::Swish => z.silu(),
        }
    }

    /// y = forward(x) at x0; (y, dx, d gb, d r when given) of sum(y w), the backward kept
    /// differentiable when `second`, and then d/d(x, gb) of sum(dx^2 w) (x only when
    /// `second_x`: piecewise-linear activations have no second derivative in x).
    fn derivatives(forward: &dyn Fn(&Tensor) -> Result<Tensor>, x0: &Tensor, gb: &Var, r: Option<&Var>, w: &Tensor, second: bool, second_x: bool) -> Result<Vec<Tensor>> {
        let x = Var::from_tensor(x0)?;
        let y = forward(x.as_tensor())?;
        let before = backprop::set_create_graph(second);
        let grads = (&y * w)?.sum_all()?.backward();
        backprop::set_create_graph(before);
        let grads = grads?;
        let dx = grads.get(x.as_tensor()).unwrap().clone();
        let mut out = vec![y, dx.clone(), grads.get(gb.as_tensor()).unwrap().clone()];
        if let Some(r) = r {
            out.push(grads.get(r.as_tensor()).unwrap().clone());
        }
        if second {
            let g2 = (dx.sqr()? * w)?.sum_all()?.backward()?;
            if second_x {
                out.push(g2.get(x.as_tensor()).unwrap().clone());
            }
            out.push(g2.get(gb.as_tensor()).unwrap().clone());
        }
        Ok(out)
    }

    const ACTS: [Act; 3] = [Act::Leaky(0.0), Act::Leaky(0.2), Act::Swish];

    /// The fused node against candle ops, first order (fast path) and second order (the
    /// differentiable backward), for both groups, every activation, with and without a
    /// residual, on the shapes above.
    #[test]
    fn fused_activation_and_residual_match_candle_ops_to_second_order() -> Result<()> {
        for group in [Group::Channel, Group::Sample] {
            for act in ACTS {
                for residual in [false, true] {
                    for (i, &shape) in SHAPES.iter().enumerate() {
                        let c = shape[3];
                        let seed = 100 + 10 * i as u64;
                        let gb = Var::from_tensor(&Tensor::stack(&[rand(&[c], seed, 0.5, 1.5), rand(&[c], seed + 1, -0.5, 0.5)], 0)?)?;
                        let rv = Var::from_tensor(&rand(shape, seed + 2, -1.0, 1.0))?;
                        let w = rand(shape, seed + 3, -1.0, 1.0);
                        let x0 = rand(shape, seed + 4, -2.0, 3.0);
                        let what = format!("{group:?} {act:?} residual {residual} {shape:?}");
                        // (y, dx, d gb, d r) first order; then d/d(x, gb) of sum(dx^2 w)
                        let r = residual.then_some(&rv);
                        let run = |fast: bool, second: bool| -> Result<Vec<Tensor>> {
                            let rt = r.map(|r| r.as_tensor());
                            let forward = |x: &Tensor| if fast { Ok(norm_act(x, gb.as_tensor(), rt, group, 1e-5, act)?.0) } else { reference_act(x, gb.as_tensor(), rt, group, act) };
                            derivatives(&forward, &x0, &gb, r, &w, second, true)
                        };
                        for (a, b, name) in run(true, false)?.iter().zip(&run(false, false)?).zip(["y", "dx", "dgb", "dr"]).map(|((a, b), n)| (a, b, n)) {
                            assert!(max_rel(a, b) < 1e-4, "{what}: {name}");
                        }
                        let (f2, s2) = (run(true, true)?, run(false, true)?);
                        for k in f2.len() - 2..f2.len() {
                            assert!(max_rel(&f2[k], &s2[k]) < 2e-3, "{what}: second-order {}", if k == f2.len() - 2 { "x" } else { "gamma, beta" });
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Batch norm frozen (running statistics given): against candle ops, to second order.
    #[test]
    fn fixed_statistics_match_candle_ops_to_second_order() -> Result<()> {
        for act in ACTS {
            for residual in [false, true] {
                for (i, &shape) in SHAPES.iter().enumerate() {
                    let c = shape[3];
                    let seed = 300 + 10 * i as u64;
                    let gb = Var::from_tensor(&Tensor::stack(&[rand(&[c], seed, 0.5, 1.5), rand(&[c], seed + 1, -0.5, 0.5)], 0)?)?;
                    let mean = Rng::new(seed + 2).uniform_vec(c, -1.0, 1.0);
                    let var = Rng::new(seed + 3).uniform_vec(c, 0.2, 3.0);
                    let rv = Var::from_tensor(&rand(shape, seed + 4, -1.0, 1.0))?;
                    let w = rand(shape, seed + 5, -1.0, 1.0);
                    let x0 = rand(shape, seed + 6, -2.0, 3.0);
                    let reference = |x: &Tensor, r: Option<&Tensor>| -> Result<Tensor> {
                        let (m, v) = (Tensor::new(mean.as_slice(), &Device::Cpu)?, Tensor::new(var.as_slice(), &Device::Cpu)?);
                        let xhat = x.broadcast_sub(&m)?.broadcast_div(&(v + 1e-5)?.sqrt()?)?;
                        let mut z = xhat.broadcast_mul(&gb.as_tensor().get(0)?)?.broadcast_add(&gb.as_tensor().get(1)?)?;
                        if let Some(r) = r {
                            z = (z + r)?;
                        }
                        match act {
                            Act::Leaky(s) => candle_nn::ops::leaky_relu(&z, s as f64),
                            Act::Swish => z.silu(),
                        }
                    };
                    let r = residual.then_some(&rv);
                    let run = |fast: bool| -> Result<Vec<Tensor>> {
                        let rt = r.map(|r| r.as_tensor());
                        let forward = |x: &Tensor| if fast { norm_act_fixed(x, gb.as_tensor(), rt, mean.clone(), var.clone(), 1e-5, act) } else { reference(x, rt) };
                        // to second order, then the first-order fast path (no graph kept)
                        let mut out = derivatives(&forward, &x0, &gb, r, &w, true, act == Act::Swish)?;
                        out.extend(derivatives(&forward, &x0, &gb, r, &w, false, false)?);
                        Ok(out)
                    };
                    let (f, sl) = (run(true)?, run(false)?);
                    assert_eq!(f.len(), sl.len());
                    for (k, (a, b)) in f.iter().zip(&sl).enumerate() {
                        assert!(max_rel(a, b) < 2e-3, "{act:?} residual {residual} {shape:?}: output {k} differs by {}", max_rel(a, b));
                    }
                }
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
