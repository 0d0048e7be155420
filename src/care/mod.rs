//! Store care: `pipe gc` frees what no run record needs any more, `pipe verify` proves that
//! what the store keeps is still what was written.
//!
//! The roots of the store are its run records. A record names the stages it ran or reused;
//! their manifests name the objects they read and wrote. Everything else under `objects/`
//! and `stages/` can only have come from runs whose records are gone, and `tmp/` holds
//! debris of killed writers. `partial/` is the resumption state of an interrupted run, so gc
//! keeps it unless asked.
//!
//! gc deletes roots first, then manifests (each batch durable before the next), then
//! objects: a crash at any point leaves garbage for the next gc, never a committed stage
//! whose outputs are gone.

use crate::engine::executor::{Manifest, RunRecord};
use crate::engine::fault;
use crate::engine::graph::key_of;
use crate::engine::store::{Digest, Held, Store};
use crate::UserError;
use anyhow::{anyhow, bail, Result};
use indicatif::{ProgressBar, ProgressStyle};
use rayon::prelude::*;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

pub struct GcOptions {
    pub keep_last: Option<usize>,
    pub dry_run: bool,
    pub partials: bool,
    pub json: bool,
}

/// How many things, and their size on disk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Tally {
    pub count: usize,
    pub bytes: u64,
}

impl Tally {
    fn add(&mut self, bytes: u64) {
        self.count += 1;
        self.bytes += bytes;
    }
}

#[derive(Debug, Serialize)]
pub struct GcReport {
    pub store: String,
    pub dry_run: bool,
    pub kept_runs: Vec<String>,
    pub runs: Tally,
    pub manifests: Tally,
    pub objects: Tally,
    pub tmp: Tally,
    /// Resumption checkpoints found; freed only when `partials_removed`.
    pub partials: Tally,
    pub partials_removed: bool,
    /// What is (or, in a dry run, would be) freed, in bytes.
    pub freed_bytes: u64,
    pub removed_runs: Vec<String>,
    pub removed_manifests: Vec<String>,
    pub removed_objects: Vec<Digest>,
    pub removed_partials: Vec<String>,
}

/// `pipe gc`.
pub fn gc(root: &Path, opts: &GcOptions) -> Result<()> {
    if opts.keep_last == Some(0) {
        bail!(UserError("--keep-last 0 would delete every run and everything they made; to empty the store, remove its directory".into()));
    }
    let store = Store::open_existing(root)?;
    // even a dry run: its numbers are only true if no run is adding to the store meanwhile
    let _lock = lock(&store, "gc")?;
    let report = collect(&store, opts)?;
    if !opts.dry_run {
        apply(&store, &report)?;
    }
    if opts.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print_gc(&report);
    }
    Ok(())
}

fn lock(store: &Store, what: &str) -> Result<Held> {
    // exit 1, not 2: nothing the user typed is wrong, the store is busy
    store.try_lock()?.ok_or_else(|| anyhow!("the store {} is locked by a running `pipe run`; {what} deletes nothing under a running pipeline: try again once it ends", store.location()))
}

