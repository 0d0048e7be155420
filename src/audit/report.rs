//! `pipe export` and `pipe report`: the results of every run in a store as one tidy table
//! (a row per run, stage and metric), so that experiments can be compared across runs,
//! seeds and settings with a dataframe library instead of by reading run records.
//!
//! The rows come from the run records only (plus the per-class errors of each evaluate
//! stage's `metrics.parquet`), never from re-running anything. `export` writes them as
//! Parquet with arrow-rs; `report` puts the same rows in a Polars DataFrame and summarizes
//! them with lazy queries. The columns are documented in docs/schemas.md (a test keeps the
//! two in step).

use crate::audit::text::{count, table};
use crate::engine::executor::{RunRecord, RunStage};
use crate::engine::store::Store;
use crate::engine::table::{read_parquet, to_parquet, Column};
use crate::kinds::attack::Attack;
use crate::kinds::evaluate::{self, Evaluate};
use crate::kinds::Kind;
use crate::methods::Rounds;
use crate::UserError;
use anyhow::{Context, Result};
use arrow_array::cast::AsArray;
use arrow_array::types::{Float64Type, Int32Type};
use polars::prelude::{col, lit, DataFrame, IntoLazy, JoinArgs, JoinType, LazyFrame, NamedFrom, Series, SortMultipleOptions};
use serde_json::Value;
use std::path::{Path, PathBuf};

/// One metric of one stage (or of the whole run, `stage` = "") of one run.
struct Row {
    run: usize,
    stage: String,
    kind: String,
    round: Option<u32>,
    class: Option<u32>,
    metric: String,
    value: f64,
    seconds: Option<f64>,
    cached: Option<bool>,
}

/// Every row of a store, and the run records they point into.
pub struct Metrics {
    runs: Vec<RunRecord>,
    rows: Vec<Row>,
}

/// Round and one-vs-all member class of a stage id: `train/3` -> (3, None), `train/3/c7`
/// -> (3, Some(7)), `load` -> (None, None).
fn round_and_member(stage: &str) -> (Option<u32>, Option<u32>) {
    let mut parts = stage.split('/').skip(1);
    let round = parts.next().and_then(|r| r.parse().ok());
    let member = parts.next().and_then(|m| m.strip_prefix('c')?.parse().ok());
    (round, member)
}

/// Every numeric leaf of a summary as (metric, class): objects flatten with dots, and an
/// array of numbers is per class (its index), as `class_counts` of `load` is.
fn leaves(prefix: &str, v: &Value, class: Option<u32>, out: &mut Vec<(String, Option<u32>, f64)>) {
    match v {
        Value::Number(n) => out.extend(n.as_f64().map(|x| (prefix.to_string(), class, x))),
        Value::Object(m) => {
            for (k, v) in m {
                let name = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                leaves(&name, v, class, out);
            }
        }
        Value::Array(a) => {
            for (i, v) in a.iter().enumerate() {
                leaves(prefix, v, Some(i as u32), out);
            }
        }
        _ => {} // strings (the `line` shown after a stage) and booleans are not measurements
    }
}

/// Per-class errors of an evaluate stage, from its `metrics.parquet` (the summary holds only
/// the overall ones): (`<split>_<metric>`, class, value). A missing object gives none:
/// the export should still describe a store whose objects were pruned.
fn class_errors(store: &Store, s: &RunStage) -> Result<Vec<(String, Option<u32>, f64)>> {
    let Some(o) = s.outputs.get(evaluate::METRICS).filter(|o| store.has_object(&o.digest)) else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for b in read_parquet(store.read(&o.digest)?).with_context(|| format!("metrics.parquet of {}", s.stage))? {
        let column = |name: &str| b.column_by_name(name).with_context(|| format!("metrics.parquet of {} has no `{name}` column", s.stage));
        let (split, class, metric, value) =
            (column("split")?.as_string::<i32>(), column("class")?.as_primitive::<Int32Type>(), column("metric")?.as_string::<i32>(), column("value")?.as_primitive::<Float64Type>());
        for i in (0..b.num_rows()).filter(|&i| class.value(i) >= 0) {
            out.push((format!("{}_{}", split.value(i), metric.value(i)), Some(class.value(i) as u32), value.value(i)));
        }
    }
    Ok(out)
}

