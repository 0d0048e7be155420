//! Style transfer with a cascade of patch critics (IGM §5): a = 1 keeps the content, a
//! smaller a buys style with distance, the seed fixes the result, the per-pixel style
//! gradient against finite differences on a small conv net cascade, and bad input.

use stages::candle::{DType, Device, Result, Tensor, Var};
use stages::nn::{Classifier, Mode, Shape3};
use stages::rng::Rng;
use stages::style::{style_gradient, stylize, StyleConfig, Styled};
use stages::synthesize::Step;
use std::ops::ControlFlow;

/// f(x) = w * mean(x) + b, one logit per input (or `k` copies of it).
struct MeanCritic {
    w: f64,
    b: f64,
    k: usize,
}

impl Classifier for MeanCritic {
    fn forward_mode(&self, x: &Tensor, _: Mode) -> Result<Tensor> {
        let f = x.flatten_from(1)?.mean_keepdim(1)?.affine(self.w, self.b)?;
        Tensor::cat(&vec![&f; self.k], 1)
    }
    fn named_vars(&self) -> Vec<(String, Var)> {
        Vec::new()
    }
}

/// f(x) = v . mean_{positions}(tanh(conv3x3(x))) + 0.1, two filters, in f64 (so finite
/// differences are sharp); logits come back in f64.
struct TinyConv {
    k: Var,
    v: Var,
}

impl TinyConv {
    fn new(c: usize, seed: u64) -> Result<Self> {
        let mut rng = Rng::new(seed);
        let k: Vec<f64> = rng.normal_vec(2 * c * 9, 0.0, 0.5).into_iter().map(f64::from).collect();
        let v: Vec<f64> = rng.normal_vec(2, 0.0, 1.0).into_iter().map(f64::from).collect();
        Ok(TinyConv { k: Var::from_vec(k, (2, c, 3, 3), &Device::Cpu)?, v: Var::from_vec(v, (2, 1), &Device::Cpu)? })
    }
}

impl Classifier for TinyConv {
    fn forward_mode(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        let h = x.to_dtype(DType::F64)?.conv2d(&mode.param(&self.k), 0, 1, 1, 1)?.tanh()?;
        h.flatten_from(2)?.mean(2)?.matmul(&mode.param(&self.v))? + 0.1
    }
    fn named_vars(&self) -> Vec<(String, Var)> {
        vec![("k".into(), self.k.clone()), ("v".into(), self.v.clone())]
    }
}

fn adam() -> Step {
    Step::Adam { beta1: 0.9, beta2: 0.99, eps: 1e-8 }
}

fn config(a: f64, patch: usize, n: usize, steps: u32) -> StyleConfig {
    StyleConfig { a, patch, patches_per_step: n, step: adam(), lr: 0.01, steps }
}

fn run(critics: &[&dyn Classifier], content: &[f32], shape: Shape3, cfg: &StyleConfig, seed: u64) -> Result<Styled> {
    stylize(critics, content, shape, cfg, &mut Rng::new(seed), &Device::Cpu, &mut stages::keep_going)
}

fn content(len: usize, seed: u64) -> Vec<f32> {
    Rng::new(seed).uniform_vec(len, -0.5, 0.5)
}

/// The `p`-sided windows of `image` at `at`, one batch, f64.
fn windows(image: &[f64], (c, h, w): Shape3, p: usize, at: &[(usize, usize)]) -> Result<Tensor> {
    let mut batch = Vec::new();
    for &(top, left) in at {
        for ch in 0..c {
            for y in top..top + p {
                batch.extend_from_slice(&image[(ch * h + y) * w + left..][..p]);
            }
        }
    }
    Tensor::from_vec(batch, (at.len(), c, p, p), &Device::Cpu)
}

/// Σ over the windows at `at` and over the critics of f, in f64.
fn total_f(critics: &[&dyn Classifier], image: &[f64], shape: Shape3, p: usize, at: &[(usize, usize)]) -> Result<f64> {
    let x = windows(image, shape, p, at)?;
    let mut sum = 0.0;
    for critic in critics {
        sum += critic.forward_mode(&x, Mode::Frozen)?.to_dtype(DType::F64)?.sum_all()?.to_scalar::<f64>()?;
    }
    Ok(sum)
}

