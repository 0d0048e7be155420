//! SVHN cropped digits (Netzer et al., 2011) from the official MATLAB files.
//!
//! `train_32x32.mat`, `test_32x32.mat` and `extra_32x32.mat` are MATLAB Level 5 MAT-files
//! holding two variables: `X`, uint8 images as a 32 x 32 x 3 x N array, and `y`, the N x 1
//! labels with the digit 0 written as 10. MATLAB stores arrays column-major (the first
//! index varies fastest), so the loader transposes every 32 x 32 plane to the row-major
//! N x C x H x W layout of [`ImageSet`] and maps label 10 back to 0.
//!
//! The reader covers what MATLAB writes, not the whole format: numeric arrays, plain
//! (`miMATRIX`) or zlib-compressed (`miCOMPRESSED`, which is how MATLAB 7 stores every
//! variable), in either byte order, with small data elements and with storage types
//! narrower than the class (MATLAB stores a double array of small whole numbers as
//! `miUINT8`). Cell, struct, char, sparse, object and complex variables, and element types
//! it does not know, are skipped by their byte counts. MATLAB 7.3 files are HDF5, not
//! Level 5, and are rejected with a message that says so.
//!
//! Memory: the file is read once, front to back. A variable that is not wanted is skipped
//! after reading (inflating) only its header. `X` is inflated straight into the buffer that
//! becomes the pixels of the [`ImageSet`] and transposed in place, so loading the 1.6 GB of
//! `extra_32x32.mat` pixels takes about 1.6 GB, not twice that.

use std::fmt::Display;
use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::Path;

use flate2::read::ZlibDecoder;
use flate2::write::ZlibEncoder;
use flate2::Compression;
use rayon::prelude::*;

use super::{io_error, DataError, ImageSet};

/// Image side in pixels.
pub const SIDE: usize = 32;
/// Colour planes per image (R, G, B).
pub const CHANNELS: usize = 3;
/// Pixel bytes per image.
pub const IMAGE_BYTES: usize = CHANNELS * SIDE * SIDE;
/// The label SVHN writes for the digit 0 (labels are 1..=10, digits 1..=9 as themselves).
pub const ZERO_LABEL: u32 = 10;

/// MATLAB array class of double-precision arrays (the low byte of the array flags).
pub const MX_DOUBLE: u8 = 6;
/// MATLAB array class of single-precision arrays.
pub const MX_SINGLE: u8 = 7;
/// MATLAB array class of int8 arrays.
pub const MX_INT8: u8 = 8;
/// MATLAB array class of uint8 arrays (SVHN's `X`).
pub const MX_UINT8: u8 = 9;
/// MATLAB array class of int16 arrays.
pub const MX_INT16: u8 = 10;
/// MATLAB array class of uint64 arrays, the last numeric class.
pub const MX_UINT64: u8 = 15;

// Data element types (MAT-file format reference, "MAT-File Data Types").
const MI_INT8: u32 = 1;
const MI_UINT8: u32 = 2;
const MI_INT16: u32 = 3;
const MI_UINT16: u32 = 4;
const MI_INT32: u32 = 5;
const MI_UINT32: u32 = 6;
const MI_SINGLE: u32 = 7;
const MI_DOUBLE: u32 = 9;
const MI_INT64: u32 = 12;
const MI_UINT64: u32 = 13;
const MI_MATRIX: u32 = 14;
const MI_COMPRESSED: u32 = 15;
const MI_UTF8: u32 = 16;

/// Array-flags bit saying an imaginary part follows the real part.
const FLAG_COMPLEX: u32 = 0x0800;
/// Header: 116 bytes of text, 8 of subsystem offset, 2 of version, 2 of endian indicator.
const HEADER_LEN: usize = 128;
/// The version field of every Level 5 file.
const VERSION_5: u16 = 0x0100;
/// Deflate cannot inflate more than 1032 bytes per compressed byte; an element inside a
/// compressed one that announces more is a damaged file, and refusing it up front keeps a
/// lying byte count from reserving memory.
const MAX_DEFLATE_RATIO: u64 = 1032;
/// Read and conversion chunk, a multiple of every element size.
const CHUNK: usize = 1 << 16;

/// The values of a numeric variable, converted to its class.
///
/// uint8 arrays stay bytes: SVHN's `X` is 1.6 GB as bytes and would be 13 GB as f64. Every
/// other class becomes f64, which holds every value of the classes up to 32 bits exactly
/// (64-bit integers beyond 2^53 are rounded).
#[derive(Clone, Debug, PartialEq)]
pub enum MatData {
    U8(Vec<u8>),
    F64(Vec<f64>),
}

impl MatData {
    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            MatData::U8(v) => v.len(),
            MatData::F64(v) => v.len(),
        }
    }

    /// True when the array has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Element `i` (column-major index) as f64, or None past the end.
    pub fn get(&self, i: usize) -> Option<f64> {
        match self {
            MatData::U8(v) => v.get(i).map(|&b| b as f64),
            MatData::F64(v) => v.get(i).copied(),
        }
    }
}

/// One numeric, real variable of a MAT-file, its values in MATLAB's column-major order.
#[derive(Clone, Debug, PartialEq)]
pub struct MatVar {
    pub name: String,
    /// MATLAB array class, e.g. [`MX_DOUBLE`] or [`MX_UINT8`].
    pub class: u8,
    pub dims: Vec<usize>,
    pub data: MatData,
}

