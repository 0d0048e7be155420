//! The CIFAR ResNet of He et al. (2016) used by the ICN papers for CIFAR-10 and SVHN:
//! a 3x3 stem, three stages of n basic blocks (16/32/64 channels, stride 2 entering
//! stages 2 and 3), parameter-free "option A" shortcuts (subsample, zero-pad channels),
//! global average pooling and a linear head. ResNet-32 is n = 5. NHWC throughout.

use super::act::bias_leaky_relu;
use super::conv::{conv2d, Geom};
use super::{Classifier, Mode};
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
}

impl ResNetConfig {
    /// ResNet-32 on 32x32 RGB images.
    pub fn resnet32(num_classes: usize) -> Self {
        ResNetConfig { in_channels: 3, height: 32, width: 32, num_classes, blocks_per_stage: 5, channels: [16, 32, 64] }
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

/// Batch norm over N, H, W of an NHWC tensor. Running statistics are `Var`s so they ride
/// in checkpoints, but the optimizer never sees them.
struct BatchNorm {
    gamma: Var,
    beta: Var,
    running_mean: Var,
    running_var: Var,
}

const BN_EPS: f64 = 1e-5;
const BN_MOMENTUM: f64 = 0.1;

impl BatchNorm {
    fn new(c: usize, device: &Device) -> Result<Self> {
        Ok(BatchNorm {
            gamma: Var::ones(c, DType::F32, device)?,
            beta: Var::zeros(c, DType::F32, device)?,
            running_mean: Var::zeros(c, DType::F32, device)?,
            running_var: Var::ones(c, DType::F32, device)?,
        })
    }

    /// gamma * x_hat, without beta: the caller adds beta fused with what follows.
    fn scale(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let c = *dims.last().expect("NHWC");
        let x2 = x.reshape(((), c))?;
        let m = x2.dim(0)?;
        match mode {
            Mode::Train => {
                // Channel sums as a GEMM with a row of ones: fast, and differentiable.
                let ones = Tensor::ones((1, m), DType::F32, x.device())?;
                let mean = (ones.matmul(&x2)? / m as f64)?;
                let xc = x2.broadcast_sub(&mean)?;
                let var = (ones.matmul(&xc.sqr()?)? / m as f64)?;
                let inv = (var.clone() + BN_EPS)?.sqrt()?.recip()?;
                let y = xc.broadcast_mul(&(inv.broadcast_mul(&self.gamma.as_tensor().unsqueeze(0)?))?)?;
                let unbiased = (var.detach() * (m as f64 / (m as f64 - 1.0).max(1.0)))?;
                let blend = |run: &Var, batch: &Tensor| -> Result<()> {
                    run.set(&((run.as_tensor() * (1.0 - BN_MOMENTUM))? + (batch.squeeze(0)? * BN_MOMENTUM)?)?)
                };
                blend(&self.running_mean, &mean.detach())?;
                blend(&self.running_var, &unbiased)?;
                y.reshape(dims)
            }
            Mode::Frozen => {
                let inv = (self.running_var.as_detached_tensor() + BN_EPS)?.sqrt()?.recip()?;
                let scale = (inv * self.gamma.as_detached_tensor())?;
                let shift = (self.running_mean.as_detached_tensor() * &scale)?.neg()?;
                x2.broadcast_mul(&scale.unsqueeze(0)?)?.broadcast_add(&shift.unsqueeze(0)?)?.reshape(dims)
            }
        }
    }
}

struct Block {
    w1: Var,
    bn1: BatchNorm,
    w2: Var,
    bn2: BatchNorm,
    stride: usize,
    c_in: usize,
    c_out: usize,
}

pub struct ResNet {
    pub config: ResNetConfig,
    stem: (Var, BatchNorm),
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
        let stem = (he(rng, ci, co, device)?, BatchNorm::new(co, device)?);
        let mut blocks = Vec::new();
        for pair in convs[1..].chunks(2) {
            let ((c_in, c_out, stride), (_, _, _)) = (pair[0], pair[1]);
            blocks.push(Block {
                w1: he(rng, c_in, c_out, device)?,
                bn1: BatchNorm::new(c_out, device)?,
                w2: he(rng, c_out, c_out, device)?,
                bn2: BatchNorm::new(c_out, device)?,
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
        let bn = |name: &str, b: &BatchNorm, out: &mut Vec<(String, Var)>| {
            if trainable {
                out.push((format!("{name}.gamma"), b.gamma.clone()));
                out.push((format!("{name}.beta"), b.beta.clone()));
            } else {
                out.push((format!("{name}.running_mean"), b.running_mean.clone()));
                out.push((format!("{name}.running_var"), b.running_var.clone()));
            }
        };
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

impl Classifier for ResNet {
    fn forward_mode(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        let p = |v: &Var| mode.param(v);
        let (n, c, _, _) = x.dims4()?;
        let x = if c == 1 { x.reshape((n, x.dim(2)?, x.dim(3)?, 1))? } else { x.permute((0, 2, 3, 1))?.contiguous()? };
        let (w, bn) = &self.stem;
        let mut h = bias_leaky_relu(&bn.scale(&conv2d(&x, &p(w), S1)?, mode)?, &p(&bn.beta), 0.0)?;
        for b in &self.blocks {
            let g = if b.stride == 2 { S2 } else { S1 };
            let a = bias_leaky_relu(&b.bn1.scale(&conv2d(&h, &p(&b.w1), g)?, mode)?, &p(&b.bn1.beta), 0.0)?;
            let y = b.bn2.scale(&conv2d(&a, &p(&b.w2), S1)?, mode)?;
            h = bias_leaky_relu(&(y + shortcut(&h, b.stride, b.c_in, b.c_out)?)?, &p(&b.bn2.beta), 0.0)?;
        }
        let (n, hh, ww, c) = h.dims4()?;
        let pooled = h.reshape((n, hh * ww, c))?.mean(1)?;
        pooled.matmul(&p(&self.head.0))?.broadcast_add(&p(&self.head.1))
    }

    fn named_vars(&self) -> Vec<(String, Var)> {
        self.named(true)
    }

    fn named_buffers(&self) -> Vec<(String, Var)> {
        self.named(false)
    }
}
