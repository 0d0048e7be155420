//! `synthesize`: round t's pseudo-negatives from round t-1's classifier, `per_class` for
//! each class k (increase logit k from p0 noise), with one table row per sample and a PNG
//! grid (a row per class, labelled).

use super::Kind;
use crate::engine::executor::StageIo;
use crate::engine::graph::KindId;
use crate::engine::table::{to_parquet, Column};
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::json;
use stages::candle::Device;
use stages::codec::{decode_pseudo_negatives, encode_pseudo_negatives, PseudoNegatives};
use stages::critic::CriticView;
use stages::nn::{Classifier, Shape3};
use super::train::critic_thresholds;
use stages::grid::{encode_labelled_grid_png, LabelledRow};
use stages::nn::NetConfig;
use stages::nn::initial::NoiseProvider;
use stages::patch::{synthesize_patches, PatchConfig, PatchEnd, PatchStop};
use stages::rng::Rng;
use stages::synthesize::{p0_from, p0_samples, synthesize_from, threshold, Finished, SampleRecord, Step, StopReason, StopRule, SynthesisConfig, Synthesized, Target};

pub struct Synthesize;

/// Input: the classifier samples are synthesized from (none for p0 noise).
pub const CHECKPOINT: &str = "checkpoint";
/// Input (WINN cascades after the first): the previous cascade's samples, where this
/// stage's samples start (sample i from sample i mod n) instead of p0.
pub const STARTS: &str = "starts";
/// Output: the samples with their classes.
pub const PSEUDO_NEGATIVES: &str = "pseudo_negatives.safetensors";
/// Output: one row per sample: seed, steps, stop reason, final logit.
pub const TABLE: &str = "pseudo_negatives.parquet";
/// Output: a picture, a row per class with the class number beside it.
pub const GRID: &str = "grid.png";

#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct Params {
    pub round: u32,
    pub net: NetConfig,
    /// Which samples to make.
    pub targets: Targets,
    pub per_class: usize,
    pub init_std: f64,
    /// Where samples start when not from N(0, init_std^2); absent (not serialized) for the
    /// Gaussian, so the keys of Gaussian stages did not move when it came.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reference: Option<Reference>,
    /// Images of this size (rows, columns) instead of the net's: IGM texture
    /// pseudo-negatives, synthesized from windows of the net's size. Absent (and not in the
    /// key) for the net's size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<(usize, usize)>,
    /// How: ascent on f_k, or the p0 samples themselves.
    #[serde(flatten)]
    pub method: Method,
    pub seed: u64,
}

/// A reference distribution p0 other than N(0, init_std^2).
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Reference {
    /// WINN Appendix D: an untrained net of 5x5 convolutions and upsamplings maps U(-1, 1)
    /// noise to images; its weights come from `seed` (one net per pipeline, every round).
    AppendixD { seed: u64 },
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Targets {
    /// `per_class` for each class of a softmax net.
    PerClass,
    /// `per_class` for the positive class of a one-logit net.
    Binary { class: u32 },
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize)]
#[serde(tag = "method", rename_all = "kebab-case")]
pub enum Method {
    /// Gradient ascent on the class logit from p0 noise (ICN).
    Synthesis { batch_size: usize, lr: f64, max_steps: u32, step: Step, stop: StopRule },
    /// The p0 samples themselves (ICN-noise): no classifier involved.
    Noise,
    /// WINN: ascent on the critic f of the checkpoint (its Wasserstein head, or its one
    /// logit), each sample stopping once it reaches its own threshold, drawn in the range
    /// of f over positives that the checkpoint carries. With `class_weight` (supervised
    /// WINN) a sample of class k ascends f + w log softmax_k.
    Critic { batch_size: usize, lr: f64, max_steps: u32, step: Step, class_weight: Option<f64> },
    /// IGM textures: each image (of `size`) ascends the mean f over `per_step` random
    /// windows of the net's size, every pixel moved by the mean gradient of the windows
    /// that cover it (stages::patch), windows drawn from the sample's seed.
    Patches { per_step: usize, lr: f64, max_steps: u32, step: Step, stop: StopRule },
}

