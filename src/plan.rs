//! From a pipeline to its stage graph, unrolled per round:
//!
//! ```text
//! load -> train/0 -> evaluate/0
//!      -> for t in 1..=T: synthesize/t -> train/t -> evaluate/t [-> attack/t]
//! ```
//!
//! With an `[attack]` section, `attack/t` attacks round t's classifier and tests round 0's
//! (the plain CNN) on the same adversarial examples.
//!
//! `train/t` warm-starts from `train/(t-1)` and sees every pseudo-negative made so far.
//! Each stage carries exactly the settings that can change its outputs, so a change reruns
//! that stage and what depends on it, and nothing else; the number of rounds is in no
//! stage, so growing it reuses the rounds already made.

use crate::spec::{data_files, Arch, AttackMethod, AttackSection, Method, NormChoice, OptimizerKind, Pipeline, Sampling, StopRule, SynthesisStep, SynthesizeSection, Variant};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// Where a stage input comes from.
#[derive(Clone, Debug, PartialEq)]
pub enum InputRef {
    /// A file outside the store (raw data), addressed by its content.
    File(PathBuf),
    /// An output of an earlier stage of the graph.
    Output { stage: String, output: String },
    /// An object already in the store, by digest: an output of another pipeline's stage
    /// (a sweep's two-way attack reads two members' classifiers).
    Object(String),
}

#[derive(Clone, Debug)]
pub struct StageDef {
    /// Position in the graph: `load`, `train/0`, `synthesize/3`, ...
    pub id: String,
    pub kind: &'static str,
    /// Bumped whenever the stage's code changes what it outputs for the same inputs.
    pub version: u32,
    pub params: Value,
    pub inputs: BTreeMap<String, InputRef>,
}

