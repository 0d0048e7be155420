//! The content-addressed artifact store, in the manner of cacache: a few verbs over a
//! directory.
//!
//! ```text
//! objects/ab/cdef...   immutable bytes, named by their blake3 digest
//! stages/<key>.json    a stage's manifest: written last, it is the stage's commit point
//! partial/<key>/       checkpoints of a stage still running (resumption), removed on commit
//! runs/<id>.json       one record per `pipe run`
//! tmp/                 staging for atomic writes (same filesystem, so rename is atomic)
//! live/<run>.json      the heartbeat of a running stage (position, rate, ETA); removed when
//!                      the run ends, meaningful only while the writer lock is held
//! layout               `pipe-store layout 1`: the version of this layout, checked on open
//! ```
//!
//! Every write goes temp file -> fsync -> rename -> fsync(dir), so a crash leaves either the
//! old state or the new one, never a torn file, and a failed write removes its temp file.
//! Nothing is trusted unchecked: every object read is rehashed, an object path that already
//! exists is rehashed before a commit relies on it, manifests and run records are sealed
//! with a digest of their own content, and resumption checkpoints carry a digest trailer.

use crate::engine::fault;
use crate::engine::graph::canonical_json;
use anyhow::{bail, Context, Result};
use serde::{de::DeserializeOwned, Serialize};
use serde_json::Value;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

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

pub struct Store {
    root: PathBuf,
}

/// The version of the layout above. A pipe refuses a store of another version rather
/// than misread it; stores made before the file existed are version 1.
pub const LAYOUT_VERSION: u32 = 1;
const LAYOUT_FILE: &str = "layout";

fn layout_line(version: u32) -> String {
    format!("pipe-store layout {version}\n")
}

/// Checks the layout file of a store, if it has one.
fn check_layout(root: &Path) -> Result<()> {
    let path = root.join(LAYOUT_FILE);
    let text = match fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let version = text.trim().strip_prefix("pipe-store layout ").and_then(|v| v.parse::<u32>().ok());
    match version {
        Some(LAYOUT_VERSION) => Ok(()),
        Some(v) => bail!(crate::UserError(format!(
            "{} is a pipe store of layout {v}; this pipe reads layout {LAYOUT_VERSION} (use the pipe that made it, or another --store)",
            root.display()
        ))),
        None => bail!(crate::UserError(format!("{}: expected `pipe-store layout N`, found {:?}", path.display(), text.trim()))),
    }
}

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// How a staged file takes its name.
#[derive(Clone, Copy)]
enum Publish {
    Replace,
    IfAbsent,
}

/// flock on a file we own; true when granted. No memory is involved.
fn flock(f: &File, how: libc::c_int) -> bool {
    use std::os::unix::io::AsRawFd;
    // SAFETY: flock on a file descriptor owned by `f`, which outlives the call.
    unsafe { libc::flock(f.as_raw_fd(), how) == 0 }
}

impl Store {
    /// Opens (creating if needed) a store at `root`.
    pub fn open(root: &Path) -> Result<Store> {
        if root.exists() && !root.is_dir() {
            bail!(crate::UserError(format!("--store {}: is a file, not a store directory", root.display())));
        }
        check_layout(root)?;
        for sub in ["objects", "stages", "partial", "runs", "tmp"] {
            fs::create_dir_all(root.join(sub)).with_context(|| format!("creating store directory {}", root.join(sub).display()))?;
        }
        let store = Store { root: root.to_path_buf() };
        if !root.join(LAYOUT_FILE).is_file() {
            store.write_atomic(&root.join(LAYOUT_FILE), layout_line(LAYOUT_VERSION).as_bytes())?;
        }
        Ok(store)
    }

    /// A store at `root` that may not exist yet; nothing is created (for `pipe status`).
    pub fn at(root: &Path) -> Result<Store> {
        check_layout(root)?;
        Ok(Store { root: root.to_path_buf() })
    }

