//! `pipe why FILE [STAGE]`: before running, which stages will rerun and what changed in
//! each one's key since the last run of the same file: parameters (old -> new), input
//! digests, the stage version, a stage the last run did not have, or an upstream stage
//! that must run first.
//!
//! Keys come from the executor as `pipe status` computes them; the old side is the last
//! run record of the file and the manifests it names, so nothing here re-derives a key.

use crate::audit::diff::{changed, flatten, short, show_value};
use crate::engine::executor::{self, Manifest, RunRecord, StageStatus};
use crate::engine::graph::{InputRef, StageDef};
use crate::methods::plan;
use crate::engine::store::{Digest, Store};
use crate::pipeline::sweep;
use crate::UserError;
use anyhow::Result;
use serde::Serialize;
use serde_json::Value;
use std::collections::HashMap;
use std::path::Path;

/// One thing that separates a stage's key from the last run's.
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Reason {
    /// The last run has no stage of this id (fewer rounds, stopped early, failed before).
    NewStage {
        note: Option<String>,
    },
    StageKind {
        old: String,
        new: String,
    },
    /// The stage's code changed what it outputs.
    Version {
        old: u32,
        new: u32,
    },
    Param {
        path: String,
        old: Option<Value>,
        new: Option<Value>,
    },
    /// An input whose digest is known now and differs (or is new, or gone).
    Input {
        name: String,
        old: Option<Digest>,
        new: Option<Digest>,
        from: Option<String>,
    },
    /// Inputs made by a stage that has to run first; its key is known only after.
    WaitsFor {
        upstream: String,
        inputs: Vec<String>,
        because: String,
    },
    /// The key is the last run's, but the store no longer holds the stage.
    NotInStore {
        detail: String,
    },
    /// The last run's manifest of this stage is gone, so there is nothing to compare with.
    LastManifestGone {
        key: String,
    },
    /// Nothing recorded explains the new key (a manifest written by another pipe version).
    Unexplained {
        old: String,
        new: String,
    },
}

impl Reason {
    pub fn text(&self) -> String {
        match self {
            Reason::NewStage { note: None } => "new stage (not in the last run)".into(),
            Reason::NewStage { note: Some(n) } => format!("new stage (not in the last run: {n})"),
            Reason::StageKind { old, new } => format!("stage kind {old} -> {new}"),
            Reason::Version { old, new } => format!("stage version {old} -> {new} (its code changed)"),
            Reason::Param { path, old, new } => format!("param {path}: {} -> {}", show_value(old), show_value(new)),
            Reason::Input { name, old, new, from } => {
                let from = from.as_ref().map(|f| format!(" (from {f})")).unwrap_or_default();
                match (old, new) {
                    (Some(o), Some(n)) => format!("input {name} differs: {} -> {}{from}", short(o), short(n)),
                    (None, _) => format!("new input {name}{from}"),
                    (Some(_), None) => format!("input {name} is no longer used"),
                }
            }
            Reason::WaitsFor { upstream, inputs, because } => format!("waits for {upstream} (input {}), which {because}", inputs.join(", ")),
            Reason::NotInStore { detail } => format!("same key as in the last run, but {detail}"),
            Reason::LastManifestGone { key } => format!("key differs; the last run's manifest {} is no longer in the store to compare with", short(key)),
            Reason::Unexplained { old, new } => format!("key differs ({} -> {})", short(old), short(new)),
        }
    }
}

#[derive(Serialize)]
pub struct StageWhy {
    pub stage: String,
    pub kind: String,
    /// `to run` or `resume`.
    pub state: String,
    pub key: Option<String>,
    pub last_key: Option<String>,
    pub reasons: Vec<Reason>,
    /// The reasons as the text output words them.
    pub text: Vec<String>,
}

#[derive(Serialize)]
pub struct LastRun {
    pub id: String,
    pub status: String,
    pub started_at: String,
    pub overrides: Vec<String>,
}

#[derive(Serialize)]
pub struct Report {
    pub pipeline: String,
    pub file: String,
    pub store: String,
    /// The sweep member, for a sweep file.
    pub member: Option<String>,
    /// The run compared with; none when the file has not run in this store.
    pub last_run: Option<LastRun>,
    /// Only this stage was asked about.
    pub only: Option<String>,
    pub cached: Vec<String>,
    pub rerun: Vec<StageWhy>,
}

