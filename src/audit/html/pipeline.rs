//! The page of a pipeline or a sweep: error per round with its spread over seeds, the
//! selected round, synthesis per round (steps and f_k at stop), sample grids, attacks,
//! the sweep's two-way attack, time per stage kind, and its runs.
//!
//! A pipeline counts, like `pipe report`, the latest ok run of each (setting, seed); every
//! aggregate over runs is one of `report::summaries`' queries, or (synthesis) a query of the
//! same kind over the pseudo-negative tables of those runs.

use super::layout::{esc, legend, link, num, pct, round_shown, table, Col, Row};
use super::{f64s, figures, strs, svg, Ctx, Group};
use crate::audit::report::{latest_runs, summaries};
use crate::audit::runs::shown_status;
use crate::audit::study;
use crate::engine::executor::{RunRecord, RunStage};
use crate::engine::table::read_parquet;
use crate::kinds::attack::{self, Attack};
use crate::kinds::synthesize::{self, Synthesize};
use crate::kinds::Kind;
use crate::methods::{rounds_of, Rounds};
use anyhow::{Context, Result};
use arrow_array::cast::AsArray;
use arrow_array::types::{Float32Type, UInt32Type};
use polars::prelude::{col, lit, DataFrame, Expr, IntoLazy, LazyFrame, NamedFrom, QuantileMethod, Series, SortMultipleOptions};
use std::fmt::Write;

/// Pages of pipelines live one folder down.
const DEPTH: usize = 1;

/// The settings a page compares, in order, each with its colour (its index) and the name
/// shown for it.
struct Settings(Vec<(String, String)>);

impl Settings {
    /// A sweep member is shown by its case and swept values apart from the seed; a plain
    /// run by its `--set` overrides.
    fn new(kept: &[Kept]) -> Settings {
        let mut out: Vec<(String, String)> = Vec::new();
        for k in kept {
            if out.iter().any(|(s, _)| *s == k.setting) {
                continue;
            }
            let member = k.run.member.as_deref().map(|m| m.split(' ').filter(|kv| !kv.starts_with("pipeline.seed=")).collect::<Vec<_>>().join(" "));
            let shown = match member.filter(|m| !m.is_empty()) {
                Some(m) => m,
                None if k.setting.is_empty() => "as in the file".to_string(),
                None => k.setting.clone(),
            };
            out.push((k.setting.clone(), shown));
        }
        Settings(out)
    }
    fn index(&self, setting: &str) -> usize {
        self.0.iter().position(|(s, _)| s == setting).unwrap_or(0)
    }
    fn shown(&self, setting: &str) -> String {
        self.0.iter().find(|(s, _)| s == setting).map_or_else(|| setting.to_string(), |(_, l)| l.clone())
    }
    /// The legend of a chart with a solid and (if `dashed`) a dashed line per setting of
    /// `drawn` (the settings column of its frame).
    fn legend(&self, drawn: &[String], solid: &str, dashed: Option<&str>) -> String {
        let mut entries = Vec::new();
        let shown: Vec<(usize, &String)> = self.0.iter().enumerate().filter(|(_, (s, _))| drawn.contains(s)).map(|(i, (_, l))| (i, l)).collect();
        for &(i, label) in &shown {
            let name = |what: &str| if shown.len() == 1 { what.to_string() } else { format!("{label}: {what}") };
            entries.push((i, false, name(solid)));
            if let Some(d) = dashed {
                entries.push((i, true, name(d)));
            }
        }
        legend(&entries)
    }
}

/// A run counted by the report: the latest ok run of its (setting, seed).
struct Kept<'a> {
    setting: String,
    seed: Option<f64>,
    run: &'a RunRecord,
}

fn kept_runs<'a>(g: &Group<'a>, lf: LazyFrame) -> Result<Vec<Kept<'a>>> {
    let df = latest_runs(lf).sort(["setting", "seed"], SortMultipleOptions::default()).collect()?;
    let (settings, seeds, runs) = (strs(&df, "setting")?, f64s(&df, "seed")?, strs(&df, "run")?);
    let mut kept = Vec::new();
    for ((setting, seed), id) in settings.into_iter().zip(seeds).zip(runs) {
        let run = g.runs.iter().find(|r| r.id == id).with_context(|| format!("run {id} of the report's rows has no record"))?;
        kept.push(Kept { setting, seed, run });
    }
    Ok(kept)
}

