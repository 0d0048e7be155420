//! The store on object storage (S3, GCS, Azure, or in memory) through the `object_store`
//! crate, below a prefix of a bucket. The layout is the directory's; what differs is how
//! writers keep out of each other's way, since object storage has no locks:
//!
//! - a manifest is committed create-if-absent (`If-None-Match: *`), so the first writer
//!   wins whole; objects are content-addressed, so a second write of one is harmless;
//! - a lease (`leases/<key>.json`) holds an expiry that its holder renews with a
//!   conditional update (`If-Match` on the ETag it holds); one whose holder stopped renewing
//!   (it died) is taken over by the same conditional update, so of two takers one wins;
//! - a run's liveness (`live/<run>.lock`) and each writer's registration
//!   (`writers/<id>`) are objects renewed every few seconds; one not renewed for
//!   [`ALIVE_TTL`] belongs to a process that is gone;
//! - `pipe gc` (and `verify --repair`) takes the store by writing `gc.lock`
//!   create-if-absent and then listing `writers/`; a run registers in `writers/` and then
//!   looks for `gc.lock`. Each writes before it reads, so of a gc and a run that start
//!   together at least one sees the other and backs off: gc never deletes under a run.
//!
//! Expiry is judged by the object's Last-Modified (the server's clock) against this
//! machine's clock, so the machines sharing a store need clocks within a few seconds (NTP).
//! Credentials come from the environment (`AWS_*`, `GOOGLE_*`, `AZURE_*`), never from the
//! URL, and so never reach a run record.

use super::{Backend, Digest, Entry, Held, Publish, Requests};
use anyhow::{anyhow, bail, Context, Result};
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, UpdateVersion};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, SystemTime};

/// A liveness object or writer registration not renewed for this long is a dead process's.
const ALIVE_TTL: Duration = Duration::from_secs(30);
/// How often they are renewed.
const ALIVE_EVERY: Duration = Duration::from_secs(5);
/// Objects above this go up in parts (and come down in ranges), so that no single request
/// carries a whole checkpoint.
pub(super) const PART: usize = 16 << 20;

#[derive(Default)]
struct Counts {
    get: AtomicU64,
    put: AtomicU64,
    head: AtomicU64,
    list: AtomicU64,
    delete: AtomicU64,
}

/// The client, shared with the threads that renew leases and liveness.
struct Inner {
    client: Box<dyn ObjectStore>,
    prefix: String,
    url: String,
    rt: tokio::runtime::Runtime,
    counts: Counts,
    /// How long a lease holds without renewal (`PIPE_LEASE_SECONDS`, default 60).
    lease_ttl: Duration,
}

pub(super) struct ObjectBackend {
    inner: Arc<Inner>,
}

fn env_seconds(name: &str, default: u64) -> Result<Duration> {
    match std::env::var(name) {
        Ok(v) => v.parse::<u64>().ok().filter(|s| *s > 0).map(Duration::from_secs).ok_or_else(|| anyhow!(crate::UserError(format!("{name}={v}: expected a whole number of seconds above 0")))),
        Err(_) => Ok(Duration::from_secs(default)),
    }
}

impl ObjectBackend {
    pub(super) fn new(url: &url::Url) -> Result<ObjectBackend> {
        // a store that stays unreachable this long fails the run (exit 1) instead of hanging
        let retry = object_store::RetryConfig { retry_timeout: env_seconds("PIPE_STORE_RETRY_SECONDS", 60)?, ..Default::default() };
        let shown = url.as_str().trim_end_matches('/').to_string();
        let bad = |e: object_store::Error| anyhow!(crate::UserError(format!("--store {shown}: {e}")));
        let client: Box<dyn ObjectStore> = match url.scheme() {
            "s3" | "s3a" => Box::new(object_store::aws::AmazonS3Builder::from_env().with_url(url.as_str()).with_retry(retry).build().map_err(bad)?),
            "gs" => Box::new(object_store::gcp::GoogleCloudStorageBuilder::from_env().with_url(url.as_str()).with_retry(retry).build().map_err(bad)?),
            "memory" => Box::new(object_store::memory::InMemory::new()),
            _ => Box::new(object_store::azure::MicrosoftAzureBuilder::from_env().with_url(url.as_str()).with_retry(retry).build().map_err(bad)?),
        };
        // the bucket (or container) is the URL's host; the store lives below its path
        let prefix = url.path().trim_matches('/').to_string();
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).thread_name("pipe-store").enable_all().build().context("starting the object-store client")?;
        let lease_ttl = env_seconds("PIPE_LEASE_SECONDS", 60)?;
        Ok(ObjectBackend { inner: Arc::new(Inner { client, prefix, url: shown, rt, counts: Counts::default(), lease_ttl }) })
    }
}

