//! Walks a stage graph against the store: computes each stage's key from its kind, version,
//! parameters and the *content digests* of its inputs, reuses committed stages, runs the
//! rest through a [`Runner`] and commits each with a manifest written last.

use crate::engine::graph::{key_of, stage_key, InputRef, StageDef};
use crate::engine::interrupt::{self, Interrupted};
use crate::engine::job::Job;
use crate::engine::progress::{Display, Live, Meter, Stop};
use crate::engine::store::{absent_if_damaged, digest_file, Digest, Lease, Store};
use crate::engine::timefmt;
use anyhow::{anyhow, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::Instant;

/// Runs one kind of stage; implemented by the stage adapters.
pub trait Runner: Sync {
    fn run(&self, stage: &StageDef, io: &mut StageIo) -> Result<()>;
    /// Where the work runs (recorded in manifests, never in keys).
    fn device(&self) -> String;
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct OutputInfo {
    pub digest: Digest,
    pub bytes: u64,
}

/// A committed stage.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct Manifest {
    pub key: String,
    pub stage: String,
    pub kind: String,
    pub version: u32,
    pub params: Value,
    pub inputs: BTreeMap<String, Digest>,
    pub outputs: BTreeMap<String, OutputInfo>,
    pub summary: Value,
    pub device: String,
    pub pipe_version: String,
    pub started_at: String,
    pub seconds: f64,
    /// Set when the stage continued from a checkpoint of an interrupted attempt.
    pub resumed: Option<Value>,
}

/// What is known about the graph while walking it.
#[derive(Default)]
struct Known {
    outputs: HashMap<(String, String), Digest>,
    files: HashMap<PathBuf, Digest>,
}

impl Known {
    /// Every input's digest (`None` where the upstream stage has not made it yet), and the
    /// first upstream stage the stage waits for, if any.
    fn resolve(&mut self, stage: &StageDef) -> Result<(InputDigests, Option<String>)> {
        let mut digests = BTreeMap::new();
        let mut waits_for = None;
        for (name, input) in &stage.inputs {
            let digest = match input {
                InputRef::File(path) => Some(match self.files.get(path) {
                    Some(d) => d.clone(),
                    None => {
                        let d = digest_file(path).map_err(|e| crate::UserError(format!("stage {}: input `{name}`: {e:#}", stage.id)))?;
                        self.files.insert(path.clone(), d.clone());
                        d
                    }
                }),
                InputRef::Output { stage: s, output } => {
                    let d = self.outputs.get(&(s.clone(), output.clone())).cloned();
                    if d.is_none() && waits_for.is_none() {
                        waits_for = Some(s.clone());
                    }
                    d
                }
                InputRef::Object(digest) => Some(digest.clone()),
            };
            digests.insert(name.clone(), digest);
        }
        Ok((digests, waits_for))
    }

    /// Input digests of a stage, or the first upstream stage whose outputs are not known yet.
    fn inputs(&mut self, stage: &StageDef) -> Result<std::result::Result<BTreeMap<String, Digest>, String>> {
        let (digests, waits_for) = self.resolve(stage)?;
        Ok(complete(&digests).ok_or_else(|| waits_for.unwrap_or_default()))
    }

    fn add(&mut self, stage: &StageDef, manifest: &Manifest) {
        for (name, info) in &manifest.outputs {
            self.outputs.insert((stage.id.clone(), name.clone()), info.digest.clone());
        }
    }
}

/// The digests of a stage whose every input is known.
fn complete(digests: &InputDigests) -> Option<BTreeMap<String, Digest>> {
    digests.iter().map(|(name, d)| Some((name.clone(), d.clone()?))).collect()
}

/// A committed manifest of `key` whose outputs are all present at their size: anything
/// less (a missing object, a damaged manifest) means the stage runs again.
pub(crate) fn committed(store: &Store, key: &str) -> Result<Option<Manifest>> {
    let Some(m) = absent_if_damaged(store.manifest::<Manifest>(key), "the stage is recomputed")? else { return Ok(None) };
    // the seal says the file is as written; the key says it describes this stage
    if m.key != key || key_of(&m.kind, m.version, &m.params, &m.inputs) != key {
        eprintln!("warning: {} does not describe stage {key} (its kind, version, params or inputs make another key); the stage is recomputed", store.manifest_location(key));
        return Ok(None);
    }
    Ok(Some(m).filter(|m| m.outputs.values().all(|o| store.object_size(&o.digest).is_ok_and(|s| s == Some(o.bytes)))))
}

/// How a stage stands before a run.
#[derive(Clone, Debug, Serialize)]
pub struct StageStatus {
    pub stage: String,
    pub kind: String,
    /// Known once every input is known.
    pub key: Option<String>,
    /// `cached`, `to run`, `resume` (an interrupted attempt left a checkpoint), or `running`
    /// (in `pipe status`, the stage a `pipe run` holding the store is on now).
    pub state: String,
    /// For a stage whose key is not known yet: the upstream stage it waits for.
    pub waits_for: Option<String>,
    /// What the key is made of besides the kind: the stage version, its parameters and
    /// each input, as a content digest or, before its upstream stage has run, `stage:output`.
    pub version: u32,
    pub params: Value,
    pub inputs: BTreeMap<String, String>,
}

/// Each stage's state without running anything.
pub fn status(store: &Store, stages: &[StageDef]) -> Result<Vec<StageStatus>> {
    Ok(status_with_inputs(store, stages)?.into_iter().map(|(s, _)| s).collect())
}

/// A stage's input digests by name; `None` for an input whose upstream has not run yet.
pub type InputDigests = BTreeMap<String, Option<Digest>>;

/// [`status`], with the input digests each key is made of (`pipe why` compares them with
/// an earlier run's).
pub fn status_with_inputs(store: &Store, stages: &[StageDef]) -> Result<Vec<(StageStatus, InputDigests)>> {
    let mut known = Known::default();
    let mut out = Vec::new();
    for stage in stages {
        let (digests, waits_for) = known.resolve(stage)?;
        let inputs = stage
            .inputs
            .iter()
            .map(|(name, input)| {
                let shown = match (digests.get(name).cloned().flatten(), input) {
                    (Some(d), _) => d,
                    (None, InputRef::Output { stage, output }) => format!("{stage}:{output}"),
                    (None, _) => String::new(),
                };
                (name.clone(), shown)
            })
            .collect();
        let made_of = |key: Option<String>, state: &str, waits_for: Option<String>| StageStatus {
            stage: stage.id.clone(),
            kind: stage.kind.name.into(),
            key,
            state: state.into(),
            waits_for,
            version: stage.kind.version,
            params: stage.params.clone(),
            inputs,
        };
        let row = match complete(&digests) {
            None => made_of(None, "to run", waits_for),
            Some(inputs) => {
                let key = stage_key(stage, &inputs);
                let state = if let Some(m) = committed(store, &key)? {
                    known.add(stage, &m);
                    "cached"
                } else if store.has_partial(&key) {
                    "resume"
                } else {
                    "to run"
                };
                made_of(Some(key), state, None)
            }
        };
        out.push((row, digests));
    }
    Ok(out)
}

/// One stage's line in a run record.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct RunStage {
    pub stage: String,
    pub kind: String,
    pub key: String,
    /// `cached` or `ran`.
    pub status: String,
    pub seconds: f64,
    pub outputs: BTreeMap<String, OutputInfo>,
    pub summary: Value,
}

