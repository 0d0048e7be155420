//! Sample-quality numbers for generative runs, computed with the features and predictions
//! of a classifier pipe trains itself (no Inception weights can ship here, so they are not
//! comparable to published IS/FID):
//!
//! - an Inception-style score, exp(E_x KL(p(y|x) || p(y))): 1 when the classifier sees no
//!   class in the samples (or one class in all), K when each sample is one sure class and
//!   the classes are used equally;
//! - a Fréchet distance between Gaussians fitted to two feature sets,
//!   ||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1^1/2 S2 S1^1/2)^1/2), the symmetric form of the
//!   usual tr(S1 + S2 - 2 (S1 S2)^1/2) (same eigenvalues, and every step stays symmetric).

/// The texture distance of IGM-style evaluations: for each layer of `model` (a net with
/// fixed random weights, the same for every run compared), the Gram matrix of its
/// activations (C x C, averaged over positions and images), and the mean over layers of
/// ||G_real - G_synth||_F^2 / ||G_real||_F^2. 0 for identical statistics; scale-free per
/// layer, so no layer dominates by its size.
pub fn gram_distance(model: &dyn crate::nn::Classifier, real: &[f32], synth: &[f32], shape: crate::nn::Shape3, device: &candle_core::Device) -> candle_core::Result<f64> {
    let grams = |x: &[f32]| -> candle_core::Result<Vec<Vec<f64>>> {
        let (c, h, w) = shape;
        let n = x.len() / (c * h * w);
        let t = candle_core::Tensor::from_vec(x.to_vec(), (n, c, h, w), device)?;
        let (acts, _) = model.activations(&t)?;
        acts.iter()
            .map(|a| {
                let (n, hh, ww, ch) = a.dims4()?;
                // NHWC: positions are rows, channels columns
                let rows = a.reshape((n * hh * ww, ch))?;
                let g = rows.t()?.matmul(&rows)?.affine(1.0 / (n * hh * ww) as f64, 0.0)?;
                Ok(g.flatten_all()?.to_vec1::<f32>()?.into_iter().map(|v| v as f64).collect())
            })
            .collect()
    };
    let (gr, gs) = (grams(real)?, grams(synth)?);
    let per_layer: Vec<f64> = gr
        .iter()
        .zip(&gs)
        .map(|(r, s)| r.iter().zip(s).map(|(a, b)| (a - b).powi(2)).sum::<f64>() / r.iter().map(|a| a * a).sum::<f64>().max(f64::MIN_POSITIVE))
        .collect();
    Ok(per_layer.iter().sum::<f64>() / per_layer.len().max(1) as f64)
}

/// The Inception-style score of softmax `probs` (n rows of K, each summing to 1).
pub fn inception_score(probs: &[Vec<f64>]) -> f64 {
    let n = probs.len();
    if n == 0 {
        return f64::NAN;
    }
    let k = probs[0].len();
    let mut marginal = vec![0.0; k];
    for p in probs {
        for (m, &v) in marginal.iter_mut().zip(p) {
            *m += v / n as f64;
        }
    }
    let kl: f64 = probs.iter().map(|p| p.iter().zip(&marginal).filter(|(&v, _)| v > 0.0).map(|(&v, &m)| v * (v / m).ln()).sum::<f64>()).sum::<f64>() / n as f64;
    kl.exp()
}

/// Softmax of each row of `logits`.
pub fn softmax_rows(logits: &[Vec<f32>]) -> Vec<Vec<f64>> {
    logits
        .iter()
        .map(|r| {
            let m = r.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
            let e: Vec<f64> = r.iter().map(|&v| (v as f64 - m).exp()).collect();
            let s: f64 = e.iter().sum();
            e.into_iter().map(|v| v / s).collect()
        })
        .collect()
}

