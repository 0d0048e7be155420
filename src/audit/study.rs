//! What a sweep reports once its members have run: one tidy results table, the two-way
//! adversarial comparison of two of its cases (WINN Table 3, and the ICN paper's count
//! form), and a plot of test error against a swept size.

use crate::engine::executor::{self, RunRecord};
use crate::engine::graph::{stage_seed, InputRef, StageDef};
use crate::engine::store::Store;
use crate::engine::table::{to_parquet, Column};
use crate::kinds::attack::{self, Attack};
use crate::kinds::load::{self, Load};
use crate::kinds::train::{self, Train};
use crate::kinds::{read_params, Kind, Kinds};
use crate::methods::{icn::attack_stage, plan};
use crate::pipeline::spec::AttackClassifier;
use crate::pipeline::sweep::{self, Member};
use crate::UserError;
use anyhow::Result;
use serde_json::Value;
use std::path::PathBuf;

/// Checks, before anything runs, that `attack.compare` names two cases of the sweep.
pub fn check(members: &[Member]) -> Result<()> {
    let Some(a) = members.first().and_then(|m| m.pipeline.spec.attack.as_ref()) else { return Ok(()) };
    let file = members[0].pipeline.file.display();
    if a.compare.is_empty() {
        return Ok(());
    }
    if members.len() == 1 {
        return Err(UserError(format!("{file}: attack.compare needs a [sweep] with cases named {:?}", a.compare)).into());
    }
    for name in &a.compare {
        if !members.iter().any(|m| m.case.as_deref() == Some(name)) {
            let cases: Vec<&str> = members.iter().filter_map(|m| m.case.as_deref()).collect::<std::collections::BTreeSet<_>>().into_iter().collect();
            return Err(UserError(format!("{file}: attack.compare: no case `{name}` in the sweep (cases: {})", cases.join(", "))).into());
        }
    }
    Ok(())
}

/// Everything a sweep reports after its members ran; returns the files written.
pub fn report(store: &Store, members: &[Member], records: &[RunRecord]) -> Result<Vec<PathBuf>> {
    let mut files = vec![results_table(store, members, records)?];
    files.extend(plot_sizes(store, members, records)?);
    files.extend(two_way(store, members, records)?);
    Ok(files)
}

/// The member's case and swept settings apart from the seed and the `skip` keys: members
/// equal in these are seeds of one setting.
fn setting_label(m: &Member, skip: &[&str]) -> String {
    let mut label: Vec<String> = m.case.iter().cloned().collect();
    label.extend(m.values.iter().filter(|(k, _)| k != "pipeline.seed" && !skip.contains(&k.as_str())).map(|(k, v)| format!("{k}={v}")));
    label.join(" ")
}

/// Values grouped by label, in first-seen order.
fn group<T>(items: impl IntoIterator<Item = (String, T)>) -> Vec<(String, Vec<T>)> {
    let mut groups: Vec<(String, Vec<T>)> = Vec::new();
    for (label, v) in items {
        match groups.iter_mut().find(|(l, _)| *l == label) {
            Some((_, vs)) => vs.push(v),
            None => groups.push((label, vec![v])),
        }
    }
    groups
}

/// The reported metric of the round a run kept (test error for ICN), NaN for none.
fn selected_reported(r: &RunRecord) -> f64 {
    let rounds = crate::methods::rounds_of(r);
    r.selected.as_ref().and_then(|s| s[rounds.reported].as_f64()).unwrap_or(f64::NAN)
}

/// Writes a sweep's table or figure into the store's sweeps/ and says where it is.
fn put_sweep_file(store: &Store, members: &[Member], suffix: &str, bytes: &[u8]) -> Result<PathBuf> {
    Ok(PathBuf::from(store.put_file(&format!("sweeps/{}{suffix}", members[0].pipeline.name), bytes)?))
}

