//! Image sets and pseudo-negatives as safetensors bytes, the form in which stages hand
//! them to each other. Images stay bytes (as loaded) until a stage needs floats.

use crate::data::ImageSet;
use candle_core::{Device, Result, Tensor};
use std::collections::HashMap;

fn serialize(tensors: Vec<(&str, Tensor)>) -> Result<Vec<u8>> {
    safetensors::serialize(tensors, None).map_err(|e| candle_core::Error::Msg(format!("safetensors: {e}")))
}

fn get<'a>(map: &'a HashMap<String, Tensor>, name: &str) -> Result<&'a Tensor> {
    map.get(name).ok_or_else(|| candle_core::Error::Msg(format!("tensor file has no `{name}`")))
}

/// `images` u8 N x C x H x W and `labels` u32 N.
pub fn encode_image_set(set: &ImageSet) -> Result<Vec<u8>> {
    let dev = Device::Cpu;
    let images = Tensor::from_vec(set.pixels.clone(), (set.len(), set.channels, set.height, set.width), &dev)?;
    let labels = Tensor::from_vec(set.labels.clone(), set.len(), &dev)?;
    serialize(vec![("images", images), ("labels", labels)])
}

pub fn decode_image_set(bytes: &[u8]) -> Result<ImageSet> {
    let map = candle_core::safetensors::load_buffer(bytes, &Device::Cpu)?;
    let images = get(&map, "images")?;
    let (_, channels, height, width) = images.dims4()?;
    Ok(ImageSet {
        pixels: images.flatten_all()?.to_vec1::<u8>()?,
        labels: get(&map, "labels")?.to_vec1::<u32>()?,
        channels,
        height,
        width,
    })
}

/// Pseudo-negatives: `images` f32 M x C x H x W in [-1, 1] (kept at full precision, unlike
/// reference code that saves them as 8-bit PNG), `classes` u32 M.
pub struct PseudoNegatives {
    pub images: Vec<f32>,
    pub classes: Vec<u32>,
    pub shape: (usize, usize, usize),
}

pub fn encode_pseudo_negatives(p: &PseudoNegatives) -> Result<Vec<u8>> {
    let dev = Device::Cpu;
    let (c, h, w) = p.shape;
    let images = Tensor::from_vec(p.images.clone(), (p.classes.len(), c, h, w), &dev)?;
    let classes = Tensor::from_vec(p.classes.clone(), p.classes.len(), &dev)?;
    serialize(vec![("images", images), ("classes", classes)])
}

pub fn decode_pseudo_negatives(bytes: &[u8]) -> Result<PseudoNegatives> {
    let map = candle_core::safetensors::load_buffer(bytes, &Device::Cpu)?;
    let images = get(&map, "images")?;
    let (_, c, h, w) = images.dims4()?;
    Ok(PseudoNegatives { images: images.flatten_all()?.to_vec1::<f32>()?, classes: get(&map, "classes")?.to_vec1::<u32>()?, shape: (c, h, w) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrips() -> Result<()> {
        let set = ImageSet { pixels: (0..24).map(|v| v as u8).collect(), labels: vec![3, 7], channels: 1, height: 3, width: 4 };
        assert_eq!(decode_image_set(&encode_image_set(&set)?)?, set);
        let p = PseudoNegatives { images: vec![0.5; 24], classes: vec![1, 9], shape: (1, 3, 4) };
        let q = decode_pseudo_negatives(&encode_pseudo_negatives(&p)?)?;
        assert_eq!((q.images, q.classes, q.shape), (p.images, p.classes, p.shape));
        Ok(())
    }
}
