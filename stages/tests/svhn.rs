//! `stages::data::svhn::load_svhn` on MAT-files written by the test writer
//! (`support/mat_writer.rs`): every layout the loader reads, and every kind of bad file it
//! must report by name.

#[path = "support/mat_writer.rs"]
mod mat_writer;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use flate2::read::ZlibDecoder;
use flate2::write::ZlibEncoder;
use flate2::Compression;
use mat_writer::*;
use stages::data::svhn::{load_svhn, CHANNELS, IMAGE_BYTES, SIDE};
use stages::data::{DataError, ImageSet};

const SHARED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/data/svhn");

/// A fresh folder under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(test: &str) -> TempDir {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!(
            "stages-svhn-test-{}-{test}-{n}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.0.join(rel)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Asserts that a loader error names the file and says each of `parts`.
fn check_error_names(err: &DataError, path: &Path, parts: &[&str]) {
    let msg = err.to_string();
    assert!(msg.contains(&path.display().to_string()), "{msg}");
    for p in parts {
        assert!(msg.contains(p), "{msg} lacks {p}");
    }
}

/// The value of element (row i, column j, channel k, image n) in the test images.
fn pattern(i: usize, j: usize, k: usize, n: usize) -> u8 {
    ((i * 7 + j * 3 + k * 50 + n) % 256) as u8
}

/// `n` images with pixel[n][k][i][j] = pattern(i, j, k, n), labels cycling the digits.
fn synthetic(n: usize) -> ImageSet {
    let mut pixels = Vec::with_capacity(n * IMAGE_BYTES);
    for n in 0..n {
        for k in 0..CHANNELS {
            for i in 0..SIDE {
                for j in 0..SIDE {
                    pixels.push(pattern(i, j, k, n));
                }
            }
        }
    }
    ImageSet {
        pixels,
        labels: (0..n as u32).map(|i| (i * 3) % 10).collect(),
        channels: CHANNELS,
        height: SIDE,
        width: SIDE,
    }
}

/// X as MATLAB stores it, built from the definition (element (i, j, k, n) at
/// i + 32j + 1024k + 3072n), independently of the writer and the loader.
fn column_major_x(n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n * IMAGE_BYTES];
    for nn in 0..n {
        for k in 0..CHANNELS {
            for j in 0..SIDE {
                for i in 0..SIDE {
                    v[i + 32 * j + 1024 * k + 3072 * nn] = pattern(i, j, k, nn);
                }
            }
        }
    }
    v
}

/// SVHN's stored labels for `labels`: the digit 0 as 10.
fn stored(labels: &[u32]) -> Vec<f64> {
    labels
        .iter()
        .map(|&l| if l == 0 { 10.0 } else { l as f64 })
        .collect()
}

/// `X` of `n` pattern images with the given dimensions, built from the definition.
fn x_var(n: usize, dims: &[usize]) -> VarOut<'static> {
    VarOut {
        name: "X",
        class: MX_UINT8,
        dims: dims.to_vec(),
        storage: MI_UINT8,
        body: Body::Raw(column_major_x(n)),
    }
}

/// `y` as uint8 holding exactly `values`.
fn y_var(values: &[f64]) -> VarOut<'static> {
    raw(
        "y",
        MX_UINT8,
        &[values.len(), 1],
        MI_UINT8,
        values,
        Order::Little,
    )
}

fn le_u32(bytes: &[u8], at: usize) -> u64 {
    Order::Little.uint(&bytes[at..at + 4])
}

/// The top-level elements of a little-endian file, each as the plain miMATRIX element it
/// holds (tag and padding included): compressed ones inflated, to compare with
/// [`matrix_bytes`] of the variable the file should hold.
fn elements(bytes: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut at = 128;
    while at + 8 <= bytes.len() {
        let (ty, n) = (le_u32(bytes, at), le_u32(bytes, at + 4) as usize);
        let data = &bytes[at + 8..at + 8 + n];
        if ty == MI_COMPRESSED as u64 {
            let mut inflated = Vec::new();
            ZlibDecoder::new(data).read_to_end(&mut inflated).unwrap();
            out.push(inflated);
            at += 8 + n;
        } else {
            out.push(bytes[at..at + 8 + pad8(n as u64) as usize].to_vec());
            at += 8 + pad8(n as u64) as usize;
        }
    }
    out
}