/// The rule of patch synthesis that is `rule` of whole-image synthesis, for the sample
/// with this seed: f is the mean over a step's windows.
pub fn patch_stop(rule: StopRule, seed: u64) -> PatchStop {
    match rule {
        StopRule::Threshold { min, max } => PatchStop::Threshold(threshold(min, max, seed)),
        StopRule::Window { steps } => PatchStop::Window { steps },
        StopRule::Classified => PatchStop::Window { steps: 1 },
        // sigmoid(f) > p is f > logit(p)
        StopRule::Probability { threshold } => PatchStop::Threshold((threshold / (1.0 - threshold)).ln()),
        // one logit: "top class" always holds, so argmax would stop at once; validation
        // refuses it for generative methods
        StopRule::Steps | StopRule::Argmax => PatchStop::Steps,
    }
}

impl Kind for Synthesize {
    // 5: grid.png has each row's class written beside it, and gray (not black) cells for
    // dropped samples
    // 6: reads checkpoints of format 2 (PyTorch's names and layouts)
    const ID: KindId = KindId { name: "synthesize", version: 6 };
    type Params = Params;
    const OUTPUTS: &'static [&'static str] = &[PSEUDO_NEGATIVES, TABLE, GRID];
    fn run(p: Params, io: &mut StageIo, device: &Device) -> Result<()> {
        run(p, io, device)
    }
}

/// Pictures per class in the grid.
pub const GRID_COLUMNS: usize = 10;

/// The seed of sample i of a stage: recorded per sample, so any one can be remade alone.
pub fn sample_seed(stage_seed: u64, i: usize) -> u64 {
    crate::engine::graph::derive_seed(&format!("pipe-sample/{stage_seed}/{i}"))
}

/// Gradient ascent from `starts` (p0 when none), with a progress meter.
fn ascend(io: &StageIo, net: &dyn Classifier, shape: Shape3, targets: &[Target], starts: Option<&[f32]>, cfg: &SynthesisConfig, device: &Device) -> Result<Synthesized> {
    let mut meter = io.progress(targets.len() as u64, "samples", "pseudo-negatives");
    let (mut done, mut steps) = (0u64, 0u64);
    let out = synthesize_from(net, shape, targets, starts, cfg, device, &mut |f: Finished| {
        if f.count > 0 {
            done += f.count as u64;
            steps += f.count as u64 * f.steps as u64;
            meter.set_note(format!("mean {:.1} steps", steps as f64 / done as f64));
        }
        meter.inc(f.count as u64)
    })?;
    meter.finish();
    Ok(out)
}

/// What the partial/ folder keeps between images of patch synthesis: each finished image's
/// (steps, stop reason, final mean f), with the images in the same file.
#[derive(Default, Deserialize, Serialize)]
struct PatchProgress {
    done: Vec<(u32, PatchEnd, f32)>,
}
const PARTIAL: &str = "progress.bin";

/// Patch synthesis of each target's image from its start, one image at a time; every
/// finished image goes to the partial/ folder, so a killed stage resumes at the next one
/// and ends with the same bytes.
fn ascend_patches(io: &mut StageIo, net: &dyn Classifier, shape: Shape3, targets: &[Target], starts: &[f32], cfg: &dyn Fn(&Target) -> PatchConfig, device: &Device) -> Result<Synthesized> {
    let d = shape.0 * shape.1 * shape.2;
    let (mut progress, mut images) = (PatchProgress::default(), Vec::with_capacity(starts.len()));
    if let Some(saved) = io.read_partial(PARTIAL)? {
        (progress, images) = super::decode_progress(&saved).context("the synthesize stage's partial progress")?;
        anyhow::ensure!(images.len() == progress.done.len() * d, "the synthesize stage's partial images do not match its progress");
        io.note_resumed(json!(format!("image {}", progress.done.len() + 1)));
    }
    let mut meter = io.progress(targets.len() as u64, "images", "pseudo-negatives");
    meter.resume_at(progress.done.len() as u64);
    for (i, t) in targets.iter().enumerate().skip(progress.done.len()) {
        let keep_going = |_: u32| if io.stop_requested() { std::ops::ControlFlow::Break(()) } else { std::ops::ControlFlow::Continue(()) };
        let s = synthesize_patches(net, shape, &starts[i * d..(i + 1) * d], &cfg(t), &mut Rng::new(t.seed), device, &mut { keep_going })
            .map_err(|e| if io.stop_requested() { io.interrupted(&format!("{i} of {} images are saved", targets.len())) } else { e.into() })?;
        images.extend(s.image);
        progress.done.push((s.steps, s.end, s.final_f));
        io.write_partial(PARTIAL, &super::encode_progress(&progress, &images)?)?;
        let _ = meter.inc(1);
    }
    meter.finish();
    let records = targets
        .iter()
        .zip(&progress.done)
        .map(|(t, (steps, end, f))| {
            let stop_reason = match end {
                PatchEnd::Threshold => StopReason::Threshold,
                PatchEnd::Window => StopReason::Window,
                PatchEnd::MaxSteps => StopReason::MaxSteps,
            };
            SampleRecord { class: t.class, seed: t.seed, steps: *steps, stop_reason, final_logit: *f, final_prob: 1.0 / (1.0 + (-f).exp()), classified: *f > 0.0, top: true }
        })
        .collect();
    Ok(Synthesized { images, records })
}

