//! The pipeline engine of `pipe`, by concern:
//!
//! - [`engine`]: the core: the stage graph and keys, the content-addressed store, the
//!   executor, tables; nothing here knows what a stage computes.
//! - [`pipeline`]: pipeline files (typed settings, `--set`, validation) and sweeps.
//! - [`kinds`]: stage kinds, each one typed unit, and their registry; the only place the
//!   engine meets the ML library in the `stages` crate.
//! - [`methods`]: graph builders (ICN) and how a run's round is chosen.
//! - [`audit`]: questions about stored runs: lineage, diff, why, sweeps' studies, reports.
//! - [`care`]: store care: gc and verify.
//! - [`data`]: data set files: fetch and inspect.
//! - [`cli`]: the command line, on top; nothing imports it.

pub mod audit;
pub mod care;
pub mod cli;
pub mod data;
pub mod engine;
pub mod kinds;
pub mod methods;
pub mod pipeline;

/// An error in what the user gave (pipeline file, flags, names): exit code 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UserError(pub String);

impl UserError {
    /// Whether `e`, or anything it wraps, is bad input (exit 2).
    pub fn is_in(e: &anyhow::Error) -> bool {
        e.chain().any(|c| c.downcast_ref::<UserError>().is_some())
    }
}
