//! `pipe export` and `pipe report` on real runs of a tiny pipeline (two seeds): the exported
//! rows against the run records, the report's numbers against the same records, user
//! errors, and docs/schemas.md against the columns the export really writes.

use arrow_array::cast::AsArray;
use arrow_array::types::{Float64Type, UInt32Type, UInt64Type};
use arrow_array::{Array, RecordBatch};
use arrow_schema::DataType;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

mod common;
use common::{pipe, small};

fn tiny(dir: &Path) -> PathBuf {
    small(dir, 1)
}

fn ok(mut c: Command) -> Output {
    let out = c.output().unwrap();
    assert!(out.status.success(), "{c:?} failed:\n{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    out
}

fn run(file: &Path, store: &Path, sets: &[&str]) {
    let mut c = pipe();
    c.arg("run").arg(file).arg("--store").arg(store);
    for s in sets {
        c.arg("--set").arg(s);
    }
    ok(c);
}

/// The export as one record batch (it writes one).
fn read_table(path: &Path) -> RecordBatch {
    let reader = ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(path).unwrap()).unwrap().build().unwrap();
    let mut batches: Vec<RecordBatch> = reader.map(Result::unwrap).collect();
    assert_eq!(batches.len(), 1);
    batches.remove(0)
}

/// An exported row, with nulls as None.
#[derive(Debug)]
struct Row {
    run: String,
    setting: String,
    seed: Option<u64>,
    stage: String,
    kind: String,
    round: Option<u32>,
    class: Option<u32>,
    metric: String,
    value: f64,
    seconds: Option<f64>,
    cached: Option<bool>,
}

fn rows(b: &RecordBatch) -> Vec<Row> {
    let s = |n: &str| b.column_by_name(n).unwrap().as_string::<i32>().clone();
    let (run, setting, stage, kind, metric) = (s("run"), s("setting"), s("stage"), s("kind"), s("metric"));
    let seed = b.column_by_name("seed").unwrap().as_primitive::<UInt64Type>().clone();
    let round = b.column_by_name("round").unwrap().as_primitive::<UInt32Type>().clone();
    let class = b.column_by_name("class").unwrap().as_primitive::<UInt32Type>().clone();
    let value = b.column_by_name("value").unwrap().as_primitive::<Float64Type>().clone();
    let seconds = b.column_by_name("seconds").unwrap().as_primitive::<Float64Type>().clone();
    let cached = b.column_by_name("cached").unwrap().as_boolean().clone();
    let opt = |a: &dyn Array, i: usize| !a.is_null(i);
    (0..b.num_rows())
        .map(|i| Row {
            run: run.value(i).into(),
            setting: setting.value(i).into(),
            seed: opt(&seed, i).then(|| seed.value(i)),
            stage: stage.value(i).into(),
            kind: kind.value(i).into(),
            round: opt(&round, i).then(|| round.value(i)),
            class: opt(&class, i).then(|| class.value(i)),
            metric: metric.value(i).into(),
            value: value.value(i),
            seconds: opt(&seconds, i).then(|| seconds.value(i)),
            cached: opt(&cached, i).then(|| cached.value(i)),
        })
        .collect()
}

fn records(store: &Path) -> Vec<Value> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(store.join("runs")).unwrap().map(|e| e.unwrap().path()).collect();
    paths.sort();
    paths.iter().map(|p| serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()).collect()
}

/// Header and body rows of every table Polars printed (`│ a ┆ b │` lines).
/// The tables of `pipe report`: a title line ending in `:`, then a header and rows, each
/// indented two spaces, with cells apart by two or more spaces.
fn report_tables(text: &str) -> Vec<(Vec<String>, Vec<Vec<String>>)> {
    let mut tables = Vec::new();
    let mut current: Option<Vec<Vec<String>>> = None;
    for line in text.lines().chain([""]) {
        match current.as_mut() {
            Some(rows) if line.starts_with("  ") => {
                rows.push(line.trim().split("  ").map(str::trim).filter(|c| !c.is_empty()).map(String::from).collect());
            }
            _ => {
                if let Some(mut rows) = current.take().filter(|r| !r.is_empty()) {
                    let header = rows.remove(0);
                    assert!(rows.iter().all(|r| r.len() == header.len()), "a row with a missing cell: {header:?} {rows:?}");
                    tables.push((header, rows));
                }
                if line.ends_with(':') && !line.starts_with(' ') {
                    current = Some(Vec::new());
                }
            }
        }
    }
    tables
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-4 * b.abs().max(1.0)
}

