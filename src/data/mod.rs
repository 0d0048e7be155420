//! Data set files: fetching the official ones, and saying what a path holds.

pub mod fetch;
pub mod inspect;
