//! Checkpoints as safetensors bytes: model weights, optimizer state, RNG state and a small
//! JSON header (epoch, round, ...). Bytes are deterministic for the same contents, which the
//! content-addressed store relies on: safetensors orders tensors itself, and the metadata
//! is kept to one key because safetensors writes its metadata map in hash order.

use crate::nn::Classifier;
use crate::optim::Optimizer;
use crate::rng::Rng;
use candle_core::{Device, Result, Tensor};
use std::collections::HashMap;

const META_KEY: &str = "pipe";
const MODEL: &str = "model.";
const OPTIM: &str = "optim.";
const RNG: &str = "rng.state";

/// Encodes a training state. `meta` is a JSON object text stored in the header.
pub fn encode(model: &dyn Classifier, opt: Option<&dyn Optimizer>, rng: Option<&Rng>, meta: &str) -> Result<Vec<u8>> {
    let mut tensors: Vec<(String, Tensor)> = model.named_tensors().into_iter().map(|(n, t)| (format!("{MODEL}{n}"), t)).collect();
    if let Some(opt) = opt {
        tensors.extend(opt.state().into_iter().map(|(n, t)| (format!("{OPTIM}{n}"), t)));
    }
    if let Some(rng) = rng {
        let words: Vec<i64> = rng.state().iter().map(|&w| w as i64).collect();
        tensors.push((RNG.to_string(), Tensor::new(words.as_slice(), &Device::Cpu)?));
    }
    let meta = HashMap::from([(META_KEY.to_string(), meta.to_string())]);
    safetensors::serialize(tensors, Some(meta)).map_err(|e| candle_core::Error::Msg(format!("safetensors: {e}")))
}

/// A decoded checkpoint, split by owner.
pub struct Decoded {
    pub model: HashMap<String, Tensor>,
    pub optim: HashMap<String, Tensor>,
    pub rng: Option<Rng>,
    /// The JSON header text, `{}` when absent.
    pub meta: String,
}

pub fn decode(bytes: &[u8], device: &Device) -> Result<Decoded> {
    let (_, header) = safetensors::SafeTensors::read_metadata(bytes).map_err(|e| candle_core::Error::Msg(format!("not a safetensors checkpoint: {e}")))?;
    let meta = header.metadata().as_ref().and_then(|m| m.get(META_KEY).cloned()).unwrap_or_else(|| "{}".into());
    let all = candle_core::safetensors::load_buffer(bytes, device)?;
    let mut d = Decoded { model: HashMap::new(), optim: HashMap::new(), rng: None, meta };
    for (name, t) in all {
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
            d.rng = Some(Rng::from_state(s).ok_or_else(|| candle_core::Error::Msg("rng.state is all zero".into()))?);
        }
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::{Cnn4, Cnn4Config};
    use crate::optim::SgdMomentum;

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
        assert_eq!(bytes, encode(&net, Some(&opt), Some(&rng), r#"{"epoch":3}"#)?);

        let d = decode(&bytes, &dev)?;
        assert_eq!(d.meta, r#"{"epoch":3}"#);
        assert_eq!(d.rng, Some(rng.clone()));
        let other = Cnn4::new(cfg, &mut Rng::new(4), &dev)?;
        other.load_tensors(&d.model)?;
        let mut opt2 = SgdMomentum::new(0.1, 0.9);
        opt2.load_state(&other.vars(), &d.optim)?;
        assert_eq!(bytes, encode(&other, Some(&opt2), Some(&rng), r#"{"epoch":3}"#)?);
        assert!(decode(b"garbage", &dev).is_err());
        Ok(())
    }
}
