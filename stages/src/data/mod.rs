//! Image data sets as plain bytes.
//!
//! Everything the loaders produce is an [`ImageSet`]: raw `u8` pixels plus one label per
//! image. Keeping the bytes (rather than floats) makes sets cheap to hold, select from and
//! hash; conversion to the `[-1, 1]` range the models use happens at the edge, through
//! [`ImageSet::to_unit_range`] or [`byte_to_unit`].
//!
//! Loader errors are [`DataError`]s, each naming the file and what was expected versus
//! found, because the usual failure is a wrong or damaged file and the fix starts with
//! knowing which one.

pub mod augment;
pub mod cifar;
pub mod folder;
pub mod mnist;
pub mod parquet;
pub mod svhn;

use std::path::{Path, PathBuf};

/// Images as bytes in N x C x H x W order (row-major), one label per image.
#[derive(Clone, Debug, PartialEq)]
pub struct ImageSet {
    pub pixels: Vec<u8>,
    pub labels: Vec<u32>,
    pub channels: usize,
    pub height: usize,
    pub width: usize,
}

impl ImageSet {
    /// Number of images (one label per image, so this is the label count).
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// True when the set holds no images.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Bytes per image: C*H*W.
    pub fn image_len(&self) -> usize {
        self.channels * self.height * self.width
    }

    /// The bytes of image `i` (C x H x W). Panics if `i >= len()`, like slice indexing.
    pub fn image(&self, i: usize) -> &[u8] {
        let n = self.image_len();
        &self.pixels[i * n..(i + 1) * n]
    }

    /// Take the given indices, in that order.
    ///
    /// Repeats are allowed (so this also serves for resampling). Panics if an index is
    /// out of range, like slice indexing.
    pub fn select(&self, idx: &[usize]) -> ImageSet {
        let mut pixels = Vec::with_capacity(idx.len() * self.image_len());
        for &i in idx {
            pixels.extend_from_slice(self.image(i));
        }
        ImageSet {
            pixels,
            labels: idx.iter().map(|&i| self.labels[i]).collect(),
            channels: self.channels,
            height: self.height,
            width: self.width,
        }
    }

    /// pixels scaled to [-1, 1]: v/127.5 - 1, as f32
    pub fn to_unit_range(&self) -> Vec<f32> {
        self.pixels.iter().copied().map(byte_to_unit).collect()
    }

    /// How many images carry each label `0..num_classes`.
    ///
    /// Labels `>= num_classes` are not counted (the loaders never produce them), so the
    /// sum can be less than `len()` only when the caller picked too few classes.
    /// The sets one after the other; None when their image shapes differ.
    pub fn concat(sets: &[ImageSet]) -> Option<ImageSet> {
        let first = sets.first()?;
        let mut out = ImageSet { pixels: Vec::new(), labels: Vec::new(), channels: first.channels, height: first.height, width: first.width };
        for s in sets {
            if (s.channels, s.height, s.width) != (out.channels, out.height, out.width) {
                return None;
            }
            out.pixels.extend_from_slice(&s.pixels);
            out.labels.extend_from_slice(&s.labels);
        }
        Some(out)
    }

    pub fn class_counts(&self, num_classes: usize) -> Vec<usize> {
        let mut counts = vec![0usize; num_classes];
        for &l in &self.labels {
            if let Some(c) = counts.get_mut(l as usize) {
                *c += 1;
            }
        }
        counts
    }
}

/// Map one byte to [-1, 1].
///
/// 0 maps to exactly -1 and 255 to exactly 1 (255/127.5 is exact in f32), so the ends of
/// the range survive a round trip through [`crate::grid`].
pub fn byte_to_unit(v: u8) -> f32 {
    v as f32 / 127.5 - 1.0
}

