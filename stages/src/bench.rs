//! The throughput workloads of `pipe bench`, on the same code paths the stages use:
//! a training step ([`crate::train::train_epoch`]), a synthesis step
//! ([`crate::synthesize::synthesize`]) and FGSM ([`crate::attack::fgsm`]).

use crate::attack::fgsm;
use crate::loss::Objective;
use crate::nn::{Classifier, Cnn4, Cnn4Config, ResNet, ResNetConfig};
use crate::optim::SgdMomentum;
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

/// Items per second over at least `seconds`, after one warm-up call.
pub fn measure(w: &mut Workload, seconds: f64) -> Result<f64> {
    (w.run)()?;
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

/// The four workloads of the issue, filtered by name.
/// Every workload [`workloads`] can make, by name.
pub const WORKLOADS: [&str; 6] = ["cnn4_train", "cnn4_train_pn", "cnn4_train_pn_lineage", "cnn4_synthesis", "cnn4_fgsm", "resnet32_train"];

pub fn workloads(keep: &dyn Fn(&str) -> bool) -> Result<Vec<Workload>> {
    let mut out = Vec::new();
    let cnn4_flops = cnn4()?.config.forward_flops();
    if keep("cnn4_train") {
        out.push(train_workload("cnn4_train", Box::new(cnn4()?), (1, 28, 28), 64, 4, cnn4_flops));
    }
    // a quarter of each epoch pseudo-negatives, as in a late round; counted or not
    for (name, count) in [("cnn4_train_pn", false), ("cnn4_train_pn_lineage", true)] {
        if keep(name) {
            out.push(train_with_negatives(name, Box::new(cnn4()?), (1, 28, 28), 64, 8, cnn4_flops, 128, count));
        }
    }
    if keep("cnn4_synthesis") {
        let net = cnn4()?;
        let steps = 10;
        let targets: Vec<Target> = (0..200).map(|i| Target { class: (i % 10) as u32, seed: i as u64 }).collect();
        let cfg = SynthesisConfig { binary: false, step: Step::Adam { beta1: 0.5, beta2: 0.999, eps: 1e-8 }, lr: 0.01, max_steps: steps, init_std: 0.3, batch_size: 200, stop: StopRule::Steps };
        out.push(Workload {
            name: "cnn4_synthesis",
            unit: "image-step",
            batch: 200,
            flops_per_item: 2.0 * cnn4_flops,
            run: Box::new(move || {
                synthesize(&net, (1, 28, 28), &targets, &cfg, &Device::Cpu, &mut crate::keep_going)?;
                Ok(targets.len() * steps as usize)
            }),
        });
    }
    if keep("cnn4_fgsm") {
        let net = cnn4()?;
        let (x, y) = images(1000, 784, 5);
        out.push(Workload {
            name: "cnn4_fgsm",
            unit: "image",
            batch: 1000,
            flops_per_item: 2.0 * cnn4_flops,
            run: Box::new(move || {
                fgsm(&net, &x, &y, (1, 28, 28), 0.125, -1.0, 1.0, &Device::Cpu)?;
                Ok(y.len())
            }),
        });
    }
    if keep("resnet32_train") {
        let cfg = ResNetConfig::resnet32(10);
        let flops = cfg.forward_flops();
        let net = ResNet::new(cfg, &mut Rng::new(0), &Device::Cpu)?;
        out.push(train_workload("resnet32_train", Box::new(net), (3, 32, 32), 128, 2, flops));
    }
    Ok(out)
}