/// The record of one `pipe run`.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct RunRecord {
    pub id: String,
    pub pipeline: String,
    pub file: String,
    pub overrides: Vec<String>,
    pub spec: Value,
    pub started_at: String,
    pub finished_at: Option<String>,
    /// `running`, `ok`, `failed` or `interrupted` (stopped by SIGINT / SIGTERM at a safe
    /// point; a record left `running` by a killed process is shown as `interrupted` too).
    pub status: String,
    pub error: Option<String>,
    pub device: String,
    pub seconds: f64,
    pub stages: Vec<RunStage>,
    /// Why the run ended before the last planned stage (rounds stopped on validation).
    #[serde(default)]
    pub stopped_early: Option<String>,
    /// The round reported for the run, chosen on validation.
    #[serde(default)]
    pub selected: Option<Value>,
    /// The `pipe` that ran it (absent in records of older versions).
    #[serde(default)]
    pub pipe_version: Option<String>,
    /// The sweep member this run is (case and swept values), absent outside sweeps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub member: Option<String>,
}

/// Says, from the stages done so far, whether to stop the run early and why.
pub type StopRule<'a> = &'a dyn Fn(&[RunStage]) -> Option<String>;

/// Where the stages a run must compute are computed.
#[derive(Clone, Copy)]
pub enum Placement<'a> {
    /// In this process, one after another.
    Here,
    /// In this process, up to this many independent stages at once (threads sharing the
    /// cores).
    Threads(usize),
    /// As jobs of a cluster's scheduler, each a `pipe exec-stage KEY` on some node that
    /// reaches the store: this run saves each job, submits it and waits for its commit.
    Jobs(&'a dyn JobQueue),
}

