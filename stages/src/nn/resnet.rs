//! The CIFAR ResNet of He et al. (2016) used by the ICN papers for CIFAR-10 and SVHN:
//! a 3x3 stem, three stages of n basic blocks (16/32/64 channels, stride 2 entering
//! stages 2 and 3), parameter-free "option A" shortcuts (subsample, zero-pad channels),
//! global average pooling and a linear head. ResNet-32 is n = 5. NHWC throughout.

use super::conv::{conv2d, Geom};
use super::norm::{Act, Norm, NormKind};
use super::{Classifier, Layout, Mode, TorchName};
use crate::rng::Rng;
use candle_core::{DType, Device, Result, Tensor, Var};

#[derive(Clone, Debug, PartialEq)]
pub struct ResNetConfig {
    pub in_channels: usize,
    pub height: usize,
    pub width: usize,
    pub num_classes: usize,
    pub blocks_per_stage: usize,
    pub channels: [usize; 3],
    /// Batch norm (the CIFAR ResNet) or layer norm (WINN's ResNet-32).
    pub norm: NormKind,
}

impl ResNetConfig {
    /// ResNet-32 on 32x32 RGB images.
    pub fn resnet32(num_classes: usize) -> Self {
        ResNetConfig { in_channels: 3, height: 32, width: 32, num_classes, blocks_per_stage: 5, channels: [16, 32, 64], norm: NormKind::Batch }
    }

    /// (c_in, c_out, stride) of every convolution, stem first, two per block.
    fn convs(&self) -> Vec<(usize, usize, usize)> {
        let mut v = vec![(self.in_channels, self.channels[0], 1)];
        let mut c_in = self.channels[0];
        for (s, &c) in self.channels.iter().enumerate() {
            for b in 0..self.blocks_per_stage {
                let stride = if s > 0 && b == 0 { 2 } else { 1 };
                v.push((c_in, c, stride));
                v.push((c, c, 1));
                c_in = c;
            }
        }
        v
    }

    /// Floating-point operations of one image's forward pass (convolutions and head).
    pub fn forward_flops(&self) -> f64 {
        let (mut h, mut w, mut flops) = (self.height, self.width, 0.0);
        for (c_in, c_out, stride) in self.convs() {
            let g = Geom { k: 3, stride, pad: 1 };
            h = g.out(h);
            w = g.out(w);
            flops += 2.0 * (h * w * c_out * 9 * c_in) as f64;
        }
        flops + 2.0 * (self.channels[2] * self.num_classes) as f64
    }
}

struct Block {
    w1: Var,
    bn1: Norm,
    w2: Var,
    bn2: Norm,
    stride: usize,
    c_in: usize,
    c_out: usize,
}

pub struct ResNet {
    pub config: ResNetConfig,
    stem: (Var, Norm),
    blocks: Vec<Block>,
    head: (Var, Var),
}

fn he(rng: &mut Rng, c_in: usize, c_out: usize, device: &Device) -> Result<Var> {
    let fan_in = 9 * c_in;
    Var::from_vec(rng.normal_vec(fan_in * c_out, 0.0, (2.0 / fan_in as f64).sqrt()), (fan_in, c_out), device)
}

/// Option A shortcut: keep every other pixel, zero-pad the new channels on both sides.
fn shortcut(x: &Tensor, stride: usize, c_in: usize, c_out: usize) -> Result<Tensor> {
    let mut s = x.clone();
    if stride == 2 {
        let (n, h, w, c) = x.dims4()?;
        s = x.reshape((n, h / 2, 2, w / 2, 2, c))?.narrow(2, 0, 1)?.narrow(4, 0, 1)?.reshape((n, h / 2, w / 2, c))?;
    }
    if c_out > c_in {
        let extra = c_out - c_in;
        s = s.pad_with_zeros(3, extra / 2, extra - extra / 2)?;
    }
    Ok(s)
}

impl ResNet {
    pub fn new(config: ResNetConfig, rng: &mut Rng, device: &Device) -> Result<Self> {
        let convs = config.convs();
        let (ci, co, _) = convs[0];
        let stem = (he(rng, ci, co, device)?, Norm::new(config.norm, co, device)?);
        let mut blocks = Vec::new();
        for pair in convs[1..].chunks(2) {
            let ((c_in, c_out, stride), (_, _, _)) = (pair[0], pair[1]);
            blocks.push(Block {
                w1: he(rng, c_in, c_out, device)?,
                bn1: Norm::new(config.norm, c_out, device)?,
                w2: he(rng, c_out, c_out, device)?,
                bn2: Norm::new(config.norm, c_out, device)?,
                stride,
                c_in,
                c_out,
            });
        }
        let c = config.channels[2];
        let head = (
            Var::from_vec(rng.normal_vec(c * config.num_classes, 0.0, (1.0 / c as f64).sqrt()), (c, config.num_classes), device)?,
            Var::zeros(config.num_classes, DType::F32, device)?,
        );
        Ok(ResNet { config, stem, blocks, head })
    }

