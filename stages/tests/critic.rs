//! The WINN gradient penalty differentiated with respect to every parameter tensor of the
//! WINN nets, through the fast CPU kernels, against central finite differences; and what
//! the failure the penalty guards against: a backward pass that detaches its gradients.
//! Nothing here sets `CANDLE_GRAD_DO_NOT_DETACH`: the penalty must not depend on it.

use stages::candle::{Device, Result, Tensor, Var};
use stages::loss::Objective;
use stages::nn::NetConfig;
use stages::train::{train_epoch, EpochStats, TrainSet};
use stages::critic::{gradient_penalty, interpolate, single_logit};
use stages::nn::{Classifier, Cnn4, Cnn4Config, NormKind, ResNet, ResNetConfig, Winn64, Winn64Config};
use stages::rng::Rng;

/// Positives and pseudo-negatives of `shape`, interpolated once: the penalty is then a
/// deterministic function of the weights alone.
fn xhat(n: usize, shape: (usize, usize, usize), seed: u64) -> Result<Tensor> {
    let (c, h, w) = shape;
    let mut r = Rng::new(seed);
    let pos = Tensor::from_vec(r.uniform_vec(n * c * h * w, -1.0, 1.0), (n, c, h, w), &Device::Cpu)?;
    let neg = Tensor::from_vec(r.normal_vec(n * c * h * w, 0.0, 0.5), (n, c, h, w), &Device::Cpu)?;
    interpolate(&pos, &neg, &mut r)
}

fn penalty(net: &dyn Classifier, x: &Tensor) -> Result<Tensor> {
    gradient_penalty(x, &|x| single_logit(&net.forward(x)?))
}

/// Per tensor: the largest error of the analytic d/dW penalty against central differences
/// over `per_tensor` coordinates drawn at random, as |fd - analytic| / scale, where scale
/// is the tensor's largest analytic gradient (so coordinates whose derivative is ~0, e.g.
/// every bias that only moves a ReLU's kink, are measured against the tensor's scale);
/// with the tensor's scale and how many drawn coordinates sat next to a kink.
///
/// The kernels are f32 only, and the penalty is only piecewise smooth: each ReLU's kink
/// is a jump in the input gradient, so a difference quotient whose step straddles one is
/// off by jump / step. Both errors are bounded by measurement here: with steps from
/// h = 1e-3 (or the ulp bound below) down to h/8, the f32 rounding of P (about 1e-7 relative per operation, some thousands of
/// them) puts ~1e-4 of the tensor's scale of noise on a quotient (measured: 1e-5 to 3e-4
/// on smooth coordinates), and truncation is O(h^2). A kink inside the step shows as two
/// successive quotients (h, h/2) disagreeing (by jump / 2h): the step is halved (counted
/// as a kink) until two agree, and a coordinate where none do is redrawn, not judged. A wrong or missing second-order term is a consistent error of order one (a
/// whole layer's share) at both steps, so it still fails; at least one coordinate per
/// tensor must be judged.
fn fd_errors(net: &dyn Classifier, x: &Tensor, per_tensor: usize, seed: u64) -> Result<Vec<Fd>> {
    let p = penalty(net, x)?;
    let p0 = p.to_scalar::<f32>()?.abs() as f64;
    let grads = p.backward()?;
    let value = |net: &dyn Classifier| -> Result<f64> { Ok(penalty(net, x)?.to_scalar::<f32>()? as f64) };
    let mut pick = Rng::new(seed);
    let mut out = Vec::new();
    for (name, var) in net.named_vars() {
        // none at all where the penalty cannot depend on the tensor (the head's bias)
        let analytic = match grads.get(var.as_tensor()) {
            Some(g) => g.flatten_all()?.to_vec1::<f32>()?,
            None => vec![0.0; var.elem_count()],
        };
        let raw = analytic.iter().fold(0f64, |m, g| m.max(g.abs() as f64));
        let scale = raw.max(1e-3);
        // The first step is 1e-3, or more for a tensor whose gradient is small but not zero
        // (below 1e-2: the Table 5 net's first layer-norm gamma, 4e-3), so that one f32 ulp
        // of P over the step stays under a thousandth of its scale (at most 3e-2: these
        // tensors sit in smooth layers; a zero gradient keeps 1e-3 for the kinks around it)
        let h0 = if raw > 0.0 && raw < 1e-2 { (p0 * f32::EPSILON as f64 / (1e-3 * raw)).clamp(1e-3, 3e-2) as f32 } else { 1e-3 };
        let base = var.as_tensor().flatten_all()?.to_vec1::<f32>()?;
        let quotient = |j: usize, h: f32| -> Result<f64> {
            let at = |d: f32| -> Result<f64> {
                let mut v = base.clone();
                v[j] += d;
                var.set(&Tensor::from_vec(v, var.dims(), &Device::Cpu)?)?;
                value(net)
            };
            let q = (at(h)? - at(-h)?) / (2.0 * h as f64);
            var.set(&Tensor::from_vec(base.clone(), var.dims(), &Device::Cpu)?)?;
            Ok(q)
        };
        let (mut worst, mut judged, mut kinks) = (0f64, 0, 0);
        for _ in 0..4 * per_tensor {
            if judged == per_tensor {
                break;
            }
            let j = pick.below(base.len());
            // halve the step until two successive quotients agree: the kink is then
            // outside the step
            let mut h = h0;
            let mut q = quotient(j, h)?;
            let mut agreed = None;
            for _ in 0..3 {
                h /= 2.0;
                let next = quotient(j, h)?;
                if (next - q).abs() <= 1e-2 * scale {
                    agreed = Some(next);
                    break;
                }
                kinks += 1;
                q = next;
            }
            let Some(q) = agreed else { continue };
            judged += 1;
            worst = worst.max((q - analytic[j] as f64).abs() / scale);
        }
        out.push(Fd { name, worst, scale, judged, kinks });
    }
    Ok(out)
}

