//! Stages as Slurm jobs. `pipe run --executor slurm` stays the controller: it saves each
//! stage whose inputs are ready as a job in the store ([`Job`]), submits `pipe exec-stage
//! KEY --store URL` with `sbatch --parsable`, and polls `scontrol show job` (which works with
//! accounting off) until the job has left the queue. A job that ended without committing
//! its stage (failed, preempted, cancelled, out of time) is submitted again, a bounded
//! number of times; the stage resumes from its partial checkpoint in the store. The
//! scheduler is Slurm's: nothing here decides where or when a job runs.

use crate::engine::executor::JobQueue;
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
        let mut cmd = Command::new("sbatch");
        cmd.arg("--parsable").arg(format!("--job-name=pipe:{}", job.stage)).arg(format!("--output={}", self.opts.logs.join(format!("{}-%j.log", &job.key[..12])).display()));
        for (flag, value) in [("--partition", &self.opts.partition), ("--gres", &self.opts.gres), ("--time", &self.opts.time)] {
            if let Some(v) = value {
                cmd.arg(format!("{flag}={v}"));
            }
        }
        // the job inherits this environment (sbatch's default), credentials included: none
        // of them is written into the job's command line
        let wrap = format!("exec {} exec-stage {} --store {}", shell_quote(&self.pipe.display().to_string()), job.key, shell_quote(&store.location()));
        cmd.arg("--wrap").arg(wrap);
        let out = cmd.output().context("running sbatch")?;
        if !out.status.success() {
            bail!("sbatch refused stage {} ({}): {}", job.stage, &job.key[..12], String::from_utf8_lossy(&out.stderr).trim());
        }
        // --parsable prints `id` or `id;cluster`
        let text = String::from_utf8_lossy(&out.stdout);
        let id = text.trim().split(';').next().unwrap_or_default().to_string();
        if id.is_empty() || !id.chars().all(|c| c.is_ascii_digit()) {
            bail!("sbatch printed no job id for stage {}: {:?}", job.stage, text.trim());
        }
        Ok(id)
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
            if !matches!(state.as_str(), "PENDING" | "RUNNING" | "CONFIGURING" | "COMPLETING" | "SUSPENDED" | "REQUEUED" | "RESIZING" | "SIGNALING" | "STAGE_OUT") {
                return Ok(Ended { state, exit: field("ExitCode=").unwrap_or_else(|| "?".into()) });
            }
            std::thread::sleep(self.opts.poll);
        }
    }
}

impl JobQueue for Slurm {
    fn compute(&self, store: &Store, job: &Job) -> Result<()> {
        let attempts = self.opts.retries + 1;
        let mut last = None;
        for attempt in 1..=attempts {
            let id = self.submit(store, job)?;
            println!("submitted {} ({}) as Slurm job {id}{}", job.stage, &job.key[..12], if attempt > 1 { format!(" (attempt {attempt} of {attempts})") } else { String::new() });
            let ended = self.wait(job, &id)?;
            let log = self.log_of(job, &id);
            if store.manifest::<serde_json::Value>(&job.key).ok().flatten().is_some() {
                return Ok(());
            }
            if attempt < attempts {
                eprintln!(
                    "warning: Slurm job {id} of stage {} ended {} (exit {}) without committing it; its log: {}; submitting it again, to resume from its checkpoint",
                    job.stage,
                    ended.state,
                    ended.exit,
                    log.display()
                );
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
}

/// `s` as one word for sh.
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}
