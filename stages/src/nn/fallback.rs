//! Whether a tensor takes pipe's fused CPU kernels or candle's own ops: the path every
//! other device (CUDA) runs. The CPU can be made to take candle's path too, so that it is
//! tested here: for the whole process with `PIPE_CANDLE_OPS=1`, or for the calling thread
//! (a test) with [`CandleOps::on`].

use candle_core::{DType, Tensor};
use super::switch::Scoped;
use std::cell::Cell;
use std::sync::OnceLock;

thread_local! {
    static FORCED: Cell<bool> = const { Cell::new(false) };
}

/// `PIPE_CANDLE_OPS` set to anything but "" or "0", read once.
fn forced_by_env() -> bool {
    static ENV: OnceLock<bool> = OnceLock::new();
    *ENV.get_or_init(|| std::env::var("PIPE_CANDLE_OPS").is_ok_and(|v| !v.is_empty() && v != "0"))
}

/// Whether the fused kernels may run on these tensors: all f32, all on the CPU, and
/// candle's path not forced.
pub fn fast(tensors: &[&Tensor]) -> bool {
    !forced_by_env() && !FORCED.get() && tensors.iter().all(|t| t.device().is_cpu() && t.dtype() == DType::F32)
}

/// Forces candle's ops on this thread while it lives.
pub struct CandleOps {
    _on: Scoped,
}

impl CandleOps {
    pub fn on() -> Self {
        CandleOps { _on: Scoped::set(&FORCED, true) }
    }
}