/// `pipe why`: prints, per pipeline (per sweep member), why each stage that will rerun does.
pub fn run(file: &Path, sets: &[String], root: &Path, only: Option<&str>, json: bool) -> Result<()> {
    let members = sweep::expand(file, sets)?;
    let store = Store::open_existing(root)?;
    let records: Vec<RunRecord> = store.intact_runs()?;
    let canonical = file.canonicalize().unwrap_or_else(|_| file.to_path_buf());
    let mut reports = Vec::new();
    for m in &members {
        let stages = plan(&m.pipeline).stages;
        if let Some(s) = only {
            if !stages.iter().any(|d| d.id == s) {
                let ids: Vec<&str> = stages.iter().map(|d| d.id.as_str()).collect();
                return Err(UserError(format!("{} has no stage `{s}`; it has {}", file.display(), ids.join(", "))).into());
            }
        }
        // A sweep member's own settings follow the --set ones in its overrides; the last
        // run of that member is the last one that ends with the same.
        let own = &m.pipeline.overrides[sets.len().min(m.pipeline.overrides.len())..];
        let last = records
            .iter()
            .rev()
            .find(|r| r.pipeline == m.pipeline.name && same_file(&r.file, file, &canonical) && r.overrides.ends_with(own));
        let mut report = explain(&store, &stages, last, only)?;
        report.pipeline = m.pipeline.name.clone();
        report.file = m.pipeline.file.display().to_string();
        report.member = (members.len() > 1).then(|| m.label());
        reports.push(report);
    }
    if json {
        let doc = if reports.len() == 1 {
            serde_json::to_value(&reports[0])?
        } else {
            serde_json::json!({ "members": reports })
        };
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(());
    }
    for (i, r) in reports.iter().enumerate() {
        if let Some(label) = &r.member {
            println!("{}== sweep member {}/{}: {label}", if i > 0 { "\n" } else { "" }, i + 1, reports.len());
        }
        print(r);
    }
    Ok(())
}

/// A recorded file path (as given to `pipe run`, from wherever it ran) against this one.
fn same_file(recorded: &str, given: &Path, canonical: &Path) -> bool {
    let p = Path::new(recorded);
    p.canonicalize().is_ok_and(|c| c == canonical) || p == given
}

fn explain(store: &Store, stages: &[StageDef], last: Option<&RunRecord>, only: Option<&str>) -> Result<Report> {
    let rows = executor::status_with_inputs(store, stages)?;
    let mut cached = Vec::new();
    let mut rerun: Vec<StageWhy> = Vec::new();
    // What an upstream stage's rerun is down to, for the stages that wait for it.
    let mut own_text: HashMap<String, String> = HashMap::new();
    let mut root_text: HashMap<String, String> = HashMap::new();
    for ((st, digests), def) in rows.iter().zip(stages) {
        if st.state == "cached" {
            cached.push(st.stage.clone());
            continue;
        }
        let prev = last.and_then(|r| r.stages.iter().find(|s| s.stage == def.id));
        let reasons = match last {
            None => Vec::new(),
            Some(r) => reasons(store, def, st, digests, r, &own_text, &root_text)?,
        };
        let own: Vec<String> = reasons.iter().filter(|r| !matches!(r, Reason::WaitsFor { .. })).map(Reason::text).collect();
        let own = own.join("; ");
        let root = if own.is_empty() {
            let mut ups: Vec<String> = Vec::new();
            for r in &reasons {
                if let Reason::WaitsFor { upstream, .. } = r {
                    let t = root_text.get(upstream).cloned().unwrap_or_else(|| upstream.clone());
                    if !ups.contains(&t) {
                        ups.push(t);
                    }
                }
            }
            ups.join(", ")
        } else {
            format!("{} ({own})", def.id)
        };
        own_text.insert(def.id.clone(), own);
        root_text.insert(def.id.clone(), root);
        let text = reasons.iter().map(Reason::text).collect();
        rerun.push(StageWhy {
            stage: def.id.clone(),
            kind: def.kind.name.into(),
            state: st.state.clone(),
            key: st.key.clone(),
            last_key: prev.map(|p| p.key.clone()),
            reasons,
            text,
        });
    }
    if let Some(s) = only {
        cached.retain(|c| c == s);
        rerun.retain(|r| r.stage == s);
    }
    Ok(Report {
        pipeline: String::new(),
        file: String::new(),
        store: store.location(),
        member: None,
        last_run: last.map(|r| LastRun {
            id: r.id.clone(),
            status: r.status.clone(),
            started_at: r.started_at.clone(),
            overrides: r.overrides.clone(),
        }),
        only: only.map(String::from),
        cached,
        rerun,
    })
}

