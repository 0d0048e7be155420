//! Reclassification: one epoch of mini-batch training on real samples plus pseudo-negatives,
//! with the softmax ICN loss. Batches come either from the paper's union of everything,
//! shuffled together, or balanced: half real samples, half pseudo-negatives drawn with
//! weights (0.5^age per round in the IGM reference code, so recent rounds count more).

use crate::data::augment::pad_crop_flip;
use crate::critic::critic_batch;
use crate::loss::Objective;
use crate::nn::Classifier;
use crate::optim::Optimizer;
use crate::rng::Rng;
use crate::nn::Shape3;
use candle_core::{Device, Result, Tensor};

/// Training samples: real ones with their labels, then pseudo-negatives with the class
/// they were synthesized for (label -k in the paper).
pub struct TrainSet<'a> {
    pub shape: Shape3,
    pub real_x: &'a [f32],
    pub real_y: &'a [u32],
    pub neg_x: &'a [f32],
    pub neg_y: &'a [u32],
    /// Balanced batches when given: one sampling weight per pseudo-negative.
    pub neg_weights: Option<&'a [f64]>,
    /// Pseudo-negatives larger than `shape` (IGM textures: 320x320 images for 64x64
    /// patches): their shape; each draw of one is a window of `shape` at a uniformly random
    /// place, so every pixel of its centre is as likely to be seen. None: they are `shape`.
    pub neg_crop: Option<Shape3>,
    /// CIFAR augmentation of real samples (pad by this much, random crop, random flip);
    /// 0 for none. Pseudo-negatives are used as synthesized.
    pub augment_pad: usize,
    /// Count how often each pseudo-negative is drawn ([`EpochStats::neg_draws`]).
    pub count_draws: bool,
}

impl TrainSet<'_> {
    fn len(&self) -> usize {
        self.real_y.len() + self.neg_y.len()
    }
    fn dim(&self) -> usize {
        self.shape.0 * self.shape.1 * self.shape.2
    }
    /// Sample i of the union: reals first, then pseudo-negatives (whole, as stored).
    fn sample(&self, i: usize) -> (&[f32], u32, bool) {
        let n = self.real_y.len();
        if i < n {
            let d = self.dim();
            (&self.real_x[i * d..(i + 1) * d], self.real_y[i], false)
        } else {
            let (c, h, w) = self.neg_crop.unwrap_or(self.shape);
            let d = c * h * w;
            let j = i - n;
            (&self.neg_x[j * d..(j + 1) * d], self.neg_y[j], true)
        }
    }
}

/// The batches of one epoch as indices into the union (reals, then pseudo-negatives).
/// Union: a permutation of everything. Balanced: a permutation of the reals, each batch
/// half reals and half pseudo-negatives drawn with replacement by weight.
fn batch_indices(set: &TrainSet, batch_size: usize, rng: &mut Rng) -> Vec<Vec<usize>> {
    let n = set.real_y.len();
    match set.neg_weights {
        Some(w) if !set.neg_y.is_empty() => {
            let cumulative: Vec<f64> = w.iter().scan(0.0, |acc, v| {
                *acc += v;
                Some(*acc)
            }).collect();
            let total = *cumulative.last().expect("non-empty");
            let half = (batch_size / 2).max(1);
            rng.permutation(n)
                .chunks(half)
                .map(|reals| {
                    let mut b = reals.to_vec();
                    for _ in 0..reals.len() {
                        let u = rng.uniform() * total;
                        let j = cumulative.partition_point(|c| *c <= u).min(cumulative.len() - 1);
                        b.push(n + j);
                    }
                    b
                })
                .collect()
        }
        _ => rng.permutation(set.len()).chunks(batch_size).map(|c| c.to_vec()).collect(),
    }
}

