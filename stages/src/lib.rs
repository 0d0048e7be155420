//! The ML library of `pipe`: data loaders, the CNN4 classifier, optimizers with saveable
//! state, the ICN losses, pseudo-negative synthesis and evaluation. It knows nothing of the
//! artifact store: everything here takes and returns tensors, bytes or plain structs.

pub mod data;
pub mod grid;
pub mod attack;
pub mod bench;
pub mod checkpoint;
pub mod codec;
pub mod critic;
pub mod evaluate;
pub mod logits;
pub mod loss;
pub mod nn;
pub mod optim;
pub mod patch;
pub mod plot;
pub mod probe;
pub mod quality;
pub mod rng;
pub mod style;
pub mod svm;
pub mod synthesize;
pub mod train;

pub use candle_core as candle;

/// What a long call (an epoch, a synthesis) reports after each step, and whether its
/// caller wants it to go on: `Break` ends the call with [`stopped`] (the user interrupted).
pub type OnStep<'a, T> = &'a mut dyn FnMut(T) -> std::ops::ControlFlow<()>;

/// An [`OnStep`] that watches nothing.
pub fn keep_going<T>(_: T) -> std::ops::ControlFlow<()> {
    std::ops::ControlFlow::Continue(())
}

/// The error of a call its caller stopped through [`OnStep`].
pub fn stopped() -> candle_core::Error {
    candle_core::Error::Msg("stopped on request".into())
}
