//! Classification error, overall and per class.

use crate::nn::{Classifier, Mode};
use crate::logits::argmax;
use crate::nn::Shape3;
use candle_core::{Device, Result, Tensor};

/// Logits of every image (N x C x H x W in [-1, 1]), in batches: one row per image.
pub fn logits(model: &dyn Classifier, x: &[f32], shape: Shape3, batch_size: usize, device: &Device) -> Result<Vec<Vec<f32>>> {
    logits_observed(model, x, shape, batch_size, device, &mut crate::keep_going)
}

/// [`logits`], reporting the images done after each batch.
pub fn logits_observed(model: &dyn Classifier, x: &[f32], shape: Shape3, batch_size: usize, device: &Device, on_batch: crate::OnStep<usize>) -> Result<Vec<Vec<f32>>> {
    let (c, h, w) = shape;
    let d = c * h * w;
    let mut out = Vec::with_capacity(x.len() / d.max(1));
    for chunk in x.chunks(batch_size.max(1) * d) {
        let t = Tensor::from_vec(chunk.to_vec(), (chunk.len() / d, c, h, w), device)?;
        out.extend(model.forward_mode(&t, Mode::Frozen)?.to_vec2::<f32>()?);
        if on_batch(chunk.len() / d).is_break() {
            return Err(crate::stopped());
        }
    }
    Ok(out)
}

/// Predicted class of every image: the top logit.
pub fn predict(model: &dyn Classifier, x: &[f32], shape: Shape3, batch_size: usize, device: &Device) -> Result<Vec<u32>> {
    Ok(logits(model, x, shape, batch_size, device)?.iter().map(|r| argmax(r) as u32).collect())
}

/// One-vs-all prediction: argmax over k of f_k(x), from each binary net's logits.
pub fn one_vs_all(per_class: &[Vec<Vec<f32>>]) -> Vec<u32> {
    let n = per_class.first().map_or(0, |c| c.len());
    (0..n).map(|i| argmax(&per_class.iter().map(|c| c[i][0]).collect::<Vec<_>>()) as u32).collect()
}

/// Counts of examples and mistakes per true class.
#[derive(Clone, Debug, PartialEq)]
pub struct ClassErrors {
    pub count: Vec<usize>,
    pub wrong: Vec<usize>,
}

impl ClassErrors {
    pub fn new(predicted: &[u32], labels: &[u32], num_classes: usize) -> Self {
        let mut e = ClassErrors { count: vec![0; num_classes], wrong: vec![0; num_classes] };
        for (&p, &y) in predicted.iter().zip(labels) {
            e.count[y as usize] += 1;
            e.wrong[y as usize] += (p != y) as usize;
        }
        e
    }
    pub fn error(&self) -> f64 {
        self.wrong.iter().sum::<usize>() as f64 / self.count.iter().sum::<usize>().max(1) as f64
    }
    pub fn class_error(&self, k: usize) -> f64 {
        self.wrong[k] as f64 / self.count[k].max(1) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_class_and_overall_error() {
        let e = ClassErrors::new(&[0, 1, 1, 2, 0], &[0, 1, 2, 2, 2], 3);
        assert_eq!(e.count, vec![1, 1, 3]);
        assert_eq!(e.wrong, vec![0, 0, 2]);
        assert!((e.error() - 0.4).abs() < 1e-12);
        assert!((e.class_error(2) - 2.0 / 3.0).abs() < 1e-12);
    }
}
