//! Any-size synthesis from a patch critic (WINN §5.2): the per-pixel average of the
//! windows' gradients against a brute force on a linear critic, determinism by seed,
//! ascent of a real WINN net's mean f over an independent grid of windows, the threshold
//! stop, and bad input.

use stages::candle::{Device, Result, Tensor, Var};
use stages::nn::{Arch, Classifier, Mode, NetConfig, Normalization, Shape3};
use stages::patch::{patch_positions, synthesize_patches, working_shape, PatchConfig, PatchEnd, PatchSample, PatchStop};
use stages::rng::Rng;
use stages::synthesize::Step;
use std::ops::ControlFlow;

/// f(x) = sum(w . x) + b on C x p x p inputs, one logit per input (or `k` copies of it).
struct Linear {
    w: Var,
    b: f32,
    k: usize,
}

impl Linear {
    fn new(c: usize, p: usize, seed: u64, k: usize) -> Result<Self> {
        let w = Rng::new(seed).uniform_vec(c * p * p, -0.1, 0.1);
        Ok(Linear { w: Var::from_vec(w, (c * p * p, 1), &Device::Cpu)?, b: 0.25, k })
    }

    fn weights(&self) -> Vec<f32> {
        self.w.as_tensor().flatten_all().unwrap().to_vec1().unwrap()
    }
}

impl Classifier for Linear {
    fn forward_mode(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        let f = (x.flatten_from(1)?.matmul(&mode.param(&self.w))? + self.b as f64)?;
        Tensor::cat(&vec![&f; self.k], 1)
    }
    fn named_vars(&self) -> Vec<(String, Var)> {
        vec![("w".into(), self.w.clone())]
    }
}

fn config(patch: usize, pad: usize, n: usize, step: Step, lr: f64, max_steps: u32) -> PatchConfig {
    PatchConfig { patch, pad, patches_per_step: n, step, lr, max_steps, stop: PatchStop::Steps }
}

fn adam() -> Step {
    Step::Adam { beta1: 0.9, beta2: 0.99, eps: 1e-8 }
}

fn run(model: &dyn Classifier, out: Shape3, start: &[f32], cfg: &PatchConfig, seed: u64) -> Result<PatchSample> {
    synthesize_patches(model, out, start, cfg, &mut Rng::new(seed), &Device::Cpu, &mut stages::keep_going)
}

