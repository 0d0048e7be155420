//! The semi-supervised probe on real digits: the features of a CNN4 trained on digits give
//! an L2-SVM with 200 labels a lower test error than the features of the same net with
//! random weights (the probe's floor), and the probe is deterministic.

use stages::data::mnist::{load_split, Split};
use stages::loss::Objective;
use stages::nn::{Cnn4, Cnn4Config};
use stages::optim::SgdMomentum;
use stages::probe::{self, ProbeConfig, LAYERS};
use stages::rng::Rng;
use stages::train::{train_epoch, TrainSet};
use std::path::Path;

const SHAPE: (usize, usize, usize) = (1, 28, 28);

#[test]
fn trained_features_beat_random_ones_with_few_labels() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../pipelines/data/mnist");
    let all = load_split(&dir, Split::Train).unwrap();
    let pick = |a: usize, b: usize| all.select(&(a..b).collect::<Vec<_>>());
    let (train, pool, validation, test) = (pick(0, 1500), pick(1500, 2500), pick(2500, 3000), pick(3000, 4000));
    let dev = stages::candle::Device::Cpu;
    let mut rng = Rng::new(1);
    let random = Cnn4::new(Cnn4Config::mnist(10, 0.25, 0.2), &mut rng, &dev).unwrap();
    let trained = Cnn4::new(Cnn4Config::mnist(10, 0.25, 0.2), &mut Rng::new(1), &dev).unwrap();
    let (tx, ty) = (train.to_unit_range(), train.labels.clone());
    let set = TrainSet { shape: SHAPE, real_x: &tx, real_y: &ty, neg_x: &[], neg_y: &[], neg_weights: None, neg_crop: None, augment_pad: 0, count_draws: false };
    let mut opt = SgdMomentum::new(0.025, 0.9);
    for _ in 0..3 {
        train_epoch(&trained, &mut opt, &set, 64, Objective::Softmax { alpha: 0.0 }, &mut rng, &dev, &mut stages::keep_going).unwrap();
    }

    let cfg = ProbeConfig { labels: 200, draws: 4, c_grid: vec![0.001, 0.01, 0.1], seed: 7 };
    let run = |net: &Cnn4| {
        let feats = |s: &stages::data::ImageSet| probe::features(net, &s.to_unit_range(), SHAPE, LAYERS, 250, &dev).unwrap();
        let ((p, dim), (v, _), (t, _)) = (feats(&pool), feats(&validation), feats(&test));
        let split = |f: &[f32], s: &stages::data::ImageSet| (f.to_vec(), s.labels.clone());
        let ((p, pl), (v, vl), (t, tl)) = (split(&p, &pool), split(&v, &validation), split(&t, &test));
        probe::probe(probe::Split { features: &p, labels: &pl }, probe::Split { features: &v, labels: &vl }, probe::Split { features: &t, labels: &tl }, dim, 10, &cfg, &mut stages::keep_going).unwrap()
    };
    let mean = |d: &[probe::Draw]| d.iter().map(|d| d.test_error).sum::<f64>() / d.len() as f64;
    let (with_training, floor) = (run(&trained), run(&random));
    // the trained net's last layer already separates digits linearly; random features
    // lose much of that with 200 labels
    assert!(mean(&with_training) + 0.05 < mean(&floor), "trained {:.3} vs random {:.3}: {with_training:?} {floor:?}", mean(&with_training), mean(&floor));
    assert!(mean(&with_training) < 0.2, "{with_training:?}");
    assert_eq!(run(&trained), with_training);
}