/// Every numeric, real variable of a Level 5 MAT-file, in file order.
///
/// Other variables (cell, struct, char, sparse, object, complex) and other element types
/// are skipped. Values are converted from their storage type to their class (see
/// [`MatData`]).
pub fn read_mat(path: &Path) -> Result<Vec<MatVar>, DataError> {
    let mut mat = MatFile::open(path)?;
    let mut vars = Vec::new();
    let all = |_: &str| true;
    while let Some(entry) = mat.next(&all)? {
        if let Some(data) = entry.data {
            let VarHeader {
                name, class, dims, ..
            } = entry.header;
            vars.push(MatVar {
                name,
                class,
                dims,
                data,
            });
        }
    }
    Ok(vars)
}

/// Load an SVHN cropped-digits file (`X` and `y`) as a 3 x 32 x 32 [`ImageSet`].
///
/// `X` must be a uint8 32 x 32 x 3 x N array (32 x 32 x 3 when N is 1, since MATLAB drops
/// trailing singleton dimensions); `y` a vector of N whole numbers in 1..=10, of any
/// numeric class (10 becomes the digit 0). Only the first variable of each name counts;
/// everything else in the file is skipped.
pub fn load_svhn(path: &Path) -> Result<ImageSet, DataError> {
    let mut mat = MatFile::open(path)?;
    let (mut x, mut y): (Option<Entry>, Option<Entry>) = (None, None);
    let mut names = Vec::new();
    loop {
        let (want_x, want_y) = (x.is_none(), y.is_none());
        let wanted = move |name: &str| (want_x && name == "X") || (want_y && name == "y");
        let Some(entry) = mat.next(&wanted)? else {
            break;
        };
        names.push(entry.header.name.clone());
        match entry.header.name.as_str() {
            "X" if want_x => x = Some(entry),
            "y" if want_y => y = Some(entry),
            _ => {}
        }
    }
    let x = x.ok_or_else(|| missing(path, "X", "uint8 images, 32x32x3xN", &names))?;
    let y = y.ok_or_else(|| missing(path, "y", "labels 1..=10, Nx1", &names))?;
    let mut pixels = svhn_images(path, x)?;
    let labels = svhn_labels(path, &y)?;
    let images = pixels.len() / IMAGE_BYTES;
    if images != labels.len() {
        return Err(DataError::CountMismatch {
            images_path: path.to_path_buf(),
            labels_path: path.to_path_buf(),
            images,
            labels: labels.len(),
        });
    }
    planes_to_row_major(&mut pixels);
    Ok(ImageSet {
        pixels,
        labels,
        channels: CHANNELS,
        height: SIDE,
        width: SIDE,
    })
}

/// Write `set` the way the official SVHN files are laid out: `X` (uint8,
/// H x W x C x N, column-major) then `y` (N x 1, digit 0 written as 10).
///
/// `compressed` stores each variable as a zlib `miCOMPRESSED` element (as MATLAB 7 does),
/// otherwise as a plain `miMATRIX`. `y_as_double` makes `y` class double stored as
/// `miDOUBLE`, otherwise uint8. Like MATLAB, names and data of at most 4 bytes use the
/// small element form and trailing singleton dimensions of `X` are dropped. Any C x H x W
/// is written (so tests can make files of the wrong shape); [`load_svhn`] reads 3 x 32 x 32.
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
    let y = VarOut {
        name: "y",
        class,
        dims: vec![set.len(), 1],
        storage,
        body: Body::Raw(encode_values(Order::Little, storage, &stored)),
    };
    let layout = Layout {
        order: Order::Little,
        compressed,
        small_elements: true,
    };
    write_mat(path, &[x, y], layout)
}

// ---------------------------------------------------------------------------------------
// Reading
// ---------------------------------------------------------------------------------------

/// Byte order of a file, from its endian indicator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Order {
    Little,
    Big,
}

impl Order {
    /// The unsigned integer in `b` (1 to 8 bytes).
    fn uint(self, b: &[u8]) -> u64 {
        let fold = |acc: u64, &x: &u8| (acc << 8) | x as u64;
        match self {
            Order::Big => b.iter().fold(0, fold),
            Order::Little => b.iter().rev().fold(0, fold),
        }
    }

    /// Append the low `size` bytes of `v` in this order.
    fn put(self, v: u64, size: usize, out: &mut Vec<u8>) {
        let le = v.to_le_bytes();
        match self {
            Order::Little => out.extend_from_slice(&le[..size]),
            Order::Big => out.extend(le[..size].iter().rev()),
        }
    }

    /// One value of numeric storage type `ty` (`b` is exactly its size) as f64.
    fn decode(self, ty: u32, b: &[u8]) -> f64 {
        let u = self.uint(b);
        match ty {
            MI_INT8 => u as u8 as i8 as f64,
            MI_INT16 => u as u16 as i16 as f64,
            MI_INT32 => u as u32 as i32 as f64,
            MI_INT64 => u as i64 as f64,
            MI_SINGLE => f32::from_bits(u as u32) as f64,
            MI_DOUBLE => f64::from_bits(u),
            _ => u as f64,
        }
    }
}

/// Bytes per value of a numeric storage type; None for the others.
fn storage_size(ty: u32) -> Option<usize> {
    match ty {
        MI_INT8 | MI_UINT8 => Some(1),
        MI_INT16 | MI_UINT16 => Some(2),
        MI_INT32 | MI_UINT32 | MI_SINGLE => Some(4),
        MI_DOUBLE | MI_INT64 | MI_UINT64 => Some(8),
        _ => None,
    }
}

/// The 8 bytes in front of every data element.
#[derive(Clone, Copy, Debug)]
struct Tag {
    ty: u32,
    /// Data bytes, padding not included.
    len: u64,
    /// The data, when the element uses the small form (at most 4 bytes inside the tag).
    small: Option<[u8; 4]>,
}

