//! The content-addressed artifact store, in the manner of cacache: a few verbs over a
//! directory ([`dir`]) or an object-storage prefix ([`object`]: S3, GCS, Azure), with one
//! layout on both.
//!
//! ```text
//! objects/ab/cdef...   immutable bytes, named by their blake3 digest
//! stages/<key>.json    a stage's manifest: written last, it is the stage's commit point
//! partial/<key>/<attempt>/  checkpoints of a stage still running (resumption), one folder
//!                      per attempt (process) at it, all removed on commit
//! runs/<id>.json       one record per `pipe run`
//! tmp/                 staging for atomic writes (same filesystem, so rename is atomic)
//! live/<run>.json      the heartbeat of a running stage (position, rate, ETA); removed when
//!                      the run ends, meaningful only while the run is alive
//! live/<run>.lock      a run's liveness: flocked (directory), or renewed (object storage)
//! leases/<key>.*       the lease on computing a stage: flocked, or an object with an expiry
//! sweeps/              a sweep's tables and figures
//! layout               `pipe-store layout 1`: the version of this layout, checked on open
//! ```
//!
//! On a directory every write goes temp file -> fsync -> rename -> fsync(dir), so a crash leaves either the
//! old state or the new one, never a torn file, and a failed write removes its temp file.
//! Nothing is trusted unchecked: every object read is rehashed, an object path that already
//! exists is rehashed before a commit relies on it, manifests and run records are sealed
//! with a digest of their own content, and resumption checkpoints carry a digest trailer.
//! On object storage a PUT is atomic already, and create-if-absent is `If-None-Match: *`.

mod dir;
mod object;
pub mod testing;

use crate::engine::fault;
use crate::engine::graph::canonical_json;
use anyhow::{bail, Context, Result};
use serde::{de::DeserializeOwned, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// A blake3 digest in lowercase hex.
pub type Digest = String;

pub fn digest_bytes(bytes: &[u8]) -> Digest {
    blake3::hash(bytes).to_hex().to_string()
}

/// The digest of a file's bytes, or of a directory tree: blake3 over the sorted list of
/// (relative path, file digest), so renaming, adding or changing any file changes it.
pub fn digest_file(path: &Path) -> Result<Digest> {
    if path.is_dir() {
        let mut entries = Vec::new();
        collect_files(path, path, &mut entries)?;
        entries.sort();
        let mut h = blake3::Hasher::new();
        for (rel, d) in entries {
            h.update(rel.as_bytes());
            h.update(b"\0");
            h.update(d.as_bytes());
            h.update(b"\n");
        }
        return Ok(h.finalize().to_hex().to_string());
    }
    let mut h = blake3::Hasher::new();
    let f = File::open(path).with_context(|| format!("reading {}", path.display()))?;
    h.update_reader(f).with_context(|| format!("reading {}", path.display()))?;
    Ok(h.finalize().to_hex().to_string())
}

fn collect_files(root: &Path, dir: &Path, out: &mut Vec<(String, Digest)>) -> Result<()> {
    for entry in fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let path = entry?.path();
        if path.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.')) {
            continue; // hidden files are not data (the folder loader skips them too)
        }
        if path.is_dir() {
            collect_files(root, &path, out)?;
        } else {
            let rel = path.strip_prefix(root).unwrap_or(&path).to_string_lossy().to_string();
            out.push((rel, digest_file(&path)?));
        }
    }
    Ok(())
}

/// One stored name in a listing: its name below the listed folder, its size and when it
/// was last written.
#[derive(Clone, Debug)]
pub struct Entry {
    pub name: String,
    pub bytes: u64,
    pub modified: SystemTime,
}

/// Something held for as long as the value lives: the writer lock, a lease, a run's
/// liveness. Letting go is dropping it (and the backend's end of it ends with the process
/// however it dies: a flock, or an object that stops being renewed and expires).
pub struct Held(#[allow(dead_code)] Box<dyn Send>);

impl std::fmt::Debug for Held {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Held")
    }
}

/// The right to compute one stage ([`Store::lease`]).
pub type Lease = Held;

/// How a write takes its name.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Publish {
    /// Readers see the old bytes or the whole new ones.
    Replace,
    /// The first writer wins whole; a later one learns it lost (`Ok(false)`).
    IfAbsent,
    /// As `Replace`, but not made durable: the heartbeat, worthless after a crash.
    Volatile,
    /// A content-addressed object: one already under the name holds the same bytes (the
    /// caller checked it is not a torn one), so create-if-absent, and losing is success.
    Content,
}

