//! Methods: graph builders. A method places stage kinds into rounds (or cascades) and
//! declares how its rounds are reported and which one a run keeps. `plan()` is pipeline
//! file -> the method's builder -> the graph.

pub mod icn;
pub mod select;

use crate::engine::graph::{KindId, StageDef};
use crate::pipeline::spec::Pipeline;

/// What a method declares about its rounds.
#[derive(Clone, Copy, Debug)]
pub struct Rounds {
    /// The kind of the stage that reports a round's metrics (one per round, `kind/t`).
    pub reporter: KindId,
    /// The summary metric of the reporter a round is chosen by (lower is better); none:
    /// the run keeps its last round.
    pub select_on: Option<&'static str>,
    /// The summary metric reported for the chosen round.
    pub reported: &'static str,
    /// The kind and output that hold a round's model (one per net of the round).
    pub model: (KindId, &'static str),
}

/// A planned pipeline: its stages in run order, and its method's declaration.
pub struct Graph {
    pub stages: Vec<StageDef>,
    pub rounds: Rounds,
}

/// The graph of a pipeline.
pub fn plan(p: &Pipeline) -> Graph {
    icn::build(p)
}

/// The declaration that reads a stored run's rounds. Every method so far is ICN; a run
/// record names its method once there is more than one.
pub fn rounds_of(_record: &crate::engine::executor::RunRecord) -> Rounds {
    icn::ROUNDS
}