fn run(p: Params, io: &mut StageIo, device: &Device) -> Result<()> {
    let (classes_made, binary): (Vec<u32>, bool) = match p.targets {
        Targets::PerClass => ((0..p.net.num_classes as u32).collect(), false),
        Targets::Binary { class } => (vec![class], true),
    };
    let k = classes_made.len();
    let targets: Vec<Target> = (0..k * p.per_class).map(|i| Target { class: classes_made[i / p.per_class], seed: sample_seed(p.seed, i) }).collect();
    // each sample's start is a function of its own seed, whatever the reference
    let shape = match p.size {
        Some((h, w)) => (p.net.channels, h, w),
        None => p.net.shape(),
    };
    let d = shape.0 * shape.1 * shape.2;
    let starts = if io.has_input(STARTS) {
        let from = decode_pseudo_negatives(&io.read(STARTS)?)?;
        anyhow::ensure!(from.shape == shape && !from.classes.is_empty(), "input {STARTS}: {} samples of {:?}, expected some of {shape:?}", from.classes.len(), from.shape);
        let n = from.classes.len();
        Some((0..targets.len()).flat_map(|i| from.images[(i % n) * d..(i % n + 1) * d].to_vec()).collect())
    } else {
        match p.reference {
            None => None,
            Some(Reference::AppendixD { seed }) => {
                let seeds: Vec<u64> = targets.iter().map(|t| t.seed).collect();
                Some(NoiseProvider::new(shape, seed, device)?.samples(&seeds)?)
            }
        }
    };
    let out = match p.method {
        Method::Noise => match starts {
            Some(images) => p0_from(&targets, images),
            None => p0_samples(&targets, shape, p.init_std),
        },
        Method::Patches { per_step, lr, max_steps, step, stop } => {
            let net = p.net.load(&io.read(CHECKPOINT)?, device)?;
            let starts = match starts {
                Some(s) => s,
                None => p0_samples(&targets, shape, p.init_std).images,
            };
            let cfg = |t: &Target| PatchConfig { patch: p.net.height, pad: 0, patches_per_step: per_step, step, lr, max_steps, stop: patch_stop(stop, t.seed) };
            ascend_patches(io, net.as_ref(), shape, &targets, &starts, &cfg, device)?
        }
        Method::Synthesis { batch_size, lr, max_steps, step, stop } => {
            let net = p.net.load(&io.read(CHECKPOINT)?, device)?;
            let cfg = SynthesisConfig { binary, step, lr, max_steps, init_std: p.init_std, batch_size: batch_size.max(1), stop };
            ascend(io, net.as_ref(), shape, &targets, starts.as_deref(), &cfg, device)?
        }
        Method::Critic { batch_size, lr, max_steps, step, class_weight } => {
            let bytes = io.read(CHECKPOINT)?;
            let range = critic_thresholds(&bytes)?;
            let net = p.net.load(&bytes, device)?;
            let view = CriticView { net: net.as_ref(), class_weight: if binary { None } else { Some(class_weight.unwrap_or(0.0)) } };
            let cfg = SynthesisConfig { binary, step, lr, max_steps, init_std: p.init_std, batch_size: batch_size.max(1), stop: StopRule::Threshold { min: range.min, max: range.max } };
            io.summary("critic_thresholds", json!([range.min, range.max]));
            ascend(io, &view, shape, &targets, starts.as_deref(), &cfg, device)?
        }
    };
    // A sample that went non-finite is dropped, never stored: its seed is listed in the
    // summary, and the others keep their order (sample_id is the index in the output).
    let (mut images, mut records, mut dropped) = (Vec::with_capacity(out.images.len()), Vec::with_capacity(out.records.len()), Vec::new());
    for (i, rec) in out.records.into_iter().enumerate() {
        if rec.stop_reason == StopReason::NonFinite {
            dropped.push(rec.seed);
        } else {
            images.extend_from_slice(&out.images[i * d..(i + 1) * d]);
            records.push(rec);
        }
    }
    let classes: Vec<u32> = records.iter().map(|r| r.class).collect();
    io.write(PSEUDO_NEGATIVES, &encode_pseudo_negatives(&PseudoNegatives { images: images.clone(), classes, shape })?)?;

    let r = &records;
    let table = to_parquet(vec![
        ("sample_id", Column::U32((0..r.len() as u32).collect())),
        ("round", Column::U32(vec![p.round; r.len()])),
        ("class", Column::U32(r.iter().map(|s| s.class).collect())),
        ("seed", Column::U64(r.iter().map(|s| s.seed).collect())),
        ("steps", Column::U32(r.iter().map(|s| s.steps).collect())),
        ("stop_reason", Column::Str(r.iter().map(|s| s.stop_reason.as_str().to_string()).collect())),
        ("final_logit", Column::F32(r.iter().map(|s| s.final_logit).collect())),
        ("final_prob", Column::F32(r.iter().map(|s| s.final_prob).collect())),
        ("classified", Column::Bool(r.iter().map(|s| s.classified).collect())),
        ("top_class", Column::Bool(r.iter().map(|s| s.top).collect())),
    ])?;
    io.write(TABLE, &table)?;

    // a row per class, labelled; a dropped sample leaves an empty cell
    let grid: Vec<LabelledRow> = classes_made
        .iter()
        .map(|&class| {
            let mut tiles: Vec<Option<&[f32]>> = (0..r.len()).filter(|&i| r[i].class == class).take(GRID_COLUMNS).map(|i| Some(&images[i * d..(i + 1) * d])).collect();
            tiles.resize(p.per_class.min(GRID_COLUMNS), None);
            LabelledRow { label: class, tiles }
        })
        .collect();
    io.write(GRID, &encode_labelled_grid_png(&grid, shape.0, shape.1, shape.2, 2)?)?;

    let classified = r.iter().filter(|s| s.classified).count();
    let mean_steps = r.iter().map(|s| s.steps as f64).sum::<f64>() / r.len().max(1) as f64;
    io.summary("count", json!(r.len()));
    if !dropped.is_empty() {
        eprintln!("warning: {}: {} pseudo-negatives went non-finite during synthesis and were dropped (their seeds are in the stage summary)", io.stage_id(), dropped.len());
        io.summary("dropped_non_finite", json!(dropped));
    }
    io.summary("classified", json!(classified));
    io.summary("mean_steps", json!(mean_steps));
    // f_k where synthesis stopped: how much a sample can still teach the net (its loss
    // term is ln(1 + exp(f_k))); none for p0 noise, which no net scored
    let scored: Vec<f64> = r.iter().map(|s| s.final_logit as f64).filter(|f| f.is_finite()).collect();
    let mean_logit = (!scored.is_empty()).then(|| scored.iter().sum::<f64>() / scored.len() as f64);
    if let Some(m) = mean_logit {
        io.summary("mean_final_logit", json!(m));
    }
    let logit = mean_logit.map(|m| format!(", mean f_k {m:.2}")).unwrap_or_default();
    let dropped = if dropped.is_empty() { String::new() } else { format!(", {} dropped (non-finite)", dropped.len()) };
    // a critic's samples stop at thresholds drawn from its own range, not at f_k = 0
    let reached = match p.method {
        Method::Critic { .. } => format!("{} reached their threshold", r.iter().filter(|s| s.stop_reason == StopReason::Threshold).count()),
        _ => format!("{classified} with f_k > 0"),
    };
    io.summary("line", json!(format!("{} samples, {reached}, mean {mean_steps:.1} steps{logit}{dropped}", r.len())));
    Ok(())
}
