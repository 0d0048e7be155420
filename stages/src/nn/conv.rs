//! 2-D convolution on NHWC tensors as im2col + GEMM, with a GEMM-based backward.
//!
//! Three linear maps form a closed family, each one's derivative made of the others, so
//! every order of differentiation stays on the fast path (the WINN gradient penalty
//! differentiates d f / d x again with respect to the weights):
//!
//! ```text
//! conv(x, w)    = im2col(x) . w                 x: N x H x W x C, w: (k*k*C) x O
//! conv_t(g, w)  = col2im(g . w^T)               (input gradient of conv)
//! wgrad(x, g)   = im2col(x)^T . g               (weight gradient of conv)
//! ```
//!
//! with <conv(x, w), g> = <x, conv_t(g, w)> = <w, wgrad(x, g)>. Each runs chunk by chunk
//! over the batch, so patch matrices never take more than one reusable buffer. A backward
//! pass computes the gradient of an operand only when that operand is tracked, so
//! synthesis and attacks (weights detached) pay for input gradients alone. NHWC keeps the
//! GEMM output in the layout the next layer reads, so no transposes run between layers.
//!
//! Off the CPU, or for dtypes other than f32, [`conv2d`] falls back to candle's own ops.

use candle_core::{CpuStorage, Layout, Result, Shape, Tensor};
use super::act::{column_sums, leaky_grad};
use super::direct;
use super::wanted;
use super::gemm_output;
use rayon::prelude::*;
use std::mem::MaybeUninit;

/// A square kernel's size, stride and zero padding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geom {
    pub k: usize,
    pub stride: usize,
    pub pad: usize,
}

impl Geom {
    pub fn out(&self, n: usize) -> usize {
        (n + 2 * self.pad - self.k) / self.stride + 1
    }
}

/// Input dims (N, H, W, C) of a convolution, needed by ops whose result has them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct InDims {
    n: usize,
    h: usize,
    w: usize,
    c: usize,
}

impl InDims {
    fn direct(self) -> direct::Dims {
        direct::Dims { n: self.n, h: self.h, w: self.w, c: self.c }
    }
}

fn f32_slice<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [f32]> {
    let data = match s {
        CpuStorage::F32(v) => v.as_slice(),
        _ => candle_core::bail!("{what}: expected f32"),
    };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => candle_core::bail!("{what}: expected a contiguous tensor"),
    }
}

/// Row-major GEMM through the `gemm` crate into `dst` (m x n, row stride n): dst = a . b,
/// or dst += a . b when `accumulate`. a and b are given by strides, so transposed operands
/// need no copy.
#[allow(clippy::too_many_arguments)]
fn gemm_into(m: usize, n: usize, k: usize, dst: *mut f32, accumulate: bool, a: &[f32], a_rs: isize, a_cs: isize, b: &[f32], b_rs: isize, b_cs: isize) {
    assert!(a.len() >= m * k && b.len() >= k * n, "GEMM operands too short");
    // SAFETY: dst points to m*n writable floats (callers size it), the strides describe
    // ranges inside a and b (checked above for the dense layouts used here), and dst does
    // not alias a or b. With read_dst = false, gemm writes dst without reading it.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            n as isize,
            accumulate,
            a.as_ptr(),
            a_cs,
            a_rs,
            b.as_ptr(),
            b_cs,
            b_rs,
            if accumulate { 1.0 } else { 0.0 },
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::Rayon(0),
        )
    }
}

/// Patch matrices are built for a few images at a time, up to this many floats (16 MB):
/// one buffer is reused chunk after chunk, where a whole batch's patches (up to 600 MB per
/// layer for ResNet-32's 16-channel 32x32 stage at batch 128) cost page faults and DRAM
/// traffic. Smaller chunks (4 MB) made the GEMMs too small: CNN4 lost 10% (pipe bench).
/// Tests use tiny chunks so that their small batches cross chunk boundaries.
const CHUNK_FLOATS: usize = if cfg!(test) { 1 << 12 } else { 1 << 22 };

/// Images per chunk for patch matrices of `per_image` floats.
fn chunk_images(per_image: usize, n: usize) -> usize {
    (CHUNK_FLOATS / per_image.max(1)).clamp(1, n.max(1))
}

/// A reusable buffer for chunks of `len` floats, written in full before each read.
fn scratch(len: usize) -> Box<[MaybeUninit<f32>]> {
    Box::new_uninit_slice(len)
}

/// The first `len` floats of a scratch buffer, after they were all written.
///
/// # Safety
/// Every one of the `len` elements must have been initialized.
unsafe fn filled(buf: &[MaybeUninit<f32>], len: usize) -> &[f32] {
    std::slice::from_raw_parts(buf.as_ptr() as *const f32, len)
}

