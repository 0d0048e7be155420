//! candle's own ops, the path every device but the CPU takes, forced on the CPU and held to
//! the fused kernels: forward values, every parameter's gradient, the input gradient and
//! the WINN penalty's second-order gradients, on non-square inputs (where candle's stride-2
//! input gradient is wrong unless worked around) and batch 1.

#[path = "support/compare.rs"]
mod compare;
use compare::max_rel;
use stages::candle::{Device, Result, Tensor, Var};
use stages::critic::{gradient_penalty, single_logit};
use stages::nn::fallback::CandleOps;
use stages::nn::{Classifier, Cnn4, Cnn4Config, Mode, NormKind, ResNet, ResNetConfig};
use stages::rng::Rng;

fn resnet(norm: NormKind, classes: usize, h: usize, w: usize) -> Result<ResNet> {
    let cfg = ResNetConfig { in_channels: 3, height: h, width: w, num_classes: classes, blocks_per_stage: 1, channels: [16, 32, 64], norm };
    ResNet::new(cfg, &mut Rng::new(3), &Device::Cpu)
}

fn cnn4(norm: Option<NormKind>, h: usize, w: usize) -> Result<Cnn4> {
    let cfg = Cnn4Config { in_channels: 3, height: h, width: w, norm, ..Cnn4Config::mnist(4, 0.25, 0.2) };
    Cnn4::new(cfg, &mut Rng::new(4), &Device::Cpu)
}

fn input(n: usize, h: usize, w: usize, seed: u64) -> Result<Tensor> {
    Tensor::from_vec(Rng::new(seed).uniform_vec(n * 3 * h * w, -1.0, 1.0), (n, 3, h, w), &Device::Cpu)
}

/// Logits and the gradients of sum(logits * r) for every parameter and the input, on
/// whichever path the thread is on.
fn run(net: &dyn Classifier, x0: &Tensor, mode: Mode) -> Result<Vec<(String, Tensor)>> {
    let x = Var::from_tensor(x0)?;
    let logits = net.forward_mode(x.as_tensor(), mode)?;
    let r = Tensor::from_vec(Rng::new(9).uniform_vec(logits.elem_count(), -1.0, 1.0), logits.dims(), &Device::Cpu)?;
    let grads = (&logits * &r)?.sum_all()?.backward()?;
    let mut out = vec![("logits".to_string(), logits), ("input".to_string(), grads.get(x.as_tensor()).unwrap().clone())];
    if mode == Mode::Train {
        for (name, v) in net.named_vars() {
            out.push((name, grads.get(v.as_tensor()).unwrap_or_else(|| panic!("no gradient for {}", v.dims().len())).clone()));
        }
    }
    Ok(out)
}

fn same(fast: &[(String, Tensor)], slow: &[(String, Tensor)], what: &str) {
    assert_eq!(fast.len(), slow.len());
    for ((name, a), (_, b)) in fast.iter().zip(slow) {
        let err = max_rel(a, b);
        assert!(err < 2e-4, "{what}: {name} differs by {err}");
    }
}

/// ResNet's sides must be even (option-A shortcuts), so both sides of a stride-2 layer have
/// the same parity: the fused norms, activations and residuals are what differ here.
#[test]
fn resnet_on_candle_ops_matches_the_fused_kernels_on_non_square_inputs() -> Result<()> {
    for (norm, mode) in [(NormKind::Batch, Mode::Train), (NormKind::Batch, Mode::Frozen), (NormKind::Layer, Mode::Train)] {
        for (n, h, w) in [(2, 24, 16), (1, 12, 20), (3, 16, 16)] {
            let x = input(n, h, w, 5)?;
            // batch norm's running statistics move on every training forward: one net each
            let fast = run(&resnet(norm, 4, h, w)?, &x, mode)?;
            let slow = {
                let _candle = CandleOps::on();
                run(&resnet(norm, 4, h, w)?, &x, mode)?
            };
            same(&fast, &slow, &format!("ResNet {norm:?} {mode:?} {n}x{h}x{w}"));
        }
    }
    Ok(())
}