struct Fd {
    name: String,
    worst: f64,
    scale: f64,
    judged: usize,
    kinks: usize,
}

/// Every parameter tensor within `tol`; the weights of every layer with a gradient that is
/// not zero (the silent failure leaves later layers with none).
fn check(what: &str, errs: &[Fd], tol: f64) {
    for e in errs {
        println!("{what} {}: max |fd - analytic| / max|analytic| = {:.2e} (max|analytic| {:.3e}; {} judged, {} at a kink)", e.name, e.worst, e.scale, e.judged, e.kinks);
    }
    for e in errs {
        assert!(e.judged > 0, "{what} {}: every coordinate drawn sat at a kink", e.name);
        assert!(e.worst < tol, "{what} {}: finite differences disagree ({:.2e} of {:.3e})", e.name, e.worst, e.scale);
        if e.name.ends_with("weight") || e.name.ends_with("gamma") {
            assert!(e.scale > 1e-3, "{what} {}: no second-order gradient", e.name);
        }
    }
}

fn cnn4(norm: Option<NormKind>, seed: u64) -> Result<Cnn4> {
    let mut cfg = Cnn4Config::mnist(1, 1.0 / 16.0, 0.2);
    cfg.norm = norm;
    Cnn4::new(cfg, &mut Rng::new(seed), &Device::Cpu)
}

#[test]
fn cnn4_penalty_gradient_matches_finite_differences_in_every_layer() -> Result<()> {
    let net = cnn4(None, 1)?;
    check("cnn4", &fd_errors(&net, &xhat(3, (1, 28, 28), 2)?, 4, 3)?, 2e-2);
    Ok(())
}

#[test]
fn cnn4_layer_norm_penalty_gradient_matches_finite_differences_in_every_layer() -> Result<()> {
    let net = cnn4(Some(NormKind::Layer), 4)?;
    // gamma = 1 and beta = 0 at initialization would hide their role: move them off it.
    let mut r = Rng::new(5);
    for (name, var) in net.named_vars() {
        if name.ends_with("gamma") || name.ends_with("beta") {
            let v = var.as_tensor().flatten_all()?.to_vec1::<f32>()?;
            let moved: Vec<f32> = v.iter().map(|g| g + r.uniform_vec(1, -0.3, 0.3)[0]).collect();
            var.set(&Tensor::from_vec(moved, var.dims(), &Device::Cpu)?)?;
        }
    }
    check("cnn4-ln", &fd_errors(&net, &xhat(3, (1, 28, 28), 6)?, 4, 7)?, 2e-2);
    Ok(())
}

#[test]
fn resnet32_layer_norm_penalty_gradient_matches_finite_differences_in_every_layer() -> Result<()> {
    let cfg = ResNetConfig { in_channels: 3, height: 8, width: 8, num_classes: 1, blocks_per_stage: 5, channels: [4, 6, 8], norm: NormKind::Layer };
    let net = ResNet::new(cfg, &mut Rng::new(8), &Device::Cpu)?;
    check("resnet32-ln", &fd_errors(&net, &xhat(2, (3, 8, 8), 9)?, 2, 10)?, 2e-2);
    Ok(())
}

