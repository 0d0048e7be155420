//! The `pipe` command line: run, status, ls, show.

use crate::adapters::Adapters;
use crate::executor::{self, Manifest, RunRecord, Runner};
use crate::plan::plan;
use crate::spec;
use crate::store::Store;
use crate::table::{format_parquet, to_parquet, Column};
use crate::{select, sweep, timefmt, UserError};
use anyhow::Result;
use clap::{Parser, Subcommand};
use serde_json::Value;
use std::path::{Path, PathBuf};

#[derive(Parser)]
#[command(name = "pipe", version, about = "Resumable, content-addressed training of introspective neural networks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args)]
struct StoreArg {
    /// The artifact store.
    #[arg(long, default_value = "artifacts", env = "PIPE_STORE")]
    store: PathBuf,
}

#[derive(clap::Args)]
struct PipelineArgs {
    /// A pipeline file (TOML).
    file: PathBuf,
    /// Override a setting, e.g. --set synthesize.lr=0.02 (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    #[command(flatten)]
    store: StoreArg,
}

#[derive(Subcommand)]
enum DataCommand {
    /// Download a data set's official files into DIR and verify their sha256 (needs curl
    /// and the network).
    Fetch {
        /// mnist, svhn or cifar10
        dataset: String,
        dir: PathBuf,
    },
    /// Format, splits, counts, image shape and class histogram of a file or directory
    /// (MNIST IDX, CIFAR-10 batches, SVHN .mat, an image folder or one image).
    Inspect {
        path: PathBuf,
        /// One JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum Command {
    /// Run a pipeline: reuse every stage already in the store, run the rest.
    Run(PipelineArgs),
    /// Show each stage as cached or to run, with its key, without running anything.
    Status(PipelineArgs),
    /// List runs in the store, oldest first.
    Ls(StoreArg),
    /// Show a run (id or prefix), a stage (key or prefix) or RUN:STAGE.
    Show {
        what: String,
        #[command(flatten)]
        store: StoreArg,
    },
    /// Data sets: what a path holds.
    #[command(subcommand)]
    Data(DataCommand),
    /// Throughput of training, synthesis and FGSM, next to PyTorch on the same cores.
    Bench {
        /// Seconds measured per workload (after a warm-up step).
        #[arg(long, default_value_t = 3.0)]
        seconds: f64,
        /// Only these workloads (cnn4_train, cnn4_synthesis, cnn4_fgsm, resnet32_train).
        #[arg(long, value_delimiter = ',')]
        only: Vec<String>,
        /// Skip the PyTorch reference.
        #[arg(long)]
        no_torch: bool,
        /// One JSON object per workload on stdout.
        #[arg(long)]
        json: bool,
        /// Where the Parquet table goes.
        #[arg(long, default_value = "artifacts/bench.parquet")]
        out: PathBuf,
    },
}

pub fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Run(a) => run(&a),
        Command::Status(a) => status(&a),
        Command::Ls(s) => ls(&s.store),
        Command::Show { what, store } => show(&store.store, &what),
        Command::Data(DataCommand::Fetch { dataset, dir }) => crate::fetch::run(&dataset, &dir),
        Command::Data(DataCommand::Inspect { path, json }) => {
            let i = crate::inspect::inspect(&path)?;
            if json {
                println!("{}", serde_json::to_string(&i)?);
            } else {
                crate::inspect::print(&i);
            }
            Ok(())
        }
        Command::Bench { seconds, only, no_torch, json, out } => {
            crate::bench::run(&crate::bench::Options { seconds, only, torch: !no_torch, json, out: &out }).map(|_| ())
        }
    }
}

fn run(a: &PipelineArgs) -> Result<()> {
    let members = sweep::expand(&a.file, &a.set)?;
    let runners = members.iter().map(|m| Adapters::for_device(&m.pipeline.spec.pipeline.device)).collect::<Result<Vec<_>>>()?;
    let store = Store::open(&a.store.store)?;
    let _lock = store.lock()?;
    let mut records = Vec::new();
    for (i, (m, runner)) in members.iter().zip(&runners).enumerate() {
        if members.len() > 1 {
            println!("== sweep member {}/{}: {}", i + 1, members.len(), m.label());
        }
        records.push(run_pipeline(&store, runner, &m.pipeline)?);
    }
    if members.len() > 1 {
        sweep_results(&store, &members, &records)?;
    }
    Ok(())
}

