//! WINN through the binary: a tiny WINN-single run on crops of the shipped brick texture
//! (the Table 5 net, the gradient penalty, threshold synthesis, a patch sample larger than
//! the critic), killed in a critic epoch and resumed; `pipe sample` from it; its lineage;
//! and the settings WINN refuses.

mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::process::Stdio;

fn textures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines/data/textures")
}

/// WINN-single on 32x32 crops of brick: two rounds of three critic epochs, 6 batches each,
/// through a layer-norm CNN4 (the Table 5 net's penalty is checked layer by layer in
/// stages/tests; here it would only cost time).
fn tiny_winn(dir: &Path) -> PathBuf {
    let text = format!(
        r#"[pipeline]
name = "tiny_winn"
method = "winn"
variant = "unsupervised"
seed = 3
rounds = 2

[data]
format = "texture"
path = "{data}"
texture = "brick"
patch = 32
channels = 1
train_size = 300
validation_size = 10
test_size = 10

[net]
arch = "cnn4"
norm = "layer"
width = 0.25

[train]
optimizer = "adam"
lr = 1e-4
beta1 = 0.0
beta2 = 0.9
batch_size = 100

[synthesize]
per_class = 40
optimizer = "adam"
lr = 0.01
beta1 = 0.9
beta2 = 0.99
reference = "appendix-d"
stop = "threshold"
max_steps = 30
batch_size = 20

[winn]
critic_updates = 3

[sample]
sizes = [48]
count = 2
patches = 8
max_steps = 10
"#,
        data = textures().display()
    );
    let file = dir.join("tiny_winn.toml");
    std::fs::write(&file, text).unwrap();
    file
}

fn stage<'a>(rec: &'a serde_json::Value, id: &str) -> &'a serde_json::Value {
    rec["stages"].as_array().unwrap().iter().find(|s| s["stage"] == id).unwrap_or_else(|| panic!("no stage {id}"))
}

