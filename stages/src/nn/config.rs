//! A classifier as a setting: which net, how wide, which normalization, on what images
//! and how many logits. The engine keys stages by this very struct.

use super::{Classifier, Cnn4, Cnn4Config, NormKind, ResNet, ResNetConfig, Shape3, Winn64, Winn64Config};
use crate::rng::Rng;
use candle_core::Device;
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Arch {
    /// The ICN paper's MNIST net.
    Cnn4,
    /// The CIFAR ResNet-32 (3 stages x 5 basic blocks, 16/32/64 channels times `width`).
    Resnet32,
    /// WINN's Table 5 net for 64x64 images (3x3 convolutions, average pooling, Swish);
    /// `norm` applies after every convolution but the first (layer norm in the paper).
    Winn64,
}

/// Normalization after each convolution.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Normalization {
    None,
    Batch,
    Layer,
}

impl Normalization {
    pub fn kind(self) -> Option<NormKind> {
        match self {
            Normalization::None => None,
            Normalization::Batch => Some(NormKind::Batch),
            Normalization::Layer => Some(NormKind::Layer),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetConfig {
    pub arch: Arch,
    pub norm: Normalization,
    /// Channel multiplier: 1.0 is the paper's net.
    pub width: f64,
    pub leaky_slope: f64,
    pub channels: usize,
    pub height: usize,
    pub image_width: usize,
    pub num_classes: usize,
    /// Supervised WINN's Wasserstein head on the logits ([`crate::critic::WassHead`]): the
    /// critic f(x) = v . logits(x) + c. Absent from keys when false, so nets without one
    /// kept their keys when it came.
    #[serde(default, skip_serializing_if = "is_false")]
    pub wass_head: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("{0}")]
    Candle(#[from] candle_core::Error),
    #[error("a ResNet needs batch or layer norm, not none")]
    ResNetWithoutNorm,
    #[error("the winn64 net needs image sides that are multiples of {multiple}, not {height}x{width}")]
    Winn64Size { height: usize, width: usize, multiple: usize },
}

impl NetConfig {
    pub fn shape(&self) -> Shape3 {
        (self.channels, self.height, self.image_width)
    }

    /// A freshly initialized net; weights drawn from `rng`.
    pub fn build(&self, rng: &mut Rng, device: &Device) -> Result<Box<dyn Classifier>, NetError> {
        let net = self.build_classifier(rng, device)?;
        if !self.wass_head {
            return Ok(net);
        }
        let head = crate::critic::WassHead::new(self.num_classes, rng, device)?;
        Ok(Box::new(crate::critic::WithWassHead::new(net, head)))
    }

    fn build_classifier(&self, rng: &mut Rng, device: &Device) -> Result<Box<dyn Classifier>, NetError> {
        match self.arch {
            Arch::Cnn4 => {
                let mut cfg = Cnn4Config::mnist(self.num_classes, self.width, self.leaky_slope);
                cfg.norm = self.norm.kind();
                cfg.in_channels = self.channels;
                cfg.height = self.height;
                cfg.width = self.image_width;
                Ok(Box::new(Cnn4::new(cfg, rng, device)?))
            }
            Arch::Resnet32 => {
                let mut cfg = ResNetConfig::resnet32(self.num_classes);
                cfg.in_channels = self.channels;
                cfg.height = self.height;
                cfg.width = self.image_width;
                cfg.channels = cfg.channels.map(|c| ((c as f64 * self.width).round() as usize).max(1));
                cfg.norm = self.norm.kind().ok_or(NetError::ResNetWithoutNorm)?;
                Ok(Box::new(ResNet::new(cfg, rng, device)?))
            }
            Arch::Winn64 => {
                let mut cfg = Winn64Config::table5(self.num_classes, self.width);
                cfg.in_channels = self.channels;
                cfg.height = self.height;
                cfg.width = self.image_width;
                cfg.norm = self.norm.kind();
                if !cfg.fits() {
                    let multiple = super::winn64::SIDE_MULTIPLE;
                    return Err(NetError::Winn64Size { height: self.height, width: self.image_width, multiple });
                }
                Ok(Box::new(Winn64::new(cfg, rng, device)?))
            }
        }
    }

    /// The net of a checkpoint (weights only). A checkpoint whose net carries a Wasserstein
    /// head loads with it whatever this config says: evaluation and attacks compare a
    /// supervised WINN classifier with plain ones through the same config, and the head
    /// changes no logit.
    pub fn load(&self, checkpoint: &[u8], device: &Device) -> Result<Box<dyn Classifier>, NetError> {
        let cfg = NetConfig { wass_head: self.wass_head || crate::checkpoint::has_wass_head(checkpoint), ..self.clone() };
        let net = cfg.build(&mut Rng::new(0), device)?;
        let decoded = crate::checkpoint::decode(checkpoint, net.as_ref(), device)?;
        net.load_tensors(&decoded.model)?;
        Ok(net)
    }
}
