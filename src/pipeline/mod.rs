//! Pipeline files: typed settings, `--set` overrides, validation, and sweeps of them.

pub mod spec;
pub mod sweep;
