//! The `probe` stage through the binary: a `[probe]` section adds `probe/<last round>` on
//! the last classifier and `probe/random` on random weights of the same net; bad probe
//! settings are refused.

mod common;
use common::*;

#[test]
fn a_probe_section_probes_the_last_classifier_and_a_random_net() {
    let dir = tempfile::tempdir().unwrap();
    let file = tiny(dir.path(), 1, 300);
    let store = dir.path().join("store");
    let out = run(&file, &store, &["probe.labels=50", "probe.draws=3", "probe.c_grid=[0.01, 1.0]"]);
    assert_eq!(&ran(&out)[ran(&out).len() - 2..], ["probe/2", "probe/random"]);
    let rec = last_record(&store);
    let stage = |id: &str| rec["stages"].as_array().unwrap().iter().find(|s| s["stage"] == id).unwrap().clone();
    for (id, trained) in [("probe/2", true), ("probe/random", false)] {
        let s = stage(id);
        let manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(store.join("stages").join(format!("{}.json", s["key"].as_str().unwrap()))).unwrap()).unwrap();
        let inputs = manifest["inputs"].as_object().unwrap();
        assert_eq!(inputs.contains_key("checkpoint"), trained, "{id}: {inputs:?}");
        if trained {
            assert_eq!(inputs["checkpoint"], stage("train/2")["outputs"]["checkpoint.safetensors"]["digest"]);
        }
        let table = pipe::engine::table::read_parquet(std::fs::read(object(&store, s["outputs"]["probe.parquet"]["digest"].as_str().unwrap())).unwrap()).unwrap();
        use arrow_array::{Array, Float64Array};
        let errors: Vec<f64> = table.iter().flat_map(|b| {
            let c = b.column_by_name("test_error").unwrap().as_any().downcast_ref::<Float64Array>().unwrap();
            (0..c.len()).map(|i| c.value(i)).collect::<Vec<_>>()
        }).collect();
        assert_eq!(errors.len(), 3);
        let mean = errors.iter().sum::<f64>() / 3.0;
        assert!((s["summary"]["test_error"].as_f64().unwrap() - mean).abs() < 1e-12, "{s}");
        assert!(errors.iter().all(|e| (0.0..0.9).contains(e)), "{id}: better than chance on digits: {errors:?}");
    }
    // one more setting reruns the probes only
    let again = run(&file, &store, &["probe.labels=50", "probe.draws=4", "probe.c_grid=[0.01, 1.0]"]);
    assert_eq!(ran(&again), ["probe/2", "probe/random"]);

    // refused before any work: a probe of one-vs-all (K nets), an empty grid
    for (set, expect) in [("pipeline.variant=one-vs-all", "pipeline.variant"), ("probe.c_grid=[]", "probe.c_grid")] {
        let never = dir.path().join("never");
        let o = pipe().arg("run").arg(&file).arg("--store").arg(&never).args(["--set", "probe.labels=50", "--set", set]).output().unwrap();
        assert_eq!(o.status.code(), Some(2), "{set}: {}", text(&o));
        assert!(text(&o).contains(expect), "{set}: {}", text(&o));
        assert!(!never.exists());
    }
    // more labels than training examples: the probe fails naming the setting
    let o = pipe().arg("run").arg(&file).arg("--store").arg(&store).args(["--set", "probe.labels=5000"]).output().unwrap();
    assert_ne!(o.status.code(), Some(0));
    assert!(text(&o).contains("probe.labels = 5000") && text(&o).contains("only 300"), "{}", text(&o));
}
