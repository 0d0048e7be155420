//! Classifiers. Parameters are `Var`s initialized from our own seeded [`crate::rng::Rng`]
//! and addressed by stable names, so a checkpoint is a plain name -> tensor map.

pub mod act;
pub mod cnn4;
pub mod initial;
pub mod config;
pub mod conv;
mod direct;
pub mod fallback;
pub mod norm;
pub mod norm_op;
mod pool;
pub mod resnet;
mod switch;
pub mod torch;
pub mod wanted;
pub mod winn64;

use candle_core::{Result, Tensor, Var};
use std::collections::HashMap;

/// A GEMM output computed without zeroing its buffer first: zeroing buffers that are
/// about to be overwritten cost about 20% of a CNN4 training step.
pub(crate) fn gemm_output(n: usize, fill: impl FnOnce(*mut f32)) -> Vec<f32> {
    let mut buf: Box<[std::mem::MaybeUninit<f32>]> = Box::new_uninit_slice(n);
    fill(buf.as_mut_ptr() as *mut f32);
    // SAFETY: `fill` is a GEMM with read_dst = false that writes all n = m x n' elements.
    unsafe { buf.assume_init() }.into_vec()
}

pub use cnn4::{Cnn4, Cnn4Config};
pub use config::{Arch, NetConfig, NetError, Normalization};
pub use conv::Geom;
pub use norm::NormKind;
pub use resnet::{ResNet, ResNetConfig};
pub use torch::{Layout, TorchName};
pub use winn64::{Winn64, Winn64Config};

/// Image shape (C, H, W) of a net's input.
pub type Shape3 = (usize, usize, usize);

/// How a forward pass treats the parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Gradients reach the parameters (training).
    Train,
    /// Parameters are constants: a backward pass computes input gradients only
    /// (synthesis, attacks, evaluation), never weight gradients.
    Frozen,
}

impl Mode {
    /// A parameter as this mode sees it.
    pub fn param(self, v: &Var) -> Tensor {
        match self {
            Mode::Train => v.as_tensor().clone(),
            Mode::Frozen => v.as_detached_tensor(),
        }
    }
}

/// [`Classifier::activations`] from a forward pass that pushes each activation it makes.
pub(crate) fn keeping(run: impl FnOnce(&mut Vec<Tensor>) -> Result<Tensor>) -> Result<(Vec<Tensor>, Tensor)> {
    let mut kept = Vec::new();
    let logits = run(&mut kept)?;
    Ok((kept, logits))
}

/// What training, synthesis and evaluation need from a net.
pub trait Classifier {
    /// Logits (N x K) for images (N x C x H x W) in [-1, 1].
    fn forward_mode(&self, x: &Tensor, mode: Mode) -> Result<Tensor>;

    /// The critic f(x) of WINN, one per image, from this net's `logits`: the logit of a
    /// one-logit net (WINN-single). A net with a Wasserstein head (supervised WINN) maps
    /// its K logits through the head.
    fn critic_of(&self, logits: &Tensor, _mode: Mode) -> Result<Tensor> {
        crate::critic::single_logit(logits)
    }

    /// The activation after every convolutional layer (its norm and nonlinearity; in
    /// ResNet-32 the stem, each block's inner activation and each block's output), in
    /// forward order, each N x H x W x C, and the logits: the features the semi-supervised
    /// probe reads (IGM 4.5: the last three layers). Parameters are constants here.
    fn activations(&self, _x: &Tensor) -> Result<(Vec<Tensor>, Tensor)> {
        Err(candle_core::Error::Msg("this net does not expose its layers' activations".into()))
    }

    /// Logits with gradients reaching the parameters.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_mode(x, Mode::Train)
    }
    /// Trainable parameters, in a fixed order (optimizer state follows it).
    fn vars(&self) -> Vec<Var> {
        self.named_vars().into_iter().map(|(_, v)| v).collect()
    }
    /// Parameters by name, in the same order as [`Classifier::vars`].
    fn named_vars(&self) -> Vec<(String, Var)>;

    /// State that is not trained by gradients (batch-norm running statistics).
    fn named_buffers(&self) -> Vec<(String, Var)> {
        Vec::new()
    }

    /// Parameters and buffers by name, for checkpoints.
    fn named_tensors(&self) -> Vec<(String, Tensor)> {
        self.named_vars().into_iter().chain(self.named_buffers()).map(|(n, v)| (n, v.as_tensor().clone())).collect()
    }

    /// PyTorch's name and layout of each tensor of [`Classifier::named_tensors`]: what a
    /// checkpoint stores (docs/checkpoints.md). A net without this map (test doubles)
    /// cannot be checkpointed.
    fn torch_names(&self) -> Vec<TorchName> {
        Vec::new()
    }

    /// Overwrites every parameter from a checkpoint map; a missing name or a shape mismatch
    /// is an error, never a silent partial load.
    fn load_tensors(&self, map: &HashMap<String, Tensor>) -> Result<()> {
        for (name, var) in self.named_vars().into_iter().chain(self.named_buffers()) {
            let t = map
                .get(&name)
                .ok_or_else(|| candle_core::Error::Msg(format!("checkpoint has no parameter `{name}`")))?;
            if t.dims() != var.dims() {
                candle_core::bail!("parameter `{name}`: checkpoint shape {:?}, net expects {:?}", t.dims(), var.dims());
            }
            var.set(&t.to_dtype(var.dtype())?.to_device(var.device())?)?;
        }
        Ok(())
    }
}
