//! The attack stage and the sweep reports on the real binary: per-round FGSM stages whose
//! summaries agree with their per-example tables, the two-way comparison of two cases of a
//! sweep, the eps unit, selective reruns, and the size plot.

use std::path::Path;

mod common;
use common::*;

use arrow_array::{Array, BooleanArray, StringArray, UInt32Array};

/// (example, model, fooled) of an attack stage's per-example table.
fn fooled_rows(store: &Path, digest: &str) -> Vec<(u32, String, bool)> {
    let bytes = std::fs::read(store.join("objects").join(&digest[..2]).join(&digest[2..])).unwrap();
    let mut rows = Vec::new();
    for b in pipe::engine::table::read_parquet(bytes).unwrap() {
        let col = |n: &str| b.column_by_name(n).unwrap_or_else(|| panic!("no column {n}")).clone();
        let (ex, model, fooled) = (col("example"), col("model"), col("fooled"));
        let ex = ex.as_any().downcast_ref::<UInt32Array>().unwrap();
        let model = model.as_any().downcast_ref::<StringArray>().unwrap();
        let fooled = fooled.as_any().downcast_ref::<BooleanArray>().unwrap();
        for i in 0..b.num_rows() {
            rows.push((ex.value(i), model.value(i).to_string(), fooled.value(i)));
        }
        for c in ["round", "label", "attacked", "clean_prediction", "adversarial_prediction"] {
            assert!(b.column_by_name(c).is_some(), "no column {c}");
        }
    }
    rows
}

/// N, N_A and N_{A and B} counted from the table, for the attacked model `a` and the other `b`.
fn counts(rows: &[(u32, String, bool)], a: &str, b: &str) -> (usize, usize, usize) {
    let of = |m: &str| rows.iter().filter(|r| r.1 == m).map(|r| (r.0, r.2)).collect::<Vec<_>>();
    let (ra, rb) = (of(a), of(b));
    assert_eq!(ra.iter().map(|r| r.0).collect::<Vec<_>>(), rb.iter().map(|r| r.0).collect::<Vec<_>>(), "both models are tested on the same examples");
    let fooled_a = ra.iter().filter(|r| r.1).count();
    let both = ra.iter().zip(&rb).filter(|(x, y)| x.1 && y.1).count();
    (ra.len(), fooled_a, both)
}

fn with_attack(dir: &Path, attack: &str) -> std::path::PathBuf {
    let base = std::fs::read_to_string(tiny(dir, 2, 300)).unwrap();
    let file = dir.join("attacked.toml");
    std::fs::write(&file, base.replace("rounds = 2", "rounds = 1") + attack).unwrap();
    file
}

#[test]
fn attack_stages_agree_with_their_tables_and_rerun_alone() {
    let dir = tempfile::tempdir().unwrap();
    let file = with_attack(dir.path(), "\n[attack]\nmethod = \"fgsm\"\neps = 0.25\neps_unit = \"[-1,1]\"\n");
    let store = dir.path().join("store");
    let out = run(&file, &store, &[]);
    assert_eq!(ran(&out), ["load", "train/0", "evaluate/0", "attack/0", "synthesize/1", "train/1", "evaluate/1", "attack/1"]);
    let rec = last_record(&store);
    let stage = |id: &str| rec["stages"].as_array().unwrap().iter().find(|s| s["stage"] == id).unwrap().clone();
    let a1 = stage("attack/1");
    let s = &a1["summary"];
    let rows = fooled_rows(&store, a1["outputs"]["examples.parquet"]["digest"].as_str().unwrap());
    let (n, fooled, both) = counts(&rows, "train/1", "train/0");
    // N is the test images train/1 gets right: 1 - its clean test error
    let test_error = stage("evaluate/1")["summary"]["test_error"].as_f64().unwrap();
    assert_eq!(n, ((1.0 - test_error) * 200.0).round() as usize);
    assert_eq!(s["n"].as_u64().unwrap() as usize, n);
    assert_eq!(s["fooled"].as_u64().unwrap() as usize, fooled);
    assert_eq!(s["fooled_both"].as_u64().unwrap() as usize, both);
    assert!((s["adversarial_error"].as_f64().unwrap() - fooled as f64 / n as f64).abs() < 1e-12);
    assert!((s["correction_rate"].as_f64().unwrap() - (1.0 - both as f64 / fooled as f64)).abs() < 1e-12);
    assert!(fooled > 0, "eps 0.25 fools a tiny CNN on some digits");
    assert!(a1["outputs"]["examples.png"].is_object());
    // round 0's attack has no other model
    assert!(stage("attack/0")["summary"]["correction_rate"].is_null());

    // the same eps in [0, 1] units is the same attack: nothing reruns
    let out = run(&file, &store, &["attack.eps=0.125", "attack.eps_unit=[0,1]"]);
    assert!(ran(&out).is_empty(), "{:?}", ran(&out));
    // a stronger attack reruns the attack stages only, and fools at least as often
    let out = run(&file, &store, &["attack.eps=0.4"]);
    assert_eq!(ran(&out), ["attack/0", "attack/1"]);
    let stronger = last_record(&store)["stages"].as_array().unwrap().iter().find(|s| s["stage"] == "attack/1").unwrap()["summary"]["fooled"].as_u64().unwrap();
    assert!(stronger as usize >= fooled, "eps 0.4 fools {stronger}, eps 0.25 fooled {fooled}");
    // PGD is a stronger attack than FGSM at the same eps
    let out = run(&file, &store, &["attack.method=pgd", "attack.steps=5"]);
    assert_eq!(ran(&out), ["attack/0", "attack/1"]);
    let pgd = last_record(&store)["stages"].as_array().unwrap().iter().find(|s| s["stage"] == "attack/1").unwrap()["summary"]["fooled"].as_u64().unwrap();
    assert!(pgd as usize >= fooled, "PGD fools {pgd}, FGSM fooled {fooled}");
}

