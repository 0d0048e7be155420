//! Image-folder data sets: one sub-folder per class, one image file per example.
//!
//! ```text
//! dir/
//!   cat/  001.png 002.jpg ...
//!   dog/  a.png b.png ...
//! ```
//!
//! The class index is the position of the sub-folder's name in the sorted list of names,
//! and files are taken in name order within each class, so the same folder always gives
//! the same set in the same order whatever order the file system lists it in. Hidden
//! entries (names starting with `.`, such as `.DS_Store`) are skipped; plain files directly
//! in `dir` (a README, a licence) are ignored, since only folders are classes.
//!
//! Images are PNG (via `png`: grey, grey+alpha, RGB, RGBA, palette and low-bit grey are
//! expanded to 8 bits; 16-bit samples are rejected) or baseline/progressive JPEG (via
//! `jpeg-decoder`: grey or YCbCr). The format is recognised by the file's first bytes, not
//! its name. Every image is converted to the channel count the caller asks for (see
//! [`load_image`]) and all must share one size: a data set with mixed sizes needs a resize
//! step that should be explicit, not hidden in the loader.

use std::io::Cursor;
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use super::{io_error, DataError, ImageSet};

/// The eight bytes every PNG file starts with.
const PNG_SIGNATURE: [u8; 8] = [0x89, b'P', b'N', b'G', 0x0d, 0x0a, 0x1a, 0x0a];
/// Start-of-image marker and the first byte of the next marker: every JPEG starts so.
const JPEG_MAGIC: [u8; 3] = [0xff, 0xd8, 0xff];

/// Rec. 601 luma weights, the usual grey of an RGB image.
const LUMA: [f64; 3] = [0.299, 0.587, 0.114];

/// An image-folder data set: the images with their class labels, the class names (index =
/// label) and the file each image came from (index = image).
#[derive(Clone, Debug, PartialEq)]
pub struct FolderSet {
    pub set: ImageSet,
    pub classes: Vec<String>,
    pub files: Vec<PathBuf>,
}

/// Load every image under `dir` as a `channels`-channel [`ImageSet`] (1 or 3).
///
/// Errors (each names the file or folder at fault): `dir` missing; no class folders; a
/// class folder with no images; a file that is not a PNG or JPEG (or is damaged); an image
/// whose size differs from the first image's (both sizes and the first file are named).
pub fn load_folder(dir: &Path, channels: usize) -> Result<FolderSet, DataError> {
    check_channels(dir, channels)?;
    let classes = class_dirs(dir)?;
    let mut files = Vec::new();
    let mut labels = Vec::new();
    for (label, (_, class_dir)) in classes.iter().enumerate() {
        let class_files = image_files(class_dir)?;
        labels.extend(std::iter::repeat_n(label as u32, class_files.len()));
        files.extend(class_files);
    }
    // Decoding is the slow part and each file is independent; the results are then
    // checked in file order, so the error reported is always the first bad file.
    let decoded: Vec<_> = files.par_iter().map(|f| load_image(f, channels)).collect();
    let set = assemble(&files, decoded, labels, channels)?;
    Ok(FolderSet {
        set,
        classes: classes.into_iter().map(|(name, _)| name).collect(),
        files,
    })
}

/// Load one PNG or JPEG as `channels` planes (1 or 3): `(pixels C x H x W, height, width)`.
///
/// Conversion: alpha is dropped (not composited: the colour values are kept as stored);
/// grey to RGB copies the grey into all three planes; RGB to grey is the Rec. 601 luma
/// `0.299 R + 0.587 G + 0.114 B`, rounded to the nearest byte.
pub fn load_image(path: &Path, channels: usize) -> Result<(Vec<u8>, usize, usize), DataError> {
    let bytes = std::fs::read(path).map_err(|e| io_error(path, e))?;
    decode_image(path, bytes, channels)
}

/// [`load_image`] on encoded bytes already in memory (e.g. a Parquet image column);
/// `source` names where they came from in errors.
pub fn decode_image(source: &Path, bytes: Vec<u8>, channels: usize) -> Result<(Vec<u8>, usize, usize), DataError> {
    check_channels(source, channels)?;
    let img = decode(source, bytes)?;
    let pixels = to_planes(&img, channels);
    Ok((pixels, img.height, img.width))
}

