//! `pipe diff`, `pipe why` and the `--json` views of status, ls and show, on the real binary
//! and a tiny pipeline (a few seconds a run).

use serde_json::Value;
use std::path::{Path, PathBuf};

mod common;
use common::{pipe, small, text};

fn tiny(dir: &Path) -> PathBuf {
    small(dir, 2)
}

/// `pipe ARGS --store STORE`, which must succeed; its stdout.
fn ok(args: &[&str], store: &Path) -> String {
    let out = pipe().args(args).arg("--store").arg(store).output().unwrap();
    assert!(out.status.success(), "pipe {args:?} failed:\n{}", text(&out));
    String::from_utf8_lossy(&out.stdout).to_string()
}

fn json(args: &[&str], store: &Path) -> Value {
    let mut a = args.to_vec();
    a.push("--json");
    let out = ok(&a, store);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("pipe {a:?}: not JSON ({e}):\n{out}"))
}

/// Runs the file and returns the new run's id.
fn run(file: &Path, store: &Path, sets: &[&str]) -> String {
    let mut args = vec!["run", file.to_str().unwrap()];
    for s in sets {
        args.extend(["--set", s]);
    }
    ok(&args, store);
    json(&["ls"], store)["runs"].as_array().unwrap().last().unwrap()["id"].as_str().unwrap().to_string()
}

fn record(store: &Path, id: &str) -> Value {
    serde_json::from_slice(&std::fs::read(store.join("runs").join(format!("{id}.json"))).unwrap()).unwrap()
}

fn summary(rec: &Value, stage: &str, metric: &str) -> f64 {
    rec["stages"].as_array().unwrap().iter().find(|s| s["stage"] == stage).unwrap()["summary"][metric].as_f64().unwrap()
}

#[test]
fn diff_names_the_one_setting_the_stages_it_changed_and_the_metric_deltas() {
    let dir = tempfile::tempdir().unwrap();
    let file = tiny(dir.path());
    let store = dir.path().join("store");
    let a = run(&file, &store, &[]);
    let b = run(&file, &store, &["synthesize.lr=0.02"]);

    let d = json(&["diff", &a[..a.len() - 3], &b], &store);
    assert_eq!(d["a"]["id"], a.as_str());
    assert_eq!(d["b"]["id"], b.as_str());
    assert_eq!(d["a"]["device"], "cpu");
    assert_eq!(d["b"]["pipe_version"], env!("CARGO_PKG_VERSION"));
    let settings = d["settings"].as_array().unwrap();
    assert_eq!(settings.len(), 1, "{settings:?}");
    assert_eq!(settings[0]["key"], "synthesize.lr");
    assert_eq!(settings[0]["b"], 0.02);

    let verdict = |stage: &str| d["stages"].as_array().unwrap().iter().find(|s| s["stage"] == stage).unwrap_or_else(|| panic!("no {stage}")).clone();
    for s in ["load", "train/0", "evaluate/0"] {
        assert_eq!(verdict(s)["key"], "same", "{s}");
        assert_eq!(verdict(s)["outputs"], "same", "{s}");
    }
    for s in ["synthesize/1", "train/1", "evaluate/1", "synthesize/2", "train/2", "evaluate/2"] {
        assert_eq!(verdict(s)["key"], "differs", "{s}");
    }

    let (ra, rb) = (record(&store, &a), record(&store, &b));
    let metrics = d["metrics"].as_array().unwrap();
    for stage in ["evaluate/0", "evaluate/1", "evaluate/2"] {
        for metric in ["validation_error", "test_error"] {
            let m = metrics.iter().find(|m| m["stage"] == stage && m["metric"] == metric).unwrap_or_else(|| panic!("no {stage} {metric}"));
            let (va, vb) = (summary(&ra, stage, metric), summary(&rb, stage, metric));
            assert_eq!(m["a"].as_f64().unwrap(), va);
            assert_eq!(m["b"].as_f64().unwrap(), vb);
            assert_eq!(m["delta"].as_f64().unwrap(), vb - va);
        }
    }

    let t = ok(&["diff", &a, &b], &store);
    assert!(t.contains("settings that differ (1)") && t.contains("synthesize.lr") && t.contains("0.01 -> 0.02"), "{t}");
    let line = |stage: &str| {
        t.lines()
            .find(|l| l.split_whitespace().next() == Some(stage))
            .unwrap_or_else(|| panic!("no {stage} in {t}"))
            .to_string()
    };
    assert!(line("train/0").ends_with("same"), "{t}");
    assert!(line("synthesize/1").contains("key differs"), "{t}");
    assert!(t.contains("validation_error") && t.contains("B - A"), "{t}");

    // A run against itself: nothing differs.
    let same = ok(&["diff", &a, &a], &store);
    assert!(same.contains("settings: the same") && same.contains("9 of 9 stages the same"), "{same}");
}