#[test]
fn winn64_layer_norm_penalty_gradient_matches_finite_differences_in_every_layer() -> Result<()> {
    let cfg = Winn64Config { in_channels: 1, height: 16, width: 16, num_classes: 1, channels: [2, 3, 3, 4, 4, 4, 4, 5], norm: Some(NormKind::Layer) };
    let net = Winn64::new(cfg, &mut Rng::new(11), &Device::Cpu)?;
    check("winn64-ln", &fd_errors(&net, &xhat(2, (1, 16, 16), 12)?, 2, 13)?, 2e-2);
    Ok(())
}

/// The failure the penalty guards against is real: the same penalty by hand, with a plain
/// backward pass (gradients detached, candle's default), gives CNN4's weights no
/// second-order gradient at all (even the first layer's: the input reaches it through a
/// reshape, whose incoming gradient is detached too), while `gradient_penalty` reaches
/// every layer with no environment variable set.
#[test]
fn the_penalty_reaches_every_layer_without_any_environment_setting() -> Result<()> {
    assert!(std::env::var_os("CANDLE_GRAD_DO_NOT_DETACH").is_none(), "this test must run without the variable");
    let net = cnn4(None, 1)?;
    let x = Var::from_tensor(&xhat(2, (1, 28, 28), 2)?)?;
    let g = single_logit(&net.forward(x.as_tensor())?)?.sum_all()?.backward()?.remove(x.as_tensor()).unwrap();
    let by_hand = ((g.sqr()?.flatten_from(1)?.sum(1)?.sqrt()? - 1.0)?.sqr()?).mean_all()?;
    let size = |grads: &stages::candle::backprop::GradStore, name: &str| -> f32 {
        let (_, v) = net.named_vars().into_iter().find(|(n, _)| n == name).unwrap();
        grads.get(v.as_tensor()).map_or(0.0, |g| g.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap())
    };
    let detached = by_hand.backward()?;
    let kept = penalty(&net, x.as_tensor())?.backward()?;
    for name in ["conv1.weight", "conv2.weight", "conv3.weight", "conv4.weight", "head.weight"] {
        assert_eq!(size(&detached, name), 0.0, "{name}: detached, it should get nothing");
        assert!(size(&kept, name) > 0.0, "{name}: gradient_penalty gave it no second-order gradient");
    }
    // the switch is restored: the next plain backward pass detaches again
    assert!(!stages::candle::backprop::create_graph());
    Ok(())
}

/// Images of a "stroke" (left half bright, right half dark, a little noise): positives a
/// critic can tell from p0 noise.
fn strokes(n: usize, rng: &mut Rng) -> Vec<f32> {
    (0..n).flat_map(|_| (0..784).map(|p| if p % 28 < 14 { 0.8 } else { -0.8 }).zip(rng.uniform_vec(784, -0.1, 0.1)).map(|(a, b): (f32, f32)| a + b).collect::<Vec<f32>>()).collect()
}

fn noise(n: usize, rng: &mut Rng) -> Vec<f32> {
    rng.normal_vec(n * 784, 0.0, 0.3).into_iter().map(|v| v.clamp(-1.0, 1.0)).collect()
}

/// E_pos f - E_neg f of `net` on held-out images: the critic's Wasserstein estimate.
fn gap(net: &Cnn4, pos: &[f32], neg: &[f32]) -> Result<f32> {
    let f = |x: &[f32]| -> Result<f32> { single_logit(&net.forward(&Tensor::from_vec(x.to_vec(), (x.len() / 784, 1, 28, 28), &Device::Cpu)?)?)?.mean_all()?.to_scalar::<f32>() };
    Ok(f(pos)? - f(neg)?)
}

