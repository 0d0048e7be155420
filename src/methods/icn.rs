//! ICN and its variants as one graph builder, unrolled per round:
//!
//! ```text
//! load -> train/0 -> evaluate/0
//!      -> for t in 1..=T: synthesize/t -> train/t -> evaluate/t [-> attack/t]
//! ```
//!
//! Softmax (one net, Eq. 9), binary (Algorithm 1) and one-vs-all (K binary nets whose
//! stage ids end in `/c{k}`); `icn`, `icn-noise` (p0 samples as pseudo-negatives) and
//! `baseline` (no pseudo-negatives). With an `[attack]` section, `attack/t` attacks round
//! t's classifier and tests round 0's (the plain CNN) on the same adversarial examples.
//!
//! `train/t` warm-starts from `train/(t-1)` and sees every pseudo-negative made so far.
//! Each stage carries exactly the settings that can change its outputs, so a change reruns
//! that stage and what depends on it, and nothing else; the number of rounds is in no
//! stage, so growing it reuses the rounds already made.

use super::{Graph, Rounds};
use crate::engine::graph::{stage_seed, InputRef, StageDef};
use crate::kinds::attack::{self, Attack};
use crate::kinds::evaluate::{self, Evaluate, Evaluation};
use crate::kinds::load::{self, Load};
use crate::kinds::synthesize::{self, Synthesize, Targets};
use crate::kinds::train::{self, Sampling, Train};
use crate::kinds::{place, Kind};
use crate::pipeline::spec::{self, AttackSection, Method, Pipeline, TrainSection, Variant};
use stages::loss::Objective;
use stages::nn::NetConfig;

/// How ICN rounds are reported and chosen: `evaluate/t`'s validation error.
pub const ROUNDS: Rounds = Rounds {
    reporter: Evaluate::ID,
    select_on: Some(evaluate::VALIDATION_ERROR),
    reported: evaluate::TEST_ERROR,
    shown: super::Shown::TEST_ERROR,
    model: (Train::ID, train::CHECKPOINT),
};

/// One chain of classifiers trained round after round: the softmax net, the binary net,
/// or one of the K nets of one-vs-all.
struct Chain {
    /// The positive class of a one-vs-all member (its stage ids end in `/c{k}`).
    member: Option<u32>,
    net: NetConfig,
    /// The training objective of rounds >= 1 (round 0 has no pseudo-negatives).
    objective: Objective,
    objective0: Objective,
    targets: Targets,
}

impl Chain {
    fn id(&self, kind: &str, round: u32) -> String {
        match self.member {
            Some(k) => format!("{kind}/{round}/c{k}"),
            None => format!("{kind}/{round}"),
        }
    }
}

fn id<K: Kind>(round: u32) -> String {
    format!("{}/{round}", K::ID.name)
}

