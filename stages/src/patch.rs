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
//!
//! When to stop is a [`PatchStop`]: after `max_steps` steps, once a step's mean f reaches a
//! threshold (WINN: a threshold per sample), or IGM's texture rule, once the mean patch is
//! classified positive over a sliding window of recent steps (the per-step mean f, averaged
//! over the last few scorings, above 0: one lucky draw of windows does not end it).
//!
//! The window drawing, gathering, gradient averaging and lazy ascent are shared with
//! [`crate::style`], which descends a different objective over the same windows.

use crate::nn::{Classifier, Mode, Shape3};
use crate::rng::Rng;
use crate::synthesize::{Step, ADAM_EPS};
use candle_core::{DType, Device, Result, Tensor, Var};
use std::collections::VecDeque;

/// When patch synthesis stops; every rule also stops at `max_steps`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum PatchStop {
    /// Always run `max_steps` steps.
    Steps,
    /// WINN: once the mean f over a step's windows reaches this.
    Threshold(f64),
    /// IGM's texture rule: once the mean, over the last `steps` scorings, of each scoring's
    /// mean f over its windows is above 0 (the mean patch is classified positive over a
    /// sliding window). Never before `steps` scorings (step `steps - 1`, the first scoring
    /// being step 0); `steps` must be at least 1.
    Window { steps: u32 },
}

/// Which rule ended a patch synthesis.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum PatchEnd {
    /// It ran `max_steps` steps (its [`PatchStop`] did not fire first).
    MaxSteps,
    /// [`PatchStop::Threshold`] fired.
    Threshold,
    /// [`PatchStop::Window`] fired.
    Window,
}

impl PatchEnd {
    /// The stop reason as the sample tables spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            PatchEnd::MaxSteps => "max_steps",
            PatchEnd::Threshold => "threshold",
            PatchEnd::Window => "window",
        }
    }
}

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
    /// When to stop before `max_steps`.
    pub stop: PatchStop,
}