/// The mechanism of WINN's critic step, through the training loop pipe runs: epochs of
/// Eq. 5 on balanced batches raise E_pos f - E_neg f on images they never saw, keep the
/// penalty bounded, record the range of f over positives, and rerun bit-identically.
#[test]
fn critic_epochs_learn_to_tell_positives_from_p0_and_rerun_identically() -> Result<()> {
    let mut data = Rng::new(21);
    let (pos, neg, pos_eval, neg_eval) = (strokes(64, &mut data), noise(64, &mut data), strokes(32, &mut data), noise(32, &mut data));
    let (ys, ny, weights) = (vec![0u32; 64], vec![0u32; 64], vec![1.0; 64]);
    let set = TrainSet { shape: (1, 28, 28), real_x: &pos, real_y: &ys, neg_x: &neg, neg_y: &ny, neg_weights: Some(&weights), neg_crop: None, augment_pad: 0, count_draws: true };
    let train = || -> Result<(Cnn4, Vec<EpochStats>, Vec<f32>)> {
        let net = cnn4(Some(NormKind::Layer), 22)?;
        let mut opt = stages::optim::Adam::new(1e-3, 0.0, 0.9, 1e-8);
        let mut rng = Rng::new(23);
        let stats = (0..8).map(|_| train_epoch(&net, &mut opt, &set, 32, Objective::Critic { lambda: stages::critic::LAMBDA }, &mut rng, &Device::Cpu, &mut stages::keep_going)).collect::<Result<Vec<_>>>()?;
        let w = net.named_tensors().iter().map(|(_, t)| t.flatten_all()?.to_vec1::<f32>()).collect::<Result<Vec<_>>>()?.concat();
        Ok((net, stats, w))
    };
    let before = gap(&cnn4(Some(NormKind::Layer), 22)?, &pos_eval, &neg_eval)?;
    let (net, stats, w) = train()?;
    let after = gap(&net, &pos_eval, &neg_eval)?;
    let last = stats.last().unwrap().critic.expect("a critic epoch measures its critic");
    assert_eq!(stats[0].batches, 4, "16 positives + 16 pseudo-negatives per batch");
    assert!(after > 0.5 && after > before + 0.5, "held-out E_pos f - E_neg f: {before} -> {after} ({stats:?})");
    assert!(last.wasserstein < 0.0 && last.penalty.is_finite() && last.penalty < 1.0, "{last:?}");
    assert!(last.f_positive.0 <= last.f_positive.1 && last.f_positive.0.is_finite(), "{last:?}");
    assert_eq!(stats.last().unwrap().neg_draws.iter().sum::<u32>(), 64, "one pseudo-negative drawn per positive");
    let (_, again, w_again) = train()?;
    assert_eq!((stats, w), (again, w_again), "a rerun is bit-identical");
    Ok(())
}

/// Supervised WINN's loss is cross-entropy plus a (Eq. 5) through the Wasserstein head:
/// with a = 0 it is exactly the cross-entropy, and the head gets a gradient only when
/// a > 0.
#[test]
fn supervised_winn_adds_a_times_eq5_to_cross_entropy_through_the_head() -> Result<()> {
    let cfg = NetConfig { arch: stages::nn::Arch::Cnn4, norm: stages::nn::Normalization::Layer, width: 0.125, leaky_slope: 0.2, channels: 1, height: 28, image_width: 28, num_classes: 10, wass_head: true };
    let net = cfg.build(&mut Rng::new(5), &Device::Cpu).map_err(|e| stages::candle::Error::Msg(e.to_string()))?;
    let mut data = Rng::new(6);
    let x = Tensor::from_vec([strokes(4, &mut data), noise(4, &mut data)].concat(), (8, 1, 28, 28), &Device::Cpu)?;
    let labels = [3u32, 1, 4, 1, 0, 0, 0, 0];
    let ce = stages::loss::Objective::Softmax { alpha: 0.0 }.loss(&net.forward(&x.narrow(0, 0, 4)?)?, &labels[..4], &[0.0; 4])?.to_scalar::<f32>()?;
    let head = |loss: &Tensor| -> Result<f32> {
        let grads = loss.backward()?;
        let (_, v) = net.named_vars().into_iter().find(|(n, _)| n == stages::critic::WASS_WEIGHT).expect("the head is a parameter");
        Ok(grads.get(v.as_tensor()).map_or(0.0, |g| g.abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap()))
    };
    let b0 = stages::critic::critic_batch(net.as_ref(), &x, 4, &labels, Some(0.0), 10.0, &mut Rng::new(1))?;
    assert!((b0.loss.to_scalar::<f32>()? - ce).abs() < 1e-5);
    assert_eq!(head(&b0.loss)?, 0.0);
    let b = stages::critic::critic_batch(net.as_ref(), &x, 4, &labels, Some(0.01), 10.0, &mut Rng::new(1))?;
    let want = ce + 0.01 * (b.wasserstein + 10.0 * b.penalty);
    assert!((b.loss.to_scalar::<f32>()? - want).abs() < 1e-5, "{} vs {want}", b.loss.to_scalar::<f32>()?);
    assert!(head(&b.loss)? > 0.0);
    Ok(())
}
