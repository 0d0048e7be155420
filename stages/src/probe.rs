//! The semi-supervised probe of the IGM paper (4.5): how good a net's features are for a
//! classifier that sees few labels. The activations of the net's last three layers,
//! flattened and concatenated, are standardized on the labelled examples; an L2-SVM
//! ([`crate::svm`]) is trained on them for each C of a grid, C is chosen on a validation
//! set, and the test error of the chosen SVM is recorded. Repeated over many random draws
//! of the labelled examples, the mean and sd of the test error compare nets: trained ones
//! against a random-weights net of the same architecture, the floor.

use crate::nn::{Classifier, Shape3};
use crate::rng::Rng;
use crate::svm::{self, SvmConfig};
use candle_core::{Device, Result, Tensor};

/// The layers the paper reads: the last three.
pub const LAYERS: usize = 3;

/// Features of every image of `x` (N x C x H x W, row-major): the last `layers`
/// activations of `model`, each flattened, concatenated in forward order. Returns the
/// features (N x dim, row-major) and dim.
pub fn features(model: &dyn Classifier, x: &[f32], shape: Shape3, layers: usize, batch_size: usize, device: &Device) -> Result<(Vec<f32>, usize)> {
    let (c, h, w) = shape;
    let d = c * h * w;
    let (mut out, mut dim) = (Vec::new(), 0);
    for chunk in x.chunks(batch_size.max(1) * d) {
        let n = chunk.len() / d;
        let t = Tensor::from_vec(chunk.to_vec(), (n, c, h, w), device)?;
        let (acts, _) = model.activations(&t)?;
        if acts.len() < layers {
            candle_core::bail!("the net has {} layers with activations; the probe reads the last {layers}", acts.len());
        }
        let flat: Vec<Vec<Vec<f32>>> = acts[acts.len() - layers..].iter().map(|a| a.flatten_from(1)?.to_vec2::<f32>()).collect::<Result<_>>()?;
        dim = flat.iter().map(|f| f[0].len()).sum();
        for i in 0..n {
            for f in &flat {
                out.extend_from_slice(&f[i]);
            }
        }
    }
    Ok((out, dim))
}

/// Per-column mean and 1/sd of the rows it was fitted on (sd floored, so a constant column
/// maps to 0 rather than to infinity).
#[derive(Clone, Debug)]
pub struct Standardizer {
    mean: Vec<f64>,
    inv_sd: Vec<f64>,
}

impl Standardizer {
    pub fn fit(xs: &[f32], dim: usize) -> Self {
        let n = (xs.len() / dim.max(1)).max(1) as f64;
        let mut mean = vec![0.0; dim];
        for row in xs.chunks(dim) {
            for (m, &v) in mean.iter_mut().zip(row) {
                *m += v as f64;
            }
        }
        mean.iter_mut().for_each(|m| *m /= n);
        let mut var = vec![0.0; dim];
        for row in xs.chunks(dim) {
            for ((s, &v), m) in var.iter_mut().zip(row).zip(&mean) {
                *s += (v as f64 - m).powi(2);
            }
        }
        let inv_sd = var.iter().map(|s| 1.0 / (s / n).sqrt().max(1e-6)).collect();
        Standardizer { mean, inv_sd }
    }

    pub fn apply(&self, xs: &[f32]) -> Vec<f32> {
        let dim = self.mean.len();
        xs.chunks(dim).flat_map(|row| row.iter().zip(&self.mean).zip(&self.inv_sd).map(|((&v, m), s)| ((v as f64 - m) * s) as f32)).collect()
    }
}

/// A labelled set of feature rows.
#[derive(Clone, Copy)]
pub struct Split<'a> {
    pub features: &'a [f32],
    pub labels: &'a [u32],
}

/// Settings of [`probe`].
#[derive(Clone, Debug, PartialEq)]
pub struct ProbeConfig {
    /// Labelled training examples per draw (the paper: 1000).
    pub labels: usize,
    /// Random draws of them (the paper: 100).
    pub draws: usize,
    /// The grid of SVM C values chosen from on validation.
    pub c_grid: Vec<f64>,
    pub seed: u64,
}

/// One draw: the C chosen on validation, and its errors.
#[derive(Clone, Debug, PartialEq)]
pub struct Draw {
    pub c: f64,
    pub validation_error: f64,
    pub test_error: f64,
}

