//! `pipe sample`: images drawn from a trained WINN or IGM model, as a `sample` stage run through
//! the store like any other (cached by its key, resumable, under a run record of its own),
//! then copied out.

use super::StoreArg;
use crate::audit::runs::{find_run, new_record};
use crate::engine::executor::{self, RunRecord, Runner};
use crate::engine::graph::{InputRef, StageDef};
use crate::engine::store::Store;
use crate::kinds::sample::{self, Sample};
use crate::kinds::train::{self, Train};
use crate::kinds::{read_params, Kind, Kinds};
use crate::methods::sample_params;
use crate::pipeline::spec::{Geometry, Method, Pipeline, Spec, Variant};
use crate::UserError;
use anyhow::{Context, Result};
use stages::nn::NetConfig;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// The model: a run (its id or a unique prefix) of `pipeline.method = "winn"` (the
    /// last critic of each cascade is sampled through in order) or `"igm"` (every
    /// classifier of the cascade in order, or IGM-single's last); RUN:train/N for the net
    /// of one round; or a net's checkpoint digest (or a unique prefix).
    model: String,
    /// Images to draw.
    #[arg(short = 'n', long, default_value_t = 16)]
    count: usize,
    /// Seed of the draw: each image's start and thresholds follow from it. An IGM
    /// cascade's draw with synthesize/0's seed and -n its count is the last round's
    /// pseudo-negatives, bit for bit.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Image size, SIDE or HxW; the critics' own size by default. Larger sizes are
    /// synthesized from patches of the critics' size (WINN 5.2).
    #[arg(long)]
    size: Option<String>,
    /// Folder to write samples.safetensors, samples.parquet and grid.png into (created).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    #[command(flatten)]
    store: StoreArg,
}

/// The rounds whose nets make up a run's model, in sampling order: the last critic of each
/// WINN cascade; every IGM cascade classifier, or IGM-single's last.
fn model_rounds(spec: &Spec) -> Vec<u32> {
    match spec.pipeline.method {
        Method::Igm => crate::methods::igm::model_rounds(spec),
        _ => (1..=spec.winn.cascades).map(|c| c * spec.pipeline.rounds).collect(),
    }
}

/// A trained generative model as `pipe sample` and `pipe stylize` name it: the nets of a
/// WINN or IGM run in sampling order, one round's net, or the net of a checkpoint digest.
pub(crate) struct Model {
    /// The run the nets come from (its settings are the model's).
    pub run: String,
    /// The train stages whose checkpoints make up the model, in order (`train/1`, ...).
    pub stages: Vec<String>,
    /// Their checkpoints' digests, in the same order.
    pub checkpoints: Vec<String>,
    /// The architecture every one of the nets has.
    pub net: NetConfig,
    /// The run's settings as a pipeline, for the record of a run made from the model.
    pub pipeline: Pipeline,
}

/// The model `what` names in `store`: a run (its id or a unique prefix) of an unsupervised
/// WINN or IGM run (its nets in sampling order), RUN:train/N (one round's net), or a net's
/// checkpoint digest (or a unique prefix). `purpose` ends the message for a run that is no
/// generative model ("to sample from"). Bad names are [`UserError`]s.
pub(crate) fn resolve_model(store: &Store, what: &str, purpose: &str) -> Result<Model> {
    let (id, stage_part) = match what.split_once(':') {
        Some((r, s)) => (find_run(store, r)?, Some(s.to_string())),
        None => match find_run(store, what) {
            Ok(id) => (id, None),
            Err(not_a_run) => match checkpoint_stage(store, what)? {
                Some((id, stage)) => (id, Some(stage)),
                None => return Err(not_a_run.context(format!("`{what}` is no checkpoint digest of a train stage either"))),
            },
        },
    };
    let record: RunRecord = store.run(&id)?.with_context(|| format!("run {id} has no record"))?;
    let spec: Spec = serde_json::from_value(record.spec.clone()).map_err(|e| UserError(format!("run {id}: its settings do not read as this pipe's ({e})")))?;
    if !matches!(spec.pipeline.method, Method::Winn | Method::Igm) || spec.pipeline.variant != Variant::Unsupervised {
        return Err(UserError(format!("run {id} is not an unsupervised WINN or IGM run (pipeline.method = \"winn\" or \"igm\", variant = \"unsupervised\"): it has no generative model {purpose}")).into());
    }
    let trains: Vec<&executor::RunStage> = record.stages.iter().filter(|s| s.kind == Train::ID.name).collect();
    let wanted: Vec<String> = match stage_part {
        Some(s) => vec![s],
        None => model_rounds(&spec).into_iter().map(|r| format!("{}/{r}", Train::ID.name)).collect(),
    };
    let mut checkpoints = Vec::new();
    for w in &wanted {
        let s = trains.iter().find(|s| &s.stage == w).ok_or_else(|| UserError(format!("run {id} has no stage {w} that made a checkpoint (its train stages: {})", trains.iter().map(|s| s.stage.as_str()).collect::<Vec<_>>().join(", "))))?;
        checkpoints.push(s.outputs.get(train::CHECKPOINT).with_context(|| format!("{w} of run {id} has no checkpoint"))?.digest.clone());
    }
    let first = trains.first().ok_or_else(|| UserError(format!("run {id} has no train stage: it made no net {purpose}")))?;
    let manifest: executor::Manifest = store.manifest(&first.key)?.context("the train stage's manifest")?;
    let net = read_params::<train::Params>(&manifest.params)?.net;
    let geometry = Geometry { channels: net.channels, height: net.height, width: net.image_width, num_classes: 1 };
    let pipeline = Pipeline { file: PathBuf::from(&record.file), spec, geometry, name: record.pipeline.clone(), data_path: PathBuf::new(), overrides: record.overrides.clone() };
    Ok(Model { run: id, stages: wanted, checkpoints, net, pipeline })
}

