//! The mechanism of introspective learning on real digits, not the plumbing: a
//! reclassification round pushes f_k down on the pseudo-negatives it was trained with,
//! while the error on held-out real digits does not rise.

use stages::candle::{Device, Tensor};
use stages::data::mnist::{load_split, Split};
use stages::evaluate::predict;
use stages::loss::Objective;
use stages::nn::{Classifier, Cnn4, Cnn4Config};
use stages::optim::SgdMomentum;
use stages::rng::Rng;
use stages::synthesize::{synthesize, Step, StopRule, SynthesisConfig, Target};
use stages::train::{train_epoch, TrainSet};
use std::path::Path;

const SHAPE: (usize, usize, usize) = (1, 28, 28);
const D: usize = 28 * 28;

/// f_k of every pseudo-negative under `net`.
fn logits_at_class(net: &dyn Classifier, x: &[f32], classes: &[u32], dev: &Device) -> Vec<f32> {
    let rows = net.forward(&Tensor::from_vec(x.to_vec(), (classes.len(), 1, 28, 28), dev).unwrap()).unwrap().to_vec2::<f32>().unwrap();
    rows.iter().zip(classes).map(|(r, &k)| r[k as usize]).collect()
}

fn error(net: &dyn Classifier, x: &[f32], y: &[u32], dev: &Device) -> f64 {
    let p = predict(net, x, SHAPE, 500, dev).unwrap();
    p.iter().zip(y).filter(|(a, b)| a != b).count() as f64 / y.len() as f64
}

#[test]
fn a_reclassification_round_lowers_f_k_on_its_pseudo_negatives_and_keeps_held_out_error() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../pipelines/data/mnist");
    let all = load_split(&dir, Split::Train).unwrap();
    let (train, held_out) = (all.select(&(0..1500).collect::<Vec<_>>()), all.select(&(1500..2500).collect::<Vec<_>>()));
    let (tx, ty) = (train.to_unit_range(), train.labels.clone());
    let (hx, hy) = (held_out.to_unit_range(), held_out.labels.clone());
    let dev = Device::Cpu;
    let real_only = TrainSet { shape: SHAPE, real_x: &tx, real_y: &ty, neg_x: &[], neg_y: &[], neg_weights: None, neg_crop: None, augment_pad: 0, count_draws: false };
    // round 0, made twice (it is deterministic): one copy reclassifies with the round's
    // pseudo-negatives, the other, the control, trains as long on real digits alone
    let round0 = || {
        let mut rng = Rng::new(1);
        let net = Cnn4::new(Cnn4Config::mnist(10, 0.25, 0.2), &mut rng, &dev).unwrap();
        let mut opt = SgdMomentum::new(0.025, 0.9);
        for _ in 0..3 {
            train_epoch(&net, &mut opt, &real_only, 64, Objective::Softmax { alpha: 0.0 }, &mut rng, &dev, &mut stages::keep_going).unwrap();
        }
        (net, opt, rng)
    };
    let (net, mut opt, mut rng) = round0();
    let (control, mut control_opt, mut control_rng) = round0();
    let before_error = error(&net, &hx, &hy, &dev);

    // round 1's pseudo-negatives: 10 per class, stopped once f_k > 0 (stop option 1)
    let targets: Vec<Target> = (0..100).map(|i| Target { class: (i / 10) as u32, seed: 5000 + i as u64 }).collect();
    let cfg = SynthesisConfig { binary: false, step: Step::Adam { beta1: 0.5, beta2: 0.999, eps: 1e-8 }, lr: 0.01, max_steps: 200, init_std: 0.3, batch_size: 100, stop: StopRule::Classified };
    let s = synthesize(&net, SHAPE, &targets, &cfg, &dev, &mut stages::keep_going).unwrap();
    assert_eq!(s.images.len(), 100 * D);
    let classes: Vec<u32> = targets.iter().map(|t| t.class).collect();
    let at_synthesis = logits_at_class(&net, &s.images, &classes, &dev);
    let positive = |v: &[f32]| v.iter().filter(|f| **f > 0.0).count();
    assert!(positive(&at_synthesis) >= 80, "synthesis reached f_k > 0 for most samples: {} of 100", positive(&at_synthesis));

    // a reclassification round (5 epochs, as the papers) on real digits plus those
    // pseudo-negatives (Eq. 9, alpha 0.5), against 5 epochs of real digits alone
    let with_negatives = TrainSet { neg_x: &s.images, neg_y: &classes, ..real_only };
    for _ in 0..5 {
        train_epoch(&net, &mut opt, &with_negatives, 64, Objective::Softmax { alpha: 0.5 }, &mut rng, &dev, &mut stages::keep_going).unwrap();
        train_epoch(&control, &mut control_opt, &real_only, 64, Objective::Softmax { alpha: 0.0 }, &mut control_rng, &dev, &mut stages::keep_going).unwrap();
    }
    let after = logits_at_class(&net, &s.images, &classes, &dev);
    let without = logits_at_class(&control, &s.images, &classes, &dev);
    let mean = |v: &[f32]| v.iter().map(|f| *f as f64).sum::<f64>() / v.len() as f64;
    let shown = format!("mean f_k at synthesis {:.2}, after reclassification {:.2}, control {:.2}; f_k > 0: {} / {} / {}", mean(&at_synthesis), mean(&after), mean(&without), positive(&at_synthesis), positive(&after), positive(&without));
    assert!(mean(&after) < mean(&at_synthesis) - 1.0, "f_k fell on the round's pseudo-negatives: {shown}");
    assert!(mean(&after) < mean(&without) - 1.0, "and not merely because training went on: {shown}");
    assert!(positive(&after) * 4 <= positive(&at_synthesis) && positive(&after) * 2 <= positive(&without), "{shown}");
    let (after_error, control_error) = (error(&net, &hx, &hy, &dev), error(&control, &hx, &hy, &dev));
    assert!(after_error <= before_error + 0.01 && after_error <= control_error + 0.01, "held-out error {before_error:.4} -> {after_error:.4} (control {control_error:.4})");
    eprintln!("{shown}; held-out error {before_error:.4} -> {after_error:.4} (control {control_error:.4})");
}