/// What gc would remove; nothing is touched.
pub fn collect(store: &Store, opts: &GcOptions) -> Result<GcReport> {
    // sizes from the listings: on object storage a request per record would be thousands
    let run_bytes = store.run_sizes()?;
    let ids: Vec<String> = run_bytes.keys().cloned().collect();
    let split = opts.keep_last.map_or(0, |n| ids.len().saturating_sub(n));
    let (old, kept) = ids.split_at(split);

    let mut live_keys = BTreeSet::new();
    let mut live_objects = BTreeSet::new();
    for id in kept {
        // a root that cannot be read could protect anything: deleting on a guess loses data
        let record: RunRecord = match store.run(id) {
            Ok(Some(r)) => r,
            Ok(None) => continue,
            Err(e) => bail!("{e:#}: gc cannot tell what run {id} needs; fix or remove {} first", store.run_location(id)),
        };
        for s in record.stages {
            live_objects.extend(s.outputs.into_values().map(|o| o.digest));
            live_keys.insert(s.key);
        }
    }
    for key in &live_keys {
        let manifest: Manifest = match store.manifest(key) {
            Ok(Some(m)) => m,
            Ok(None) => continue,
            Err(e) => bail!("{e:#}: gc cannot tell what stage {key} needs; `pipe verify --repair` uncommits it"),
        };
        // inputs too: a kept stage's provenance must stay readable, and a key that names a
        // raw file's digest simply has no object to keep
        live_objects.extend(manifest.inputs.into_values());
        live_objects.extend(manifest.outputs.into_values().map(|o| o.digest));
    }

    let mut r = GcReport {
        store: store.location(),
        dry_run: opts.dry_run,
        kept_runs: kept.to_vec(),
        runs: Tally::default(),
        manifests: Tally::default(),
        objects: Tally::default(),
        tmp: Tally::default(),
        partials: Tally::default(),
        partials_removed: opts.partials,
        freed_bytes: 0,
        removed_runs: Vec::new(),
        removed_manifests: Vec::new(),
        removed_objects: Vec::new(),
        removed_partials: Vec::new(),
    };
    for id in old {
        r.runs.add(run_bytes.get(id).copied().unwrap_or(0));
        r.removed_runs.push(id.clone());
    }
    for (key, bytes) in store.manifest_sizes()?.into_iter().filter(|(k, _)| !live_keys.contains(k)) {
        r.manifests.add(bytes);
        r.removed_manifests.push(key);
    }
    for (d, bytes) in store.objects()?.into_iter().filter(|(d, _)| !live_objects.contains(d)) {
        r.objects.add(bytes);
        r.removed_objects.push(d);
    }
    for entry in store.staged()? {
        r.tmp.add(entry.bytes);
    }
    for (key, bytes) in store.partials()? {
        r.partials.add(bytes);
        if opts.partials {
            r.removed_partials.push(key);
        }
    }
    r.freed_bytes = r.runs.bytes + r.manifests.bytes + r.objects.bytes + r.tmp.bytes + if opts.partials { r.partials.bytes } else { 0 };
    Ok(r)
}

/// Removes what `collect` found, roots first and objects last.
pub fn apply(store: &Store, r: &GcReport) -> Result<()> {
    store.remove_runs(&r.removed_runs)?;
    store.remove_manifests(&r.removed_manifests)?;
    store.remove_objects(&r.removed_objects)?;
    store.clear_debris()?;
    store.remove_partials(&r.removed_partials)
}

/// 1536 -> "1.5 KiB".
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

fn print_gc(r: &GcReport) {
    let verb = if r.dry_run { "would free" } else { "freed" };
    let total_runs = r.kept_runs.len() + r.runs.count;
    println!("gc of {}: keeping {} of {total_runs} run records{}", r.store, r.kept_runs.len(), if r.dry_run { " (dry run: nothing is deleted)" } else { "" });
    let line = |what: &str, t: &Tally| println!("  {what:<12} {:>6}  {:>10}  ({} bytes)", t.count, human_bytes(t.bytes), t.bytes);
    line("run records", &r.runs);
    line("manifests", &r.manifests);
    line("objects", &r.objects);
    line("tmp files", &r.tmp);
    if r.partials_removed {
        line("partials", &r.partials);
    }
    println!("{verb} {} ({} bytes)", human_bytes(r.freed_bytes), r.freed_bytes);
    if !r.partials_removed && r.partials.count > 0 {
        println!("kept {} partial checkpoint dirs ({}, {} bytes): an interrupted run resumes from them; --partials deletes them", r.partials.count, human_bytes(r.partials.bytes), r.partials.bytes);
    }
}

/// A manifest output that names an object.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Referrer {
    pub key: String,
    pub stage: String,
    pub output: String,
}

#[derive(Debug, Serialize)]
pub struct BadObject {
    pub digest: Digest,
    pub path: String,
    /// Why it is bad: what its bytes hash to, or why they could not be read.
    pub reason: String,
    pub referenced_by: Vec<Referrer>,
}

#[derive(Debug, Serialize)]
pub struct BadFile {
    pub name: String,
    pub path: String,
    pub error: String,
}