/// The tidy table of a sweep (a row per member and evaluated round) in
/// `<store>/sweeps/<name>.parquet`, and the selected test error per setting, mean and
/// standard deviation over seeds.
fn results_table(store: &Store, members: &[Member], records: &[RunRecord]) -> Result<PathBuf> {
    struct Row {
        member: usize,
        run: String,
        round: u32,
        validation_error: f64,
        test_error: f64,
        selected: bool,
    }
    let mut rows = Vec::new();
    for (member, r) in records.iter().enumerate() {
        let selected = r.selected.as_ref().and_then(|s| s["round"].as_u64());
        let rounds = crate::methods::rounds_of(r);
        for (round, s) in crate::methods::select::reporters(&r.stages, &rounds) {
            let get = |k: &str| s.summary.get(k).and_then(Value::as_f64).unwrap_or(f64::NAN);
            rows.push(Row { member, run: r.id.clone(), round, validation_error: rounds.select_on.map_or(f64::NAN, get), test_error: get(rounds.reported), selected: selected == Some(round as u64) });
        }
    }
    let keys: Vec<String> = members[0].values.iter().map(|(k, _)| k.clone()).collect();
    let value_of = |r: &Row, k: &str| members[r.member].values.iter().find(|(kk, _)| kk == k).map(|(_, v)| v.clone()).unwrap_or_default();
    let mut columns = vec![
        ("member", Column::U32(rows.iter().map(|r| r.member as u32).collect())),
        ("case", Column::Str(rows.iter().map(|r| members[r.member].case.clone().unwrap_or_default()).collect())),
        ("seed", Column::U64(rows.iter().map(|r| members[r.member].pipeline.spec.pipeline.seed).collect())),
    ];
    for k in &keys {
        columns.push((k.as_str(), Column::Str(rows.iter().map(|r| value_of(r, k)).collect())));
    }
    columns.extend([
        ("run", Column::Str(rows.iter().map(|r| r.run.clone()).collect())),
        ("round", Column::U32(rows.iter().map(|r| r.round).collect())),
        ("validation_error", Column::F64(rows.iter().map(|r| r.validation_error).collect())),
        ("test_error", Column::F64(rows.iter().map(|r| r.test_error).collect())),
        ("selected", Column::Bool(rows.iter().map(|r| r.selected).collect())),
    ]);
    let path = put_sweep_file(store, members, ".parquet", &to_parquet(columns)?)?;

    let rounds = records.first().map_or(crate::methods::icn::ROUNDS, crate::methods::rounds_of);
    let groups = group(members.iter().zip(records).map(|(m, r)| (setting_label(m, &[]), selected_reported(r))));
    match rounds.select_on {
        Some(_) => println!("\nsweep of {} pipelines: test error of the round selected on validation (mean +- sd over seeds)", members.len()),
        None => println!("\nsweep of {} pipelines: {} of the last round (mean +- sd over seeds)", members.len(), rounds.shown.heading),
    }
    for (label, values) in &groups {
        let (m, sd) = sweep::mean_sd(values);
        println!("  {label:<40} {:>7} +- {}  (n = {})", rounds.shown.value(m), rounds.shown.value(sd), values.len());
    }
    println!("table: {}", path.display());
    Ok(path)
}

/// Test error against the first numeric swept setting other than the seed (e.g.
/// `data.train_size`), one line per case, error bars over seeds: `<store>/sweeps/<name>.png`.
fn plot_sizes(store: &Store, members: &[Member], records: &[RunRecord]) -> Result<Option<PathBuf>> {
    let numeric = |k: &str| members.iter().all(|m| m.values.iter().any(|(kk, v)| kk == k && v.parse::<f64>().is_ok()));
    let Some(axis) = members[0].values.iter().map(|(k, _)| k.clone()).find(|k| k != "pipeline.seed" && numeric(k)) else { return Ok(None) };
    let x_of = |m: &Member| m.values.iter().find(|(k, _)| *k == axis).and_then(|(_, v)| v.parse::<f64>().ok()).unwrap_or(f64::NAN);
    // a line per setting apart from the axis and the seed
    let lines = group(members.iter().zip(records).map(|(m, r)| (setting_label(m, &[&axis]), (x_of(m), selected_reported(r)))));
    let series: Vec<stages::plot::Series> = lines
        .into_iter()
        .map(|(name, pts)| {
            let at_x = group(pts.into_iter().map(|(x, e)| (x.to_string(), (x, 100.0 * e))));
            let mut points: Vec<stages::plot::Point> = at_x
                .into_iter()
                .map(|(_, v)| {
                    let (mean, sd) = sweep::mean_sd(&v.iter().map(|(_, e)| *e).collect::<Vec<_>>());
                    stages::plot::Point { x: v[0].0, mean, sd }
                })
                .collect();
            points.sort_by(|a, b| a.x.total_cmp(&b.x));
            stages::plot::Series { name, points }
        })
        .collect();
    let xs: Vec<f64> = series.iter().flat_map(|s| s.points.iter().map(|p| p.x)).collect();
    let (lo, hi) = xs.iter().fold((f64::INFINITY, 0.0f64), |(l, h), &x| (l.min(x), h.max(x)));
    let title = format!("{}: test error of the selected round (mean +- sd over seeds)", members[0].pipeline.name);
    let chart = stages::plot::Chart { title: &title, x_label: &axis, y_label: "test error (%)", log_x: lo > 0.0 && hi / lo >= 10.0, series: &series };
    let png = stages::plot::line_chart_png(&chart, 900, 600)?;
    let path = put_sweep_file(store, members, ".png", &png)?;
    println!("plot: {}", path.display());
    Ok(Some(path))
}