pub fn build(p: &Pipeline) -> Graph {
    let s = &p.spec;
    let seed = |id: &str| stage_seed(s.pipeline.seed, id);
    let g = p.geometry;
    let t = &s.train;
    let binary_chain = |k: u32, member: Option<u32>| Chain {
        member,
        net: s.net.config(g, 1),
        objective: Objective::Binary { positive: k },
        objective0: Objective::Binary { positive: k },
        targets: Targets::Binary { class: k },
    };
    let chains: Vec<Chain> = match s.pipeline.variant {
        Variant::Softmax => vec![Chain {
            member: None,
            net: s.net.config(g, g.num_classes),
            objective: Objective::Softmax { alpha: t.alpha },
            objective0: Objective::Softmax { alpha: 0.0 },
            targets: Targets::PerClass,
        }],
        Variant::Binary => vec![binary_chain(s.pipeline.positive_class, None)],
        Variant::OneVsAll => (0..g.num_classes as u32).map(|k| binary_chain(k, Some(k))).collect(),
        Variant::Unsupervised => unreachable!("validation refuses the unsupervised variant outside WINN and IGM"),
    };
    let evaluation = match s.pipeline.variant {
        Variant::Softmax => Evaluation::Softmax,
        Variant::Binary => Evaluation::Binary { positive: s.pipeline.positive_class },
        Variant::OneVsAll => Evaluation::OneVsAll,
        Variant::Unsupervised => unreachable!("validation refuses the unsupervised variant outside WINN and IGM"),
    };
    let augment_pad = if t.augment { 4 } else { 0 };
    let method = s.pipeline.method;
    let mut stages: Vec<StageDef> = Vec::new();

    stages.push(super::load_stage(p));
    let data = |output: &str| InputRef::output(Load::ID.name, output);

    let evaluate = |round: u32| {
        let mut inputs = vec![(evaluate::VALIDATION.to_string(), data(load::VALIDATION)), (evaluate::TEST.to_string(), data(load::TEST))];
        for c in &chains {
            inputs.push((evaluate::checkpoint(c.member), InputRef::output(&c.id(Train::ID.name, round), train::CHECKPOINT)));
            // lineage: does each pseudo-negative trained on so far still fool this classifier?
            if method != Method::Baseline && round >= 1 {
                inputs.push((evaluate::pool(c.member), InputRef::output(&c.id(Train::ID.name, round), train::POOL)));
            }
        }
        let id = id::<Evaluate>(round);
        let params = evaluate::Params { round, batch_size: s.evaluate.batch_size, net: chains[0].net.clone(), evaluation, seed: seed(&id) };
        place::<Evaluate>(id, &params, inputs)
    };
    let attack = |round: u32| {
        let a = s.attack.as_ref()?;
        let model = |r: u32| (id::<Train>(r), InputRef::output(&id::<Train>(r), train::CHECKPOINT));
        let models = if round > 0 { vec![model(round), model(0)] } else { vec![model(0)] };
        let id = id::<Attack>(round);
        let seed = seed(&id);
        Some(attack_stage(id, a, &chains[0].net, round, seed, data(load::TEST), &models))
    };

    for c in &chains {
        let id = c.id(Train::ID.name, 0);
        let params = super::round_zero(t, c.net.clone(), c.objective0, seed(&id));
        stages.push(place::<Train>(id, &params, vec![(train::TRAIN_SET.into(), data(load::TRAIN))]));
    }
    stages.push(evaluate(0));
    stages.extend(attack(0));
    let sy = &s.synthesize;
    let reference = super::reference(s);
    for round in 1..=s.pipeline.rounds {
        for c in &chains {
            let previous = InputRef::output(&c.id(Train::ID.name, round - 1), train::CHECKPOINT);
            let synthesis = |how: synthesize::Method, inputs: Vec<(String, InputRef)>| {
                let id = c.id(Synthesize::ID.name, round);
                let params = synthesize::Params { round, net: c.net.clone(), targets: c.targets, per_class: sy.per_class, init_std: sy.init_std, size: None, reference, method: how, seed: seed(&id) };
                place::<Synthesize>(id, &params, inputs)
            };
            match method {
                Method::Icn => stages.push(synthesis(
                    synthesize::Method::Synthesis { batch_size: sy.batch_size, lr: sy.lr, max_steps: sy.max_steps, step: sy.step(), stop: sy.stop_rule() },
                    vec![(synthesize::CHECKPOINT.into(), previous.clone())],
                )),
                // p0 samples do not depend on the classifier: no input, so every round's
                // noise is made once and shared by every pipeline with the same seed.
                Method::IcnNoise => stages.push(synthesis(synthesize::Method::Noise, vec![])),
                Method::Baseline => {}
                Method::Winn | Method::Igm => unreachable!("methods::plan builds WINN and IGM with their own builders"),
            }
            let mut inputs = vec![(train::INIT.to_string(), previous), (train::TRAIN_SET.to_string(), data(load::TRAIN))];
            let sampling = (method != Method::Baseline).then(|| sampling(t));
            if sampling.is_some() {
                inputs.push((train::pseudo_negatives(round), InputRef::output(&c.id(Synthesize::ID.name, round), synthesize::PSEUDO_NEGATIVES)));
                if round >= 2 {
                    inputs.push((train::POOL.into(), InputRef::output(&c.id(Train::ID.name, round - 1), train::POOL)));
                }
            }
            let id = c.id(Train::ID.name, round);
            let params = train::Params {
                round,
                net: c.net.clone(),
                optimizer: t.optimizer(round),
                batch_size: t.batch_size,
                epochs: t.epochs_per_round,
                // the baseline is what a user trains without introspection: plain
                // cross-entropy every round, not (1 - alpha) x cross-entropy
                objective: if method == Method::Baseline { c.objective0 } else { c.objective },
                augment_pad,
                sampling,
                rollback: t.rollback(),
                seed: seed(&id),
            };
            stages.push(place::<Train>(id, &params, inputs));
        }
        stages.push(evaluate(round));
        stages.extend(attack(round));
    }
    let last = s.pipeline.rounds;
    stages.extend(super::probe_stages(p, &chains[0].net, last, InputRef::output(&chains[0].id(Train::ID.name, last), train::CHECKPOINT)));
    Graph { stages, rounds: ROUNDS }
}

/// An attack stage: its parameters (eps and clip converted to the models' [-1, 1], so the
/// same attack written in either unit has one key) and inputs: the test set and the
/// classifiers as (name, checkpoint), the attacked one first; the others are tested on its
/// adversarial examples.
pub fn attack_stage(id: String, a: &AttackSection, net: &NetConfig, round: u32, seed: u64, test: InputRef, models: &[(String, InputRef)]) -> StageDef {
    let mut inputs = vec![(attack::TEST.to_string(), test)];
    inputs.extend(models.iter().enumerate().map(|(i, (_, m))| (attack::checkpoint(i), m.clone())));
    let params = attack::Params {
        round,
        net: net.clone(),
        attack: a.config(),
        batch_size: a.batch_size,
        models: models.iter().map(|(n, _)| n.clone()).collect(),
        seed,
    };
    place::<Attack>(id, &params, inputs)
}

/// How pseudo-negatives enter batches, as `train` takes it.
fn sampling(t: &TrainSection) -> Sampling {
    match t.sampling {
        spec::Sampling::Union => Sampling::Union,
        spec::Sampling::Balanced => Sampling::Balanced { decay: t.recency_decay },
    }
}
