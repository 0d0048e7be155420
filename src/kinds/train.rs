//! `train`: round 0 trains the plain classifier from a seeded initialization; round t
//! continues round t-1's weights and optimizer on the training set plus every
//! pseudo-negative so far (the ICN paper's union). After each epoch the full training
//! state goes to a resumption checkpoint, so a killed stage restarts at its last epoch
//! and ends with the same bytes as an uninterrupted one.

use super::{read_set, Kind};
use crate::engine::executor::StageIo;
use crate::engine::graph::KindId;
use crate::engine::table::{to_parquet, Column};
use anyhow::{ensure, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::json;
use stages::candle::Device;
use stages::checkpoint;
use stages::codec::decode_pseudo_negatives;
use stages::loss::Objective;
use stages::nn::NetConfig;
use stages::optim::OptimizerConfig;
use stages::rng::Rng;
use stages::train::{train_epoch, TrainSet};

pub struct Train;

/// Input: the warm start (round t-1's checkpoint); absent in round 0.
pub const INIT: &str = "init";
/// Input: the real training set.
pub const TRAIN_SET: &str = "train";
/// Output: weights, optimizer state and RNG state after the last epoch.
pub const CHECKPOINT: &str = "checkpoint.safetensors";
/// Output: one row per epoch.
pub const LOG: &str = "train_log.parquet";
/// Summary metric of WINN critics: E_neg f - E_pos f of the last epoch.
pub const WASSERSTEIN: &str = "wasserstein";
/// Summary metric: the share of the pseudo-negatives in the last epoch's batches that the
/// classifier scored as positives (f_k > 0), or, for a critic, above the positives' mean.
pub const NEGATIVES_FOOLING: &str = "negatives_fooling";
/// Output (rounds with pseudo-negatives): how often each was drawn into a batch.
pub const DRAWS: &str = "draws.parquet";

/// Input (round t >= 2) and output (rounds with pseudo-negatives): every pseudo-negative set
/// trained on so far, as a list of (round, digest). Round t reads round t-1's pool and its
/// own round's set, so the plan grows linearly with the rounds, not quadratically.
pub const POOL: &str = "pool.json";

/// One set of a pool.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct PoolEntry {
    pub round: u32,
    pub digest: String,
}

/// The sets a pool input lists, oldest round first.
pub fn read_pool(io: &StageIo, name: &str) -> Result<Vec<PoolEntry>> {
    serde_json::from_slice(&io.read(name)?).with_context(|| format!("input {name} is not a pool of pseudo-negative sets"))
}

/// Input: round r's pseudo-negatives; zero-padded so names sort in round order.
pub fn pseudo_negatives(round: u32) -> String {
    format!("{PSEUDO_NEGATIVES}{round:04}")
}
const PSEUDO_NEGATIVES: &str = "pseudo_negatives.";

/// The round of a pseudo-negative input's name (`None`: not such an input; `Some(None)`:
/// one whose round does not parse).
pub fn round_of_pseudo_negatives(name: &str) -> Option<Option<u32>> {
    name.strip_prefix(PSEUDO_NEGATIVES).map(|r| r.parse().ok())
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Params {
    pub round: u32,
    pub net: NetConfig,
    /// The optimizer of this round (a warm start keeps the moments, takes this lr).
    pub optimizer: OptimizerConfig,
    pub batch_size: usize,
    pub epochs: u32,
    pub objective: Objective,
    /// Pad-crop-flip augmentation of real samples (0: none).
    pub augment_pad: usize,
    /// How pseudo-negatives enter batches; absent exactly when the stage has none (a
    /// pseudo-negative input without it is refused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sampling: Option<Sampling>,
    /// What a non-finite loss, gradient or weight does: absent, the stage fails; present,
    /// the epoch restarts at a lower learning rate. Absent from the key when absent, so
    /// stages that never opted in keep their keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback: Option<Rollback>,
    pub seed: u64,
}

/// Restart a diverged epoch from its start with the learning rate times `lr_factor`, at
/// most `retries` times in the stage (the JEM authors' advice, done by the program).
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq)]
pub struct Rollback {
    pub lr_factor: f64,
    pub retries: u32,
}