/// WINN Table 3 for one direction of a two-way attack in one setting, over its seeds.
pub struct TwoWayRow {
    /// The configuration apart from the seed ("" when only seeds differ).
    pub setting: String,
    pub attacked: String,
    pub tested: String,
    pub seeds: usize,
    /// Mean and sd over seeds, in percent.
    pub adversarial_error_pct: (f64, f64),
    pub correction_rate_pct: (f64, f64),
    /// Summed over seeds: examples made on the attacked classifier, those that fool it,
    /// those that also fool the tested one.
    pub n: f64,
    pub fooled: f64,
    pub fooled_both: f64,
}

fn two_way_table(rows: &[Direction]) -> Vec<TwoWayRow> {
    let num = |d: &Direction, k: &str| d.summary.get(k).and_then(Value::as_f64).unwrap_or(f64::NAN);
    let setting = |d: &Direction| d.config.split(' ').filter(|kv| !kv.starts_with("pipeline.seed=")).collect::<Vec<_>>().join(" ");
    group(rows.iter().map(|d| (format!("{}\u{0}{}\u{0}{}", setting(d), d.attacked, d.tested), d)))
        .into_iter()
        .map(|(label, ds)| {
            let (set, rest) = label.split_once('\u{0}').unwrap_or(("", ""));
            let attacked = rest.split('\u{0}').next().unwrap_or("");
            let pct = |k: &str| sweep::mean_sd(&ds.iter().map(|d| 100.0 * num(d, k)).collect::<Vec<_>>());
            let sum = |k: &str| ds.iter().map(|d| num(d, k)).sum::<f64>();
            TwoWayRow {
                setting: set.to_string(),
                attacked: attacked.to_string(),
                tested: ds[0].tested.clone(),
                seeds: ds.len(),
                adversarial_error_pct: pct("adversarial_error"),
                correction_rate_pct: pct("correction_rate"),
                n: sum("n"),
                fooled: sum("fooled"),
                fooled_both: sum("fooled_both"),
            }
        })
        .collect()
}

/// The Table 3 rows of a stored two-way run record (its stages are
/// `attack/<configuration>/<attacked case>`), as the sweep printed them.
pub fn stored_two_way(record: &RunRecord) -> Vec<TwoWayRow> {
    let prefix = format!("{}/", Attack::ID.name);
    let rows: Vec<Direction> = record
        .stages
        .iter()
        .filter(|s| s.kind == Attack::ID.name)
        .filter_map(|s| {
            let (config, direction) = s.stage.strip_prefix(&prefix)?.rsplit_once('/')?;
            let attacked = direction.split(VS).next().unwrap_or(direction);
            let seed = config.split(' ').find_map(|kv| kv.strip_prefix("pipeline.seed=")?.parse().ok());
            Some(Direction {
                config: config.to_string(),
                seed: seed.or_else(|| record.spec["pipeline"]["seed"].as_u64()).unwrap_or_default(),
                attacked: attacked.to_string(),
                tested: s.summary["tested"].as_str().unwrap_or_default().to_string(),
                summary: s.summary.clone(),
                run: record.id.clone(),
            })
        })
        .collect();
    two_way_table(&rows)
}

/// Between the attacked and the tested case in the stage ids of a comparison of more than
/// two cases.
const VS: &str = " vs ";

/// One direction of a two-way comparison in one configuration.
struct Direction {
    config: String,
    seed: u64,
    attacked: String,
    tested: String,
    summary: Value,
    run: String,
}

