//! Losses of the ICN papers.

use candle_core::{DType, Result, Tensor, D};

/// ln(1 + exp(z)) without overflow: max(z, 0) + ln(1 + exp(-|z|)).
pub fn softplus(z: &Tensor) -> Result<Tensor> {
    z.relu()? + (z.abs()?.neg()?.exp()? + 1.0)?.log()?
}

/// What a net's logits mean and how they are trained.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Objective {
    /// K logits; the softmax ICN loss (Eq. 9) with weight alpha on pseudo-negatives.
    Softmax { alpha: f64 },
    /// One logit f(x) for "is of class `positive`"; binary cross-entropy (ICN Eq. 5), with
    /// pseudo-negatives and every other class as negatives.
    Binary { positive: u32 },
    /// WINN-single: a one-logit critic f on positives (every real sample, whatever its
    /// label) against pseudo-negatives, Eq. 5 with penalty weight `lambda`.
    Critic { lambda: f64 },
    /// IGM: a one-logit classifier f of positives (every real sample, whatever its label)
    /// against pseudo-negatives, binary cross-entropy (IGM Eq. 6).
    Igm,
    /// Supervised WINN: softmax cross-entropy on the real samples plus `weight` (the
    /// paper's a) times Eq. 5, with f the net's Wasserstein head.
    Winn { weight: f64, lambda: f64 },
}

impl Objective {
    /// The loss of a mixed batch: `labels` are data classes (or the class a pseudo-negative
    /// was made for), `negative` is 1.0 for pseudo-negatives.
    pub fn loss(&self, logits: &Tensor, labels: &[u32], negative: &[f32]) -> Result<Tensor> {
        let dev = logits.device();
        match *self {
            Objective::Softmax { alpha } => icn_softmax(logits, &Tensor::new(labels, dev)?, &Tensor::new(negative, dev)?, alpha),
            Objective::Binary { positive } => {
                let t: Vec<f32> = labels.iter().zip(negative).map(|(&y, &n)| (n == 0.0 && y == positive) as u8 as f32).collect();
                binary_cross_entropy(&logits.flatten_all()?, &Tensor::new(t.as_slice(), dev)?)
            }
            Objective::Igm => {
                let t: Vec<f32> = negative.iter().map(|&n| 1.0 - n).collect();
                binary_cross_entropy(&logits.flatten_all()?, &Tensor::new(t.as_slice(), dev)?)
            }
            Objective::Critic { .. } | Objective::Winn { .. } => candle_core::bail!("a WINN loss needs the net, not only its logits (crate::critic::critic_batch)"),
        }
    }

    /// WINN's objectives: batches pair positives with pseudo-negatives, and the loss needs
    /// the net (its gradient penalty).
    pub fn is_critic(&self) -> bool {
        matches!(self, Objective::Critic { .. } | Objective::Winn { .. })
    }

    /// Whether logits `row` claim `class`: the top class (softmax), or f(x) > 0 (binary).
    pub fn claims(&self, row: &[f32], class: u32) -> bool {
        match *self {
            Objective::Softmax { .. } | Objective::Winn { .. } => crate::logits::argmax(row) == class as usize,
            Objective::Binary { .. } | Objective::Critic { .. } | Objective::Igm => row[0] > 0.0,
        }
    }

    /// Whether a pseudo-negative made for `class` still fools the net: f_k(x) > 0, the
    /// per-class view its loss term ln(1 + exp(f_k)) takes.
    pub fn fooled_by(&self, row: &[f32], class: u32) -> bool {
        crate::logits::class_score(row, class as usize, matches!(self, Objective::Binary { .. } | Objective::Igm)).positive
    }

    /// Whether a real sample of class `label` is classified correctly.
    pub fn correct(&self, row: &[f32], label: u32) -> bool {
        match *self {
            Objective::Softmax { .. } | Objective::Winn { .. } => self.claims(row, label),
            Objective::Binary { positive } => (row[0] > 0.0) == (label == positive),
            // every real sample is a positive
            Objective::Igm => row[0] > 0.0,
            // a critic has no class: train_epoch measures it against its pseudo-negatives
            Objective::Critic { .. } => true,
        }
    }
}

/// Mean of ln(1 + exp(f)) - t f: binary cross-entropy of logits f against targets t in
/// {0, 1}, written through softplus so it cannot overflow.
pub fn binary_cross_entropy(f: &Tensor, t: &Tensor) -> Result<Tensor> {
    (softplus(f)? - (f * t)?)?.mean_all()
}

