//! Image grids as PNG, for looking at samples, reconstructions and data.
//!
//! The bytes are a pure function of the inputs (fixed compression level and filter, no
//! timestamps or text chunks), so a grid can be stored as an artifact and hashed like any
//! other output.
//!
//! Its users are the engine's stage kinds (synthesis and attack figures) and this crate's
//! loader tests (which write image files with it). It stays in the library because it
//! reads images in the library's layout (N x C x H x W in [-1, 1]) and owns the PNG
//! encoder: the engine hands over tensors' values and gets bytes back.

use std::path::Path;

use anyhow::{bail, ensure, Context, Result};

/// Gray level of the padding between tiles and of empty cells in the last row.
pub const PAD_GRAY: u8 = 128;

/// Encode `n` images in [-1, 1] (N x C x H x W, row-major) as a grid PNG and write it to
/// `path`. See [`encode_grid_png`] for the layout.
#[allow(clippy::too_many_arguments)]
pub fn write_grid_png(
    path: &Path,
    images: &[f32],
    n: usize,
    channels: usize,
    height: usize,
    width: usize,
    columns: usize,
    pad: usize,
) -> Result<()> {
    let bytes = encode_grid_png(images, n, channels, height, width, columns, pad)
        .with_context(|| format!("encoding grid for {}", path.display()))?;
    std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))
}

/// Encode `n` images in [-1, 1] (N x C x H x W, row-major) as a grid PNG.
///
/// Tiles go left to right, top to bottom, in `min(columns, n)` columns, with `pad` pixels of
/// gray (128) between tiles (not around the border); cells left over in the last row are
/// gray too. Values map by `(v + 1) * 127.5` rounded, so -1 -> 0 and 1 -> 255; values
/// outside [-1, 1] are clipped and NaN becomes 0. C=1 gives a greyscale PNG, C=3 an RGB one.
pub fn encode_grid_png(
    images: &[f32],
    n: usize,
    channels: usize,
    height: usize,
    width: usize,
    columns: usize,
    pad: usize,
) -> Result<Vec<u8>> {
    let layout = Layout::new(images.len(), n, channels, height, width, columns, pad)?;
    let canvas = layout.paint(images);
    encode_png(&canvas, layout.canvas_w, layout.canvas_h, channels)
}

/// Map one value in [-1, 1] to a byte (clipped; NaN -> 0).
pub fn unit_to_byte(v: f32) -> u8 {
    // `as u8` saturates and maps NaN to 0, so no input can panic here.
    ((v.clamp(-1.0, 1.0) + 1.0) * 127.5).round() as u8
}

/// Where each tile goes; built only from checked sizes so painting cannot go out of bounds.
struct Layout {
    n: usize,
    channels: usize,
    height: usize,
    width: usize,
    cols: usize,
    pad: usize,
    canvas_w: u32,
    canvas_h: u32,
}

impl Layout {
    fn new(
        len: usize,
        n: usize,
        channels: usize,
        height: usize,
        width: usize,
        columns: usize,
        pad: usize,
    ) -> Result<Layout> {
        ensure!(channels == 1 || channels == 3, "grid needs 1 or 3 channels, found {channels}");
        ensure!(n > 0, "grid needs at least one image, found n = 0");
        ensure!(height > 0 && width > 0, "grid needs non-empty images, found {height}x{width}");
        ensure!(columns > 0, "grid needs at least one column, found 0");
        let expected = n
            .checked_mul(channels * height)
            .and_then(|v| v.checked_mul(width));
        ensure!(
            expected == Some(len),
            "grid input has {len} values, expected n*C*H*W = {n}*{channels}*{height}*{width}"
        );
        let cols = columns.min(n);
        let rows = n.div_ceil(cols);
        let canvas_w = span(cols, width, pad)?;
        let canvas_h = span(rows, height, pad)?;
        Ok(Layout { n, channels, height, width, cols, pad, canvas_w, canvas_h })
    }

    /// The canvas as interleaved bytes (HWC), pad gray wherever no tile lands.
    fn paint(&self, images: &[f32]) -> Vec<u8> {
        let (cw, ch, c) = (self.canvas_w as usize, self.canvas_h as usize, self.channels);
        let mut canvas = vec![PAD_GRAY; cw * ch * c];
        let plane = self.height * self.width;
        for i in 0..self.n {
            let x0 = (i % self.cols) * (self.width + self.pad);
            let y0 = (i / self.cols) * (self.height + self.pad);
            let img = &images[i * c * plane..(i + 1) * c * plane];
            for y in 0..self.height {
                for x in 0..self.width {
                    let dst = ((y0 + y) * cw + x0 + x) * c;
                    for k in 0..c {
                        canvas[dst + k] = unit_to_byte(img[k * plane + y * self.width + x]);
                    }
                }
            }
        }
        canvas
    }
}

/// Pixels spanned by `count` tiles of `size` with `pad` between them, as a PNG dimension.
fn span(count: usize, size: usize, pad: usize) -> Result<u32> {
    let total = count
        .checked_mul(size)
        .and_then(|v| v.checked_add((count - 1).checked_mul(pad)?));
    match total.and_then(|t| u32::try_from(t).ok()) {
        Some(t) => Ok(t),
        None => bail!("grid of {count} tiles of {size} px with pad {pad} is too large for PNG"),
    }
}