/// A scheduler that computes saved jobs ([`Job`]) in other processes.
pub trait JobQueue: Sync {
    /// Returns once stage `job.key` is committed in `store`, or with an error that names the
    /// stage and where its log is.
    fn compute(&self, store: &Store, job: &Job) -> Result<()>;

    /// [`JobQueue::compute`] for stages that are ready together, one result each, in order.
    fn compute_many(&self, store: &Store, jobs: &[Job]) -> Vec<Result<()>> {
        std::thread::scope(|s| {
            let waits: Vec<_> = jobs.iter().map(|j| s.spawn(move || self.compute(store, j))).collect();
            waits.into_iter().map(|w| w.join().unwrap_or_else(|_| Err(anyhow!("waiting on a job panicked")))).collect()
        })
    }
}

/// Runs the graph, writing the run record as it goes (a killed run leaves `running`).
pub fn run(store: &Store, stages: &[StageDef], runner: &dyn Runner, record: &mut RunRecord, stop: StopRule, display: Display) -> Result<()> {
    run_placed(store, stages, runner, record, stop, display, Placement::Here)
}

/// [`run`], with the stages to compute computed where `placement` says.
pub fn run_placed(store: &Store, stages: &[StageDef], runner: &dyn Runner, record: &mut RunRecord, stop: StopRule, display: Display, placement: Placement) -> Result<()> {
    let t_run = Instant::now();
    // alive before its record says `running`, so that no reader takes it for killed
    let _alive = store.hold_alive(&record.id)?;
    store.write_run(&record.id, record).context("writing the run record")?;
    let live = Live { store, run: record.id.clone(), display };
    let result = run_stages(store, stages, runner, record, stop, &live, placement);
    let _ = store.end_live(&record.id);
    record.seconds = t_run.elapsed().as_secs_f64();
    record.finished_at = Some(timefmt::now_iso());
    match &result {
        Ok(()) => record.status = "ok".into(),
        Err(e) => {
            record.status = if Interrupted::is_in(e) { "interrupted" } else { "failed" }.into();
            record.error = Some(format!("{e:#}"));
        }
    }
    match (store.write_run(&record.id, record), result) {
        (Ok(()), result) => result,
        (Err(w), Ok(())) => Err(w.context("writing the run record")),
        // the first failure is the one to report (a full disk fails both)
        (Err(w), Err(e)) => {
            eprintln!("warning: the run record could not be marked failed ({w:#}); `pipe ls` will show the run as interrupted");
            Err(e)
        }
    }
}

/// A stage computed (or found committed) by a wave, waiting to be recorded in plan order.
struct Done {
    key: String,
    manifest: Manifest,
    status: &'static str,
    seconds: f64,
}

