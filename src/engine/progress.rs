//! What a running stage shows and tells: a bar per stage in a terminal, a plain line every
//! so often when stderr is a log file (a batch job), nothing with `--quiet`; and, whatever
//! is shown, a heartbeat file in the store (stage, position, rate, ETA) that `pipe status`
//! and `pipe show` read from another terminal.

use crate::engine::interrupt;
use crate::engine::store::Store;
use crate::engine::timefmt;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::{Deserialize, Serialize};
use std::io::IsTerminal;
use std::time::{Duration, Instant};

/// How progress is shown on stderr.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Display {
    /// An `indicatif` bar per stage (stderr is a terminal).
    Bar,
    /// A plain line every `interval` (stderr is a file or a pipe).
    Lines,
    /// Nothing (`--quiet`); the heartbeat is still written.
    Quiet,
}

impl Display {
    /// Bars on a terminal, lines elsewhere, nothing when `quiet`.
    pub fn detect(quiet: bool) -> Self {
        if quiet {
            Display::Quiet
        } else if std::io::stderr().is_terminal() {
            Display::Bar
        } else {
            Display::Lines
        }
    }
}

/// Seconds between plain progress lines; `PIPE_PROGRESS_SECONDS` changes it (a batch
/// job's log wants fewer, a test more).
fn line_interval() -> Duration {
    let secs = std::env::var("PIPE_PROGRESS_SECONDS").ok().and_then(|s| s.parse::<f64>().ok()).filter(|s| s.is_finite() && *s > 0.0).unwrap_or(30.0);
    Duration::from_secs_f64(secs)
}

/// How often the heartbeat file is rewritten at most.
const HEARTBEAT_EVERY: Duration = Duration::from_millis(500);

/// The run a stage belongs to, as progress needs it.
#[derive(Clone)]
pub struct Live<'a> {
    pub store: &'a Store,
    pub run: String,
    pub display: Display,
}

/// A running stage's position, as written to `live/<run>.json`.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct Heartbeat {
    pub run: String,
    pub pid: u32,
    pub stage: String,
    pub key: String,
    /// What is counted: `epoch 2/5`, `pseudo-negatives`, `test error`.
    pub what: String,
    pub done: u64,
    pub total: u64,
    /// The counted unit: samples, examples, bytes.
    pub unit: String,
    /// Units per second in this process (since the stage started or resumed).
    pub rate: Option<f64>,
    pub eta_seconds: Option<f64>,
    pub stage_started_at: String,
    pub updated_at: String,
    /// A running figure of the stage (mean synthesis steps so far).
    #[serde(default)]
    pub note: Option<String>,
}

impl Heartbeat {
    /// One line: `train/0  epoch 2/5  6400/12000 samples (53%)  2100/s  eta 3s`.
    pub fn line(&self) -> String {
        let pct = if self.total > 0 { format!(" ({:.0}%)", 100.0 * self.done as f64 / self.total as f64) } else { String::new() };
        let eta = self.eta_seconds.map(|s| format!("  eta {}", timefmt::duration(s))).unwrap_or_default();
        format!("{}  {}  {}/{} {}{pct}{}{eta}{}", self.stage, self.what, self.done, self.total, self.unit, self.rate_text(), self.note_text())
    }

    /// `  2100/s`, or nothing before there is a rate.
    fn rate_text(&self) -> String {
        self.rate.map(|r| format!("  {}/s", human(r, &self.unit))).unwrap_or_default()
    }

    fn note_text(&self) -> String {
        self.note.as_ref().map(|n| format!("  {n}")).unwrap_or_default()
    }
}

fn human(rate: f64, unit: &str) -> String {
    if unit == "bytes" && rate >= 1e6 {
        format!("{:.1}M", rate / 1e6)
    } else if rate >= 100.0 {
        format!("{rate:.0}")
    } else {
        format!("{rate:.1}")
    }
}

/// Whether a stage stops at the first interrupt or only at its next checkpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// Nothing to save: stop at the next step.
    Now,
    /// A checkpoint is coming (the end of the epoch): stop there, unless asked twice.
    AtCheckpoint,
}

/// The progress of one stage: counts, a bar or lines, the heartbeat.
pub struct Meter<'a> {
    live: Live<'a>,
    bar: ProgressBar,
    beat: Heartbeat,
    stop: Stop,
    since: Instant,
    done_at_start: u64,
    last_beat: Option<Instant>,
    last_line: Instant,
    interval: Duration,
}