/// Appends a window of `out`'s size at a uniformly random place of `image` (of `shape`):
/// row drawn before column, as `crate::patch::patch_positions` draws them.
pub fn random_window(image: &[f32], shape: Shape3, out: Shape3, rng: &mut Rng, to: &mut Vec<f32>) {
    let (c, h, w) = shape;
    let (top, left) = (rng.below(h - out.1 + 1), rng.below(w - out.2 + 1));
    for ch in 0..c {
        for y in top..top + out.1 {
            let at = ch * h * w + y * w + left;
            to.extend_from_slice(&image[at..at + out.2]);
        }
    }
}

/// Where an epoch went non-finite; the epoch stopped there, before the step that would have
/// written the value into the weights (or, for `Weights`, after its last step).
#[derive(Clone, Debug, PartialEq)]
pub struct Divergence {
    /// 1-based batch of the epoch.
    pub batch: usize,
    pub what: NonFinite,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum NonFinite {
    Loss(f32),
    /// The sum of every gradient entry (one fused reduction per tensor, no copy).
    Gradient(f32),
    Weights,
}

impl std::fmt::Display for Divergence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.what {
            NonFinite::Loss(v) => write!(f, "the loss is {v} at batch {}", self.batch),
            NonFinite::Gradient(v) => write!(f, "the gradient sums to {v} at batch {}", self.batch),
            NonFinite::Weights => write!(f, "the weights hold a non-finite value after batch {}", self.batch),
        }
    }
}

/// Sum of every entry of `tensors`, reduced on their device; non-finite iff some entry is
/// (short of an overflow of the sum itself, at magnitudes no healthy net reaches).
pub fn finite_sum(tensors: &[Tensor]) -> Result<f32> {
    let mut total: Option<Tensor> = None;
    for t in tensors {
        let s = t.sum_all()?.to_dtype(candle_core::DType::F32)?;
        total = Some(match total {
            Some(acc) => (acc + s)?,
            None => s,
        });
    }
    total.map_or(Ok(0.0), |t| t.to_scalar::<f32>())
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct EpochStats {
    /// Mean loss over batches.
    pub loss: f64,
    /// Error on the real samples, measured on the fly during the epoch.
    pub real_error: f64,
    /// Share of pseudo-negatives still classified as their class, on the fly.
    pub negatives_fooling: f64,
    pub batches: usize,
    /// Times each pseudo-negative was drawn into a batch this epoch (lineage: which
    /// samples shaped the weights, and how much).
    pub neg_draws: Vec<u32>,
    /// WINN objectives: what the critic measured over the epoch.
    pub critic: Option<CriticEpoch>,
    /// Set when the epoch stopped on a non-finite loss, gradient or weight: the other
    /// fields then cover the batches before it, and the weights must not be kept.
    pub diverged: Option<Divergence>,
}

/// A WINN epoch's critic measures, means over batches.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CriticEpoch {
    /// E_neg f - E_pos f (negative when the critic tells them apart).
    pub wasserstein: f64,
    /// E[(||grad f(xhat)|| - 1)^2], unscaled.
    pub penalty: f64,
    /// The lowest and highest batch mean of f over positives: WINN's synthesis stops each
    /// sample at a threshold drawn between them (the reference code's min and max of
    /// `D_pos_loss` over the last pass).
    pub f_positive: (f64, f64),
}