impl Tag {
    /// A tag is small when the upper 16 bits of its first u32 (the byte count) are nonzero.
    fn parse(order: Order, b: [u8; 8]) -> Tag {
        let first = order.uint(&b[..4]) as u32;
        if first >> 16 != 0 {
            Tag {
                ty: first & 0xffff,
                len: (first >> 16) as u64,
                small: Some([b[4], b[5], b[6], b[7]]),
            }
        } else {
            Tag {
                ty: first,
                len: order.uint(&b[4..]),
                small: None,
            }
        }
    }
}

/// `n` rounded up to the 8-byte boundary every regular element is padded to.
fn pad8(n: u64) -> u64 {
    n.div_ceil(8) * 8
}

/// Where the element being parsed lies: for error messages, and for telling a file cut
/// short (Truncated) from a zlib stream that is damaged (Format).
#[derive(Clone, Copy)]
struct Place<'p> {
    path: &'p Path,
    /// File offset of the element's tag.
    at: u64,
    /// Compressed byte count, when the element is miCOMPRESSED.
    compressed: Option<u64>,
}

impl Place<'_> {
    fn describe(&self) -> String {
        match self.compressed {
            Some(n) => format!("compressed data element at byte {} ({n} bytes)", self.at),
            None => format!("data element at byte {}", self.at),
        }
    }

    fn format(&self, what: impl Display) -> DataError {
        DataError::Format {
            path: self.path.to_path_buf(),
            what: format!("{}: {what}", self.describe()),
        }
    }

    /// The element's data stopped at `found` bytes of the `needed` its tags announce
    /// (counted from the first byte after the top-level tag, or of the inflated stream).
    fn ended(&self, found: u64, needed: u64) -> DataError {
        match self.compressed {
            Some(_) => self.format(format!(
                "the zlib stream ends after {found} inflated bytes, but the element inside \
                 announces {needed}"
            )),
            None => DataError::Truncated {
                path: self.path.to_path_buf(),
                expected_bytes: self.at + 8 + needed,
                found_bytes: self.at + 8 + found,
            },
        }
    }

    /// flate2 reports bad compressed data as InvalidInput/InvalidData; anything else is
    /// the file itself failing.
    fn io(&self, e: io::Error) -> DataError {
        let bad_data = matches!(
            e.kind(),
            io::ErrorKind::InvalidInput | io::ErrorKind::InvalidData
        );
        if self.compressed.is_some() && bad_data {
            self.format(format!("corrupt zlib data ({e})"))
        } else {
            DataError::Io {
                path: self.path.to_path_buf(),
                source: e,
            }
        }
    }
}

/// The contents of one top-level element (the file, or the inflated stream), read in order.
struct Src<'a, 'p> {
    r: &'a mut dyn Read,
    /// Bytes consumed so far.
    used: u64,
    place: Place<'p>,
    order: Order,
}

impl Src<'_, '_> {
    /// Fill `buf` completely, or fail saying how far the data went.
    fn fill(&mut self, buf: &mut [u8]) -> Result<(), DataError> {
        let mut got = 0;
        while got < buf.len() {
            match self.r.read(&mut buf[got..]) {
                Ok(0) => {
                    let found = self.used + got as u64;
                    return Err(self.place.ended(found, self.used + buf.len() as u64));
                }
                Ok(k) => got += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.place.io(e)),
            }
        }
        self.used += got as u64;
        Ok(())
    }

    /// The next `n` bytes as a vector reserved up front (exactly, so a 1.6 GB `X` is not
    /// followed by a doubling), refusing what the allocator refuses instead of aborting.
    fn bytes(&mut self, n: u64, what: &str) -> Result<Vec<u8>, DataError> {
        let mut v = Vec::new();
        let size = usize::try_from(n).ok();
        if size
            .map(|s| v.try_reserve_exact(s))
            .is_none_or(|r| r.is_err())
        {
            return Err(self
                .place
                .format(format!("cannot allocate {n} bytes for {what}")));
        }
        let got = (&mut *self.r).take(n).read_to_end(&mut v);
        got.map_err(|e| self.place.io(e))?;
        if (v.len() as u64) < n {
            return Err(self.place.ended(self.used + v.len() as u64, self.used + n));
        }
        self.used += n;
        Ok(v)
    }

    /// Read past `n` bytes.
    fn skip(&mut self, n: u64) -> Result<(), DataError> {
        let got = io::copy(&mut (&mut *self.r).take(n), &mut io::sink());
        let got = got.map_err(|e| self.place.io(e))?;
        if got < n {
            return Err(self.place.ended(self.used + got, self.used + n));
        }
        self.used += n;
        Ok(())
    }
}

/// What an miMATRIX says about itself before its data.
#[derive(Clone, Debug)]
struct VarHeader {
    name: String,
    class: u8,
    complex: bool,
    dims: Vec<usize>,
}

/// One variable found in the file; `data` is None when it was skipped (not wanted, or not
/// a real numeric array).
struct Entry {
    header: VarHeader,
    data: Option<MatData>,
    /// File offset of its top-level element.
    at: u64,
}

/// A MAT-file being read front to back, one top-level element at a time.
struct MatFile<'p> {
    path: &'p Path,
    file: BufReader<File>,
    len: u64,
    /// File offset of the next top-level element.
    pos: u64,
    order: Order,
    /// Offset of MATLAB's subsystem data (an internal uint8 array), skipped when present.
    subsys: Option<u64>,
}