pub fn run(a: &Args) -> Result<()> {
    let store = Store::open_existing(&a.store.store)?;
    let Model { run: id, stages: wanted, checkpoints: critics, net, pipeline } = resolve_model(&store, &a.model, "to sample from")?;
    let size = match &a.size {
        None => (net.height, net.image_width),
        Some(s) => parse_size(s)?,
    };
    if a.count == 0 {
        return Err(UserError("-n 0: expected at least one image".into()).into());
    }
    if let Some(why) = sample::check_size(&net, size.0, size.1) {
        return Err(UserError(format!("--size {}: {why}", a.size.as_deref().unwrap_or(""))).into());
    }
    let mut params = sample_params(&pipeline, &net, size, a.seed);
    params.count = a.count;
    let stage_id = format!("{}/{}x{}", Sample::ID.name, size.0, size.1);
    let stage: StageDef = sample::stage(stage_id, &params, &critics.into_iter().map(InputRef::Object).collect::<Vec<_>>());
    let runner = Kinds::for_device(&pipeline.spec.pipeline.device)?;
    let _lock = store.lock()?;
    let mut rec = new_record(&format!("{}:sample", pipeline.name), &pipeline, runner.device());
    let result = executor::run(&store, std::slice::from_ref(&stage), &runner, &mut rec, &|_| None, crate::engine::progress::Display::detect(false));
    store.write_run(&rec.id, &rec)?;
    result?;
    let done = rec.stages.last().context("the sample stage did not run")?;
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    for name in [sample::SAMPLES, sample::TABLE, sample::GRID] {
        let o = done.outputs.get(name).with_context(|| format!("the sample stage wrote no {name}"))?;
        std::fs::write(a.out.join(name), store.read(&o.digest)?).with_context(|| format!("writing {}", a.out.join(name).display()))?;
    }
    println!("{} images of {}x{} from run {id} ({}): {}", a.count, size.0, size.1, wanted.join(", "), a.out.display());
    Ok(())
}

/// The run and train stage that made the checkpoint `digest` names (all of it or a unique
/// prefix): its run's settings are the sampler's.
fn checkpoint_stage(store: &Store, digest: &str) -> Result<Option<(String, String)>> {
    let mut made: Vec<(String, String, String)> = Vec::new();
    for id in store.run_ids()? {
        let Ok(Some(record)) = store.run::<RunRecord>(&id) else { continue };
        for s in record.stages.iter().filter(|s| s.kind == Train::ID.name) {
            if let Some(o) = s.outputs.get(train::CHECKPOINT) {
                made.push((o.digest.clone(), id.clone(), s.stage.clone()));
            }
        }
    }
    let mut digests: Vec<String> = made.iter().map(|m| m.0.clone()).collect();
    digests.sort();
    digests.dedup();
    let Some(found) = crate::audit::runs::unique_match(&digests, digest, "checkpoint")? else { return Ok(None) };
    // the newest run that made it: run ids sort by time
    Ok(made.into_iter().rev().find(|m| &m.0 == found).map(|m| (m.1, m.2)))
}

/// `SIDE` or `HxW`.
fn parse_size(s: &str) -> Result<(usize, usize)> {
    let bad = || UserError(format!("--size {s}: expected a side (256) or HxW (256x320) in pixels, 1 to 4096"));
    let (h, w) = match s.split_once('x') {
        Some((h, w)) => (h.trim().parse().map_err(|_| bad())?, w.trim().parse().map_err(|_| bad())?),
        None => {
            let v: usize = s.trim().parse().map_err(|_| bad())?;
            (v, v)
        }
    };
    if !(1..=4096).contains(&h) || !(1..=4096).contains(&w) {
        return Err(bad().into());
    }
    Ok((h, w))
}
