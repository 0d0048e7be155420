//! Stage kinds. Each kind is one typed unit in one file: its name and version, its
//! parameter struct (the very struct a method places into the graph, serialized into the
//! key, and read back by its run), its named inputs and outputs, and its run, a thin
//! adapter between the engine (bytes, parameters) and the ML library (tensors).
//!
//! Adding a kind: its file here, one line in [`REGISTRY`], and the method builder that
//! places it.

pub mod attack;
pub mod evaluate;
pub mod load;
pub mod probe;
pub mod quality;
pub mod sample;
pub mod stylize;
pub mod synthesize;
pub mod train;

use crate::engine::executor::{Runner, StageIo};
use crate::engine::graph::{InputRef, KindId, StageDef};
use anyhow::{Context, Result};
use serde::{de::DeserializeOwned, Serialize};
use serde_json::Value;
use stages::candle::Device;

/// A stage kind.
pub trait Kind {
    const ID: KindId;
    /// Every setting that can change the outputs, and nothing else (no `serde(default)`
    /// on them: a stage read back without a field is an error naming it).
    type Params: Serialize + DeserializeOwned;
    /// The outputs every run writes; some kinds write more (named in their docs).
    const OUTPUTS: &'static [&'static str];
    fn run(params: Self::Params, io: &mut StageIo, device: &Device) -> Result<()>;
}

/// A stage of kind `K` at `id`: its parameters are serialized here, once.
pub fn place<K: Kind>(id: String, params: &K::Params, inputs: Vec<(String, InputRef)>) -> StageDef {
    StageDef {
        id,
        kind: K::ID,
        params: serde_json::to_value(params).expect("stage parameters serialize"),
        inputs: inputs.into_iter().collect(),
    }
}

/// A kind as the registry holds it.
pub struct Entry {
    pub id: KindId,
    pub outputs: &'static [&'static str],
    run: fn(&Value, &mut StageIo, &Device) -> Result<()>,
}

const fn entry<K: Kind>() -> Entry {
    Entry { id: K::ID, outputs: K::OUTPUTS, run: run_kind::<K> }
}

fn run_kind<K: Kind>(params: &Value, io: &mut StageIo, device: &Device) -> Result<()> {
    let p = read_params::<K::Params>(params).with_context(|| format!("parameters of stage {} ({} v{})", io.stage_id(), K::ID.name, K::ID.version))?;
    K::run(p, io, device)
}

/// Parameters read back from a plan or a manifest; a missing field is an error naming it.
pub fn read_params<P: DeserializeOwned>(params: &Value) -> Result<P> {
    Ok(P::deserialize(params)?)
}

/// Every kind this `pipe` runs.
/// This pipe's kind of that name and version (a saved job names its kind so).
pub fn kind_id(name: &str, version: u32) -> Option<KindId> {
    REGISTRY.iter().map(|e| e.id).find(|id| id.name == name && id.version == version)
}

pub static REGISTRY: [Entry; 10] = [
    entry::<load::Load>(),
    entry::<train::Train>(),
    entry::<synthesize::Synthesize>(),
    entry::<evaluate::Evaluate>(),
    entry::<attack::Attack>(),
    entry::<sample::Sample>(),
    entry::<probe::Probe>(),
    entry::<quality::Quality>(),
    entry::<quality::QualityCurve>(),
    entry::<stylize::Stylize>(),
];

/// Runs stages on one candle device.
pub struct Kinds {
    pub device: Device,
}

impl Kinds {
    pub fn cpu() -> Self {
        Kinds { device: Device::Cpu }
    }

    /// The runner for a `device` setting: `cpu`, or `cuda` / `cuda:N` in a build with the
    /// `cuda` feature. A device this build cannot use is a user error.
    pub fn for_device(name: &str) -> Result<Self> {
        match name {
            "cpu" => Ok(Kinds::cpu()),
            _ if name == "cuda" || name.starts_with("cuda:") => {
                let ordinal: usize = name.strip_prefix("cuda:").unwrap_or("0").parse().map_err(|_| crate::UserError(format!("device `{name}`: expected cuda:N with N a GPU number")))?;
                if cfg!(feature = "cuda") {
                    Ok(Kinds { device: Device::new_cuda(ordinal).map_err(|e| crate::UserError(format!("device `{name}`: {e}")))? })
                } else {
                    Err(crate::UserError(format!("device `{name}`: this pipe was built without CUDA; rebuild with `cargo build --release --features cuda`")).into())
                }
            }
            other => Err(crate::UserError(format!("device `{other}`: expected `cpu` or `cuda:N`")).into()),
        }
    }
}

