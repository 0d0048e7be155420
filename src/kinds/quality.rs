//! `quality`: how close one round's samples are to the real images, by pipe's own nets
//! (no Inception weights can ship here, so the numbers compare runs of pipe, not papers):
//!
//! - with a `judge` input (a classifier trained on the real labelled images): an
//!   Inception-style score from its softmax on the samples, and a Fréchet distance between
//!   its last layer's features (mean over positions) on samples and on real test images;
//! - without one, on data with one class (faces): the Fréchet distance on the features of
//!   a net with fixed random weights (from `seed`; the same net for every round);
//! - textures: the Gram-matrix distance of a fixed random net's activations between real
//!   crops and random crop-sized windows of the samples.
//!
//! `quality-curve` gathers the rounds into one table and a PNG of the distance over rounds.

use super::{read_set, Kind};
use crate::engine::executor::StageIo;
use crate::engine::graph::KindId;
use crate::engine::table::{read_parquet, to_parquet, Column};
use anyhow::{ensure, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::json;
use stages::candle::{Device, Tensor};
use stages::codec::decode_pseudo_negatives;
use stages::nn::{Classifier, NetConfig, Shape3};
use stages::quality;
use stages::rng::Rng;

pub struct Quality;

/// Input: the round's samples (a synthesize stage's pseudo-negatives).
pub const SAMPLES: &str = "samples";
/// Input: real images (the load stage's test set; its training crops for textures).
pub const REAL: &str = "real";
/// Input (optional): a classifier trained on the real labelled images.
pub const JUDGE: &str = "judge";
/// Output: one row: round and the measured numbers (NaN where not measured).
pub const TABLE: &str = "quality.parquet";

/// Summary metrics.
pub const INCEPTION_SCORE: &str = "inception_score";
pub const FRECHET: &str = "frechet_distance";
pub const GRAM: &str = "gram_distance";

#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Measure {
    /// Inception-style score and Fréchet distance by the judge.
    Judge,
    /// Fréchet distance on a fixed random net's features (no labels to train a judge on).
    RandomFeatures,
    /// Gram-matrix distance on windows (textures).
    Texture,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Params {
    pub round: u32,
    pub measure: Measure,
    /// The judging net: the judge's architecture, or the random net's.
    pub net: NetConfig,
    /// At most this many samples and as many real images are compared.
    pub count: usize,
    pub batch_size: usize,
    /// The random net's weights and the windows drawn from samples.
    pub seed: u64,
}

impl Kind for Quality {
    const ID: KindId = KindId { name: "quality", version: 1 };
    type Params = Params;
    const OUTPUTS: &'static [&'static str] = &[TABLE];
    fn run(p: Params, io: &mut StageIo, device: &Device) -> Result<()> {
        run(p, io, device)
    }
}

/// Features of the net's last layer with activations, averaged over positions.
fn pooled_features(net: &dyn Classifier, x: &[f32], shape: Shape3, batch_size: usize, device: &Device) -> Result<(Vec<f32>, Vec<Vec<f32>>, usize)> {
    let d = shape.0 * shape.1 * shape.2;
    let (mut features, mut logits, mut dim) = (Vec::new(), Vec::new(), 0);
    for chunk in x.chunks(batch_size.max(1) * d) {
        let n = chunk.len() / d;
        let t = Tensor::from_vec(chunk.to_vec(), (n, shape.0, shape.1, shape.2), device)?;
        let (acts, out) = net.activations(&t)?;
        let last = acts.last().context("the net exposes no activations")?;
        // N x H x W x C -> N x C
        let pooled = last.mean(1)?.mean(1)?;
        dim = pooled.dim(1)?;
        features.extend(pooled.flatten_all()?.to_vec1::<f32>()?);
        logits.extend(out.to_vec2::<f32>()?);
    }
    Ok((features, logits, dim))
}

/// `per_image` random windows of `shape`'s size from each image of `big`, drawn as training
/// draws them (`stages::train::random_window`).
fn windows(images: &[f32], big: Shape3, shape: Shape3, per_image: usize, rng: &mut Rng) -> Vec<f32> {
    let mut out = Vec::new();
    for image in images.chunks(big.0 * big.1 * big.2) {
        for _ in 0..per_image {
            stages::train::random_window(image, big, shape, rng, &mut out);
        }
    }
    out
}

