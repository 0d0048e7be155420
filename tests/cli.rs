//! The real `pipe` binary on tiny pipelines over the shipped MNIST subset: caching,
//! selective reruns, determinism, resumption after SIGKILL and input errors.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

mod common;
use common::*;
#[path = "../stages/tests/support/mat_writer.rs"]
mod mat_writer;

#[test]
fn unchanged_rerun_runs_nothing_and_is_fast() {
    let dir = tempfile::tempdir().unwrap();
    let file = tiny(dir.path(), 1, 300);
    let store = dir.path().join("store");
    let first = run(&file, &store, &[]);
    let all: Vec<String> = stage_lines(&first).into_iter().map(|(_, s)| s).collect();
    assert_eq!(all, ["load", "train/0", "evaluate/0", "synthesize/1", "train/1", "evaluate/1", "synthesize/2", "train/2", "evaluate/2"]);
    assert_eq!(ran(&first).len(), 9);

    let t = Instant::now();
    let second = run(&file, &store, &[]);
    let took = t.elapsed();
    assert!(ran(&second).is_empty(), "{:?}", stage_lines(&second));
    assert_eq!(stage_lines(&second).len(), 9);
    assert!(took < Duration::from_secs(1), "cached rerun took {took:?}");
}

#[test]
fn a_synthesis_setting_reruns_only_what_depends_on_it_and_more_rounds_reuse_old_ones() {
    let dir = tempfile::tempdir().unwrap();
    let file = tiny(dir.path(), 1, 300);
    let store = dir.path().join("store");
    run(&file, &store, &[]);

    let changed = run(&file, &store, &["synthesize.lr=0.02"]);
    assert_eq!(ran(&changed), ["synthesize/1", "train/1", "evaluate/1", "synthesize/2", "train/2", "evaluate/2"]);

    let more = run(&file, &store, &["pipeline.rounds=3"]);
    assert_eq!(ran(&more), ["synthesize/3", "train/3", "evaluate/3"]);

    // status agrees before running anything
    let st = pipe().args(["status"]).arg(&file).arg("--store").arg(&store).args(["--set", "pipeline.rounds=4"]).output().unwrap();
    let text = String::from_utf8_lossy(&st.stdout);
    assert!(st.status.success(), "{text}");
    assert!(text.contains("12 cached, 3 to run"), "{text}");
}

#[test]
fn same_seed_gives_identical_digests_and_another_seed_does_not() {
    let dir = tempfile::tempdir().unwrap();
    let file = tiny(dir.path(), 1, 300);
    let (a, b, c) = (dir.path().join("a"), dir.path().join("b"), dir.path().join("c"));
    run(&file, &a, &[]);
    run(&file, &b, &[]);
    let da = output_digests(&a);
    // load 3; round 0: checkpoint, log, metrics; rounds 1-2: those plus draws, the pool
    // and the pseudo-negative scores, and synthesis's 3
    assert_eq!(da.len(), 3 + 3 + 2 * (3 + 3) + 2 * 3, "{da:?}");
    assert_eq!(da, output_digests(&b));
    run(&file, &c, &["pipeline.seed=8"]);
    let dc = output_digests(&c);
    let train0 = |d: &[(String, String, String)]| d.iter().find(|(s, n, _)| s == "train/0" && n == "checkpoint.safetensors").unwrap().2.clone();
    assert_ne!(train0(&da), train0(&dc));
}

#[test]
fn sigkill_during_training_resumes_at_the_last_epoch_with_identical_results() {
    let dir = tempfile::tempdir().unwrap();
    let file = tiny_with(dir.path(), 1, 4, 1500);
    let killed = dir.path().join("killed");
    let mut child = pipe().arg("run").arg(&file).arg("--store").arg(&killed).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    // kill -9 in the middle of train/1, once it has written an epoch checkpoint
    let partial = kill_after_an_epoch(&mut child, &killed, "synthesize/1");
    assert!(partial.exists());
    let rec = last_record(&killed);
    assert_eq!(rec["status"], "running", "a killed run is left as running");
    // ... and shown as interrupted once its process is gone and the store's lock free
    let ls = pipe().arg("ls").arg("--json").arg("--store").arg(&killed).output().unwrap();
    let ls: serde_json::Value = serde_json::from_slice(&ls.stdout).unwrap();
    assert_eq!(ls["runs"][0]["status"], "interrupted");
    let show = pipe().arg("show").arg(rec["id"].as_str().unwrap()).arg("--store").arg(&killed).output().unwrap();
    assert!(text(&show).contains("status    interrupted"), "{}", text(&show));
    let finished: Vec<&str> = rec["stages"].as_array().unwrap().iter().map(|s| s["stage"].as_str().unwrap()).collect();
    assert_eq!(finished, ["load", "train/0", "evaluate/0", "synthesize/1"]);

    let resumed = run(&file, &killed, &[]);
    let text = String::from_utf8_lossy(&resumed.stdout).to_string();
    let lines = stage_lines(&resumed);
    for (i, stage) in finished.iter().enumerate() {
        assert_eq!(lines[i], ("cached".to_string(), stage.to_string()), "{text}");
    }
    let train1 = text.lines().find(|l| l.contains("train/1")).unwrap();
    assert!(train1.starts_with("ran") && train1.contains("resumed from epoch"), "{text}");
    assert!(!partial.exists(), "the partial checkpoint is removed on commit");

    let clean = dir.path().join("clean");
    run(&file, &clean, &[]);
    assert_eq!(output_digests(&killed), output_digests(&clean));
}

