//! The WINN critic loss (WINN paper, Eq. 5): E_neg f(x) - E_pos f(x) + lambda E[(||grad_xhat
//! f(xhat)||_2 - 1)^2], xhat = u pos + (1 - u) neg with u ~ U(0, 1) per pair.
//!
//! The penalty is differentiated with respect to the weights, so the input gradient it is
//! made of must itself be a graph. candle detaches every gradient it computes unless told
//! otherwise; detached, the first layer still gets a second-order gradient and every later
//! layer silently gets none (DESIGN.md section 4). [`gradient_penalty`] therefore runs its
//! inner backward pass with candle's per-thread `create_graph` switch on (pipe's vendored
//! candle-core, `vendor/candle-core.patch`) and restores it afterwards: the guarantee is in
//! the one function that needs it, whatever the environment, and every other backward pass
//! (training, synthesis, attacks) keeps detached gradients, which free their memory early.
//!
//! Supervised WINN adds a (Wasserstein term + penalty) to softmax cross-entropy on a
//! K-logit net. Its f is not one of the class logits: the reference code
//! (github.com/kjunelee/WINN, supervised/WINN-ResNet-MNIST.ipynb, `wass = linear(fc, 1)`)
//! puts one more linear layer on top of the K logits, f(x) = v . logits(x) + c, with v
//! drawn from N(0, 0.02^2) and c = 0; that is [`WassHead`]. WINN-single's net has one
//! logit, and f is that logit ([`single_logit`]). Both are a "score": a map from images
//! (N x C x H x W) to one number per image (N), which is what the functions here take.

use crate::nn::{Classifier, Layout, Mode, NetConfig, Normalization, TorchName};
use crate::rng::Rng;
use candle_core::{DType, Device, Result, Tensor, Var};

/// The paper's lambda.
pub const LAMBDA: f64 = 10.0;

/// Keeps the gradients of the backward passes run while it lives differentiable, on this
/// thread; restores the previous setting when dropped (also on an early return).
struct CreateGraph {
    before: bool,
}

impl CreateGraph {
    fn on() -> Self {
        CreateGraph { before: candle_core::backprop::set_create_graph(true) }
    }
}

impl Drop for CreateGraph {
    fn drop(&mut self) {
        candle_core::backprop::set_create_graph(self.before);
    }
}

/// xhat = u pos + (1 - u) neg, one u ~ U(0, 1) per pair (row i of each), drawn from `rng`.
pub fn interpolate(pos: &Tensor, neg: &Tensor, rng: &mut Rng) -> Result<Tensor> {
    if pos.dims() != neg.dims() {
        candle_core::bail!("interpolation pairs positives {:?} with pseudo-negatives {:?}", pos.dims(), neg.dims());
    }
    let n = pos.dim(0)?;
    let mut shape = vec![1usize; pos.rank()];
    shape[0] = n;
    let u = Tensor::from_vec(rng.uniform_vec(n, 0.0, 1.0), shape, pos.device())?.to_dtype(pos.dtype())?;
    let v = u.affine(-1.0, 1.0)?;
    pos.broadcast_mul(&u)? + neg.broadcast_mul(&v)?
}

/// E[(||grad_x score(x)|_xhat||_2 - 1)^2] over the rows of `xhat`, differentiable with
/// respect to whatever `score` depends on (the weights). Rows must not interact inside
/// `score` (no batch norm in training mode): one backward of the summed scores then gives
/// each row its own gradient.
pub fn gradient_penalty(xhat: &Tensor, score: &dyn Fn(&Tensor) -> Result<Tensor>) -> Result<Tensor> {
    let x = Var::from_tensor(&xhat.detach())?;
    let s = score(x.as_tensor())?;
    let mut grads = {
        let _graph = CreateGraph::on();
        // only d score / d x is used: the fused ops skip their parameters' gradients
        let _inputs = crate::nn::wanted::InputsOnly::on();
        s.sum_all()?.backward()?
    };
    let g = grads.remove(x.as_tensor()).ok_or_else(|| candle_core::Error::Msg("the score does not depend on its input".into()))?;
    let sq = g.sqr()?.flatten_from(1)?.sum(1)?;
    // sqrt has an infinite derivative at 0 (a net whose every unit is off there); the
    // offset is far below f32 resolution of any norm that matters.
    let norm = (sq + 1e-12)?.sqrt()?;
    (norm - 1.0)?.sqr()?.mean_all()
}

