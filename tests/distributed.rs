//! One store, many writers, on both backends (a directory and S3 on loopback): runs that
//! race on one pipeline or on two that share stages, workers racing `pipe exec-stage` on
//! one key, a worker killed mid-stage whose lease is taken over, the S3 server going away
//! mid-run, and objects damaged in the bucket.

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Child, Output, Stdio};

mod common;
use common::{backends, output_digests, pipe, ran, record_outputs, records_at, run, small, text, tiny_with};
use pipe::engine::store::Store;

fn spawn(file: &std::path::Path, store: &str, env: &[(&str, &str)]) -> Child {
    let mut c = pipe();
    c.arg("run").arg(file).arg("--store").arg(store).stdout(Stdio::piped()).stderr(Stdio::piped());
    for (k, v) in env {
        c.env(k, v);
    }
    c.spawn().unwrap()
}

/// Stage -> how many of the outputs computed it.
fn computed_by(outs: &[&Output]) -> BTreeMap<String, usize> {
    let mut n = BTreeMap::new();
    for o in outs {
        for s in ran(o) {
            *n.entry(s).or_insert(0) += 1;
        }
    }
    n
}

#[test]
fn two_runs_and_two_pipelines_sharing_stages_commit_each_stage_once_on_both_backends() {
    let dir = tempfile::tempdir().unwrap();
    let one = small(dir.path(), 1);
    let two_dir = dir.path().join("two");
    std::fs::create_dir_all(&two_dir).unwrap();
    let two = small(&two_dir, 2); // the same first round: load, train/0, evaluate/0, ... shared
    let alone_one = dir.path().join("alone1");
    let alone_two = dir.path().join("alone2");
    run(&one, &alone_one, &[]);
    run(&two, &alone_two, &[]);
    let (expected_one, expected_two) = (output_digests(&alone_one), output_digests(&alone_two));

    for store in backends(dir.path(), "race") {
        // the same pipeline twice
        let (a, b) = (spawn(&two, &store, &[]), spawn(&two, &store, &[]));
        let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
        assert!(a.status.success() && b.status.success(), "{store}\n{}\n{}", text(&a), text(&b));
        let once = computed_by(&[&a, &b]);
        assert!(once.values().all(|n| *n == 1), "{store}: each stage computed once: {once:?}\n{}\n{}", text(&a), text(&b));
        let records = records_at(&store);
        assert_eq!(records.len(), 2);
        for r in &records {
            assert_eq!(r["status"], "ok");
            assert_eq!(record_outputs(r), expected_two, "{store}: the outputs of a run alone");
        }
        let s = Store::open_existing(&store).unwrap();
        assert_eq!(s.stage_keys().unwrap().len(), expected_two.iter().map(|(st, _, _)| st).collect::<BTreeSet<_>>().len(), "{store}: one manifest per stage");
        assert!(s.staged().unwrap().is_empty(), "{store}: nothing left staged");
        let verify = pipe().args(["verify", "--store", &store]).output().unwrap();
        assert!(verify.status.success(), "{store}: {}", text(&verify));

        // two pipelines that share their first round, on a fresh prefix or folder
        let store = format!("{store}-two");
        let (a, b) = (spawn(&one, &store, &[]), spawn(&two, &store, &[]));
        let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
        assert!(a.status.success() && b.status.success(), "{store}\n{}\n{}", text(&a), text(&b));
        let once = computed_by(&[&a, &b]);
        assert!(once.values().all(|n| *n == 1), "{store}: shared stages computed once: {once:?}\n{}\n{}", text(&a), text(&b));
        assert_eq!(once.len(), expected_two.iter().map(|(st, _, _)| st).collect::<BTreeSet<_>>().len(), "{store}: the stages of the bigger pipeline, each once");
        let mut by_name: BTreeMap<usize, Vec<(String, String, String)>> = BTreeMap::new();
        for r in records_at(&store) {
            let outs = record_outputs(&r);
            by_name.insert(outs.len(), outs);
        }
        assert_eq!(by_name.values().cloned().collect::<Vec<_>>(), vec![expected_one.clone(), expected_two.clone()], "{store}");
    }
}

