//! A MATLAB Level 5 MAT-file writer for tests: SVHN-format files (`X` uint8 32 x 32 x 3 x N,
//! `y` N x 1 with the digit 0 written as 10), plain (`miMATRIX`) or zlib-compressed
//! (`miCOMPRESSED`), plus the lower-level pieces tests use to write files of every form and
//! every kind of damage the loader must handle.
//!
//! Not part of the library: `stages/tests/svhn.rs` uses it as `mod support`, and the root
//! crate's `tests/cli.rs` includes it with `#[path]`.

#![allow(dead_code)]

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::Path;

use flate2::write::ZlibEncoder;
use flate2::Compression;
use stages::data::{DataError, ImageSet};

/// The label SVHN writes for the digit 0.
pub const ZERO_LABEL: u32 = 10;

/// MATLAB array classes (the low byte of the array flags).
pub const MX_CHAR: u8 = 4;
pub const MX_DOUBLE: u8 = 6;
pub const MX_SINGLE: u8 = 7;
pub const MX_INT8: u8 = 8;
pub const MX_UINT8: u8 = 9;
pub const MX_INT16: u8 = 10;
pub const MX_INT32: u8 = 12;

/// Data element types (MAT-file format reference, "MAT-File Data Types").
pub const MI_INT8: u32 = 1;
pub const MI_UINT8: u32 = 2;
pub const MI_INT16: u32 = 3;
pub const MI_UINT16: u32 = 4;
pub const MI_INT32: u32 = 5;
pub const MI_UINT32: u32 = 6;
pub const MI_SINGLE: u32 = 7;
pub const MI_DOUBLE: u32 = 9;
pub const MI_INT64: u32 = 12;
pub const MI_UINT64: u32 = 13;
pub const MI_MATRIX: u32 = 14;
pub const MI_COMPRESSED: u32 = 15;

/// The version field of every Level 5 file.
const VERSION_5: u16 = 0x0100;

/// Byte order of a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Order {
    Little,
    Big,
}

impl Order {
    /// The unsigned integer in `b` (1 to 8 bytes).
    pub fn uint(self, b: &[u8]) -> u64 {
        let fold = |acc: u64, &x: &u8| (acc << 8) | x as u64;
        match self {
            Order::Big => b.iter().fold(0, fold),
            Order::Little => b.iter().rev().fold(0, fold),
        }
    }

    /// Append the low `size` bytes of `v` in this order.
    pub fn put(self, v: u64, size: usize, out: &mut Vec<u8>) {
        let le = v.to_le_bytes();
        match self {
            Order::Little => out.extend_from_slice(&le[..size]),
            Order::Big => out.extend(le[..size].iter().rev()),
        }
    }
}

/// Bytes per value of a numeric storage type.
fn storage_size(ty: u32) -> usize {
    match ty {
        MI_INT8 | MI_UINT8 => 1,
        MI_INT16 | MI_UINT16 => 2,
        MI_INT32 | MI_UINT32 | MI_SINGLE => 4,
        _ => 8,
    }
}

/// `n` rounded up to the 8-byte boundary every regular element is padded to.
pub fn pad8(n: u64) -> u64 {
    n.div_ceil(8) * 8
}

/// How to lay a file out.
#[derive(Clone, Copy, Debug)]
pub struct Layout {
    pub order: Order,
    /// Each variable as an miCOMPRESSED zlib stream rather than a plain miMATRIX.
    pub compressed: bool,
    /// Names and data of 1..=4 bytes in the small element form, as MATLAB does.
    pub small_elements: bool,
}

/// Little-endian with small elements, as MATLAB writes.
pub fn layout(compressed: bool) -> Layout {
    Layout {
        order: Order::Little,
        compressed,
        small_elements: true,
    }
}

/// One variable to write. The real part's byte count is whatever `body` holds, not checked
/// against `dims`, so tests can write inconsistent files.
pub struct VarOut<'a> {
    pub name: &'a str,
    pub class: u8,
    pub dims: Vec<usize>,
    pub storage: u32,
    pub body: Body<'a>,
}

/// The bytes of a real part.
pub enum Body<'a> {
    /// Already in storage type and file byte order.
    Raw(Vec<u8>),
    /// The pixels of a set, written column-major (H x W x C x N) on the fly.
    ColumnMajor(&'a ImageSet),
}

impl Body<'_> {
    fn len(&self) -> u64 {
        match self {
            Body::Raw(b) => b.len() as u64,
            Body::ColumnMajor(set) => set.pixels.len() as u64,
        }
    }

    fn write_to(&self, w: &mut dyn Write) -> io::Result<()> {
        match self {
            Body::Raw(b) => w.write_all(b),
            Body::ColumnMajor(set) => {
                let (c, h, wd) = (set.channels, set.height, set.width);
                let mut buf = vec![0u8; set.image_len()];
                for n in 0..set.len() {
                    let img = set.image(n);
                    let mut out = buf.iter_mut();
                    for k in 0..c {
                        for j in 0..wd {
                            for i in 0..h {
                                if let Some(b) = out.next() {
                                    *b = img[k * h * wd + i * wd + j];
                                }
                            }
                        }
                    }
                    w.write_all(&buf)?;
                }
                Ok(())
            }
        }
    }
}

