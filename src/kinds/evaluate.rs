//! `evaluate`: error of a round's classifier on validation and test, overall and per class,
//! as a tidy table (round, split, class, metric, value, count); class -1 is all classes.
//! A softmax net predicts its top logit; a binary net "positive" when f(x) > 0 (classes 0
//! = rest, 1 = positive); one-vs-all predicts argmax_k f_k(x) over its K binary nets.
//!
//! For lineage, it also scores every pseudo-negative the round's classifier was trained
//! with (`pseudo_negatives.parquet`): its logit and probability for the class it was made
//! for, and whether it still fools the classifier. This runs here, not in `train`, so
//! training pays nothing for it.

use super::{read_set, Kind};
use crate::engine::executor::StageIo;
use crate::engine::graph::KindId;
use crate::engine::table::{to_parquet, Column};
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::json;
use stages::candle::Device;
use stages::evaluate::{logits, logits_observed, one_vs_all, ClassErrors};
use stages::logits::argmax;
use stages::nn::NetConfig;

pub struct Evaluate;

/// Inputs: the held-out sets.
pub const VALIDATION: &str = "validation";
pub const TEST: &str = "test";
/// Output: error per split and class.
pub const METRICS: &str = "metrics.parquet";
/// Output (rounds with pseudo-negatives): how this round's classifier scores each one
/// trained on so far.
pub const SCORES: &str = "pseudo_negatives.parquet";
/// Summary metrics: the error on each held-out set.
pub const VALIDATION_ERROR: &str = "validation_error";
pub const TEST_ERROR: &str = "test_error";

/// Input: the classifier, or member k of a one-vs-all round (zero-padded: input order is
/// class order).
pub fn checkpoint(member: Option<u32>) -> String {
    member.map_or(CHECKPOINT.to_string(), |k| format!("{CHECKPOINT}.c{k:04}"))
}
const CHECKPOINT: &str = "checkpoint";

/// The net index of a checkpoint input's name (0 for a single net, k for member k).
pub fn member_of_checkpoint(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(CHECKPOINT)?;
    rest.strip_prefix(".c").map_or(Some(0), |k| k.parse().ok())
}

/// Input: the pool of net `member`'s train stage (every pseudo-negative set it trained on).
pub fn pool(member: Option<u32>) -> String {
    match member {
        None => POOL.to_string(),
        Some(k) => format!("{POOL}c{k:04}"),
    }
}
const POOL: &str = "pool.";


#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Params {
    pub round: u32,
    pub batch_size: usize,
    pub net: NetConfig,
    pub evaluation: Evaluation,
    pub seed: u64,
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Evaluation {
    Softmax,
    Binary { positive: u32 },
    OneVsAll,
}

impl Kind for Evaluate {
    // 6: a pseudo-negative fools while f_k > 0 and its prob is sigmoid(f_k) (was: argmax
    // and softmax)
    // 7: reads checkpoints of format 2 (PyTorch's names and layouts)
    const ID: KindId = KindId { name: "evaluate", version: 7 };
    type Params = Params;
    const OUTPUTS: &'static [&'static str] = &[METRICS];
    fn run(p: Params, io: &mut StageIo, device: &Device) -> Result<()> {
        run(p, io, device)
    }
}