#[test]
fn one_step_moves_each_pixel_by_the_average_gradient_of_the_patches_covering_it() -> Result<()> {
    let (out, p, pad, n, seed) = ((2, 6, 5), 3, 1, 4, 11);
    let (c, hw, ww) = working_shape(out, pad);
    assert_eq!((hw, ww), (8, 7));
    let net = Linear::new(c, p, 5, 1)?;
    let w = net.weights();
    let mut rng = Rng::new(seed);
    let first = patch_positions((c, hw, ww), p, n, &mut rng);
    let second = patch_positions((c, hw, ww), p, n, &mut rng);
    // brute force: every working pixel, every window
    let mut avg = vec![0f32; c * hw * ww];
    let mut counts = vec![0usize; hw * ww];
    for ch in 0..c {
        for y in 0..hw {
            for x in 0..ww {
                let on: Vec<f32> = first
                    .iter()
                    .filter(|&&(t, l)| (t..t + p).contains(&y) && (l..l + p).contains(&x))
                    .map(|&(t, l)| w[ch * p * p + (y - t) * p + (x - l)])
                    .collect();
                counts[y * ww + x] = on.len();
                if !on.is_empty() {
                    avg[(ch * hw + y) * ww + x] = on.iter().sum::<f32>() / on.len() as f32;
                }
            }
        }
    }
    let in_output = |i: usize| (pad..pad + out.1).contains(&(i / ww)) && (pad..pad + out.2).contains(&(i % ww));
    let output_counts: Vec<usize> = (0..hw * ww).filter(|&i| in_output(i)).map(|i| counts[i]).collect();
    assert!(output_counts.contains(&0) && output_counts.iter().any(|&k| k >= 2), "the draw must leave output pixels uncovered and overlap others: {output_counts:?}");
    let crop = |img: &[f32]| -> Vec<f32> { (0..c * hw * ww).filter(|&j| in_output(j % (hw * ww))).map(|j| img[j]).collect() };

    // SGD, lr 1, from 0, small weights: x1 - x0 is the averaged gradient itself
    let zero = vec![0f32; c * hw * ww];
    let s = run(&net, out, &zero, &config(p, pad, n, Step::Sgd, 1.0, 1), seed)?;
    assert_eq!(s.steps, 1);
    assert_eq!(s.end, PatchEnd::MaxSteps);
    let want = crop(&avg);
    assert_eq!(s.image.len(), want.len());
    for (j, (got, want)) in s.image.iter().zip(&want).enumerate() {
        assert!((got - want).abs() < 1e-6, "value {j}: moved {got}, average gradient {want}");
    }
    // final_f: the mean f over the windows drawn at the scoring step, of the stepped image
    let f = |t: usize, l: usize| -> f32 { w.iter().enumerate().map(|(k, wk)| wk * avg[((k / (p * p)) * hw + t + (k / p) % p) * ww + l + k % p]).sum::<f32>() + 0.25 };
    let mean_f = second.iter().map(|&(t, l)| f(t, l)).sum::<f32>() / n as f32;
    assert!((s.final_f - mean_f).abs() < 1e-5, "final f {} against {mean_f}", s.final_f);

    // Adam's first step is lr * sign(g) on covered pixels; uncovered ones stay where they are
    let start: Vec<f32> = Rng::new(3).uniform_vec(c * hw * ww, -0.5, 0.5);
    let a = run(&net, out, &start, &config(p, pad, n, adam(), 0.01, 1), seed)?;
    for (j, ((got, x0), g)) in a.image.iter().zip(crop(&start)).zip(&want).enumerate() {
        let moved = if *g == 0.0 { 0.0 } else { 0.01 * g.signum() };
        assert!((got - x0 - moved).abs() < 1e-6, "value {j}: {x0} -> {got}, gradient {g}");
    }
    Ok(())
}

/// WINN's Table 5 net, one logit, on 16x16 patches (a narrow copy, for speed).
fn winn_critic(seed: u64) -> Box<dyn Classifier> {
    let cfg = NetConfig { arch: Arch::Winn64, norm: Normalization::Layer, width: 0.125, leaky_slope: 0.2, channels: 3, height: 16, image_width: 16, num_classes: 1, wass_head: false };
    cfg.build(&mut Rng::new(seed), &Device::Cpu).unwrap()
}

fn noise(len: usize, seed: u64) -> Vec<f32> {
    Rng::new(seed).normal_vec(len, 0.0, 0.3).into_iter().map(|v| v.clamp(-1.0, 1.0)).collect()
}

#[test]
fn the_seed_fixes_the_patch_synthesized_image() -> Result<()> {
    let net = winn_critic(1);
    let out = (3, 24, 24);
    let (c, hw, ww) = working_shape(out, 8);
    let start = noise(c * hw * ww, 2);
    let cfg = config(16, 8, 50, adam(), 0.01, 3);
    let a = run(net.as_ref(), out, &start, &cfg, 7)?;
    let b = run(net.as_ref(), out, &start, &cfg, 7)?;
    let other = run(net.as_ref(), out, &start, &cfg, 8)?;
    assert_eq!(a, b);
    assert_ne!(a.image, other.image);
    // Langevin's noise comes from the same rng: still fixed by the seed
    let langevin = PatchConfig { step: Step::Langevin { decay: 0.9 }, ..cfg };
    let l = run(net.as_ref(), out, &start, &langevin, 7)?;
    assert_eq!(l, run(net.as_ref(), out, &start, &langevin, 7)?);
    assert_ne!(l.image, a.image);
    Ok(())
}

