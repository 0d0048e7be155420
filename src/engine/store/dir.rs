//! The store as a local (or shared-filesystem) directory: names are paths below the root,
//! writes are staged in tmp/ and renamed or hard-linked into place, and the writer lock,
//! leases and liveness are flocks, which the kernel ends with their process.

use super::{digest_file, Backend, Digest, Entry, Held, Publish};
use crate::engine::fault;
use anyhow::{bail, Context, Result};
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

pub(super) struct DirBackend {
    root: PathBuf,
}

/// flock on a file we own; true when granted. No memory is involved.
fn flock(f: &File, how: libc::c_int) -> bool {
    use std::os::unix::io::AsRawFd;
    // SAFETY: flock on a file descriptor owned by `f`, which outlives the call.
    unsafe { libc::flock(f.as_raw_fd(), how) == 0 }
}

impl DirBackend {
    pub(super) fn new(root: &Path, create: bool) -> Result<DirBackend> {
        if root.exists() && !root.is_dir() {
            bail!(crate::UserError(format!("--store {}: is a file, not a store directory", root.display())));
        }
        if create {
            for sub in ["objects", "stages", "partial", "runs", "tmp"] {
                fs::create_dir_all(root.join(sub)).with_context(|| format!("creating store directory {}", root.join(sub).display()))?;
            }
        }
        Ok(DirBackend { root: root.to_path_buf() })
    }

