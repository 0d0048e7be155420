//! Image grids as PNG, for looking at samples, reconstructions and data, optionally with a
//! number (a class) written beside each row.
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
        let mut canvas = Canvas { bytes: vec![PAD_GRAY; cw * ch * c], width: cw, channels: c };
        let tile = c * self.height * self.width;
        for i in 0..self.n {
            let x0 = (i % self.cols) * (self.width + self.pad);
            let y0 = (i / self.cols) * (self.height + self.pad);
            canvas.tile(x0, y0, &images[i * tile..(i + 1) * tile], self.height, self.width);
        }
        canvas.bytes
    }
}

/// Interleaved (HWC) bytes being painted; callers size it so every write lands inside.
struct Canvas {
    bytes: Vec<u8>,
    width: usize,
    channels: usize,
}

impl Canvas {
    /// One C x H x W image in [-1, 1] with its top left corner at (x0, y0).
    fn tile(&mut self, x0: usize, y0: usize, img: &[f32], height: usize, width: usize) {
        let (c, plane) = (self.channels, height * width);
        for y in 0..height {
            for x in 0..width {
                let dst = ((y0 + y) * self.width + x0 + x) * c;
                for k in 0..c {
                    self.bytes[dst + k] = unit_to_byte(img[k * plane + y * width + x]);
                }
            }
        }
    }

    /// A `scale` x `scale` block of `value` in every channel at (x0, y0).
    fn block(&mut self, x0: usize, y0: usize, scale: usize, value: u8) {
        for y in y0..y0 + scale {
            let row = (y * self.width + x0) * self.channels;
            self.bytes[row..row + scale * self.channels].fill(value);
        }
    }
}

/// One row of a labelled grid: the number written beside it and its tiles, each a
/// C x H x W image in [-1, 1] or `None` for an empty (pad gray) cell.
pub struct LabelledRow<'a> {
    pub label: u32,
    pub tiles: Vec<Option<&'a [f32]>>,
}

/// Gray level of the digits of a labelled grid's labels.
pub const LABEL_GRAY: u8 = 255;

/// Digits 0-9, 3 pixels wide and 5 high, a row per byte (bit 2 = leftmost pixel). Drawn by
/// hand so a labelled grid needs no font file and stays a pure function of its inputs.
const DIGITS: [[u8; 5]; 10] = [
    [0b111, 0b101, 0b101, 0b101, 0b111],
    [0b010, 0b110, 0b010, 0b010, 0b111],
    [0b111, 0b001, 0b111, 0b100, 0b111],
    [0b111, 0b001, 0b111, 0b001, 0b111],
    [0b101, 0b101, 0b111, 0b001, 0b001],
    [0b111, 0b100, 0b111, 0b001, 0b111],
    [0b111, 0b100, 0b111, 0b101, 0b111],
    [0b111, 0b001, 0b001, 0b001, 0b001],
    [0b111, 0b101, 0b111, 0b101, 0b111],
    [0b111, 0b101, 0b111, 0b001, 0b111],
];
const GLYPH_W: usize = 3;
const GLYPH_H: usize = 5;