/// Reads every run record of the store at `root` into rows; no runs is a user error.
pub fn metrics(root: &Path) -> Result<Metrics> {
    let store = Store::open_existing(root)?;
    let mut runs: Vec<RunRecord> = store.intact_runs()?;
    for r in &mut runs {
        r.status = crate::audit::runs::shown_status(&store, r); // a killed run is interrupted
    }
    if runs.is_empty() {
        return Err(UserError(format!("no runs in {}: nothing to export (run `pipe run` first)", root.display())).into());
    }
    let mut rows = Vec::new();
    for (run, r) in runs.iter().enumerate() {
        for s in &r.stages {
            let (round, member) = round_and_member(&s.stage);
            let mut found = vec![("seconds".to_string(), None, s.seconds)];
            leaves("", &s.summary, None, &mut found);
            if s.kind == Evaluate::ID.name {
                found.extend(class_errors(&store, s)?);
            }
            for (metric, class, value) in found {
                rows.push(Row { run, stage: s.stage.clone(), kind: s.kind.clone(), round, class: class.or(member), metric, value, seconds: Some(s.seconds), cached: Some(s.status == "cached") });
            }
        }
        let mut found = vec![("run_seconds".to_string(), None, r.seconds)];
        if let Some(sel) = &r.selected {
            leaves("selected", sel, None, &mut found);
        }
        let selected_round = r.selected.as_ref().and_then(|s| s["round"].as_u64()).map(|x| x as u32);
        for (metric, class, value) in found {
            let metric = metric.replacen("selected.", "selected_", 1);
            let round = if metric.starts_with("selected_") { selected_round } else { None };
            rows.push(Row { run, stage: String::new(), kind: String::new(), round, class, metric, value, seconds: None, cached: None });
        }
    }
    Ok(Metrics { runs, rows })
}

/// The run's `--set` overrides other than the seed (and the name, already in `pipeline`):
/// runs of one pipeline with the same setting differ only by seed, so they are the
/// replicates a mean and sd are taken over.
fn setting(r: &RunRecord) -> String {
    let key = |o: &str| o.split('=').next().unwrap_or("").trim().to_string();
    r.overrides.iter().filter(|o| !matches!(key(o).as_str(), "pipeline.seed" | "pipeline.name")).cloned().collect::<Vec<_>>().join(" ")
}

impl Metrics {
    /// The run records the rows point into, oldest first.
    pub fn runs(&self) -> &[RunRecord] {
        &self.runs
    }

    /// The pipelines that have runs, in order of their first run; only `only` if given (a
    /// user error when it has none).
    pub fn pipelines(&self, root: &Path, only: Option<&str>) -> Result<Vec<&str>> {
        let mut names: Vec<&str> = Vec::new();
        for r in &self.runs {
            if !names.contains(&r.pipeline.as_str()) {
                names.push(&r.pipeline);
            }
        }
        if let Some(p) = only {
            if !names.contains(&p) {
                return Err(UserError(format!("no runs of pipeline `{p}` in {}; it has {}", root.display(), names.join(", "))).into());
            }
            names.retain(|n| *n == p);
        }
        Ok(names)
    }