#[derive(Debug, Serialize)]
pub struct VerifyReport {
    pub store: String,
    pub objects: usize,
    pub manifests: usize,
    pub runs: usize,
    pub corrupt: Vec<BadObject>,
    pub missing: Vec<BadObject>,
    pub bad_manifests: Vec<BadFile>,
    pub bad_runs: Vec<BadFile>,
    /// With --repair: damaged run records removed, stages uncommitted (they rerun on the
    /// next `pipe run`) and corrupt objects removed.
    pub removed_runs: Vec<String>,
    pub uncommitted: Vec<String>,
    pub removed_objects: Vec<Digest>,
    pub intact: bool,
}

impl VerifyReport {
}

/// `pipe verify`.
pub fn verify(root: &Path, repair: bool, json: bool) -> Result<()> {
    let store = Store::open_existing(root)?;
    // without --repair it only reads: objects are immutable and written atomically, so it
    // may run beside a `pipe run`
    let _lock = if repair { Some(lock(&store, "verify --repair")?) } else { None };
    let mut report = check(&store)?;
    if repair && !report.intact {
        repair_store(&store, &mut report)?;
    }
    if json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print_verify(&report);
    }
    if report.intact {
        return Ok(());
    }
    let what = format!(
        "{} corrupt objects, {} missing objects, {} unreadable manifests, {} unreadable run records",
        report.corrupt.len(),
        report.missing.len(),
        report.bad_manifests.len(),
        report.bad_runs.len()
    );
    bail!("the store {} is damaged: {what}; `pipe verify --repair` uncommits the stages concerned so that the next `pipe run` remakes them, and removes damaged run records", store.location());
}

/// Rehashes every object and checks every manifest and run record; changes nothing.
pub fn check(store: &Store) -> Result<VerifyReport> {
    let names = store.objects()?;
    let total: u64 = names.iter().map(|(_, bytes)| bytes).sum();
    let bar = if names.len() >= 100 || total >= 1 << 28 { ProgressBar::new(total) } else { ProgressBar::hidden() };
    bar.set_style(ProgressStyle::with_template("verify  {msg:<12} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}").expect("valid template").progress_chars("=> "));
    bar.set_message(format!("{} objects", names.len()));
    // digest -> None when intact, Some(reason) when not; an object that vanished while we
    // looked (a concurrent gc) is simply not in the store
    let hashed: BTreeMap<Digest, Option<String>> = names
        .par_iter()
        .filter_map(|(d, bytes)| {
            let res = store.rehash(d);
            bar.inc(*bytes);
            match res {
                Ok(Some(actual)) if actual == *d => Some((d.clone(), None)),
                Ok(Some(actual)) => Some((d.clone(), Some(format!("its bytes hash to {actual}")))),
                Ok(None) => None,
                Err(e) => Some((d.clone(), Some(format!("unreadable: {e:#}")))),
            }
        })
        .collect();
    bar.finish_and_clear();

    let mut corrupt: BTreeMap<Digest, BadObject> = BTreeMap::new();
    let mut missing: BTreeMap<Digest, BadObject> = BTreeMap::new();
    for (d, reason) in &hashed {
        if let Some(reason) = reason {
            corrupt.insert(d.clone(), bad_object(store, d, reason.clone()));
        }
    }
    let mut keys = store.stage_keys()?;
    keys.sort();
    let mut bad_manifests = Vec::new();
    for key in &keys {
        let bad = |error: String| BadFile { name: key.clone(), path: store.manifest_location(key), error };
        let m: Manifest = match store.manifest(key) {
            Ok(Some(m)) => m,
            Ok(None) => continue,
            Err(e) => {
                bad_manifests.push(bad(format!("{e:#}")));
                continue;
            }
        };
        // the seal proves the file is what was written; the key proves it describes the
        // stage stored under it
        let recomputed = key_of(&m.kind, m.version, &m.params, &m.inputs);
        if recomputed != *key || m.key != *key {
            bad_manifests.push(bad(format!("its kind, version, params and inputs make the key {recomputed}, not the key {key} it is stored under")));
            continue;
        }
        for (output, o) in &m.outputs {
            let referrer = Referrer { key: key.clone(), stage: m.stage.clone(), output: output.clone() };
            let state = match hashed.get(&o.digest) {
                Some(state) => Some(state.clone()),
                // committed after the listing (a run beside us): check it now
                None if store.has_object(&o.digest) => Some(store.read(&o.digest).err().map(|e| format!("{e:#}"))),
                None => None,
            };
            match state {
                Some(None) => {}
                Some(Some(reason)) => corrupt.entry(o.digest.clone()).or_insert_with(|| bad_object(store, &o.digest, reason)).referenced_by.push(referrer),
                None => missing.entry(o.digest.clone()).or_insert_with(|| bad_object(store, &o.digest, "absent".into())).referenced_by.push(referrer),
            }
        }
    }
    let runs = store.run_ids()?;
    let bad_runs: Vec<BadFile> =
        runs.iter().filter_map(|id| store.run::<RunRecord>(id).err().map(|e| BadFile { name: id.clone(), path: store.run_location(id), error: format!("{e:#}") })).collect();
    let intact = corrupt.is_empty() && missing.is_empty() && bad_manifests.is_empty() && bad_runs.is_empty();
    Ok(VerifyReport {
        store: store.location(),
        objects: hashed.len(),
        manifests: keys.len(),
        runs: runs.len(),
        corrupt: corrupt.into_values().collect(),
        missing: missing.into_values().collect(),
        bad_manifests,
        bad_runs,
        removed_runs: Vec::new(),
        uncommitted: Vec::new(),
        removed_objects: Vec::new(),
        intact,
    })
}

