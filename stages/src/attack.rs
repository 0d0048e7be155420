//! Adversarial examples: FGSM (Goodfellow et al.), x_adv = clip(x + eps sign(grad_x CE), lo, hi),
//! and PGD (Madry et al.), FGSM iterated with a smaller step and projected back onto the
//! eps-ball around x after every step. The net is frozen, so each backward pass computes the
//! input gradient only.

use crate::nn::{Classifier, Mode, Shape3};
use crate::rng::Rng;
use candle_core::{Device, Result, Tensor, Var};

/// An L-infinity attack, in the units of the images (e.g. [-1, 1]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Attack {
    /// Radius of the L-infinity ball around each image.
    pub eps: f32,
    /// The valid pixel range: adversarial images are clipped to it.
    pub lo: f32,
    pub hi: f32,
    /// Signed-gradient steps (1 for FGSM).
    pub steps: u32,
    /// Size of each step (eps for FGSM).
    pub step_size: f32,
    /// Start from a uniform point of the eps-ball instead of the image (PGD).
    pub random_start: bool,
}

impl Attack {
    /// FGSM: one step of size eps from the image itself.
    pub fn fgsm(eps: f32, lo: f32, hi: f32) -> Self {
        Attack { eps, lo, hi, steps: 1, step_size: eps, random_start: false }
    }
}

/// An attack as a setting, in the units of the images. Radii are kept in f64, as the
/// pipeline computed them, and narrowed to f32 only where the attack runs.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum AttackConfig {
    Fgsm { eps: f64, lo: f64, hi: f64 },
    Pgd { eps: f64, lo: f64, hi: f64, steps: u32, step_size: f64, random_start: bool },
}

impl AttackConfig {
    pub fn attack(&self) -> Attack {
        match *self {
            AttackConfig::Fgsm { eps, lo, hi } => Attack::fgsm(eps as f32, lo as f32, hi as f32),
            AttackConfig::Pgd { eps, lo, hi, steps, step_size, random_start } => {
                Attack { eps: eps as f32, lo: lo as f32, hi: hi as f32, steps, step_size: step_size as f32, random_start }
            }
        }
    }

    /// A short name for tables and logs, e.g. `FGSM eps 0.25`.
    pub fn name(&self) -> String {
        match *self {
            AttackConfig::Fgsm { eps, .. } => format!("FGSM eps {}", eps as f32),
            AttackConfig::Pgd { eps, steps, .. } => format!("PGD-{steps} eps {}", eps as f32),
        }
    }
}

/// FGSM on a batch of images (N x C x H x W, row-major) with labels `y`. `eps`, `lo` and
/// `hi` are in the units of the images (e.g. [-1, 1]).
#[allow(clippy::too_many_arguments)]
pub fn fgsm(model: &dyn Classifier, x: &[f32], y: &[u32], shape: Shape3, eps: f32, lo: f32, hi: f32, device: &Device) -> Result<Vec<f32>> {
    attack(model, x, y, shape, &Attack::fgsm(eps, lo, hi), &mut Rng::new(0), device)
}

/// Adversarial versions of a batch of images (N x C x H x W, row-major) with labels `y`.
/// `rng` draws the random start only.
pub fn attack(model: &dyn Classifier, x: &[f32], y: &[u32], shape: Shape3, a: &Attack, rng: &mut Rng, device: &Device) -> Result<Vec<f32>> {
    let mut adv = if a.random_start {
        let noise = rng.uniform_vec(x.len(), -(a.eps as f64), a.eps as f64);
        x.iter().zip(&noise).map(|(v, n)| (v + n).clamp(a.lo, a.hi)).collect()
    } else {
        x.to_vec()
    };
    for _ in 0..a.steps {
        let g = loss_gradient(model, &adv, y, shape, device)?;
        for ((v, &g), &x0) in adv.iter_mut().zip(&g).zip(x) {
            // sign(0) = 0: an input the loss does not depend on is left alone
            let step = a.step_size * g.signum() * (g != 0.0) as u8 as f32;
            *v = (*v + step).clamp(x0 - a.eps, x0 + a.eps).clamp(a.lo, a.hi);
        }
    }
    Ok(adv)
}