/// Patches of x (images of `d`) as rows: (N*Ho*Wo) x (k*k*C), column order (ki, kj, c),
/// into `cols`. Every element is written once (a copy or a padding zero).
fn im2col_into(x: &[f32], d: InDims, g: Geom, cols: &mut [MaybeUninit<f32>]) {
    let (ho, wo) = (g.out(d.h), g.out(d.w));
    let kk = g.k * g.k * d.c;
    let img_len = d.h * d.w * d.c;
    cols[..d.n * ho * wo * kk].par_chunks_mut(kk).with_min_len(16).enumerate().for_each(|(r, row)| {
        let (n, p) = (r / (ho * wo), r % (ho * wo));
        let (oh, ow) = (p / wo, p % wo);
        let img = &x[n * img_len..(n + 1) * img_len];
        for (ki, krow) in row.chunks_mut(g.k * d.c).enumerate() {
            let ih = (oh * g.stride + ki) as isize - g.pad as isize;
            for (kj, dst) in krow.chunks_mut(d.c).enumerate() {
                let iw = (ow * g.stride + kj) as isize - g.pad as isize;
                if ih < 0 || ih >= d.h as isize || iw < 0 || iw >= d.w as isize {
                    dst.iter_mut().for_each(|v| {
                        v.write(0.0); // zero padding
                    });
                } else {
                    let src = ((ih as usize) * d.w + iw as usize) * d.c;
                    for (v, s) in dst.iter_mut().zip(&img[src..src + d.c]) {
                        v.write(*s);
                    }
                }
            }
        }
    });
}

/// The adjoint of [`im2col_into`]: scatter-add rows of patches into images `x` (of `d`).
fn col2im_add(cols: &[f32], d: InDims, g: Geom, x: &mut [f32]) {
    let (ho, wo) = (g.out(d.h), g.out(d.w));
    let kk = g.k * g.k * d.c;
    x[..d.n * d.h * d.w * d.c].par_chunks_mut(d.h * d.w * d.c).enumerate().for_each(|(n, img)| {
        let img_cols = &cols[n * ho * wo * kk..(n + 1) * ho * wo * kk];
        for oh in 0..ho {
            for ow in 0..wo {
                let row = &img_cols[(oh * wo + ow) * kk..(oh * wo + ow + 1) * kk];
                for ki in 0..g.k {
                    let ih = (oh * g.stride + ki) as isize - g.pad as isize;
                    if ih < 0 || ih >= d.h as isize {
                        continue;
                    }
                    for kj in 0..g.k {
                        let iw = (ow * g.stride + kj) as isize - g.pad as isize;
                        if iw < 0 || iw >= d.w as isize {
                            continue;
                        }
                        let dst = ((ih as usize) * d.w + iw as usize) * d.c;
                        let src = (ki * g.k + kj) * d.c;
                        for (a, b) in img[dst..dst + d.c].iter_mut().zip(&row[src..src + d.c]) {
                            *a += *b;
                        }
                    }
                }
            }
        }
    });
}

/// Calls `f(first image, images, patch matrix)` for consecutive chunks of the batch, with
/// the chunk's im2col already built.
fn for_each_patch_chunk(x: &[f32], d: InDims, g: Geom, mut f: impl FnMut(usize, usize, &[f32])) {
    let per_image = g.out(d.h) * g.out(d.w) * g.k * g.k * d.c;
    let step = chunk_images(per_image, d.n);
    let img_len = d.h * d.w * d.c;
    let mut cols = scratch(step * per_image);
    for n0 in (0..d.n).step_by(step) {
        let nc = step.min(d.n - n0);
        im2col_into(&x[n0 * img_len..(n0 + nc) * img_len], InDims { n: nc, ..d }, g, &mut cols);
        // SAFETY: im2col_into wrote all nc * per_image elements.
        f(n0, nc, unsafe { filled(&cols, nc * per_image) });
    }
}

/// conv(x, w) = im2col(x) . w, chunk by chunk: N x Ho x Wo x O.
/// Direct kernels for stride 1 where they apply, else im2col + GEMM.
fn conv_forward(x: &[f32], wt: &[f32], d: InDims, o: usize, g: Geom) -> Vec<f32> {
    let direct = if g.stride == 1 { direct::conv(x, d.direct(), wt, o, g.k, g.pad) } else { None };
    direct.unwrap_or_else(|| gemm_forward(x, wt, d, o, g))
}

fn gemm_forward(x: &[f32], wt: &[f32], d: InDims, o: usize, g: Geom) -> Vec<f32> {
    let kk = g.k * g.k * d.c;
    let rows = g.out(d.h) * g.out(d.w);
    gemm_output(d.n * rows * o, |dst| {
        for_each_patch_chunk(x, d, g, |n0, nc, cols| {
            // SAFETY (pointer offset): rows n0*rows.. of the N*rows x o output.
            let dst = unsafe { dst.add(n0 * rows * o) };
            gemm_into(nc * rows, o, kk, dst, false, cols, kk as isize, 1, wt, o as isize, 1);
        });
    })
}