    /// Opens an existing store without creating anything (for read-only commands).
    pub fn open_existing(root: &Path) -> Result<Store> {
        if !root.join("objects").is_dir() {
            bail!(crate::UserError(format!("{} is not a pipe store (no objects/ directory); run `pipe run` first or pass --store", root.display())));
        }
        check_layout(root)?;
        Ok(Store { root: root.to_path_buf() })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn object_path(&self, digest: &str) -> PathBuf {
        self.root.join("objects").join(&digest[..2]).join(&digest[2..])
    }

    /// Stores bytes and returns their digest. An object already at that path is kept only
    /// if it still holds these bytes: a corrupt one left by an interrupted repair (or a
    /// bad disk) is replaced, never committed again.
    pub fn write(&self, bytes: &[u8]) -> Result<Digest> {
        let digest = digest_bytes(bytes);
        let path = self.object_path(&digest);
        let intact = match fs::metadata(&path) {
            Ok(m) => m.len() == bytes.len() as u64 && digest_file(&path).is_ok_and(|d| d == digest),
            Err(_) => false,
        };
        if !intact {
            self.write_atomic(&path, bytes)?;
        }
        Ok(digest)
    }

    /// Reads an object, checking that its bytes still hash to its name.
    pub fn read(&self, digest: &str) -> Result<Vec<u8>> {
        let path = self.object_path(digest);
        let bytes = fs::read(&path).with_context(|| format!("object {digest} is missing from the store ({})", path.display()))?;
        let actual = digest_bytes(&bytes);
        if actual != digest {
            bail!("object {digest} is corrupt: its bytes hash to {actual} ({}); run `pipe verify` to list every damaged object, `pipe verify --repair` to have the stages that made them rerun", path.display());
        }
        Ok(bytes)
    }

    /// Rehashes an object; Ok(false) when missing or corrupt.
    pub fn verify(&self, digest: &str) -> bool {
        self.read(digest).is_ok()
    }

    /// Writes `bytes` at `path` so that readers see the old file or the whole new one. A
    /// failure (a full disk) names `path` and leaves no temp file behind.
    pub fn write_atomic(&self, path: &Path, bytes: &[u8]) -> Result<()> {
        self.publish(path, bytes, Publish::Replace).map(|_| ())
    }

    /// Stages `bytes` in tmp/, synced, then puts them at `path`: by rename (replacing what
    /// is there) or by hard link, which fails when `path` exists, so that of two writers
    /// racing on one name the first wins whole and the other learns it lost (`Ok(false)`).
    fn publish(&self, path: &Path, bytes: &[u8], how: Publish) -> Result<bool> {
        let dir = path.parent().context("path has no parent")?;
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        let tmp = self.tmp_dir().join(format!("{}-{}.tmp", std::process::id(), n));
        let staged = (|| -> std::io::Result<bool> {
            let mut f = File::create(&tmp)?;
            let room = fault::disk_room(bytes.len());
            f.write_all(&bytes[..room])?;
            if room < bytes.len() {
                return Err(std::io::Error::from_raw_os_error(libc::ENOSPC));
            }
            f.sync_all()?;
            fault::point("write");
            // A writer beside this one may remove the folder meanwhile (a stage committed by
            // another run drops its partial/ folder): made again, the name is taken anew.
            let mut tries = 0;
            loop {
                let put = match how {
                    Publish::Replace => fs::rename(&tmp, path).map(|()| true),
                    Publish::IfAbsent => match fs::hard_link(&tmp, path) {
                        Ok(()) => Ok(true),
                        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
                        Err(e) => Err(e),
                    },
                };
                match put {
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound && tries < 3 && tmp.exists() => {
                        tries += 1;
                        fs::create_dir_all(dir)?;
                    }
                    put => {
                        if matches!(how, Publish::IfAbsent) {
                            let _ = fs::remove_file(&tmp);
                        }
                        return put;
                    }
                }
            }
        })();
        let won = match staged {
            Ok(won) => won,
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                return Err(e).with_context(|| format!("writing {} ({} bytes)", path.display(), bytes.len()));
            }
        };
        File::open(dir).and_then(|d| d.sync_all()).with_context(|| format!("syncing {}", dir.display()))?;
        Ok(won)
    }