/// d CE(f(x), y) / dx for every pixel.
fn loss_gradient(model: &dyn Classifier, x: &[f32], y: &[u32], shape: Shape3, device: &Device) -> Result<Vec<f32>> {
    let (c, h, w) = shape;
    let xv = Var::from_vec(x.to_vec(), (y.len(), c, h, w), device)?;
    let logits = model.forward_mode(xv.as_tensor(), Mode::Frozen)?;
    let labels = Tensor::new(y, device)?;
    // The sum, not the mean: the sign of each input's gradient is the same, and a sum
    // keeps tiny gradients away from underflow.
    let loss = (candle_nn::loss::cross_entropy(&logits, &labels)? * y.len() as f64)?;
    loss.backward()?.get(xv.as_tensor()).ok_or_else(|| candle_core::Error::Msg("no gradient reached the input".into()))?.flatten_all()?.to_vec1::<f32>()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::{Cnn4, Cnn4Config};

    fn setup() -> Result<(Cnn4, Vec<f32>, Vec<u32>)> {
        let net = Cnn4::new(Cnn4Config::mnist(10, 0.125, 0.2), &mut Rng::new(1), &Device::Cpu)?;
        Ok((net, Rng::new(2).uniform_vec(4 * 784, -0.9, 0.9), vec![1u32, 3, 5, 7]))
    }

    fn loss(net: &Cnn4, v: &[f32], y: &[u32]) -> Result<f32> {
        let dev = Device::Cpu;
        let t = Tensor::from_vec(v.to_vec(), (y.len(), 1, 28, 28), &dev)?;
        candle_nn::loss::cross_entropy(&net.forward(&t)?, &Tensor::new(y, &dev)?)?.to_scalar::<f32>()
    }

    #[test]
    fn fgsm_raises_the_loss_and_stays_in_range() -> Result<()> {
        let (net, x, y) = setup()?;
        let adv = fgsm(&net, &x, &y, (1, 28, 28), 0.1, -1.0, 1.0, &Device::Cpu)?;
        assert!(adv.iter().all(|v| (-1.0..=1.0).contains(v)));
        assert!(adv.iter().zip(&x).all(|(a, b)| (a - b).abs() <= 0.1 + 1e-6));
        // every pixel moves by exactly eps (the range leaves room): the signed gradient
        let moved = adv.iter().zip(&x).filter(|(a, b)| ((*a - *b).abs() - 0.1).abs() < 1e-5).count();
        assert!(moved > x.len() * 9 / 10, "only {moved} of {} pixels moved by eps", x.len());
        assert!(loss(&net, &adv, &y)? > loss(&net, &x, &y)?);
        Ok(())
    }

    #[test]
    fn pgd_stays_in_the_ball_and_beats_fgsm() -> Result<()> {
        let (net, x, y) = setup()?;
        let eps = 0.05;
        let pgd = Attack { eps, lo: -1.0, hi: 1.0, steps: 10, step_size: eps / 4.0, random_start: true };
        let adv = attack(&net, &x, &y, (1, 28, 28), &pgd, &mut Rng::new(3), &Device::Cpu)?;
        assert!(adv.iter().zip(&x).all(|(a, b)| (a - b).abs() <= eps + 1e-6));
        let f = fgsm(&net, &x, &y, (1, 28, 28), eps, -1.0, 1.0, &Device::Cpu)?;
        let (l0, lf, lp) = (loss(&net, &x, &y)?, loss(&net, &f, &y)?, loss(&net, &adv, &y)?);
        assert!(lp > l0 && lp >= lf * 0.99, "clean {l0}, fgsm {lf}, pgd {lp}");
        // one full step from the image is FGSM exactly
        let one = Attack { steps: 1, step_size: eps, random_start: false, ..pgd };
        assert_eq!(attack(&net, &x, &y, (1, 28, 28), &one, &mut Rng::new(9), &Device::Cpu)?, f);
        Ok(())
    }

    #[test]
    fn clipping_keeps_images_in_range() -> Result<()> {
        let (net, _, y) = setup()?;
        let x = vec![1.0f32; 4 * 784];
        let adv = fgsm(&net, &x, &y, (1, 28, 28), 0.5, -1.0, 1.0, &Device::Cpu)?;
        assert!(adv.iter().all(|v| (0.5..=1.0).contains(v)));
        Ok(())
    }
}
