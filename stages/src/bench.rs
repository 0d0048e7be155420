//! The throughput workloads of `pipe bench`, on the same code paths the stages use:
//! a training step ([`crate::train::train_epoch`]), a WINN critic step with the gradient
//! penalty (the same function with [`Objective::Critic`]), a synthesis step
//! ([`crate::synthesize::synthesize`]) and FGSM ([`crate::attack::fgsm`]), on CNN4,
//! ResNet-32 (batch or layer norm) and the WINN Table 5 net.

use crate::attack::fgsm;
use crate::loss::Objective;
use crate::nn::{Classifier, Cnn4, Cnn4Config, NormKind, ResNet, ResNetConfig, Winn64, Winn64Config};
use crate::optim::{Adam, Optimizer, SgdMomentum};
use crate::rng::Rng;
use crate::synthesize::{synthesize, Step, StopRule, SynthesisConfig, Target};
use crate::train::{train_epoch, TrainSet};
use candle_core::{Device, Result};
use std::time::Instant;

pub struct Workload {
    pub name: &'static str,
    /// What one item is: an image, or one synthesis step of one image.
    pub unit: &'static str,
    pub batch: usize,
    /// Floating-point operations per item (multiply-add = 2), from the net's geometry.
    pub flops_per_item: f64,
    /// Runs some steps; returns the items done.
    run: Box<dyn FnMut() -> Result<usize>>,
}

impl Workload {
    /// Runs some steps once; returns the items done (for fixed-work measurements).
    pub fn run_once(&mut self) -> Result<usize> {
        (self.run)()
    }
}

/// Items per second over at least `seconds`, after one warm-up call.
pub fn measure(w: &mut Workload, seconds: f64) -> Result<f64> {
    (w.run)()?;
    measure_warm(w, seconds)
}

/// Items per second over at least `seconds` of a workload already warmed up.
pub fn measure_warm(w: &mut Workload, seconds: f64) -> Result<f64> {
    let t = Instant::now();
    let mut items = 0;
    while t.elapsed().as_secs_f64() < seconds {
        items += (w.run)()?;
    }
    Ok(items as f64 / t.elapsed().as_secs_f64())
}

/// The machine's single-precision GEMM rate (GFLOP/s) with the same kernels and threads:
/// the best of a dozen 1536^3 products.
pub fn sgemm_gflops() -> f64 {
    let n = 1536;
    let a = Rng::new(1).uniform_vec(n * n, -1.0, 1.0);
    let b = Rng::new(2).uniform_vec(n * n, -1.0, 1.0);
    let mut c = vec![0f32; n * n];
    let mut best = f64::MAX;
    for _ in 0..12 {
        let t = Instant::now();
        // SAFETY: all three buffers hold n*n floats, row-major, and do not alias.
        unsafe {
            gemm::gemm(n, n, n, c.as_mut_ptr(), 1, n as isize, false, a.as_ptr(), 1, n as isize, b.as_ptr(), 1, n as isize, 0.0, 1.0, false, false, false, gemm::Parallelism::Rayon(0));
        }
        best = best.min(t.elapsed().as_secs_f64());
    }
    2.0 * (n as f64).powi(3) / best / 1e9
}

fn cnn4() -> Result<Cnn4> {
    Cnn4::new(Cnn4Config::mnist(10, 1.0, 0.2), &mut Rng::new(0), &Device::Cpu)
}

fn images(n: usize, d: usize, seed: u64) -> (Vec<f32>, Vec<u32>) {
    let mut r = Rng::new(seed);
    let x = r.uniform_vec(n * d, -1.0, 1.0);
    let y = (0..n).map(|_| r.below(10) as u32).collect();
    (x, y)
}

fn train_workload(name: &'static str, net: Box<dyn Classifier>, shape: (usize, usize, usize), batch: usize, steps: usize, fwd_flops: f64) -> Workload {
    train_with_negatives(name, net, shape, batch, steps, fwd_flops, 0, false)
}