/// One rollback, as the summary and the resumption state record it.
#[derive(Clone, Debug, Deserialize, Serialize)]
struct RollbackRow {
    epoch: u32,
    batch: usize,
    cause: String,
    lr_from: f64,
    lr_to: f64,
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Sampling {
    Union,
    /// Half of each batch pseudo-negatives, a round-r one drawn with weight decay^(t - r).
    Balanced { decay: f64 },
}

/// One epoch's line of the training log.
#[derive(Clone, Debug, Deserialize, Serialize)]
struct EpochRow {
    epoch: u32,
    loss: f64,
    real_error: f64,
    negatives_fooling: f64,
    lr: f64,
    /// WINN objectives only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    critic: Option<CriticRow>,
}

/// What a WINN epoch's critic measured (stages::train::CriticEpoch, as stored).
#[derive(Clone, Copy, Debug, Deserialize, Serialize)]
struct CriticRow {
    wasserstein: f64,
    penalty: f64,
    f_positive_min: f64,
    f_positive_max: f64,
}

/// The range of f over positives that a WINN critic's synthesis draws its thresholds from,
/// as its checkpoint's header carries it (`critic` in the JSON), so that sampling later
/// stops where training did.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq)]
pub struct CriticThresholds {
    pub min: f64,
    pub max: f64,
}

/// The thresholds in a checkpoint's header; an error that says so when it is not a WINN
/// critic's.
pub fn critic_thresholds(checkpoint: &[u8]) -> Result<CriticThresholds> {
    #[derive(Deserialize)]
    struct Header {
        critic: Option<CriticThresholds>,
    }
    let h: Header = serde_json::from_str(&stages::checkpoint::meta(checkpoint)?).context("checkpoint header")?;
    h.critic.context("the checkpoint carries no critic thresholds: it is not a WINN critic's (pipeline.method = \"winn\")")
}

/// What a resumption checkpoint carries besides tensors.
#[derive(Deserialize, Serialize)]
struct Progress {
    epochs_done: u32,
    log: Vec<EpochRow>,
    /// Batch draws of each pseudo-negative so far, in input order.
    #[serde(default)]
    draws: Vec<u32>,
    #[serde(default)]
    rollbacks: Vec<RollbackRow>,
}

/// The resumption checkpoint (in the stage's partial/ folder).
const PARTIAL: &str = "checkpoint.safetensors";

impl Kind for Train {
    // 5: the log's negatives_fooling counts f_k > 0 (was: argmax)
    // 6: earlier rounds' pseudo-negatives come through the previous round's pool
    // 7: checkpoints in PyTorch's names and layouts (format 2, docs/checkpoints.md)
    const ID: KindId = KindId { name: "train", version: 7 };
    type Params = Params;
    const OUTPUTS: &'static [&'static str] = &[CHECKPOINT, LOG];
    fn run(p: Params, io: &mut StageIo, device: &Device) -> Result<()> {
        run(p, io, device)
    }
}

