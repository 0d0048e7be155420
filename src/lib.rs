//! The pipeline engine of `pipe`: pipeline files ([`spec`]), the stage graph ([`plan`]),
//! the content-addressed store ([`store`]), the executor ([`executor`]) and the stage
//! adapters ([`adapters`]) that connect it to the ML library in the `stages` crate.

pub mod adapters;
pub mod bench;
pub mod care;
pub mod cli;
pub mod diff;
pub mod executor;
pub mod fetch;
pub mod inspect;
pub mod lineage;
pub mod plan;
pub mod report;
pub mod select;
pub mod spec;
pub mod store;
pub mod study;
pub mod sweep;
pub mod table;
pub mod timefmt;
pub mod why;

/// An error in what the user gave (pipeline file, flags, names): exit code 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UserError(pub String);
