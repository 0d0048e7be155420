//! Keys do not move. Every store made by an earlier `pipe` stays valid only while the same
//! pipeline file gives the same stage keys; a refactor that changes a parameter's name,
//! type or JSON form, a kind's name or version, or an input's name silently orphans every
//! cached stage. These tests pin, through the real binary:
//!
//! - the key of every stage and the digest of every output of `pipelines/quickstart.toml`
//!   (a full run), against `tests/golden/quickstart.txt`;
//! - the planned graph of every shipped pipeline (every sweep member): stage ids, kinds,
//!   versions, a digest of the canonical parameters, every input (a content digest, or the
//!   upstream `stage:output` before it has run) and each key `pipe status --json` can
//!   compute, against `tests/golden/plans/<pipeline>.txt`.
//!
//! A deliberate change (a kind's version bumped because its outputs change) is blessed
//! with `PIPE_BLESS=1 cargo test --release --test keys`, and the diff of the golden files
//! is the review.
//!
//! Output digests are the bytes of the CPU kernels on x86-64 without AVX-512 (the machine
//! they were made on); gemm picks AVX-512 kernels at run time where the CPU has them, and
//! those may round differently.

mod common;

use common::{canonical, pipe, text};
use serde_json::Value;
use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn bless() -> bool {
    std::env::var_os("PIPE_BLESS").is_some()
}

/// Compares `actual` with the golden file (or writes it under PIPE_BLESS), naming the first
/// line that differs.
fn check_golden(name: &str, actual: &str) {
    let path = repo().join("tests/golden").join(name);
    if bless() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e} (bless with PIPE_BLESS=1)", path.display()));
    if expected != actual {
        let (e, a): (Vec<&str>, Vec<&str>) = (expected.lines().collect(), actual.lines().collect());
        let i = e.iter().zip(&a).position(|(x, y)| x != y).unwrap_or(e.len().min(a.len()));
        panic!(
            "{} moved: first difference at line {}\n  expected: {}\n  actual:   {}\n({} expected lines, {} actual)",
            path.display(),
            i + 1,
            e.get(i).unwrap_or(&"<end>"),
            a.get(i).unwrap_or(&"<end>"),
            e.len(),
            a.len()
        );
    }
}


#[test]
fn quickstart_keys_and_output_digests_do_not_move() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let out = pipe().arg("run").arg(repo().join("pipelines/quickstart.toml")).arg("--store").arg(&store).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let record = common::last_record(&store);
    let mut lines = String::new();
    for s in record["stages"].as_array().unwrap() {
        lines.push_str(&format!("{} {} {}\n", s["stage"].as_str().unwrap(), s["kind"].as_str().unwrap(), s["key"].as_str().unwrap()));
        for (name, o) in s["outputs"].as_object().unwrap() {
            lines.push_str(&format!("  {name} {}\n", o["digest"].as_str().unwrap()));
        }
    }
    check_golden("quickstart.txt", &lines);
}

/// Stand-ins for data sets this machine does not have: status hashes the files and never
/// reads them, so fixed bytes in the expected file names give stable input digests.
fn fake_data(root: &Path) -> Vec<(&'static str, PathBuf)> {
    let cifar = root.join("cifar10");
    std::fs::create_dir_all(&cifar).unwrap();
    for f in ["data_batch_1.bin", "data_batch_2.bin", "data_batch_3.bin", "data_batch_4.bin", "data_batch_5.bin", "test_batch.bin"] {
        std::fs::write(cifar.join(f), format!("stand-in for {f}")).unwrap();
    }
    let svhn = root.join("svhn");
    std::fs::create_dir_all(&svhn).unwrap();
    for f in ["train_32x32.mat", "extra_32x32.mat", "test_32x32.mat"] {
        std::fs::write(svhn.join(f), format!("stand-in for {f}")).unwrap();
    }
    // full-size MNIST headers without their pixels: `pipe status` checks the counts and
    // the 28x28 geometry in the headers before it plans, and reads nothing more
    let full = root.join("mnist-full");
    std::fs::create_dir_all(&full).unwrap();
    for (f, n, dims) in [("train-images-idx3-ubyte", 60_000u32, 3u8), ("train-labels-idx1-ubyte", 60_000, 1), ("t10k-images-idx3-ubyte", 10_000, 3), ("t10k-labels-idx1-ubyte", 10_000, 1)] {
        let mut header = vec![0, 0, 8, dims];
        header.extend_from_slice(&n.to_be_bytes());
        if dims == 3 {
            header.extend_from_slice(&28u32.to_be_bytes());
            header.extend_from_slice(&28u32.to_be_bytes());
        }
        std::fs::write(full.join(f), header).unwrap();
    }
    vec![("mnist", repo().join("pipelines/data/mnist")), ("mnist", full), ("cifar10", cifar), ("svhn", svhn), ("folder", repo().join("pipelines/data/faces")), ("texture", repo().join("pipelines/data/textures"))]
}

