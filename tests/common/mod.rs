//! Helpers shared by the integration tests: the real `pipe` binary, a tiny real pipeline
//! over the shipped MNIST subset, and readers of what a run leaves in the store.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn pipe() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_pipe"));
    c.env_remove("PIPE_STORE").env_remove("POLARS_FMT_MAX_ROWS").env_remove("POLARS_FMT_STR_LEN");
    c
}

pub fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines/data/mnist")
}

/// A small but real pipeline: a narrow CNN4 on a few hundred digits, two rounds.
pub fn tiny(dir: &Path, train_epochs: u32, train_size: usize) -> PathBuf {
    tiny_with(dir, train_epochs, 1, train_size)
}

/// The tiny pipeline on 200 digits, one epoch per round, with `rounds` rounds: a run takes
/// seconds.
pub fn small(dir: &Path, rounds: u32) -> PathBuf {
    let file = tiny_with(dir, 1, 1, 200);
    let text = std::fs::read_to_string(&file).unwrap().replace("rounds = 2", &format!("rounds = {rounds}"));
    std::fs::write(&file, text).unwrap();
    file
}

/// Stdout and stderr of a command, for failure messages.
pub fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

pub fn tiny_with(dir: &Path, train_epochs: u32, epochs_per_round: u32, train_size: usize) -> PathBuf {
    let text = format!(
        r#"[pipeline]
name = "tiny"
seed = 7
rounds = 2

[data]
format = "mnist"
path = "{data}"
train_size = {train_size}
validation_size = 100
test_size = 200

[net]
width = 0.125

[train]
lr = 0.05
batch_size = 32
epochs = {train_epochs}
epochs_per_round = {epochs_per_round}

[synthesize]
per_class = 3
max_steps = 20
"#,
        data = data_dir().display()
    );
    let file = dir.join("tiny.toml");
    std::fs::write(&file, text).unwrap();
    file
}

pub fn run(file: &Path, store: &Path, sets: &[&str]) -> Output {
    let mut c = pipe();
    c.arg("run").arg(file).arg("--store").arg(store);
    for s in sets {
        c.arg("--set").arg(s);
    }
    let out = c.output().unwrap();
    assert!(out.status.success(), "pipe run failed:\n{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    out
}

/// (status, stage) of every stage line of a run's output.
pub fn stage_lines(out: &Output) -> Vec<(String, String)> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            match (w.next(), w.next()) {
                (Some(s @ ("ran" | "cached")), Some(stage)) => Some((s.to_string(), stage.to_string())),
                _ => None,
            }
        })
        .collect()
}

pub fn ran(out: &Output) -> Vec<String> {
    stage_lines(out).into_iter().filter(|(s, _)| s == "ran").map(|(_, st)| st).collect()
}

/// The newest run record of a store.
pub fn last_record(store: &Path) -> serde_json::Value {
    let mut runs: Vec<PathBuf> = std::fs::read_dir(store.join("runs")).unwrap().map(|e| e.unwrap().path()).collect();
    runs.sort();
    serde_json::from_slice(&std::fs::read(runs.last().unwrap()).unwrap()).unwrap()
}

/// stage -> output name -> digest, from the newest run record.
pub fn output_digests(store: &Path) -> Vec<(String, String, String)> {
    record_outputs(&last_record(store))
}

/// (stage, output, digest) of every output a run record names.
pub fn record_outputs(rec: &serde_json::Value) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for s in rec["stages"].as_array().unwrap() {
        for (name, o) in s["outputs"].as_object().unwrap() {
            out.push((s["stage"].as_str().unwrap().to_string(), name.clone(), o["digest"].as_str().unwrap().to_string()));
        }
    }
    out
}

/// The path of object `digest` in `store` (the layout pinned by the store's tests).
pub fn object(store: &Path, digest: &str) -> PathBuf {
    store.join("objects").join(&digest[..2]).join(&digest[2..])
}

/// Every file under `dir`, recursively, sorted.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out.sort();
    out
}

/// JSON with object keys sorted at every level, whatever map order serde_json keeps (the
/// form keys and seals are computed over).
pub fn canonical(v: &serde_json::Value) -> String {
    use serde_json::Value;
    match v {
        Value::Object(m) => {
            let mut entries: Vec<(&String, &Value)> = m.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            let inner: Vec<String> = entries.iter().map(|(k, v)| format!("{}:{}", Value::String((*k).clone()), canonical(v))).collect();
            format!("{{{}}}", inner.join(","))
        }
        Value::Array(a) => format!("[{}]", a.iter().map(canonical).collect::<Vec<_>>().join(",")),
        other => other.to_string(),
    }
}