/// One pass over `set` in an order drawn from `rng`; `on_batch` gets the samples done.
#[allow(clippy::too_many_arguments)]
pub fn train_epoch(
    model: &dyn Classifier,
    opt: &mut dyn Optimizer,
    set: &TrainSet,
    batch_size: usize,
    objective: Objective,
    rng: &mut Rng,
    device: &Device,
    on_batch: crate::OnStep<usize>,
) -> Result<EpochStats> {
    let batches = batch_indices(set, batch_size.max(1), rng);
    let vars = model.vars();
    let (c, h, w) = set.shape;
    let mut stats = EpochStats { neg_draws: vec![0; if set.count_draws { set.neg_y.len() } else { 0 }], ..EpochStats::default() };
    let n_real = set.real_y.len();
    let (mut real_wrong, mut real_seen, mut neg_fool, mut neg_seen) = (0usize, 0usize, 0usize, 0usize);
    let mut critic = CriticEpoch { wasserstein: 0.0, penalty: 0.0, f_positive: (f64::INFINITY, f64::NEG_INFINITY) };
    let (mut critic_fool, mut critic_missed) = (0usize, 0usize);
    for batch in &batches {
        let mut xs = Vec::with_capacity(batch.len() * set.dim());
        let mut ys = Vec::with_capacity(batch.len());
        let mut negs = Vec::with_capacity(batch.len());
        for &i in batch.iter() {
            let (x, y, neg) = set.sample(i);
            if set.augment_pad > 0 && !neg {
                xs.extend(pad_crop_flip(x, 1, set.shape, set.augment_pad, rng));
            } else if let (true, Some(big)) = (neg, set.neg_crop) {
                random_window(x, big, set.shape, rng, &mut xs);
            } else {
                xs.extend_from_slice(x);
            }
            ys.push(y);
            negs.push(if neg { 1f32 } else { 0.0 });
            if neg && set.count_draws {
                stats.neg_draws[i - n_real] += 1;
            }
        }
        let x = Tensor::from_vec(xs, (batch.len(), c, h, w), device)?;
        let (logits, loss) = match objective {
            Objective::Critic { lambda } | Objective::Winn { lambda, .. } => {
                let n = negs.iter().filter(|&&v| v == 0.0).count();
                if negs[..n].iter().any(|&v| v != 0.0) {
                    candle_core::bail!("a WINN batch needs its positives first, then as many pseudo-negatives (balanced sampling)");
                }
                let supervised = match objective {
                    Objective::Winn { weight, .. } => Some(weight),
                    _ => None,
                };
                let b = critic_batch(model, &x, n, &ys, supervised, lambda, rng)?;
                let mean = |v: &[f32]| v.iter().map(|&f| f as f64).sum::<f64>() / v.len().max(1) as f64;
                let (fp, fn_) = (mean(&b.f[..n]), mean(&b.f[n..]));
                critic.wasserstein += b.wasserstein as f64;
                critic.penalty += b.penalty as f64;
                critic.f_positive = (critic.f_positive.0.min(fp), critic.f_positive.1.max(fp));
                // a pseudo-negative fools the critic when it scores above the positives' mean
                critic_fool += b.f[n..].iter().filter(|&&f| f as f64 > fp).count();
                // a positive is missed when it scores below the pseudo-negatives' mean
                if supervised.is_none() {
                    critic_missed += b.f[..n].iter().filter(|&&f| (f as f64) < fn_).count();
                }
                (b.logits, b.loss)
            }
            _ => {
                let logits = model.forward(&x)?;
                let loss = objective.loss(&logits, &ys, &negs)?;
                (logits, loss)
            }
        };
        let grads = loss.backward()?;
        let value = loss.to_scalar::<f32>()?;
        let what = if !value.is_finite() {
            Some(NonFinite::Loss(value))
        } else {
            let g: Vec<Tensor> = vars.iter().filter_map(|v| grads.get(v.as_tensor()).cloned()).collect();
            Some(finite_sum(&g)?).filter(|s| !s.is_finite()).map(NonFinite::Gradient)
        };
        if let Some(what) = what {
            stats.diverged = Some(Divergence { batch: stats.batches + 1, what });
            break;
        }
        opt.step(&vars, &grads)?;
        stats.loss += value as f64;
        stats.batches += 1;
        for ((row, &y), &n) in logits.to_vec2::<f32>()?.iter().zip(&ys).zip(&negs) {
            if n > 0.0 {
                neg_seen += 1;
                neg_fool += (!objective.is_critic() && objective.fooled_by(row, y)) as usize;
            } else {
                real_seen += 1;
                real_wrong += (!objective.correct(row, y)) as usize;
            }
        }
        if on_batch(batch.len()).is_break() {
            return Err(crate::stopped());
        }
    }
    // a finite gradient times a huge learning rate can still overflow the weights
    if stats.diverged.is_none() {
        let w: Vec<Tensor> = model.named_tensors().into_iter().map(|(_, t)| t).collect();
        if !finite_sum(&w)?.is_finite() {
            stats.diverged = Some(Divergence { batch: stats.batches, what: NonFinite::Weights });
        }
    }
    if objective.is_critic() {
        neg_fool = critic_fool;
        real_wrong += critic_missed;
        let n = stats.batches.max(1) as f64;
        stats.critic = Some(CriticEpoch { wasserstein: critic.wasserstein / n, penalty: critic.penalty / n, f_positive: critic.f_positive });
    }
    stats.loss /= stats.batches.max(1) as f64;
    stats.real_error = real_wrong as f64 / real_seen.max(1) as f64;
    stats.negatives_fooling = neg_fool as f64 / neg_seen.max(1) as f64;
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::{Cnn4, Cnn4Config};
    use crate::optim::SgdMomentum;

    #[test]
    fn a_larger_pseudo_negative_is_drawn_as_a_random_window_of_the_nets_size() {
        // a 2-channel 5x6 image whose values name their place: ch * 100 + y * 10 + x
        let big: Vec<f32> = (0..2).flat_map(|ch| (0..5).flat_map(move |y| (0..6).map(move |x| (ch * 100 + y * 10 + x) as f32))).collect();
        let mut rng = Rng::new(4);
        let mut corners = std::collections::BTreeSet::new();
        for _ in 0..400 {
            let mut out = Vec::new();
            random_window(&big, (2, 5, 6), (2, 3, 3), &mut rng, &mut out);
            assert_eq!(out.len(), 18);
            let (top, left) = ((out[0] as usize / 10) % 10, out[0] as usize % 10);
            for ch in 0..2 {
                for y in 0..3 {
                    for x in 0..3 {
                        assert_eq!(out[ch * 9 + y * 3 + x], (ch * 100 + (top + y) * 10 + left + x) as f32);
                    }
                }
            }
            corners.insert((top, left));
        }
        assert_eq!(corners.len(), 3 * 4, "every place of a 3x3 window in 5x6 is drawn");
    }

    #[test]
    fn balanced_batches_are_half_pseudo_negatives_drawn_by_weight() {
        let xs = vec![0f32; 40];
        let ys = vec![0u32; 40];
        let nx = vec![0f32; 4];
        let ny = vec![1u32; 4];
        // pseudo-negatives of rounds 1, 1, 2, 3 seen from round 3: weights 0.25, 0.25, 0.5, 1
        let w = [0.25, 0.25, 0.5, 1.0];
        let set = TrainSet { shape: (1, 1, 1), real_x: &xs, real_y: &ys, neg_x: &nx, neg_y: &ny, neg_weights: Some(&w), neg_crop: None, augment_pad: 0, count_draws: true };
        let mut rng = Rng::new(1);
        let mut counts = [0usize; 4];
        let mut reals = Vec::new();
        for _ in 0..500 {
            for b in batch_indices(&set, 8, &mut rng) {
                assert_eq!(b.len(), 8);
                assert!(b[..4].iter().all(|&i| i < 40) && b[4..].iter().all(|&i| i >= 40));
                reals.extend_from_slice(&b[..4]);
                b[4..].iter().for_each(|&i| counts[i - 40] += 1);
            }
        }
        reals.sort_unstable();
        reals.dedup();
        assert_eq!(reals.len(), 40, "every real sample is seen each epoch");
        let total: usize = counts.iter().sum();
        for (c, w) in counts.iter().zip(w) {
            let share = *c as f64 / total as f64;
            assert!((share - w / 2.0).abs() < 0.02, "{counts:?}");
        }
        let union = TrainSet { neg_weights: None, ..set };
        let b = batch_indices(&union, 8, &mut rng);
        let mut all: Vec<usize> = b.concat();
        all.sort_unstable();
        assert_eq!(all, (0..44).collect::<Vec<_>>());
    }

    #[test]
    fn draws_count_every_pseudo_negative_in_a_batch() -> Result<()> {
        let dev = Device::Cpu;
        let (xs, ys) = (Rng::new(3).uniform_vec(20 * 784, -1.0, 1.0), (0..20).map(|i| i % 10).collect::<Vec<u32>>());
        let (nx, ny) = (Rng::new(4).uniform_vec(6 * 784, -1.0, 1.0), vec![0u32, 1, 2, 3, 4, 5]);
        let net = Cnn4::new(Cnn4Config::mnist(10, 0.125, 0.2), &mut Rng::new(1), &dev)?;
        let mut opt = SgdMomentum::new(0.01, 0.9);
        let union = TrainSet { shape: (1, 28, 28), real_x: &xs, real_y: &ys, neg_x: &nx, neg_y: &ny, neg_weights: None, neg_crop: None, augment_pad: 0, count_draws: true };
        let s = train_epoch(&net, &mut opt, &union, 8, Objective::Softmax { alpha: 0.5 }, &mut Rng::new(2), &dev, &mut crate::keep_going)?;
        assert_eq!(s.neg_draws, vec![1; 6], "the union shows each sample once per epoch");
        // balanced: half of each batch, by weight; the last sample has no weight
        let w = [1.0, 1.0, 1.0, 1.0, 1.0, 0.0];
        let balanced = TrainSet { neg_weights: Some(&w), ..union };
        let s = train_epoch(&net, &mut opt, &balanced, 8, Objective::Softmax { alpha: 0.5 }, &mut Rng::new(2), &dev, &mut crate::keep_going)?;
        assert_eq!(s.neg_draws.iter().sum::<u32>(), 20, "as many draws as real samples");
        assert_eq!(s.neg_draws[5], 0);
        Ok(())
    }

    /// Two separable synthetic classes (bright left half vs bright right half) are learned.
    #[test]
    fn learns_a_separable_problem_and_is_deterministic() -> Result<()> {
        let dev = Device::Cpu;
        let mut data_rng = Rng::new(0);
        let n = 64;
        let mut xs = Vec::new();
        let mut ys = Vec::new();
        for i in 0..n {
            let y = (i % 2) as u32;
            for _r in 0..28 {
                for col in 0..28 {
                    let bright = (col < 14) == (y == 0);
                    xs.push(if bright { 0.8 } else { -0.8 } + 0.1 * data_rng.normal() as f32);
                }
            }
            ys.push(y);
        }
        let run = || -> Result<(Vec<EpochStats>, Vec<f32>)> {
            let net = Cnn4::new(Cnn4Config::mnist(2, 0.125, 0.2), &mut Rng::new(1), &dev)?;
            let mut opt = SgdMomentum::new(0.05, 0.9);
            let set = TrainSet { shape: (1, 28, 28), real_x: &xs, real_y: &ys, neg_x: &[], neg_y: &[], neg_weights: None, neg_crop: None, augment_pad: 0, count_draws: true };
            let mut rng = Rng::new(2);
            let stats = (0..4)
                .map(|_| train_epoch(&net, &mut opt, &set, 16, Objective::Softmax { alpha: 0.0 }, &mut rng, &dev, &mut crate::keep_going))
                .collect::<Result<Vec<_>>>()?;
            Ok((stats, net.named_tensors()[0].1.flatten_all()?.to_vec1::<f32>()?))
        };
        let (stats, w1) = run()?;
        assert!(stats.iter().all(|s| s.neg_draws.is_empty()));
        assert!(stats.last().unwrap().real_error < 0.05, "{stats:?}");
        assert!(stats.last().unwrap().loss < stats[0].loss, "{stats:?}");
        let (_, w2) = run()?;
        assert_eq!(w1, w2, "same seeds must give bit-identical weights");
        Ok(())
    }
}