    fn path(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// The file the writer lock is taken on (created, never truncated).
    fn lock_file(&self) -> Result<File> {
        let path = self.root.join("lock");
        File::options().create(true).truncate(false).write(true).open(&path).with_context(|| format!("opening {}", path.display()))
    }

    fn alive_path(&self, run: &str) -> PathBuf {
        self.root.join("live").join(format!("{run}.lock"))
    }
}

/// Stages `bytes` in `tmp` (or beside `path`), synced, then puts them at `path`: by rename
/// (replacing what is there) or by hard link, which fails when `path` exists, so that of
/// two writers racing on one name the first wins whole and the other learns it lost
/// (`Ok(false)`). A failure (a full disk) names `path` and leaves no temp file behind.
pub(super) fn publish_file(path: &Path, tmp_dir: Option<&Path>, bytes: &[u8], how: Publish) -> Result<bool> {
    let dir = path.parent().context("path has no parent")?;
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    let tmp = tmp_dir.unwrap_or(dir).join(format!(".{}-{}.tmp", std::process::id(), n));
    let staged = (|| -> std::io::Result<bool> {
        let mut f = File::create(&tmp)?;
        let room = fault::disk_room(bytes.len());
        f.write_all(&bytes[..room])?;
        if room < bytes.len() {
            return Err(std::io::Error::from_raw_os_error(libc::ENOSPC));
        }
        if how != Publish::Volatile {
            f.sync_all()?;
            fault::point("write");
        }
        // A writer beside this one may remove the folder meanwhile (a stage committed by
        // another run drops its partial/ folder): made again, the name is taken anew.
        let mut tries = 0;
        loop {
            let put = match how {
                // an object under its name that is not intact was found so by the caller: replaced
                Publish::Replace | Publish::Volatile | Publish::Content => fs::rename(&tmp, path).map(|()| true),
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
                    if how == Publish::IfAbsent {
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
    if how != Publish::Volatile {
        sync_dir(dir)?;
    }
    Ok(won)
}

impl Backend for DirBackend {
    fn location(&self) -> String {
        self.root.display().to_string()
    }

    fn locate(&self, name: &str) -> String {
        self.path(name).display().to_string()
    }

    fn get(&self, name: &str) -> Result<Option<Vec<u8>>> {
        let path = self.path(name);
        match fs::read(&path) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    fn size(&self, name: &str) -> Result<Option<u64>> {
        let path = self.path(name);
        match fs::metadata(&path) {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    fn digest(&self, name: &str) -> Result<Option<Digest>> {
        let path = self.path(name);
        match digest_file(&path) {
            Ok(d) => Ok(Some(d)),
            Err(_) if !path.exists() => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn holds(&self, name: &str, digest: &str, len: u64) -> bool {
        let path = self.path(name);
        fs::metadata(&path).is_ok_and(|m| m.len() == len) && digest_file(&path).is_ok_and(|d| d == digest)
    }

    fn put(&self, name: &str, bytes: &[u8], how: Publish) -> Result<bool> {
        // The layout file is written on open, before the writer lock is taken, while another
        // writer that starts alone may be clearing tmp/: it is staged beside itself instead.
        let staging = if name.contains('/') { Some(self.root.join("tmp")) } else { None };
        publish_file(&self.path(name), staging.as_deref(), bytes, how)
    }

    fn list(&self, dir: &str) -> Result<Vec<Entry>> {
        fn walk(base: &Path, at: &Path, out: &mut Vec<Entry>) -> Result<()> {
            let rd = match fs::read_dir(at) {
                Ok(rd) => rd,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
                Err(e) => return Err(e).with_context(|| format!("listing {}", at.display())),
            };
            for entry in rd {
                let entry = entry?;
                let path = entry.path();
                let Ok(meta) = fs::symlink_metadata(&path) else { continue }; // vanished meanwhile
                if meta.is_dir() {
                    walk(base, &path, out)?;
                } else {
                    let name = path.strip_prefix(base).unwrap_or(&path).to_string_lossy().to_string();
                    out.push(Entry { name, bytes: meta.len(), modified: meta.modified().unwrap_or(std::time::UNIX_EPOCH) });
                }
            }
            Ok(())
        }
        let mut out = Vec::new();
        let base = self.path(dir);
        walk(&base, &base, &mut out)?;
        Ok(out)
    }

    fn delete(&self, names: &[String]) -> Result<()> {
        let mut dirs = std::collections::BTreeSet::new();
        for name in names {
            let path = self.path(name);
            remove_file_if_present(&path)?;
            if let Some(dir) = path.parent() {
                dirs.insert(dir.to_path_buf());
            }
        }
        for dir in dirs.iter().rev() {
            // an emptied folder two deep (an object's fan-out, a partial attempt) is clutter;
            // a non-empty one refuses, which is fine; the top folders stay
            let rel = dir.strip_prefix(&self.root).map(|r| r.components().count()).unwrap_or(0);
            if rel >= 2 && fs::remove_dir(dir).is_ok() {
                if let Some(up) = dir.parent().filter(|u| u.strip_prefix(&self.root).map(|r| r.components().count()).unwrap_or(0) >= 2) {
                    let _ = fs::remove_dir(up);
                }
                continue;
            }
            if dir.exists() {
                sync_dir(dir)?;
            }
        }
        Ok(())
    }

    fn lock(&self) -> Result<Held> {
        let f = self.lock_file()?;
        if flock(&f, libc::LOCK_EX | libc::LOCK_NB) {
            self.clear_debris()?;
        }
        // Shared, converting the exclusive lock if this writer took it. Another writer may
        // hold the lock exclusively for the moment its start-up cleaning takes, so a refusal
        // is retried for a while before it is put down to a gc or a repair.
        let deadline = std::time::Instant::now() + Duration::from_secs(3);
        loop {
            if flock(&f, libc::LOCK_SH | libc::LOCK_NB) {
                return Ok(Held(Box::new(f)));
            }
            if std::time::Instant::now() > deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // exit 1, as for gc: nothing the user typed is wrong, the store is busy
        bail!("the store {} is being cleaned by `pipe gc` or `pipe verify --repair`; wait for it to end", self.root.display())
    }

    fn try_lock(&self) -> Result<Option<Held>> {
        let f = self.lock_file()?;
        Ok(flock(&f, libc::LOCK_EX | libc::LOCK_NB).then(|| Held(Box::new(f))))
    }

    /// Called by a writer that took the lock exclusively (alone: no writer is alive), so
    /// that debris never fills a disk for good.
    fn clear_debris(&self) -> Result<()> {
        remove_dir_all_if_present(&self.root.join("live"))?;
        remove_dir_all_if_present(&self.root.join("leases"))?;
        let tmp = self.root.join("tmp");
        for entry in fs::read_dir(&tmp).with_context(|| format!("listing {}", tmp.display()))? {
            let path = entry?.path();
            if path.is_dir() {
                fs::remove_dir_all(&path).with_context(|| format!("removing {}", path.display()))?;
            } else {
                remove_file_if_present(&path)?;
            }
        }
        Ok(())
    }

    fn lease(&self, key: &str) -> Result<Option<Held>> {
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
                return Ok(Some(Held(Box::new(FileLease { _held: f, path }))));
            }
        }
    }

    fn hold_alive(&self, run: &str) -> Result<Held> {
        let path = self.alive_path(run);
        fs::create_dir_all(path.parent().context("path has no parent")?)?;
        let f = File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        if !flock(&f, libc::LOCK_EX | libc::LOCK_NB) {
            bail!("run {run} is already alive in another process ({})", path.display());
        }
        Ok(Held(Box::new(FileLease { _held: f, path })))
    }

    fn run_alive(&self, run: &str) -> bool {
        let Ok(f) = File::open(self.alive_path(run)) else { return false };
        !flock(&f, libc::LOCK_SH | libc::LOCK_NB)
    }

    fn poll(&self) -> Duration {
        Duration::from_millis(100)
    }

    fn live_every(&self) -> Duration {
        Duration::ZERO
    }
}

/// A flocked file that is removed as it is let go (a lease, a run's liveness), so a store
/// keeps no trace of the holders that ended.
struct FileLease {
    /// Locked; closed (unlocking it) only after `drop` below removed its name.
    _held: File,
    path: PathBuf,
}

impl Drop for FileLease {
    fn drop(&mut self) {
        // removed while still locked, so that no one locks the old file after this
        let _ = fs::remove_file(&self.path);
        let _ = fs::remove_dir(self.path.parent().expect("a lease lives in a folder"));
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