fn run(p: Params, io: &mut StageIo, device: &Device) -> Result<()> {
    let shape = p.net.shape();
    let d = shape.0 * shape.1 * shape.2;
    let samples = decode_pseudo_negatives(&io.read(SAMPLES)?).context("input samples")?;
    let (real, _) = read_set(io, REAL)?;
    ensure!(samples.shape.0 == shape.0 && samples.shape.1 >= shape.1 && samples.shape.2 >= shape.2, "stage {}: samples of {:?} for a net of {shape:?}", io.stage_id(), samples.shape);
    let mut rng = Rng::new(p.seed);
    let net = if io.has_input(JUDGE) { p.net.load(&io.read(JUDGE)?, device)? } else { p.net.build(&mut Rng::new(p.seed), device)? };
    let n_real = (real.len() / d).min(p.count);
    let real = &real[..n_real * d];
    let (mut is, mut fid, mut gram) = (f64::NAN, f64::NAN, f64::NAN);
    match p.measure {
        Measure::Texture => {
            let per_image = p.count.div_ceil(samples.classes.len().max(1)).max(1);
            let mut synth = windows(&samples.images, samples.shape, shape, per_image, &mut rng);
            synth.truncate(p.count * d);
            gram = quality::gram_distance(net.as_ref(), real, &synth, shape, device)?;
        }
        Measure::Judge | Measure::RandomFeatures => {
            ensure!(samples.shape == shape, "stage {}: samples of {:?}, expected the net's {shape:?}", io.stage_id(), samples.shape);
            let n = samples.classes.len().min(p.count);
            let (fs, logits, dim) = pooled_features(net.as_ref(), &samples.images[..n * d], shape, p.batch_size, device)?;
            let (fr, _, _) = pooled_features(net.as_ref(), real, shape, p.batch_size, device)?;
            fid = quality::frechet_distance(&fs, &fr, dim);
            if p.measure == Measure::Judge {
                is = quality::inception_score(&quality::softmax_rows(&logits));
            }
        }
    }
    io.write(
        TABLE,
        &to_parquet(vec![
            ("round", Column::U32(vec![p.round])),
            (INCEPTION_SCORE, Column::F64(vec![is])),
            (FRECHET, Column::F64(vec![fid])),
            (GRAM, Column::F64(vec![gram])),
        ])?,
    )?;
    let mut line = Vec::new();
    for (name, v, label) in [(INCEPTION_SCORE, is, "inception-style score"), (FRECHET, fid, "Fréchet distance"), (GRAM, gram, "Gram distance")] {
        if v.is_finite() {
            io.summary(name, json!(v));
            line.push(format!("{label} {v:.4}"));
        }
    }
    let by = match p.measure {
        Measure::Judge => "by the judge",
        Measure::RandomFeatures => "on random-net features",
        Measure::Texture => "on random-net Gram matrices",
    };
    io.summary("line", json!(format!("{} {by}", line.join(", "))));
    Ok(())
}

/// `quality-curve`: every round's quality in one table, and a PNG of each measured number
/// over rounds.
pub struct QualityCurve;

/// Input: round r's quality table (zero-padded so names sort in round order).
pub fn round_table(round: u32) -> String {
    format!("{ROUND_TABLE}{round:04}")
}
const ROUND_TABLE: &str = "quality.";

/// Output: the rows of every round.
pub const CURVE_TABLE: &str = "quality_by_round.parquet";
/// Output: the plot.
pub const CURVE_PNG: &str = "quality.png";

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CurveParams {
    /// The run's title line.
    pub title: String,
}

impl Kind for QualityCurve {
    const ID: KindId = KindId { name: "quality-curve", version: 1 };
    type Params = CurveParams;
    const OUTPUTS: &'static [&'static str] = &[CURVE_TABLE, CURVE_PNG];
    fn run(p: CurveParams, io: &mut StageIo, _device: &Device) -> Result<()> {
        use arrow_array::{Array, Float64Array, UInt32Array};
        let mut rows: Vec<(u32, [f64; 3])> = Vec::new();
        for name in io.input_names(ROUND_TABLE) {
            for b in read_parquet(io.read(&name)?)? {
                let col = |n: &str| b.column_by_name(n).and_then(|c| c.as_any().downcast_ref::<Float64Array>().cloned()).with_context(|| format!("input {name}: no column {n}"));
                let round = b.column_by_name("round").and_then(|c| c.as_any().downcast_ref::<UInt32Array>().cloned()).with_context(|| format!("input {name}: no column round"))?;
                let (is, fid, gram) = (col(INCEPTION_SCORE)?, col(FRECHET)?, col(GRAM)?);
                for i in 0..b.num_rows() {
                    rows.push((round.value(i), [is.value(i), fid.value(i), gram.value(i)]));
                }
            }
        }
        rows.sort_by_key(|r| r.0);
        io.write(
            CURVE_TABLE,
            &to_parquet(vec![
                ("round", Column::U32(rows.iter().map(|r| r.0).collect())),
                (INCEPTION_SCORE, Column::F64(rows.iter().map(|r| r.1[0]).collect())),
                (FRECHET, Column::F64(rows.iter().map(|r| r.1[1]).collect())),
                (GRAM, Column::F64(rows.iter().map(|r| r.1[2]).collect())),
            ])?,
        )?;
        let names = ["inception-style score", "Fréchet distance", "Gram distance"];
        // the distances (lower is better) share an axis; the score, on another scale, is
        // in the table
        let series: Vec<stages::plot::Series> = (1..3)
            .filter(|&k| rows.iter().any(|r| r.1[k].is_finite()))
            .map(|k| stages::plot::Series {
                name: names[k].to_string(),
                points: rows.iter().filter(|r| r.1[k].is_finite()).map(|r| stages::plot::Point { x: r.0 as f64, mean: r.1[k], sd: 0.0 }).collect(),
            })
            .collect();
        ensure!(!series.is_empty(), "stage {}: no round measured anything", io.stage_id());
        let chart = stages::plot::Chart { title: &p.title, x_label: "round", y_label: "distance to real images (lower is better)", log_x: false, series: &series };
        io.write(CURVE_PNG, &stages::plot::line_chart_png(&chart, 800, 500)?)?;
        let last = rows.last().context("no rounds")?;
        let shown: Vec<String> = (0..3).filter(|&k| last.1[k].is_finite()).map(|k| format!("{} {:.4}", names[k], last.1[k])).collect();
        io.summary("line", json!(format!("{} rounds; round {}: {}", rows.len(), last.0, shown.join(", "))));
        Ok(())
    }
}