/// Attacks the classifier (last or selected, `attack.classifier`) of each of the two
/// `attack.compare` cases and tests the other on its adversarial examples, for every configuration (seed, other settings) that
/// has both; the stages go through the store like any other, under a run record of their own.
fn two_way(store: &Store, members: &[Member], records: &[RunRecord]) -> Result<Vec<PathBuf>> {
    let Some(a) = members[0].pipeline.spec.attack.clone() else { return Ok(Vec::new()) };
    let Some((case_a, others)) = a.compare.split_first() else { return Ok(Vec::new()) };
    let case_a = case_a.clone();
    let name = &members[0].pipeline.name;
    let mut stages: Vec<StageDef> = Vec::new();
    let mut meta = Vec::new();
    for (config, ia, ib, case_b) in others.iter().flat_map(|b| compared_pairs(members, &case_a, b).into_iter().map(move |(c, ia, ib)| (c, ia, ib, b.clone()))) {
        let (ma, ra, mb, rb) = (&members[ia], &records[ia], &members[ib], &records[ib]);
        let checkpoint = |r: &RunRecord| match a.classifier {
            AttackClassifier::Selected => r.selected.as_ref().and_then(|s| s["checkpoint"].as_str()).map(String::from),
            AttackClassifier::Last => r.stages.iter().rev().find(|s| s.kind == Train::ID.name).and_then(|s| s.outputs.get(train::CHECKPOINT)).map(|o| o.digest.clone()),
        };
        let test = ra.stages.iter().find(|s| s.kind == Load::ID.name).and_then(|s| s.outputs.get(load::TEST)).map(|o| o.digest.clone());
        let (Some(ca), Some(cb), Some(test)) = (checkpoint(ra), checkpoint(rb), test) else {
            println!("two-way: {config}: no single classifier on both sides; skipped");
            continue;
        };
        // a supervised WINN net is the same classifier with a head on its logits
        let net_of = |m: &Member| plan(&m.pipeline).stages.into_iter().find(|s| s.kind == Train::ID).and_then(|s| read_params::<train::Params>(&s.params).ok()).map(|p| stages::nn::NetConfig { wass_head: false, ..p.net });
        let (Some(net), net_b) = (net_of(ma), net_of(mb)) else { continue };
        if Some(&net) != net_b.as_ref() {
            println!("two-way: {config}: {case_a} and {case_b} train different nets; skipped");
            continue;
        }
        let seed = ma.pipeline.spec.pipeline.seed;
        for (attacked, tested, ck_attacked, ck_tested) in [(&case_a, &case_b, &ca, &cb), (&case_b, &case_a, &cb, &ca)] {
            // with one comparison the attacked case names the stage; with more, each
            // direction of each pair needs its own
            let id = if others.len() == 1 { format!("{}/{config}/{attacked}", Attack::ID.name) } else { format!("{}/{config}/{attacked}{VS}{tested}", Attack::ID.name) };
            let models = [(attacked.clone(), InputRef::Object(ck_attacked.clone())), (tested.clone(), InputRef::Object(ck_tested.clone()))];
            let stage_seed = stage_seed(seed, &id);
            stages.push(attack_stage(id, &a, &net, 0, stage_seed, InputRef::Object(test.clone()), &models));
            meta.push((config.clone(), seed, attacked.clone(), tested.clone()));
        }
    }
    if stages.is_empty() {
        return Ok(Vec::new());
    }
    println!("\n== two-way attack: {case_a} vs {}, {}", others.join(", "), crate::audit::text::count(stages.len(), "stage"));
    let pipeline = &members[0].pipeline;
    let runner = Kinds::for_device(&pipeline.spec.pipeline.device)?;
    let mut record = crate::audit::runs::new_record(&format!("{name}:two-way"), pipeline, executor::Runner::device(&runner));
    executor::run(store, &stages, &runner, &mut record, &|_| None, crate::engine::progress::Display::Quiet)?;
    store.write_run(&record.id, &record)?;
    let rows: Vec<Direction> = meta
        .into_iter()
        .zip(&record.stages)
        .map(|((config, seed, attacked, tested), s)| Direction { config, seed, attacked, tested, summary: s.summary.clone(), run: record.id.clone() })
        .collect();

    let num = |d: &Direction, k: &str| d.summary.get(k).and_then(Value::as_f64).unwrap_or(f64::NAN);
    let path = put_sweep_file(
        store,
        members,
        ".two-way.parquet",
        &to_parquet(vec![
            ("configuration", Column::Str(rows.iter().map(|d| d.config.clone()).collect())),
            ("seed", Column::U64(rows.iter().map(|d| d.seed).collect())),
            ("attack", Column::Str(rows.iter().map(|d| d.summary["attack"].as_str().unwrap_or("").to_string()).collect())),
            ("attacked", Column::Str(rows.iter().map(|d| d.attacked.clone()).collect())),
            ("tested", Column::Str(rows.iter().map(|d| d.tested.clone()).collect())),
            ("n", Column::U64(rows.iter().map(|d| num(d, "n") as u64).collect())),
            ("fooled", Column::U64(rows.iter().map(|d| num(d, "fooled") as u64).collect())),
            ("fooled_both", Column::U64(rows.iter().map(|d| num(d, "fooled_both") as u64).collect())),
            ("adversarial_error", Column::F64(rows.iter().map(|d| num(d, "adversarial_error")).collect())),
            ("correction_rate", Column::F64(rows.iter().map(|d| num(d, "correction_rate")).collect())),
            ("run", Column::Str(rows.iter().map(|d| d.run.clone()).collect())),
        ])?,
    )?;

    // WINN Table 3 per direction and setting, over seeds; then the ICN paper's count form
    let attack_name = rows[0].summary["attack"].as_str().unwrap_or("attack").to_string();
    let which = match a.classifier {
        AttackClassifier::Last => "the last round's classifiers",
        AttackClassifier::Selected => "the classifiers selected on validation",
    };
    let table = two_way_table(&rows);
    println!("\ntwo-way {attack_name} (model units [-1, 1]) on {which}, mean +- sd over seeds:");
    println!("  {:<24} {:<12} {:>22}  {:<12} {:>22}", "setting", "attacked A", "adversarial error", "tested B", "correction rate by B");
    for t in &table {
        let set = if t.setting.is_empty() { "-" } else { &t.setting };
        let ((ae, ae_sd), (cr, cr_sd)) = (t.adversarial_error_pct, t.correction_rate_pct);
        println!("  {set:<24} {:<12} {:>13.2}% +- {:>5.2}%  {:<12} {:>13.2}% +- {:>5.2}%", t.attacked, ae, ae_sd, t.tested, cr, cr_sd);
    }
    println!("count form (summed over seeds): of the test examples that fool A, how many still fool B");
    for t in &table {
        let set = if t.setting.is_empty() { String::new() } else { format!("{}: ", t.setting) };
        println!("  {set}{} of {} fool {}; {} of those also fool {} ({:.1}% fewer)", t.fooled, t.n, t.attacked, t.fooled_both, t.tested, 100.0 * (1.0 - t.fooled_both / t.fooled));
    }
    println!("table: {}", path.display());
    let mut files = vec![path];
    // the adversarial example figures of the first configuration, next to the table
    for (d, s) in rows.iter().zip(&record.stages).take(2) {
        if let Some(o) = s.outputs.get(attack::FIGURE) {
            let fig = put_sweep_file(store, members, &format!(".adversarial.{}.png", d.attacked), &store.read(&o.digest)?)?;
            println!("figure: {} (rows: original, perturbation, adversarial)", fig.display());
            files.push(fig);
        }
    }
    Ok(files)
}

/// The number of two-way attack stages a sweep will add after its members.
pub fn two_way_stage_count(members: &[Member]) -> usize {
    match members.first().and_then(|m| m.pipeline.spec.attack.as_ref()).map(|a| a.compare.as_slice()) {
        Some([a, others @ ..]) => others.iter().map(|b| 2 * compared_pairs(members, a, b).len()).sum(),
        _ => 0,
    }
}

/// The configurations (members equal apart from their case) that have both cases, as
/// (configuration label, member of `case_a`, member of `case_b`).
fn compared_pairs(members: &[Member], case_a: &str, case_b: &str) -> Vec<(String, usize, usize)> {
    let configs = group(members.iter().enumerate().map(|(i, m)| (m.values.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" "), i)));
    configs
        .into_iter()
        .filter_map(|(config, ids)| {
            let find = |case: &str| ids.iter().copied().find(|&i| members[i].case.as_deref() == Some(case));
            Some((config, find(case_a)?, find(case_b)?))
        })
        .collect()
}