fn run_pipeline(store: &Store, runner: &Adapters, pipeline: &spec::Pipeline) -> Result<RunRecord> {
    let stages = plan(pipeline);
    let id = format!("{}-{}", timefmt::now_compact(), &blake3::hash(format!("{}{:?}", std::process::id(), std::time::SystemTime::now()).as_bytes()).to_hex()[..6]);
    let mut record = RunRecord {
        id: id.clone(),
        pipeline: pipeline.name.clone(),
        file: pipeline.file.display().to_string(),
        overrides: pipeline.overrides.clone(),
        spec: serde_json::to_value(&pipeline.spec)?,
        started_at: timefmt::now_iso(),
        finished_at: None,
        status: "running".into(),
        error: None,
        device: runner.device(),
        seconds: 0.0,
        stages: Vec::new(),
        stopped_early: None,
        selected: None,
    };
    println!("run {id}: {} ({} stages) -> {}", pipeline.name, stages.len(), store.root().display());
    let patience = pipeline.spec.pipeline.patience;
    let stop = move |done: &[executor::RunStage]| patience.and_then(|p| select::stop_reason(done, p));
    executor::run(store, &stages, runner, &mut record, &stop)?;
    record.selected = select::selection(&record.stages);
    store.write_run(&record.id, &record)?;
    let ran = record.stages.iter().filter(|s| s.status == "ran").count();
    println!("done in {:.2}s: {ran} ran, {} cached", record.seconds, record.stages.len() - ran);
    print_errors(&record);
    Ok(record)
}

/// The tidy table of a sweep (a row per member and evaluated round) in
/// `<store>/sweeps/<name>.parquet`, and the selected test error per setting, mean and
/// standard deviation over seeds.
fn sweep_results(store: &Store, members: &[sweep::Member], records: &[RunRecord]) -> Result<()> {
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
        for s in r.stages.iter().filter(|s| s.kind == "evaluate") {
            let round: u32 = s.stage.trim_start_matches("evaluate/").parse().unwrap_or(0);
            let get = |k: &str| s.summary.get(k).and_then(Value::as_f64).unwrap_or(f64::NAN);
            let (validation_error, test_error) = (get("validation_error"), get("test_error"));
            rows.push(Row { member, run: r.id.clone(), round, validation_error, test_error, selected: selected == Some(round as u64) });
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
    let path = store.root().join("sweeps").join(format!("{}.parquet", members[0].pipeline.name));
    store.write_atomic(&path, &to_parquet(columns)?)?;

    // selected test error per setting, over the seeds
    let mut groups: Vec<(String, Vec<f64>)> = Vec::new();
    for (m, r) in members.iter().zip(records) {
        let mut label: Vec<String> = m.case.iter().cloned().collect();
        label.extend(m.values.iter().filter(|(k, _)| k != "pipeline.seed").map(|(k, v)| format!("{k}={v}")));
        let label = label.join(" ");
        let err = r.selected.as_ref().and_then(|s| s["test_error"].as_f64()).unwrap_or(f64::NAN);
        match groups.iter_mut().find(|(l, _)| *l == label) {
            Some((_, v)) => v.push(err),
            None => groups.push((label, vec![err])),
        }
    }
    println!("\nsweep of {} pipelines: test error of the round selected on validation (mean +- sd over seeds)", members.len());
    for (label, errs) in &groups {
        let (m, sd) = sweep::mean_sd(errs);
        println!("  {label:<40} {:>6.2}% +- {:.2}%  (n = {})", 100.0 * m, 100.0 * sd, errs.len());
    }
    println!("table: {}", path.display());
    Ok(())
}

/// Validation and test error per round, from the evaluate stages' summaries.
fn print_errors(record: &RunRecord) {
    let rows: Vec<String> = record
        .stages
        .iter()
        .filter(|s| s.kind == "evaluate")
        .map(|s| {
            let pct = |k: &str| s.summary.get(k).and_then(Value::as_f64).map(|v| format!("{:>7.2}%", 100.0 * v)).unwrap_or_else(|| "       ?".into());
            format!("  {:<6} {}  {}", s.stage.trim_start_matches("evaluate/"), pct("validation_error"), pct("test_error"))
        })
        .collect();
    if !rows.is_empty() {
        println!("  round  val err  test err");
        for r in rows {
            println!("{r}");
        }
    }
    if let Some(sel) = &record.selected {
        let pct = |k: &str| sel.get(k).and_then(Value::as_f64).map(|v| format!("{:.2}%", 100.0 * v)).unwrap_or_else(|| "?".into());
        println!("selected on validation: round {} (val err {}, test err {})", sel["round"], pct("validation_error"), pct("test_error"));
    }
}

fn status(a: &PipelineArgs) -> Result<()> {
    let members = sweep::expand(&a.file, &a.set)?;
    let store = Store::at(&a.store.store);
    let (mut cached_all, mut total_all) = (0, 0);
    for m in &members {
        let rows = executor::status(&store, &plan(&m.pipeline))?;
        let cached = rows.iter().filter(|r| r.state == "cached").count();
        cached_all += cached;
        total_all += rows.len();
        if members.len() > 1 {
            println!("  {:<48} {cached} cached, {} to run", m.label(), rows.len() - cached);
            continue;
        }
        println!("{} ({}), store {}", m.pipeline.name, m.pipeline.file.display(), store.root().display());
        for r in &rows {
            let key = match (&r.key, &r.waits_for) {
                (Some(k), _) => k[..12].to_string(),
                (None, Some(up)) => format!("(key after {up})"),
                _ => String::new(),
            };
            println!("  {:<7} {:<14} {key}", r.state, r.stage);
        }
    }
    if members.len() > 1 {
        println!("sweep of {} pipelines: {cached_all} of {total_all} stages cached (shared stages count once per member)", members.len());
    } else {
        println!("{cached_all} cached, {} to run", total_all - cached_all);
    }
    Ok(())
}

fn ls(root: &Path) -> Result<()> {
    let store = Store::open_existing(root)?;
    let ids = store.run_ids()?;
    if ids.is_empty() {
        println!("no runs in {}", root.display());
        return Ok(());
    }
    println!("{:<27} {:<16} {:<8} {:>4} {:>6} {:>9}  started", "run", "pipeline", "status", "ran", "cached", "seconds");
    for id in ids {
        if let Some(r) = store.run::<RunRecord>(&id)? {
            let ran = r.stages.iter().filter(|s| s.status == "ran").count();
            println!("{:<27} {:<16} {:<8} {:>4} {:>6} {:>9.2}  {}", r.id, r.pipeline, r.status, ran, r.stages.len() - ran, r.seconds, r.started_at);
        }
    }
    Ok(())
}

/// The one item of `items` equal to `what` or, failing that, the only one it prefixes.
fn unique_match<'a>(items: &'a [String], what: &str, kind: &str) -> Result<Option<&'a String>> {
    if let Some(exact) = items.iter().find(|i| i.as_str() == what) {
        return Ok(Some(exact));
    }
    let hits: Vec<&String> = items.iter().filter(|i| i.starts_with(what)).collect();
    match hits.len() {
        0 => Ok(None),
        1 => Ok(Some(hits[0])),
        n => Err(UserError(format!("`{what}` matches {n} {kind}s; give more characters")).into()),
    }
}

