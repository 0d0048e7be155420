//! `pipe bench`: throughput of the workloads that dominate every experiment, next to the
//! same workloads in PyTorch on the same cores (when `python3 -c "import torch"` works),
//! as a table, as JSON lines and as Parquet.

use crate::engine::table::{to_parquet, Column};
use anyhow::{Context, Result};
use serde::Serialize;
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

/// The PyTorch reference as a server (`bench_torch.py --serve`): one process for the whole
/// run, asked for one short measurement at a time.
struct Torch {
    child: std::process::Child,
    stdin: std::process::ChildStdin,
    stdout: std::io::BufReader<std::process::ChildStdout>,
}

impl Torch {
    /// None when torch is not importable or the script is missing (said on stderr).
    fn start(threads: usize) -> Result<Option<Torch>> {
        // the clone the user runs from, else the one this binary was built in
        let candidates = [Path::new("scripts/bench_torch.py").to_path_buf(), Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/bench_torch.py")];
        let script = candidates.iter().find(|p| p.exists());
        let ok = Command::new("python3").args(["-c", "import torch"]).output().map(|out| out.status.success()).unwrap_or(false);
        let Some(script) = script.filter(|_| ok) else {
            eprintln!("note: PyTorch not importable (pip install torch), or scripts/bench_torch.py missing: pipe numbers only");
            return Ok(None);
        };
        let mut child = Command::new("python3")
            .arg(script)
            .args(["--serve", "--threads", &threads.to_string()])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .context("starting the PyTorch reference")?;
        let stdin = child.stdin.take().expect("piped");
        let stdout = std::io::BufReader::new(child.stdout.take().expect("piped"));
        Ok(Some(Torch { child, stdin, stdout }))
    }

    /// Items per second of `name` over about `seconds` (the first call per name warms up).
    fn measure(&mut self, name: &str, seconds: f64) -> Result<f64> {
        use std::io::{BufRead, Write};
        writeln!(self.stdin, "{name} {seconds}").context("asking the PyTorch reference")?;
        self.stdin.flush()?;
        let mut line = String::new();
        if self.stdout.read_line(&mut line)? == 0 {
            let status = self.child.wait()?;
            anyhow::bail!("the PyTorch reference stopped ({status}) while measuring {name}");
        }
        let v: serde_json::Value = serde_json::from_str(&line).with_context(|| format!("the PyTorch reference answered {line:?}"))?;
        v["per_s"].as_f64().with_context(|| format!("no per_s in {line:?}"))
    }

    /// Whether the script has this workload.
    fn has(name: &str) -> bool {
        TORCH_WORKLOADS.contains(&name)
    }
}

impl Drop for Torch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The workloads `scripts/bench_torch.py` writes in PyTorch (pipe's draw counting has no
/// PyTorch counterpart).
const TORCH_WORKLOADS: [&str; 10] = ["cnn4_train", "cnn4_synthesis", "cnn4_fgsm", "cnn4_ln_critic", "resnet32_train", "resnet32_ln_train", "resnet32_synthesis", "resnet32_fgsm", "resnet32_ln_critic", "winn64_train"];

/// Pause between turns.
const SETTLE: std::time::Duration = std::time::Duration::from_millis(300);

/// Turns per row: pipe and PyTorch alternate this many times, each for seconds / TURNS.
const TURNS: usize = 4;

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
    let mut torch = if o.torch { Torch::start(threads)? } else { None };
    for mut w in workloads {
        let (per_s, torch_per_s) = match (paired.get(w.name), torch.as_mut().filter(|_| Torch::has(w.name))) {
            (Some(&v), _) => (v, None),
            (None, Some(t)) => {
                // alternate short turns, so drift in the machine's speed hits both sides
                let (mut p, mut q) = (0.0, 0.0);
                for turn in 0..TURNS {
                    let s = o.seconds / TURNS as f64;
                    p += if turn == 0 { stages::bench::measure(&mut w, s)? } else { stages::bench::measure_warm(&mut w, s)? };
                    // each side's idle worker threads spin for a while after its turn
                    // (OpenMP's and rayon's wait policies): let them settle first
                    std::thread::sleep(SETTLE);
                    q += t.measure(w.name, s)?;
                    std::thread::sleep(SETTLE);
                }
                (p / TURNS as f64, Some(q / TURNS as f64))
            }
            (None, None) => (stages::bench::measure(&mut w, o.seconds)?, None),
        };
        rows.push(Row {
            name: w.name.into(),
            unit: w.unit.into(),
            batch: w.batch,
            pipe_per_s: per_s,
            torch_per_s,
            ratio: torch_per_s.map(|t| per_s / t),
            sgemm_share: per_s * w.flops_per_item / 1e9 / peak,
            sgemm_gflops: peak,
            threads,
        });
        if !o.json {
            match torch_per_s {
                Some(t) => eprintln!("measured {} ({:.1} {}/s; PyTorch {t:.1})", w.name, per_s, w.unit),
                None => eprintln!("measured {} ({:.1} {}/s)", w.name, per_s, w.unit),
            }
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