    /// The export's columns, in order: the single definition both writers use.
    fn columns(&self) -> Vec<(&'static str, Column)> {
        let run = |f: &dyn Fn(&RunRecord) -> String| Column::Str(self.rows.iter().map(|x| f(&self.runs[x.run])).collect());
        let rows = &self.rows;
        vec![
            ("run", run(&|r| r.id.clone())),
            ("pipeline", run(&|r| r.pipeline.clone())),
            ("file", run(&|r| r.file.clone())),
            ("setting", run(&setting)),
            ("status", run(&|r| r.status.clone())),
            ("device", run(&|r| r.device.clone())),
            ("seed", Column::OptU64(rows.iter().map(|x| self.runs[x.run].spec["pipeline"]["seed"].as_u64()).collect())),
            ("started_at", run(&|r| r.started_at.clone())),
            ("stage", Column::Str(rows.iter().map(|x| x.stage.clone()).collect())),
            ("kind", Column::Str(rows.iter().map(|x| x.kind.clone()).collect())),
            ("round", Column::OptU32(rows.iter().map(|x| x.round).collect())),
            ("class", Column::OptU32(rows.iter().map(|x| x.class).collect())),
            ("metric", Column::Str(rows.iter().map(|x| x.metric.clone()).collect())),
            ("value", Column::F64(rows.iter().map(|x| x.value).collect())),
            ("seconds", Column::OptF64(rows.iter().map(|x| x.seconds).collect())),
            ("cached", Column::OptBool(rows.iter().map(|x| x.cached).collect())),
        ]
    }

    /// The rows as Parquet (Snappy, like every table of the store, so arrow-rs, Polars and
    /// pandas all read it).
    pub fn to_parquet(&self) -> Result<Vec<u8>> {
        to_parquet(self.columns())
    }

    /// The rows as a Polars DataFrame, with the export's columns and types.
    pub fn frame(&self) -> Result<DataFrame> {
        let columns = self
            .columns()
            .into_iter()
            .map(|(name, c)| {
                let name = name.into();
                match c {
                    Column::U32(v) => Series::new(name, v),
                    Column::I32(v) => Series::new(name, v),
                    Column::U64(v) => Series::new(name, v),
                    Column::F32(v) => Series::new(name, v),
                    Column::F64(v) => Series::new(name, v),
                    Column::Str(v) => Series::new(name, v),
                    Column::Bool(v) => Series::new(name, v),
                    Column::OptU32(v) => Series::new(name, v),
                    Column::OptU64(v) => Series::new(name, v),
                    Column::OptF64(v) => Series::new(name, v),
                    Column::OptBool(v) => Series::new(name, v),
                }
                .into()
            })
            .collect();
        Ok(DataFrame::new_infer_height(columns)?)
    }
}

/// `pipe export`: writes the rows of every run to `out` (default
/// `<store>/export/metrics.parquet`).
pub fn export(root: &Path, out: Option<&Path>) -> Result<()> {
    let m = metrics(root)?;
    let out: PathBuf = match (out, crate::engine::store::local_dir(root)) {
        (Some(out), _) => out.to_path_buf(),
        (None, Some(dir)) => dir.join("export").join("metrics.parquet"),
        (None, None) => return Err(UserError(format!("the store {} is not a directory: give the export's path with --out", root.display())).into()),
    };
    crate::engine::store::write_file_atomic(&out, &m.to_parquet()?)?;
    println!("{} ({}) -> {}", count(m.rows.len(), "row"), count(m.runs.len(), "run"), out.display());
    Ok(())
}

