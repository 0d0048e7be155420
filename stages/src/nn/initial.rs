//! WINN's initial pseudo-negatives (Appendix D; `NoiseProvider` in the reference code): an
//! untrained net maps U(-1, 1) noise of shape 512x4x4 through four
//! [5x5 convolution (stride 1, padding 2) -> nearest upsampling] stages, with a layer norm
//! after each but the last and no nonlinearity, to the image size. Its samples are smooth
//! blobs at several scales, a closer start for synthesis than pixel noise.
//!
//! From the reference code:
//! - widths 512 -> 256 -> 128 -> 64 -> image channels (its `dim` = 64);
//! - the layer norm is over C, H, W per sample, after the upsampling (which changes no
//!   statistic), with gamma 1 and beta 0 (untrained);
//! - the convolutions' biases start at zero and are never trained, so they are left out;
//! - each image is scaled by its own min and max to the data range [-1, 1] (the reference
//!   scales to [0, 255] and stores an 8-bit PNG; here the floats are kept).
//!
//! Weights are drawn N(0, 0.1^2) as the paper states (the reference draws uniform with the
//! same standard deviation).
//!
//! Image sizes: the reference upsamples 4 -> 8 -> 16 -> 32 -> 64 for 64x64 images, its last
//! stage resizing to the image size. Here the first three stages double while the side is
//! below the image's longer side S, and the last upsamples by ceil(S / side) (2 for 64, so
//! the reference's net exactly; 1 for 32 and 28; 8 for 256); the result is then cropped to
//! H x W around its centre (32 -> 28 for MNIST: every pixel stays a whole nearest-neighbour
//! block, where resizing 32 to 28 would drop rows unevenly).
//!
//! Every random number comes from [`Rng`]: the weights from the net's seed, each sample's
//! noise from the sample's own seed, so any sample can be remade alone and a sample does
//! not depend on what else is in its batch.

use super::conv::{conv2d, Geom};
use super::norm::{Norm, NormKind};
use super::{Mode, Shape3};
use crate::rng::Rng;
use candle_core::{Device, Result, Tensor};

/// The noise of one sample, C x H x W.
pub const NOISE_SHAPE: Shape3 = (512, 4, 4);
/// Output channels of the first three convolutions; the last has the image's channels.
pub const WIDTHS: [usize; 3] = [256, 128, 64];
pub const WEIGHT_STD: f64 = 0.1;
const GEOM: Geom = Geom { k: 5, stride: 1, pad: 2 };
/// Samples forwarded together (the reference's batch).
const BATCH: usize = 100;

/// The untrained net of Appendix D for images of one shape.
pub struct NoiseProvider {
    shape: Shape3,
    /// Weights (25 * C_in) x C_out, rows ordered (ki, kj, c), one per stage.
    weights: Vec<Tensor>,
    /// Nearest-upsampling factor of each stage.
    factors: [usize; 4],
    device: Device,
}

impl NoiseProvider {
    /// The net for images of `shape` (C, H, W), weights drawn from `seed`.
    pub fn new(shape: Shape3, seed: u64, device: &Device) -> Result<Self> {
        let (c, h, w) = shape;
        if c == 0 || h == 0 || w == 0 {
            candle_core::bail!("initial samples need a non-empty image shape, not {shape:?}");
        }
        let mut rng = Rng::new(seed);
        let mut weights = Vec::with_capacity(4);
        let mut c_in = NOISE_SHAPE.0;
        for c_out in WIDTHS.into_iter().chain([c]) {
            let fan_in = GEOM.k * GEOM.k * c_in;
            weights.push(Tensor::from_vec(rng.normal_vec(fan_in * c_out, 0.0, WEIGHT_STD), (fan_in, c_out), device)?);
            c_in = c_out;
        }
        Ok(NoiseProvider { shape, weights, factors: upsampling(h.max(w)), device: device.clone() })
    }

    /// The convolution weights, first stage first.
    pub fn weights(&self) -> &[Tensor] {
        &self.weights
    }

    /// The noise of the sample with this seed: NOISE_SHAPE, U(-1, 1), row-major C x H x W.
    pub fn noise(seed: u64) -> Vec<f32> {
        let (c, h, w) = NOISE_SHAPE;
        Rng::new(seed).uniform_vec(c * h * w, -1.0, 1.0)
    }

    /// One sample per seed: N x C x H x W, row-major, each image spanning [-1, 1].
    pub fn samples(&self, seeds: &[u64]) -> Result<Vec<f32>> {
        let mut out = Vec::with_capacity(seeds.len() * self.shape.0 * self.shape.1 * self.shape.2);
        for chunk in seeds.chunks(BATCH) {
            out.extend(self.forward(chunk, None)?.flatten_all()?.to_vec1::<f32>()?);
        }
        Ok(out)
    }