/// conv_t(g, w) = col2im(g . w^T), chunk by chunk: the input gradient, N x H x W x C.
/// Direct kernels for stride 1 where they apply, else im2col + GEMM.
fn conv_input_grad(gr: &[f32], wt: &[f32], d: InDims, o: usize, g: Geom) -> Vec<f32> {
    let direct = if g.stride == 1 { direct::conv_t(gr, d.direct(), wt, o, g.k, g.pad) } else { None };
    direct.unwrap_or_else(|| gemm_input_grad(gr, wt, d, o, g))
}

fn gemm_input_grad(gr: &[f32], wt: &[f32], d: InDims, o: usize, g: Geom) -> Vec<f32> {
    let kk = g.k * g.k * d.c;
    let rows = g.out(d.h) * g.out(d.w);
    let step = chunk_images(rows * kk, d.n);
    let img_len = d.h * d.w * d.c;
    let mut dx = vec![0f32; d.n * img_len];
    let mut dcols = scratch(step * rows * kk);
    for n0 in (0..d.n).step_by(step) {
        let nc = step.min(d.n - n0);
        // dcols = g . w^T: w is kk x o row-major, so w^T has row stride 1, column stride o.
        gemm_into(nc * rows, kk, o, dcols.as_mut_ptr() as *mut f32, false, &gr[n0 * rows * o..(n0 + nc) * rows * o], o as isize, 1, wt, 1, o as isize);
        // SAFETY: the GEMM above wrote all nc * rows * kk elements.
        let cols = unsafe { filled(&dcols, nc * rows * kk) };
        col2im_add(cols, InDims { n: nc, ..d }, g, &mut dx[n0 * img_len..(n0 + nc) * img_len]);
    }
    dx
}

/// wgrad(x, g) = im2col(x)^T . g, accumulated chunk by chunk: (k*k*C) x O.
/// Direct kernels for stride 1 where they apply, else im2col + GEMM.
fn conv_weight_grad(x: &[f32], gr: &[f32], d: InDims, o: usize, g: Geom) -> Vec<f32> {
    let direct = if g.stride == 1 { direct::wgrad(x, d.direct(), gr, o, g.k, g.pad) } else { None };
    direct.unwrap_or_else(|| gemm_weight_grad(x, gr, d, o, g))
}

fn gemm_weight_grad(x: &[f32], gr: &[f32], d: InDims, o: usize, g: Geom) -> Vec<f32> {
    let kk = g.k * g.k * d.c;
    let rows = g.out(d.h) * g.out(d.w);
    gemm_output(kk * o, |dw| {
        for_each_patch_chunk(x, d, g, |n0, nc, cols| {
            // dw (+)= cols^T . g: cols is rows x kk row-major, so cols^T has row stride 1,
            // column stride kk. The first chunk writes, the others accumulate.
            gemm_into(kk, o, nc * rows, dw, n0 > 0, cols, 1, kk as isize, &gr[n0 * rows * o..(n0 + nc) * rows * o], o as isize, 1);
        });
    })
}

fn dims4(l: &Layout) -> Result<(usize, usize, usize, usize)> {
    l.shape().dims4()
}

fn dims2(l: &Layout) -> Result<(usize, usize)> {
    l.shape().dims2()
}

/// conv(x, w).
struct Conv {
    g: Geom,
}

impl candle_core::CustomOp2 for Conv {
    fn name(&self) -> &'static str {
        "conv2d-nhwc"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (n, h, w, c) = dims4(l1)?;
        let (kk, o) = dims2(l2)?;
        if kk != self.g.k * self.g.k * c {
            candle_core::bail!("conv2d-nhwc: weight rows {kk} != k*k*C = {}", self.g.k * self.g.k * c);
        }
        let d = InDims { n, h, w, c };
        let x = f32_slice(s1, l1, "conv2d-nhwc input")?;
        let wt = f32_slice(s2, l2, "conv2d-nhwc weight")?;
        let out = conv_forward(x, wt, d, o, self.g);
        Ok((CpuStorage::F32(out), Shape::from((n, self.g.out(h), self.g.out(w), o))))
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let dx = if x.track_op() { Some(conv_t(&grad, w, self.g, x.dims())?) } else { None };
        let dw = if w.track_op() && wanted::params() { Some(wgrad(x, &grad, self.g)?) } else { None };
        Ok((dx, dw))
    }
}

/// conv_t(g, w): the input gradient of conv, an image of `in_dims`.
struct ConvT {
    g: Geom,
    d: InDims,
}