/// Walks the graph in waves: every stage whose inputs are known is computed at once (as
/// many as `placement` takes), then the stages done are recorded in plan order, with the
/// stop rule asked after each. The plan is in dependency order, so its first stage not yet
/// done is always in the next wave; run one at a time (`Placement::Here`) this is the plan
/// order itself. Keys and seeds come from stage ids and input digests only, so the waves
/// change when stages run, never what they make.
fn run_stages(store: &Store, stages: &[StageDef], runner: &dyn Runner, record: &mut RunRecord, stop: StopRule, live: &Live, placement: Placement) -> Result<()> {
    let width = match placement {
        Placement::Here => 1,
        Placement::Threads(n) => n.max(1),
        Placement::Jobs(_) => usize::MAX,
    };
    let mut known = Known::default();
    let mut done: BTreeMap<usize, Done> = BTreeMap::new();
    let mut next = 0;
    while next < stages.len() {
        let mut wave = Vec::new();
        for (i, stage) in stages.iter().enumerate().skip(next).filter(|(i, _)| !done.contains_key(i)) {
            if let Ok(inputs) = known.inputs(stage)? {
                wave.push((i, stage_key(stage, &inputs), inputs));
                if wave.len() == width {
                    break;
                }
            }
        }
        if wave.first().map(|w| w.0) != Some(next) {
            let up = known.inputs(&stages[next])?.err().unwrap_or_default();
            return Err(anyhow!("stage {} needs {up}, which has not run (bug in the plan order)", stages[next].id));
        }
        let before = store.requests();
        let computed = compute_wave(store, stages, &wave, runner, live, placement)?;
        // on object storage, what a stage cost in requests (its reads, writes, lease and
        // commit; the run record's PUT after it is not counted), when it ran alone
        let cost = before.zip(store.requests()).filter(|_| computed.len() == 1).map(|(b, a)| format!("  [{}]", a.since(&b))).unwrap_or_default();
        for (i, d) in computed {
            println!("{}{cost}", stage_line(d.status, &stages[i], &d.key, d.seconds, &d.manifest));
            known.add(&stages[i], &d.manifest);
            done.insert(i, d);
        }
        while let Some(d) = done.remove(&next) {
            let stage = &stages[next];
            next += 1;
            record.stages.push(RunStage {
                stage: stage.id.clone(),
                kind: stage.kind.name.into(),
                key: d.key,
                status: d.status.into(),
                seconds: d.seconds,
                outputs: d.manifest.outputs,
                summary: d.manifest.summary,
            });
            store.write_run(&record.id, record).with_context(|| format!("writing the run record after stage {}", stage.id))?;
            if let Some(reason) = stop(&record.stages) {
                // stages of a wave past this point stay committed, for the next run to reuse
                println!("stopping: {reason}");
                record.stopped_early = Some(reason);
                return Ok(());
            }
        }
    }
    Ok(())
}

/// Computes one wave of ready stages, in this process or as jobs.
fn compute_wave(store: &Store, stages: &[StageDef], wave: &[(usize, String, BTreeMap<String, Digest>)], runner: &dyn Runner, live: &Live, placement: Placement) -> Result<Vec<(usize, Done)>> {
    let here = |(i, key, inputs): &(usize, String, BTreeMap<String, Digest>)| -> Result<(usize, Done)> { Ok((*i, compute_timed(store, &stages[*i], key, inputs.clone(), runner, live)?)) };
    match placement {
        Placement::Here => wave.iter().map(here).collect(),
        Placement::Threads(_) => {
            let results: Vec<Result<(usize, Done)>> = std::thread::scope(|s| {
                let workers: Vec<_> = wave.iter().map(|w| s.spawn(move || here(w))).collect();
                workers.into_iter().map(|w| w.join().unwrap_or_else(|_| Err(anyhow!("a stage's thread panicked")))).collect()
            });
            // every stage of the wave ended (a failed one does not stop the others half-way);
            // the first failure in plan order is the one reported
            results.into_iter().collect()
        }
        Placement::Jobs(queue) => {
            let t0 = Instant::now();
            let mut out = Vec::new();
            let (mut at, mut jobs) = (Vec::new(), Vec::new());
            for (i, key, inputs) in wave {
                match committed(store, key)? {
                    Some(manifest) => out.push((*i, Done { key: key.clone(), manifest, status: "cached", seconds: t0.elapsed().as_secs_f64() })),
                    None => {
                        let job = Job::new(&stages[*i], key, inputs, &runner.device());
                        job.save(store).with_context(|| format!("saving the job of stage {}", stages[*i].id))?;
                        at.push(*i);
                        jobs.push(job);
                    }
                }
            }
            let ended = queue.compute_many(store, &jobs);
            for ((i, job), result) in at.into_iter().zip(jobs).zip(ended) {
                result?;
                let manifest = committed(store, &job.key)?
                    .with_context(|| format!("stage {} ({}): its job ended but the stage is not committed in {}", job.stage, &job.key[..12], store.location()))?;
                let seconds = manifest.seconds;
                out.push((i, Done { key: job.key, manifest, status: "ran", seconds }));
            }
            out.sort_by_key(|(i, _)| *i);
            Ok(out)
        }
    }
}