/// Runs `pipe run` on a broken file; it must exit 2, say where and what, and write nothing.
fn rejected(dir: &Path, text: &str, expect: &[&str]) {
    let file = dir.join("broken.toml");
    std::fs::write(&file, text).unwrap();
    let store = dir.join("never-made");
    let out = pipe().arg("run").arg(&file).arg("--store").arg(&store).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("broken.toml"), "the message names the file: {err}");
    for e in expect {
        assert!(err.contains(e), "expected `{e}` in: {err}");
    }
    assert!(!store.exists(), "the store must be left untouched");
}

#[test]
fn malformed_pipeline_files_fail_before_any_work_with_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let good = std::fs::read_to_string(tiny(dir.path(), 1, 300)).unwrap();
    rejected(dir.path(), &good.replace("rounds = 2", "rounds = "), &["line 4"]);
    rejected(dir.path(), &good.replace("lr = 0.05", "lrr = 0.05"), &["line 17", "unknown field `lrr`", "lr"]);
    rejected(dir.path(), &good.replace("rounds = 2", "rounds = \"two\""), &["line 4", "invalid type", "u32"]);
    rejected(dir.path(), &good.replace(&data_dir().display().to_string(), "/no/such/mnist"), &["broken.toml:8: data.path", "/no/such/mnist", "does not exist"]);
    rejected(dir.path(), &good.replace("width = 0.125", "width = -1.0"), &["broken.toml:14: net.width", "expected"]);

    // the same from the command line
    let file = dir.path().join("good.toml");
    std::fs::write(&file, &good).unwrap();
    for set in ["train.lrr=1", "train.lr=fast", "nosuchkey", "pipeline.device=tpu"] {
        let store = dir.path().join("never-made");
        let out = pipe().arg("run").arg(&file).arg("--store").arg(&store).args(["--set", set]).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "--set {set}: {err}");
        assert!(err.contains(&format!("--set {set}")), "the message names the override: {err}");
        assert!(!store.exists());
    }
}

#[test]
fn status_ls_and_show_describe_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let file = tiny(dir.path(), 1, 300);
    let store = dir.path().join("store");

    let st = pipe().arg("status").arg(&file).arg("--store").arg(&store).output().unwrap();
    let text = String::from_utf8_lossy(&st.stdout);
    assert!(st.status.success());
    assert!(text.contains("0 cached, 9 to run") && text.contains("(key after load)"), "{text}");
    assert!(!store.exists(), "status writes nothing");

    run(&file, &store, &[]);
    let st = pipe().arg("status").arg(&file).arg("--store").arg(&store).output().unwrap();
    assert!(String::from_utf8_lossy(&st.stdout).contains("9 cached, 0 to run"));

    let ls = pipe().arg("ls").arg("--store").arg(&store).output().unwrap();
    let ls = String::from_utf8_lossy(&ls.stdout).to_string();
    let id = last_record(&store)["id"].as_str().unwrap().to_string();
    assert!(ls.contains(&id) && ls.contains("tiny") && ls.contains(" ok "), "{ls}");

    let show = pipe().args(["show", &id[..12]]).arg("--store").arg(&store).output().unwrap();
    let show = String::from_utf8_lossy(&show.stdout).to_string();
    assert!(show.contains("synthesize/2") && show.contains("val err"), "{show}");

    let stage = pipe().args(["show", &format!("{id}:synthesize/1")]).arg("--store").arg(&store).output().unwrap();
    let stage = String::from_utf8_lossy(&stage.stdout).to_string();
    for want in ["pseudo_negatives.parquet", "stop_reason", "final_logit", "grid.png", "\"per_class\": 3"] {
        assert!(stage.contains(want), "missing {want} in {stage}");
    }

    // The pseudo-negative table has a row per sample; the grid is a PNG of 10 labelled rows x 3.
    let rec = last_record(&store);
    let syn = rec["stages"].as_array().unwrap().iter().find(|s| s["stage"] == "synthesize/1").unwrap().clone();
    let obj = |name: &str| {
        let d = syn["outputs"][name]["digest"].as_str().unwrap().to_string();
        std::fs::read(store.join("objects").join(&d[..2]).join(&d[2..])).unwrap()
    };
    let rows: usize = pipe::engine::table::read_parquet(obj("pseudo_negatives.parquet")).unwrap().iter().map(|b| b.num_rows()).sum();
    assert_eq!(rows, 30);
    let png = obj("grid.png");
    assert_eq!(&png[1..4], b"PNG");
    let width = u32::from_be_bytes(png[16..20].try_into().unwrap());
    let height = u32::from_be_bytes(png[20..24].try_into().unwrap());
    // the class label column (one digit: 5 font pixels of 2 px) and a pad, then the tiles
    assert_eq!((width, height), (5 * 2 + 2 + 3 * 28 + 2 * 2, 10 * 28 + 9 * 2));

    let missing = pipe().args(["show", "zzzz"]).arg("--store").arg(&store).output().unwrap();
    assert_eq!(missing.status.code(), Some(2));
}

