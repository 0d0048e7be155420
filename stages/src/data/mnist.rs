//! MNIST in its original IDX format (LeCun & Cortes), plain or gzip-compressed.
//!
//! IDX is a big-endian header (a magic number whose last byte is the number of
//! dimensions, then one u32 per dimension) followed by the raw payload. The loader checks
//! every part of that against the file and reports the first disagreement with the file's
//! path, the expected value and the found value, so a damaged or mixed-up file is caught
//! at load time instead of showing up as a strange training curve.
//!
//! Gzip is recognised by the magic bytes `1f 8b`, not the file name, so a compressed file
//! saved without `.gz` (or a decompressed one saved with it) still loads.

use std::fs::File;
use std::io::{self, BufWriter, Cursor, Read, Write};
use std::path::{Path, PathBuf};

use flate2::read::MultiGzDecoder;
use flate2::{Compression, GzBuilder};

use super::{io_error, DataError, ImageSet};

/// IDX magic for unsigned-byte data with 3 dimensions (count, rows, cols).
pub const IMAGES_MAGIC: u32 = 0x0000_0803;
/// IDX magic for unsigned-byte data with 1 dimension (count).
pub const LABELS_MAGIC: u32 = 0x0000_0801;
/// Labels are digits, so anything above this is a damaged file.
pub const MAX_LABEL: u32 = 9;

/// The first two bytes of every gzip stream.
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// Which half of MNIST to load.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Split {
    /// The 60,000 training digits (`train-*` files).
    Train,
    /// The 10,000 test digits (`t10k-*` files).
    Test,
}

impl Split {
    /// The file-name prefix the original distribution uses for this split.
    pub fn prefix(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Test => "t10k",
        }
    }

    /// Standard (uncompressed) file name of the images file.
    pub fn images_name(self) -> String {
        format!("{}-images-idx3-ubyte", self.prefix())
    }

    /// Standard (uncompressed) file name of the labels file.
    pub fn labels_name(self) -> String {
        format!("{}-labels-idx1-ubyte", self.prefix())
    }
}

/// The contents of an IDX3 images file: `count` images of `rows` x `cols` bytes, row-major.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdxImages {
    pub pixels: Vec<u8>,
    pub count: usize,
    pub rows: usize,
    pub cols: usize,
}

/// Read an IDX3 unsigned-byte images file (plain or gzip).
pub fn read_idx_images(path: &Path) -> Result<IdxImages, DataError> {
    let (dims, pixels) = read_idx(path, IMAGES_MAGIC)?;
    Ok(IdxImages {
        pixels,
        count: dims[0],
        rows: dims[1],
        cols: dims[2],
    })
}

/// Read an IDX1 unsigned-byte labels file (plain or gzip); every label must be a digit.
pub fn read_idx_labels(path: &Path) -> Result<Vec<u32>, DataError> {
    let (_, bytes) = read_idx(path, LABELS_MAGIC)?;
    let labels: Vec<u32> = bytes.into_iter().map(u32::from).collect();
    check_labels(path, &labels, MAX_LABEL)?;
    Ok(labels)
}

/// The images and labels files of `split` in `dir`, as `(images, labels)`.
///
/// Each is looked up under its standard name, then with `.gz` appended; the plain file wins
/// when both exist. The engine hashes the returned paths, so they are exactly the files
/// [`load_split`] reads.
pub fn split_files(dir: &Path, split: Split) -> Result<(PathBuf, PathBuf), DataError> {
    if !dir.is_dir() {
        return Err(DataError::NotFound {
            path: dir.to_path_buf(),
            what: "MNIST directory".to_string(),
        });
    }
    let images = resolve(dir, &split.images_name(), "MNIST images file")?;
    let labels = resolve(dir, &split.labels_name(), "MNIST labels file")?;
    Ok((images, labels))
}