/// Training on `batch * steps` images of which `negatives` are pseudo-negatives, with or
/// without counting draws for lineage (the pair measures what the counting costs).
#[allow(clippy::too_many_arguments)]
fn train_with_negatives(name: &'static str, net: Box<dyn Classifier>, shape: (usize, usize, usize), batch: usize, steps: usize, fwd_flops: f64, negatives: usize, count_draws: bool) -> Workload {
    let d = shape.0 * shape.1 * shape.2;
    let (x, y) = images(batch * steps - negatives, d, 3);
    let (nx, ny) = images(negatives, d, 6);
    let mut opt = SgdMomentum::new(0.01, 0.9);
    let mut rng = Rng::new(4);
    Workload {
        name,
        unit: "image",
        batch,
        // forward, input gradient and weight gradient: about three forwards
        flops_per_item: 3.0 * fwd_flops,
        run: Box::new(move || {
            let set = TrainSet { shape, real_x: &x, real_y: &y, neg_x: &nx, neg_y: &ny, neg_weights: None, neg_crop: None, augment_pad: 0, count_draws };
            train_epoch(net.as_ref(), &mut opt, &set, batch, Objective::Softmax { alpha: 0.5 }, &mut rng, &Device::Cpu, &mut crate::keep_going)?;
            Ok(y.len() + ny.len())
        }),
    }
}

/// WINN critic steps (Eq. 5, lambda 10, Adam as in the paper) on a one-logit net: each
/// batch is batch/2 positives and as many pseudo-negatives, and the penalty's inner
/// backward pass is differentiated again.
fn critic_workload(name: &'static str, net: Box<dyn Classifier>, shape: (usize, usize, usize), batch: usize, steps: usize, fwd_flops: f64) -> Workload {
    let d = shape.0 * shape.1 * shape.2;
    let half = batch / 2;
    let (x, y) = images(half * steps, d, 7);
    let (nx, ny) = images(half * steps, d, 8);
    let weights = vec![1.0; ny.len()];
    let mut opt = Adam::new(1e-4, 0.0, 0.9, 1e-8);
    let mut rng = Rng::new(9);
    Workload {
        name,
        unit: "image",
        batch,
        // forward on the batch, forward + input gradient on the interpolates, then the
        // backward of all of it (second order through the input gradient): about 8 forwards
        flops_per_item: 8.0 * fwd_flops,
        run: Box::new(move || {
            let set = TrainSet { shape, real_x: &x, real_y: &y, neg_x: &nx, neg_y: &ny, neg_weights: Some(&weights), neg_crop: None, augment_pad: 0, count_draws: false };
            train_epoch(net.as_ref(), &mut opt as &mut dyn Optimizer, &set, batch, Objective::Critic { lambda: crate::critic::LAMBDA }, &mut rng, &Device::Cpu, &mut crate::keep_going)?;
            Ok(y.len() + ny.len())
        }),
    }
}

/// Synthesis steps (Adam on the inputs, weights frozen) of `batch` images of `shape`.
fn synthesis_workload(name: &'static str, net: Box<dyn Classifier>, shape: (usize, usize, usize), batch: usize, fwd_flops: f64) -> Workload {
    let steps = 10;
    let targets: Vec<Target> = (0..batch).map(|i| Target { class: (i % 10) as u32, seed: i as u64 }).collect();
    let cfg = SynthesisConfig { binary: false, step: Step::Adam { beta1: 0.5, beta2: 0.999, eps: 1e-8 }, lr: 0.01, max_steps: steps, init_std: 0.3, batch_size: batch, stop: StopRule::Steps };
    Workload {
        name,
        unit: "image-step",
        batch,
        flops_per_item: 2.0 * fwd_flops,
        run: Box::new(move || {
            synthesize(net.as_ref(), shape, &targets, &cfg, &Device::Cpu, &mut crate::keep_going)?;
            Ok(targets.len() * steps as usize)
        }),
    }
}

/// One FGSM step (forward and input gradient) on `batch` images of `shape`.
fn fgsm_workload(name: &'static str, net: Box<dyn Classifier>, shape: (usize, usize, usize), batch: usize, fwd_flops: f64) -> Workload {
    let (x, y) = images(batch, shape.0 * shape.1 * shape.2, 5);
    Workload {
        name,
        unit: "image",
        batch,
        flops_per_item: 2.0 * fwd_flops,
        run: Box::new(move || {
            fgsm(net.as_ref(), &x, &y, shape, 0.125, -1.0, 1.0, &Device::Cpu)?;
            Ok(y.len())
        }),
    }
}