#[test]
fn baseline_and_icn_noise_share_the_graph_and_the_lr_drops() {
    let dir = tempfile::tempdir().unwrap();
    let file = tiny(dir.path(), 1, 300);
    let store = dir.path().join("store");
    let base = run(&file, &store, &["pipeline.method=baseline", "train.lr_drop_round=2"]);
    let stages: Vec<String> = stage_lines(&base).into_iter().map(|(_, s)| s).collect();
    assert_eq!(stages, ["load", "train/0", "evaluate/0", "train/1", "evaluate/1", "train/2", "evaluate/2"]);
    let rec = last_record(&store);
    let log = |stage: &str| {
        let s = rec["stages"].as_array().unwrap().iter().find(|s| s["stage"] == stage).unwrap().clone();
        let d = s["outputs"]["train_log.parquet"]["digest"].as_str().unwrap().to_string();
        let batches = pipe::engine::table::read_parquet(std::fs::read(store.join("objects").join(&d[..2]).join(&d[2..])).unwrap()).unwrap();
        let lr = batches[0].column_by_name("lr").unwrap().as_any().downcast_ref::<arrow_array::Float64Array>().unwrap().value(0);
        (s["summary"]["pseudo_negatives"].as_u64().unwrap(), lr)
    };
    assert_eq!(log("train/1"), (0, 0.05));
    assert_eq!(log("train/2"), (0, 0.05 * 0.1));

    // ICN-noise: the same load and round 0 (cached), pseudo-negatives that are p0 noise.
    let noise = run(&file, &store, &["pipeline.method=icn-noise"]);
    let lines = stage_lines(&noise);
    assert_eq!(lines[..3].iter().map(|(s, _)| s.as_str()).collect::<Vec<_>>(), ["cached"; 3]);
    let rec = last_record(&store);
    let syn = rec["stages"].as_array().unwrap().iter().find(|s| s["stage"] == "synthesize/1").unwrap().clone();
    let d = syn["outputs"]["pseudo_negatives.parquet"]["digest"].as_str().unwrap().to_string();
    let t = pipe::engine::table::read_parquet(std::fs::read(store.join("objects").join(&d[..2]).join(&d[2..])).unwrap()).unwrap();
    let reasons = t[0].column_by_name("stop_reason").unwrap().as_any().downcast_ref::<arrow_array::StringArray>().unwrap().clone();
    assert_eq!(arrow_array::Array::len(&reasons), 30);
    assert!(reasons.iter().all(|r| r == Some("noise")));

    // Balanced batches with recency weighting change the reclassification stages only.
    let balanced = run(&file, &store, &["pipeline.method=icn-noise", "train.sampling=balanced"]);
    let ran: Vec<String> = ran(&balanced);
    assert_eq!(ran, ["train/1", "evaluate/1", "train/2", "evaluate/2"]);
}

