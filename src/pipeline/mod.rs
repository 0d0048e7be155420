//! Pipeline files: typed settings, `--set` overrides, validation, sweeps of them, and the
//! list of every setting.

pub mod settings;
pub mod spec;
pub mod sweep;