/// A stage computed in this process (or committed meanwhile by another that held its lease).
fn compute_here(store: &Store, stage: &StageDef, key: &str, inputs: BTreeMap<String, Digest>, runner: &dyn Runner, live: &Live) -> Result<(Manifest, &'static str)> {
    Ok(match leased(store, stage, key)? {
        Leased::Committed(m) => (*m, "cached"),
        Leased::Ours(_lease) => {
            let m = match execute(store, stage, key, inputs, runner, live) {
                Ok(m) => m,
                // a stage stopped by an interrupt, whatever error its library call gave
                Err(e) if interrupt::requested() && !Interrupted::is_in(&e) => {
                    let kept = if store.has_partial(key) { "its last checkpoint is kept" } else { "it has no checkpoint and reruns from its start" };
                    return Err(Interrupted::new(format!("{} stopped mid-way; {kept}", stage.id)).into());
                }
                Err(e) => return Err(e).with_context(|| format!("stage {} failed", stage.id)),
            };
            (m, "ran")
        }
    })
}

/// `pipe exec-stage KEY`: computes the saved job of stage `key` here, unless it is
/// committed already (then nothing is done: a job that runs twice, resubmitted or raced by
/// another worker, commits once). Returns the stage's result line.
pub fn exec_job(store: &Store, key: &str, kind: impl Fn(&str, u32) -> Option<crate::engine::graph::KindId>, runner: &dyn Runner, display: Display) -> Result<String> {
    let job = Job::load(store, key)?;
    let (stage, inputs) = job.stage(kind)?;
    exec_here(store, &stage, key, inputs, runner, display)
}

/// `pipe exec-stage --plan P --stage ID`: stage `id` of a detached graph. Its upstream
/// stages' jobs ended well before this one started (afterok), so their manifests give its
/// input digests and so its key.
pub fn exec_planned(store: &Store, stages: &[StageDef], id: &str, runner: &dyn Runner, display: Display) -> Result<String> {
    let mut known = Known::default();
    for stage in stages {
        let inputs = known.inputs(stage)?;
        if stage.id == id {
            let inputs = inputs.map_err(|up| anyhow!("stage {id} needs {up}, which is not committed in {}: its job must end well first (afterok)", store.location()))?;
            let key = stage_key(stage, &inputs);
            Job::new(stage, &key, &inputs, &runner.device()).save(store)?;
            return exec_here(store, stage, &key, inputs, runner, display);
        }
        if let Ok(inputs) = inputs {
            if let Some(m) = committed(store, &stage_key(stage, &inputs))? {
                known.add(stage, &m);
            }
        }
    }
    Err(crate::UserError(format!("the plan has no stage {id}")).into())
}

fn exec_here(store: &Store, stage: &StageDef, key: &str, inputs: BTreeMap<String, Digest>, runner: &dyn Runner, display: Display) -> Result<String> {
    if let Some(m) = committed(store, key)? {
        return Ok(stage_line("cached", stage, key, 0.0, &m));
    }
    // alive and beating under a run id of its own, so `pipe status` shows the job's progress
    let run = format!("{}-exec-{}-{}", timefmt::now_iso().replace([':', '-'], ""), &key[..12], std::process::id());
    let _alive = store.hold_alive(&run)?;
    let live = Live { store, run: run.clone(), display };
    let done = compute_timed(store, stage, key, inputs, runner, &live);
    let _ = store.end_live(&run);
    let d = done?;
    Ok(stage_line(d.status, stage, key, d.seconds, &d.manifest))
}

/// [`compute_here`], with the seconds a stage line shows: the computation's own for a stage
/// that ran, the wait for one another process committed meanwhile.
fn compute_timed(store: &Store, stage: &StageDef, key: &str, inputs: BTreeMap<String, Digest>, runner: &dyn Runner, live: &Live) -> Result<Done> {
    let t0 = Instant::now();
    let (manifest, status) = compute_here(store, stage, key, inputs, runner, live)?;
    let seconds = if status == "ran" { manifest.seconds } else { t0.elapsed().as_secs_f64() };
    Ok(Done { key: key.to_string(), manifest, status, seconds })
}