/// The verbs a store needs from where its bytes live. Names are `/`-separated and relative
/// to the store (`objects/ab/cdef...`, `stages/<key>.json`); everything above this trait
/// (sealing, rehashing, checkpoints, leases' meaning) is the same on every backend.
pub(crate) trait Backend: Send + Sync {
    /// The store, as the user would name it (a path, or a URL without credentials).
    fn location(&self) -> String;
    /// Where one name lives, for messages.
    fn locate(&self, name: &str) -> String;
    fn get(&self, name: &str) -> Result<Option<Vec<u8>>>;
    fn size(&self, name: &str) -> Result<Option<u64>>;
    /// The blake3 digest of what `name` holds, read as a stream; None when absent.
    fn digest(&self, name: &str) -> Result<Option<Digest>>;
    /// Whether `name` already holds these bytes (content-addressed objects are not
    /// written twice): a torn or rewritten one does not count.
    fn holds(&self, name: &str, digest: &str, len: u64) -> bool;
    fn put(&self, name: &str, bytes: &[u8], how: Publish) -> Result<bool>;
    /// Every name below folder `dir` (recursively), relative to it; empty when none.
    fn list(&self, dir: &str) -> Result<Vec<Entry>>;
    /// Removes names (absent ones are fine), durably on return.
    fn delete(&self, names: &[String]) -> Result<()>;
    /// The writer lock, shared by runs ([`Store::lock`]).
    fn lock(&self) -> Result<Held>;
    /// The writer lock held exclusively, or None while any writer holds it.
    fn try_lock(&self) -> Result<Option<Held>>;
    /// Removes what dead writers left (staging, heartbeats, leases): with the lock held
    /// exclusively.
    fn clear_debris(&self) -> Result<()>;
    fn lease(&self, key: &str) -> Result<Option<Held>>;
    fn hold_alive(&self, run: &str) -> Result<Held>;
    fn run_alive(&self, run: &str) -> bool;
    /// How often to look again while waiting on another writer.
    fn poll(&self) -> Duration;
    /// How often a heartbeat is worth writing.
    fn live_every(&self) -> Duration;
    /// Requests made so far, by verb (object storage only).
    fn requests(&self) -> Option<Requests> {
        None
    }
}

/// Requests sent to object storage, by verb.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Requests {
    pub get: u64,
    pub put: u64,
    pub head: u64,
    pub list: u64,
    pub delete: u64,
}

impl Requests {
    pub fn total(&self) -> u64 {
        self.get + self.put + self.head + self.list + self.delete
    }

    pub fn since(&self, before: &Requests) -> Requests {
        Requests {
            get: self.get - before.get,
            put: self.put - before.put,
            head: self.head - before.head,
            list: self.list - before.list,
            delete: self.delete - before.delete,
        }
    }
}

impl std::fmt::Display for Requests {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} requests ({} GET, {} PUT, {} HEAD, {} LIST, {} DELETE)", self.total(), self.get, self.put, self.head, self.list, self.delete)
    }
}

pub struct Store {
    backend: Box<dyn Backend>,
    /// Names this process's resumption checkpoints apart from those of other attempts at
    /// the same stage (another process, or this one's predecessor that died).
    attempt: String,
    last_live: std::sync::Mutex<Option<std::time::Instant>>,
}

/// The version of the layout above. A pipe refuses a store of another version rather
/// than misread it; stores made before the file existed are version 1.
pub const LAYOUT_VERSION: u32 = 1;
const LAYOUT_FILE: &str = "layout";

fn layout_line(version: u32) -> String {
    format!("pipe-store layout {version}\n")
}

/// Where a store lives, from `--store` / `PIPE_STORE`: a URL with a scheme object storage
/// knows, or else a directory.
enum Location {
    Dir(PathBuf),
    Url(url::Url),
}

impl Location {
    fn parse(text: &str) -> Result<Location> {
        let Some((scheme, _)) = text.split_once("://") else { return Ok(Location::Dir(PathBuf::from(text))) };
        let bad = |why: String| crate::UserError(format!("--store {text}: {why}"));
        let url = url::Url::parse(text).map_err(|e| bad(format!("not a valid URL ({e})")))?;
        if !url.username().is_empty() || url.password().is_some() {
            // a URL ends up in run records, logs and `ps`: secrets do not belong in it
            bail!(bad("credentials do not go in the store URL; set them in the environment (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, GOOGLE_SERVICE_ACCOUNT, AZURE_STORAGE_ACCOUNT_KEY, ...)".into()));
        }
        match scheme {
            "file" => Ok(Location::Dir(url.to_file_path().map_err(|()| bad("a file:// URL needs an absolute path".into()))?)),
            "s3" | "s3a" | "gs" | "az" | "azure" | "abfs" | "abfss" | "memory" => Ok(Location::Url(url)),
            other => bail!(bad(format!("unknown scheme `{other}`: expected a directory, or s3://, gs://, az://, memory:// or file://"))),
        }
    }
}

impl Store {
    /// The store at `location` (a directory is made when `create`), its layout checked;
    /// whether it has a layout file.
    fn connect(location: &OsStr, create: bool) -> Result<(Store, bool)> {
        let backend: Box<dyn Backend> = match Location::parse(&location.to_string_lossy())? {
            Location::Dir(root) => Box::new(dir::DirBackend::new(&root, create)?),
            Location::Url(url) => Box::new(object::ObjectBackend::new(&url)?),
        };
        let store = Store { backend, attempt: unique_id(), last_live: Default::default() };
        let laid_out = store.check_layout()?;
        Ok((store, laid_out))
    }

    /// Opens (creating if needed) the store at `location`: a directory, or an object-store
    /// URL (`s3://bucket/prefix`).
    pub fn open<L: AsRef<OsStr> + ?Sized>(location: &L) -> Result<Store> {
        let (store, laid_out) = Store::connect(location.as_ref(), true)?;
        if !laid_out {
            store.backend.put(LAYOUT_FILE, layout_line(LAYOUT_VERSION).as_bytes(), Publish::IfAbsent)?;
        }
        Ok(store)
    }

    /// A store that may not exist yet; nothing is created (for `pipe status`).
    pub fn at<L: AsRef<OsStr> + ?Sized>(location: &L) -> Result<Store> {
        Store::connect(location.as_ref(), false).map(|(store, _)| store)
    }