/// The softmax ICN loss (ICN paper, Eq. 9) on a mixed mini-batch.
///
/// `labels[i]` is the class of sample i; `negative[i]` is 1.0 for a pseudo-negative of class
/// `labels[i]` (label -k in the paper) and 0.0 for a real sample. Real samples contribute
/// softmax cross-entropy, pseudo-negatives ln(1 + exp(f_k(x))), weighted (1 - alpha) and
/// alpha; the batch sum is divided by the batch size, so it is the mini-batch estimate of
/// the paper's sum over the whole training set (up to a constant factor). No extra class.
pub fn icn_softmax(logits: &Tensor, labels: &Tensor, negative: &Tensor, alpha: f64) -> Result<Tensor> {
    let n = logits.dim(0)? as f64;
    let idx = labels.to_dtype(DType::U32)?.unsqueeze(1)?;
    let picked = logits.gather(&idx, 1)?.squeeze(1)?; // f_{y_i}(x_i)
    let ce = (candle_nn::ops::log_softmax(logits, D::Minus1)?.gather(&idx, 1)?.squeeze(1)?.neg())?;
    let positive = negative.affine(-1.0, 1.0)?;
    let pos_term = (ce * positive)?.sum_all()?;
    let neg_term = (softplus(&picked)? * negative)?.sum_all()?;
    ((pos_term * (1.0 - alpha))? + (neg_term * alpha)?)? / n
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn matches_the_formula_and_finite_differences() -> Result<()> {
        let dev = Device::Cpu;
        let z = vec![0.3f64, -1.2, 2.0, 0.5, 0.1, -0.4, 1.5, -2.0, 0.0];
        let labels = Tensor::new(&[2u32, 0, 1], &dev)?;
        let neg = Tensor::new(&[0f64, 1.0, 0.0], &dev)?;
        let alpha = 0.3;
        let value = |z: &[f64]| -> f64 {
            let row = |i: usize| &z[3 * i..3 * i + 3];
            let lse = |r: &[f64]| r.iter().map(|v| v.exp()).sum::<f64>().ln();
            let ce0 = lse(row(0)) - row(0)[2];
            let ce2 = lse(row(2)) - row(2)[1];
            let sp1 = (1.0 + row(1)[0].exp()).ln();
            ((1.0 - alpha) * (ce0 + ce2) + alpha * sp1) / 3.0
        };
        let logits = Var::from_vec(z.clone(), (3, 3), &dev)?;
        let loss = icn_softmax(logits.as_tensor(), &labels, &neg, alpha)?;
        assert!((loss.to_scalar::<f64>()? - value(&z)).abs() < 1e-12);
        let g = loss.backward()?.get(&logits).unwrap().flatten_all()?.to_vec1::<f64>()?;
        for i in 0..z.len() {
            let (mut a, mut b) = (z.clone(), z.clone());
            a[i] += 1e-6;
            b[i] -= 1e-6;
            let fd = (value(&a) - value(&b)) / 2e-6;
            assert!((fd - g[i]).abs() < 1e-8, "d/dz{i}: analytic {} vs fd {fd}", g[i]);
        }
        Ok(())
    }

    #[test]
    fn binary_objective_is_cross_entropy_with_pseudo_negatives_as_negatives() -> Result<()> {
        let dev = Device::Cpu;
        let f = Tensor::new(&[[0.5f32], [-1.0], [2.0]], &dev)?;
        // a positive (class 3), another class, and a pseudo-negative made for class 3
        let loss = Objective::Binary { positive: 3 }.loss(&f, &[3, 7, 3], &[0.0, 0.0, 1.0])?.to_scalar::<f32>()?;
        let sp = |z: f32| (1.0 + z.exp()).ln();
        let want = ((sp(0.5) - 0.5) + sp(-1.0) + sp(2.0)) / 3.0;
        assert!((loss - want).abs() < 1e-6, "{loss} vs {want}");
        let o = Objective::Binary { positive: 3 };
        assert!(o.correct(&[0.5], 3) && o.correct(&[-1.0], 7) && !o.correct(&[-1.0], 3));
        assert!(o.claims(&[0.1], 3) && !o.claims(&[-0.1], 3));
        Ok(())
    }

    #[test]
    fn igm_objective_takes_every_real_sample_as_a_positive_whatever_its_label() -> Result<()> {
        let dev = Device::Cpu;
        let f = Tensor::new(&[[0.5f32], [-1.0], [2.0]], &dev)?;
        // two real samples of different classes, then a pseudo-negative
        let loss = Objective::Igm.loss(&f, &[3, 7, 0], &[0.0, 0.0, 1.0])?.to_scalar::<f32>()?;
        let sp = |z: f32| (1.0 + z.exp()).ln();
        let want = ((sp(0.5) - 0.5) + (sp(-1.0) + 1.0) + sp(2.0)) / 3.0;
        assert!((loss - want).abs() < 1e-6, "{loss} vs {want}");
        assert!(Objective::Igm.correct(&[0.5], 7) && !Objective::Igm.correct(&[-0.5], 3));
        assert!(Objective::Igm.fooled_by(&[0.1], 0) && !Objective::Igm.fooled_by(&[-0.1], 0));
        Ok(())
    }

    #[test]
    fn softplus_is_stable() -> Result<()> {
        let t = Tensor::new(&[-100f32, 0.0, 100.0], &Device::Cpu)?;
        let v = softplus(&t)?.to_vec1::<f32>()?;
        assert!(v[0] >= 0.0 && v[0] < 1e-30);
        assert!((v[1] - 2f32.ln()).abs() < 1e-6);
        assert!((v[2] - 100.0).abs() < 1e-4);
        Ok(())
    }
}
