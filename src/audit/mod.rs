//! Questions about what the store holds: which run is which ([`runs`]), what shaped a
//! checkpoint ([`lineage`]), which pseudo-negatives a stage made ([`samples`]), how two
//! runs differ ([`diff`]), why stages will rerun ([`why`]), sweeps' tables and figures
//! ([`study`]), metric reports ([`report`]) and the report as a static site ([`html`]).

pub mod diff;
pub mod html;
pub mod lineage;
pub mod report;
pub mod runs;
pub mod samples;
pub mod study;
pub mod text;
pub mod why;
