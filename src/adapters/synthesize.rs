//! `synthesize`: round t's pseudo-negatives from round t-1's classifier, `per_class` for
//! each class k (increase logit k from p0 noise), with one table row per sample and a PNG
//! grid (a row per class).

use super::NetParams;
use crate::executor::StageIo;
use crate::table::{to_parquet, Column};
use anyhow::{Context, Result};
use serde::Deserialize;
use serde_json::json;
use stages::candle::Device;
use stages::codec::{encode_pseudo_negatives, PseudoNegatives};
use stages::grid::encode_grid_png;
use stages::synthesize::{p0_samples, synthesize, Step, StopRule, SynthesisConfig, Target};

#[derive(Deserialize)]
struct Params {
    round: u32,
    net: NetParams,
    /// `synthesis` (ascent on f_k) or `noise` (the p0 samples themselves: ICN-noise).
    method: String,
    /// Which samples to make: `per-class` (per_class for each class of a softmax net) or
    /// `binary` (per_class for the positive class of a one-logit net).
    targets: TargetParams,
    per_class: usize,
    init_std: f64,
    seed: u64,
    #[serde(default)]
    batch_size: usize,
    #[serde(default)]
    lr: f64,
    #[serde(default)]
    max_steps: u32,
    #[serde(default)]
    step: Option<StepParams>,
    #[serde(default)]
    stop: Option<StopParams>,
}

#[derive(Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
enum StepParams {
    Adam { beta1: f64, beta2: f64 },
    Sgd,
    Langevin { decay: f64 },
}

#[derive(Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
enum TargetParams {
    PerClass,
    Binary { class: u32 },
}

#[derive(Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
enum StopParams {
    Classified,
    Probability { threshold: f64 },
    Steps,
}

/// Pictures per class in the grid.
const GRID_COLUMNS: usize = 10;

/// The seed of sample i of a stage: recorded per sample, so any one can be remade alone.
fn sample_seed(stage_seed: u64, i: usize) -> u64 {
    crate::plan::derive_seed(&format!("pipe-sample/{stage_seed}/{i}"))
}

pub fn run(io: &mut StageIo, device: &Device) -> Result<()> {
    let p: Params = io.params()?;
    let noise = match p.method.as_str() {
        "noise" => true,
        "synthesis" => false,
        other => anyhow::bail!("unknown pseudo-negative method `{other}`"),
    };
    let (classes, binary): (Vec<u32>, bool) = match p.targets {
        TargetParams::PerClass => ((0..p.net.num_classes as u32).collect(), false),
        TargetParams::Binary { class } => (vec![class], true),
    };
    let k = classes.len();
    let targets: Vec<Target> = (0..k * p.per_class).map(|i| Target { class: classes[i / p.per_class], seed: sample_seed(p.seed, i) }).collect();
    let out = if noise {
        p0_samples(&targets, p.net.shape(), p.init_std)
    } else {
        let net = p.net.load(&io.read("checkpoint")?, device)?;
        let cfg = SynthesisConfig {
            binary,
            step: match p.step.context("synthesis parameters without a step")? {
                StepParams::Adam { beta1, beta2 } => Step::Adam { beta1, beta2, eps: 1e-8 },
                StepParams::Sgd => Step::Sgd,
                StepParams::Langevin { decay } => Step::Langevin { decay },
            },
            lr: p.lr,
            max_steps: p.max_steps,
            init_std: p.init_std,
            batch_size: p.batch_size.max(1),
            stop: match p.stop.context("synthesis parameters without a stop rule")? {
                StopParams::Classified => StopRule::Classified,
                StopParams::Probability { threshold } => StopRule::Probability(threshold),
                StopParams::Steps => StopRule::Steps,
            },
        };
        let pb = io.progress(targets.len() as u64, "pseudo-negatives");
        let out = synthesize(net.as_ref(), p.net.shape(), &targets, &cfg, device, &mut |n| pb.inc(n as u64))?;
        pb.finish_and_clear();
        out
    };
    let shape = p.net.shape();
    let d = shape.0 * shape.1 * shape.2;
    let classes: Vec<u32> = out.records.iter().map(|r| r.class).collect();
    io.write("pseudo_negatives.safetensors", &encode_pseudo_negatives(&PseudoNegatives { images: out.images.clone(), classes, shape })?)?;

    let r = &out.records;
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
    ])?;
    io.write("pseudo_negatives.parquet", &table)?;

    let columns = p.per_class.min(GRID_COLUMNS);
    let mut tiles = Vec::with_capacity(k * columns * d);
    for row in 0..k {
        for j in 0..columns {
            let i = row * p.per_class + j;
            tiles.extend_from_slice(&out.images[i * d..(i + 1) * d]);
        }
    }
    io.write("grid.png", &encode_grid_png(&tiles, k * columns, shape.0, shape.1, shape.2, columns, 2)?)?;

    let classified = r.iter().filter(|s| s.classified).count();
    let mean_steps = r.iter().map(|s| s.steps as f64).sum::<f64>() / r.len().max(1) as f64;
    io.summary("count", json!(r.len()));
    io.summary("classified", json!(classified));
    io.summary("mean_steps", json!(mean_steps));
    io.summary("line", json!(format!("{} samples, {classified} classified as their class, mean {mean_steps:.1} steps", r.len())));
    Ok(())
}
