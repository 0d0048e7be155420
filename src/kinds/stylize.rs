//! `stylize`: a content image restyled by a trained texture model (IGM §5.1, style
//! transfer), through [`stages::style::stylize`]: descent on
//! E(x) = a ||x - c||_2 - (1 - a) Σ_t f_t(x) from x = c, the style term over random
//! windows of the nets' patch size, every net of the model at once.
//!
//! Inputs: the nets as `critic.0000`, `critic.0001`, ... (the naming of [`super::sample`],
//! in the model's order) and the content image `content`, a file outside the store (PNG or
//! JPEG, any size at least the nets' patch), keyed by its bytes. The content is converted
//! to the nets' channels (RGB to grey by Rec. 601 luma, grey to RGB by copying) and
//! scaled to [-1, 1] as every loader scales images.
//!
//! Outputs: [`STYLED`] (the image, C x H x W in [-1, 1], as one image of
//! pseudo-negatives safetensors), [`STYLED_PNG`] (the same image as a PNG, the content's
//! size), and a summary: the steps, the final Σf (the last step's windows), the content's
//! and the result's mean Σf over one fixed set of windows (the same for both and for every
//! seed, so that they compare), the distance to the content and a `line`.
//!
//! Nothing is saved mid-way: an interrupted stage reruns from its start. The same seed
//! gives the same bytes.

use super::sample::critic;
use super::Kind;
use crate::engine::executor::StageIo;
use crate::engine::graph::{derive_seed, InputRef, KindId, StageDef};
use crate::UserError;
use anyhow::Result;
use serde::{Deserialize, Serialize};
use serde_json::json;
use stages::candle::Device;
use stages::codec::{encode_pseudo_negatives, PseudoNegatives};
use stages::data::{byte_to_unit, folder};
use stages::grid::encode_grid_png;
use stages::nn::{Classifier, NetConfig, Shape3};
use stages::patch::patch_positions;
use stages::rng::Rng;
use stages::style::{style_gradient, stylize, StyleConfig};
use stages::synthesize::Step;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

pub struct Stylize;

/// Output: the restyled image, C x H x W in [-1, 1] (one image, class 0).
pub const STYLED: &str = "styled.safetensors";
/// Output: the restyled image as a PNG of the content's size (grey or RGB as the nets).
pub const STYLED_PNG: &str = "styled.png";
/// Input: the content image file.
pub const CONTENT: &str = "content";

/// Windows per step at most, and steps at most: bounds for the command line.
pub const MAX_PATCHES: usize = 65_536;
pub const MAX_STEPS: u32 = 1_000_000;
/// The summary scores the content and the result on at least this many windows.
const SCORE_WINDOWS: usize = 64;

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// Every net's architecture (square inputs: their side is the patch).
    pub net: NetConfig,
    /// The content weight in [0, 1]; 1 - a weighs the style.
    pub a: f64,
    pub patches_per_step: usize,
    pub step: Step,
    pub lr: f64,
    pub steps: u32,
    pub seed: u64,
}

impl Params {
    /// The paper's settings ([`StyleConfig::igm`]: Adam lr 0.01, betas (0.9, 0.99)) with
    /// `a`, `patches_per_step` and `steps` as given.
    pub fn igm(net: NetConfig, a: f64, patches_per_step: usize, steps: u32, seed: u64) -> Self {
        let c = StyleConfig::igm(steps);
        Params { net, a, patches_per_step, step: c.step, lr: c.lr, steps, seed }
    }

    fn config(&self) -> StyleConfig {
        StyleConfig { a: self.a, patch: self.net.height, patches_per_step: self.patches_per_step, step: self.step, lr: self.lr, steps: self.steps }
    }
}

impl Kind for Stylize {
    const ID: KindId = KindId { name: "stylize", version: 1 };
    type Params = Params;
    const OUTPUTS: &'static [&'static str] = &[STYLED, STYLED_PNG];
    fn run(p: Params, io: &mut StageIo, device: &Device) -> Result<()> {
        run(p, io, device)
    }
}

/// A stylize stage restyling the image file `content` by the nets `critics` (in order).
pub fn stage(id: String, params: &Params, critics: &[InputRef], content: PathBuf) -> StageDef {
    let mut inputs: Vec<(String, InputRef)> = critics.iter().enumerate().map(|(c, r)| (critic(c), r.clone())).collect();
    inputs.push((CONTENT.to_string(), InputRef::File(content)));
    super::place::<Stylize>(id, params, inputs)
}

