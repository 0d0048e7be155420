//! Style transfer with an IGM texture model (IGM §5, "Style transfer").
//!
//! A cascade of one-logit critics C_1..C_T trained on `patch`-sided windows of a style
//! image is a texture model: ln p_style(x) = Σ_t f_t(x) + const. Style transfer starts at
//! the content image c and descends
//!
//! E(x) = a ||x - c||_2 - (1 - a) ln p_style(x),  a = 0.3 in the paper,
//!
//! trading closeness to the content against how typical of the style every window is.
//!
//! **The style term** is handled as in [`crate::patch`]: at each step, random windows of the
//! current image are forwarded through every critic as one batch, and each pixel's style
//! gradient is the mean, over the windows that cover it, of the gradient of Σ_t f_t. The
//! mean (not the sum) keeps the term's scale independent of how many windows landed on a
//! pixel, so `a` means the same thing at any `patches_per_step`.
//!
//! **No border.** [`crate::patch`] grows a border around its output so that the output's
//! edges are covered about as often as its middle; it can, because the border starts as
//! noise that nothing asks to keep. Here every pixel is the content's: a border would need
//! invented pixels beyond the content that the content term cannot see, and the windows
//! straddling it would score a picture that is not the output. So the windows are drawn
//! inside the image itself (uniform top-left corners, [`crate::patch::patch_positions`]).
//! The price is that a pixel near an edge is covered by fewer positions (d + 1 of `patch`
//! along an axis at distance d < patch from it) and so, with the lazy update below, moves on
//! fewer steps: the edges keep more of the content. For style transfer that errs on the
//! safe side, where for texture synthesis from noise it would leave noise.
//!
//! **The content term** is the paper's true L2 norm, not its square: its gradient is
//! a (x - c) / ||x - c||_2, and 0 where x = c (the smallest subgradient, so at the start the
//! content term does not move the image and a = 1 leaves the content as it is). The norm
//! pulls back with a constant total strength a whatever the distance, so a pixel settles
//! where its style gradient balances its share of that pull; the square would pull in
//! proportion to the distance, which changes what a given `a` means against the paper's
//! 0.3. The norm is over the whole image, so its per-pixel share shrinks as the image grows:
//! `a` is tied to the image size, as in the paper, where all images were one size.
//!
//! **The descent** is [`crate::patch`]'s lazy ascent of -E (the same [`Step`] rules,
//! clipping to [-1, 1]): a pixel that no window covered at a step has no style gradient
//! estimate, so it does not move at that step, content term included, and its optimizer
//! state does not age.

use crate::nn::{Classifier, Shape3};
use crate::patch::{average_over_windows, check_windows, gather_windows, patch_positions, LazyAscent, Scored};
use crate::rng::Rng;
use crate::synthesize::{Step, ADAM_EPS};
use candle_core::{Device, Result};

/// How an image is restyled.
#[derive(Clone, Debug, PartialEq)]
pub struct StyleConfig {
    /// The weight of the content term, in [0, 1]; 1 - a weighs the style.
    pub a: f64,
    /// The side of the square inputs the critics were trained on.
    pub patch: usize,
    /// Windows drawn and forwarded (through every critic) at each step.
    pub patches_per_step: usize,
    pub step: Step,
    pub lr: f64,
    /// Descent steps taken.
    pub steps: u32,
}

impl StyleConfig {
    /// IGM's a = 0.3 on 64x64 windows, 200 a step, with the ascent of patch synthesis
    /// ([`crate::patch::PatchConfig::winn`]: Adam, lr 0.01, betas (0.9, 0.99)).
    pub fn igm(steps: u32) -> Self {
        StyleConfig { a: 0.3, patch: 64, patches_per_step: 200, step: Step::Adam { beta1: 0.9, beta2: 0.99, eps: ADAM_EPS }, lr: 0.01, steps }
    }
}

/// A restyled image and where it ended.
#[derive(Clone, Debug, PartialEq)]
pub struct Styled {
    /// C x H x W, row-major, the content's shape.
    pub image: Vec<f32>,
    /// Descent steps taken.
    pub steps: u32,
    /// The mean over the windows drawn at the last step (scored, not stepped from) of
    /// Σ_t f_t: ln p_style up to its constant, per window.
    pub final_f: f32,
    /// ||image - content||_2.
    pub distance: f32,
}

/// The style term at a fixed set of windows: what one step of [`stylize`] computes.
#[derive(Clone, Debug, PartialEq)]
pub struct StyleGradient {
    /// The mean over the windows of Σ_t f_t.
    pub mean_f: f32,
    /// Per value (C x H x W): the mean, over the windows covering its pixel, of the
    /// gradient of Σ_t f_t of each window; 0 where no window covers it.
    pub grad: Vec<f32>,
    /// How many windows covered each pixel (H x W).
    pub covered: Vec<u32>,
}

