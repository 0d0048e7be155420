//! Methods: graph builders. A method places stage kinds into rounds (or cascades) and
//! declares how its rounds are reported and which one a run keeps. `plan()` is pipeline
//! file -> the method's builder -> the graph.

pub mod icn;
pub mod igm;
pub mod select;
pub mod winn;

use crate::engine::graph::{stage_seed, InputRef, KindId, StageDef};
use crate::kinds::load::{self, Load};
use crate::kinds::{place, synthesize, train, Kind};
use crate::pipeline::spec::{self, Method, Pipeline};

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
    /// How the reported metric is shown.
    pub shown: Shown,
    /// The kind and output that hold a round's model (one per net of the round).
    pub model: (KindId, &'static str),
}

/// How a round's reported metric reads in tables: its column heading, and whether it is a
/// rate shown in percent (an error) or a value shown as it is (a critic's Wasserstein
/// estimate).
#[derive(Clone, Copy, Debug)]
pub struct Shown {
    pub heading: &'static str,
    pub percent: bool,
}

impl Shown {
    pub const TEST_ERROR: Shown = Shown { heading: "test err", percent: true };

    pub fn value(self, v: f64) -> String {
        if self.percent {
            format!("{:.2}%", 100.0 * v)
        } else {
            format!("{v:.4}")
        }
    }
}

/// A planned pipeline: its stages in run order, and its method's declaration.
pub struct Graph {
    pub stages: Vec<StageDef>,
    pub rounds: Rounds,
}

/// The graph of a pipeline.
pub fn plan(p: &Pipeline) -> Graph {
    match p.spec.pipeline.method {
        Method::Winn => winn::build(p),
        Method::Igm => igm::build(p),
        Method::Icn | Method::IcnNoise | Method::Baseline => icn::build(p),
    }
}

/// The declaration that reads a stored run's rounds, from the method and variant its
/// record's settings name.
pub fn rounds_of(record: &crate::engine::executor::RunRecord) -> Rounds {
    let pipeline = &record.spec["pipeline"];
    match (pipeline["method"].as_str(), pipeline["variant"].as_str()) {
        (Some("winn"), Some("unsupervised")) => winn::UNSUPERVISED_ROUNDS,
        (Some("igm"), _) => serde_json::from_value::<spec::Spec>(record.spec.clone()).map_or(igm::ROUNDS, |s| igm::rounds(&s)),
        _ => icn::ROUNDS,
    }
}

/// The reference distribution p0 of a pipeline's synthesize stages. It is one
/// distribution for the whole pipeline: every round's Appendix D net is the same one.
pub fn reference(s: &spec::Spec) -> Option<synthesize::Reference> {
    match s.synthesize.reference {
        spec::ReferenceChoice::Gaussian => None,
        spec::ReferenceChoice::AppendixD => Some(synthesize::Reference::AppendixD { seed: stage_seed(s.pipeline.seed, "reference/appendix-d") }),
    }
}

/// With a `[probe]` section: `probe/<round>` on `checkpoint` (that round's classifier)
/// and `probe/random` on random weights of the same net, its floor. Both read the load
/// stage's sets; the random one depends on nothing trained, so every case of a sweep with
/// the same net and seed shares it.
pub fn probe_stages(p: &Pipeline, net: &stages::nn::NetConfig, round: u32, checkpoint: InputRef) -> Vec<StageDef> {
    use crate::kinds::probe::{self, Probe};
    let Some(section) = &p.spec.probe else { return Vec::new() };
    let sets = || {
        [(probe::TRAIN, load::TRAIN), (probe::VALIDATION, load::VALIDATION), (probe::TEST, load::TEST)]
            .map(|(input, output)| (input.to_string(), InputRef::output(Load::ID.name, output)))
            .to_vec()
    };
    let stage = |id: String, checkpoint: Option<InputRef>| {
        let params = probe::Params {
            net: net.clone(),
            labels: section.labels,
            draws: section.draws,
            c_grid: section.c_grid.clone(),
            batch_size: p.spec.evaluate.batch_size,
            seed: stage_seed(p.spec.pipeline.seed, &id),
        };
        let mut inputs = sets();
        inputs.extend(checkpoint.map(|c| (probe::CHECKPOINT.to_string(), c)));
        place::<Probe>(id, &params, inputs)
    };
    vec![stage(format!("{}/{round}", Probe::ID.name), Some(checkpoint)), stage(format!("{}/random", Probe::ID.name), None)]
}

/// How a generative run's `quality/<round>` stages measure: with a judge trained on the
/// labels where the data has classes, on random-net features where it has one, on Gram
/// matrices for textures.
pub fn quality_measure(p: &spec::Spec, num_classes: usize) -> crate::kinds::quality::Measure {
    use crate::kinds::quality::Measure;
    if p.data.format == load::DataFormat::Texture {
        Measure::Texture
    } else if num_classes > 1 {
        Measure::Judge
    } else {
        Measure::RandomFeatures
    }
}