fn run(p: Params, io: &mut StageIo, device: &Device) -> Result<()> {
    let mut rng = Rng::new(p.seed);
    let net = p.net.build(&mut rng, device)?;
    let mut opt = p.optimizer.build();
    if io.has_input(INIT) {
        let init = checkpoint::decode(&io.read(INIT)?, net.as_ref(), device)?;
        net.load_tensors(&init.model)?;
        opt.load_state(&net.vars(), &init.optim)?;
        opt.set_learning_rate(p.optimizer.lr());
    }

    let (real_x, real_y) = read_set(io, TRAIN_SET)?;
    let (mut neg_x, mut neg_y, mut neg_w) = (Vec::new(), Vec::new(), Vec::new());
    // (round made, sample id) of each pseudo-negative, for the draws table
    let mut neg_id: Vec<(u32, u32)> = Vec::new();
    let decay = match p.sampling {
        Some(Sampling::Balanced { decay }) => Some(decay),
        Some(Sampling::Union) | None => None,
    };
    // earlier rounds through the pool, then this stage's own inputs
    let mut pool = if io.has_input(POOL) { read_pool(io, POOL)? } else { Vec::new() };
    for name in io.input_names(PSEUDO_NEGATIVES) {
        let round: u32 = name.trim_start_matches(PSEUDO_NEGATIVES).parse().with_context(|| format!("round of input {name}"))?;
        pool.push(PoolEntry { round, digest: io.input_digest(&name)?.to_string() });
    }
    ensure!(pool.is_empty() || p.sampling.is_some(), "stage {}: pseudo-negative inputs but no `sampling` parameter", io.stage_id());
    ensure!(
        !p.objective.is_critic() || matches!(p.sampling, Some(Sampling::Balanced { .. })),
        "stage {}: a WINN objective pairs each batch's positives with as many pseudo-negatives: it needs balanced sampling",
        io.stage_id()
    );
    let shape = p.net.shape();
    // pseudo-negatives larger than the net's inputs are windowed per draw (IGM textures)
    let mut neg_shape: Option<stages::nn::Shape3> = None;
    for entry in &pool {
        let pn = decode_pseudo_negatives(&io.read_named(&entry.digest)?).with_context(|| format!("pseudo-negatives of round {}", entry.round))?;
        let fits = pn.shape.0 == shape.0 && pn.shape.1 >= shape.1 && pn.shape.2 >= shape.2;
        ensure!(fits && neg_shape.is_none_or(|s| s == pn.shape), "stage {}: round {}'s pseudo-negatives are {:?}, expected {shape:?} or larger with {} channel(s), all of one shape", io.stage_id(), entry.round, pn.shape, shape.0);
        neg_shape = Some(pn.shape);
        let made_in = entry.round;
        let weight = decay.map_or(1.0, |d| d.powi(p.round.saturating_sub(made_in) as i32));
        neg_w.extend(std::iter::repeat_n(weight, pn.classes.len()));
        neg_id.extend((0..pn.classes.len() as u32).map(|i| (made_in, i)));
        neg_x.extend(pn.images);
        neg_y.extend(pn.classes);
    }
    let set = TrainSet {
        shape,
        real_x: &real_x,
        real_y: &real_y,
        neg_x: &neg_x,
        neg_y: &neg_y,
        neg_weights: decay.map(|_| neg_w.as_slice()),
        neg_crop: neg_shape.filter(|&s| s != shape),
        augment_pad: p.augment_pad,
        count_draws: true,
    };

    let mut progress = Progress { epochs_done: 0, log: Vec::new(), draws: vec![0; neg_y.len()], rollbacks: Vec::new() };
    if let Some(bytes) = io.read_partial(PARTIAL)? {
        let saved = checkpoint::decode(&bytes, net.as_ref(), device).context("reading the resumption checkpoint")?;
        net.load_tensors(&saved.model)?;
        opt.load_state(&net.vars(), &saved.optim)?;
        rng = saved.rng.context("resumption checkpoint without RNG state")?;
        progress = serde_json::from_str(&saved.meta)?;
        if let (Some(last), false) = (progress.log.last(), progress.rollbacks.is_empty()) {
            opt.set_learning_rate(last.lr); // lowered by a rollback before the kill
        }
        io.note_resumed(json!(format!("epoch {}", progress.epochs_done)));
    }

    let objective = p.objective;
    // a balanced batch pairs each real sample with a pseudo-negative drawn for it
    let samples = if decay.is_some() && !neg_y.is_empty() { 2 * real_y.len() } else { real_y.len() + neg_y.len() };
    // the state at the start of the current epoch: what a rollback returns to
    let mut good = checkpoint::encode(net.as_ref(), Some(opt.as_ref()), Some(&rng), "{}")?;
    let mut epoch = progress.epochs_done;
    let mut meter = io.progress_to_checkpoint((samples * p.epochs as usize) as u64, "samples", "epoch");
    meter.resume_at((samples * epoch as usize) as u64);
    while epoch < p.epochs {
        meter.set_what(&format!("epoch {}/{}", epoch + 1, p.epochs));
        let (batches, mut batch) = (samples.div_ceil(p.batch_size.max(1)), 0);
        let stats = train_epoch(net.as_ref(), opt.as_mut(), &set, p.batch_size, objective, &mut rng, device, &mut |n| {
            batch += 1;
            meter.set_note(format!("batch {batch}/{batches}"));
            meter.inc(n as u64)
        })?;
        if let Some(d) = &stats.diverged {
            let lr = opt.learning_rate();
            let at = format!("diverged in round {}, epoch {} of {}: {d} (learning rate {})", p.round, epoch + 1, p.epochs, num(lr));
            let kept = if progress.epochs_done > 0 { format!("; the last good state (after epoch {}) stays in the store's partial/ folder", progress.epochs_done) } else { String::new() };
            match p.rollback {
                Some(rb) if progress.rollbacks.len() < rb.retries as usize => {
                    let saved = checkpoint::decode(&good, net.as_ref(), device)?;
                    net.load_tensors(&saved.model)?;
                    opt.load_state(&net.vars(), &saved.optim)?;
                    rng = saved.rng.context("rollback state without RNG state")?;
                    let lr_to = lr * rb.lr_factor;
                    opt.set_learning_rate(lr_to);
                    progress.rollbacks.push(RollbackRow { epoch: epoch + 1, batch: d.batch, cause: d.to_string(), lr_from: lr, lr_to });
                    eprintln!("{} {at}; rolling back to the start of the epoch with learning rate {} (rollback {} of {})", io.stage_id(), num(lr_to), progress.rollbacks.len(), rb.retries);
                    meter.resume_at((samples * epoch as usize) as u64); // the epoch is counted again
                    continue;
                }
                Some(rb) => anyhow::bail!(
                    "{at}, after {} rollbacks; nothing of the stage is committed{kept}. The settings, not bad luck, diverge: lower train.lr (now {}) or raise train.batch_size",
                    rb.retries,
                    num(p.optimizer.lr())
                ),
                None => anyhow::bail!(
                    "{at}; nothing of the stage is committed{kept}. Try a lower train.lr (e.g. {}), or train.on_divergence = \"rollback\" to restart a diverged epoch at a lower learning rate",
                    num(lr / 10.0)
                ),
            }
        }
        let critic = stats.critic.map(|c| CriticRow { wasserstein: c.wasserstein, penalty: c.penalty, f_positive_min: c.f_positive.0, f_positive_max: c.f_positive.1 });
        progress.log.push(EpochRow { epoch: epoch + 1, loss: stats.loss, real_error: stats.real_error, negatives_fooling: stats.negatives_fooling, lr: opt.learning_rate(), critic });
        progress.epochs_done = epoch + 1;
        progress.draws.iter_mut().zip(&stats.neg_draws).for_each(|(total, d)| *total += d);
        good = checkpoint::encode(net.as_ref(), Some(opt.as_ref()), Some(&rng), &serde_json::to_string(&progress)?)?;
        io.write_partial(PARTIAL, &good)?;
        epoch += 1;
        if epoch < p.epochs && io.stop_requested() {
            return Err(io.interrupted(&format!("epoch {epoch} of {} is saved, the rerun continues from epoch {}", p.epochs, epoch + 1)));
        }
    }
    meter.finish();

    let last_critic = progress.log.last().and_then(|r| r.critic);
    let mut meta = json!({"round": p.round, "epochs": p.epochs});
    if let Some(c) = last_critic {
        meta["critic"] = serde_json::to_value(CriticThresholds { min: c.f_positive_min, max: c.f_positive_max })?;
    }
    io.write(CHECKPOINT, &checkpoint::encode(net.as_ref(), Some(opt.as_ref()), Some(&rng), &meta.to_string())?)?;
    let log = &progress.log;
    let mut columns = vec![
        ("round", Column::U32(vec![p.round; log.len()])),
        ("epoch", Column::U32(log.iter().map(|r| r.epoch).collect())),
        ("loss", Column::F64(log.iter().map(|r| r.loss).collect())),
        ("real_error", Column::F64(log.iter().map(|r| r.real_error).collect())),
        ("negatives_fooling", Column::F64(log.iter().map(|r| r.negatives_fooling).collect())),
        ("lr", Column::F64(log.iter().map(|r| r.lr).collect())),
    ];
    if p.objective.is_critic() {
        let c = |f: fn(&CriticRow) -> f64| Column::F64(log.iter().map(|r| r.critic.as_ref().map_or(f64::NAN, f)).collect());
        columns.extend([
            ("wasserstein", c(|r| r.wasserstein)),
            ("penalty", c(|r| r.penalty)),
            ("f_positive_min", c(|r| r.f_positive_min)),
            ("f_positive_max", c(|r| r.f_positive_max)),
        ]);
    }
    let table = to_parquet(columns)?;
    io.write(LOG, &table)?;
    if !neg_id.is_empty() {
        let draws = to_parquet(vec![
            ("round", Column::U32(vec![p.round; neg_id.len()])),
            ("made_in_round", Column::U32(neg_id.iter().map(|r| r.0).collect())),
            ("sample_id", Column::U32(neg_id.iter().map(|r| r.1).collect())),
            ("draws", Column::U32(progress.draws.clone())),
        ])?;
        io.write(DRAWS, &draws)?;
    }
    if !pool.is_empty() {
        io.write(POOL, &serde_json::to_vec(&pool)?)?;
    }
    let last = log.last().context("no epoch ran")?;
    io.summary("real", json!(real_y.len()));
    io.summary("pseudo_negatives", json!(neg_y.len()));
    io.summary("final_loss", json!(last.loss));
    if !neg_y.is_empty() {
        io.summary(NEGATIVES_FOOLING, json!(last.negatives_fooling));
    }
    if let Some(c) = last.critic {
        io.summary(WASSERSTEIN, json!(c.wasserstein));
        io.summary("penalty", json!(c.penalty));
        io.summary("critic_thresholds", json!([c.f_positive_min, c.f_positive_max]));
    }
    if !progress.rollbacks.is_empty() {
        io.summary("rollbacks", serde_json::to_value(&progress.rollbacks)?);
    }
    let rolled = match progress.rollbacks.len() {
        0 => String::new(),
        n => format!(", {n} rollback(s), lr now {}", num(last.lr)),
    };
    let critic = last.critic.map(|c| format!(", E_neg f - E_pos f {:.3}, penalty {:.3}", c.wasserstein, c.penalty)).unwrap_or_default();
    io.summary("line", json!(format!("{} real + {} pseudo-negatives, loss {:.4}, train error {:.2}%{critic}{rolled}", real_y.len(), neg_y.len(), last.loss, 100.0 * last.real_error)));
    Ok(())
}

/// A learning rate as a person writes it: 0.025, 1e30, 1e-5.
fn num(v: f64) -> String {
    if v != 0.0 && !(1e-3..1e4).contains(&v.abs()) {
        format!("{v:e}")
    } else {
        format!("{v}")
    }
}
