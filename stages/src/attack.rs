//! Adversarial examples: FGSM (Goodfellow et al.), x_adv = clip(x + eps sign(grad_x CE), lo, hi).
//! The net is frozen, so the backward pass computes the input gradient only.

use crate::nn::{Classifier, Mode};
use crate::synthesize::Shape3;
use candle_core::{Device, Result, Tensor, Var};

/// FGSM on a batch of images (N x C x H x W, row-major) with labels `y`. `eps`, `lo` and
/// `hi` are in the units of the images (e.g. [-1, 1]).
#[allow(clippy::too_many_arguments)]
pub fn fgsm(model: &dyn Classifier, x: &[f32], y: &[u32], shape: Shape3, eps: f32, lo: f32, hi: f32, device: &Device) -> Result<Vec<f32>> {
    let (c, h, w) = shape;
    let xv = Var::from_vec(x.to_vec(), (y.len(), c, h, w), device)?;
    let logits = model.forward_mode(xv.as_tensor(), Mode::Frozen)?;
    let labels = Tensor::new(y, device)?;
    // The sum, not the mean: the sign of each input's gradient is the same, and a sum
    // keeps tiny gradients away from underflow.
    let loss = (candle_nn::loss::cross_entropy(&logits, &labels)? * y.len() as f64)?;
    let g = loss.backward()?.get(xv.as_tensor()).ok_or_else(|| candle_core::Error::Msg("no gradient reached the input".into()))?.flatten_all()?.to_vec1::<f32>()?;
    Ok(x.iter().zip(&g).map(|(&v, &g)| (v + eps * g.signum() * (g != 0.0) as u8 as f32).clamp(lo, hi)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::{Cnn4, Cnn4Config};
    use crate::rng::Rng;

    #[test]
    fn fgsm_raises_the_loss_and_stays_in_range() -> Result<()> {
        let dev = Device::Cpu;
        let net = Cnn4::new(Cnn4Config::mnist(10, 0.125, 0.2), &mut Rng::new(1), &dev)?;
        let x = Rng::new(2).uniform_vec(4 * 784, -1.0, 1.0);
        let y = vec![1u32, 3, 5, 7];
        let adv = fgsm(&net, &x, &y, (1, 28, 28), 0.1, -1.0, 1.0, &dev)?;
        assert!(adv.iter().all(|v| (-1.0..=1.0).contains(v)));
        assert!(adv.iter().zip(&x).all(|(a, b)| (a - b).abs() <= 0.1 + 1e-6));
        let loss = |v: &[f32]| -> Result<f32> {
            let t = Tensor::from_vec(v.to_vec(), (4, 1, 28, 28), &dev)?;
            candle_nn::loss::cross_entropy(&net.forward(&t)?, &Tensor::new(y.as_slice(), &dev)?)?.to_scalar::<f32>()
        };
        assert!(loss(&adv)? > loss(&x)?);
        Ok(())
    }
}