#[test]
fn eight_workers_racing_exec_stage_on_one_key_commit_it_once() {
    let dir = tempfile::tempdir().unwrap();
    let file = small(dir.path(), 1);
    for store in backends(dir.path(), "exec-race") {
        run(&file, std::path::Path::new(&store), &[]);
        // train/0 as a saved job, uncommitted again: what `--executor slurm` leaves before
        // it submits the stage
        let s = Store::open_existing(&store).unwrap();
        let rec = records_at(&store).pop().unwrap();
        let key = rec["stages"].as_array().unwrap().iter().find(|st| st["stage"] == "train/0").unwrap()["key"].as_str().unwrap().to_string();
        let m: pipe::engine::executor::Manifest = s.manifest(&key).unwrap().unwrap();
        let inputs = m.inputs.iter().map(|(n, d)| (n.clone(), pipe::engine::job::JobInput::Object { digest: d.clone() })).collect();
        let job = pipe::engine::job::Job { key: key.clone(), stage: m.stage.clone(), kind: m.kind.clone(), version: m.version, params: m.params.clone(), inputs, device: "cpu".into() };
        job.save(&s).unwrap();
        s.remove_manifests(std::slice::from_ref(&key)).unwrap();

        let workers: Vec<Child> =
            (0..8).map(|_| pipe().args(["exec-stage", &key, "--store", &store]).env("RAYON_NUM_THREADS", "1").stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap()).collect();
        let outs: Vec<Output> = workers.into_iter().map(|w| w.wait_with_output().unwrap()).collect();
        for o in &outs {
            assert!(o.status.success(), "{store}: {}", text(o));
        }
        let ran_it = outs.iter().filter(|o| String::from_utf8_lossy(&o.stdout).lines().any(|l| l.starts_with("ran "))).count();
        let second_commits = outs.iter().filter(|o| text(o).contains("committed by another run first")).count();
        assert_eq!((ran_it, second_commits), (1, 0), "{store}: one worker computes and commits, seven find it committed\n{}", outs.iter().map(text).collect::<Vec<_>>().join("\n---\n"));
        let again: pipe::engine::executor::Manifest = s.manifest(&key).unwrap().unwrap();
        assert_eq!(again.outputs, m.outputs, "{store}: the same bytes as the first time");
        // idempotent: a ninth, after the commit, does nothing
        let ninth = pipe().args(["exec-stage", &key, "--store", &store]).output().unwrap();
        assert!(ninth.status.success() && String::from_utf8_lossy(&ninth.stdout).starts_with("cached"), "{}", text(&ninth));
    }
}

#[test]
fn a_worker_killed_mid_stage_on_s3_loses_its_lease_and_the_stage_resumes() {
    use std::time::{Duration, Instant};
    let Some(store) = pipe::engine::store::testing::s3_url("takeover") else { return };
    let dir = tempfile::tempdir().unwrap();
    let file = tiny_with(dir.path(), 4, 1, 1500);
    let alone = dir.path().join("alone");
    run(&file, &alone, &[]);
    let expected = output_digests(&alone);

    let env = [("PIPE_LEASE_SECONDS", "3")];
    let mut first = spawn(&file, &store, &env);
    let s = Store::open(&store).unwrap();
    let deadline = Instant::now() + Duration::from_secs(300);
    while !s.partials().unwrap().values().any(|b| *b > 0) {
        assert!(first.try_wait().unwrap().is_none() && Instant::now() < deadline, "train/0 saved no epoch");
        std::thread::sleep(Duration::from_millis(20));
    }
    first.kill().unwrap(); // SIGKILL: its lease is no longer renewed and expires
    first.wait().unwrap();
    let out = spawn(&file, &store, &env).wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("waiting for stage train/0"), "the lease held until it expired: {}", text(&out));
    let line = String::from_utf8_lossy(&out.stdout).lines().find(|l| l.starts_with("ran") && l.contains("train/0")).map(String::from);
    assert!(line.as_deref().is_some_and(|l| l.contains("resumed from")), "taken over from the dead worker's checkpoint: {}", text(&out));
    assert_eq!(record_outputs(records_at(&store).last().unwrap()), expected);
}

