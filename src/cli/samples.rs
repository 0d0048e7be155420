//! `pipe samples`: a synthesis stage's pseudo-negatives as a table, one PNG each, one
//! Parquet or NPY file, or a labelled grid. Which samples is [`crate::audit::samples`]'s
//! question; this module checks the flags and writes the answer.

mod npy;

use super::StoreArg;
use crate::audit::samples::{select, Filter, Sample, Selection};
use crate::engine::store::Store;
use crate::engine::table::{batch_to_parquet, to_batch, Column};
use arrow_array::{ArrayRef, FixedSizeListArray, Float32Array};
use arrow_schema::{DataType, Field};
use crate::kinds::synthesize::GRID_COLUMNS;
use crate::UserError;
use anyhow::{Context, Result};
use stages::grid::{encode_grid_png, encode_labelled_grid_png, LabelledRow};
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(clap::Args)]
pub struct Args {
    /// The synthesize stage: RUN:synthesize/N (e.g. 20261202-1:synthesize/3), or its stage
    /// key (or a unique prefix).
    stage: String,
    /// Only the samples made for class K.
    #[arg(long, value_name = "K")]
    class: Option<u32>,
    /// Only the samples that still fool a later classifier (f_k > 0, as `pipe lineage`
    /// scores them): the last round's classifier of the stage's run, or --by.
    #[arg(long)]
    fooling: bool,
    /// The classifier --fooling asks: RUN:train/N or a checkpoint digest (prefix); it must
    /// have been trained on the stage's samples.
    #[arg(long, value_name = "CHECKPOINT", requires = "fooling")]
    by: Option<String>,
    /// Write one PNG per sample into DIR (created if needed), named
    /// r<round>_c<class>_i<sample id>_fk<f_k at stop>.png, e.g. r003_c7_i0042_fk+1.234.png:
    /// numbers zero-padded so names sort by round, class and id; f_k signed, 3 decimals
    /// (`nan` for p0 noise). Pixels map [-1, 1] to 0..255.
    #[arg(long, value_name = "DIR")]
    png: Option<PathBuf>,
    /// The format of --out: `parquet` (a row per sample, metadata and pixels) or `npy`
    /// (float32 N x C x H x W; beside x.npy, x.meta.npy holds a record per sample: round,
    /// class, sample_id, seed, steps, stop_reason, final_logit, final_prob). Without it,
    /// --out's extension decides.
    #[arg(long, value_parser = ["parquet", "npy"], requires = "out")]
    format: Option<String>,
    /// Write the selected samples to FILE (.parquet or .npy, or name --format).
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// Write a grid PNG of the selected samples: rows of up to 10, a class per row, the
    /// class written beside it.
    #[arg(long, value_name = "FILE")]
    grid: Option<PathBuf>,
    #[command(flatten)]
    store: StoreArg,
}

#[derive(Clone, Copy, PartialEq)]
enum Format {
    Parquet,
    Npy,
}

pub fn run(a: &Args) -> Result<()> {
    // every flag and path is checked before anything is read or written
    let out = match &a.out {
        Some(path) => Some((file_format(path, a.format.as_deref())?, path.as_path())),
        None => None,
    };
    if let Some((format, path)) = out {
        writable_file(path)?;
        if format == Format::Npy {
            writable_file(&meta_path(path))?;
        }
    }
    if let Some(g) = &a.grid {
        writable_file(g)?;
    }
    if let Some(dir) = a.png.as_deref().filter(|d| d.exists() && !d.is_dir()) {
        return Err(UserError(format!("--png {}: not a directory", dir.display())).into());
    }
    let store = Store::open_existing(&a.store.store)?;
    let sel = select(&store, &a.stage, &Filter { class: a.class, fooling: a.fooling.then_some(a.by.as_deref()) })?;

    println!("{}", heading(&sel, a.class));
    if a.png.is_none() && out.is_none() && a.grid.is_none() {
        print_table(&sel);
        return Ok(());
    }
    if let Some(dir) = &a.png {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        for s in &sel.samples {
            let (c, h, w) = sel.shape;
            let path = dir.join(png_name(&sel, s));
            std::fs::write(&path, encode_grid_png(sel.image(s), 1, c, h, w, 1, 0)?).with_context(|| format!("writing {}", path.display()))?;
        }
        println!("{} PNGs -> {}", sel.samples.len(), dir.display());
    }
    match out {
        Some((Format::Parquet, path)) => {
            write(path, &to_table(&sel)?)?;
            println!("{} samples -> {}", sel.samples.len(), path.display());
        }
        Some((Format::Npy, path)) => {
            let (c, h, w) = sel.shape;
            let images: Vec<u8> = sel.samples.iter().flat_map(|s| sel.image(s)).flat_map(|v| v.to_le_bytes()).collect();
            write(path, &npy::encode("'<f4'", &[sel.samples.len(), c, h, w], &images)?)?;
            let meta = meta_path(path);
            write(&meta, &npy::encode(META_DESCR, &[sel.samples.len()], &meta_records(&sel.samples))?)?;
            println!("{} samples -> {} (images), {} (metadata)", sel.samples.len(), path.display(), meta.display());
        }
        None => {}
    }
    if let Some(path) = &a.grid {
        match grid(&sel)? {
            Some(png) => {
                write(path, &png)?;
                println!("grid of {} samples -> {}", sel.samples.len(), path.display());
            }
            None => println!("no samples selected: no grid written"),
        }
    }
    Ok(())
}

