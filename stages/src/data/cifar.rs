//! CIFAR-10 in its "binary version" (Krizhevsky, 2009).
//!
//! The training set is five files `data_batch_1.bin` .. `data_batch_5.bin`, the test set one
//! file `test_batch.bin`, all in one directory. A file has no header: it is a run of
//! fixed-size records, each one label byte (0..=9) followed by 3072 pixel bytes, the 1024
//! red, then 1024 green, then 1024 blue values of a 32x32 image, each plane row-major. That
//! is exactly the C x H x W layout of [`ImageSet`], so a record's pixels are copied as they
//! are.
//!
//! With no header there is nothing to check but the length and the labels, so both are
//! checked: a length that is not a whole number of records means a cut-off or foreign
//! file, and a label above 9 means the bytes are out of step with the records.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use super::{io_error, DataError, ImageSet};

/// Image side in pixels.
pub const SIDE: usize = 32;
/// Colour planes per image (R, G, B).
pub const CHANNELS: usize = 3;
/// Pixel bytes per record: 3 planes of 32x32.
pub const IMAGE_BYTES: usize = CHANNELS * SIDE * SIDE;
/// Bytes per record: one label byte, then the pixels.
pub const RECORD_BYTES: usize = 1 + IMAGE_BYTES;
/// Ten classes, so anything above this is a damaged file.
pub const MAX_LABEL: u32 = 9;
/// Number of training batch files.
pub const TRAIN_BATCHES: usize = 5;

/// Which half of CIFAR-10 to load.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Split {
    /// The 50,000 training images (`data_batch_1.bin` .. `data_batch_5.bin`).
    Train,
    /// The 10,000 test images (`test_batch.bin`).
    Test,
}

impl Split {
    /// The standard file names of this split, in the order their records are concatenated.
    pub fn file_names(self) -> Vec<String> {
        match self {
            Split::Train => (1..=TRAIN_BATCHES)
                .map(|i| format!("data_batch_{i}.bin"))
                .collect(),
            Split::Test => vec!["test_batch.bin".to_string()],
        }
    }

    /// Words for error messages.
    fn describe(self) -> &'static str {
        match self {
            Split::Train => "CIFAR-10 training batch (data_batch_1.bin .. data_batch_5.bin)",
            Split::Test => "CIFAR-10 test batch (test_batch.bin)",
        }
    }
}

/// The files of `split` in `dir`, in order.
///
/// Every file must be present: a training set missing one batch would still train, just on
/// less data, and nobody would notice. The engine hashes the returned paths, so they are
/// exactly the files [`load_split`] reads.
pub fn split_files(dir: &Path, split: Split) -> Result<Vec<PathBuf>, DataError> {
    if !dir.is_dir() {
        return Err(DataError::NotFound {
            path: dir.to_path_buf(),
            what: "CIFAR-10 directory".to_string(),
        });
    }
    split
        .file_names()
        .into_iter()
        .map(|name| {
            let path = dir.join(name);
            if path.is_file() {
                Ok(path)
            } else {
                Err(DataError::NotFound {
                    path,
                    what: split.describe().to_string(),
                })
            }
        })
        .collect()
}

/// Load one split from `dir`: its batch files concatenated in order, as a 3 x 32 x 32
/// [`ImageSet`].
pub fn load_split(dir: &Path, split: Split) -> Result<ImageSet, DataError> {
    let files = split_files(dir, split)?;
    let mut all = empty_set();
    for path in &files {
        let batch = read_batch(path)?;
        all.pixels.extend_from_slice(&batch.pixels);
        all.labels.extend_from_slice(&batch.labels);
    }
    Ok(all)
}

/// Read one batch file: a whole number of 3073-byte records, every label in 0..=9.
///
/// A file with no records reads as an empty set (it is well-formed, just empty).
pub fn read_batch(path: &Path) -> Result<ImageSet, DataError> {
    let bytes = std::fs::read(path).map_err(|e| io_error(path, e))?;
    check_whole_records(path, bytes.len())?;
    let records = bytes.len() / RECORD_BYTES;
    let mut set = empty_set();
    set.pixels.reserve_exact(records * IMAGE_BYTES);
    set.labels.reserve_exact(records);
    for (index, record) in bytes.chunks_exact(RECORD_BYTES).enumerate() {
        let label = u32::from(record[0]);
        if label > MAX_LABEL {
            return Err(DataError::LabelOutOfRange {
                path: path.to_path_buf(),
                index,
                label,
                max: MAX_LABEL,
            });
        }
        set.labels.push(label);
        set.pixels.extend_from_slice(&record[1..]);
    }
    Ok(set)
}

/// Write `set` as one batch file (for tests and fixtures).
///
/// The format fixes the image shape, so the set must be 3 x 32 x 32 with `len()` images'
/// worth of pixels. Labels only have to fit one byte: values above 9 are allowed so tests
/// can write damaged files.
pub fn write_batch(path: &Path, set: &ImageSet) -> Result<(), DataError> {
    check_writable(path, set)?;
    let io_err = |e| io_error(path, e);
    let mut out = BufWriter::new(File::create(path).map_err(io_err)?);
    for (i, &label) in set.labels.iter().enumerate() {
        out.write_all(&[label as u8]).map_err(io_err)?;
        out.write_all(set.image(i)).map_err(io_err)?;
    }
    out.flush().map_err(io_err)
}

