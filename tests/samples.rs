//! `pipe samples` on a real two-round run: PNG files, Parquet and NPY exports and grids
//! checked against the synthesis stage's stored tensors and table, `--class`, `--fooling`
//! against `pipe lineage`, docs/schemas.md against the Parquet written, and bad input.

use arrow_array::cast::AsArray;
use arrow_array::types::{Float32Type, UInt32Type};
use arrow_array::RecordBatch;
use arrow_schema::DataType;
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Output;

mod common;
use common::*;

fn samples(store: &Path, args: &[&str]) -> Output {
    pipe().arg("samples").args(args).arg("--store").arg(store).output().unwrap()
}

fn ok(out: Output) -> String {
    assert!(out.status.success(), "pipe samples failed:\n{}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// What a synthesis stage stored: its images and classes, and its table's rows.
struct Stored {
    images: Vec<f32>,
    classes: Vec<u32>,
    d: usize,
    /// (round, class, sample_id, final_logit) per sample.
    rows: Vec<(u32, u32, u32, f32)>,
}

fn stored(store: &Path, record: &Value, stage: &str) -> Stored {
    let s = record["stages"].as_array().unwrap().iter().find(|s| s["stage"] == stage).unwrap();
    let read = |output: &str| std::fs::read(object(store, s["outputs"][output]["digest"].as_str().unwrap())).unwrap();
    let pn = stages::codec::decode_pseudo_negatives(&read("pseudo_negatives.safetensors")).unwrap();
    let mut rows = Vec::new();
    for b in pipe::engine::table::read_parquet(read("pseudo_negatives.parquet")).unwrap() {
        let u = |c: &str| b.column_by_name(c).unwrap().as_primitive::<UInt32Type>().clone();
        let (round, class, id) = (u("round"), u("class"), u("sample_id"));
        let logit = b.column_by_name("final_logit").unwrap().as_primitive::<Float32Type>().clone();
        rows.extend((0..b.num_rows()).map(|i| (round.value(i), class.value(i), id.value(i), logit.value(i))));
    }
    let (c, h, w) = pn.shape;
    Stored { images: pn.images, classes: pn.classes, d: c * h * w, rows }
}

impl Stored {
    fn image(&self, id: usize) -> &[f32] {
        &self.images[id * self.d..(id + 1) * self.d]
    }
}

/// [-1, 1] -> 0..255 as the PNGs promise (clipped, rounded).
fn byte(v: f32) -> u8 {
    ((v.clamp(-1.0, 1.0) + 1.0) * 127.5).round() as u8
}

/// (width, height, channels, pixels) of a PNG.
fn decode_png(bytes: &[u8]) -> (usize, usize, usize, Vec<u8>) {
    let mut reader = png::Decoder::new(std::io::Cursor::new(bytes)).read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    buf.truncate(info.buffer_size());
    (info.width as usize, info.height as usize, info.color_type.samples(), buf)
}

fn one_batch(path: &Path) -> RecordBatch {
    let mut batches = pipe::engine::table::read_parquet(std::fs::read(path).unwrap()).unwrap();
    assert_eq!(batches.len(), 1);
    batches.remove(0)
}

fn u32s(b: &RecordBatch, c: &str) -> Vec<u32> {
    b.column_by_name(c).unwrap().as_primitive::<UInt32Type>().values().to_vec()
}

/// A run of the small pipeline (2 rounds x 10 classes x 3 pseudo-negatives) in a fresh
/// directory: the directory, the store, the run record and the run's id.
fn two_rounds() -> (tempfile::TempDir, PathBuf, Value, String) {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    run(&small(dir.path(), 2), &store, &[]);
    let record = last_record(&store);
    let id = record["id"].as_str().unwrap().to_string();
    (dir, store, record, id)
}

#[test]
fn pngs_tables_npy_and_grids_hold_the_stored_samples() {
    let (dir, store, record, run_id) = two_rounds();
    let stage = format!("{run_id}:synthesize/2");
    let st = stored(&store, &record, "synthesize/2");
    assert_eq!(st.rows.len(), 30);

    // one PNG per sample, named by its table row, with its pixels
    let pngs = dir.path().join("pngs");
    ok(samples(&store, &[&stage, "--png", pngs.to_str().unwrap()]));
    let names: Vec<String> = files_under(&pngs).iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
    let expected: Vec<String> = st.rows.iter().map(|(r, c, i, fk)| format!("r{r:03}_c{c}_i{i:04}_fk{fk:+.3}.png")).collect();
    assert_eq!(names, expected, "names sort as the table's rows do");
    for (name, (_, class, id, _)) in names.iter().zip(&st.rows) {
        assert_eq!(st.classes[*id as usize], *class);
        let (w, h, c, px) = decode_png(&std::fs::read(pngs.join(name)).unwrap());
        assert_eq!((w, h, c), (28, 28, 1));
        assert_eq!(px, st.image(*id as usize).iter().map(|&v| byte(v)).collect::<Vec<u8>>(), "{name}");
    }

    // --class keeps one class, in every form
    let class3 = dir.path().join("class3");
    ok(samples(&store, &[&stage, "--class", "3", "--png", class3.to_str().unwrap()]));
    let kept: Vec<String> = files_under(&class3).iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
    assert_eq!(kept, names.iter().filter(|n| n.contains("_c3_")).cloned().collect::<Vec<_>>());
    assert_eq!(kept.len(), 3);
    let table = ok(samples(&store, &[&stage, "--class", "3"]));
    assert!(table.contains("synthesize/2") && table.contains(": 3 of 30 samples, class 3") && table.trim_end().ends_with("3 samples"), "{table}");

    // Parquet: the table's rows and the stored pixels
    let pq = dir.path().join("c3.parquet");
    ok(samples(&store, &[&stage, "--class", "3", "--out", pq.to_str().unwrap()]));
    let b = one_batch(&pq);
    let ids = u32s(&b, "sample_id");
    assert_eq!(ids, st.rows.iter().filter(|r| r.1 == 3).map(|r| r.2).collect::<Vec<_>>());
    assert!(u32s(&b, "class").iter().all(|&c| c == 3));
    let fk = b.column_by_name("final_logit").unwrap().as_primitive::<Float32Type>().values().to_vec();
    assert_eq!(fk, ids.iter().map(|&i| st.rows[i as usize].3).collect::<Vec<_>>());
    assert_eq!((u32s(&b, "channels")[0], u32s(&b, "height")[0], u32s(&b, "width")[0]), (1, 28, 28));
    let pixels = b.column_by_name("pixels").unwrap().as_fixed_size_list();
    for (row, &id) in ids.iter().enumerate() {
        assert_eq!(pixels.value(row).as_primitive::<Float32Type>().values().to_vec(), st.image(id as usize));
    }

    // NPY: N x C x H x W float32 and a record per sample beside it
    let npy = dir.path().join("all.npy");
    ok(samples(&store, &[&stage, "--format", "npy", "--out", npy.to_str().unwrap()]));
    let (header, data) = npy_parts(&npy);
    assert_eq!(header, "{'descr': '<f4', 'fortran_order': False, 'shape': (30, 1, 28, 28), }");
    assert_eq!(data, st.images.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>());
    let (header, data) = npy_parts(&dir.path().join("all.meta.npy"));
    assert!(header.starts_with("{'descr': [('round', '<u4'), ('class', '<u4'), ('sample_id', '<u4'), ('seed', '<u8'), ('steps', '<u4'), ('stop_reason', '|S16'), ('final_logit', '<f4'), ('final_prob', '<f4')]"), "{header}");
    assert!(header.ends_with("'shape': (30,), }"), "{header}");
    assert_eq!(data.len(), 30 * 48);
    for (rec, (round, class, id, fk)) in data.chunks(48).zip(&st.rows) {
        let u = |at: usize| u32::from_le_bytes(rec[at..at + 4].try_into().unwrap());
        assert_eq!((u(0), u(4), u(8)), (*round, *class, *id));
        assert_eq!(f32::from_le_bytes(rec[40..44].try_into().unwrap()).to_bits(), fk.to_bits());
    }

    // the labelled grid of a selection: one row (class 3), its tiles as stored
    let grid = dir.path().join("grid.png");
    ok(samples(&store, &[&stage, "--class", "3", "--grid", grid.to_str().unwrap()]));
    let (w, h, _, px) = decode_png(&std::fs::read(&grid).unwrap());
    assert_eq!(h, 28);
    let left = w - (3 * 28 + 2 * 2);
    for (j, &id) in ids.iter().enumerate() {
        for y in 0..28 {
            let at = y * w + left + j * 30;
            assert_eq!(&px[at..at + 28], &st.image(id as usize)[y * 28..(y + 1) * 28].iter().map(|&v| byte(v)).collect::<Vec<u8>>()[..]);
        }
    }
    assert!(px.chunks(w).any(|r| r[..left].contains(&255)), "the class is written left of the tiles");

    // the stage's own grid.png is labelled the same way: a row per class
    let s = record["stages"].as_array().unwrap().iter().find(|s| s["stage"] == "synthesize/2").unwrap();
    let (w, h, _, px) = decode_png(&std::fs::read(object(&store, s["outputs"]["grid.png"]["digest"].as_str().unwrap())).unwrap());
    assert_eq!(h, 10 * 28 + 9 * 2);
    let left = w - (3 * 28 + 2 * 2);
    assert!(px.chunks(w).skip(9 * 30).take(28).any(|r| r[..left].contains(&255)), "class 9's row has its label");

    // schema as documented
    assert_eq!(schema_of_doc("pipe samples"), schema_of(&b));
}

#[test]
fn fooling_keeps_exactly_what_lineage_says_still_fools() {
    let (dir, store, _, run_id) = two_rounds();
    let mut seen_any = false;
    // (synthesis stage, --by, the classifier lineage is asked about)
    for (stage, by, judge, round) in [("synthesize/1", None, "train/2", 2), ("synthesize/1", Some("train/1"), "train/1", 1), ("synthesize/2", None, "train/2", 2)] {
        let out = pipe().arg("lineage").arg(format!("{run_id}:{judge}")).arg("--json").arg("--store").arg(&store).output().unwrap();
        let l: Value = serde_json::from_slice(&out.stdout).unwrap();
        let made_in: u64 = stage[stage.len() - 1..].parse().unwrap();
        let fooling: BTreeSet<u32> = l["pseudo_negatives"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["round"] == made_in && p["later"].as_array().unwrap().iter().any(|x| x["round"] == round && x["fools"] == true))
            .map(|p| p["sample_id"].as_u64().unwrap() as u32)
            .collect();

        let pq = dir.path().join(format!("{stage}-{judge}.parquet").replace('/', "_"));
        let mut args = vec![format!("{run_id}:{stage}"), "--fooling".into(), "--out".into(), pq.to_str().unwrap().into()];
        if let Some(by) = by {
            args.extend(["--by".into(), format!("{run_id}:{by}")]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let said = ok(samples(&store, &args));
        assert!(said.contains(&format!("still fooling {run_id}:{judge} (round {round})")), "{said}");
        let got: BTreeSet<u32> = u32s(&one_batch(&pq), "sample_id").into_iter().collect();
        assert_eq!(got, fooling, "{stage} judged by {judge}");
        seen_any |= !got.is_empty() && got.len() < 30;
    }
    assert!(seen_any, "no case where some but not all samples still fool: the comparison proved little");

    // a classifier trained before the samples existed cannot judge them
    let out = samples(&store, &[&format!("{run_id}:synthesize/2"), "--fooling", "--by", &format!("{run_id}:train/1")]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("was not trained on the pseudo-negatives of synthesize/2"), "{}", text(&out));
}

#[test]
fn bad_input_exits_2_and_writes_nothing() {
    let (dir, store, _, run_id) = two_rounds();
    let stage = format!("{run_id}:synthesize/1");
    let before = files_under(&store);
    let outdir = dir.path().join("out");
    std::fs::create_dir(&outdir).unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    let at = |name: &str| outdir.join(name).to_str().unwrap().to_string();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (vec![stage.clone(), "--class".into(), "10".into(), "--png".into(), at("pngs")], "classes 0 to 9"),
        (vec![format!("{run_id}:synthesize/7"), "--out".into(), at("x.parquet")], "has no stage `synthesize/7`"),
        (vec!["ffffffffffff".into(), "--png".into(), at("pngs")], "no stage `ffffffffffff`"),
        (vec![format!("{run_id}:train/1"), "--png".into(), at("pngs")], "is a train stage"),
        (vec![stage.clone(), "--out".into(), at("x.csv")], "name a .parquet or .npy file"),
        (vec![stage.clone(), "--format".into(), "npy".into(), "--out".into(), at("x.parquet")], "another format"),
        (vec![stage.clone(), "--format".into(), "npy".into()], "--out"),
        (vec![stage.clone(), "--by".into(), format!("{run_id}:train/2"), "--png".into(), at("pngs")], "--fooling"),
        (vec![stage.clone(), "--fooling".into(), "--by".into(), format!("{run_id}:evaluate/2"), "--png".into(), at("pngs")], "train stage"),
        (vec![stage.clone(), "--png".into(), file.to_str().unwrap().into()], "not a directory"),
        (vec![stage.clone(), "--out".into(), at("missing/x.parquet")], "no such directory"),
    ];
    for (args, says) in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = samples(&store, &args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", text(&out));
        assert!(text(&out).contains(says), "{args:?}: {}", text(&out));
        assert!(files_under(&outdir).is_empty() && std::fs::read_dir(&outdir).unwrap().next().is_none(), "{args:?} wrote something");
    }
    assert_eq!(std::fs::read(&file).unwrap(), b"x");
    assert_eq!(files_under(&store), before);
}

/// (header text without its padding, data) of an .npy file, its preamble checked.
fn npy_parts(path: &Path) -> (String, Vec<u8>) {
    let bytes = std::fs::read(path).unwrap();
    assert_eq!(&bytes[..8], b"\x93NUMPY\x01\x00", "magic and version 1.0");
    let len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    assert_eq!((10 + len) % 64, 0, "data aligned to 64 bytes");
    let header = std::str::from_utf8(&bytes[10..10 + len]).unwrap();
    assert!(header.ends_with('\n'));
    (header.trim_end().to_string(), bytes[10 + len..].to_vec())
}

/// (column, type, nullable) as docs/schemas.md writes them.
fn schema_of(b: &RecordBatch) -> Vec<(String, String, bool)> {
    b.schema()
        .fields()
        .iter()
        .map(|f| {
            let ty = match f.data_type() {
                DataType::Utf8 => "string".to_string(),
                DataType::UInt32 => "uint32".into(),
                DataType::UInt64 => "uint64".into(),
                DataType::Float32 => "float32".into(),
                DataType::FixedSizeList(item, _) if item.data_type() == &DataType::Float32 => "fixed_size_list<float32>".into(),
                other => panic!("no doc name for {other}"),
            };
            (f.name().clone(), ty, f.is_nullable())
        })
        .collect()
}

/// The columns of the first docs/schemas.md table under a `## ` heading containing `title`.
fn schema_of_doc(title: &str) -> Vec<(String, String, bool)> {
    let doc = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/schemas.md")).unwrap();
    let section: Vec<&str> = doc.lines().skip_while(|l| !(l.starts_with("## ") && l.contains(title))).skip(1).take_while(|l| !l.starts_with("## ")).collect();
    assert!(!section.is_empty(), "docs/schemas.md has no `## ...{title}...` section");
    section
        .iter()
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .map(|l| l.trim_matches('|').split('|').map(|c| c.trim().trim_matches('`').to_string()).collect::<Vec<_>>())
        .filter(|cells| cells[0] != "column" && !cells[0].starts_with("---"))
        .map(|cells| (cells[0].clone(), cells[1].split(',').next().unwrap().trim().to_string(), cells[1].contains("nullable")))
        .collect()
}
