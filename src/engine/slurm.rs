//! Stages as Slurm jobs. `pipe run --executor slurm` stays the controller: it saves each
//! stage whose inputs are ready as a job in the store ([`Job`]), submits `pipe exec-stage
//! KEY --store URL` with `sbatch --parsable`, and polls `scontrol show job` (which works with
//! accounting off) until the job has left the queue. A job that ended without committing
//! its stage (failed, preempted, cancelled, out of time) is submitted again, a bounded
//! number of times; the stage resumes from its partial checkpoint in the store. The
//! scheduler is Slurm's: nothing here decides where or when a job runs.

use crate::engine::executor::JobQueue;
use crate::engine::graph::{InputRef, StageDef};
use crate::engine::job::Job;
use crate::engine::store::Store;
use anyhow::{anyhow, bail, Context, Result};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

/// What `sbatch` is given for every stage job.
#[derive(Clone, Debug, Default)]
pub struct SlurmOptions {
    pub partition: Option<String>,
    pub gres: Option<String>,
    /// Slurm's time limit per job (`--time`, e.g. `2:00:00`).
    pub time: Option<String>,
    /// Jobs that fail are submitted again this many times before the run stops.
    pub retries: u32,
    /// Where the jobs' logs go (a folder every node can write).
    pub logs: PathBuf,
    /// How often the queue is looked at.
    pub poll: Duration,
    /// At most this many tasks of one job array run at once (`--array=0-N%P`).
    pub array_parallelism: Option<u32>,
}

pub struct Slurm {
    opts: SlurmOptions,
    /// The pipe binary the jobs run (this one; nodes see it on a shared file system).
    pipe: PathBuf,
}

/// How a job left the queue, from `scontrol show job`.
#[derive(Debug, PartialEq)]
struct Ended {
    state: String,
    exit: String,
}

impl Slurm {
    pub fn new(opts: SlurmOptions) -> Result<Slurm> {
        let pipe = std::env::current_exe().context("finding the pipe binary the jobs run")?;
        std::fs::create_dir_all(&opts.logs).with_context(|| format!("creating the job log folder {}", opts.logs.display()))?;
        // the scheduler's own tools must be there before anything is saved or submitted
        let probe = Command::new("sbatch").arg("--version").output();
        if !probe.as_ref().is_ok_and(|o| o.status.success()) {
            bail!(crate::UserError(format!(
                "--executor slurm: `sbatch --version` did not run ({}); put Slurm's commands on PATH (and SLURM_CONF in the environment) on this machine",
                probe.map(|o| String::from_utf8_lossy(&o.stderr).trim().to_string()).unwrap_or_else(|e| e.to_string())
            )));
        }
        Ok(Slurm { opts, pipe })
    }

    fn log_of(&self, job: &Job, id: &str) -> PathBuf {
        self.opts.logs.join(format!("{}-{id}.log", &job.key[..12]))
    }

    /// Submits the job's stage and returns Slurm's job id.
    fn submit(&self, store: &Store, job: &Job) -> Result<String> {
        let wrap = format!("exec {} exec-stage {} --store {}", shell_quote(&self.pipe.display().to_string()), job.key, shell_quote(&store.location()));
        self.sbatch(&job.stage, &self.opts.logs.join(format!("{}-%j.log", &job.key[..12])), None, &[], wrap).with_context(|| format!("submitting stage {} ({})", job.stage, &job.key[..12]))
    }

    /// Submits stages of one kind that are ready together as one job array: task i computes
    /// `jobs[i]`.
    fn submit_array(&self, store: &Store, jobs: &[Job]) -> Result<String> {
        let keys: Vec<&str> = jobs.iter().map(|j| j.key.as_str()).collect();
        // sbatch --wrap runs /bin/sh: the keys as positional parameters, task i takes the i-th
        let wrap = format!("set -- {}; shift \"$SLURM_ARRAY_TASK_ID\"; exec {} exec-stage \"$1\" --store {}", keys.join(" "), shell_quote(&self.pipe.display().to_string()), shell_quote(&store.location()));
        let range = format!("0-{}{}", jobs.len() - 1, self.opts.array_parallelism.map(|p| format!("%{p}")).unwrap_or_default());
        let name = format!("{}[{}]", jobs[0].kind, jobs.len());
        self.sbatch(&name, &self.opts.logs.join("array-%A_%a.log"), Some(&range), &[], wrap).with_context(|| format!("submitting {} {} stages as a job array", jobs.len(), jobs[0].kind))
    }

