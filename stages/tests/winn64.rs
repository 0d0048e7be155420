//! WINN's Table 5 net: its shapes, its fast forward against a plain NCHW forward written
//! with candle's own ops, its gradients (first order, and the gradient penalty's second
//! order) against finite differences in every layer, and its checkpoint round trip.

#[path = "support/compare.rs"]
mod compare;
use compare::max_rel;
use stages::candle::{DType, Device, Tensor, Var};
use stages::checkpoint;
use stages::nn::{Arch, Classifier, Mode, NetConfig, NetError, Normalization, Winn64, Winn64Config};
use stages::rng::Rng;
use std::collections::HashMap;

type Result<T> = anyhow::Result<T>;

fn config(width: f64, side: usize, norm: Normalization) -> NetConfig {
    NetConfig { arch: Arch::Winn64, norm, width, leaky_slope: 0.2, channels: 3, height: side, image_width: side, num_classes: 2, wass_head: false }
}

fn tensor(shape: &[usize], seed: u64, lo: f64, hi: f64) -> Tensor {
    let n = shape.iter().product();
    Tensor::from_vec(Rng::new(seed).uniform_vec(n, lo, hi), shape, &Device::Cpu).unwrap()
}

/// A tiny net whose parameters are all away from their initial values (He-scale weights,
/// non-trivial biases, gammas and betas), so every path carries a gradient worth checking.
fn tiny_net(seed: u64) -> Result<Winn64> {
    let mut cfg = Winn64Config::table5(3, 0.125);
    cfg.height = 16;
    cfg.width = 16;
    let net = Winn64::new(cfg, &mut Rng::new(seed), &Device::Cpu)?;
    let mut rng = Rng::new(seed + 1);
    let mut map = HashMap::new();
    for (name, v) in net.named_vars() {
        let n = v.elem_count();
        let vals = match name.rsplit('.').next().unwrap() {
            "weight" => rng.normal_vec(n, 0.0, (2.0 / v.dim(0)? as f64).sqrt()),
            "gamma" => rng.uniform_vec(n, 0.5, 1.5),
            _ => rng.uniform_vec(n, -0.3, 0.3),
        };
        map.insert(name, Tensor::from_vec(vals, v.dims(), &Device::Cpu)?);
    }
    net.load_tensors(&map)?;
    Ok(net)
}

/// A copy of every parameter (a Var cannot be set from its own storage).
fn params(net: &dyn Classifier) -> HashMap<String, Tensor> {
    net.named_vars().into_iter().map(|(n, v)| (n, v.as_tensor().copy().unwrap())).collect()
}

/// The same net in NCHW with candle's conv2d (OIHW weights), avg_pool2d and a layer norm
/// written out: no code shared with the net but candle itself.
fn reference_forward(p: &HashMap<String, Tensor>, x: &Tensor, layer_norm: bool) -> Result<Tensor> {
    let mut h = x.clone();
    for i in 1..=8 {
        let w = &p[&format!("conv{i}.weight")];
        let (kk, o) = w.dims2()?;
        let c = kk / 9;
        let w_oihw = w.reshape((3, 3, c, o))?.permute((3, 2, 0, 1))?.contiguous()?;
        h = h.conv2d(&w_oihw, 1, 1, 1, 1)?.broadcast_add(&p[&format!("conv{i}.bias")].reshape((1, o, 1, 1))?)?;
        if i > 1 && layer_norm {
            let (n, c, hh, ww) = h.dims4()?;
            let flat = h.reshape((n, c * hh * ww))?;
            let mean = flat.mean_keepdim(1)?;
            let centered = flat.broadcast_sub(&mean)?;
            let var = centered.sqr()?.mean_keepdim(1)?;
            let xhat = centered.broadcast_div(&(var + 1e-5)?.sqrt()?)?.reshape((n, c, hh, ww))?;
            let gamma = p[&format!("conv{i}.norm.gamma")].reshape((1, c, 1, 1))?;
            let beta = p[&format!("conv{i}.norm.beta")].reshape((1, c, 1, 1))?;
            h = xhat.broadcast_mul(&gamma)?.broadcast_add(&beta)?;
        }
        h = (&h * candle_nn::ops::sigmoid(&h)?)?;
        if i % 2 == 0 {
            h = h.avg_pool2d(2)?;
        }
    }
    // the head reads features in NHWC order
    let h = h.permute((0, 2, 3, 1))?.contiguous()?.flatten_from(1)?;
    Ok(h.matmul(&p["head.weight"])?.broadcast_add(&p["head.bias"])?)
}