/// Load one split from `dir` as a single-channel [`ImageSet`].
pub fn load_split(dir: &Path, split: Split) -> Result<ImageSet, DataError> {
    let (images_path, labels_path) = split_files(dir, split)?;
    load_pair(&images_path, &labels_path)
}

/// Load an images file and its labels file, checking that they agree on the item count.
pub fn load_pair(images_path: &Path, labels_path: &Path) -> Result<ImageSet, DataError> {
    let images = read_idx_images(images_path)?;
    let labels = read_idx_labels(labels_path)?;
    if images.count != labels.len() {
        return Err(DataError::CountMismatch {
            images_path: images_path.to_path_buf(),
            labels_path: labels_path.to_path_buf(),
            images: images.count,
            labels: labels.len(),
        });
    }
    Ok(ImageSet {
        pixels: images.pixels,
        labels,
        channels: 1,
        height: images.rows,
        width: images.cols,
    })
}

/// Write `set` as an IDX3 images file (gzip with mtime 0 when `gzip`, so the bytes are
/// reproducible). IDX3 has no channel axis, so the set must be single-channel.
pub fn write_idx_images(path: &Path, set: &ImageSet, gzip: bool) -> Result<(), DataError> {
    let bytes = encode_idx_images(path, set)?;
    write_bytes(path, &bytes, gzip)
}

/// Write `labels` as an IDX1 labels file (gzip with mtime 0 when `gzip`). Each label must
/// fit one byte; values above 9 are allowed so tests can write damaged files.
pub fn write_idx_labels(path: &Path, labels: &[u32], gzip: bool) -> Result<(), DataError> {
    let bytes = encode_idx_labels(path, labels)?;
    write_bytes(path, &bytes, gzip)
}

/// `dir/name` if it is a file, else `dir/name.gz`, else a NotFound naming both.
fn resolve(dir: &Path, name: &str, what: &str) -> Result<PathBuf, DataError> {
    let plain = dir.join(name);
    if plain.is_file() {
        return Ok(plain);
    }
    let gz = dir.join(format!("{name}.gz"));
    if gz.is_file() {
        return Ok(gz);
    }
    Err(DataError::NotFound {
        path: plain,
        what: format!("{what} ({name} or {name}.gz)"),
    })
}

/// Parse an unsigned-byte IDX file whose magic must be `magic`; returns the dimensions and
/// the payload. The payload must be exactly the product of the dimensions: short and long
/// files are both errors, because either means the header and data do not belong together.
fn read_idx(path: &Path, magic: u32) -> Result<(Vec<usize>, Vec<u8>), DataError> {
    let mut reader = open_decoded(path)?;
    let ndims = (magic & 0xff) as u64;
    let header_len = 4 + 4 * ndims;
    let header = read_up_to(&mut reader, header_len, path)?;
    if header.len() >= 4 {
        let found = be_u32(&header[0..4]);
        if found != magic {
            return Err(DataError::BadMagic {
                path: path.to_path_buf(),
                found,
                expected: magic,
            });
        }
    }
    if (header.len() as u64) < header_len {
        return Err(DataError::Truncated {
            path: path.to_path_buf(),
            expected_bytes: header_len,
            found_bytes: header.len() as u64,
        });
    }
    let dims: Vec<usize> = header[4..].chunks_exact(4).map(|c| be_u32(c) as usize).collect();
    let payload_len = payload_len(path, &dims)?;
    let expected_bytes = header_len + payload_len;
    let payload = read_up_to(&mut reader, payload_len, path)?;
    let found_bytes = header_len + payload.len() as u64;
    if found_bytes < expected_bytes {
        return Err(DataError::Truncated {
            path: path.to_path_buf(),
            expected_bytes,
            found_bytes,
        });
    }
    let extra = io::copy(&mut reader, &mut io::sink()).map_err(|e| io_error(path, e))?;
    if extra > 0 {
        return Err(DataError::TrailingBytes {
            path: path.to_path_buf(),
            expected_bytes,
            found_bytes: expected_bytes + extra,
        });
    }
    Ok((dims, payload))
}