/// A decoded image, samples interleaved (H x W x C) as the decoders give them.
struct Decoded {
    samples: Vec<u8>,
    /// 1 grey, 2 grey+alpha, 3 RGB, 4 RGBA.
    channels: usize,
    height: usize,
    width: usize,
}

/// Only 1 and 3 channels have a meaning here (grey, RGB).
fn check_channels(path: &Path, channels: usize) -> Result<(), DataError> {
    if channels == 1 || channels == 3 {
        return Ok(());
    }
    Err(DataError::Format {
        path: path.to_path_buf(),
        what: format!(
            "expected 1 (grey) or 3 (RGB) output channels, found a request for {channels}"
        ),
    })
}

/// The class folders of `dir` as (name, path), sorted by name.
fn class_dirs(dir: &Path) -> Result<Vec<(String, PathBuf)>, DataError> {
    if !dir.is_dir() {
        return Err(DataError::NotFound {
            path: dir.to_path_buf(),
            what: "image-folder directory".to_string(),
        });
    }
    let mut classes = Vec::new();
    for path in visible_entries(dir)? {
        if !path.is_dir() {
            continue;
        }
        let name = path.file_name().unwrap_or_default();
        let Some(name) = name.to_str() else {
            return Err(DataError::Format {
                path: path.clone(),
                what: format!("expected a UTF-8 class folder name, found {name:?}"),
            });
        };
        classes.push((name.to_string(), path.clone()));
    }
    if classes.is_empty() {
        return Err(DataError::Format {
            path: dir.to_path_buf(),
            what: "expected one sub-folder per class, found no class folders".to_string(),
        });
    }
    Ok(classes)
}

/// The first image of the first class (in the order [`load_folder`] reads them) and the
/// number of classes: enough to size a net without decoding the whole folder.
pub fn first_image(dir: &Path) -> Result<(PathBuf, usize), DataError> {
    let classes = class_dirs(dir)?;
    let first = image_files(&classes[0].1)?.remove(0);
    Ok((first, classes.len()))
}

/// The files of one class folder, sorted by name; none, or a sub-folder, is an error.
fn image_files(class_dir: &Path) -> Result<Vec<PathBuf>, DataError> {
    let files = visible_entries(class_dir)?;
    if let Some(sub) = files.iter().find(|p| p.is_dir()) {
        return Err(DataError::Format {
            path: sub.clone(),
            what: "expected image files in a class folder, found a sub-folder".to_string(),
        });
    }
    if files.is_empty() {
        return Err(DataError::Format {
            path: class_dir.to_path_buf(),
            what: "expected at least one image in this class folder, found none".to_string(),
        });
    }
    Ok(files)
}

/// Entries of `dir` whose names do not start with `.`, sorted by name.
fn visible_entries(dir: &Path) -> Result<Vec<PathBuf>, DataError> {
    let io_err = |e| io_error(dir, e);
    let mut paths = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io_err)? {
        let entry = entry.map_err(io_err)?;
        if !entry.file_name().as_encoded_bytes().starts_with(b".") {
            paths.push(entry.path());
        }
    }
    paths.sort();
    Ok(paths)
}

/// One decoded image: C x H x W pixels, height, width.
type LoadedImage = (Vec<u8>, usize, usize);

/// Join the decoded images into one set, checking that they all have the first one's size.
fn assemble(
    files: &[PathBuf],
    decoded: Vec<Result<LoadedImage, DataError>>,
    labels: Vec<u32>,
    channels: usize,
) -> Result<ImageSet, DataError> {
    let mut pixels = Vec::new();
    let mut size = None;
    for (path, result) in files.iter().zip(decoded) {
        let (image, height, width) = result?;
        let (h0, w0) = *size.get_or_insert((height, width));
        if (height, width) != (h0, w0) {
            return Err(DataError::Format {
                path: path.clone(),
                what: format!(
                    "expected every image to be {h0}x{w0} (height x width, the size of {}), \
                     found {height}x{width}",
                    files[0].display()
                ),
            });
        }
        if pixels.is_empty() {
            pixels.reserve_exact(image.len() * files.len());
        }
        pixels.extend_from_slice(&image);
    }
    let (height, width) = size.unwrap_or((0, 0));
    Ok(ImageSet {
        pixels,
        labels,
        channels,
        height,
        width,
    })
}