    /// Opens an existing store without creating anything (for read-only commands).
    pub fn open_existing<L: AsRef<OsStr> + ?Sized>(location: &L) -> Result<Store> {
        let (store, laid_out) = Store::connect(location.as_ref(), false)?;
        // a directory store made before the layout file existed has objects/ only
        if !laid_out && !local_dir(location).is_some_and(|root| root.join("objects").is_dir()) {
            bail!(crate::UserError(format!("{} is not a pipe store (it has no `layout`); run `pipe run` first or pass --store", location.as_ref().to_string_lossy())));
        }
        Ok(store)
    }

    /// Checks the layout file of a store, if it has one (Ok(false) when it has none).
    fn check_layout(&self) -> Result<bool> {
        let Some(bytes) = self.backend.get(LAYOUT_FILE)? else { return Ok(false) };
        let text = String::from_utf8_lossy(&bytes);
        match text.trim().strip_prefix("pipe-store layout ").and_then(|v| v.parse::<u32>().ok()) {
            Some(LAYOUT_VERSION) => Ok(true),
            Some(v) => bail!(crate::UserError(format!(
                "{} is a pipe store of layout {v}; this pipe reads layout {LAYOUT_VERSION} (use the pipe that made it, or another --store)",
                self.location()
            ))),
            None => bail!(crate::UserError(format!("{}: expected `pipe-store layout N`, found {:?}", self.backend.locate(LAYOUT_FILE), text.trim()))),
        }
    }

    /// The store as the user named it: a directory, or a URL.
    pub fn location(&self) -> String {
        self.backend.location()
    }

    /// Requests sent to object storage so far (None for a directory).
    pub fn requests(&self) -> Option<Requests> {
        self.backend.requests()
    }

    /// How often to look again while waiting on another writer of the store.
    pub fn poll(&self) -> Duration {
        self.backend.poll()
    }

    fn object_name(digest: &str) -> String {
        format!("objects/{}/{}", &digest[..2], &digest[2..])
    }

    /// Where an object lives (a path or a URL), for messages and `pipe show`.
    pub fn object_location(&self, digest: &str) -> String {
        self.backend.locate(&Store::object_name(digest))
    }

    /// The size of a stored object, None when it is absent.
    pub fn object_size(&self, digest: &str) -> Result<Option<u64>> {
        self.backend.size(&Store::object_name(digest))
    }

    /// Whether an object is there (intact or not: [`Store::read`] tells).
    pub fn has_object(&self, digest: &str) -> bool {
        self.object_size(digest).is_ok_and(|s| s.is_some())
    }

    /// Stores bytes and returns their digest. An object already under that name is kept
    /// only if it still holds these bytes: a corrupt one left by an interrupted repair (or
    /// a bad disk) is replaced, never committed again.
    pub fn write(&self, bytes: &[u8]) -> Result<Digest> {
        let digest = digest_bytes(bytes);
        let name = Store::object_name(&digest);
        if !self.backend.holds(&name, &digest, bytes.len() as u64) {
            self.backend.put(&name, bytes, Publish::Content)?;
        }
        Ok(digest)
    }

    /// Reads an object, checking that its bytes still hash to its name.
    pub fn read(&self, digest: &str) -> Result<Vec<u8>> {
        let name = Store::object_name(digest);
        let bytes = self.backend.get(&name)?.with_context(|| format!("object {digest} is missing from the store ({})", self.backend.locate(&name)))?;
        let actual = digest_bytes(&bytes);
        if actual != digest {
            bail!("object {digest} is corrupt: its bytes hash to {actual} ({}); run `pipe verify` to list every damaged object, `pipe verify --repair` to have the stages that made them rerun", self.backend.locate(&name));
        }
        Ok(bytes)
    }

    /// What an object's bytes hash to, read as a stream (None when it is absent).
    pub fn rehash(&self, digest: &str) -> Result<Option<Digest>> {
        self.backend.digest(&Store::object_name(digest))
    }

    /// Rehashes an object; false when missing or corrupt.
    pub fn verify(&self, digest: &str) -> bool {
        self.rehash(digest).is_ok_and(|d| d.as_deref() == Some(digest))
    }

    /// Writes a file of the store's own (a sweep's table or figure) under `name`, whole
    /// or not at all, and says where it is.
    pub fn put_file(&self, name: &str, bytes: &[u8]) -> Result<String> {
        self.backend.put(name, bytes, Publish::Replace)?;
        Ok(self.backend.locate(name))
    }

    /// Writes a JSON record sealed with the digest of its canonical content, so that an
    /// edit (or a torn disk block) is found on read.
    fn write_sealed<T: Serialize>(&self, name: &str, record: &T, how: Publish) -> Result<bool> {
        let mut value = serde_json::to_value(record)?;
        let map = value.as_object_mut().context("a sealed record is a JSON object")?;
        map.remove(SEAL);
        let seal = digest_bytes(canonical_json(&Value::Object(map.clone())).as_bytes());
        map.insert(SEAL.into(), Value::String(seal));
        self.backend.put(name, &serde_json::to_vec_pretty(&value)?, how)
    }

    fn read_sealed<T: DeserializeOwned>(&self, name: &str) -> Result<Option<T>> {
        let Some(bytes) = self.backend.get(name)? else { return Ok(None) };
        unseal(&bytes, &self.backend.locate(name)).map(Some)
    }

