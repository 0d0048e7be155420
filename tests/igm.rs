//! IGM through the binary: a tiny cascade and an IGM-single run on the shipped faces. The
//! cascade sampler reproduces the last round's pseudo-negatives bit for bit from
//! synthesize/0's seed; lineage says which working set each C_t saw; IGM-single draws old
//! pseudo-negatives less; a texture cascade killed in a round's patch synthesis resumes
//! byte-identical; the settings IGM refuses.

mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::process::Stdio;

fn faces() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines/data/faces")
}

/// Three rounds on the 92 training faces, a working set of 24, one epoch a round.
fn tiny_igm(dir: &Path) -> PathBuf {
    let text = format!(
        r#"[pipeline]
name = "tiny_igm"
method = "igm"
variant = "unsupervised"
seed = 5
rounds = 3

[data]
format = "folder"
path = "{data}"
channels = 1
validation_size = 4
test_size = 4

[net]
arch = "cnn4"
norm = "none"
width = 0.25

[train]
optimizer = "sgd"
lr = 0.01
momentum = 0.9
batch_size = 32
epochs_per_round = 1

[synthesize]
per_class = 24
optimizer = "adam"
lr = 0.01
beta1 = 0.5
stop = "classified"
max_steps = 60
batch_size = 10

[igm]
cascade = true
"#,
        data = faces().display()
    );
    let file = dir.join("tiny_igm.toml");
    std::fs::write(&file, text).unwrap();
    file
}

fn stage<'a>(rec: &'a serde_json::Value, id: &str) -> &'a serde_json::Value {
    rec["stages"].as_array().unwrap().iter().find(|s| s["stage"] == id).unwrap_or_else(|| panic!("no stage {id}"))
}

fn digest<'a>(rec: &'a serde_json::Value, id: &str, output: &str) -> &'a str {
    stage(rec, id)["outputs"][output]["digest"].as_str().unwrap()
}

/// The stored parameters of a run's stage, from its manifest.
fn params(store: &Path, rec: &serde_json::Value, id: &str) -> serde_json::Value {
    let out = pipe().args(["show", &format!("{}:{id}", rec["id"].as_str().unwrap()), "--json", "--store"]).arg(store).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["params"].clone()
}