/// Decode by content: PNG and JPEG are told apart by their first bytes.
fn decode(path: &Path, bytes: Vec<u8>) -> Result<Decoded, DataError> {
    let img = if bytes.starts_with(&PNG_SIGNATURE) {
        decode_png(path, bytes)?
    } else if bytes.starts_with(&JPEG_MAGIC) {
        decode_jpeg(path, bytes)?
    } else {
        return Err(format_error(
            path,
            format!(
                "expected a PNG or JPEG image, found {}",
                describe_start(&bytes)
            ),
        ));
    };
    if img.height == 0 || img.width == 0 {
        return Err(format_error(
            path,
            format!(
                "expected an image with pixels, found size {}x{}",
                img.height, img.width
            ),
        ));
    }
    Ok(img)
}

/// PNG to 8-bit grey, grey+alpha, RGB or RGBA (palettes and low-bit grey expanded).
fn decode_png(path: &Path, bytes: Vec<u8>) -> Result<Decoded, DataError> {
    use png::ColorType;
    let bad =
        |e: png::DecodingError| format_error(path, format!("expected a valid PNG, found: {e}"));
    let mut decoder = png::Decoder::new(Cursor::new(bytes));
    decoder.set_transformations(png::Transformations::EXPAND);
    let mut reader = decoder.read_info().map_err(bad)?;
    let (color, depth) = reader.output_color_type();
    if depth != png::BitDepth::Eight {
        return Err(format_error(
            path,
            format!(
                "expected 8-bit PNG samples, found {}-bit (convert the image to 8 bits)",
                depth as u8
            ),
        ));
    }
    let channels = match color {
        ColorType::Grayscale => 1,
        ColorType::GrayscaleAlpha => 2,
        ColorType::Rgb => 3,
        ColorType::Rgba => 4,
        ColorType::Indexed => {
            return Err(format_error(
                path,
                "expected palette expanded to RGB, found indexed output".into(),
            ))
        }
    };
    let len = reader.output_buffer_size().ok_or_else(|| {
        format_error(
            path,
            "expected an image that fits in memory, found one too large".into(),
        )
    })?;
    let mut samples = vec![0u8; len];
    let frame = reader.next_frame(&mut samples).map_err(bad)?;
    samples.truncate(frame.buffer_size());
    let (height, width) = (frame.height as usize, frame.width as usize);
    check_sample_count(path, &samples, height, width, channels)?;
    Ok(Decoded {
        samples,
        channels,
        height,
        width,
    })
}

/// JPEG to 8-bit grey or RGB; 16-bit and CMYK JPEGs are rejected.
fn decode_jpeg(path: &Path, bytes: Vec<u8>) -> Result<Decoded, DataError> {
    use jpeg_decoder::PixelFormat;
    let mut decoder = jpeg_decoder::Decoder::new(Cursor::new(bytes));
    let samples = decoder
        .decode()
        .map_err(|e| format_error(path, format!("expected a valid JPEG, found: {e}")))?;
    let info = decoder
        .info()
        .ok_or_else(|| format_error(path, "expected a JPEG frame header, found none".into()))?;
    let channels = match info.pixel_format {
        PixelFormat::L8 => 1,
        PixelFormat::RGB24 => 3,
        other => {
            return Err(format_error(
                path,
                format!("expected an 8-bit grey or colour JPEG, found pixel format {other:?}"),
            ))
        }
    };
    let (height, width) = (info.height as usize, info.width as usize);
    check_sample_count(path, &samples, height, width, channels)?;
    Ok(Decoded {
        samples,
        channels,
        height,
        width,
    })
}

