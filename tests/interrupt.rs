//! Stopping a run on purpose: SIGINT and SIGTERM stop at the next epoch checkpoint, the run
//! is recorded `interrupted` with a resume hint, and the resumed run ends bit-identical to
//! an uninterrupted one; while a stage runs, its heartbeat is what `pipe status` and
//! `pipe show` report from another process.

mod common;
use common::*;
use std::io::Read;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

/// The heartbeat of the running stage, once it is on `stage` and has counted something.
fn heartbeat_on(store: &Path, stage: &str, child: &mut Child) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let beat = std::fs::read_dir(store.join("live"))
            .ok()
            // the heartbeat, beside the run's liveness lock
            .and_then(|mut d| d.find_map(|e| e.ok().map(|e| e.path()).filter(|p| p.extension().is_some_and(|x| x == "json"))))
            .and_then(|p| std::fs::read(p).ok())
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok());
        if let Some(b) = beat.filter(|b| b["stage"] == stage && b["done"].as_u64() > Some(0)) {
            return b;
        }
        assert!(child.try_wait().unwrap().is_none(), "pipe ended before {stage} reported progress");
        assert!(Instant::now() < deadline, "no heartbeat of {stage}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn spawn(file: &Path, store: &Path, extra: &[&str]) -> Child {
    pipe()
        .arg("run")
        .arg(file)
        .arg("--store")
        .arg(store)
        .args(extra)
        .env("PIPE_PROGRESS_SECONDS", "0.05")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn signal(child: &Child, sig: libc::c_int) {
    // SAFETY: sends a signal to a child process this test started and has not reaped.
    assert_eq!(unsafe { libc::kill(child.id() as libc::pid_t, sig) }, 0);
}

/// Exit code, stdout and stderr of a finished child.
fn finish(mut child: Child) -> (Option<i32>, String, String) {
    let (mut out, mut err) = (String::new(), String::new());
    child.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    (child.wait().unwrap().code(), out, err)
}

fn ls_status(store: &Path) -> String {
    let out = pipe().arg("ls").arg("--json").arg("--store").arg(store).output().unwrap();
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    doc["runs"].as_array().unwrap().last().unwrap()["status"].as_str().unwrap().to_string()
}

#[test]
fn sigint_and_sigterm_stop_at_an_epoch_checkpoint_and_the_resumed_run_is_identical() {
    let dir = tempfile::tempdir().unwrap();
    let file = tiny_with(dir.path(), 1, 4, 1500);
    let store = dir.path().join("store");

    // 1. SIGINT in the middle of train/1, after looking at it from another process
    let mut child = spawn(&file, &store, &[]);
    let beat = heartbeat_on(&store, "train/1", &mut child);
    assert_eq!(beat["unit"], "samples");
    assert!(beat["what"].as_str().unwrap().starts_with("epoch "), "{beat}");
    assert_eq!(beat["total"].as_u64(), Some(4 * (1500 + 30)), "4 epochs of 1500 digits and 30 pseudo-negatives: {beat}");
    let status = pipe().arg("status").arg(&file).arg("--store").arg(&store).output().unwrap();
    let line = text(&status).lines().find(|l| l.contains("train/1")).unwrap_or_default().to_string();
    assert!(line.trim_start().starts_with("running") && line.contains("epoch ") && line.contains("samples"), "{}", text(&status));
    let run_id = beat["run"].as_str().unwrap().to_string();
    let show = pipe().arg("show").arg(&run_id).arg("--store").arg(&store).output().unwrap();
    let shown = text(&show);
    assert!(shown.contains("status    running") && shown.contains("so far"), "{shown}");
    assert!(shown.lines().any(|l| l.starts_with("running") && l.contains("train/1") && l.contains("epoch ")), "{shown}");
    signal(&child, libc::SIGINT);
    let (code, _, err) = finish(child);
    assert_eq!(code, Some(130), "{err}");
    assert!(err.contains("interrupted by SIGINT: train/1 stopped; epoch ") && err.contains(" of 4 is saved"), "{err}");
    assert!(err.contains(&format!("resume with: pipe run {} --store {}", file.display(), store.display())), "{err}");
    // not a terminal: progress came as plain lines
    assert!(err.lines().any(|l| l.starts_with("train/0  epoch 1/1  ") && l.contains(" samples")), "{err}");
    let rec = last_record(&store);
    assert_eq!(rec["status"], "interrupted");
    assert_eq!(ls_status(&store), "interrupted");
    assert!(!store.join("live").exists(), "the heartbeat goes with the run");
    let said = err.lines().find(|l| l.starts_with("interrupted by")).unwrap();
    let epoch: u32 = said.split("stopped; epoch ").nth(1).and_then(|s| s.split(' ').next()).unwrap().parse().unwrap();
    assert!((1..4).contains(&epoch));

    // 2. the resumed run continues train/1 from the saved epoch; SIGTERM in train/2
    let mut child = spawn(&file, &store, &[]);
    heartbeat_on(&store, "train/2", &mut child);
    signal(&child, libc::SIGTERM);
    let (code, out, err) = finish(child);
    assert_eq!(code, Some(143), "{err}");
    assert!(out.lines().any(|l| l.starts_with("ran") && l.contains("train/1") && l.contains(&format!("resumed from epoch {epoch}"))), "{out}");
    assert!(err.contains("interrupted by SIGTERM: train/2 stopped"), "{err}");
    assert_eq!(last_record(&store)["status"], "interrupted");

    // 3. to the end, quietly: no progress lines at all
    let child = spawn(&file, &store, &["--quiet"]);
    let (code, out, err) = finish(child);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(!err.contains("samples"), "--quiet prints no progress: {err}");
    assert!(out.lines().any(|l| l.starts_with("ran") && l.contains("train/2") && l.contains("resumed from epoch")), "{out}");

    let clean = dir.path().join("clean");
    run(&file, &clean, &[]);
    assert_eq!(output_digests(&store), output_digests(&clean));
}
