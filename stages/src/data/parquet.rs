//! Parquet image data sets as Hugging Face distributes them: shards with an image column of
//! encoded PNG/JPEG bytes (a plain binary column, or a struct whose `bytes` field holds
//! them) and an integer label column.

use super::folder::decode_image;
use super::{DataError, ImageSet};
use arrow_array::{Array, ArrayRef, BinaryArray, Int64Array, LargeBinaryArray, RecordBatch, StructArray};
use arrow_schema::DataType;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use std::path::{Path, PathBuf};

fn format(path: &Path, what: impl Into<String>) -> DataError {
    DataError::Format { path: path.to_path_buf(), what: what.into() }
}

/// The shards of a split in `dir` (or `dir/data`): files named `<split>*.parquet`, sorted.
pub fn split_files(dir: &Path, split: &str) -> Result<Vec<PathBuf>, DataError> {
    let mut out = Vec::new();
    for d in [dir.to_path_buf(), dir.join("data")] {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if name.starts_with(split) && name.ends_with(".parquet") {
                out.push(e.path());
            }
        }
    }
    out.sort();
    if out.is_empty() {
        return Err(DataError::NotFound { path: dir.to_path_buf(), what: format!("Parquet shards {split}*.parquet (in the folder or its data/ sub-folder)") });
    }
    Ok(out)
}

/// The encoded bytes of row `i` of an image column.
fn image_bytes(path: &Path, col: &ArrayRef, i: usize) -> Result<Vec<u8>, DataError> {
    let bytes_of = |a: &dyn Array| -> Result<Vec<u8>, DataError> {
        if let Some(b) = a.as_any().downcast_ref::<BinaryArray>() {
            Ok(b.value(i).to_vec())
        } else if let Some(b) = a.as_any().downcast_ref::<LargeBinaryArray>() {
            Ok(b.value(i).to_vec())
        } else {
            Err(format(path, format!("image bytes of type {}, expected binary", a.data_type())))
        }
    };
    match col.data_type() {
        DataType::Struct(_) => {
            let s = col.as_any().downcast_ref::<StructArray>().expect("struct type");
            let b = s.column_by_name("bytes").ok_or_else(|| format(path, "image struct without a `bytes` field"))?;
            bytes_of(b.as_ref())
        }
        _ => bytes_of(col.as_ref()),
    }
}

/// One shard: every row decoded to `channels` planes; all images must share one size.
pub fn read_shard(path: &Path, image: &str, label: &str, channels: usize) -> Result<ImageSet, DataError> {
    let file = std::fs::File::open(path).map_err(|e| super::io_error(path, e))?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(|e| format(path, format!("not a Parquet file: {e}")))?
        .build()
        .map_err(|e| format(path, e.to_string()))?;
    let mut set: Option<ImageSet> = None;
    for batch in reader {
        let batch: RecordBatch = batch.map_err(|e| format(path, e.to_string()))?;
        let columns = || batch.schema().fields().iter().map(|f| f.name().clone()).collect::<Vec<_>>().join(", ");
        let img = batch.column_by_name(image).ok_or_else(|| format(path, format!("no `{image}` column; it has {}", columns())))?;
        let lab = batch.column_by_name(label).ok_or_else(|| format(path, format!("no `{label}` column; it has {}", columns())))?;
        let lab = arrow_cast::cast(lab, &DataType::Int64).map_err(|e| format(path, format!("label column: {e}")))?;
        let lab = lab.as_any().downcast_ref::<Int64Array>().expect("cast to int64");
        for i in 0..batch.num_rows() {
            let (pixels, h, w) = decode_image(path, image_bytes(path, img, i)?, channels)?;
            let y = lab.value(i);
            if !(0..=u32::MAX as i64).contains(&y) || lab.is_null(i) {
                return Err(format(path, format!("row {i}: label {y}, expected a class number >= 0")));
            }
            let s = set.get_or_insert_with(|| ImageSet { pixels: Vec::new(), labels: Vec::new(), channels, height: h, width: w });
            if (s.height, s.width) != (h, w) {
                return Err(format(path, format!("row {i}: image is {h}x{w}, expected {}x{} like the first", s.height, s.width)));
            }
            s.pixels.extend(pixels);
            s.labels.push(y as u32);
        }
    }
    set.ok_or_else(|| format(path, "no rows"))
}

/// (height, width, classes) of a split without decoding it all: the first image's size,
/// and one more than the largest label (reading only the label column).
pub fn describe(dir: &Path, split: &str, channels: usize) -> Result<(usize, usize, usize), DataError> {
    let files = split_files(dir, split)?;
    let mut size = None;
    let mut max_label = 0i64;
    for path in &files {
        let file = std::fs::File::open(path).map_err(|e| super::io_error(path, e))?;
        let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| format(path, format!("not a Parquet file: {e}")))?;
        let schema = builder.parquet_schema();
        let pick = |name: &str| (0..schema.num_columns()).filter(|&i| schema.column(i).path().parts()[0] == name).collect::<Vec<_>>();
        let wanted = if size.is_none() { [pick("image"), pick("label")].concat() } else { pick("label") };
        let mask = parquet::arrow::ProjectionMask::leaves(schema, wanted);
        let reader = builder.with_projection(mask).build().map_err(|e| format(path, e.to_string()))?;
        for batch in reader {
            let batch = batch.map_err(|e| format(path, e.to_string()))?;
            if size.is_none() && batch.num_rows() > 0 {
                let img = batch.column_by_name("image").ok_or_else(|| format(path, "no `image` column"))?;
                let (_, h, w) = decode_image(path, image_bytes(path, img, 0)?, channels)?;
                size = Some((h, w));
            }
            let lab = batch.column_by_name("label").ok_or_else(|| format(path, "no `label` column"))?;
            let lab = arrow_cast::cast(lab, &DataType::Int64).map_err(|e| format(path, format!("label column: {e}")))?;
            let lab = lab.as_any().downcast_ref::<Int64Array>().expect("cast to int64");
            max_label = lab.iter().flatten().fold(max_label, i64::max);
        }
    }
    let (h, w) = size.ok_or_else(|| format(dir, format!("{split} shards hold no rows")))?;
    Ok((h, w, max_label as usize + 1))
}