impl candle_core::CustomOp2 for ConvT {
    fn name(&self) -> &'static str {
        "conv2d-nhwc-input-grad"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (n, ho, wo, o) = dims4(l1)?;
        let (kk, o2) = dims2(l2)?;
        let d = self.d;
        if o != o2 || n != d.n || ho != self.g.out(d.h) || wo != self.g.out(d.w) || kk != self.g.k * self.g.k * d.c {
            candle_core::bail!("conv2d-nhwc-input-grad: gradient {:?} and weight {:?} do not fit input {:?}", l1.dims(), l2.dims(), d);
        }
        let gr = f32_slice(s1, l1, "input-grad gradient")?;
        let wt = f32_slice(s2, l2, "input-grad weight")?;
        let dx = conv_input_grad(gr, wt, d, o, self.g);
        Ok((CpuStorage::F32(dx), Shape::from((d.n, d.h, d.w, d.c))))
    }

    fn bwd(&self, g: &Tensor, w: &Tensor, _res: &Tensor, up: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let up = up.contiguous()?;
        let dg = if g.track_op() { Some(conv2d_fast(&up, w, self.g)?) } else { None };
        let dw = if w.track_op() { Some(wgrad(&up, g, self.g)?) } else { None };
        Ok((dg, dw))
    }
}

/// wgrad(x, g): the weight gradient of conv, (k*k*C) x O.
struct WGrad {
    g: Geom,
}

impl candle_core::CustomOp2 for WGrad {
    fn name(&self) -> &'static str {
        "conv2d-nhwc-weight-grad"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (n, h, w, c) = dims4(l1)?;
        let (n2, ho, wo, o) = dims4(l2)?;
        if n != n2 || ho != self.g.out(h) || wo != self.g.out(w) {
            candle_core::bail!("conv2d-nhwc-weight-grad: input {:?} and gradient {:?} do not fit", l1.dims(), l2.dims());
        }
        let kk = self.g.k * self.g.k * c;
        let x = f32_slice(s1, l1, "weight-grad input")?;
        let gr = f32_slice(s2, l2, "weight-grad gradient")?;
        let dw = conv_weight_grad(x, gr, InDims { n, h, w, c }, o, self.g);
        Ok((CpuStorage::F32(dw), Shape::from((kk, o))))
    }

    fn bwd(&self, x: &Tensor, g: &Tensor, _res: &Tensor, up: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let up = up.contiguous()?;
        let dx = if x.track_op() { Some(conv_t(g, &up, self.g, x.dims())?) } else { None };
        let dg = if g.track_op() { Some(conv2d_fast(x, &up, self.g)?) } else { None };
        Ok((dx, dg))
    }
}

fn in_dims(dims: &[usize]) -> Result<InDims> {
    match dims {
        &[n, h, w, c] => Ok(InDims { n, h, w, c }),
        _ => candle_core::bail!("expected N x H x W x C, got {dims:?}"),
    }
}

fn conv_t(g: &Tensor, w: &Tensor, geom: Geom, x_dims: &[usize]) -> Result<Tensor> {
    g.contiguous()?.apply_op2(&w.contiguous()?, ConvT { g: geom, d: in_dims(x_dims)? })
}

fn wgrad(x: &Tensor, g: &Tensor, geom: Geom) -> Result<Tensor> {
    x.contiguous()?.apply_op2(&g.contiguous()?, WGrad { g: geom })
}

fn conv2d_fast(x: &Tensor, w: &Tensor, g: Geom) -> Result<Tensor> {
    x.contiguous()?.apply_op2(&w.contiguous()?, Conv { g })
}

/// leaky_relu(conv(x, w) + b) as one node of the graph: one pass for bias and activation
/// on the GEMM output, and one gradient accumulation per layer instead of two.
struct ConvBiasLeaky {
    g: Geom,
    slope: f32,
}

impl candle_core::CustomOp3 for ConvBiasLeaky {
    fn name(&self) -> &'static str {
        "conv2d-nhwc-bias-leaky-relu"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout, s3: &CpuStorage, l3: &Layout) -> Result<(CpuStorage, Shape)> {
        let (n, h, w, c) = dims4(l1)?;
        let (kk, o) = dims2(l2)?;
        if kk != self.g.k * self.g.k * c || l3.dims() != [o] {
            candle_core::bail!("conv2d-nhwc-bias-leaky-relu: input {:?}, weight {:?}, bias {:?} do not fit", l1.dims(), l2.dims(), l3.dims());
        }
        let x = f32_slice(s1, l1, "conv input")?;
        let wt = f32_slice(s2, l2, "conv weight")?;
        let b = f32_slice(s3, l3, "conv bias")?;
        let mut out = conv_forward(x, wt, InDims { n, h, w, c }, o, self.g);
        let slope = self.slope;
        out.par_chunks_mut(o * 64).for_each(|chunk| {
            for row in chunk.chunks_mut(o) {
                for (v, &b) in row.iter_mut().zip(b) {
                    let z = *v + b;
                    *v = if z > 0.0 { z } else { z * slope };
                }
            }
        });
        Ok((CpuStorage::F32(out), Shape::from((n, self.g.out(h), self.g.out(w), o))))
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, b: &Tensor, y: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        // slope 1 is the identity: conv + bias alone (conv2d_bias)
        let gpre = if self.slope == 1.0 { grad.clone() } else { leaky_grad(grad, y, self.slope)? };
        let dx = if x.track_op() { Some(conv_t(&gpre, w, self.g, x.dims())?) } else { None };
        let dw = if w.track_op() && wanted::params() { Some(wgrad(x, &gpre, self.g)?) } else { None };
        let db = if b.track_op() && wanted::params() { Some(column_sums(&gpre)?) } else { None };
        Ok((dx, dw, db))
    }
}

