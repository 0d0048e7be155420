//! Images of any size from a critic trained on small patches (WINN §5.2).
//!
//! A WINN texture critic only ever saw 64x64 crops, so f is meaningful on 64x64 inputs and
//! nowhere else: a 256x256 image cannot be forwarded as a whole. But a texture is the same
//! statistics everywhere, so an image is a good texture when every 64x64 window of it is
//! one the critic scores highly. The paper therefore ascends the mean of f over windows:
//! at each step it draws random windows of a larger working image, forwards them as one
//! batch, and moves each pixel by the average of the gradients of the windows that cover
//! it. Averaging, not summing, keeps the step size independent of how many windows
//! happened to land on a pixel, so the random placement adds noise to the direction but
//! not to the scale; and every window is scored on the same footing, so no region is
//! privileged.
//!
//! A window whose top-left corner is uniform lands on an image's edge pixels far less
//! often than on its middle: a pixel at distance d < patch from the edge is in d + 1 of the
//! window positions along that axis, an inner one in `patch` of them, so without a border
//! the output's corners would hardly move. The working image is therefore the output plus a
//! border of `pad` pixels, thrown away at the end. With the paper's border of half the
//! patch side, the output's edge pixels are covered about half as often as its centre
//! (pad + 1 positions of `patch`) instead of once in `patch`; a border of `patch - 1` would
//! make the coverage of the output exactly uniform, at a larger working image.
//!
//! The ascent is the one of [`crate::synthesize`] (same [`Step`] rules, clipping to
//! [-1, 1]), applied lazily: a pixel that no window covered at a step had no gradient, so
//! it does not move and its optimizer state does not age. Adam's bias correction counts the
//! steps at which the pixel itself was updated, which is what its moment estimates have
//! seen.

use crate::nn::{Classifier, Mode, Shape3};
use crate::rng::Rng;
use crate::synthesize::{Step, ADAM_EPS};
use candle_core::{DType, Device, Result, Var};

/// How a large image is synthesized from a patch critic.
#[derive(Clone, Debug, PartialEq)]
pub struct PatchConfig {
    /// The side of the square inputs the critic was trained on.
    pub patch: usize,
    /// Border of the working image on each side; the output is its centre crop.
    pub pad: usize,
    /// Windows drawn and forwarded at each step.
    pub patches_per_step: usize,
    pub step: Step,
    pub lr: f64,
    pub max_steps: u32,
    /// Stop once the mean f over a step's windows reaches this (`None`: run `max_steps`).
    pub threshold: Option<f64>,
}

impl PatchConfig {
    /// WINN §5.2: 64x64 windows, 200 a step, a 32-pixel border, with the ascent of WINN's
    /// synthesis (Adam, lr 0.01, betas (0.9, 0.99)).
    pub fn winn(max_steps: u32, threshold: Option<f64>) -> Self {
        PatchConfig {
            patch: 64,
            pad: 32,
            patches_per_step: 200,
            step: Step::Adam { beta1: 0.9, beta2: 0.99, eps: ADAM_EPS },
            lr: 0.01,
            max_steps,
            threshold,
        }
    }
}

/// One synthesized image and how it ended.
#[derive(Clone, Debug, PartialEq)]
pub struct PatchSample {
    /// The output (C x H x W, row-major, in [-1, 1] where it moved): the working image's
    /// centre.
    pub image: Vec<f32>,
    /// Ascent steps taken.
    pub steps: u32,
    /// Mean f over the windows drawn at the last step (scored, not stepped from).
    pub final_f: f32,
    /// Whether it stopped because `final_f` reached the threshold (else at `max_steps`).
    pub stopped_at_threshold: bool,
}

/// The working image's shape for an output shape: `pad` more on every side.
pub fn working_shape(out: Shape3, pad: usize) -> Shape3 {
    (out.0, out.1 + 2 * pad, out.2 + 2 * pad)
}

/// `count` top-left corners of `patch`-sided windows of an image of `shape`, each uniform
/// in [0, H - patch] x [0, W - patch] (row drawn before column). The order in which
/// [`synthesize_patches`] draws its windows at each step.
pub fn patch_positions(shape: Shape3, patch: usize, count: usize, rng: &mut Rng) -> Vec<(usize, usize)> {
    assert!(patch <= shape.1 && patch <= shape.2, "a {patch}-pixel window in a {}x{} image", shape.1, shape.2);
    (0..count).map(|_| (rng.below(shape.1 - patch + 1), rng.below(shape.2 - patch + 1))).collect()
}

