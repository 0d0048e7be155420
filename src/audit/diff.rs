//! `pipe diff RUN_A RUN_B`: what separates two runs. The settings that differ (the run
//! records' specs, flattened to dotted keys), each stage's key and output digests side by
//! side, and the numeric summary values of each stage with their deltas.
//!
//! Keys never include the device, so a CPU and a CUDA run of one file have the same keys
//! and, bitwise, different outputs; the per-stage verdict says so rather than hiding it
//! behind "differs". A run is an id or unique prefix in the store, or the path of a run
//! record (`runs/<id>.json`), so that runs made in two stores can be compared.

use crate::audit::runs::find_run;
use crate::engine::executor::{Manifest, RunRecord, RunStage};
use crate::engine::store::Store;
use crate::UserError;
use anyhow::{Context, Result};
use serde::Serialize;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Leaves of a JSON value under dotted keys (`synthesize.lr`, `stop.kind`, `list[2]`).
/// Empty objects and arrays are leaves themselves, so that they still compare.
pub fn flatten(value: &Value) -> BTreeMap<String, Value> {
    fn walk(prefix: &str, v: &Value, out: &mut BTreeMap<String, Value>) {
        match v {
            Value::Object(m) if !m.is_empty() => {
                for (k, v) in m {
                    let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                    walk(&key, v, out);
                }
            }
            Value::Array(a) if !a.is_empty() => {
                for (i, v) in a.iter().enumerate() {
                    walk(&format!("{prefix}[{i}]"), v, out);
                }
            }
            _ => {
                out.insert(prefix.to_string(), v.clone());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk("", value, &mut out);
    out
}

/// Keys present on either side whose values differ, with (old, new). A null is the same
/// setting as an absent key (an unset option, written by one version and left out by
/// another).
pub fn changed(a: &BTreeMap<String, Value>, b: &BTreeMap<String, Value>) -> Vec<(String, Option<Value>, Option<Value>)> {
    let get = |m: &BTreeMap<String, Value>, k: &String| m.get(k).filter(|v| !v.is_null()).cloned();
    let keys: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    keys.into_iter().filter(|k| get(a, k) != get(b, k)).map(|k| (k.clone(), get(a, k), get(b, k))).collect()
}

/// A setting's value as a person reads it: strings bare, absent (or null) as `(none)`.
pub fn show_value(v: &Option<Value>) -> String {
    match v {
        None | Some(Value::Null) => "(none)".into(),
        Some(Value::String(s)) => s.clone(),
        Some(v) => v.to_string(),
    }
}

/// The first 12 characters of a key or digest, as the other commands show them.
pub fn short(s: &str) -> &str {
    &s[..s.len().min(12)]
}

/// One side of a diff.
#[derive(Serialize)]
pub struct RunInfo {
    pub id: String,
    pub pipeline: String,
    pub file: String,
    pub status: String,
    pub started_at: String,
    pub device: String,
    /// From the record when it says, else from the manifests of the stages this run made
    /// itself (a cached stage's manifest was written by whichever run made it).
    pub pipe_version: Option<String>,
    pub overrides: Vec<String>,
    #[serde(skip)]
    record: RunRecord,
}

#[derive(Serialize)]
pub struct SettingDiff {
    pub key: String,
    pub a: Option<Value>,
    pub b: Option<Value>,
}

#[derive(Serialize)]
pub struct OutputDiff {
    pub name: String,
    pub a: Option<String>,
    pub b: Option<String>,
    pub same: bool,
}

#[derive(Serialize)]
pub struct StageDiff {
    pub stage: String,
    pub kind: String,
    pub a_key: Option<String>,
    pub b_key: Option<String>,
    /// `same`, `differs`, `only in a`, `only in b`.
    pub key: String,
    /// `same`, `differ`, or absent when the stage is on one side only.
    pub outputs: Option<String>,
    pub output_digests: Vec<OutputDiff>,
    /// The verdict as one phrase, as the text output shows it.
    pub verdict: String,
}

#[derive(Serialize)]
pub struct MetricDelta {
    pub stage: String,
    pub metric: String,
    pub a: f64,
    pub b: f64,
    pub delta: f64,
}

#[derive(Serialize)]
pub struct Diff {
    pub a: RunInfo,
    pub b: RunInfo,
    pub settings: Vec<SettingDiff>,
    pub stages: Vec<StageDiff>,
    pub metrics: Vec<MetricDelta>,
}

/// `pipe diff`: prints the comparison of two runs, as text or one JSON document.
pub fn run(root: &Path, a: &str, b: &str, json: bool) -> Result<()> {
    // A path to a record needs no store; an id does.
    let store = if [a, b].iter().all(|w| is_record_path(w)) { None } else { Some(Store::open_existing(root)?) };
    let a = load_side(store.as_ref(), a)?;
    let b = load_side(store.as_ref(), b)?;
    let d = compare(a, b);
    if json {
        println!("{}", serde_json::to_string_pretty(&d)?);
    } else {
        print(&d);
    }
    Ok(())
}

fn is_record_path(what: &str) -> bool {
    what.ends_with(".json") && Path::new(what).is_file()
}

fn load_side(store: Option<&Store>, what: &str) -> Result<RunInfo> {
    let raw: Value = if is_record_path(what) {
        let bytes = std::fs::read(what).with_context(|| format!("reading {what}"))?;
        serde_json::from_slice(&bytes).map_err(|e| UserError(format!("{what} is not a run record: {e}")))?
    } else {
        let store = store.expect("a store is opened for run ids");
        let id = find_run(store, what)?;
        store.run(&id)?.ok_or_else(|| UserError(format!("run {id} has no record")))?
    };
    let record: RunRecord = serde_json::from_value(raw.clone()).map_err(|e| UserError(format!("`{what}` is not a run record: {e}")))?;
    let pipe_version = raw
        .get("pipe_version")
        .and_then(Value::as_str)
        .map(String::from)
        .or_else(|| store.and_then(|s| made_by(s, &record.stages)));
    Ok(RunInfo {
        id: record.id.clone(),
        pipeline: record.pipeline.clone(),
        file: record.file.clone(),
        status: record.status.clone(),
        started_at: record.started_at.clone(),
        device: record.device.clone(),
        pipe_version,
        overrides: record.overrides.clone(),
        record,
    })
}


/// The pipe version(s) that wrote the stages a run ran itself: a manifest whose outputs are
/// the run's own is the one it committed.
fn made_by(store: &Store, stages: &[RunStage]) -> Option<String> {
    let versions: BTreeSet<String> = stages
        .iter()
        .filter(|s| s.status == "ran")
        .filter_map(|s| store.manifest::<Manifest>(&s.key).ok().flatten().filter(|m| m.outputs == s.outputs))
        .map(|m| m.pipe_version)
        .collect();
    (!versions.is_empty()).then(|| versions.into_iter().collect::<Vec<_>>().join(", "))
}

pub fn compare(a: RunInfo, b: RunInfo) -> Diff {
    let settings = changed(&flatten(&a.record.spec), &flatten(&b.record.spec))
        .into_iter()
        .map(|(key, a, b)| SettingDiff { key, a, b })
        .collect();

    // A's order, then what only B has, in B's order.
    let mut ids: Vec<&str> = a.record.stages.iter().map(|s| s.stage.as_str()).collect();
    ids.extend(b.record.stages.iter().map(|s| s.stage.as_str()).filter(|id| !a.record.stages.iter().any(|s| s.stage == *id)));
    let find = |r: &RunRecord, id: &str| r.stages.iter().find(|s| s.stage == id).cloned();
    let mut stages = Vec::new();
    let mut metrics = Vec::new();
    for id in ids {
        let (sa, sb) = (find(&a.record, id), find(&b.record, id));
        stages.push(stage_diff(id, sa.as_ref(), sb.as_ref(), &a.device, &b.device));
        if let (Some(sa), Some(sb)) = (&sa, &sb) {
            for (metric, va) in numbers(&sa.summary) {
                if let Some(vb) = numbers(&sb.summary).get(&metric) {
                    metrics.push(MetricDelta {
                        stage: id.to_string(),
                        metric,
                        a: va,
                        b: *vb,
                        delta: vb - va,
                    });
                }
            }
        }
    }
    Diff { a, b, settings, stages, metrics }
}

/// The top-level numbers of a stage summary (nested tables such as class counts are not
/// metrics).
fn numbers(summary: &Value) -> BTreeMap<String, f64> {
    summary.as_object().map(|m| m.iter().filter_map(|(k, v)| Some((k.clone(), v.as_f64()?))).collect()).unwrap_or_default()
}

fn stage_diff(id: &str, a: Option<&RunStage>, b: Option<&RunStage>, device_a: &str, device_b: &str) -> StageDiff {
    let kind = a.or(b).map(|s| s.kind.clone()).unwrap_or_default();
    let (Some(a), Some(b)) = (a, b) else {
        let side = if a.is_some() { "a" } else { "b" };
        let key = a.or(b).map(|s| s.key.clone());
        return StageDiff {
            stage: id.to_string(),
            kind,
            a_key: a.map(|s| s.key.clone()),
            b_key: b.map(|s| s.key.clone()),
            key: format!("only in {side}"),
            outputs: None,
            output_digests: Vec::new(),
            verdict: format!("only in {} ({})", side.to_uppercase(), key.as_deref().map(short).unwrap_or("")),
        };
    };
    let names: BTreeSet<&String> = a.outputs.keys().chain(b.outputs.keys()).collect();
    let output_digests: Vec<OutputDiff> = names
        .into_iter()
        .map(|n| {
            let (da, db) = (a.outputs.get(n).map(|o| o.digest.clone()), b.outputs.get(n).map(|o| o.digest.clone()));
            OutputDiff {
                name: n.clone(),
                same: da == db,
                a: da,
                b: db,
            }
        })
        .collect();
    let differing: Vec<&str> = output_digests.iter().filter(|o| !o.same).map(|o| o.name.as_str()).collect();
    let same_key = a.key == b.key;
    let devices = if device_a != device_b { format!(" (device {device_a} vs {device_b})") } else { String::new() };
    let verdict = match (same_key, differing.is_empty()) {
        (true, true) => "same".to_string(),
        (true, false) => format!("same key, outputs differ{devices}: {}", differing.join(", ")),
        (false, true) => format!("key differs ({} -> {}), outputs same", short(&a.key), short(&b.key)),
        (false, false) => format!("key differs ({} -> {})", short(&a.key), short(&b.key)),
    };
    StageDiff {
        stage: id.to_string(),
        kind,
        a_key: Some(a.key.clone()),
        b_key: Some(b.key.clone()),
        key: if same_key { "same" } else { "differs" }.into(),
        outputs: Some(if differing.is_empty() { "same" } else { "differ" }.into()),
        output_digests,
        verdict,
    }
}

fn print(d: &Diff) {
    let row = |label: &str, a: &str, b: &str| println!("{label:<10} {a:<40} {b}");
    row("", "A", "B");
    row("run", &d.a.id, &d.b.id);
    row("pipeline", &format!("{} ({})", d.a.pipeline, d.a.file), &format!("{} ({})", d.b.pipeline, d.b.file));
    row("status", &d.a.status, &d.b.status);
    row("started", &d.a.started_at, &d.b.started_at);
    row("device", &d.a.device, &d.b.device);
    let version = |v: &Option<String>| v.clone().unwrap_or_else(|| "? (no stage ran in it)".into());
    row("pipe", &version(&d.a.pipe_version), &version(&d.b.pipe_version));
    let overrides = |o: &[String]| if o.is_empty() { "-".to_string() } else { o.join(" ") };
    row("overrides", &overrides(&d.a.overrides), &overrides(&d.b.overrides));

    if d.settings.is_empty() {
        println!("\nsettings: the same");
    } else {
        println!("\nsettings that differ ({})", d.settings.len());
        for s in &d.settings {
            println!("  {:<32} {} -> {}", s.key, show_value(&s.a), show_value(&s.b));
        }
    }

    println!("\nstages");
    for s in &d.stages {
        println!("  {:<14} {}", s.stage, s.verdict);
    }
    let same = d.stages.iter().filter(|s| s.verdict == "same").count();
    println!("  {same} of {} stages the same", d.stages.len());

    // Every round's errors are the headline; other numbers only where they moved.
    let reporter = crate::methods::rounds_of(&d.a.record).reporter.name;
    let reports_round = |stage: &str| d.a.record.stages.iter().chain(&d.b.record.stages).any(|s| s.stage == stage && s.kind == reporter);
    let shown: Vec<&MetricDelta> = d.metrics.iter().filter(|m| reports_round(&m.stage) || m.a != m.b).collect();
    if !shown.is_empty() {
        let w = shown.iter().map(|m| m.metric.len()).max().unwrap_or(0).max(16);
        println!("\nmetrics{:<w$} {:>12} {:>12} {:>12}", "", "A", "B", "B - A", w = 10 + w);
        for m in shown {
            println!("  {:<14} {:<w$} {:>12.6} {:>12.6} {:>+12.6}", m.stage, m.metric, m.a, m.b, m.delta);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn flatten_and_changed_name_every_leaf() {
        let a = flatten(&json!({"synthesize": {"lr": 0.01, "stop": {"kind": "steps"}}, "l": [1, 2], "e": {}}));
        assert_eq!(a.keys().collect::<Vec<_>>(), ["e", "l[0]", "l[1]", "synthesize.lr", "synthesize.stop.kind"]);
        let b = flatten(&json!({"synthesize": {"lr": 0.02, "stop": {"kind": "steps"}}, "l": [1], "e": {}, "n": null}));
        let c = changed(&a, &b);
        let keys: Vec<&str> = c.iter().map(|(k, _, _)| k.as_str()).collect();
        // `n: null` on one side and absent on the other is no change (`sweep null -> (none)`)
        assert_eq!(keys, ["l[1]", "synthesize.lr"]);
        assert_eq!(show_value(&c[0].2), "(none)");
        assert_eq!(show_value(&c[1].2), "0.02");
        let d = changed(&a, &flatten(&json!({"n": 3})));
        assert!(d.iter().any(|(k, old, new)| k == "n" && old.is_none() && new == &Some(json!(3))));
    }
}
