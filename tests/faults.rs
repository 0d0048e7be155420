//! The fault suite: what must never be committed, and what must never be trusted, when a
//! run diverges, a byte of the store rots, a repair is killed half-way, the disk fills up,
//! or the input is malformed. Each test drives the real binary; faults that need an exact
//! instant (a kill between two steps, a full disk) come from `PIPE_FAULT_*` hooks.

use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Output;

mod common;
use common::{canonical, data_dir, files_under, last_record, object, output_digests, pipe, run, small, text};

fn run_with(file: &Path, store: &Path, sets: &[&str], env: &[(&str, String)]) -> Output {
    let mut c = pipe();
    c.arg("run").arg(file).arg("--store").arg(store);
    for s in sets {
        c.arg("--set").arg(s);
    }
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}

fn cmd(store: &Path, args: &[&str], env: &[(&str, String)]) -> Output {
    let mut c = pipe();
    c.args(args).arg("--store").arg(store);
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}

fn verify_json(store: &Path) -> Value {
    serde_json::from_slice(&cmd(store, &["verify", "--json"], &[]).stdout).unwrap()
}

/// Every file under `dir` with a digest of its bytes: "untouched" means this is equal.
fn tree(dir: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    if !dir.exists() {
        return out;
    }
    for e in files_under(dir) {
        out.insert(e.strip_prefix(dir).unwrap().to_path_buf(), blake3::hash(&std::fs::read(&e).unwrap()).to_hex().to_string());
    }
    out
}


fn copy_dir(from: &Path, to: &Path) {
    for f in files_under(from) {
        let dest = to.join(f.strip_prefix(from).unwrap());
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        std::fs::copy(&f, dest).unwrap();
    }
}


fn output_of(store: &Path, stage: &str, name: &str) -> String {
    output_digests(store).into_iter().find(|(s, n, _)| s == stage && n == name).unwrap_or_else(|| panic!("no {stage} {name}")).2
}

/// The key of `stage` in a run record.
fn stage_key(record: &Value, stage: &str) -> String {
    record["stages"].as_array().unwrap().iter().find(|s| s["stage"] == stage).unwrap()["key"].as_str().unwrap().to_string()
}

fn flip_middle_byte(path: &Path) {
    let mut bytes = std::fs::read(path).unwrap();
    let i = bytes.len() / 2;
    bytes[i] ^= 0x10;
    std::fs::write(path, bytes).unwrap();
}

/// A clean run of the small pipeline: its store and its output digests.
fn clean(dir: &Path, file: &Path) -> (PathBuf, Vec<(String, String, String)>) {
    let store = dir.join("clean");
    run(file, &store, &[]);
    let digests = output_digests(&store);
    (store, digests)
}

