//! The ML library of `pipe`: data loaders, the CNN4 classifier, optimizers with saveable
//! state, the ICN losses, pseudo-negative synthesis and evaluation. It knows nothing of the
//! artifact store: everything here takes and returns tensors, bytes or plain structs.

pub mod data;
pub mod grid;
pub mod attack;
pub mod bench;
pub mod checkpoint;
pub mod codec;
pub mod evaluate;
pub mod logits;
pub mod loss;
pub mod nn;
pub mod optim;
pub mod plot;
pub mod rng;
pub mod synthesize;
pub mod train;

pub use candle_core as candle;
