//! Two `pipe run`s on one store at once: no global lock keeps them apart, the first commit
//! of each stage stays, and both end with the outputs a run alone makes.

use std::path::Path;
use std::process::Stdio;

mod common;
use common::{output_digests, pipe, ran, run, small, text};

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

    // Each stage is committed once: computed by one run and found by the other, or
    // computed by both, and then the one that lost the commit says so and takes the
    // winner's outputs (started together, the two usually race on the first stages).
    let stages: std::collections::BTreeSet<String> = expected.iter().map(|(s, _, _)| s.clone()).collect();
    for stage in &stages {
        let computed = [&a, &b].iter().filter(|o| ran(o).contains(stage)).count();
        let lost = [&a, &b].iter().filter(|o| text(o).contains(&format!("note: stage {stage} ("))).count();
        assert!(computed >= 1, "{stage} was computed by neither run");
        assert_eq!(lost, computed - 1, "{stage}: computed by {computed}, lost commits {lost}\n{}\n{}", text(&a), text(&b));
    }

    // every run record names the same outputs as the run alone
    let mut records: Vec<_> = std::fs::read_dir(shared.join("runs")).unwrap().map(|e| e.unwrap().path()).collect();
    records.sort();
    assert_eq!(records.len(), 2);
    for r in &records {
        let rec: serde_json::Value = serde_json::from_slice(&std::fs::read(r).unwrap()).unwrap();
        assert_eq!(rec["status"], "ok");
        let mut got = Vec::new();
        for s in rec["stages"].as_array().unwrap() {
            for (name, o) in s["outputs"].as_object().unwrap() {
                got.push((s["stage"].as_str().unwrap().to_string(), name.clone(), o["digest"].as_str().unwrap().to_string()));
            }
        }
        assert_eq!(got, expected, "{}", r.display());
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