    /// Writes a sealed record of the store's own under `name` (a job).
    pub fn put_sealed<T: Serialize>(&self, name: &str, record: &T) -> Result<()> {
        self.write_sealed(name, record, Publish::Replace).map(|_| ())
    }

    /// A sealed record written by [`Store::put_sealed`]; a damaged one is a [`Damaged`] error.
    pub fn get_sealed<T: DeserializeOwned>(&self, name: &str) -> Result<Option<T>> {
        self.read_sealed(name)
    }

    /// Every stored object's name, including names that no longer match their bytes, with
    /// its size.
    pub fn objects(&self) -> Result<Vec<(Digest, u64)>> {
        let mut out: Vec<(Digest, u64)> = self
            .backend
            .list("objects")?
            .into_iter()
            // objects/ab/cdef: anything else below objects/ is not an object
            .filter_map(|e| e.name.split_once('/').filter(|(fan, rest)| fan.len() == 2 && !rest.contains('/')).map(|(fan, rest)| (format!("{fan}{rest}"), e.bytes)))
            .collect();
        out.sort();
        Ok(out)
    }

    /// Removes objects. A manifest naming one of them must be removed (durably) first, or
    /// the store would hold a committed stage whose outputs are gone.
    pub fn remove_objects(&self, digests: &[Digest]) -> Result<()> {
        self.backend.delete(&digests.iter().map(|d| Store::object_name(d)).collect::<Vec<_>>())
    }

    fn manifest_name(key: &str) -> String {
        format!("stages/{key}.json")
    }

    /// Where a stage's manifest lives, for messages.
    pub fn manifest_location(&self, key: &str) -> String {
        self.backend.locate(&Store::manifest_name(key))
    }

    /// The committed manifest of a stage key, if the stage has finished; a manifest whose
    /// seal does not match its content is a [`Damaged`] error.
    pub fn manifest<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>> {
        self.read_sealed(&Store::manifest_name(key))
    }

    /// Commits a stage, whose outputs must already be stored, unless another writer
    /// committed the key first: `Ok(false)` then, and the caller reads the winner's
    /// manifest (a key names one computation, so either is right; the first stays).
    pub fn commit_manifest<T: Serialize>(&self, key: &str, manifest: &T) -> Result<bool> {
        let won = self.write_sealed(&Store::manifest_name(key), manifest, Publish::IfAbsent)?;
        self.drop_partial(key)?;
        Ok(won)
    }

    /// Commits a stage over a manifest that is there but unusable (damaged, or naming
    /// objects that are gone): the stage was computed again to replace it.
    pub fn recommit_manifest<T: Serialize>(&self, key: &str, manifest: &T) -> Result<()> {
        self.write_sealed(&Store::manifest_name(key), manifest, Publish::Replace)?;
        self.drop_partial(key)
    }

    /// Removes a committed stage's checkpoints, every attempt's. Another run computing the
    /// same key may write one there meanwhile: it is left, as debris that no run reads (the
    /// stage is committed) and `pipe gc --partials` removes.
    fn drop_partial(&self, key: &str) -> Result<()> {
        self.remove_partials(std::slice::from_ref(&key.to_string()))
    }

    /// All committed stage keys.
    pub fn stage_keys(&self) -> Result<Vec<String>> {
        Ok(self.json_sizes("stages")?.into_keys().collect())
    }

    /// Every committed manifest's size, by stage key (one listing, not a request each).
    pub fn manifest_sizes(&self) -> Result<BTreeMap<String, u64>> {
        self.json_sizes("stages")
    }

    /// The `<name>.json` records directly in `dir`, by name, with their sizes.
    fn json_sizes(&self, dir: &str) -> Result<BTreeMap<String, u64>> {
        Ok(self.backend.list(dir)?.into_iter().filter_map(|e| e.name.strip_suffix(".json").filter(|s| !s.contains('/')).map(|s| (s.to_string(), e.bytes))).collect())
    }

    /// Uncommits stages; durable on return, so that their objects may be removed after.
    pub fn remove_manifests(&self, keys: &[String]) -> Result<()> {
        self.backend.delete(&keys.iter().map(|k| Store::manifest_name(k)).collect::<Vec<_>>())
    }

    /// Keys of stages that left resumption checkpoints, with their bytes.
    pub fn partials(&self) -> Result<BTreeMap<String, u64>> {
        let mut out = BTreeMap::new();
        for e in self.backend.list("partial")? {
            let key = e.name.split('/').next().unwrap_or_default().to_string();
            *out.entry(key).or_insert(0) += e.bytes;
        }
        Ok(out)
    }

    /// Whether stage `key` left a resumption checkpoint.
    pub fn has_partial(&self, key: &str) -> bool {
        self.backend.list(&format!("partial/{key}")).is_ok_and(|l| !l.is_empty())
    }

    /// Removes every attempt's checkpoints of these stages.
    pub fn remove_partials(&self, keys: &[String]) -> Result<()> {
        let mut names = Vec::new();
        for key in keys {
            let dir = format!("partial/{key}");
            names.extend(self.backend.list(&dir)?.into_iter().map(|e| format!("{dir}/{}", e.name)));
        }
        self.backend.delete(&names)
    }