enum Leased {
    /// Committed already, or by the run that held the lease while this one waited.
    Committed(Box<Manifest>),
    /// This run computes the stage; the lease ends when it is dropped.
    Ours(Lease),
}

/// The committed manifest of a stage, or the lease to compute it. While another run of the
/// store computes the stage this one waits for its commit rather than compute it too; if
/// that run dies its lease ends, and this one takes the stage over (from its checkpoint).
fn leased(store: &Store, stage: &StageDef, key: &str) -> Result<Leased> {
    let mut said = false;
    loop {
        if let Some(m) = committed(store, key)? {
            return Ok(Leased::Committed(Box::new(m)));
        }
        if interrupt::requested() {
            return Err(Interrupted::new(format!("stopped before {}", stage.id)).into());
        }
        if let Some(lease) = store.lease(key)? {
            // committed between the look above and the lease: nothing left to do
            return Ok(match committed(store, key)? {
                Some(m) => Leased::Committed(Box::new(m)),
                None => Leased::Ours(lease),
            });
        }
        if !said {
            eprintln!("waiting for stage {} ({}), which another run of this store is computing", stage.id, &key[..12]);
            said = true;
        }
        std::thread::sleep(store.poll());
    }
}

fn stage_line(status: &str, stage: &StageDef, key: &str, seconds: f64, m: &Manifest) -> String {
    let mut extra = String::new();
    if status == "ran" {
        if let Some(r) = &m.resumed {
            extra.push_str(&format!("  resumed from {}", r.as_str().map(String::from).unwrap_or_else(|| r.to_string())));
        }
    }
    if let Some(line) = m.summary.get("line").and_then(Value::as_str) {
        extra.push_str("  ");
        extra.push_str(line);
    }
    format!("{status:<7} {:<14} {}  {seconds:>8.2}s{extra}", stage.id, &key[..12])
}

fn execute(store: &Store, stage: &StageDef, key: &str, inputs: BTreeMap<String, Digest>, runner: &dyn Runner, live: &Live) -> Result<Manifest> {
    let started_at = timefmt::now_iso();
    let t0 = Instant::now();
    let mut io = StageIo {
        store,
        stage,
        key: key.to_string(),
        inputs: inputs.clone(),
        outputs: BTreeMap::new(),
        summary: serde_json::Map::new(),
        resumed: None,
        live: live.clone(),
        started_at: started_at.clone(),
    };
    runner.run(stage, &mut io)?;
    let manifest = Manifest {
        key: key.to_string(),
        stage: stage.id.clone(),
        kind: stage.kind.name.to_string(),
        version: stage.kind.version,
        params: stage.params.clone(),
        inputs,
        outputs: io.outputs,
        summary: Value::Object(io.summary),
        device: runner.device(),
        pipe_version: env!("CARGO_PKG_VERSION").to_string(),
        started_at,
        seconds: t0.elapsed().as_secs_f64(),
        resumed: io.resumed,
    };
    if store.commit_manifest(key, &manifest)? {
        return Ok(manifest);
    }
    // Another run committed this key while this one computed it: the first commit stays
    // (downstream stages of both runs then read the same outputs), provided it is usable.
    match committed(store, key)? {
        Some(first) => {
            eprintln!("note: stage {} ({}) was committed by another run first; using its outputs", stage.id, &key[..12]);
            Ok(first)
        }
        None => {
            store.recommit_manifest(key, &manifest)?;
            Ok(manifest)
        }
    }
}

/// A running stage's view of the store: its inputs, its outputs, its resumption
/// checkpoints and its progress. Adapters see nothing else of the engine.
pub struct StageIo<'a> {
    store: &'a Store,
    stage: &'a StageDef,
    key: String,
    inputs: BTreeMap<String, Digest>,
    outputs: BTreeMap<String, OutputInfo>,
    summary: serde_json::Map<String, Value>,
    resumed: Option<Value>,
    live: Live<'a>,
    started_at: String,
}

impl<'a> StageIo<'a> {
    /// Names of the stage's inputs starting with `prefix`, in order.
    pub fn input_names(&self, prefix: &str) -> Vec<String> {
        self.inputs.keys().filter(|k| k.starts_with(prefix)).cloned().collect()
    }

    pub fn has_input(&self, name: &str) -> bool {
        self.inputs.contains_key(name)
    }