impl<'p> MatFile<'p> {
    /// Open `path` and check its 128-byte header.
    fn open(path: &'p Path) -> Result<MatFile<'p>, DataError> {
        let file = File::open(path).map_err(|e| io_error(path, e))?;
        let len = file.metadata().map_err(|e| io_error(path, e))?.len();
        let mut file = BufReader::with_capacity(CHUNK, file);
        let mut head = Vec::with_capacity(HEADER_LEN);
        (&mut file)
            .take(HEADER_LEN as u64)
            .read_to_end(&mut head)
            .map_err(|e| io_error(path, e))?;
        let (order, subsys) = parse_header(path, &head, len)?;
        Ok(MatFile {
            path,
            file,
            len,
            pos: HEADER_LEN as u64,
            order,
            subsys,
        })
    }

    /// The next miMATRIX variable (plain or compressed), reading the data only of real
    /// numeric arrays whose name `want` accepts; None at the end of the file.
    fn next(&mut self, want: &dyn Fn(&str) -> bool) -> Result<Option<Entry>, DataError> {
        loop {
            let at = self.pos;
            if at >= self.len {
                return Ok(None);
            }
            let rest = self.len - at;
            if rest < 8 {
                // A writer that pads its last compressed element leaves zeros here.
                let mut tail = vec![0u8; rest as usize];
                self.file
                    .read_exact(&mut tail)
                    .map_err(|e| io_error(self.path, e))?;
                if tail.iter().all(|&b| b == 0) {
                    return Ok(None);
                }
                return Err(self.truncated(at + 8));
            }
            let mut raw = [0u8; 8];
            self.file
                .read_exact(&mut raw)
                .map_err(|e| io_error(self.path, e))?;
            let tag = Tag::parse(self.order, raw);
            let end = if tag.small.is_some() {
                at + 8
            } else {
                let data_end = at + 8 + tag.len;
                if data_end > self.len {
                    return Err(self.truncated(data_end));
                }
                // MATLAB does not pad compressed elements (their byte count is the zlib
                // stream's length); everything else is padded to 8 bytes.
                if tag.ty == MI_COMPRESSED {
                    data_end
                } else {
                    (at + 8 + pad8(tag.len)).min(self.len)
                }
            };
            let skip = tag.small.is_some() || self.subsys == Some(at) || tag.len == 0;
            let entry = match tag.ty {
                MI_MATRIX if !skip => Some(self.plain(at, tag.len, want)?),
                MI_COMPRESSED if !skip => self.compressed(at, tag.len, want)?,
                _ => None,
            };
            self.file
                .seek(SeekFrom::Start(end))
                .map_err(|e| io_error(self.path, e))?;
            self.pos = end;
            if entry.is_some() {
                return Ok(entry);
            }
        }
    }

    fn truncated(&self, expected_bytes: u64) -> DataError {
        DataError::Truncated {
            path: self.path.to_path_buf(),
            expected_bytes,
            found_bytes: self.len,
        }
    }

    /// An miMATRIX of `len` bytes right after the tag at `at`.
    fn plain(
        &mut self,
        at: u64,
        len: u64,
        want: &dyn Fn(&str) -> bool,
    ) -> Result<Entry, DataError> {
        let place = Place {
            path: self.path,
            at,
            compressed: None,
        };
        let mut r = (&mut self.file).take(len);
        let mut src = Src {
            r: &mut r,
            used: 0,
            place,
            order: self.order,
        };
        let (header, data) = read_matrix(&mut src, len, want)?;
        Ok(Entry { header, data, at })
    }

    /// An miCOMPRESSED of `len` bytes right after the tag at `at`: a zlib stream holding one
    /// element, which counts when it is an miMATRIX.
    fn compressed(
        &mut self,
        at: u64,
        len: u64,
        want: &dyn Fn(&str) -> bool,
    ) -> Result<Option<Entry>, DataError> {
        let place = Place {
            path: self.path,
            at,
            compressed: Some(len),
        };
        let mut z = ZlibDecoder::new((&mut self.file).take(len));
        let mut src = Src {
            r: &mut z,
            used: 0,
            place,
            order: self.order,
        };
        let mut raw = [0u8; 8];
        src.fill(&mut raw)?;
        let tag = Tag::parse(self.order, raw);
        if tag.small.is_some() || tag.ty != MI_MATRIX || tag.len == 0 {
            return Ok(None);
        }
        let limit = len.saturating_mul(MAX_DEFLATE_RATIO).saturating_add(64);
        if tag.len > limit {
            return Err(place.format(format!(
                "the miMATRIX inside announces {} bytes, more than {len} compressed bytes can \
                 inflate to (at most {limit})",
                tag.len
            )));
        }
        let (header, data) = read_matrix(&mut src, tag.len, want)?;
        if data.is_some() {
            // Reading to the end of the stream makes the decoder check its Adler-32, so a
            // damaged stream that happened to inflate to the right length is still caught.
            io::copy(&mut src.r, &mut io::sink()).map_err(|e| place.io(e))?;
        }
        Ok(Some(Entry { header, data, at }))
    }
}

/// Check the 128-byte header: endian indicator, then version. Returns the byte order and
/// the subsystem-data offset (None when the field holds no offset into this file).
fn parse_header(
    path: &Path,
    head: &[u8],
    file_len: u64,
) -> Result<(Order, Option<u64>), DataError> {
    let not_mat = |what: String| DataError::Format {
        path: path.to_path_buf(),
        what: format!("not a MATLAB Level 5 MAT-file: {what}"),
    };
    if head.len() < HEADER_LEN {
        if head.starts_with(b"MATLAB") {
            return Err(DataError::Truncated {
                path: path.to_path_buf(),
                expected_bytes: HEADER_LEN as u64,
                found_bytes: head.len() as u64,
            });
        }
        return Err(not_mat(format!(
            "expected a {HEADER_LEN}-byte header, found a {}-byte file",
            head.len()
        )));
    }
    let indicator = &head[126..128];
    let order = match indicator {
        b"IM" => Order::Little,
        b"MI" => Order::Big,
        _ => {
            return Err(not_mat(format!(
                "expected the endian indicator 'IM' or 'MI' at bytes 126..128, found \
                 '{}' (0x{:02x} 0x{:02x})",
                indicator.escape_ascii(),
                indicator[0],
                indicator[1]
            )))
        }
    };
    let version = order.uint(&head[124..126]);
    if version != VERSION_5 as u64 {
        let hint = if version == 0x0200 {
            " (0x0200 is a MATLAB 7.3 file, which is HDF5; re-save it with `save -v7`)"
        } else {
            ""
        };
        return Err(DataError::Format {
            path: path.to_path_buf(),
            what: format!(
                "unsupported MAT-file version 0x{version:04x} at bytes 124..126, expected \
                 0x0100 (Level 5){hint}"
            ),
        });
    }
    let subsys = order.uint(&head[116..124]);
    let subsys = (subsys >= HEADER_LEN as u64 && subsys < file_len).then_some(subsys);
    Ok((order, subsys))
}

/// Parse an miMATRIX of `len` bytes: array flags, dimensions, name, then (for a real
/// numeric array whose name `want` accepts) the real part. Anything after that is left
/// for the caller to skip.
fn read_matrix(
    src: &mut Src,
    len: u64,
    want: &dyn Fn(&str) -> bool,
) -> Result<(VarHeader, Option<MatData>), DataError> {
    let mut left = len;
    let order = src.order;

    let tag = sub_tag(src, &mut left, "array flags")?;
    if tag.ty != MI_UINT32 || tag.len != 8 {
        return Err(src.place.format(format!(
            "array flags: expected an miUINT32 sub-element of 8 bytes, found {} with {} bytes",
            type_name(tag.ty),
            tag.len
        )));
    }
    let flags = sub_data(src, &tag, &mut left, "array flags")?;
    let flags = order.uint(&flags[..4]) as u32;
    let class = (flags & 0xff) as u8;
    let complex = flags & FLAG_COMPLEX != 0;

    let tag = sub_tag(src, &mut left, "dimensions")?;
    if tag.ty != MI_INT32 || tag.len % 4 != 0 || tag.len < 8 {
        return Err(src.place.format(format!(
            "dimensions: expected an miINT32 sub-element of at least 2 values, found {} with \
             {} bytes",
            type_name(tag.ty),
            tag.len
        )));
    }
    let raw = sub_data(src, &tag, &mut left, "dimensions")?;
    let mut dims = Vec::with_capacity(raw.len() / 4);
    for c in raw.chunks_exact(4) {
        let d = order.uint(c) as u32 as i32;
        let d = usize::try_from(d).map_err(|_| {
            src.place
                .format(format!("dimensions: found negative dimension {d}"))
        })?;
        dims.push(d);
    }

    let tag = sub_tag(src, &mut left, "array name")?;
    if !matches!(tag.ty, MI_INT8 | MI_UINT8 | MI_UTF8) {
        return Err(src.place.format(format!(
            "array name: expected an miINT8 sub-element, found {}",
            type_name(tag.ty)
        )));
    }
    let name = sub_data(src, &tag, &mut left, "array name")?;
    let name = String::from_utf8_lossy(&name).into_owned();

    let header = VarHeader {
        name,
        class,
        complex,
        dims,
    };
    if !is_numeric(class) || complex || !want(&header.name) {
        return Ok((header, None));
    }
    let what = format!("real part of variable {:?}", header.name);
    let tag = sub_tag(src, &mut left, &what)?;
    let data = read_real(src, &header, &tag)?;
    Ok((header, Some(data)))
}

/// Read a sub-element's tag, checking it fits in the `left` bytes of its array.
fn sub_tag(src: &mut Src, left: &mut u64, what: &str) -> Result<Tag, DataError> {
    if *left < 8 {
        return Err(src.place.format(format!(
            "the array ends before its {what}: expected an 8-byte tag, found {left} bytes left"
        )));
    }
    let mut raw = [0u8; 8];
    src.fill(&mut raw)?;
    *left -= 8;
    let tag = Tag::parse(src.order, raw);
    if tag.small.is_some() && tag.len > 4 {
        return Err(src.place.format(format!(
            "{what}: a small data element holds at most 4 bytes, found a byte count of {}",
            tag.len
        )));
    }
    if tag.small.is_none() && tag.len > *left {
        return Err(src.place.format(format!(
            "{what}: announces {} bytes, but only {left} remain in its array",
            tag.len
        )));
    }
    Ok(tag)
}

/// The data of a short sub-element (flags, dimensions, name), padding skipped.
fn sub_data(src: &mut Src, tag: &Tag, left: &mut u64, what: &str) -> Result<Vec<u8>, DataError> {
    if let Some(b) = tag.small {
        return Ok(b[..tag.len as usize].to_vec());
    }
    let data = src.bytes(tag.len, what)?;
    *left -= tag.len;
    let pad = (pad8(tag.len) - tag.len).min(*left);
    src.skip(pad)?;
    *left -= pad;
    Ok(data)
}

/// The real part of a numeric array: its storage type may be narrower than the class
/// (MATLAB's own space saving), and its size must match the dimensions.
fn read_real(src: &mut Src, header: &VarHeader, tag: &Tag) -> Result<MatData, DataError> {
    let name = &header.name;
    let size = storage_size(tag.ty).ok_or_else(|| {
        src.place.format(format!(
            "variable {name:?}: real part has type {}, expected a numeric type",
            type_name(tag.ty)
        ))
    })? as u64;
    let count = header
        .dims
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d as u64))
        .filter(|&c| c.checked_mul(size).is_some());
    let Some(count) = count else {
        return Err(src.place.format(format!(
            "variable {name:?}: dimensions {} overflow",
            show_dims(&header.dims)
        )));
    };
    if tag.len != count * size {
        return Err(src.place.format(format!(
            "variable {name:?}: dimensions {} give {count} elements = {} bytes of {}, but \
             the real part holds {} bytes",
            show_dims(&header.dims),
            count * size,
            type_name(tag.ty),
            tag.len
        )));
    }
    if header.class == MX_UINT8 && tag.ty == MI_UINT8 {
        return match tag.small {
            Some(b) => Ok(MatData::U8(b[..tag.len as usize].to_vec())),
            None => Ok(MatData::U8(src.bytes(tag.len, name)?)),
        };
    }
    let place = src.place;
    let what = format!("variable {name:?}");
    if header.class == MX_UINT8 {
        let mut out = reserve::<u8>(&place, count, &what)?;
        for_each_value(src, tag, size as usize, |v| {
            if v.fract() != 0.0 || !(0.0..=255.0).contains(&v) {
                let index = out.len();
                return Err(place.format(format!(
                    "{what} is uint8 but element {index} is stored as {v}, expected 0..=255"
                )));
            }
            out.push(v as u8);
            Ok(())
        })?;
        return Ok(MatData::U8(out));
    }
    let mut out = reserve::<f64>(&place, count, &what)?;
    for_each_value(src, tag, size as usize, |v| {
        out.push(v);
        Ok(())
    })?;
    Ok(MatData::F64(out))
}