fn lineage(store: &Path, run: &str, id: &str) -> serde_json::Value {
    let out = pipe().args(["lineage", &format!("{run}:{id}"), "--json", "--store"]).arg(store).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn a_cascade_sample_from_synthesize_0s_seed_is_the_last_rounds_pseudo_negatives_and_lineage_names_each_working_set() {
    let dir = tempfile::tempdir().unwrap();
    let file = tiny_igm(dir.path());
    let store = dir.path().join("store");
    let out = run(&file, &store, &[]);
    assert!(out.status.success(), "{}", text(&out));
    let rec = last_record(&store);
    let run_id = rec["id"].as_str().unwrap().to_string();
    for t in 1..=3 {
        let s = &stage(&rec, &format!("train/{t}"))["summary"];
        assert_eq!((s["real"].as_u64(), s["pseudo_negatives"].as_u64()), (Some(92), Some(24)), "train/{t}: the faces against one working set");
    }

    // synthesis continues each sample from the round before: every round's samples moved
    let synth0 = params(&store, &rec, "synthesize/0");
    assert_eq!(synth0["method"], "noise");
    let last = std::fs::read(object(&store, digest(&rec, "synthesize/3", "pseudo_negatives.safetensors"))).unwrap();
    let seed = synth0["seed"].as_u64().unwrap().to_string();
    let o = pipe().args(["sample", &run_id, "-n", "24", "--seed", &seed, "--out"]).arg(dir.path().join("replay")).arg("--store").arg(&store).output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("train/1, train/2, train/3"), "a cascade is sampled through every round's classifier: {}", text(&o));
    let replay = std::fs::read(dir.path().join("replay/samples.safetensors")).unwrap();
    assert!(replay == last, "the cascade sampler from synthesize/0's seed is not synthesize/3's pseudo-negatives");
    // another seed is another draw
    let o = pipe().args(["sample", &run_id, "-n", "24", "--seed", "1", "--out"]).arg(dir.path().join("other")).arg("--store").arg(&store).output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    assert!(std::fs::read(dir.path().join("other/samples.safetensors")).unwrap() != last);
    // and a two-classifier cascade stops somewhere else than the three-classifier one
    let o = pipe().args(["sample", &format!("{run_id}:train/2"), "-n", "24", "--seed", &seed, "--out"]).arg(dir.path().join("c2")).arg("--store").arg(&store).output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    assert!(std::fs::read(dir.path().join("c2/samples.safetensors")).unwrap() != last);

    // lineage of C_3: the warm-start chain C_1, C_2, C_3, and the working sets that shaped
    // it, each drawn by one classifier only: round r's by C_{r+1}, one epoch of balanced
    // batches (a pseudo-negative beside each of the 92 faces)
    let l = lineage(&store, &run_id, "train/3");
    let chain: Vec<&str> = l["chain"].as_array().unwrap().iter().map(|c| c["stage"].as_str().unwrap()).collect();
    assert_eq!(chain, ["train/1", "train/2", "train/3"]);
    let pns = l["pseudo_negatives"].as_array().unwrap();
    for r in 0..3u64 {
        let of = pns.iter().filter(|p| p["round"].as_u64() == Some(r));
        let (n, draws) = of.fold((0, 0), |(n, d), p| (n + 1, d + p["draws"].as_u64().unwrap()));
        assert_eq!((n, draws), (24, 92), "round {r}'s working set in C_3's lineage");
    }
    assert_eq!(pns.len(), 72, "nothing of round 3: it was made after C_3");
    // without the warm start, C_3 owes nothing to C_1 and C_2 or their working sets
    let cold = dir.path().join("cold");
    let out = run(&file, &cold, &["igm.warm_start=false"]);
    assert!(out.status.success(), "{}", text(&out));
    let rec = last_record(&cold);
    let l = lineage(&cold, rec["id"].as_str().unwrap(), "train/3");
    assert_eq!(l["chain"].as_array().unwrap().len(), 1);
    let pns = l["pseudo_negatives"].as_array().unwrap();
    assert!(pns.len() == 24 && pns.iter().all(|p| p["round"] == 2), "a cold C_3 saw round 2's working set alone");
}

/// How often train stage `id` drew the pseudo-negatives of each round (its draws.parquet).
fn draws_by_round(store: &Path, rec: &serde_json::Value, id: &str) -> std::collections::BTreeMap<u32, u64> {
    use arrow_array::{Array, UInt32Array};
    let table = pipe::engine::table::read_parquet(std::fs::read(object(store, digest(rec, id, "draws.parquet"))).unwrap()).unwrap();
    let mut by = std::collections::BTreeMap::new();
    for b in &table {
        let round = b.column_by_name("made_in_round").unwrap().as_any().downcast_ref::<UInt32Array>().unwrap();
        let draws = b.column_by_name("draws").unwrap().as_any().downcast_ref::<UInt32Array>().unwrap();
        for i in 0..b.num_rows() {
            *by.entry(round.value(i)).or_insert(0) += draws.value(i) as u64;
        }
    }
    by
}

#[test]
fn igm_single_keeps_every_pseudo_negative_and_draws_older_ones_less() {
    let dir = tempfile::tempdir().unwrap();
    let file = tiny_igm(dir.path());
    let store = dir.path().join("store");
    let out = run(&file, &store, &["igm.cascade=false", "train.epochs_per_round=4"]);
    assert!(out.status.success(), "{}", text(&out));
    let rec = last_record(&store);
    let s = &stage(&rec, "train/3")["summary"];
    assert_eq!(s["pseudo_negatives"].as_u64(), Some(3 * 24), "IGM-single trains on every round's pseudo-negatives");
    let by = draws_by_round(&store, &rec, "train/3");
    // weights 0.25, 0.5, 1 for rounds 0, 1, 2 over 4 epochs of 92 draws
    let (d0, d1, d2) = (by[&0], by[&1], by[&2]);
    assert_eq!(d0 + d1 + d2, 4 * 92);
    assert!(d0 < d1 && d1 < d2, "draws by round {d0}, {d1}, {d2}: expected the 0.5^age weights to favour recent rounds");
    // the one classifier is the model: a sample goes through train/3 alone
    let o = pipe().args(["sample", rec["id"].as_str().unwrap(), "-n", "4", "--out"]).arg(dir.path().join("s")).arg("--store").arg(&store).output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("(train/3)"), "{}", text(&o));
}