/// A TCP relay in front of the S3 server that can be taken down and brought back on the
/// same port: the server "goes away" with its data kept, as a network or service outage.
struct Relay {
    port: u16,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Relay {
    fn start(port: u16, upstream: String) -> Relay {
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut open: Vec<std::net::TcpStream> = Vec::new();
            while !flag.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((client, _)) => {
                        client.set_nonblocking(false).unwrap();
                        let server = std::net::TcpStream::connect(&upstream).unwrap();
                        for (mut from, mut to) in [(client.try_clone().unwrap(), server.try_clone().unwrap()), (server.try_clone().unwrap(), client.try_clone().unwrap())] {
                            std::thread::spawn(move || {
                                let _ = std::io::copy(&mut from, &mut to);
                                let _ = to.shutdown(std::net::Shutdown::Both);
                            });
                        }
                        open.extend([client, server]);
                    }
                    Err(_) => std::thread::sleep(std::time::Duration::from_millis(5)),
                }
            }
            for c in open {
                let _ = c.shutdown(std::net::Shutdown::Both);
            }
        });
        Relay { port, stop, thread: Some(thread) }
    }

    fn down(mut self) -> u16 {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        self.thread.take().unwrap().join().unwrap();
        self.port
    }
}

#[test]
fn the_s3_server_going_away_mid_run_fails_it_clearly_and_a_rerun_ends_as_a_run_alone() {
    let Some(store) = pipe::engine::store::testing::s3_url("outage") else { return };
    let upstream = std::env::var("AWS_ENDPOINT_URL").unwrap().trim_start_matches("http://").trim_end_matches('/').to_string();
    let dir = tempfile::tempdir().unwrap();
    let file = tiny_with(dir.path(), 3, 1, 1000);
    let alone = dir.path().join("alone");
    run(&file, &alone, &[]);
    let expected = output_digests(&alone);

    let relay = Relay::start(0, upstream.clone());
    let endpoint = format!("http://127.0.0.1:{}", relay.port);
    let env = [("AWS_ENDPOINT_URL", endpoint.as_str()), ("PIPE_STORE_RETRY_SECONDS", "2")];
    let mut child = spawn(&file, &store, &env);
    // down once the first stage is committed, while train/0 computes
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut seen = String::new();
    loop {
        let mut line = String::new();
        assert!(std::io::BufRead::read_line(&mut stdout, &mut line).unwrap() > 0, "the run ended early: {seen}");
        seen.push_str(&line);
        if line.starts_with("ran") && line.contains("load") {
            break;
        }
    }
    let port = relay.down();
    let out = child.wait_with_output().unwrap();
    let said = format!("{seen}{}", text(&out));
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(said.contains(&store) && said.contains("failed"), "the error names the store and what failed: {said}");

    let relay = Relay::start(port, upstream);
    let again = spawn(&file, &store, &env).wait_with_output().unwrap();
    assert!(again.status.success(), "{}", text(&again));
    assert_eq!(record_outputs(records_at(&store).last().unwrap()), expected, "the rerun ends as a run alone");
    relay.down();
}

#[test]
fn damaged_objects_in_the_bucket_are_found_on_read_and_by_verify() {
    let Some(store) = pipe::engine::store::testing::s3_url("damaged") else { return };
    let dir = tempfile::tempdir().unwrap();
    let file = small(dir.path(), 1);
    run(&file, std::path::Path::new(&store), &[]);
    let s = Store::open_existing(&store).unwrap();
    let rec = records_at(&store).pop().unwrap();
    let outputs = record_outputs(&rec);
    let ckpt = outputs.iter().find(|(st, _, _)| st == "train/0").unwrap().2.clone();
    let metrics = outputs.iter().find(|(st, n, _)| st == "evaluate/0" && n.ends_with(".parquet")).unwrap().2.clone();
    let name = |d: &str| format!("objects/{}/{}", &d[..2], &d[2..]);
    let bytes = s.read(&ckpt).unwrap();
    let mut flipped = bytes.clone();
    flipped[bytes.len() / 2] ^= 0x10;
    s.put_file(&name(&ckpt), &flipped).unwrap();
    let m = s.read(&metrics).unwrap();
    s.put_file(&name(&metrics), &m[..m.len() / 2]).unwrap();

    let read = s.read(&ckpt).unwrap_err().to_string();
    assert!(read.contains("corrupt") && read.contains(&store), "{read}");
    let verify = pipe().args(["verify", "--store", &store, "--json"]).output().unwrap();
    assert_eq!(verify.status.code(), Some(1), "{}", text(&verify));
    let report: serde_json::Value = serde_json::from_slice(&verify.stdout).unwrap();
    let corrupt: BTreeSet<&str> = report["corrupt"].as_array().unwrap().iter().map(|o| o["digest"].as_str().unwrap()).collect();
    assert_eq!(corrupt, BTreeSet::from([ckpt.as_str(), metrics.as_str()]), "{report}");
    // repaired, the next run remakes exactly what was lost, to the same bytes
    let repair = pipe().args(["verify", "--repair", "--store", &store]).output().unwrap();
    assert_eq!(repair.status.code(), Some(0), "{}", text(&repair));
    let rerun = run(&file, std::path::Path::new(&store), &[]);
    assert!(ran(&rerun).contains(&"train/0".to_string()), "{}", text(&rerun));
    assert_eq!(record_outputs(records_at(&store).last().unwrap()), outputs);
}