/// `pipe report`: per pipeline, validation and test error per round and of the round chosen
/// on validation (mean and sd over seeds), and the time spent per stage kind.
pub fn report(root: &Path, pipeline: Option<&str>) -> Result<()> {
    let m = metrics(root)?;
    let names = m.pipelines(root, pipeline)?;
    let all = m.frame()?.lazy();
    for name in names {
        let runs: Vec<&RunRecord> = m.runs.iter().filter(|r| r.pipeline == name).collect();
        let ok = runs.iter().filter(|r| r.status == "ok").count();
        let mut others: Vec<String> = Vec::new();
        for status in ["running", "interrupted", "failed"] {
            let n = runs.iter().filter(|r| r.status == status).count();
            if n > 0 {
                others.push(format!(", {n} {status}"));
            }
        }
        println!("== {name}: {}, {ok} ok{}\n", count(runs.len(), "run"), others.concat());
        let lf = all.clone().filter(col("pipeline").eq(lit(name)));
        let rounds = runs.first().map_or(crate::methods::icn::ROUNDS, |r| crate::methods::rounds_of(r));
        let (errors, selected, attacks, time) = summaries(lf, &rounds);
        let per_round = if rounds.shown.percent {
            "error per round, % (latest ok run per seed; mean and sd over seeds)".to_string()
        } else {
            format!("{} per round in its test_err column (latest ok run per seed; mean and sd over seeds)", rounds.shown.heading)
        };
        // a table with no rows (a two-way record has no evaluate stages) says nothing
        for (title, q) in [
            (per_round.as_str(), errors),
            ("round selected on validation, %", selected),
            ("attack per round, % (adversarial error of round t; round 0 correcting it)", attacks),
            ("time per stage kind, all runs (seconds of stages that ran, not cached)", time),
        ] {
            let frame = q.collect()?;
            if frame.height() > 0 {
                println!("{title}:\n{}\n", table(&frame, 2));
            }
        }
    }
    Ok(())
}

/// The run a report counts for each (setting, seed): its latest ok one. Run ids start with
/// their UTC start time, so the greatest id of a group is its latest run: a rerun of a seed
/// (after a fix, say) replaces that seed's numbers, not adds to them.
pub fn latest_runs(lf: LazyFrame) -> LazyFrame {
    lf.filter(col("status").eq(lit("ok"))).group_by([col("setting"), col("seed")]).agg([col("run").max()])
}

/// The lazy queries of a report over one pipeline's rows: errors per round, the selected
/// round, attacks per round, time per stage kind.
pub fn summaries(lf: LazyFrame, rounds: &Rounds) -> (LazyFrame, LazyFrame, LazyFrame, LazyFrame) {
    let latest = latest_runs(lf.clone());
    let kept = lf.clone().join(latest.select([col("run")]), [col("run")], [col("run")], JoinArgs::new(JoinType::Inner));
    let pct = |metric: &str| (col("value") * lit(100.0)).filter(col("metric").eq(lit(metric)));
    // a reported value that is not a rate (a critic's Wasserstein term) is shown as it is
    let reported = || {
        let scale = if rounds.shown.percent { 100.0 } else { 1.0 };
        (col("value") * lit(scale)).filter(col("metric").eq(lit(rounds.reported)))
    };
    let errors = kept
        .clone()
        .filter(col("kind").eq(lit(rounds.reporter.name)).and(col("class").is_null()))
        .group_by([col("setting"), col("round")])
        .agg([
            reported().count().alias("runs"),
            pct(rounds.select_on.unwrap_or_default()).mean().alias("val_err"),
            pct(rounds.select_on.unwrap_or_default()).std(1).alias("val_sd"),
            reported().mean().alias("test_err"),
            reported().std(1).alias("test_sd"),
        ])
        .sort(["setting", "round"], SortMultipleOptions::default());
    let attacks = kept
        .clone()
        .filter(col("kind").eq(lit(Attack::ID.name)).and(col("round").is_not_null()))
        .group_by([col("setting"), col("round")])
        .agg([
            pct("adversarial_error").count().alias("runs"),
            pct("adversarial_error").mean().alias("adv_err"),
            pct("adversarial_error").std(1).alias("adv_sd"),
            pct("correction_rate").mean().alias("corrected"),
            pct("correction_rate").std(1).alias("corrected_sd"),
        ])
        .sort(["setting", "round"], SortMultipleOptions::default());
    let selected = kept
        .filter(col("stage").eq(lit("")))
        .group_by([col("setting")])
        .agg([
            pct("selected_test_error").count().alias("runs"),
            col("value").filter(col("metric").eq(lit("selected_round"))).mean().alias("round"),
            pct("selected_validation_error").mean().alias("val_err"),
            pct("selected_test_error").mean().alias("test_err"),
            pct("selected_test_error").std(1).alias("test_sd"),
        ])
        .sort(["setting"], SortMultipleOptions::default());
    let ran = col("cached").not();
    let time = lf
        .filter(col("metric").eq(lit("seconds")))
        .group_by([col("kind")])
        .agg([ran.clone().sum().alias("ran"), col("cached").sum().alias("cached"), col("seconds").filter(ran).sum().alias("seconds")])
        .sort(["kind"], SortMultipleOptions::default());
    (errors, selected, attacks, time)
}