#[test]
#[ignore = "needs the official test_32x32.mat in ../shared/data/svhn, which shared/ does not ship"]
fn real_test_split_counts_if_present() {
    let path = PathBuf::from(SHARED).join("test_32x32.mat");
    if !path.is_file() {
        eprintln!(
            "real_test_split_counts_if_present: skipped, {} not found",
            path.display()
        );
        return;
    }
    let set = load_svhn(&path).unwrap();
    assert_eq!(set.len(), 26_032);
    assert_eq!((set.channels, set.height, set.width), (3, 32, 32));
    assert_eq!(
        set.class_counts(10),
        vec![1744, 5099, 4149, 2882, 2523, 2384, 1977, 2019, 1660, 1595]
    );
}

#[test]
fn round_trip_compressed_and_plain() {
    let tmp = TempDir::new("roundtrip");
    let set = synthetic(23);
    assert_eq!(set.labels[0], 0);
    for compressed in [true, false] {
        for y_as_double in [false, true] {
            let path = tmp.path(&format!("svhn-{compressed}-{y_as_double}.mat"));
            write_svhn_mat(&path, &set, compressed, y_as_double).unwrap();
            assert_eq!(load_svhn(&path).unwrap(), set);

            let bytes = std::fs::read(&path).unwrap();
            assert_eq!(&bytes[..19], b"MATLAB 5.0 MAT-file");
            assert_eq!(&bytes[124..128], &[0x00, 0x01, b'I', b'M']);
            let first_type = if compressed { MI_COMPRESSED } else { MI_MATRIX };
            assert_eq!(le_u32(&bytes, 128), first_type as u64);

            // X column-major as defined, y with the digit 0 as 10, in the class asked for
            let y = stored(&set.labels);
            assert_eq!(y[0], 10.0);
            let (class, ty) = if y_as_double {
                (MX_DOUBLE, MI_DOUBLE)
            } else {
                (MX_UINT8, MI_UINT8)
            };
            let want = [
                x_var(23, &[32, 32, 3, 23]),
                raw("y", class, &[23, 1], ty, &y, Order::Little),
            ];
            let want: Vec<Vec<u8>> = want.iter().map(|v| matrix_bytes(v, layout(false))).collect();
            assert!(elements(&bytes) == want, "compressed {compressed}, double {y_as_double}");
        }
    }
}

/// The loader's result does not depend on how the file stores its variables.
#[test]
fn compressed_and_uncompressed_files_load_identically() {
    let tmp = TempDir::new("same");
    let set = synthetic(37);
    for y_as_double in [false, true] {
        let zipped = tmp.path("compressed.mat");
        let plain = tmp.path("plain.mat");
        write_svhn_mat(&zipped, &set, true, y_as_double).unwrap();
        write_svhn_mat(&plain, &set, false, y_as_double).unwrap();
        let (a, b) = (std::fs::read(&zipped).unwrap(), std::fs::read(&plain).unwrap());
        assert_eq!(le_u32(&a, 128), MI_COMPRESSED as u64);
        assert_eq!(le_u32(&b, 128), MI_MATRIX as u64);
        assert!(a.len() < b.len(), "{} vs {} bytes", a.len(), b.len());
        let from_zipped = load_svhn(&zipped).unwrap();
        let from_plain = load_svhn(&plain).unwrap();
        assert_eq!(from_zipped, from_plain);
        assert_eq!(from_zipped, set);
    }
}

#[test]
fn round_trip_zero_and_one_image() {
    let tmp = TempDir::new("edge");
    for n in [0, 1] {
        for compressed in [true, false] {
            let path = tmp.path("edge.mat");
            let set = synthetic(n);
            write_svhn_mat(&path, &set, compressed, false).unwrap();
            assert_eq!(load_svhn(&path).unwrap(), set);
            // MATLAB drops the trailing singleton: one image is 32x32x3
            let dims: &[usize] = if n == 1 {
                &[32, 32, 3]
            } else {
                &[32, 32, 3, 0]
            };
            let x = &elements(&std::fs::read(&path).unwrap())[0];
            assert!(*x == matrix_bytes(&x_var(n, dims), layout(false)), "{n} images");
        }
    }
}