/// The decoders promise H x W x C samples; check rather than index out of bounds later.
fn check_sample_count(
    path: &Path,
    samples: &[u8],
    height: usize,
    width: usize,
    channels: usize,
) -> Result<(), DataError> {
    let expected = height * width * channels;
    if samples.len() == expected {
        return Ok(());
    }
    Err(format_error(
        path,
        format!(
            "expected {expected} decoded samples ({height}x{width}x{channels}), found {}",
            samples.len()
        ),
    ))
}

/// Interleaved samples to `channels` planes (C x H x W), converting colour and dropping
/// alpha as [`load_image`] documents.
fn to_planes(img: &Decoded, channels: usize) -> Vec<u8> {
    let plane = img.height * img.width;
    let mut out = vec![0u8; channels * plane];
    let colour = img.channels >= 3;
    for (i, px) in img.samples.chunks_exact(img.channels).enumerate() {
        match (colour, channels) {
            (false, 1) => out[i] = px[0],
            (false, _) => (0..3).for_each(|c| out[c * plane + i] = px[0]),
            (true, 1) => out[i] = luma(px[0], px[1], px[2]),
            (true, _) => (0..3).for_each(|c| out[c * plane + i] = px[c]),
        }
    }
    out
}

/// Rec. 601 luma, rounded half away from zero.
fn luma(r: u8, g: u8, b: u8) -> u8 {
    let y = LUMA[0] * f64::from(r) + LUMA[1] * f64::from(g) + LUMA[2] * f64::from(b);
    y.round().clamp(0.0, 255.0) as u8
}

/// "an empty file" or the length and first bytes in hex, for a not-an-image message.
fn describe_start(bytes: &[u8]) -> String {
    if bytes.is_empty() {
        return "an empty file".to_string();
    }
    let head: Vec<String> = bytes.iter().take(8).map(|b| format!("{b:02x}")).collect();
    format!("{} bytes starting with {}", bytes.len(), head.join(" "))
}

fn format_error(path: &Path, what: String) -> DataError {
    DataError::Format {
        path: path.to_path_buf(),
        what,
    }
}


#[cfg(test)]
mod tests {
    use super::*;