/// Mean f over the windows of `image` on a grid of stride 8, forwarded apart from the
/// synthesis.
fn grid_mean_f(net: &dyn Classifier, image: &[f32], (c, h, w): Shape3, p: usize) -> Result<f32> {
    let mut batch = Vec::new();
    let mut n = 0;
    for top in (0..=h - p).step_by(8) {
        for left in (0..=w - p).step_by(8) {
            n += 1;
            for ch in 0..c {
                for y in top..top + p {
                    batch.extend_from_slice(&image[(ch * h + y) * w + left..][..p]);
                }
            }
        }
    }
    let f = net.forward(&Tensor::from_vec(batch, (n, c, p, p), &Device::Cpu)?)?;
    f.mean_all()?.to_scalar::<f32>()
}

#[test]
fn patch_ascent_raises_a_real_critics_mean_f_over_the_output() -> Result<()> {
    let net = winn_critic(3);
    let out = (3, 40, 40);
    let pad = 8;
    let (c, hw, ww) = working_shape(out, pad);
    let start = noise(c * hw * ww, 4);
    let start_out: Vec<f32> = (0..c)
        .flat_map(|ch| (pad..pad + 40).flat_map(move |y| (pad..pad + 40).map(move |x| (ch * hw + y) * ww + x)))
        .map(|j| start[j])
        .collect();
    let cfg = config(16, pad, 100, adam(), 0.01, 20);
    let mut heard = Vec::new();
    let s = synthesize_patches(net.as_ref(), out, &start, &cfg, &mut Rng::new(5), &Device::Cpu, &mut |k| {
        heard.push(k);
        ControlFlow::Continue(())
    })?;
    assert_eq!(heard, (0..=20).collect::<Vec<u32>>());
    assert_eq!((s.steps, s.end), (20, PatchEnd::MaxSteps));
    assert!(s.image.iter().all(|v| (-1.0..=1.0).contains(v)));
    let before = grid_mean_f(net.as_ref(), &start_out, out, 16)?;
    let after = grid_mean_f(net.as_ref(), &s.image, out, 16)?;
    assert!(after > before, "mean f over the output's windows: {before} -> {after}");
    assert!((s.final_f - after).abs() < (after - before).abs(), "the last step's windows score near the grid: {} against {after}", s.final_f);

    // the threshold: stops at the first scoring that reaches it
    let th = (before as f64 + after as f64) / 2.0;
    let t = run(net.as_ref(), out, &start, &PatchConfig { stop: PatchStop::Threshold(th), ..cfg.clone() }, 5)?;
    assert!(t.end == PatchEnd::Threshold && t.final_f as f64 >= th && (1..20).contains(&t.steps), "{} steps to f {} for threshold {th}", t.steps, t.final_f);
    let one_before = run(net.as_ref(), out, &start, &config(16, pad, 100, adam(), 0.01, t.steps - 1), 5)?;
    assert!((one_before.final_f as f64) < th, "already {} one step before, threshold {th}", one_before.final_f);
    Ok(())
}

#[test]
fn bad_patch_input_is_an_error_that_says_what() -> Result<()> {
    let err = |r: Result<PatchSample>| r.expect_err("an error").to_string();
    let small = (3, 40, 40);
    let net = Linear::new(3, 64, 1, 1)?;
    let (c, hw, ww) = working_shape(small, 32);
    let e = err(run(&net, small, &vec![0.0; c * hw * ww], &PatchConfig::winn(5, PatchStop::Steps), 1));
    assert!(e.contains("40x40") && e.contains("64x64"), "{e}");

    let net = Linear::new(1, 3, 1, 1)?;
    let out = (1, 6, 5);
    let e = err(run(&net, out, &[0.0; 42], &config(3, 1, 4, Step::Sgd, 1.0, 1), 1));
    assert!(e.contains("42") && e.contains("56"), "{e}");

    let two = Linear::new(1, 3, 1, 2)?;
    let e = err(run(&two, out, &[0.0; 56], &config(3, 1, 4, Step::Sgd, 1.0, 1), 1));
    assert!(e.contains("one-logit"), "{e}");

    let stop = synthesize_patches(&net, out, &[0.0; 56], &config(3, 1, 4, Step::Sgd, 1.0, 9), &mut Rng::new(1), &Device::Cpu, &mut |k| {
        if k == 2 {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    });
    assert_eq!(err(stop), stages::stopped().to_string());
    Ok(())
}
