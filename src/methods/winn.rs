//! WINN (Wasserstein introspective networks) as one graph builder, unrolled per round.
//!
//! Supervised (`variant = "softmax"`), the same rounds as ICN so that Table 3 compares
//! like with like, but a round trains before it synthesizes, because a critic's thresholds
//! come from its own training:
//!
//! ```text
//! load -> train/0 (cross-entropy) -> evaluate/0 [-> attack/0]
//!      -> synthesize/0 (p0: the initial pseudo-negatives)
//!      -> for t in 1..=T: train/t (CE + a Eq. 5, on every pseudo-negative so far)
//!                         -> evaluate/t [-> attack/t] -> synthesize/t (from train/t)
//! ```
//!
//! Unsupervised (`variant = "unsupervised"`: WINN-single, and cascades), every training
//! image a positive, one critic logit:
//!
//! ```text
//! load -> synthesize/0 (p0) -> for t in 1..=C*T: train/t (Eq. 5) -> synthesize/t
//!      [-> sample/<size> for each sample.sizes]
//! ```
//!
//! Cascade c is rounds (c-1)T+1 ..= cT. As in the reference code the critic keeps training
//! across cascades (one net, every pseudo-negative ever made, drawn uniformly), and what a
//! cascade changes is where synthesis starts: from the last samples of the cascade before.
//! A model's samples come from synthesis through the last critic of every cascade in
//! order (`sample/<size>`, and `pipe sample`).

use super::{Graph, Rounds};
use crate::engine::graph::{stage_seed, InputRef, StageDef};
use crate::kinds::evaluate::{self, Evaluate, Evaluation};
use crate::kinds::load::{self, Load};
use crate::kinds::sample::{self, Sample};
use crate::kinds::synthesize::{self, Synthesize, Targets};
use crate::kinds::train::{self, Sampling, Train};
use crate::kinds::{place, Kind};
use crate::pipeline::spec::{Pipeline, Variant};
use stages::loss::Objective;
use stages::nn::NetConfig;

/// How unsupervised WINN reports its rounds: the critic's Wasserstein estimate, the last
/// round kept (nothing to select on without labels).
pub const UNSUPERVISED_ROUNDS: Rounds = Rounds { reporter: Train::ID, select_on: None, reported: train::WASSERSTEIN, shown: super::Shown { heading: "E_neg f - E_pos f", percent: false }, model: (Train::ID, train::CHECKPOINT) };

fn id<K: Kind>(round: u32) -> String {
    format!("{}/{round}", K::ID.name)
}

/// The critic net of a pipeline: one logit (unsupervised) or the K classes with a
/// Wasserstein head (supervised).
pub fn critic_net(p: &Pipeline) -> NetConfig {
    let s = &p.spec;
    match s.pipeline.variant {
        Variant::Unsupervised => s.net.config(p.geometry, 1),
        _ => NetConfig { wass_head: true, ..s.net.config(p.geometry, p.geometry.num_classes) },
    }
}

