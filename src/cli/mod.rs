//! The `pipe` command line: run, status, ls, show.

pub mod bench;
mod jobs;
pub mod samples;
pub mod sample;
pub mod stylize;

use crate::audit::runs::{new_record, run_stage, shown_status, unique_match};
use crate::engine::executor::{self, Manifest, RunRecord, Runner};
use crate::engine::interrupt::{self, Interrupted};
use crate::engine::progress::{self, Display};
use crate::engine::store::Store;
use crate::engine::table::format_parquet;
use crate::kinds::Kinds;
use crate::methods::{self, plan, select, Rounds};
use crate::pipeline::{spec, sweep};
use crate::UserError;
use anyhow::{Context, Result};
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

#[derive(Clone, Copy, Debug, PartialEq, clap::ValueEnum)]
enum ExecutorKind {
    /// In this process (with --jobs, in this machine's processes).
    Local,
    /// Each stage a Slurm job (`pipe exec-stage KEY`); this run submits, polls and waits.
    Slurm,
}

#[derive(clap::Args, Clone, Debug)]
struct ExecutorArgs {
    /// Where stages are computed.
    #[arg(long, value_enum, default_value = "local")]
    executor: ExecutorKind,
    /// Slurm partition of the stage jobs (sbatch --partition).
    #[arg(long)]
    partition: Option<String>,
    /// Generic resources of each stage job (sbatch --gres, e.g. gpu:1).
    #[arg(long)]
    gres: Option<String>,
    /// Time limit of each stage job (sbatch --time, e.g. 2:00:00).
    #[arg(long)]
    time: Option<String>,
    /// A stage job that ends without committing its stage (failed, preempted, out of time)
    /// is submitted again this many times; it resumes from its checkpoint.
    #[arg(long, default_value_t = 2)]
    retries: u32,
    /// Folder of the stage jobs' logs, on a file system the nodes share.
    #[arg(long, default_value = "slurm-logs")]
    slurm_logs: PathBuf,
    /// Seconds between looks at the queue.
    #[arg(long, default_value_t = 2.0)]
    poll: f64,
    /// Stages of one kind that are ready together go as one job array; at most this many of
    /// its tasks run at once (sbatch --array=0-N%P).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    array_parallelism: Option<u32>,
    /// Submit the whole graph at once, each stage after its upstream stages' jobs
    /// (--dependency=afterok), and a last job that writes the run record, then return: for
    /// clusters that forbid long processes on login nodes. Every round is computed (an early
    /// stop on validation cannot cancel jobs already queued), and a failed job is not
    /// resubmitted (a rerun of the same command resumes).
    #[arg(long)]
    detach: bool,
}

impl ExecutorArgs {
    /// The same settings as arguments, for the processes of a sweep's members.
    fn to_args(&self) -> Vec<String> {
        let mut out = vec!["--executor".into(), if self.executor == ExecutorKind::Slurm { "slurm" } else { "local" }.into()];
        for (flag, v) in [("--partition", &self.partition), ("--gres", &self.gres), ("--time", &self.time)] {
            if let Some(v) = v {
                out.extend([flag.to_string(), v.clone()]);
            }
        }
        out.extend(["--retries".into(), self.retries.to_string(), "--slurm-logs".into(), self.slurm_logs.display().to_string(), "--poll".into(), self.poll.to_string()]);
        if let Some(p) = self.array_parallelism {
            out.extend(["--array-parallelism".into(), p.to_string()]);
        }
        out
    }