#[test]
fn column_major_transposition_is_exact() {
    let tmp = TempDir::new("transpose");
    let n = 300;
    let labels: Vec<u32> = (0..n as u32).map(|i| (i * 7) % 10).collect();
    for compressed in [true, false] {
        let path = tmp.path("x.mat");
        let vars = [x_var(n, &[32, 32, 3, n]), y_var(&stored(&labels))];
        write_mat(&path, &vars, layout(compressed)).unwrap();
        let set = load_svhn(&path).unwrap();
        assert_eq!(
            (set.len(), set.channels, set.height, set.width),
            (n, 3, 32, 32)
        );
        assert_eq!(set.labels, labels);
        for nn in 0..n {
            for k in 0..3 {
                for i in 0..32 {
                    for j in 0..32 {
                        let got = set.pixels[nn * 3072 + k * 1024 + i * 32 + j];
                        assert_eq!(got, pattern(i, j, k, nn), "n={nn} k={k} i={i} j={j}");
                    }
                }
            }
        }
        assert_eq!(set.pixels, synthetic(n).pixels);
    }
}

#[test]
fn y_stored_as_double_or_narrower() {
    let tmp = TempDir::new("ydouble");
    let labels = [1u32, 0, 9, 5, 0, 3, 7];
    let values_stored = stored(&labels);
    let n = labels.len();
    // (class, storage): plain double, double stored as miUINT8 the way MATLAB saves
    // small whole numbers, double as miINT16, single, int32
    let forms = [
        (MX_DOUBLE, MI_DOUBLE),
        (MX_DOUBLE, MI_UINT8),
        (MX_DOUBLE, MI_INT16),
        (MX_SINGLE, MI_SINGLE),
        (MX_INT32, MI_INT32),
    ];
    for compressed in [true, false] {
        for (class, ty) in forms {
            let path = tmp.path("y.mat");
            let y = raw("y", class, &[n, 1], ty, &values_stored, Order::Little);
            write_mat(&path, &[x_var(n, &[32, 32, 3, n]), y], layout(compressed)).unwrap();
            let set = load_svhn(&path).unwrap();
            assert_eq!(set.labels, labels, "class {class} storage {ty}");
        }
    }
}

#[test]
fn small_element_names_and_data_are_read() {
    let tmp = TempDir::new("small");
    // 3 labels: the uint8 real part of y (3 bytes) is a small element too
    let set = synthetic(3);
    let path = tmp.path("small.mat");
    write_svhn_mat(&path, &set, false, false).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    // header 128, matrix tag 8, flags 16, dims 8 + 16: the name tag is at 176
    assert_eq!(le_u32(&bytes, 176), (1 << 16) | MI_INT8 as u64);
    assert_eq!(&bytes[180..184], b"X\0\0\0");
    let y_at = 128 + 8 + le_u32(&bytes, 132) as usize;
    // y: tag 8, flags 16, dims 16, name 8 (small), then the small real part
    assert_eq!(le_u32(&bytes, y_at + 48), (3 << 16) | MI_UINT8 as u64);
    assert_eq!(&bytes[y_at + 52..y_at + 56], &[10, 3, 6, 0]);
    assert_eq!(load_svhn(&path).unwrap(), set);

    // the same variables with every sub-element in the regular form
    for compressed in [true, false] {
        let regular = Layout {
            small_elements: false,
            ..layout(compressed)
        };
        let vars = [x_var(3, &[32, 32, 3, 3]), y_var(&stored(&set.labels))];
        write_mat(&path, &vars, regular).unwrap();
        if !compressed {
            let bytes = std::fs::read(&path).unwrap();
            assert_eq!(le_u32(&bytes, 176), MI_INT8 as u64);
            assert_eq!(le_u32(&bytes, 180), 1);
        }
        assert_eq!(load_svhn(&path).unwrap(), set);
    }
}