/// A vector with room for `count` values, or an error when the allocator refuses.
fn reserve<T>(place: &Place, count: u64, what: &str) -> Result<Vec<T>, DataError> {
    let mut v = Vec::new();
    let size = usize::try_from(count).ok();
    if size
        .map(|s| v.try_reserve_exact(s))
        .is_none_or(|r| r.is_err())
    {
        return Err(place.format(format!("cannot allocate {count} values for {what}")));
    }
    Ok(v)
}

/// Decode every value of a numeric sub-element in chunks, so converting never holds the
/// stored bytes and the converted values at once.
fn for_each_value(
    src: &mut Src,
    tag: &Tag,
    size: usize,
    mut f: impl FnMut(f64) -> Result<(), DataError>,
) -> Result<(), DataError> {
    let order = src.order;
    if let Some(b) = tag.small {
        for c in b[..tag.len as usize].chunks_exact(size) {
            f(order.decode(tag.ty, c))?;
        }
        return Ok(());
    }
    let mut buf = vec![0u8; CHUNK];
    let mut done = 0u64;
    while done < tag.len {
        let k = (tag.len - done).min(CHUNK as u64) as usize;
        src.fill(&mut buf[..k])?;
        for c in buf[..k].chunks_exact(size) {
            f(order.decode(tag.ty, c))?;
        }
        done += k as u64;
    }
    Ok(())
}

