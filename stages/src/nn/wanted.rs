//! Which gradients a backward pass wants. candle computes one for every tracked operand of
//! every node; the WINN penalty's inner pass needs only the input's (what PyTorch's
//! `autograd.grad(f, x)` computes), so while [`InputsOnly`] lives on the calling thread the
//! fused ops skip their parameters' gradients: a convolution's weight gradient (a third of
//! its backward), a normalization's gamma and beta.

use super::switch::Scoped;
use std::cell::Cell;

thread_local! {
    static INPUTS_ONLY: Cell<bool> = const { Cell::new(false) };
}

/// Whether the backward pass running on this thread wants parameter gradients.
pub fn params() -> bool {
    !INPUTS_ONLY.get()
}

/// Parameter gradients off on this thread while it lives.
pub struct InputsOnly {
    _on: Scoped,
}

impl InputsOnly {
    pub fn on() -> Self {
        InputsOnly { _on: Scoped::set(&INPUTS_ONLY, true) }
    }
}
