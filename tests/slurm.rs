//! `pipe run --executor slurm` on a one-node Slurm cluster on loopback (.ci/run starts it
//! with scripts/test-services.sh): each stage a job running `pipe exec-stage`, the run the
//! controller. A sweep ends with the keys and bytes of a local run, a job cancelled
//! mid-epoch is resubmitted and resumes, and a stage that always fails stops the run with
//! its name and its log.

use std::io::BufRead;
use std::process::{Command, Stdio};

mod common;
use common::{partial_file, pipe, record_outputs, records_at, run, slurm_ready, small, text, tiny_with};

fn slurm_run(file: &std::path::Path, store: &std::path::Path, logs: &std::path::Path, extra: &[&str]) -> Command {
    let mut c = pipe();
    c.arg("run").arg(file).arg("--store").arg(store).args(["--executor", "slurm", "--poll", "0.3", "--slurm-logs"]).arg(logs).args(extra);
    c
}

/// (stage, key) and (stage, output, digest) of every stage of a run record.
type KeysAndOutputs = (Vec<(String, String)>, Vec<(String, String, String)>);

/// member label -> its run's keys and outputs.
fn member_keys(store: &std::path::Path) -> std::collections::BTreeMap<String, KeysAndOutputs> {
    records_at(&store.display().to_string())
        .into_iter()
        .map(|r| {
            let keys = r["stages"].as_array().unwrap().iter().map(|s| (s["stage"].as_str().unwrap().to_string(), s["key"].as_str().unwrap().to_string())).collect();
            (r["member"].as_str().unwrap_or("").to_string(), (keys, record_outputs(&r)))
        })
        .collect()
}