/// Every window position of an image of `shape`.
fn all_windows((_, h, w): Shape3, p: usize) -> Vec<(usize, usize)> {
    (0..=h - p).flat_map(|t| (0..=w - p).map(move |l| (t, l))).collect()
}

#[test]
fn a_content_weight_of_one_keeps_the_content() -> Result<()> {
    let shape = (2, 9, 8);
    let c = content(2 * 9 * 8, 1);
    let (mean, conv) = (MeanCritic { w: 4.0, b: 0.0, k: 1 }, TinyConv::new(2, 3)?);
    for step in [adam(), Step::Sgd] {
        let s = run(&[&mean, &conv], &c, shape, &StyleConfig { step, lr: 0.1, ..config(1.0, 4, 10, 10) }, 5)?;
        assert_eq!((s.steps, s.distance), (10, 0.0));
        assert_eq!(s.image, c, "{step:?}");
    }
    // and a < 1 does move it, on the same draw
    let s = run(&[&mean, &conv], &c, shape, &config(0.99, 4, 10, 10), 5)?;
    assert!(s.distance > 0.0 && s.image != c);
    Ok(())
}

#[test]
fn a_smaller_content_weight_buys_style_with_distance() -> Result<()> {
    let shape = (1, 12, 12);
    let p = 4;
    let c = content(144, 2);
    // d f / d x = 4 / 16 per pixel: against a ||x - c|| with a unit direction of 1/12 per
    // pixel, the style wins at a = 0.3 and loses at a = 0.9
    let critic = MeanCritic { w: 4.0, b: -0.5, k: 1 };
    let grid = all_windows(shape, p);
    let f = |img: &[f32]| -> Result<f64> { Ok(total_f(&[&critic], &img.iter().map(|&v| v as f64).collect::<Vec<_>>(), shape, p, &grid)? / grid.len() as f64) };
    let before = f(&c)?;
    let mut out = Vec::new();
    for a in [0.9, 0.3] {
        let s = run(&[&critic], &c, shape, &config(a, p, 20, 40), 7)?;
        let d = c.iter().zip(&s.image).map(|(x, y)| ((x - y) as f64).powi(2)).sum::<f64>().sqrt();
        assert!((d - s.distance as f64).abs() < 1e-5, "reported distance {} against {d}", s.distance);
        assert!(s.image.iter().all(|v| (-1.0..=1.0).contains(v)));
        out.push((a, f(&s.image)?, s.distance));
    }
    let [(_, f_hi, d_hi), (_, f_lo, d_lo)] = out[..] else { unreachable!() };
    assert!(f_lo > before + 0.5, "mean f over all windows: content {before}, a = 0.3 {f_lo}");
    assert!(d_lo > 3.0 * d_hi && d_hi > 0.0, "distance to the content: a = 0.9 {d_hi}, a = 0.3 {d_lo}");
    assert!(f_lo > f_hi, "a = 0.9 {f_hi}, a = 0.3 {f_lo}");
    Ok(())
}

#[test]
fn the_seed_fixes_the_styled_image() -> Result<()> {
    let shape = (2, 10, 9);
    let c = content(2 * 10 * 9, 3);
    let (one, two) = (TinyConv::new(2, 1)?, TinyConv::new(2, 2)?);
    let critics: [&dyn Classifier; 2] = [&one, &two];
    let cfg = config(0.3, 5, 8, 6);
    let mut heard = Vec::new();
    let a = stylize(&critics, &c, shape, &cfg, &mut Rng::new(11), &Device::Cpu, &mut |k| {
        heard.push(k);
        ControlFlow::Continue(())
    })?;
    assert_eq!(heard, (0..=6).collect::<Vec<u32>>());
    assert_eq!(a, run(&critics, &c, shape, &cfg, 11)?);
    assert_ne!(a.image, run(&critics, &c, shape, &cfg, 12)?.image);
    assert_ne!(a.image, c);
    // Langevin's noise comes from the same rng
    let langevin = StyleConfig { step: Step::Langevin { decay: 0.9 }, ..cfg };
    let l = run(&critics, &c, shape, &langevin, 11)?;
    assert_eq!(l, run(&critics, &c, shape, &langevin, 11)?);
    assert_ne!(l.image, a.image);
    Ok(())
}