#[cfg(test)]
mod tests {
    use super::*;
    use polars::prelude::{df, Column};
    use serde_json::json;

    #[test]
    fn stage_ids_and_summary_leaves() {
        assert_eq!(round_and_member("load"), (None, None));
        assert_eq!(round_and_member("train/3"), (Some(3), None));
        assert_eq!(round_and_member("synthesize/12/c7"), (Some(12), Some(7)));
        let mut out = Vec::new();
        leaves("", &json!({"line": "text", "test_error": 0.25, "train": {"count": 3, "class_counts": [1, 2]}, "ok": true}), None, &mut out);
        let names: Vec<(&str, Option<u32>, f64)> = out.iter().map(|(m, c, v)| (m.as_str(), *c, *v)).collect();
        assert_eq!(names, [("test_error", None, 0.25), ("train.class_counts", Some(0), 1.0), ("train.class_counts", Some(1), 2.0), ("train.count", None, 3.0)]);
    }

    /// The error table keeps the latest ok run of each seed, whatever the row order: an
    /// older run of seed 7 (listed after the newer) and a newer failed one are left out.
    #[test]
    fn report_takes_the_latest_ok_run_per_seed() -> Result<()> {
        let runs = ["20260102-000000.000-bbbbbb", "20260101-000000.000-aaaaaa", "20260103-000000.000-cccccc", "20260101-120000.000-dddddd"];
        let (status, seed, test) = (["ok", "ok", "failed", "ok"], [7u64, 7, 7, 8], [0.1, 0.9, 0.5, 0.3]);
        let n = 2 * runs.len();
        let frame = df!(
            "run" => (0..n).map(|i| runs[i / 2]).collect::<Vec<_>>(),
            "setting" => vec![""; n],
            "status" => (0..n).map(|i| status[i / 2]).collect::<Vec<_>>(),
            "seed" => (0..n).map(|i| Some(seed[i / 2])).collect::<Vec<_>>(),
            "stage" => vec!["evaluate/1"; n],
            "kind" => vec!["evaluate"; n],
            "round" => vec![Some(1u32); n],
            "class" => vec![None::<u32>; n],
            "metric" => (0..n).map(|i| if i % 2 == 0 { "test_error" } else { "seconds" }).collect::<Vec<_>>(),
            "value" => (0..n).map(|i| if i % 2 == 0 { test[i / 2] } else { 1.0 }).collect::<Vec<_>>(),
            "seconds" => vec![Some(1.0); n],
            "cached" => (0..n).map(|i| Some(i / 2 == 1)).collect::<Vec<_>>(),
        )?;
        let (errors, _, _, time) = summaries(frame.lazy(), &crate::methods::icn::ROUNDS);
        let errors = errors.collect()?;
        let get = |df: &DataFrame, c: &str| -> Result<Column> { Ok(df.column(c)?.clone()) };
        assert_eq!(get(&errors, "runs")?.u32()?.get(0), Some(2));
        assert!((get(&errors, "test_err")?.f64()?.get(0).unwrap() - 20.0).abs() < 1e-9, "{errors}");
        let time = time.collect()?;
        assert_eq!((get(&time, "ran")?.u32()?.get(0), get(&time, "cached")?.u32()?.get(0), get(&time, "seconds")?.f64()?.get(0)), (Some(3), Some(1), Some(3.0)), "{time}");
        Ok(())
    }
}