/// The dimensions an IDX file's header declares (count, rows, cols for images; count for
/// labels), read without the payload: a check of geometry and size before any work.
pub fn idx_dims(path: &Path) -> Result<Vec<usize>, DataError> {
    let mut file = File::open(path).map_err(|e| io_error(path, e))?;
    let mut first = [0u8; 2];
    let n = read_up_to(&mut file, 2, path)?;
    first[..n.len()].copy_from_slice(&n);
    let rest = File::open(path).map_err(|e| io_error(path, e))?;
    let mut reader: Box<dyn Read> = if first == GZIP_MAGIC { Box::new(MultiGzDecoder::new(io::BufReader::new(rest))) } else { Box::new(io::BufReader::new(rest)) };
    let magic_bytes = read_up_to(&mut reader, 4, path)?;
    if magic_bytes.len() < 4 {
        return Err(DataError::Truncated { path: path.to_path_buf(), expected_bytes: 4, found_bytes: magic_bytes.len() as u64 });
    }
    let magic = be_u32(&magic_bytes);
    if magic != IMAGES_MAGIC && magic != LABELS_MAGIC {
        return Err(DataError::BadMagic { path: path.to_path_buf(), found: magic, expected: IMAGES_MAGIC });
    }
    let ndims = (magic & 0xff) as u64;
    let dims = read_up_to(&mut reader, 4 * ndims, path)?;
    if (dims.len() as u64) < 4 * ndims {
        return Err(DataError::Truncated { path: path.to_path_buf(), expected_bytes: 4 + 4 * ndims, found_bytes: 4 + dims.len() as u64 });
    }
    Ok(dims.chunks_exact(4).map(|c| be_u32(c) as usize).collect())
}

/// Product of the dimensions in bytes, refusing values this machine cannot hold.
fn payload_len(path: &Path, dims: &[usize]) -> Result<u64, DataError> {
    let product: u128 = dims.iter().map(|&d| d as u128).product();
    let fits = u64::try_from(product).ok().filter(|&p| usize::try_from(p).is_ok());
    fits.ok_or_else(|| DataError::DimensionOverflow {
        path: path.to_path_buf(),
        what: "payload bytes (product of the header dimensions)".to_string(),
        value: product,
    })
}

/// The file's bytes, gunzipped on the fly when they start with the gzip magic.
fn open_decoded(path: &Path) -> Result<Box<dyn Read>, DataError> {
    let raw = std::fs::read(path).map_err(|e| io_error(path, e))?;
    if raw.starts_with(&GZIP_MAGIC) {
        Ok(Box::new(MultiGzDecoder::new(Cursor::new(raw))))
    } else {
        Ok(Box::new(Cursor::new(raw)))
    }
}

/// Read at most `n` bytes; fewer only at end of stream. Memory grows with the data
/// actually present, not with `n`, so a lying header cannot force a huge allocation.
fn read_up_to(reader: &mut dyn Read, n: u64, path: &Path) -> Result<Vec<u8>, DataError> {
    let mut buf = Vec::with_capacity(n.min(1 << 20) as usize);
    reader
        .take(n)
        .read_to_end(&mut buf)
        .map_err(|e| io_error(path, e))?;
    Ok(buf)
}

/// Labels must lie in `0..=max`; report the first that does not.
fn check_labels(path: &Path, labels: &[u32], max: u32) -> Result<(), DataError> {
    match labels.iter().position(|&l| l > max) {
        None => Ok(()),
        Some(index) => Err(DataError::LabelOutOfRange {
            path: path.to_path_buf(),
            index,
            label: labels[index],
            max,
        }),
    }
}