pub fn build(p: &Pipeline) -> Graph {
    let s = &p.spec;
    let seed = |id: &str| stage_seed(s.pipeline.seed, id);
    let t = &s.train;
    let w = &s.winn;
    let unsupervised = s.pipeline.variant == Variant::Unsupervised;
    let net = critic_net(p);
    let data = |output: &str| InputRef::output(Load::ID.name, output);
    let reference = super::reference(s);
    let sy = &s.synthesize;
    let mut stages: Vec<StageDef> = vec![super::load_stage(p)];

    let evaluate = |round: u32| {
        let inputs = vec![
            (evaluate::VALIDATION.to_string(), data(load::VALIDATION)),
            (evaluate::TEST.to_string(), data(load::TEST)),
            (evaluate::checkpoint(None), InputRef::output(&id::<Train>(round), train::CHECKPOINT)),
        ];
        let id = id::<Evaluate>(round);
        let params = evaluate::Params { round, batch_size: s.evaluate.batch_size, net: net.clone(), evaluation: Evaluation::Softmax, seed: seed(&id) };
        place::<Evaluate>(id, &params, inputs)
    };
    let attack = |round: u32| {
        let a = s.attack.as_ref()?;
        let model = |r: u32| (id::<Train>(r), InputRef::output(&id::<Train>(r), train::CHECKPOINT));
        let models = if round > 0 { vec![model(round), model(0)] } else { vec![model(0)] };
        let id = id::<crate::kinds::attack::Attack>(round);
        let seed = seed(&id);
        Some(super::icn::attack_stage(id, a, &net, round, seed, data(load::TEST), &models))
    };
    let targets = if unsupervised { Targets::Binary { class: 0 } } else { Targets::PerClass };
    let synthesis = |round: u32, method: synthesize::Method, inputs: Vec<(String, InputRef)>| {
        let id = id::<Synthesize>(round);
        let params = synthesize::Params { round, net: net.clone(), targets, per_class: sy.per_class, init_std: sy.init_std, size: None, reference, method, seed: seed(&id) };
        place::<Synthesize>(id, &params, inputs)
    };

    if !unsupervised {
        let id = id::<Train>(0);
        let params = super::round_zero(t, net.clone(), Objective::Softmax { alpha: 0.0 }, seed(&id));
        stages.push(place::<Train>(id, &params, vec![(train::TRAIN_SET.into(), data(load::TRAIN))]));
        stages.push(evaluate(0));
        stages.extend(attack(0));
    }
    // the initial pseudo-negatives: p0 itself (Appendix D with synthesize.reference)
    stages.push(synthesis(0, synthesize::Method::Noise, vec![]));

    let rounds = if unsupervised { w.cascades * s.pipeline.rounds } else { s.pipeline.rounds };
    let cascade_of = |round: u32| (round - 1) / s.pipeline.rounds.max(1) + 1;
    // the last round of each cascade: its critic is the cascade's
    let last_of = |cascade: u32| cascade * s.pipeline.rounds;
    let objective = if unsupervised { Objective::Critic { lambda: w.lambda } } else { Objective::Winn { weight: w.weight, lambda: w.lambda } };
    for round in 1..=rounds {
        let mut inputs = vec![(train::TRAIN_SET.to_string(), data(load::TRAIN)), (train::pseudo_negatives(round - 1), InputRef::output(&id::<Synthesize>(round - 1), synthesize::PSEUDO_NEGATIVES))];
        if round >= 2 || !unsupervised {
            inputs.push((train::INIT.to_string(), InputRef::output(&id::<Train>(round - 1), train::CHECKPOINT)));
        }
        if round >= 2 {
            inputs.push((train::POOL.into(), InputRef::output(&id::<Train>(round - 1), train::POOL)));
        }
        let train_id = id::<Train>(round);
        let epochs = if unsupervised { w.critic_updates } else { t.epochs_per_round };
        // WINN draws old pseudo-negatives uniformly, each batch half of them
        let params = super::round_training(t, round, net.clone(), epochs, objective, Sampling::Balanced { decay: 1.0 }, seed(&train_id));
        stages.push(place::<Train>(train_id, &params, inputs));
        if !unsupervised {
            stages.push(evaluate(round));
            stages.extend(attack(round));
        }
        let mut inputs = vec![(synthesize::CHECKPOINT.to_string(), InputRef::output(&id::<Train>(round), train::CHECKPOINT))];
        let cascade = cascade_of(round);
        if unsupervised && cascade > 1 {
            inputs.push((synthesize::STARTS.into(), InputRef::output(&id::<Synthesize>(last_of(cascade - 1)), synthesize::PSEUDO_NEGATIVES)));
        }
        let method = synthesize::Method::Critic {
            batch_size: sy.batch_size,
            lr: sy.lr,
            max_steps: sy.max_steps,
            step: sy.step(),
            class_weight: (!unsupervised).then_some(w.class_weight),
        };
        stages.push(synthesis(round, method, inputs));
    }

    if unsupervised && rounds > 0 {
        let critics: Vec<InputRef> = (1..=w.cascades).map(|c| InputRef::output(&id::<Train>(last_of(c)), train::CHECKPOINT)).collect();
        for &size in &s.sample.sizes {
            let id = format!("{}/{size}", Sample::ID.name);
            let params = super::sample_params(p, &net, (size, size), seed(&id));
            stages.push(sample::stage(id, &params, &critics));
        }
    }
    stages.extend(super::probe_stages(p, &net, rounds, InputRef::output(&id::<Train>(rounds), train::CHECKPOINT)));
    stages.extend(super::quality_stages(p, rounds, |r| InputRef::output(&id::<Synthesize>(r), synthesize::PSEUDO_NEGATIVES)));
    let rounds = if unsupervised { UNSUPERVISED_ROUNDS } else { super::icn::ROUNDS };
    Graph { stages, rounds }
}
