//! The texture distance on the shipped textures: other crops of the same texture are
//! nearer than crops of another texture, which are nearer than noise.

use stages::data::folder::load_image;
use stages::nn::{Arch, NetConfig, Normalization};
use stages::quality::gram_distance;
use stages::rng::Rng;
use std::path::Path;

const SIDE: usize = 64;

/// `n` random SIDE x SIDE crops of a shipped texture, in [-1, 1].
fn crops(name: &str, n: usize, seed: u64) -> Vec<f32> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../pipelines/data/textures/{name}.png"));
    let (pixels, h, w) = load_image(&path, 1).unwrap();
    let mut rng = Rng::new(seed);
    let mut out = Vec::new();
    for _ in 0..n {
        let (top, left) = (rng.below(h - SIDE + 1), rng.below(w - SIDE + 1));
        for y in top..top + SIDE {
            out.extend(pixels[y * w + left..y * w + left + SIDE].iter().map(|&p| p as f32 / 127.5 - 1.0));
        }
    }
    out
}

#[test]
fn a_texture_is_nearer_to_itself_than_to_another_texture_or_noise() {
    let dev = stages::candle::Device::Cpu;
    let cfg = NetConfig { arch: Arch::Winn64, norm: Normalization::None, width: 0.25, leaky_slope: 0.2, channels: 1, height: SIDE, image_width: SIDE, num_classes: 1, wass_head: false };
    let net = cfg.build(&mut Rng::new(11), &dev).unwrap();
    let shape = (1, SIDE, SIDE);
    let brick = crops("brick", 16, 1);
    let d = |other: &[f32]| gram_distance(net.as_ref(), &brick, other, shape, &dev).unwrap();
    let (same, grass, gravel) = (d(&crops("brick", 16, 2)), d(&crops("grass", 16, 3)), d(&crops("gravel", 16, 4)));
    let noise = d(&Rng::new(5).normal_vec(16 * SIDE * SIDE, 0.0, 0.5));
    assert_eq!(d(&brick), 0.0);
    assert!(same < grass.min(gravel) / 2.0, "brick vs brick {same}, vs grass {grass}, vs gravel {gravel}");
    assert!(grass.max(gravel) < noise, "textures {grass} {gravel} vs noise {noise}");
}