/// A resumption checkpoint `file` of any stage and attempt (`partial/<key>/<attempt>/`).
pub fn partial_file(store: &Path, file: &str) -> Option<PathBuf> {
    let keys = std::fs::read_dir(store.join("partial")).ok()?;
    keys.flatten().flat_map(|k| std::fs::read_dir(k.path()).into_iter().flatten().flatten()).map(|a| a.path().join(file)).find(|p| p.exists())
}

/// Waits until `after` is committed in the store's newest run and the running train stage
/// has saved an epoch checkpoint, then kills `child` with SIGKILL: a kill in the middle of
/// a training stage. Returns the partial checkpoint that was there.
pub fn kill_after_an_epoch(child: &mut std::process::Child, store: &Path, after: &str) -> PathBuf {
    kill_once_saved(child, store, after, "checkpoint.safetensors")
}

/// [`kill_after_an_epoch`] for any stage that saves partial progress: waits until `after`
/// is committed and the running stage has written `file` to its partial/ folder.
pub fn kill_once_saved(child: &mut std::process::Child, store: &Path, after: &str, file: &str) -> PathBuf {
    use std::time::{Duration, Instant};
    let deadline = Instant::now() + Duration::from_secs(300);
    let partial = loop {
        let done: Vec<String> = std::fs::read_dir(store.join("runs"))
            .ok()
            .and_then(|_| std::panic::catch_unwind(|| last_record(store)).ok())
            .map(|r| r["stages"].as_array().unwrap().iter().map(|s| s["stage"].as_str().unwrap().to_string()).collect())
            .unwrap_or_default();
        if done.iter().any(|s| s == after) {
            if let Some(p) = partial_file(store, file) {
                break p;
            }
        }
        assert!(child.try_wait().unwrap().is_none(), "pipe ended before the stage after {after} saved {file}");
        assert!(Instant::now() < deadline, "no {file} appeared in partial/ after {after}");
        std::thread::sleep(Duration::from_millis(2));
    };
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    partial
}

/// A texture cascade on 16x16 crops of brick: 48x48 pseudo-negatives, each synthesized from
/// 8 random windows a step until the mean f of its windows is positive over 4 steps; a
/// 64x64 sample through both classifiers, and the Gram distance per round; `data` holds
/// brick.png.
pub fn tiny_igm_texture(dir: &Path, data: &Path) -> PathBuf {
    let text = format!(
        r#"[pipeline]
name = "tiny_igm_texture"
method = "igm"
variant = "unsupervised"
seed = 2
rounds = 2

[data]
format = "texture"
path = "{data}"
texture = "brick"
patch = 16
channels = 1
train_size = 200
validation_size = 4
test_size = 4

[net]
arch = "cnn4"
norm = "layer"
width = 0.25

[train]
optimizer = "sgd"
lr = 0.01
momentum = 0.9
batch_size = 40
epochs_per_round = 2

[synthesize]
per_class = 6
optimizer = "adam"
lr = 0.1
beta1 = 0.5
stop = "window"
stop_window = 4
max_steps = 40

[igm]
negative_size = 48
synthesis_patches = 8

[sample]
sizes = [64]
count = 1
patches = 16
max_steps = 20

[quality]
count = 50
"#,
        data = data.display()
    );
    let file = dir.join("tiny_igm_texture.toml");
    std::fs::write(&file, text).unwrap();
    file
}

/// Every run record of a store on any backend (a directory or a URL), oldest first.
pub fn records_at(store: &str) -> Vec<serde_json::Value> {
    pipe::engine::store::Store::open_existing(store).unwrap().intact_runs().unwrap()
}

/// The store locations a backend-generic test runs on: a directory below `dir`, and a fresh
/// prefix on the S3 server of the environment (skipped without one, failing under CI).
pub fn backends(dir: &Path, test: &str) -> Vec<String> {
    let mut out = vec![dir.join(format!("{test}-dir")).display().to_string()];
    out.extend(pipe::engine::store::testing::s3_url(test));
    out
}

/// Whether Slurm's commands answer here; under CI=true a test that needs them fails instead
/// of skipping (.ci/run starts a one-node cluster).
pub fn slurm_ready(test: &str) -> bool {
    // a node that takes jobs: idle, or busy with another test's (mixed, allocated, completing)
    let up = |o: std::process::Output| ["idle", "mix", "alloc", "comp"].iter().any(|st| String::from_utf8_lossy(&o.stdout).contains(st));
    let ok = Command::new("sbatch").arg("--version").output().is_ok_and(|o| o.status.success()) && Command::new("sinfo").args(["-h", "-o", "%T"]).output().is_ok_and(up);
    if !ok {
        assert!(std::env::var("CI").map_or(true, |v| v != "true"), "{test}: no Slurm cluster answers (sbatch/sinfo); .ci/run starts one with scripts/test-services.sh, and under CI=true a Slurm test fails rather than skip");
        eprintln!("skipping {test}: no Slurm cluster (source scripts/test-services.sh start DIR to start one on loopback)");
    }
    ok
}