fn resnet32(norm: NormKind, classes: usize) -> Result<(Box<dyn Classifier>, f64)> {
    let cfg = ResNetConfig { norm, ..ResNetConfig::resnet32(classes) };
    let flops = cfg.forward_flops();
    Ok((Box::new(ResNet::new(cfg, &mut Rng::new(0), &Device::Cpu)?), flops))
}

fn cnn4_ln_critic() -> Result<(Box<dyn Classifier>, f64)> {
    let cfg = Cnn4Config { norm: Some(NormKind::Layer), ..Cnn4Config::mnist(1, 1.0, 0.2) };
    let flops = cfg.forward_flops();
    Ok((Box::new(Cnn4::new(cfg, &mut Rng::new(0), &Device::Cpu)?), flops))
}

fn winn64() -> Result<(Box<dyn Classifier>, f64)> {
    let cfg = Winn64Config::table5(10, 1.0);
    let flops = cfg.forward_flops();
    Ok((Box::new(Winn64::new(cfg, &mut Rng::new(0), &Device::Cpu)?), flops))
}

/// Every workload [`workloads`] can make, by name.
pub const WORKLOADS: [&str; 12] = [
    "cnn4_train",
    "cnn4_train_pn",
    "cnn4_train_pn_lineage",
    "cnn4_synthesis",
    "cnn4_fgsm",
    "cnn4_ln_critic",
    "resnet32_train",
    "resnet32_ln_train",
    "resnet32_synthesis",
    "resnet32_fgsm",
    "resnet32_ln_critic",
    "winn64_train",
];

/// The workloads whose names `keep` accepts, in [`WORKLOADS`] order.
pub fn workloads(keep: &dyn Fn(&str) -> bool) -> Result<Vec<Workload>> {
    let mut out = Vec::new();
    let cnn4_flops = cnn4()?.config.forward_flops();
    const MNIST: (usize, usize, usize) = (1, 28, 28);
    const CIFAR: (usize, usize, usize) = (3, 32, 32);
    if keep("cnn4_train") {
        out.push(train_workload("cnn4_train", Box::new(cnn4()?), MNIST, 64, 4, cnn4_flops));
    }
    // a quarter of each epoch pseudo-negatives, as in a late round; counted or not
    for (name, count) in [("cnn4_train_pn", false), ("cnn4_train_pn_lineage", true)] {
        if keep(name) {
            out.push(train_with_negatives(name, Box::new(cnn4()?), MNIST, 64, 8, cnn4_flops, 128, count));
        }
    }
    if keep("cnn4_synthesis") {
        out.push(synthesis_workload("cnn4_synthesis", Box::new(cnn4()?), MNIST, 200, cnn4_flops));
    }
    if keep("cnn4_fgsm") {
        out.push(fgsm_workload("cnn4_fgsm", Box::new(cnn4()?), MNIST, 1000, cnn4_flops));
    }
    if keep("cnn4_ln_critic") {
        let (net, flops) = cnn4_ln_critic()?;
        out.push(critic_workload("cnn4_ln_critic", net, MNIST, 100, 2, flops));
    }
    if keep("resnet32_train") {
        let (net, flops) = resnet32(NormKind::Batch, 10)?;
        out.push(train_workload("resnet32_train", net, CIFAR, 128, 2, flops));
    }
    if keep("resnet32_ln_train") {
        let (net, flops) = resnet32(NormKind::Layer, 10)?;
        out.push(train_workload("resnet32_ln_train", net, CIFAR, 128, 2, flops));
    }
    if keep("resnet32_synthesis") {
        let (net, flops) = resnet32(NormKind::Batch, 10)?;
        out.push(synthesis_workload("resnet32_synthesis", net, CIFAR, 200, flops));
    }
    if keep("resnet32_fgsm") {
        let (net, flops) = resnet32(NormKind::Batch, 10)?;
        out.push(fgsm_workload("resnet32_fgsm", net, CIFAR, 1000, flops));
    }
    if keep("resnet32_ln_critic") {
        let (net, flops) = resnet32(NormKind::Layer, 1)?;
        out.push(critic_workload("resnet32_ln_critic", net, CIFAR, 100, 2, flops));
    }
    if keep("winn64_train") {
        let (net, flops) = winn64()?;
        out.push(train_workload("winn64_train", net, (3, 64, 64), 100, 2, flops));
    }
    Ok(out)
}
