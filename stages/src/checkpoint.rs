//! Checkpoints as safetensors bytes in PyTorch's conventions (docs/checkpoints.md):
//!
//! - `model.<name>`: the `state_dict()` of the net's PyTorch module, names and layouts as
//!   each net maps them ([`Classifier::torch_names`]);
//! - `optim.<slot>.<name>`: optimizer state of the parameter `<name>`, in that parameter's
//!   layout (`sgd.velocity`, `adam.m`, `adam.v`), and whole-optimizer state (`adam.t`);
//! - `rng.state`: the training RNG;
//! - metadata `format` ([`FORMAT`]) and `pipe`, a JSON header (epoch, round, ...).
//!
//! The conversion happens here, at the boundary: the nets and optimizers keep their own
//! layouts and index-named slots. Bytes are deterministic for the same contents, which the
//! content-addressed store relies on: safetensors orders tensors itself, but writes its
//! metadata map in hash order, so [`encode`] puts the keys back in sorted order.
//!
//! Checkpoints without a `format` (written before format 2) hold pipe's internal names and
//! layouts and are read as such.

use crate::nn::{Classifier, TorchName};
use crate::optim::Optimizer;
use crate::rng::Rng;
use candle_core::{Device, Error, Result, Tensor};
use std::collections::{BTreeMap, HashMap};

/// The metadata `format` of the checkpoints this module writes.
pub const FORMAT: &str = "pipe-checkpoint/2, torch layout";
const FORMAT_KEY: &str = "format";
const META_KEY: &str = "pipe";
const MODEL: &str = "model.";
const OPTIM: &str = "optim.";
const RNG: &str = "rng.state";

fn msg(m: String) -> Error {
    Error::Msg(m)
}

/// Encodes a training state. `meta` is a JSON object text stored in the header.
pub fn encode(model: &dyn Classifier, opt: Option<&dyn Optimizer>, rng: Option<&Rng>, meta: &str) -> Result<Vec<u8>> {
    let names = model.torch_names();
    let by_pipe: HashMap<&str, &TorchName> = names.iter().map(|n| (n.pipe.as_str(), n)).collect();
    let stored = |pipe: &str| by_pipe.get(pipe).copied().ok_or_else(|| msg(format!("the net has no PyTorch name for `{pipe}` (Classifier::torch_names)")));
    let mut tensors = Vec::new();
    for (name, t) in model.named_tensors() {
        let n = stored(&name)?;
        tensors.push((format!("{MODEL}{}", n.torch), n.layout.to_torch(&t)?));
    }
    if let Some(opt) = opt {
        let params = model.named_vars().iter().map(|(name, _)| stored(name)).collect::<Result<Vec<_>>>()?;
        for (slot, t) in opt.state() {
            match per_parameter(&slot, params.len()) {
                Some((kind, i)) => tensors.push((format!("{OPTIM}{kind}.{}", params[i].torch), params[i].layout.to_torch(&t)?)),
                None => tensors.push((format!("{OPTIM}{slot}"), t)),
            }
        }
    }
    if let Some(rng) = rng {
        let words: Vec<i64> = rng.state().iter().map(|&w| w as i64).collect();
        tensors.push((RNG.to_string(), Tensor::new(words.as_slice(), &Device::Cpu)?));
    }
    let metadata = BTreeMap::from([(FORMAT_KEY.to_string(), FORMAT.to_string()), (META_KEY.to_string(), meta.to_string())]);
    let mut bytes = safetensors::serialize(tensors, Some(metadata.clone().into_iter().collect())).map_err(|e| msg(format!("safetensors: {e}")))?;
    sort_metadata(&mut bytes, &metadata)?;
    Ok(bytes)
}

/// Whether a checkpoint holds a net with a Wasserstein head (supervised WINN).
pub fn has_wass_head(bytes: &[u8]) -> bool {
    safetensors::SafeTensors::read_metadata(bytes).is_ok_and(|(_, h)| h.tensors().contains_key(&format!("{MODEL}{}", crate::critic::WASS_WEIGHT)))
}