/// leaky_relu(conv(x, w) + b, slope): the layer of CNN4.
pub fn conv2d_bias_leaky(x: &Tensor, w: &Tensor, b: &Tensor, g: Geom, slope: f64) -> Result<Tensor> {
    if super::fallback::fast(&[x, w, b]) {
        let op = ConvBiasLeaky { g, slope: slope as f32 };
        x.contiguous()?.apply_op3(&w.contiguous()?, &b.contiguous()?, op)
    } else {
        candle_nn::ops::leaky_relu(&conv2d_reference(x, w, g)?.broadcast_add(b)?, slope)
    }
}

/// conv(x, w) + b as one node (the Table 5 net's layers, whose activation follows a norm).
pub fn conv2d_bias(x: &Tensor, w: &Tensor, b: &Tensor, g: Geom) -> Result<Tensor> {
    if super::fallback::fast(&[x, w, b]) {
        conv2d_bias_leaky(x, w, b, g, 1.0)
    } else {
        conv2d_reference(x, w, g)?.broadcast_add(b)
    }
}

/// Convolution of x (N x H x W x C) with w ((k*k*C) x O, rows ordered (ki, kj, c)), no bias.
pub fn conv2d(x: &Tensor, w: &Tensor, g: Geom) -> Result<Tensor> {
    if super::fallback::fast(&[x, w]) {
        conv2d_fast(x, w, g)
    } else {
        conv2d_reference(x, w, g)
    }
}