fn run(p: Params, io: &mut StageIo, device: &Device) -> Result<()> {
    let nets = io
        .input_names(CHECKPOINT)
        .iter()
        .map(|name| Ok(p.net.load(&io.read(name)?, device)?))
        .collect::<Result<Vec<_>>>()?;
    let mut rows: (Vec<String>, Vec<i32>, Vec<f64>, Vec<u64>) = Default::default();
    let mut line = Vec::new();
    for (split, metric) in [(VALIDATION, VALIDATION_ERROR), (TEST, TEST_ERROR)] {
        let (x, y) = read_set(io, split)?;
        let mut meter = io.progress((y.len() * nets.len()) as u64, "examples", &format!("{split} error"));
        let mut scored = |net: &dyn stages::nn::Classifier| logits_observed(net, &x, p.net.shape(), p.batch_size, device, &mut |n| meter.inc(n as u64));
        let (predicted, truth, classes) = match p.evaluation {
            Evaluation::Softmax => (scored(nets[0].as_ref())?.iter().map(|r| argmax(r) as u32).collect(), y, p.net.num_classes),
            Evaluation::Binary { positive } => {
                let f = scored(nets[0].as_ref())?;
                (f.iter().map(|r| (r[0] > 0.0) as u32).collect(), y.iter().map(|&c| (c == positive) as u32).collect(), 2)
            }
            Evaluation::OneVsAll => {
                let per_class = nets.iter().map(|n| scored(n.as_ref())).collect::<std::result::Result<Vec<_>, _>>()?;
                (one_vs_all(&per_class), y, nets.len())
            }
        };
        meter.finish();
        let e = ClassErrors::new(&predicted, &truth, classes);
        let mut push = |class: i32, value: f64, count: usize| {
            rows.0.push(split.to_string());
            rows.1.push(class);
            rows.2.push(value);
            rows.3.push(count as u64);
        };
        push(-1, e.error(), e.count.iter().sum());
        for k in 0..classes {
            push(k as i32, e.class_error(k), e.count[k]);
        }
        io.summary(metric, json!(e.error()));
        line.push(format!("{split} error {:.2}%", 100.0 * e.error()));
    }
    io.summary("line", json!(line.join("  ")));
    let n = rows.0.len();
    let table = to_parquet(vec![
        ("round", Column::U32(vec![p.round; n])),
        ("split", Column::Str(rows.0)),
        ("class", Column::I32(rows.1)),
        ("metric", Column::Str(vec!["error".into(); n])),
        ("value", Column::F64(rows.2)),
        ("count", Column::U64(rows.3)),
    ])?;
    io.write(METRICS, &table)?;
    score_pseudo_negatives(io, &p, &nets, device)
}

/// Rows of the pseudo-negative table: the sets of input `pool.` (scored by the one net) or
/// `pool.cKKKK` (scored by one-vs-all net K).
fn score_pseudo_negatives(io: &mut StageIo, p: &Params, nets: &[Box<dyn stages::nn::Classifier>], device: &Device) -> Result<()> {
    let names = io.input_names(POOL);
    if names.is_empty() {
        return Ok(());
    }
    // (net, made in round, digest) of every set, in input order
    let mut sets: Vec<(usize, u32, String)> = Vec::new();
    for name in &names {
        let net = match name.trim_start_matches(POOL) {
            "" => 0,
            c => c.trim_start_matches('c').parse::<usize>().with_context(|| format!("unexpected input {name}"))?,
        };
        sets.extend(super::train::read_pool(io, name)?.into_iter().map(|e| (net, e.round, e.digest)));
    }
    // (made in round, sample id, class, net, logit, probability, fools)
    let mut rows: Vec<(u32, u32, u32, u32, f32, f32, bool)> = Vec::new();
    for (net, made_in, digest) in &sets {
        let (net, made_in) = (*net, *made_in);
        let pn = stages::codec::decode_pseudo_negatives(&io.read_named(digest)?)?;
        let f = logits(nets[net].as_ref(), &pn.images, p.net.shape(), p.batch_size, device)?;
        for (i, (row, &class)) in f.iter().zip(&pn.classes).enumerate() {
            // scored as synthesis scored it when it was made
            let s = stages::logits::class_score(row, class as usize, row.len() == 1);
            rows.push((made_in, i as u32, class, net as u32, s.logit, s.prob, s.positive));
        }
    }
    let n = rows.len();
    let fooling = rows.iter().filter(|r| r.6).count();
    io.summary("pseudo_negatives_fooling", json!(fooling as f64 / n.max(1) as f64));
    io.write(
        SCORES,
        &to_parquet(vec![
            ("round", Column::U32(vec![p.round; n])),
            ("made_in_round", Column::U32(rows.iter().map(|r| r.0).collect())),
            ("sample_id", Column::U32(rows.iter().map(|r| r.1).collect())),
            ("class", Column::U32(rows.iter().map(|r| r.2).collect())),
            ("net", Column::U32(rows.iter().map(|r| r.3).collect())),
            ("logit", Column::F32(rows.iter().map(|r| r.4).collect())),
            ("prob", Column::F32(rows.iter().map(|r| r.5).collect())),
            ("fools", Column::Bool(rows.iter().map(|r| r.6).collect())),
        ])?,
    )
}