#[test]
fn unrelated_variables_are_skipped() {
    let tmp = TempDir::new("skip");
    let set = synthetic(4);
    let lo = Order::Little;
    let chars: Vec<f64> = "some notes".bytes().map(|b| b as f64).collect();
    for compressed in [true, false] {
        let path = tmp.path("skip.mat");
        let vars = [
            raw(
                "header_information",
                MX_DOUBLE,
                &[1, 2],
                MI_DOUBLE,
                &[3.5, -2.0],
                lo,
            ),
            x_var(4, &[32, 32, 3, 4]),
            raw("notes", MX_CHAR, &[1, chars.len()], MI_UINT16, &chars, lo),
            y_var(&stored(&set.labels)),
            raw(
                "z",
                MX_INT16,
                &[2, 2],
                MI_INT16,
                &[1.0, -2.0, 300.0, 4.0],
                lo,
            ),
            raw("X", MX_DOUBLE, &[1, 1], MI_DOUBLE, &[7.0], lo),
        ];
        write_mat(&path, &vars, layout(compressed)).unwrap();
        // an element of a type the reader does not know, right after the header, and a
        // small top-level element, and zero padding at the end
        let mut bytes = std::fs::read(&path).unwrap();
        let mut odd = Vec::new();
        put_sub(&mut odd, lo, 99, b"hello", false);
        put_sub(&mut odd, lo, MI_UINT8, b"ab", true);
        bytes.splice(128..128, odd);
        bytes.extend_from_slice(&[0, 0, 0, 0]);
        std::fs::write(&path, &bytes).unwrap();

        assert_eq!(load_svhn(&path).unwrap(), set);
    }
}

#[test]
fn big_endian_file_loads() {
    let tmp = TempDir::new("bigendian");
    let set = synthetic(5);
    let be = Layout {
        order: Order::Big,
        compressed: false,
        small_elements: true,
    };
    for compressed in [true, false] {
        let path = tmp.path("be.mat");
        let y_values = stored(&set.labels);
        let y = raw("y", MX_DOUBLE, &[5, 1], MI_DOUBLE, &y_values, Order::Big);
        let z = raw("z", MX_INT16, &[1, 2], MI_INT16, &[-3.0, 258.0], Order::Big);
        write_mat(
            &path,
            &[x_var(5, &[32, 32, 3, 5]), y, z],
            Layout { compressed, ..be },
        )
        .unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(&bytes[124..128], &[0x01, 0x00, b'M', b'I']);
        assert_eq!(load_svhn(&path).unwrap(), set);
    }
}

#[test]
fn not_a_mat_file_is_reported() {
    let tmp = TempDir::new("notmat");
    let path = tmp.path("f.mat");

    std::fs::write(&path, b"hello, this is not a MAT-file\n").unwrap();
    let err = load_svhn(&path).unwrap_err();
    assert!(matches!(err, DataError::Format { .. }), "{err:?}");
    check_error_names(
        &err,
        &path,
        &["not a MATLAB Level 5 MAT-file", "128-byte", "30-byte"],
    );

    std::fs::write(&path, [b'x'; 300]).unwrap();
    let err = load_svhn(&path).unwrap_err();
    check_error_names(&err, &path, &["'IM' or 'MI'", "found 'xx'"]);

    write_svhn_mat(&path, &synthetic(2), true, false).unwrap();
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[124..126].copy_from_slice(&[0x00, 0x02]);
    std::fs::write(&path, &bytes).unwrap();
    let err = load_svhn(&path).unwrap_err();
    assert!(matches!(err, DataError::Format { .. }), "{err:?}");
    check_error_names(&err, &path, &["0x0200", "expected 0x0100", "7.3", "HDF5"]);

    std::fs::write(&path, &bytes[..50]).unwrap();
    let err = load_svhn(&path).unwrap_err();
    assert!(
        matches!(
            err,
            DataError::Truncated {
                expected_bytes: 128,
                found_bytes: 50,
                ..
            }
        ),
        "{err:?}"
    );

    let gone = tmp.path("no-such.mat");
    let err = load_svhn(&gone).unwrap_err();
    assert!(matches!(err, DataError::NotFound { .. }), "{err:?}");
    check_error_names(&err, &gone, &[]);
}