#[test]
fn export_rows_match_the_run_records_and_report_summarizes_them() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let file = tiny(dir.path());
    run(&file, &store, &[]);
    run(&file, &store, &["pipeline.seed=8"]);

    let out = ok({
        let mut c = pipe();
        c.arg("export").arg("--store").arg(&store);
        c
    });
    let path = store.join("export/metrics.parquet");
    assert!(String::from_utf8_lossy(&out.stdout).contains("metrics.parquet"));
    let rows = rows(&read_table(&path));
    let recs = records(&store);
    assert_eq!(recs.len(), 2);

    let mut seeds = Vec::new();
    for r in &recs {
        let id = r["id"].as_str().unwrap();
        let mine: Vec<&Row> = rows.iter().filter(|x| x.run == id).collect();
        let seed = r["spec"]["pipeline"]["seed"].as_u64();
        assert!(mine.iter().all(|x| x.seed == seed && x.setting.is_empty()), "seed and setting of {id}");
        seeds.push(seed.unwrap());
        for s in r["stages"].as_array().unwrap() {
            let stage = s["stage"].as_str().unwrap();
            let of_stage: Vec<&&Row> = mine.iter().filter(|x| x.stage == stage).collect();
            let secs: Vec<&&&Row> = of_stage.iter().filter(|x| x.metric == "seconds").collect();
            assert_eq!(secs.len(), 1, "one seconds row for {stage}");
            assert!(close(secs[0].value, s["seconds"].as_f64().unwrap()));
            assert!(of_stage.iter().all(|x| x.kind == s["kind"].as_str().unwrap() && x.cached == Some(s["status"] == "cached") && x.seconds == Some(secs[0].value)));
            let round: Option<u32> = stage.split('/').nth(1).map(|r| r.parse().unwrap());
            assert!(of_stage.iter().all(|x| x.round == round), "round of {stage}");
            if s["kind"] == "evaluate" {
                for metric in ["validation_error", "test_error"] {
                    let overall: Vec<_> = of_stage.iter().filter(|x| x.metric == metric && x.class.is_none()).collect();
                    assert_eq!(overall.len(), 1, "{metric} of {stage}");
                    assert_eq!(overall[0].value, s["summary"][metric].as_f64().unwrap(), "{metric} of {stage} in {id}");
                    let per_class: Vec<u32> = of_stage.iter().filter(|x| x.metric == metric).filter_map(|x| x.class).collect();
                    assert_eq!(per_class, (0..10).collect::<Vec<_>>(), "per-class {metric} of {stage}");
                }
            }
            if stage == "load" {
                let counts: f64 = of_stage.iter().filter(|x| x.metric == "train.class_counts").map(|x| x.value).sum();
                let classes = of_stage.iter().filter(|x| x.metric == "train.class_counts" && x.class.is_some()).count();
                assert_eq!((counts, classes), (200.0, 10), "class counts of load: {of_stage:?}");
            }
        }
        let run_level: Vec<&&Row> = mine.iter().filter(|x| x.stage.is_empty()).collect();
        let get = |m: &str| run_level.iter().find(|x| x.metric == m).unwrap_or_else(|| panic!("no {m} row of {id}"));
        assert!(close(get("run_seconds").value, r["seconds"].as_f64().unwrap()));
        assert!(get("run_seconds").seconds.is_none() && get("run_seconds").cached.is_none() && get("run_seconds").kind.is_empty());
        let sel = &r["selected"];
        assert_eq!(get("selected_test_error").value, sel["test_error"].as_f64().unwrap());
        assert_eq!(get("selected_validation_error").value, sel["validation_error"].as_f64().unwrap());
        assert_eq!(get("selected_round").value, sel["round"].as_f64().unwrap());
        assert_eq!(get("selected_test_error").round, sel["round"].as_u64().map(|r| r as u32));
    }
    seeds.sort();
    assert_eq!(seeds, [7, 8]);

    // The report: mean over the two seeds, in percent, per round.
    let out = ok({
        let mut c = pipe();
        c.arg("report").arg("--store").arg(&store);
        c
    });
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(text.contains("== tiny: 2 runs, 2 ok"), "{text}");
    assert!(!text.contains("shape:") && !text.contains("┆"), "plain tables, not Polars' debug print: {text}");
    let tables = report_tables(&text);
    assert_eq!(tables.len(), 3, "{text}");
    let (header, body) = &tables[0];
    let at = |name: &str| header.iter().position(|h| h == name).unwrap_or_else(|| panic!("no column {name} in {header:?}"));
    assert_eq!(body.len(), 2, "rounds 0 and 1: {text}");
    for row in body {
        let round: u32 = row[at("round")].parse().unwrap();
        let errors: Vec<f64> =
            recs.iter().map(|r| r["stages"].as_array().unwrap().iter().find(|s| s["stage"] == format!("evaluate/{round}")).unwrap()["summary"]["test_error"].as_f64().unwrap()).collect();
        let mean = 100.0 * (errors[0] + errors[1]) / 2.0;
        let shown: f64 = row[at("test_err")].parse().unwrap();
        assert!((shown - mean).abs() <= 0.005 + 1e-9, "round {round}: report says {shown}, the records {mean}\n{text}");
        assert_eq!(row[at("runs")], "2");
    }
    let (header, body) = &tables[1];
    let selected: Vec<f64> = recs.iter().map(|r| r["selected"]["test_error"].as_f64().unwrap()).collect();
    let shown: f64 = body[0][header.iter().position(|h| h == "test_err").unwrap()].parse().unwrap();
    assert!((shown - 50.0 * (selected[0] + selected[1])).abs() <= 0.005 + 1e-9, "{text}");
    let (header, body) = &tables[2];
    let kinds: Vec<&str> = body.iter().map(|r| r[0].as_str()).collect();
    assert_eq!(header[0], "kind");
    assert_eq!(kinds, ["evaluate", "load", "synthesize", "train"]);

    // --out, and --pipeline with a name the store does not have
    let custom = dir.path().join("elsewhere/m.parquet");
    ok({
        let mut c = pipe();
        c.arg("export").arg("--store").arg(&store).arg("--out").arg(&custom);
        c
    });
    assert_eq!(read_table(&custom).num_rows(), rows.len());
    let out = pipe().arg("report").arg("--store").arg(&store).args(["--pipeline", "nope"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("tiny"), "the error lists the pipelines there are");
}