/// A CIFAR-shaped set with no images, to append batches to.
fn empty_set() -> ImageSet {
    ImageSet {
        pixels: Vec::new(),
        labels: Vec::new(),
        channels: CHANNELS,
        height: SIDE,
        width: SIDE,
    }
}

/// The length must be a whole number of records; say how far off it is when not.
fn check_whole_records(path: &Path, len: usize) -> Result<(), DataError> {
    let rest = len % RECORD_BYTES;
    if rest == 0 {
        return Ok(());
    }
    Err(DataError::Format {
        path: path.to_path_buf(),
        what: format!(
            "expected a whole number of {RECORD_BYTES}-byte records (1 label byte + \
             {IMAGE_BYTES} pixel bytes), found {len} bytes: {} whole records and {rest} bytes \
             left over (truncated or not a CIFAR-10 binary batch)",
            len / RECORD_BYTES
        ),
    })
}

/// Everything [`write_batch`] needs before it creates the file, so a bad set leaves no
/// half-written file behind.
fn check_writable(path: &Path, set: &ImageSet) -> Result<(), DataError> {
    if set.channels != CHANNELS {
        return Err(DataError::BadChannels {
            path: path.to_path_buf(),
            expected: CHANNELS,
            found: set.channels,
        });
    }
    if (set.height, set.width) != (SIDE, SIDE) {
        return Err(DataError::Format {
            path: path.to_path_buf(),
            what: format!(
                "cannot write: CIFAR-10 images are {SIDE}x{SIDE}, found {}x{} (height x width)",
                set.height, set.width
            ),
        });
    }
    let expected = set.len().saturating_mul(IMAGE_BYTES);
    if expected != set.pixels.len() {
        return Err(DataError::PixelLenMismatch {
            path: path.to_path_buf(),
            expected,
            found: set.pixels.len(),
        });
    }
    match set.labels.iter().position(|&l| l > u32::from(u8::MAX)) {
        None => Ok(()),
        Some(index) => Err(DataError::LabelOutOfRange {
            path: path.to_path_buf(),
            index,
            label: set.labels[index],
            max: u32::from(u8::MAX),
        }),
    }
}


#[cfg(test)]
mod tests {
    use super::*;

    use crate::data::testutil::{check_error_names, TempDir};

    /// `n` images whose pixels depend on `seed`, the image index and the position (so
    /// images of different files and records differ), labels cycling through the classes.
    fn synthetic(n: usize, seed: usize) -> ImageSet {
        ImageSet {
            pixels: (0..n * IMAGE_BYTES)
                .map(|i| ((i * 7 + seed * 31 + i / IMAGE_BYTES * 13) % 256) as u8)
                .collect(),
            labels: (0..n).map(|i| ((i + seed) % 10) as u32).collect(),
            channels: CHANNELS,
            height: SIDE,
            width: SIDE,
        }
    }