/// A variable whose real part is `values` in storage type `ty` and byte order `order`.
pub fn raw<'a>(
    name: &'a str,
    class: u8,
    dims: &[usize],
    ty: u32,
    values: &[f64],
    order: Order,
) -> VarOut<'a> {
    VarOut {
        name,
        class,
        dims: dims.to_vec(),
        storage: ty,
        body: Body::Raw(encode_values(order, ty, values)),
    }
}

/// MATLAB keeps at least two dimensions and drops trailing singletons beyond them.
pub fn matlab_dims(mut dims: Vec<usize>) -> Vec<usize> {
    while dims.len() > 2 && dims.last() == Some(&1) {
        dims.pop();
    }
    dims
}

/// `values` in storage type `ty` and byte order `order` (saturating, like `as`).
pub fn encode_values(order: Order, ty: u32, values: &[f64]) -> Vec<u8> {
    let size = storage_size(ty);
    let mut out = Vec::with_capacity(values.len() * size);
    for &v in values {
        let bits = match ty {
            MI_SINGLE => (v as f32).to_bits() as u64,
            MI_DOUBLE => v.to_bits(),
            MI_INT8 | MI_INT16 | MI_INT32 | MI_INT64 => v as i64 as u64,
            _ => v as u64,
        };
        order.put(bits, size, &mut out);
    }
    out
}

