//! PyTorch's names and layouts of a net's tensors, which is what checkpoints store: a
//! PyTorch user loads them with `load_state_dict(strict=True)` into the modules of
//! docs/checkpoints.md. The fast kernels keep their own layouts (NHWC activations, im2col
//! weight matrices); each net lists how its tensors map, and the checkpoint converts at its
//! boundary, so neither side constrains the other.

use candle_core::{Result, Tensor};

/// How a tensor's PyTorch layout relates to pipe's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// The same: vectors (biases, norm weights and running statistics).
    Same,
    /// A k x k convolution: pipe's im2col matrix `[k*k*c_in, c_out]` (rows in (kh, kw,
    /// c_in) order) is PyTorch's OIHW `[c_out, c_in, k, k]`.
    Conv { k: usize },
    /// A linear layer over a feature map of `channels` channels: pipe's `[h*w*c, out]` over
    /// NHWC-flattened features is PyTorch's `(out, c*h*w)` over `torch.flatten(x, 1)` of
    /// the NCHW map. After global pooling (h = w = 1) it is a transpose.
    Linear { channels: usize },
}

/// One tensor of a net: pipe's name (`Classifier::named_tensors`), the `state_dict` name
/// of the PyTorch module, and how the layouts relate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TorchName {
    pub pipe: String,
    pub torch: String,
    pub layout: Layout,
}

impl TorchName {
    pub fn new(pipe: impl Into<String>, torch: impl Into<String>, layout: Layout) -> Self {
        TorchName { pipe: pipe.into(), torch: torch.into(), layout }
    }
}

impl Layout {
    /// PyTorch's dims of a tensor whose dims in pipe are `dims`.
    pub fn torch_dims(self, dims: &[usize]) -> Result<Vec<usize>> {
        match (self, dims) {
            (Layout::Same, _) => Ok(dims.to_vec()),
            (Layout::Conv { k }, &[rows, o]) if rows % (k * k) == 0 => Ok(vec![o, rows / (k * k), k, k]),
            (Layout::Linear { channels }, &[rows, out]) if rows % channels == 0 => Ok(vec![out, rows]),
            _ => candle_core::bail!("{self:?} does not fit a tensor of pipe's dims {dims:?}"),
        }
    }

    /// Pipe's tensor `t` in PyTorch's layout (contiguous, as safetensors stores it).
    pub fn to_torch(self, t: &Tensor) -> Result<Tensor> {
        let dims = self.torch_dims(t.dims())?;
        match self {
            Layout::Same => Ok(t.clone()),
            Layout::Conv { k } => t.reshape((k, k, dims[1], dims[0]))?.permute((3, 2, 0, 1))?.contiguous(),
            Layout::Linear { channels } => {
                let (rows, out) = t.dims2()?;
                t.reshape((rows / channels, channels, out))?.permute((2, 1, 0))?.contiguous()?.reshape((out, rows))
            }
        }
    }

    /// The inverse of [`Layout::to_torch`]: a tensor of PyTorch's layout in pipe's. The
    /// caller checks its dims against [`Layout::torch_dims`] first.
    pub fn from_torch(self, t: &Tensor) -> Result<Tensor> {
        match self {
            Layout::Same => Ok(t.clone()),
            Layout::Conv { .. } => {
                let (o, c, kh, kw) = t.dims4()?;
                t.permute((2, 3, 1, 0))?.contiguous()?.reshape((kh * kw * c, o))
            }
            Layout::Linear { channels } => {
                let (out, cols) = t.dims2()?;
                if cols % channels != 0 {
                    candle_core::bail!("a linear weight of {cols} inputs over {channels} channels");
                }
                t.reshape((out, channels, cols / channels))?.permute((2, 1, 0))?.contiguous()?.reshape((cols, out))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn iota(dims: &[usize]) -> Tensor {
        let n: usize = dims.iter().product();
        Tensor::from_vec((0..n).map(|v| v as f32).collect::<Vec<_>>(), dims, &Device::Cpu).unwrap()
    }

    /// Element by element against the definitions above, and back.
    #[test]
    fn layouts_place_each_element_where_pytorch_expects_it_and_invert() -> Result<()> {
        let (k, c, o) = (3, 2, 4);
        let w = iota(&[k * k * c, o]);
        let t = Layout::Conv { k }.to_torch(&w)?;
        assert_eq!(t.dims(), &[o, c, k, k]);
        let (wv, tv) = (w.to_vec2::<f32>()?, t.flatten_all()?.to_vec1::<f32>()?);
        for (oi, ci, kh, kw) in (0..o).flat_map(|a| (0..c).flat_map(move |b| (0..k).flat_map(move |h| (0..k).map(move |w| (a, b, h, w))))) {
            assert_eq!(tv[((oi * c + ci) * k + kh) * k + kw], wv[(kh * k + kw) * c + ci][oi]);
        }
        assert_eq!(Layout::Conv { k }.from_torch(&t)?.to_vec2::<f32>()?, wv);

        let (hw, out) = (3, 5);
        let w = iota(&[hw * c, out]);
        let t = Layout::Linear { channels: c }.to_torch(&w)?;
        let (wv, tv) = (w.to_vec2::<f32>()?, t.to_vec2::<f32>()?);
        for (j, ci, p) in (0..out).flat_map(|j| (0..c).flat_map(move |ci| (0..hw).map(move |p| (j, ci, p)))) {
            // NCHW flatten: ci * hw + p; NHWC flatten: p * c + ci
            assert_eq!(tv[j][ci * hw + p], wv[p * c + ci][j]);
        }
        assert_eq!(Layout::Linear { channels: c }.from_torch(&t)?.to_vec2::<f32>()?, wv);
        assert!(Layout::Conv { k: 5 }.torch_dims(&[7, 2]).is_err());
        Ok(())
    }
}