/// E_neg f - E_pos f: the negative of the critic's Wasserstein estimate.
pub fn wasserstein(f_pos: &Tensor, f_neg: &Tensor) -> Result<Tensor> {
    f_neg.mean_all()? - f_pos.mean_all()?
}

/// The terms of Eq. 5 for one critic step.
pub struct CriticLoss {
    /// E_neg f - E_pos f.
    pub wasserstein: Tensor,
    /// E[(||grad f(xhat)|| - 1)^2], not yet scaled by lambda.
    pub penalty: Tensor,
    /// wasserstein + lambda penalty: what WINN-single minimizes (supervised WINN adds a
    /// times it to cross-entropy).
    pub total: Tensor,
}

/// Eq. 5 on a batch of positives and an equal batch of pseudo-negatives; `rng` draws the
/// interpolation weights.
pub fn critic_loss(score: &dyn Fn(&Tensor) -> Result<Tensor>, pos: &Tensor, neg: &Tensor, lambda: f64, rng: &mut Rng) -> Result<CriticLoss> {
    let xhat = interpolate(pos, neg, rng)?;
    let penalty = gradient_penalty(&xhat, score)?;
    let wasserstein = wasserstein(&score(pos)?, &score(neg)?)?;
    let total = (&wasserstein + (&penalty * lambda)?)?;
    Ok(CriticLoss { wasserstein, penalty, total })
}

/// Why `net` cannot be trained with the penalty, if it cannot: batch norm in training
/// mode mixes the rows of a batch, so no row has an input gradient of its own (WINN uses
/// layer norm for this reason).
pub fn unsupported(net: &NetConfig) -> Option<&'static str> {
    (net.norm == Normalization::Batch).then_some("batch norm mixes the images of a batch, so the gradient penalty has no per-image gradient: use layer norm or none")
}

/// f of a one-logit net: its logit, one per image.
pub fn single_logit(logits: &Tensor) -> Result<Tensor> {
    match logits.dims() {
        [_, 1] => logits.flatten_all(),
        d => candle_core::bail!("a single-logit critic needs N x 1 logits, got {d:?}"),
    }
}

/// Supervised WINN's f: a linear map of the K class logits to one number.
pub struct WassHead {
    pub weight: Var,
    pub bias: Var,
}

impl WassHead {
    /// v ~ N(0, 0.02^2), c = 0, as the reference code initializes it.
    pub fn new(num_classes: usize, rng: &mut Rng, device: &Device) -> Result<Self> {
        Ok(WassHead {
            weight: Var::from_vec(rng.normal_vec(num_classes, 0.0, 0.02), (num_classes, 1), device)?,
            bias: Var::zeros(1, DType::F32, device)?,
        })
    }

    /// f = logits . v + c, one per row.
    pub fn score(&self, logits: &Tensor) -> Result<Tensor> {
        logits.matmul(self.weight.as_tensor())?.broadcast_add(self.bias.as_tensor())?.flatten_all()
    }

    pub fn named_vars(&self) -> Vec<(String, Var)> {
        vec![("wass.weight".into(), self.weight.clone()), ("wass.bias".into(), self.bias.clone())]
    }
}

/// The pipe (and PyTorch) name of the head's weight: a checkpoint holding it is a
/// supervised WINN net's.
pub const WASS_WEIGHT: &str = "wass.weight";
const WASS_BIAS: &str = "wass.bias";

/// A classifier with supervised WINN's Wasserstein head: its logits are the classifier's
/// (evaluation and attacks see a plain K-class net), its critic is the head on them.
pub struct WithWassHead {
    net: Box<dyn Classifier>,
    head: WassHead,
}

impl WithWassHead {
    pub fn new(net: Box<dyn Classifier>, head: WassHead) -> Self {
        WithWassHead { net, head }
    }
}

impl Classifier for WithWassHead {
    fn forward_mode(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        self.net.forward_mode(x, mode)
    }
    fn activations(&self, x: &Tensor) -> Result<(Vec<Tensor>, Tensor)> {
        self.net.activations(x)
    }
    fn critic_of(&self, logits: &Tensor, mode: Mode) -> Result<Tensor> {
        logits.matmul(&mode.param(&self.head.weight))?.broadcast_add(&mode.param(&self.head.bias))?.flatten_all()
    }
    fn named_vars(&self) -> Vec<(String, Var)> {
        let mut v = self.net.named_vars();
        v.extend(self.head.named_vars());
        v
    }
    fn named_buffers(&self) -> Vec<(String, Var)> {
        self.net.named_buffers()
    }
    fn torch_names(&self) -> Vec<TorchName> {
        let mut names = self.net.torch_names();
        let k = self.head.weight.dims()[0];
        names.push(TorchName::new(WASS_WEIGHT, WASS_WEIGHT, Layout::Linear { channels: k }));
        names.push(TorchName::new(WASS_BIAS, WASS_BIAS, Layout::Same));
        names
    }
}