#[test]
fn the_quickstart_sweep_through_slurm_ends_with_the_keys_and_bytes_of_a_local_run() {
    if !slurm_ready("the_quickstart_sweep_through_slurm") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // pipelines/quickstart.toml as shipped, over two seeds
    let shipped = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines");
    let text_of = std::fs::read_to_string(shipped.join("quickstart.toml")).unwrap().replace("path = \"data/mnist\"", &format!("path = {:?}", shipped.join("data/mnist")));
    let file = dir.path().join("quickstart.toml");
    std::fs::write(&file, format!("{text_of}\n[sweep]\n\"pipeline.seed\" = [0, 1]\n")).unwrap();
    let local = dir.path().join("local");
    run(&file, &local, &[]);

    let store = dir.path().join("slurm");
    let logs = dir.path().join("logs");
    let out = slurm_run(&file, &store, &logs, &["--jobs", "2"]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let said = text(&out);
    assert!(said.contains("as Slurm job") && said.contains("COMPLETED"), "{said}");
    // every stage that ran, ran in a job: its log says so
    let logged = std::fs::read_dir(&logs).unwrap().count();
    let ran = said.lines().filter(|l| l.contains("] ran ")).count();
    assert_eq!(logged, ran, "a log per job: {said}");
    assert_eq!(member_keys(&store), member_keys(&local), "the same keys and output digests, member by member");
    assert!(store.join("sweeps/quickstart.parquet").is_file());
}

#[test]
fn a_stage_job_cancelled_mid_epoch_is_resubmitted_and_resumes() {
    if !slurm_ready("a_stage_job_cancelled") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let file = tiny_with(dir.path(), 4, 1, 1500);
    let alone = dir.path().join("alone");
    run(&file, &alone, &[]);
    let store = dir.path().join("store");
    let logs = dir.path().join("logs");
    let mut child = slurm_run(&file, &store, &logs, &[]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut seen = Vec::new();
    let mut cancelled = None;
    for line in stdout.lines() {
        let line = line.unwrap();
        seen.push(line.clone());
        if cancelled.is_none() && line.starts_with("submitted train/0") {
            let id = line.rsplit(' ').next().unwrap().to_string();
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
            while partial_file(&store, "checkpoint.safetensors").is_none() {
                assert!(std::time::Instant::now() < deadline, "train/0 saved no epoch: {seen:?}");
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            let scancel = Command::new("scancel").arg(&id).output().unwrap();
            assert!(scancel.status.success(), "{}", text(&scancel));
            cancelled = Some(id);
        }
    }
    let out = child.wait_with_output().unwrap();
    let said = format!("{}\n{}", seen.join("\n"), text(&out));
    assert!(out.status.success(), "{said}");
    let id = cancelled.expect("train/0 was submitted");
    assert!(said.contains(&format!("Slurm job {id} of stage train/0 ended CANCELLED")), "{said}");
    assert!(said.contains("submitting it again"), "{said}");
    let line = seen.iter().find(|l| l.starts_with("ran") && l.contains("train/0")).unwrap();
    assert!(line.contains("resumed from"), "the second job resumed from the first one's checkpoint: {said}");
    assert_eq!(record_outputs(records_at(&store.display().to_string()).last().unwrap()), record_outputs(records_at(&alone.display().to_string()).last().unwrap()));
}

#[test]
fn a_stage_that_always_fails_stops_the_run_naming_it_and_its_log() {
    if !slurm_ready("a_stage_that_always_fails") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let file = small(dir.path(), 1);
    let store = dir.path().join("store");
    let logs = dir.path().join("logs");
    // the jobs' disk is full (sbatch's own SBATCH_EXPORT puts the fault in the jobs' environment,
    // not in the controller's): every attempt at the first stage fails
    let out = slurm_run(&file, &store, &logs, &["--retries", "1"]).env("SBATCH_EXPORT", "ALL,PIPE_FAULT_DISK_BYTES=0").output().unwrap();
    let said = text(&out);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(said.contains("stage load (") && said.contains("failed in 2 Slurm job(s)"), "{said}");
    let log = said.split("its log: ").last().unwrap().trim().lines().next().unwrap().to_string();
    let log_text = std::fs::read_to_string(&log).unwrap_or_else(|e| panic!("{log}: {e}\n{said}"));
    assert!(log_text.contains("No space left on device"), "the log holds the job's error: {log_text}");
}

#[test]
fn one_vs_all_nets_ready_together_go_as_one_job_array() {
    if !slurm_ready("one_vs_all_nets_ready_together") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let file = small(dir.path(), 1);
    let sets = ["pipeline.variant=one-vs-all"];
    let local = dir.path().join("local");
    run(&file, &local, &sets);
    let store = dir.path().join("slurm");
    let logs = dir.path().join("logs");
    let out = slurm_run(&file, &store, &logs, &["--set", sets[0], "--array-parallelism", "2"]).output().unwrap();
    let said = text(&out);
    assert!(out.status.success(), "{said}");
    // the ten nets of round 0 wait only for load: one array of ten tasks
    assert!(said.lines().any(|l| l.starts_with("submitted 10 train stages (train/0/c0, ") && l.contains("as Slurm job array")), "{said}");
    assert!(logs.read_dir().unwrap().filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().starts_with("array-")).count() >= 10, "{said}");
    assert!(!said.contains("FAILED") && !said.contains("without committing"), "every task commits its stage the first time: {said}");
    let ran: Vec<String> = said.lines().filter(|l| l.starts_with("ran ")).map(String::from).collect();
    assert_eq!(member_keys(&store), member_keys(&local), "the same keys and bytes as run locally: {ran:?}");
}

#[test]
fn a_detached_graph_runs_on_its_own_and_ends_with_the_local_keys() {
    if !slurm_ready("a_detached_graph") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let file = small(dir.path(), 1);
    let local = dir.path().join("local");
    run(&file, &local, &[]);
    let store = dir.path().join("slurm");
    let logs = dir.path().join("logs");
    let t0 = std::time::Instant::now();
    let out = slurm_run(&file, &store, &logs, &["--detach"]).output().unwrap();
    let said = text(&out);
    assert!(out.status.success(), "{said}");
    assert!(t0.elapsed().as_secs() < 20, "--detach returns once everything is submitted: {said}");
    assert!(said.contains("6 of 6 stages submitted"), "{said}");
    let last = said.split("and job ").nth(1).and_then(|r| r.split(',').next()).unwrap().to_string();
    // the last job is the `pipe run` that finds every stage cached and writes the record
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
    while Command::new("squeue").args(["-h", "-j", &last]).output().is_ok_and(|o| !String::from_utf8_lossy(&o.stdout).trim().is_empty()) {
        assert!(std::time::Instant::now() < deadline, "the detached jobs did not end: {said}");
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
    let record = std::fs::read_to_string(logs.join(format!("record-{last}.log"))).unwrap();
    assert!(record.contains("0 ran, 6 cached"), "{record}");
    assert_eq!(member_keys(&store), member_keys(&local), "{record}");
}
