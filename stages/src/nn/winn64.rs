//! WINN's net for 64x64 images (the paper's Table 5; `GoodDiscriminator` in its reference
//! code): eight 3x3 stride-1 convolutions in four pairs, each pair followed by 2x2 average
//! pooling, Swish after every convolution, layer norm after every convolution but the
//! first, and a linear head. The layer list, as the reference code has it:
//!
//! ```text
//! conv 3-32   swish            conv 32-64   LN swish   pool   (64 -> 32)
//! conv 64-64  LN swish         conv 64-128  LN swish   pool   (32 -> 16)
//! conv 128-128 LN swish        conv 128-256 LN swish   pool   (16 -> 8)
//! conv 256-256 LN swish        conv 256-512 LN swish   pool   (8 -> 4)
//! linear 4*4*512 -> K
//! ```
//!
//! The paper's table lists the pairs as "32-64 / 64-128 / 128-256 / 256-512": the second
//! convolution of each pair widens, the first keeps the width of the pair before (or maps
//! the image to 32 channels).
//!
//! Choices from the reference code: every convolution has a bias, also before a layer norm
//! (its layer norm is over C, H, W per sample, so a per-channel bias is not absorbed), and
//! the layer norm has per-channel gamma and beta. Weights are drawn N(0, 0.02^2) (the
//! reference draws uniform with that standard deviation), biases zero. Any image whose
//! sides are multiples of 16 fits; the head's size follows.
//!
//! Every part differentiates twice (WINN's gradient penalty): the convolutions are the fast
//! kernels of [`super::conv`], Swish is candle's `silu` (its backward is made of candle ops),
//! pooling is reshapes and sums, layer norm is [`super::norm`].

use super::conv::{conv2d_bias, Geom};
use super::norm::{Act, Norm, NormKind};
use super::{Classifier, Layout, Mode, TorchName};
use crate::rng::Rng;
use candle_core::{DType, Device, Result, Tensor, Var};

#[derive(Clone, Debug, PartialEq)]
pub struct Winn64Config {
    pub in_channels: usize,
    pub height: usize,
    pub width: usize,
    pub num_classes: usize,
    /// Output channels of the eight convolutions; Table 5's are 32/64/64/128/128/256/256/512.
    pub channels: [usize; 8],
    /// Normalization after every convolution but the first: layer norm in the paper.
    pub norm: Option<NormKind>,
}

/// Sides must halve four times.
pub const SIDE_MULTIPLE: usize = 16;

/// The reference code's weight standard deviation for this net.
const INIT_STD: f64 = 0.02;

const GEOM: Geom = Geom { k: 3, stride: 1, pad: 1 };

impl Winn64Config {
    /// Table 5's widths scaled by `width` (1.0 is the paper's net), on 64x64 RGB images.
    pub fn table5(num_classes: usize, width: f64) -> Self {
        let scale = |c: f64| ((c * width).round() as usize).max(1);
        Winn64Config {
            in_channels: 3,
            height: 64,
            width: 64,
            num_classes,
            channels: [32.0, 64.0, 64.0, 128.0, 128.0, 256.0, 256.0, 512.0].map(scale),
            norm: Some(NormKind::Layer),
        }
    }

    /// Whether images of this size fit: both sides non-zero multiples of [`SIDE_MULTIPLE`].
    pub fn fits(&self) -> bool {
        [self.height, self.width].iter().all(|&s| s > 0 && s % SIDE_MULTIPLE == 0)
    }

    /// Spatial size after the four poolings (4x4 for 64x64).
    pub fn feature_size(&self) -> (usize, usize) {
        (self.height / SIDE_MULTIPLE, self.width / SIDE_MULTIPLE)
    }

    /// Floating-point operations of one image's forward pass (multiply-add = 2).
    pub fn forward_flops(&self) -> f64 {
        let (mut h, mut w, mut c_in, mut flops) = (self.height, self.width, self.in_channels, 0.0);
        for (i, &c_out) in self.channels.iter().enumerate() {
            flops += 2.0 * (h * w * c_out * 9 * c_in) as f64;
            c_in = c_out;
            if i % 2 == 1 {
                h /= 2;
                w /= 2;
            }
        }
        flops + 2.0 * (h * w * c_in * self.num_classes) as f64
    }
}

struct Layer {
    w: Var,
    b: Var,
    norm: Option<Norm>,
}

