//! The page of one run: its record, its stages, its error per round, its pictures, and the
//! lineage of the checkpoint it keeps (from `audit::lineage`, whose full table is written
//! next to the page as Parquet).

use super::layout::{esc, link, num, page as shell, pct, table, Col, Row};
use super::{figures, Ctx, Group};
use crate::audit::lineage::{self, Lineage};
use crate::audit::runs::shown_status;
use crate::engine::executor::RunRecord;
use crate::engine::graph::round_of;
use crate::kinds::attack::{self, Attack};
use crate::kinds::synthesize::{self, Synthesize};
use crate::kinds::train::{self, Train};
use crate::kinds::Kind;
use crate::methods::{rounds_of, select};
use anyhow::Result;
use serde_json::Value;
use std::fmt::Write;

/// Run pages live one folder down.
const DEPTH: usize = 1;

/// Pseudo-negatives listed on the page; the Parquet file next to it has them all.
const LINEAGE_ROWS: usize = 500;

pub fn href(id: &str) -> String {
    format!("runs/{id}.html")
}

/// The checkpoints a run keeps: the selected round's (one per net), or for a run that
/// selected nothing (it failed) its last trained one.
fn kept_checkpoints(r: &RunRecord) -> Vec<String> {
    let selected: Vec<String> = r.selected.as_ref().and_then(|s| s["checkpoints"].as_array()).map(|a| a.iter().filter_map(|c| c.as_str().map(String::from)).collect()).unwrap_or_default();
    if !selected.is_empty() {
        return selected;
    }
    r.stages.iter().rev().find(|s| s.kind == Train::ID.name).and_then(|s| s.outputs.get(train::CHECKPOINT)).map(|o| vec![o.digest.clone()]).unwrap_or_default()
}

pub fn page(ctx: &mut Ctx, r: &RunRecord, g: &Group) -> Result<String> {
    let mut body = format!("<h1>run {}</h1>\n<dl class=\"meta\">", esc(&r.id));
    let mut meta = |k: &str, v: String| {
        let _ = write!(body, "<dt>{k}</dt><dd>{v}</dd>");
    };
    meta("pipeline", link(DEPTH, &g.href(), &r.pipeline));
    meta("file", esc(&r.file));
    if let Some(m) = &r.member {
        meta("sweep member", esc(m));
    }
    if !r.overrides.is_empty() {
        meta("overrides", format!("<code>{}</code>", esc(&r.overrides.join(" "))));
    }
    meta("status", esc(&shown_status(ctx.store, r)));
    meta("device", esc(&r.device));
    meta("started (UTC)", esc(&r.started_at));
    meta("finished (UTC)", esc(r.finished_at.as_deref().unwrap_or("–")));
    meta("seconds", num(Some(r.seconds), 2));
    if let Some(v) = &r.pipe_version {
        meta("pipe", esc(v));
    }
    if let Some(s) = &r.stopped_early {
        meta("stopped early", esc(s));
    }
    if let Some(e) = &r.error {
        meta("error", esc(e));
    }
    body.push_str("</dl>\n");

    let rows: Vec<Row> = r
        .stages
        .iter()
        .map(|s| Row::new(vec![esc(&s.stage), esc(&s.kind), esc(&s.status), format!("<code>{}</code>", esc(&s.key[..s.key.len().min(12)])), num(Some(s.seconds), 2), esc(s.summary["line"].as_str().unwrap_or(""))]))
        .collect();
    let cols = [Col("stage", false), Col("kind", false), Col("status", false), Col("key", false), Col("seconds", true), Col("summary", false)];
    let _ = write!(body, "<h2>Stages</h2>\n{}", table("stages", &cols, &rows));
    body += &rounds_section(r);

    let grids = r.stages.iter().filter(|s| s.kind == Synthesize::ID.name).map(|s| (s, esc(&format!("round {}: {}", round_of(&s.stage).unwrap_or(0), s.summary["line"].as_str().unwrap_or(&s.stage)))));
    let grids = figures(ctx, DEPTH, grids, synthesize::GRID)?;
    if !grids.is_empty() {
        let _ = write!(body, "<h2>Pseudo-negatives per round</h2>\n<p class=\"note\">a row per class.</p>\n{grids}");
    }
    let attacks = r.stages.iter().filter(|s| s.kind == Attack::ID.name).map(|s| (s, esc(&format!("{}: {}", s.stage, s.summary["line"].as_str().unwrap_or("")))));
    let attacks = figures(ctx, DEPTH, attacks, attack::FIGURE)?;
    if !attacks.is_empty() {
        let _ = write!(body, "<h2>Attacks</h2>\n<p class=\"note\">the first fooling example of each class; rows: original, perturbation (full contrast), adversarial.</p>\n{attacks}");
    }
    for ck in kept_checkpoints(r) {
        let l = lineage::lineage(ctx.store, &ck)?;
        let file = format!("runs/{}.lineage-{}.parquet", r.id, &ck[..ck.len().min(12)]);
        ctx.site.write(&file, &lineage::to_table(&l)?)?;
        body += &lineage_section(&l, &file);
    }
    Ok(shell(&format!("run {}", r.id), DEPTH, &body))
}

