use stages::nn::{Classifier, Cnn4, Cnn4Config};
use stages::optim::{Optimizer, SgdMomentum};
use stages::rng::Rng;
use candle_core::{Device, Tensor};
use std::time::Instant;
fn main() -> candle_core::Result<()> {
    let dev = Device::Cpu;
    let net = Cnn4::new(Cnn4Config::mnist(10, 1.0, 0.2), &mut Rng::new(0), &dev)?;
    let mut opt = SgdMomentum::new(0.01, 0.9);
    let x = Tensor::from_vec(Rng::new(1).uniform_vec(64 * 784, -1.0, 1.0), (64, 1, 28, 28), &dev)?;
    let y = Tensor::from_vec((0..64u32).map(|i| i % 10).collect::<Vec<_>>(), 64, &dev)?;
    let neg = Tensor::zeros(64, candle_core::DType::F32, &dev)?;
    let vars = net.vars();
    let (mut tf, mut tb, mut ts) = (0.0, 0.0, 0.0);
    for i in 0..40 {
        let t0 = Instant::now();
        let logits = net.forward(&x)?;
        let loss = stages::loss::icn_softmax(&logits, &y, &neg, 0.0)?;
        let t1 = Instant::now();
        let g = loss.backward()?;
        let t2 = Instant::now();
        opt.step(&vars, &g)?;
        let t3 = Instant::now();
        if i >= 5 { tf += (t1 - t0).as_secs_f64(); tb += (t2 - t1).as_secs_f64(); ts += (t3 - t2).as_secs_f64(); }
    }
    println!("per step ms: fwd {:.2} bwd {:.2} step {:.2} total {:.2} -> {:.0} img/s", tf/35e-3, tb/35e-3, ts/35e-3, (tf+tb+ts)/35e-3, 64.0*35.0/(tf+tb+ts));
    Ok(())
}
