//! A checkpoint holds what the PyTorch modules of docs/checkpoints.md hold. The forward
//! pass here is written from that document alone, over the stored tensors by their
//! PyTorch names: NCHW activations, OIHW convolutions through candle's own `conv2d` (not
//! pipe's NHWC kernels), `torch.flatten` before the linear layer. It must give pipe's
//! logits, and read every stored model tensor.

use stages::candle::{DType, Device, Result, Tensor};
use stages::checkpoint;
use stages::nn::{Arch, Classifier, Mode, NetConfig, Normalization};
use stages::rng::Rng;
use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap};

const EPS: f64 = 1e-5;

/// The `model.` tensors of a checkpoint by their `state_dict` names, and which were read.
struct StateDict {
    tensors: HashMap<String, Tensor>,
    read: RefCell<BTreeSet<String>>,
}

impl StateDict {
    fn of(bytes: &[u8]) -> Result<Self> {
        let all = stages::candle::safetensors::load_buffer(bytes, &Device::Cpu)?;
        let tensors = all.into_iter().filter_map(|(n, t)| n.strip_prefix("model.").map(|n| (n.to_string(), t))).collect();
        Ok(StateDict { tensors, read: RefCell::new(BTreeSet::new()) })
    }

    fn has(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    fn get(&self, name: &str) -> Tensor {
        self.read.borrow_mut().insert(name.to_string());
        self.tensors.get(name).unwrap_or_else(|| panic!("no `model.{name}` in the checkpoint")).clone()
    }

    fn unread(&self) -> Vec<String> {
        self.tensors.keys().filter(|k| !self.read.borrow().contains(*k)).cloned().collect()
    }
}

/// A vector per channel, broadcastable over N x C x H x W.
fn per_channel(v: &Tensor) -> Result<Tensor> {
    v.reshape((1, v.dim(0)?, 1, 1))
}

/// `nn.BatchNorm2d` in eval mode or `nn.GroupNorm(1, C)`, at `at`.
fn norm(x: &Tensor, sd: &StateDict, at: &str, kind: Normalization) -> Result<Tensor> {
    let xhat = match kind {
        Normalization::Batch => {
            let (mean, var) = (per_channel(&sd.get(&format!("{at}.running_mean")))?, per_channel(&sd.get(&format!("{at}.running_var")))?);
            x.broadcast_sub(&mean)?.broadcast_div(&(var + EPS)?.sqrt()?)?
        }
        Normalization::Layer => {
            let flat = x.reshape((x.dim(0)?, ()))?;
            let centered = flat.broadcast_sub(&flat.mean_keepdim(1)?)?;
            let var = centered.sqr()?.mean_keepdim(1)?;
            centered.broadcast_div(&(var + EPS)?.sqrt()?)?.reshape(x.dims())?
        }
        Normalization::None => unreachable!("no norm module"),
    };
    xhat.broadcast_mul(&per_channel(&sd.get(&format!("{at}.weight")))?)?.broadcast_add(&per_channel(&sd.get(&format!("{at}.bias")))?)
}

/// `nn.Linear` at `at`: x W^T + b.
fn linear(x: &Tensor, sd: &StateDict, at: &str) -> Result<Tensor> {
    x.matmul(&sd.get(&format!("{at}.weight")).t()?)?.broadcast_add(&sd.get(&format!("{at}.bias")))
}

fn leaky_relu(x: &Tensor, slope: f64) -> Result<Tensor> {
    x.maximum(&(x * slope)?)
}

/// CNN4: four Conv2d(5, stride 2, padding 2), each with a bias or followed by a norm, then
/// LeakyReLU; `fc` over `torch.flatten(x, 1)`.
fn cnn4(sd: &StateDict, x: &Tensor, kind: Normalization, slope: f64) -> Result<Tensor> {
    let mut h = x.clone();
    for i in 1..=4 {
        h = h.conv2d(&sd.get(&format!("conv{i}.weight")), 2, 2, 1, 1)?;
        h = match kind {
            Normalization::None => h.broadcast_add(&per_channel(&sd.get(&format!("conv{i}.bias")))?)?,
            _ => norm(&h, sd, &format!("norm{i}"), kind)?,
        };
        h = leaky_relu(&h, slope)?;
    }
    linear(&h.flatten_from(1)?, sd, "fc")
}

/// Every other row and column from the first: `x[:, :, ::2, ::2]`.
fn subsample(x: &Tensor) -> Result<Tensor> {
    let every_other = |n: usize| Tensor::arange_step(0u32, n as u32, 2, x.device());
    x.index_select(&every_other(x.dim(2)?)?, 2)?.index_select(&every_other(x.dim(3)?)?, 3)
}

/// ResNet-32: conv1/norm1/ReLU, three stages of basic blocks (3x3 convolutions, stride 2
/// entering stages 2 and 3), option A shortcuts (subsample, zero channels split before and
/// after), global average pooling, `fc`.
fn resnet(sd: &StateDict, x: &Tensor, kind: Normalization) -> Result<Tensor> {
    let mut h = norm(&x.conv2d(&sd.get("conv1.weight"), 1, 1, 1, 1)?, sd, "norm1", kind)?.relu()?;
    for stage in 1..=3 {
        for b in (0..).take_while(|b| sd.has(&format!("layer{stage}.{b}.conv1.weight"))) {
            let at = format!("layer{stage}.{b}");
            let stride = if stage > 1 && b == 0 { 2 } else { 1 };
            let w1 = sd.get(&format!("{at}.conv1.weight"));
            let y = norm(&h.conv2d(&w1, 1, stride, 1, 1)?, sd, &format!("{at}.norm1"), kind)?.relu()?;
            let y = norm(&y.conv2d(&sd.get(&format!("{at}.conv2.weight")), 1, 1, 1, 1)?, sd, &format!("{at}.norm2"), kind)?;
            let mut shortcut = if stride == 2 { subsample(&h)? } else { h.clone() };
            let extra = w1.dim(0)? - h.dim(1)?;
            if extra > 0 {
                shortcut = shortcut.pad_with_zeros(1, extra / 2, extra - extra / 2)?;
            }
            h = (y + shortcut)?.relu()?;
        }
    }
    linear(&h.mean((2, 3))?, sd, "fc")
}

/// The WINN Table 5 net: eight Conv2d(3, stride 1, padding 1) with biases, a norm after
/// each but the first, Swish (SiLU), 2x2 average pooling after every second; `fc` over
/// `torch.flatten(x, 1)`.
fn winn64(sd: &StateDict, x: &Tensor, kind: Normalization) -> Result<Tensor> {
    let mut h = x.clone();
    for i in 1..=8 {
        h = h.conv2d(&sd.get(&format!("conv{i}.weight")), 1, 1, 1, 1)?.broadcast_add(&per_channel(&sd.get(&format!("conv{i}.bias")))?)?;
        if i > 1 && kind != Normalization::None {
            h = norm(&h, sd, &format!("norm{i}"), kind)?;
        }
        h = h.silu()?;
        if i % 2 == 0 {
            h = h.avg_pool2d(2)?;
        }
    }
    linear(&h.flatten_from(1)?, sd, "fc")
}

/// A net whose vectors (biases, norm weights and running statistics) are random too, so a
/// misplaced element or a swapped statistic shows; weights keep the seeded init.
fn net(cfg: &NetConfig, seed: u64) -> Result<Box<dyn Classifier>> {
    let dev = Device::Cpu;
    let net = cfg.build(&mut Rng::new(seed), &dev).expect("a valid net");
    let mut rng = Rng::new(seed + 100);
    let mut map = HashMap::new();
    for (name, t) in net.named_tensors() {
        let t = match (t.rank(), name.ends_with("running_var")) {
            (1, true) => Tensor::from_vec(rng.uniform_vec(t.elem_count(), 0.5, 2.0), t.dims(), &dev)?,
            (1, false) => Tensor::from_vec(rng.uniform_vec(t.elem_count(), -0.5, 0.5), t.dims(), &dev)?,
            _ => t.copy()?, // a var cannot be set from its own storage
        };
        map.insert(name, t);
    }
    net.load_tensors(&map)?;
    Ok(net)
}

fn config(arch: Arch, norm: Normalization, width: f64, leaky_slope: f64, (channels, height, image_width): (usize, usize, usize), num_classes: usize) -> NetConfig {
    NetConfig { arch, norm, width, leaky_slope, channels, height, image_width, num_classes, wass_head: false }
}

/// Pipe's frozen forward against the reference over the checkpoint, on 3 images.
fn check(cfg: NetConfig) -> Result<()> {
    let dev = Device::Cpu;
    let pipe_net = net(&cfg, 7)?;
    let x = Tensor::from_vec(Rng::new(8).uniform_vec(3 * cfg.channels * cfg.height * cfg.image_width, -1.0, 1.0), (3, cfg.channels, cfg.height, cfg.image_width), &dev)?;
    let ours = pipe_net.forward_mode(&x, Mode::Frozen)?.to_vec2::<f32>()?;

    let sd = StateDict::of(&checkpoint::encode(pipe_net.as_ref(), None, None, "{}")?)?;
    assert!(sd.tensors.values().all(|t| t.dtype() == DType::F32));
    let theirs = match cfg.arch {
        Arch::Cnn4 => cnn4(&sd, &x, cfg.norm, cfg.leaky_slope)?,
        Arch::Resnet32 => resnet(&sd, &x, cfg.norm)?,
        Arch::Winn64 => winn64(&sd, &x, cfg.norm)?,
    }
    .to_vec2::<f32>()?;
    assert_eq!(sd.unread(), Vec::<String>::new(), "{cfg:?}: tensors the module does not have");
    assert_eq!((theirs.len(), theirs[0].len()), (3, cfg.num_classes));
    let scale = ours.iter().flatten().fold(1f32, |m, v| m.max(v.abs()));
    for (a, b) in ours.iter().flatten().zip(theirs.iter().flatten()) {
        assert!((a - b).abs() <= 1e-4 * scale, "{cfg:?}: pipe {ours:?}\nreference {theirs:?}");
    }
    Ok(())
}

#[test]
fn cnn4_without_a_norm_on_mnist() -> Result<()> {
    check(config(Arch::Cnn4, Normalization::None, 0.125, 0.2, (1, 28, 28), 10))
}

#[test]
fn cnn4_with_batch_norm_on_rgb() -> Result<()> {
    check(config(Arch::Cnn4, Normalization::Batch, 0.125, 0.1, (3, 32, 32), 10))
}

#[test]
fn cnn4_with_layer_norm_one_logit() -> Result<()> {
    check(config(Arch::Cnn4, Normalization::Layer, 0.1, 0.0, (1, 28, 28), 1))
}

#[test]
fn resnet32_with_batch_norm_odd_channel_padding() -> Result<()> {
    // channels 3/6/12: shortcuts pad 3 new channels as 1 before, 2 after
    check(config(Arch::Resnet32, Normalization::Batch, 0.1875, 0.2, (3, 32, 32), 10))
}

#[test]
fn resnet32_with_layer_norm_on_mnist() -> Result<()> {
    check(config(Arch::Resnet32, Normalization::Layer, 0.25, 0.2, (1, 28, 28), 10))
}

#[test]
fn winn64_with_layer_norm_on_rgb() -> Result<()> {
    check(config(Arch::Winn64, Normalization::Layer, 0.125, 0.2, (3, 32, 32), 1))
}