/// Validation and test error per round, the selected round marked.
fn rounds_section(r: &RunRecord) -> String {
    let rounds = rounds_of(r);
    let selected = r.selected.as_ref().and_then(|s| s["round"].as_u64());
    let rows: Vec<Row> = select::reporters(&r.stages, &rounds)
        .map(|(round, s)| {
            let get = |k: Option<&str>, percent: bool| k.and_then(|k| s.summary.get(k)).and_then(Value::as_f64).map(|v| if percent { 100.0 * v } else { v });
            let attrs = format!(r#" data-round="{round}"{}"#, if selected == Some(round as u64) { r#" class="selected""# } else { "" });
            Row { attrs, cells: vec![round.to_string(), pct(get(rounds.select_on, true), None), pct(get(Some(rounds.reported), rounds.shown.percent), None)] }
        })
        .collect();
    if rows.is_empty() {
        return String::new();
    }
    let reported = if rounds.shown.percent { "test error %".to_string() } else { rounds.shown.heading.to_string() };
    let cols = [Col("round", true), Col("validation error %", true), Col(&reported, true)];
    let note = selected.map(|s| format!("<p class=\"note\">highlighted: round {s}, the one this run keeps (chosen on validation error).</p>\n")).unwrap_or_default();
    format!("<h2>Error per round</h2>\n{note}{}", table("rounds", &cols, &rows))
}

fn short(d: &str) -> String {
    format!("<code>{}</code>", esc(&d[..d.len().min(12)]))
}

fn lineage_section(l: &Lineage, file: &str) -> String {
    let mut out = format!("<h2>Lineage of checkpoint {}</h2>\n<p class=\"note\">what shaped it, as <code>pipe lineage</code> lists it; every row: {}.</p>\n", short(&l.checkpoint), link(DEPTH, file, "Parquet"));
    let rows: Vec<Row> = l.chain.iter().map(|c| Row::new(vec![esc(&c.stage), c.round.to_string(), short(&c.key), short(&c.checkpoint), c.evaluated_by.as_deref().map_or("–".into(), short)])).collect();
    let cols = [Col("training stage", false), Col("round", true), Col("key", false), Col("checkpoint", false), Col("evaluated by", false)];
    let _ = write!(out, "<h3>chain of warm starts</h3>\n{}", table("chain", &cols, &rows));
    let rows: Vec<Row> = l
        .datasets
        .iter()
        .map(|d| {
            let p = &d.load_params;
            let files: Vec<String> = d.files.iter().map(|(name, f)| format!("{} {}", esc(name), short(f))).collect();
            let load = format!("{} ({}, train_size {}, load seed {})", d.load_key.as_deref().map_or("?".into(), short), esc(p["format"].as_str().unwrap_or("?")), esc(&p["train_size"].to_string()), esc(&p["seed"].to_string()));
            Row::new(vec![esc(&d.input), short(&d.digest), load, files.join("<br>")])
        })
        .collect();
    let cols = [Col("input", false), Col("digest", false), Col("made by load", false), Col("raw files", false)];
    let _ = write!(out, "<h3>data sets</h3>\n{}", table("datasets", &cols, &rows));
    let p = &l.pseudo_negatives;
    let t = lineage::totals(l);
    let _ = write!(
        out,
        "<h3>pseudo-negatives</h3>\n<p class=\"note\">{} from {} rounds; {} drawn {} times in all; {} still fool the last evaluated classifier (f_k &gt; 0: marked *).{}</p>\n",
        p.len(),
        t.rounds,
        t.drawn,
        t.draws,
        t.fooling_now,
        if p.len() > LINEAGE_ROWS { format!(" The first {LINEAGE_ROWS} are listed; the Parquet file has all.") } else { String::new() }
    );
    if p.is_empty() {
        return out;
    }
    let later: Vec<u32> = l.chain.iter().filter(|c| c.round > 0).map(|c| c.round).collect();
    let heads: Vec<String> = later.iter().map(|r| format!("f_k after round {r}")).collect();
    let mut cols = vec![Col("round", true), Col("class", true), Col("id", true), Col("seed", true), Col("steps", true), Col("stop", false), Col("f_k when made", true), Col("draws", true)];
    cols.extend(heads.iter().map(|h| Col(h, true)));
    let rows: Vec<Row> = p
        .iter()
        .take(LINEAGE_ROWS)
        .map(|s| {
            let mut cells = vec![s.round.to_string(), s.class.to_string(), s.sample_id.to_string(), s.seed.to_string(), s.steps.to_string(), esc(&s.stop_reason), format!("{:.3}", s.logit), s.draws.to_string()];
            cells.extend(later.iter().map(|r| s.later.iter().find(|x| x.round == *r).map_or("–".into(), |x| format!("{:.3}{}", x.logit, if x.fools { "*" } else { "" }))));
            Row::new(cells)
        })
        .collect();
    out += &table("lineage", &cols, &rows);
    out
}
