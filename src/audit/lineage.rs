//! `pipe lineage`: everything that went into a checkpoint, read from the store alone. A
//! checkpoint's manifest names its inputs by digest; following `init` back through the warm
//! starts gives the chain of training stages, their `train` inputs the data sets, and their
//! `pseudo_negatives.*` inputs the synthesis stages whose tables describe every sample. The
//! training stages' `draws.parquet` say how often each sample was drawn into a batch, and
//! the evaluate stages' `pseudo_negatives.parquet` how each later round's classifier scores
//! it.

use crate::audit::text::{a_or_an, count};
use crate::engine::executor::Manifest;
use crate::kinds::evaluate::{self, Evaluate};
use crate::kinds::synthesize;
use crate::kinds::train::{self, Train};
use crate::kinds::Kind;
use crate::engine::store::Store;
use crate::engine::table::{read_parquet, to_parquet, Column};
use crate::UserError;
use anyhow::{Context, Result};
use arrow_array::{Array, BooleanArray, Float32Array, RecordBatch, StringArray, UInt32Array, UInt64Array};
use serde::Serialize;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};

/// One training stage of the chain, oldest first.
#[derive(Serialize)]
pub struct Link {
    pub stage: String,
    pub key: String,
    pub round: u32,
    pub checkpoint: String,
    /// The evaluate stage that scored this checkpoint's pseudo-negatives, if one ran.
    pub evaluated_by: Option<String>,
}

#[derive(Serialize)]
pub struct Dataset {
    /// The input name of the training stages (`train`).
    pub input: String,
    pub digest: String,
    /// The load stage that made it: its key, parameters and raw file digests.
    pub load_key: Option<String>,
    pub load_params: Value,
    pub files: BTreeMap<String, String>,
}

/// How a later round's classifier scores a pseudo-negative.
#[derive(Clone, Serialize)]
pub struct Later {
    pub round: u32,
    pub logit: f32,
    pub prob: f32,
    pub fools: bool,
}

#[derive(Serialize)]
pub struct PseudoNegative {
    pub round: u32,
    pub class: u32,
    pub sample_id: u32,
    pub seed: u64,
    pub steps: u32,
    pub stop_reason: String,
    /// Logit and probability of its class when it was made.
    pub logit: f32,
    pub prob: f32,
    /// Batches it was drawn into, over every training stage of the chain.
    pub draws: u32,
    /// The digest of the synthesis output holding its tensor.
    pub tensor: String,
    pub later: Vec<Later>,
}

#[derive(Serialize)]
pub struct Lineage {
    pub checkpoint: String,
    pub chain: Vec<Link>,
    pub datasets: Vec<Dataset>,
    pub pseudo_negatives: Vec<PseudoNegative>,
}

/// Every committed manifest, and which one made each output digest.
struct Index {
    manifests: Vec<Manifest>,
    producer: HashMap<String, usize>,
}

impl Index {
    fn new(store: &Store) -> Result<Self> {
        let manifests: Vec<Manifest> = store.intact_manifests()?;
        let mut producer = HashMap::new();
        for (i, m) in manifests.iter().enumerate() {
            for o in m.outputs.values() {
                producer.entry(o.digest.clone()).or_insert(i);
            }
        }
        Ok(Index { manifests, producer })
    }
    fn made(&self, digest: &str) -> Option<&Manifest> {
        self.producer.get(digest).map(|&i| &self.manifests[i])
    }
    fn table(&self, store: &Store, m: &Manifest, output: &str) -> Result<Option<Vec<RecordBatch>>> {
        match m.outputs.get(output) {
            Some(o) => Ok(Some(read_parquet(store.read(&o.digest)?).with_context(|| format!("{output} of stage {} ({})", m.stage, m.key))?)),
            None => Ok(None),
        }
    }
}