/// One line per planned stage: what its key is made of.
fn stage_lines(member: &str, stages: &[Value]) -> String {
    let mut out = String::new();
    for s in stages {
        let params = blake3::hash(canonical(&s["params"]).as_bytes()).to_hex();
        let inputs: Vec<String> = s["inputs"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(name, v)| {
                let v = v.as_str().unwrap();
                // a digest is 64 hex digits; an upstream reference is `stage:output`
                let shown = if v.len() == 64 && !v.contains(':') { &v[..16] } else { v };
                format!("{name}={shown}")
            })
            .collect();
        // evaluate stages of one-vs-all read every member's pseudo-negatives: a long list
        // is shown as its count and digest
        let inputs = if inputs.len() > 8 { format!("{} inputs {}", inputs.len(), &blake3::hash(inputs.join(" ").as_bytes()).to_hex()[..16]) } else { inputs.join(" ") };
        out.push_str(&format!(
            "{member}\t{}\t{}\tv{}\tparams {}\tkey {}\t{}\n",
            s["stage"].as_str().unwrap(),
            s["kind"].as_str().unwrap(),
            s["version"],
            &params[..16],
            s["key"].as_str().map_or("-", |k| &k[..16]),
            inputs
        ));
    }
    out
}

#[test]
fn planned_graphs_of_shipped_pipelines_do_not_move() {
    let tmp = tempfile::tempdir().unwrap();
    let data = fake_data(tmp.path());
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo().join("pipelines")).unwrap().map(|e| e.unwrap().path()).filter(|p| p.extension().is_some_and(|e| e == "toml")).collect();
    files.sort();
    assert!(files.len() >= 17, "expected the shipped pipelines, found {}", files.len());
    for file in files {
        let text_of = std::fs::read_to_string(&file).unwrap();
        let format = text_of.lines().find_map(|l| l.trim().strip_prefix("format = ").map(|f| f.split('"').nth(1).unwrap().to_string())).unwrap();
        // the first data set of the format that holds enough examples for the pipeline
        let status = |dir: &Path| pipe().arg("status").arg(&file).arg("--json").arg("--set").arg(format!("data.path={}", dir.display())).arg("--store").arg(tmp.path().join("store")).output().unwrap();
        let candidates: Vec<&PathBuf> = data.iter().filter(|(f, _)| *f == format).map(|(_, d)| d).collect();
        assert!(!candidates.is_empty(), "{}: no stand-in data for format {format}", file.display());
        let out = candidates.iter().map(|d| status(d)).find(|o| !String::from_utf8_lossy(&o.stderr).contains("exceeds the")).unwrap_or_else(|| status(candidates[0]));
        assert!(out.status.success(), "{}: {}", file.display(), text(&out));
        let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
        let members: Vec<Value> = match doc.get("members") {
            Some(m) => m.as_array().unwrap().clone(),
            None => vec![doc],
        };
        // Sweeps of paper scale plan thousands of stages: the first member in full, the
        // others as one digest each (any change still shows, with the member named).
        let mut golden = String::new();
        for (i, m) in members.iter().enumerate() {
            let label = m["member"].as_str().unwrap_or("-").to_string();
            let lines = stage_lines(&label, m["stages"].as_array().unwrap());
            if i == 0 {
                golden.push_str(&lines);
            } else {
                golden.push_str(&format!("{label}\t{} stages\tdigest {}\n", m["stages"].as_array().unwrap().len(), &blake3::hash(lines.as_bytes()).to_hex()[..32]));
            }
        }
        let name = file.file_stem().unwrap().to_string_lossy().to_string();
        check_golden(&format!("plans/{name}.txt"), &golden);
    }
}