/// Encode rows of tiles as a grid PNG with each row's label (e.g. its class) written in a
/// column to its left.
///
/// Tiles are placed as [`encode_grid_png`] places them (same value mapping, `pad` gray
/// pixels between tiles, rows as wide as the longest one, missing cells gray); the label
/// column comes first, then `pad` pixels. Digits are a 3x5 bitmap font, each font pixel a
/// square of H/10 pixels (at least 1; 2 for 28x28 tiles), right-aligned and centred on the
/// row, in [`LABEL_GRAY`] on pad gray; a row is at least one glyph high.
pub fn encode_labelled_grid_png(
    rows: &[LabelledRow],
    channels: usize,
    height: usize,
    width: usize,
    pad: usize,
) -> Result<Vec<u8>> {
    ensure!(channels == 1 || channels == 3, "grid needs 1 or 3 channels, found {channels}");
    ensure!(!rows.is_empty(), "labelled grid needs at least one row");
    ensure!(height > 0 && width > 0, "grid needs non-empty images, found {height}x{width}");
    let columns = rows.iter().map(|r| r.tiles.len()).max().unwrap_or(0).max(1);
    let tile = channels.checked_mul(height).and_then(|v| v.checked_mul(width)).context("grid tiles too large")?;
    for (i, r) in rows.iter().enumerate() {
        for t in r.tiles.iter().flatten() {
            ensure!(t.len() == tile, "row {i} has a tile of {} values, expected C*H*W = {channels}*{height}*{width}", t.len());
        }
    }
    let scale = (height / (2 * GLYPH_H)).max(1);
    let row_h = height.max(GLYPH_H * scale);
    let digits = rows.iter().map(|r| r.label.to_string().len()).max().unwrap_or(1);
    // one font pixel of margin on each side of the text
    let label_w = (digits * (GLYPH_W + 1) + 1).checked_mul(scale).context("grid tiles too large")?;
    let tiles_w = span(columns, width, pad)? as usize;
    let canvas_w = label_w.checked_add(pad).and_then(|v| v.checked_add(tiles_w));
    let (canvas_w, canvas_h) = match (canvas_w.and_then(|w| u32::try_from(w).ok()), span(rows.len(), row_h, pad)) {
        (Some(w), Ok(h)) => (w, h),
        _ => bail!("labelled grid of {} rows of {columns} tiles of {height}x{width} px is too large for PNG", rows.len()),
    };
    let (cw, ch) = (canvas_w as usize, canvas_h as usize);
    let mut canvas = Canvas { bytes: vec![PAD_GRAY; cw * ch * channels], width: cw, channels };
    for (r, row) in rows.iter().enumerate() {
        let y0 = r * (row_h + pad);
        for (j, t) in row.tiles.iter().enumerate() {
            if let Some(t) = t {
                canvas.tile(label_w + pad + j * (width + pad), y0, t, height, width);
            }
        }
        let text = row.label.to_string();
        let text_y = y0 + (row_h - GLYPH_H * scale) / 2;
        let text_x = label_w - scale - (text.len() * (GLYPH_W + 1) - 1) * scale;
        for (i, d) in text.bytes().enumerate() {
            let glyph = &DIGITS[(d - b'0') as usize];
            for (gy, &bits) in glyph.iter().enumerate() {
                for gx in (0..GLYPH_W).filter(|gx| (bits >> (GLYPH_W - 1 - gx)) & 1 == 1) {
                    canvas.block(text_x + (i * (GLYPH_W + 1) + gx) * scale, text_y + gy * scale, scale, LABEL_GRAY);
                }
            }
        }
    }
    encode_png(&canvas.bytes, canvas_w, canvas_h, channels)
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

    /// The pixels of `px` (one channel, `w` wide) equal to `value` inside the box, cropped to
    /// their bounding box, as rows of '#' and '.'.
    fn drawn(px: &[u8], w: usize, (x0, y0, x1, y1): (usize, usize, usize, usize), value: u8) -> Vec<String> {
        let hit = |x: usize, y: usize| px[y * w + x] == value;
        let xs: Vec<usize> = (x0..x1).filter(|&x| (y0..y1).any(|y| hit(x, y))).collect();
        let ys: Vec<usize> = (y0..y1).filter(|&y| (x0..x1).any(|x| hit(x, y))).collect();
        let (Some(&l), Some(&r), Some(&t), Some(&b)) = (xs.first(), xs.last(), ys.first(), ys.last()) else { return vec![] };
        (t..=b).map(|y| (l..=r).map(|x| if hit(x, y) { '#' } else { '.' }).collect()).collect()
    }

    #[test]
    fn labelled_grid_writes_each_rows_number_beside_unchanged_tiles() {
        // 10x10 tiles: one font pixel per pixel; rows labelled 7 and 10, the second with an
        // empty cell
        let (h, w, pad) = (10, 10, 2);
        let images: Vec<f32> = (0..3 * h * w).map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0).collect();
        let tile = |i: usize| Some(&images[i * h * w..(i + 1) * h * w]);
        let rows = [LabelledRow { label: 7, tiles: vec![tile(0), tile(1)] }, LabelledRow { label: 10, tiles: vec![tile(2), None] }];
        let (gw, gh, color, px) = decode(&encode_labelled_grid_png(&rows, 1, h, w, pad).unwrap());
        assert_eq!(color, png::ColorType::Grayscale);

        // the tile area is the plain grid of the same tiles, the empty cell pad gray
        let mut plain_images = images.clone();
        plain_images.extend(std::iter::repeat_n(0.0, h * w));
        let (pw, ph, _, plain) = decode(&encode_grid_png(&plain_images, 4, 1, h, w, 2, pad).unwrap());
        let left = (gw - pw) as usize;
        assert_eq!(gh, ph);
        for y in 0..ph as usize {
            for x in 0..pw as usize {
                let want = if x >= w + pad && y >= h + pad { PAD_GRAY } else { plain[y * pw as usize + x] };
                assert_eq!(px[y * gw as usize + left + x], want, "tile area at ({x}, {y})");
            }
        }

        // the label column holds the digits, one row band each, and nothing else
        let gw = gw as usize;
        let label_w = left - pad;
        assert!(px.chunks(gw).all(|row| row[..label_w].iter().all(|&v| v == PAD_GRAY || v == LABEL_GRAY)));
        assert!(px.chunks(gw).all(|row| row[label_w..left].iter().all(|&v| v == PAD_GRAY)), "pad between labels and tiles");
        let seven = ["###", "..#", "..#", "..#", "..#"];
        let ten = [".#..###", "##..#.#", ".#..#.#", ".#..#.#", "###.###"];
        assert_eq!(drawn(&px, gw, (0, 0, label_w, h), LABEL_GRAY), seven);
        assert_eq!(drawn(&px, gw, (0, h + pad, label_w, 2 * h + pad), LABEL_GRAY), ten);
    }

    #[test]
    fn labelled_grid_scales_digits_with_the_tiles_and_colours_every_channel() {
        // 28x28 RGB tiles: each font pixel is 2x2, and white in all three channels
        let images = vec![-1.0f32; 3 * 28 * 28];
        let rows = [LabelledRow { label: 1, tiles: vec![Some(&images)] }];
        let (gw, _, color, px) = decode(&encode_labelled_grid_png(&rows, 3, 28, 28, 2).unwrap());
        assert_eq!(color, png::ColorType::Rgb);
        let gw = gw as usize;
        let label_w = gw - 28 - 2;
        let red: Vec<u8> = px.chunks(3).map(|p| p[0]).collect();
        assert!(px.chunks(3).filter(|p| p[0] == LABEL_GRAY).all(|p| p == [LABEL_GRAY; 3]), "digits in every channel");
        let one = ["..##..", "..##..", "####..", "####..", "..##..", "..##..", "..##..", "..##..", "######", "######"];
        assert_eq!(drawn(&red, gw, (0, 0, label_w, 28), LABEL_GRAY), one);
    }

    #[test]
    fn labelled_grid_refuses_bad_tiles() {
        let img = vec![0.0f32; 4];
        assert!(encode_labelled_grid_png(&[], 1, 2, 2, 1).is_err());
        assert!(encode_labelled_grid_png(&[LabelledRow { label: 0, tiles: vec![Some(&img[..3])] }], 1, 2, 2, 1).is_err());
        assert!(encode_labelled_grid_png(&[LabelledRow { label: 0, tiles: vec![Some(&img)] }], 2, 2, 2, 1).is_err());
        assert!(encode_labelled_grid_png(&[LabelledRow { label: u32::MAX, tiles: vec![None] }], 1, 2, 2, 1).is_ok());
    }
}