#[test]
fn a_missing_or_empty_store_is_a_user_error() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nothing-here");
    let empty = dir.path().join("empty");
    for sub in ["objects", "runs", "tmp"] {
        std::fs::create_dir_all(empty.join(sub)).unwrap();
    }
    for (store, says) in [(&missing, "not a pipe store"), (&empty, "no runs")] {
        for cmd in ["export", "report"] {
            let out = pipe().arg(cmd).arg("--store").arg(store).output().unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{cmd} on {}: {err}", store.display());
            assert!(err.contains(says), "{cmd}: {err}");
        }
    }
    assert!(!missing.exists(), "export creates no store");
}

/// docs/schemas.md must list exactly the columns, types and nullability the export writes.
#[test]
fn schema_doc_matches_the_export() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    run(&tiny(dir.path()), &store, &[]);
    ok({
        let mut c = pipe();
        c.arg("export").arg("--store").arg(&store);
        c
    });
    let table = read_table(&store.join("export/metrics.parquet"));
    let written: Vec<(String, String, bool)> = table
        .schema()
        .fields()
        .iter()
        .map(|f| {
            let ty = match f.data_type() {
                DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => "string",
                DataType::UInt32 => "uint32",
                DataType::UInt64 => "uint64",
                DataType::Int32 => "int32",
                DataType::Float64 => "float64",
                DataType::Boolean => "bool",
                other => panic!("no doc name for {other}"),
            };
            (f.name().clone(), ty.to_string(), f.is_nullable())
        })
        .collect();

    let doc = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/schemas.md")).unwrap();
    let section: Vec<&str> = doc.lines().skip_while(|l| !(l.starts_with("## ") && l.contains("export/metrics.parquet"))).skip(1).take_while(|l| !l.starts_with("## ")).collect();
    assert!(!section.is_empty(), "docs/schemas.md has no `## ... export/metrics.parquet` section");
    let documented: Vec<(String, String, bool)> = section
        .iter()
        .filter(|l| l.starts_with('|'))
        .map(|l| l.trim_matches('|').split('|').map(|c| c.trim().trim_matches('`').to_string()).collect::<Vec<_>>())
        .filter(|cells| cells[0] != "column" && !cells[0].starts_with("---"))
        .map(|cells| {
            let ty = cells[1].split(',').next().unwrap().trim().to_string();
            (cells[0].clone(), ty, cells[1].contains("nullable"))
        })
        .collect();
    assert_eq!(documented, written, "docs/schemas.md (left) vs the export's schema (right): (column, type, nullable)");
}