#[test]
fn table5_shapes_for_64x64_rgb() -> Result<()> {
    let net = config(0.125, 64, Normalization::Layer).build(&mut Rng::new(3), &Device::Cpu)?;
    let x = tensor(&[2, 3, 64, 64], 4, -1.0, 1.0);
    assert_eq!(net.forward(&x)?.dims(), &[2, 2]);
    let shapes: HashMap<String, Vec<usize>> = net.named_vars().into_iter().map(|(n, v)| (n, v.dims().to_vec())).collect();
    // 32/64/64/128/128/256/256/512 at width 1/8; four poolings leave 4x4
    let widths = [4, 8, 8, 16, 16, 32, 32, 64];
    let mut c_in = 3;
    for (i, &c) in widths.iter().enumerate() {
        assert_eq!(shapes[&format!("conv{}.weight", i + 1)], vec![9 * c_in, c]);
        assert_eq!(shapes[&format!("conv{}.bias", i + 1)], vec![c]);
        // layer norm after every convolution but the first
        assert_eq!(shapes.contains_key(&format!("conv{}.norm.gamma", i + 1)), i > 0);
        c_in = c;
    }
    assert_eq!(shapes["head.weight"], vec![4 * 4 * 64, 2]);
    assert!(net.named_buffers().is_empty(), "layer norm keeps no running statistics");
    let full = Winn64Config::table5(1, 1.0);
    assert_eq!(full.channels, [32, 64, 64, 128, 128, 256, 256, 512]);
    assert_eq!(full.feature_size(), (4, 4));
    Ok(())
}

#[test]
fn sides_that_do_not_halve_four_times_are_refused() {
    for side in [28, 32 + 8, 0] {
        match config(0.125, side, Normalization::Layer).build(&mut Rng::new(1), &Device::Cpu) {
            Err(NetError::Winn64Size { height, .. }) => assert_eq!(height, side),
            Err(e) => panic!("{side}: wrong error {e}"),
            Ok(_) => panic!("{side}x{side} must be refused"),
        }
    }
    assert!(config(0.125, 32, Normalization::Layer).build(&mut Rng::new(1), &Device::Cpu).is_ok());
}

#[test]
fn fast_forward_matches_candle_ops_with_and_without_layer_norm() -> Result<()> {
    let net = tiny_net(10)?;
    let x = tensor(&[3, 3, 16, 16], 11, -1.0, 1.0);
    let fast = net.forward(&x)?;
    let slow = reference_forward(&params(&net), &x, true)?;
    assert!(max_rel(&fast, &slow) < 1e-4, "{fast} vs {slow}");
    let frozen = net.forward_mode(&x, Mode::Frozen)?;
    assert_eq!(frozen.to_vec2::<f32>()?, fast.to_vec2::<f32>()?);

    let mut cfg = Winn64Config::table5(2, 0.125);
    cfg.norm = None;
    let plain = Winn64::new(cfg, &mut Rng::new(12), &Device::Cpu)?;
    let x = tensor(&[2, 3, 64, 64], 13, -1.0, 1.0);
    let (fast, slow) = (plain.forward(&x)?, reference_forward(&params(&plain), &x, false)?);
    assert!(max_rel(&fast, &slow) < 1e-4, "{fast} vs {slow}");
    Ok(())
}

/// f(params) for finite differences: `loss` evaluated with one parameter replaced.
fn perturbed(net: &Winn64, name: &str, j: usize, d: f32, loss: &dyn Fn(&Winn64) -> Result<f64>) -> Result<f64> {
    let base = params(net);
    let mut map = base.clone();
    let mut v = base[name].flatten_all()?.to_vec1::<f32>()?;
    v[j] += d;
    map.insert(name.to_string(), Tensor::from_vec(v, base[name].dims(), &Device::Cpu)?);
    net.load_tensors(&map)?;
    let out = loss(net);
    net.load_tensors(&base)?;
    out
}

/// Compares analytic gradients with central differences at a few coordinates of every
/// parameter tensor; each tensor's gradient must be non-trivial, so no check is vacuous.
fn check_every_layer(net: &Winn64, grads: &HashMap<String, Vec<f32>>, eps: f32, tol: f64, loss: &dyn Fn(&Winn64) -> Result<f64>) -> Result<()> {
    let mut checked = 0;
    for (name, _) in net.named_vars().into_iter().filter(|(n, _)| grads.contains_key(n)) {
        let g = &grads[&name];
        let scale = g.iter().fold(0f64, |m, v| m.max(v.abs() as f64));
        assert!(scale > 1e-4, "{name}: no gradient to check ({scale})");
        for j in (0..g.len()).step_by((g.len() / 3).max(1)) {
            let fd = (perturbed(net, &name, j, eps, loss)? - perturbed(net, &name, j, -eps, loss)?) / (2.0 * eps as f64);
            let a = g[j] as f64;
            assert!((fd - a).abs() < tol * a.abs().max(0.1 * scale), "{name}[{j}]: analytic {a}, finite difference {fd} (largest {scale})");
            checked += 1;
        }
    }
    assert!(checked >= 3 * (grads.len() - 1), "{checked} coordinates");
    Ok(())
}