#[test]
fn rounds_stop_on_validation_and_the_reported_round_is_chosen_on_validation() {
    let dir = tempfile::tempdir().unwrap();
    let file = tiny(dir.path(), 1, 300);
    let store = dir.path().join("store");
    // A learning rate this small leaves validation error where round 0 put it: round 1 is
    // no improvement, so patience 1 stops the run after evaluating round 1.
    let out = run(&file, &store, &["pipeline.rounds=4", "pipeline.patience=1", "train.lr=1e-7"]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let stages: Vec<String> = stage_lines(&out).into_iter().map(|(_, s)| s).collect();
    assert_eq!(stages.last().unwrap(), "evaluate/1", "{text}");
    assert!(text.contains("stopping: validation error has not improved for 1 round(s) since round 0"), "{text}");
    let rec = last_record(&store);
    assert_eq!(rec["status"], "ok");
    assert!(rec["stopped_early"].as_str().unwrap().contains("since round 0"));
    assert_eq!(rec["selected"]["round"], 0);
    let train0 = rec["stages"].as_array().unwrap().iter().find(|s| s["stage"] == "train/0").unwrap();
    assert_eq!(rec["selected"]["checkpoint"], train0["outputs"]["checkpoint.safetensors"]["digest"]);

    // Without patience every round runs, and the selection is the best validation round.
    let all = run(&file, &store, &["pipeline.rounds=2"]);
    assert_eq!(stage_lines(&all).len(), 9);
    let rec = last_record(&store);
    let vals: Vec<f64> = (0..=2)
        .map(|r| rec["stages"].as_array().unwrap().iter().find(|s| s["stage"] == format!("evaluate/{r}")).unwrap()["summary"]["validation_error"].as_f64().unwrap())
        .collect();
    let best = vals.iter().cloned().fold(f64::MAX, f64::min);
    let first_best = vals.iter().position(|v| *v == best).unwrap();
    assert_eq!(rec["selected"]["round"], first_best as u64);
    assert_eq!(rec["selected"]["validation_error"].as_f64().unwrap(), best);
}

/// `n` random 3 x 32 x 32 images with labels cycling over 0..10.
fn rgb_set(n: usize, seed: u64) -> stages::data::ImageSet {
    let mut r = stages::rng::Rng::new(seed);
    stages::data::ImageSet {
        pixels: (0..n * 3072).map(|_| r.below(256) as u8).collect(),
        labels: (0..n as u32).map(|i| i % 10).collect(),
        channels: 3,
        height: 32,
        width: 32,
    }
}

fn rgb_pipeline(dir: &Path, format: &str, data: &Path, arch: &str, width: f64) -> PathBuf {
    let text = format!(
        "[pipeline]\nrounds = 1\n[data]\nformat = \"{format}\"\npath = \"{}\"\nvalidation_size = 20\n[net]\narch = \"{arch}\"\nwidth = {width}\n[train]\nbatch_size = 16\nepochs = 1\nepochs_per_round = 1\n[synthesize]\nper_class = 2\nmax_steps = 5\n",
        data.display()
    );
    let file = dir.join(format!("{format}-{arch}.toml"));
    std::fs::write(&file, text).unwrap();
    file
}

#[test]
fn cifar10_and_svhn_files_feed_the_same_graph_with_cnn4_and_resnet32() {
    let dir = tempfile::tempdir().unwrap();
    let cifar = dir.path().join("cifar");
    std::fs::create_dir_all(&cifar).unwrap();
    for i in 1..=5 {
        stages::data::cifar::write_batch(&cifar.join(format!("data_batch_{i}.bin")), &rgb_set(20, i)).unwrap();
    }
    stages::data::cifar::write_batch(&cifar.join("test_batch.bin"), &rgb_set(30, 9)).unwrap();
    let svhn = dir.path().join("svhn");
    std::fs::create_dir_all(&svhn).unwrap();
    for (name, n, seed) in [("train_32x32.mat", 40, 1), ("extra_32x32.mat", 30, 2), ("test_32x32.mat", 25, 3)] {
        mat_writer::write_svhn_mat(&svhn.join(name), &rgb_set(n, seed), true, true).unwrap();
    }
    let store = dir.path().join("store");
    for (format, data, train, test) in [("cifar10", &cifar, 80, 30), ("svhn", &svhn, 50, 25)] {
        for (arch, width) in [("cnn4", 0.125), ("resnet32", 0.5)] {
            let out = run(&rgb_pipeline(dir.path(), format, data, arch, width), &store, &[]);
            let text = String::from_utf8_lossy(&out.stdout).to_string();
            assert_eq!(stage_lines(&out).len(), 6, "{text}");
            let load = text.lines().find(|l| l.contains(" load ")).unwrap();
            assert!(load.contains(&format!("train {train}  validation 20  test {test}")), "{format}: {load}");
            // the load record names SVHN's files by split, and keeps no channels the files fix
            let rec = last_record(&store);
            let key = rec["stages"][0]["key"].as_str().unwrap();
            let m: serde_json::Value = serde_json::from_slice(&std::fs::read(store.join("stages").join(format!("{key}.json"))).unwrap()).unwrap();
            let inputs: Vec<&String> = m["inputs"].as_object().unwrap().keys().collect();
            let expected: Vec<String> = if format == "svhn" { ["extra", "test", "train"].map(String::from).to_vec() } else { ["test.1", "train.1", "train.2", "train.3", "train.4", "train.5"].map(String::from).to_vec() };
            assert_eq!(inputs, expected.iter().collect::<Vec<_>>(), "{format}");
            assert!(m["params"].get("channels").is_none(), "{format}: {}", m["params"]);
        }
    }
    // normalization options: CNN4 with batch norm (IGM), ResNet-32 with layer norm (WINN)
    for (arch, norm) in [("cnn4", "batch"), ("resnet32", "layer")] {
        let out = run(&rgb_pipeline(dir.path(), "cifar10", &cifar, arch, 0.25), &store, &[&format!("net.norm={norm}")]);
        assert_eq!(ran(&out)[0], "train/0", "{arch} with {norm} norm is another net");
    }
    // augmentation changes training and what follows, not the data
    let aug = run(&rgb_pipeline(dir.path(), "cifar10", &cifar, "cnn4", 0.125), &store, &["train.augment=true"]);
    assert_eq!(ran(&aug), ["train/0", "evaluate/0", "synthesize/1", "train/1", "evaluate/1"]);
    // without extra, SVHN trains on train_32x32.mat alone
    let out = run(&rgb_pipeline(dir.path(), "svhn", &svhn, "cnn4", 0.125), &store, &["data.svhn_extra=false"]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(text.contains("train 20  validation 20  test 25"), "{text}");
    // a missing batch is a bad-input error naming it
    std::fs::remove_file(cifar.join("data_batch_3.bin")).unwrap();
    let bad = pipe().arg("run").arg(rgb_pipeline(dir.path(), "cifar10", &cifar, "cnn4", 0.125)).arg("--store").arg(&store).output().unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("data_batch_3.bin"));
}

#[test]
fn binary_and_one_vs_all_icn() {
    let dir = tempfile::tempdir().unwrap();
    let file = tiny(dir.path(), 1, 300);
    let store = dir.path().join("store");
    let out = run(&file, &store, &["pipeline.variant=binary", "pipeline.positive_class=3", "pipeline.rounds=1", "data.balanced=true", "train.epochs=6", "train.epochs_per_round=2"]);
    let stages: Vec<String> = stage_lines(&out).into_iter().map(|(_, s)| s).collect();
    assert_eq!(stages, ["load", "train/0", "evaluate/0", "synthesize/1", "train/1", "evaluate/1"]);
    let rec = last_record(&store);
    let load = rec["stages"].as_array().unwrap().iter().find(|s| s["stage"] == "load").unwrap().clone();
    assert_eq!(load["summary"]["train"]["class_counts"], serde_json::json!(vec![30; 10]), "balanced: 300 = 30 per class");
    let syn = rec["stages"].as_array().unwrap().iter().find(|s| s["stage"] == "synthesize/1").unwrap().clone();
    let d = syn["outputs"]["pseudo_negatives.parquet"]["digest"].as_str().unwrap().to_string();
    let t = pipe::engine::table::read_parquet(std::fs::read(store.join("objects").join(&d[..2]).join(&d[2..])).unwrap()).unwrap();
    let classes = t[0].column_by_name("class").unwrap().as_any().downcast_ref::<arrow_array::UInt32Array>().unwrap().clone();
    assert_eq!(arrow_array::Array::len(&classes), 3, "per_class samples of the positive class only");
    assert!(classes.iter().all(|c| c == Some(3)));
    let errors = |rec: &serde_json::Value| rec["stages"].as_array().unwrap().iter().filter(|s| s["kind"] == "evaluate").map(|s| s["summary"]["test_error"].as_f64().unwrap()).collect::<Vec<_>>();
    // one class against nine: the net must beat calling everything "not a 3", whose error
    // is the share of 3s in the test set (about 0.1)
    let threes = load["summary"]["test"]["class_counts"][3].as_f64().unwrap() / load["summary"]["test"]["count"].as_f64().unwrap();
    assert!(errors(&rec).iter().all(|e| *e < threes), "{:?} against {threes} for the all-negative answer", errors(&rec));

    let ova = run(&file, &store, &["pipeline.variant=one-vs-all", "pipeline.rounds=1"]);
    let stages: Vec<String> = stage_lines(&ova).into_iter().map(|(_, s)| s).collect();
    assert_eq!(stages.len(), 1 + 10 + 1 + 20 + 1, "{stages:?}");
    assert!(stages.contains(&"train/0/c9".to_string()) && stages.contains(&"synthesize/1/c0".to_string()));
    assert_eq!(stages.last().unwrap(), "evaluate/1");
    let rec = last_record(&store);
    let eval = rec["stages"].as_array().unwrap().iter().find(|s| s["stage"] == "evaluate/1").unwrap().clone();
    let key = eval["key"].as_str().unwrap();
    let manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(store.join("stages").join(format!("{key}.json"))).unwrap()).unwrap();
    let inputs = manifest["inputs"].as_object().unwrap();
    assert_eq!(inputs.keys().filter(|k| k.starts_with("checkpoint.c")).count(), 10);
    // chance is 0.9 and the most frequent class alone errs about as often: well below both
    assert!(errors(&rec).iter().all(|e| *e < 0.6), "one-vs-all learned the digits: {:?}", errors(&rec));
    let selected = rec["selected"]["round"].as_u64().unwrap();
    assert_eq!(rec["selected"]["checkpoints"].as_array().unwrap().len(), 10, "one checkpoint per class net");
    assert!(rec["selected"]["test_error"].as_f64().unwrap() == errors(&rec)[selected as usize]);
}

