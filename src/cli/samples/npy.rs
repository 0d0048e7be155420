//! NumPy's `.npy` format, version 1.0 (numpy.lib.format): the magic string, a little-endian
//! u16 header length, the header (a Python dict literal: dtype, order, shape) padded with
//! spaces and a newline so the data starts at a multiple of 64 bytes, then the data in C
//! order. Small enough to write by hand, so `numpy.load` reads what `pipe` writes.

use anyhow::{anyhow, Result};

const MAGIC: &[u8] = b"\x93NUMPY\x01\x00";
const ALIGN: usize = 64;

/// An array of `shape` whose dtype is `descr` (a dtype literal such as `'<f4'` or a list of
/// record fields), `data` its raw bytes.
pub fn encode(descr: &str, shape: &[usize], data: &[u8]) -> Result<Vec<u8>> {
    let dims: Vec<String> = shape.iter().map(usize::to_string).collect();
    // a one-element tuple needs its comma: (5,)
    let shape = if dims.len() == 1 { format!("({},)", dims[0]) } else { format!("({})", dims.join(", ")) };
    let mut header = format!("{{'descr': {descr}, 'fortran_order': False, 'shape': {shape}, }}");
    let unpadded = MAGIC.len() + 2 + header.len() + 1;
    header.push_str(&" ".repeat(unpadded.next_multiple_of(ALIGN) - unpadded));
    header.push('\n');
    let len = u16::try_from(header.len()).map_err(|_| anyhow!("an .npy header of {} bytes does not fit format 1.0", header.len()))?;
    let mut out = Vec::with_capacity(MAGIC.len() + 2 + header.len() + data.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_is_numpys_and_data_starts_aligned() {
        let data: Vec<u8> = [1.5f32, -2.0].iter().flat_map(|v| v.to_le_bytes()).collect();
        let bytes = encode("'<f4'", &[1, 2], &data).unwrap();
        assert_eq!(&bytes[..8], b"\x93NUMPY\x01\x00");
        let len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
        assert_eq!((10 + len) % 64, 0);
        let header = std::str::from_utf8(&bytes[10..10 + len]).unwrap();
        assert_eq!(header.trim_end(), "{'descr': '<f4', 'fortran_order': False, 'shape': (1, 2), }");
        assert!(header.ends_with('\n'));
        assert_eq!(&bytes[10 + len..], &data[..]);
        let one = encode("'<u4'", &[3], &[0; 12]).unwrap();
        assert!(std::str::from_utf8(&one[10..]).unwrap().contains("'shape': (3,), }"));
    }
}
