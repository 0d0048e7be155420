//! IGM (introspective generative modelling, ICCV 2017) as one graph builder, unrolled per
//! round. Unsupervised: every training image is a positive, one logit.
//!
//! ```text
//! load -> synthesize/0 (p0: the first working set)
//!      -> for t in 1..=T: train/t (positives against the working set)
//!                         -> synthesize/t (from train/t, each sample starting from the
//!                                          same sample of synthesize/t-1)
//!      [-> sample/<size> for each sample.sizes]
//! ```
//!
//! The cascade (`igm.cascade = true`): train/t is a new classifier C_t that sees only the
//! working set of round t-1 (warm-started from C_{t-1} with `igm.warm_start`), and the
//! model is the product exp(f_1) ... exp(f_T) p0. synthesize/t ascends f_t alone from
//! samples of p_{t-1}, so its output is a sample of p_t, and a draw from the model is p0
//! noise run through C_1, ..., C_T in order: `sample/<size>`, `pipe sample`, and, from
//! synthesize/0's seed, synthesize/T's own samples bit for bit.
//!
//! Textures (`igm.negative_size`): the positives are crops of the one texture, the
//! pseudo-negatives whole images larger than a crop (the paper: 320x320 for 64x64 patches
//! of a 256x256 texture, so that every pixel of the centre is equally likely to be in a
//! patch). Training draws a random window of one each time it draws it; synthesis moves
//! each pixel by the mean gradient of the random windows covering it (`igm.synthesis_patches`
//! a step), stopping on the sliding-window rule (`synthesize.stop = "window"`).
//!
//! IGM-single (`igm.cascade = false`): one classifier, continued every round on every
//! pseudo-negative so far (through train's pool), a round-r one drawn with weight
//! `train.recency_decay`^(t - r) (0.5 in the reference code); its model is the last classifier alone.

use super::{Graph, Rounds, Shown};
use crate::engine::graph::{stage_seed, InputRef, StageDef};
use crate::kinds::load::{self, Load};
use crate::kinds::sample::{self, Sample};
use crate::kinds::synthesize::{self, Synthesize, Targets};
use crate::kinds::train::{self, Sampling, Train};
use crate::kinds::{place, Kind};
use crate::pipeline::spec::Pipeline;
use stages::loss::Objective;
use stages::nn::NetConfig;

/// How IGM reports its rounds: the share of the working set that the round's classifier
/// still scores positive after training, the last round kept (nothing to select on without
/// labels).
pub const ROUNDS: Rounds = Rounds {
    reporter: Train::ID,
    select_on: None,
    reported: train::NEGATIVES_FOOLING,
    shown: Shown { heading: "pseudo-negatives fooling C_t", percent: true },
    model: (Train::ID, train::CHECKPOINT),
};

fn id<K: Kind>(round: u32) -> String {
    format!("{}/{round}", K::ID.name)
}

/// The classifier of every round: one logit.
pub fn net(p: &Pipeline) -> NetConfig {
    p.spec.net.config(p.geometry, 1)
}

/// The rounds whose classifiers make up the trained model, in sampling order: all of them
/// for a cascade, the last for IGM-single.
pub fn model_rounds(p: &crate::pipeline::spec::Spec) -> Vec<u32> {
    let t = p.pipeline.rounds;
    if p.igm.cascade {
        (1..=t).collect()
    } else {
        vec![t]
    }
}

pub fn build(p: &Pipeline) -> Graph {
    let s = &p.spec;
    let seed = |id: &str| stage_seed(s.pipeline.seed, id);
    let (t, sy, igm) = (&s.train, &s.synthesize, &s.igm);
    let net = net(p);
    let data = |output: &str| InputRef::output(Load::ID.name, output);
    let synthesized = |round: u32| InputRef::output(&id::<Synthesize>(round), synthesize::PSEUDO_NEGATIVES);
    let checkpoint = |round: u32| InputRef::output(&id::<Train>(round), train::CHECKPOINT);
    let synthesis = |round: u32, method: synthesize::Method, inputs: Vec<(String, InputRef)>| {
        let id = id::<Synthesize>(round);
        let params = synthesize::Params {
            round,
            net: net.clone(),
            targets: Targets::Binary { class: 0 },
            per_class: sy.per_class,
            init_std: sy.init_std,
            size: igm.negative_size.map(|side| (side, side)),
            reference: super::reference(s),
            method,
            seed: seed(&id),
        };
        place::<Synthesize>(id, &params, inputs)
    };

    let mut stages: Vec<StageDef> = vec![super::load_stage(p), synthesis(0, synthesize::Method::Noise, vec![])];
    let rounds = s.pipeline.rounds;
    for round in 1..=rounds {
        let mut inputs = vec![(train::TRAIN_SET.to_string(), data(load::TRAIN)), (train::pseudo_negatives(round - 1), synthesized(round - 1))];
        if round >= 2 && igm.warm_start {
            inputs.push((train::INIT.to_string(), checkpoint(round - 1)));
        }
        if round >= 2 && !igm.cascade {
            inputs.push((train::POOL.into(), InputRef::output(&id::<Train>(round - 1), train::POOL)));
        }
        let train_id = id::<Train>(round);
        // a cascade's round sees one set, so the weights only matter for IGM-single
        let sampling = Sampling::Balanced { decay: if igm.cascade { 1.0 } else { t.recency_decay } };
        let params = super::round_training(t, round, net.clone(), t.epochs_per_round, Objective::Igm, sampling, seed(&train_id));
        stages.push(place::<Train>(train_id, &params, inputs));
        let method = match igm.negative_size {
            None => synthesize::Method::Synthesis { batch_size: sy.batch_size, lr: sy.lr, max_steps: sy.max_steps, step: sy.step(), stop: sy.stop_rule() },
            Some(_) => synthesize::Method::Patches { per_step: igm.synthesis_patches, lr: sy.lr, max_steps: sy.max_steps, step: sy.step(), stop: sy.stop_rule() },
        };
        let inputs = vec![(synthesize::CHECKPOINT.to_string(), checkpoint(round)), (synthesize::STARTS.to_string(), synthesized(round - 1))];
        stages.push(synthesis(round, method, inputs));
    }

    if rounds > 0 {
        let model: Vec<InputRef> = model_rounds(s).into_iter().map(checkpoint).collect();
        for &size in &s.sample.sizes {
            let id = format!("{}/{size}", Sample::ID.name);
            let params = super::sample_params(p, &net, (size, size), seed(&id));
            stages.push(sample::stage(id, &params, &model));
        }
    }
    stages.extend(super::probe_stages(p, &net, rounds, checkpoint(rounds)));
    stages.extend(super::quality_stages(p, rounds, synthesized));
    Graph { stages, rounds: self::rounds(s) }
}

/// How an IGM run reports its rounds: by the sample quality when it is measured (the
/// Gram distance for textures, else the Fréchet distance), else by [`ROUNDS`].
pub fn rounds(s: &crate::pipeline::spec::Spec) -> Rounds {
    use crate::kinds::quality::{self, Measure, Quality};
    if s.quality.is_none() {
        return ROUNDS;
    }
    // the class count only decides judge or random features: both report the distance
    let (reported, heading) = match super::quality_measure(s, 1) {
        Measure::Texture => (quality::GRAM, "Gram distance"),
        _ => (quality::FRECHET, "Fréchet distance"),
    };
    Rounds { reporter: Quality::ID, select_on: None, reported, shown: Shown { heading, percent: false }, model: ROUNDS.model }
}
