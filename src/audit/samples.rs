//! `pipe samples`: the pseudo-negatives of one synthesis stage, each with its tensor and its
//! row of the stage's table, selected by class and by whether a later classifier still
//! takes it for its class. "Still fools" is lineage's verdict (the evaluate stages' scores
//! read by [`lineage`]), never recomputed here.

use crate::audit::lineage::{self, Later, PseudoNegative};
use crate::audit::runs::{find_run, run_stage, unique_match};
use crate::engine::executor::{Manifest, RunRecord};
use crate::engine::store::Store;
use crate::kinds::synthesize::{self, Synthesize, Targets};
use crate::kinds::train::Train;
use crate::kinds::Kind;
use crate::UserError;
use anyhow::{Context, Result};

/// What to select.
#[derive(Default)]
pub struct Filter<'a> {
    /// Only this class.
    pub class: Option<u32>,
    /// Only those that still fool a later classifier: `Some(None)` the final one of the
    /// stage's run, `Some(Some(what))` the one `what` names (as `pipe lineage` takes it).
    pub fooling: Option<Option<&'a str>>,
}

/// The classifier `--fooling` asked about.
pub struct Judge {
    /// As the user would name it: `RUN:train/N` or a checkpoint digest.
    pub name: String,
    pub round: u32,
}

pub struct Sample {
    pub meta: PseudoNegative,
    /// How the judging classifier scores it (with `--fooling`).
    pub judged: Option<Later>,
}

pub struct Selection {
    /// The stage id (`synthesize/3`) and key.
    pub stage: String,
    pub key: String,
    pub round: u32,
    /// C x H x W of every image.
    pub shape: (usize, usize, usize),
    /// The classes the stage made samples of.
    pub classes: Vec<u32>,
    /// Samples in the stage, before selection.
    pub total: usize,
    pub judge: Option<Judge>,
    pub samples: Vec<Sample>,
    images: Vec<f32>,
}

impl Selection {
    /// The C x H x W values of a selected sample, in [-1, 1].
    pub fn image(&self, s: &Sample) -> &[f32] {
        let d = self.shape.0 * self.shape.1 * self.shape.2;
        let i = s.meta.sample_id as usize;
        &self.images[i * d..(i + 1) * d]
    }
}

/// The samples of the synthesis stage `what` (`RUN:STAGE`, or a stage key or unique prefix)
/// that `filter` keeps, in sample order.
pub fn select(store: &Store, what: &str, filter: &Filter) -> Result<Selection> {
    let (run, m) = resolve(store, what)?;
    let params: synthesize::Params = serde_json::from_value(m.params.clone()).with_context(|| format!("parameters of stage {} ({})", m.stage, m.key))?;
    let classes: Vec<u32> = match params.targets {
        Targets::PerClass => (0..params.net.num_classes as u32).collect(),
        Targets::Binary { class } => vec![class],
    };
    if let Some(k) = filter.class.filter(|k| !classes.contains(k)) {
        let valid = match classes.as_slice() {
            [only] => format!("only class {only}"),
            _ => format!("classes 0 to {}", classes.len().saturating_sub(1)),
        };
        return Err(UserError(format!("--class {k}: stage {} made {valid}", m.stage)).into());
    }
    let digest = &m.outputs.get(synthesize::PSEUDO_NEGATIVES).with_context(|| format!("stage {} has no {}", m.stage, synthesize::PSEUDO_NEGATIVES))?.digest;
    let tensors = stages::codec::decode_pseudo_negatives(&store.read(digest)?).with_context(|| format!("{} of stage {}", synthesize::PSEUDO_NEGATIVES, m.stage))?;
    let rows = lineage::made_by(store, &m)?;
    anyhow::ensure!(
        rows.len() == tensors.classes.len() && rows.iter().enumerate().all(|(i, r)| r.sample_id as usize == i && r.class == tensors.classes[i]),
        "stage {}: its table and its tensors describe different samples",
        m.stage
    );

    let judge = match filter.fooling {
        None => None,
        Some(by) => {
            let name = match by {
                Some(by) => by.to_string(),
                None => final_classifier(store, run.as_deref(), &m)?,
            };
            Some((name.clone(), judged(store, &name, &m.stage, digest, params.round)?))
        }
    };
    let total = rows.len();
    let mut samples = Vec::new();
    for meta in rows.into_iter().filter(|r| filter.class.is_none_or(|k| r.class == k)) {
        let judged = match &judge {
            None => None,
            Some((_, (_, scores))) => match scores.iter().find(|(id, _)| *id == meta.sample_id) {
                Some((_, later)) if later.fools => Some(later.clone()),
                _ => continue,
            },
        };
        samples.push(Sample { meta, judged });
    }
    Ok(Selection {
        stage: m.stage,
        key: m.key,
        round: params.round,
        shape: tensors.shape,
        classes,
        total,
        judge: judge.map(|(name, (round, _))| Judge { name, round }),
        samples,
        images: tensors.images,
    })
}