pub struct Winn64 {
    pub config: Winn64Config,
    convs: Vec<Layer>,
    head: (Var, Var),
}

impl Winn64 {
    pub fn new(config: Winn64Config, rng: &mut Rng, device: &Device) -> Result<Self> {
        if !config.fits() {
            candle_core::bail!("the WINN Table 5 net needs image sides that are multiples of {SIDE_MULTIPLE}, not {}x{}", config.height, config.width);
        }
        let mut convs = Vec::with_capacity(8);
        let mut c_in = config.in_channels;
        for (i, &c_out) in config.channels.iter().enumerate() {
            // NHWC layout: rows (ki, kj, c_in), one column per output channel.
            let w = Var::from_vec(rng.normal_vec(9 * c_in * c_out, 0.0, INIT_STD), (9 * c_in, c_out), device)?;
            let norm = match (i, config.norm) {
                (0, _) | (_, None) => None,
                (_, Some(kind)) => Some(Norm::new(kind, c_out, device)?),
            };
            convs.push(Layer { w, b: Var::zeros(c_out, DType::F32, device)?, norm });
            c_in = c_out;
        }
        let (h, w) = config.feature_size();
        let fan_in = h * w * c_in;
        let head = (
            Var::from_vec(rng.normal_vec(fan_in * config.num_classes, 0.0, INIT_STD), (fan_in, config.num_classes), device)?,
            Var::zeros(config.num_classes, DType::F32, device)?,
        );
        Ok(Winn64 { config, convs, head })
    }

    fn named(&self, trainable: bool) -> Vec<(String, Var)> {
        let mut out = Vec::new();
        for (i, l) in self.convs.iter().enumerate() {
            if trainable {
                out.push((format!("conv{}.weight", i + 1), l.w.clone()));
                out.push((format!("conv{}.bias", i + 1), l.b.clone()));
            }
            if let Some(n) = &l.norm {
                n.named(&format!("conv{}.norm", i + 1), trainable, &mut out);
            }
        }
        if trainable {
            out.push(("head.weight".into(), self.head.0.clone()));
            out.push(("head.bias".into(), self.head.1.clone()));
        }
        out
    }
}

use super::pool::avg_pool2_nhwc;

impl Winn64 {
    /// The forward pass, keeping every layer's activation in `kept` when asked.
    fn run(&self, x: &Tensor, mode: Mode, mut kept: Option<&mut Vec<Tensor>>) -> Result<Tensor> {
        let p = |v: &Var| mode.param(v);
        let (n, c, hh, ww) = x.dims4()?;
        let mut h = if c == 1 { x.reshape((n, hh, ww, 1))? } else { x.permute((0, 2, 3, 1))?.contiguous()? };
        for (i, l) in self.convs.iter().enumerate() {
            let z = conv2d_bias(&h, &p(&l.w), &p(&l.b), GEOM)?;
            h = match &l.norm {
                Some(norm) => norm.act(&z, mode, Act::Swish, None)?,
                None => z.silu()?,
            };
            if let Some(k) = kept.as_deref_mut() {
                k.push(h.clone());
            }
            if i % 2 == 1 {
                h = avg_pool2_nhwc(&h)?;
            }
        }
        h.flatten_from(1)?.matmul(&p(&self.head.0))?.broadcast_add(&p(&self.head.1))
    }
}

impl Classifier for Winn64 {
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

    /// `conv1`..`conv8` (Conv2d 3x3, stride 1, padding 1, with bias), `norm2`..`norm8`, and
    /// `fc` over `torch.flatten` of the last NCHW map, as for CNN4.
    fn torch_names(&self) -> Vec<TorchName> {
        let mut out = Vec::with_capacity(4 * self.convs.len() + 2);
        for (i, l) in self.convs.iter().enumerate() {
            let n = i + 1;
            out.push(TorchName::new(format!("conv{n}.weight"), format!("conv{n}.weight"), Layout::Conv { k: GEOM.k }));
            out.push(TorchName::new(format!("conv{n}.bias"), format!("conv{n}.bias"), Layout::Same));
            if let Some(norm) = &l.norm {
                norm.torch_names(&format!("conv{n}.norm"), &format!("norm{n}"), &mut out);
            }
        }
        let channels = *self.config.channels.last().expect("eight convs");
        out.push(TorchName::new("head.weight", "fc.weight", Layout::Linear { channels }));
        out.push(TorchName::new("head.bias", "fc.bias", Layout::Same));
        out
    }
}
