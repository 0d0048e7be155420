//! Rounds chosen on validation, never on test (the WINN reference code selects on test):
//! when to stop adding rounds, and which round's checkpoint a run reports.

use crate::executor::RunStage;
use serde_json::{json, Value};

/// (round, validation error) of every evaluated round so far, in order.
fn validation_errors(stages: &[RunStage]) -> Vec<(u32, f64)> {
    stages
        .iter()
        .filter(|s| s.kind == "evaluate")
        .filter_map(|s| {
            let round = s.stage.strip_prefix("evaluate/")?.parse().ok()?;
            Some((round, s.summary.get("validation_error")?.as_f64()?))
        })
        .collect()
}

/// The round with the lowest validation error; the earliest of ties.
pub fn best_round(stages: &[RunStage]) -> Option<(u32, f64)> {
    validation_errors(stages).into_iter().fold(None, |best, (r, e)| match best {
        Some((_, b)) if b <= e => best,
        _ => Some((r, e)),
    })
}

/// Why to stop now, when the last stage evaluated a round and validation error has not
/// improved on the best round for `patience` rounds.
pub fn stop_reason(stages: &[RunStage], patience: u32) -> Option<String> {
    let last = stages.last().filter(|s| s.kind == "evaluate")?;
    let (latest, _) = *validation_errors(std::slice::from_ref(last)).first()?;
    let (best, err) = best_round(stages)?;
    (latest >= best + patience).then(|| {
        format!("validation error has not improved for {patience} round(s) since round {best} ({:.2}%)", 100.0 * err)
    })
}

/// The reported result of a run: the best round on validation, its test error and the
/// digest of its checkpoint (`checkpoints`: one per net of a one-vs-all round).
pub fn selection(stages: &[RunStage]) -> Option<Value> {
    let (round, validation_error) = best_round(stages)?;
    let eval = stages.iter().find(|s| s.stage == format!("evaluate/{round}"))?;
    let (id, member) = (format!("train/{round}"), format!("train/{round}/"));
    let checkpoints: Vec<String> = stages
        .iter()
        .filter(|s| s.stage == id || s.stage.starts_with(&member))
        .filter_map(|s| s.outputs.get("checkpoint.safetensors").map(|o| o.digest.clone()))
        .collect();
    let mut v = json!({
        "round": round,
        "validation_error": validation_error,
        "test_error": eval.summary.get("test_error"),
        "checkpoints": checkpoints,
    });
    if let [one] = checkpoints.as_slice() {
        v["checkpoint"] = json!(one);
    }
    Some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(best_round(&s), Some((1, 0.08)));
        assert!(stop_reason(&s, 2).is_none());
        assert!(stop_reason(&s, 1).unwrap().contains("since round 1"));
        s.push(eval(3, 0.08)); // a tie is no improvement
        assert!(stop_reason(&s, 2).is_some());
        assert_eq!(best_round(&s), Some((1, 0.08)));
    }
}