#[test]
fn igm_refuses_labels_threshold_stops_and_a_single_that_would_restart() {
    let dir = tempfile::tempdir().unwrap();
    let file = tiny_igm(dir.path());
    for (set, expect) in [
        ("pipeline.variant=softmax", "pipeline.variant"),
        ("synthesize.stop=threshold", "synthesize.stop"),
        ("synthesize.stop=argmax", "synthesize.stop"),
        ("igm.cascade=false", "igm.warm_start"),
        ("sample.sizes=[8]", "sample.sizes"),
    ] {
        let store = dir.path().join("never-made");
        let mut c = pipe();
        c.arg("run").arg(&file).arg("--store").arg(&store).args(["--set", set]);
        if set == "igm.cascade=false" {
            c.args(["--set", "igm.warm_start=false"]);
        }
        let out = c.output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "--set {set}: {err}");
        assert!(err.contains(expect), "--set {set}: expected `{expect}` in {err}");
        assert!(!store.exists(), "--set {set} wrote a store");
    }
}

#[test]
fn a_texture_cascade_killed_in_patch_synthesis_resumes_byte_identical() {
    let dir = tempfile::tempdir().unwrap();
    let file = tiny_igm_texture(dir.path(), &Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines/data/textures"));
    let killed = dir.path().join("killed");
    let mut child = pipe().arg("run").arg(&file).arg("--store").arg(&killed).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    // kill -9 once synthesize/2 has saved an image of its working set
    let partial = kill_once_saved(&mut child, &killed, "train/2", "progress.bin");
    let resumed = run(&file, &killed, &[]);
    let out = String::from_utf8_lossy(&resumed.stdout).to_string();
    let synth2 = out.lines().find(|l| l.contains("synthesize/2 ")).unwrap();
    assert!(synth2.starts_with("ran") && synth2.contains("resumed from image"), "{out}");
    assert!(!partial.exists());
    let clean = dir.path().join("clean");
    run(&file, &clean, &[]);
    assert_eq!(output_digests(&killed), output_digests(&clean));

    // the working set is 48x48 images; the classifiers saw 16x16 windows of them
    let rec = last_record(&clean);
    let pn = stages::codec::decode_pseudo_negatives(&std::fs::read(object(&clean, digest(&rec, "synthesize/2", "pseudo_negatives.safetensors"))).unwrap()).unwrap();
    assert_eq!((pn.classes.len(), pn.shape), (6, (1, 48, 48)));
    assert_eq!(stage(&rec, "train/2")["summary"]["pseudo_negatives"].as_u64(), Some(6));
    let sample = stages::codec::decode_pseudo_negatives(&std::fs::read(object(&clean, digest(&rec, "sample/64", "samples.safetensors"))).unwrap()).unwrap();
    assert_eq!(sample.shape, (1, 64, 64));
    // every round, p0 included, has its Gram distance, and the run reports it per round
    for r in 0..=2 {
        assert!(stage(&rec, &format!("quality/{r}"))["summary"]["gram_distance"].as_f64().is_some_and(f64::is_finite));
    }
    assert!(out.contains("Gram distance"), "{out}");
    let stops: Vec<&str> = out.lines().filter(|l| l.contains("synthesize/")).collect();
    assert!(stops.iter().all(|l| !l.contains("NaN")), "{stops:?}");
}