/// Why the settings cannot restyle with nets of `net`, if they cannot (bad input; each
/// message names the flag of `pipe stylize`).
pub fn check_params(p: &Params) -> Option<String> {
    if !(0.0..=1.0).contains(&p.a) {
        return Some(format!("--a {}: expected a content weight in [0, 1] (1 keeps the content, 0 weighs only the style; the paper uses 0.3)", p.a));
    }
    if p.steps == 0 || p.steps > MAX_STEPS {
        return Some(format!("--steps {}: expected 1 to {MAX_STEPS} descent steps", p.steps));
    }
    if p.patches_per_step == 0 || p.patches_per_step > MAX_PATCHES {
        return Some(format!("--patches {}: expected 1 to {MAX_PATCHES} windows per step", p.patches_per_step));
    }
    if p.net.height != p.net.image_width {
        return Some(format!("the model's nets take {}x{} inputs; style transfer needs square patches (a texture model)", p.net.height, p.net.image_width));
    }
    None
}

/// The content image `bytes` (read from `source`) as the nets of `net` see it: C x H x W in
/// [-1, 1] and its shape; or why it cannot be restyled by them (bad input, naming the file,
/// what it held and what was expected).
pub fn content_image(source: &Path, bytes: Vec<u8>, net: &NetConfig) -> std::result::Result<(Vec<f32>, Shape3), String> {
    let (pixels, h, w) = folder::decode_image(source, bytes, net.channels).map_err(|e| format!("content image {e}"))?;
    let p = net.height;
    if h < p || w < p {
        return Err(format!(
            "content image {}: it is {h}x{w} (height x width), smaller than the {p}x{p} patches the model's nets were trained on; expected at least {p}x{p}",
            source.display()
        ));
    }
    Ok((pixels.into_iter().map(byte_to_unit).collect(), (net.channels, h, w)))
}

fn run(p: Params, io: &mut StageIo, device: &Device) -> Result<()> {
    if let Some(why) = check_params(&p) {
        return Err(UserError(why).into());
    }
    let source = io.file(CONTENT)?;
    let (content, shape) = content_image(&source, io.read(CONTENT)?, &p.net).map_err(UserError)?;
    let names: Vec<String> = (0..).map(critic).take_while(|n| io.has_input(n)).collect();
    anyhow::ensure!(!names.is_empty(), "stage {}: no critic input", io.stage_id());
    let nets = names.iter().map(|n| Ok(p.net.load(&io.read(n)?, device)?)).collect::<Result<Vec<Box<dyn Classifier>>>>()?;
    let critics: Vec<&dyn Classifier> = nets.iter().map(|n| n.as_ref()).collect();
    let cfg = p.config();

    let mut meter = io.progress(p.steps as u64, "steps", "style transfer");
    let mut rng = Rng::new(p.seed);
    let styled = {
        let stop = io.stop_requested();
        let mut on_step = |step: u32| match step {
            0 if stop => ControlFlow::Break(()),
            0 => ControlFlow::Continue(()),
            _ => meter.inc(1),
        };
        stylize(&critics, &content, shape, &cfg, &mut rng, device, &mut on_step)
    }
    .map_err(|e| if io.stop_requested() { io.interrupted("style transfer saves nothing mid-way; it reruns from its start") } else { e.into() })?;
    meter.finish();

    // the content and the result scored on one set of windows, the same whatever the seed,
    // so that the two compare (and the content's score is the content's alone)
    let (c, h, w) = shape;
    let at = patch_positions(shape, cfg.patch, p.patches_per_step.max(SCORE_WINDOWS), &mut Rng::new(derive_seed("stylize-score")));
    let content_f = style_gradient(&critics, &content, shape, cfg.patch, &at, device)?.mean_f;
    let styled_f = style_gradient(&critics, &styled.image, shape, cfg.patch, &at, device)?.mean_f;

    io.write(STYLED, &encode_pseudo_negatives(&PseudoNegatives { images: styled.image.clone(), classes: vec![0], shape })?)?;
    io.write(STYLED_PNG, &encode_grid_png(&styled.image, 1, c, h, w, 1, 0)?)?;
    io.summary("steps", json!(styled.steps));
    io.summary("a", json!(p.a));
    io.summary("critics", json!(critics.len()));
    io.summary("height", json!(h));
    io.summary("width", json!(w));
    io.summary("final_f", json!(styled.final_f));
    io.summary("content_f", json!(content_f));
    io.summary("styled_f", json!(styled_f));
    io.summary("score_windows", json!(at.len()));
    io.summary("content_distance", json!(styled.distance));
    io.summary(
        "line",
        json!(format!(
            "{h}x{w} restyled through {} net(s), a {}, {} steps: mean Σf {content_f:.3} -> {styled_f:.3} over {} windows, distance to the content {:.3}",
            critics.len(),
            p.a,
            styled.steps,
            at.len(),
            styled.distance
        )),
    );
    Ok(())
}