/// A net seen through its critic, for synthesis: one column f(x) (`class_weight` None), or
/// K columns f(x) + w log softmax_j(x). The second is supervised WINN's class-conditioned
/// synthesis: the reference code descends |E f - threshold| + 0.5 CE(x, k), so a sample
/// of class k rises in f while staying a k.
pub struct CriticView<'a> {
    pub net: &'a dyn Classifier,
    pub class_weight: Option<f64>,
}

impl Classifier for CriticView<'_> {
    fn forward_mode(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        let logits = self.net.forward_mode(x, mode)?;
        let f = self.net.critic_of(&logits, mode)?.unsqueeze(1)?;
        match self.class_weight {
            None => Ok(f),
            Some(w) => (candle_nn::ops::log_softmax(&logits, candle_core::D::Minus1)? * w)?.broadcast_add(&f),
        }
    }
    fn named_vars(&self) -> Vec<(String, Var)> {
        self.net.named_vars()
    }
}

/// The loss of one WINN batch and what it measured.
pub struct CriticBatch {
    pub loss: Tensor,
    /// The logits of the whole batch (positives first).
    pub logits: Tensor,
    /// f of each row.
    pub f: Vec<f32>,
    /// E_neg f - E_pos f.
    pub wasserstein: f32,
    /// E[(||grad f(xhat)|| - 1)^2], unscaled.
    pub penalty: f32,
}