    /// Writes a JSON record sealed with the digest of its canonical content, so that an
    /// edit (or a torn disk block) is found on read.
    fn write_sealed<T: Serialize>(&self, path: &Path, record: &T, how: Publish) -> Result<bool> {
        let mut value = serde_json::to_value(record)?;
        let map = value.as_object_mut().context("a sealed record is a JSON object")?;
        map.remove(SEAL);
        let seal = digest_bytes(canonical_json(&Value::Object(map.clone())).as_bytes());
        map.insert(SEAL.into(), Value::String(seal));
        self.publish(path, &serde_json::to_vec_pretty(&value)?, how)
    }

    /// Staging area of atomic writes; anything left in it is debris of a killed writer.
    pub fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    /// Every stored object's name, including names that no longer match their bytes.
    pub fn objects(&self) -> Result<Vec<Digest>> {
        let mut out = Vec::new();
        let dir = self.root.join("objects");
        for fan in fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))? {
            let fan = fan?;
            let prefix = fan.file_name().to_string_lossy().to_string();
            // object_path splits a name after two characters; anything else is not an object
            if prefix.len() != 2 || !fan.file_type()?.is_dir() {
                continue;
            }
            for entry in fs::read_dir(fan.path()).with_context(|| format!("listing {}", fan.path().display()))? {
                out.push(format!("{prefix}{}", entry?.file_name().to_string_lossy()));
            }
        }
        out.sort();
        Ok(out)
    }

    /// Removes objects. A manifest naming one of them must be removed (durably) first, or
    /// the store would hold a committed stage whose outputs are gone.
    pub fn remove_objects(&self, digests: &[Digest]) -> Result<()> {
        for d in digests {
            let path = self.object_path(d);
            remove_file_if_present(&path)?;
            // an emptied fan-out directory is clutter; a non-empty one refuses, which is fine
            let _ = fs::remove_dir(path.parent().expect("objects live in a fan-out directory"));
        }
        Ok(())
    }

    pub fn manifest_path(&self, key: &str) -> PathBuf {
        self.root.join("stages").join(format!("{key}.json"))
    }

    /// The committed manifest of a stage key, if the stage has finished; a manifest whose
    /// seal does not match its content is a [`Damaged`] error.
    pub fn manifest<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>> {
        read_sealed(&self.manifest_path(key))
    }

    /// Commits a stage, whose outputs must already be stored, unless another writer
    /// committed the key first: `Ok(false)` then, and the caller reads the winner's
    /// manifest (a key names one computation, so either is right; the first stays).
    pub fn commit_manifest<T: Serialize>(&self, key: &str, manifest: &T) -> Result<bool> {
        let won = self.write_sealed(&self.manifest_path(key), manifest, Publish::IfAbsent)?;
        self.drop_partial(key)?;
        Ok(won)
    }

    /// Commits a stage over a manifest that is there but unusable (damaged, or naming
    /// objects that are gone): the stage was computed again to replace it.
    pub fn recommit_manifest<T: Serialize>(&self, key: &str, manifest: &T) -> Result<()> {
        self.write_sealed(&self.manifest_path(key), manifest, Publish::Replace)?;
        self.drop_partial(key)
    }

    /// Removes a committed stage's checkpoints. Another run computing the same key may be
    /// writing one there at the same moment: after a few tries its file is left, as debris
    /// that no run reads (the stage is committed) and `pipe gc --partials` removes.
    fn drop_partial(&self, key: &str) -> Result<()> {
        let dir = self.partial_dir(key);
        for _ in 0..3 {
            match fs::remove_dir_all(&dir) {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::DirectoryNotEmpty => continue,
                Err(e) => return Err(e).with_context(|| format!("removing {}", dir.display())),
            }
        }
        Ok(())
    }

    /// All committed stage keys.
    pub fn stage_keys(&self) -> Result<Vec<String>> {
        list_json_stems(&self.root.join("stages"))
    }

    /// Uncommits stages; durable on return, so that their objects may be removed after.
    pub fn remove_manifests(&self, keys: &[String]) -> Result<()> {
        for k in keys {
            remove_file_if_present(&self.manifest_path(k))?;
        }
        sync_dir(&self.root.join("stages"))
    }

    /// Keys of stages that left resumption checkpoints.
    pub fn partial_keys(&self) -> Result<Vec<String>> {
        let dir = self.root.join("partial");
        let mut out = Vec::new();
        for entry in fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))? {
            out.push(entry?.file_name().to_string_lossy().to_string());
        }
        out.sort();
        Ok(out)
    }

    /// Where a running stage keeps its resumption checkpoints.
    pub fn partial_dir(&self, key: &str) -> PathBuf {
        self.root.join("partial").join(key)
    }

    /// Saves resumption checkpoint `name` of stage `key` atomically, with a blake3 trailer
    /// over its bytes so that a resume can tell it is the file that was written.
    pub fn write_partial(&self, key: &str, name: &str, bytes: &[u8]) -> Result<()> {
        let mut sealed = Vec::with_capacity(bytes.len() + PARTIAL_TRAILER);
        sealed.extend_from_slice(bytes);
        sealed.extend_from_slice(blake3::hash(bytes).as_bytes());
        self.write_atomic(&self.partial_dir(key).join(name), &sealed)?;
        fault::point("partial");
        Ok(())
    }

    /// Resumption checkpoint `name` of stage `key`: `Ok(None)` when there is none, and
    /// when the one there does not match its trailer (it is then removed, with a message,
    /// and the stage starts over).
    pub fn read_partial(&self, key: &str, name: &str) -> Result<Option<Vec<u8>>> {
        let path = self.partial_dir(key).join(name);
        let mut bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let body = bytes.len().saturating_sub(PARTIAL_TRAILER);
        if bytes.len() < PARTIAL_TRAILER || blake3::hash(&bytes[..body]).as_bytes() != &bytes[body..] {
            eprintln!("warning: the resumption checkpoint {} is damaged (its bytes do not match their digest); discarding it, the stage starts over", path.display());
            remove_file_if_present(&path)?;
            return Ok(None);
        }
        bytes.truncate(body);
        Ok(Some(bytes))
    }

    fn live_path(&self, run: &str) -> PathBuf {
        self.root.join("live").join(format!("{run}.json"))
    }

    /// Replaces a run's heartbeat. Renamed into place so readers never see half of it, but
    /// not synced: it is rewritten every half second and worthless after a crash.
    pub fn write_live(&self, run: &str, bytes: &[u8]) -> Result<()> {
        let path = self.live_path(run);
        let dir = path.parent().context("path has no parent")?;
        fs::create_dir_all(dir)?;
        let tmp = dir.join(format!(".{run}.{}.tmp", std::process::id()));
        fs::write(&tmp, bytes).and_then(|()| fs::rename(&tmp, &path)).with_context(|| format!("writing {}", path.display()))
    }

    /// Every heartbeat there is (whether one is current is [`Store::run_alive`]'s to say).
    pub fn live_all(&self) -> Vec<Vec<u8>> {
        let Ok(dir) = fs::read_dir(self.root.join("live")) else { return Vec::new() };
        let mut files: Vec<PathBuf> = dir.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|e| e == "json")).collect();
        files.sort();
        files.iter().filter_map(|p| fs::read(p).ok()).collect()
    }

    fn alive_path(&self, run: &str) -> PathBuf {
        self.root.join("live").join(format!("{run}.lock"))
    }

    /// Marks run `run` alive for the life of the returned file: an exclusive flock that
    /// the kernel drops when the process ends, however it ends. Other runs of the store
    /// each hold their own, so one run's liveness says nothing of another's.
    pub fn hold_alive(&self, run: &str) -> Result<File> {
        let path = self.alive_path(run);
        fs::create_dir_all(path.parent().context("path has no parent")?)?;
        let f = File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        if !flock(&f, libc::LOCK_EX | libc::LOCK_NB) {
            bail!("run {run} is already alive in another process ({})", path.display());
        }
        Ok(f)
    }

    /// Whether run `run` is alive in some process now (a `running` record of a run that is
    /// not alive was killed).
    pub fn run_alive(&self, run: &str) -> bool {
        let Ok(f) = File::open(self.alive_path(run)) else { return false };
        !flock(&f, libc::LOCK_SH | libc::LOCK_NB)
    }

    /// Removes a finished run's heartbeat and liveness file (its own only: other runs of
    /// the store may be going on).
    pub fn end_live(&self, run: &str) -> Result<()> {
        remove_file_if_present(&self.live_path(run))?;
        remove_file_if_present(&self.alive_path(run))?;
        // the last run out leaves no folder (one still going keeps it: removal refuses)
        let _ = fs::remove_dir(self.root.join("live"));
        Ok(())
    }

    pub fn run_path(&self, id: &str) -> PathBuf {
        self.root.join("runs").join(format!("{id}.json"))
    }

    pub fn write_run<T: Serialize>(&self, id: &str, record: &T) -> Result<()> {
        self.write_sealed(&self.run_path(id), record, Publish::Replace).map(|_| ())
    }

    /// A run record; one whose seal does not match its content is a [`Damaged`] error.
    pub fn run<T: DeserializeOwned>(&self, id: &str) -> Result<Option<T>> {
        read_sealed(&self.run_path(id))
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
        let mut ids = list_json_stems(&self.root.join("runs"))?;
        ids.sort();
        Ok(ids)
    }

    /// Removes run records, durably: they are the roots that keep stages alive.
    pub fn remove_runs(&self, ids: &[String]) -> Result<()> {
        for id in ids {
            remove_file_if_present(&self.run_path(id))?;
        }
        sync_dir(&self.root.join("runs"))
    }

    /// Takes the store's writer lock, shared, for the life of the returned file: any
    /// number of `pipe run`s write a store at once (objects are content-addressed, a
    /// manifest is committed by the first writer only), while `pipe gc` and `verify
    /// --repair`, which delete, take it exclusively ([`Store::try_lock`]). A writer that
    /// finds itself alone first clears what killed writers left behind.
    pub fn lock(&self) -> Result<File> {
        let f = self.lock_file()?;
        if flock(&f, libc::LOCK_EX | libc::LOCK_NB) {
            self.clear_debris()?;
        }
        // Shared, converting the exclusive lock if this writer took it. Another writer may
        // hold the lock exclusively for the moment its start-up cleaning takes, so a refusal
        // is retried for a while before it is put down to a gc or a repair.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
        loop {
            if flock(&f, libc::LOCK_SH | libc::LOCK_NB) {
                return Ok(f);
            }
            if std::time::Instant::now() > deadline {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        // exit 1, as for gc: nothing the user typed is wrong, the store is busy
        bail!("the store {} is being cleaned by `pipe gc` or `pipe verify --repair`; wait for it to end", self.root.display())
    }

    /// Removes what killed writers left behind: staged files in tmp/, heartbeats and
    /// liveness files in live/, lease files in leases/. Called with the writer lock held
    /// exclusively (by a run that starts alone, by gc), when no writer of this store is
    /// alive, so that debris never fills a disk for good.
    pub fn clear_debris(&self) -> Result<()> {
        remove_dir_all_if_present(&self.root.join("live"))?;
        remove_dir_all_if_present(&self.root.join("leases"))?;
        for entry in fs::read_dir(self.tmp_dir()).with_context(|| format!("listing {}", self.tmp_dir().display()))? {
            let path = entry?.path();
            if path.is_dir() {
                fs::remove_dir_all(&path).with_context(|| format!("removing {}", path.display()))?;
            } else {
                remove_file_if_present(&path)?;
            }
        }
        Ok(())
    }

    /// The lease on computing stage `key`, held until the returned value is dropped, or
    /// None while another process computes it. A flock, so the kernel ends the lease of a
    /// process that dies, and the next taker resumes from the stage's checkpoint.
    pub fn lease(&self, key: &str) -> Result<Option<Lease>> {
        use std::os::unix::fs::MetadataExt;
        let path = self.root.join("leases").join(format!("{key}.lock"));
        let dir = path.parent().context("path has no parent")?;
        loop {
            fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            let f = match File::options().create(true).truncate(false).write(true).open(&path) {
                Ok(f) => f,
                // the last holder removed the folder between the two calls
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e).with_context(|| format!("opening {}", path.display())),
            };
            if !flock(&f, libc::LOCK_EX | libc::LOCK_NB) {
                return Ok(None);
            }
            // A holder removes its file as it lets go; a lock taken on a file already
            // removed (or replaced) guards nothing, so it is taken again on the new one.
            let same = fs::metadata(&path).is_ok_and(|m| f.metadata().is_ok_and(|g| g.ino() == m.ino() && g.dev() == m.dev()));
            if same {
                return Ok(Some(Lease { _held: f, path }));
            }
        }
    }

    /// The writer lock held exclusively, or None while any run (or other cleaner) holds it.
    pub fn try_lock(&self) -> Result<Option<File>> {
        let f = self.lock_file()?;
        Ok(flock(&f, libc::LOCK_EX | libc::LOCK_NB).then_some(f))
    }

    /// The file the writer lock is taken on (created, never truncated).
    fn lock_file(&self) -> Result<File> {
        let path = self.root.join("lock");
        File::options().create(true).truncate(false).write(true).open(&path).with_context(|| format!("opening {}", path.display()))
    }
}