/// Why a data file could not be read or written. Every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The OS (or the gzip decoder) failed on this file.
    #[error("I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A file of a known format whose contents break that format (SVHN .mat, CIFAR-10
    /// binary, image folders): `what` says what was expected and what was found.
    #[error("{path}: {what}")]
    Format { path: PathBuf, what: String },

    /// A required file or directory does not exist.
    #[error("{what} not found: {path}")]
    NotFound { path: PathBuf, what: String },

    /// The IDX magic number says this is not the kind of file expected
    /// (for example a labels file where images were expected).
    #[error("bad IDX magic in {path}: found 0x{found:08x}, expected 0x{expected:08x}")]
    BadMagic {
        path: PathBuf,
        found: u32,
        expected: u32,
    },

    /// The (decompressed) file ends before the header or the payload is complete.
    #[error("truncated file {path}: expected {expected_bytes} bytes (header + payload), found {found_bytes}")]
    Truncated {
        path: PathBuf,
        expected_bytes: u64,
        found_bytes: u64,
    },

    /// The (decompressed) file goes on after the payload the header announces.
    #[error("trailing bytes in {path}: expected {expected_bytes} bytes (header + payload), found {found_bytes}")]
    TrailingBytes {
        path: PathBuf,
        expected_bytes: u64,
        found_bytes: u64,
    },

    /// The header's dimensions multiply past what this machine can address, or a
    /// dimension to be written does not fit the format's u32.
    #[error("dimension overflow in {path}: {what} = {value} is too large")]
    DimensionOverflow {
        path: PathBuf,
        what: String,
        value: u128,
    },

    /// The images file and the labels file disagree on how many items there are.
    #[error("count mismatch: {images_path} holds {images} images but {labels_path} holds {labels} labels")]
    CountMismatch {
        images_path: PathBuf,
        labels_path: PathBuf,
        images: usize,
        labels: usize,
    },

    /// A label outside `0..=max` (reading: the ten digit classes, max 9; writing: one
    /// byte, max 255).
    #[error("label out of range in {path}: item {index} has label {label}, expected 0..={max}")]
    LabelOutOfRange {
        path: PathBuf,
        index: usize,
        label: u32,
        max: u32,
    },

    /// Writing an image set whose channel count the format cannot hold (IDX3 is greyscale).
    #[error("cannot write {path}: image set has {found} channels, expected {expected}")]
    BadChannels {
        path: PathBuf,
        expected: usize,
        found: usize,
    },

    /// Writing an image set whose pixel buffer does not match len x C x H x W.
    #[error("cannot write {path}: image set has {found} pixel bytes, expected {expected} (images x C x H x W)")]
    PixelLenMismatch {
        path: PathBuf,
        expected: usize,
        found: usize,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> ImageSet {
        ImageSet {
            pixels: vec![0, 1, 2, 3, 10, 11, 12, 13, 20, 21, 22, 23],
            labels: vec![7, 8, 9],
            channels: 1,
            height: 2,
            width: 2,
        }
    }

    #[test]
    fn image_set_accessors() {
        let s = tiny();
        assert_eq!(s.len(), 3);
        assert!(!s.is_empty());
        assert_eq!(s.image_len(), 4);
        assert_eq!(s.image(1), &[10, 11, 12, 13]);
    }

    #[test]
    fn select_keeps_order_and_repeats() {
        let s = tiny().select(&[2, 0, 2]);
        assert_eq!(s.labels, vec![9, 7, 9]);
        assert_eq!(s.pixels, vec![20, 21, 22, 23, 0, 1, 2, 3, 20, 21, 22, 23]);
        assert_eq!((s.channels, s.height, s.width), (1, 2, 2));
        assert!(tiny().select(&[]).is_empty());
    }

    #[test]
    fn unit_range_ends_are_exact() {
        assert_eq!(byte_to_unit(0), -1.0);
        assert_eq!(byte_to_unit(255), 1.0);
        assert!((byte_to_unit(128) - 0.003_921_6).abs() < 1e-6);
        let v = tiny().to_unit_range();
        assert_eq!(v.len(), 12);
        assert_eq!(v[0], -1.0);
    }

    #[test]
    fn class_counts_skips_labels_beyond_range() {
        assert_eq!(tiny().class_counts(10), vec![0, 0, 0, 0, 0, 0, 0, 1, 1, 1]);
        assert_eq!(tiny().class_counts(8), vec![0, 0, 0, 0, 0, 0, 0, 1]);
    }

    #[test]
    fn errors_name_path_expected_and_found() {
        let e = DataError::Truncated {
            path: "/x/train-images-idx3-ubyte".into(),
            expected_bytes: 16,
            found_bytes: 3,
        };
        let msg = e.to_string();
        assert!(msg.contains("/x/train-images-idx3-ubyte") && msg.contains("16") && msg.contains('3'));
    }
}

/// Missing files become NotFound (the common case deserves a plain message); anything else
/// stays an Io error with its cause.
pub(crate) fn io_error(path: &Path, source: std::io::Error) -> DataError {
    if source.kind() == std::io::ErrorKind::NotFound {
        DataError::NotFound { path: path.to_path_buf(), what: "file".to_string() }
    } else {
        DataError::Io { path: path.to_path_buf(), source }
    }
}

#[cfg(test)]
pub(crate) mod testutil {
    use std::path::PathBuf;

    /// `path` from `../shared/data`, or None (with a message) where this machine lacks it.
    /// Under CI=true a missing path fails the test: CI has shared/ beside the clone, so a
    /// skip there would hide a broken path.
    pub fn shared_data(test: &str, path: &str) -> Option<PathBuf> {
        let p = PathBuf::from(path);
        if p.exists() {
            return Some(p);
        }
        assert!(std::env::var("CI").as_deref() != Ok("true"), "{test}: {} is missing, and CI=true needs it", p.display());
        eprintln!("{test}: skipped, shared data not found at {}", p.display());
        None
    }
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A fresh folder under the system temp dir, removed on drop.
    pub(crate) struct TempDir(pub(crate) PathBuf);

    impl TempDir {
        pub(crate) fn new(test: &str) -> TempDir {
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            let n = NEXT.fetch_add(1, Ordering::SeqCst);
            let dir = std::env::temp_dir().join(format!("stages-data-test-{}-{test}-{n}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }

        /// `self/rel`, with its parent folders created.
        pub(crate) fn path(&self, rel: &str) -> PathBuf {
            let p = self.0.join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            p
        }
    }

    /// Asserts that a loader error names the file and says each of `parts`.
    pub(crate) fn check_error_names(err: &super::DataError, path: &std::path::Path, parts: &[&str]) {
        let msg = err.to_string();
        assert!(msg.contains(&path.display().to_string()), "{msg}");
        for p in parts {
            assert!(msg.contains(p), "{msg} lacks {p}");
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}