pub fn page(ctx: &mut Ctx, g: &Group, lf: LazyFrame, two_way: LazyFrame) -> Result<String> {
    let mut body = String::new();
    let kind = if g.is_sweep() { "sweep" } else { "pipeline" };
    let ok = g.runs.iter().filter(|r| r.status == "ok").count();
    let _ = writeln!(body, "<h1>{kind} {}</h1>\n<p class=\"note\">{} runs, {ok} ok. Each setting counts the latest ok run of each seed, as <code>pipe report</code> does: mean ± sd over those runs (n of them).</p>", esc(&g.name), g.runs.len());
    let rounds = g.runs.first().or(g.two_way.first()).map_or(crate::methods::icn::ROUNDS, |r| rounds_of(r));
    if !g.runs.is_empty() {
        let (errors, selected, attacks, time) = summaries(lf.clone(), &rounds);
        let kept = kept_runs(g, lf)?;
        let settings = Settings::new(&kept);
        body += &errors_section(&errors.collect()?, &settings, &rounds)?;
        body += &selected_section(&selected.collect()?, &settings)?;
        body += &synthesis_section(ctx, &kept, &settings)?;
        body += &grids_section(ctx, &kept, &settings)?;
        body += &attacks_section(ctx, &attacks.collect()?, &kept, &settings)?;
        body += &time_section("Time per stage kind", "time", &time.collect()?)?;
    }
    if let Some(r) = g.two_way.last() {
        body += &two_way_section(ctx, r)?;
        body += &time_section("Time of the two-way attacks", "time-two-way", &summaries(two_way, &rounds).3.collect()?)?;
    }
    body += &runs_section(ctx, g);
    Ok(super::layout::page(&format!("{kind} {}", g.name), DEPTH, &body))
}