/// Header + pixels of an IDX3 file for `set`; `path` only names the target in errors.
fn encode_idx_images(path: &Path, set: &ImageSet) -> Result<Vec<u8>, DataError> {
    if set.channels != 1 {
        return Err(DataError::BadChannels {
            path: path.to_path_buf(),
            expected: 1,
            found: set.channels,
        });
    }
    let expected = (set.len() as u128) * (set.image_len() as u128);
    if expected != set.pixels.len() as u128 {
        return Err(DataError::PixelLenMismatch {
            path: path.to_path_buf(),
            expected: usize::try_from(expected).unwrap_or(usize::MAX),
            found: set.pixels.len(),
        });
    }
    let mut out = Vec::with_capacity(16 + set.pixels.len());
    out.extend_from_slice(&IMAGES_MAGIC.to_be_bytes());
    for (what, value) in [("image count", set.len()), ("rows", set.height), ("cols", set.width)] {
        out.extend_from_slice(&dim_u32(path, what, value)?.to_be_bytes());
    }
    out.extend_from_slice(&set.pixels);
    Ok(out)
}

/// Header + bytes of an IDX1 file for `labels`; `path` only names the target in errors.
fn encode_idx_labels(path: &Path, labels: &[u32]) -> Result<Vec<u8>, DataError> {
    check_labels(path, labels, u8::MAX as u32)?;
    let mut out = Vec::with_capacity(8 + labels.len());
    out.extend_from_slice(&LABELS_MAGIC.to_be_bytes());
    out.extend_from_slice(&dim_u32(path, "label count", labels.len())?.to_be_bytes());
    out.extend(labels.iter().map(|&l| l as u8));
    Ok(out)
}

/// A dimension as the format's u32.
fn dim_u32(path: &Path, what: &str, value: usize) -> Result<u32, DataError> {
    u32::try_from(value).map_err(|_| DataError::DimensionOverflow {
        path: path.to_path_buf(),
        what: what.to_string(),
        value: value as u128,
    })
}

/// Write `bytes` to `path`, gzip-compressed (mtime 0, no file name: reproducible) when asked.
fn write_bytes(path: &Path, bytes: &[u8], gzip: bool) -> Result<(), DataError> {
    let io_err = |e| io_error(path, e);
    let mut out = BufWriter::new(File::create(path).map_err(io_err)?);
    if gzip {
        let mut enc = GzBuilder::new().mtime(0).write(&mut out, Compression::best());
        enc.write_all(bytes).map_err(io_err)?;
        enc.finish().map_err(io_err)?;
    } else {
        out.write_all(bytes).map_err(io_err)?;
    }
    out.flush().map_err(io_err)
}

fn be_u32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}


#[cfg(test)]
mod tests {
    use super::*;

    const SHARED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/data/mnist");
    const SUBSET: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../pipelines/data/mnist");

    fn shared_dir(test: &str) -> Option<PathBuf> {
        crate::data::testutil::shared_data(test, SHARED)
    }

    use crate::data::testutil::{check_error_names, TempDir};

    /// `n` 3x2 images whose pixels encode their index, labels cycling through the digits.
    fn synthetic(n: usize) -> ImageSet {
        ImageSet {
            pixels: (0..n * 6).map(|i| (i * 7 % 256) as u8).collect(),
            labels: (0..n as u32).map(|i| i % 10).collect(),
            channels: 1,
            height: 3,
            width: 2,
        }
    }

    /// Write `set` as the Test split into `dir` under the standard names.
    fn write_split(dir: &TempDir, set: &ImageSet, gzip: bool) {
        let sfx = if gzip { ".gz" } else { "" };
        write_idx_images(&dir.path(&format!("t10k-images-idx3-ubyte{sfx}")), set, gzip).unwrap();
        write_idx_labels(&dir.path(&format!("t10k-labels-idx1-ubyte{sfx}")), &set.labels, gzip)
            .unwrap();
    }