    /// The samples of `seeds` (N x C x H x W); with `trace`, also the activation after every
    /// step (NHWC): each convolution, upsampling and layer norm, then the crop.
    pub fn forward(&self, seeds: &[u64], mut trace: Option<&mut Vec<(String, Tensor)>>) -> Result<Tensor> {
        let (nc, nh, nw) = NOISE_SHAPE;
        let noise: Vec<f32> = seeds.iter().flat_map(|&s| Self::noise(s)).collect();
        let mut x = Tensor::from_vec(noise, (seeds.len(), nc, nh, nw), &self.device)?.permute((0, 2, 3, 1))?.contiguous()?;
        let mut record = |name: String, t: &Tensor| {
            if let Some(tr) = trace.as_deref_mut() {
                tr.push((name, t.clone()));
            }
        };
        for (i, (w, &f)) in self.weights.iter().zip(&self.factors).enumerate() {
            x = conv2d(&x, w, GEOM)?;
            record(format!("conv{}", i + 1), &x);
            x = upsample_nearest(&x, f)?;
            record(format!("upsample{}", i + 1), &x);
            if i < 3 {
                x = Norm::new(NormKind::Layer, x.dim(3)?, &self.device)?.scale(&x, Mode::Frozen)?;
                record(format!("norm{}", i + 1), &x);
            }
        }
        let (c, h, w) = self.shape;
        let side = x.dim(1)?;
        x = x.narrow(1, (side - h) / 2, h)?.narrow(2, (side - w) / 2, w)?;
        record("crop".into(), &x);
        let n = seeds.len();
        let x = x.permute((0, 3, 1, 2))?.contiguous()?.reshape((n, c * h * w))?;
        min_max_to_unit(&x)?.reshape((n, c, h, w))
    }
}

/// The upsampling factor of each stage for an image whose longer side is `side`.
fn upsampling(side: usize) -> [usize; 4] {
    let mut s = NOISE_SHAPE.1;
    let mut f = [1; 4];
    for fi in f.iter_mut().take(3) {
        if s < side {
            *fi = 2;
            s *= 2;
        }
    }
    f[3] = side.div_ceil(s).max(1);
    f
}

/// Each pixel of N x H x W x C repeated into an f x f block.
fn upsample_nearest(x: &Tensor, f: usize) -> Result<Tensor> {
    if f == 1 {
        return Ok(x.clone());
    }
    let (n, h, w, c) = x.dims4()?;
    x.reshape((n, h, 1, w, 1, c))?.broadcast_as((n, h, f, w, f, c))?.contiguous()?.reshape((n, h * f, w * f, c))
}

/// Each row scaled from its [min, max] onto [-1, 1] (a constant row becomes 0).
fn min_max_to_unit(x: &Tensor) -> Result<Tensor> {
    let lo = x.min_keepdim(1)?;
    let span = (x.max_keepdim(1)? - &lo)?;
    // a constant row has span 0: divide by 1 instead and land on -1 + 1 = 0 below
    let zero = span.eq(0.0)?;
    let safe = zero.where_cond(&span.ones_like()?, &span)?;
    let unit = x.broadcast_sub(&lo)?.broadcast_div(&safe)?;
    let centre = zero.where_cond(&span.ones_like()?.affine(0.5, 0.0)?, &span.zeros_like()?)?;
    ((unit.broadcast_add(&centre)? * 2.0)? - 1.0)?.clamp(-1f32, 1f32)
}

/// The seed of sample `index` of [`initial_samples`] with this `seed`.
pub fn sample_seed(seed: u64, index: usize) -> u64 {
    // a stream apart from the weights' (which start at Rng::new(seed))
    Rng::new(seed ^ 0xA5A5_5A5A_C3C3_3C3C).next_u64() ^ Rng::new(index as u64).next_u64()
}