#[test]
fn a_diverging_run_commits_nothing_and_rollback_ends_with_a_recorded_lr_change() {
    let dir = tempfile::tempdir().unwrap();
    let file = small(dir.path(), 1);
    let store = dir.path().join("store");
    let out = run_with(&file, &store, &["train.lr=1e30"], &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    for want in ["stage train/0 failed", "diverged in round 0, epoch 1 of 1", "at batch", "nothing of the stage is committed", "train.lr", "rollback"] {
        assert!(err.contains(want), "missing `{want}` in {err}");
    }
    // only the load stage is committed; the record says failed, with the cause
    assert_eq!(std::fs::read_dir(store.join("stages")).unwrap().count(), 1);
    let rec = last_record(&store);
    assert_eq!(rec["status"], "failed");
    assert!(rec["error"].as_str().unwrap().contains("diverged"));
    assert!(verify_json(&store)["intact"].as_bool().unwrap());

    // rollback: the epoch restarts from its start at lr x factor until it stays finite
    let out = run_with(&file, &store, &["train.lr=1000", "train.on_divergence=rollback", "train.rollback_lr_factor=0.0001"], &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("rolling back to the start of the epoch with learning rate 0.1"), "{}", text(&out));
    let rec = last_record(&store);
    assert_eq!(rec["status"], "ok");
    let train0 = rec["stages"].as_array().unwrap().iter().find(|s| s["stage"] == "train/0").unwrap();
    let rollbacks = train0["summary"]["rollbacks"].as_array().expect("rollbacks recorded in the run record");
    assert_eq!((rollbacks[0]["lr_from"].as_f64(), rollbacks[0]["lr_to"].as_f64()), (Some(1000.0), Some(0.1)));
    assert!(rollbacks[0]["cause"].as_str().unwrap().contains("at batch"));
    assert!(train0["summary"]["final_loss"].as_f64().is_some_and(f64::is_finite));
    // the manifest holds the same record, and the log's lr column the lowered rate
    let key = train0["key"].as_str().unwrap();
    let shown: Value = serde_json::from_slice(&cmd(&store, &["show", key, "--json"], &[]).stdout).unwrap();
    assert_eq!(shown["summary"]["rollbacks"], train0["summary"]["rollbacks"]);
    let last_lr = shown["tables"]["train_log.parquet"]["head"].as_array().unwrap().last().unwrap()["lr"].as_f64().unwrap();
    assert_eq!(last_lr, rollbacks.last().unwrap()["lr_to"].as_f64().unwrap());
    // the policy is in the key: the default run is not reused for it, nor it for the default
    assert!(rec["stages"].as_array().unwrap().iter().all(|s| s["stage"] == "load" || s["status"] == "ran"));
}

#[test]
fn a_damaged_resumption_checkpoint_is_discarded_and_the_stage_starts_over() {
    let dir = tempfile::tempdir().unwrap();
    let file = small(dir.path(), 1);
    let sets = ["train.epochs=3"];
    let clean_store = dir.path().join("clean");
    run(&file, &clean_store, &sets);
    let expected = output_digests(&clean_store);

    for damage in ["flip", "truncate"] {
        let store = dir.path().join(damage);
        // killed right after train/0 saved the checkpoint of its first epoch
        let out = run_with(&file, &store, &sets, &[("PIPE_FAULT_KILL", "partial:1".into())]);
        assert_eq!(out.status.code(), None, "killed by a signal: {}", text(&out));
        let partials = files_under(&store.join("partial"));
        assert_eq!(partials.len(), 1, "{partials:?}");
        match damage {
            "flip" => flip_middle_byte(&partials[0]),
            _ => {
                let b = std::fs::read(&partials[0]).unwrap();
                std::fs::write(&partials[0], &b[..b.len() / 3]).unwrap();
            }
        }
        let out = run_with(&file, &store, &sets, &[]);
        assert!(out.status.success(), "{damage}: {}", text(&out));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("is damaged") && err.contains("starts over"), "{damage}: {err}");
        assert!(!String::from_utf8_lossy(&out.stdout).contains("resumed from"), "{damage}: a damaged checkpoint is not resumed from");
        assert_eq!(output_digests(&store), expected, "{damage}: the restarted stage makes the clean run's bytes");
    }
    // an intact checkpoint is still resumed from, to the same bytes
    let store = dir.path().join("intact");
    run_with(&file, &store, &sets, &[("PIPE_FAULT_KILL", "partial:2".into())]);
    let out = run_with(&file, &store, &sets, &[]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("resumed from epoch 2"), "{}", text(&out));
    assert_eq!(output_digests(&store), expected);
}

