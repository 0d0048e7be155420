//! `pipe lineage` on a real two-round run: the chain of warm starts, the data set, every
//! pseudo-negative with its draw count, and later rounds' scores checked against the
//! classifier itself.

use std::path::Path;

mod common;
use common::*;

fn lineage(store: &Path, what: &str, extra: &[&str]) -> std::process::Output {
    pipe().arg("lineage").arg(what).args(extra).arg("--store").arg(store).output().unwrap()
}

#[test]
fn lineage_of_a_round_2_checkpoint_names_every_input_and_scores_them() {
    let dir = tempfile::tempdir().unwrap();
    let file = tiny(dir.path(), 1, 300);
    let store = dir.path().join("store");
    run(&file, &store, &[]);
    let rec = last_record(&store);
    let run_id = rec["id"].as_str().unwrap();

    let out = lineage(&store, &format!("{run_id}:train/2"), &["--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let l: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let stage = |id: &str| rec["stages"].as_array().unwrap().iter().find(|s| s["stage"] == id).unwrap().clone();
    assert_eq!(l["checkpoint"], stage("train/2")["outputs"]["checkpoint.safetensors"]["digest"]);
    let chain: Vec<&str> = l["chain"].as_array().unwrap().iter().map(|c| c["stage"].as_str().unwrap()).collect();
    assert_eq!(chain, ["train/0", "train/1", "train/2"]);
    let ds = l["datasets"].as_array().unwrap();
    assert_eq!(ds.len(), 1);
    assert_eq!(ds[0]["digest"], stage("load")["outputs"]["train.safetensors"]["digest"]);
    assert_eq!(ds[0]["load_params"]["train_size"], 300);
    assert_eq!(ds[0]["files"].as_object().unwrap().len(), 4, "the four IDX files");

    // 2 rounds x 10 classes x 3 per class, made as the synthesis tables say
    let pns = l["pseudo_negatives"].as_array().unwrap();
    assert_eq!(pns.len(), 60);
    for p in pns {
        let made = p["round"].as_u64().unwrap();
        // the union shows every sample once per epoch; one epoch per round
        assert_eq!(p["draws"].as_u64().unwrap(), 3 - made, "{p}");
        let later: Vec<u64> = p["later"].as_array().unwrap().iter().map(|x| x["round"].as_u64().unwrap()).collect();
        assert_eq!(later, (made..=2).collect::<Vec<_>>(), "scored by every round from the one it was made in");
    }

    // a later score, recomputed from the round-2 classifier and the stored tensor
    let p = &pns[7];
    let params = &stage("train/2");
    let manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(store.join("stages").join(format!("{}.json", params["key"].as_str().unwrap()))).unwrap()).unwrap();
    let net: stages::nn::NetConfig = serde_json::from_value(manifest["params"]["net"].clone()).unwrap();
    let object = |d: &str| std::fs::read(store.join("objects").join(&d[..2]).join(&d[2..])).unwrap();
    let dev = stages::candle::Device::Cpu;
    let model = net.load(&object(l["checkpoint"].as_str().unwrap()), &dev).unwrap();
    let tensors = stages::codec::decode_pseudo_negatives(&object(p["tensor"].as_str().unwrap())).unwrap();
    let (id, class) = (p["sample_id"].as_u64().unwrap() as usize, p["class"].as_u64().unwrap() as usize);
    assert_eq!(tensors.classes[id] as usize, class);
    let d = 28 * 28;
    let f = stages::evaluate::logits(model.as_ref(), &tensors.images[id * d..(id + 1) * d], net.shape(), 1, &dev).unwrap();
    let at2 = p["later"].as_array().unwrap().last().unwrap();
    assert!((at2["logit"].as_f64().unwrap() - f[0][class] as f64).abs() < 1e-4, "lineage {at2}, recomputed {}", f[0][class]);

    // the readable table and the Parquet form
    let out = lineage(&store, &l["checkpoint"].as_str().unwrap()[..10], &[]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("chain of warm starts (3 training stages)") && text.contains("logit@2"), "{text}");
    let pq = dir.path().join("l.parquet");
    let out = lineage(&store, &format!("{run_id}:train/2"), &["--format", "parquet", "--out", pq.to_str().unwrap()]);
    assert!(out.status.success());
    let batches = pipe::engine::table::read_parquet(std::fs::read(&pq).unwrap()).unwrap();
    assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), 60);
    for c in ["round", "class", "sample_id", "seed", "steps", "stop_reason", "logit", "draws", "logit_after_1", "fools_after_2"] {
        assert!(batches[0].column_by_name(c).is_some(), "no column {c}");
    }

    // bad input: exit 2 with what exists
    for (what, expect) in [("ffffffffff", "no checkpoint"), (&format!("{run_id}:evaluate/1") as &str, "train stage"), ("nope:train/1", "no run")] {
        let out = lineage(&store, what, &[]);
        assert_eq!(out.status.code(), Some(2), "{what}");
        assert!(String::from_utf8_lossy(&out.stderr).contains(expect), "{what}: {}", String::from_utf8_lossy(&out.stderr));
    }
}