/// One batch of WINN: the first `n` rows of `x` are positives, the last `n` pseudo-negatives,
/// paired row by row for the penalty (`rng` draws the interpolation weights). The loss is
/// Eq. 5 (`supervised` None: WINN-single), or softmax cross-entropy on the positives with
/// `labels` plus a times Eq. 5 (`supervised` Some(a)).
#[allow(clippy::too_many_arguments)]
pub fn critic_batch(model: &dyn Classifier, x: &Tensor, n: usize, labels: &[u32], supervised: Option<f64>, lambda: f64, rng: &mut Rng) -> Result<CriticBatch> {
    if x.dim(0)? != 2 * n || n == 0 {
        candle_core::bail!("a WINN batch pairs its positives with as many pseudo-negatives: {} rows for {n} positives", x.dim(0)?);
    }
    let logits = model.forward(x)?;
    let f = model.critic_of(&logits, Mode::Train)?;
    let wasserstein = wasserstein(&f.narrow(0, 0, n)?, &f.narrow(0, n, n)?)?;
    let xhat = interpolate(&x.narrow(0, 0, n)?, &x.narrow(0, n, n)?, rng)?;
    let penalty = gradient_penalty(&xhat, &|t: &Tensor| model.critic_of(&model.forward(t)?, Mode::Train))?;
    let critic = (&wasserstein + (&penalty * lambda)?)?;
    let loss = match supervised {
        None => critic,
        Some(a) => {
            let dev = x.device();
            let zeros = Tensor::zeros(n, candle_core::DType::F32, dev)?;
            let ce = crate::loss::icn_softmax(&logits.narrow(0, 0, n)?, &Tensor::new(&labels[..n], dev)?, &zeros, 0.0)?;
            (ce + (critic * a)?)?
        }
    };
    Ok(CriticBatch {
        f: f.to_vec1::<f32>()?,
        wasserstein: wasserstein.to_scalar::<f32>()?,
        penalty: penalty.to_scalar::<f32>()?,
        loss,
        logits,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A linear critic f(x) = w . x has grad_x f = w everywhere: the penalty is exactly
    /// (||w|| - 1)^2 whatever the pairs and the draws of u, its gradient in w is
    /// 2 (||w|| - 1) w / ||w||, and the Wasserstein term is w . (mean neg - mean pos).
    #[test]
    fn linear_critic_has_the_analytic_loss_and_gradient() -> Result<()> {
        let dev = Device::Cpu;
        let wv = [0.6f32, -0.2, 0.9, 0.3, -0.5, 0.1];
        let w = Var::from_vec(wv.to_vec(), (6, 1), &dev)?;
        let mut data = Rng::new(5);
        let pos = Tensor::from_vec(data.uniform_vec(4 * 6, -1.0, 1.0), (4, 1, 2, 3), &dev)?;
        let neg = Tensor::from_vec(data.uniform_vec(4 * 6, -1.0, 1.0), (4, 1, 2, 3), &dev)?;
        let score = |x: &Tensor| x.flatten_from(1)?.matmul(w.as_tensor())?.flatten_all();
        let loss = critic_loss(&score, &pos, &neg, LAMBDA, &mut Rng::new(9))?;

        let norm = wv.iter().map(|v| (*v as f64).powi(2)).sum::<f64>().sqrt();
        let want_penalty = (norm - 1.0).powi(2);
        let mean_row = |t: &Tensor| -> Result<Vec<f64>> {
            let rows = t.flatten_from(1)?.to_vec2::<f32>()?;
            Ok((0..6).map(|j| rows.iter().map(|r| r[j] as f64).sum::<f64>() / rows.len() as f64).collect())
        };
        let (mp, mn) = (mean_row(&pos)?, mean_row(&neg)?);
        let want_w = (0..6).map(|j| wv[j] as f64 * (mn[j] - mp[j])).sum::<f64>();
        let penalty = loss.penalty.to_scalar::<f32>()? as f64;
        let wass = loss.wasserstein.to_scalar::<f32>()? as f64;
        assert!((penalty - want_penalty).abs() < 1e-6, "penalty {penalty} vs {want_penalty}");
        assert!((wass - want_w).abs() < 1e-6, "wasserstein {wass} vs {want_w}");
        assert!((loss.total.to_scalar::<f32>()? as f64 - (want_w + LAMBDA * want_penalty)).abs() < 1e-5);

        let g = loss.penalty.backward()?.get(&w).expect("a second-order gradient").flatten_all()?.to_vec1::<f32>()?;
        for (j, (&gj, &wj)) in g.iter().zip(&wv).enumerate() {
            let want = 2.0 * (norm - 1.0) * wj as f64 / norm;
            assert!((gj as f64 - want).abs() < 1e-6, "d/dw{j}: {gj} vs {want}");
        }
        Ok(())
    }

    #[test]
    fn interpolation_lies_between_its_pair_and_follows_the_seed() -> Result<()> {
        let dev = Device::Cpu;
        let pos = Tensor::from_vec(vec![1f32; 12], (3, 1, 2, 2), &dev)?;
        let neg = Tensor::from_vec(vec![-1f32; 12], (3, 1, 2, 2), &dev)?;
        let a = interpolate(&pos, &neg, &mut Rng::new(4))?.flatten_from(1)?.to_vec2::<f32>()?;
        let b = interpolate(&pos, &neg, &mut Rng::new(4))?.flatten_from(1)?.to_vec2::<f32>()?;
        assert_eq!(a, b);
        let mut u = Rng::new(4);
        for row in &a {
            // one u per pair: every pixel of a row is 2u - 1
            let want = (2.0 * u.uniform() - 1.0) as f32;
            assert!(row.iter().all(|v| (v - want).abs() < 1e-6), "{row:?} vs {want}");
        }
        assert!(interpolate(&pos, &neg.narrow(0, 0, 2)?, &mut Rng::new(4)).is_err());
        Ok(())
    }

    #[test]
    fn batch_norm_nets_are_refused() {
        let net = |norm| NetConfig { arch: crate::nn::Arch::Resnet32, norm, width: 1.0, leaky_slope: 0.0, channels: 3, height: 32, image_width: 32, num_classes: 10, wass_head: false };
        assert!(unsupported(&net(Normalization::Batch)).is_some_and(|why| why.contains("batch norm")));
        assert!(unsupported(&net(Normalization::Layer)).is_none() && unsupported(&net(Normalization::None)).is_none());
    }

    #[test]
    fn heads_give_one_score_per_image() -> Result<()> {
        let dev = Device::Cpu;
        let logits = Tensor::new(&[[1f32, 2.0, 3.0], [0.0, -1.0, 4.0]], &dev)?;
        assert!(single_logit(&logits).is_err());
        assert_eq!(single_logit(&logits.narrow(1, 2, 1)?)?.to_vec1::<f32>()?, [3.0, 4.0]);
        let head = WassHead::new(3, &mut Rng::new(1), &dev)?;
        head.weight.set(&Tensor::new(&[[1f32], [0.5], [-1.0]], &dev)?)?;
        head.bias.set(&Tensor::new(&[0.25f32], &dev)?)?;
        assert_eq!(head.score(&logits)?.to_vec1::<f32>()?, [-0.75, -4.25]);
        Ok(())
    }
}