/// Mean and covariance (denominator n - 1) of `xs` (n x dim, row-major).
pub fn gaussian(xs: &[f32], dim: usize) -> (Vec<f64>, Vec<f64>) {
    let n = xs.len() / dim.max(1);
    let mut mean = vec![0.0; dim];
    for row in xs.chunks(dim) {
        for (m, &v) in mean.iter_mut().zip(row) {
            *m += v as f64 / n as f64;
        }
    }
    let mut cov = vec![0.0; dim * dim];
    for row in xs.chunks(dim) {
        let c: Vec<f64> = row.iter().zip(&mean).map(|(&v, m)| v as f64 - m).collect();
        for i in 0..dim {
            for j in i..dim {
                cov[i * dim + j] += c[i] * c[j];
            }
        }
    }
    let d = (n.max(2) - 1) as f64;
    for i in 0..dim {
        for j in i..dim {
            cov[i * dim + j] /= d;
            cov[j * dim + i] = cov[i * dim + j];
        }
    }
    (mean, cov)
}

/// The Fréchet distance between the Gaussians of two feature sets (rows of `dim`).
pub fn frechet_distance(a: &[f32], b: &[f32], dim: usize) -> f64 {
    let ((m1, s1), (m2, s2)) = (gaussian(a, dim), gaussian(b, dim));
    frechet(&m1, &s1, &m2, &s2)
}

/// The Fréchet distance between N(m1, s1) and N(m2, s2) (covariances dim x dim, row-major).
pub fn frechet(m1: &[f64], s1: &[f64], m2: &[f64], s2: &[f64]) -> f64 {
    let dim = m1.len();
    let means: f64 = m1.iter().zip(m2).map(|(a, b)| (a - b).powi(2)).sum();
    let trace = |s: &[f64]| (0..dim).map(|i| s[i * dim + i]).sum::<f64>();
    let root1 = sqrt_psd(s1, dim);
    let inner = matmul(&matmul(&root1, s2, dim), &root1, dim);
    let (values, _) = eigen_symmetric(&inner, dim);
    let cross: f64 = values.iter().map(|&v| v.max(0.0).sqrt()).sum();
    means + trace(s1) + trace(s2) - 2.0 * cross
}

fn matmul(a: &[f64], b: &[f64], n: usize) -> Vec<f64> {
    let mut c = vec![0.0; n * n];
    for i in 0..n {
        for k in 0..n {
            let aik = a[i * n + k];
            if aik != 0.0 {
                for j in 0..n {
                    c[i * n + j] += aik * b[k * n + j];
                }
            }
        }
    }
    c
}

/// The square root of a symmetric positive semi-definite matrix (negative eigenvalues
/// from rounding count as 0).
pub fn sqrt_psd(s: &[f64], n: usize) -> Vec<f64> {
    let (values, vectors) = eigen_symmetric(s, n);
    let mut out = vec![0.0; n * n];
    for (k, &lambda) in values.iter().enumerate() {
        let r = lambda.max(0.0).sqrt();
        for i in 0..n {
            let vik = vectors[i * n + k] * r;
            for j in 0..n {
                out[i * n + j] += vik * vectors[j * n + k];
            }
        }
    }
    out
}

