//! Data augmentation for CIFAR-10 as in the residual-network papers (He et al., 2016):
//! pad each side with `pad` pixels, take a random crop of the original size, and flip it
//! horizontally with probability 1/2.
//!
//! It works on the float batches the models see (N x C x H x W in `[-1, 1]`), so it can sit
//! right before the forward pass and draw fresh crops every epoch.
//!
//! Padding value: the papers pad with zeros in the *normalised* domain (after subtracting
//! the per-pixel mean), so a padded border carries no signal. Here the matching choice is
//! `0.0` in the `[-1, 1]` domain, i.e. mid-grey, and not `-1.0` (the value byte 0 maps to),
//! which would add a black frame the network could learn to read.
//!
//! All randomness comes from the caller's [`Rng`], in a fixed, documented order, so a run
//! is reproducible from the seed and a checkpointed rng state resumes the same crops.

use crate::rng::Rng;

/// The value the padded border takes: mid-grey in the `[-1, 1]` domain (see module docs).
pub const PAD_VALUE: f32 = 0.0;

/// The random choices made for one image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Draw {
    /// Mirror the crop left-right.
    pub flip: bool,
    /// Crop offset in the padded image, rows: `0..=2*pad`.
    pub dy: usize,
    /// Crop offset in the padded image, columns: `0..=2*pad`.
    pub dx: usize,
}

impl Draw {
    /// Draw one image's choices, always in this order and always all three (even when
    /// `pad` is 0, where the offsets can only be 0), so the rng advances the same way
    /// whatever the padding:
    /// 1. `flip = rng.uniform() < 0.5`
    /// 2. `dy = rng.below(2 * pad + 1)`
    /// 3. `dx = rng.below(2 * pad + 1)`
    pub fn sample(pad: usize, rng: &mut Rng) -> Draw {
        let flip = rng.uniform() < 0.5;
        let dy = rng.below(2 * pad + 1);
        let dx = rng.below(2 * pad + 1);
        Draw { flip, dy, dx }
    }
}

/// Pad, randomly crop and randomly flip each of the `n` images in `images`.
///
/// `images` is N x C x H x W (`shape` = (C, H, W)), row-major; the output has the same
/// shape. For each image, in order, the draws of [`Draw::sample`] are made, then output
/// pixel `(c, y, x)` is padded pixel `(c, y + dy, x' + dx)` with `x' = W - 1 - x` when
/// flipped and `x' = x` otherwise, where padded pixel `(c, Y, X)` is input pixel
/// `(c, Y - pad, X - pad)` inside the input and [`PAD_VALUE`] outside. (Flipping the crop
/// is the same as cropping the flipped padded image at column offset `2*pad - dx`.)
///
/// The same rng state gives the same output.
///
/// # Panics
/// If `images.len() != n * C * H * W`: that is a caller bug, not bad data.
pub fn pad_crop_flip(
    images: &[f32],
    n: usize,
    shape: (usize, usize, usize),
    pad: usize,
    rng: &mut Rng,
) -> Vec<f32> {
    let (c, h, w) = shape;
    let image_len = c * h * w;
    assert_eq!(
        images.len(),
        n * image_len,
        "pad_crop_flip: expected {n} images of {c}x{h}x{w} = {} floats, found {}",
        n * image_len,
        images.len()
    );
    let mut out = vec![PAD_VALUE; images.len()];
    if image_len == 0 {
        // nothing to move, but keep the documented number of draws
        for _ in 0..n {
            Draw::sample(pad, rng);
        }
        return out;
    }
    for (src, dst) in images
        .chunks_exact(image_len)
        .zip(out.chunks_exact_mut(image_len))
    {
        let draw = Draw::sample(pad, rng);
        apply(src, dst, (c, h, w), pad, draw);
    }
    out
}

/// Write one augmented image into `dst` (already filled with [`PAD_VALUE`]).
fn apply(src: &[f32], dst: &mut [f32], (c, h, w): (usize, usize, usize), pad: usize, d: Draw) {
    for ch in 0..c {
        let plane = ch * h * w;
        for y in 0..h {
            // input row = y + dy - pad, if inside the image
            let Some(sy) = shifted(y, d.dy, pad, h) else {
                continue;
            };
            let src_row = &src[plane + sy * w..plane + (sy + 1) * w];
            let dst_row = &mut dst[plane + y * w..plane + (y + 1) * w];
            for (x, out) in dst_row.iter_mut().enumerate() {
                let xc = if d.flip { w - 1 - x } else { x };
                if let Some(sx) = shifted(xc, d.dx, pad, w) {
                    *out = src_row[sx];
                }
            }
        }
    }
}