/// The format of `--out path`: `--format`, else the file's extension; a contradiction or
/// an unknown extension is bad input.
fn file_format(path: &Path, format: Option<&str>) -> Result<Format> {
    let by_name = |s: &str| match s {
        "parquet" => Some(Format::Parquet),
        "npy" => Some(Format::Npy),
        _ => None,
    };
    let ext = path.extension().and_then(|e| e.to_str()).and_then(by_name);
    match (format.and_then(by_name), ext) {
        (Some(f), Some(e)) if f != e => Err(UserError(format!("--out {} has the extension of another format than --format {}", path.display(), format.unwrap_or_default())).into()),
        (Some(f), _) | (None, Some(f)) => Ok(f),
        (None, None) => Err(UserError(format!("--out {}: name a .parquet or .npy file, or give --format parquet|npy", path.display())).into()),
    }
}

/// `path` can be written as a file: not a directory, in a directory that exists.
fn writable_file(path: &Path) -> Result<()> {
    let parent = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    if path.is_dir() || !parent.is_dir() {
        return Err(UserError(format!("cannot write {}: {}", path.display(), if path.is_dir() { "a directory" } else { "no such directory" })).into());
    }
    Ok(())
}

fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))
}

/// `x.npy` -> `x.meta.npy` (any other name gets `.meta.npy` appended).
fn meta_path(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    path.with_file_name(format!("{}.meta.npy", name.strip_suffix(".npy").unwrap_or(&name)))
}

fn heading(sel: &Selection, class: Option<u32>) -> String {
    let class = class.map(|k| format!(", class {k}")).unwrap_or_default();
    let fooling = sel.judge.as_ref().map(|j| format!(", still fooling {} (round {})", j.name, j.round)).unwrap_or_default();
    format!("{} ({}, round {}): {} of {} samples{class}{fooling}", sel.stage, &sel.key[..12.min(sel.key.len())], sel.round, sel.samples.len(), sel.total)
}

fn print_table(sel: &Selection) {
    if sel.samples.is_empty() {
        return;
    }
    let judge = sel.judge.as_ref().map(|j| format!(" {:>9}", format!("f_k@{}", j.round))).unwrap_or_default();
    println!("  {:>5} {:>5} {:>6} {:>5} {:<11} {:>9}{judge}", "round", "class", "id", "steps", "stop", "f_k");
    for s in &sel.samples {
        let m = &s.meta;
        let later = s.judged.as_ref().map(|x| format!(" {:>9.3}", x.logit)).unwrap_or_default();
        println!("  {:>5} {:>5} {:>6} {:>5} {:<11} {:>9.3}{later}", m.round, m.class, m.sample_id, m.steps, m.stop_reason, m.logit);
    }
    println!("{} samples", sel.samples.len());
}

/// `r003_c7_i0042_fk+1.234.png`: class and id padded to the stage's largest, so a stage's
/// names sort by class and id and do not depend on which samples were selected.
fn png_name(sel: &Selection, s: &Sample) -> String {
    let digits = |n: usize| n.max(1).ilog10() as usize + 1;
    let class_w = digits(sel.classes.iter().copied().max().unwrap_or(0) as usize);
    let id_w = digits(sel.total.saturating_sub(1)).max(4);
    let fk = if s.meta.logit.is_nan() { "nan".to_string() } else { format!("{:+.3}", s.meta.logit) };
    format!("r{:03}_c{:0class_w$}_i{:0id_w$}_fk{fk}.png", s.meta.round, s.meta.class, s.meta.sample_id)
}