impl PatchConfig {
    /// WINN §5.2: 64x64 windows, 200 a step, a 32-pixel border, with the ascent of WINN's
    /// synthesis (Adam, lr 0.01, betas (0.9, 0.99)).
    pub fn winn(max_steps: u32, stop: PatchStop) -> Self {
        PatchConfig {
            patch: 64,
            pad: 32,
            patches_per_step: 200,
            step: Step::Adam { beta1: 0.9, beta2: 0.99, eps: ADAM_EPS },
            lr: 0.01,
            max_steps,
            stop,
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
    /// Which rule stopped it: the configured [`PatchStop`], or `max_steps`.
    pub end: PatchEnd,
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

/// The error for a patch side or a window count of 0 (`what` names the caller).
pub(crate) fn check_windows(what: &str, patch: usize, per_step: usize) -> Result<()> {
    if patch == 0 || per_step == 0 {
        candle_core::bail!("{what} needs a patch side and windows per step above 0, not {patch} and {per_step}");
    }
    Ok(())
}

/// The windows of `x` (an image of `shape`) with top-left corners `at`, as one
/// N x C x p x p batch, row-major, in the order of `at`.
pub(crate) fn gather_windows(x: &[f32], (c, h, w): Shape3, p: usize, at: &[(usize, usize)]) -> Vec<f32> {
    let mut batch = Vec::with_capacity(at.len() * c * p * p);
    for &(top, left) in at {
        for ch in 0..c {
            for dy in 0..p {
                let row = (ch * h + top + dy) * w + left;
                batch.extend_from_slice(&x[row..row + p]);
            }
        }
    }
    batch
}

/// A batch of windows forwarded through a cascade of one-logit critics, kept for the
/// backward of the sum of their f.
pub(crate) struct Scored {
    input: Var,
    logits: Vec<Tensor>,
    /// Mean over the windows of the sum over the critics of f (accumulated in f64).
    pub mean_f: f32,
}

impl Scored {
    /// Forwards `batch` (`n` windows of `c` x `p` x `p`) through every critic, parameters
    /// frozen. `what` names the caller in the one-logit error.
    pub(crate) fn new(critics: &[&dyn Classifier], batch: Vec<f32>, (n, c, p): (usize, usize, usize), device: &Device, what: &str) -> Result<Scored> {
        let input = Var::from_vec(batch, (n, c, p, p), device)?;
        let mut total = vec![0f64; n];
        let mut logits = Vec::with_capacity(critics.len());
        for model in critics {
            let l = model.forward_mode(input.as_tensor(), Mode::Frozen)?;
            if l.dims() != [n, 1] {
                candle_core::bail!("{what} needs a one-logit critic: {n} patches gave logits of shape {:?}", l.dims());
            }
            for (t, f) in total.iter_mut().zip(l.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?) {
                *t += f as f64;
            }
            logits.push(l);
        }
        let mean_f = (total.iter().sum::<f64>() / n as f64) as f32;
        Ok(Scored { input, logits, mean_f })
    }

    /// The gradient of each window's sum of f with respect to that window (N x C x p x p,
    /// row-major). The windows are independent inputs, so one backward of the sum over
    /// windows and critics gives each its own gradient (in the first critic's dtype).
    pub(crate) fn window_gradients(&self) -> Result<Vec<f32>> {
        let mut total = self.logits[0].sum_all()?;
        for l in &self.logits[1..] {
            total = (&total + l.sum_all()?.to_dtype(total.dtype())?)?;
        }
        let grads = total.backward()?;
        grads
            .get(self.input.as_tensor())
            .ok_or_else(|| candle_core::Error::Msg("no gradient reached the patches".into()))?
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()
    }
}

/// Each value's mean, over the windows at `at` that cover it, of those windows' gradients
/// `g` (as [`Scored::window_gradients`] lays them out), for an image of `shape`; 0 where no
/// window covers it. Also how many windows covered each pixel (H x W).
pub(crate) fn average_over_windows(g: &[f32], (c, h, w): Shape3, p: usize, at: &[(usize, usize)]) -> (Vec<f32>, Vec<u32>) {
    let plane = h * w;
    let per_patch = c * p * p;
    let mut sum = vec![0f32; c * plane];
    let mut covered = vec![0u32; plane];
    for (k, &(top, left)) in at.iter().enumerate() {
        for dy in 0..p {
            for times in &mut covered[(top + dy) * w + left..][..p] {
                *times += 1;
            }
        }
        let gk = &g[k * per_patch..(k + 1) * per_patch];
        for ch in 0..c {
            for dy in 0..p {
                let row = ch * plane + (top + dy) * w + left;
                for (s, &gv) in sum[row..row + p].iter_mut().zip(&gk[(ch * p + dy) * p..][..p]) {
                    *s += gv;
                }
            }
        }
    }
    for (i, &count) in covered.iter().enumerate() {
        if count > 0 {
            for ch in 0..c {
                sum[ch * plane + i] /= count as f32;
            }
        }
    }
    (sum, covered)
}

/// The lazy ascent of an image: a [`Step`] rule per value, moving only the pixels a step's
/// windows covered, with Adam's state and bias correction per pixel.
pub(crate) struct LazyAscent {
    step: Step,
    lr: f64,
    channels: usize,
    m: Vec<f32>,
    v: Vec<f32>,
    /// Updates each pixel has had (Adam's bias correction).
    updates: Vec<u32>,
}

impl LazyAscent {
    pub(crate) fn new(step: Step, lr: f64, (c, h, w): Shape3) -> Self {
        LazyAscent { step, lr, channels: c, m: vec![0.0; c * h * w], v: vec![0.0; c * h * w], updates: vec![0; h * w] }
    }

    /// Moves every value of each pixel with `covered` above 0 up along `g` (per value) and
    /// clips it to [-1, 1]. `clock` is the synthesis' step, counted from 1 (Langevin's
    /// annealing); Langevin's noise is drawn from `rng`, pixel by pixel, channel within.
    pub(crate) fn apply(&mut self, x: &mut [f32], g: &[f32], covered: &[u32], clock: u32, rng: &mut Rng) {
        let plane = covered.len();
        for (i, &count) in covered.iter().enumerate() {
            if count == 0 {
                continue;
            }
            self.updates[i] += 1;
            for ch in 0..self.channels {
                let j = ch * plane + i;
                let up = match self.step {
                    Step::Adam { .. } => self.step.adam(self.lr, g[j], &mut self.m[j], &mut self.v[j], self.updates[i]),
                    Step::Sgd => self.lr as f32 * g[j],
                    Step::Langevin { decay } => {
                        // eps anneals with the synthesis' own clock, as in synthesize.rs.
                        let e = self.lr * decay.powi(clock as i32 - 1);
                        (e / 2.0) as f32 * g[j] + (e.sqrt() * rng.normal()) as f32
                    }
                };
                x[j] = (x[j] + up).clamp(-1.0, 1.0);
            }
        }
    }
}

/// One image of shape `out` from the one-logit critic `model` (trained on `cfg.patch`-sided
/// inputs), ascending from `start`, the working image of [`working_shape`]`(out, cfg.pad)`.
/// `rng` draws the windows (and Langevin's noise), so the same seed gives the same image.
/// `on_step` hears the step count after each scoring, before the step; `Break` ends the call
/// with [`crate::stopped`].
///
/// Errors: an output (or working image) smaller than the patch on either side, a start of
/// the wrong length, a critic with more than one logit, a [`PatchStop::Window`] of 0 steps,
/// and a mean f that is NaN or infinite (the image would be meaningless, and there is no
/// batch to drop it from).
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
    let work = working_shape(out, cfg.pad);
    let (_, hw, ww) = work;
    check_windows("patch synthesis", p, cfg.patches_per_step)?;
    if h < p || w < p {
        candle_core::bail!("an output of {h}x{w} is smaller than the critic's {p}x{p} patch");
    }
    if hw < p || ww < p {
        candle_core::bail!("a working image of {hw}x{ww} is smaller than the critic's {p}x{p} patch");
    }
    if cfg.stop == (PatchStop::Window { steps: 0 }) {
        candle_core::bail!("a sliding-window stop needs a window of at least 1 step, not 0");
    }
    let len = c * hw * ww;
    if start.len() != len {
        candle_core::bail!("a start of {} values for a {c}x{hw}x{ww} working image ({len} values)", start.len());
    }
    let n = cfg.patches_per_step;
    let mut x = start.to_vec();
    let mut ascent = LazyAscent::new(cfg.step, cfg.lr, work);
    // The last scorings' mean f, for the sliding window.
    let mut recent: VecDeque<f64> = VecDeque::new();
    let mut step: u32 = 0;
    loop {
        let at = patch_positions(work, p, n, rng);
        let scored = Scored::new(&[model], gather_windows(&x, work, p, &at), (n, c, p), device, "patch synthesis")?;
        let mean_f = scored.mean_f;
        if !mean_f.is_finite() {
            candle_core::bail!("the critic's mean f over the patches is {mean_f} at step {step}");
        }
        let end = match cfg.stop {
            PatchStop::Steps => None,
            PatchStop::Threshold(t) => (mean_f as f64 >= t).then_some(PatchEnd::Threshold),
            PatchStop::Window { steps } => {
                recent.push_back(mean_f as f64);
                if recent.len() > steps as usize {
                    recent.pop_front();
                }
                // the sum's sign is the mean's
                (recent.len() == steps as usize && recent.iter().sum::<f64>() > 0.0).then_some(PatchEnd::Window)
            }
        };
        if on_step(step).is_break() {
            return Err(crate::stopped());
        }
        if end.is_some() || step >= cfg.max_steps {
            let mut image = Vec::with_capacity(c * h * w);
            for ch in 0..c {
                for y in 0..h {
                    let row = (ch * hw + y + cfg.pad) * ww + cfg.pad;
                    image.extend_from_slice(&x[row..row + w]);
                }
            }
            return Ok(PatchSample { image, steps: step, final_f: mean_f, end: end.unwrap_or(PatchEnd::MaxSteps) });
        }
        let (g, covered) = average_over_windows(&scored.window_gradients()?, work, p, &at);
        step += 1;
        ascent.apply(&mut x, &g, &covered, step, rng);
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

    /// f(x) = w * mean(x) + b, one logit per input.
    struct MeanCritic {
        w: f64,
        b: f64,
    }

    impl Classifier for MeanCritic {
        fn forward_mode(&self, x: &Tensor, _: Mode) -> Result<Tensor> {
            x.flatten_from(1)?.mean_keepdim(1)?.affine(self.w, self.b)
        }
        fn named_vars(&self) -> Vec<(String, Var)> {
            Vec::new()
        }
    }

    /// A 1x2x2 image, one 2x2 window (so every step covers every pixel), SGD lr 0.4 on
    /// f = mean(x) + b from x = -1: each pixel's gradient is 1/4, so scoring k sees
    /// x = -1 + 0.1 k and f_k = 0.1 k - 1 + b, and heard lists the scorings.
    fn ramp(b: f64, stop: PatchStop, max_steps: u32) -> (PatchSample, Vec<u32>) {
        let cfg = PatchConfig { patch: 2, pad: 0, patches_per_step: 3, step: Step::Sgd, lr: 0.4, max_steps, stop };
        let mut heard = Vec::new();
        let s = synthesize_patches(&MeanCritic { w: 1.0, b }, (1, 2, 2), &[-1.0; 4], &cfg, &mut Rng::new(1), &Device::Cpu, &mut |k| {
            heard.push(k);
            std::ops::ControlFlow::Continue(())
        })
        .unwrap();
        (s, heard)
    }

    /// The first k at which the mean of f_{k-steps+1..=k} is above 0, f_k = 0.1 k - 1 + b.
    fn first_positive_window(b: f64, steps: u32) -> u32 {
        let f = |k: u32| 0.1 * k as f64 - 1.0 + b;
        (steps - 1..).find(|&k| (k + 1 - steps..=k).map(f).sum::<f64>() > 0.0).unwrap()
    }

    #[test]
    fn the_window_rule_stops_at_the_first_positive_sliding_mean() {
        for (steps, want) in [(4, 12), (5, 13)] {
            // f_k = 0.1 k - 1.02: window sums -0.28 | 0.12 at k = 11 | 12 for 4 scorings,
            // -0.1 | 0.4 at k = 12 | 13 for 5; a window one longer or shorter stops at the
            // other one's step, a mean over all scorings much later.
            assert_eq!(first_positive_window(-0.02, steps), want);
            let (s, heard) = ramp(-0.02, PatchStop::Window { steps }, 40);
            assert_eq!((s.steps, s.end), (want, PatchEnd::Window), "window of {steps}");
            assert_eq!(heard, (0..=want).collect::<Vec<_>>());
            assert!((s.final_f as f64 - (0.1 * want as f64 - 1.02)).abs() < 1e-5, "{}", s.final_f);
        }
        // positive from the first scoring: still not before `steps` scorings
        for steps in [1, 3, 6] {
            let (s, heard) = ramp(1.5, PatchStop::Window { steps }, 40);
            assert_eq!((s.steps, s.end), (steps - 1, PatchEnd::Window));
            assert_eq!(heard.len(), steps as usize);
        }
        // max_steps comes first; the other rules on the same ramp
        let s = ramp(-0.02, PatchStop::Window { steps: 4 }, 9).0;
        assert_eq!((s.steps, s.end), (9, PatchEnd::MaxSteps));
        let s = ramp(-0.02, PatchStop::Steps, 15).0;
        assert_eq!((s.steps, s.end), (15, PatchEnd::MaxSteps));
        let s = ramp(-0.02, PatchStop::Threshold(0.25), 40).0;
        assert_eq!((s.steps, s.end), (13, PatchEnd::Threshold));
    }

    #[test]
    fn a_window_of_no_steps_is_an_error() {
        let cfg = PatchConfig { patch: 2, pad: 0, patches_per_step: 1, step: Step::Sgd, lr: 0.4, max_steps: 5, stop: PatchStop::Window { steps: 0 } };
        let e = synthesize_patches(&MeanCritic { w: 1.0, b: 0.0 }, (1, 2, 2), &[0.0; 4], &cfg, &mut Rng::new(1), &Device::Cpu, &mut crate::keep_going).unwrap_err();
        assert!(e.to_string().contains("at least 1 step"), "{e}");
    }

    #[test]
    fn working_shape_adds_the_border_on_every_side() {
        assert_eq!(working_shape((3, 256, 256), 32), (3, 320, 320));
        assert_eq!(working_shape((1, 6, 5), 0), (1, 6, 5));
    }
}