/// The run (when `what` names one) and the manifest of the synthesis stage `what` names.
fn resolve(store: &Store, what: &str) -> Result<(Option<String>, Manifest)> {
    let (run, key) = match what.split_once(':') {
        Some((run, stage)) => (Some(find_run(store, run)?), run_stage(store, run, stage)?.key),
        None => {
            let keys = store.stage_keys()?;
            let key = unique_match(&keys, what, "stage key")?.cloned();
            (None, key.ok_or_else(|| UserError(format!("no stage `{what}` in {}: give RUN:synthesize/N or a stage key (prefix)", store.location())))?)
        }
    };
    let m: Manifest = store.manifest(&key)?.ok_or_else(|| UserError(format!("stage {key} is not committed in this store")))?;
    if m.kind != Synthesize::ID.name {
        return Err(UserError(format!("{what} is {} stage; samples are read from a synthesize stage (RUN:synthesize/N)", crate::audit::text::a_or_an(&m.kind))).into());
    }
    Ok((run, m))
}

/// `RUN:train/T` for the last round T its run trained (of the same one-vs-all member),
/// with RUN the run `what` named or else the newest run that has the stage.
fn final_classifier(store: &Store, run: Option<&str>, synth: &Manifest) -> Result<String> {
    let record: RunRecord = match run {
        Some(id) => store.run(id)?.with_context(|| format!("run {id} has no record"))?,
        None => {
            let mut runs: Vec<RunRecord> = store.intact_runs()?;
            runs.retain(|r| r.stages.iter().any(|s| s.key == synth.key));
            runs.sort_by(|a, b| a.id.cmp(&b.id));
            runs.pop().ok_or_else(|| UserError(format!("no run record has stage {}; name the classifier with --by RUN:train/N", synth.key)))?
        }
    };
    // `synthesize/3/c7` -> member `c7`: the classifier is `train/T/c7`
    let member = |id: &str| id.splitn(3, '/').nth(2).map(str::to_string);
    let round = |id: &str| id.split('/').nth(1).and_then(|r| r.parse::<u32>().ok());
    let last = record
        .stages
        .iter()
        .filter(|s| s.kind == Train::ID.name && member(&s.stage) == member(&synth.stage))
        .filter_map(|s| Some((round(&s.stage)?, &s.stage)))
        .max()
        .with_context(|| format!("run {} trained no classifier after {}", record.id, synth.stage))?;
    Ok(format!("{}:{}", record.id, last.1))
}

/// The judge's round and, for every sample of `stage` (its tensors `tensor`) it was trained with, its score, as
/// lineage reads it.
fn judged(store: &Store, by: &str, stage: &str, tensor: &str, made_in: u32) -> Result<(u32, Vec<(u32, Later)>)> {
    let l = lineage::lineage(store, by)?;
    let round = l.chain.last().map_or(0, |c| c.round);
    let ours: Vec<&PseudoNegative> = l.pseudo_negatives.iter().filter(|p| p.round == made_in && p.tensor == *tensor).collect();
    if ours.is_empty() {
        return Err(UserError(format!("classifier {by} (round {round}) was not trained on the pseudo-negatives of {stage}: give --by a train stage of round {made_in} or later of the same run")).into());
    }
    let scores: Vec<(u32, Later)> = ours.iter().filter_map(|p| Some((p.sample_id, p.later.iter().find(|x| x.round == round)?.clone()))).collect();
    if scores.is_empty() {
        return Err(UserError(format!("no evaluate stage scored the pseudo-negatives of classifier {by} (round {round}); choose another with --by")).into());
    }
    Ok((round, scores))
}
