//! Rounds chosen on validation, never on test (the WINN reference code selects on test):
//! when to stop adding rounds, and which round's checkpoint a run reports.

use super::Rounds;
use crate::engine::executor::RunStage;
use crate::engine::graph::round_of;
use serde_json::{json, Value};

/// The stages that report a round, with their round, in order.
pub fn reporters<'a>(stages: &'a [RunStage], rounds: &Rounds) -> impl Iterator<Item = (u32, &'a RunStage)> {
    let kind = rounds.reporter.name;
    stages.iter().filter(move |s| s.kind == kind).filter_map(|s| Some((round_of(&s.stage)?, s)))
}

/// (round, `metric`) of every reported round so far, in order.
fn scores(stages: &[RunStage], rounds: &Rounds, metric: &str) -> Vec<(u32, f64)> {
    reporters(stages, rounds).filter_map(|(round, s)| Some((round, s.summary.get(metric)?.as_f64()?))).collect()
}

/// The round with the lowest of `metric`; the earliest of ties.
fn lowest(stages: &[RunStage], rounds: &Rounds, metric: &str) -> Option<(u32, f64)> {
    scores(stages, rounds, metric).into_iter().fold(None, |best, (r, e)| match best {
        Some((_, b)) if b <= e => best,
        _ => Some((r, e)),
    })
}

/// The round a run keeps, with its selection metric: the lowest validation error (the
/// earliest of ties), or the last reported round for a method that selects on nothing.
pub fn best_round(stages: &[RunStage], rounds: &Rounds) -> Option<(u32, Option<f64>)> {
    match rounds.select_on {
        Some(metric) => lowest(stages, rounds, metric).map(|(r, e)| (r, Some(e))),
        None => reporters(stages, rounds).last().map(|(r, _)| (r, None)),
    }
}

/// Why to stop now, when the last stage reported a round and the selection metric has not
/// improved on the best round for `patience` rounds (never, without a selection metric).
pub fn stop_reason(stages: &[RunStage], rounds: &Rounds, patience: u32) -> Option<String> {
    let metric = rounds.select_on?;
    let last = stages.last()?;
    let (latest, _) = *scores(std::slice::from_ref(last), rounds, metric).first()?;
    let (best, err) = lowest(stages, rounds, metric)?;
    (latest >= best + patience).then(|| {
        format!("validation error has not improved for {patience} round(s) since round {best} ({:.2}%)", 100.0 * err)
    })
}

/// The reported result of a run: the best round on validation, its test error and the
/// digest of its checkpoint (`checkpoints`: one per net of a one-vs-all round).
pub fn selection(stages: &[RunStage], rounds: &Rounds) -> Option<Value> {
    let (round, score) = best_round(stages, rounds)?;
    let (_, reporter) = reporters(stages, rounds).find(|(r, _)| *r == round)?;
    let (model_kind, model_output) = rounds.model;
    let checkpoints: Vec<String> = stages
        .iter()
        .filter(|s| s.kind == model_kind.name && round_of(&s.stage) == Some(round))
        .filter_map(|s| s.outputs.get(model_output).map(|o| o.digest.clone()))
        .collect();
    let mut v = json!({
        "round": round,
        (rounds.reported): reporter.summary.get(rounds.reported),
        "checkpoints": checkpoints,
    });
    if let (Some(metric), Some(score)) = (rounds.select_on, score) {
        v[metric] = json!(score);
    }
    if let [one] = checkpoints.as_slice() {
        v["checkpoint"] = json!(one);
    }
    Some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    const R: Rounds = crate::methods::icn::ROUNDS;

    fn eval(round: u32, val: f64) -> RunStage {
        RunStage {
            stage: format!("evaluate/{round}"),
            kind: "evaluate".into(),
            key: String::new(),
            status: "ran".into(),
            seconds: 0.0,
            outputs: Default::default(),
            summary: json!({"validation_error": val, "test_error": 0.5}),
        }
    }

    #[test]
    fn stops_after_patience_rounds_without_improvement_and_picks_the_earliest_best() {
        let mut s = vec![eval(0, 0.10), eval(1, 0.08), eval(2, 0.09)];
        assert_eq!(best_round(&s, &R), Some((1, Some(0.08))));
        assert!(stop_reason(&s, &R, 2).is_none());
        assert!(stop_reason(&s, &R, 1).unwrap().contains("since round 1"));
        s.push(eval(3, 0.08)); // a tie is no improvement
        assert!(stop_reason(&s, &R, 2).is_some());
        assert_eq!(best_round(&s, &R), Some((1, Some(0.08))));
        let sel = selection(&s, &R).unwrap();
        assert_eq!((sel["round"].as_u64(), sel["validation_error"].as_f64(), sel["test_error"].as_f64()), (Some(1), Some(0.08), Some(0.5)));
    }

    #[test]
    fn a_method_that_selects_on_nothing_keeps_its_last_round_and_never_stops_early() {
        let last = Rounds { select_on: None, ..R };
        let s = vec![eval(0, 0.10), eval(1, 0.08), eval(2, 0.30)];
        assert_eq!(best_round(&s, &last), Some((2, None)));
        assert!(stop_reason(&s, &last, 1).is_none());
        let sel = selection(&s, &last).unwrap();
        assert_eq!(sel["round"], 2);
        assert!(sel.get("validation_error").is_none());
    }
}