#[test]
fn edited_manifests_and_run_records_are_found_and_a_damaged_manifest_is_recomputed() {
    let dir = tempfile::tempdir().unwrap();
    let file = small(dir.path(), 1);
    let (store, expected) = clean(dir.path(), &file);
    let rec = last_record(&store);
    let key_of = |stage: &str| stage_key(&rec, stage);
    let manifest = |stage: &str| store.join("stages").join(format!("{}.json", key_of(stage)));

    // a metric edited by hand (the test_error 0.048 -> 0.018)
    let eval = manifest("evaluate/1");
    let text_of = std::fs::read_to_string(&eval).unwrap();
    let m: Value = serde_json::from_str(&text_of).unwrap();
    let real = m["summary"]["test_error"].as_f64().unwrap();
    let edited = text_of.replacen(&format!("\"test_error\": {real}"), "\"test_error\": 0.001", 1);
    assert_ne!(edited, text_of);
    std::fs::write(&eval, edited).unwrap();
    // params edited (batch 32 -> 33) in a manifest whose seal was recomputed to match:
    // the key no longer follows from what it records
    let train = manifest("train/1");
    let mut m: Value = serde_json::from_slice(&std::fs::read(&train).unwrap()).unwrap();
    m["params"]["batch_size"] = 33.into();
    let obj = m.as_object_mut().unwrap();
    obj.remove("seal");
    let seal = blake3::hash(canonical(&Value::Object(obj.clone())).as_bytes()).to_hex().to_string();
    obj.insert("seal".into(), seal.into());
    std::fs::write(&train, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
    // a run record cut short
    let run_path = files_under(&store.join("runs")).pop().unwrap();
    let b = std::fs::read(&run_path).unwrap();
    std::fs::write(&run_path, &b[..b.len() / 2]).unwrap();

    let v = verify_json(&store);
    assert_eq!(v["intact"], false);
    let bad: Vec<&str> = v["bad_manifests"].as_array().unwrap().iter().map(|b| b["name"].as_str().unwrap()).collect();
    assert!(bad.contains(&key_of("evaluate/1").as_str()) && bad.contains(&key_of("train/1").as_str()) && bad.len() == 2, "{v}");
    let errors = v["bad_manifests"].to_string();
    assert!(errors.contains("not to its seal") && errors.contains("make the key"), "{errors}");
    assert_eq!(v["bad_runs"].as_array().unwrap().len(), 1);

    // ls lists the damaged record instead of failing
    let ls = cmd(&store, &["ls"], &[]);
    assert!(ls.status.success() && text(&ls).contains("damaged"), "{}", text(&ls));
    // run recomputes the two damaged stages (and what follows from them) and reports the
    // real metric, not the edited one
    let out = run_with(&file, &store, &[], &[]);
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("ran     train/1") && stdout.contains("ran     evaluate/1"), "{stdout}");
    assert_eq!(last_record(&store)["stages"][5]["summary"]["test_error"].as_f64(), Some(real));
    assert_eq!(output_digests(&store), expected);
    // repair removes the damaged record; then everything is intact
    let repaired = cmd(&store, &["verify", "--repair"], &[]);
    assert!(repaired.status.success(), "{}", text(&repaired));
    assert!(verify_json(&store)["intact"].as_bool().unwrap());
}


#[test]
fn a_repair_killed_between_any_two_steps_never_leads_to_a_bad_commit() {
    let dir = tempfile::tempdir().unwrap();
    let file = small(dir.path(), 1);
    let (store, expected) = clean(dir.path(), &file);
    // damage: two corrupt objects, an edited manifest, a truncated run record
    let rec = last_record(&store);
    let key_of = |stage: &str| stage_key(&rec, stage);
    let damaged_keys = [key_of("train/0"), key_of("evaluate/0"), key_of("evaluate/1")];
    flip_middle_byte(&object(&store, &output_of(&store, "train/0", "checkpoint.safetensors")));
    flip_middle_byte(&object(&store, &output_of(&store, "evaluate/0", "metrics.parquet")));
    let eval1 = store.join("stages").join(format!("{}.json", key_of("evaluate/1")));
    std::fs::write(&eval1, std::fs::read_to_string(&eval1).unwrap().replacen("\"seconds\"", "\"seconds\": 0, \"x\"", 1)).unwrap();
    let run_path = files_under(&store.join("runs")).pop().unwrap();
    std::fs::write(&run_path, b"{\"id\": ").unwrap();
    let damaged = dir.path().join("damaged");
    copy_dir(&store, &damaged);

    // steps: 1 run record, 3 manifests, 2 objects; a kill before each, then none
    for k in 1..=7 {
        let s = dir.path().join(format!("kill{k}"));
        copy_dir(&damaged, &s);
        let out = cmd(&s, &["verify", "--repair"], &[("PIPE_FAULT_KILL", format!("repair:{k}"))]);
        assert_eq!(out.status.code().is_none(), k <= 6, "kill {k}: {}", text(&out));
        // straight to a run: nothing it commits may name a damaged object
        let after = run_with(&file, &s, &[], &[]);
        let v = verify_json(&s);
        for o in v["corrupt"].as_array().unwrap().iter().chain(v["missing"].as_array().unwrap()) {
            for r in o["referenced_by"].as_array().unwrap() {
                assert!(damaged_keys.contains(&r["key"].as_str().unwrap().to_string()), "kill {k}: a new commit names a damaged object: {o}\n{}", text(&after));
            }
        }
        // finishing the repair and running again restores the clean store
        assert!(cmd(&s, &["verify", "--repair"], &[]).status.success(), "kill {k}");
        let out = run_with(&file, &s, &[], &[]);
        assert!(out.status.success(), "kill {k}: {}", text(&out));
        assert!(verify_json(&s)["intact"].as_bool().unwrap(), "kill {k}");
        assert_eq!(output_digests(&s), expected, "kill {k}");
    }
}