#[test]
fn the_style_gradient_is_the_mean_over_covering_windows_of_the_cascades_gradient() -> Result<()> {
    let shape = (2, 7, 6);
    let (ch, h, w) = shape;
    let p = 4;
    let (one, two) = (TinyConv::new(2, 4)?, TinyConv::new(2, 5)?);
    let critics: [&dyn Classifier; 2] = [&one, &two];
    let image = Rng::new(6).uniform_vec(ch * h * w, -1.0, 1.0);
    // overlapping windows, a repeated one, and pixels no window covers ((4, 0), and
    // columns 0-1 of rows 5-6)
    let at = [(0, 0), (3, 2), (1, 1), (0, 2), (1, 1)];
    let g = style_gradient(&critics, &image, shape, p, &at, &Device::Cpu)?;
    let x: Vec<f64> = image.iter().map(|&v| v as f64).collect();
    let total = total_f(&critics, &x, shape, p, &at)?;
    assert!((g.mean_f as f64 - total / at.len() as f64).abs() < 1e-6, "{} against {}", g.mean_f, total / at.len() as f64);
    let eps = 1e-4;
    let mut uncovered = 0;
    for j in 0..ch * h * w {
        let (y, xx) = ((j / w) % h, j % w);
        let k = at.iter().filter(|&&(t, l)| (t..t + p).contains(&y) && (l..l + p).contains(&xx)).count();
        assert_eq!(g.covered[y * w + xx] as usize, k, "pixel ({y}, {xx})");
        if k == 0 {
            uncovered += 1;
            assert_eq!(g.grad[j], 0.0);
            continue;
        }
        let (mut up, mut down) = (x.clone(), x.clone());
        up[j] += eps;
        down[j] -= eps;
        let fd = (total_f(&critics, &up, shape, p, &at)? - total_f(&critics, &down, shape, p, &at)?) / (2.0 * eps) / k as f64;
        assert!((g.grad[j] as f64 - fd).abs() < 1e-5 * (1.0 + fd.abs()), "value {j} (pixel ({y}, {xx}), {k} windows): {} against {fd}", g.grad[j]);
    }
    assert_eq!(uncovered, 5 * ch);
    Ok(())
}

#[test]
fn bad_style_input_is_an_error_that_says_what() -> Result<()> {
    let err = |r: Result<Styled>| r.expect_err("an error").to_string();
    let critic = MeanCritic { w: 1.0, b: 0.0, k: 1 };
    let e = err(run(&[&critic], &[0.0; 15], (1, 3, 5), &config(0.3, 4, 5, 3), 1));
    assert!(e.contains("3x5") && e.contains("4x4"), "{e}");
    let e = err(run(&[&critic], &[0.0; 15], (1, 5, 3), &config(0.3, 4, 5, 3), 1));
    assert!(e.contains("5x3") && e.contains("4x4"), "{e}");
    let e = err(run(&[&critic], &[0.0; 24], (1, 5, 5), &config(0.3, 4, 5, 3), 1));
    assert!(e.contains("24") && e.contains("25"), "{e}");
    let e = err(run(&[], &[0.0; 25], (1, 5, 5), &config(0.3, 4, 5, 3), 1));
    assert!(e.contains("at least one critic"), "{e}");
    let e = err(run(&[&critic], &[0.0; 25], (1, 5, 5), &config(1.5, 4, 5, 3), 1));
    assert!(e.contains("1.5"), "{e}");
    let two = MeanCritic { w: 1.0, b: 0.0, k: 2 };
    let e = err(run(&[&critic, &two], &[0.0; 25], (1, 5, 5), &config(0.3, 4, 5, 3), 1));
    assert!(e.contains("one-logit"), "{e}");
    let e = style_gradient(&[&critic], &[0.0; 25], (1, 5, 5), 4, &[(0, 0), (2, 1)], &Device::Cpu).expect_err("outside").to_string();
    assert!(e.contains("(2, 1)") && e.contains("outside"), "{e}");
    let stop = stylize(&[&critic], &[0.0; 25], (1, 5, 5), &config(0.3, 4, 5, 9), &mut Rng::new(1), &Device::Cpu, &mut |k| if k == 2 { ControlFlow::Break(()) } else { ControlFlow::Continue(()) });
    assert_eq!(err(stop), stages::stopped().to_string());
    Ok(())
}