/// The JSON header of a checkpoint (`{}` when absent), without decoding its tensors.
pub fn meta(bytes: &[u8]) -> Result<String> {
    let (_, header) = safetensors::SafeTensors::read_metadata(bytes).map_err(|e| msg(format!("not a safetensors checkpoint: {e}")))?;
    Ok(header.metadata().as_ref().and_then(|m| m.get(META_KEY).cloned()).unwrap_or_else(|| "{}".into()))
}

/// An optimizer slot of one parameter, `<kind>.<i>` with i indexing `Classifier::vars`
/// (optim.rs names them so), as (kind, i).
fn per_parameter(slot: &str, params: usize) -> Option<(&str, usize)> {
    let (kind, i) = slot.rsplit_once('.')?;
    let i: usize = i.parse().ok()?;
    (i < params).then_some((kind, i))
}

/// Rewrites the metadata map that starts the header in sorted key order: the same entries
/// in another order have the same length, so nothing else moves.
fn sort_metadata(bytes: &mut [u8], metadata: &BTreeMap<String, String>) -> Result<()> {
    // safetensors writes `__metadata__` first, right after the 8-byte header length
    const AT: usize = 8 + r#"{"__metadata__":"#.len();
    let sorted = serde_json::to_string(metadata).map_err(|e| msg(e.to_string()))?;
    let slot = bytes.get_mut(AT..AT + sorted.len()).ok_or_else(|| msg("safetensors header shorter than its metadata".into()))?;
    if serde_json::from_slice::<BTreeMap<String, String>>(slot).ok().as_ref() != Some(metadata) {
        return Err(msg("safetensors header does not start with its metadata".into()));
    }
    slot.copy_from_slice(sorted.as_bytes());
    Ok(())
}

/// A decoded checkpoint, split by owner, in the names and layouts of the net and optimizer
/// it was decoded for (what `Classifier::load_tensors` and `Optimizer::load_state` take).
pub struct Decoded {
    pub model: HashMap<String, Tensor>,
    pub optim: HashMap<String, Tensor>,
    pub rng: Option<Rng>,
    /// The JSON header text, `{}` when absent.
    pub meta: String,
}

/// Decodes a checkpoint of `model`'s architecture (its weights are not touched). A tensor
/// the net lacks, a missing one or a shape that differs is an error naming it.
pub fn decode(bytes: &[u8], model: &dyn Classifier, device: &Device) -> Result<Decoded> {
    let (_, header) = safetensors::SafeTensors::read_metadata(bytes).map_err(|e| msg(format!("not a safetensors checkpoint: {e}")))?;
    let metadata = header.metadata().clone().unwrap_or_default();
    let meta = metadata.get(META_KEY).cloned().unwrap_or_else(|| "{}".into());
    let torch = match metadata.get(FORMAT_KEY) {
        Some(f) if f == FORMAT => true,
        None => false,
        Some(f) => {
            return Err(msg(format!(
                "checkpoint format `{f}` is not one this pipe reads (`{FORMAT}`, or pipe's internal layout of checkpoints without a format); a newer pipe wrote it: read it with that pipe, or rerun the stage that made it"
            )))
        }
    };
    let mut d = Decoded { model: HashMap::new(), optim: HashMap::new(), rng: None, meta };
    for (name, t) in candle_core::safetensors::load_buffer(bytes, device)? {
        if let Some(n) = name.strip_prefix(MODEL) {
            d.model.insert(n.to_string(), t);
        } else if let Some(n) = name.strip_prefix(OPTIM) {
            d.optim.insert(n.to_string(), t);
        } else if name == RNG {
            let w = t.to_vec1::<i64>()?;
            let s: [u64; 4] = match w.as_slice() {
                [a, b, c, e] => [*a as u64, *b as u64, *c as u64, *e as u64],
                _ => candle_core::bail!("rng.state has {} words, expected 4", w.len()),
            };
            d.rng = Some(Rng::from_state(s).ok_or_else(|| msg("rng.state is all zero".into()))?);
        }
    }
    if torch {
        let (names, dims) = (model.torch_names(), pipe_dims(model));
        d.model = model_from_torch(&names, &dims, std::mem::take(&mut d.model))?;
        d.optim = optim_from_torch(model, &names, &dims, std::mem::take(&mut d.optim))?;
    }
    Ok(d)
}