/// The errors shared by [`stylize`] and [`style_gradient`].
fn check(critics: &[&dyn Classifier], image: &[f32], (c, h, w): Shape3, p: usize, what: &str) -> Result<()> {
    if critics.is_empty() {
        candle_core::bail!("style transfer needs at least one critic");
    }
    if image.len() != c * h * w {
        candle_core::bail!("{what} of {} values for a {c}x{h}x{w} image ({} values)", image.len(), c * h * w);
    }
    if h < p || w < p {
        candle_core::bail!("{what} of {h}x{w} is smaller than the style critics' {p}x{p} patch");
    }
    Ok(())
}

/// The style term of `image` (of `shape`) at the `patch`-sided windows with top-left
/// corners `at`, through the cascade `critics` (one logit each).
///
/// Errors: no critics or windows, an image of the wrong length or smaller than the patch,
/// a window reaching outside the image, a critic with more than one logit.
pub fn style_gradient(critics: &[&dyn Classifier], image: &[f32], shape: Shape3, patch: usize, at: &[(usize, usize)], device: &Device) -> Result<StyleGradient> {
    check_windows("the style gradient", patch, at.len())?;
    check(critics, image, shape, patch, "an image")?;
    if let Some(&(top, left)) = at.iter().find(|&&(t, l)| t + patch > shape.1 || l + patch > shape.2) {
        candle_core::bail!("a {patch}x{patch} window at ({top}, {left}) reaches outside a {}x{} image", shape.1, shape.2);
    }
    let scored = Scored::new(critics, gather_windows(image, shape, patch, at), (at.len(), shape.0, patch), device, "style transfer")?;
    let (grad, covered) = average_over_windows(&scored.window_gradients()?, shape, patch, at);
    Ok(StyleGradient { mean_f: scored.mean_f, grad, covered })
}

/// ||x - y||_2, accumulated in f64.
fn distance(x: &[f32], y: &[f32]) -> f64 {
    x.iter().zip(y).map(|(&a, &b)| (a as f64 - b as f64).powi(2)).sum::<f64>().sqrt()
}

/// `content` (C x H x W as `shape`, row-major, in [-1, 1], at least `cfg.patch` on each
/// side) restyled by the texture model of the cascade `critics` (each one-logit, trained
/// on `cfg.patch`-sided inputs): `cfg.steps` descent steps on
/// E = a ||x - content||_2 - (1 - a) Σ_t f_t from x = content (see the module doc). `rng`
/// draws the windows (and Langevin's noise), so the same seed gives the same image.
/// `on_step` hears the step count after each scoring, before the step; `Break` ends the
/// call with [`crate::stopped`].
///
/// Errors: no critics, `a` outside [0, 1], a patch side or window count of 0, a content of
/// the wrong length or smaller than the patch, a critic with more than one logit, and a mean
/// Σ_t f_t that is NaN or infinite.
pub fn stylize(critics: &[&dyn Classifier], content: &[f32], shape: Shape3, cfg: &StyleConfig, rng: &mut Rng, device: &Device, on_step: crate::OnStep<u32>) -> Result<Styled> {
    let p = cfg.patch;
    let n = cfg.patches_per_step;
    check_windows("style transfer", p, n)?;
    check(critics, content, shape, p, "a content image")?;
    if !(0.0..=1.0).contains(&cfg.a) {
        candle_core::bail!("style transfer needs a content weight a in [0, 1], not {}", cfg.a);
    }
    let mut x = content.to_vec();
    let mut ascent = LazyAscent::new(cfg.step, cfg.lr, shape);
    let mut step: u32 = 0;
    loop {
        let at = patch_positions(shape, p, n, rng);
        let scored = Scored::new(critics, gather_windows(&x, shape, p, &at), (n, shape.0, p), device, "style transfer")?;
        if !scored.mean_f.is_finite() {
            candle_core::bail!("the critics' mean Σf over the patches is {} at step {step}", scored.mean_f);
        }
        let dist = distance(&x, content);
        if on_step(step).is_break() {
            return Err(crate::stopped());
        }
        if step >= cfg.steps {
            return Ok(Styled { image: x, steps: step, final_f: scored.mean_f, distance: dist as f32 });
        }
        // -dE/dx, for the ascent: (1 - a) times the style gradient, less a (x - c) / ||x - c||
        let (mut g, covered) = average_over_windows(&scored.window_gradients()?, shape, p, &at);
        let pull = if dist > 0.0 { cfg.a / dist } else { 0.0 };
        for ((gj, &xj), &cj) in g.iter_mut().zip(&x).zip(content) {
            *gj = ((1.0 - cfg.a) * *gj as f64 - pull * (xj as f64 - cj as f64)) as f32;
        }
        step += 1;
        ascent.apply(&mut x, &g, &covered, step, rng);
    }
}
