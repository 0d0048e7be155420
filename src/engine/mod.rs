//! The engine core: the stage graph and keys, the content-addressed store, the executor
//! that walks the graph against the store, and the Parquet tables stages write.

pub mod executor;
pub mod fault;
pub mod graph;
pub mod interrupt;
pub mod job;
pub mod progress;
pub mod slurm;
pub mod store;
pub mod table;
pub mod timefmt;