/// Each draw takes `labels` examples of `train` at random (without replacement),
/// standardizes on them, fits an SVM per C, keeps the one with the least validation error
/// (the smallest C on ties) and measures it on `test`. `on_draw` hears of each finished
/// draw and can stop the probe.
pub fn probe(train: Split, validation: Split, test: Split, dim: usize, classes: usize, cfg: &ProbeConfig, on_draw: crate::OnStep<usize>) -> Result<Vec<Draw>> {
    let n = train.labels.len();
    let mut rng = Rng::new(cfg.seed);
    (0..cfg.draws)
        .map(|draw| {
            let mut ids: Vec<usize> = (0..n).collect();
            for i in (1..n).rev() {
                ids.swap(i, rng.below(i + 1));
            }
            ids.truncate(cfg.labels.min(n));
            let xs: Vec<f32> = ids.iter().flat_map(|&i| train.features[i * dim..(i + 1) * dim].iter().copied()).collect();
            let ys: Vec<u32> = ids.iter().map(|&i| train.labels[i]).collect();
            let scale = Standardizer::fit(&xs, dim);
            let (xs, val, tst) = (scale.apply(&xs), scale.apply(validation.features), scale.apply(test.features));
            let mut best: Option<(f64, svm::LinearSvm, f64)> = None;
            for &c in &cfg.c_grid {
                let model = svm::train(&xs, &ys, dim, classes, &SvmConfig::new(c, cfg.seed ^ draw as u64));
                let err = model.error(&val, validation.labels);
                if best.as_ref().is_none_or(|b| err < b.0) {
                    best = Some((err, model, c));
                }
            }
            let (validation_error, model, c) = best.ok_or_else(|| candle_core::Error::Msg("the probe needs at least one value of C".into()))?;
            if on_draw(draw + 1).is_break() {
                return Err(crate::stopped());
            }
            Ok(Draw { c, validation_error, test_error: model.error(&tst, test.labels) })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::{Arch, NetConfig, Normalization};

    fn net(arch: Arch, norm: Normalization, width: f64, side: usize) -> NetConfig {
        NetConfig { arch, norm, width, leaky_slope: 0.2, channels: 1, height: side, image_width: side, num_classes: 10, wass_head: false }
    }

    #[test]
    fn features_are_the_last_three_layers_and_activations_end_in_the_logits() -> Result<()> {
        let dev = Device::Cpu;
        for (cfg, layers) in [
            (net(Arch::Cnn4, Normalization::None, 0.125, 28), 4),
            (net(Arch::Cnn4, Normalization::Layer, 0.125, 28), 4),
            (net(Arch::Resnet32, Normalization::Layer, 0.25, 16), 31),
            (NetConfig { wass_head: true, ..net(Arch::Winn64, Normalization::Layer, 0.125, 16) }, 8),
        ] {
            let model = cfg.build(&mut Rng::new(1), &dev).map_err(|e| candle_core::Error::Msg(e.to_string()))?;
            let side = cfg.height;
            let x = Rng::new(2).normal_vec(3 * side * side, 0.0, 0.5);
            let t = Tensor::from_vec(x.clone(), (3, 1, side, side), &dev)?;
            let (acts, logits) = model.activations(&t)?;
            assert_eq!(acts.len(), layers, "{cfg:?}");
            let plain = model.forward_mode(&t, crate::nn::Mode::Frozen)?.to_vec2::<f32>()?;
            assert_eq!(logits.to_vec2::<f32>()?, plain, "{cfg:?}: the activations' pass is the forward pass");
            // in batches of 2 (3 images: a full and a partial batch), rows stay whole
            let (f, dim) = features(model.as_ref(), &x, cfg.shape(), LAYERS, 2, &dev)?;
            let last: Vec<Vec<Vec<f32>>> = acts[layers - 3..].iter().map(|a| a.flatten_from(1)?.to_vec2::<f32>()).collect::<Result<_>>()?;
            assert_eq!(dim, last.iter().map(|l| l[0].len()).sum::<usize>());
            let row2: Vec<f32> = last.iter().flat_map(|l| l[2].iter().copied()).collect();
            assert_eq!(&f[2 * dim..3 * dim], &row2[..], "{cfg:?}");
        }
        Ok(())
    }

    #[test]
    fn standardized_training_columns_have_mean_0_and_sd_1() {
        let xs: Vec<f32> = Rng::new(3).normal_vec(400, 0.0, 1.0).iter().enumerate().map(|(i, &v)| v * (1 + i % 4) as f32 + 10.0 * (i % 4) as f32).collect();
        let s = Standardizer::fit(&xs, 4);
        let z = s.apply(&xs);
        for j in 0..4 {
            let col: Vec<f64> = z.chunks(4).map(|r| r[j] as f64).collect();
            let mean = col.iter().sum::<f64>() / 100.0;
            let sd = (col.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / 100.0).sqrt();
            assert!(mean.abs() < 1e-5 && (sd - 1.0).abs() < 1e-5, "column {j}: mean {mean} sd {sd}");
        }
        // a constant column maps to 0, not to NaN
        let z = Standardizer::fit(&[2.0, 2.0, 2.0], 1).apply(&[2.0, 3.0]);
        assert_eq!(z[0], 0.0);
        assert!(z[1].is_finite());
    }

    #[test]
    fn the_probe_chooses_c_on_validation_and_a_signal_beats_noise() {
        // class k lights up feature k (plus noise); a second feature set is noise alone
        let (n, dim, classes) = (600, 6, 3);
        let mut rng = Rng::new(4);
        let labels: Vec<u32> = (0..n).map(|i| (i % classes) as u32).collect();
        let mut signal = Vec::with_capacity(n * dim);
        for &y in &labels {
            for j in 0..dim {
                signal.push((if j == y as usize { 1.5 } else { 0.0 } + rng.normal()) as f32);
            }
        }
        let noise = rng.normal_vec(n * dim, 0.0, 1.0);
        let cfg = ProbeConfig { labels: 60, draws: 5, c_grid: vec![0.001, 0.1, 10.0], seed: 1 };
        let run = |f: &[f32]| {
            let part = |a: usize, b: usize| Split { features: &f[a * dim..b * dim], labels: &labels[a..b] };
            probe(part(0, 200), part(200, 400), part(400, 600), dim, classes, &cfg, &mut crate::keep_going).unwrap()
        };
        let (with_signal, without) = (run(&signal), run(&noise));
        assert_eq!(with_signal.len(), 5);
        let mean = |d: &[Draw]| d.iter().map(|d| d.test_error).sum::<f64>() / d.len() as f64;
        assert!(mean(&with_signal) < 0.35, "signal: {with_signal:?}");
        assert!(mean(&without) > 0.55, "noise is at chance (2/3): {without:?}");
        for d in &with_signal {
            assert!(cfg.c_grid.contains(&d.c));
        }
        assert_eq!(run(&signal), with_signal, "the same seed draws the same examples");
    }
}