    /// Saves resumption checkpoint `name` of stage `key`, whole or not at all, with a
    /// blake3 trailer over its bytes so that a resume can tell it is the file that was
    /// written. Each attempt at a stage writes its own (`partial/<key>/<attempt>/`), so two
    /// processes that compute one stage never overwrite each other's.
    pub fn write_partial(&self, key: &str, name: &str, bytes: &[u8]) -> Result<()> {
        let mut sealed = Vec::with_capacity(bytes.len() + PARTIAL_TRAILER);
        sealed.extend_from_slice(bytes);
        sealed.extend_from_slice(blake3::hash(bytes).as_bytes());
        self.backend.put(&format!("partial/{key}/{}/{name}", self.attempt), &sealed, Publish::Replace)?;
        fault::point("partial");
        Ok(())
    }

    /// The newest intact resumption checkpoint `name` of stage `key` that any attempt left:
    /// `Ok(None)` when there is none. One that does not match its trailer is removed, with
    /// a message, and the next newest is tried.
    pub fn read_partial(&self, key: &str, name: &str) -> Result<Option<Vec<u8>>> {
        let dir = format!("partial/{key}");
        let mut found: Vec<Entry> = self.backend.list(&dir)?.into_iter().filter(|e| e.name.split_once('/').is_some_and(|(_, n)| n == name)).collect();
        found.sort_by(|a, b| b.modified.cmp(&a.modified).then_with(|| b.name.cmp(&a.name)));
        for e in found {
            let full = format!("{dir}/{}", e.name);
            let Some(mut bytes) = self.backend.get(&full)? else { continue };
            let body = bytes.len().saturating_sub(PARTIAL_TRAILER);
            if bytes.len() < PARTIAL_TRAILER || blake3::hash(&bytes[..body]).as_bytes() != &bytes[body..] {
                eprintln!("warning: the resumption checkpoint {} is damaged (its bytes do not match their digest); discarding it: the stage resumes from an older intact checkpoint if there is one, or starts over", self.backend.locate(&full));
                self.backend.delete(&[full])?;
                continue;
            }
            bytes.truncate(body);
            return Ok(Some(bytes));
        }
        Ok(None)
    }

    fn live_name(run: &str) -> String {
        format!("live/{run}.json")
    }

    /// Replaces a run's heartbeat, whole, but not durably (it is worthless after a crash)
    /// and not more often than the backend makes worthwhile (object storage: every few
    /// seconds).
    pub fn write_live(&self, run: &str, bytes: &[u8]) -> Result<()> {
        {
            let mut last = self.last_live.lock().expect("not poisoned");
            let now = std::time::Instant::now();
            if last.is_some_and(|t| now.duration_since(t) < self.backend.live_every()) {
                return Ok(());
            }
            *last = Some(now);
        }
        self.backend.put(&Store::live_name(run), bytes, Publish::Volatile).map(|_| ())
    }

    /// Every heartbeat there is (whether one is current is [`Store::run_alive`]'s to say).
    pub fn live_all(&self) -> Vec<Vec<u8>> {
        let Ok(entries) = self.backend.list("live") else { return Vec::new() };
        let mut names: Vec<String> = entries.into_iter().map(|e| e.name).filter(|n| n.ends_with(".json") && !n.contains('/')).collect();
        names.sort();
        names.iter().filter_map(|n| self.backend.get(&format!("live/{n}")).ok().flatten()).collect()
    }

    /// Marks run `run` alive for the life of the returned value, and not after its process
    /// ends however it ends. Other runs of the store each hold their own.
    pub fn hold_alive(&self, run: &str) -> Result<Held> {
        self.backend.hold_alive(run)
    }

    /// Whether run `run` is alive in some process now (a `running` record of a run that is
    /// not alive was killed).
    pub fn run_alive(&self, run: &str) -> bool {
        self.backend.run_alive(run)
    }

    /// Removes a finished run's heartbeat (its own only: other runs may be going on).
    pub fn end_live(&self, run: &str) -> Result<()> {
        self.backend.delete(&[Store::live_name(run)])
    }

    fn run_name(id: &str) -> String {
        format!("runs/{id}.json")
    }

    /// Where a run record lives, for messages.
    pub fn run_location(&self, id: &str) -> String {
        self.backend.locate(&Store::run_name(id))
    }

    /// Every run record's size, by run id (one listing, not a request each).
    pub fn run_sizes(&self) -> Result<BTreeMap<String, u64>> {
        self.json_sizes("runs")
    }

    /// Files in the staging area (debris of killed writers on a directory store), with
    /// their bytes.
    pub fn staged(&self) -> Result<Vec<Entry>> {
        self.backend.list("tmp")
    }

    pub fn write_run<T: Serialize>(&self, id: &str, record: &T) -> Result<()> {
        self.write_sealed(&Store::run_name(id), record, Publish::Replace).map(|_| ())
    }

    /// A run record; one whose seal does not match its content is a [`Damaged`] error.
    pub fn run<T: DeserializeOwned>(&self, id: &str) -> Result<Option<T>> {
        self.read_sealed(&Store::run_name(id))
    }

    /// Every run record that reads back intact, oldest first; damaged ones are skipped
    /// with a warning (`pipe ls` lists them, `pipe verify --repair` removes them).
    pub fn intact_runs<T: DeserializeOwned>(&self) -> Result<Vec<T>> {
        let mut out = Vec::new();
        for id in self.run_ids()? {
            out.extend(absent_if_damaged(self.run(&id), "skipped")?);
        }
        Ok(out)
    }