#[test]
fn truncated_file_is_reported() {
    let tmp = TempDir::new("truncated");
    let path = tmp.path("t.mat");
    for compressed in [false, true] {
        write_svhn_mat(&path, &synthetic(6), compressed, false).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let x_end = 128 + 8 + le_u32(&bytes, 132);
        // in the middle of X's data (plain) or of X's zlib stream (compressed)
        let cut = (128 + x_end) / 2;
        std::fs::write(&path, &bytes[..cut as usize]).unwrap();
        let err = load_svhn(&path).unwrap_err();
        assert!(
            matches!(err, DataError::Truncated { expected_bytes, found_bytes, .. }
                if expected_bytes == x_end && found_bytes == cut),
            "{err:?}"
        );
        check_error_names(&err, &path, &[&x_end.to_string(), &cut.to_string()]);
        // in the middle of y's tag
        std::fs::write(&path, &bytes[..x_end as usize + 5]).unwrap();
        let err = load_svhn(&path).unwrap_err();
        assert!(
            matches!(err, DataError::Truncated { expected_bytes, found_bytes, .. }
                if expected_bytes == x_end + 8 && found_bytes == x_end + 5),
            "{err:?}"
        );
        // y cut off entirely: X alone is a missing y
        std::fs::write(&path, &bytes[..x_end as usize]).unwrap();
        let err = load_svhn(&path).unwrap_err();
        check_error_names(&err, &path, &["\"y\"", "found \"X\""]);
    }
}

/// A stored label 0, a missing `y` and a file cut short are each an error naming the file.
#[test]
fn label_zero_missing_y_and_truncation_name_the_file() {
    let tmp = TempDir::new("named");
    let path = tmp.path("bad.mat");
    for compressed in [true, false] {
        let vars = [x_var(3, &[32, 32, 3, 3]), y_var(&[10.0, 0.0, 4.0])];
        write_mat(&path, &vars, layout(compressed)).unwrap();
        let err = load_svhn(&path).unwrap_err();
        check_error_names(&err, &path, &["item 1 has label 0", "expected 1..=10"]);
        assert!(!err.to_string().contains("0..=10"), "{err}");

        write_mat(&path, &[x_var(3, &[32, 32, 3, 3])], layout(compressed)).unwrap();
        let err = load_svhn(&path).unwrap_err();
        check_error_names(&err, &path, &["variable named \"y\"", "found \"X\""]);

        write_svhn_mat(&path, &synthetic(3), compressed, true).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 3]).unwrap();
        let err = load_svhn(&path).unwrap_err();
        assert!(matches!(err, DataError::Truncated { .. }), "{err:?}");
        check_error_names(&err, &path, &[&(bytes.len() - 3).to_string()]);
    }
}

#[test]
fn missing_x_or_y_is_reported() {
    let tmp = TempDir::new("missing");
    let path = tmp.path("m.mat");
    let lo = Order::Little;
    for compressed in [true, false] {
        let meta = raw("meta", MX_DOUBLE, &[1, 1], MI_DOUBLE, &[1.0], lo);
        write_mat(&path, &[meta, y_var(&[1.0, 2.0])], layout(compressed)).unwrap();
        let err = load_svhn(&path).unwrap_err();
        assert!(matches!(err, DataError::Format { .. }), "{err:?}");
        check_error_names(
            &err,
            &path,
            &["variable named \"X\"", "found \"meta\", \"y\""],
        );

        write_mat(&path, &[x_var(2, &[32, 32, 3, 2])], layout(compressed)).unwrap();
        let err = load_svhn(&path).unwrap_err();
        check_error_names(&err, &path, &["variable named \"y\"", "found \"X\""]);

        write_mat(&path, &[], layout(compressed)).unwrap();
        let err = load_svhn(&path).unwrap_err();
        check_error_names(&err, &path, &["\"X\"", "no variables"]);
    }
}