#[test]
fn a_full_disk_names_the_stage_and_file_leaves_no_debris_and_the_retry_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    let file = small(dir.path(), 1);
    let (_, expected) = clean(dir.path(), &file);
    // room for the load stage's outputs and little more: the disk fills up in train/0
    let clean_store = dir.path().join("clean");
    let load_bytes: u64 = output_digests(&clean_store).iter().filter(|(s, _, _)| s == "load").map(|(_, _, d)| std::fs::metadata(object(&clean_store, d)).unwrap().len()).sum();
    let store = dir.path().join("full");
    let out = run_with(&file, &store, &[], &[("PIPE_FAULT_DISK_BYTES", (load_bytes + 40_000).to_string())]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("stage train/0 failed") && err.contains("No space left on device") && err.contains("checkpoint.safetensors"), "{err}");
    assert_eq!(std::fs::read_dir(store.join("tmp")).unwrap().count(), 0, "no temp debris");
    // the record could not be written either: the next command shows the run interrupted
    let ls = cmd(&store, &["ls"], &[]);
    assert!(text(&ls).contains("interrupted") || text(&ls).contains("failed"), "{}", text(&ls));
    let out = run_with(&file, &store, &[], &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(output_digests(&store), expected);
    assert!(verify_json(&store)["intact"].as_bool().unwrap());
}

/// IDX files of the shipped subset with the images reshaped or cut.
fn idx_variant(dir: &Path, name: &str, edit: &dyn Fn(&Path)) -> PathBuf {
    use stages::data::mnist::{load_split, write_idx_images, write_idx_labels, Split};
    let out = dir.join(name);
    std::fs::create_dir_all(&out).unwrap();
    for (split, s) in [("train", Split::Train), ("t10k", Split::Test)] {
        let set = load_split(&data_dir(), s).unwrap();
        write_idx_images(&out.join(format!("{split}-images-idx3-ubyte")), &set, false).unwrap();
        write_idx_labels(&out.join(format!("{split}-labels-idx1-ubyte")), &set.labels, false).unwrap();
    }
    edit(&out);
    out
}

