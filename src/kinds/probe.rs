//! `probe`: the semi-supervised probe of the IGM paper (4.5) on one classifier, or on a
//! random-weights net of the same architecture (no checkpoint input: the floor). The
//! features of the net's last three layers feed an L2-SVM trained on `labels` random
//! training examples, C chosen on validation, test error measured; `draws` times. Any
//! checkpoint works, so ICN, WINN and IGM features compare on the same footing.

use super::{read_set, Kind};
use crate::engine::executor::StageIo;
use crate::engine::graph::KindId;
use crate::engine::table::{to_parquet, Column};
use crate::UserError;
use anyhow::Result;
use serde::{Deserialize, Serialize};
use serde_json::json;
use stages::candle::Device;
use stages::nn::NetConfig;
use stages::probe::{self, ProbeConfig, Split, LAYERS};
use stages::rng::Rng;

pub struct Probe;

/// Inputs: the image sets of the load stage, and the classifier (absent: random weights).
pub const TRAIN: &str = "train";
pub const VALIDATION: &str = "validation";
pub const TEST: &str = "test";
pub const CHECKPOINT: &str = "checkpoint";
/// Output: a row per draw (draw, c, validation_error, test_error).
pub const TABLE: &str = "probe.parquet";
/// Summary: mean and sd over draws of the test error.
pub const TEST_ERROR: &str = "test_error";
pub const TEST_ERROR_SD: &str = "test_error_sd";

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Params {
    pub net: NetConfig,
    pub labels: usize,
    pub draws: usize,
    pub c_grid: Vec<f64>,
    pub batch_size: usize,
    /// Seeds the draws, the SVMs' visiting order and, without a checkpoint, the weights.
    pub seed: u64,
}

impl Kind for Probe {
    const ID: KindId = KindId { name: "probe", version: 1 };
    type Params = Params;
    const OUTPUTS: &'static [&'static str] = &[TABLE];
    fn run(p: Params, io: &mut StageIo, device: &Device) -> Result<()> {
        run(p, io, device)
    }
}

fn run(p: Params, io: &mut StageIo, device: &Device) -> Result<()> {
    let trained = !io.input_names(CHECKPOINT).is_empty();
    let net = if trained { p.net.load(&io.read(CHECKPOINT)?, device)? } else { p.net.build(&mut Rng::new(p.seed), device)? };
    let (tx, ty) = read_set(io, TRAIN)?;
    if ty.len() < p.labels {
        return Err(UserError(format!("probe.labels = {}: the training set has only {} examples", p.labels, ty.len())).into());
    }
    let (vx, vy) = read_set(io, VALIDATION)?;
    let (sx, sy) = read_set(io, TEST)?;
    let mut meter = io.progress((ty.len() + vy.len() + sy.len()) as u64, "images", "features");
    let mut features = |x: &[f32], n: usize| -> Result<(Vec<f32>, usize)> {
        let f = probe::features(net.as_ref(), x, p.net.shape(), LAYERS, p.batch_size, device)?;
        if meter.inc(n as u64).is_break() {
            return Err(stages::stopped().into());
        }
        Ok(f)
    };
    let (tf, dim) = features(&tx, ty.len())?;
    let (vf, _) = features(&vx, vy.len())?;
    let (sf, _) = features(&sx, sy.len())?;
    meter.finish();
    // the classes of the labels, not of the net: an unsupervised critic has one logit
    let classes = ty.iter().chain(&vy).chain(&sy).max().map_or(1, |&m| m as usize + 1);
    let cfg = ProbeConfig { labels: p.labels, draws: p.draws, c_grid: p.c_grid.clone(), seed: p.seed };
    let mut meter = io.progress(p.draws as u64, "draws", &format!("SVMs on {} labels", p.labels));
    let draws = probe::probe(Split { features: &tf, labels: &ty }, Split { features: &vf, labels: &vy }, Split { features: &sf, labels: &sy }, dim, classes, &cfg, &mut |_| meter.inc(1))?;
    meter.finish();
    let errors: Vec<f64> = draws.iter().map(|d| d.test_error).collect();
    let (mean, sd) = crate::pipeline::sweep::mean_sd(&errors);
    io.write(
        TABLE,
        &to_parquet(vec![
            ("draw", Column::U32((0..draws.len() as u32).collect())),
            ("c", Column::F64(draws.iter().map(|d| d.c).collect())),
            ("validation_error", Column::F64(draws.iter().map(|d| d.validation_error).collect())),
            ("test_error", Column::F64(errors)),
        ])?,
    )?;
    io.summary(TEST_ERROR, json!(mean));
    io.summary(TEST_ERROR_SD, json!(sd));
    io.summary("features", json!(dim));
    let what = if trained { "trained" } else { "random-weights" };
    io.summary("line", json!(format!("{what} features ({dim} of the last {LAYERS} layers), {} labels: test error {:.2}% +- {:.2}% over {} draws", p.labels, 100.0 * mean, 100.0 * sd, draws.len())));
    Ok(())
}