/// A checkpoint digest from a digest (or unique prefix) or `RUN:STAGE`.
fn resolve(store: &Store, index: &Index, what: &str) -> Result<String> {
    if let Some((run, stage)) = what.split_once(':') {
        let s = crate::audit::runs::run_stage(store, run, stage)?;
        return s.outputs.get(train::CHECKPOINT).map(|o| o.digest.clone()).ok_or_else(|| UserError(format!("{what} is {} stage; lineage starts at a checkpoint (a train stage)", a_or_an(&s.kind))).into());
    }
    let mut checkpoints: Vec<String> = index.manifests.iter().filter(|m| m.kind == Train::ID.name).filter_map(|m| m.outputs.get(train::CHECKPOINT)).map(|o| o.digest.clone()).collect();
    checkpoints.sort();
    checkpoints.dedup();
    crate::audit::runs::unique_match(&checkpoints, what, "checkpoint")?
        .cloned()
        .ok_or_else(|| UserError(format!("no checkpoint `{what}` in {}: give a checkpoint digest (prefix) or RUN:train/N", store.location())).into())
}

fn col<'a, T: 'static>(b: &'a RecordBatch, name: &str) -> Result<&'a T> {
    b.column_by_name(name).with_context(|| format!("table without column {name}"))?.as_any().downcast_ref::<T>().with_context(|| format!("column {name} has an unexpected type"))
}

pub fn lineage(store: &Store, what: &str) -> Result<Lineage> {
    let index = Index::new(store)?;
    let checkpoint = resolve(store, &index, what)?;

    // the chain of warm starts, newest first while walking
    let mut trains: Vec<&Manifest> = Vec::new();
    let mut digest = checkpoint.clone();
    while let Some(m) = index.made(&digest).filter(|m| m.kind == Train::ID.name) {
        trains.push(m);
        match m.inputs.get(train::INIT) {
            Some(init) => digest = init.clone(),
            None => break,
        }
    }
    anyhow::ensure!(!trains.is_empty(), "no committed train stage made checkpoint {checkpoint}");
    trains.reverse();

    // evaluate stages by the checkpoints they read, with the net index of each
    let mut evaluated: HashMap<&str, (&Manifest, u32)> = HashMap::new();
    for m in index.manifests.iter().filter(|m| m.kind == Evaluate::ID.name && m.outputs.contains_key(evaluate::SCORES)) {
        for (name, d) in &m.inputs {
            if let Some(net) = evaluate::member_of_checkpoint(name) {
                evaluated.entry(d.as_str()).or_insert((m, net));
            }
        }
    }

    let mut chain = Vec::new();
    let mut datasets: Vec<Dataset> = Vec::new();
    let mut pn_inputs: BTreeMap<u32, String> = BTreeMap::new();
    let mut draws: HashMap<(u32, u32), u32> = HashMap::new();
    let mut later: HashMap<(u32, u32), Vec<Later>> = HashMap::new();
    for m in &trains {
        let round = m.params["round"].as_u64().unwrap_or(0) as u32;
        let ck = m.outputs.get(train::CHECKPOINT).map(|o| o.digest.clone()).unwrap_or_default();
        let eval = evaluated.get(ck.as_str()).copied();
        chain.push(Link { stage: m.stage.clone(), key: m.key.clone(), round, checkpoint: ck, evaluated_by: eval.map(|(e, _)| e.key.clone()) });
        for (name, d) in &m.inputs {
            if name == train::TRAIN_SET && !datasets.iter().any(|x| x.digest == *d) {
                let load = index.made(d);
                datasets.push(Dataset {
                    input: name.clone(),
                    digest: d.clone(),
                    load_key: load.map(|l| l.key.clone()),
                    load_params: load.map(|l| l.params.clone()).unwrap_or(Value::Null),
                    files: load.map(|l| l.inputs.clone()).unwrap_or_default(),
                });
            }
            if let Some(r) = train::round_of_pseudo_negatives(name) {
                pn_inputs.insert(r.with_context(|| format!("round of input {name}"))?, d.clone());
            }
        }
        if let Some(batches) = index.table(store, m, train::DRAWS)? {
            for b in &batches {
                let (r, id, n) = (col::<UInt32Array>(b, "made_in_round")?, col::<UInt32Array>(b, "sample_id")?, col::<UInt32Array>(b, "draws")?);
                for i in 0..b.num_rows() {
                    *draws.entry((r.value(i), id.value(i))).or_default() += n.value(i);
                }
            }
        }
        if let Some((e, net)) = eval {
            for b in index.table(store, e, evaluate::SCORES)?.unwrap_or_default() {
                let (r, id, nt) = (col::<UInt32Array>(&b, "made_in_round")?, col::<UInt32Array>(&b, "sample_id")?, col::<UInt32Array>(&b, "net")?);
                let (logit, prob, fools) = (col::<Float32Array>(&b, "logit")?, col::<Float32Array>(&b, "prob")?, col::<BooleanArray>(&b, "fools")?);
                for i in (0..b.num_rows()).filter(|&i| nt.value(i) == net) {
                    later.entry((r.value(i), id.value(i))).or_default().push(Later { round, logit: logit.value(i), prob: prob.value(i), fools: fools.value(i) });
                }
            }
        }
    }

    let mut pseudo_negatives = Vec::new();
    for (made_in, digest) in &pn_inputs {
        let synth = index.made(digest).with_context(|| format!("no committed stage made the pseudo-negatives {digest} of round {made_in}"))?;
        for mut p in made_by(store, synth)? {
            let key = (*made_in, p.sample_id);
            p.round = *made_in;
            p.draws = draws.get(&key).copied().unwrap_or(0);
            p.later = later.remove(&key).unwrap_or_default();
            pseudo_negatives.push(p);
        }
    }
    Ok(Lineage { checkpoint, chain, datasets, pseudo_negatives })
}

/// The pseudo-negatives of a synthesis stage as its table describes them, in sample order,
/// not yet drawn or scored.
pub fn made_by(store: &Store, synth: &Manifest) -> Result<Vec<PseudoNegative>> {
    let (Some(table), Some(tensor)) = (synth.outputs.get(synthesize::TABLE), synth.outputs.get(synthesize::PSEUDO_NEGATIVES)) else {
        anyhow::bail!("stage {} ({}) has no pseudo-negative table and tensors", synth.stage, synth.key);
    };
    let batches = read_parquet(store.read(&table.digest)?).with_context(|| format!("{} of stage {} ({})", synthesize::TABLE, synth.stage, synth.key))?;
    let mut out = Vec::new();
    for b in &batches {
        let round = col::<UInt32Array>(b, "round")?;
        let id = col::<UInt32Array>(b, "sample_id")?;
        let class = col::<UInt32Array>(b, "class")?;
        let seed = col::<UInt64Array>(b, "seed")?;
        let steps = col::<UInt32Array>(b, "steps")?;
        let stop = col::<StringArray>(b, "stop_reason")?;
        let logit = col::<Float32Array>(b, "final_logit")?;
        let prob = col::<Float32Array>(b, "final_prob")?;
        for i in 0..b.num_rows() {
            out.push(PseudoNegative {
                round: round.value(i),
                class: class.value(i),
                sample_id: id.value(i),
                seed: seed.value(i),
                steps: steps.value(i),
                stop_reason: stop.value(i).to_string(),
                logit: logit.value(i),
                prob: prob.value(i),
                draws: 0,
                tensor: tensor.digest.clone(),
                later: Vec::new(),
            });
        }
    }
    Ok(out)
}

/// The pseudo-negative rows as a table; `logit_after_T` / `fools_after_T` for every round T
/// of the chain (NaN / false where T is before the sample was made or was not evaluated).
pub fn to_table(l: &Lineage) -> Result<Vec<u8>> {
    let p = &l.pseudo_negatives;
    let mut columns = vec![
        ("round", Column::U32(p.iter().map(|s| s.round).collect())),
        ("class", Column::U32(p.iter().map(|s| s.class).collect())),
        ("sample_id", Column::U32(p.iter().map(|s| s.sample_id).collect())),
        ("seed", Column::U64(p.iter().map(|s| s.seed).collect())),
        ("steps", Column::U32(p.iter().map(|s| s.steps).collect())),
        ("stop_reason", Column::Str(p.iter().map(|s| s.stop_reason.clone()).collect())),
        ("logit", Column::F32(p.iter().map(|s| s.logit).collect())),
        ("prob", Column::F32(p.iter().map(|s| s.prob).collect())),
        ("draws", Column::U32(p.iter().map(|s| s.draws).collect())),
        ("tensor", Column::Str(p.iter().map(|s| s.tensor.clone()).collect())),
    ];
    let names: Vec<(u32, String, String)> = l.chain.iter().filter(|c| c.round > 0).map(|c| (c.round, format!("logit_after_{}", c.round), format!("fools_after_{}", c.round))).collect();
    let at = |s: &PseudoNegative, r: u32| s.later.iter().find(|x| x.round == r).cloned();
    for (r, logit, fools) in &names {
        columns.push((logit.as_str(), Column::F32(p.iter().map(|s| at(s, *r).map_or(f32::NAN, |x| x.logit)).collect())));
        columns.push((fools.as_str(), Column::Bool(p.iter().map(|s| at(s, *r).is_some_and(|x| x.fools)).collect())));
    }
    to_parquet(columns)
}

/// How many of a lineage's pseudo-negatives were used and still matter.
pub struct Totals {
    /// Rounds that made pseudo-negatives (the chain after round 0).
    pub rounds: usize,
    /// Samples drawn into at least one batch, and batches drawn into in all.
    pub drawn: usize,
    pub draws: u64,
    /// Samples the last evaluated classifier still scores f_k > 0.
    pub fooling_now: usize,
}

pub fn totals(l: &Lineage) -> Totals {
    let p = &l.pseudo_negatives;
    Totals {
        rounds: l.chain.len().saturating_sub(1),
        drawn: p.iter().filter(|s| s.draws > 0).count(),
        draws: p.iter().map(|s| s.draws as u64).sum(),
        fooling_now: p.iter().filter(|s| s.later.last().is_some_and(|x| x.fools)).count(),
    }
}

/// The readable form: the chain, the data sets, then the first `rows` pseudo-negatives.
pub fn print(l: &Lineage, rows: usize) {
    println!("checkpoint {}", l.checkpoint);
    println!("chain of warm starts ({}):", count(l.chain.len(), "training stage"));
    for c in &l.chain {
        println!("  {:<12} round {:<3} key {}  checkpoint {}", c.stage, c.round, &c.key[..12], &c.checkpoint[..12]);
    }
    println!("data sets:");
    for d in &l.datasets {
        let p = &d.load_params;
        println!("  {} {}  made by load {} ({}, train_size {}, load seed {})", d.input, &d.digest[..12], d.load_key.as_deref().map_or("?", |k| &k[..12]), p["format"].as_str().unwrap_or("?"), p["train_size"], p["seed"]);
        for (name, f) in &d.files {
            println!("    {name:<14} {f}");
        }
    }
    let p = &l.pseudo_negatives;
    let t = totals(l);
    println!("pseudo-negatives: {} from {}; {} drawn {} times in all; {} still fool the last evaluated classifier", p.len(), count(t.rounds, "round"), t.drawn, t.draws, t.fooling_now);
    if p.is_empty() {
        return;
    }
    let rounds: Vec<u32> = l.chain.iter().filter(|c| c.round > 0).map(|c| c.round).collect();
    let mut header = format!("  {:>5} {:>5} {:>6} {:>20} {:>5} {:<10} {:>8} {:>5}", "round", "class", "id", "seed", "steps", "stop", "logit", "draws");
    for r in &rounds {
        header.push_str(&format!(" {:>10}", format!("logit@{r}")));
    }
    println!("{header}");
    for s in p.iter().take(rows) {
        let mut line = format!("  {:>5} {:>5} {:>6} {:>20} {:>5} {:<10} {:>8.3} {:>5}", s.round, s.class, s.sample_id, s.seed, s.steps, s.stop_reason, s.logit, s.draws);
        for r in &rounds {
            let cell = s.later.iter().find(|x| x.round == *r).map_or("-".to_string(), |x| format!("{:.3}{}", x.logit, if x.fools { "*" } else { "" }));
            line.push_str(&format!(" {cell:>10}"));
        }
        println!("{line}");
    }
    if p.len() > rows {
        println!("  ... {} more rows (--rows N, or --format parquet|json for all)", p.len() - rows);
    }
    println!("  (* = still fools that round's classifier: f_k > 0)");
}

pub fn to_json(l: &Lineage) -> Value {
    json!(l)
}
