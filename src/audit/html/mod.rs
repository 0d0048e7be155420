//! `pipe report --html DIR`: the report as a static site that opens from disk: an index of
//! the pipelines and sweeps in the store, a page per pipeline or sweep ([`pipeline`]) and
//! one per run with its stages and the lineage of its checkpoint ([`run`]).
//!
//! The numbers come from the same rows and Polars queries as `pipe report`
//! ([`crate::audit::report`]) and the sweep's two-way table from [`crate::audit::study`];
//! this module only lays them out. Pictures are copied out of the store, so the site
//! survives a `pipe gc`; the pages carry no time but the runs' own, so the same store gives
//! the same bytes.

mod layout;
mod pipeline;
mod run;
mod site;
mod svg;

use crate::audit::report::{self, Metrics};
use crate::engine::executor::{RunRecord, RunStage};
use crate::engine::store::Store;
use anyhow::{Context, Result};
use layout::{esc, link, page, table, Col, Row};
use polars::prelude::{col, lit, DataFrame, DataType, IntoLazy};
use std::path::Path;

/// The sweep's two-way attack runs are recorded under `<sweep>:two-way`; they belong on
/// the sweep's page.
const TWO_WAY: &str = ":two-way";

/// What a pipeline page shows: a pipeline's runs (the members, for a sweep) and the
/// two-way attack runs of a sweep.
struct Group<'a> {
    name: String,
    runs: Vec<&'a RunRecord>,
    two_way: Vec<&'a RunRecord>,
}

impl Group<'_> {
    fn is_sweep(&self) -> bool {
        self.runs.iter().any(|r| r.member.is_some())
    }
    fn href(&self) -> String {
        format!("pipelines/{}.html", self.name)
    }
}

/// What every page is written with.
struct Ctx<'a> {
    store: &'a Store,
    site: site::Site,
}

/// The pipelines of the store (only `only`, if given), each with its two-way runs.
fn groups<'a>(m: &'a Metrics, root: &Path, only: Option<&str>) -> Result<Vec<Group<'a>>> {
    let names = m.pipelines(root, only)?;
    let base = |name: &str| name.strip_suffix(TWO_WAY).unwrap_or(name).to_string();
    let mut groups: Vec<Group> = Vec::new();
    for name in names.iter().map(|n| base(n)) {
        if !groups.iter().any(|g| g.name == name) {
            groups.push(Group { name, runs: Vec::new(), two_way: Vec::new() });
        }
    }
    for r in m.runs() {
        if let Some(g) = groups.iter_mut().find(|g| g.name == base(&r.pipeline)) {
            if r.pipeline.ends_with(TWO_WAY) { &mut g.two_way } else { &mut g.runs }.push(r);
        }
    }
    Ok(groups)
}

/// Writes the report of the store at `root` (one pipeline's, with `only`) into `dir`.
pub fn write(root: &Path, dir: &Path, only: Option<&str>) -> Result<()> {
    // refused before anything is read: a user's folder is never touched
    site::check(dir)?;
    let m = report::metrics(root)?;
    let store = Store::open_existing(root)?;
    let groups = groups(&m, root, only)?;
    let all = m.frame()?.lazy();
    let mut ctx = Ctx { store: &store, site: site::Site::begin(dir)? };
    let mut pages = 0;
    for g in &groups {
        let lf = all.clone().filter(col("pipeline").eq(lit(g.name.as_str())));
        let two_way = all.clone().filter(col("pipeline").eq(lit(format!("{}{TWO_WAY}", g.name))));
        let html = pipeline::page(&mut ctx, g, lf, two_way).with_context(|| format!("the page of {}", g.name))?;
        ctx.site.write(&g.href(), html.as_bytes())?;
        for r in g.runs.iter().chain(&g.two_way) {
            let html = run::page(&mut ctx, r, g).with_context(|| format!("the page of run {}", r.id))?;
            ctx.site.write(&run::href(&r.id), html.as_bytes())?;
            pages += 1;
        }
    }
    ctx.site.write("index.html", index(&ctx, &groups).as_bytes())?;
    ctx.site.publish()?;
    println!("{} pipeline page(s), {pages} run page(s) -> {}", groups.len(), dir.join("index.html").display());
    Ok(())
}