/// `n` initial pseudo-negatives of `shape` (N x C x H x W, row-major, in [-1, 1]): the net
/// drawn from `seed`, sample i from [`sample_seed`]`(seed, i)`.
pub fn initial_samples(n: usize, shape: Shape3, seed: u64) -> Result<Vec<f32>> {
    let net = NoiseProvider::new(shape, seed, &Device::Cpu)?;
    let seeds: Vec<u64> = (0..n).map(|i| sample_seed(seed, i)).collect();
    net.samples(&seeds)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(v: &[f32]) -> (f64, f64) {
        let n = v.len() as f64;
        let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n;
        (mean, v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n)
    }

    #[test]
    fn shapes_and_statistics_of_every_layer_for_64x64_rgb() -> Result<()> {
        let net = NoiseProvider::new((3, 64, 64), 5, &Device::Cpu)?;
        let (mut c_in, mut side) = (512, 4);
        for (w, c_out) in net.weights().iter().zip([256, 128, 64, 3]) {
            assert_eq!(w.dims(), &[25 * c_in, c_out]);
            let (mean, var) = stats(&w.flatten_all()?.to_vec1::<f32>()?);
            assert!(mean.abs() < 0.01 && (var.sqrt() - WEIGHT_STD).abs() < 0.005, "weights: mean {mean}, sd {}", var.sqrt());
            c_in = c_out;
        }
        let seeds = [11, 12, 13];
        let mut trace = Vec::new();
        let out = net.forward(&seeds, Some(&mut trace))?;
        let names: Vec<&str> = trace.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["conv1", "upsample1", "norm1", "conv2", "upsample2", "norm2", "conv3", "upsample3", "norm3", "conv4", "upsample4", "crop"]);
        // 4 -> 8 -> 16 -> 32 -> 64, the reference's net
        for (name, t) in &trace {
            let c = match &name[name.len() - 1..] {
                "1" => 256,
                "2" => 128,
                "3" => 64,
                _ => 3,
            };
            if name.starts_with("upsample") {
                side *= 2;
            }
            assert_eq!(t.dims(), &[3, side, side, c], "{name}");
            if name.starts_with("norm") {
                for row in t.reshape((3, ()))?.to_vec2::<f32>()? {
                    let (mean, var) = stats(&row);
                    assert!(mean.abs() < 1e-4 && (var - 1.0).abs() < 1e-3, "{name}: mean {mean} var {var}");
                }
            }
        }
        assert_eq!(out.dims(), &[3, 3, 64, 64]);
        for row in out.reshape((3, ()))?.to_vec2::<f32>()? {
            let lo = row.iter().copied().fold(f32::MAX, f32::min);
            let hi = row.iter().copied().fold(f32::MIN, f32::max);
            assert!(lo == -1.0 && hi == 1.0, "each image spans [-1, 1]: {lo} {hi}");
        }
        Ok(())
    }

    #[test]
    fn smaller_images_stop_doubling_and_are_cropped_around_the_centre() -> Result<()> {
        assert_eq!(upsampling(64), [2, 2, 2, 2]);
        assert_eq!(upsampling(32), [2, 2, 2, 1]);
        assert_eq!(upsampling(28), [2, 2, 2, 1]);
        assert_eq!(upsampling(16), [2, 2, 1, 1]);
        assert_eq!(upsampling(256), [2, 2, 2, 8]);
        let net = NoiseProvider::new((1, 28, 28), 6, &Device::Cpu)?;
        let mut trace = Vec::new();
        let out = net.forward(&[3, 4], Some(&mut trace))?;
        assert_eq!(out.dims(), &[2, 1, 28, 28]);
        let (_, full) = trace.iter().find(|(n, _)| n == "upsample4").unwrap();
        assert_eq!(full.dims(), &[2, 32, 32, 1]);
        let (_, crop) = trace.iter().find(|(n, _)| n == "crop").unwrap();
        assert_eq!(crop.flatten_all()?.to_vec1::<f32>()?, full.narrow(1, 2, 28)?.narrow(2, 2, 28)?.flatten_all()?.to_vec1::<f32>()?);
        Ok(())
    }

    #[test]
    fn each_sample_depends_on_its_seed_and_index_alone() -> Result<()> {
        let shape = (1, 28, 28);
        let d = 28 * 28;
        let all = initial_samples(7, shape, 42)?;
        assert_eq!(all.len(), 7 * d);
        assert!(all.iter().all(|v| (-1.0..=1.0).contains(v)));
        assert_eq!(all, initial_samples(7, shape, 42)?);
        // a sample remade alone, and inside batches of other samples (the test build's
        // small convolution chunks split these batches)
        let net = NoiseProvider::new(shape, 42, &Device::Cpu)?;
        let alone = net.samples(&[sample_seed(42, 5)])?;
        assert_eq!(alone[..], all[5 * d..6 * d]);
        let mixed = net.samples(&[99, sample_seed(42, 5), 7, 8, 9])?;
        assert_eq!(mixed[d..2 * d], all[5 * d..6 * d]);
        assert_ne!(all[..d], all[d..2 * d], "samples differ");
        assert_ne!(initial_samples(1, shape, 43)?[..], all[..d], "another seed, another net and noise");
        Ok(())
    }
}