fn io_err(path: &Path) -> impl Fn(io::Error) -> DataError + '_ {
    move |source| DataError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Write `set` the way the official SVHN files are laid out: `X` (uint8,
/// H x W x C x N, column-major) then `y` (N x 1, digit 0 written as 10).
///
/// `compressed` stores each variable as a zlib `miCOMPRESSED` element (as MATLAB 7 does),
/// otherwise as a plain `miMATRIX`. `y_as_double` makes `y` class double stored as
/// `miDOUBLE`, otherwise uint8. Like MATLAB, names and data of at most 4 bytes use the
/// small element form and trailing singleton dimensions of `X` are dropped. Any C x H x W
/// is written (so tests can make files of the wrong shape).
pub fn write_svhn_mat(
    path: &Path,
    set: &ImageSet,
    compressed: bool,
    y_as_double: bool,
) -> Result<(), DataError> {
    let expected = set.len() as u128 * set.image_len() as u128;
    if expected != set.pixels.len() as u128 {
        return Err(DataError::PixelLenMismatch {
            path: path.to_path_buf(),
            expected: usize::try_from(expected).unwrap_or(usize::MAX),
            found: set.pixels.len(),
        });
    }
    let mut stored = Vec::with_capacity(set.len());
    for (index, &label) in set.labels.iter().enumerate() {
        if label > 9 {
            return Err(DataError::LabelOutOfRange {
                path: path.to_path_buf(),
                index,
                label,
                max: 9,
            });
        }
        stored.push(if label == 0 { ZERO_LABEL } else { label } as f64);
    }
    let x = VarOut {
        name: "X",
        class: MX_UINT8,
        dims: matlab_dims(vec![set.height, set.width, set.channels, set.len()]),
        storage: MI_UINT8,
        body: Body::ColumnMajor(set),
    };
    let (class, storage) = if y_as_double {
        (MX_DOUBLE, MI_DOUBLE)
    } else {
        (MX_UINT8, MI_UINT8)
    };
    let y = raw("y", class, &[set.len(), 1], storage, &stored, Order::Little);
    write_mat(path, &[x, y], layout(compressed))
}

/// Write a MAT-file holding `vars`, laid out as `layout` says.
pub fn write_mat(path: &Path, vars: &[VarOut], layout: Layout) -> Result<(), DataError> {
    let io_err = io_err(path);
    let mut out = BufWriter::new(File::create(path).map_err(&io_err)?);
    out.write_all(&header_bytes(layout.order)).map_err(&io_err)?;
    for var in vars {
        let contents = matrix_len(path, var, layout.small_elements)?;
        if layout.compressed {
            let mut z = ZlibEncoder::new(Vec::new(), Compression::default());
            write_matrix(&mut z, var, contents, layout).map_err(&io_err)?;
            let z = z.finish().map_err(&io_err)?;
            let n = fits_u32(
                path,
                &format!("compressed bytes of variable {:?}", var.name),
                z.len() as u64,
            )?;
            let mut tag = Vec::new();
            put_tag(&mut tag, layout.order, MI_COMPRESSED, n);
            out.write_all(&tag).map_err(&io_err)?;
            out.write_all(&z).map_err(&io_err)?;
        } else {
            write_matrix(&mut out, var, contents, layout).map_err(&io_err)?;
        }
    }
    out.flush().map_err(&io_err)
}

/// The 128-byte header: text, no subsystem data, version 0x0100, endian indicator.
pub fn header_bytes(order: Order) -> Vec<u8> {
    let mut h = b"MATLAB 5.0 MAT-file, written by pipe's tests (mat_writer.rs)".to_vec();
    h.resize(116, b' ');
    h.extend_from_slice(&[0; 8]);
    order.put(VERSION_5 as u64, 2, &mut h);
    // 'M' << 8 | 'I' in the file's order reads "IM" little-endian, "MI" big-endian.
    order.put(u16::from_be_bytes(*b"MI") as u64, 2, &mut h);
    h
}

/// Bytes a sub-element of `len` data bytes takes, tag and padding included.
fn sub_len(len: u64, small: bool) -> u64 {
    if small && (1..=4).contains(&len) {
        8
    } else {
        8 + pad8(len)
    }
}

/// Byte count of the miMATRIX contents of `var`, checking everything fits the format.
pub fn matrix_len(path: &Path, var: &VarOut, small: bool) -> Result<u64, DataError> {
    for &d in &var.dims {
        if i32::try_from(d).is_err() {
            return Err(DataError::DimensionOverflow {
                path: path.to_path_buf(),
                what: format!(
                    "a dimension of variable {:?} (MAT-files store i32)",
                    var.name
                ),
                value: d as u128,
            });
        }
    }
    let total = 16
        + sub_len(4 * var.dims.len() as u64, false)
        + sub_len(var.name.len() as u64, small)
        + sub_len(var.body.len(), small);
    fits_u32(path, &format!("bytes of variable {:?}", var.name), total)
}

fn fits_u32(path: &Path, what: &str, value: u64) -> Result<u64, DataError> {
    if value > u32::MAX as u64 {
        return Err(DataError::DimensionOverflow {
            path: path.to_path_buf(),
            what: format!("{what} (a MAT-file element holds at most 2^32 - 1)"),
            value: value as u128,
        });
    }
    Ok(value)
}

/// A regular 8-byte tag.
pub fn put_tag(out: &mut Vec<u8>, order: Order, ty: u32, len: u64) {
    order.put(ty as u64, 4, out);
    order.put(len, 4, out);
}

/// A whole sub-element: small form when asked and it fits, else tag, data, padding.
pub fn put_sub(out: &mut Vec<u8>, order: Order, ty: u32, data: &[u8], small: bool) {
    let len = data.len() as u64;
    if small && (1..=4).contains(&len) {
        order.put((len << 16) | ty as u64, 4, out);
        out.extend_from_slice(data);
        out.resize(out.len() + 4 - data.len(), 0);
    } else {
        put_tag(out, order, ty, len);
        out.extend_from_slice(data);
        out.resize(out.len() + (pad8(len) - len) as usize, 0);
    }
}

/// An miMATRIX element (tag included) with `contents` bytes after its tag.
pub fn write_matrix(
    w: &mut dyn Write,
    var: &VarOut,
    contents: u64,
    layout: Layout,
) -> io::Result<()> {
    let (o, small) = (layout.order, layout.small_elements);
    let mut head = Vec::new();
    put_tag(&mut head, o, MI_MATRIX, contents);
    let mut flags = Vec::new();
    o.put(var.class as u64, 4, &mut flags);
    o.put(0, 4, &mut flags);
    put_sub(&mut head, o, MI_UINT32, &flags, false);
    let mut dims = Vec::new();
    for &d in &var.dims {
        o.put(d as u64, 4, &mut dims);
    }
    put_sub(&mut head, o, MI_INT32, &dims, false);
    put_sub(&mut head, o, MI_INT8, var.name.as_bytes(), small);
    let len = var.body.len();
    if small && (1..=4).contains(&len) {
        let mut data = Vec::new();
        var.body.write_to(&mut data)?;
        put_sub(&mut head, o, var.storage, &data, true);
        return w.write_all(&head);
    }
    put_tag(&mut head, o, var.storage, len);
    w.write_all(&head)?;
    var.body.write_to(w)?;
    w.write_all(&[0u8; 8][..(pad8(len) - len) as usize])
}

/// The plain miMATRIX element of `var` (tag included), as `write_mat` would write it.
pub fn matrix_bytes(var: &VarOut, layout: Layout) -> Vec<u8> {
    let contents = matrix_len(Path::new("-"), var, layout.small_elements).unwrap();
    let mut out = Vec::new();
    write_matrix(&mut out, var, contents, layout).unwrap();
    out
}
