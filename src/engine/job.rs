//! A stage as a job that another process (`pipe exec-stage KEY`, on any node that reaches
//! the store) can compute: everything its key is made of, sealed in the store at
//! `jobs/<key>.json` before the job is submitted. `exec-stage` needs nothing else: not the
//! pipeline file, not the controller.

use crate::engine::graph::{stage_key, InputRef, KindId, StageDef};
use crate::engine::store::{Digest, Store};
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// One input of a job: a raw file (read on the node, checked against `digest`) or an
/// object of the store.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum JobInput {
    File { path: PathBuf, digest: Digest },
    Object { digest: Digest },
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct Job {
    pub key: String,
    pub stage: String,
    pub kind: String,
    pub version: u32,
    pub params: Value,
    pub inputs: BTreeMap<String, JobInput>,
    /// Where the controller's pipeline runs its stages (`cpu`, `cuda:0`).
    pub device: String,
}

impl Job {
    pub fn new(stage: &StageDef, key: &str, inputs: &BTreeMap<String, Digest>, device: &str) -> Job {
        let inputs = inputs
            .iter()
            .map(|(name, digest)| {
                let input = match stage.inputs.get(name) {
                    Some(InputRef::File(path)) => JobInput::File { path: std::path::absolute(path).unwrap_or_else(|_| path.clone()), digest: digest.clone() },
                    _ => JobInput::Object { digest: digest.clone() },
                };
                (name.clone(), input)
            })
            .collect();
        Job { key: key.to_string(), stage: stage.id.clone(), kind: stage.kind.name.to_string(), version: stage.kind.version, params: stage.params.clone(), inputs, device: device.to_string() }
    }

    fn name(key: &str) -> String {
        format!("jobs/{key}.json")
    }

    /// Puts the job in the store (the same key always makes the same job, so a rewrite is
    /// harmless).
    pub fn save(&self, store: &Store) -> Result<()> {
        store.put_sealed(&Job::name(&self.key), self)
    }

    /// The job of stage `key`, as the controller saved it.
    pub fn load(store: &Store, key: &str) -> Result<Job> {
        store.get_sealed(&Job::name(key))?.with_context(|| {
            crate::UserError(format!("no job for stage key {key} in {}: `pipe run --executor slurm` saves one before it submits the stage", store.location()))
        })
    }

    /// The stage to compute and its input digests; `kind` turns the kind's name and
    /// version into this pipe's [`KindId`] (None: this pipe has no such kind).
    pub fn stage(&self, kind: impl Fn(&str, u32) -> Option<KindId>) -> Result<(StageDef, BTreeMap<String, Digest>)> {
        let id = kind_of(&kind, &self.stage, &self.kind, self.version)?;
        let mut refs = BTreeMap::new();
        let mut digests = BTreeMap::new();
        for (name, input) in &self.inputs {
            let (r, d) = match input {
                JobInput::File { path, digest } => (InputRef::File(path.clone()), digest),
                JobInput::Object { digest } => (InputRef::Object(digest.clone()), digest),
            };
            refs.insert(name.clone(), r);
            digests.insert(name.clone(), d.clone());
        }
        let def = StageDef { id: self.stage.clone(), kind: id, params: self.params.clone(), inputs: refs };
        // the job names the computation its key names, or it is not this stage's job
        let key = stage_key(&def, &digests);
        if key != self.key {
            bail!("the job saved for stage key {} makes the key {key}: it was edited, or saved by another version of pipe", self.key);
        }
        Ok((def, digests))
    }
}

/// Where an input of a planned stage comes from, as a detached job reads it.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum PlanInput {
    File { path: PathBuf },
    Output { stage: String, output: String },
    Object { digest: Digest },
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct PlannedStage {
    pub id: String,
    pub kind: String,
    pub version: u32,
    pub params: Value,
    pub inputs: BTreeMap<String, PlanInput>,
}

/// A whole graph saved in the store (`plans/<digest>.json`), for `--detach`: each stage is
/// submitted at once with a dependency on the jobs of its upstream stages, and its job
/// (`pipe exec-stage --plan ID --stage S`) works out its key when it starts, from the
/// manifests its upstream jobs committed.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct Plan {
    pub device: String,
    pub stages: Vec<PlannedStage>,
}

impl Plan {
    pub fn new(stages: &[StageDef], device: &str) -> Plan {
        let stages = stages
            .iter()
            .map(|s| PlannedStage {
                id: s.id.clone(),
                kind: s.kind.name.to_string(),
                version: s.kind.version,
                params: s.params.clone(),
                inputs: s
                    .inputs
                    .iter()
                    .map(|(name, input)| {
                        let p = match input {
                            InputRef::File(path) => PlanInput::File { path: std::path::absolute(path).unwrap_or_else(|_| path.clone()) },
                            InputRef::Output { stage, output } => PlanInput::Output { stage: stage.clone(), output: output.clone() },
                            InputRef::Object(d) => PlanInput::Object { digest: d.clone() },
                        };
                        (name.clone(), p)
                    })
                    .collect(),
            })
            .collect();
        Plan { device: device.to_string(), stages }
    }

    /// Puts the plan in the store under the digest of its content, and returns that id.
    pub fn save(&self, store: &Store) -> Result<String> {
        let id = crate::engine::store::digest_bytes(crate::engine::graph::canonical_json(&serde_json::to_value(self)?).as_bytes());
        store.put_sealed(&format!("plans/{id}.json"), self)?;
        Ok(id)
    }

    pub fn load(store: &Store, id: &str) -> Result<Plan> {
        store.get_sealed(&format!("plans/{id}.json"))?.with_context(|| crate::UserError(format!("no plan {id} in {}", store.location())))
    }

    /// The graph again, with this pipe's kinds.
    pub fn stages(&self, kind: impl Fn(&str, u32) -> Option<KindId>) -> Result<Vec<StageDef>> {
        self.stages
            .iter()
            .map(|s| {
                let id = kind_of(&kind, &s.id, &s.kind, s.version)?;
                let inputs = s
                    .inputs
                    .iter()
                    .map(|(name, p)| {
                        let r = match p {
                            PlanInput::File { path } => InputRef::File(path.clone()),
                            PlanInput::Output { stage, output } => InputRef::output(stage, output),
                            PlanInput::Object { digest } => InputRef::Object(digest.clone()),
                        };
                        (name.clone(), r)
                    })
                    .collect();
                Ok(StageDef { id: s.id.clone(), kind: id, params: s.params.clone(), inputs })
            })
            .collect()
    }
}

/// This pipe's kind for a saved stage: one saved by another version of pipe may name a
/// kind (or version) this one does not have.
fn kind_of(kind: impl Fn(&str, u32) -> Option<KindId>, stage: &str, name: &str, version: u32) -> Result<KindId> {
    kind(name, version).with_context(|| format!("stage {stage}: this pipe has no kind {name} v{version} (it was saved by another version of pipe)"))
}