/// The right to compute one stage ([`Store::lease`]); its file goes when it is dropped, so a
/// store keeps no trace of the leases of runs that ended.
pub struct Lease {
    /// Locked; closed (unlocking it) only after `drop` below removed its name.
    _held: File,
    path: PathBuf,
}

impl Drop for Lease {
    fn drop(&mut self) {
        // removed while still locked, so that no one locks the old file after this
        let _ = fs::remove_file(&self.path);
        let _ = fs::remove_dir(self.path.parent().expect("a lease lives in leases/"));
    }
}

fn remove_dir_all_if_present(dir: &Path) -> Result<()> {
    match fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e).with_context(|| format!("removing {}", dir.display())),
        _ => Ok(()),
    }
}

fn remove_file_if_present(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e).with_context(|| format!("removing {}", path.display())),
        _ => Ok(()),
    }
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).with_context(|| format!("syncing {}", dir.display()))
}

/// The field of a sealed record that holds the digest of the rest.
const SEAL: &str = "seal";
/// Bytes of the blake3 trailer of a resumption checkpoint.
const PARTIAL_TRAILER: usize = 32;

/// A manifest or run record whose bytes are not what pipe wrote: unparsable, unsealed, or
/// edited since. Callers treat it as absent-and-damaged, never as data.
#[derive(Debug, thiserror::Error)]
#[error("{} is damaged: {reason}", path.display())]
pub struct Damaged {
    pub path: PathBuf,
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

fn read_sealed<T: DeserializeOwned>(path: &Path) -> Result<Option<T>> {
    let bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let damaged = |reason: String| Damaged { path: path.to_path_buf(), reason };
    let mut value: Value = serde_json::from_slice(&bytes).map_err(|e| damaged(format!("not valid JSON ({e})")))?;
    let map = value.as_object_mut().ok_or_else(|| damaged("not a JSON object".into()))?;
    let seal = match map.remove(SEAL) {
        Some(Value::String(s)) => s,
        _ => return Err(damaged(format!("no `{SEAL}` seal (written by an older pipe, or edited)")).into()),
    };
    let actual = digest_bytes(canonical_json(&value).as_bytes());
    if actual != seal {
        return Err(damaged(format!("its content hashes to {actual}, not to its seal {seal}: it was edited or corrupted")).into());
    }
    Ok(Some(T::deserialize(value).map_err(|e| damaged(format!("unexpected content ({e})")))?))
}

fn list_json_stems(dir: &Path) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let name = entry?.file_name().to_string_lossy().to_string();
        if let Some(stem) = name.strip_suffix(".json") {
            out.push(stem.to_string());
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_read_and_detect_corruption() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let store = Store::open(dir.path())?;
        let d = store.write(b"hello")?;
        assert_eq!(d, digest_bytes(b"hello"));
        assert_eq!(store.write(b"hello")?, d, "same content, same name");
        assert_eq!(store.read(&d)?, b"hello");
        fs::write(store.object_path(&d), b"jello")?;
        let err = store.read(&d).unwrap_err().to_string();
        assert!(err.contains("corrupt"), "{err}");
        assert!(!store.verify(&d));
        assert!(store.read(&digest_bytes(b"absent")).unwrap_err().to_string().contains("missing"));
        Ok(())
    }

