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
//!
//! Why not the `matfile` crate (0.5): it refuses int32 arrays stored as `miINT32` and six
//! narrower storage types this reader accepts (double as `miINT8`, `miUINT32` or
//! `miSINGLE`; single as `miINT8`; int16 as `miINT8`; uint64 as `miUINT32`), and it holds
//! the file, the inflated bytes and the parsed values at once, with no way to move an array
//! out: on a 531,131-image compressed file it peaked at 4.7 GB and took 3x as long.
//!
//! The MAT-file writer the tests use is `stages/tests/support/mat_writer.rs`.

use std::fmt::Display;
use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::path::Path;

use flate2::read::ZlibDecoder;
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

/// MATLAB array class of double-precision arrays (the low byte of the array flags), the
/// first numeric class.
const MX_DOUBLE: u8 = 6;
/// MATLAB array class of uint8 arrays (SVHN's `X`).
const MX_UINT8: u8 = 9;
/// MATLAB array class of uint64 arrays, the last numeric class.
const MX_UINT64: u8 = 15;

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
enum MatData {
    U8(Vec<u8>),
    F64(Vec<f64>),
}

impl MatData {
    /// Number of elements.
    fn len(&self) -> usize {
        match self {
            MatData::U8(v) => v.len(),
            MatData::F64(v) => v.len(),
        }
    }

    /// Element `i` (column-major index) as f64, or None past the end.
    fn get(&self, i: usize) -> Option<f64> {
        match self {
            MatData::U8(v) => v.get(i).map(|&b| b as f64),
            MatData::F64(v) => v.get(i).copied(),
        }
    }
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
        } else if v.fract() == 0.0 && v >= 0.0 {
            return Err(fail(format!(
                "label out of range: item {index} has label {v}, expected 1..=10 (10 is the \
                 digit 0)"
            )));
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