#[test]
fn binary_icn_on_an_image_folder_of_faces() {
    let faces = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/faces-lfw-subset");
    if !faces.is_dir() {
        // CI has shared/ beside the clone: there a missing folder is a failure, not a skip
        assert!(std::env::var("CI").as_deref() != Ok("true"), "{} is missing, and CI=true needs it", faces.display());
        eprintln!("skipped: {} not found", faces.display());
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("faces.toml");
    std::fs::write(
        &file,
        format!(
            "[pipeline]\nrounds = 2\nvariant = \"binary\"\npositive_class = 0\n[data]\nformat = \"folder\"\npath = \"{}\"\nvalidation_size = 30\ntest_size = 40\n[net]\nwidth = 0.25\n[train]\nbatch_size = 16\nepochs = 8\nepochs_per_round = 2\n[synthesize]\nper_class = 20\nmax_steps = 50\n",
            faces.display()
        ),
    )
    .unwrap();
    let store = dir.path().join("store");
    let out = run(&file, &store, &[]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(text.contains("train 130  validation 30  test 40"), "{text}");
    let rec = last_record(&store);
    let load = rec["stages"].as_array().unwrap().iter().find(|s| s["stage"] == "load").unwrap().clone();
    assert_eq!(load["summary"]["classes"], serde_json::json!(["face", "nonface"]));
    let test_err = rec["selected"]["test_error"].as_f64().unwrap();
    assert!(test_err < 0.3, "faces against non-faces are separable: {text}");
    // a folder without class sub-folders is refused before any work
    let empty = dir.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let bad = pipe().arg("run").arg(&file).arg("--store").arg(dir.path().join("never")).args(["--set", &format!("data.path={}", empty.display())]).output().unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("no class sub-folder"));
    assert!(!dir.path().join("never").exists());
}

#[test]
fn a_sweep_runs_its_matrix_shares_common_stages_and_writes_one_table() {
    let dir = tempfile::tempdir().unwrap();
    let base = std::fs::read_to_string(tiny(dir.path(), 1, 300)).unwrap();
    let file = dir.path().join("sweep.toml");
    std::fs::write(
        &file,
        base.replace("name = \"tiny\"", "name = \"tinysweep\"")
            + "\n[sweep]\n\"pipeline.seed\" = [7, 8]\ncases = [\n  { name = \"baseline\", \"pipeline.method\" = \"baseline\" },\n  { name = \"noise\", \"pipeline.method\" = \"icn-noise\" },\n]\n",
    )
    .unwrap();
    let store = dir.path().join("store");
    let st = pipe().arg("status").arg(&file).arg("--store").arg(&store).output().unwrap();
    let text = String::from_utf8_lossy(&st.stdout).to_string();
    assert!(text.contains("sweep of 4 pipelines: 0 of 32 stages cached"), "{text}");

    let out = run(&file, &store, &[]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(text.matches("== sweep member").count(), 4, "{text}");
    // the noise member of seed 7 reuses load, train/0 and evaluate/0 of the baseline member
    let member3 = text.split("== sweep member 3/4: noise pipeline.seed=7").nth(1).unwrap();
    let first3: Vec<&str> = member3.lines().skip(2).take(3).map(|l| l.split_whitespace().next().unwrap()).collect();
    assert_eq!(first3, ["cached", "cached", "cached"], "{member3}");
    assert!(text.contains("test error of the round selected on validation"), "{text}");
    let table = store.join("sweeps/tinysweep.parquet");
    let batches = pipe::engine::table::read_parquet(std::fs::read(&table).unwrap()).unwrap();
    let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
    assert_eq!(rows, 4 * 3, "a row per member and evaluated round");
    for col in ["member", "case", "seed", "pipeline.seed", "run", "round", "validation_error", "test_error", "selected"] {
        assert!(batches[0].column_by_name(col).is_some(), "no column {col}");
    }
    let st = pipe().arg("status").arg(&file).arg("--store").arg(&store).output().unwrap();
    let text = String::from_utf8_lossy(&st.stdout).to_string();
    assert!(text.contains("32 of 32 stages cached"), "{text}");
    // per seed the noise member shares load, train/0 and evaluate/0 with the baseline one
    // (7 + 9 - 3 stages), and both seeds share load
    assert!(text.contains("25 distinct stage keys (shared ones once), 25 cached"), "{text}");
}

#[test]
fn data_inspect_describes_real_formats_and_refuses_others() {
    let out = pipe().args(["data", "inspect", "--json"]).arg(data_dir()).output().unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["format"], "mnist (IDX)");
    assert_eq!(v["splits"][0]["count"], 5000);
    assert_eq!(v["splits"][1]["count"], 1000);
    assert_eq!(v["splits"][0]["shape"], serde_json::json!([1, 28, 28]));
    let counts: u64 = v["splits"][1]["class_counts"].as_array().unwrap().iter().map(|c| c.as_u64().unwrap()).sum();
    assert_eq!(counts, 1000);

    let dir = tempfile::tempdir().unwrap();
    for i in 1..=5 {
        stages::data::cifar::write_batch(&dir.path().join(format!("data_batch_{i}.bin")), &rgb_set(3, i)).unwrap();
    }
    stages::data::cifar::write_batch(&dir.path().join("test_batch.bin"), &rgb_set(4, 6)).unwrap();
    let out = pipe().args(["data", "inspect"]).arg(dir.path()).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(text.contains("cifar10") && text.contains("15 images  3x32x32") && text.contains("4 images"), "{text}");

    std::fs::write(dir.path().join("junk.png"), b"not a png").unwrap();
    let bad = pipe().args(["data", "inspect"]).arg(dir.path().join("junk.png")).output().unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("junk.png"));
}