    #[test]
    fn real_train_split_counts_labels_classes_range() {
        let Some(dir) = shared_dir("real_train_split_counts_labels_classes_range") else {
            return;
        };
        let set = load_split(&dir, Split::Train).unwrap();
        assert_eq!(set.len(), 60_000);
        assert_eq!((set.channels, set.height, set.width), (1, 28, 28));
        assert_eq!(set.pixels.len(), 60_000 * 784);
        assert_eq!(&set.labels[..5], &[5, 0, 4, 1, 9]);
        assert_eq!(
            set.class_counts(10),
            vec![5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
        );
        assert_eq!(set.pixels.iter().min(), Some(&0));
        assert_eq!(set.pixels.iter().max(), Some(&255));
        let unit = set.to_unit_range();
        assert!(unit.iter().all(|v| (-1.0..=1.0).contains(v)));
    }

    #[test]
    fn real_test_split_counts_and_first_labels() {
        let Some(dir) = shared_dir("real_test_split_counts_and_first_labels") else {
            return;
        };
        let set = load_split(&dir, Split::Test).unwrap();
        assert_eq!(set.len(), 10_000);
        assert_eq!(&set.labels[..5], &[7, 2, 1, 0, 4]);
        assert_eq!(set.class_counts(10).iter().sum::<usize>(), 10_000);
        let (images, labels) = split_files(&dir, Split::Test).unwrap();
        assert!(images.ends_with("t10k-images-idx3-ubyte.gz"));
        assert!(labels.ends_with("t10k-labels-idx1-ubyte.gz"));
    }

    #[test]
    fn committed_subset_loads() {
        let dir = PathBuf::from(SUBSET);
        let train = load_split(&dir, Split::Train).unwrap();
        let test = load_split(&dir, Split::Test).unwrap();
        assert_eq!((train.len(), test.len()), (5_000, 1_000));
        assert_eq!((train.height, train.width, test.height, test.width), (28, 28, 28, 28));
        assert_eq!(&train.labels[..5], &[5, 0, 4, 1, 9]);
        assert_eq!(&test.labels[..5], &[7, 2, 1, 0, 4]);
        assert_eq!(train.class_counts(10), vec![479, 563, 488, 493, 535, 434, 501, 550, 462, 495]);
        assert_eq!(test.class_counts(10), vec![85, 126, 116, 107, 110, 87, 87, 99, 89, 94]);
        if let Some(full_dir) = shared_dir("committed_subset_loads (comparison with full set)") {
            let full = load_split(&full_dir, Split::Test).unwrap();
            let first: Vec<usize> = (0..1_000).collect();
            assert_eq!(full.select(&first), test);
        }
    }

    #[test]
    fn gz_and_plain_give_same_set() {
        let from_gz = load_split(Path::new(SUBSET), Split::Test).unwrap();
        let tmp = TempDir::new("plain");
        write_split(&tmp, &from_gz, false);
        let (images, _) = split_files(&tmp.0, Split::Test).unwrap();
        assert_eq!(images, tmp.path("t10k-images-idx3-ubyte"));
        let from_plain = load_split(&tmp.0, Split::Test).unwrap();
        assert_eq!(from_plain, from_gz);
    }

    #[test]
    fn gz_detected_by_magic_not_name() {
        let set = synthetic(12);
        let tmp = TempDir::new("magic");
        // gzip bytes under the plain name, plain bytes under the .gz name
        write_idx_images(&tmp.path("t10k-images-idx3-ubyte"), &set, true).unwrap();
        write_idx_labels(&tmp.path("t10k-labels-idx1-ubyte.gz"), &set.labels, false).unwrap();
        let raw = std::fs::read(tmp.path("t10k-images-idx3-ubyte")).unwrap();
        assert_eq!(&raw[..2], &GZIP_MAGIC);
        assert_eq!(load_split(&tmp.0, Split::Test).unwrap(), set);
    }

    #[test]
    fn write_read_round_trip() {
        for gzip in [false, true] {
            let set = synthetic(23);
            let tmp = TempDir::new("roundtrip");
            write_split(&tmp, &set, gzip);
            assert_eq!(load_split(&tmp.0, Split::Test).unwrap(), set);
        }
        let empty = synthetic(0);
        let tmp = TempDir::new("roundtrip-empty");
        write_split(&tmp, &empty, true);
        assert_eq!(load_split(&tmp.0, Split::Test).unwrap(), empty);
    }

    #[test]
    fn gzip_output_is_reproducible() {
        let set = synthetic(40);
        let tmp = TempDir::new("repro");
        let (a, b) = (tmp.path("a.gz"), tmp.path("b.gz"));
        write_idx_images(&a, &set, true).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(1100));
        write_idx_images(&b, &set, true).unwrap();
        assert_eq!(std::fs::read(a).unwrap(), std::fs::read(b).unwrap());
    }

