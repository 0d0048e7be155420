//! `attack`: adversarial examples on the first classifier (FGSM or PGD), made only from
//! test images it classifies correctly, and every classifier's prediction on the clean and
//! the adversarial image. The summary holds the WINN Table 3 quantities: adversarial error
//! of the attacked net A (N_A / N) and, for each other net B, N_{A and B} and the correction
//! rate 1 - N_{A and B} / N_A. `examples.png` shows, for the first fooling example of each
//! class, the original (top row), the perturbation scaled to full contrast (middle) and
//! the adversarial image (bottom).

use super::{read_set, NetParams};
use crate::executor::StageIo;
use crate::table::{to_parquet, Column};
use anyhow::{ensure, Result};
use serde::Deserialize;
use serde_json::json;
use stages::attack::{attack, Attack};
use stages::candle::Device;
use stages::evaluate::predict;
use stages::grid::encode_grid_png;
use stages::rng::Rng;

#[derive(Deserialize)]
struct Params {
    round: u32,
    net: NetParams,
    attack: AttackParams,
    batch_size: usize,
    /// One name per classifier input, attacked one first.
    models: Vec<String>,
    seed: u64,
}

#[derive(Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
enum AttackParams {
    Fgsm { eps: f32, lo: f32, hi: f32 },
    Pgd { eps: f32, lo: f32, hi: f32, steps: u32, step_size: f32, random_start: bool },
}

impl AttackParams {
    fn attack(&self) -> Attack {
        match *self {
            AttackParams::Fgsm { eps, lo, hi } => Attack::fgsm(eps, lo, hi),
            AttackParams::Pgd { eps, lo, hi, steps, step_size, random_start } => Attack { eps, lo, hi, steps, step_size, random_start },
        }
    }
    fn name(&self) -> String {
        match self {
            AttackParams::Fgsm { eps, .. } => format!("FGSM eps {eps}"),
            AttackParams::Pgd { eps, steps, .. } => format!("PGD-{steps} eps {eps}"),
        }
    }
}

pub fn run(io: &mut StageIo, device: &Device) -> Result<()> {
    let p: Params = io.params()?;
    let names = io.input_names("checkpoint");
    ensure!(!names.is_empty() && names.len() == p.models.len(), "stage {}: {} classifiers for {} model names", io.stage_id(), names.len(), p.models.len());
    let nets = names.iter().map(|n| p.net.load(&io.read(n)?, device)).collect::<Result<Vec<_>>>()?;
    let (x, y) = read_set(io, "test")?;
    let shape = p.net.shape();
    let d = shape.0 * shape.1 * shape.2;

    // N: the test images the attacked net gets right
    let clean = nets.iter().map(|n| predict(n.as_ref(), &x, shape, p.batch_size, device)).collect::<std::result::Result<Vec<_>, _>>()?;
    let chosen: Vec<usize> = (0..y.len()).filter(|&i| clean[0][i] == y[i]).collect();
    let xs: Vec<f32> = chosen.iter().flat_map(|&i| x[i * d..(i + 1) * d].iter().copied()).collect();
    let ys: Vec<u32> = chosen.iter().map(|&i| y[i]).collect();

    let a = p.attack.attack();
    let mut rng = Rng::new(p.seed);
    let pb = io.progress(ys.len() as u64, &p.attack.name());
    let mut adv = Vec::with_capacity(xs.len());
    for (xb, yb) in xs.chunks(p.batch_size * d).zip(ys.chunks(p.batch_size)) {
        adv.extend(attack(nets[0].as_ref(), xb, yb, shape, &a, &mut rng, device)?);
        pb.inc(yb.len() as u64);
    }
    pb.finish_and_clear();
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
        "examples.parquet",
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
        io.write("examples.png", &encode_grid_png(&images, 3 * shown.len(), shape.0, shape.1, shape.2, shown.len(), 2)?)?;
    }
    Ok(())
}
