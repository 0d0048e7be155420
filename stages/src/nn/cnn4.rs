//! The ICN paper's MNIST net: four 5x5 stride-2 convolutions (64/128/256/512 channels),
//! LeakyReLU, no pooling, no batch norm, then one linear layer to K logits.

use super::conv::{conv2d, conv2d_bias_leaky, Geom};
use super::norm::{Act, Norm, NormKind};
use super::{Classifier, Layout, Mode, TorchName};
use crate::rng::Rng;
use candle_core::{DType, Device, Result, Tensor, Var};

#[derive(Clone, Debug, PartialEq)]
pub struct Cnn4Config {
    pub in_channels: usize,
    pub height: usize,
    pub width: usize,
    pub num_classes: usize,
    /// Output channels of the four convolutions; the paper's are 64/128/256/512.
    pub channels: [usize; 4],
    pub leaky_slope: f64,
    /// Normalization after each convolution (IGM's CNN4 uses batch norm); none in the ICN
    /// paper's net, whose convolutions then have biases.
    pub norm: Option<NormKind>,
}

impl Cnn4Config {
    /// The paper's widths scaled by `width` (1.0 is the paper's net; tests use smaller).
    pub fn mnist(num_classes: usize, width: f64, leaky_slope: f64) -> Self {
        let scale = |c: f64| ((c * width).round() as usize).max(1);
        Cnn4Config {
            in_channels: 1,
            height: 28,
            width: 28,
            num_classes,
            channels: [scale(64.0), scale(128.0), scale(256.0), scale(512.0)],
            leaky_slope,
            norm: None,
        }
    }
}

const KERNEL: usize = 5;
const GEOM: Geom = Geom { k: KERNEL, stride: 2, pad: 2 };

/// A convolution followed by a bias (no norm) or by a norm whose beta is the bias.
struct Layer {
    w: Var,
    bias: Option<Var>,
    norm: Option<Norm>,
}

pub struct Cnn4 {
    pub config: Cnn4Config,
    convs: Vec<Layer>,
    head: (Var, Var),
}

impl Cnn4 {
    /// He-normal weights with the LeakyReLU gain, zero biases, all drawn from `rng`.
    pub fn new(config: Cnn4Config, rng: &mut Rng, device: &Device) -> Result<Self> {
        let gain2 = 2.0 / (1.0 + config.leaky_slope * config.leaky_slope);
        let mut convs = Vec::with_capacity(4);
        let mut c_in = config.in_channels;
        for &c_out in &config.channels {
            let fan_in = c_in * KERNEL * KERNEL;
            let w = rng.normal_vec(c_out * fan_in, 0.0, (gain2 / fan_in as f64).sqrt());
            // NHWC layout: rows (ki, kj, c_in), one column per output channel.
            let w = Var::from_vec(w, (fan_in, c_out), device)?;
            let layer = match config.norm {
                None => Layer { w, bias: Some(Var::zeros(c_out, DType::F32, device)?), norm: None },
                Some(kind) => Layer { w, bias: None, norm: Some(Norm::new(kind, c_out, device)?) },
            };
            convs.push(layer);
            c_in = c_out;
        }
        let (h, w) = config.feature_size();
        let fan_in = c_in * h * w;
        let hw = rng.normal_vec(config.num_classes * fan_in, 0.0, (1.0 / fan_in as f64).sqrt());
        let head = (
            Var::from_vec(hw, (fan_in, config.num_classes), device)?,
            Var::zeros(config.num_classes, DType::F32, device)?,
        );
        Ok(Cnn4 { config, convs, head })
    }
}

impl Cnn4Config {
    /// Spatial size after the four convolutions (2x2 for 28x28 and for 32x32).
    pub fn feature_size(&self) -> (usize, usize) {
        let mut h = self.height;
        let mut w = self.width;
        for _ in 0..4 {
            h = GEOM.out(h);
            w = GEOM.out(w);
        }
        (h, w)
    }
}

impl Cnn4Config {
    /// Floating-point operations of one image's forward pass (multiply-add = 2).
    pub fn forward_flops(&self) -> f64 {
        let (mut h, mut w, mut c_in, mut flops) = (self.height, self.width, self.in_channels, 0.0);
        for &c_out in &self.channels {
            h = GEOM.out(h);
            w = GEOM.out(w);
            flops += 2.0 * (h * w * c_out * KERNEL * KERNEL * c_in) as f64;
            c_in = c_out;
        }
        flops + 2.0 * (h * w * c_in * self.num_classes) as f64
    }
}