    #[test]
    fn bad_magic_is_reported() {
        let tmp = TempDir::new("magic-bad");
        let path = tmp.path("images");
        write_idx_labels(&path, &[1, 2, 3], true).unwrap();
        let err = read_idx_images(&path).unwrap_err();
        assert!(
            matches!(err, DataError::BadMagic { found: 0x801, expected: 0x803, .. }),
            "{err:?}"
        );
        check_error_names(&err, &path, &["0x00000801", "0x00000803"]);
        let err = read_idx_labels(&path.with_file_name("x")).unwrap_err();
        assert!(matches!(err, DataError::NotFound { .. }));
    }

    #[test]
    fn truncated_payload_is_reported() {
        let set = synthetic(5); // 16-byte header + 30 pixel bytes
        let tmp = TempDir::new("truncated");
        for gzip in [false, true] {
            let path = tmp.path("images");
            let mut bytes = encode_idx_images(&path, &set).unwrap();
            bytes.truncate(bytes.len() - 4);
            write_bytes(&path, &bytes, gzip).unwrap();
            let err = read_idx_images(&path).unwrap_err();
            assert!(
                matches!(err, DataError::Truncated { expected_bytes: 46, found_bytes: 42, .. }),
                "{err:?}"
            );
            check_error_names(&err, &path, &["46", "42"]);
        }
    }

    #[test]
    fn truncated_header_is_reported() {
        let tmp = TempDir::new("short-header");
        let path = tmp.path("labels");
        for len in [0usize, 3, 7] {
            let bytes = &encode_idx_labels(&path, &[1, 2]).unwrap()[..len];
            write_bytes(&path, bytes, false).unwrap();
            let err = read_idx_labels(&path).unwrap_err();
            assert!(
                matches!(err, DataError::Truncated { expected_bytes: 8, found_bytes, .. } if found_bytes == len as u64),
                "{err:?}"
            );
        }
    }

    #[test]
    fn trailing_bytes_are_reported() {
        let tmp = TempDir::new("trailing");
        let path = tmp.path("labels.gz");
        let mut bytes = encode_idx_labels(&path, &[1, 2, 3]).unwrap();
        bytes.extend_from_slice(&[0, 0]);
        write_bytes(&path, &bytes, true).unwrap();
        let err = read_idx_labels(&path).unwrap_err();
        assert!(
            matches!(err, DataError::TrailingBytes { expected_bytes: 11, found_bytes: 13, .. }),
            "{err:?}"
        );
        check_error_names(&err, &path, &["11", "13"]);
    }

    #[test]
    fn count_mismatch_is_reported() {
        let tmp = TempDir::new("count");
        let set = synthetic(4);
        write_idx_images(&tmp.path("t10k-images-idx3-ubyte.gz"), &set, true).unwrap();
        write_idx_labels(&tmp.path("t10k-labels-idx1-ubyte.gz"), &set.labels[..3], true).unwrap();
        let err = load_split(&tmp.0, Split::Test).unwrap_err();
        assert!(
            matches!(err, DataError::CountMismatch { images: 4, labels: 3, .. }),
            "{err:?}"
        );
        check_error_names(&err, &tmp.path("t10k-images-idx3-ubyte.gz"), &["t10k-labels-idx1-ubyte.gz"]);
    }