/// `X` as pixels in column-major order: a real uint8 32 x 32 x 3 x N array.
fn svhn_images(path: &Path, x: Entry) -> Result<Vec<u8>, DataError> {
    let h = &x.header;
    let fail = |what: String| DataError::Format {
        path: path.to_path_buf(),
        what: format!("variable X (data element at byte {}): {what}", x.at),
    };
    if h.class != MX_UINT8 || h.complex {
        let complex = if h.complex { "complex " } else { "" };
        return Err(fail(format!(
            "expected a real uint8 array, found a {complex}{} array",
            class_name(h.class)
        )));
    }
    let count = match h.dims.as_slice() {
        [SIDE, SIDE, CHANNELS, n] => *n,
        [SIDE, SIDE, CHANNELS] => 1,
        _ => {
            return Err(fail(format!(
                "expected dimensions 32x32x3xN (rows x columns x RGB x images), found {}",
                show_dims(&h.dims)
            )))
        }
    };
    match x.data {
        Some(MatData::U8(p)) if p.len() == count * IMAGE_BYTES => Ok(p),
        _ => Err(fail(format!(
            "expected {} pixel bytes, found none",
            count * IMAGE_BYTES
        ))),
    }
}

/// `y` as digits: a real numeric vector of whole numbers 1..=10, 10 meaning 0.
fn svhn_labels(path: &Path, y: &Entry) -> Result<Vec<u32>, DataError> {
    let h = &y.header;
    let fail = |what: String| DataError::Format {
        path: path.to_path_buf(),
        what: format!("variable y (data element at byte {}): {what}", y.at),
    };
    let data = match &y.data {
        Some(d) if !h.complex => d,
        _ => {
            let complex = if h.complex { "complex " } else { "" };
            return Err(fail(format!(
                "expected a real numeric array, found a {complex}{} array",
                class_name(h.class)
            )));
        }
    };
    if h.dims.iter().filter(|&&d| d != 1).count() > 1 {
        return Err(fail(format!(
            "expected an Nx1 vector, found dimensions {}",
            show_dims(&h.dims)
        )));
    }
    let mut labels = Vec::with_capacity(data.len());
    for index in 0..data.len() {
        let v = data.get(index).unwrap_or(f64::NAN);
        if v.fract() == 0.0 && (1.0..=ZERO_LABEL as f64).contains(&v) {
            labels.push(v as u32 % ZERO_LABEL);
        } else if v.fract() == 0.0 && (0.0..=u32::MAX as f64).contains(&v) {
            return Err(DataError::LabelOutOfRange {
                path: path.to_path_buf(),
                index,
                label: v as u32,
                max: ZERO_LABEL,
            });
        } else {
            return Err(fail(format!(
                "item {index} is {v}, expected a whole number in 1..=10"
            )));
        }
    }
    Ok(labels)
}

