//! Two `pipe run`s on one store at once: no global lock keeps them apart, a stage one of
//! them computes the other waits for, a stage whose computing run dies is taken over from
//! its checkpoint, and both end with the outputs a run alone makes.

use std::path::Path;
use std::process::Stdio;

mod common;
use common::{last_record, output_digests, pipe, ran, record_outputs, run, small, text, tiny_with};

fn spawn_run(file: &Path, store: &Path) -> std::process::Child {
    pipe().arg("run").arg(file).arg("--store").arg(store).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap()
}

#[test]
fn two_runs_of_one_pipeline_share_a_store() {
    let dir = tempfile::tempdir().unwrap();
    let file = small(dir.path(), 2);
    let alone = dir.path().join("alone");
    run(&file, &alone, &[]);
    let expected = output_digests(&alone);

    let shared = dir.path().join("shared");
    let (a, b) = (spawn_run(&file, &shared), spawn_run(&file, &shared));
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    assert!(a.status.success(), "{}", text(&a));
    assert!(b.status.success(), "{}", text(&b));

    // Each stage is computed once: the run that takes a stage's lease computes it, and the
    // other waits for its commit and finds it cached.
    let stages: std::collections::BTreeSet<String> = expected.iter().map(|(s, _, _)| s.clone()).collect();
    for stage in &stages {
        let computed = [&a, &b].iter().filter(|o| ran(o).contains(stage)).count();
        assert_eq!(computed, 1, "{stage} computed by {computed} runs\n{}\n{}", text(&a), text(&b));
        assert!(!text(&a).contains("committed by another run first") && !text(&b).contains("committed by another run first"));
    }

    // every run record names the same outputs as the run alone
    let mut records: Vec<_> = std::fs::read_dir(shared.join("runs")).unwrap().map(|e| e.unwrap().path()).collect();
    records.sort();
    assert_eq!(records.len(), 2);
    for r in &records {
        let rec: serde_json::Value = serde_json::from_slice(&std::fs::read(r).unwrap()).unwrap();
        assert_eq!(rec["status"], "ok");
        assert_eq!(record_outputs(&rec), expected, "{}", r.display());
    }
    // one manifest per stage, nothing left staged or half-written, and the store verifies
    assert_eq!(std::fs::read_dir(shared.join("stages")).unwrap().count(), stages.len());
    assert_eq!(std::fs::read_dir(shared.join("tmp")).unwrap().count(), 0);
    let verify = pipe().args(["verify", "--store"]).arg(&shared).output().unwrap();
    assert!(verify.status.success(), "{}", text(&verify));
    let ls = pipe().args(["ls", "--store"]).arg(&shared).output().unwrap();
    assert!(!text(&ls).contains("interrupted"), "both runs ended: {}", text(&ls));
}

#[test]
fn a_run_waits_for_no_one_but_refuses_a_store_under_gc() {
    let dir = tempfile::tempdir().unwrap();
    let file = small(dir.path(), 1);
    let store_dir = dir.path().join("store");
    let store = pipe::engine::store::Store::open(&store_dir).unwrap();
    let cleaner = store.try_lock().unwrap().expect("nothing holds a new store");
    let refused = pipe().arg("run").arg(&file).arg("--store").arg(&store_dir).output().unwrap();
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused));
    assert!(text(&refused).contains("pipe gc"), "{}", text(&refused));
    assert_eq!(std::fs::read_dir(store_dir.join("runs")).unwrap().count(), 0, "nothing written");
    drop(cleaner);
    let _writer = store.lock().unwrap();
    run(&file, &store_dir, &[]);
}