impl Cnn4 {
    /// The forward pass, keeping every layer's activation in `kept` when asked.
    fn run(&self, x: &Tensor, mode: Mode, mut kept: Option<&mut Vec<Tensor>>) -> Result<Tensor> {
        let p = |v: &Var| mode.param(v);
        let (n, c, hh, ww) = x.dims4()?;
        // NCHW in, NHWC inside: one channel needs no copy.
        let mut h = if c == 1 { x.reshape((n, hh, ww, 1))? } else { x.permute((0, 2, 3, 1))?.contiguous()? };
        let slope = self.config.leaky_slope;
        for l in &self.convs {
            h = match (&l.bias, &l.norm) {
                (Some(b), _) => conv2d_bias_leaky(&h, &p(&l.w), &p(b), GEOM, slope)?,
                (None, Some(norm)) => norm.act(&conv2d(&h, &p(&l.w), GEOM)?, mode, Act::Leaky(slope as f32), None)?,
                (None, None) => unreachable!("a layer has a bias or a norm"),
            };
            if let Some(k) = kept.as_deref_mut() {
                k.push(h.clone());
            }
        }
        let h = h.flatten_from(1)?;
        h.matmul(&p(&self.head.0))?.broadcast_add(&p(&self.head.1))
    }
}

impl Classifier for Cnn4 {
    fn forward_mode(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        self.run(x, mode, None)
    }

    fn activations(&self, x: &Tensor) -> Result<(Vec<Tensor>, Tensor)> {
        super::keeping(|kept| self.run(x, Mode::Frozen, Some(kept)))
    }

    fn named_vars(&self) -> Vec<(String, Var)> {
        let mut out = Vec::with_capacity(10);
        for (i, l) in self.convs.iter().enumerate() {
            out.push((format!("conv{}.weight", i + 1), l.w.clone()));
            if let Some(b) = &l.bias {
                out.push((format!("conv{}.bias", i + 1), b.clone()));
            }
            if let Some(n) = &l.norm {
                n.named(&format!("conv{}.norm", i + 1), true, &mut out);
            }
        }
        out.push(("head.weight".into(), self.head.0.clone()));
        out.push(("head.bias".into(), self.head.1.clone()));
        out
    }

    fn named_buffers(&self) -> Vec<(String, Var)> {
        let mut out = Vec::new();
        for (i, l) in self.convs.iter().enumerate() {
            if let Some(n) = &l.norm {
                n.named(&format!("conv{}.norm", i + 1), false, &mut out);
            }
        }
        out
    }

    /// `conv1`..`conv4` (Conv2d 5x5, stride 2, padding 2, a bias without a norm),
    /// `norm1`..`norm4`, and `fc` over `torch.flatten` of the last NCHW map.
    fn torch_names(&self) -> Vec<TorchName> {
        let mut out = Vec::with_capacity(18);
        for (i, l) in self.convs.iter().enumerate() {
            let n = i + 1;
            out.push(TorchName::new(format!("conv{n}.weight"), format!("conv{n}.weight"), Layout::Conv { k: KERNEL }));
            if l.bias.is_some() {
                out.push(TorchName::new(format!("conv{n}.bias"), format!("conv{n}.bias"), Layout::Same));
            }
            if let Some(norm) = &l.norm {
                norm.torch_names(&format!("conv{n}.norm"), &format!("norm{n}"), &mut out);
            }
        }
        let channels = self.config.channels[3];
        out.push(TorchName::new("head.weight", "fc.weight", Layout::Linear { channels }));
        out.push(TorchName::new("head.bias", "fc.bias", Layout::Same));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_and_seeded_init() -> Result<()> {
        let cfg = Cnn4Config::mnist(10, 0.125, 0.2);
        assert_eq!(cfg.feature_size(), (2, 2));
        let a = Cnn4::new(cfg.clone(), &mut Rng::new(1), &Device::Cpu)?;
        let b = Cnn4::new(cfg.clone(), &mut Rng::new(1), &Device::Cpu)?;
        let x = Tensor::zeros((3, 1, 28, 28), DType::F32, &Device::Cpu)?;
        assert_eq!(a.forward(&x)?.dims(), &[3, 10]);
        for ((na, ta), (_, tb)) in a.named_tensors().iter().zip(b.named_tensors()) {
            let (va, vb) = (ta.flatten_all()?.to_vec1::<f32>()?, tb.flatten_all()?.to_vec1::<f32>()?);
            assert_eq!(va, vb, "{na} differs for the same seed");
        }
        let c = Cnn4::new(cfg, &mut Rng::new(2), &Device::Cpu)?;
        let w = |m: &Cnn4| m.named_tensors()[0].1.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_ne!(w(&a), w(&c));
        Ok(())
    }
}
