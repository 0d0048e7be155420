//! Stage adapters: the thin layer between the engine (which sees bytes and parameters) and
//! the ML library (which sees tensors). One file per stage kind.

mod attack;
mod evaluate;
mod load;
mod synthesize;
mod train;

use crate::executor::{Runner, StageIo};
use crate::plan::StageDef;
use anyhow::{bail, Result};
use serde::Deserialize;
use stages::candle::Device;
use stages::nn::{Classifier, Cnn4, Cnn4Config, NormKind, ResNet, ResNetConfig};
use stages::rng::Rng;

/// Runs stages on one candle device.
pub struct Adapters {
    pub device: Device,
}

impl Adapters {
    pub fn cpu() -> Self {
        Adapters { device: Device::Cpu }
    }

    /// The adapters for a `device` setting: `cpu`, or `cuda` / `cuda:N` in a build with the
    /// `cuda` feature. A device this build cannot use is a user error.
    pub fn for_device(name: &str) -> Result<Self> {
        match name {
            "cpu" => Ok(Adapters::cpu()),
            _ if name == "cuda" || name.starts_with("cuda:") => {
                let ordinal: usize = name.strip_prefix("cuda:").unwrap_or("0").parse().map_err(|_| crate::UserError(format!("device `{name}`: expected cuda:N with N a GPU number")))?;
                if cfg!(feature = "cuda") {
                    Ok(Adapters { device: Device::new_cuda(ordinal).map_err(|e| crate::UserError(format!("device `{name}`: {e}")))? })
                } else {
                    Err(crate::UserError(format!("device `{name}`: this pipe was built without CUDA; rebuild with `cargo build --release --features cuda`")).into())
                }
            }
            other => Err(crate::UserError(format!("device `{other}`: expected `cpu` or `cuda:N`")).into()),
        }
    }
}

impl Runner for Adapters {
    fn run(&self, stage: &StageDef, io: &mut StageIo) -> Result<()> {
        match stage.kind {
            "load" => load::run(io),
            "train" => train::run(io, &self.device),
            "synthesize" => synthesize::run(io, &self.device),
            "evaluate" => evaluate::run(io, &self.device),
            "attack" => attack::run(io, &self.device),
            other => bail!("no adapter for stage kind `{other}`"),
        }
    }

    fn device(&self) -> String {
        match self.device.location() {
            stages::candle::DeviceLocation::Cpu => "cpu".into(),
            stages::candle::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
            other => format!("{other:?}"),
        }
    }
}

/// The `net` block of stage parameters.
#[derive(Clone, Debug, Deserialize)]
pub struct NetParams {
    pub arch: String,
    #[serde(default)]
    pub norm: Option<String>,
    pub width: f64,
    pub leaky_slope: f64,
    pub channels: usize,
    pub height: usize,
    pub image_width: usize,
    pub num_classes: usize,
}

impl NetParams {
    pub fn shape(&self) -> (usize, usize, usize) {
        (self.channels, self.height, self.image_width)
    }

    fn norm(&self) -> Result<Option<NormKind>> {
        Ok(match self.norm.as_deref() {
            None | Some("none") => None,
            Some("batch") => Some(NormKind::Batch),
            Some("layer") => Some(NormKind::Layer),
            Some(other) => bail!("unknown norm `{other}`"),
        })
    }

    /// A freshly initialized net; weights drawn from `rng`.
    pub fn build(&self, rng: &mut Rng, device: &Device) -> Result<Box<dyn Classifier>> {
        match self.arch.as_str() {
            "cnn4" => {
                let mut cfg = Cnn4Config::mnist(self.num_classes, self.width, self.leaky_slope);
                cfg.norm = self.norm()?;
                cfg.in_channels = self.channels;
                cfg.height = self.height;
                cfg.width = self.image_width;
                Ok(Box::new(Cnn4::new(cfg, rng, device)?))
            }
            "resnet32" => {
                let mut cfg = ResNetConfig::resnet32(self.num_classes);
                cfg.in_channels = self.channels;
                cfg.height = self.height;
                cfg.width = self.image_width;
                cfg.channels = cfg.channels.map(|c| ((c as f64 * self.width).round() as usize).max(1));
                cfg.norm = self.norm()?.unwrap_or(NormKind::Batch);
                Ok(Box::new(ResNet::new(cfg, rng, device)?))
            }
            other => bail!("unknown net `{other}`"),
        }
    }

    /// The net of a checkpoint (weights only).
    pub fn load(&self, checkpoint: &[u8], device: &Device) -> Result<Box<dyn Classifier>> {
        let net = self.build(&mut Rng::new(0), device)?;
        let decoded = stages::checkpoint::decode(checkpoint, device)?;
        net.load_tensors(&decoded.model)?;
        Ok(net)
    }
}

/// The decoded image set of an input, as floats in [-1, 1] and labels.
fn read_set(io: &StageIo, name: &str) -> Result<(Vec<f32>, Vec<u32>)> {
    let set = stages::codec::decode_image_set(&io.read(name)?)?;
    Ok((set.to_unit_range(), set.labels))
}
