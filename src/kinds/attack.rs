//! `attack`: adversarial examples on the first classifier (FGSM or PGD), made only from
//! test images it classifies correctly, and every classifier's prediction on the clean and
//! the adversarial image. The summary holds the WINN Table 3 quantities: adversarial error
//! of the attacked net A (N_A / N) and, for each other net B, N_{A and B} and the correction
//! rate 1 - N_{A and B} / N_A. `examples.png` shows, for the first fooling example of each
//! class, the original (top row), the perturbation scaled to full contrast (middle) and
//! the adversarial image (bottom).

use super::{read_set, Kind};
use crate::engine::executor::StageIo;
use crate::engine::graph::KindId;
use crate::engine::table::{to_parquet, Column};
use anyhow::{ensure, Result};
use serde::{Deserialize, Serialize};
use serde_json::json;
use stages::attack::{attack, AttackConfig};
use stages::candle::Device;
use stages::evaluate::predict;
use stages::grid::encode_grid_png;
use stages::nn::NetConfig;
use stages::rng::Rng;

pub struct Attack;

/// Input: the test set the adversarial examples are made from.
pub const TEST: &str = "test";
/// Output: one row per (example, classifier).
pub const EXAMPLES: &str = "examples.parquet";
/// Output: the first fooling example of each class (original / perturbation / adversarial).
pub const FIGURE: &str = "examples.png";

/// Input: classifier i (0 is the attacked one; the others are tested on its examples).
pub fn checkpoint(i: usize) -> String {
    format!("{CHECKPOINT}{i:04}")
}
const CHECKPOINT: &str = "checkpoint.";

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Params {
    pub round: u32,
    pub net: NetConfig,
    /// In the models' [-1, 1] units.
    pub attack: AttackConfig,
    pub batch_size: usize,
    /// A name for each classifier input, in input order.
    pub models: Vec<String>,
    pub seed: u64,
}

impl Kind for Attack {
    // 2: reads checkpoints of format 2 (PyTorch's names and layouts)
    const ID: KindId = KindId { name: "attack", version: 2 };
    type Params = Params;
    const OUTPUTS: &'static [&'static str] = &[EXAMPLES];
    fn run(p: Params, io: &mut StageIo, device: &Device) -> Result<()> {
        run(p, io, device)
    }
}