/// Pipe's dims of every tensor of the net, by pipe's name.
fn pipe_dims(model: &dyn Classifier) -> HashMap<String, Vec<usize>> {
    model.named_tensors().into_iter().map(|(n, t)| (n, t.dims().to_vec())).collect()
}

/// `t`, stored as `what` under PyTorch's layout of `n`, in pipe's layout.
fn from_torch(n: &TorchName, dims: &HashMap<String, Vec<usize>>, what: &str, t: &Tensor) -> Result<Tensor> {
    let pipe = dims.get(&n.pipe).ok_or_else(|| msg(format!("the net has no tensor `{}` (Classifier::torch_names)", n.pipe)))?;
    let expected = n.layout.torch_dims(pipe)?;
    if t.dims() != expected.as_slice() {
        candle_core::bail!("checkpoint tensor `{what}` has shape {:?}, the net expects {expected:?}", t.dims());
    }
    n.layout.from_torch(t)
}

fn model_from_torch(names: &[TorchName], dims: &HashMap<String, Vec<usize>>, mut stored: HashMap<String, Tensor>) -> Result<HashMap<String, Tensor>> {
    let mut out = HashMap::new();
    for n in names {
        let t = stored.remove(&n.torch).ok_or_else(|| msg(format!("checkpoint has no tensor `{MODEL}{}`", n.torch)))?;
        out.insert(n.pipe.clone(), from_torch(n, dims, &format!("{MODEL}{}", n.torch), &t)?);
    }
    let mut extra: Vec<String> = stored.into_keys().map(|k| format!("{MODEL}{k}")).collect();
    if !extra.is_empty() {
        extra.sort();
        candle_core::bail!("checkpoint has tensors the net does not (a checkpoint of another net?): {}", extra.join(", "));
    }
    Ok(out)
}