/// Turn every 32 x 32 plane from column-major to row-major in place.
///
/// In `X`, image n's channel k is the 1024 bytes at 1024 * (3n + k) in both layouts; only
/// the order inside the plane differs (element (i, j) at i + 32j versus 32i + j), so a
/// square transpose per plane does it without a second buffer.
fn planes_to_row_major(pixels: &mut [u8]) {
    pixels
        .par_chunks_mut(SIDE * SIDE)
        .with_min_len(256)
        .for_each(|plane| {
            for i in 0..SIDE {
                for j in i + 1..SIDE {
                    plane.swap(i + SIDE * j, i * SIDE + j);
                }
            }
        });
}

/// The Format error for a variable that is not in the file, listing what is.
fn missing(path: &Path, name: &str, what: &str, found: &[String]) -> DataError {
    let found = if found.is_empty() {
        "no variables".to_string()
    } else {
        found
            .iter()
            .map(|n| format!("{n:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    DataError::Format {
        path: path.to_path_buf(),
        what: format!("expected a variable named {name:?} ({what}), found {found}"),
    }
}

fn is_numeric(class: u8) -> bool {
    (MX_DOUBLE..=MX_UINT64).contains(&class)
}

fn class_name(class: u8) -> &'static str {
    const NAMES: [&str; 16] = [
        "unknown-class",
        "cell",
        "struct",
        "object",
        "char",
        "sparse",
        "double",
        "single",
        "int8",
        "uint8",
        "int16",
        "uint16",
        "int32",
        "uint32",
        "int64",
        "uint64",
    ];
    NAMES
        .get(class as usize)
        .copied()
        .unwrap_or("unknown-class")
}

fn type_name(ty: u32) -> String {
    let name = match ty {
        MI_INT8 => "miINT8",
        MI_UINT8 => "miUINT8",
        MI_INT16 => "miINT16",
        MI_UINT16 => "miUINT16",
        MI_INT32 => "miINT32",
        MI_UINT32 => "miUINT32",
        MI_SINGLE => "miSINGLE",
        MI_DOUBLE => "miDOUBLE",
        MI_INT64 => "miINT64",
        MI_UINT64 => "miUINT64",
        MI_MATRIX => "miMATRIX",
        MI_COMPRESSED => "miCOMPRESSED",
        MI_UTF8 => "miUTF8",
        17 => "miUTF16",
        18 => "miUTF32",
        _ => return format!("unknown type {ty}"),
    };
    format!("{name} (type {ty})")
}

fn show_dims(dims: &[usize]) -> String {
    dims.iter()
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join("x")
}


// ---------------------------------------------------------------------------------------
// Writing
// ---------------------------------------------------------------------------------------

/// How to lay a file out. Only little-endian, small-element output is public; the other
/// choices exist so tests can write every form the reader must accept.
#[derive(Clone, Copy, Debug)]
struct Layout {
    order: Order,
    /// Each variable as an miCOMPRESSED zlib stream rather than a plain miMATRIX.
    compressed: bool,
    /// Names and data of 1..=4 bytes in the small element form, as MATLAB does.
    small_elements: bool,
}

/// One variable to write. The real part's byte count is whatever `body` holds, not checked
/// against `dims`, so tests can write inconsistent files.
struct VarOut<'a> {
    name: &'a str,
    class: u8,
    dims: Vec<usize>,
    storage: u32,
    body: Body<'a>,
}

/// The bytes of a real part.
enum Body<'a> {
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

/// MATLAB keeps at least two dimensions and drops trailing singletons beyond them.
fn matlab_dims(mut dims: Vec<usize>) -> Vec<usize> {
    while dims.len() > 2 && dims.last() == Some(&1) {
        dims.pop();
    }
    dims
}