fn reasons(
    store: &Store,
    def: &StageDef,
    st: &StageStatus,
    digests: &executor::InputDigests,
    last: &RunRecord,
    own_text: &HashMap<String, String>,
    root_text: &HashMap<String, String>,
) -> Result<Vec<Reason>> {
    let Some(prev) = last.stages.iter().find(|s| s.stage == def.id) else {
        let note = match (&last.stopped_early, last.status.as_str()) {
            (Some(why), _) => Some(format!("it stopped early: {why}")),
            (None, "failed") => Some("it failed before this stage".to_string()),
            (None, "running") => Some("it was interrupted before this stage".to_string()),
            _ => None,
        };
        return Ok(vec![Reason::NewStage { note }]);
    };
    if st.key.as_deref() == Some(prev.key.as_str()) {
        let detail = match store.manifest::<Manifest>(&prev.key) {
            Err(e) => format!("{e:#}"),
            Ok(None) => "its manifest is no longer in the store".to_string(),
            Ok(Some(m)) => match m.outputs.iter().find(|(_, o)| !store.has_object(&o.digest)) {
                Some((name, _)) => format!("its output {name} is missing from the store"),
                None => "the store no longer holds it".to_string(),
            },
        };
        let detail = if st.state == "resume" {
            format!("{detail}; an interrupted attempt resumes from its checkpoint")
        } else {
            detail
        };
        return Ok(vec![Reason::NotInStore { detail }]);
    }
    let Ok(Some(m)) = store.manifest::<Manifest>(&prev.key) else {
        return Ok(vec![Reason::LastManifestGone { key: prev.key.clone() }]);
    };
    let mut out = Vec::new();
    if m.kind != def.kind.name {
        out.push(Reason::StageKind {
            old: m.kind.clone(),
            new: def.kind.name.into(),
        });
    }
    if m.version != def.kind.version {
        out.push(Reason::Version { old: m.version, new: def.kind.version });
    }
    for (path, old, new) in changed(&flatten(&m.params), &flatten(&def.params)) {
        out.push(Reason::Param { path, old, new });
    }
    let from = |name: &str| match def.inputs.get(name) {
        Some(InputRef::Output { stage, output }) => Some(format!("{stage}/{output}")),
        Some(InputRef::File(path)) => Some(format!("file {}", path.display())),
        Some(InputRef::Object(d)) => Some(format!("object {d}")),
        None => None,
    };
    // Inputs not made yet, grouped by the stage that makes them.
    let mut waits: Vec<(String, Vec<String>)> = Vec::new();
    let names: std::collections::BTreeSet<&String> = m.inputs.keys().chain(digests.keys()).collect();
    for name in names {
        let old = m.inputs.get(name);
        match digests.get(name) {
            Some(None) => {
                let up = match def.inputs.get(name) {
                    Some(InputRef::Output { stage, .. }) => stage.clone(),
                    _ => name.clone(),
                };
                match waits.iter_mut().find(|(u, _)| *u == up) {
                    Some((_, v)) => v.push(name.clone()),
                    None => waits.push((up, vec![name.clone()])),
                }
            }
            Some(Some(d)) if old == Some(d) => {}
            Some(Some(d)) => out.push(Reason::Input {
                name: name.clone(),
                old: old.cloned(),
                new: Some(d.clone()),
                from: from(name),
            }),
            None => out.push(Reason::Input {
                name: name.clone(),
                old: old.cloned(),
                new: None,
                from: None,
            }),
        }
    }
    for (upstream, inputs) in waits {
        let because = match own_text.get(&upstream).filter(|t| !t.is_empty()) {
            Some(own) => format!("reruns: {own}"),
            None => match root_text.get(&upstream).filter(|t| !t.is_empty()) {
                Some(root) => format!("waits on {root}"),
                None => "reruns".to_string(),
            },
        };
        out.push(Reason::WaitsFor { upstream, inputs, because });
    }
    if out.is_empty() {
        out.push(Reason::Unexplained {
            old: prev.key.clone(),
            new: st.key.clone().unwrap_or_default(),
        });
    }
    Ok(out)
}

fn print(r: &Report) {
    println!("why {} ({}), store {}", r.pipeline, r.file, r.store);
    let total = r.cached.len() + r.rerun.len();
    let Some(last) = &r.last_run else {
        let what = match &r.only {
            Some(s) if r.cached.is_empty() => format!("{s} will run"),
            Some(s) => format!("{s} is cached"),
            None => format!("{} of {total} stages will run, {} cached", r.rerun.len(), r.cached.len()),
        };
        println!("no earlier run of {} (pipeline {}) in {} to compare with; {what}", r.file, r.pipeline, r.store);
        return;
    };
    let overrides = if last.overrides.is_empty() {
        String::new()
    } else {
        format!(", --set {}", last.overrides.join(" --set "))
    };
    println!("last run of this file: {} ({}, started {}{overrides})", last.id, last.status, last.started_at);
    if r.rerun.is_empty() {
        match &r.only {
            Some(s) => println!("{s} is cached: it will not rerun"),
            None => println!("nothing will rerun: all {total} stages are cached"),
        }
        return;
    }
    for s in &r.rerun {
        for (i, t) in s.text.iter().enumerate() {
            if i == 0 {
                println!("  {:<14} {:<7} {t}", s.stage, s.state);
            } else {
                println!("  {:<14} {:<7} {t}", "", "");
            }
        }
    }
    if r.only.is_none() {
        println!("{} cached, {} to run", r.cached.len(), r.rerun.len());
    }
}