#[test]
fn a_stage_whose_run_dies_is_taken_over_from_its_checkpoint() {
    use std::time::{Duration, Instant};
    let dir = tempfile::tempdir().unwrap();
    let file = tiny_with(dir.path(), 4, 1, 1500);
    let alone = dir.path().join("alone");
    run(&file, &alone, &[]);
    let expected = output_digests(&alone);

    let store = dir.path().join("store");
    let mut first = spawn_run(&file, &store);
    let deadline = Instant::now() + Duration::from_secs(300);
    let saved = || common::partial_file(&store, "checkpoint.safetensors").is_some();
    while !saved() {
        assert!(first.try_wait().unwrap().is_none() && Instant::now() < deadline, "train/0 saved no epoch");
        std::thread::sleep(Duration::from_millis(2));
    }
    // the second run finds load committed and waits on train/0, which the first computes
    let second = spawn_run(&file, &store);
    let waiting = || std::panic::catch_unwind(|| last_record(&store)).ok().is_some_and(|r| r["stages"].as_array().unwrap().iter().any(|s| s["stage"] == "load"));
    while std::fs::read_dir(store.join("runs")).unwrap().count() < 2 || !waiting() {
        assert!(Instant::now() < deadline, "the second run did not get past load");
        std::thread::sleep(Duration::from_millis(2));
    }
    assert!(first.try_wait().unwrap().is_none(), "the first run ended before it could be killed: make train/0 longer");
    first.kill().unwrap(); // SIGKILL: its lease ends with it
    first.wait().unwrap();

    let out = second.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("waiting for stage train/0"), "{}", text(&out));
    let line = String::from_utf8_lossy(&out.stdout).lines().find(|l| l.starts_with("ran") && l.contains("train/0")).map(String::from);
    assert!(line.as_deref().is_some_and(|l| l.contains("resumed from")), "train/0 taken over from the dead run's checkpoint: {}", text(&out));
    assert_eq!(output_digests(&store), expected, "the taken-over run ends with the bytes of a run alone");
}

/// member label -> (stage, output, digest) of every run record in a store.
fn member_outputs(store: &Path) -> std::collections::BTreeMap<String, Vec<(String, String, String)>> {
    let mut out = std::collections::BTreeMap::new();
    for e in std::fs::read_dir(store.join("runs")).unwrap() {
        let rec: serde_json::Value = serde_json::from_slice(&std::fs::read(e.unwrap().path()).unwrap()).unwrap();
        assert_eq!(rec["status"], "ok");
        assert!(out.insert(rec["member"].as_str().unwrap().to_string(), record_outputs(&rec)).is_none(), "one record per member");
    }
    out
}

#[test]
fn a_sweep_with_jobs_ends_as_the_serial_sweep() {
    let dir = tempfile::tempdir().unwrap();
    let file = small(dir.path(), 2);
    let text_of = std::fs::read_to_string(&file).unwrap();
    std::fs::write(&file, format!("{text_of}\n[sweep]\n\"pipeline.seed\" = [1, 2, 3]\n")).unwrap();
    let serial = dir.path().join("serial");
    run(&file, &serial, &[]);

    let parallel = dir.path().join("parallel");
    let out = pipe().arg("run").arg(&file).arg("--store").arg(&parallel).args(["--jobs", "2"]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let said = text(&out);
    assert!(said.contains("sweep of 3 members, 2 at a time"), "{said}");
    assert!(said.lines().any(|l| l.starts_with("[3/3] ") && l.contains("ran ")), "member lines carry their number: {said}");
    assert_eq!(member_outputs(&parallel), member_outputs(&serial), "the same outputs, member by member");
    // the members share `load`: computed once, by whichever member took its lease first
    let loads = said.lines().filter(|l| l.contains("] ran") && l.contains(" load ")).count();
    assert_eq!(loads, 1, "{said}");
    assert!(parallel.join("sweeps/tiny.parquet").is_file(), "the sweep's table is written at the end");

    let zero = pipe().arg("run").arg(&file).arg("--store").arg(dir.path().join("none")).args(["--jobs", "0"]).output().unwrap();
    assert_eq!(zero.status.code(), Some(2), "{}", text(&zero));
    assert!(!dir.path().join("none").exists(), "nothing written");
}

#[test]
fn jobs_on_one_pipeline_run_its_independent_stages_at_once_to_the_same_record() {
    let dir = tempfile::tempdir().unwrap();
    let file = small(dir.path(), 1);
    let sets = ["pipeline.variant=one-vs-all"];
    let serial = dir.path().join("serial");
    let alone = run(&file, &serial, &sets);
    let parallel = dir.path().join("parallel");
    let out = pipe().arg("run").arg(&file).arg("--store").arg(&parallel).args(["--set", sets[0], "--jobs", "3"]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    // the ten nets of a round wait only for load (or their own pseudo-negatives): they
    // finish in another order than the plan's, but the record keeps the plan's order
    let order = |o: &std::process::Output| common::stage_lines(o).into_iter().map(|(_, s)| s).collect::<Vec<_>>();
    assert_ne!(order(&out), order(&alone), "computed in waves: {}", text(&out));
    let stages = |r: &serde_json::Value| r["stages"].as_array().unwrap().iter().map(|s| (s["stage"].clone(), s["key"].clone(), s["outputs"].clone())).collect::<Vec<_>>();
    assert_eq!(stages(&last_record(&parallel)), stages(&last_record(&serial)), "the same stages, keys and bytes, in plan order");
}