fn bad_object(store: &Store, digest: &str, reason: String) -> BadObject {
    BadObject { digest: digest.to_string(), path: store.object_location(digest), reason, referenced_by: Vec::new() }
}

/// Removes damaged run records, uncommits every stage that names a corrupt or missing
/// output or whose manifest is damaged, then removes the corrupt objects: the executor
/// reruns an uncommitted stage, and with the same inputs it makes the same bytes again.
///
/// A kill between any two steps is safe: each step is durable before the next, a manifest
/// goes before its objects, and a corrupt object left behind is replaced, not trusted, when
/// its stage is committed again (`Store::write` rehashes an existing object).
fn repair_store(store: &Store, r: &mut VerifyReport) -> Result<()> {
    let mut keys: BTreeSet<String> = r.corrupt.iter().chain(&r.missing).flat_map(|o| o.referenced_by.iter().map(|x| x.key.clone())).collect();
    keys.extend(r.bad_manifests.iter().map(|b| b.name.clone()));
    r.removed_runs = r.bad_runs.iter().map(|b| b.name.clone()).collect();
    r.uncommitted = keys.into_iter().collect();
    r.removed_objects = r.corrupt.iter().map(|o| o.digest.clone()).collect();
    for id in &r.removed_runs {
        fault::point("repair");
        store.remove_runs(std::slice::from_ref(id))?;
    }
    for key in &r.uncommitted {
        fault::point("repair");
        store.remove_manifests(std::slice::from_ref(key))?;
    }
    for d in &r.removed_objects {
        fault::point("repair");
        store.remove_objects(std::slice::from_ref(d))?;
    }
    r.intact = true;
    Ok(())
}