#[test]
fn wrong_x_dims_or_class_are_reported() {
    let tmp = TempDir::new("xdims");
    let path = tmp.path("x.mat");
    let y = || y_var(&[1.0; 5]);
    for compressed in [true, false] {
        let small = ImageSet {
            pixels: vec![7; 5 * 3 * 28 * 28],
            labels: vec![1; 5],
            channels: 3,
            height: 28,
            width: 28,
        };
        write_svhn_mat(&path, &small, compressed, false).unwrap();
        let err = load_svhn(&path).unwrap_err();
        assert!(matches!(err, DataError::Format { .. }), "{err:?}");
        check_error_names(
            &err,
            &path,
            &[
                "variable X",
                "expected dimensions 32x32x3xN",
                "found 28x28x3x5",
            ],
        );

        for dims in [vec![3072, 5], vec![32, 32, 3, 5, 1], vec![32, 3, 32, 5]] {
            write_mat(&path, &[x_var(5, &dims), y()], layout(compressed)).unwrap();
            let err = load_svhn(&path).unwrap_err();
            let shown: Vec<String> = dims.iter().map(|d| d.to_string()).collect();
            check_error_names(
                &err,
                &path,
                &["32x32x3xN", &format!("found {}", shown.join("x"))],
            );
        }

        let x = raw(
            "X",
            MX_DOUBLE,
            &[32, 32, 3, 1],
            MI_UINT8,
            &[0.0; 3072],
            Order::Little,
        );
        write_mat(&path, &[x, y()], layout(compressed)).unwrap();
        let err = load_svhn(&path).unwrap_err();
        check_error_names(
            &err,
            &path,
            &["expected a real uint8 array", "found a double array"],
        );

        // dimensions that disagree with the data
        write_mat(&path, &[x_var(5, &[32, 32, 3, 6]), y()], layout(compressed)).unwrap();
        let err = load_svhn(&path).unwrap_err();
        check_error_names(
            &err,
            &path,
            &["32x32x3x6 give 18432 elements", "holds 15360 bytes"],
        );
    }
}

#[test]
fn count_mismatch_is_reported() {
    let tmp = TempDir::new("count");
    let path = tmp.path("c.mat");
    for compressed in [true, false] {
        let vars = [x_var(5, &[32, 32, 3, 5]), y_var(&[1.0, 2.0, 3.0, 4.0])];
        write_mat(&path, &vars, layout(compressed)).unwrap();
        let err = load_svhn(&path).unwrap_err();
        assert!(
            matches!(
                err,
                DataError::CountMismatch {
                    images: 5,
                    labels: 4,
                    ..
                }
            ),
            "{err:?}"
        );
        check_error_names(&err, &path, &["5 images", "4 labels"]);
    }
}

#[test]
fn labels_outside_one_to_ten_are_reported() {
    let tmp = TempDir::new("labels");
    let path = tmp.path("l.mat");
    let lo = Order::Little;
    for compressed in [true, false] {
        for (values, index, label) in [
            (vec![1.0, 2.0, 0.0, 4.0], 2usize, 0u32),
            (vec![10.0, 11.0, 1.0, 4.0], 1, 11),
            (vec![1.0, 2.0, 3.0, 255.0], 3, 255),
        ] {
            write_mat(
                &path,
                &[x_var(4, &[32, 32, 3, 4]), y_var(&values)],
                layout(compressed),
            )
            .unwrap();
            let err = load_svhn(&path).unwrap_err();
            assert!(matches!(err, DataError::Format { .. }), "{err:?}");
            check_error_names(
                &err,
                &path,
                &[
                    "label out of range",
                    &format!("item {index} has label {label}"),
                    "expected 1..=10",
                ],
            );
        }
        for bad in [2.5, -1.0, f64::NAN] {
            let y = raw("y", MX_DOUBLE, &[2, 1], MI_DOUBLE, &[1.0, bad], lo);
            write_mat(&path, &[x_var(2, &[32, 32, 3, 2]), y], layout(compressed)).unwrap();
            let err = load_svhn(&path).unwrap_err();
            assert!(matches!(err, DataError::Format { .. }), "{err:?}");
            check_error_names(&err, &path, &["item 1 is", "1..=10"]);
        }
    }
}