/// Writes a Hugging Face style shard: `image` {bytes, path} structs of PNGs and `label`.
fn write_hf_shard(path: &Path, set: &stages::data::ImageSet) {
    use arrow_array::{ArrayRef, BinaryArray, Int64Array, RecordBatch, StringArray, StructArray};
    use arrow_schema::{DataType, Field, Fields, Schema};
    use std::sync::Arc;
    let unit: Vec<f32> = set.to_unit_range();
    let d = set.image_len();
    let pngs: Vec<Vec<u8>> = (0..set.len()).map(|i| stages::grid::encode_grid_png(&unit[i * d..(i + 1) * d], 1, 1, set.height, set.width, 1, 0).unwrap()).collect();
    let fields = Fields::from(vec![Field::new("bytes", DataType::Binary, true), Field::new("path", DataType::Utf8, true)]);
    let image: ArrayRef = Arc::new(StructArray::new(
        fields.clone(),
        vec![Arc::new(BinaryArray::from_iter_values(pngs.iter())) as ArrayRef, Arc::new(StringArray::from(vec![None::<&str>; set.len()])) as ArrayRef],
        None,
    ));
    let labels: ArrayRef = Arc::new(Int64Array::from(set.labels.iter().map(|&l| l as i64).collect::<Vec<_>>()));
    let schema = Arc::new(Schema::new(vec![Field::new("image", DataType::Struct(fields), true), Field::new("label", DataType::Int64, true)]));
    let batch = RecordBatch::try_new(schema.clone(), vec![image, labels]).unwrap();
    let mut w = parquet::arrow::ArrowWriter::try_new(std::fs::File::create(path).unwrap(), schema, None).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
}