    /// The bytes of an input, verified against the digest in the key.
    pub fn read(&self, name: &str) -> Result<Vec<u8>> {
        let digest = self.inputs.get(name).with_context(|| format!("stage {} has no input `{name}`", self.stage.id))?;
        match self.stage.inputs.get(name) {
            Some(InputRef::File(path)) => {
                let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
                if &crate::engine::store::digest_bytes(&bytes) != digest {
                    anyhow::bail!("{} changed while the pipeline was running; rerun it", path.display());
                }
                Ok(bytes)
            }
            _ => self.store.read(digest),
        }
    }

    /// The content digest of input `name` (what the key holds for it).
    pub fn input_digest(&self, name: &str) -> Result<&str> {
        self.inputs.get(name).map(String::as_str).with_context(|| format!("stage {} has no input `{name}`", self.stage.id))
    }

    /// An object named by digest inside one of the stage's inputs (a pool of earlier
    /// rounds' pseudo-negatives): the input's digest is in the key, and the digests it
    /// lists fix the content of what it names, so the key covers these bytes too. Rehashed
    /// on read like every object.
    pub fn read_named(&self, digest: &str) -> Result<Vec<u8>> {
        self.store.read(digest)
    }

    /// The path of a file input (raw data outside the store).
    pub fn file(&self, name: &str) -> Result<PathBuf> {
        match self.stage.inputs.get(name) {
            Some(InputRef::File(path)) => Ok(path.clone()),
            _ => anyhow::bail!("stage {}: `{name}` is not a file input", self.stage.id),
        }
    }

    pub fn write(&mut self, name: &str, bytes: &[u8]) -> Result<()> {
        let digest = self.store.write(bytes)?;
        self.outputs.insert(name.to_string(), OutputInfo { digest, bytes: bytes.len() as u64 });
        Ok(())
    }

    /// Whether the stage has written output `name`.
    pub fn wrote(&self, name: &str) -> bool {
        self.outputs.contains_key(name)
    }

    /// A value for the manifest's summary; `line` is also shown after the stage's line.
    pub fn summary(&mut self, key: &str, value: Value) {
        self.summary.insert(key.to_string(), value);
    }

    /// The last resumption checkpoint `name` of an interrupted attempt of this very stage,
    /// checked against its digest (a damaged one is discarded: the stage starts over).
    pub fn read_partial(&self, name: &str) -> Result<Option<Vec<u8>>> {
        self.store.read_partial(&self.key, name)
    }

    /// Saves a resumption checkpoint atomically (a kill mid-write keeps the previous one).
    pub fn write_partial(&self, name: &str, bytes: &[u8]) -> Result<()> {
        self.store.write_partial(&self.key, name, bytes)
    }

    pub fn note_resumed(&mut self, what: Value) {
        self.resumed = Some(what);
    }

    pub fn stage_id(&self) -> &str {
        &self.stage.id
    }

    /// The stage's progress, counting `total` `unit`s (samples, examples, bytes): shown as
    /// the run shows it and written to the heartbeat. An interrupt stops the stage at its
    /// next step ([`Meter::inc`] breaks).
    pub fn progress(&self, total: u64, unit: &str, what: &str) -> Meter<'a> {
        Meter::new(self.live.clone(), &self.stage.id, &self.key, &self.started_at, total, unit, what, Stop::Now)
    }

    /// [`StageIo::progress`] for a stage that saves a resumption checkpoint: the first
    /// interrupt lets it reach that checkpoint (see [`StageIo::stop_requested`]).
    pub fn progress_to_checkpoint(&self, total: u64, unit: &str, what: &str) -> Meter<'a> {
        Meter::new(self.live.clone(), &self.stage.id, &self.key, &self.started_at, total, unit, what, Stop::AtCheckpoint)
    }

    /// Whether the run was asked to stop: a stage that just saved its checkpoint returns
    /// [`StageIo::interrupted`] then.
    pub fn stop_requested(&self) -> bool {
        interrupt::requested()
    }

    /// The error a stage returns when it stops on request at a safe point.
    pub fn interrupted(&self, kept: &str) -> anyhow::Error {
        Interrupted::new(format!("{} stopped; {kept}", self.stage.id)).into()
    }
}
