//! `sample`: images drawn from a trained WINN model, through the critics of its cascades
//! in order (inputs `critic.0000`, `critic.0001`, ...), each stopping at its own threshold
//! from the critic's range of f over positives. Images the size the critics were trained
//! on are synthesized whole; other sizes from patches (WINN 5.2): a working image with a
//! border, random windows of the critic's size each step, every pixel moved by the mean
//! gradient of the windows that cover it.
//!
//! In patch mode each finished image goes to the stage's partial/ folder, so a killed
//! stage resumes at the next image and ends with the same bytes.

use super::synthesize::{patch_stop, sample_seed, Reference};
use super::train::critic_thresholds;
use super::Kind;
use crate::engine::executor::StageIo;
use crate::engine::graph::{InputRef, KindId, StageDef};
use crate::engine::table::{to_parquet, Column};
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::json;
use stages::candle::Device;
use stages::codec::{encode_pseudo_negatives, PseudoNegatives};
use stages::critic::CriticView;
use stages::grid::encode_grid_png;
use stages::nn::initial::NoiseProvider;
use stages::nn::NetConfig;
use stages::patch::{synthesize_patches, working_shape, PatchConfig};
use stages::rng::Rng;
use stages::synthesize::{initial_sample, synthesize_from, Step, StopReason, StopRule, SynthesisConfig, Target};

pub struct Sample;

/// Output: the images (C x H x W each, in [-1, 1]).
pub const SAMPLES: &str = "samples.safetensors";
/// Output: one row per image: seed, steps, final f, why it stopped.
pub const TABLE: &str = "samples.parquet";
/// Output: the images side by side.
pub const GRID: &str = "grid.png";

/// The border of the working image: 32 pixels, the paper's 320x320 for 256x256.
pub const PAD: usize = 32;

/// Input: the critic of cascade `c` (0-based; zero-padded so names sort in order).
pub fn critic(c: usize) -> String {
    format!("{CRITIC}{c:04}")
}
const CRITIC: &str = "critic.";

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Params {
    pub net: NetConfig,
    pub count: usize,
    pub height: usize,
    pub width: usize,
    pub lr: f64,
    pub max_steps: u32,
    pub batch_size: usize,
    pub step: Step,
    pub init_std: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reference: Option<Reference>,
    /// Present when the images are not the critics' size.
    pub patches: Option<Patches>,
    /// When an image is done under each net (IGM: the rule of its training synthesis);
    /// absent: at a threshold drawn from the critic's range of f over positives (WINN),
    /// and absent from the key, so WINN's sample stages kept theirs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop: Option<StopRule>,
    pub seed: u64,
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Patches {
    pub per_step: usize,
    pub pad: usize,
    pub max_steps: u32,
}

impl Kind for Sample {
    const ID: KindId = KindId { name: "sample", version: 2 };
    type Params = Params;
    const OUTPUTS: &'static [&'static str] = &[SAMPLES, TABLE, GRID];
    fn run(p: Params, io: &mut StageIo, device: &Device) -> Result<()> {
        run(p, io, device)
    }
}

/// A sample stage drawing from `critics` (cascade order).
pub fn stage(id: String, params: &Params, critics: &[InputRef]) -> StageDef {
    super::place::<Sample>(id, params, critics.iter().enumerate().map(|(c, r)| (critic(c), r.clone())).collect())
}

/// Why `out` cannot be drawn from critics of `net`'s size, if it cannot: bad input.
pub fn check_size(net: &NetConfig, height: usize, width: usize) -> Option<String> {
    ((height, width) != (net.height, net.image_width) && (height < net.height || width < net.image_width))
        .then(|| format!("a {height}x{width} sample is smaller than the {}x{} patches its critic was trained on; expected at least {}x{}", net.height, net.image_width, net.height, net.image_width))
}

/// What the partial/ folder keeps between images.
#[derive(Deserialize, Serialize)]
struct Progress {
    /// Images finished by the critic `critic` (earlier critics: all of them).
    critic: usize,
    done: usize,
    records: Vec<Row>,
}

#[derive(Clone, Deserialize, Serialize)]
struct Row {
    steps: u32,
    final_f: f32,
    reason: String,
}

const PARTIAL: &str = "progress.bin";