fn run(p: Params, io: &mut StageIo, device: &Device) -> Result<()> {
    let names = io.input_names(CHECKPOINT);
    ensure!(!names.is_empty() && names.len() == p.models.len(), "stage {}: {} classifiers for {} model names", io.stage_id(), names.len(), p.models.len());
    let nets = names.iter().map(|n| Ok(p.net.load(&io.read(n)?, device)?)).collect::<Result<Vec<_>>>()?;
    let (x, y) = read_set(io, TEST)?;
    let shape = p.net.shape();
    let d = shape.0 * shape.1 * shape.2;

    // N: the test images the attacked net gets right
    let clean = nets.iter().map(|n| predict(n.as_ref(), &x, shape, p.batch_size, device)).collect::<std::result::Result<Vec<_>, _>>()?;
    let chosen: Vec<usize> = (0..y.len()).filter(|&i| clean[0][i] == y[i]).collect();
    let xs: Vec<f32> = chosen.iter().flat_map(|&i| x[i * d..(i + 1) * d].iter().copied()).collect();
    let ys: Vec<u32> = chosen.iter().map(|&i| y[i]).collect();

    let a = p.attack.attack();
    let mut rng = Rng::new(p.seed);
    let mut meter = io.progress(ys.len() as u64, "examples", &p.attack.name());
    let mut adv = Vec::with_capacity(xs.len());
    for (xb, yb) in xs.chunks(p.batch_size * d).zip(ys.chunks(p.batch_size)) {
        adv.extend(attack(nets[0].as_ref(), xb, yb, shape, &a, &mut rng, device)?);
        if meter.inc(yb.len() as u64).is_break() {
            return Err(stages::stopped().into());
        }
    }
    meter.finish();
    let adversarial = nets.iter().map(|n| predict(n.as_ref(), &adv, shape, p.batch_size, device)).collect::<std::result::Result<Vec<_>, _>>()?;

    let n = ys.len();
    let fooled = |m: usize, j: usize| adversarial[m][j] != ys[j];
    let fooled_a = (0..n).filter(|&j| fooled(0, j)).count();
    let rate = |num: usize, den: usize| if den == 0 { f64::NAN } else { num as f64 / den as f64 };
    io.summary("attack", json!(p.attack.name()));
    io.summary("attacked", json!(p.models[0]));
    io.summary("n", json!(n));
    io.summary("fooled", json!(fooled_a));
    io.summary("adversarial_error", json!(rate(fooled_a, n)));
    let mut line = format!("{}: {:.2}% of {n} fool {}", p.attack.name(), 100.0 * rate(fooled_a, n), p.models[0]);
    let mut others = Vec::new();
    for (m, name) in p.models.iter().enumerate().skip(1) {
        let both = (0..n).filter(|&j| fooled(0, j) && fooled(m, j)).count();
        let correction = 1.0 - rate(both, fooled_a);
        others.push(json!({"model": name, "fooled_both": both, "correction_rate": correction}));
        line.push_str(&format!("; {name} corrects {:.1}%", 100.0 * correction));
    }
    if let Some(first) = others.first() {
        io.summary("tested", first["model"].clone());
        io.summary("fooled_both", first["fooled_both"].clone());
        io.summary("correction_rate", first["correction_rate"].clone());
    }
    io.summary("others", json!(others));
    io.summary("line", json!(line));

    // one row per (example, classifier)
    let rows: Vec<(usize, usize)> = (0..nets.len()).flat_map(|m| (0..n).map(move |j| (m, j))).collect();
    let u32s = |f: &dyn Fn(usize, usize) -> u32| Column::U32(rows.iter().map(|&(m, j)| f(m, j)).collect());
    let bools = |f: &dyn Fn(usize, usize) -> bool| Column::Bool(rows.iter().map(|&(m, j)| f(m, j)).collect());
    io.write(
        EXAMPLES,
        &to_parquet(vec![
            ("round", Column::U32(vec![p.round; rows.len()])),
            ("example", u32s(&|_, j| chosen[j] as u32)),
            ("label", u32s(&|_, j| ys[j])),
            ("model", Column::Str(rows.iter().map(|&(m, _)| p.models[m].clone()).collect())),
            ("attacked", bools(&|m, _| m == 0)),
            ("clean_prediction", u32s(&|m, j| clean[m][chosen[j]])),
            ("adversarial_prediction", u32s(&|m, j| adversarial[m][j])),
            ("fooled", bools(&|m, j| fooled(m, j))),
        ])?,
    )?;

    // the first fooling example of each class
    let shown: Vec<usize> = (0..p.net.num_classes as u32).filter_map(|k| (0..n).find(|&j| ys[j] == k && fooled(0, j))).collect();
    if !shown.is_empty() {
        let eps = a.eps.max(f32::MIN_POSITIVE);
        let tile = |j: usize, which: usize| -> Vec<f32> {
            let (orig, adv) = (&xs[j * d..(j + 1) * d], &adv[j * d..(j + 1) * d]);
            match which {
                0 => orig.to_vec(),
                1 => orig.iter().zip(adv).map(|(o, a)| (a - o) / eps).collect(),
                _ => adv.to_vec(),
            }
        };
        let images: Vec<f32> = (0..3).flat_map(|row| shown.iter().flat_map(move |&j| tile(j, row))).collect();
        io.write(FIGURE, &encode_grid_png(&images, 3 * shown.len(), shape.0, shape.1, shape.2, shown.len(), 2)?)?;
    }
    Ok(())
}