/// `i + offset - pad` when it lies in `0..len`, else None (the padded border).
fn shifted(i: usize, offset: usize, pad: usize, len: usize) -> Option<usize> {
    (i + offset).checked_sub(pad).filter(|&s| s < len)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `n` images whose every value is distinct and encodes (image, channel, row, column),
    /// scaled into [-1, 1).
    fn pattern(n: usize, (c, h, w): (usize, usize, usize)) -> Vec<f32> {
        let total = n * c * h * w;
        (0..total)
            .map(|i| -1.0 + 2.0 * (i as f32 + 1.0) / (total as f32 + 2.0))
            .collect()
    }

    /// A seed whose first draw (for the given pad) has the given flip.
    fn seed_with_first_flip(flip: bool, pad: usize) -> u64 {
        (0..1000)
            .find(|&s| Draw::sample(pad, &mut Rng::new(s)).flip == flip)
            .expect("some seed in 0..1000 draws each side")
    }

    #[test]
    fn same_seed_same_output() {
        let shape = (3, 8, 8);
        let imgs = pattern(5, shape);
        let a = pad_crop_flip(&imgs, 5, shape, 2, &mut Rng::new(11));
        let b = pad_crop_flip(&imgs, 5, shape, 2, &mut Rng::new(11));
        assert_eq!(a, b);
        let c = pad_crop_flip(&imgs, 5, shape, 2, &mut Rng::new(12));
        assert_ne!(
            a, c,
            "a different seed should move something among 5 images"
        );
    }

    #[test]
    fn output_shape_and_rng_advance() {
        let shape = (3, 32, 32);
        let imgs = pattern(4, shape);
        let mut rng = Rng::new(5);
        let out = pad_crop_flip(&imgs, 4, shape, 4, &mut rng);
        assert_eq!(out.len(), 4 * 3 * 32 * 32);
        assert!(out.iter().all(|v| (-1.0..=1.0).contains(v)));
        // exactly three draws per image, in the documented order
        let mut replay = Rng::new(5);
        for _ in 0..4 {
            Draw::sample(4, &mut replay);
        }
        assert_eq!(rng.state(), replay.state());
        assert!(pad_crop_flip(&[], 0, shape, 4, &mut rng).is_empty());
    }

    #[test]
    fn pad_zero_without_flip_is_identity() {
        let shape = (3, 5, 7);
        let imgs = pattern(1, shape);
        let seed = seed_with_first_flip(false, 0);
        let out = pad_crop_flip(&imgs, 1, shape, 0, &mut Rng::new(seed));
        assert_eq!(out, imgs);
    }

    #[test]
    fn flip_mirrors_each_row() {
        let (c, h, w) = (2, 3, 5);
        let imgs = pattern(1, (c, h, w));
        let seed = seed_with_first_flip(true, 0);
        let out = pad_crop_flip(&imgs, 1, (c, h, w), 0, &mut Rng::new(seed));
        for ch in 0..c {
            for y in 0..h {
                for x in 0..w {
                    let at = |x: usize| ch * h * w + y * w + x;
                    assert_eq!(out[at(x)], imgs[at(w - 1 - x)], "c{ch} y{y} x{x}");
                }
            }
        }
    }

    #[test]
    fn crop_offset_shifts_content_as_hand_computed() {
        // image 1 of 2, so the replay must also skip image 0's three draws
        let (c, h, w, pad) = (2usize, 6usize, 6usize, 2usize);
        let imgs = pattern(2, (c, h, w));
        let seed = 3;
        let out = pad_crop_flip(&imgs, 2, (c, h, w), pad, &mut Rng::new(seed));

        let mut rng = Rng::new(seed);
        let _first = (
            rng.uniform() < 0.5,
            rng.below(2 * pad + 1),
            rng.below(2 * pad + 1),
        );
        let flip = rng.uniform() < 0.5;
        let dy = rng.below(2 * pad + 1) as isize;
        let dx = rng.below(2 * pad + 1) as isize;

        let img = &imgs[c * h * w..];
        let got = &out[c * h * w..];
        for ch in 0..c {
            for y in 0..h {
                for x in 0..w {
                    let xc = if flip { w - 1 - x } else { x } as isize;
                    let (sy, sx) = (y as isize + dy - pad as isize, xc + dx - pad as isize);
                    let inside = (0..h as isize).contains(&sy) && (0..w as isize).contains(&sx);
                    let want = if inside {
                        img[ch * h * w + sy as usize * w + sx as usize]
                    } else {
                        0.0
                    };
                    assert_eq!(got[ch * h * w + y * w + x], want, "c{ch} y{y} x{x}");
                }
            }
        }
    }

    #[test]
    fn known_offsets_move_a_marked_pixel() {
        // one 1x4x4 image, black except pixel (1, 2); crop at dy = 0, dx = 4 of pad 2
        let (h, w, pad) = (4usize, 4usize, 2usize);
        let mut img = vec![-1.0f32; h * w];
        img[w + 2] = 1.0;
        let mut dst = vec![PAD_VALUE; h * w];
        apply(
            &img,
            &mut dst,
            (1, h, w),
            pad,
            Draw {
                flip: false,
                dy: 0,
                dx: 4,
            },
        );
        // output (y, x) = input (y - 2, x + 2): rows 0-1 are border, columns 2-3 are border
        #[rustfmt::skip]
        let want = [
            0.0, 0.0, 0.0, 0.0,
            0.0, 0.0, 0.0, 0.0,
            -1.0, -1.0, 0.0, 0.0,
            1.0, -1.0, 0.0, 0.0,
        ];
        assert_eq!(dst, want);
        // the same crop flipped: columns mirrored
        let mut dst = vec![PAD_VALUE; h * w];
        apply(
            &img,
            &mut dst,
            (1, h, w),
            pad,
            Draw {
                flip: true,
                dy: 0,
                dx: 4,
            },
        );
        #[rustfmt::skip]
        let want = [
            0.0, 0.0, 0.0, 0.0,
            0.0, 0.0, 0.0, 0.0,
            0.0, 0.0, -1.0, -1.0,
            0.0, 0.0, -1.0, 1.0,
        ];
        assert_eq!(dst, want);
    }

    #[test]
    fn offsets_cover_the_whole_range() {
        let mut rng = Rng::new(1);
        let mut seen = [[false; 9]; 2];
        let mut flips = 0;
        for _ in 0..2000 {
            let d = Draw::sample(4, &mut rng);
            seen[0][d.dy] = true;
            seen[1][d.dx] = true;
            flips += d.flip as usize;
        }
        assert!(seen.iter().flatten().all(|&s| s));
        assert!((850..1150).contains(&flips), "{flips} flips in 2000");
    }
}