impl<'a> Meter<'a> {
    #[allow(clippy::too_many_arguments)]
    pub fn new(live: Live<'a>, stage: &str, key: &str, stage_started_at: &str, total: u64, unit: &str, what: &str, stop: Stop) -> Self {
        let bar = match live.display {
            Display::Bar => {
                let pb = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
                // the bar takes what the terminal leaves, so the line never wraps
                let counts = if unit == "bytes" { "{binary_bytes}/{binary_total_bytes}".to_string() } else { format!("{{pos}}/{{len}} {unit}") };
                let template = format!("{{prefix}}  {{msg}}  [{{wide_bar}}] {counts}  eta {{eta}}");
                pb.set_style(ProgressStyle::with_template(&template).expect("valid template").progress_chars("=> "));
                pb.set_prefix(stage.to_string());
                pb.set_message(what.to_string());
                pb
            }
            _ => ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::hidden()),
        };
        let beat = Heartbeat {
            run: live.run.clone(),
            pid: std::process::id(),
            stage: stage.to_string(),
            key: key.to_string(),
            what: what.to_string(),
            done: 0,
            total,
            unit: unit.to_string(),
            rate: None,
            eta_seconds: None,
            stage_started_at: stage_started_at.to_string(),
            updated_at: timefmt::now_iso(),
            note: None,
        };
        let mut m = Meter { live, bar, beat, stop, since: Instant::now(), done_at_start: 0, last_beat: None, last_line: Instant::now(), interval: line_interval() };
        m.heartbeat(true);
        m
    }

    /// Starts counting from `done` (a resumed stage): the rate counts this process only.
    pub fn resume_at(&mut self, done: u64) {
        self.bar.set_position(done);
        self.beat.done = done;
        self.done_at_start = done;
        self.since = Instant::now();
        self.heartbeat(true);
    }

    /// What is being counted now (`epoch 3/5`).
    pub fn set_what(&mut self, what: &str) {
        self.beat.what = what.to_string();
        self.heartbeat(true);
    }

    /// A running figure shown after the counts.
    pub fn set_note(&mut self, note: String) {
        self.beat.note = Some(note);
    }

    /// Counts `n` more units; `Break` when the stage should stop now (interrupted).
    pub fn inc(&mut self, n: u64) -> std::ops::ControlFlow<()> {
        // the first count is news (the stage is under way); later ones at most every period
        let first = self.beat.done == self.done_at_start;
        self.bar.inc(n);
        self.beat.done += n;
        self.heartbeat(first);
        if self.must_stop() {
            std::ops::ControlFlow::Break(())
        } else {
            std::ops::ControlFlow::Continue(())
        }
    }

    /// Whether an interrupt asks this stage to stop at its next step.
    fn must_stop(&self) -> bool {
        interrupt::urgent() || (interrupt::requested() && self.stop == Stop::Now)
    }

    fn heartbeat(&mut self, force: bool) {
        let now = Instant::now();
        if !force && self.last_beat.is_some_and(|t| now.duration_since(t) < HEARTBEAT_EVERY.min(self.interval)) {
            return;
        }
        self.last_beat = Some(now);
        let secs = now.duration_since(self.since).as_secs_f64();
        let counted = self.beat.done.saturating_sub(self.done_at_start);
        let rate = (secs > 0.2 && counted > 0).then(|| counted as f64 / secs);
        self.beat.rate = rate;
        self.beat.eta_seconds = rate.map(|r| self.beat.total.saturating_sub(self.beat.done) as f64 / r);
        self.beat.updated_at = timefmt::now_iso();
        self.bar.set_message(format!("{}{}{}", self.beat.what, self.beat.rate_text(), self.beat.note_text()));
        // the heartbeat is a convenience: a failure to write it never fails the stage
        if let Ok(bytes) = serde_json::to_vec(&self.beat) {
            let _ = self.live.store.write_live(&self.live.run, &bytes);
        }
        if self.live.display == Display::Lines && now.duration_since(self.last_line) >= self.interval {
            self.last_line = now;
            eprintln!("{}", self.beat.line());
        }
    }

    /// Clears the bar (the stage's result line follows on stdout).
    pub fn finish(self) {
        self.bar.finish_and_clear();
    }
}

/// The heartbeats of the runs alive now, with their age in seconds (a heartbeat left by a
/// killed run says nothing current).
pub fn current(store: &Store) -> Vec<(Heartbeat, f64)> {
    store
        .live_all()
        .iter()
        .filter_map(|b| serde_json::from_slice::<Heartbeat>(b).ok())
        .filter(|h| store.run_alive(&h.run))
        .map(|h| {
            let age = timefmt::seconds_since(&h.updated_at).unwrap_or(0.0).max(0.0);
            (h, age)
        })
        .collect()
}