    /// `--detach`: every stage of a saved plan that is not committed yet (`cached` holds the
    /// ids of those that are), submitted at once, each to start only after the jobs of its
    /// upstream stages ended well (`afterok`; a failed one cancels what depends on it).
    /// Returns (stage, job id) in plan order.
    pub fn submit_plan(&self, store: &Store, plan: &str, stages: &[StageDef], cached: &std::collections::BTreeSet<String>) -> Result<Vec<(String, String)>> {
        let mut ids: Vec<(String, String)> = Vec::new();
        for stage in stages.iter().filter(|s| !cached.contains(&s.id)) {
            let mut after: Vec<String> = stage
                .inputs
                .values()
                .filter_map(|i| match i {
                    InputRef::Output { stage: up, .. } => ids.iter().find(|(s, _)| s == up).map(|(_, id)| id.clone()),
                    _ => None,
                })
                .collect();
            after.sort();
            after.dedup();
            let wrap = format!("exec {} exec-stage --plan {plan} --stage {} --store {}", shell_quote(&self.pipe.display().to_string()), shell_quote(&stage.id), shell_quote(&store.location()));
            let log = self.opts.logs.join(format!("{}-%j.log", stage.id.replace('/', "_")));
            let id = self.sbatch(&stage.id, &log, None, &after, wrap).with_context(|| format!("submitting stage {}", stage.id))?;
            ids.push((stage.id.clone(), id));
        }
        Ok(ids)
    }

    /// Submits `command` (a shell line) to start after jobs `after` all ended well.
    pub fn submit_after(&self, name: &str, after: &[String], command: String) -> Result<String> {
        self.sbatch(name, &self.opts.logs.join(format!("{}-%j.log", name.replace('/', "_"))), None, after, command)
    }

    /// The pipe binary the jobs run.
    pub fn pipe(&self) -> &std::path::Path {
        &self.pipe
    }

