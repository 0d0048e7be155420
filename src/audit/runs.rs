//! Which run is which: finding a run or a stage of one by what the user typed, and new
//! run records. Every audit command and the CLI name runs the same way.

use crate::engine::executor::{RunRecord, RunStage};
use crate::engine::store::Store;
use crate::engine::timefmt;
use crate::pipeline::spec;
use crate::UserError;
use anyhow::Result;

/// The one item of `items` equal to `what` or, failing that, the only one it prefixes.
pub fn unique_match<'a>(items: &'a [String], what: &str, kind: &str) -> Result<Option<&'a String>> {
    if let Some(exact) = items.iter().find(|i| i.as_str() == what) {
        return Ok(Some(exact));
    }
    let hits: Vec<&String> = items.iter().filter(|i| i.starts_with(what)).collect();
    match hits.len() {
        0 => Ok(None),
        1 => Ok(Some(hits[0])),
        n => Err(UserError(format!("`{what}` matches {n} {kind}s; give more characters")).into()),
    }
}

/// The id of the run `what` names (an id or a unique prefix of one); otherwise a user
/// error that lists the newest runs.
pub fn find_run(store: &Store, what: &str) -> Result<String> {
    let ids = store.run_ids()?;
    let found = unique_match(&ids, what, "run")?.cloned();
    found.ok_or_else(|| {
        let listed = if ids.is_empty() { "it has no runs".to_string() } else { format!("its runs: {}", last_few(&ids)) };
        UserError(format!("no run `{what}` in {}; {listed} (see `pipe ls`)", store.location())).into()
    })
}

/// The newest ten ids, and how many more there are.
fn last_few(ids: &[String]) -> String {
    let tail = &ids[ids.len().saturating_sub(10)..];
    let more = if ids.len() > tail.len() {
        format!("... ({} more), ", ids.len() - tail.len())
    } else {
        String::new()
    };
    format!("{more}{}", tail.join(", "))
}

/// A stage of a run, as `RUN:STAGE` names it.
pub fn run_stage(store: &Store, run: &str, stage: &str) -> Result<RunStage> {
    let id = find_run(store, run)?;
    let record: RunRecord = store.run(&id)?.ok_or_else(|| UserError(format!("run {id} has no record")))?;
    let names: Vec<String> = record.stages.iter().map(|s| s.stage.clone()).collect();
    record.stages.into_iter().find(|s| s.stage == stage).ok_or_else(|| UserError(format!("run {id} has no stage `{stage}`; it has {}", names.join(", "))).into())
}

/// The status a run is shown with: a `running` record of a run no process keeps alive is a
/// run that was killed (or could not write its end), so it is `interrupted`.
pub fn shown_status(store: &Store, r: &RunRecord) -> String {
    if r.status == "running" && !store.run_alive(&r.id) {
        "interrupted".into()
    } else {
        r.status.clone()
    }
}

/// A fresh record for a run of `pipeline` (under `name`), with a new unique id.
pub fn new_record(name: &str, pipeline: &spec::Pipeline, device: String) -> RunRecord {
    let id = format!("{}-{}", timefmt::now_compact(), &blake3::hash(format!("{}{:?}", std::process::id(), std::time::SystemTime::now()).as_bytes()).to_hex()[..6]);
    RunRecord {
        id,
        pipeline: name.to_string(),
        file: pipeline.file.display().to_string(),
        overrides: pipeline.overrides.clone(),
        spec: serde_json::to_value(&pipeline.spec).unwrap_or_default(),
        started_at: timefmt::now_iso(),
        finished_at: None,
        status: "running".into(),
        error: None,
        device,
        seconds: 0.0,
        stages: Vec::new(),
        stopped_early: None,
        selected: None,
        pipe_version: Some(env!("CARGO_PKG_VERSION").to_string()),
        member: None,
    }
}