#[test]
fn corrupt_zlib_data_is_reported() {
    let tmp = TempDir::new("zlib");
    let path = tmp.path("z.mat");
    write_svhn_mat(&path, &synthetic(8), true, false).unwrap();
    let good = std::fs::read(&path).unwrap();
    let x_len = le_u32(&good, 132) as usize;
    let x_end = 136 + x_len;
    // a broken zlib header
    let mut bytes = good.clone();
    bytes[136] = 0xff;
    bytes[137] = 0xff;
    std::fs::write(&path, &bytes).unwrap();
    let err = load_svhn(&path).unwrap_err();
    assert!(matches!(err, DataError::Format { .. }), "{err:?}");
    check_error_names(
        &err,
        &path,
        &["compressed data element at byte 128", "corrupt zlib data"],
    );

    // garbage in the middle of the stream
    let mut bytes = good.clone();
    let mid = 136 + x_len / 2;
    for (i, b) in bytes[mid..mid + 64].iter_mut().enumerate() {
        *b = (i * 37 + 11) as u8;
    }
    std::fs::write(&path, &bytes).unwrap();
    let err = load_svhn(&path).unwrap_err();
    assert!(matches!(err, DataError::Format { .. }), "{err:?}");
    check_error_names(&err, &path, &["compressed data element at byte 128"]);

    // a wrong Adler-32 (the last 4 bytes of the stream): the data inflates fine
    let mut bytes = good.clone();
    bytes[x_end - 1] ^= 0x5a;
    std::fs::write(&path, &bytes).unwrap();
    let err = load_svhn(&path).unwrap_err();
    assert!(matches!(err, DataError::Format { .. }), "{err:?}");
    check_error_names(&err, &path, &["corrupt zlib data"]);

    // a stream that ends early although the file is complete
    let mut bytes = good[..128].to_vec();
    let mut z = ZlibEncoder::new(Vec::new(), Compression::default());
    z.write_all(&good_plain_x()[..2000]).unwrap();
    let z = z.finish().unwrap();
    put_tag(&mut bytes, Order::Little, MI_COMPRESSED, z.len() as u64);
    bytes.extend_from_slice(&z);
    std::fs::write(&path, &bytes).unwrap();
    let err = load_svhn(&path).unwrap_err();
    assert!(matches!(err, DataError::Format { .. }), "{err:?}");
    check_error_names(&err, &path, &["zlib stream ends after 2000 inflated bytes"]);
}

/// The plain miMATRIX element of X for synthetic(8), tag included.
fn good_plain_x() -> Vec<u8> {
    let set = synthetic(8);
    let x = VarOut {
        name: "X",
        class: MX_UINT8,
        dims: vec![32, 32, 3, 8],
        storage: MI_UINT8,
        body: Body::ColumnMajor(&set),
    };
    matrix_bytes(&x, layout(false))
}

#[test]
fn damaged_files_never_panic() {
    let tmp = TempDir::new("damaged");
    let path = tmp.path("d.mat");
    for compressed in [true, false] {
        write_svhn_mat(&path, &synthetic(2), compressed, true).unwrap();
        let good = std::fs::read(&path).unwrap();
        let len = good.len();
        let interesting = |p: usize| p < 400 || p + 300 > len || p.is_multiple_of(53);
        for cut in (0..len).filter(|&p| interesting(p)) {
            std::fs::write(&path, &good[..cut]).unwrap();
            assert!(load_svhn(&path).is_err(), "cut at {cut} loaded");
        }
        for pos in (0..len).filter(|&p| interesting(p)) {
            for flip in [0xffu8, 0x01, 0x80] {
                let mut bytes = good.clone();
                bytes[pos] ^= flip;
                std::fs::write(&path, &bytes).unwrap();
                let _ = load_svhn(&path);
            }
        }
    }
}

#[test]
fn writer_rejects_sets_it_cannot_write() {
    let tmp = TempDir::new("writer");
    let path = tmp.path("w.mat");
    let mut set = synthetic(3);
    set.labels[1] = 10;
    let err = write_svhn_mat(&path, &set, true, false).unwrap_err();
    assert!(
        matches!(
            err,
            DataError::LabelOutOfRange {
                index: 1,
                label: 10,
                max: 9,
                ..
            }
        ),
        "{err:?}"
    );
    let mut set = synthetic(3);
    set.pixels.pop();
    let err = write_svhn_mat(&path, &set, false, false).unwrap_err();
    assert!(
        matches!(
            err,
            DataError::PixelLenMismatch {
                expected: 9216,
                found: 9215,
                ..
            }
        ),
        "{err:?}"
    );
}