/// 8-bit PNG with fixed settings, so equal canvases give equal bytes.
fn encode_png(canvas: &[u8], w: u32, h: u32, channels: usize) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut out, w, h);
        enc.set_color(if channels == 3 { png::ColorType::Rgb } else { png::ColorType::Grayscale });
        enc.set_depth(png::BitDepth::Eight);
        enc.set_compression(png::Compression::Balanced);
        let mut writer = enc.write_header().context("writing PNG header")?;
        writer.write_image_data(canvas).context("writing PNG data")?;
        writer.finish().context("finishing PNG")?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decode a PNG into (width, height, color type, bytes).
    fn decode(bytes: &[u8]) -> (u32, u32, png::ColorType, Vec<u8>) {
        let mut reader = png::Decoder::new(std::io::Cursor::new(bytes)).read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut buf).unwrap();
        buf.truncate(info.buffer_size());
        (info.width, info.height, info.color_type, buf)
    }

    #[test]
    fn grey_grid_has_expected_size_and_pixels() {
        // 5 images of 2x3 in 3 columns with pad 1: 2 rows -> 3*3+2 = 11 wide, 2*2+1 = 5 high
        let (n, h, w) = (5, 2, 3);
        let mut images = vec![-1.0f32; n * h * w];
        images[h * w] = 1.0; // image 1, pixel (0,0)
        images[2 * h * w + 5] = 7.0; // image 2, pixel (1,2): clipped to 1
        images[3 * h * w] = -3.0; // image 3, pixel (0,0): clipped to -1
        let bytes = encode_grid_png(&images, n, 1, h, w, 3, 1).unwrap();
        let (gw, gh, color, px) = decode(&bytes);
        assert_eq!((gw, gh, color), (11, 5, png::ColorType::Grayscale));
        let at = |x: usize, y: usize| px[y * 11 + x];
        assert_eq!(at(0, 0), 0); // -1 -> 0
        assert_eq!(at(4, 0), 255); // image 1 starts at x = 3 + 1
        assert_eq!(at(8 + 2, 1), 255); // image 2 at x = 8, clipped high
        assert_eq!(at(0, 3), 0); // image 3 at y = 3, clipped low
        assert_eq!(at(3, 0), PAD_GRAY); // pad column
        assert_eq!(at(0, 2), PAD_GRAY); // pad row
        assert_eq!(at(10, 4), PAD_GRAY); // empty sixth cell
    }

    #[test]
    fn rgb_grid_keeps_channels_apart() {
        // 2 images of 1x1, RGB: first red, second blue, one column, pad 2
        let images = [1.0, -1.0, -1.0, -1.0, -1.0, 1.0];
        let bytes = encode_grid_png(&images, 2, 3, 1, 1, 1, 2).unwrap();
        let (gw, gh, color, px) = decode(&bytes);
        assert_eq!((gw, gh, color), (1, 4, png::ColorType::Rgb));
        assert_eq!(&px[0..3], &[255, 0, 0]);
        assert_eq!(&px[3..6], &[PAD_GRAY; 3]);
        assert_eq!(&px[9..12], &[0, 0, 255]);
    }

    #[test]
    fn columns_beyond_n_do_not_widen_the_grid() {
        let images = vec![0.0f32; 2 * 4];
        let (gw, gh, _, px) = decode(&encode_grid_png(&images, 2, 1, 2, 2, 8, 1).unwrap());
        assert_eq!((gw, gh), (5, 2));
        assert_eq!(px[0], 128); // 0 -> 127.5 rounds to 128
    }

    #[test]
    fn value_mapping() {
        assert_eq!(unit_to_byte(-1.0), 0);
        assert_eq!(unit_to_byte(1.0), 255);
        assert_eq!(unit_to_byte(f32::NAN), 0);
        assert_eq!(unit_to_byte(f32::INFINITY), 255);
        for b in 0..=255u8 {
            assert_eq!(unit_to_byte(crate::data::byte_to_unit(b)), b);
        }
    }

    #[test]
    fn same_input_same_bytes_and_file() {
        let images: Vec<f32> = (0..4 * 28 * 28).map(|i| ((i % 97) as f32 / 48.0) - 1.0).collect();
        let a = encode_grid_png(&images, 4, 1, 28, 28, 2, 2).unwrap();
        let b = encode_grid_png(&images, 4, 1, 28, 28, 2, 2).unwrap();
        assert_eq!(a, b);
        let path = std::env::temp_dir().join(format!("stages-grid-test-{}.png", std::process::id()));
        write_grid_png(&path, &images, 4, 1, 28, 28, 2, 2).unwrap();
        let written = std::fs::read(&path).unwrap();
        let _ = std::fs::remove_file(&path);
        assert_eq!(written, a);
    }

    #[test]
    fn bad_arguments_are_errors() {
        let img = vec![0.0f32; 4];
        assert!(encode_grid_png(&img, 1, 2, 2, 1, 1, 0).is_err()); // 2 channels
        assert!(encode_grid_png(&img, 0, 1, 2, 2, 1, 0).is_err()); // no images
        assert!(encode_grid_png(&img, 1, 1, 2, 2, 0, 0).is_err()); // no columns
        assert!(encode_grid_png(&img, 2, 1, 2, 2, 1, 0).is_err()); // too few values
        assert!(encode_grid_png(&img, 1, 1, 2, 2, 1, usize::MAX).is_ok()); // pad unused
        let wide = vec![0.0f32; 2];
        assert!(encode_grid_png(&wide, 2, 1, 1, 1, 2, usize::MAX).is_err());
        let err = write_grid_png(Path::new("/nonexistent-dir/x.png"), &img, 1, 1, 2, 2, 1, 0)
            .unwrap_err();
        assert!(format!("{err:#}").contains("/nonexistent-dir/x.png"));
    }
}