impl Inner {
    fn path(&self, name: &str) -> ObjectPath {
        if self.prefix.is_empty() {
            ObjectPath::from(name)
        } else {
            ObjectPath::from(format!("{}/{name}", self.prefix))
        }
    }

    fn locate(&self, name: &str) -> String {
        format!("{}/{name}", self.url)
    }

    fn fail(&self, what: &str, name: &str, e: object_store::Error) -> anyhow::Error {
        anyhow!("{what} {} failed: {e}", self.locate(name))
    }

    /// A GET, counted; None when the name is absent.
    async fn open(&self, name: &str) -> Result<Option<object_store::GetResult>> {
        self.counts.get.fetch_add(1, Ordering::Relaxed);
        match self.client.get(&self.path(name)).await {
            Ok(got) => Ok(Some(got)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.fail("reading", name, e)),
        }
    }

    /// The bytes under `name` and their metadata (ETag, Last-Modified).
    fn get(&self, name: &str) -> Result<Option<(Vec<u8>, object_store::ObjectMeta)>> {
        let path = self.path(name);
        self.rt.block_on(async {
            let Some(got) = self.open(name).await? else { return Ok(None) };
            let size = got.meta.size;
            let meta = got.meta.clone();
            if size as usize <= PART {
                let bytes = got.bytes().await.map_err(|e| self.fail("reading", name, e))?;
                return Ok(Some((bytes.to_vec(), meta)));
            }
            // a big object comes down in ranges, fetched at once, into one buffer
            drop(got);
            let ranges: Vec<std::ops::Range<u64>> = (0..size).step_by(PART).map(|s| s..(s + PART as u64).min(size)).collect();
            self.counts.get.fetch_add(ranges.len() as u64, Ordering::Relaxed);
            let parts = self.client.get_ranges(&path, &ranges).await.map_err(|e| self.fail("reading", name, e))?;
            let mut out = Vec::with_capacity(size as usize);
            for p in parts {
                out.extend_from_slice(&p);
            }
            Ok(Some((out, meta)))
        })
    }