#[test]
fn an_attack_without_an_explicit_unit_or_out_of_range_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    for (attack, expect) in [
        ("\n[attack]\neps = 0.1\n", "eps_unit"),
        ("\n[attack]\neps = 1.5\neps_unit = \"[0,1]\"\n", "attack.eps"),
        ("\n[attack]\neps = 0.1\neps_unit = \"[0,255]\"\n", "eps_unit"),
        ("\n[attack]\neps = 0.1\neps_unit = \"[0,1]\"\ncompare = [\"baseline\", \"icn\"]\n", "attack.compare"),
    ] {
        let file = with_attack(dir.path(), attack);
        let store = dir.path().join("store");
        let out = pipe().arg("run").arg(&file).arg("--store").arg(&store).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{attack}: {err}");
        assert!(err.contains(expect), "{attack}: {err}");
        assert!(!store.exists(), "nothing is written for bad input");
    }
}

#[test]
fn a_sweep_attacks_two_cases_both_ways_and_plots_error_against_size() {
    let dir = tempfile::tempdir().unwrap();
    let base = std::fs::read_to_string(tiny(dir.path(), 2, 300)).unwrap();
    let file = dir.path().join("robust.toml");
    std::fs::write(
        &file,
        base.replace("name = \"tiny\"", "name = \"robust\"").replace("rounds = 2", "rounds = 1").replace("train_size = 300", "train_size = 200")
            + "\n[attack]\neps = 0.25\neps_unit = \"[-1,1]\"\ncompare = [\"baseline\", \"icn\"]\n"
            + "\n[sweep]\n\"data.train_size\" = [100, 200]\n\"pipeline.seed\" = [1, 2]\ncases = [\n  { name = \"baseline\", \"pipeline.method\" = \"baseline\" },\n  { name = \"icn\", \"pipeline.method\" = \"icn\" },\n]\n",
    )
    .unwrap();
    let store = dir.path().join("store");
    let st = pipe().arg("status").arg(&file).arg("--store").arg(&store).output().unwrap();
    let text = String::from_utf8_lossy(&st.stdout).to_string();
    assert!(text.contains("8 two-way attack stages"), "{text}");

    let out = run(&file, &store, &[]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    // a load per training size, shared by both cases and both seeds
    let loads = text.lines().filter(|l| l.starts_with("ran") && l.split_whitespace().nth(1) == Some("load")).count();
    assert_eq!(loads, 2, "{text}");
    assert!(text.contains("== two-way attack: baseline vs icn, 8 stages"), "{text}");
    assert!(text.contains("correction rate by B") && text.contains("count form"), "{text}");

    // each two-way stage tests the other case's selected classifier on the attacked one's examples
    let rec = last_record(&store);
    assert_eq!(rec["pipeline"], "robust:two-way");
    let stages = rec["stages"].as_array().unwrap();
    assert_eq!(stages.len(), 8);
    for s in stages {
        let sum = &s["summary"];
        let (attacked, tested) = (sum["attacked"].as_str().unwrap(), sum["tested"].as_str().unwrap());
        assert!(s["stage"].as_str().unwrap().ends_with(attacked));
        assert_ne!(attacked, tested);
        let rows = fooled_rows(&store, s["outputs"]["examples.parquet"]["digest"].as_str().unwrap());
        let (n, fooled, both) = counts(&rows, attacked, tested);
        assert_eq!((sum["n"].as_u64().unwrap() as usize, sum["fooled"].as_u64().unwrap() as usize, sum["fooled_both"].as_u64().unwrap() as usize), (n, fooled, both));
    }
    let table = pipe::engine::table::read_parquet(std::fs::read(store.join("sweeps/robust.two-way.parquet")).unwrap()).unwrap();
    assert_eq!(table.iter().map(|b| b.num_rows()).sum::<usize>(), 8);
    for png in ["robust.png", "robust.adversarial.baseline.png", "robust.adversarial.icn.png"] {
        let bytes = std::fs::read(store.join("sweeps").join(png)).unwrap_or_else(|e| panic!("{png}: {e}"));
        assert_eq!(&bytes[1..4], b"PNG", "{png}");
    }
    // everything is cached on a rerun, including the two-way stages
    let out = run(&file, &store, &[]);
    assert!(ran(&out).is_empty(), "{:?}", ran(&out));
}