fn run(p: Params, io: &mut StageIo, device: &Device) -> Result<()> {
    if let Some(why) = check_size(&p.net, p.height, p.width) {
        return Err(crate::UserError(why).into());
    }
    let c = p.net.channels;
    let out = (c, p.height, p.width);
    let start_shape = p.patches.map_or(out, |pt| working_shape(out, pt.pad));
    let seeds: Vec<u64> = (0..p.count).map(|i| sample_seed(p.seed, i)).collect();
    let critics = io.input_names(CRITIC);
    anyhow::ensure!(!critics.is_empty(), "stage {}: no critic input", io.stage_id());
    let d_start = start_shape.0 * start_shape.1 * start_shape.2;
    let starts: Vec<f32> = match p.reference {
        Some(Reference::AppendixD { seed }) => NoiseProvider::new(start_shape, seed, device)?.samples(&seeds)?,
        None => seeds.iter().flat_map(|&s| initial_sample(s, d_start, p.init_std)).collect(),
    };
    let d = c * p.height * p.width;
    let mut images: Vec<f32> = match p.patches {
        Some(pt) => (0..p.count).flat_map(|i| crop(&starts[i * d_start..(i + 1) * d_start], start_shape, pt.pad, out)).collect(),
        None => starts.clone(),
    };
    let mut progress = Progress { critic: 0, done: 0, records: vec![Row { steps: 0, final_f: f32::NAN, reason: "noise".into() }; p.count] };
    if let Some(saved) = io.read_partial(PARTIAL)? {
        (progress, images) = super::decode_progress(&saved).context("the sample stage's partial progress")?;
        anyhow::ensure!(images.len() == p.count * d, "the sample stage's partial images are not {} of {}x{}", p.count, p.height, p.width);
        io.note_resumed(json!(format!("critic {}, image {}", progress.critic + 1, progress.done)));
    }
    let mut meter = io.progress((critics.len() * p.count) as u64, "images", "samples");
    meter.resume_at((progress.critic * p.count + progress.done) as u64);
    for (ci, name) in critics.iter().enumerate().skip(progress.critic) {
        let bytes = io.read(name)?;
        let stop = match p.stop {
            Some(rule) => rule,
            None => {
                let range = critic_thresholds(&bytes).with_context(|| format!("input {name}"))?;
                StopRule::Threshold { min: range.min, max: range.max }
            }
        };
        let net = p.net.load(&bytes, device)?;
        let view = CriticView { net: net.as_ref(), class_weight: None };
        match p.patches {
            None => {
                let targets: Vec<Target> = seeds.iter().map(|&seed| Target { class: 0, seed }).collect();
                let cfg = SynthesisConfig { binary: true, step: p.step, lr: p.lr, max_steps: p.max_steps, init_std: p.init_std, batch_size: p.batch_size.max(1), stop };
                let done = synthesize_from(&view, out, &targets, Some(&images), &cfg, device, &mut |f: stages::synthesize::Finished| meter.inc(f.count as u64))?;
                images = done.images;
                for (row, r) in progress.records.iter_mut().zip(&done.records) {
                    anyhow::ensure!(r.stop_reason != StopReason::NonFinite, "sample with seed {} went non-finite under critic {}", r.seed, ci + 1);
                    *row = Row { steps: row.steps + r.steps, final_f: r.final_logit, reason: r.stop_reason.as_str().into() };
                }
            }
            Some(pt) => {
                for i in progress.done..p.count {
                    // the border keeps its start; the centre is where the last critic left it
                    let mut start = starts[i * d_start..(i + 1) * d_start].to_vec();
                    paste(&mut start, start_shape, pt.pad, &images[i * d..(i + 1) * d], out);
                    let cfg = PatchConfig { patch: p.net.height, pad: pt.pad, patches_per_step: pt.per_step, step: p.step, lr: p.lr, max_steps: pt.max_steps, stop: patch_stop(stop, seeds[i]) };
                    let mut rng = Rng::new(seeds[i] ^ (ci as u64 + 1));
                    let s = synthesize_patches(&view, out, &start, &cfg, &mut rng, device, &mut |_| if io.stop_requested() { std::ops::ControlFlow::Break(()) } else { std::ops::ControlFlow::Continue(()) })
                        .map_err(|e| if io.stop_requested() { io.interrupted(&format!("{} of {} images are saved", i, p.count)) } else { e.into() })?;
                    images[i * d..(i + 1) * d].copy_from_slice(&s.image);
                    let row = &mut progress.records[i];
                    *row = Row { steps: row.steps + s.steps, final_f: s.final_f, reason: s.end.as_str().into() };
                    progress.done = i + 1;
                    io.write_partial(PARTIAL, &super::encode_progress(&progress, &images)?)?;
                    let _ = meter.inc(1);
                }
            }
        }
        progress.critic = ci + 1;
        progress.done = 0;
    }
    meter.finish();

    io.write(SAMPLES, &encode_pseudo_negatives(&PseudoNegatives { images: images.clone(), classes: vec![0; p.count], shape: out })?)?;
    let r = &progress.records;
    io.write(
        TABLE,
        &to_parquet(vec![
            ("sample_id", Column::U32((0..p.count as u32).collect())),
            ("seed", Column::U64(seeds.clone())),
            ("steps", Column::U32(r.iter().map(|r| r.steps).collect())),
            ("final_f", Column::F32(r.iter().map(|r| r.final_f).collect())),
            ("stop_reason", Column::Str(r.iter().map(|r| r.reason.clone()).collect())),
        ])?,
    )?;
    // the images of a draw have no class: a plain square-ish grid, no labels
    let columns = (p.count as f64).sqrt().ceil() as usize;
    io.write(GRID, &encode_grid_png(&images, p.count, c, p.height, p.width, columns.max(1), 2)?)?;
    let mean_steps = r.iter().map(|r| r.steps as f64).sum::<f64>() / p.count.max(1) as f64;
    io.summary("count", json!(p.count));
    io.summary("mean_steps", json!(mean_steps));
    io.summary("line", json!(format!("{} images of {}x{} through {} critic(s), mean {mean_steps:.1} steps", p.count, p.height, p.width, critics.len())));
    Ok(())
}

/// The centre `out` of a working image with a `pad` border.
fn crop(work: &[f32], shape: (usize, usize, usize), pad: usize, out: (usize, usize, usize)) -> Vec<f32> {
    let (c, hw, ww) = shape;
    let mut v = Vec::with_capacity(out.0 * out.1 * out.2);
    for ch in 0..c {
        for y in 0..out.1 {
            let at = ch * hw * ww + (y + pad) * ww + pad;
            v.extend_from_slice(&work[at..at + out.2]);
        }
    }
    v
}

/// [`crop`]'s inverse: `image` written into the centre of `work`.
fn paste(work: &mut [f32], shape: (usize, usize, usize), pad: usize, image: &[f32], out: (usize, usize, usize)) {
    let (c, hw, ww) = shape;
    for ch in 0..c {
        for y in 0..out.1 {
            let at = ch * hw * ww + (y + pad) * ww + pad;
            let from = ch * out.1 * out.2 + y * out.2;
            work[at..at + out.2].copy_from_slice(&image[from..from + out.2]);
        }
    }
}