#[test]
fn diff_of_the_same_key_made_on_two_devices_says_the_outputs_differ_by_device() {
    // A CUDA run of the same file has the same keys and other bytes; a record from another
    // machine is forged here by changing the device and one output's digest.
    let dir = tempfile::tempdir().unwrap();
    let file = tiny(dir.path());
    let store = dir.path().join("store");
    let a = run(&file, &store, &[]);
    let mut rec = record(&store, &a);
    rec["id"] = format!("{a}-cuda").into();
    rec["device"] = "cuda:0".into();
    let train = rec["stages"].as_array_mut().unwrap().iter_mut().find(|s| s["stage"] == "train/0").unwrap();
    train["outputs"]["checkpoint.safetensors"]["digest"] = "0".repeat(64).into();
    let other = dir.path().join("cuda-run.json");
    std::fs::write(&other, serde_json::to_vec(&rec).unwrap()).unwrap();

    let t = ok(&["diff", &a, other.to_str().unwrap()], &store);
    let line = t.lines().find(|l| l.trim_start().starts_with("train/0")).unwrap();
    assert!(line.contains("same key, outputs differ (device cpu vs cuda:0): checkpoint.safetensors"), "{t}");
    assert!(t.lines().any(|l| l.starts_with("device") && l.contains("cpu") && l.contains("cuda:0")), "{t}");
    let d = json(&["diff", &a, other.to_str().unwrap()], &store);
    let s = d["stages"].as_array().unwrap().iter().find(|s| s["stage"] == "train/0").unwrap();
    assert_eq!((s["key"].as_str(), s["outputs"].as_str()), (Some("same"), Some("differ")));
}

#[test]
fn why_names_the_changed_parameter_and_the_stages_that_wait_for_it() {
    let dir = tempfile::tempdir().unwrap();
    let file = tiny(dir.path());
    let store = dir.path().join("store");
    let f = file.to_str().unwrap();

    // Only a copy of the file elsewhere (same pipeline name) has run: not this file.
    let elsewhere = dir.path().join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    run(&tiny(&elsewhere), &store, &[]);
    let none = ok(&["why", f], &store);
    assert!(none.contains("no earlier run of"), "{none}");
    let none = json(&["why", f], &store);
    assert!(none["last_run"].is_null() && none["cached"].as_array().unwrap().len() == 9, "{none}");

    let id = run(&file, &store, &[]);
    let same = ok(&["why", f], &store);
    assert!(same.contains(&id) && same.contains("nothing will rerun: all 9 stages are cached"), "{same}");

    let t = ok(&["why", f, "--set", "synthesize.lr=0.03"], &store);
    let line = |stage: &str| {
        t.lines()
            .find(|l| l.split_whitespace().next() == Some(stage))
            .unwrap_or_else(|| panic!("no {stage} in {t}"))
            .to_string()
    };
    assert!(line("synthesize/1").contains("param lr: 0.01 -> 0.03"), "{t}");
    assert!(
        line("train/1").contains("waits for synthesize/1 (input pseudo_negatives.0001), which reruns: param lr: 0.01 -> 0.03"),
        "{t}"
    );
    assert!(line("evaluate/1").contains("waits for train/1"), "{t}");
    assert!(!t.lines().any(|l| l.split_whitespace().next() == Some("train/0")), "train/0 is cached:\n{t}");
    assert!(t.contains("3 cached, 6 to run"), "{t}");

    let j = json(&["why", f, "synthesize/2", "--set", "synthesize.lr=0.03"], &store);
    assert_eq!(j["last_run"]["id"], id.as_str());
    let rerun = j["rerun"].as_array().unwrap();
    assert_eq!(rerun.len(), 1);
    let reasons = rerun[0]["reasons"].as_array().unwrap();
    assert!(reasons.iter().any(|r| r["kind"] == "param" && r["path"] == "lr" && r["old"] == 0.01 && r["new"] == 0.03), "{reasons:?}");
    assert!(reasons.iter().any(|r| r["kind"] == "waits_for" && r["upstream"] == "train/1"), "{reasons:?}");

    // A changed training setting is found in the stage's nested parameters; a new round is
    // a new stage.
    let t = ok(&["why", f, "--set", "train.lr=0.1", "--set", "pipeline.rounds=3"], &store);
    assert!(t.contains("param optimizer.lr: 0.05 -> 0.1"), "{t}");
    assert!(t.lines().any(|l| l.trim_start().starts_with("synthesize/3") && l.contains("new stage (not in the last run)")), "{t}");

    let cached = ok(&["why", f, "train/0"], &store);
    assert!(cached.contains("train/0 is cached"), "{cached}");
    let bad = pipe().args(["why", f, "train/9"]).arg("--store").arg(&store).output().unwrap();
    assert_eq!(bad.status.code(), Some(2), "{}", text(&bad));
    assert!(text(&bad).contains("no stage `train/9`") && text(&bad).contains("synthesize/1"), "{}", text(&bad));
}