impl Runner for Kinds {
    fn run(&self, stage: &StageDef, io: &mut StageIo) -> Result<()> {
        let entry = REGISTRY.iter().find(|e| e.id == stage.kind).with_context(|| format!("stage {}: no kind {} v{} in this pipe", stage.id, stage.kind.name, stage.kind.version))?;
        (entry.run)(&stage.params, io, &self.device)?;
        // a kind that forgot a declared output is a bug: nothing of it is committed
        let missing: Vec<&str> = entry.outputs.iter().copied().filter(|o| !io.wrote(o)).collect();
        anyhow::ensure!(missing.is_empty(), "stage {}: kind {} did not write its output(s) {}", stage.id, stage.kind.name, missing.join(", "));
        Ok(())
    }

    fn device(&self) -> String {
        match self.device.location() {
            stages::candle::DeviceLocation::Cpu => "cpu".into(),
            stages::candle::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
            other => format!("{other:?}"),
        }
    }
}

/// The decoded image set of an input, as floats in [-1, 1] and labels.
/// A stage's progress between images, in one partial file, so that a kill can never leave
/// the images of one moment beside the bookkeeping of another (two files are each written
/// atomically, but not together): the JSON of `meta`, then the images' f32 values.
fn encode_progress(meta: &impl Serialize, images: &[f32]) -> Result<Vec<u8>> {
    let json = serde_json::to_vec(meta)?;
    let mut bytes = Vec::with_capacity(8 + json.len() + 4 * images.len());
    bytes.extend_from_slice(&(json.len() as u64).to_le_bytes());
    bytes.extend_from_slice(&json);
    images.iter().for_each(|v| bytes.extend_from_slice(&v.to_le_bytes()));
    Ok(bytes)
}

/// [`encode_progress`]'s inverse.
fn decode_progress<T: DeserializeOwned>(bytes: &[u8]) -> Result<(T, Vec<f32>)> {
    let n = bytes.get(..8).map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")) as usize).context("a progress file shorter than its header")?;
    let json = bytes.get(8..8 + n).context("a progress file shorter than its JSON")?;
    let rest = &bytes[8 + n..];
    anyhow::ensure!(rest.len().is_multiple_of(4), "a progress file whose images are not whole f32 values");
    Ok((serde_json::from_slice(json)?, rest.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes"))).collect()))
}

fn read_set(io: &StageIo, name: &str) -> Result<(Vec<f32>, Vec<u32>)> {
    let set = stages::codec::decode_image_set(&io.read(name)?)?;
    Ok((set.to_unit_range(), set.labels))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_round_trips_and_a_cut_file_is_an_error() {
        let images = [0.5f32, -1.0, f32::MIN_POSITIVE, 3.25];
        let bytes = encode_progress(&serde_json::json!({"done": [1, 2]}), &images).unwrap();
        let (meta, back): (Value, Vec<f32>) = decode_progress(&bytes).unwrap();
        assert_eq!((meta["done"][1].as_u64(), back.as_slice()), (Some(2), &images[..]));
        assert!(decode_progress::<Value>(&bytes[..bytes.len() - 1]).is_err());
        assert!(decode_progress::<Value>(&bytes[..5]).is_err());
    }

    #[test]
    fn parameters_missing_a_field_are_an_error_naming_it() {
        let mut v = serde_json::to_value(train::Params {
            round: 1,
            net: stages::nn::NetConfig { arch: stages::nn::Arch::Cnn4, norm: stages::nn::Normalization::None, width: 1.0, leaky_slope: 0.2, channels: 1, height: 28, image_width: 28, num_classes: 10, wass_head: false },
            optimizer: stages::optim::OptimizerConfig::Sgd { lr: 0.1, momentum: 0.9 },
            batch_size: 64,
            epochs: 5,
            objective: stages::loss::Objective::Softmax { alpha: 0.5 },
            augment_pad: 0,
            sampling: None,
            rollback: None,
            seed: 3,
        })
        .unwrap();
        assert!(read_params::<train::Params>(&v).is_ok());
        v["optimizer"].as_object_mut().unwrap().remove("momentum");
        let e = read_params::<train::Params>(&v).expect_err("a missing momentum is refused").to_string();
        assert!(e.contains("momentum"), "{e}");
        v.as_object_mut().unwrap().remove("augment_pad");
        let e = read_params::<train::Params>(&v).err().unwrap().to_string();
        assert!(e.contains("augment_pad") || e.contains("momentum"), "{e}");
    }

    #[test]
    fn every_kind_has_one_registry_line_and_a_unique_name() {
        let mut names: Vec<&str> = REGISTRY.iter().map(|e| e.id.name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), REGISTRY.len());
    }
}
