//! A linear SVM with an L2 penalty and the squared hinge loss (the L2-SVM of the IGM paper's
//! semi-supervised probe), one-vs-rest for K classes, solved by dual coordinate descent
//! (Hsieh et al., ICML 2008: LIBLINEAR's `-s 1` solver).
//!
//! Each binary problem minimizes 0.5 ||w||^2 + C sum_i max(0, 1 - y_i w.x_i)^2 over w, with
//! the bias as a constant feature (penalized like the weights, as LIBLINEAR does). Its dual,
//! min_a 0.5 a'Qa - sum a with Q_ij = y_i y_j x_i.x_j + delta_ij / (2C), a >= 0, has one
//! closed-form minimizer per coordinate, so a pass costs one dot product per example.
//! Examples are visited in an order drawn from a seeded generator: the result is the same
//! for the same seed.

use crate::rng::Rng;

/// Settings of [`train`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SvmConfig {
    /// C: the weight of the loss against the L2 penalty.
    pub c: f64,
    /// Stop once the largest projected gradient of a pass is below this (LIBLINEAR: 0.1).
    pub tolerance: f64,
    /// At most this many passes over the examples per class.
    pub max_passes: usize,
    /// Seed of the order examples are visited in.
    pub seed: u64,
}

impl SvmConfig {
    pub fn new(c: f64, seed: u64) -> Self {
        SvmConfig { c, tolerance: 1e-3, max_passes: 1000, seed }
    }
}

/// One weight vector per class (the last entry of each is the bias).
#[derive(Clone, Debug, PartialEq)]
pub struct LinearSvm {
    pub dim: usize,
    pub weights: Vec<Vec<f64>>,
}

impl LinearSvm {
    /// Score of class k for example `x` (`dim` values).
    pub fn score(&self, k: usize, x: &[f32]) -> f64 {
        let w = &self.weights[k];
        x.iter().zip(w).map(|(&a, &b)| a as f64 * b).sum::<f64>() + w[self.dim]
    }

    /// The class with the greatest score (the first on ties).
    pub fn predict(&self, x: &[f32]) -> usize {
        (0..self.weights.len()).fold(0, |best, k| if self.score(k, x) > self.score(best, x) { k } else { best })
    }

    /// The share of `labels` that `predict` gets wrong on `xs` (n x dim, row-major).
    pub fn error(&self, xs: &[f32], labels: &[u32]) -> f64 {
        let wrong = labels.iter().enumerate().filter(|&(i, &y)| self.predict(&xs[i * self.dim..(i + 1) * self.dim]) != y as usize).count();
        wrong as f64 / labels.len().max(1) as f64
    }
}

/// One-vs-rest L2-SVMs for classes 0..`classes` on `xs` (n x `dim`, row-major) with
/// `labels` below `classes`.
pub fn train(xs: &[f32], labels: &[u32], dim: usize, classes: usize, cfg: &SvmConfig) -> LinearSvm {
    assert_eq!(xs.len(), labels.len() * dim, "{} values for {} examples of {dim}", xs.len(), labels.len());
    let weights = (0..classes)
        .map(|k| {
            let y: Vec<f64> = labels.iter().map(|&l| if l as usize == k { 1.0 } else { -1.0 }).collect();
            binary(xs, &y, dim, cfg, cfg.seed ^ (k as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15))
        })
        .collect();
    LinearSvm { dim, weights }
}

/// The primal objective 0.5 ||w||^2 + C sum max(0, 1 - y w.x)^2 of one binary problem.
pub fn primal(xs: &[f32], y: &[f64], w: &[f64], c: f64) -> f64 {
    let dim = w.len() - 1;
    let loss: f64 = y
        .iter()
        .enumerate()
        .map(|(i, &yi)| {
            let m = 1.0 - yi * (dot(&xs[i * dim..(i + 1) * dim], w) + w[dim]);
            if m > 0.0 {
                m * m
            } else {
                0.0
            }
        })
        .sum();
    0.5 * w.iter().map(|v| v * v).sum::<f64>() + c * loss
}

fn dot(x: &[f32], w: &[f64]) -> f64 {
    x.iter().zip(w).map(|(&a, &b)| a as f64 * b).sum()
}