fn grads_of(net: &Winn64, loss: &Tensor) -> Result<HashMap<String, Vec<f32>>> {
    let g = loss.backward()?;
    let mut out = HashMap::new();
    for (name, v) in net.named_vars() {
        if let Some(t) = g.get(&v) {
            out.insert(name, t.flatten_all()?.to_vec1::<f32>()?);
        }
    }
    Ok(out)
}

#[test]
fn weight_gradients_match_finite_differences_in_every_layer() -> Result<()> {
    let net = tiny_net(20)?;
    let x = tensor(&[2, 3, 16, 16], 21, -1.0, 1.0);
    let r = tensor(&[2, 3], 22, -1.0, 1.0);
    let loss_t = |n: &Winn64| -> Result<Tensor> { Ok((n.forward(&x)? * &r)?.sum_all()?) };
    let loss = |n: &Winn64| -> Result<f64> { Ok(loss_t(n)?.to_dtype(DType::F64)?.to_scalar::<f64>()?) };
    let grads = grads_of(&net, &loss_t(&net)?)?;
    assert_eq!(grads.len(), net.named_vars().len(), "every parameter has a gradient");
    check_every_layer(&net, &grads, 1e-2, 3e-2, &loss)
}

/// WINN's penalty differentiates d f / d x again with respect to the weights: Swish,
/// pooling, layer norm and the convolutions must all pass second-order gradients.
#[test]
fn gradient_penalty_weight_gradients_match_finite_differences_in_every_layer() -> Result<()> {
    let net = tiny_net(30)?;
    let x0 = tensor(&[2, 3, 16, 16], 31, -1.0, 1.0);
    // penalty = sum over samples of (||d f_0 / d x||_2 - 1)^2, its inner backward pass
    // kept differentiable (and only that one, as critic::gradient_penalty does)
    let penalty_t = |n: &Winn64| -> Result<Tensor> {
        let x = Var::from_tensor(&x0)?;
        let f = n.forward(x.as_tensor())?.narrow(1, 0, 1)?.sum_all()?;
        let before = stages::candle::backprop::set_create_graph(true);
        let inner = f.backward();
        stages::candle::backprop::set_create_graph(before);
        let dx = inner?.get(x.as_tensor()).expect("input gradient").clone();
        let norms = dx.sqr()?.flatten_from(1)?.sum(1)?.sqrt()?;
        Ok((norms - 1.0)?.sqr()?.sum_all()?)
    };
    let penalty = |n: &Winn64| -> Result<f64> { Ok(penalty_t(n)?.to_dtype(DType::F64)?.to_scalar::<f64>()?) };
    let grads = grads_of(&net, &penalty_t(&net)?)?;
    // d f / d x does not involve the head's bias; every other parameter shapes it
    let missing: Vec<String> = net.named_vars().into_iter().map(|(n, _)| n).filter(|n| !grads.contains_key(n)).collect();
    assert_eq!(missing, ["head.bias"], "parameters without a second-order gradient");
    check_every_layer(&net, &grads, 1e-2, 5e-2, &penalty)
}

#[test]
fn checkpoint_round_trip_gives_the_same_logits() -> Result<()> {
    let cfg = config(0.125, 32, Normalization::Layer);
    let net = cfg.build(&mut Rng::new(40), &Device::Cpu)?;
    let bytes = checkpoint::encode(net.as_ref(), None, None, "winn64")?;
    let back = cfg.load(&bytes, &Device::Cpu)?;
    let x = tensor(&[2, 3, 32, 32], 41, -1.0, 1.0);
    assert_eq!(net.forward(&x)?.to_vec2::<f32>()?, back.forward(&x)?.to_vec2::<f32>()?);
    let other = cfg.build(&mut Rng::new(42), &Device::Cpu)?;
    assert_ne!(net.forward(&x)?.to_vec2::<f32>()?, other.forward(&x)?.to_vec2::<f32>()?, "another seed, another net");
    Ok(())
}