/// With a `[quality]` section: `quality/<r>` on `samples(r)` for every round 0..=`rounds`
/// (round 0: p0 itself, the starting point), the judge they share (`train/judge`, labelled
/// data only) and `quality/curve` over them.
pub fn quality_stages(p: &Pipeline, rounds: u32, samples: impl Fn(u32) -> InputRef) -> Vec<StageDef> {
    use crate::kinds::quality::{self, Measure, Quality, QualityCurve};
    let Some(q) = &p.spec.quality else { return Vec::new() };
    let s = &p.spec;
    let measure = quality_measure(s, p.geometry.num_classes);
    let classes = if measure == Measure::Judge { p.geometry.num_classes } else { 1 };
    let net = s.net.config(p.geometry, classes);
    let mut stages = Vec::new();
    let judge_id = format!("{}/judge", train::Train::ID.name);
    if measure == Measure::Judge {
        let params = train::Params { epochs: q.judge_epochs, ..round_zero(&s.train, net.clone(), stages::loss::Objective::Softmax { alpha: 0.0 }, stage_seed(s.pipeline.seed, &judge_id)) };
        stages.push(place::<train::Train>(judge_id.clone(), &params, vec![(train::TRAIN_SET.into(), InputRef::output(Load::ID.name, load::TRAIN))]));
    }
    // texture crops of the test split are few: the training crops are the real texture
    let real = if measure == Measure::Texture { load::TRAIN } else { load::TEST };
    let mut curve_inputs = Vec::new();
    for round in 0..=rounds {
        let id = format!("{}/{round}", Quality::ID.name);
        // one random net for every round, so rounds compare
        let params = quality::Params { round, measure, net: net.clone(), count: q.count, batch_size: s.evaluate.batch_size, seed: stage_seed(s.pipeline.seed, "quality") };
        let mut inputs = vec![(quality::SAMPLES.to_string(), samples(round)), (quality::REAL.to_string(), InputRef::output(Load::ID.name, real))];
        if measure == Measure::Judge {
            inputs.push((quality::JUDGE.to_string(), InputRef::output(&judge_id, train::CHECKPOINT)));
        }
        stages.push(place::<Quality>(id.clone(), &params, inputs));
        curve_inputs.push((quality::round_table(round), InputRef::output(&id, quality::TABLE)));
    }
    let title = format!("{}: sample quality by round", p.name);
    stages.push(place::<QualityCurve>(format!("{}/curve", Quality::ID.name), &quality::CurveParams { title }, curve_inputs));
    stages
}

/// A `sample` stage's settings for images of `size` (rows, columns) from the nets of a
/// generative model (`net`): the pipeline's synthesis settings, patches for sizes other
/// than the nets', and the stop rule of the method's training synthesis (IGM), or each
/// critic's thresholds (WINN).
pub fn sample_params(p: &Pipeline, net: &stages::nn::NetConfig, size: (usize, usize), seed: u64) -> crate::kinds::sample::Params {
    use crate::kinds::sample;
    let (s, w) = (&p.spec.synthesize, &p.spec.sample);
    let patches = (size != (net.height, net.image_width)).then_some(sample::Patches { per_step: w.patches, pad: sample::PAD, max_steps: w.max_steps });
    sample::Params {
        net: net.clone(),
        count: w.count,
        height: size.0,
        width: size.1,
        lr: s.lr,
        max_steps: s.max_steps,
        batch_size: s.batch_size,
        step: s.step(),
        init_std: s.init_std,
        reference: reference(&p.spec),
        patches,
        stop: (p.spec.pipeline.method == Method::Igm).then(|| s.stop_rule()),
        seed,
    }
}

/// Round t's training (t >= 1): the pipeline's optimizer for that round, its batch size,
/// augmentation and divergence rule, with the method's objective, epochs and sampling.
pub fn round_training(t: &spec::TrainSection, round: u32, net: stages::nn::NetConfig, epochs: u32, objective: stages::loss::Objective, sampling: train::Sampling, seed: u64) -> train::Params {
    train::Params {
        round,
        net,
        optimizer: t.optimizer(round),
        batch_size: t.batch_size,
        epochs,
        objective,
        augment_pad: if t.augment { 4 } else { 0 },
        sampling: Some(sampling),
        rollback: t.rollback(),
        seed,
    }
}

/// Round 0's training: the plain net on the real data alone, `train.epochs` epochs.
pub fn round_zero(t: &spec::TrainSection, net: stages::nn::NetConfig, objective: stages::loss::Objective, seed: u64) -> train::Params {
    train::Params {
        round: 0,
        net,
        optimizer: t.optimizer(0),
        batch_size: t.batch_size,
        epochs: t.epochs,
        objective,
        augment_pad: if t.augment { 4 } else { 0 },
        sampling: None,
        rollback: t.rollback(),
        seed,
    }
}

/// The `load` stage of a pipeline: its data files and how they split. The split depends
/// on data.seed only, so pipelines that differ in pipeline.seed share it.
pub fn load_stage(p: &Pipeline) -> StageDef {
    let s = &p.spec;
    let files = load::data_files(s.data.format, &p.data_path, s.data.svhn_extra, s.data.texture.as_deref()).unwrap_or_default();
    let texture = s.data.format == load::DataFormat::Texture;
    place::<Load>(
        Load::ID.name.into(),
        &load::Params {
            format: s.data.format,
            train_size: s.data.train_size,
            validation_size: s.data.validation_size,
            test_size: s.data.test_size,
            // the files of the other formats fix it: in the key it would only mislead
            channels: matches!(s.data.format, load::DataFormat::Folder | load::DataFormat::Parquet | load::DataFormat::Texture).then_some(s.data.channels),
            balanced: s.data.balanced,
            patch: texture.then_some(s.data.patch),
            seed: stage_seed(s.data.seed, Load::ID.name),
        },
        files.into_iter().map(|(name, path)| (name, InputRef::File(path))).collect(),
    )
}