fn print_verify(r: &VerifyReport) {
    let print_objects = |title: &str, list: &[BadObject]| {
        if list.is_empty() {
            return;
        }
        println!("{title}:");
        for o in list {
            println!("  {}  {}  {}", o.digest, o.path, o.reason);
            for x in &o.referenced_by {
                println!("      output {} of {} (stage {})", x.output, x.stage, x.key);
            }
            if o.referenced_by.is_empty() {
                println!("      named by no manifest");
            }
        }
    };
    print_objects("corrupt objects (bytes differ from their name)", &r.corrupt);
    print_objects("missing objects (named by a manifest, absent)", &r.missing);
    for (title, list) in [("damaged manifests", &r.bad_manifests), ("damaged run records", &r.bad_runs)] {
        if !list.is_empty() {
            println!("{title}:");
            for b in list {
                println!("  {}  {}", b.path, b.error);
            }
        }
    }
    if !r.uncommitted.is_empty() || !r.removed_objects.is_empty() || !r.removed_runs.is_empty() {
        println!(
            "repaired: removed {} damaged run records, uncommitted {} stages (the next `pipe run` remakes them), removed {} corrupt objects",
            r.removed_runs.len(),
            r.uncommitted.len(),
            r.removed_objects.len()
        );
    }
    if r.corrupt.is_empty() && r.missing.is_empty() && r.bad_manifests.is_empty() && r.bad_runs.is_empty() {
        use crate::audit::text::count;
        println!("{}, {}, {}: all intact", count(r.objects, "object"), count(r.manifests, "manifest"), count(r.runs, "run"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::executor::{OutputInfo, RunStage};
    use serde_json::json;
    use std::fs;
    use std::path::PathBuf;

    /// Where a directory store keeps an object (the layout is pinned in the store's tests).
    fn object_path(root: &Path, d: &str) -> PathBuf {
        root.join("objects").join(&d[..2]).join(&d[2..])
    }

    /// A manifest whose key is the real key of what it records.
    fn manifest(stage: &str, inputs: &[(&str, &str)], outputs: &[(&str, &str)]) -> Manifest {
        let inputs: BTreeMap<String, String> = inputs.iter().map(|(n, d)| (n.to_string(), d.to_string())).collect();
        Manifest {
            key: key_of("k", 1, &json!({"stage": stage}), &inputs),
            stage: stage.into(),
            kind: "k".into(),
            version: 1,
            params: json!({"stage": stage}),
            inputs,
            outputs: outputs.iter().map(|(n, d)| (n.to_string(), OutputInfo { digest: d.to_string(), bytes: 1 })).collect(),
            summary: json!({}),
            device: "cpu".into(),
            pipe_version: "0".into(),
            started_at: "t".into(),
            seconds: 0.0,
            resumed: None,
        }
    }

    fn record(id: &str, stages: &[&Manifest]) -> RunRecord {
        RunRecord {
            id: id.into(),
            pipeline: "p".into(),
            file: "p.toml".into(),
            overrides: vec![],
            spec: json!({}),
            started_at: "t".into(),
            finished_at: None,
            status: "ok".into(),
            error: None,
            device: "cpu".into(),
            seconds: 0.0,
            stages: stages
                .iter()
                .map(|m| RunStage { stage: m.stage.clone(), kind: m.kind.clone(), key: m.key.clone(), status: "ran".into(), seconds: 0.0, outputs: m.outputs.clone(), summary: json!({}) })
                .collect(),
            stopped_early: None,
            selected: None,
            pipe_version: None,
            member: None,
        }
    }

    fn opts(keep_last: Option<usize>, partials: bool) -> GcOptions {
        GcOptions { keep_last, dry_run: false, partials, json: false }
    }

    /// Keys of the stages of [`two_runs`].
    struct Keys {
        load: String,
        t1: String,
    }

    /// Two runs sharing `load`; run 2's `train` also read an object that is no stage's
    /// output in any kept run (an input-only object), which must survive.
    fn two_runs(store: &Store) -> Result<(Digest, Digest, Digest, Digest, Keys)> {
        let shared = store.write(b"shared")?;
        let only1 = store.write(b"only run 1")?;
        let only2 = store.write(b"only run 2")?;
        let input_only = store.write(b"read by run 2, made by run 1")?;
        let load = manifest("load", &[("raw", &digest_bytes_of("raw file"))], &[("data", &shared)]);
        let t1 = manifest("train/0", &[("data", &shared)], &[("ckpt", &only1), ("extra", &input_only)]);
        let t2 = manifest("train/0", &[("data", &shared), ("init", &input_only)], &[("ckpt", &only2)]);
        for m in [&load, &t1, &t2] {
            store.commit_manifest(&m.key, m)?;
        }
        store.write_run("2024a", &record("2024a", &[&load, &t1]))?;
        store.write_run("2024b", &record("2024b", &[&load, &t2]))?;
        Ok((shared, only1, only2, input_only, Keys { load: load.key, t1: t1.key }))
    }

    fn digest_bytes_of(s: &str) -> Digest {
        crate::engine::store::digest_bytes(s.as_bytes())
    }

    #[test]
    fn keep_last_frees_what_only_old_runs_needed_and_keeps_inputs() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let store = Store::open(dir.path())?;
        let (shared, only1, only2, input_only, keys) = two_runs(&store)?;
        fs::write(dir.path().join("tmp/123-0.tmp"), b"debris")?;
        store.write_partial("kinterrupted", "epoch", b"")?; // 32 bytes: its trailer

        let all = collect(&store, &opts(None, false))?;
        assert!(all.removed_objects.is_empty() && all.removed_manifests.is_empty() && all.removed_runs.is_empty(), "{all:?}");
        assert_eq!(all.tmp, Tally { count: 1, bytes: 6 });

        let r = collect(&store, &opts(Some(1), false))?;
        assert_eq!(r.removed_runs, ["2024a"]);
        assert_eq!(r.removed_manifests, std::slice::from_ref(&keys.t1));
        assert_eq!(r.removed_objects, std::slice::from_ref(&only1));
        assert_eq!(r.partials, Tally { count: 1, bytes: 32 });
        assert_eq!(r.freed_bytes, r.runs.bytes + r.manifests.bytes + 10 + 6);
        apply(&store, &r)?;
        for d in [&shared, &only2, &input_only] {
            assert!(store.verify(d), "{d} must survive");
        }
        assert!(!object_path(dir.path(), &only1).exists());
        assert_eq!(object_path(dir.path(), &only1).parent().unwrap().exists(), store.objects()?.iter().any(|(d, _)| d[..2] == only1[..2]), "no empty fan-out directory is left");
        assert_eq!(store.run_ids()?, ["2024b"]);
        assert!(store.manifest::<Manifest>(&keys.t1)?.is_none());
        assert_eq!(fs::read_dir(dir.path().join("tmp"))?.count(), 0);
        assert!(store.has_partial("kinterrupted"), "partials stay without --partials");

        let again = collect(&store, &opts(None, true))?;
        assert_eq!((again.objects.count, again.manifests.count, again.runs.count), (0, 0, 0));
        assert_eq!(again.removed_partials, ["kinterrupted"]);
        apply(&store, &again)?;
        assert!(!store.has_partial("kinterrupted") && !dir.path().join("partial/kinterrupted").exists());
        assert!(check(&store)?.intact);
        Ok(())
    }

    #[test]
    fn an_unreadable_root_stops_gc() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let store = Store::open(dir.path())?;
        two_runs(&store)?;
        fs::write(dir.path().join("runs/2024b.json"), b"{ not json")?;
        let err = collect(&store, &opts(None, false)).unwrap_err().to_string();
        assert!(err.contains("2024b") && err.contains("cannot tell"), "{err}");
        // an old record is deleted unread, so it cannot block
        fs::write(dir.path().join("runs/2024a.json"), b"{ not json")?;
        store.write_run("2024b", &record("2024b", &[]))?;
        assert_eq!(collect(&store, &opts(Some(1), false))?.removed_runs, ["2024a"]);
        Ok(())
    }

    #[test]
    fn verify_names_corrupt_and_missing_objects_and_repair_uncommits_their_stages() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let store = Store::open(dir.path())?;
        let (shared, only1, _, _, keys) = two_runs(&store)?;
        let clean = check(&store)?;
        assert!(clean.intact);
        assert_eq!((clean.objects, clean.manifests, clean.runs), (4, 3, 2));

        fs::write(object_path(dir.path(), &shared), b"sharEd")?;
        fs::remove_file(object_path(dir.path(), &only1))?;
        fs::write(dir.path().join("stages/kbroken.json"), b"{")?;
        let r = check(&store)?;
        assert!(!r.intact);
        assert_eq!(r.corrupt.len(), 1);
        assert_eq!(r.corrupt[0].digest, shared);
        assert!(r.corrupt[0].reason.contains(&digest_bytes_of("sharEd")));
        assert_eq!(r.corrupt[0].referenced_by, [Referrer { key: keys.load.clone(), stage: "load".into(), output: "data".into() }]);
        assert_eq!(r.missing.len(), 1);
        assert_eq!(r.missing[0].digest, only1);
        assert_eq!(r.missing[0].referenced_by[0].key, keys.t1);
        assert_eq!(r.bad_manifests.len(), 1);

        let mut r = r;
        repair_store(&store, &mut r)?;
        assert!(r.intact);
        let mut expected = vec!["kbroken".to_string(), keys.load.clone(), keys.t1.clone()];
        expected.sort();
        assert_eq!(r.uncommitted, expected);
        let after = check(&store)?;
        assert!(after.intact, "{after:?}");
        assert_eq!(after.manifests, 1);
        Ok(())
    }

    #[test]
    fn human_bytes_reads_well() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(5 << 30), "5.0 GiB");
    }
}
