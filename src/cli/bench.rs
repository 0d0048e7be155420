//! `pipe bench`: throughput of the workloads that dominate every experiment, next to the
//! same workloads in PyTorch on the same cores (when `python3 -c "import torch"` works),
//! as a table, as JSON lines and as Parquet.

use crate::engine::table::{to_parquet, Column};
use anyhow::{Context, Result};
use serde::Serialize;
use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

#[derive(Debug, Serialize)]
pub struct Row {
    pub name: String,
    pub unit: String,
    pub batch: usize,
    pub pipe_per_s: f64,
    pub torch_per_s: Option<f64>,
    pub ratio: Option<f64>,
    /// Achieved GFLOP/s of pipe over the measured sgemm GFLOP/s.
    pub sgemm_share: f64,
    pub sgemm_gflops: f64,
    pub threads: usize,
}

pub struct Options<'a> {
    pub seconds: f64,
    pub only: Vec<String>,
    pub torch: bool,
    pub json: bool,
    pub out: &'a Path,
}

/// PyTorch's numbers by workload name, or None when torch is not importable.
fn torch_numbers(o: &Options, threads: usize) -> Result<Option<HashMap<String, f64>>> {
    if !o.torch {
        return Ok(None);
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/bench_torch.py");
    let ok = Command::new("python3").args(["-c", "import torch"]).output().map(|out| out.status.success()).unwrap_or(false);
    if !ok || !script.exists() {
        eprintln!("note: PyTorch not importable (pip install torch), or {} missing: pipe numbers only", script.display());
        return Ok(None);
    }
    let out = Command::new("python3")
        .arg(&script)
        .args(["--seconds", &o.seconds.to_string(), "--threads", &threads.to_string(), "--only", &o.only.join(",")])
        .output()
        .context("running the PyTorch reference")?;
    if !out.status.success() {
        anyhow::bail!("the PyTorch reference failed:\n{}", String::from_utf8_lossy(&out.stderr));
    }
    let mut m = HashMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines().filter(|l| l.starts_with('{')) {
        let v: serde_json::Value = serde_json::from_str(line)?;
        if let (Some(n), Some(p)) = (v["name"].as_str(), v["per_s"].as_f64()) {
            m.insert(n.to_string(), p);
        }
    }
    Ok(Some(m))
}

pub fn run(o: &Options) -> Result<Vec<Row>> {
    if let Some(bad) = o.only.iter().find(|n| !stages::bench::WORKLOADS.contains(&n.as_str())) {
        return Err(crate::UserError(format!("--only {bad}: no such workload; expected some of {}", stages::bench::WORKLOADS.join(", "))).into());
    }
    let threads = rayon::current_num_threads();
    let keep = |n: &str| o.only.is_empty() || o.only.iter().any(|s| s == n);
    let peak = stages::bench::sgemm_gflops();
    let mut rows = Vec::new();
    let mut workloads = stages::bench::workloads(&keep)?;
    // Lineage's draw counting costs less than the drift between two sequential
    // measurements, so its pair is measured interleaved, in short turns.
    let mut paired: std::collections::HashMap<&str, f64> = Default::default();
    if let (Some(a), Some(b)) = (workloads.iter().position(|w| w.name == "cnn4_train_pn"), workloads.iter().position(|w| w.name == "cnn4_train_pn_lineage")) {
        let (mut ta, mut tb) = (0.0, 0.0);
        for _ in 0..8 {
            ta += stages::bench::measure(&mut workloads[a], o.seconds / 8.0)?;
            tb += stages::bench::measure(&mut workloads[b], o.seconds / 8.0)?;
        }
        paired.insert("cnn4_train_pn", ta / 8.0);
        paired.insert("cnn4_train_pn_lineage", tb / 8.0);
        if !o.json {
            eprintln!("lineage draw counting: {:.2}% of training time (interleaved)", 100.0 * (ta / tb - 1.0));
        }
    }
    for mut w in workloads {
        let per_s = match paired.get(w.name) {
            Some(&v) => v,
            None => stages::bench::measure(&mut w, o.seconds)?,
        };
        rows.push(Row {
            name: w.name.into(),
            unit: w.unit.into(),
            batch: w.batch,
            pipe_per_s: per_s,
            torch_per_s: None,
            ratio: None,
            sgemm_share: per_s * w.flops_per_item / 1e9 / peak,
            sgemm_gflops: peak,
            threads,
        });
        if !o.json {
            eprintln!("measured {} ({:.1} {}/s)", w.name, per_s, w.unit);
        }
    }
    if let Some(t) = torch_numbers(o, threads)? {
        for r in &mut rows {
            r.torch_per_s = t.get(&r.name).copied();
            r.ratio = r.torch_per_s.map(|t| r.pipe_per_s / t);
        }
    }
    if o.json {
        for r in &rows {
            println!("{}", serde_json::to_string(r)?);
        }
    } else {
        println!("sgemm {peak:.0} GFLOP/s on {threads} threads");
        println!("{:<22} {:>6} {:>12} {:>12} {:>7} {:>11}", "workload", "batch", "pipe/s", "torch/s", "ratio", "sgemm share");
        for r in &rows {
            let t = r.torch_per_s.map(|v| format!("{v:.1}")).unwrap_or_else(|| "-".into());
            let ratio = r.ratio.map(|v| format!("{v:.2}x")).unwrap_or_else(|| "-".into());
            println!("{:<22} {:>6} {:>12.1} {:>12} {:>7} {:>10.1}%", r.name, r.batch, r.pipe_per_s, t, ratio, 100.0 * r.sgemm_share);
        }
    }
    let table = to_parquet(vec![
        ("name", Column::Str(rows.iter().map(|r| r.name.clone()).collect())),
        ("unit", Column::Str(rows.iter().map(|r| r.unit.clone()).collect())),
        ("batch", Column::U64(rows.iter().map(|r| r.batch as u64).collect())),
        ("pipe_per_s", Column::F64(rows.iter().map(|r| r.pipe_per_s).collect())),
        ("torch_per_s", Column::F64(rows.iter().map(|r| r.torch_per_s.unwrap_or(f64::NAN)).collect())),
        ("ratio", Column::F64(rows.iter().map(|r| r.ratio.unwrap_or(f64::NAN)).collect())),
        ("sgemm_share", Column::F64(rows.iter().map(|r| r.sgemm_share).collect())),
        ("sgemm_gflops", Column::F64(rows.iter().map(|r| r.sgemm_gflops).collect())),
        ("threads", Column::U64(rows.iter().map(|r| r.threads as u64).collect())),
    ])?;
    if let Some(dir) = o.out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(o.out, table).with_context(|| format!("writing {}", o.out.display()))?;
    if !o.json {
        println!("written to {}", o.out.display());
    }
    Ok(rows)
}