#[test]
fn winn_single_killed_in_a_critic_epoch_resumes_identical_samples_reproduce_and_lineage_holds() {
    let dir = tempfile::tempdir().unwrap();
    let file = tiny_winn(dir.path());
    let killed = dir.path().join("killed");
    let mut child = pipe().arg("run").arg(&file).arg("--store").arg(&killed).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    // kill -9 in the middle of a critic epoch of train/2 (with the penalty)
    let partial = kill_after_an_epoch(&mut child, &killed, "synthesize/1");
    let finished: Vec<String> = last_record(&killed)["stages"].as_array().unwrap().iter().map(|s| s["stage"].as_str().unwrap().to_string()).collect();
    assert_eq!(finished, ["load", "synthesize/0", "train/1", "synthesize/1"]);

    let resumed = run(&file, &killed, &[]);
    let out = String::from_utf8_lossy(&resumed.stdout).to_string();
    let train2 = out.lines().find(|l| l.contains("train/2")).unwrap();
    assert!(train2.starts_with("ran") && train2.contains("resumed from epoch"), "{out}");
    assert!(!partial.exists());
    // the run's summary reports the critic's estimate as a value, not as an error rate
    assert!(out.lines().any(|l| l.starts_with("kept: the last round, 2 (E_neg f - E_pos f -") && !l.contains('%')), "{out}");
    let synth = out.lines().find(|l| l.contains("synthesize/2")).unwrap();
    assert!(synth.contains("40 samples") && synth.contains("reached their threshold"), "{synth}");

    let clean = dir.path().join("clean");
    run(&file, &clean, &[]);
    assert_eq!(output_digests(&killed), output_digests(&clean));

    // the critic's thresholds ride in its checkpoint, and synthesis stopped inside them
    let rec = last_record(&clean);
    let t2 = stage(&rec, "train/2");
    let (lo, hi) = (t2["summary"]["critic_thresholds"][0].as_f64().unwrap(), t2["summary"]["critic_thresholds"][1].as_f64().unwrap());
    assert!(lo <= hi, "{t2}");
    let s2 = stage(&rec, "synthesize/2");
    let table = pipe::engine::table::read_parquet(std::fs::read(object(&clean, s2["outputs"]["pseudo_negatives.parquet"]["digest"].as_str().unwrap())).unwrap()).unwrap();
    use arrow_array::{Array, Float32Array, StringArray};
    let (mut at_threshold, mut rows) = (0, 0);
    for b in &table {
        let f = b.column_by_name("final_logit").unwrap().as_any().downcast_ref::<Float32Array>().unwrap();
        let why = b.column_by_name("stop_reason").unwrap().as_any().downcast_ref::<StringArray>().unwrap();
        for i in 0..b.num_rows() {
            rows += 1;
            if why.value(i) == "threshold" {
                at_threshold += 1;
                assert!(f.value(i) as f64 >= lo - 1e-6, "a sample stopped at f = {} below every threshold [{lo}, {hi}]", f.value(i));
            } else {
                assert!((f.value(i) as f64) < hi + 1e-6, "a sample ran out of steps above every threshold");
            }
        }
    }
    assert_eq!(rows, 40);
    assert!(at_threshold > 0, "no sample reached its threshold in 30 steps");

    // the 48x48 patch sample of the pipeline
    let sample = stage(&rec, "sample/48");
    let samples = std::fs::read(object(&clean, sample["outputs"]["samples.safetensors"]["digest"].as_str().unwrap())).unwrap();
    let samples = stages::codec::decode_pseudo_negatives(&samples).unwrap();
    assert_eq!((samples.classes.len(), samples.shape, samples.images.len()), (2, (1, 48, 48), 2 * 48 * 48));

    // pipe sample: one seed gives the same bytes twice, from the run or the checkpoint's digest
    let run_id = rec["id"].as_str().unwrap().to_string();
    let checkpoint = t2["outputs"]["checkpoint.safetensors"]["digest"].as_str().unwrap().to_string();
    let draw = |model: &str, seed: &str, out: &str, size: &str| {
        pipe().args(["sample", model, "-n", "3", "--seed", seed, "--size", size, "--out"]).arg(dir.path().join(out)).arg("--store").arg(&clean).output().unwrap()
    };
    for (model, seed, out) in [(run_id.as_str(), "5", "a"), (run_id.as_str(), "5", "b"), (&checkpoint[..12], "5", "c"), (run_id.as_str(), "6", "d")] {
        let o = draw(model, seed, out, "40");
        assert!(o.status.success(), "{}", text(&o));
    }
    let bytes = |out: &str, name: &str| std::fs::read(dir.path().join(out).join(name)).unwrap();
    for name in ["samples.safetensors", "samples.parquet", "grid.png"] {
        assert_eq!(bytes("a", name), bytes("b", name), "{name} differs between two draws with one seed");
        assert_eq!(bytes("a", name), bytes("c", name), "{name}: the run's last critic and its checkpoint digest are one model");
    }
    assert_ne!(bytes("a", "samples.safetensors"), bytes("d", "samples.safetensors"));
    let drawn = stages::codec::decode_pseudo_negatives(&bytes("a", "samples.safetensors")).unwrap();
    assert_eq!((drawn.classes.len(), drawn.shape), (3, (1, 40, 40)));

    // lineage: which pseudo-negatives shaped the round-2 critic, from which round, how often drawn
    let out = pipe().args(["lineage", &format!("{run_id}:train/2"), "--json", "--store"]).arg(&clean).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let l: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let chain: Vec<&str> = l["chain"].as_array().unwrap().iter().map(|c| c["stage"].as_str().unwrap()).collect();
    assert_eq!(chain, ["train/1", "train/2"], "round 1's critic starts fresh; round 2 warm-starts from it");
    assert_eq!(l["datasets"][0]["digest"], stage(&rec, "load")["outputs"]["train.safetensors"]["digest"]);
    let pns = l["pseudo_negatives"].as_array().unwrap();
    let of_round = |r: u64| pns.iter().filter(|p| p["round"].as_u64() == Some(r)).count();
    assert_eq!((of_round(0), of_round(1), pns.len()), (40, 40, 80), "p0 and round 1's samples, nothing of round 2 (made after train/2)");
    // balanced batches: every crop once per epoch, beside as many pseudo-negatives
    let draws: u64 = pns.iter().map(|p| p["draws"].as_u64().unwrap()).sum();
    let crops = stage(&rec, "train/2")["summary"]["real"].as_u64().unwrap();
    assert_eq!(crops, 300);
    assert_eq!(draws, 2 * 3 * crops, "two critics of three epochs over {crops} crops");
    assert!(pns.iter().filter(|p| p["round"] == 0).all(|p| p["stop_reason"] == "noise"));
    assert!(pns.iter().filter(|p| p["round"] == 1).all(|p| p["stop_reason"] != "noise"));

    // smaller than the critic's patches: exit 2, naming the setting, nothing written
    let o = draw(&run_id, "5", "small", "16");
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("--size 16") && text(&o).contains("smaller than the 32x32 patches"), "{}", text(&o));
    assert!(!dir.path().join("small").exists());
}

#[test]
fn winn_refuses_batch_norm_and_samples_smaller_than_its_patches() {
    let dir = tempfile::tempdir().unwrap();
    let file = tiny_winn(dir.path());
    for (set, expect) in [
        ("net.norm=batch", "net.norm"),
        ("sample.sizes=[16]", "sample.sizes"),
        ("synthesize.stop=classified", "synthesize.stop"),
    ] {
        let store = dir.path().join("never-made");
        let out = pipe().arg("run").arg(&file).arg("--store").arg(&store).args(["--set", set]).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "--set {set}: {err}");
        assert!(err.contains(expect), "--set {set}: expected `{expect}` in {err}");
        assert!(!store.exists(), "--set {set} wrote a store");
    }
}