/// The Parquet form: a row per sample, its table row and its pixels (docs/schemas.md).
fn to_table(sel: &Selection) -> Result<Vec<u8>> {
    let s = &sel.samples;
    let n = s.len();
    let (c, h, w) = sel.shape;
    let columns = vec![
        ("round", Column::U32(s.iter().map(|s| s.meta.round).collect())),
        ("class", Column::U32(s.iter().map(|s| s.meta.class).collect())),
        ("sample_id", Column::U32(s.iter().map(|s| s.meta.sample_id).collect())),
        ("seed", Column::U64(s.iter().map(|s| s.meta.seed).collect())),
        ("steps", Column::U32(s.iter().map(|s| s.meta.steps).collect())),
        ("stop_reason", Column::Str(s.iter().map(|s| s.meta.stop_reason.clone()).collect())),
        ("final_logit", Column::F32(s.iter().map(|s| s.meta.logit).collect())),
        ("final_prob", Column::F32(s.iter().map(|s| s.meta.prob).collect())),
        ("channels", Column::U32(vec![c as u32; n])),
        ("height", Column::U32(vec![h as u32; n])),
        ("width", Column::U32(vec![w as u32; n])),
    ];
    // an image per row: a fixed-size list, so readers know every row has C*H*W values
    let item = Arc::new(Field::new_list_field(DataType::Float32, false));
    let size = i32::try_from(c * h * w).context("images too large for a Parquet list")?;
    let values = Float32Array::from(s.iter().flat_map(|s| sel.image(s)).copied().collect::<Vec<f32>>());
    let pixels = FixedSizeListArray::try_new(item.clone(), size, Arc::new(values), None)?;
    let pixels = (Field::new("pixels", DataType::FixedSizeList(item, size), false), Arc::new(pixels) as ArrayRef);
    batch_to_parquet(&to_batch(columns, vec![pixels])?)
}

/// The record type of FILE.meta.npy: packed, little-endian, `stop_reason` NUL-padded.
const META_DESCR: &str = "[('round', '<u4'), ('class', '<u4'), ('sample_id', '<u4'), ('seed', '<u8'), ('steps', '<u4'), ('stop_reason', '|S16'), ('final_logit', '<f4'), ('final_prob', '<f4')]";

fn meta_records(samples: &[Sample]) -> Vec<u8> {
    let mut out = Vec::with_capacity(samples.len() * 48);
    for s in samples {
        let m = &s.meta;
        for v in [m.round, m.class, m.sample_id] {
            out.extend(v.to_le_bytes());
        }
        out.extend(m.seed.to_le_bytes());
        out.extend(m.steps.to_le_bytes());
        let mut stop = [0u8; 16];
        let text = m.stop_reason.as_bytes();
        stop[..text.len().min(16)].copy_from_slice(&text[..text.len().min(16)]);
        out.extend(stop);
        out.extend(m.logit.to_le_bytes());
        out.extend(m.prob.to_le_bytes());
    }
    out
}

/// The labelled grid of the selection: a class per row (more rows for more than
/// [`GRID_COLUMNS`] samples), classes ascending; `None` when nothing was selected.
fn grid(sel: &Selection) -> Result<Option<Vec<u8>>> {
    let mut by_class: Vec<&Sample> = sel.samples.iter().collect();
    by_class.sort_by_key(|s| (s.meta.class, s.meta.sample_id));
    let mut rows: Vec<LabelledRow> = Vec::new();
    for class in by_class.chunk_by(|a, b| a.meta.class == b.meta.class) {
        for chunk in class.chunks(GRID_COLUMNS) {
            rows.push(LabelledRow { label: chunk[0].meta.class, tiles: chunk.iter().map(|s| Some(sel.image(s))).collect() });
        }
    }
    if rows.is_empty() {
        return Ok(None);
    }
    let (c, h, w) = sel.shape;
    Ok(Some(encode_labelled_grid_png(&rows, c, h, w, 2)?))
}