fn show(root: &Path, what: &str) -> Result<()> {
    let store = Store::open_existing(root)?;
    let runs = store.run_ids()?;
    if let Some((run, stage)) = what.split_once(':') {
        let id = unique_match(&runs, run, "run")?.ok_or_else(|| UserError(format!("no run `{run}` in {}", root.display())))?;
        let record: RunRecord = store.run(id)?.ok_or_else(|| UserError(format!("run {id} has no record")))?;
        let s = record.stages.iter().find(|s| s.stage == stage).ok_or_else(|| {
            let names: Vec<&str> = record.stages.iter().map(|s| s.stage.as_str()).collect();
            UserError(format!("run {id} has no stage `{stage}`; it has {}", names.join(", ")))
        })?;
        return show_stage(&store, &s.key);
    }
    if let Some(id) = unique_match(&runs, what, "run")? {
        return show_run(&store, id);
    }
    let keys = store.stage_keys()?;
    if let Some(key) = unique_match(&keys, what, "stage key")? {
        return show_stage(&store, key);
    }
    Err(UserError(format!("`{what}` is neither a run nor a stage key in {} (see `pipe ls`)", root.display())).into())
}

fn show_run(store: &Store, id: &str) -> Result<()> {
    let r: RunRecord = store.run(id)?.ok_or_else(|| UserError(format!("run {id} has no record")))?;
    println!("run       {}\npipeline  {} ({})\nstatus    {}\nstarted   {}\nseconds   {:.2}\ndevice    {}", r.id, r.pipeline, r.file, r.status, r.started_at, r.seconds, r.device);
    if !r.overrides.is_empty() {
        println!("overrides {}", r.overrides.join(" "));
    }
    if let Some(e) = &r.error {
        println!("error     {e}");
    }
    if let Some(why) = &r.stopped_early {
        println!("stopped   {why}");
    }
    println!();
    for s in &r.stages {
        let line = s.summary.get("line").and_then(Value::as_str).unwrap_or("");
        println!("  {:<7} {:<14} {}  {:>8.2}s  {line}", s.status, s.stage, &s.key[..12], s.seconds);
    }
    print_errors(&r);
    Ok(())
}

fn show_stage(store: &Store, key: &str) -> Result<()> {
    let m: Manifest = store.manifest(key)?.ok_or_else(|| UserError(format!("stage {key} is not committed in this store")))?;
    println!("stage     {} ({} v{})\nkey       {}\ndevice    {}\nstarted   {}\nseconds   {:.2}", m.stage, m.kind, m.version, m.key, m.device, m.started_at, m.seconds);
    if let Some(r) = &m.resumed {
        println!("resumed   {r}");
    }
    println!("params    {}", serde_json::to_string_pretty(&m.params)?.replace('\n', "\n          "));
    println!("inputs");
    for (name, d) in &m.inputs {
        println!("  {name:<26} {d}");
    }
    println!("outputs");
    for (name, o) in &m.outputs {
        println!("  {name:<26} {}  {:>10} bytes  {}", o.digest, o.bytes, store.object_path(&o.digest).display());
    }
    println!("summary   {}", serde_json::to_string_pretty(&m.summary)?.replace('\n', "\n          "));
    for (name, o) in m.outputs.iter().filter(|(n, _)| n.ends_with(".parquet")) {
        println!("\n{name}:");
        println!("{}", format_parquet(store.read(&o.digest)?, 20)?);
    }
    Ok(())
}