    #[test]
    fn write_read_round_trip() {
        let tmp = TempDir::new("roundtrip");
        let path = tmp.path("test_batch.bin");
        let set = synthetic(7, 1);
        write_batch(&path, &set).unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            7 * RECORD_BYTES as u64
        );
        assert_eq!(read_batch(&path).unwrap(), set);
        assert_eq!(load_split(&tmp.0, Split::Test).unwrap(), set);
        let empty = synthetic(0, 0);
        write_batch(&path, &empty).unwrap();
        assert_eq!(read_batch(&path).unwrap(), empty);
    }

    #[test]
    fn record_layout_is_label_then_rgb_planes() {
        let tmp = TempDir::new("layout");
        let path = tmp.path("b.bin");
        let mut raw = vec![0u8; RECORD_BYTES];
        raw[0] = 6;
        raw[1] = 10; // red (0, 0)
        raw[1 + 1024] = 20; // green (0, 0)
        raw[1 + 2048 + 32 + 1] = 30; // blue (1, 1)
        std::fs::write(&path, &raw).unwrap();
        let set = read_batch(&path).unwrap();
        assert_eq!(set.labels, vec![6]);
        let at = |c: usize, y: usize, x: usize| set.pixels[c * 1024 + y * 32 + x];
        assert_eq!(
            (at(0, 0, 0), at(1, 0, 0), at(2, 1, 1), at(2, 0, 0)),
            (10, 20, 30, 0)
        );
    }

    #[test]
    fn train_files_concatenate_in_order() {
        let tmp = TempDir::new("concat");
        let batches: Vec<ImageSet> = (1..=5).map(|i| synthetic(i + 1, i)).collect();
        // written in reverse so that creation order cannot stand in for name order
        for (i, b) in batches.iter().enumerate().rev() {
            write_batch(&tmp.path(&format!("data_batch_{}.bin", i + 1)), b).unwrap();
        }
        write_batch(&tmp.path("test_batch.bin"), &synthetic(3, 9)).unwrap();
        let files = split_files(&tmp.0, Split::Train).unwrap();
        let names: Vec<_> = files
            .iter()
            .map(|p| p.file_name().unwrap().to_owned())
            .collect();
        assert_eq!(
            names,
            [
                "data_batch_1.bin",
                "data_batch_2.bin",
                "data_batch_3.bin",
                "data_batch_4.bin",
                "data_batch_5.bin"
            ]
        );
        let train = load_split(&tmp.0, Split::Train).unwrap();
        assert_eq!(train.len(), 2 + 3 + 4 + 5 + 6);
        let mut start = 0;
        for b in &batches {
            let idx: Vec<usize> = (start..start + b.len()).collect();
            assert_eq!(&train.select(&idx), b);
            start += b.len();
        }
        assert_eq!(load_split(&tmp.0, Split::Test).unwrap(), synthetic(3, 9));
    }

    #[test]
    fn truncated_record_is_reported() {
        let tmp = TempDir::new("truncated");
        let path = tmp.path("test_batch.bin");
        write_batch(&path, &synthetic(3, 0)).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 100]).unwrap();
        let err = read_batch(&path).unwrap_err();
        assert!(matches!(err, DataError::Format { .. }), "{err:?}");
        let len = (3 * RECORD_BYTES - 100).to_string();
        check_error_names(
            &err,
            &path,
            &[&len, "3073", "2 whole records", "2973 bytes left over"],
        );
        // a lone label byte is not a record either
        std::fs::write(&path, [1u8]).unwrap();
        let err = load_split(&tmp.0, Split::Test).unwrap_err();
        check_error_names(&err, &path, &["found 1 bytes", "3073"]);
    }

    #[test]
    fn bad_label_is_reported_with_record_index() {
        let tmp = TempDir::new("label");
        let path = tmp.path("data_batch_3.bin");
        let mut set = synthetic(5, 0);
        set.labels[3] = 10;
        write_batch(&path, &set).unwrap();
        let err = read_batch(&path).unwrap_err();
        assert!(
            matches!(
                err,
                DataError::LabelOutOfRange {
                    index: 3,
                    label: 10,
                    max: 9,
                    ..
                }
            ),
            "{err:?}"
        );
        check_error_names(&err, &path, &["item 3", "10", "0..=9"]);
    }

    #[test]
    fn missing_file_is_named() {
        let tmp = TempDir::new("missing");
        for i in [1, 2, 4, 5] {
            write_batch(&tmp.path(&format!("data_batch_{i}.bin")), &synthetic(1, i)).unwrap();
        }
        let err = load_split(&tmp.0, Split::Train).unwrap_err();
        assert!(matches!(err, DataError::NotFound { .. }), "{err:?}");
        check_error_names(
            &err,
            &tmp.path("data_batch_3.bin"),
            &["not found", "CIFAR-10"],
        );
        let err = read_batch(&tmp.path("test_batch.bin")).unwrap_err();
        assert!(matches!(err, DataError::NotFound { .. }), "{err:?}");
        let gone = tmp.path("no-such-dir");
        let err = split_files(&gone, Split::Test).unwrap_err();
        check_error_names(&err, &gone, &["directory"]);
    }

    #[test]
    fn empty_dir_reports_first_file() {
        let tmp = TempDir::new("empty");
        let err = load_split(&tmp.0, Split::Train).unwrap_err();
        assert!(matches!(err, DataError::NotFound { .. }), "{err:?}");
        check_error_names(&err, &tmp.path("data_batch_1.bin"), &[]);
        let err = split_files(&tmp.0, Split::Test).unwrap_err();
        check_error_names(&err, &tmp.path("test_batch.bin"), &[]);
    }

    #[test]
    fn writer_rejects_sets_the_format_cannot_hold() {
        let tmp = TempDir::new("writer");
        let path = tmp.path("w.bin");
        let mut grey = synthetic(1, 0);
        grey.channels = 1;
        let err = write_batch(&path, &grey).unwrap_err();
        assert!(
            matches!(
                err,
                DataError::BadChannels {
                    expected: 3,
                    found: 1,
                    ..
                }
            ),
            "{err:?}"
        );
        let mut small = synthetic(1, 0);
        small.height = 16;
        let err = write_batch(&path, &small).unwrap_err();
        check_error_names(&err, &path, &["32x32", "16x32"]);
        let mut short = synthetic(2, 0);
        short.pixels.pop();
        let err = write_batch(&path, &short).unwrap_err();
        assert!(
            matches!(
                err,
                DataError::PixelLenMismatch {
                    expected: 6144,
                    found: 6143,
                    ..
                }
            ),
            "{err:?}"
        );
        let mut big_label = synthetic(2, 0);
        big_label.labels[1] = 256;
        let err = write_batch(&path, &big_label).unwrap_err();
        assert!(matches!(
            err,
            DataError::LabelOutOfRange {
                index: 1,
                label: 256,
                max: 255,
                ..
            }
        ));
        assert!(
            !path.exists(),
            "a rejected set must not leave a file behind"
        );
    }
}