    fn named(&self, trainable: bool) -> Vec<(String, Var)> {
        let mut out = Vec::new();
        let bn = |name: &str, b: &Norm, out: &mut Vec<(String, Var)>| b.named(name, trainable, out);
        if trainable {
            out.push(("stem.weight".into(), self.stem.0.clone()));
        }
        bn("stem.bn", &self.stem.1, &mut out);
        for (i, b) in self.blocks.iter().enumerate() {
            if trainable {
                out.push((format!("block{i}.conv1.weight"), b.w1.clone()));
                out.push((format!("block{i}.conv2.weight"), b.w2.clone()));
            }
            bn(&format!("block{i}.bn1"), &b.bn1, &mut out);
            bn(&format!("block{i}.bn2"), &b.bn2, &mut out);
        }
        if trainable {
            out.push(("head.weight".into(), self.head.0.clone()));
            out.push(("head.bias".into(), self.head.1.clone()));
        }
        out
    }
}

const S1: Geom = Geom { k: 3, stride: 1, pad: 1 };
const S2: Geom = Geom { k: 3, stride: 2, pad: 1 };
const RELU: Act = Act::Leaky(0.0);

impl ResNet {
    /// The forward pass, keeping every activation in `kept` when asked.
    fn run(&self, x: &Tensor, mode: Mode, mut kept: Option<&mut Vec<Tensor>>) -> Result<Tensor> {
        let mut keep = |t: &Tensor| {
            if let Some(k) = kept.as_deref_mut() {
                k.push(t.clone());
            }
        };
        let p = |v: &Var| mode.param(v);
        let (n, c, _, _) = x.dims4()?;
        let x = if c == 1 { x.reshape((n, x.dim(2)?, x.dim(3)?, 1))? } else { x.permute((0, 2, 3, 1))?.contiguous()? };
        let (w, bn) = &self.stem;
        let mut h = bn.act(&conv2d(&x, &p(w), S1)?, mode, RELU, None)?;
        keep(&h);
        for b in &self.blocks {
            let g = if b.stride == 2 { S2 } else { S1 };
            let a = b.bn1.act(&conv2d(&h, &p(&b.w1), g)?, mode, RELU, None)?;
            keep(&a);
            h = b.bn2.act(&conv2d(&a, &p(&b.w2), S1)?, mode, RELU, Some(&shortcut(&h, b.stride, b.c_in, b.c_out)?))?;
            keep(&h);
        }
        let (n, hh, ww, c) = h.dims4()?;
        let pooled = h.reshape((n, hh * ww, c))?.mean(1)?;
        pooled.matmul(&p(&self.head.0))?.broadcast_add(&p(&self.head.1))
    }
}

impl Classifier for ResNet {
    fn forward_mode(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        self.run(x, mode, None)
    }

    fn activations(&self, x: &Tensor) -> Result<(Vec<Tensor>, Tensor)> {
        super::keeping(|kept| self.run(x, Mode::Frozen, Some(kept)))
    }

    fn named_vars(&self) -> Vec<(String, Var)> {
        self.named(true)
    }

    fn named_buffers(&self) -> Vec<(String, Var)> {
        self.named(false)
    }

    /// `conv1`/`norm1` (the stem), `layer{1,2,3}.{b}.conv1/norm1/conv2/norm2` (the blocks
    /// of each stage, as torchvision names them) and `fc`.
    fn torch_names(&self) -> Vec<TorchName> {
        let conv = Layout::Conv { k: 3 };
        let mut out = vec![TorchName::new("stem.weight", "conv1.weight", conv)];
        self.stem.1.torch_names("stem.bn", "norm1", &mut out);
        for (i, b) in self.blocks.iter().enumerate() {
            let at = format!("layer{}.{}", i / self.config.blocks_per_stage + 1, i % self.config.blocks_per_stage);
            out.push(TorchName::new(format!("block{i}.conv1.weight"), format!("{at}.conv1.weight"), conv));
            b.bn1.torch_names(&format!("block{i}.bn1"), &format!("{at}.norm1"), &mut out);
            out.push(TorchName::new(format!("block{i}.conv2.weight"), format!("{at}.conv2.weight"), conv));
            b.bn2.torch_names(&format!("block{i}.bn2"), &format!("{at}.norm2"), &mut out);
        }
        let channels = self.config.channels[2];
        out.push(TorchName::new("head.weight", "fc.weight", Layout::Linear { channels }));
        out.push(TorchName::new("head.bias", "fc.bias", Layout::Same));
        out
    }
}