    /// Every committed manifest that reads back intact; damaged ones are skipped with a
    /// warning (the next `pipe run` recomputes their stages).
    pub fn intact_manifests<T: DeserializeOwned>(&self) -> Result<Vec<T>> {
        let mut out = Vec::new();
        for key in self.stage_keys()? {
            out.extend(absent_if_damaged(self.manifest(&key), "skipped")?);
        }
        Ok(out)
    }

    /// Run ids, oldest first (ids start with a UTC timestamp).
    pub fn run_ids(&self) -> Result<Vec<String>> {
        Ok(self.run_sizes()?.into_keys().collect())
    }

    /// Removes run records, durably: they are the roots that keep stages alive.
    pub fn remove_runs(&self, ids: &[String]) -> Result<()> {
        self.backend.delete(&ids.iter().map(|id| Store::run_name(id)).collect::<Vec<_>>())
    }

    /// Takes the store's writer lock, shared, for the life of the returned value: any
    /// number of `pipe run`s write a store at once (objects are content-addressed, a
    /// manifest is committed by the first writer only), while `pipe gc` and `verify
    /// --repair`, which delete, take it exclusively ([`Store::try_lock`]).
    pub fn lock(&self) -> Result<Held> {
        self.backend.lock()
    }

    /// The writer lock held exclusively, or None while any run (or other cleaner) holds it.
    pub fn try_lock(&self) -> Result<Option<Held>> {
        self.backend.try_lock()
    }

    /// Removes what killed writers left behind (staged files, heartbeats, leases). Called
    /// with the writer lock held exclusively, when no writer of this store is alive.
    pub fn clear_debris(&self) -> Result<()> {
        self.backend.clear_debris()
    }

    /// The lease on computing stage `key`, held until the returned value is dropped, or
    /// None while another process computes it. A process that dies loses its lease (a
    /// flock; an object lease that stops being renewed expires), and the next taker resumes
    /// from the stage's checkpoint.
    pub fn lease(&self, key: &str) -> Result<Option<Lease>> {
        self.backend.lease(key)
    }
}

/// The directory of a store at `location`, or None when it lives on object storage.
pub fn local_dir<L: AsRef<OsStr> + ?Sized>(location: &L) -> Option<PathBuf> {
    match Location::parse(&location.as_ref().to_string_lossy()) {
        Ok(Location::Dir(root)) => Some(root),
        _ => None,
    }
}

/// A name no other process takes, `<pid>-<nanoseconds>`: a checkpoint attempt, a writer's
/// registration, a lease holder, a test's prefix.
pub fn unique_id() -> String {
    let nanos = SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    format!("{}-{nanos:x}", std::process::id())
}

/// Writes `bytes` at `path`, a file outside any store (an export), so that readers see the
/// old file or the whole new one.
pub fn write_file_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    dir::publish_file(path, None, bytes, Publish::Replace).map(|_| ())
}

/// The field of a sealed record that holds the digest of the rest.
const SEAL: &str = "seal";
/// Bytes of the blake3 trailer of a resumption checkpoint.
const PARTIAL_TRAILER: usize = 32;

/// A manifest or run record whose bytes are not what pipe wrote: unparsable, unsealed, or
/// edited since. Callers treat it as absent-and-damaged, never as data.
#[derive(Debug, thiserror::Error)]
#[error("{path} is damaged: {reason}")]
pub struct Damaged {
    pub path: String,
    pub reason: String,
}

/// A read of a sealed record, with a damaged record reported (followed by what happens
/// because of it, `then`) and treated as absent; other errors stay errors.
pub fn absent_if_damaged<T>(read: Result<Option<T>>, then: &str) -> Result<Option<T>> {
    match read {
        Err(e) if e.downcast_ref::<Damaged>().is_some() => {
            eprintln!("warning: {e:#}; {then}");
            Ok(None)
        }
        other => other,
    }
}