#[test]
fn malformed_pipelines_and_data_exit_2_with_a_reason_and_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let file = small(dir.path(), 1);
    let good = std::fs::read_to_string(&file).unwrap();
    let cut = dir.path().join("cut.toml");
    std::fs::write(&cut, good.split("[net]").next().unwrap()).unwrap();
    let long_name = dir.path().join("long.toml");
    std::fs::write(&long_name, good.replace("name = \"tiny\"", &format!("name = \"{}\"", "x".repeat(5000)))).unwrap();

    let reshaped = idx_variant(dir.path(), "reshaped", &|d| {
        // the same bytes under a header that claims 14x56 images
        let p = d.join("train-images-idx3-ubyte");
        let mut b = std::fs::read(&p).unwrap();
        b[8..12].copy_from_slice(&14u32.to_be_bytes());
        b[12..16].copy_from_slice(&56u32.to_be_bytes());
        std::fs::write(p, b).unwrap();
    });
    let bigger_test = idx_variant(dir.path(), "bigger-test", &|d| {
        let p = d.join("t10k-images-idx3-ubyte");
        let b = std::fs::read(&p).unwrap();
        let n = u32::from_be_bytes(b[4..8].try_into().unwrap()) as usize;
        let mut out = b[..16].to_vec();
        out[8..12].copy_from_slice(&32u32.to_be_bytes());
        out[12..16].copy_from_slice(&32u32.to_be_bytes());
        out.extend(std::iter::repeat_n(0u8, n * 32 * 32));
        std::fs::write(p, out).unwrap();
    });
    let truncated = idx_variant(dir.path(), "truncated", &|d| {
        let p = d.join("train-images-idx3-ubyte");
        let b = std::fs::read(&p).unwrap();
        std::fs::write(p, &b[..b.len() / 2]).unwrap();
    });
    let data = |d: &Path| format!("data.path={}", d.display());

    // (pipeline file, overrides, what the message says, whether `pipe status` refuses too)
    let cases: Vec<(&Path, Vec<String>, &str, bool)> = vec![
        (&file, vec!["pipeline.rounds=1000000000".into()], "at most 200 rounds", true),
        (&file, vec!["synthesize.per_class=100000000".into()], "pseudo-negatives per class", true),
        (&file, vec!["synthesize.per_class=1000000".into(), "pipeline.rounds=200".into()], "GiB", true),
        (&file, vec!["synthesize.init_std=inf".into()], "synthesize.init_std=inf: expected a finite number", true),
        (&file, vec!["train.lr=nan".into()], "expected a finite number", true),
        (&file, vec!["net.width=1e-9".into()], "channel multiplier", true),
        (&file, vec!["train.batch_size=0".into()], "train.batch_size", true),
        (&long_name, vec![], "pipeline.name: expected 1 to 100", true),
        (&cut, vec![], "no [net] section", true),
        (&file, vec!["data.train_size=999999".into()], "exceeds the 5000 examples", true),
        (&file, vec!["data.test_size=999999".into()], "exceeds the 1000 examples", true),
        (&file, vec![data(&reshaped)], "14x56", true),
        (&file, vec![data(&bigger_test)], "32x32", true),
        (&file, vec![data(&truncated)], "truncated", false),
        (&file, vec!["data.path=/nonexistent".into()], "does not exist", true),
    ];
    // an existing store must come out byte-identical; a new one must not appear
    let (existing, _) = clean(dir.path(), &file);
    let before = tree(&existing);
    for (i, (f, sets, want, status_refuses)) in cases.iter().enumerate() {
        let sets: Vec<&str> = sets.iter().map(String::as_str).collect();
        let fresh = dir.path().join(format!("fresh{i}"));
        for store in [&fresh, &existing] {
            let out = run_with(f, store, &sets, &[]);
            assert_eq!(out.status.code(), Some(2), "case {i} {sets:?}: {}", text(&out));
            assert!(String::from_utf8_lossy(&out.stderr).contains(want), "case {i} {sets:?}: want `{want}` in {}", text(&out));
        }
        assert!(!fresh.exists(), "case {i} {sets:?}: a refused run created {}", fresh.display());
        assert_eq!(tree(&existing), before, "case {i} {sets:?}: a refused run changed the store");
        let mut status = pipe();
        status.arg("status").arg(f).arg("--store").arg(&fresh);
        for s in &sets {
            status.arg("--set").arg(s);
        }
        let out = status.output().unwrap();
        assert_eq!(out.status.code() == Some(2), *status_refuses, "case {i} {sets:?}: status {}", text(&out));
    }

    // a --store that is a file; a busy store is exit 1 for run and gc alike (nothing the
    // user typed is wrong)
    let not_dir = dir.path().join("a-file");
    std::fs::write(&not_dir, b"x").unwrap();
    let out = run_with(&file, &not_dir, &[], &[]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert_eq!(std::fs::read(&not_dir).unwrap(), b"x");
    let lock = std::fs::File::options().write(true).open(existing.join("lock")).unwrap();
    use std::os::unix::io::AsRawFd;
    // SAFETY: flock on a descriptor this test owns.
    assert_eq!(unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) }, 0);
    assert_eq!(run_with(&file, &existing, &[], &[]).status.code(), Some(1));
    assert_eq!(cmd(&existing, &["gc"], &[]).status.code(), Some(1));
    drop(lock);
}