    fn sbatch(&self, name: &str, output: &std::path::Path, array: Option<&str>, after: &[String], wrap: String) -> Result<String> {
        let mut cmd = Command::new("sbatch");
        cmd.arg("--parsable").arg(format!("--job-name=pipe:{name}")).arg(format!("--output={}", output.display()));
        if let Some(range) = array {
            cmd.arg(format!("--array={range}"));
        }
        if !after.is_empty() {
            cmd.arg(format!("--dependency=afterok:{}", after.join(":"))).arg("--kill-on-invalid-dep=yes");
        }
        for (flag, value) in [("--partition", &self.opts.partition), ("--gres", &self.opts.gres), ("--time", &self.opts.time)] {
            if let Some(v) = value {
                cmd.arg(format!("{flag}={v}"));
            }
        }
        // the job inherits this environment (sbatch's default), credentials included: none
        // of them is written into the job's command line
        cmd.arg("--wrap").arg(wrap);
        let out = cmd.output().context("running sbatch")?;
        if !out.status.success() {
            bail!("sbatch refused it: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        // --parsable prints `id` or `id;cluster`
        let text = String::from_utf8_lossy(&out.stdout);
        let id = text.trim().split(';').next().unwrap_or_default().to_string();
        if id.is_empty() || !id.chars().all(|c| c.is_ascii_digit()) {
            bail!("sbatch printed no job id: {:?}", text.trim());
        }
        Ok(id)
    }

    /// Polls a job array until every task has left the queue: each task's end, by index.
    fn wait_array(&self, what: &str, id: &str, tasks: usize) -> Result<Vec<Ended>> {
        let mut shown = String::new();
        loop {
            if crate::engine::interrupt::requested() {
                return Err(crate::engine::interrupt::Interrupted::new(format!("stopped while Slurm job array {id} computes {what}; it goes on (scancel {id} stops it), and a rerun uses its commits")).into());
            }
            let out = Command::new("scontrol").args(["show", "job", "-o", id]).output().context("running scontrol")?;
            let text = String::from_utf8_lossy(&out.stdout).to_string();
            if !out.status.success() {
                return Ok((0..tasks).map(|_| Ended { state: "GONE".into(), exit: "?".into() }).collect());
            }
            // one line per task, except tasks still pending together (`ArrayTaskId=3-9`)
            let mut ended: Vec<Option<Ended>> = (0..tasks).map(|_| None).collect();
            let mut counts: std::collections::BTreeMap<String, usize> = Default::default();
            for line in text.lines() {
                let field = |name: &str| line.split_whitespace().find_map(|f| f.strip_prefix(name).map(String::from));
                let (Some(task), Some(state)) = (field("ArrayTaskId="), field("JobState=")) else { continue };
                *counts.entry(state.clone()).or_insert(0) += task_count(&task);
                if let Ok(i) = task.parse::<usize>() {
                    if !live(&state) && i < tasks {
                        ended[i] = Some(Ended { state, exit: field("ExitCode=").unwrap_or_else(|| "?".into()) });
                    }
                }
            }
            let summary = counts.iter().map(|(s, n)| format!("{n} {s}")).collect::<Vec<_>>().join(", ");
            if summary != shown {
                println!("  slurm job array {id} ({what}): {summary}");
                shown = summary;
            }
            if ended.iter().all(Option::is_some) {
                return Ok(ended.into_iter().map(|e| e.expect("all ended")).collect());
            }
            std::thread::sleep(self.opts.poll);
        }
    }

    /// Submits `job` until it commits, after `tried` attempts already made.
    fn attempts(&self, store: &Store, job: &Job, tried: u32, mut last: Option<(String, Ended, PathBuf)>) -> Result<()> {
        let attempts = self.opts.retries + 1;
        for attempt in tried + 1..=attempts {
            let id = self.submit(store, job)?;
            println!("submitted {} ({}) as Slurm job {id}{}", job.stage, &job.key[..12], if attempt > 1 { format!(" (attempt {attempt} of {attempts})") } else { String::new() });
            let ended = self.wait(job, &id)?;
            let log = self.log_of(job, &id);
            if committed(store, job)? {
                return Ok(());
            }
            if attempt < attempts {
                warn_again(job, &id, &ended, &log);
            }
            last = Some((id, ended, log));
        }
        let (id, ended, log) = last.ok_or_else(|| anyhow!("no attempt was made"))?;
        bail!(
            "stage {} ({}) failed in {attempts} Slurm job(s); the last, job {id}, ended {} (exit {}); its log: {}",
            job.stage,
            &job.key[..12],
            ended.state,
            ended.exit,
            log.display()
        )
    }

    /// Polls the job until it has left the queue, showing its state as it changes.
    fn wait(&self, job: &Job, id: &str) -> Result<Ended> {
        let mut shown = String::new();
        loop {
            if crate::engine::interrupt::requested() {
                // the job is the cluster's: it goes on, and a later run finds it committed
                return Err(crate::engine::interrupt::Interrupted::new(format!(
                    "stopped while Slurm job {id} computes {}; it goes on (scancel {id} stops it), and a rerun uses its commit",
                    job.stage
                ))
                .into());
            }
            let out = Command::new("scontrol").args(["show", "job", "-o", id]).output().context("running scontrol")?;
            let text = String::from_utf8_lossy(&out.stdout).to_string();
            let field = |name: &str| text.split_whitespace().find_map(|f| f.strip_prefix(name).map(String::from));
            let state = match field("JobState=") {
                Some(s) => s,
                // purged from the controller's memory (MinJobAge): it ended long ago
                None if !out.status.success() => return Ok(Ended { state: "GONE".into(), exit: "?".into() }),
                None => bail!("scontrol show job {id}: no JobState in {:?}", text.trim()),
            };
            if state != shown {
                println!("  slurm job {id} ({}): {state}", job.stage);
                shown = state.clone();
            }
            if !live(&state) {
                return Ok(Ended { state, exit: field("ExitCode=").unwrap_or_else(|| "?".into()) });
            }
            std::thread::sleep(self.opts.poll);
        }
    }
}

/// Whether a job in this state may still run (or run again).
fn live(state: &str) -> bool {
    matches!(state, "PENDING" | "RUNNING" | "CONFIGURING" | "COMPLETING" | "SUSPENDED" | "REQUEUED" | "RESIZING" | "SIGNALING" | "STAGE_OUT")
}

/// Whether the job's stage is committed, as the run that waits for it judges: a manifest
/// that describes the stage, with its outputs there.
fn committed(store: &Store, job: &Job) -> Result<bool> {
    Ok(crate::engine::executor::committed(store, &job.key)?.is_some())
}

fn warn_again(job: &Job, id: &str, ended: &Ended, log: &std::path::Path) {
    eprintln!(
        "warning: Slurm job {id} of stage {} ended {} (exit {}) without committing it; its log: {}; submitting it again, to resume from its checkpoint",
        job.stage,
        ended.state,
        ended.exit,
        log.display()
    );
}

impl JobQueue for Slurm {
    fn compute(&self, store: &Store, job: &Job) -> Result<()> {
        self.attempts(store, job, 0, None)
    }

    /// Stages of one kind that are ready together go as one job array (the one-vs-all nets
    /// of a round, a sweep's evaluations); a task that ends without its commit is submitted
    /// again on its own.
    fn compute_many(&self, store: &Store, jobs: &[Job]) -> Vec<Result<()>> {
        let mut by_kind: std::collections::BTreeMap<&str, Vec<usize>> = Default::default();
        for (i, j) in jobs.iter().enumerate() {
            by_kind.entry(j.kind.as_str()).or_default().push(i);
        }
        let mut results: Vec<Option<Result<()>>> = jobs.iter().map(|_| None).collect();
        std::thread::scope(|s| {
            let groups: Vec<_> = by_kind
                .into_values()
                .map(|idx| {
                    s.spawn(move || -> Vec<(usize, Result<()>)> {
                        if idx.len() == 1 {
                            return vec![(idx[0], self.compute(store, &jobs[idx[0]]))];
                        }
                        let group: Vec<Job> = idx.iter().map(|&i| jobs[i].clone()).collect();
                        let what = format!("{} {} stages", group.len(), group[0].kind);
                        let ended = self.submit_array(store, &group).and_then(|id| {
                            println!("submitted {what} ({}) as Slurm job array {id}", group.iter().map(|j| j.stage.as_str()).collect::<Vec<_>>().join(", "));
                            Ok((self.wait_array(&what, &id, group.len())?, id))
                        });
                        match ended {
                            Err(e) => idx.iter().map(|&i| (i, Err(anyhow!("{e:#}")))).collect(),
                            Ok((ended, id)) => idx
                                .iter()
                                .zip(ended)
                                .enumerate()
                                .map(|(task, (&i, end))| {
                                    let job = &jobs[i];
                                    match committed(store, job) {
                                        Ok(true) => return (i, Ok(())),
                                        Ok(false) => {}
                                        Err(e) => return (i, Err(e)),
                                    }
                                    let log = self.opts.logs.join(format!("array-{id}_{task}.log"));
                                    let task_id = format!("{id}_{task}");
                                    if self.opts.retries > 0 {
                                        warn_again(job, &task_id, &end, &log);
                                    }
                                    (i, self.attempts(store, job, 1, Some((task_id, end, log))))
                                })
                                .collect(),
                        }
                    })
                })
                .collect();
            for g in groups {
                for (i, r) in g.join().unwrap_or_default() {
                    results[i] = Some(r);
                }
            }
        });
        results.into_iter().map(|r| r.unwrap_or_else(|| Err(anyhow!("waiting on a job array panicked")))).collect()
    }
}

/// Tasks an `ArrayTaskId` names: `4`, `3-9`, `3-9%2` (a throttle), `1,4-5`.
fn task_count(ids: &str) -> usize {
    let ids = ids.split('%').next().unwrap_or_default();
    ids.split(',')
        .map(|part| match part.split_once('-') {
            Some((a, b)) => b.parse::<usize>().ok().zip(a.parse::<usize>().ok()).map_or(1, |(b, a)| b.saturating_sub(a) + 1),
            None => 1,
        })
        .sum()
}

/// `s` as one word for sh.
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn array_task_ids_are_counted() {
        for (ids, n) in [("4", 1), ("3-9", 7), ("3-9%2", 7), ("1,4-5", 3), ("0-0", 1)] {
            assert_eq!(super::task_count(ids), n, "{ids}");
        }
        assert_eq!(super::shell_quote("it's"), r"'it'\''s'");
    }
}