/// The same convolution with candle's own (NCHW) ops: the reference of the tests and the
/// path on devices without the fast kernels.
///
/// candle 0.11's conv2d input gradient derives the output padding of its transposed
/// convolution from the height alone, so on a non-square input with stride 2 it is wrong
/// (a shape error, DESIGN.md section 4). A non-square input is therefore zero-padded at the
/// bottom or right to a square, and the output cut back: the extra zeros lie past every
/// window of the original output (the same zeros its own padding supplies), so the values
/// are unchanged, and the gradient flows back through the cut and the pad exactly.
pub fn conv2d_reference(x: &Tensor, w: &Tensor, g: Geom) -> Result<Tensor> {
    let (_, h, wd, c) = x.dims4()?;
    let (_, o) = w.dims2()?;
    let side = h.max(wd);
    let square = if h == wd { x.clone() } else { x.pad_with_zeros(1, 0, side - h)?.pad_with_zeros(2, 0, side - wd)? };
    let w_nchw = w.reshape((g.k, g.k, c, o))?.permute((3, 2, 0, 1))?.contiguous()?;
    let y = square.permute((0, 3, 1, 2))?.contiguous()?.conv2d(&w_nchw, g.pad, g.stride, 1, 1)?.permute((0, 2, 3, 1))?;
    let y = if h == wd { y } else { y.narrow(1, 0, g.out(h))?.narrow(2, 0, g.out(wd))? };
    y.contiguous()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::act::bias_leaky_relu;
    use crate::rng::Rng;
    use candle_core::{Device, Var};

    fn rand(shape: &[usize], seed: u64) -> Tensor {
        let n = shape.iter().product();
        Tensor::from_vec(Rng::new(seed).uniform_vec(n, -1.0, 1.0), shape, &Device::Cpu).unwrap()
    }

    fn max_rel(a: &Tensor, b: &Tensor) -> f32 {
        let a = a.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let b = b.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(a.len(), b.len());
        let scale = b.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
        a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max) / scale
    }

    /// (n, h, w, c, o, geometry): stride 1 and 2, padding, batch 1, odd and non-square
    /// sizes, one chunk of several images and batches spread over several chunks.
    const CASES: &[(usize, usize, usize, usize, usize, Geom)] = &[
        (2, 28, 28, 1, 8, Geom { k: 5, stride: 2, pad: 2 }),
        (1, 7, 7, 3, 5, Geom { k: 5, stride: 2, pad: 2 }),
        (3, 8, 8, 4, 6, Geom { k: 3, stride: 1, pad: 1 }),
        (2, 9, 9, 2, 3, Geom { k: 3, stride: 2, pad: 1 }),
        (1, 5, 5, 2, 2, Geom { k: 3, stride: 1, pad: 0 }),
        (2, 7, 10, 3, 4, Geom { k: 5, stride: 2, pad: 2 }),
        (1, 6, 9, 2, 3, Geom { k: 3, stride: 1, pad: 1 }),
        (5, 6, 6, 2, 3, Geom { k: 3, stride: 1, pad: 1 }),
        (9, 12, 12, 3, 4, Geom { k: 3, stride: 2, pad: 1 }),
        // the direct kernels (channels in multiples of 16; the stem's 3 inputs)
        (2, 7, 10, 16, 16, Geom { k: 3, stride: 1, pad: 1 }),
        (1, 5, 5, 16, 32, Geom { k: 3, stride: 1, pad: 1 }),
        (3, 4, 3, 32, 64, Geom { k: 3, stride: 1, pad: 1 }),
        (1, 9, 6, 3, 16, Geom { k: 3, stride: 1, pad: 1 }),
        (2, 6, 7, 16, 48, Geom { k: 5, stride: 1, pad: 2 }),
        (1, 6, 8, 16, 16, Geom { k: 3, stride: 1, pad: 0 }),
    ];

    /// The direct stride-1 kernels against im2col + GEMM, on every shape above they take
    /// (and a wide row that crosses several register tiles), forward and both gradients.
    #[test]
    fn direct_kernels_match_im2col_gemm() {
        if !direct::available() {
            eprintln!("no AVX-512 here: only the im2col path runs");
            return;
        }
        let wide = [(2usize, 3usize, 37usize, 16usize, 32usize, Geom { k: 3, stride: 1, pad: 1 }), (1, 2, 30, 64, 16, Geom { k: 3, stride: 1, pad: 1 })];
        let mut checked = 0;
        for (i, &(n, h, w, c, o, g)) in CASES.iter().chain(&wide).enumerate().filter(|(_, c)| c.5.stride == 1) {
            let d = InDims { n, h, w, c };
            let x = Rng::new(90 + i as u64).uniform_vec(n * h * w * c, -1.0, 1.0);
            let wt = Rng::new(91 + i as u64).uniform_vec(g.k * g.k * c * o, -1.0, 1.0);
            let gr = Rng::new(92 + i as u64).uniform_vec(n * g.out(h) * g.out(w) * o, -1.0, 1.0);
            let close = |a: &[f32], b: &[f32], what: &str| {
                assert_eq!(a.len(), b.len());
                let scale = b.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
                let err = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max) / scale;
                assert!(err < 1e-5, "case {i} {what}: {err}");
            };
            if let Some(y) = direct::conv(&x, d.direct(), &wt, o, g.k, g.pad) {
                close(&y, &gemm_forward(&x, &wt, d, o, g), "forward");
                checked += 1;
            }
            if let Some(dx) = direct::conv_t(&gr, d.direct(), &wt, o, g.k, g.pad) {
                close(&dx, &gemm_input_grad(&gr, &wt, d, o, g), "input gradient");
                checked += 1;
            }
            if let Some(dw) = direct::wgrad(&x, d.direct(), &gr, o, g.k, g.pad) {
                close(&dw, &gemm_weight_grad(&x, &gr, d, o, g), "weight gradient");
                checked += 1;
            }
        }
        assert!(checked >= 20, "the direct kernels ran on only {checked} of the cases");
    }

    #[test]
    fn forward_and_gradients_match_candle_ops() -> Result<()> {
        for (i, &(n, h, w, c, o, g)) in CASES.iter().enumerate() {
            let x = Var::from_tensor(&rand(&[n, h, w, c], 10 + i as u64))?;
            let wt = Var::from_tensor(&rand(&[g.k * g.k * c, o], 20 + i as u64))?;
            let fast = conv2d(x.as_tensor(), wt.as_tensor(), g)?;
            let slow = conv2d_reference(x.as_tensor(), wt.as_tensor(), g)?;
            assert_eq!(fast.dims(), &[n, g.out(h), g.out(w), o]);
            assert!(max_rel(&fast, &slow) < 1e-5, "case {i}: forward");
            let r = rand(fast.dims(), 30 + i as u64);
            let gf = (fast * &r)?.sum_all()?.backward()?;
            // candle's own input gradient is wrong on non-square inputs with stride 2
            // (DESIGN §4); the reference pads those to a square, so it holds for every case
            let gs = (slow * &r)?.sum_all()?.backward()?;
            assert!(max_rel(gf.get(&x).unwrap(), gs.get(&x).unwrap()) < 1e-5, "case {i}: dx");
            assert!(max_rel(gf.get(&wt).unwrap(), gs.get(&wt).unwrap()) < 1e-5, "case {i}: dw");
            // the adjoint identities hold whatever the shape:
            // <conv(x, w), r> = <x, conv_t(r, w)> = <w, wgrad(x, r)>
            let lhs = (conv2d(x.as_tensor(), wt.as_tensor(), g)? * &r)?.sum_all()?.to_scalar::<f32>()?;
            let via_x = (x.as_tensor() * gf.get(&x).unwrap())?.sum_all()?.to_scalar::<f32>()?;
            let via_w = (wt.as_tensor() * gf.get(&wt).unwrap())?.sum_all()?.to_scalar::<f32>()?;
            assert!((lhs - via_x).abs() < 1e-3 * lhs.abs().max(1.0), "case {i}: {lhs} vs {via_x}");
            assert!((lhs - via_w).abs() < 1e-3 * lhs.abs().max(1.0), "case {i}: {lhs} vs {via_w}");
        }
        Ok(())
    }

    #[test]
    fn gradients_match_finite_differences() -> Result<()> {
        for (i, &(n, h, w, c, o, g)) in CASES.iter().enumerate() {
            let x = Var::from_tensor(&rand(&[n, h, w, c], 40 + i as u64))?;
            let wt = Var::from_tensor(&rand(&[g.k * g.k * c, o], 50 + i as u64))?;
            let r = rand(&[n, g.out(h), g.out(w), o], 60 + i as u64);
            // smooth and nonlinear in both operands: sum(conv(x, w)^2 * r)
            let f = |x: &Tensor, wt: &Tensor| -> Result<f64> { Ok((conv2d(x, wt, g)?.sqr()? * &r)?.sum_all()?.to_scalar::<f32>()? as f64) };
            let grads = (conv2d(x.as_tensor(), wt.as_tensor(), g)?.sqr()? * &r)?.sum_all()?.backward()?;
            for (var, other, is_x) in [(&x, &wt, true), (&wt, &x, false)] {
                let analytic = grads.get(var).unwrap().flatten_all()?.to_vec1::<f32>()?;
                let base = var.as_tensor().flatten_all()?.to_vec1::<f32>()?;
                // a handful of coordinates, spread over the tensor
                for j in (0..base.len()).step_by((base.len() / 7).max(1)) {
                    let eps = 1e-2f32;
                    let shifted = |d: f32| -> Result<f64> {
                        let mut v = base.clone();
                        v[j] += d;
                        let t = Tensor::from_vec(v, var.dims(), &Device::Cpu)?;
                        if is_x { f(&t, other.as_tensor()) } else { f(other.as_tensor(), &t) }
                    };
                    let fd = (shifted(eps)? - shifted(-eps)?) / (2.0 * eps as f64);
                    let a = analytic[j] as f64;
                    assert!((fd - a).abs() < 2e-2 * a.abs().max(1.0), "case {i} {} [{j}]: analytic {a} fd {fd}", if is_x { "dx" } else { "dw" });
                }
            }
        }
        Ok(())
    }

    #[test]
    fn bias_leaky_relu_matches_candle_ops() -> Result<()> {
        let h = Var::from_tensor(&rand(&[3, 4, 5, 6], 70))?;
        let b = Var::from_tensor(&rand(&[6], 71))?;
        let r = rand(&[3, 4, 5, 6], 72);
        let fast = bias_leaky_relu(h.as_tensor(), b.as_tensor(), 0.2)?;
        let slow = candle_nn::ops::leaky_relu(&h.as_tensor().broadcast_add(b.as_tensor())?, 0.2)?;
        assert!(max_rel(&fast, &slow) < 1e-6);
        let gf = (fast * &r)?.sum_all()?.backward()?;
        let gs = (slow * &r)?.sum_all()?.backward()?;
        assert!(max_rel(gf.get(&h).unwrap(), gs.get(&h).unwrap()) < 1e-6);
        assert!(max_rel(gf.get(&b).unwrap(), gs.get(&b).unwrap()) < 1e-5);
        Ok(())
    }

    #[test]
    fn fused_layer_matches_its_parts_and_candle_ops() -> Result<()> {
        for (i, &(n, h, w, c, o, g)) in CASES.iter().enumerate() {
            let x = Var::from_tensor(&rand(&[n, h, w, c], 80 + i as u64))?;
            let wt = Var::from_tensor(&rand(&[g.k * g.k * c, o], 81 + i as u64))?;
            let b = Var::from_tensor(&rand(&[o], 82 + i as u64))?;
            let fused = conv2d_bias_leaky(x.as_tensor(), wt.as_tensor(), b.as_tensor(), g, 0.2)?;
            let parts = candle_nn::ops::leaky_relu(&conv2d_reference(x.as_tensor(), wt.as_tensor(), g)?.broadcast_add(b.as_tensor())?, 0.2)?;
            assert!(max_rel(&fused, &parts) < 1e-5, "case {i}: forward");
            let r = rand(fused.dims(), 83 + i as u64);
            let gf = (fused * &r)?.sum_all()?.backward()?;
            let gp = (bias_leaky_relu(&conv2d(x.as_tensor(), wt.as_tensor(), g)?, b.as_tensor(), 0.2)? * &r)?.sum_all()?.backward()?;
            for (name, v) in [("x", &x), ("w", &wt), ("b", &b)] {
                assert!(max_rel(gf.get(v).unwrap(), gp.get(v).unwrap()) < 1e-5, "case {i}: d{name}");
            }
        }
        Ok(())
    }

    #[test]
    fn frozen_weights_get_no_gradient_and_the_same_input_gradient() -> Result<()> {
        let g = Geom { k: 5, stride: 2, pad: 2 };
        let x = Var::from_tensor(&rand(&[2, 12, 12, 3], 1))?;
        let wt = Var::from_tensor(&rand(&[75, 4], 2))?;
        let r = rand(&[2, 6, 6, 4], 3);
        let full = (conv2d(x.as_tensor(), wt.as_tensor(), g)? * &r)?.sum_all()?.backward()?;
        let frozen = (conv2d(x.as_tensor(), &wt.as_detached_tensor(), g)? * &r)?.sum_all()?.backward()?;
        assert!(frozen.get(&wt).is_none());
        assert_eq!(full.get(&x).unwrap().flatten_all()?.to_vec1::<f32>()?, frozen.get(&x).unwrap().flatten_all()?.to_vec1::<f32>()?);
        Ok(())
    }

    /// d/dW ||d f / d x||^2 through the fast path (the WINN gradient penalty), against the
    /// same quantity through candle's ops and against finite differences.
    #[test]
    fn second_order_gradient_penalty() -> Result<()> {
        candle_core::backprop::set_create_graph(true);
        let g1 = Geom { k: 5, stride: 2, pad: 2 };
        let g2 = Geom { k: 3, stride: 1, pad: 1 };
        let x0 = rand(&[2, 10, 10, 2], 7);
        let w1 = Var::from_tensor(&(rand(&[50, 3], 8) * 0.5)?)?;
        let b1 = Var::from_tensor(&(rand(&[3], 9) * 0.1)?)?;
        let w2 = Var::from_tensor(&(rand(&[27, 2], 10) * 0.5)?)?;
        let r = rand(&[2, 5, 5, 2], 11);
        // penalty(W) = || d <net(x), r> / dx ||^2
        let penalty = |w1: &Tensor, w2: &Tensor, fast: bool| -> Result<Tensor> {
            let conv = if fast { conv2d } else { conv2d_reference };
            let x = Var::from_tensor(&x0)?;
            let h = if fast {
                conv2d_bias_leaky(x.as_tensor(), w1, b1.as_tensor(), g1, 0.2)?
            } else {
                candle_nn::ops::leaky_relu(&conv2d_reference(x.as_tensor(), w1, g1)?.broadcast_add(b1.as_tensor())?, 0.2)?
            };
            let f = (conv(&h, w2, g2)? * &r)?.sum_all()?;
            f.backward()?.get(x.as_tensor()).unwrap().sqr()?.sum_all()
        };
        let p_fast = penalty(w1.as_tensor(), w2.as_tensor(), true)?;
        let p_ref = penalty(w1.as_tensor(), w2.as_tensor(), false)?;
        assert!((p_fast.to_scalar::<f32>()? - p_ref.to_scalar::<f32>()?).abs() < 1e-4 * p_ref.to_scalar::<f32>()?.abs());
        let gf = p_fast.backward()?;
        let gr = p_ref.backward()?;
        for (name, w) in [("w1", &w1), ("w2", &w2)] {
            let a = gf.get(w).unwrap_or_else(|| panic!("no second-order gradient for {name}"));
            assert!(max_rel(a, gr.get(w).unwrap()) < 1e-3, "{name}: fast vs candle ops");
            let analytic = a.flatten_all()?.to_vec1::<f32>()?;
            let base = w.as_tensor().flatten_all()?.to_vec1::<f32>()?;
            for j in (0..base.len()).step_by((base.len() / 6).max(1)) {
                let eps = 5e-3f32;
                let at = |d: f32| -> Result<f64> {
                    let mut v = base.clone();
                    v[j] += d;
                    let t = Tensor::from_vec(v, w.dims(), &Device::Cpu)?;
                    let p = if name == "w1" { penalty(&t, &w2.as_detached_tensor(), true)? } else { penalty(&w1.as_detached_tensor(), &t, true)? };
                    Ok(p.to_scalar::<f32>()? as f64)
                };
                let fd = (at(eps)? - at(-eps)?) / (2.0 * eps as f64);
                let an = analytic[j] as f64;
                assert!((fd - an).abs() < 3e-2 * an.abs().max(0.1), "{name}[{j}]: analytic {an} fd {fd}");
            }
        }
        Ok(())
    }
}