#[test]
fn json_views_of_status_ls_and_show_match_the_text() {
    let dir = tempfile::tempdir().unwrap();
    let file = tiny(dir.path());
    let store = dir.path().join("store");
    let f = file.to_str().unwrap();

    let st = json(&["status", f], &store);
    let states: Vec<(String, String)> = st["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["stage"].as_str().unwrap().into(), s["state"].as_str().unwrap().into()))
        .collect();
    assert_eq!(states.len(), 9);
    assert!(states.iter().all(|(_, s)| s == "to run"), "{states:?}");
    assert_eq!(st["stages"][1]["waits_for"], "load");
    assert!(!store.exists(), "status writes nothing");

    let id = run(&file, &store, &["synthesize.lr=0.02"]);
    let st = json(&["status", f, "--set", "synthesize.lr=0.02", "--set", "pipeline.rounds=3"], &store);
    let text_out = ok(&["status", f, "--set", "synthesize.lr=0.02", "--set", "pipeline.rounds=3"], &store);
    for s in st["stages"].as_array().unwrap() {
        let line = text_out.lines().find(|l| l.split_whitespace().any(|w| w == s["stage"].as_str().unwrap())).unwrap();
        assert!(line.trim_start().starts_with(s["state"].as_str().unwrap()), "{line} vs {s}");
        if let Some(k) = s["key"].as_str() {
            assert_eq!(k.len(), 64);
            assert!(line.contains(&k[..12]));
        }
    }
    assert_eq!((st["cached"].as_u64(), st["to_run"].as_u64()), (Some(9), Some(3)));

    let ls = json(&["ls"], &store);
    let r = &ls["runs"][0];
    assert_eq!(
        (r["id"].as_str(), r["pipeline"].as_str(), r["status"].as_str(), r["ran"].as_u64()),
        (Some(id.as_str()), Some("tiny"), Some("ok"), Some(9))
    );

    let show = json(&["show", &id[..12]], &store);
    assert_eq!(show["type"], "run");
    assert_eq!(show["stages"].as_array().unwrap().len(), 9);
    assert_eq!(show["stages"][3]["key"].as_str().unwrap().len(), 64);
    assert_eq!(show["overrides"][0], "synthesize.lr=0.02");

    let stage = json(&["show", &format!("{id}:synthesize/1")], &store);
    assert_eq!(
        (stage["type"].as_str(), stage["stage"].as_str(), stage["params"]["lr"].as_f64()),
        (Some("stage"), Some("synthesize/1"), Some(0.02))
    );
    let out = &stage["outputs"]["pseudo_negatives.parquet"];
    assert_eq!(out["digest"].as_str().unwrap().len(), 64);
    assert!(Path::new(out["path"].as_str().unwrap()).is_file());
    let table = &stage["tables"]["pseudo_negatives.parquet"];
    assert_eq!(table["rows"], 30);
    assert_eq!(table["head"].as_array().unwrap().len(), 20);
    assert!(table["head"][0]["final_logit"].is_number() && table["head"][0]["stop_reason"].is_string(), "{table}");

    let by_key = json(&["show", &stage["key"].as_str().unwrap()[..10]], &store);
    assert_eq!(by_key["key"], stage["key"]);
}

#[test]
fn unknown_runs_and_missing_stores_are_input_errors() {
    let dir = tempfile::tempdir().unwrap();
    let file = tiny(dir.path());
    let store = dir.path().join("store");
    let missing = pipe().args(["diff", "a", "b"]).arg("--store").arg(&store).output().unwrap();
    assert_eq!(missing.status.code(), Some(2), "{}", text(&missing));
    assert!(text(&missing).contains("not a pipe store"), "{}", text(&missing));
    let why = pipe().args(["why", file.to_str().unwrap()]).arg("--store").arg(&store).output().unwrap();
    assert_eq!(why.status.code(), Some(2), "{}", text(&why));

    let id = run(&file, &store, &[]);
    let unknown = pipe().args(["diff", &id, "zzzz"]).arg("--store").arg(&store).output().unwrap();
    assert_eq!(unknown.status.code(), Some(2), "{}", text(&unknown));
    assert!(text(&unknown).contains("no run `zzzz`") && text(&unknown).contains(&id), "{}", text(&unknown));
    let show = pipe().args(["show", "zzzz", "--json"]).arg("--store").arg(&store).output().unwrap();
    assert_eq!(show.status.code(), Some(2));
}
