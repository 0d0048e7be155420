//! Ctrl-C and `kill` as requests, not crashes. The first SIGINT or SIGTERM asks the run to
//! stop at its next safe point: a training stage finishes its epoch and saves the
//! resumption checkpoint, a stage with nothing to save stops at its next batch, and no new
//! stage starts. A second signal stops at the next batch whatever is lost; a third ends the
//! process at once (what a plain SIGKILL would do: the store stays valid either way).
//!
//! The handler only bumps an atomic counter (the one thing a signal handler may safely
//! do); the executor and the stages poll it.

use std::sync::atomic::{AtomicI32, AtomicUsize, Ordering};

static COUNT: AtomicUsize = AtomicUsize::new(0);
static SIGNAL: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_signal(sig: libc::c_int) {
    SIGNAL.store(sig, Ordering::SeqCst);
    if COUNT.fetch_add(1, Ordering::SeqCst) >= 2 {
        // SAFETY: _exit is async-signal-safe; 128 + signal is the shell's convention.
        unsafe { libc::_exit(128 + sig) };
    }
}

/// Routes SIGINT and SIGTERM to the counter (once per process; `pipe run` calls it).
pub fn install() {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: installs a handler that only touches atomics (async-signal-safe).
        unsafe { libc::signal(sig, on_signal as *const () as libc::sighandler_t) };
    }
}

/// A stop was asked for: stop at the next safe point.
pub fn requested() -> bool {
    COUNT.load(Ordering::SeqCst) > 0
}

/// A stop was asked for twice: stop now, even losing the current epoch's work.
pub fn urgent() -> bool {
    COUNT.load(Ordering::SeqCst) > 1
}

/// The signal that asked, by name.
pub fn signal_name() -> &'static str {
    match SIGNAL.load(Ordering::SeqCst) {
        libc::SIGTERM => "SIGTERM",
        _ => "SIGINT",
    }
}

/// The exit status of a run stopped by a signal: 128 + its number, as a shell reports it.
pub fn exit_status() -> u8 {
    (128 + SIGNAL.load(Ordering::SeqCst).clamp(1, 127)) as u8
}

/// A run stopped on request, at a safe point: `where_` says what is kept.
#[derive(Debug, thiserror::Error)]
#[error("interrupted by {signal}: {where_}")]
pub struct Interrupted {
    pub signal: &'static str,
    pub where_: String,
}

impl Interrupted {
    pub fn new(where_: impl Into<String>) -> Self {
        Interrupted { signal: signal_name(), where_: where_.into() }
    }

    /// Whether `e`, or anything it wraps, is an interruption.
    pub fn is_in(e: &anyhow::Error) -> bool {
        e.chain().any(|c| c.downcast_ref::<Interrupted>().is_some())
    }
}