/// CNN4's 5x5 stride-2 layers on sides of different parity (27 and 28, then 14 and 14...):
/// where candle's own stride-2 input gradient has the wrong shape unless the input is made
/// square first.
#[test]
fn cnn4_on_candle_ops_matches_the_fused_kernels_on_sides_of_different_parity() -> Result<()> {
    for norm in [None, Some(NormKind::Layer), Some(NormKind::Batch)] {
        for (n, h, w) in [(2, 27, 28), (1, 20, 13)] {
            let x = input(n, h, w, 6)?;
            let fast = run(&cnn4(norm, h, w)?, &x, Mode::Train)?;
            let slow = {
                let _candle = CandleOps::on();
                run(&cnn4(norm, h, w)?, &x, Mode::Train)?
            };
            same(&fast, &slow, &format!("CNN4 {norm:?} {n}x{h}x{w}"));
        }
    }
    Ok(())
}

/// The penalty's second-order gradients through ResNet with layer norm on a non-square
/// batch, candle's ops against the fused kernels.
#[test]
fn the_gradient_penalty_on_candle_ops_matches_the_fused_kernels() -> Result<()> {
    let (h, w) = (16, 24);
    let xhat = input(2, h, w, 7)?;
    // (the head's bias does not move d f / d x, so it gets no gradient on either path)
    let penalty_grads = || -> Result<Vec<Option<Tensor>>> {
        let net = resnet(NormKind::Layer, 1, h, w)?;
        let p = gradient_penalty(&xhat, &|x| single_logit(&net.forward(x)?))?;
        let g = p.backward()?;
        Ok(net.named_vars().iter().map(|(_, v)| g.get(v.as_tensor()).cloned()).collect())
    };
    let fast = penalty_grads()?;
    let slow = {
        let _candle = CandleOps::on();
        penalty_grads()?
    };
    assert!(fast.iter().filter(|g| g.is_some()).count() >= fast.len() - 1, "second-order gradients missing");
    for (i, (a, b)) in fast.iter().zip(&slow).enumerate() {
        match (a, b) {
            (Some(a), Some(b)) => {
                let err = max_rel(a, b);
                assert!(err < 2e-3, "parameter {i}: {err}");
            }
            (None, None) => {}
            // a parameter that only moves a ReLU's kink (a last shift before the head) has
            // zero second-order gradient: one path records it as zeros, the other not at all
            (Some(g), None) | (None, Some(g)) => {
                let size = g.abs()?.max_all()?.to_scalar::<f32>()?;
                assert!(size < 1e-6, "parameter {i}: a second-order gradient ({size}) on one path only");
            }
        }
    }
    Ok(())
}

/// The same for the WINN Table 5 net (layer norm fused with Swish), at 32x48.
#[test]
fn the_table5_penalty_on_candle_ops_matches_the_fused_kernels() -> Result<()> {
    use stages::nn::{Winn64, Winn64Config};
    let (h, w) = (32, 48);
    let xhat = input(2, h, w, 8)?;
    let penalty_grads = || -> Result<Vec<(String, Option<Tensor>)>> {
        let cfg = Winn64Config { height: h, width: w, ..Winn64Config::table5(1, 0.25) };
        let net = Winn64::new(cfg, &mut Rng::new(5), &Device::Cpu)?;
        let p = gradient_penalty(&xhat, &|x| single_logit(&net.forward(x)?))?;
        let g = p.backward()?;
        Ok(net.named_vars().iter().map(|(n, v)| (n.clone(), g.get(v.as_tensor()).cloned())).collect())
    };
    let fast = penalty_grads()?;
    let slow = {
        let _candle = CandleOps::on();
        penalty_grads()?
    };
    for ((name, a), (_, b)) in fast.iter().zip(&slow) {
        match (a, b) {
            (Some(a), Some(b)) => {
                let err = max_rel(a, b);
                assert!(err < 2e-3, "{name}: {err}");
            }
            (None, None) => {}
            _ => panic!("{name}: a second-order gradient on one path only"),
        }
    }
    Ok(())
}
