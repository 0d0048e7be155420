//! Classifiers. Parameters are `Var`s initialized from our own seeded [`crate::rng::Rng`]
//! and addressed by stable names, so a checkpoint is a plain name -> tensor map.

pub mod cnn4;

use candle_core::{Result, Tensor, Var};
use std::collections::HashMap;

pub use cnn4::{Cnn4, Cnn4Config};

/// What training, synthesis and evaluation need from a net.
pub trait Classifier {
    /// Logits (N x K) for images (N x C x H x W) in [-1, 1].
    fn forward(&self, x: &Tensor) -> Result<Tensor>;
    /// Trainable parameters, in a fixed order (optimizer state follows it).
    fn vars(&self) -> Vec<Var>;
    /// Parameters by name, in the same order as [`Classifier::vars`].
    fn named_vars(&self) -> Vec<(String, Var)>;

    /// Parameter tensors by name, for checkpoints.
    fn named_tensors(&self) -> Vec<(String, Tensor)> {
        self.named_vars().into_iter().map(|(n, v)| (n, v.as_tensor().clone())).collect()
    }

    /// Overwrites every parameter from a checkpoint map; a missing name or a shape mismatch
    /// is an error, never a silent partial load.
    fn load_tensors(&self, map: &HashMap<String, Tensor>) -> Result<()> {
        for (name, var) in self.named_vars() {
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
