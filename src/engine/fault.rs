//! Deterministic fault injection for the fault test suite (`tests/faults.rs`): a kill at a
//! named point, and a disk that fills up. Both are driven by environment variables that
//! no user sets, read once; with neither set, every hook is a load and a compare.
//!
//! - `PIPE_FAULT_KILL=POINT:N` sends SIGKILL to this process the N-th time (from 1) it
//!   reaches `POINT` (e.g. `repair:3`), exactly as `kill -9` would at that instant.
//! - `PIPE_FAULT_DISK_BYTES=N` lets this process write N bytes into the store in all;
//!   the write that crosses the budget stores what fits and then fails with ENOSPC, like
//!   a full filesystem, and so does every write after it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

struct Faults {
    kill: Option<(String, u64)>,
    disk_bytes: Option<u64>,
}

fn faults() -> &'static Faults {
    static F: OnceLock<Faults> = OnceLock::new();
    F.get_or_init(|| Faults {
        kill: std::env::var("PIPE_FAULT_KILL").ok().and_then(|v| {
            let (point, n) = v.rsplit_once(':')?;
            Some((point.to_string(), n.parse().ok()?))
        }),
        disk_bytes: std::env::var("PIPE_FAULT_DISK_BYTES").ok().and_then(|v| v.parse().ok()),
    })
}

static REACHED: AtomicU64 = AtomicU64::new(0);
static WRITTEN: AtomicU64 = AtomicU64::new(0);

/// A place where a kill is worth testing.
pub fn point(name: &str) {
    let Some((point, n)) = &faults().kill else { return };
    if point == name && REACHED.fetch_add(1, Ordering::SeqCst) + 1 == *n {
        // SAFETY: signalling our own process; SIGKILL cannot be caught, nothing runs after.
        unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
    }
}

/// How many of `len` bytes the disk takes before it is full (all of them without the fault).
pub fn disk_room(len: usize) -> usize {
    let Some(budget) = faults().disk_bytes else { return len };
    let before = WRITTEN.fetch_add(len as u64, Ordering::SeqCst);
    budget.saturating_sub(before).min(len as u64) as usize
}
