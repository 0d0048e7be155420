//! `pipe gc` and `pipe verify` on a real store: what gc frees and keeps, that a dry run
//! touches nothing, that damage is found and named, that a corrupt object is never read
//! silently, and that gc never runs under a held store lock.

use serde_json::Value;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Output;

mod common;
use common::{files_under, last_record, object, pipe, ran, run, small, text};

fn tiny(dir: &Path) -> PathBuf {
    small(dir, 1)
}

fn run_raw(file: &Path, store: &Path, sets: &[&str]) -> Output {
    let mut c = pipe();
    c.arg("run").arg(file).arg("--store").arg(store);
    for s in sets {
        c.arg("--set").arg(s);
    }
    c.output().unwrap()
}

/// `pipe <args> --store STORE`.
fn care(store: &Path, args: &[&str]) -> Output {
    pipe().args(args).arg("--store").arg(store).output().unwrap()
}

fn care_json(store: &Path, args: &[&str]) -> (Option<i32>, Value) {
    let out = care(store, args);
    let json = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("not one JSON object ({e}):\n{}", text(&out)));
    (out.status.code(), json)
}

/// Stages that ran (not cached), from a run's stage lines.
fn keys(record: &Value) -> BTreeSet<String> {
    record["stages"].as_array().unwrap().iter().map(|s| s["key"].as_str().unwrap().to_string()).collect()
}

fn outputs(record: &Value) -> BTreeSet<String> {
    record["stages"].as_array().unwrap().iter().flat_map(|s| s["outputs"].as_object().unwrap().values().map(|o| o["digest"].as_str().unwrap().to_string())).collect()
}

/// The digest of output `name` of `stage` in a run record.
fn output(record: &Value, stage: &str, name: &str) -> String {
    let s = record["stages"].as_array().unwrap().iter().find(|s| s["stage"] == stage).unwrap();
    s["outputs"][name]["digest"].as_str().unwrap().to_string()
}


/// Every file under `dir` with its size, for before/after comparisons.
fn listing(dir: &Path) -> Vec<(PathBuf, u64)> {
    files_under(dir).into_iter().map(|p| {
        let len = p.metadata().unwrap().len();
        (p, len)
    }).collect()
}

#[test]
fn gc_keep_last_frees_the_old_runs_own_stages_and_keeps_shared_ones() {
    let dir = tempfile::tempdir().unwrap();
    let file = tiny(dir.path());
    let store = dir.path().join("store");
    run(&file, &store, &[]);
    let old = last_record(&store);
    run(&file, &store, &["train.lr=0.04"]);
    let new = last_record(&store);
    let shared: BTreeSet<String> = keys(&old).intersection(&keys(&new)).cloned().collect();
    assert_eq!(shared.len(), 1, "only `load` is common to both settings");
    let old_only_keys: Vec<String> = keys(&old).difference(&keys(&new)).cloned().collect();
    let old_only_objects: Vec<String> = outputs(&old).difference(&outputs(&new)).cloned().collect();
    assert!(!old_only_keys.is_empty() && !old_only_objects.is_empty());

    let (code, all) = care_json(&store, &["gc", "--dry-run", "--json"]);
    assert_eq!(code, Some(0));
    assert_eq!(all["freed_bytes"], 0, "every stage is named by a run record: {all}");

    let before = listing(&store);
    let (code, dry) = care_json(&store, &["gc", "--keep-last", "1", "--dry-run", "--json"]);
    assert_eq!(code, Some(0));
    assert_eq!(listing(&store), before, "a dry run deletes nothing");
    assert_eq!(dry["dry_run"], true);
    assert_eq!(dry["kept_runs"][0], new["id"]);
    assert_eq!(dry["removed_runs"][0], old["id"]);
    assert!(dry["freed_bytes"].as_u64().unwrap() > 0);

    let (code, done) = care_json(&store, &["gc", "--keep-last", "1", "--json"]);
    assert_eq!(code, Some(0));
    assert_eq!(done["freed_bytes"], dry["freed_bytes"], "the dry run foretold what gc frees");
    for field in ["removed_runs", "removed_manifests", "removed_objects", "runs", "manifests", "objects"] {
        assert_eq!(done[field], dry[field], "{field}");
    }
    let removed: BTreeSet<String> = done["removed_manifests"].as_array().unwrap().iter().map(|k| k.as_str().unwrap().to_string()).collect();
    assert_eq!(removed, old_only_keys.iter().cloned().collect());
    assert!(!store.join("runs").join(format!("{}.json", old["id"].as_str().unwrap())).exists());
    for d in &old_only_objects {
        assert!(!object(&store, d).exists(), "{d} was only the old run's");
    }
    for d in &outputs(&new) {
        assert!(object(&store, d).exists(), "{d} is the kept run's");
    }
    for k in keys(&new) {
        assert!(store.join("stages").join(format!("{k}.json")).exists());
    }
    let total = |l: &[(PathBuf, u64)]| l.iter().map(|(_, n)| n).sum::<u64>();
    assert_eq!(total(&before) - total(&listing(&store)), done["freed_bytes"].as_u64().unwrap(), "freed bytes are the bytes gone from disk");

    let again = care(&store, &["gc"]);
    assert!(again.status.success() && text(&again).contains("freed 0 B (0 bytes)"), "{}", text(&again));

    assert!(ran(&run(&file, &store, &["train.lr=0.04"])).is_empty(), "the kept run is still fully cached");
    let rerun = ran(&run(&file, &store, &[]));
    assert!(!rerun.contains(&"load".to_string()) && rerun.len() == keys(&old).len() - 1, "the shared load stage stayed, the rest reran: {rerun:?}");

    let ok = care(&store, &["verify"]);
    assert!(ok.status.success() && text(&ok).contains("all intact"), "{}", text(&ok));
}