/// Eigenvalues and eigenvectors (columns, row-major n x n) of a symmetric matrix by cyclic
/// Jacobi rotations: slow for large n, exact to rounding, and free of dependencies.
pub fn eigen_symmetric(s: &[f64], n: usize) -> (Vec<f64>, Vec<f64>) {
    let mut a = s.to_vec();
    let mut v = vec![0.0; n * n];
    for i in 0..n {
        v[i * n + i] = 1.0;
    }
    let scale: f64 = a.iter().map(|x| x * x).sum::<f64>().sqrt().max(f64::MIN_POSITIVE);
    for _ in 0..100 {
        let off: f64 = (0..n).flat_map(|i| (0..n).filter(move |&j| j != i).map(move |j| (i, j))).map(|(i, j)| a[i * n + j].powi(2)).sum::<f64>().sqrt();
        if off <= 1e-14 * scale {
            break;
        }
        for p in 0..n {
            for q in p + 1..n {
                let apq = a[p * n + q];
                if apq.abs() <= 1e-300 {
                    continue;
                }
                let theta = (a[q * n + q] - a[p * n + p]) / (2.0 * apq);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let t = if theta == 0.0 { 1.0 } else { t };
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                for k in 0..n {
                    let (akp, akq) = (a[k * n + p], a[k * n + q]);
                    a[k * n + p] = c * akp - s * akq;
                    a[k * n + q] = s * akp + c * akq;
                }
                for k in 0..n {
                    let (apk, aqk) = (a[p * n + k], a[q * n + k]);
                    a[p * n + k] = c * apk - s * aqk;
                    a[q * n + k] = s * apk + c * aqk;
                }
                for k in 0..n {
                    let (vkp, vkq) = (v[k * n + p], v[k * n + q]);
                    v[k * n + p] = c * vkp - s * vkq;
                    v[k * n + q] = s * vkp + c * vkq;
                }
            }
        }
    }
    ((0..n).map(|i| a[i * n + i]).collect(), v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    #[test]
    fn the_score_is_1_without_classes_and_k_for_sure_balanced_ones() {
        let uniform = vec![vec![0.25; 4]; 8];
        assert!((inception_score(&uniform) - 1.0).abs() < 1e-12);
        let one_class = vec![vec![1.0, 0.0, 0.0, 0.0]; 8];
        assert!((inception_score(&one_class) - 1.0).abs() < 1e-12);
        let sure: Vec<Vec<f64>> = (0..8).map(|i| (0..4).map(|k| if k == i % 4 { 1.0 } else { 0.0 }).collect()).collect();
        assert!((inception_score(&sure) - 4.0).abs() < 1e-12);
        let p = softmax_rows(&[vec![0.0, 1.0, 2.0]]);
        assert!((p[0].iter().sum::<f64>() - 1.0).abs() < 1e-12 && p[0][2] > p[0][1]);
    }

    #[test]
    fn jacobi_diagonalizes_and_the_root_squares_back() {
        let n = 6;
        let x = Rng::new(1).normal_vec(n * 10, 0.0, 1.0);
        let (_, s) = gaussian(&x, n);
        let (values, v) = eigen_symmetric(&s, n);
        // S v_k = lambda_k v_k
        for k in 0..n {
            for i in 0..n {
                let sv: f64 = (0..n).map(|j| s[i * n + j] * v[j * n + k]).sum();
                assert!((sv - values[k] * v[i * n + k]).abs() < 1e-10, "eigenpair {k}");
            }
        }
        let r = sqrt_psd(&s, n);
        let rr = matmul(&r, &r, n);
        for (a, b) in rr.iter().zip(&s) {
            assert!((a - b).abs() < 1e-10);
        }
    }

    #[test]
    fn frechet_matches_the_closed_form_and_is_zero_on_itself() {
        // diagonal covariances: sum (m1 - m2)^2 + (s1 + s2 - 2 sqrt(s1 s2)) per axis
        let (m1, m2): (Vec<f64>, Vec<f64>) = (vec![0.0, 1.0, -2.0], vec![1.0, 1.0, 0.5]);
        let (d1, d2): ([f64; 3], [f64; 3]) = ([1.0, 4.0, 0.25], [9.0, 1.0, 0.25]);
        let diag = |d: &[f64; 3]| (0..9).map(|i| if i % 4 == 0 { d[i / 4] } else { 0.0 }).collect::<Vec<_>>();
        let expect: f64 = (0..3).map(|i| (m1[i] - m2[i]).powi(2) + d1[i] + d2[i] - 2.0 * (d1[i] * d2[i]).sqrt()).sum();
        assert!((frechet(&m1, &diag(&d1), &m2, &diag(&d2)) - expect).abs() < 1e-10);
        // rotating both Gaussians by one rotation changes nothing
        let x = Rng::new(2).normal_vec(3 * 200, 0.0, 1.0);
        let y: Vec<f32> = Rng::new(3).normal_vec(3 * 200, 0.5, 2.0);
        let fd = frechet_distance(&x, &y, 3);
        let rot = |v: &[f32]| -> Vec<f32> { v.chunks(3).flat_map(|r| [0.6 * r[0] - 0.8 * r[1], 0.8 * r[0] + 0.6 * r[1], r[2]]).collect() };
        assert!((frechet_distance(&rot(&x), &rot(&y), 3) - fd).abs() < 1e-4 * fd, "rotation");
        assert!((frechet_distance(&y, &x, 3) - fd).abs() < 1e-8 * fd, "symmetry");
        assert!(frechet_distance(&x, &x, 3).abs() < 1e-9);
        assert!(fd > 3.0, "means 0.5 apart on 3 axes and sd 2 vs 1: {fd}");
    }
}