    const FACES: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../shared/data/faces-lfw-subset"
    );
    const BRICK: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../shared/data/textures/brick.png"
    );

    fn shared(test: &str, path: &str) -> Option<PathBuf> {
        crate::data::testutil::shared_data(test, path)
    }

    use crate::data::testutil::{check_error_names, TempDir};

    /// Write an 8-bit PNG of interleaved `samples`.
    fn write_png(path: &Path, color: png::ColorType, width: u32, height: u32, samples: &[u8]) {
        write_png_depth(path, color, png::BitDepth::Eight, width, height, samples);
    }

    fn write_png_depth(
        path: &Path,
        color: png::ColorType,
        depth: png::BitDepth,
        width: u32,
        height: u32,
        samples: &[u8],
    ) {
        let file = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
        let mut enc = png::Encoder::new(file, width, height);
        enc.set_color(color);
        enc.set_depth(depth);
        let mut writer = enc.write_header().unwrap();
        writer.write_image_data(samples).unwrap();
        writer.finish().unwrap();
    }

    /// A grey PNG of the given size whose pixels are `fill`.
    fn grey_png(path: &Path, height: u32, width: u32, fill: u8) {
        let n = (height * width) as usize;
        write_png(
            path,
            png::ColorType::Grayscale,
            width,
            height,
            &vec![fill; n],
        );
    }


    /// A minimal baseline JPEG (no new dependency): 8x8 blocks, no subsampling, each block
    /// flat, so only DC coefficients are coded (all quantisers 1; every AC is an EOB).
    /// `blocks[b][c]` is the level of component `c` in block `b`; blocks run left to right,
    /// top to bottom over `bw` x `bh` blocks. One component is grey, three are Y, Cb, Cr.
    fn tiny_jpeg(bw: usize, bh: usize, blocks: &[Vec<u8>]) -> Vec<u8> {
        let nc = blocks[0].len();
        let (w, h) = ((bw * 8) as u16, (bh * 8) as u16);
        let mut out = vec![0xff, 0xd8];
        let mut segment = |marker: u8, body: &[u8]| {
            out.extend_from_slice(&[0xff, marker]);
            out.extend_from_slice(&((body.len() + 2) as u16).to_be_bytes());
            out.extend_from_slice(body);
        };
        let mut dqt = vec![0u8];
        dqt.extend_from_slice(&[1u8; 64]);
        segment(0xdb, &dqt);
        let mut sof = vec![8];
        sof.extend_from_slice(&h.to_be_bytes());
        sof.extend_from_slice(&w.to_be_bytes());
        sof.push(nc as u8);
        (1..=nc as u8).for_each(|id| sof.extend_from_slice(&[id, 0x11, 0]));
        segment(0xc0, &sof);
        // DC table 0: categories 0..=11, all 4-bit codes (code = category).
        // AC table 0: one symbol, EOB (0x00), code "0".
        let (mut dc_counts, mut ac_counts) = ([0u8; 16], [0u8; 16]);
        dc_counts[3] = 12; // twelve codes of length 4
        ac_counts[0] = 1; // one code of length 1
        let mut dht = vec![0x00];
        dht.extend_from_slice(&dc_counts);
        dht.extend(0..12u8);
        dht.push(0x10);
        dht.extend_from_slice(&ac_counts);
        dht.push(0x00);
        segment(0xc4, &dht);
        let mut sos = vec![nc as u8];
        (1..=nc as u8).for_each(|id| sos.extend_from_slice(&[id, 0x00]));
        sos.extend_from_slice(&[0, 63, 0]);
        segment(0xda, &sos);
        // entropy-coded data
        let mut bits: Vec<bool> = Vec::new();
        let put = |v: u32, n: u32, bits: &mut Vec<bool>| {
            (0..n).rev().for_each(|i| bits.push((v >> i) & 1 == 1));
        };
        let mut pred = vec![0i32; nc];
        for block in blocks {
            for (c, &level) in block.iter().enumerate() {
                let dc = 8 * (level as i32 - 128); // flat block: F(0,0) = 8 x (level - 128)
                let diff = dc - pred[c];
                pred[c] = dc;
                let cat = 32 - diff.unsigned_abs().leading_zeros();
                put(cat, 4, &mut bits);
                let extra = if diff >= 0 {
                    diff
                } else {
                    diff + (1 << cat) - 1
                };
                put(extra as u32, cat, &mut bits);
                put(0, 1, &mut bits); // EOB
            }
        }
        while !bits.len().is_multiple_of(8) {
            bits.push(true);
        }
        for byte in bits
            .chunks(8)
            .map(|b| b.iter().fold(0u8, |a, &x| a << 1 | x as u8))
        {
            out.push(byte);
            if byte == 0xff {
                out.push(0); // byte stuffing
            }
        }
        out.extend_from_slice(&[0xff, 0xd9]);
        out
    }

    #[test]
    fn real_faces_counts_classes_size_range() {
        let Some(dir) = shared("real_faces_counts_classes_size_range", FACES) else {
            return;
        };
        let fs = load_folder(&dir, 1).unwrap();
        assert_eq!(fs.classes, vec!["face".to_string(), "nonface".to_string()]);
        assert_eq!(fs.set.len(), 200);
        assert_eq!(fs.files.len(), 200);
        assert_eq!(fs.set.class_counts(2), vec![100, 100]);
        assert_eq!((fs.set.channels, fs.set.height, fs.set.width), (1, 25, 25));
        assert_eq!(fs.set.pixels.len(), 200 * 625);
        assert!(
            fs.files[0].ends_with("face/face_000.png"),
            "{:?}",
            fs.files[0]
        );
        assert!(fs.files[..100].windows(2).all(|w| w[0] < w[1]));
        assert!(fs.files[100].starts_with(dir.join("nonface")));
        assert!(fs.set.labels[..100].iter().all(|&l| l == 0));
        assert!(fs.set.labels[100..].iter().all(|&l| l == 1));
        let (lo, hi) = (
            fs.set.pixels.iter().min().unwrap(),
            fs.set.pixels.iter().max().unwrap(),
        );
        assert!(hi > lo && *hi > 128 && *lo < 128, "pixel range {lo}..={hi}");
        // as RGB: three identical planes per image
        let rgb = load_folder(&dir, 3).unwrap().set;
        assert_eq!((rgb.channels, rgb.len()), (3, 200));
        let img = rgb.image(7);
        assert_eq!(&img[..625], fs.set.image(7));
        assert_eq!(&img[..625], &img[625..1250]);
        assert_eq!(&img[..625], &img[1250..]);
    }

    #[test]
    fn real_texture_loads_grey_and_rgb() {
        let Some(path) = shared("real_texture_loads_grey_and_rgb", BRICK) else {
            return;
        };
        let (grey, h, w) = load_image(&path, 1).unwrap();
        assert_eq!((h, w, grey.len()), (512, 512, 512 * 512));
        let distinct = grey.iter().collect::<std::collections::BTreeSet<_>>().len();
        assert!(
            distinct > 50,
            "a photograph should have many grey levels, found {distinct}"
        );
        let (rgb, h3, w3) = load_image(&path, 3).unwrap();
        assert_eq!((h3, w3, rgb.len()), (512, 512, 3 * 512 * 512));
        let plane = 512 * 512;
        assert_eq!(&rgb[..plane], &grey[..]);
        assert_eq!(&rgb[plane..2 * plane], &grey[..]);
        assert_eq!(&rgb[2 * plane..], &grey[..]);
    }

    #[test]
    fn rgb_png_as_grey_uses_rounded_luma() {
        let tmp = TempDir::new("luma");
        let path = tmp.path("a/x.png");
        // 1x3 RGB: pure red, pure green, a mix
        let samples = [255, 0, 0, 0, 255, 0, 10, 200, 30];
        write_png(&path, png::ColorType::Rgb, 3, 1, &samples);
        let (grey, h, w) = load_image(&path, 1).unwrap();
        assert_eq!((h, w), (1, 3));
        // 0.299*255 = 76.245; 0.587*255 = 149.685; 2.99 + 117.4 + 3.42 = 123.81
        assert_eq!(grey, vec![76, 150, 124]);
        let fs = load_folder(&tmp.0, 1).unwrap();
        assert_eq!(fs.set.pixels, vec![76, 150, 124]);
        // the same as RGB: planes R, G, B
        let (rgb, _, _) = load_image(&path, 3).unwrap();
        assert_eq!(rgb, vec![255, 0, 10, 0, 255, 200, 0, 0, 30]);
    }

    #[test]
    fn grey_png_as_rgb_repeats_the_plane() {
        let tmp = TempDir::new("grey-rgb");
        let path = tmp.path("only/g.png");
        write_png(&path, png::ColorType::Grayscale, 2, 2, &[0, 64, 128, 255]);
        let fs = load_folder(&tmp.0, 3).unwrap();
        assert_eq!((fs.set.channels, fs.set.height, fs.set.width), (3, 2, 2));
        assert_eq!(fs.set.pixels, [[0, 64, 128, 255]; 3].concat());
        assert_eq!(fs.classes, vec!["only".to_string()]);
    }

    #[test]
    fn alpha_is_dropped() {
        let tmp = TempDir::new("alpha");
        let ga = tmp.path("ga.png");
        write_png(&ga, png::ColorType::GrayscaleAlpha, 2, 1, &[10, 0, 20, 255]);
        assert_eq!(load_image(&ga, 1).unwrap().0, vec![10, 20]);
        assert_eq!(load_image(&ga, 3).unwrap().0, vec![10, 20, 10, 20, 10, 20]);
        let rgba = tmp.path("rgba.png");
        write_png(&rgba, png::ColorType::Rgba, 1, 1, &[0, 0, 255, 7]);
        assert_eq!(load_image(&rgba, 3).unwrap().0, vec![0, 0, 255]);
        assert_eq!(load_image(&rgba, 1).unwrap().0, vec![29]); // 0.114 * 255 = 29.07
    }

    #[test]
    fn classes_and_files_sorted_hidden_skipped() {
        let tmp = TempDir::new("order");
        // created out of order, with hidden entries and a stray top-level file
        grey_png(&tmp.path("b/2.png"), 2, 2, 21);
        grey_png(&tmp.path("b/1.png"), 2, 2, 11);
        grey_png(&tmp.path("a/z.png"), 2, 2, 99);
        grey_png(&tmp.path(".hidden_class/x.png"), 2, 2, 1);
        std::fs::write(tmp.path("a/.DS_Store"), b"junk").unwrap();
        std::fs::write(tmp.path("README.txt"), b"not a class").unwrap();
        let fs = load_folder(&tmp.0, 1).unwrap();
        assert_eq!(fs.classes, vec!["a".to_string(), "b".to_string()]);
        assert_eq!(fs.set.labels, vec![0, 1, 1]);
        assert_eq!(
            fs.files,
            vec![
                tmp.0.join("a/z.png"),
                tmp.0.join("b/1.png"),
                tmp.0.join("b/2.png")
            ]
        );
        let firsts: Vec<u8> = (0..3).map(|i| fs.set.image(i)[0]).collect();
        assert_eq!(firsts, vec![99, 11, 21]);
    }

    #[test]
    fn size_mismatch_names_file_and_both_sizes() {
        let tmp = TempDir::new("size");
        grey_png(&tmp.path("a/1.png"), 4, 5, 0);
        grey_png(&tmp.path("b/1.png"), 4, 5, 0);
        let odd = tmp.path("b/2.png");
        grey_png(&odd, 6, 5, 0);
        let err = load_folder(&tmp.0, 1).unwrap_err();
        assert!(matches!(err, DataError::Format { .. }), "{err:?}");
        check_error_names(&err, &odd, &["4x5", "6x5", "a/1.png"]);
    }

    #[test]
    fn non_image_file_is_named() {
        let tmp = TempDir::new("non-image");
        grey_png(&tmp.path("a/1.png"), 2, 2, 0);
        let text = tmp.path("a/notes.png");
        std::fs::write(&text, b"hello, world").unwrap();
        let err = load_folder(&tmp.0, 1).unwrap_err();
        assert!(matches!(err, DataError::Format { .. }), "{err:?}");
        check_error_names(&err, &text, &["PNG or JPEG", "12 bytes", "68 65 6c 6c"]);
        std::fs::write(&text, b"").unwrap();
        check_error_names(&load_image(&text, 1).unwrap_err(), &text, &["empty file"]);
        // a PNG cut short: a decoding error naming the file
        let good = std::fs::read(tmp.path("a/1.png")).unwrap();
        std::fs::write(&text, &good[..good.len() - 20]).unwrap();
        check_error_names(&load_image(&text, 1).unwrap_err(), &text, &["PNG"]);
        let err = load_image(&tmp.path("a/missing.png"), 1).unwrap_err();
        assert!(matches!(err, DataError::NotFound { .. }), "{err:?}");
    }

    #[test]
    fn empty_class_and_no_classes_are_errors() {
        let tmp = TempDir::new("empty");
        let err = load_folder(&tmp.0, 1).unwrap_err();
        check_error_names(&err, &tmp.0, &["no class folders"]);
        grey_png(&tmp.path("full/1.png"), 2, 2, 0);
        let empty = tmp.0.join("hollow");
        std::fs::create_dir_all(&empty).unwrap();
        std::fs::write(empty.join(".keep"), b"").unwrap();
        let err = load_folder(&tmp.0, 1).unwrap_err();
        assert!(matches!(err, DataError::Format { .. }), "{err:?}");
        check_error_names(&err, &empty, &["found none"]);
        let gone = tmp.0.join("nowhere");
        let err = load_folder(&gone, 1).unwrap_err();
        assert!(matches!(err, DataError::NotFound { .. }), "{err:?}");
    }

    #[test]
    fn nested_folder_and_bad_channels_are_errors() {
        let tmp = TempDir::new("nested");
        grey_png(&tmp.path("a/1.png"), 2, 2, 0);
        let sub = tmp.0.join("a/deeper");
        std::fs::create_dir_all(&sub).unwrap();
        check_error_names(&load_folder(&tmp.0, 1).unwrap_err(), &sub, &["sub-folder"]);
        let err = load_folder(&tmp.0, 2).unwrap_err();
        check_error_names(&err, &tmp.0, &["1 (grey) or 3 (RGB)", "2"]);
        assert!(load_image(&tmp.0.join("a/1.png"), 4).is_err());
    }

    #[test]
    fn sixteen_bit_png_is_rejected() {
        let tmp = TempDir::new("16bit");
        let path = tmp.path("deep.png");
        write_png_depth(
            &path,
            png::ColorType::Grayscale,
            png::BitDepth::Sixteen,
            2,
            1,
            &[1, 2, 3, 4],
        );
        let err = load_image(&path, 1).unwrap_err();
        check_error_names(&err, &path, &["8-bit", "16-bit"]);
    }

    #[test]
    fn jpeg_grey_and_colour_decode() {
        let tmp = TempDir::new("jpeg");
        // grey 8x16: left block 60, right block 200
        let grey = tmp.path("g/a.jpg");
        std::fs::write(&grey, tiny_jpeg(2, 1, &[vec![60], vec![200]])).unwrap();
        let (px, h, w) = load_image(&grey, 1).unwrap();
        assert_eq!((h, w), (8, 16));
        for y in 0..8 {
            for x in 0..16 {
                let want: i32 = if x < 8 { 60 } else { 200 };
                assert!(
                    (px[y * 16 + x] as i32 - want).abs() <= 1,
                    "({y},{x}) = {}",
                    px[y * 16 + x]
                );
            }
        }
        // colour 8x8: Y 100, Cb 128, Cr 200 -> about RGB (201, 48, 100)
        let colour = tmp.path("c/b.jpeg");
        std::fs::write(&colour, tiny_jpeg(1, 1, &[vec![100, 128, 200]])).unwrap();
        let (rgb, h, w) = load_image(&colour, 3).unwrap();
        assert_eq!((h, w, rgb.len()), (8, 8, 192));
        let (r, g, b) = (rgb[0], rgb[64], rgb[128]);
        assert!(
            r.abs_diff(201) <= 2 && g.abs_diff(48) <= 2 && b.abs_diff(100) <= 2,
            "{r} {g} {b}"
        );
        let (luma_px, _, _) = load_image(&colour, 1).unwrap();
        assert_eq!(luma_px, vec![luma(r, g, b); 64]);
    }

    #[test]
    fn jpeg_and_png_mix_in_one_folder() {
        let tmp = TempDir::new("mix");
        std::fs::write(tmp.path("a/1.jpg"), tiny_jpeg(1, 1, &[vec![30]])).unwrap();
        grey_png(&tmp.path("b/1.png"), 8, 8, 77);
        let fs = load_folder(&tmp.0, 1).unwrap();
        assert_eq!((fs.set.len(), fs.set.height, fs.set.width), (2, 8, 8));
        assert!(fs.set.image(0).iter().all(|&v| v.abs_diff(30) <= 1));
        assert!(fs.set.image(1).iter().all(|&v| v == 77));
    }

    #[test]
    fn corrupt_jpeg_is_named() {
        let tmp = TempDir::new("bad-jpeg");
        let path = tmp.path("a/broken.jpg");
        let good = tiny_jpeg(1, 1, &[vec![30]]);
        // cut off halfway, inside the headers
        std::fs::write(&path, &good[..good.len() / 2]).unwrap();
        let err = load_image(&path, 1).unwrap_err();
        assert!(matches!(err, DataError::Format { .. }), "{err:?}");
        check_error_names(&err, &path, &["JPEG"]);
        // a JPEG start followed by junk
        std::fs::write(&path, [0xff, 0xd8, 0xff, 0x00, 1, 2, 3]).unwrap();
        check_error_names(&load_image(&path, 3).unwrap_err(), &path, &["JPEG"]);
    }
}