#[test]
fn the_plan_grows_linearly_with_rounds() {
    let dir = tempfile::tempdir().unwrap();
    let file = small(dir.path(), 1);
    let inputs = |rounds: u32| -> (usize, usize) {
        let out = pipe().arg("status").arg(&file).arg("--json").arg("--set").arg(format!("pipeline.rounds={rounds}")).arg("--store").arg(dir.path().join("none")).output().unwrap();
        assert!(out.status.success(), "{}", text(&out));
        let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
        let counts: Vec<usize> = doc["stages"].as_array().unwrap().iter().map(|s| s["inputs"].as_object().unwrap().len()).collect();
        (counts.iter().sum(), *counts.iter().max().unwrap())
    };
    let (total_10, widest_10) = inputs(10);
    let (total_200, widest_200) = inputs(200);
    // a train stage reads the previous round's pool, not every earlier round's set
    assert_eq!(widest_10, widest_200, "the widest stage does not grow with the rounds");
    assert!(total_200 <= 21 * total_10, "{total_10} inputs at 10 rounds, {total_200} at 200");
}

#[test]
fn a_set_of_a_swept_key_is_refused_not_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let file = small(dir.path(), 1);
    let sweep = dir.path().join("sweep.toml");
    std::fs::write(&sweep, std::fs::read_to_string(&file).unwrap() + "\n[sweep]\n\"pipeline.seed\" = [0, 1]\ncases = [{ name = \"base\", \"pipeline.method\" = \"baseline\" }]\n").unwrap();
    for (set, by) in [("pipeline.seed=5", "sweep.\"pipeline.seed\""), ("pipeline.method=icn", "sweep.cases")] {
        for command in ["status", "run"] {
            let out = pipe().arg(command).arg(&sweep).args(["--set", set, "--store"]).arg(dir.path().join("s")).output().unwrap();
            assert_eq!(out.status.code(), Some(2), "{command} --set {set}: {}", text(&out));
            assert!(String::from_utf8_lossy(&out.stderr).contains(&format!("is swept by {by}")), "{}", text(&out));
        }
    }
    assert!(!dir.path().join("s").exists());
    // a key the sweep does not touch applies to every member, and ls tells members apart
    let store = dir.path().join("t");
    let out = pipe().arg("run").arg(&sweep).args(["--set", "train.lr=0.04", "--store"]).arg(&store).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let ls = text(&pipe().arg("ls").arg("--store").arg(&store).output().unwrap());
    assert!(ls.contains("base pipeline.seed=0") && ls.contains("base pipeline.seed=1"), "{ls}");
}

#[test]
fn a_net_that_cannot_take_the_data_s_image_size_is_refused_before_anything_runs() {
    let dir = tempfile::tempdir().unwrap();
    let file = common::tiny(dir.path(), 1, 300);
    let store = dir.path().join("store");
    for verb in ["status", "run"] {
        let out = pipe().arg(verb).arg(&file).arg("--store").arg(&store).args(["--set", "net.arch=winn64"]).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{}", text(&out));
        assert!(String::from_utf8_lossy(&out.stderr).contains("net.arch=winn64: winn64 halves the image four times, so its sides must be multiples of 16; the data's images are 28x28"), "{}", text(&out));
        assert!(!store.exists(), "{verb} wrote nothing");
    }
}