    /// The Slurm queue, when stages go to Slurm; slurm settings without it are refused.
    fn slurm(&self) -> Result<Option<crate::engine::slurm::Slurm>> {
        if self.executor != ExecutorKind::Slurm {
            if self.partition.is_some() || self.gres.is_some() || self.time.is_some() || self.array_parallelism.is_some() || self.detach {
                return Err(UserError("--partition, --gres, --time, --array-parallelism and --detach are settings of Slurm jobs: add --executor slurm".into()).into());
            }
            return Ok(None);
        }
        if !(self.poll.is_finite() && self.poll > 0.0) {
            return Err(UserError(format!("--poll {}: expected seconds above 0", self.poll)).into());
        }
        let logs = std::path::absolute(&self.slurm_logs).unwrap_or_else(|_| self.slurm_logs.clone());
        let opts = crate::engine::slurm::SlurmOptions {
            partition: self.partition.clone(),
            gres: self.gres.clone(),
            time: self.time.clone(),
            retries: self.retries,
            logs,
            poll: std::time::Duration::from_secs_f64(self.poll),
            array_parallelism: self.array_parallelism,
        };
        crate::engine::slurm::Slurm::new(opts).map(Some)
    }
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
        /// Where the files go (created if needed); point `data.path` at it.
        dir: PathBuf,
    },
    /// Format, splits, counts, image shape and class histogram of a file or directory
    /// (MNIST IDX, CIFAR-10 batches, SVHN .mat, an image folder or one image).
    Inspect {
        /// A data set directory (MNIST, CIFAR-10, SVHN, Parquet shards, an image folder)
        /// or one file.
        path: PathBuf,
        /// One JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum Command {
    /// Run a pipeline: reuse every stage already in the store, run the rest. Ctrl-C (or
    /// SIGTERM) stops at the next safe point (a training stage at the end of its epoch,
    /// after saving it) and says how to resume; a second one stops at once.
    Run {
        #[command(flatten)]
        args: PipelineArgs,
        /// No progress bars or progress lines (stage results are still printed).
        #[arg(long, short)]
        quiet: bool,
        /// Sweep members to run at once, each a process with its share of the cores; stages
        /// they share are computed once. For one pipeline: independent stages at once (the
        /// one-vs-all nets of a round), as threads sharing the cores.
        #[arg(long, short, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
        jobs: u32,
        /// Run only this sweep member (0-based; what `--jobs` starts for each member).
        #[arg(long, hide = true)]
        member: Option<usize>,
        #[command(flatten)]
        executor: ExecutorArgs,
    },
    /// Compute one stage whose job `pipe run --executor slurm` saved in the store (what
    /// each Slurm job runs). Idempotent: a committed stage is left as it is.
    ExecStage {
        /// The stage's key (its job saved by `pipe run --executor slurm`).
        #[arg(required_unless_present = "plan", conflicts_with = "plan")]
        key: Option<String>,
        /// A plan saved by `--detach`, with --stage: that stage, its key worked out from
        /// the manifests of its upstream stages.
        #[arg(long, requires = "stage")]
        plan: Option<String>,
        #[arg(long, requires = "plan")]
        stage: Option<String>,
        #[command(flatten)]
        store: StoreArg,
    },
    /// Everything that went into a checkpoint: the chain of warm starts, the data sets and
    /// every pseudo-negative (how it was made, how often it was drawn into a batch, how
    /// each later round's classifier scores it).
    Lineage {
        /// A checkpoint digest (or unique prefix), or RUN:train/N.
        checkpoint: String,
        /// `table` (readable), `parquet` (one row per pseudo-negative, to --out) or `json`.
        #[arg(long, default_value = "table", value_parser = ["table", "parquet", "json"])]
        format: String,
        /// Same as --format json.
        #[arg(long)]
        json: bool,
        /// Where --format parquet writes (default: lineage-<checkpoint>.parquet here).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Pseudo-negative rows shown by the table format.
        #[arg(long, default_value_t = 20)]
        rows: usize,
        #[command(flatten)]
        store: StoreArg,
    },
    /// A synthesize stage's pseudo-negatives: a table, a PNG each, a Parquet or NPY file or
    /// a labelled grid; of one class, or only those that still fool a later classifier.
    Samples(samples::Args),
    /// Images drawn from a trained WINN or IGM model (through its cascades in order), of its own
    /// size or any larger one from patches: a cached, resumable `sample` stage, copied to
    /// --out as samples.safetensors, samples.parquet (seed, steps, final f) and grid.png.
    Sample(sample::Args),
    /// A content image restyled by a trained texture model (IGM style transfer): descent
    /// on a ||x - content|| - (1 - a) Σ_t f_t(x) over random windows of the nets' patch
    /// size, from the content; a cached `stylize` stage, its PNG copied to --out.
    Stylize(stylize::Args),
    /// Show each stage as cached or to run, with its key, without running anything.
    Status {
        #[command(flatten)]
        args: PipelineArgs,
        /// One JSON document instead of text.
        #[arg(long)]
        json: bool,
    },
    /// List runs in the store, oldest first.
    Ls {
        #[command(flatten)]
        store: StoreArg,
        /// One JSON document instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Show a run (id or prefix), a stage (key or prefix) or RUN:STAGE.
    Show {
        /// A run id (or unique prefix), a stage key (or prefix), or RUN:STAGE such as
        /// 20261202-1:train/1.
        what: String,
        #[command(flatten)]
        store: StoreArg,
        /// One JSON document instead of text (keys and digests in full).
        #[arg(long)]
        json: bool,
    },
    /// Compare two runs (ids, prefixes or paths of run records): settings that differ,
    /// each stage's key and outputs, and the metric deltas.
    Diff {
        /// The first run: an id, a unique prefix, or the path of a run record.
        run_a: String,
        /// The second run, the same way.
        run_b: String,
        #[command(flatten)]
        store: StoreArg,
        /// One JSON document instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Before running: which stages will rerun, and what changed in each one's key since
    /// the last run of the same file.
    Why {
        /// A pipeline file (TOML).
        file: PathBuf,
        /// Only this stage, e.g. train/1.
        stage: Option<String>,
        /// Override a setting, e.g. --set synthesize.lr=0.02 (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
        #[command(flatten)]
        store: StoreArg,
        /// One JSON document instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Every setting of a pipeline file: key, type, default, allowed values and meaning.
    Settings(crate::pipeline::settings::Args),
    /// Data sets: what a path holds.
    #[command(subcommand)]
    Data(DataCommand),
    /// Throughput of training, synthesis and FGSM, next to PyTorch on the same cores.
    Bench {
        /// Seconds measured per workload (after a warm-up step).
        #[arg(long, default_value_t = 3.0)]
        seconds: f64,
        /// Only these workloads (cnn4_train, cnn4_train_pn, cnn4_train_pn_lineage,
        /// cnn4_synthesis, cnn4_fgsm, resnet32_train).
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
    /// Delete what no run record needs: stages and objects of deleted runs, tmp/ debris.
    Gc {
        /// Keep only the N newest run records; older ones are deleted with what only they needed.
        #[arg(long, value_name = "N")]
        keep_last: Option<usize>,
        /// Report what would be freed; delete nothing.
        #[arg(long)]
        dry_run: bool,
        /// Also delete partial/ checkpoints (an interrupted run could no longer resume).
        #[arg(long)]
        partials: bool,
        /// One JSON object instead of text.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        store: StoreArg,
    },
    /// Rehash every object and check every manifest and run record; exit 1 on damage.
    Verify {
        /// Uncommit the stages whose outputs are damaged (the next `pipe run` remakes them)
        /// and delete the corrupt objects.
        #[arg(long)]
        repair: bool,
        /// One JSON object instead of text.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        store: StoreArg,
    },
    /// Every run's metrics as one tidy Parquet table (a row per run, stage and metric).
    Export {
        /// Where the table goes [default: <store>/export/metrics.parquet].
        #[arg(long)]
        out: Option<PathBuf>,
        #[command(flatten)]
        store: StoreArg,
    },
    /// Error per round and of the selected round (mean and sd over seeds), and time per
    /// stage kind, for each pipeline in the store.
    Report {
        /// Only this pipeline.
        #[arg(long)]
        pipeline: Option<String>,
        /// Write the report as a static site into DIR instead (index.html; a page per
        /// pipeline or sweep and per run). DIR must be new, empty or an earlier report.
        #[arg(long, value_name = "DIR")]
        html: Option<PathBuf>,
        #[command(flatten)]
        store: StoreArg,
    },
}

pub fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Run { args, quiet, jobs, member, executor } => run(&args, quiet, jobs as usize, member, &executor),
        Command::ExecStage { key, plan, stage, store } => exec_stage(&store.store, key.as_deref(), plan.as_deref().zip(stage.as_deref())),
        Command::Lineage { checkpoint, format, json, out, rows, store } => lineage(&store.store, &checkpoint, if json { "json" } else { &format }, out, rows),
        Command::Samples(a) => samples::run(&a),
        Command::Sample(a) => sample::run(&a),
        Command::Stylize(a) => stylize::run(&a),
        Command::Status { args, json } => status(&args, json),
        Command::Ls { store, json } => ls(&store.store, json),
        Command::Show { what, store, json } => show(&store.store, &what, json),
        Command::Diff { run_a, run_b, store, json } => crate::audit::diff::run(&store.store, &run_a, &run_b, json),
        Command::Why { file, stage, set, store, json } => crate::audit::why::run(&file, &set, &store.store, stage.as_deref(), json),
        Command::Settings(a) => crate::pipeline::settings::run(&a),
        Command::Data(DataCommand::Fetch { dataset, dir }) => crate::data::fetch::run(&dataset, &dir),
        Command::Data(DataCommand::Inspect { path, json }) => {
            let i = crate::data::inspect::inspect(&path)?;
            if json {
                println!("{}", serde_json::to_string(&i)?);
            } else {
                crate::data::inspect::print(&i);
            }
            Ok(())
        }
        Command::Bench { seconds, only, no_torch, json, out } => {
            bench::run(&bench::Options { seconds, only, torch: !no_torch, json, out: &out }).map(|_| ())
        }
        Command::Gc { keep_last, dry_run, partials, json, store } => crate::care::gc(&store.store, &crate::care::GcOptions { keep_last, dry_run, partials, json }),
        Command::Verify { repair, json, store } => crate::care::verify(&store.store, repair, json),
        Command::Export { out, store } => crate::audit::report::export(&store.store, out.as_deref()),
        Command::Report { pipeline, html: Some(dir), store } => crate::audit::html::write(&store.store, &dir, pipeline.as_deref()),
        Command::Report { pipeline, html: None, store } => crate::audit::report::report(&store.store, pipeline.as_deref()),
    }
}

fn run(a: &PipelineArgs, quiet: bool, jobs: usize, only: Option<usize>, executor: &ExecutorArgs) -> Result<()> {
    let display = Display::detect(quiet);
    let slurm = executor.slurm()?;
    let members = sweep::expand(&a.file, &a.set)?;
    crate::audit::study::check(&members)?;
    if let Some(k) = only.filter(|k| *k >= members.len()) {
        return Err(UserError(format!("--member {k}: {} has {} member(s), numbered from 0", a.file.display(), members.len())).into());
    }
    let runners = members.iter().map(|m| Kinds::for_device(&m.pipeline.spec.pipeline.device)).collect::<Result<Vec<_>>>()?;
    // a directory this run makes is removed again if the run is refused for its input
    let created = crate::engine::store::local_dir(&a.store.store).filter(|d| !d.exists());
    let store = Store::open(&a.store.store)?;
    let _lock = store.lock()?;
    interrupt::install();
    if let Some(slurm) = slurm.as_ref().filter(|_| executor.detach) {
        return detach(a, &store, slurm, &members, &runners);
    }
    if jobs > 1 && members.len() > 1 && only.is_none() {
        let ids = jobs::run_members(&a.file, &a.set, &a.store.store, quiet, &members, jobs, &executor.to_args()).map_err(|e| with_resume_hint(e, a))?;
        let records = ids.iter().map(|id| store.run::<RunRecord>(id)?.with_context(|| format!("the record of run {id} is missing"))).collect::<Result<Vec<_>>>()?;
        return crate::audit::study::report(&store, &members, &records).map(|_| ());
    }
    let mut records = Vec::new();
    for (i, (m, runner)) in members.iter().zip(&runners).enumerate().filter(|(i, _)| only.is_none_or(|k| k == *i)) {
        if members.len() > 1 && only.is_none() {
            println!("== sweep member {}/{}: {}", i + 1, members.len(), m.label());
        }
        let member = (members.len() > 1).then(|| m.label());
        // one pipeline with --jobs: its independent stages (one-vs-all nets) at once
        let placement = match &slurm {
            Some(q) => executor::Placement::Jobs(q),
            None if jobs > 1 => executor::Placement::Threads(jobs),
            None => executor::Placement::Here,
        };
        match run_pipeline(&store, runner, &m.pipeline, member, display, placement) {
            Ok(r) => records.push(r),
            Err(e) => {
                // bad input found only once the data was read: as if refused up front
                if let Some(dir) = created.as_ref().filter(|_| UserError::is_in(&e)) {
                    if store.run_ids()?.is_empty() && store.stage_keys()?.is_empty() {
                        std::fs::remove_dir_all(dir).with_context(|| format!("removing the store {} this run created", dir.display()))?;
                    }
                }
                return Err(with_resume_hint(e, a));
            }
        }
    }
    if members.len() > 1 && only.is_none() {
        crate::audit::study::report(&store, &members, &records)?;
    }
    Ok(())
}

/// `--detach`: every member's graph submitted at once, then a last job, this same `pipe
/// run` (every stage cached by then), that writes the run records and the sweep's table.
fn detach(a: &PipelineArgs, store: &Store, slurm: &crate::engine::slurm::Slurm, members: &[sweep::Member], runners: &[Kinds]) -> Result<()> {
    use crate::engine::slurm::shell_quote;
    let mut all = Vec::new();
    for (m, runner) in members.iter().zip(runners) {
        let stages = plan(&m.pipeline).stages;
        let cached = executor::status(store, &stages)?.into_iter().filter(|s| s.state == "cached").map(|s| s.stage).collect();
        let id = crate::engine::job::Plan::new(&stages, &runner.device()).save(store)?;
        let ids = slurm.submit_plan(store, &id, &stages, &cached)?;
        let label = if members.len() > 1 { m.label() } else { m.pipeline.name.clone() };
        println!("{label}: plan {} — {} of {} stages submitted{}", &id[..12], ids.len(), stages.len(), ids.first().map(|(s, j)| format!(" (first: {s} as job {j})")).unwrap_or_default());
        all.extend(ids.into_iter().map(|(_, j)| j));
    }
    let file = std::path::absolute(&a.file).unwrap_or_else(|_| a.file.clone());
    let mut finale = format!("exec {} run {} --store {} --quiet", shell_quote(&slurm.pipe().display().to_string()), shell_quote(&file.display().to_string()), shell_quote(&store.location()));
    for kv in &a.set {
        finale.push_str(&format!(" --set {}", shell_quote(kv)));
    }
    let last = slurm.submit_after("record", &all, finale)?;
    println!("detached: {} stage job(s) and job {last}, which writes the run record once they all end well; follow with `squeue` and `pipe status {} --store {}`", all.len(), a.file.display(), store.location());
    Ok(())
}

/// `pipe exec-stage KEY`: one saved job, computed here.
fn exec_stage(root: &Path, key: Option<&str>, planned: Option<(&str, &str)>) -> Result<()> {
    let store = Store::open_existing(root)?;
    let _lock = store.lock()?;
    interrupt::install();
    let line = match (key, planned) {
        (Some(key), _) => {
            let job = crate::engine::job::Job::load(&store, key)?;
            let runner = Kinds::for_device(&job.device)?;
            executor::exec_job(&store, key, crate::kinds::kind_id, &runner, Display::Lines)?
        }
        (None, Some((plan, stage))) => {
            let plan = crate::engine::job::Plan::load(&store, plan)?;
            let runner = Kinds::for_device(&plan.device)?;
            executor::exec_planned(&store, &plan.stages(crate::kinds::kind_id)?, stage, &runner, Display::Lines)?
        }
        (None, None) => unreachable!("clap requires a key or a plan"),
    };
    println!("{line}");
    if let Some(r) = store.requests() {
        println!("store: {r}");
    }
    Ok(())
}

/// An interruption, with the command that resumes it (the same one: cached stages are
/// reused and a stage with a checkpoint continues from it).
fn with_resume_hint(e: anyhow::Error, a: &PipelineArgs) -> anyhow::Error {
    let Some(i) = e.chain().find_map(|c| c.downcast_ref::<Interrupted>()) else { return e };
    let mut cmd = format!("pipe run {}", a.file.display());
    for s in &a.set {
        cmd.push_str(&format!(" --set {}", shell_word(s)));
    }
    if a.store.store != Path::new("artifacts") {
        cmd.push_str(&format!(" --store {}", shell_word(&a.store.store.display().to_string())));
    }
    Interrupted { signal: i.signal, where_: format!("{}\nresume with: {cmd}", i.where_) }.into()
}

/// `s` as one shell word.
fn shell_word(s: &str) -> String {
    if !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c)) {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

fn run_pipeline(store: &Store, runner: &Kinds, pipeline: &spec::Pipeline, member: Option<String>, display: Display, placement: executor::Placement) -> Result<RunRecord> {
    let graph = plan(pipeline);
    let stages = graph.stages;
    let rounds = graph.rounds;
    let mut record = new_record(&pipeline.name, pipeline, runner.device());
    record.member = member;
    let id = record.id.clone();
    println!("run {id}: {} ({}) -> {}", pipeline.name, crate::audit::text::count(stages.len(), "stage"), store.location());
    let patience = pipeline.spec.pipeline.patience;
    let stop = move |done: &[executor::RunStage]| patience.and_then(|p| select::stop_reason(done, &rounds, p));
    if let Err(e) = executor::run_placed(store, &stages, runner, &mut record, &stop, display, placement) {
        // exit 2 means nothing written: a run refused before any stage ran leaves no record
        if UserError::is_in(&e) && record.stages.iter().all(|s| s.status != "ran") {
            store.remove_runs(std::slice::from_ref(&record.id))?;
        }
        return Err(e);
    }
    record.selected = select::selection(&record.stages, &rounds);
    store.write_run(&record.id, &record)?;
    let ran = record.stages.iter().filter(|s| s.status == "ran").count();
    println!("done in {:.2}s: {ran} ran, {} cached", record.seconds, record.stages.len() - ran);
    if let Some(r) = store.requests() {
        // what the run cost on object storage, for sizing and for bills
        println!("store: {r} so far");
    }
    print_errors(&record, &rounds);
    Ok(record)
}

/// The selection and reported metric per round (validation and test error for ICN), from
/// the summaries of the stages that report rounds.
fn print_errors(record: &RunRecord, rounds: &Rounds) {
    let shown = rounds.shown;
    let rows: Vec<String> = select::reporters(&record.stages, rounds)
        .map(|(round, s)| {
            let value = |k: &str, shown: crate::methods::Shown| s.summary.get(k).and_then(Value::as_f64).map(|v| format!("{:>8}", shown.value(v))).unwrap_or_else(|| "       ?".into());
            format!("  {:<6} {}  {}", round, rounds.select_on.map_or("       -".into(), |k| value(k, crate::methods::Shown::TEST_ERROR)), value(rounds.reported, shown))
        })
        .collect();
    if !rows.is_empty() {
        println!("  round  val err  {}", shown.heading);
        for r in rows {
            println!("{r}");
        }
    }
    if let Some(sel) = &record.selected {
        let value = |k: &str, shown: crate::methods::Shown| sel.get(k).and_then(Value::as_f64).map(|v| shown.value(v)).unwrap_or_else(|| "?".into());
        match rounds.select_on {
            Some(metric) => println!("selected on validation: round {} (val err {}, {} {})", sel["round"], value(metric, crate::methods::Shown::TEST_ERROR), shown.heading, value(rounds.reported, shown)),
            None => println!("kept: the last round, {} ({} {})", sel["round"], shown.heading, value(rounds.reported, shown)),
        }
    }
}

fn status(a: &PipelineArgs, json: bool) -> Result<()> {
    let members = sweep::expand(&a.file, &a.set)?;
    crate::audit::study::check(&members)?;
    let store = Store::at(&a.store.store)?;
    let (mut cached_all, mut total_all) = (0, 0);
    // stages shared by members (same key) are one piece of work; a stage whose key is not
    // known yet counts as its own
    let (mut distinct, mut distinct_cached, mut unknown) = (std::collections::HashSet::new(), std::collections::HashSet::new(), 0);
    let mut docs = Vec::new();
    // what a `pipe run` holding the store is doing now, read from its heartbeat
    let live = progress::current(&store);
    for m in &members {
        let running = |key: &Option<String>| live.iter().find(|(h, _)| key.as_deref() == Some(h.key.as_str()));
        let mut rows = executor::status(&store, &plan(&m.pipeline).stages)?;
        for r in rows.iter_mut().filter(|r| running(&r.key).is_some()) {
            r.state = "running".into();
        }
        let cached = rows.iter().filter(|r| r.state == "cached").count();
        cached_all += cached;
        total_all += rows.len();
        for r in &rows {
            match &r.key {
                Some(k) if r.state == "cached" => {
                    distinct_cached.insert(k.clone());
                    distinct.insert(k.clone());
                }
                Some(k) => {
                    distinct.insert(k.clone());
                }
                None => unknown += 1,
            }
        }
        if json {
            let member = (members.len() > 1).then(|| m.label());
            docs.push(serde_json::json!({"member": member, "pipeline": m.pipeline.name, "file": m.pipeline.file, "stages": rows, "cached": cached, "to_run": rows.len() - cached, "running": live.iter().map(|(h, _)| h).collect::<Vec<_>>()}));
            continue;
        }
        if members.len() > 1 {
            println!("  {:<48} {cached} cached, {} to run", m.label(), rows.len() - cached);
            continue;
        }
        println!("{} ({}), store {}", m.pipeline.name, m.pipeline.file.display(), store.location());
        for r in &rows {
            let key = match (&r.key, &r.waits_for) {
                (Some(k), _) => k[..12].to_string(),
                (None, Some(up)) => format!("(key after {up})"),
                _ => String::new(),
            };
            match running(&r.key) {
                Some((h, age)) => println!("  {:<7} {:<14} {key}  {}", r.state, r.stage, live_line(h, *age)),
                None => println!("  {:<7} {:<14} {key}", r.state, r.stage),
            }
        }
    }
    if json {
        let doc = match docs.len() {
            1 => {
                let mut d = docs.remove(0);
                d["store"] = serde_json::json!(store.location());
                d
            }
            _ => serde_json::json!({"file": a.file, "store": store.location(), "members": docs, "cached": cached_all, "to_run": total_all - cached_all}),
        };
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(());
    }
    if members.len() > 1 {
        for (h, age) in &live {
            println!("  running {}", live_line(h, *age));
        }
        let later = if unknown > 0 { format!("; {unknown} more wait for upstream outputs to get a key") } else { String::new() };
        println!("sweep of {} pipelines: {cached_all} of {total_all} stages cached; {} distinct stage keys (shared ones once), {} cached{later}", members.len(), distinct.len(), distinct_cached.len());
        let two_way = crate::audit::study::two_way_stage_count(&members);
        if two_way > 0 {
            println!("then {two_way} two-way attack stages, after the members (their keys depend on the members' classifiers)");
        }
    } else {
        println!("{cached_all} cached, {} to run", total_all - cached_all);
    }
    Ok(())
}

fn lineage(root: &Path, what: &str, format: &str, out: Option<PathBuf>, rows: usize) -> Result<()> {
    // --out names a file, and only Parquet goes to one
    let format = match (out.is_some(), format) {
        (true, "table") => "parquet",
        (true, "json") => return Err(UserError("--out writes the Parquet table; --format json (or --json) prints to stdout".into()).into()),
        (_, f) => f,
    };
    let store = Store::open_existing(root)?;
    let l = crate::audit::lineage::lineage(&store, what)?;
    match format {
        "json" => println!("{}", serde_json::to_string_pretty(&crate::audit::lineage::to_json(&l))?),
        "parquet" => {
            let path = out.unwrap_or_else(|| PathBuf::from(format!("lineage-{}.parquet", &l.checkpoint[..12])));
            std::fs::write(&path, crate::audit::lineage::to_table(&l)?).map_err(|e| UserError(format!("cannot write {}: {e}", path.display())))?;
            println!("{} pseudo-negatives of checkpoint {} -> {}", l.pseudo_negatives.len(), &l.checkpoint[..12], path.display());
        }
        _ => crate::audit::lineage::print(&l, rows),
    }
    Ok(())
}

fn ls(root: &Path, json: bool) -> Result<()> {
    let store = Store::open_existing(root)?;
    let ids = store.run_ids()?;
    // a damaged record is listed, not fatal: `pipe verify --repair` removes it
    let records: Vec<(String, std::result::Result<RunRecord, String>)> = ids
        .iter()
        .filter_map(|id| match store.run::<RunRecord>(id) {
            Ok(Some(r)) => Some((id.clone(), Ok(r))),
            Ok(None) => None,
            Err(e) => Some((id.clone(), Err(format!("{e:#}")))),
        })
        .collect();
    if json {
        let runs: Vec<Value> = records
            .iter()
            .map(|(id, r)| match r {
                Ok(r) => {
                    let ran = r.stages.iter().filter(|s| s.status == "ran").count();
                    serde_json::json!({
                        "id": r.id, "pipeline": r.pipeline, "file": r.file, "status": shown_status(&store, r), "ran": ran, "cached": r.stages.len() - ran,
                        "seconds": r.seconds, "started_at": r.started_at, "finished_at": r.finished_at, "device": r.device, "overrides": r.overrides,
                        "error": r.error, "selected": r.selected, "member": r.member,
                    })
                }
                Err(e) => serde_json::json!({"id": id, "status": "damaged", "error": e}),
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&serde_json::json!({"store": root, "runs": runs}))?);
        return Ok(());
    }
    if records.is_empty() {
        println!("no runs in {}", root.display());
        return Ok(());
    }
    println!("{:<27} {:<16} {:<11} {:>4} {:>6} {:>9}  {:<24}  member / overrides", "run", "pipeline", "status", "ran", "cached", "seconds", "started");
    for (id, r) in &records {
        match r {
            Ok(r) => {
                let ran = r.stages.iter().filter(|s| s.status == "ran").count();
                // a sweep member by its case and values; a single run by its --set overrides
                let what = r.member.clone().unwrap_or_else(|| r.overrides.join(" "));
                println!("{:<27} {:<16} {:<11} {:>4} {:>6} {:>9.2}  {:<24}  {what}", r.id, r.pipeline, shown_status(&store, r), ran, r.stages.len() - ran, r.seconds, r.started_at);
            }
            Err(e) => println!("{id:<27} {:<16} {:<11}  {e} (`pipe verify --repair` removes it)", "?", "damaged"),
        }
    }
    Ok(())
}

fn show(root: &Path, what: &str, json: bool) -> Result<()> {
    let store = Store::open_existing(root)?;
    if let Some((run, stage)) = what.split_once(':') {
        return show_stage(&store, &run_stage(&store, run, stage)?.key, json);
    }
    let runs = store.run_ids()?;
    if let Some(id) = unique_match(&runs, what, "run")? {
        return show_run(&store, id, json);
    }
    let keys = store.stage_keys()?;
    if let Some(key) = unique_match(&keys, what, "stage key")? {
        return show_stage(&store, key, json);
    }
    Err(UserError(format!("`{what}` is neither a run nor a stage key in {} (see `pipe ls`)", root.display())).into())
}

fn show_run(store: &Store, id: &str, json: bool) -> Result<()> {
    let r: RunRecord = store.run(id)?.ok_or_else(|| UserError(format!("run {id} has no record")))?;
    let status = shown_status(store, &r);
    // a run still going: its time so far and what its stage is doing, from the heartbeat
    let live: Vec<_> = if status == "running" { progress::current(store).into_iter().filter(|(h, _)| h.run == r.id).collect() } else { Vec::new() };
    let seconds = if status == "running" { crate::engine::timefmt::seconds_since(&r.started_at).unwrap_or(r.seconds) } else { r.seconds };
    if json {
        // the record itself: every stage's key, outputs and summary, the selected round
        let mut doc = serde_json::to_value(&r)?;
        doc["type"] = "run".into();
        doc["status"] = status.into();
        doc["seconds"] = seconds.into();
        if let Some((h, _)) = live.first() {
            doc["running"] = serde_json::to_value(h)?;
        }
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(());
    }
    let so_far = if status == "running" { " so far" } else { "" };
    println!("run       {}\npipeline  {} ({})\nstatus    {status}\nstarted   {}\nseconds   {seconds:.2}{so_far}\ndevice    {}", r.id, r.pipeline, r.file, r.started_at, r.device);
    for (h, age) in &live {
        println!("running   {}", live_line(h, *age));
    }
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
    print_errors(&r, &methods::rounds_of(&r));
    Ok(())
}

/// A heartbeat as one line, with how old it is when that is worth saying.
fn live_line(h: &progress::Heartbeat, age: f64) -> String {
    let stale = if age >= 5.0 { format!("  (updated {} ago)", crate::engine::timefmt::duration(age)) } else { String::new() };
    format!("{}{stale}", h.line())
}

fn show_stage(store: &Store, key: &str, json: bool) -> Result<()> {
    /// A table's first rows as JSON objects: numbers stay numbers, the rest as displayed.
    fn table_json(bytes: Vec<u8>, max_rows: usize) -> Result<Value> {
        use arrow_array::Array;
        use arrow_cast::display::{ArrayFormatter, FormatOptions};
        let batches = crate::engine::table::read_parquet(bytes)?;
        let total: usize = batches.iter().map(|b| b.num_rows()).sum();
        let mut rows = Vec::new();
        for b in &batches {
            let schema = b.schema();
            let formatters = b.columns().iter().map(|c| ArrayFormatter::try_new(c.as_ref(), &FormatOptions::default())).collect::<std::result::Result<Vec<_>, _>>()?;
            for i in 0..b.num_rows().min(max_rows - rows.len()) {
                let mut row = serde_json::Map::new();
                for ((field, col), f) in schema.fields().iter().zip(b.columns()).zip(&formatters) {
                    let text = f.value(i).to_string();
                    let v = match col.data_type() {
                        _ if col.is_null(i) => Value::Null,
                        t if t.is_integer() => text.parse::<i64>().map(Value::from).or_else(|_| text.parse::<u64>().map(Value::from)).unwrap_or(Value::String(text)),
                        t if t.is_floating() => text.parse::<f64>().ok().and_then(serde_json::Number::from_f64).map(Value::Number).unwrap_or(Value::Null),
                        arrow_schema::DataType::Boolean => Value::Bool(text == "true"),
                        _ => Value::String(text),
                    };
                    row.insert(field.name().clone(), v);
                }
                rows.push(Value::Object(row));
            }
        }
        Ok(serde_json::json!({"rows": total, "head": rows}))
    }
    let m: Manifest = store.manifest(key)?.ok_or_else(|| UserError(format!("stage {key} is not committed in this store")))?;
    if json {
        let mut doc = serde_json::to_value(&m)?;
        doc["type"] = "stage".into();
        for (name, o) in &m.outputs {
            doc["outputs"][name]["path"] = serde_json::json!(store.object_location(&o.digest));
        }
        let mut tables = serde_json::Map::new();
        for (name, o) in m.outputs.iter().filter(|(n, _)| n.ends_with(".parquet")) {
            tables.insert(name.clone(), table_json(store.read(&o.digest)?, 20)?);
        }
        doc["tables"] = Value::Object(tables);
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(());
    }
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
        println!("  {name:<26} {}  {:>10} bytes  {}", o.digest, o.bytes, store.object_location(&o.digest));
    }
    println!("summary   {}", serde_json::to_string_pretty(&m.summary)?.replace('\n', "\n          "));
    for (name, o) in m.outputs.iter().filter(|(n, _)| n.ends_with(".parquet")) {
        println!("\n{name}:");
        println!("{}", format_parquet(store.read(&o.digest)?, 20)?);
    }
    Ok(())
}