#[test]
fn verify_names_damage_a_corrupt_read_fails_loudly_and_repair_remakes_the_stages() {
    let dir = tempfile::tempdir().unwrap();
    let file = tiny(dir.path());
    let store = dir.path().join("store");
    run(&file, &store, &[]);
    let rec = last_record(&store);

    let ok = care(&store, &["verify"]);
    let n = listing(&store.join("objects")).len();
    assert!(ok.status.success() && text(&ok).contains(&format!("{n} objects, 6 manifests, 1 run: all intact")), "{}", text(&ok));

    // one flipped byte in the training set `train/0` reads, and in the metrics `show` prints
    let data = output(&rec, "load", "train.safetensors");
    let metrics = output(&rec, "evaluate/0", "metrics.parquet");
    for d in [&data, &metrics] {
        let mut bytes = std::fs::read(object(&store, d)).unwrap();
        let i = bytes.len() / 2;
        bytes[i] ^= 0x40;
        std::fs::write(object(&store, d), bytes).unwrap();
    }
    let bad = care(&store, &["verify"]);
    assert_eq!(bad.status.code(), Some(1), "{}", text(&bad));
    for want in [data.as_str(), metrics.as_str(), "corrupt", "train.safetensors of load", "metrics.parquet of evaluate/0", "damaged"] {
        assert!(text(&bad).contains(want), "missing {want} in {}", text(&bad));
    }

    let rerun = run_raw(&file, &store, &["train.lr=0.04"]);
    assert_eq!(rerun.status.code(), Some(1), "{}", text(&rerun));
    let err = String::from_utf8_lossy(&rerun.stderr);
    assert!(err.contains(&data) && err.contains("is corrupt") && err.contains("pipe verify"), "{err}");
    let show = care(&store, &["show", &format!("{}:evaluate/0", rec["id"].as_str().unwrap())]);
    assert_eq!(show.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&show.stderr).contains(&metrics), "{}", text(&show));

    let ckpt = output(&rec, "train/0", "checkpoint.safetensors");
    std::fs::remove_file(object(&store, &ckpt)).unwrap();
    let (code, report) = care_json(&store, &["verify", "--json"]);
    assert_eq!(code, Some(1));
    assert_eq!(report["intact"], false);
    let corrupt: BTreeSet<&str> = report["corrupt"].as_array().unwrap().iter().map(|o| o["digest"].as_str().unwrap()).collect();
    assert_eq!(corrupt, [data.as_str(), metrics.as_str()].into_iter().collect());
    assert_eq!(report["missing"].as_array().unwrap().len(), 1);
    assert_eq!(report["missing"][0]["digest"], ckpt.as_str());
    assert_eq!(report["missing"][0]["referenced_by"][0]["stage"], "train/0");

    let repaired = care(&store, &["verify", "--repair"]);
    assert!(repaired.status.success() && text(&repaired).contains("uncommitted 3 stages"), "{}", text(&repaired));
    assert!(care(&store, &["verify"]).status.success());
    let again = run(&file, &store, &[]);
    assert_eq!(ran(&again), ["load", "train/0", "evaluate/0"], "only the damaged stages rerun, with the same bytes");
    assert_eq!(outputs(&last_record(&store)), outputs(&rec));
    assert!(care(&store, &["verify"]).status.success());
}

#[test]
fn gc_refuses_a_locked_store_and_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let nowhere = care(&store, &["gc"]);
    assert_eq!(nowhere.status.code(), Some(2), "{}", text(&nowhere));
    assert_eq!(care(&store, &["verify"]).status.code(), Some(2));

    let held = pipe::engine::store::Store::open(&store).unwrap();
    let lock = held.lock().unwrap();
    let refused = care(&store, &["gc"]);
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused));
    assert!(text(&refused).contains("locked"), "{}", text(&refused));
    assert_eq!(care(&store, &["gc", "--dry-run"]).status.code(), Some(1));
    assert_eq!(care(&store, &["verify", "--repair"]).status.code(), Some(1));
    assert!(care(&store, &["verify"]).status.success(), "a plain verify only reads, beside a run");
    drop(lock);

    assert!(care(&store, &["gc"]).status.success());
    assert_eq!(care(&store, &["gc", "--keep-last", "0"]).status.code(), Some(2));
    assert_eq!(care(&store, &["gc", "--keep-last", "x"]).status.code(), Some(2));
}