    /// A PUT: `Ok(false)` when `mode` is a condition that did not hold (the name exists,
    /// or another writer changed it since).
    fn put(&self, name: &str, bytes: &[u8], mode: PutMode) -> Result<Option<String>> {
        let path = self.path(name);
        self.rt.block_on(async {
            if bytes.len() > PART && mode == PutMode::Overwrite {
                // multipart: the object appears whole when the upload completes, or not at all
                let upload = self.client.put_multipart(&path).await.map_err(|e| self.fail("writing", name, e))?;
                let mut w = object_store::WriteMultipart::new_with_chunk_size(upload, PART);
                w.write(bytes);
                let r = w.finish().await.map_err(|e| self.fail("writing", name, e))?;
                self.counts.put.fetch_add(2 + bytes.len().div_ceil(PART) as u64, Ordering::Relaxed);
                return Ok(Some(r.e_tag.unwrap_or_default()));
            }
            self.counts.put.fetch_add(1, Ordering::Relaxed);
            let opts = PutOptions { mode, ..Default::default() };
            match self.client.put_opts(&path, PutPayload::from(bytes.to_vec()), opts).await {
                Ok(r) => Ok(Some(r.e_tag.unwrap_or_default())),
                Err(object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. }) => Ok(None),
                Err(e) => Err(self.fail("writing", name, e)),
            }
        })
    }

    fn head(&self, name: &str) -> Result<Option<object_store::ObjectMeta>> {
        self.counts.head.fetch_add(1, Ordering::Relaxed);
        match self.rt.block_on(self.client.head(&self.path(name))) {
            Ok(m) => Ok(Some(m)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.fail("looking up", name, e)),
        }
    }

    fn list(&self, dir: &str) -> Result<Vec<Entry>> {
        self.counts.list.fetch_add(1, Ordering::Relaxed);
        let base = self.path(dir);
        let metas: Vec<object_store::ObjectMeta> = self.rt.block_on(self.client.list(Some(&base)).try_collect()).map_err(|e| self.fail("listing", dir, e))?;
        let skip = base.as_ref().len() + 1;
        Ok(metas
            .into_iter()
            .filter(|m| m.location.as_ref().len() > skip)
            .map(|m| Entry { name: m.location.as_ref()[skip..].to_string(), bytes: m.size, modified: SystemTime::from(m.last_modified) })
            .collect())
    }

    fn delete(&self, name: &str) -> Result<()> {
        self.counts.delete.fetch_add(1, Ordering::Relaxed);
        match self.rt.block_on(self.client.delete(&self.path(name))) {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.fail("removing", name, e)),
        }
    }

    fn fresh(&self, modified: SystemTime, ttl: Duration) -> bool {
        SystemTime::now().duration_since(modified).map_or(true, |age| age < ttl)
    }

    /// Whether `name` is there and was renewed within [`ALIVE_TTL`].
    fn alive(&self, name: &str) -> Result<bool> {
        Ok(self.head(name)?.is_some_and(|m| self.fresh(SystemTime::from(m.last_modified), ALIVE_TTL)))
    }
}

/// A name kept current by a thread that rewrites it every `every` (a writer's
/// registration, a run's liveness) until dropped, when the name is removed.
struct Renewed {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    inner: Arc<Inner>,
    name: String,
}

impl Renewed {
    fn start(inner: &Arc<Inner>, name: String, every: Duration, renew: impl Fn(&Inner) -> bool + Send + 'static) -> Renewed {
        let (stop, stopped) = mpsc::channel::<()>();
        let worker = inner.clone();
        let thread = std::thread::spawn(move || {
            // a failed renewal is retried at the next beat; one the condition refused (the
            // lease was taken over) ends the renewals
            while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(every) {
                if !renew(&worker) {
                    break;
                }
            }
        });
        Renewed { stop: Some(stop), thread: Some(thread), inner: inner.clone(), name }
    }
}

impl Drop for Renewed {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = self.inner.delete(&self.name);
    }
}

fn stamp() -> Vec<u8> {
    format!("{{\"pid\": {}, \"at\": \"{}\"}}", std::process::id(), crate::engine::timefmt::now_iso()).into_bytes()
}