#[test]
fn parquet_image_shards_feed_a_pipeline() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("hf/data");
    std::fs::create_dir_all(&data).unwrap();
    let train = stages::data::mnist::load_split(&data_dir(), stages::data::mnist::Split::Train).unwrap();
    let test = stages::data::mnist::load_split(&data_dir(), stages::data::mnist::Split::Test).unwrap();
    write_hf_shard(&data.join("train-00000-of-00002.parquet"), &train.select(&(0..250).collect::<Vec<_>>()));
    write_hf_shard(&data.join("train-00001-of-00002.parquet"), &train.select(&(250..500).collect::<Vec<_>>()));
    write_hf_shard(&data.join("test-00000-of-00001.parquet"), &test.select(&(0..200).collect::<Vec<_>>()));
    let hf = dir.path().join("hf");
    let inspect = pipe().args(["data", "inspect"]).arg(&hf).output().unwrap();
    let text = String::from_utf8_lossy(&inspect.stdout).to_string();
    assert!(text.contains("parquet") && text.contains("500 images  1x28x28"), "{text}");

    let file = tiny(dir.path(), 1, 300);
    let store = dir.path().join("store");
    let out = run(&file, &store, &["data.format=parquet", &format!("data.path={}", hf.display()), "pipeline.rounds=1"]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(text.contains("train 300  validation 100  test 200"), "{text}");
    // a net trained on the decoded digits beats chance by far
    let rec = last_record(&store);
    assert!(rec["selected"]["test_error"].as_f64().unwrap() < 0.6, "{text}");
}