/// A measure of one of the report's per-round frames: its name and its mean and sd columns.
struct Measure(&'static str, &'static str, &'static str);

/// Two measures per setting and round (mean ± sd over seeds, in %) of one of the report's
/// frames: their chart over rounds (the first solid, the second dashed; a measure without
/// values is left out), its legend, and the table `id`.
fn per_round(df: &DataFrame, settings: &Settings, id: &str, y_label: &str, measures: [Measure; 2]) -> Result<String> {
    let (set, round, n) = (strs(df, "setting")?, f64s(df, "round")?, f64s(df, "runs")?);
    let values = measures.iter().map(|m| Ok((f64s(df, m.1)?, f64s(df, m.2)?))).collect::<Result<Vec<_>>>()?;
    let drawn: Vec<bool> = values.iter().map(|(v, _)| v.iter().any(|v| v.is_some_and(f64::is_finite))).collect();
    let mut lines = Vec::new();
    for (i, (s, _)) in settings.0.iter().enumerate() {
        for (k, (ys, sds)) in values.iter().enumerate().filter(|(k, _)| drawn[*k]) {
            let points = (0..set.len()).filter(|&j| set[j] == *s).filter_map(|j| Some(svg::Point { x: round[j]?, y: ys[j].unwrap_or(f64::NAN), sd: sds[j] })).collect();
            lines.push(svg::Line { colour: i, dashed: k == 1, points });
        }
    }
    let rows: Vec<Row> = (0..set.len())
        .map(|j| {
            let mut cells = vec![esc(&settings.shown(&set[j])), round_shown(round[j]), round_shown(n[j])];
            cells.extend(values.iter().map(|(ys, sds)| pct(ys[j], sds[j])));
            Row { attrs: format!(r#" data-setting="{}" data-round="{}""#, esc(&set[j]), round_shown(round[j])), cells }
        })
        .collect();
    let heads = measures.iter().map(|m| format!("{} %", m.0)).collect::<Vec<_>>();
    let cols = [Col("setting", false), Col("round", true), Col("n", true), Col(&heads[0], true), Col(&heads[1], true)];
    Ok(format!(
        "{}\n{}\n{}",
        svg::line_chart("round", y_label, &lines),
        settings.legend(&set, measures[0].0, drawn[1].then_some(measures[1].0)),
        table(id, &cols, &rows)
    ))
}

fn errors_section(df: &DataFrame, settings: &Settings, rounds: &Rounds) -> Result<String> {
    if df.height() == 0 {
        return Ok(String::new());
    }
    let measures = [Measure("test error", "test_err", "test_sd"), Measure("validation error", "val_err", "val_sd")];
    Ok(format!(
        "<h2>Error per round</h2>\n<p class=\"note\">of <code>{}/t</code>, in % (solid: test, dashed: validation); error bars: ± one sd over seeds.</p>\n{}",
        rounds.reporter.name,
        per_round(df, settings, "errors", "error (%)", measures)?
    ))
}

fn selected_section(df: &DataFrame, settings: &Settings) -> Result<String> {
    if df.height() == 0 {
        return Ok(String::new());
    }
    let (set, n, round, val, test, test_sd) = (strs(df, "setting")?, f64s(df, "runs")?, f64s(df, "round")?, f64s(df, "val_err")?, f64s(df, "test_err")?, f64s(df, "test_sd")?);
    let rows: Vec<Row> = (0..set.len())
        .map(|j| Row {
            attrs: format!(r#" data-setting="{}""#, esc(&set[j])),
            cells: vec![esc(&settings.shown(&set[j])), round_shown(n[j]), round_shown(round[j]), pct(val[j], None), pct(test[j], test_sd[j])],
        })
        .collect();
    let cols = [Col("setting", false), Col("n", true), Col("round (mean)", true), Col("validation error %", true), Col("test error %", true)];
    Ok(format!("<h2>Selected round</h2>\n<p class=\"note\">the round each run keeps, chosen on validation error; its test error.</p>\n{}", table("selected", &cols, &rows)))
}

/// The pseudo-negatives of the counted runs, a row per sample: setting, round, steps and
/// f_k at stop (null where none was scored: p0 noise).
fn synthesis_frame(ctx: &Ctx, kept: &[Kept]) -> Result<DataFrame> {
    let (mut setting, mut round, mut steps, mut logit) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for k in kept {
        for s in k.run.stages.iter().filter(|s| s.kind == Synthesize::ID.name) {
            let Some(bytes) = super::object(ctx, s, synthesize::TABLE)? else { continue };
            for b in read_parquet(bytes).with_context(|| format!("{} of {} in run {}", synthesize::TABLE, s.stage, k.run.id))? {
                let column = |name: &str| b.column_by_name(name).with_context(|| format!("{} of {} has no `{name}` column", synthesize::TABLE, s.stage));
                let (r, st, f) = (column("round")?.as_primitive::<UInt32Type>(), column("steps")?.as_primitive::<UInt32Type>(), column("final_logit")?.as_primitive::<Float32Type>());
                for i in 0..b.num_rows() {
                    setting.push(k.setting.clone());
                    round.push(r.value(i));
                    steps.push(st.value(i) as f64);
                    logit.push(Some(f.value(i) as f64).filter(|v| v.is_finite()));
                }
            }
        }
    }
    Ok(DataFrame::new_infer_height(vec![
        Series::new("setting".into(), setting).into(),
        Series::new("round".into(), round).into(),
        Series::new("steps".into(), steps).into(),
        Series::new("logit".into(), logit).into(),
    ])?)
}

/// The five numbers and the mean of `c`, as `<c>_min` .. `<c>_max`, `<c>_mean`.
fn five(c: &str) -> Vec<Expr> {
    let q = |p: f64, name: &str| col(c).quantile(lit(p), QuantileMethod::Linear).alias(format!("{c}_{name}"));
    vec![q(0.0, "min"), q(0.25, "q1"), q(0.5, "median"), q(0.75, "q3"), q(1.0, "max"), col(c).mean().alias(format!("{c}_mean"))]
}

fn synthesis_section(ctx: &Ctx, kept: &[Kept], settings: &Settings) -> Result<String> {
    let frame = synthesis_frame(ctx, kept)?;
    if frame.height() == 0 {
        return Ok(String::new());
    }
    let mut aggs = vec![col("steps").count().alias("samples")];
    aggs.extend(five("steps"));
    aggs.extend(five("logit"));
    let df = frame.lazy().group_by([col("setting"), col("round")]).agg(aggs).sort(["setting", "round"], SortMultipleOptions::default()).collect()?;
    let (set, round, samples) = (strs(&df, "setting")?, f64s(&df, "round")?, f64s(&df, "samples")?);
    let stats = |c: &str| -> Result<[Vec<Option<f64>>; 6]> {
        Ok([f64s(&df, &format!("{c}_min"))?, f64s(&df, &format!("{c}_q1"))?, f64s(&df, &format!("{c}_median"))?, f64s(&df, &format!("{c}_q3"))?, f64s(&df, &format!("{c}_max"))?, f64s(&df, &format!("{c}_mean"))?])
    };
    let (steps, logit) = (stats("steps")?, stats("logit")?);
    let boxes = |s: &[Vec<Option<f64>>; 6]| -> Vec<svg::Box5> {
        let v = |k: usize, j: usize| s[k][j].unwrap_or(f64::NAN);
        (0..set.len())
            .filter_map(|j| Some(svg::Box5 { x: round[j]?, colour: settings.index(&set[j]), min: v(0, j), q1: v(1, j), median: v(2, j), q3: v(3, j), max: v(4, j), mean: v(5, j) }))
            .collect()
    };
    let n = settings.0.len();
    let spread = |s: &[Vec<Option<f64>>; 6], j: usize, d: usize| format!("{} ({} – {})", num(s[2][j], d), num(s[1][j], d), num(s[3][j], d));
    let rows: Vec<Row> = (0..set.len())
        .map(|j| Row {
            attrs: format!(r#" data-setting="{}" data-round="{}""#, esc(&set[j]), round_shown(round[j])),
            cells: vec![
                esc(&settings.shown(&set[j])),
                round_shown(round[j]),
                round_shown(samples[j]),
                num(steps[5][j], 1),
                spread(&steps, j, 0),
                num(steps[4][j], 0),
                num(logit[5][j], 2),
                spread(&logit, j, 2),
                format!("{} – {}", num(logit[0][j], 2), num(logit[4][j], 2)),
            ],
        })
        .collect();
    let cols = [
        Col("setting", false),
        Col("round", true),
        Col("samples", true),
        Col("steps mean", true),
        Col("steps median (q1 – q3)", true),
        Col("steps max", true),
        Col("f_k mean", true),
        Col("f_k median (q1 – q3)", true),
        Col("f_k min – max", true),
    ];
    let legend = settings.legend(&set, "pseudo-negatives", None);
    Ok(format!(
        "<h2>Synthesis per round</h2>\n<p class=\"note\">every pseudo-negative of the counted runs (seeds pooled): box q1–q3, line at the median, whiskers min–max, dot at the mean. f_k: the logit of its class where synthesis stopped (f_k &gt; 0: classified as k).</p>\n<h3>gradient steps per sample</h3>\n{}\n<h3>f_k at stop</h3>\n{}\n{legend}\n{}",
        svg::box_chart("round", "steps", &boxes(&steps), n),
        svg::box_chart("round", "f_k at stop", &boxes(&logit), n),
        table("synthesis", &cols, &rows)
    ))
}

fn seed_text(k: &Kept) -> String {
    k.seed.map(|s| format!("seed {s:.0}, ")).unwrap_or_default()
}

/// The pictures (`output`) of the `kind` stages of each setting's first counted run (its
/// lowest seed), which stands for the setting on this page; every run's page has its own.
fn setting_figures(ctx: &mut Ctx, kept: &[Kept], settings: &Settings, kind: &str, output: &str, caption: &dyn Fn(&RunStage) -> String) -> Result<String> {
    let mut out = String::new();
    for (s, _) in &settings.0 {
        let Some(k) = kept.iter().find(|k| k.setting == *s) else { continue };
        let figs = figures(ctx, DEPTH, k.run.stages.iter().filter(|st| st.kind == kind).map(|st| (st, caption(st))), output)?;
        if !figs.is_empty() {
            let _ = write!(out, "<h3>{}: {}run {}</h3>\n{figs}", esc(&settings.shown(s)), seed_text(k), link(DEPTH, &super::run::href(&k.run.id), &k.run.id));
        }
    }
    Ok(out)
}

fn grids_section(ctx: &mut Ctx, kept: &[Kept], settings: &Settings) -> Result<String> {
    let caption = |s: &RunStage| format!("round {} ({})", crate::engine::graph::round_of(&s.stage).unwrap_or(0), esc(&s.stage));
    let out = setting_figures(ctx, kept, settings, Synthesize::ID.name, synthesize::GRID, &caption)?;
    if out.is_empty() {
        return Ok(out);
    }
    Ok(format!("<h2>Pseudo-negatives per round</h2>\n<p class=\"note\">each synthesis stage's grid (a row per class), for the lowest seed of each setting; every run's page has its own.</p>\n{out}"))
}

fn attacks_section(ctx: &mut Ctx, df: &DataFrame, kept: &[Kept], settings: &Settings) -> Result<String> {
    if df.height() == 0 {
        return Ok(String::new());
    }
    let measures = [Measure("adversarial error", "adv_err", "adv_sd"), Measure("corrected by round 0", "corrected", "corrected_sd")];
    let chart = per_round(df, settings, "attacks", "%", measures)?;
    let figs = setting_figures(ctx, kept, settings, Attack::ID.name, attack::FIGURE, &|s| esc(s.summary["line"].as_str().unwrap_or(&s.stage)))?;
    Ok(format!(
        "<h2>Attacks per round</h2>\n<p class=\"note\">adversarial error of round t's classifier on examples made from test images it gets right (solid), and the share of those round 0's plain CNN still classifies correctly (dashed), in %.</p>\n{chart}\n<p class=\"note\">figures: the first fooling example of each class; rows: original, perturbation (full contrast), adversarial.</p>\n{figs}"
    ))
}

fn time_section(title: &str, id: &str, df: &DataFrame) -> Result<String> {
    if df.height() == 0 {
        return Ok(String::new());
    }
    let (kind, ran, cached, seconds) = (strs(df, "kind")?, f64s(df, "ran")?, f64s(df, "cached")?, f64s(df, "seconds")?);
    let bars: Vec<(String, f64)> = kind.iter().zip(&seconds).map(|(k, s)| (k.clone(), s.unwrap_or(0.0))).collect();
    let rows: Vec<Row> = (0..kind.len())
        .map(|j| Row { attrs: format!(r#" data-kind="{}""#, esc(&kind[j])), cells: vec![esc(&kind[j]), round_shown(ran[j]), round_shown(cached[j]), num(seconds[j], 2)] })
        .collect();
    let cols = [Col("kind", false), Col("ran", true), Col("cached", true), Col("seconds", true)];
    Ok(format!(
        "<h2>{}</h2>\n<p class=\"note\">seconds of the stages that ran (not cached), all runs.</p>\n{}\n{}",
        esc(title),
        svg::bar_chart(&bars, "s"),
        table(id, &cols, &rows)
    ))
}

fn two_way_section(ctx: &mut Ctx, r: &RunRecord) -> Result<String> {
    let t = study::stored_two_way(r);
    if t.is_empty() {
        return Ok(String::new());
    }
    let rows: Vec<Row> = t
        .iter()
        .map(|t| {
            let (ae, ae_sd) = t.adversarial_error_pct;
            let (cr, cr_sd) = t.correction_rate_pct;
            let setting = if t.setting.is_empty() { "–".to_string() } else { esc(&t.setting) };
            let count = format!("{} of {} fool {}; {} also fool {}", t.fooled, t.n, esc(&t.attacked), t.fooled_both, esc(&t.tested));
            Row {
                attrs: format!(r#" data-attacked="{}""#, esc(&t.attacked)),
                cells: vec![setting, esc(&t.attacked), esc(&t.tested), t.seeds.to_string(), pct(Some(ae), Some(ae_sd)), pct(Some(cr), Some(cr_sd)), count],
            }
        })
        .collect();
    let cols = [Col("setting", false), Col("attacked A", false), Col("tested B", false), Col("seeds", true), Col("adversarial error of A %", true), Col("correction rate by B %", true), Col("counts (summed over seeds)", false)];
    let stages = r.stages.iter().filter(|s| s.kind == Attack::ID.name).map(|s| (s, esc(&format!("{}: {}", s.stage, s.summary["line"].as_str().unwrap_or("")))));
    let figs = figures(ctx, DEPTH, stages, attack::FIGURE)?;
    let attack = r.stages.first().and_then(|s| s.summary["attack"].as_str()).unwrap_or("attack");
    Ok(format!(
        "<h2>Two-way attack</h2>\n<p class=\"note\">{} (model units [-1, 1]) on each case's classifier, the other case tested on the same adversarial examples (WINN Table 3), mean ± sd over seeds; run {}.</p>\n{}\n{figs}",
        esc(attack),
        link(DEPTH, &super::run::href(&r.id), &r.id),
        table("two-way", &cols, &rows)
    ))
}

fn runs_section(ctx: &Ctx, g: &Group) -> String {
    let rows: Vec<Row> = g
        .runs
        .iter()
        .chain(&g.two_way)
        .map(|r| {
            let sel = r.selected.as_ref();
            let get = |k: &str| sel.and_then(|s| s[k].as_f64());
            let what = match &r.member {
                Some(m) => m.clone(),
                None if g.two_way.iter().any(|t| t.id == r.id) => "two-way attack of the sweep's classifiers".into(),
                None => r.overrides.join(" "),
            };
            Row::new(vec![
                link(DEPTH, &super::run::href(&r.id), &r.id),
                esc(&shown_status(ctx.store, r)),
                esc(&what),
                format!("<span class=\"nw\">{}</span>", esc(&r.started_at)),
                num(Some(r.seconds), 2),
                round_shown(get("round")),
                num(get("validation_error").map(|v| 100.0 * v), 2),
                num(get("test_error").map(|v| 100.0 * v), 2),
            ])
        })
        .collect();
    let cols = [Col("run", false), Col("status", false), Col("member / overrides", false), Col("started (UTC)", false), Col("seconds", true), Col("selected round", true), Col("validation error %", true), Col("test error %", true)];
    format!("<h2>Runs</h2>\n<p class=\"note\">each run's page has its stages and the lineage of its selected checkpoint.</p>\n{}", table("runs", &cols, &rows))
}