/// A stage before its seed is set: id, (kind, version), parameters, inputs.
pub type Planned = (String, (&'static str, u32), Value, Vec<(String, InputRef)>);

pub const LOAD: (&str, u32) = ("load", 1);
pub const TRAIN: (&str, u32) = ("train", 4);
pub const SYNTHESIZE: (&str, u32) = ("synthesize", 3);
pub const EVALUATE: (&str, u32) = ("evaluate", 5);
pub const ATTACK: (&str, u32) = ("attack", 1);

/// The seed of one stage: a function of the run seed and the stage's position only.
pub fn stage_seed(run_seed: u64, stage_id: &str) -> u64 {
    derive_seed(&format!("pipe-seed/{run_seed}/{stage_id}"))
}

/// A seed from a label: the first 8 bytes of its blake3 hash.
pub fn derive_seed(label: &str) -> u64 {
    u64::from_le_bytes(blake3::hash(label.as_bytes()).as_bytes()[..8].try_into().expect("8 bytes"))
}

/// The raw files a `load` stage reads, by input name (checked when the file was loaded).
fn data_inputs(p: &Pipeline) -> Vec<(String, InputRef)> {
    data_files(p.spec.data.format, &p.data_path, p.spec.data.svhn_extra)
        .unwrap_or_default()
        .into_iter()
        .map(|(name, path)| (name, InputRef::File(path)))
        .collect()
}

fn output(stage: &str, output: &str) -> InputRef {
    InputRef::Output { stage: stage.to_string(), output: output.to_string() }
}

/// One chain of classifiers trained round after round: the softmax net, the binary net,
/// or one of the K nets of one-vs-all (whose stage ids end in `/c{k}`).
struct Chain {
    suffix: String,
    /// The positive class of a one-vs-all member.
    member: Option<u32>,
    /// Net parameters (one logit for binary nets).
    net: Value,
    /// The training objective of rounds >= 1 (round 0 has no pseudo-negatives).
    objective: Value,
    objective0: Value,
    /// Which samples synthesis makes.
    targets: Value,
}

pub fn plan(p: &Pipeline) -> Vec<StageDef> {
    let s = &p.spec;
    let seed = s.pipeline.seed;
    let g = p.geometry;
    let norm = match (s.net.norm, s.net.arch) {
        (Some(NormChoice::Batch), _) | (None, Arch::Resnet32) => "batch",
        (Some(NormChoice::Layer), _) => "layer",
        (Some(NormChoice::None), _) | (None, Arch::Cnn4) => "none",
    };
    let net_with = |classes: usize| {
        json!({
            "arch": s.net.arch, "norm": norm, "width": s.net.width, "leaky_slope": s.net.leaky_slope,
            "channels": g.channels, "height": g.height, "image_width": g.width, "num_classes": classes,
        })
    };
    let t = &s.train;
    // The learning rate of a round, after the drop if there is one.
    let optimizer = |round: u32| {
        let lr = match t.lr_drop_round {
            Some(r) if round >= r => t.lr * t.lr_drop_factor,
            _ => t.lr,
        };
        match t.optimizer {
            OptimizerKind::Sgd => json!({"kind": "sgd", "lr": lr, "momentum": t.momentum}),
            OptimizerKind::Adam => json!({"kind": "adam", "lr": lr, "beta1": t.beta1, "beta2": t.beta2}),
        }
    };
    let binary_chain = |k: u32, member: Option<u32>| Chain {
        suffix: member.map(|k| format!("/c{k}")).unwrap_or_default(),
        member,
        net: net_with(1),
        objective: json!({"kind": "binary", "positive": k}),
        objective0: json!({"kind": "binary", "positive": k}),
        targets: json!({"kind": "binary", "class": k}),
    };
    let chains: Vec<Chain> = match s.pipeline.variant {
        Variant::Softmax => vec![Chain {
            suffix: String::new(),
            member: None,
            net: net_with(g.num_classes),
            objective: json!({"kind": "softmax", "alpha": t.alpha}),
            objective0: json!({"kind": "softmax", "alpha": 0.0}),
            targets: json!({"kind": "per-class"}),
        }],
        Variant::Binary => vec![binary_chain(s.pipeline.positive_class, None)],
        Variant::OneVsAll => (0..g.num_classes as u32).map(|k| binary_chain(k, Some(k))).collect(),
    };
    let evaluation = match s.pipeline.variant {
        Variant::Softmax => json!({"kind": "softmax"}),
        Variant::Binary => json!({"kind": "binary", "positive": s.pipeline.positive_class}),
        Variant::OneVsAll => json!({"kind": "one-vs-all"}),
    };

    let augment_pad = if t.augment { 4 } else { 0 };
    let mut stages = Vec::new();
    let mut push = |id: String, (kind, version): (&'static str, u32), mut params: Value, inputs: Vec<(String, InputRef)>| {
        if params.get("seed").is_none() {
            params["seed"] = json!(stage_seed(seed, &id));
        }
        stages.push(StageDef { id, kind, version, params, inputs: inputs.into_iter().collect() });
    };

    push(
        "load".into(),
        LOAD,
        json!({
            "format": s.data.format, "train_size": s.data.train_size,
            "validation_size": s.data.validation_size, "test_size": s.data.test_size, "channels": s.data.channels, "balanced": s.data.balanced,
            // the split depends on data.seed only: pipelines that differ in pipeline.seed share it
            "seed": stage_seed(s.data.seed, "load"),
        }),
        data_inputs(p),
    );
    let data = |name: &str| output("load", &format!("{name}.safetensors"));
    let evaluate = |round: u32| {
        let mut inputs = vec![("validation".to_string(), data("validation")), ("test".to_string(), data("test"))];
        for c in &chains {
            // zero-padded so that input order is class order
            let name = c.member.map_or("checkpoint".to_string(), |k| format!("checkpoint.c{k:04}"));
            inputs.push((name, output(&format!("train/{round}{}", c.suffix), "checkpoint.safetensors")));
            // lineage: does each pseudo-negative trained on so far still fool this classifier?
            if s.pipeline.method != Method::Baseline {
                for r in 1..=round {
                    let name = c.member.map_or(pseudo_negative_input(r), |k| format!("pseudo_negatives.c{k:04}.{r:04}"));
                    inputs.push((name, output(&format!("synthesize/{r}{}", c.suffix), "pseudo_negatives.safetensors")));
                }
            }
        }
        let net = &chains[0].net;
        (format!("evaluate/{round}"), EVALUATE, json!({"round": round, "batch_size": s.evaluate.batch_size, "net": net, "evaluation": evaluation}), inputs)
    };
    for c in &chains {
        push(
            format!("train/0{}", c.suffix),
            TRAIN,
            json!({"round": 0, "net": c.net, "optimizer": optimizer(0), "batch_size": t.batch_size, "epochs": t.epochs, "objective": c.objective0, "augment_pad": augment_pad}),
            vec![("train".into(), data("train"))],
        );
    }
    let (id, kind, params, inputs) = evaluate(0);
    push(id, kind, params, inputs);
    let attack = |round: u32| {
        let a = s.attack.as_ref()?;
        let model = |r: u32| (format!("train/{r}"), output(&format!("train/{r}"), "checkpoint.safetensors"));
        let models = if round > 0 { vec![model(round), model(0)] } else { vec![model(0)] };
        Some(attack_stage(&format!("attack/{round}"), a, &chains[0].net, round, data("test"), &models))
    };
    if let Some((id, kind, params, inputs)) = attack(0) {
        push(id, kind, params, inputs);
    }
    let sy = &s.synthesize;
    let method = s.pipeline.method;
    for round in 1..=s.pipeline.rounds {
        for c in &chains {
            let previous = format!("train/{}{}", round - 1, c.suffix);
            let synth_id = |r: u32| format!("synthesize/{r}{}", c.suffix);
            match method {
                Method::Icn => push(
                    synth_id(round),
                    SYNTHESIZE,
                    json!({
                        "round": round, "net": c.net, "method": "synthesis", "targets": c.targets,
                        "per_class": sy.per_class, "init_std": sy.init_std, "batch_size": sy.batch_size,
                        "lr": sy.lr, "max_steps": sy.max_steps, "step": synthesis_step(sy), "stop": stop_rule(sy),
                    }),
                    vec![("checkpoint".into(), output(&previous, "checkpoint.safetensors"))],
                ),
                // p0 samples do not depend on the classifier: no input, so every round's
                // noise is made once and shared by every pipeline with the same seed.
                Method::IcnNoise => push(
                    synth_id(round),
                    SYNTHESIZE,
                    json!({"round": round, "net": c.net, "method": "noise", "targets": c.targets, "per_class": sy.per_class, "init_std": sy.init_std}),
                    vec![],
                ),
                Method::Baseline => {}
            }
            let mut inputs = vec![("init".to_string(), output(&previous, "checkpoint.safetensors")), ("train".to_string(), data("train"))];
            let mut params = json!({
                "round": round, "net": c.net, "optimizer": optimizer(round), "batch_size": t.batch_size,
                "epochs": t.epochs_per_round, "objective": c.objective, "augment_pad": augment_pad,
            });
            if method != Method::Baseline {
                params["sampling"] = match t.sampling {
                    Sampling::Union => json!({"kind": "union"}),
                    Sampling::Balanced => json!({"kind": "balanced", "decay": t.recency_decay}),
                };
                for r in 1..=round {
                    inputs.push((pseudo_negative_input(r), output(&synth_id(r), "pseudo_negatives.safetensors")));
                }
            }
            push(format!("train/{round}{}", c.suffix), TRAIN, params, inputs);
        }
        let (id, kind, params, inputs) = evaluate(round);
        push(id, kind, params, inputs);
        if let Some((id, kind, params, inputs)) = attack(round) {
            push(id, kind, params, inputs);
        }
    }
    stages
}

/// An attack stage: its parameters (eps and clip converted to the models' [-1, 1], so the
/// same attack written in either unit has one key) and inputs: the test set and the
/// classifiers as (name, checkpoint), the attacked one first; the others are tested on its
/// adversarial examples.
pub fn attack_stage(id: &str, a: &AttackSection, net: &Value, round: u32, test: InputRef, models: &[(String, InputRef)]) -> Planned {
    let scale = a.eps_unit.scale();
    let (lo, hi) = match a.clip {
        Some([lo, hi]) => (a.eps_unit.to_model(lo), a.eps_unit.to_model(hi)),
        None => (-1.0, 1.0),
    };
    let eps = a.eps * scale;
    let method = match a.method {
        AttackMethod::Fgsm => json!({"kind": "fgsm", "eps": eps, "lo": lo, "hi": hi}),
        AttackMethod::Pgd => json!({
            "kind": "pgd", "eps": eps, "lo": lo, "hi": hi, "steps": a.steps,
            "step_size": a.step_size.map_or(eps / 4.0, |s| s * scale), "random_start": a.random_start,
        }),
    };
    let mut inputs = vec![("test".to_string(), test)];
    inputs.extend(models.iter().enumerate().map(|(i, (_, m))| (format!("checkpoint.{i:04}"), m.clone())));
    let names: Vec<&String> = models.iter().map(|(n, _)| n).collect();
    let params = json!({"round": round, "net": net, "attack": method, "batch_size": a.batch_size, "models": names});
    (id.to_string(), ATTACK, params, inputs)
}

/// How x moves during synthesis, as stage parameters.
fn synthesis_step(sy: &SynthesizeSection) -> Value {
    match sy.optimizer {
        SynthesisStep::Adam => json!({"kind": "adam", "beta1": sy.beta1, "beta2": sy.beta2}),
        SynthesisStep::Sgd => json!({"kind": "sgd"}),
        SynthesisStep::Langevin => json!({"kind": "langevin", "decay": sy.langevin_decay}),
    }
}

/// When synthesis of a sample stops, as stage parameters.
fn stop_rule(sy: &SynthesizeSection) -> Value {
    match sy.stop {
        StopRule::Classified => json!({"kind": "classified"}),
        StopRule::Probability => json!({"kind": "probability", "threshold": sy.stop_probability}),
        StopRule::Steps => json!({"kind": "steps"}),
    }
}

/// Input name of round r's pseudo-negatives; zero-padded so names sort in round order.
pub fn pseudo_negative_input(round: u32) -> String {
    format!("pseudo_negatives.{round:04}")
}