    #[test]
    fn layout_version_is_written_at_a_pinned_path_and_checked_on_open() -> Result<()> {
        let dir = tempfile::tempdir()?;
        Store::open(dir.path())?;
        // the path and line other tools (and older stores) rely on
        assert_eq!(fs::read_to_string(dir.path().join("layout"))?, "pipe-store layout 1\n");
        assert!(Store::open(dir.path()).is_ok() && Store::open_existing(dir.path()).is_ok());
        fs::write(dir.path().join("layout"), "pipe-store layout 2\n")?;
        for e in [Store::open(dir.path()).err(), Store::open_existing(dir.path()).err(), Store::at(dir.path()).err()] {
            let e = e.expect("another layout is refused");
            assert!(e.downcast_ref::<crate::UserError>().is_some());
            assert!(e.to_string().contains("layout 2") && e.to_string().contains("reads layout 1"), "{e}");
        }
        // a store made before the layout file existed is layout 1, and gets the file
        fs::remove_file(dir.path().join("layout"))?;
        Store::open(dir.path())?;
        assert_eq!(fs::read_to_string(dir.path().join("layout"))?, "pipe-store layout 1\n");
        Ok(())
    }

    #[test]
    fn runs_share_the_lock_and_cleaners_exclude_them() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let store = Store::open(dir.path())?;
        let first = store.lock()?;
        let second = store.lock()?;
        assert!(store.try_lock()?.is_none(), "gc must not start under a run");
        drop(first);
        assert!(store.try_lock()?.is_none(), "nor under the other one");
        drop(second);
        let cleaner = store.try_lock()?.expect("no run holds the store");
        let refused = store.lock().unwrap_err().to_string();
        assert!(refused.contains("pipe gc"), "{refused}");
        drop(cleaner);
        Ok(())
    }

    #[test]
    fn only_a_writer_alone_clears_debris() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let store = Store::open(dir.path())?;
        let debris = store.tmp_dir().join("999-0.tmp");
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
        let dir = tempfile::tempdir()?;
        let store = Store::open(dir.path())?;
        let won: Vec<bool> = std::thread::scope(|s| {
            let workers: Vec<_> = (0..8).map(|i| {
                let store = &store;
                s.spawn(move || store.commit_manifest("k", &serde_json::json!({"writer": i})).unwrap())
            }).collect();
            workers.into_iter().map(|w| w.join().unwrap()).collect()
        });
        assert_eq!(won.iter().filter(|w| **w).count(), 1, "{won:?}");
        let winner = won.iter().position(|w| *w).unwrap();
        let kept: Value = store.manifest("k")?.unwrap();
        assert_eq!(kept["writer"], winner, "the manifest is the winner's, not overwritten by a loser");
        assert_eq!(fs::read_dir(store.tmp_dir())?.count(), 0, "losers leave nothing staged");
        store.recommit_manifest("k", &serde_json::json!({"writer": "again"}))?;
        assert_eq!(store.manifest::<Value>("k")?.unwrap()["writer"], "again");
        Ok(())
    }

    #[test]
    fn one_lease_per_stage_and_none_left_behind() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let store = Store::open(dir.path())?;
        let held = store.lease("k")?.expect("nobody computes k");
        assert!(store.lease("k")?.is_none(), "a second taker waits");
        let other = store.lease("j")?.expect("leases are per key");
        drop(held);
        assert!(!dir.path().join("leases/k.lock").exists(), "a lease leaves no file");
        let again = store.lease("k")?.expect("free once let go");
        drop((again, other));
        assert!(!dir.path().join("leases").exists());
        Ok(())
    }

    #[test]
    fn a_run_is_alive_while_its_process_holds_it() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let store = Store::open(dir.path())?;
        assert!(!store.run_alive("r1"));
        let held = store.hold_alive("r1")?;
        assert!(store.run_alive("r1"));
        assert!(!store.run_alive("r2"), "one run's liveness says nothing of another's");
        assert!(store.hold_alive("r1").is_err());
        drop(held);
        assert!(!store.run_alive("r1"), "a run whose process let go (or died) is not alive");
        store.end_live("r1")?;
        assert!(!dir.path().join("live/r1.lock").exists());
        Ok(())
    }
}