fn optim_from_torch(model: &dyn Classifier, names: &[TorchName], dims: &HashMap<String, Vec<usize>>, stored: HashMap<String, Tensor>) -> Result<HashMap<String, Tensor>> {
    let names: HashMap<&str, &TorchName> = names.iter().map(|n| (n.pipe.as_str(), n)).collect();
    let params = model.named_vars().into_iter().map(|(p, _)| names.get(p.as_str()).copied().ok_or_else(|| msg(format!("the net has no PyTorch name for `{p}`")))).collect::<Result<Vec<_>>>()?;
    let mut out = HashMap::new();
    for (slot, t) in stored {
        // `sgd.velocity.layer1.0.conv1.weight` also ends with `.conv1.weight`: the longest
        // parameter name is the one
        let owner = params.iter().enumerate().filter(|(_, n)| slot.strip_suffix(n.torch.as_str()).is_some_and(|k| k.ends_with('.'))).max_by_key(|(_, n)| n.torch.len());
        match owner {
            Some((i, n)) => {
                let kind = &slot[..slot.len() - n.torch.len() - 1];
                out.insert(format!("{kind}.{i}"), from_torch(n, dims, &format!("{OPTIM}{slot}"), &t)?);
            }
            None => {
                out.insert(slot, t);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::{Arch, Cnn4, Cnn4Config, NetConfig, Normalization};
    use crate::optim::{Adam, SgdMomentum};

    #[test]
    fn roundtrip_is_exact_and_bytes_are_deterministic() -> Result<()> {
        let dev = Device::Cpu;
        let cfg = Cnn4Config::mnist(10, 0.125, 0.2);
        let net = Cnn4::new(cfg.clone(), &mut Rng::new(3), &dev)?;
        let mut opt = SgdMomentum::new(0.1, 0.9);
        let x = Tensor::ones((2, 1, 28, 28), candle_core::DType::F32, &dev)?;
        opt.step(&net.vars(), &net.forward(&x)?.sum_all()?.backward()?)?;
        let mut rng = Rng::new(9);
        rng.next_u64();
        let bytes = encode(&net, Some(&opt), Some(&rng), r#"{"epoch":3}"#)?;
        // each encode hashes its metadata map with fresh keys: the order must not follow
        for _ in 0..16 {
            assert_eq!(bytes, encode(&net, Some(&opt), Some(&rng), r#"{"epoch":3}"#)?);
        }
        let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        let header = String::from_utf8_lossy(&bytes[8..8 + header_len]).to_string();
        assert!(header.starts_with(r#"{"__metadata__":{"format":"pipe-checkpoint/2, torch layout","pipe":"{\"epoch\":3}"}"#), "{header}");

        let d = decode(&bytes, &net, &dev)?;
        assert_eq!(d.meta, r#"{"epoch":3}"#);
        assert_eq!(d.rng, Some(rng.clone()));
        let other = Cnn4::new(cfg, &mut Rng::new(4), &dev)?;
        other.load_tensors(&d.model)?;
        let mut opt2 = SgdMomentum::new(0.1, 0.9);
        opt2.load_state(&other.vars(), &d.optim)?;
        assert_eq!(bytes, encode(&other, Some(&opt2), Some(&rng), r#"{"epoch":3}"#)?);
        assert!(decode(b"garbage", &net, &dev).is_err());
        Ok(())
    }

    fn resnet(norm: Normalization) -> NetConfig {
        NetConfig { arch: Arch::Resnet32, norm, width: 0.25, leaky_slope: 0.0, channels: 3, height: 8, image_width: 8, num_classes: 10, wass_head: false }
    }

    /// Optimizer moments ride under their parameter's PyTorch name and layout, and come
    /// back to the right slot: ResNet names nest (`layer1.0.conv1.weight` ends with
    /// `conv1.weight`, the stem's).
    #[test]
    fn optimizer_state_follows_its_parameter_and_resumes_exactly() -> Result<()> {
        let dev = Device::Cpu;
        let cfg = resnet(Normalization::Batch);
        let net = cfg.build(&mut Rng::new(1), &dev).unwrap();
        let mut opt = Adam::new(0.01, 0.9, 0.999, 1e-8);
        let x = Tensor::from_vec(Rng::new(2).uniform_vec(2 * 3 * 64, -1.0, 1.0), (2, 3, 8, 8), &dev)?;
        opt.step(&net.vars(), &net.forward(&x)?.sqr()?.sum_all()?.backward()?)?;
        let bytes = encode(net.as_ref(), Some(&opt), None, "{}")?;

        let stored: HashMap<String, Tensor> = candle_core::safetensors::load_buffer(&bytes, &dev)?.into_iter().collect();
        let names = net.torch_names();
        for (pipe, _) in net.named_vars() {
            let torch = &names.iter().find(|n| n.pipe == pipe).unwrap().torch;
            let param = stored[&format!("model.{torch}")].dims().to_vec();
            for slot in ["adam.m", "adam.v"] {
                assert_eq!(stored[&format!("optim.{slot}.{torch}")].dims(), param.as_slice(), "{slot} of {torch}");
            }
        }
        assert_eq!(stored["model.conv1.weight"].dims(), &[4, 3, 3, 3]);
        assert_eq!(stored["model.layer2.0.conv1.weight"].dims(), &[8, 4, 3, 3]);
        assert_eq!(stored["model.fc.weight"].dims(), &[10, 16]);
        assert!(stored.contains_key("optim.adam.t"));

        let d = decode(&bytes, net.as_ref(), &dev)?;
        let other = cfg.build(&mut Rng::new(5), &dev).unwrap();
        other.load_tensors(&d.model)?;
        let mut opt2 = Adam::new(0.01, 0.9, 0.999, 1e-8);
        opt2.load_state(&other.vars(), &d.optim)?;
        assert_eq!(bytes, encode(other.as_ref(), Some(&opt2), None, "{}")?);
        // one more step from either gives the same bytes
        opt.step(&net.vars(), &net.forward(&x)?.sqr()?.sum_all()?.backward()?)?;
        opt2.step(&other.vars(), &other.forward(&x)?.sqr()?.sum_all()?.backward()?)?;
        assert_eq!(encode(net.as_ref(), Some(&opt), None, "{}")?, encode(other.as_ref(), Some(&opt2), None, "{}")?);
        Ok(())
    }

    /// A checkpoint written before format 2: pipe's own names and layouts, no `format`.
    fn format1(net: &dyn Classifier, opt: &dyn Optimizer) -> Vec<u8> {
        let mut tensors: Vec<(String, Tensor)> = net.named_tensors().into_iter().map(|(n, t)| (format!("model.{n}"), t)).collect();
        tensors.extend(opt.state().into_iter().map(|(n, t)| (format!("optim.{n}"), t)));
        safetensors::serialize(tensors, Some(HashMap::from([(META_KEY.to_string(), r#"{"round":1}"#.to_string())]))).unwrap()
    }

    #[test]
    fn checkpoints_without_a_format_are_read_in_the_old_layout() -> Result<()> {
        let dev = Device::Cpu;
        let cfg = NetConfig { arch: Arch::Cnn4, norm: Normalization::Batch, width: 0.125, leaky_slope: 0.2, channels: 1, height: 28, image_width: 28, num_classes: 10, wass_head: false };
        let net = cfg.build(&mut Rng::new(1), &dev).unwrap();
        let mut opt = SgdMomentum::new(0.1, 0.9);
        let x = Tensor::from_vec(Rng::new(2).uniform_vec(2 * 784, -1.0, 1.0), (2, 1, 28, 28), &dev)?;
        opt.step(&net.vars(), &net.forward(&x)?.sum_all()?.backward()?)?;
        let old = format1(net.as_ref(), &opt);

        let d = decode(&old, net.as_ref(), &dev)?;
        assert_eq!(d.meta, r#"{"round":1}"#);
        let other = cfg.load(&old, &dev).unwrap();
        let mut opt2 = SgdMomentum::new(0.1, 0.9);
        opt2.load_state(&other.vars(), &d.optim)?;
        assert_eq!(encode(net.as_ref(), Some(&opt), None, "{}")?, encode(other.as_ref(), Some(&opt2), None, "{}")?);
        Ok(())
    }

    #[test]
    fn another_format_or_another_net_is_refused_by_name() -> Result<()> {
        let dev = Device::Cpu;
        let cfg = resnet(Normalization::Batch);
        let net = cfg.build(&mut Rng::new(1), &dev).unwrap();
        let bytes = encode(net.as_ref(), None, None, "{}")?;

        let mut future = bytes.clone();
        let at = future.windows(FORMAT.len()).position(|w| w == FORMAT.as_bytes()).unwrap();
        future[at..at + FORMAT.len()].copy_from_slice(FORMAT.replace("/2", "/9").as_bytes());
        let e = decode(&future, net.as_ref(), &dev).err().unwrap().to_string();
        assert!(e.contains("checkpoint format `pipe-checkpoint/9, torch layout` is not one this pipe reads"), "{e}");

        let layer = resnet(Normalization::Layer).build(&mut Rng::new(1), &dev).unwrap();
        let e = decode(&bytes, layer.as_ref(), &dev).err().unwrap().to_string();
        assert!(e.contains("model.norm1.running_mean"), "{e}");
        let wider = NetConfig { width: 0.5, ..cfg };
        let e = decode(&bytes, wider.build(&mut Rng::new(1), &dev).unwrap().as_ref(), &dev).err().unwrap().to_string();
        assert!(e.contains("checkpoint tensor `model.") && e.contains("has shape"), "{e}");
        Ok(())
    }
}