fn unseal<T: DeserializeOwned>(bytes: &[u8], at: &str) -> Result<T> {
    let damaged = |reason: String| Damaged { path: at.to_string(), reason };
    let mut value: Value = serde_json::from_slice(bytes).map_err(|e| damaged(format!("not valid JSON ({e})")))?;
    let map = value.as_object_mut().ok_or_else(|| damaged("not a JSON object".into()))?;
    let seal = match map.remove(SEAL) {
        Some(Value::String(s)) => s,
        _ => return Err(damaged(format!("no `{SEAL}` seal (written by an older pipe, or edited)")).into()),
    };
    let actual = digest_bytes(canonical_json(&value).as_bytes());
    if actual != seal {
        return Err(damaged(format!("its content hashes to {actual}, not to its seal {seal}: it was edited or corrupted")).into());
    }
    Ok(T::deserialize(value).map_err(|e| damaged(format!("unexpected content ({e})")))?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh store on each backend there is: a directory, and a prefix on the S3 server
    /// of the environment ([`testing::s3_url`]).
    fn both(test: &str) -> Vec<(String, Option<tempfile::TempDir>)> {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut out = vec![(dir.path().display().to_string(), Some(dir))];
        out.extend(testing::s3_url(test).map(|url| (url, None)));
        out
    }

    fn object_name(d: &str) -> String {
        Store::object_name(d)
    }

    #[test]
    fn write_read_and_detect_corruption() -> Result<()> {
        for (at, _dir) in both("corruption") {
            let store = Store::open(&at)?;
            let d = store.write(b"hello")?;
            assert_eq!(d, digest_bytes(b"hello"));
            assert_eq!(store.write(b"hello")?, d, "same content, same name");
            assert_eq!(store.read(&d)?, b"hello");
            assert!(store.verify(&d) && store.has_object(&d));
            store.put_file(&object_name(&d), b"jello")?;
            let err = store.read(&d).unwrap_err().to_string();
            assert!(err.contains("corrupt") && err.contains(&at), "{at}: {err}");
            assert!(!store.verify(&d));
            assert_eq!(store.write(b"hello")?, d);
            if at.starts_with("s3://") {
                // a PUT is never torn, so only the size is checked before a write; bytes
                // changed in place (by hand) are found on read and by `pipe verify`
                assert!(!store.verify(&d));
            } else {
                assert!(store.verify(&d), "a directory store rehashes and replaces a corrupt object on write");
            }
            store.put_file(&object_name(&d), b"hell")?;
            store.write(b"hello")?;
            assert!(store.verify(&d), "{at}: a torn (short) object is replaced on write");
            assert!(store.read(&digest_bytes(b"absent")).unwrap_err().to_string().contains("missing"));
        }
        Ok(())
    }

    #[test]
    fn big_objects_go_up_in_parts_and_stream_back() -> Result<()> {
        for (at, _dir) in both("big") {
            let store = Store::open(&at)?;
            let big: Vec<u8> = (0..(object::PART + 12345) as u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
            let before = store.requests().unwrap_or_default();
            let d = store.write(&big)?;
            if let Some(after) = store.requests() {
                assert!(after.since(&before).put >= 4, "a multipart upload: create, two parts, complete: {}", after.since(&before));
            }
            assert_eq!(store.rehash(&d)?.as_deref(), Some(d.as_str()));
            assert!(store.read(&d)? == big, "{at}: read back whole, in ranges");
        }
        Ok(())
    }

    #[test]
    fn layout_version_is_written_at_a_pinned_path_and_checked_on_open() -> Result<()> {
        let dir = tempfile::tempdir()?;
        Store::open(dir.path())?;
        // the path and line other tools (and older stores) rely on
        assert_eq!(fs::read_to_string(dir.path().join("layout"))?, "pipe-store layout 1\n");
        // a store made before the layout file existed is layout 1, and gets the file
        fs::remove_file(dir.path().join("layout"))?;
        Store::open(dir.path())?;
        assert_eq!(fs::read_to_string(dir.path().join("layout"))?, "pipe-store layout 1\n");
        for (at, _dir) in both("layout") {
            assert!(Store::open_existing(&at).err().expect("nothing there yet").downcast_ref::<crate::UserError>().is_some(), "{at}");
            let store = Store::open(&at)?;
            assert_eq!(store.backend.get(LAYOUT_FILE)?.unwrap(), b"pipe-store layout 1\n");
            assert!(Store::open(&at).is_ok() && Store::open_existing(&at).is_ok());
            store.put_file(LAYOUT_FILE, b"pipe-store layout 2\n")?;
            for e in [Store::open(&at).err(), Store::open_existing(&at).err(), Store::at(&at).err()] {
                let e = e.expect("another layout is refused");
                assert!(e.downcast_ref::<crate::UserError>().is_some());
                assert!(e.to_string().contains("layout 2") && e.to_string().contains("reads layout 1"), "{e}");
            }
        }
        Ok(())
    }

    #[test]
    fn store_urls_are_checked() {
        for (url, says) in [
            ("s3://key:secret@bucket/p", "credentials do not go in the store URL"),
            ("ftp://host/p", "unknown scheme `ftp`"),
            ("s3://bad url", "not a valid URL"),
        ] {
            let e = Store::open(url).err().expect("refused");
            assert!(e.downcast_ref::<crate::UserError>().is_some() && e.to_string().contains(says), "{url}: {e}");
        }
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&format!("file://{}", dir.path().display())).unwrap();
        assert_eq!(store.location(), dir.path().display().to_string(), "file:// is the directory backend");
    }

    #[test]
    fn runs_share_the_lock_and_cleaners_exclude_them() -> Result<()> {
        for (at, _dir) in both("lock") {
            let store = Store::open(&at)?;
            let first = store.lock()?;
            let second = store.lock()?;
            assert!(store.try_lock()?.is_none(), "{at}: gc must not start under a run");
            drop(first);
            assert!(store.try_lock()?.is_none(), "{at}: nor under the other one");
            drop(second);
            let cleaner = store.try_lock()?.expect("no run holds the store");
            assert!(store.try_lock()?.is_none(), "{at}: one cleaner at a time");
            let refused = store.lock().expect_err("a run waits for gc").to_string();
            assert!(refused.contains("pipe gc"), "{refused}");
            drop(cleaner);
            drop(store.lock()?);
        }
        Ok(())
    }

    #[test]
    fn only_a_writer_alone_clears_debris() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let store = Store::open(dir.path())?;
        let debris = dir.path().join("tmp/999-0.tmp");
        fs::write(&debris, b"half a write")?;
        let running = store.lock()?;
        assert!(!debris.exists(), "alone: what a killed writer left is removed");
        fs::write(&debris, b"a write in flight")?;
        let _second = store.lock()?;
        assert!(debris.exists(), "beside another writer, its staged files are left alone");
        drop(running);
        Ok(())
    }

    #[test]
    fn the_first_of_racing_commits_wins_whole() -> Result<()> {
        for (at, _dir) in both("commit") {
            // eight writers, each with its own client, as eight processes would be
            let stores: Vec<Store> = (0..8).map(|_| Store::open(&at)).collect::<Result<_>>()?;
            let won: Vec<bool> = std::thread::scope(|s| {
                let workers: Vec<_> = stores.iter().enumerate().map(|(i, store)| s.spawn(move || store.commit_manifest("k", &serde_json::json!({"writer": i})).unwrap())).collect();
                workers.into_iter().map(|w| w.join().unwrap()).collect()
            });
            assert_eq!(won.iter().filter(|w| **w).count(), 1, "{at}: {won:?}");
            let winner = won.iter().position(|w| *w).unwrap();
            let store = &stores[0];
            let kept: Value = store.manifest("k")?.unwrap();
            assert_eq!(kept["writer"], winner, "{at}: the manifest is the winner's, not overwritten by a loser");
            assert!(store.staged()?.is_empty(), "{at}: losers leave nothing staged");
            store.recommit_manifest("k", &serde_json::json!({"writer": "again"}))?;
            assert_eq!(store.manifest::<Value>("k")?.unwrap()["writer"], "again");
        }
        Ok(())
    }

    #[test]
    fn one_lease_per_stage_and_none_left_behind() -> Result<()> {
        for (at, _dir) in both("lease") {
            let store = Store::open(&at)?;
            let other_worker = Store::open(&at)?;
            let held = store.lease("k")?.expect("nobody computes k");
            assert!(other_worker.lease("k")?.is_none(), "{at}: a second taker waits");
            let other = other_worker.lease("j")?.expect("leases are per key");
            drop(held);
            assert!(store.backend.list("leases")?.iter().all(|e| !e.name.starts_with("k.")), "{at}: a lease leaves nothing behind");
            let again = other_worker.lease("k")?.expect("free once let go");
            drop((again, other));
            assert!(store.backend.list("leases")?.is_empty());
        }
        Ok(())
    }

    #[test]
    fn an_expired_lease_is_taken_over_by_one_taker() -> Result<()> {
        let Some(at) = testing::s3_url("expired-lease") else { return Ok(()) };
        let stores: Vec<Store> = (0..4).map(|_| Store::open(&at)).collect::<Result<_>>()?;
        // what a worker that died leaves: a lease nobody renews, past its expiry
        stores[0].put_file("leases/k.json", br#"{"holder": "dead", "expires_unix": 1}"#)?;
        let taken: Vec<Option<Lease>> = std::thread::scope(|s| {
            let takers: Vec<_> = stores.iter().map(|st| s.spawn(move || st.lease("k").unwrap())).collect();
            takers.into_iter().map(|t| t.join().unwrap()).collect()
        });
        assert_eq!(taken.iter().filter(|t| t.is_some()).count(), 1, "the conditional update lets one taker in");
        // a live lease (renewed, not expired) is not taken
        stores[0].put_file("leases/j.json", format!(r#"{{"holder": "alive", "expires_unix": {}}}"#, object::unix_now() + 60).as_bytes())?;
        assert!(stores[1].lease("j")?.is_none());
        Ok(())
    }

    #[test]
    fn checkpoints_are_per_attempt_and_the_newest_intact_one_resumes() -> Result<()> {
        for (at, _dir) in both("partial") {
            let (first, second, third) = (Store::open(&at)?, Store::open(&at)?, Store::open(&at)?);
            assert!(first.read_partial("k", "epoch")?.is_none());
            first.write_partial("k", "epoch", b"epoch 1 of the first attempt")?;
            std::thread::sleep(Duration::from_millis(1100)); // Last-Modified has whole seconds
            second.write_partial("k", "epoch", b"epoch 2 of the second")?;
            assert_eq!(first.partials()?.len(), 1);
            assert_eq!(third.read_partial("k", "epoch")?.as_deref(), Some(&b"epoch 2 of the second"[..]), "{at}");
            // the newest damaged: it is dropped and the one before resumes instead
            let newest = second.backend.list("partial/k")?.into_iter().max_by_key(|e| e.modified).unwrap();
            second.put_file(&format!("partial/k/{}", newest.name), b"torn")?;
            assert_eq!(third.read_partial("k", "epoch")?.as_deref(), Some(&b"epoch 1 of the first attempt"[..]), "{at}");
            assert_eq!(third.backend.list("partial/k")?.len(), 1, "{at}: the damaged checkpoint is removed");
            third.commit_manifest("k", &serde_json::json!({}))?;
            assert!(!third.has_partial("k"), "{at}: a commit drops every attempt's checkpoints");
        }
        Ok(())
    }

    #[test]
    fn a_run_is_alive_while_its_process_holds_it() -> Result<()> {
        for (at, _dir) in both("alive") {
            let store = Store::open(&at)?;
            assert!(!store.run_alive("r1"));
            let held = store.hold_alive("r1")?;
            assert!(store.run_alive("r1"));
            assert!(!store.run_alive("r2"), "one run's liveness says nothing of another's");
            drop(held);
            assert!(!store.run_alive("r1"), "{at}: a run whose process let go is not alive");
            store.end_live("r1")?;
            assert!(store.backend.list("live")?.is_empty(), "{at}: nothing left in live/");
        }
        let dir = tempfile::tempdir()?;
        let store = Store::open(dir.path())?;
        let _held = store.hold_alive("r1")?;
        assert!(store.hold_alive("r1").is_err(), "a run is alive in one process");
        Ok(())
    }
}