/// `values` in storage type `ty` and byte order `order` (saturating, like `as`).
fn encode_values(order: Order, ty: u32, values: &[f64]) -> Vec<u8> {
    let size = storage_size(ty).unwrap_or(8);
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

/// Write a MAT-file holding `vars`, laid out as `layout` says.
fn write_mat(path: &Path, vars: &[VarOut], layout: Layout) -> Result<(), DataError> {
    let io_err = |e| io_error(path, e);
    let mut out = BufWriter::new(File::create(path).map_err(io_err)?);
    out.write_all(&header_bytes(layout.order)).map_err(io_err)?;
    for var in vars {
        let contents = matrix_len(path, var, layout.small_elements)?;
        if layout.compressed {
            let mut z = ZlibEncoder::new(Vec::new(), Compression::default());
            write_matrix(&mut z, var, contents, layout).map_err(io_err)?;
            let z = z.finish().map_err(io_err)?;
            let n = fits_u32(
                path,
                &format!("compressed bytes of variable {:?}", var.name),
                z.len() as u64,
            )?;
            let mut tag = Vec::new();
            put_tag(&mut tag, layout.order, MI_COMPRESSED, n);
            out.write_all(&tag).map_err(io_err)?;
            out.write_all(&z).map_err(io_err)?;
        } else {
            write_matrix(&mut out, var, contents, layout).map_err(io_err)?;
        }
    }
    out.flush().map_err(io_err)
}

/// The 128-byte header: text, no subsystem data, version 0x0100, endian indicator.
fn header_bytes(order: Order) -> Vec<u8> {
    let mut h = b"MATLAB 5.0 MAT-file, written by pipe (stages::data::svhn)".to_vec();
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
fn matrix_len(path: &Path, var: &VarOut, small: bool) -> Result<u64, DataError> {
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

fn put_tag(out: &mut Vec<u8>, order: Order, ty: u32, len: u64) {
    order.put(ty as u64, 4, out);
    order.put(len, 4, out);
}

/// A whole sub-element: small form when asked and it fits, else tag, data, padding.
fn put_sub(out: &mut Vec<u8>, order: Order, ty: u32, data: &[u8], small: bool) {
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
fn write_matrix(w: &mut dyn Write, var: &VarOut, contents: u64, layout: Layout) -> io::Result<()> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    const SHARED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/data/svhn");

    use crate::data::testutil::{check_error_names, TempDir};

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

    fn raw<'a>(
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

    fn layout(compressed: bool) -> Layout {
        Layout {
            order: Order::Little,
            compressed,
            small_elements: true,
        }
    }


    fn le_u32(bytes: &[u8], at: usize) -> u64 {
        Order::Little.uint(&bytes[at..at + 4])
    }

    #[test]
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

                let vars = read_mat(&path).unwrap();
                assert_eq!(vars.len(), 2);
                assert_eq!((vars[0].name.as_str(), vars[0].class), ("X", MX_UINT8));
                assert_eq!(vars[0].dims, vec![32, 32, 3, 23]);
                assert_eq!(vars[0].data, MatData::U8(column_major_x(23)));
                let y_class = if y_as_double { MX_DOUBLE } else { MX_UINT8 };
                assert_eq!((vars[1].name.as_str(), vars[1].class), ("y", y_class));
                assert_eq!(vars[1].dims, vec![23, 1]);
                let y: Vec<f64> = (0..23).map(|i| vars[1].data.get(i).unwrap()).collect();
                assert_eq!(y, stored(&set.labels));
                assert_eq!(y[0], 10.0);
            }
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
                let dims = &read_mat(&path).unwrap()[0].dims;
                // MATLAB drops the trailing singleton: one image is 32x32x3
                let want: &[usize] = if n == 1 {
                    &[32, 32, 3]
                } else {
                    &[32, 32, 3, 0]
                };
                assert_eq!(dims.as_slice(), want);
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
        let values = stored(&labels);
        let n = labels.len();
        // (class, storage): plain double, double stored as miUINT8 the way MATLAB saves
        // small whole numbers, double as miINT16, single, int32
        let forms = [
            (MX_DOUBLE, MI_DOUBLE),
            (MX_DOUBLE, MI_UINT8),
            (MX_DOUBLE, MI_INT16),
            (MX_SINGLE, MI_SINGLE),
            (12, MI_INT32),
        ];
        for compressed in [true, false] {
            for (class, ty) in forms {
                let path = tmp.path("y.mat");
                let y = raw("y", class, &[n, 1], ty, &values, Order::Little);
                write_mat(&path, &[x_var(n, &[32, 32, 3, n]), y], layout(compressed)).unwrap();
                let set = load_svhn(&path).unwrap();
                assert_eq!(set.labels, labels, "class {class} storage {ty}");
                let vars = read_mat(&path).unwrap();
                assert_eq!(vars[1].class, class);
                assert_eq!(vars[1].data, MatData::F64(values.clone()));
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
                raw("notes", 4, &[1, chars.len()], MI_UINT16, &chars, lo),
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
            let vars = read_mat(&path).unwrap();
            let names: Vec<&str> = vars.iter().map(|v| v.name.as_str()).collect();
            assert_eq!(names, ["header_information", "X", "y", "z", "X"]);
            assert_eq!(vars[0].data, MatData::F64(vec![3.5, -2.0]));
            assert_eq!(vars[3].dims, vec![2, 2]);
            assert_eq!(vars[3].data, MatData::F64(vec![1.0, -2.0, 300.0, 4.0]));
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
            let values = stored(&set.labels);
            let y = raw("y", MX_DOUBLE, &[5, 1], MI_DOUBLE, &values, Order::Big);
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
            let vars = read_mat(&path).unwrap();
            assert_eq!(vars[1].data, MatData::F64(values));
            assert_eq!(vars[2].data, MatData::F64(vec![-3.0, 258.0]));
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
        let err = read_mat(&path).unwrap_err();
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
            let err = read_mat(&path).unwrap_err();
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
                check_error_names(
                    &err,
                    &path,
                    &["32x32x3xN", &format!("found {}", show_dims(&dims))],
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
                assert!(
                    matches!(err, DataError::LabelOutOfRange { index: i, label: l, max: 10, .. }
                        if i == index && l == label),
                    "{err:?}"
                );
                check_error_names(&err, &path, &[&format!("item {index} has label {label}")]);
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
        let contents = matrix_len(Path::new("x"), &x, true).unwrap();
        let mut out = Vec::new();
        write_matrix(&mut out, &x, contents, layout(false)).unwrap();
        out
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
                let _ = read_mat(&path);
            }
            for pos in (0..len).filter(|&p| interesting(p)) {
                for flip in [0xffu8, 0x01, 0x80] {
                    let mut bytes = good.clone();
                    bytes[pos] ^= flip;
                    std::fs::write(&path, &bytes).unwrap();
                    let _ = load_svhn(&path);
                    let _ = read_mat(&path);
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
}
