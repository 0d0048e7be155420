//! 2x2 average pooling on NHWC tensors (the WINN Table 5 net) as one node, and its adjoint:
//! pooling's backward spreads each gradient over its window (a quarter each), and that
//! spreading's backward is the pooling again, so every order of gradient stays on these two
//! kernels. Off the CPU, candle's reshapes and sums do the same.

use super::fallback;
use candle_core::{CpuStorage, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

fn slice<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [f32]> {
    let CpuStorage::F32(v) = s else { candle_core::bail!("{what}: expected f32") };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&v[a..b]),
        None => candle_core::bail!("{what}: expected a contiguous tensor"),
    }
}

/// N x H x W x C -> N x H/2 x W/2 x C, each output the mean of its 2x2 window.
struct Pool;

/// N x H/2 x W/2 x C -> N x H x W x C, each input copied a quarter into its window.
struct Spread;

impl candle_core::CustomOp1 for Pool {
    fn name(&self) -> &'static str {
        "avg-pool-2x2"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let &[n, h, w, c] = l.dims() else { candle_core::bail!("avg-pool-2x2: expected N x H x W x C, got {:?}", l.dims()) };
        if h % 2 != 0 || w % 2 != 0 {
            candle_core::bail!("avg-pool-2x2: sides {h}x{w} must be even");
        }
        let x = slice(s, l, "avg-pool-2x2")?;
        let (ho, wo) = (h / 2, w / 2);
        let mut y = vec![0f32; n * ho * wo * c];
        y.par_chunks_mut(wo * c).enumerate().for_each(|(r, row)| {
            let (img, oh) = (r / ho, r % ho);
            let top = &x[((img * h + 2 * oh) * w) * c..][..w * c];
            let bottom = &x[((img * h + 2 * oh + 1) * w) * c..][..w * c];
            for (ow, out) in row.chunks_mut(c).enumerate() {
                let at = 2 * ow * c;
                for j in 0..c {
                    out[j] = 0.25 * (top[at + j] + top[at + c + j] + bottom[at + j] + bottom[at + c + j]);
                }
            }
        });
        Ok((CpuStorage::F32(y), Shape::from((n, ho, wo, c))))
    }

    fn bwd(&self, _x: &Tensor, _y: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(g.contiguous()?.apply_op1(Spread)?))
    }
}

impl candle_core::CustomOp1 for Spread {
    fn name(&self) -> &'static str {
        "avg-pool-2x2-backward"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let &[n, ho, wo, c] = l.dims() else { candle_core::bail!("avg-pool-2x2-backward: expected N x H x W x C, got {:?}", l.dims()) };
        let g = slice(s, l, "avg-pool-2x2-backward")?;
        let (h, w) = (2 * ho, 2 * wo);
        let mut x = vec![0f32; n * h * w * c];
        x.par_chunks_mut(w * c).enumerate().for_each(|(r, row)| {
            let (img, ih) = (r / h, r % h);
            let src = &g[((img * ho + ih / 2) * wo) * c..][..wo * c];
            for (iw, out) in row.chunks_mut(c).enumerate() {
                let from = &src[(iw / 2) * c..][..c];
                for j in 0..c {
                    out[j] = 0.25 * from[j];
                }
            }
        });
        Ok((CpuStorage::F32(x), Shape::from((n, h, w, c))))
    }

    fn bwd(&self, _g: &Tensor, _x: &Tensor, up: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(up.contiguous()?.apply_op1(Pool)?))
    }
}

/// 2x2 average pooling of N x H x W x C (even H and W).
pub fn avg_pool2_nhwc(x: &Tensor) -> Result<Tensor> {
    if fallback::fast(&[x]) {
        return x.contiguous()?.apply_op1(Pool);
    }
    // linear, so its backward is a broadcast, differentiable again
    let (n, h, w, c) = x.dims4()?;
    let rows = x.reshape((n, h / 2, 2, w * c))?.sum(2)?;
    rows.reshape((n, h / 2, w / 2, 2, c))?.sum(3)? * 0.25
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::fallback::CandleOps;
    use crate::rng::Rng;
    use candle_core::{Device, Var};

    /// Against candle's reshapes and sums: values, first and second derivatives (through
    /// a square, so the second derivative is not zero), on odd channel counts and batch 1.
    #[test]
    fn fused_pooling_matches_candle_ops_to_second_order() -> Result<()> {
        for (i, dims) in [[2usize, 4, 6, 3], [1, 2, 2, 1], [3, 8, 4, 5]].into_iter().enumerate() {
            let n: usize = dims.iter().product();
            let x0 = Tensor::from_vec(Rng::new(i as u64).uniform_vec(n, -1.0, 1.0), &dims, &Device::Cpu)?;
            let w = Tensor::from_vec(Rng::new(10 + i as u64).uniform_vec(n / 4, -1.0, 1.0), (dims[0], dims[1] / 2, dims[2] / 2, dims[3]), &Device::Cpu)?;
            let run = || -> Result<Vec<Vec<f32>>> {
                let x = Var::from_tensor(&x0)?;
                let y = avg_pool2_nhwc(&x.as_tensor().sqr()?)?;
                let before = candle_core::backprop::set_create_graph(true);
                let g = (&y * &w)?.sum_all()?.backward();
                candle_core::backprop::set_create_graph(before);
                let dx = g?.get(x.as_tensor()).unwrap().clone();
                let d2 = (dx.sqr()?.sum_all()?).backward()?.get(x.as_tensor()).unwrap().clone();
                [y, dx, d2].iter().map(|t| t.flatten_all()?.to_vec1::<f32>()).collect()
            };
            let fast = run()?;
            let slow = {
                let _candle = CandleOps::on();
                run()?
            };
            for (k, (a, b)) in fast.iter().zip(&slow).enumerate() {
                let err = a.iter().zip(b).map(|(p, q)| (p - q).abs()).fold(0f32, f32::max);
                assert!(err < 1e-5, "{dims:?}: output {k} differs by {err}");
            }
        }
        Ok(())
    }
}