/// A split: its shards, concatenated.
pub fn load_split(dir: &Path, split: &str, channels: usize) -> Result<ImageSet, DataError> {
    let sets = split_files(dir, split)?.iter().map(|p| read_shard(p, "image", "label", channels)).collect::<Result<Vec<_>, _>>()?;
    ImageSet::concat(&sets).ok_or_else(|| format(dir, format!("{split} shards hold images of different sizes")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::testutil::TempDir;
    use arrow_array::{Int64Array, StringArray};
    use arrow_schema::{Field, Fields, Schema};
    use std::sync::Arc;

    /// A PNG of one grey image whose pixels are `v` (-1..1 float, as the grid writer takes).
    fn png(v: f32, side: usize) -> Vec<u8> {
        crate::grid::encode_grid_png(&vec![v; side * side], 1, 1, side, side, 1, 0).unwrap()
    }

    fn write(path: &Path, image: ArrayRef, labels: Vec<i64>) {
        let schema = Arc::new(Schema::new(vec![Field::new("image", image.data_type().clone(), false), Field::new("label", DataType::Int64, false)]));
        let batch = RecordBatch::try_new(schema.clone(), vec![image, Arc::new(Int64Array::from(labels))]).unwrap();
        let mut w = parquet::arrow::ArrowWriter::try_new(std::fs::File::create(path).unwrap(), schema, None).unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();
    }

    #[test]
    fn reads_binary_and_huggingface_struct_columns() {
        let dir = TempDir::new("parquet");
        let imgs = [png(-1.0, 4), png(1.0, 4), png(0.0, 4)];
        let plain: ArrayRef = Arc::new(BinaryArray::from_iter_values(imgs.iter()));
        write(&dir.path("data/train-00000-of-00002.parquet"), plain, vec![0, 1, 2]);
        let bytes: ArrayRef = Arc::new(BinaryArray::from_iter_values(imgs[..2].iter()));
        let paths: ArrayRef = Arc::new(StringArray::from(vec!["a.png", "b.png"]));
        let fields = Fields::from(vec![Field::new("bytes", DataType::Binary, true), Field::new("path", DataType::Utf8, true)]);
        let hf: ArrayRef = Arc::new(StructArray::new(fields, vec![bytes, paths], None));
        write(&dir.path("data/train-00001-of-00002.parquet"), hf, vec![7, 3]);
        write(&dir.path("data/test-00000-of-00001.parquet"), Arc::new(BinaryArray::from_iter_values(imgs[2..].iter())), vec![5]);

        let train = load_split(&dir.0, "train", 1).unwrap();
        assert_eq!((train.len(), train.height, train.width, train.channels), (5, 4, 4, 1));
        assert_eq!(train.labels, vec![0, 1, 2, 7, 3]);
        assert_eq!(train.image(0), &[0u8; 16][..]);
        assert_eq!(train.image(1), &[255u8; 16][..]);
        assert_eq!(train.image(3), train.image(0));
        assert_eq!(describe(&dir.0, "train", 1).unwrap(), (4, 4, 8));
        let rgb = load_split(&dir.0, "test", 3).unwrap();
        assert_eq!((rgb.len(), rgb.channels), (1, 3));
    }

    #[test]
    fn errors_name_the_shard_and_the_problem() {
        let dir = TempDir::new("parquet-bad");
        let p = dir.path("train.parquet");
        write(&p, Arc::new(BinaryArray::from_iter_values([png(0.0, 4), png(0.0, 5)].iter())), vec![0, 1]);
        let e = read_shard(&p, "image", "label", 1).unwrap_err().to_string();
        assert!(e.contains("train.parquet") && e.contains("5x5, expected 4x4"), "{e}");
        let e = read_shard(&p, "img", "label", 1).unwrap_err().to_string();
        assert!(e.contains("no `img` column") && e.contains("image, label"), "{e}");
        write(&p, Arc::new(BinaryArray::from_iter_values([b"nope".to_vec()].iter())), vec![0]);
        assert!(read_shard(&p, "image", "label", 1).is_err());
        write(&p, Arc::new(BinaryArray::from_iter_values([png(0.0, 4)].iter())), vec![-1]);
        assert!(read_shard(&p, "image", "label", 1).unwrap_err().to_string().contains("label -1"));
        std::fs::write(&p, b"not parquet").unwrap();
        assert!(read_shard(&p, "image", "label", 1).unwrap_err().to_string().contains("not a Parquet file"));
        assert!(matches!(split_files(&dir.0, "test"), Err(DataError::NotFound { .. })));
    }
}