#[test]
fn lineage_out_writes_parquet_and_bench_refuses_unknown_workloads() {
    let dir = tempfile::tempdir().unwrap();
    let file = small(dir.path(), 1);
    let store = dir.path().join("s");
    run(&file, &store, &[]);
    let id = last_record(&store)["id"].as_str().unwrap().to_string();
    let out_file = dir.path().join("l.parquet");
    let out = pipe().args(["lineage", &format!("{id}:train/1"), "--out"]).arg(&out_file).arg("--store").arg(&store).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(&std::fs::read(&out_file).unwrap()[..4], b"PAR1", "--out alone writes Parquet");
    let json_out = pipe().args(["lineage", &format!("{id}:train/1"), "--json", "--out"]).arg(dir.path().join("x")).arg("--store").arg(&store).output().unwrap();
    assert_eq!(json_out.status.code(), Some(2), "{}", text(&json_out));

    let bench = pipe().args(["bench", "--no-torch", "--only", "cnn4_fgsm,bogus", "--out"]).arg(dir.path().join("b.parquet")).output().unwrap();
    assert_eq!(bench.status.code(), Some(2), "{}", text(&bench));
    let err = String::from_utf8_lossy(&bench.stderr);
    assert!(err.contains("--only bogus") && err.contains("cnn4_train_pn_lineage") && err.contains("resnet32_train"), "{err}");
    assert!(!dir.path().join("b.parquet").exists());
}

/// `synthesize.reference = "appendix-d"`: ICN-noise's pseudo-negatives are the Appendix D
/// net's images (each spans exactly [-1, 1], unlike clipped N(0, 0.3^2) noise), synthesis
/// starts from them too, and only synthesis and what follows it rerun.
#[test]
fn the_appendix_d_reference_distribution_feeds_noise_and_synthesis() {
    let dir = tempfile::tempdir().unwrap();
    let file = small(dir.path(), 1);
    let store = dir.path().join("store");
    let spans = |store: &Path| -> Vec<(f32, f32)> {
        let d = output_digests(store).into_iter().find(|(s, n, _)| s == "synthesize/1" && n == "pseudo_negatives.safetensors").unwrap().2;
        let pn = stages::codec::decode_pseudo_negatives(&std::fs::read(object(store, &d)).unwrap()).unwrap();
        pn.images.chunks(28 * 28).map(|x| (x.iter().cloned().fold(f32::MAX, f32::min), x.iter().cloned().fold(f32::MIN, f32::max))).collect()
    };
    run(&file, &store, &["pipeline.method=icn-noise"]);
    assert!(spans(&store).iter().any(|&(lo, hi)| lo > -1.0 || hi < 1.0), "clipped Gaussian noise rarely spans [-1, 1]");
    let out = run(&file, &store, &["pipeline.method=icn-noise", "synthesize.reference=appendix-d"]);
    assert_eq!(ran(&out), ["synthesize/1", "train/1", "evaluate/1"]);
    let s = spans(&store);
    assert_eq!(s.len(), 30);
    assert!(s.iter().all(|&(lo, hi)| lo == -1.0 && hi == 1.0), "{s:?}");
    let out = run(&file, &store, &["synthesize.reference=appendix-d"]);
    assert_eq!(ran(&out), ["synthesize/1", "train/1", "evaluate/1"]);
}
