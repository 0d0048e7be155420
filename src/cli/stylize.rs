//! `pipe stylize`: a content image restyled by a trained texture model (IGM §5.1), as a
//! `stylize` stage run through the store like any other (cached by its key, which holds
//! the content's bytes; under a run record of its own), then copied out as one PNG.
//!
//! Every bad input is found before anything is written: the flags, the model (as `pipe
//! sample` names it, through [`super::sample::resolve_model`]) and the content image, which
//! is decoded here once to check it.

use super::sample::{resolve_model, Model};
use super::StoreArg;
use crate::audit::runs::new_record;
use crate::engine::executor::{self, Runner};
use crate::engine::graph::InputRef;
use crate::engine::interrupt;
use crate::engine::store::Store;
use crate::kinds::stylize::{self, Stylize};
use crate::kinds::{Kind, Kinds};
use crate::UserError;
use anyhow::{Context, Result};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// The style: a run (its id or a unique prefix) of `pipeline.method = "igm"` or
    /// `"winn"`, unsupervised, trained on a texture (its nets in sampling order, all at
    /// once); RUN:train/N for the net of one round; or a net's checkpoint digest (or a
    /// unique prefix), as `pipe sample` takes it.
    model: String,
    /// The content image: PNG or JPEG, any size at least the nets' patch; converted to the
    /// nets' channels (grey or RGB).
    content: PathBuf,
    /// Where the restyled image goes: a PNG of the content's size (its folder is created).
    #[arg(long, value_name = "OUT.png")]
    out: PathBuf,
    /// The weight a of the content term in E(x) = a ||x - content|| - (1 - a) Σ_t f_t(x),
    /// in [0, 1]: 1 returns the content, 0 weighs the style alone.
    #[arg(long = "a", value_name = "A", default_value_t = 0.3, allow_negative_numbers = true)]
    a: f64,
    /// Descent steps (Adam, lr 0.01, betas (0.9, 0.99)).
    #[arg(long, default_value_t = 200)]
    steps: u32,
    /// Seed of the random windows: the same seed gives the same image.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Windows of the nets' patch size drawn at each step (each through every net).
    #[arg(long, value_name = "N", default_value_t = 200)]
    patches: usize,
    #[command(flatten)]
    store: StoreArg,
}

pub fn run(a: &Args) -> Result<()> {
    if a.out.is_dir() {
        return Err(UserError(format!("--out {}: is a directory; expected the path of the PNG to write", a.out.display())).into());
    }
    let store = Store::open_existing(&a.store.store)?;
    let Model { run: id, stages, checkpoints, net, pipeline } = resolve_model(&store, &a.model, "to restyle with")?;
    let params = stylize::Params::igm(net.clone(), a.a, a.patches, a.steps, a.seed);
    if let Some(why) = stylize::check_params(&params) {
        return Err(UserError(why).into());
    }
    // the content is checked here, before any record is written, as the stage will read it
    let content = std::fs::canonicalize(&a.content).map_err(|e| UserError(format!("content image {}: {e}; expected a PNG or JPEG file", a.content.display())))?;
    if !content.is_file() {
        return Err(UserError(format!("content image {}: is not a file; expected a PNG or JPEG file", a.content.display())).into());
    }
    let bytes = std::fs::read(&content).map_err(|e| UserError(format!("content image {}: {e}", a.content.display())))?;
    let (_, (_, h, w)) = stylize::content_image(&a.content, bytes, &net).map_err(UserError)?;

    let stage = stylize::stage(Stylize::ID.name.to_string(), &params, &checkpoints.into_iter().map(InputRef::Object).collect::<Vec<_>>(), content);
    let runner = Kinds::for_device(&pipeline.spec.pipeline.device)?;
    let _lock = store.lock()?;
    interrupt::install();
    let mut rec = new_record(&format!("{}:{}", pipeline.name, Stylize::ID.name), &pipeline, runner.device());
    let result = executor::run(&store, std::slice::from_ref(&stage), &runner, &mut rec, &|_| None, crate::engine::progress::Display::detect(false));
    if let Err(e) = result {
        // bad input the checks above missed: refused as if up front, leaving no record
        if UserError::is_in(&e) && rec.stages.is_empty() {
            store.remove_runs(std::slice::from_ref(&rec.id))?;
        }
        return Err(e);
    }
    let done = rec.stages.last().context("the stylize stage did not run")?;
    let png = done.outputs.get(stylize::STYLED_PNG).with_context(|| format!("the stylize stage wrote no {}", stylize::STYLED_PNG))?;
    if let Some(dir) = a.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(&a.out, store.read(&png.digest)?).with_context(|| format!("writing {}", a.out.display()))?;
    let f = |k: &str| done.summary.get(k).and_then(serde_json::Value::as_f64).map_or("?".into(), |v| format!("{v:.3}"));
    println!(
        "{} ({h}x{w}) restyled by run {id} ({}), a {}, {} steps: mean Σf {} -> {}, distance {}: {}",
        a.content.display(),
        stages.join(", "),
        a.a,
        a.steps,
        f("content_f"),
        f("styled_f"),
        f("content_distance"),
        a.out.display()
    );
    Ok(())
}