fn index(ctx: &Ctx, groups: &[Group]) -> String {
    let rows: Vec<Row> = groups
        .iter()
        .map(|g| {
            let ok = g.runs.iter().filter(|r| r.status == "ok").count();
            let what = if g.is_sweep() {
                let members: std::collections::BTreeSet<&str> = g.runs.iter().filter_map(|r| r.member.as_deref()).collect();
                format!("sweep of {} members{}", members.len(), if g.two_way.is_empty() { "" } else { ", two-way attack" })
            } else {
                "pipeline".into()
            };
            let files: std::collections::BTreeSet<&str> = g.runs.iter().map(|r| r.file.as_str()).collect();
            let last = g.runs.iter().chain(&g.two_way).map(|r| r.started_at.as_str()).max().unwrap_or("");
            Row::new(vec![link(0, &g.href(), &g.name), esc(&what), g.runs.len().to_string(), ok.to_string(), esc(&files.into_iter().collect::<Vec<_>>().join(", ")), esc(last)])
        })
        .collect();
    let cols = [Col("pipeline", false), Col("kind", false), Col("runs", true), Col("ok", true), Col("file", false), Col("last run started (UTC)", false)];
    let body = format!(
        "<h1>pipe report</h1>\n<p class=\"note\">store {}: every run's numbers, pictures and lineage, as of the report (the pictures are copies: the site outlives a <code>pipe gc</code>).</p>\n<h2>Pipelines and sweeps</h2>\n{}",
        esc(&ctx.store.location()),
        table("pipelines", &cols, &rows)
    );
    page("pipe report", 0, &body)
}

/// A column of a collected frame as numbers (counts and rounds too), nulls as None.
fn f64s(df: &DataFrame, name: &str) -> Result<Vec<Option<f64>>> {
    let c = df.column(name)?.cast(&DataType::Float64)?;
    Ok(c.f64()?.iter().collect())
}

/// A string column of a collected frame.
fn strs(df: &DataFrame, name: &str) -> Result<Vec<String>> {
    Ok(df.column(name)?.str()?.iter().map(|s| s.unwrap_or_default().to_string()).collect())
}

/// The bytes of a stage's output, or None when the stage has no such output or its object
/// is gone from the store (the report still describes what is left); a corrupt object is
/// an error, as on every read.
fn object(ctx: &Ctx, s: &RunStage, output: &str) -> Result<Option<Vec<u8>>> {
    match s.outputs.get(output) {
        Some(o) if ctx.store.has_object(&o.digest) => Ok(Some(ctx.store.read(&o.digest)?)),
        _ => Ok(None),
    }
}

/// One picture output (`grid.png`, `examples.png`) of each stage, copied into the site, with
/// its caption (HTML); empty when no stage has one.
fn figures<'s>(ctx: &mut Ctx, depth: usize, stages: impl IntoIterator<Item = (&'s RunStage, String)>, output: &str) -> Result<String> {
    let mut out = String::new();
    for (s, caption) in stages {
        let Some(o) = s.outputs.get(output) else { continue };
        match ctx.site.image(ctx.store, &o.digest)? {
            // small pictures (a few 28-pixel digits) twice their size, pixels kept sharp
            Some(img) => out += &layout::figure(depth, &img.src, img.size, if img.size.is_some_and(|(w, _)| w <= 200) { 2 } else { 1 }, &caption),
            None => out += &format!("<p class=\"note\">{}: its {output} is gone from the store</p>", esc(&s.stage)),
        }
    }
    Ok(if out.is_empty() { out } else { format!("<div class=\"figures\">{out}</div>\n") })
}