/// One image of shape `out` from the one-logit critic `model` (trained on `cfg.patch`-sided
/// inputs), ascending from `start`, the working image of [`working_shape`]`(out, cfg.pad)`.
/// `rng` draws the windows (and Langevin's noise), so the same seed gives the same image.
/// `on_step` hears the step count after each scoring, before the step; `Break` ends the call
/// with [`crate::stopped`].
///
/// Errors: an output (or working image) smaller than the patch on either side, a start of
/// the wrong length, a critic with more than one logit, and a mean f that is NaN or
/// infinite (the image would be meaningless, and there is no batch to drop it from).
pub fn synthesize_patches(
    model: &dyn Classifier,
    out: Shape3,
    start: &[f32],
    cfg: &PatchConfig,
    rng: &mut Rng,
    device: &Device,
    on_step: crate::OnStep<u32>,
) -> Result<PatchSample> {
    let (c, h, w) = out;
    let p = cfg.patch;
    let (_, hw, ww) = working_shape(out, cfg.pad);
    if p == 0 || cfg.patches_per_step == 0 {
        candle_core::bail!("patch synthesis needs a patch side and windows per step above 0, not {p} and {}", cfg.patches_per_step);
    }
    if h < p || w < p {
        candle_core::bail!("an output of {h}x{w} is smaller than the critic's {p}x{p} patch");
    }
    if hw < p || ww < p {
        candle_core::bail!("a working image of {hw}x{ww} is smaller than the critic's {p}x{p} patch");
    }
    let len = c * hw * ww;
    if start.len() != len {
        candle_core::bail!("a start of {} values for a {c}x{hw}x{ww} working image ({len} values)", start.len());
    }
    let n = cfg.patches_per_step;
    let plane = hw * ww;
    let per_patch = c * p * p;
    let mut x = start.to_vec();
    let (mut m, mut v) = (vec![0f32; len], vec![0f32; len]);
    // Updates each pixel has had (Adam's bias correction).
    let mut updates = vec![0u32; plane];
    let mut step: u32 = 0;
    loop {
        let at = patch_positions((c, hw, ww), p, n, rng);
        let mut batch = Vec::with_capacity(n * per_patch);
        for &(top, left) in &at {
            for ch in 0..c {
                for dy in 0..p {
                    let row = ch * plane + (top + dy) * ww + left;
                    batch.extend_from_slice(&x[row..row + p]);
                }
            }
        }
        let input = Var::from_vec(batch, (n, c, p, p), device)?;
        let logits = model.forward_mode(input.as_tensor(), Mode::Frozen)?;
        if logits.dims() != [n, 1] {
            candle_core::bail!("patch synthesis needs a one-logit critic: {n} patches gave logits of shape {:?}", logits.dims());
        }
        let f = logits.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        let mean_f = (f.iter().map(|&v| v as f64).sum::<f64>() / n as f64) as f32;
        if !mean_f.is_finite() {
            candle_core::bail!("the critic's mean f over the patches is {mean_f} at step {step}");
        }
        let reached = cfg.threshold.is_some_and(|t| mean_f as f64 >= t);
        if on_step(step).is_break() {
            return Err(crate::stopped());
        }
        if reached || step >= cfg.max_steps {
            let mut image = Vec::with_capacity(c * h * w);
            for ch in 0..c {
                for y in 0..h {
                    let row = ch * plane + (y + cfg.pad) * ww + cfg.pad;
                    image.extend_from_slice(&x[row..row + w]);
                }
            }
            return Ok(PatchSample { image, steps: step, final_f: mean_f, stopped_at_threshold: reached });
        }
        // The windows are independent inputs, so one backward of the sum gives each its own
        // gradient.
        let grads = logits.sum_all()?.backward()?;
        let g = grads
            .get(input.as_tensor())
            .ok_or_else(|| candle_core::Error::Msg("no gradient reached the patches".into()))?
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let mut sum = vec![0f32; len];
        let mut covered = vec![0u32; plane];
        for (k, &(top, left)) in at.iter().enumerate() {
            for dy in 0..p {
                for times in &mut covered[(top + dy) * ww + left..][..p] {
                    *times += 1;
                }
            }
            let gk = &g[k * per_patch..(k + 1) * per_patch];
            for ch in 0..c {
                for dy in 0..p {
                    let row = ch * plane + (top + dy) * ww + left;
                    for (s, &gv) in sum[row..row + p].iter_mut().zip(&gk[(ch * p + dy) * p..][..p]) {
                        *s += gv;
                    }
                }
            }
        }
        step += 1;
        for (i, &count) in covered.iter().enumerate() {
            if count == 0 {
                continue;
            }
            updates[i] += 1;
            for ch in 0..c {
                let j = ch * plane + i;
                let g = sum[j] / count as f32;
                let up = match cfg.step {
                    Step::Adam { .. } => cfg.step.adam(cfg.lr, g, &mut m[j], &mut v[j], updates[i]),
                    Step::Sgd => cfg.lr as f32 * g,
                    Step::Langevin { decay } => {
                        // eps anneals with the synthesis' own clock, as in synthesize.rs.
                        let e = cfg.lr * decay.powi(step as i32 - 1);
                        (e / 2.0) as f32 * g + (e.sqrt() * rng.normal()) as f32
                    }
                };
                x[j] = (x[j] + up).clamp(-1.0, 1.0);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_reach_both_ends_of_their_range_and_no_further() {
        let mut rng = Rng::new(4);
        let at = patch_positions((1, 7, 5), 3, 2000, &mut rng);
        let rows: std::collections::BTreeSet<usize> = at.iter().map(|a| a.0).collect();
        let cols: std::collections::BTreeSet<usize> = at.iter().map(|a| a.1).collect();
        assert_eq!(rows.into_iter().collect::<Vec<_>>(), vec![0, 1, 2, 3, 4]);
        assert_eq!(cols.into_iter().collect::<Vec<_>>(), vec![0, 1, 2]);
        assert_eq!(patch_positions((1, 3, 3), 3, 4, &mut rng), vec![(0, 0); 4]);
    }

    #[test]
    fn working_shape_adds_the_border_on_every_side() {
        assert_eq!(working_shape((3, 256, 256), 32), (3, 320, 320));
        assert_eq!(working_shape((1, 6, 5), 0), (1, 6, 5));
    }
}