#[test]
fn gc_on_both_backends_frees_what_only_old_runs_made_and_never_runs_under_a_run() {
    let dir = tempfile::tempdir().unwrap();
    let file = small(dir.path(), 1);
    for store in backends(dir.path(), "gc") {
        let at = std::path::Path::new(&store);
        run(&file, at, &[]);
        run(&file, at, &["train.lr=0.04"]);
        let records = records_at(&store);
        let (old, new) = (&records[0], &records[1]);
        let keys = |r: &serde_json::Value| r["stages"].as_array().unwrap().iter().map(|s| s["key"].as_str().unwrap().to_string()).collect::<BTreeSet<_>>();
        let objects = |r: &serde_json::Value| record_outputs(r).into_iter().map(|(_, _, d)| d).collect::<BTreeSet<_>>();
        let old_only: BTreeSet<String> = keys(old).difference(&keys(new)).cloned().collect();
        let old_objects: BTreeSet<String> = objects(old).difference(&objects(new)).cloned().collect();

        // a run registered on the store: gc deletes nothing and says why
        let s = Store::open_existing(&store).unwrap();
        let writer = s.lock().unwrap();
        let refused = pipe().args(["gc", "--keep-last", "1", "--store", &store]).output().unwrap();
        assert_eq!(refused.status.code(), Some(1), "{store}: {}", text(&refused));
        assert!(text(&refused).contains("locked by a running `pipe run`"), "{}", text(&refused));
        drop(writer);

        let done = pipe().args(["gc", "--keep-last", "1", "--json", "--store", &store]).output().unwrap();
        assert!(done.status.success(), "{store}: {}", text(&done));
        let report: serde_json::Value = serde_json::from_slice(&done.stdout).unwrap();
        let removed: BTreeSet<String> = report["removed_manifests"].as_array().unwrap().iter().map(|k| k.as_str().unwrap().to_string()).collect();
        assert_eq!(removed, old_only, "{store}");
        assert!(report["freed_bytes"].as_u64().unwrap() > 0);
        for d in &old_objects {
            assert!(!s.has_object(d), "{store}: {d} was only the old run's");
        }
        for d in &objects(new) {
            assert!(s.has_object(d), "{store}: {d} is the kept run's");
        }
        assert!(ran(&run(&file, at, &["train.lr=0.04"])).is_empty(), "{store}: the kept run is still cached");
        let verify = pipe().args(["verify", "--store", &store]).output().unwrap();
        assert!(verify.status.success(), "{store}: {}", text(&verify));

        // and while gc holds the store, a run is refused with nothing written
        let cleaner = s.try_lock().unwrap().expect("no run holds the store");
        let before = records_at(&store).len();
        let refused = pipe().arg("run").arg(&file).args(["--store", &store]).output().unwrap();
        assert_eq!(refused.status.code(), Some(1), "{store}: {}", text(&refused));
        assert!(text(&refused).contains("pipe gc"), "{}", text(&refused));
        assert_eq!(records_at(&store).len(), before, "{store}: no record of the refused run");
        drop(cleaner);
    }
}