    #[test]
    fn label_ten_is_reported() {
        let tmp = TempDir::new("label10");
        let path = tmp.path("labels");
        write_idx_labels(&path, &[3, 9, 10, 0], false).unwrap();
        let err = read_idx_labels(&path).unwrap_err();
        assert!(
            matches!(err, DataError::LabelOutOfRange { index: 2, label: 10, max: 9, .. }),
            "{err:?}"
        );
        check_error_names(&err, &path, &["10", "0..=9"]);
    }

    #[test]
    fn missing_file_names_path() {
        let tmp = TempDir::new("missing");
        let err = load_split(&tmp.0, Split::Train).unwrap_err();
        assert!(matches!(err, DataError::NotFound { .. }), "{err:?}");
        check_error_names(&err, &tmp.path("train-images-idx3-ubyte"), &[".gz"]);

        write_idx_images(&tmp.path("train-images-idx3-ubyte.gz"), &synthetic(2), true).unwrap();
        let err = split_files(&tmp.0, Split::Train).unwrap_err();
        check_error_names(&err, &tmp.path("train-labels-idx1-ubyte"), &[]);

        let gone = tmp.path("no-such-dir");
        let err = load_split(&gone, Split::Test).unwrap_err();
        check_error_names(&err, &gone, &["directory"]);
    }

    #[test]
    fn garbage_never_panics() {
        let tmp = TempDir::new("garbage");
        let path = tmp.path("f");
        // a header announcing 2^96 bytes: overflow, not an allocation attempt
        let mut huge = IMAGES_MAGIC.to_be_bytes().to_vec();
        huge.extend_from_slice(&[0xff; 12]);
        write_bytes(&path, &huge, false).unwrap();
        let err = read_idx_images(&path).unwrap_err();
        assert!(matches!(err, DataError::DimensionOverflow { .. }), "{err:?}");
        // a header announcing 4 GiB with no payload: truncated, quickly
        let mut big = IMAGES_MAGIC.to_be_bytes().to_vec();
        big.extend_from_slice(&[0, 0, 0xff, 0xff, 0, 0, 0xff, 0xff, 0, 0, 0, 1]);
        write_bytes(&path, &big, true).unwrap();
        let err = read_idx_images(&path).unwrap_err();
        assert!(matches!(err, DataError::Truncated { found_bytes: 16, .. }), "{err:?}");
        // a gzip magic followed by junk: an I/O error naming the file
        write_bytes(&path, &[0x1f, 0x8b, 1, 2, 3, 4, 5], false).unwrap();
        let err = read_idx_labels(&path).unwrap_err();
        assert!(matches!(err, DataError::Io { .. }), "{err:?}");
        check_error_names(&err, &path, &[]);
        // a truncated gzip stream
        write_idx_labels(&path, &[1; 1000], true).unwrap();
        let gz = std::fs::read(&path).unwrap();
        write_bytes(&path, &gz[..gz.len() / 2], false).unwrap();
        assert!(read_idx_labels(&path).is_err());
    }

    #[test]
    fn writers_reject_sets_the_format_cannot_hold() {
        let tmp = TempDir::new("writers");
        let path = tmp.path("w");
        let mut rgb = synthetic(2);
        rgb.channels = 3;
        let err = write_idx_images(&path, &rgb, false).unwrap_err();
        assert!(matches!(err, DataError::BadChannels { expected: 1, found: 3, .. }));
        let mut short = synthetic(2);
        short.pixels.pop();
        let err = write_idx_images(&path, &short, false).unwrap_err();
        assert!(matches!(err, DataError::PixelLenMismatch { expected: 12, found: 11, .. }));
        let err = write_idx_labels(&path, &[1, 256], false).unwrap_err();
        assert!(matches!(err, DataError::LabelOutOfRange { index: 1, label: 256, max: 255, .. }));
    }
}
