//! Tidy tables as Parquet bytes (arrow-rs), and a text view of them for the CLI. The
//! writer settings are fixed so the same rows always give the same bytes (and digest).

use anyhow::{Context, Result};
use arrow_array::{ArrayRef, BooleanArray, Float32Array, Float64Array, Int32Array, RecordBatch, StringArray, UInt32Array, UInt64Array};
use arrow_schema::{DataType, Field, Schema};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use std::sync::Arc;

pub enum Column {
    U32(Vec<u32>),
    I32(Vec<i32>),
    U64(Vec<u64>),
    F32(Vec<f32>),
    F64(Vec<f64>),
    Str(Vec<String>),
    Bool(Vec<bool>),
    /// Nullable columns: `None` is a null.
    OptU32(Vec<Option<u32>>),
    OptU64(Vec<Option<u64>>),
    OptF64(Vec<Option<f64>>),
    OptBool(Vec<Option<bool>>),
}

impl Column {
    fn array(self) -> (DataType, ArrayRef) {
        match self {
            Column::U32(v) => (DataType::UInt32, Arc::new(UInt32Array::from(v))),
            Column::I32(v) => (DataType::Int32, Arc::new(Int32Array::from(v))),
            Column::U64(v) => (DataType::UInt64, Arc::new(UInt64Array::from(v))),
            Column::F32(v) => (DataType::Float32, Arc::new(Float32Array::from(v))),
            Column::F64(v) => (DataType::Float64, Arc::new(Float64Array::from(v))),
            Column::Str(v) => (DataType::Utf8, Arc::new(StringArray::from(v))),
            Column::Bool(v) => (DataType::Boolean, Arc::new(BooleanArray::from(v))),
            Column::OptU32(v) => (DataType::UInt32, Arc::new(UInt32Array::from(v))),
            Column::OptU64(v) => (DataType::UInt64, Arc::new(UInt64Array::from(v))),
            Column::OptF64(v) => (DataType::Float64, Arc::new(Float64Array::from(v))),
            Column::OptBool(v) => (DataType::Boolean, Arc::new(BooleanArray::from(v))),
        }
    }

    fn nullable(&self) -> bool {
        matches!(self, Column::OptU32(_) | Column::OptU64(_) | Column::OptF64(_) | Column::OptBool(_))
    }
}

/// Encodes named columns (all of one length) as one Parquet file.
pub fn to_parquet(columns: Vec<(&str, Column)>) -> Result<Vec<u8>> {
    batch_to_parquet(&to_batch(columns, Vec::new())?)
}

/// Named columns (all of one length), then `more` columns of other Arrow types, as a batch.
pub fn to_batch(columns: Vec<(&str, Column)>, more: Vec<(Field, ArrayRef)>) -> Result<RecordBatch> {
    let mut fields = Vec::new();
    let mut arrays = Vec::new();
    for (name, col) in columns {
        let nullable = col.nullable();
        let (dt, arr) = col.array();
        fields.push(Field::new(name, dt, nullable));
        arrays.push(arr);
    }
    for (field, arr) in more {
        fields.push(field);
        arrays.push(arr);
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays).context("building a table")
}

/// One batch as one Parquet file, with the fixed writer settings.
pub fn batch_to_parquet(batch: &RecordBatch) -> Result<Vec<u8>> {
    let props = WriterProperties::builder().set_compression(Compression::SNAPPY).build();
    let mut writer = ArrowWriter::try_new(Vec::new(), batch.schema(), Some(props))?;
    writer.write(batch)?;
    Ok(writer.into_inner()?)
}

/// All rows of a Parquet file.
pub fn read_parquet(bytes: Vec<u8>) -> Result<Vec<RecordBatch>> {
    let reader = ParquetRecordBatchReaderBuilder::try_new(bytes::Bytes::from(bytes))?.build()?;
    Ok(reader.collect::<std::result::Result<Vec<_>, _>>()?)
}

/// A text table of the first `max_rows` rows.
pub fn format_parquet(bytes: Vec<u8>, max_rows: usize) -> Result<String> {
    let batches = read_parquet(bytes)?;
    let total: usize = batches.iter().map(|b| b.num_rows()).sum();
    let mut kept = Vec::new();
    let mut left = max_rows;
    for b in batches {
        if left == 0 {
            break;
        }
        let n = b.num_rows().min(left);
        kept.push(b.slice(0, n));
        left -= n;
    }
    let mut text = arrow_cast::pretty::pretty_format_batches(&kept)?.to_string();
    if total > max_rows {
        text.push_str(&format!("\n... {} more rows", total - max_rows));
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_deterministic_bytes() -> Result<()> {
        let make = || to_parquet(vec![("round", Column::U32(vec![1, 2])), ("metric", Column::Str(vec!["error".into(), "error".into()])), ("value", Column::F64(vec![0.5, 0.25]))]);
        let a = make()?;
        assert_eq!(a, make()?);
        let batches = read_parquet(a.clone())?;
        assert_eq!(batches[0].num_rows(), 2);
        let text = format_parquet(a, 1)?;
        assert!(text.contains("0.5") && text.contains("1 more rows"), "{text}");
        Ok(())
    }
}
