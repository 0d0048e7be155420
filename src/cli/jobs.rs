//! `pipe run --jobs N` on a sweep: N members at once, each a `pipe run --member K` child
//! process with its share of the cores, all on one store. Stages the members share are
//! computed once (the store's leases make the others wait), so the parallel sweep ends
//! with the outputs of the serial one; this process forwards the children's output, line
//! by line with the member's number in front, and writes the sweep's table at the end.

use crate::pipeline::sweep::Member;
use crate::UserError;
use anyhow::{Context, Result};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// A member that did not end well: its number, its exit code, its last error line.
struct Failed {
    member: usize,
    code: Option<i32>,
    last: String,
}

/// Runs `members` (all of the sweep in `file` with `set`) `jobs` at a time on `store`, and
/// returns each member's run id, in the members' order.
pub fn run_members(file: &Path, set: &[String], store: &Path, quiet: bool, members: &[Member], jobs: usize, extra: &[String]) -> Result<Vec<String>> {
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let threads = (cores / jobs).max(1);
    let exe = std::env::current_exe().context("finding the pipe binary to run sweep members")?;
    println!("sweep of {} members, {jobs} at a time, {threads} thread(s) each -> {}", members.len(), store.display());
    let next = AtomicUsize::new(0);
    let ids: Mutex<Vec<Option<String>>> = Mutex::new(vec![None; members.len()]);
    let failed: Mutex<Option<Failed>> = Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..jobs.min(members.len()) {
            s.spawn(|| loop {
                let k = next.fetch_add(1, Ordering::SeqCst);
                if k >= members.len() || failed.lock().unwrap().is_some() || crate::engine::interrupt::requested() {
                    return;
                }
                let tag = format!("[{}/{}]", k + 1, members.len());
                println!("{tag} == sweep member {}", members[k].label());
                let mut cmd = Command::new(&exe);
                cmd.arg("run").arg(file).arg("--store").arg(store).arg("--member").arg(k.to_string());
                for kv in set {
                    cmd.arg("--set").arg(kv);
                }
                if quiet {
                    cmd.arg("--quiet");
                }
                cmd.args(extra);
                cmd.env("RAYON_NUM_THREADS", threads.to_string()).stdout(Stdio::piped()).stderr(Stdio::piped());
                let outcome = member(cmd, &tag);
                match outcome {
                    Ok((Some(id), Some(0), _)) => ids.lock().unwrap()[k] = Some(id),
                    Ok((_, code, last)) => {
                        failed.lock().unwrap().get_or_insert(Failed { member: k, code, last });
                    }
                    Err(e) => {
                        failed.lock().unwrap().get_or_insert(Failed { member: k, code: None, last: format!("{e:#}") });
                    }
                }
            });
        }
    });
    let failed = failed.into_inner().unwrap();
    // Ctrl-C reaches every member (one process group): each stops at its safe point with its
    // checkpoint kept, and the sweep is interrupted, not failed (exit 130, with the resume hint)
    if crate::engine::interrupt::requested() || failed.as_ref().is_some_and(|f| matches!(f.code, Some(130 | 143))) {
        let done = ids.lock().unwrap().iter().filter(|id| id.is_some()).count();
        return Err(crate::engine::interrupt::Interrupted::new(format!("sweep stopped with {done} of {} members done; the others keep their checkpoints", members.len())).into());
    }
    if let Some(f) = failed {
        let what = format!("sweep member {}/{} ({}) failed{}: {}", f.member + 1, members.len(), members[f.member].label(), f.code.map(|c| format!(" with exit {c}")).unwrap_or_default(), f.last);
        // a member refused for its input is the user's to fix, as in a serial sweep
        return Err(if f.code == Some(2) { UserError(what).into() } else { anyhow::anyhow!(what) });
    }
    Ok(ids.into_inner().unwrap().into_iter().map(|id| id.expect("every member ended well")).collect())
}

/// Runs one member's process, forwarding its lines with `tag` in front: (its run id, its
/// exit code, its last line on stderr).
fn member(mut cmd: Command, tag: &str) -> Result<(Option<String>, Option<i32>, String)> {
    let mut child = cmd.spawn().context("starting a sweep member")?;
    let (out, err) = (child.stdout.take().expect("piped"), child.stderr.take().expect("piped"));
    let (id, last) = std::thread::scope(|s| {
        let errs = s.spawn(|| forward(err, tag, &mut std::io::stderr()));
        let id = forward(out, tag, &mut std::io::stdout()).into_iter().find_map(|l| l.strip_prefix("run ").and_then(|r| r.split(':').next()).map(String::from));
        let last = errs.join().expect("forwarding stderr").into_iter().rev().find(|l| !l.trim().is_empty()).unwrap_or_default();
        (id, last)
    });
    let status = child.wait().context("waiting for a sweep member")?;
    Ok((id, status.code(), last))
}

/// Copies lines from `from` to `to` with `tag` in front; returns them.
fn forward(from: impl Read, tag: &str, to: &mut impl Write) -> Vec<String> {
    let mut lines = Vec::new();
    for line in BufReader::new(from).lines().map_while(|l| l.ok()) {
        let _ = writeln!(to, "{tag} {line}");
        lines.push(line);
    }
    lines
}