/// Dual coordinate descent for labels `y` in {-1, 1}; returns w with the bias last.
pub fn binary(xs: &[f32], y: &[f64], dim: usize, cfg: &SvmConfig, seed: u64) -> Vec<f64> {
    let n = y.len();
    let diag = 0.5 / cfg.c;
    // Q_ii: ||x_i||^2 plus the bias feature's 1, plus the squared hinge's 1/(2C)
    let q: Vec<f64> = (0..n).map(|i| xs[i * dim..(i + 1) * dim].iter().map(|&v| v as f64 * v as f64).sum::<f64>() + 1.0 + diag).collect();
    let mut alpha = vec![0.0f64; n];
    let mut w = vec![0.0f64; dim + 1];
    let mut order: Vec<usize> = (0..n).collect();
    let mut rng = Rng::new(seed);
    for _ in 0..cfg.max_passes {
        for i in (1..n).rev() {
            order.swap(i, rng.below(i + 1));
        }
        let mut largest = 0.0f64;
        for &i in &order {
            let x = &xs[i * dim..(i + 1) * dim];
            let g = y[i] * (dot(x, &w) + w[dim]) - 1.0 + diag * alpha[i];
            // the projected gradient: alpha >= 0 binds from below only
            let pg = if alpha[i] == 0.0 { g.min(0.0) } else { g };
            largest = largest.max(pg.abs());
            if pg != 0.0 {
                let old = alpha[i];
                alpha[i] = (old - g / q[i]).max(0.0);
                let step = (alpha[i] - old) * y[i];
                for (wj, &xj) in w.iter_mut().zip(x) {
                    *wj += step * xj as f64;
                }
                w[dim] += step;
            }
        }
        if largest < cfg.tolerance {
            break;
        }
    }
    w
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two Gaussian blobs per class in `dim` dimensions, class means apart by `gap`.
    fn blobs(n: usize, dim: usize, classes: usize, gap: f64, seed: u64) -> (Vec<f32>, Vec<u32>) {
        let mut rng = Rng::new(seed);
        let (mut xs, mut ys) = (Vec::new(), Vec::new());
        for i in 0..n {
            let k = i % classes;
            for j in 0..dim {
                let centre = if j % classes == k { gap } else { 0.0 };
                xs.push((centre + rng.normal()) as f32);
            }
            ys.push(k as u32);
        }
        (xs, ys)
    }

    /// The primal minimum by plain gradient descent (the squared hinge is smooth).
    fn primal_by_descent(xs: &[f32], y: &[f64], dim: usize, c: f64) -> Vec<f64> {
        let n = y.len();
        let lipschitz = 1.0 + 2.0 * c * (0..n).map(|i| xs[i * dim..(i + 1) * dim].iter().map(|&v| v as f64 * v as f64).sum::<f64>() + 1.0).sum::<f64>();
        let mut w = vec![0.0; dim + 1];
        for _ in 0..20000 {
            let mut g = w.clone();
            for i in 0..n {
                let x = &xs[i * dim..(i + 1) * dim];
                let m = 1.0 - y[i] * (dot(x, &w) + w[dim]);
                if m > 0.0 {
                    for (gj, &xj) in g.iter_mut().zip(x) {
                        *gj -= 2.0 * c * m * y[i] * xj as f64;
                    }
                    g[dim] -= 2.0 * c * m * y[i];
                }
            }
            for (wj, gj) in w.iter_mut().zip(&g) {
                *wj -= gj / lipschitz;
            }
        }
        w
    }

    #[test]
    fn dual_coordinate_descent_reaches_the_primal_minimum() {
        let (xs, labels) = blobs(60, 5, 2, 1.0, 3);
        let y: Vec<f64> = labels.iter().map(|&l| if l == 1 { 1.0 } else { -1.0 }).collect();
        for c in [0.01, 1.0] {
            let cfg = SvmConfig { tolerance: 1e-8, ..SvmConfig::new(c, 1) };
            let w = binary(&xs, &y, 5, &cfg, 1);
            let reference = primal_by_descent(&xs, &y, 5, c);
            let (ours, theirs) = (primal(&xs, &y, &w, c), primal(&xs, &y, &reference, c));
            assert!((ours - theirs).abs() < 1e-6 * theirs.max(1.0), "C = {c}: dual CD {ours}, gradient descent {theirs}");
            for (a, b) in w.iter().zip(&reference) {
                assert!((a - b).abs() < 1e-3, "C = {c}: w {w:?} vs {reference:?}");
            }
        }
    }

    #[test]
    fn separable_classes_are_separated_and_overlapping_ones_mostly() {
        let (xs, labels) = blobs(300, 8, 4, 8.0, 5);
        let svm = train(&xs, &labels, 8, 4, &SvmConfig::new(1.0, 2));
        assert_eq!(svm.error(&xs, &labels), 0.0);
        // held-out data from the same blobs, with overlap: far better than chance (0.75)
        let (xs, labels) = blobs(400, 8, 4, 1.5, 6);
        let svm = train(&xs[..8 * 200], &labels[..200], 8, 4, &SvmConfig::new(0.1, 2));
        let err = svm.error(&xs[8 * 200..], &labels[200..]);
        assert!(err < 0.35, "held-out error {err}");
    }

    #[test]
    fn the_same_seed_gives_the_same_weights() {
        let (xs, labels) = blobs(100, 6, 3, 1.0, 9);
        let cfg = SvmConfig { max_passes: 3, ..SvmConfig::new(1.0, 4) };
        assert_eq!(train(&xs, &labels, 6, 3, &cfg), train(&xs, &labels, 6, 3, &cfg));
        let other = SvmConfig { seed: 5, ..cfg };
        assert_ne!(train(&xs, &labels, 6, 3, &cfg), train(&xs, &labels, 6, 3, &other), "3 passes do not converge: the order shows");
    }
}