pub(super) fn unix_now() -> u64 {
    SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// The holder and expiry of a lease, as its object holds them.
#[derive(serde::Serialize, serde::Deserialize)]
struct LeaseBody {
    holder: String,
    expires_unix: u64,
}

impl LeaseBody {
    fn bytes(holder: &str, ttl: Duration) -> Vec<u8> {
        serde_json::to_vec(&LeaseBody { holder: holder.to_string(), expires_unix: unix_now() + ttl.as_secs() }).expect("serializable")
    }
}

impl Backend for ObjectBackend {
    fn location(&self) -> String {
        self.inner.url.clone()
    }

    fn locate(&self, name: &str) -> String {
        self.inner.locate(name)
    }

    fn get(&self, name: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.inner.get(name)?.map(|(b, _)| b))
    }

    fn size(&self, name: &str) -> Result<Option<u64>> {
        Ok(self.inner.head(name)?.map(|m| m.size))
    }

    fn digest(&self, name: &str) -> Result<Option<Digest>> {
        let inner = &self.inner;
        inner.rt.block_on(async {
            let Some(got) = inner.open(name).await? else { return Ok(None) };
            // hashed as it streams in: verify never holds an object whole
            let mut h = blake3::Hasher::new();
            let mut stream = got.into_stream();
            while let Some(chunk) = stream.next().await {
                h.update(&chunk.map_err(|e| inner.fail("reading", name, e))?);
            }
            Ok(Some(h.finalize().to_hex().to_string()))
        })
    }

    /// A PUT is atomic, so an object of the right size is the object that was written; a
    /// bit flipped in place is found by `pipe verify` and on read.
    fn holds(&self, name: &str, _digest: &str, len: u64) -> bool {
        self.inner.head(name).is_ok_and(|m| m.is_some_and(|m| m.size == len))
    }

    fn put(&self, name: &str, bytes: &[u8], how: Publish) -> Result<bool> {
        Ok(match how {
            Publish::IfAbsent => self.inner.put(name, bytes, PutMode::Create)?.is_some(),
            // If-None-Match: * for an object, another writer's copy being as good as this
            // one (a multipart upload has no such condition: it overwrites the same bytes)
            Publish::Content => {
                let mode = if bytes.len() > PART { PutMode::Overwrite } else { PutMode::Create };
                // lost to a name already there: another writer's copy, or a torn one that the
                // caller found not to hold these bytes, which is replaced
                if self.inner.put(name, bytes, mode)?.is_none() && !self.holds(name, "", bytes.len() as u64) {
                    self.inner.put(name, bytes, PutMode::Overwrite)?;
                }
                true
            }
            Publish::Replace | Publish::Volatile => self.inner.put(name, bytes, PutMode::Overwrite)?.is_some(),
        })
    }

    fn list(&self, dir: &str) -> Result<Vec<Entry>> {
        self.inner.list(dir)
    }

    fn delete(&self, names: &[String]) -> Result<()> {
        names.iter().try_for_each(|n| self.inner.delete(n))
    }

    fn lock(&self) -> Result<Held> {
        let name = format!("writers/{}", super::unique_id());
        self.inner.put(&name, &stamp(), PutMode::Overwrite)?;
        let again = name.clone();
        let registered = Renewed::start(&self.inner, name, ALIVE_EVERY, move |i: &Inner| {
            let _ = i.put(&again, &stamp(), PutMode::Overwrite);
            true
        });
        // registered first, looked second: see the module's comment
        if self.inner.alive("gc.lock")? {
            drop(registered);
            bail!("the store {} is being cleaned by `pipe gc` or `pipe verify --repair` (gc.lock); wait for it to end", self.inner.url);
        }
        Ok(Held(Box::new(registered)))
    }

    fn try_lock(&self) -> Result<Option<Held>> {
        let inner = &self.inner;
        if inner.put("gc.lock", &stamp(), PutMode::Create)?.is_none() {
            // a cleaner that died leaves its gc.lock: stale, it is taken over
            match inner.get("gc.lock")? {
                Some((_, meta)) if !inner.fresh(SystemTime::from(meta.last_modified), ALIVE_TTL) => {
                    let mode = PutMode::Update(UpdateVersion { e_tag: meta.e_tag, version: None });
                    if inner.put("gc.lock", &stamp(), mode)?.is_none() {
                        return Ok(None);
                    }
                }
                Some(_) => return Ok(None),
                None => return self.try_lock(),
            }
        }
        let held = Renewed::start(inner, "gc.lock".into(), ALIVE_EVERY, |i: &Inner| {
            let _ = i.put("gc.lock", &stamp(), PutMode::Overwrite);
            true
        });
        let writers = inner.list("writers")?;
        if writers.iter().any(|w| inner.fresh(w.modified, ALIVE_TTL)) {
            drop(held);
            return Ok(None);
        }
        Ok(Some(Held(Box::new(held))))
    }

    /// With gc.lock held: writers, heartbeats and liveness not renewed for a while, and
    /// leases past their expiry, are what dead processes left.
    fn clear_debris(&self) -> Result<()> {
        let inner = &self.inner;
        for dir in ["writers", "live"] {
            for e in inner.list(dir)?.into_iter().filter(|e| !inner.fresh(e.modified, ALIVE_TTL)) {
                inner.delete(&format!("{dir}/{}", e.name))?;
            }
        }
        for e in inner.list("leases")? {
            let name = format!("leases/{}", e.name);
            let expired = inner.get(&name)?.and_then(|(b, _)| serde_json::from_slice::<LeaseBody>(&b).ok()).is_none_or(|l| l.expires_unix < unix_now());
            if expired {
                inner.delete(&name)?;
            }
        }
        Ok(())
    }

    fn lease(&self, key: &str) -> Result<Option<Held>> {
        let inner = &self.inner;
        let name = format!("leases/{key}.json");
        let holder = super::unique_id();
        let ttl = inner.lease_ttl;
        let e_tag = match inner.put(&name, &LeaseBody::bytes(&holder, ttl), PutMode::Create)? {
            Some(e_tag) => e_tag,
            None => {
                let Some((bytes, meta)) = inner.get(&name)? else { return Ok(None) }; // let go meanwhile: next poll
                let expired = serde_json::from_slice::<LeaseBody>(&bytes).map_or(true, |l| l.expires_unix < unix_now());
                if !expired {
                    return Ok(None);
                }
                // of two takers, the update conditional on the ETag both read lets one in
                match inner.put(&name, &LeaseBody::bytes(&holder, ttl), PutMode::Update(UpdateVersion { e_tag: meta.e_tag, version: None }))? {
                    Some(e_tag) => e_tag,
                    None => return Ok(None),
                }
            }
        };
        let held = Arc::new(Mutex::new(e_tag));
        let renew_name = name.clone();
        let renewed = Renewed::start(inner, name, (ttl / 3).max(Duration::from_secs(1)), move |i: &Inner| {
            let e_tag = held.lock().expect("not poisoned").clone();
            match i.put(&renew_name, &LeaseBody::bytes(&holder, ttl), PutMode::Update(UpdateVersion { e_tag: Some(e_tag), version: None })) {
                Ok(Some(next)) => {
                    *held.lock().expect("not poisoned") = next;
                    true
                }
                Ok(None) => {
                    eprintln!("warning: the lease {} was taken over by another worker (this one did not renew it in time); both may compute the stage, and the first commit stays", i.locate(&renew_name));
                    false
                }
                Err(e) => {
                    eprintln!("warning: renewing the lease {}: {e:#}", i.locate(&renew_name));
                    true
                }
            }
        });
        Ok(Some(Held(Box::new(renewed))))
    }

    fn hold_alive(&self, run: &str) -> Result<Held> {
        let name = format!("live/{run}.lock");
        self.inner.put(&name, &stamp(), PutMode::Overwrite)?;
        let again = name.clone();
        Ok(Held(Box::new(Renewed::start(&self.inner, name, ALIVE_EVERY, move |i: &Inner| {
            let _ = i.put(&again, &stamp(), PutMode::Overwrite);
            true
        }))))
    }

    fn run_alive(&self, run: &str) -> bool {
        self.inner.alive(&format!("live/{run}.lock")).unwrap_or(false)
    }

    fn poll(&self) -> Duration {
        Duration::from_secs(1)
    }

    fn live_every(&self) -> Duration {
        ALIVE_EVERY
    }

    fn requests(&self) -> Option<Requests> {
        let c = &self.inner.counts;
        Some(Requests {
            get: c.get.load(Ordering::Relaxed),
            put: c.put.load(Ordering::Relaxed),
            head: c.head.load(Ordering::Relaxed),
            list: c.list.load(Ordering::Relaxed),
            delete: c.delete.load(Ordering::Relaxed),
        })
    }
}
