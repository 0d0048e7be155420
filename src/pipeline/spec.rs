//! Pipeline files: TOML with every key known and typed, `--set` overrides, and validation
//! that happens before any work. Errors name the file, the line or key, and what was
//! expected.

pub use crate::kinds::load::DataFormat;
use crate::kinds::load::data_files;
use crate::kinds::train;
use crate::UserError;
use anyhow::Result;
use serde::{Deserialize, Serialize};
pub use stages::nn::{Arch, Normalization};
use stages::attack::AttackConfig;
use stages::nn::NetConfig;
use stages::optim::OptimizerConfig;
use stages::synthesize::{Step, StopRule};
use std::path::{Path, PathBuf};

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    /// What runs: the method, its variant, the number of rounds, the seed and the device.
    pub pipeline: PipelineSection,
    /// The data set: where its files are, and how many examples of each split are used.
    pub data: DataSection,
    // Required, though each has defaults inside: a file cut short must not train with
    // settings nobody wrote.
    /// The classifier: architecture, normalization and width.
    pub net: NetSection,
    /// How each round's classifier is trained: the plain classifier of round 0, then each
    /// reclassification round on the real data and the pseudo-negatives so far.
    pub train: TrainSection,
    /// How pseudo-negatives are made: gradient ascent on x, from noise of p0, until a stop
    /// rule holds.
    pub synthesize: SynthesizeSection,
    /// Errors of every round's classifier on the validation and test sets.
    #[serde(default)]
    pub evaluate: EvaluateSection,
    /// WINN's settings (`pipeline.method = "winn"`); the defaults are the paper's.
    #[serde(default)]
    pub winn: WinnSection,
    /// IGM's settings (`pipeline.method = "igm"`); the defaults are the paper's.
    #[serde(default)]
    pub igm: IgmSection,
    /// Images drawn from a trained generative model (unsupervised WINN, IGM) at the end of
    /// the run, one `sample/<size>` stage per size.
    #[serde(default)]
    pub sample: SampleSection,
    /// Adversarial attack of every round's classifier; absent: no attack stages.
    #[serde(default)]
    pub attack: Option<AttackSection>,
    /// The semi-supervised probe (IGM 4.5) of the last round's classifier and of a
    /// random-weights net of the same architecture, its floor: an L2-SVM on the features of
    /// the last three layers, trained on few labels; absent: no probe stages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe: Option<ProbeSection>,
    /// Sample quality of a generative run (unsupervised WINN, IGM) at every round: a
    /// `quality/<round>` stage per round and `quality/curve` (a table and a PNG over
    /// rounds); absent: none. Labelled data: an Inception-style score and a Fréchet
    /// distance by a judge classifier trained on the labels (`train/judge`); one class: a
    /// Fréchet distance on a fixed random net's features; textures: a Gram-matrix distance.
    /// Not comparable to published IS/FID (no Inception weights ship with pipe).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quality: Option<QualitySection>,
    /// A matrix of pipelines to run (see `src/pipeline/sweep.rs`); absent for a single
    /// pipeline. A quoted setting with a list of values, e.g. `"pipeline.seed" = [0, 1, 2]`,
    /// runs each value; `cases = [{ name = "icn", "pipeline.method" = "icn" }, ...]` names
    /// sets of settings. Every case runs with every combination of the lists.
    #[serde(default)]
    pub sweep: Option<toml::Table>,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PipelineSection {
    /// Shown in `pipe ls`; defaults to the file's stem.
    #[serde(default)]
    pub name: Option<String>,
    /// Every stage's randomness derives from this and the stage's position in the graph.
    #[serde(default)]
    pub seed: u64,
    /// Introspection rounds after the plain classifier of round 0.
    pub rounds: u32,
    /// `icn` (pseudo-negatives by synthesis), `icn-noise` (pseudo-negatives are plain p0
    /// noise), `baseline` (no pseudo-negatives: plain cross-entropy every round, the same
    /// epochs, batch size and learning-rate schedule) or `winn` (a Wasserstein critic with
    /// a gradient penalty: supervised with `variant = "softmax"`, WINN-single and cascades
    /// with `variant = "unsupervised"`; settings in [winn]) or `igm` (introspective
    /// generative modelling: a cascade of classifiers, or IGM-single, from positives only,
    /// `variant = "unsupervised"`; settings in [igm]).
    #[serde(default)]
    pub method: Method,
    /// `softmax` (one net, K logits, Eq. 9), `binary` (Algorithm 1: one net, class
    /// `positive_class` against everything else), `one-vs-all` (K binary nets, each with
    /// its own pseudo-negatives; prediction argmax_k f_k(x)) or `unsupervised` (WINN, IGM:
    /// every training image is a positive, labels unused, one logit).
    #[serde(default)]
    pub variant: Variant,
    /// Where stages run: `cpu` or `cuda:N` (a build with the `cuda` feature). Recorded in
    /// manifests, never part of a key: a CPU and a CUDA run of one file share keys.
    #[serde(default = "d_cpu")]
    pub device: String,
    /// The positive class of `variant = "binary"`.
    #[serde(default)]
    pub positive_class: u32,
    /// Stop adding rounds once validation error has not improved for this many rounds
    /// (none: run every round). The run reports the best round on validation either way.
    #[serde(default)]
    pub patience: Option<u32>,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Variant {
    #[default]
    Softmax,
    Binary,
    OneVsAll,
    Unsupervised,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    #[default]
    Icn,
    IcnNoise,
    Baseline,
    Winn,
    Igm,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct WinnSection {
    /// lambda of Eq. 5: the weight of the gradient penalty.
    pub lambda: f64,
    /// Supervised WINN: a, the weight of (Wasserstein term + penalty) beside the
    /// cross-entropy.
    pub weight: f64,
    /// Unsupervised WINN: the paper's k, passes of the critic over the positives per round
    /// (epochs of each round's train stage).
    pub critic_updates: u32,
    /// Unsupervised WINN: cascades, each of `pipeline.rounds` rounds; 1 is WINN-single.
    /// Cascade c's synthesis starts from cascade c-1's last samples.
    pub cascades: u32,
    /// Supervised WINN: w of the class-conditioned synthesis, which ascends
    /// f + w log softmax_k (0.5 in the reference code).
    pub class_weight: f64,
}
impl Default for WinnSection {
    fn default() -> Self {
        WinnSection { lambda: 10.0, weight: 0.01, critic_updates: 3, cascades: 1, class_weight: 0.5 }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct IgmSection {
    /// `true`: the IGM cascade, a new classifier C_t each round against the working set
    /// of the round before (replaced, not kept), the model C_1..C_T; `false`: IGM-single,
    /// one classifier trained on, every round, all pseudo-negatives so far, a round-r one
    /// drawn with weight `train.recency_decay`^(t - r). Either way each batch is half
    /// positives, half pseudo-negatives.
    pub cascade: bool,
    /// Cascade: C_t starts from C_{t-1}'s weights (the paper, for textures) instead of a
    /// fresh initialization. IGM-single always continues its one classifier.
    pub warm_start: bool,
    /// Method igm on a texture (`data.format = "texture"`): the side of the pseudo-negatives, larger than
    /// the crops the classifiers see (the paper: 320 for 64x64 patches of a 256x256
    /// texture, a 32-pixel border). Training draws a random crop-sized window of one each
    /// time it draws it; synthesis ascends the mean f over random windows. None: the
    /// pseudo-negatives are crop-sized, synthesized whole.
    pub negative_size: Option<usize>,
    /// With `negative_size`: random windows per synthesis step of each pseudo-negative
    /// (each pixel moves by the mean gradient of the windows covering it).
    pub synthesis_patches: usize,
}
impl Default for IgmSection {
    fn default() -> Self {
        IgmSection { cascade: true, warm_start: true, negative_size: None, synthesis_patches: 10 }
    }
}

impl IgmSection {
    fn validate(&self, spec: &Spec, need: &mut Need) {
        need(self.cascade || self.warm_start, "igm.warm_start", "true for IGM-single (igm.cascade = false): its one classifier always continues");
        if spec.pipeline.method == Method::Igm {
            need(spec.pipeline.variant == Variant::Unsupervised, "pipeline.variant", "`unsupervised` for method igm (it learns from positives only)");
            need(matches!(spec.synthesize.stop, StopChoice::Classified | StopChoice::Probability | StopChoice::Steps | StopChoice::Window), "synthesize.stop", "`classified` (the paper, faces and digits: once across the decision boundary), `window` (textures), `probability` or `steps` for method igm");
        }
        need((1..=MAX_BATCH).contains(&self.synthesis_patches), "igm.synthesis_patches", &format!("1 to {MAX_BATCH} windows"));
        if self.negative_size.is_some() && spec.pipeline.method == Method::Igm {
            need(spec.data.format == DataFormat::Texture, "igm.negative_size", "a texture (data.format = \"texture\"): larger pseudo-negatives are windowed as textures are");
            need(spec.synthesize.reference == ReferenceChoice::Gaussian, "synthesize.reference", "`gaussian` with igm.negative_size (Appendix D's net makes images of the crops' size)");
            need(self.negative_size.is_some_and(|n| n >= spec.data.patch && n <= 4096), "igm.negative_size", &format!("a side of data.patch ({}) to 4096 pixels", spec.data.patch));
        }
        need(spec.synthesize.stop != StopChoice::Window || spec.pipeline.method == Method::Igm, "synthesize.stop", "`window` only for method igm");
    }
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct QualitySection {
    /// Samples (and as many real images) compared at most per round.
    pub count: usize,
    /// Epochs of the judge classifier on the labelled training images (labelled data only).
    pub judge_epochs: u32,
}
impl Default for QualitySection {
    fn default() -> Self {
        QualitySection { count: 500, judge_epochs: 3 }
    }
}

impl QualitySection {
    fn validate(&self, spec: &Spec, need: &mut Need) {
        let generative = spec.pipeline.variant == Variant::Unsupervised && matches!(spec.pipeline.method, Method::Winn | Method::Igm);
        need(generative, "quality", "a generative run (pipeline.method = \"winn\" or \"igm\" with variant = \"unsupervised\")");
        need((2..=MAX_PER_CLASS).contains(&self.count), "quality.count", "2 to 1,000,000 images");
        need((1..=MAX_EPOCHS).contains(&self.judge_epochs), "quality.judge_epochs", &format!("1 to {MAX_EPOCHS} epochs"));
    }
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SampleSection {
    /// Sizes (pixels per side) of the images sampled from the trained model at the end,
    /// one `sample/<size>` stage each; sizes beyond the training images are synthesized
    /// from patches (WINN 5.2, IGM 5.1). Unsupervised WINN and IGM only.
    pub sizes: Vec<usize>,
    /// Images drawn by each `sample/<size>` stage.
    pub count: usize,
    /// Patches per synthesis step of a sample larger than the training images (200 in the
    /// WINN paper).
    pub patches: usize,
    /// Most synthesis steps of a patch sample.
    pub max_steps: u32,
}
impl Default for SampleSection {
    fn default() -> Self {
        SampleSection { sizes: Vec::new(), count: 4, patches: 200, max_steps: 500 }
    }
}

impl SampleSection {
    fn validate(&self, spec: &Spec, need: &mut Need) {
        let generative = spec.pipeline.variant == Variant::Unsupervised && matches!(spec.pipeline.method, Method::Winn | Method::Igm);
        need((1..=MAX_PER_CLASS).contains(&self.count), "sample.count", "1 to 1,000,000 images");
        need((1..=MAX_BATCH).contains(&self.patches), "sample.patches", &format!("1 to {MAX_BATCH} patches"));
        need(self.max_steps <= MAX_STEPS, "sample.max_steps", &format!("at most {MAX_STEPS} steps"));
        need(self.sizes.iter().all(|&s| (1..=4096).contains(&s)), "sample.sizes", "sides of 1 to 4096 pixels");
        need(self.sizes.is_empty() || generative, "sample.sizes", "pipeline.method = \"winn\" or \"igm\" with variant = \"unsupervised\" (the samples come from its trained model)");
    }
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ProbeSection {
    /// Labelled training examples per draw (1000 in the paper).
    pub labels: usize,
    /// Random draws of the labelled examples; the probe reports the mean and sd of the
    /// test error over them (100 in the paper).
    pub draws: usize,
    /// The SVM's C values; each draw keeps the one with the least validation error.
    pub c_grid: Vec<f64>,
}
impl Default for ProbeSection {
    fn default() -> Self {
        ProbeSection { labels: 1000, draws: 20, c_grid: vec![0.001, 0.01, 0.1, 1.0] }
    }
}

impl ProbeSection {
    fn validate(&self, spec: &Spec, need: &mut Need) {
        need(spec.pipeline.variant != Variant::OneVsAll, "pipeline.variant", "`softmax`, `binary` or `unsupervised` with a [probe]: it reads one net's features");
        need((2..=MAX_PER_CLASS).contains(&self.labels), "probe.labels", "2 to 1,000,000 examples");
        need((1..=10_000).contains(&self.draws), "probe.draws", "1 to 10,000 draws");
        need(!self.c_grid.is_empty() && self.c_grid.iter().all(|c| c.is_finite() && *c > 0.0), "probe.c_grid", "one or more positive values of C, e.g. [0.01, 0.1, 1.0]");
    }
}

impl WinnSection {
    fn validate(&self, spec: &Spec, need: &mut Need) {
        let winn = spec.pipeline.method == Method::Winn;
        need(self.lambda >= 0.0, "winn.lambda", "a penalty weight >= 0");
        need(self.weight > 0.0, "winn.weight", "a positive weight");
        need(self.class_weight >= 0.0, "winn.class_weight", "a weight >= 0");
        need((1..=MAX_EPOCHS).contains(&self.critic_updates), "winn.critic_updates", &format!("1 to {MAX_EPOCHS} passes"));
        need((1..=MAX_ROUNDS).contains(&self.cascades), "winn.cascades", &format!("1 to {MAX_ROUNDS} cascades"));
        need(self.cascades == 1 || spec.pipeline.variant == Variant::Unsupervised, "winn.cascades", "1 for supervised WINN (cascades are unsupervised)");
        need(self.cascades as u64 * spec.pipeline.rounds as u64 <= MAX_ROUNDS as u64, "winn.cascades", &format!("at most {MAX_ROUNDS} rounds in all (cascades x pipeline.rounds)"));
        if winn {
            need(matches!(spec.pipeline.variant, Variant::Softmax | Variant::Unsupervised), "pipeline.variant", "`softmax` (supervised WINN) or `unsupervised` (WINN-single, cascades) for method winn");
            need(spec.synthesize.stop == StopChoice::Threshold, "synthesize.stop", "\"threshold\" for method winn (its samples stop at thresholds drawn from f over positives)");
            need(spec.net.norm != Some(Normalization::Batch) && !(spec.net.norm.is_none() && spec.net.arch == Arch::Resnet32), "net.norm", "`layer` or `none` for method winn: batch norm mixes the images of a batch, so the gradient penalty has no per-image gradient (the paper uses layer norm)");
        } else if spec.pipeline.method != Method::Igm {
            need(spec.pipeline.variant != Variant::Unsupervised, "pipeline.variant", "`softmax`, `binary` or `one-vs-all`; `unsupervised` is WINN's and IGM's (pipeline.method = \"winn\" or \"igm\")");
            need(spec.synthesize.stop != StopChoice::Threshold, "synthesize.stop", "`classified`, `probability`, `steps` or `argmax`; `threshold` is WINN's (pipeline.method = \"winn\")");
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DataSection {
    /// How the files under `path` are laid out.
    pub format: DataFormat,
    /// The directory of the data set's files. Relative paths are relative to the pipeline
    /// file (to the working directory when given with `--set`).
    pub path: PathBuf,
    /// Training examples to keep after the validation split (0 = all).
    #[serde(default)]
    pub train_size: usize,
    /// Examples held out from the training files for validation.
    #[serde(default = "d_validation_size")]
    pub validation_size: usize,
    /// Test examples to use (0 = all).
    #[serde(default)]
    pub test_size: usize,
    /// SVHN: train on train + extra, as the papers do.
    #[serde(default = "d_true")]
    pub svhn_extra: bool,
    /// Draw the `train_size` training examples in equal numbers per class.
    #[serde(default)]
    pub balanced: bool,
    /// Image folders and Parquet images: 1 (grey) or 3 (RGB) channels, converting as needed.
    /// MNIST (grey), CIFAR-10 and SVHN (RGB) files fix their own and ignore this.
    #[serde(default = "d_one")]
    pub channels: usize,
    /// `format = "texture"`: the file stem of the texture image under `path` (e.g. `brick`
    /// for brick.png).
    #[serde(default)]
    pub texture: Option<String>,
    /// `format = "texture"`: the side of the square crops every split is made of.
    #[serde(default = "d_patch")]
    pub patch: usize,
    /// Seed of the validation split and of the `train_size` draw. Separate from
    /// `pipeline.seed`, so that a sweep over seeds trains every seed on the same examples
    /// and loads the data once.
    #[serde(default)]
    pub seed: u64,
}
fn d_patch() -> usize {
    64
}
fn d_one() -> usize {
    1
}
fn d_cpu() -> String {
    "cpu".into()
}
fn d_true() -> bool {
    true
}
fn d_validation_size() -> usize {
    1000
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct NetSection {
    /// `cnn4` (the ICN paper's net: four 5x5 stride-2 convolutions and a linear head),
    /// `resnet32` (the CIFAR ResNet-32: 3 stages of 5 basic blocks) or `winn64` (the WINN
    /// paper's Table 5 net for 64x64 images: eight 3x3 convolutions, Swish, four 2x2
    /// average poolings; image sides must be multiples of 16).
    pub arch: Arch,
    /// Normalization after each convolution: `none`, `batch` or `layer`; by default none
    /// for CNN4 (the ICN paper) and batch for ResNet-32.
    pub norm: Option<Normalization>,
    /// Channel multiplier: 1.0 is the paper's net (CNN4 64/128/256/512, ResNet 16/32/64).
    pub width: f64,
    /// Negative slope of CNN4's LeakyReLU activations (ResNet-32 uses ReLU).
    pub leaky_slope: f64,
}
impl Default for NetSection {
    fn default() -> Self {
        NetSection { arch: Arch::Cnn4, norm: None, width: 1.0, leaky_slope: 0.2 }
    }
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum OptimizerKind {
    Sgd,
    Adam,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TrainSection {
    /// `sgd` (with `momentum`) or `adam` (with `beta1` and `beta2`).
    pub optimizer: OptimizerKind,
    /// Learning rate of every round (times `lr_drop_factor` from `lr_drop_round` on).
    pub lr: f64,
    /// SGD momentum (ignored by Adam).
    pub momentum: f64,
    /// Adam's decay of the gradient's running mean (ignored by SGD).
    pub beta1: f64,
    /// Adam's decay of the squared gradient's running mean (ignored by SGD).
    pub beta2: f64,
    /// Examples per training batch, real ones and pseudo-negatives alike.
    pub batch_size: usize,
    /// Epochs of the plain classifier (round 0).
    pub epochs: u32,
    /// Epochs of each reclassification round.
    pub epochs_per_round: u32,
    /// Weight of the pseudo-negative term in the softmax ICN loss (Eq. 9).
    pub alpha: f64,
    /// From this round on the learning rate is multiplied by `lr_drop_factor` (the ICN
    /// paper divides by 10 at round 25, ICL at round 20); none by default.
    pub lr_drop_round: Option<u32>,
    /// The factor of `lr_drop_round`.
    pub lr_drop_factor: f64,
    /// How pseudo-negatives enter batches: `union` (the paper: everything shuffled
    /// together) or `balanced` (half of each batch, recent rounds weighted more).
    pub sampling: Sampling,
    /// Balanced sampling: a pseudo-negative made `a` rounds ago has weight decay^a
    /// (0.5 in the IGM reference code).
    pub recency_decay: f64,
    /// CIFAR-10 augmentation of the real training images: pad 4, random crop, random
    /// horizontal flip.
    pub augment: bool,
    /// A non-finite loss, gradient or weight: `stop` (the run fails with exit 1, naming the
    /// stage, round, epoch and batch; nothing of the stage is committed) or `rollback`
    /// (the epoch restarts from its first batch with the learning rate times
    /// `rollback_lr_factor`, at most `rollback_retries` times per stage; each rollback is
    /// recorded in the stage's summary and its log's `lr` column).
    pub on_divergence: OnDivergence,
    /// `on_divergence = "rollback"`: the factor on the learning rate at each restart.
    pub rollback_lr_factor: f64,
    /// `on_divergence = "rollback"`: restarts allowed per train stage.
    pub rollback_retries: u32,
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum OnDivergence {
    Stop,
    Rollback,
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Sampling {
    Union,
    Balanced,
}
impl Default for TrainSection {
    fn default() -> Self {
        TrainSection {
            optimizer: OptimizerKind::Sgd,
            lr: 0.025,
            momentum: 0.9,
            beta1: 0.9,
            beta2: 0.999,
            batch_size: 64,
            epochs: 5,
            epochs_per_round: 5,
            alpha: 0.5,
            lr_drop_round: None,
            lr_drop_factor: 0.1,
            sampling: Sampling::Union,
            recency_decay: 0.5,
            augment: false,
            on_divergence: OnDivergence::Stop,
            rollback_lr_factor: 0.5,
            rollback_retries: 3,
        }
    }
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum StopChoice {
    /// Stop option (1): once classified as positive, f_k(x) > 0 (each class is its own
    /// binary problem in Eq. 9).
    Classified,
    /// Stop option (2): once sigmoid(f_k(x)) exceeds `stop_probability`.
    Probability,
    /// Stop option (3): a fixed number of steps (`max_steps`).
    Steps,
    /// Not the papers': once k is the top class, argmax_j f_j(x) = k. Much weaker after a
    /// few rounds (it holds with f_k deeply negative); for comparison only.
    Argmax,
    /// WINN's rule (method winn only): once the critic's f reaches the sample's threshold,
    /// drawn uniformly in the range of f over positives that the critic's checkpoint
    /// carries.
    Threshold,
    /// IGM's texture rule (method igm only): once the mean of f over the last
    /// `stop_window` steps is positive (f of a texture: the mean over a step's windows).
    Window,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum ReferenceChoice {
    /// N(0, init_std^2), clipped to [-1, 1] (the ICN paper).
    #[default]
    Gaussian,
    /// The WINN paper's Appendix D: an untrained net of four 5x5 convolutions (weights
    /// N(0, 0.1^2)) and 2x upsamplings maps U(-1, 1) noise of 512x4x4 to images scaled to
    /// [-1, 1]; one net per pipeline, drawn from pipeline.seed.
    AppendixD,
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum SynthesisStep {
    /// Adam on x (lr, beta1, beta2), fresh state per sample.
    Adam,
    /// Plain gradient ascent with step size lr.
    Sgd,
    /// Langevin dynamics: dx = (eps/2) grad f + N(0, eps), eps = lr * langevin_decay^step.
    Langevin,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SynthesizeSection {
    /// Pseudo-negatives per class per round.
    pub per_class: usize,
    /// How x moves at each step.
    pub optimizer: SynthesisStep,
    /// Step size: the learning rate of `adam` and `sgd`, the first eps of `langevin`.
    pub lr: f64,
    /// Adam's decay of the gradient's running mean (0.5 in the ICN reference code).
    pub beta1: f64,
    /// Adam's decay of the squared gradient's running mean.
    pub beta2: f64,
    /// Standard deviation of the reference distribution p0 = N(0, s^2).
    pub init_std: f64,
    /// The reference distribution p0 samples start from (and ICN-noise's pseudo-negatives).
    pub reference: ReferenceChoice,
    /// Most steps per sample, whatever `stop` says.
    pub max_steps: u32,
    /// When a sample is done (the stop options of the ICN paper).
    pub stop: StopChoice,
    /// Threshold of stop option (2).
    pub stop_probability: f64,
    /// Steps of the sliding window of `stop = "window"` (about 20 in the IGM paper).
    pub stop_window: u32,
    /// Annealing of the Langevin step size per step.
    pub langevin_decay: f64,
    /// Samples synthesized together, one forward and backward pass per step for all.
    pub batch_size: usize,
}
impl Default for SynthesizeSection {
    fn default() -> Self {
        SynthesizeSection {
            per_class: 200,
            optimizer: SynthesisStep::Adam,
            lr: 0.01,
            beta1: 0.5,
            beta2: 0.999,
            init_std: 0.3,
            reference: ReferenceChoice::Gaussian,
            max_steps: 500,
            stop: StopChoice::Classified,
            stop_probability: 0.9,
            stop_window: 20,
            langevin_decay: 0.99,
            batch_size: 200,
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct EvaluateSection {
    /// Examples per forward pass.
    pub batch_size: usize,
}
impl Default for EvaluateSection {
    fn default() -> Self {
        EvaluateSection { batch_size: 500 }
    }
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum AttackMethod {
    /// One signed-gradient step of size eps.
    Fgsm,
    /// `steps` signed-gradient steps of `step_size`, projected onto the eps-ball.
    Pgd,
}

/// The pixel range in which `eps` (and `clip`) are measured. The models see [-1, 1], so
/// eps in [0, 1] units is doubled; the papers quote both conventions.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(try_from = "EpsUnitRepr")]
pub enum EpsUnit {
    #[serde(rename = "[-1,1]")]
    MinusOneToOne,
    #[serde(rename = "[0,1]")]
    ZeroToOne,
}

/// `"[-1,1]"` as a string, or `[-1, 1]` as an array (which is what `--set
/// attack.eps_unit=[0,1]` parses to).
#[derive(Deserialize)]
#[serde(untagged)]
enum EpsUnitRepr {
    Name(String),
    Range([f64; 2]),
}

impl TryFrom<EpsUnitRepr> for EpsUnit {
    type Error = String;
    fn try_from(r: EpsUnitRepr) -> std::result::Result<Self, String> {
        let range = match &r {
            EpsUnitRepr::Name(n) => match n.replace(' ', "").as_str() {
                "[-1,1]" => Some([-1.0, 1.0]),
                "[0,1]" => Some([0.0, 1.0]),
                _ => None,
            },
            EpsUnitRepr::Range(r) => Some(*r),
        };
        match range {
            Some([lo, hi]) if lo == -1.0 && hi == 1.0 => Ok(EpsUnit::MinusOneToOne),
            Some([lo, hi]) if lo == 0.0 && hi == 1.0 => Ok(EpsUnit::ZeroToOne),
            _ => Err("expected \"[-1,1]\" or \"[0,1]\" (the pixel range eps is measured in)".into()),
        }
    }
}

impl EpsUnit {
    /// Factor from this unit to the models' [-1, 1].
    pub fn scale(self) -> f64 {
        match self {
            EpsUnit::MinusOneToOne => 1.0,
            EpsUnit::ZeroToOne => 2.0,
        }
    }
    /// A pixel value of this unit in the models' [-1, 1].
    pub fn to_model(self, v: f64) -> f64 {
        match self {
            EpsUnit::MinusOneToOne => v,
            EpsUnit::ZeroToOne => 2.0 * v - 1.0,
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AttackSection {
    /// How adversarial examples are made.
    #[serde(default = "d_fgsm")]
    pub method: AttackMethod,
    /// L-infinity radius, in `eps_unit`.
    pub eps: f64,
    /// `"[-1,1]"` or `"[0,1]"`: required, because the papers' eps values are quoted in both.
    pub eps_unit: EpsUnit,
    /// Valid pixel range [lo, hi] in `eps_unit`; the whole range by default.
    #[serde(default)]
    pub clip: Option<[f64; 2]>,
    /// PGD steps.
    #[serde(default = "d_pgd_steps")]
    pub steps: u32,
    /// PGD step size in `eps_unit`; eps / 4 by default.
    #[serde(default)]
    pub step_size: Option<f64>,
    /// PGD: start from a uniform point of the eps-ball.
    #[serde(default = "d_true")]
    pub random_start: bool,
    /// Examples attacked per forward and backward pass.
    #[serde(default = "d_attack_batch")]
    pub batch_size: usize,
    /// Sweeps: two or more case names; the first one's classifier and each other one's are
    /// attacked two-way (each attacked, the other tested on its adversarial examples).
    #[serde(default)]
    pub compare: Vec<String>,
    /// Which classifier of each case the two-way comparison uses: `last` (after every
    /// round, as the papers compare trained models) or `selected` (best on validation).
    #[serde(default)]
    pub classifier: AttackClassifier,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum AttackClassifier {
    #[default]
    Last,
    Selected,
}
fn d_fgsm() -> AttackMethod {
    AttackMethod::Fgsm
}
fn d_pgd_steps() -> u32 {
    10
}
fn d_attack_batch() -> usize {
    200
}

/// A pipeline file, parsed, overridden and validated.
/// Image shape and class count of a pipeline's data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    pub num_classes: usize,
}

#[derive(Clone, Debug)]
pub struct Pipeline {
    pub file: PathBuf,
    pub spec: Spec,
    pub geometry: Geometry,
    pub name: String,
    /// `data.path` resolved against the file (or the working directory for `--set`).
    pub data_path: PathBuf,
    pub overrides: Vec<String>,
}

const REQUIRED_SECTIONS: [&str; 5] = ["pipeline", "data", "net", "train", "synthesize"];

/// Reads, overrides and validates a pipeline file; every problem is a [`UserError`].
pub fn load(file: &Path, overrides: &[String]) -> Result<Pipeline> {
    let shown = file.display().to_string();
    let text = std::fs::read_to_string(file).map_err(|e| UserError(format!("{shown}: cannot read the pipeline file: {e}")))?;
    if let Ok(table) = toml::from_str::<toml::Table>(&text) {
        if let Some(missing) = REQUIRED_SECTIONS.iter().find(|s| !table.contains_key(**s)) {
            return Err(UserError(format!(
                "{shown}: no [{missing}] section; a pipeline file names all of {} (even empty, for the defaults), so that a file cut short is not run with settings nobody wrote",
                REQUIRED_SECTIONS.map(|s| format!("[{s}]")).join(", ")
            ))
            .into());
        }
    }
    // Typed parse of the file as written: syntax, unknown keys and wrong types come with
    // the file's line and column from toml's own diagnostics.
    let spec: Spec = toml::from_str(&text).map_err(|e| UserError(format!("{shown}: {}", e.to_string().trim_end())))?;
    let mut spec = spec;
    let mut path_from_cli = false;
    if !overrides.is_empty() {
        let mut table: toml::Table = toml::from_str(&text).map_err(|e| UserError(format!("{shown}: {e}")))?;
        for o in overrides {
            let (key, value) = o.split_once('=').ok_or_else(|| UserError(format!("--set {o}: expected key=value, e.g. --set synthesize.lr=0.02")))?;
            set_key(&mut table, key.trim(), parse_value(value.trim()))
                .map_err(|msg| UserError(format!("--set {o}: {msg}")))?;
            path_from_cli |= key.trim() == "data.path";
        }
        spec = toml::Value::Table(table).try_into().map_err(|e: toml::de::Error| {
            // Name the override at fault: the file alone parsed, so one of them broke it.
            let culprit = overrides.iter().find(|o| {
                let Ok(mut t) = toml::from_str::<toml::Table>(&text) else { return false };
                let Some((k, v)) = o.split_once('=') else { return true };
                set_key(&mut t, k.trim(), parse_value(v.trim())).is_err() || toml::Value::Table(t).try_into::<Spec>().is_err()
            });
            match culprit {
                Some(o) => UserError(format!("{shown}: --set {o}: {}", e.message())),
                None => UserError(format!("{shown} with --set {}: {}", overrides.join(" --set "), e.message())),
            }
        })?;
    }
    let locate = |key: &str| -> String {
        // the last override of a key is the one in force
        if let Some(o) = overrides.iter().rev().find(|o| o.split_once('=').map(|(k, _)| k.trim()) == Some(key)) {
            format!("{shown}: --set {o}")
        } else {
            match line_of(&text, key) {
                Some(line) => format!("{shown}:{line}: {key}"),
                None => format!("{shown}: {key}"),
            }
        }
    };
    validate(&spec, &locate)?;
    let data_path = if spec.data.path.is_absolute() || path_from_cli {
        spec.data.path.clone()
    } else {
        file.parent().unwrap_or(Path::new(".")).join(&spec.data.path)
    };
    if !data_path.is_dir() {
        return Err(UserError(format!(
            "{}: the dataset directory {} does not exist (expected a directory holding the data set's files)",
            locate("data.path"),
            data_path.display()
        ))
        .into());
    }
    if let Err(missing) = data_files(spec.data.format, &data_path, spec.data.svhn_extra, spec.data.texture.as_deref()) {
        return Err(UserError(format!("{}: {} holds no {missing}; expected the {:?} files there", locate("data.path"), data_path.display(), spec.data.format)).into());
    }
    let geometry = match spec.data.format {
        DataFormat::Mnist => Geometry { channels: 1, height: 28, width: 28, num_classes: 10 },
        DataFormat::Cifar10 | DataFormat::Svhn => Geometry { channels: 3, height: 32, width: 32, num_classes: 10 },
        DataFormat::Folder => folder_geometry(&data_path, spec.data.channels).map_err(|e| UserError(format!("{}: {e}", locate("data.path"))))?,
        DataFormat::Texture => Geometry { channels: spec.data.channels, height: spec.data.patch, width: spec.data.patch, num_classes: 1 },
        DataFormat::Parquet => {
            let (height, width, num_classes) = stages::data::parquet::describe(&data_path, "train", spec.data.channels).map_err(|e| UserError(format!("{}: {e}", locate("data.path"))))?;
            Geometry { channels: spec.data.channels, height, width, num_classes }
        }
    };
    if spec.data.format == DataFormat::Mnist {
        check_idx(&spec.data, &data_path, &locate)?;
    }
    if spec.pipeline.method != Method::Baseline {
        let per_round = match spec.pipeline.variant {
            Variant::Binary | Variant::Unsupervised => 1,
            Variant::Softmax | Variant::OneVsAll => geometry.num_classes,
        } as u64
            * spec.synthesize.per_class as u64;
        let bytes = per_round * spec.pipeline.rounds as u64 * (geometry.channels * geometry.height * geometry.width * 4) as u64;
        if bytes > MAX_PSEUDO_NEGATIVE_BYTES {
            return Err(UserError(format!(
                "{}: {} rounds of {per_round} pseudo-negatives of {}x{}x{} are {:.1} GiB, which the last round's training holds in memory; at most {} GiB: fewer per class or fewer rounds",
                locate("synthesize.per_class"),
                spec.pipeline.rounds,
                geometry.channels,
                geometry.height,
                geometry.width,
                bytes as f64 / (1u64 << 30) as f64,
                MAX_PSEUDO_NEGATIVE_BYTES >> 30
            ))
            .into());
        }
    }
    let multiple = stages::nn::winn64::SIDE_MULTIPLE;
    if spec.net.arch == Arch::Winn64 && (geometry.height % multiple != 0 || geometry.width % multiple != 0) {
        return Err(UserError(format!(
            "{}: winn64 halves the image four times, so its sides must be multiples of {multiple}; the data's images are {}x{}",
            locate("net.arch"),
            geometry.height,
            geometry.width
        ))
        .into());
    }
    if let Some(&side) = spec.sample.sizes.iter().find(|&&side| side < geometry.height.max(geometry.width)) {
        return Err(UserError(format!(
            "{}: a {side}x{side} sample is smaller than the {}x{} patches its critic is trained on; expected sides of at least {}",
            locate("sample.sizes"),
            geometry.height,
            geometry.width,
            geometry.height.max(geometry.width)
        ))
        .into());
    }
    if spec.pipeline.positive_class as usize >= geometry.num_classes {
        return Err(UserError(format!("{}: expected a class below {}", locate("pipeline.positive_class"), geometry.num_classes)).into());
    }
    let name = spec.pipeline.name.clone().unwrap_or_else(|| file.file_stem().map(|s| s.to_string_lossy().to_string()).unwrap_or_default());
    Ok(Pipeline { file: file.to_path_buf(), spec, geometry, name, data_path, overrides: overrides.to_vec() })
}

/// MNIST files are checked from their headers before anything runs: 28x28 images in both
/// splits, as many labels as images, and enough examples for the sizes asked.
fn check_idx(data: &DataSection, dir: &Path, locate: &dyn Fn(&str) -> String) -> Result<()> {
    let files: std::collections::BTreeMap<String, PathBuf> = data_files(DataFormat::Mnist, dir, false, None).map_err(|m| UserError(format!("{}: no {m}", locate("data.path"))))?.into_iter().collect();
    let dims = |name: &str| -> Result<(PathBuf, Vec<usize>)> {
        let path = files[name].clone();
        let d = stages::data::mnist::idx_dims(&path).map_err(|e| UserError(format!("{}: {e}", locate("data.path"))))?;
        Ok((path, d))
    };
    let mut counts = Vec::new();
    for split in ["train", "test"] {
        let (images, d) = dims(&format!("{split}_images"))?;
        let (labels, l) = dims(&format!("{split}_labels"))?;
        match d.as_slice() {
            [_, 28, 28] => {}
            [_, h, w] => return Err(UserError(format!("{}: {} holds {h}x{w} images; the mnist format (and the net built for it) is 28x28", locate("data.path"), images.display())).into()),
            _ => return Err(UserError(format!("{}: {} is not an IDX image file (count, rows, columns)", locate("data.path"), images.display())).into()),
        }
        if l.first() != d.first() {
            return Err(UserError(format!("{}: {} declares {} labels for the {} images of {}", locate("data.path"), labels.display(), l.first().unwrap_or(&0), d[0], images.display())).into());
        }
        counts.push(d[0]);
    }
    let (train, test) = (counts[0], counts[1]);
    if data.validation_size + data.train_size > train || data.validation_size >= train {
        return Err(UserError(format!(
            "{}: data.train_size = {} plus data.validation_size = {} exceeds the {train} examples of the training files",
            locate(if data.train_size > 0 { "data.train_size" } else { "data.validation_size" }),
            data.train_size,
            data.validation_size
        ))
        .into());
    }
    if data.test_size > test {
        return Err(UserError(format!("{}: data.test_size = {} exceeds the {test} examples of the test files", locate("data.test_size"), data.test_size)).into());
    }
    Ok(())
}

/// A `--set` value: TOML if it parses as a value (numbers, booleans, quoted strings,
/// arrays), otherwise taken as a bare string (`--set data.format=mnist`).
fn parse_value(raw: &str) -> toml::Value {
    match toml::from_str::<toml::Table>(&format!("v = {raw}")) {
        Ok(mut t) => t.remove("v").unwrap_or_else(|| toml::Value::String(raw.to_string())),
        Err(_) => toml::Value::String(raw.to_string()),
    }
}

fn set_key(table: &mut toml::Table, key: &str, value: toml::Value) -> std::result::Result<(), String> {
    let parts: Vec<&str> = key.split('.').collect();
    if parts.len() != 2 || parts.iter().any(|p| p.is_empty()) {
        return Err(format!("`{key}` is not a setting; expected section.key, e.g. train.lr"));
    }
    let section = table
        .entry(parts[0].to_string())
        .or_insert_with(|| toml::Value::Table(toml::Table::new()));
    let section = section.as_table_mut().ok_or_else(|| format!("`{}` is not a section", parts[0]))?;
    section.insert(parts[1].to_string(), value);
    Ok(())
}

/// The 1-based line where `section.key` is written, from the parser's spans.
fn line_of(text: &str, key: &str) -> Option<usize> {
    let (section, field) = key.split_once('.')?;
    let doc = toml::de::DeTable::parse(text).ok()?;
    let sec = doc.get_ref().get(section)?;
    let item = sec.get_ref().as_table()?.get(field)?;
    let offset = item.span().start;
    Some(text[..offset.min(text.len())].matches('\n').count() + 1)
}

/// Rollbacks allowed per train stage: each halves (by default) the learning rate, so more
/// than this means the settings, not bad luck, are at fault.
const MAX_ROLLBACKS: u32 = 20;

/// Records each setting that is out of range: `need(ok, key, expected)`.
pub(super) type Need<'a> = dyn FnMut(bool, &str, &str) + 'a;

fn validate(spec: &Spec, locate: &dyn Fn(&str) -> String) -> Result<()> {
    let mut problems = Vec::new();
    rules(spec, &mut |ok: bool, key: &str, expected: &str| {
        if !ok {
            problems.push(format!("{}: expected {expected}", locate(key)));
        }
    });
    if problems.is_empty() {
        Ok(())
    } else {
        Err(UserError(problems.join("\n")).into())
    }
}

/// Every bound on the settings of `spec`, each as `need(holds, key, expected)`: `validate`
/// reports those that fail, `pipe settings` lists them all.
pub(super) fn rules(spec: &Spec, need: &mut Need) {
    // every number of every section, whatever its own check says: NaN passes `x > 0.0`
    // tests by failing them in the wrong direction, and inf passes most
    if let Ok(toml::Value::Table(t)) = toml::Value::try_from(spec) {
        for (section, v) in t.iter().filter(|(k, _)| k.as_str() != "sweep") {
            for (key, x) in v.as_table().into_iter().flatten() {
                let floats: Vec<f64> = match x {
                    toml::Value::Float(f) => vec![*f],
                    toml::Value::Array(a) => a.iter().filter_map(toml::Value::as_float).collect(),
                    _ => Vec::new(),
                };
                if !floats.is_empty() {
                    need(floats.iter().all(|f| f.is_finite()), &format!("{section}.{key}"), "a finite number");
                }
            }
        }
    }
    spec.pipeline.validate(need);
    spec.data.validate(need);
    spec.net.validate(need);
    spec.train.validate(need);
    spec.synthesize.validate(need);
    spec.winn.validate(spec, need);
    spec.igm.validate(spec, need);
    spec.sample.validate(spec, need);
    if let Some(q) = &spec.quality {
        q.validate(spec, need);
    }
    if let Some(p) = &spec.probe {
        p.validate(spec, need);
    }
    need((1..=MAX_BATCH).contains(&spec.evaluate.batch_size), "evaluate.batch_size", &format!("1 to {MAX_BATCH}"));
    if let Some(a) = &spec.attack {
        a.validate(need);
        need(spec.pipeline.variant == Variant::Softmax, "attack", "pipeline.variant = \"softmax\" (the attack follows the gradient of the softmax cross-entropy)");
    }
}

/// Bounds that keep a plan, a store and a run within what a machine can do; each says
/// why in its message.
const MAX_ROUNDS: u32 = 200;
const MAX_NAME_CHARS: usize = 100;
const MAX_BATCH: usize = 65_536;
const MAX_EPOCHS: u32 = 10_000;
const MAX_STEPS: u32 = 100_000;
const MAX_PER_CLASS: usize = 1_000_000;
/// Pseudo-negatives of every round are held in memory by the last train stage.
const MAX_PSEUDO_NEGATIVE_BYTES: u64 = 8 << 30;
/// 1/64: one channel in the first layer of CNN4 (64 at width 1).
const MIN_WIDTH: f64 = 1.0 / 64.0;

impl PipelineSection {
    fn validate(&self, need: &mut Need) {
        need(self.rounds <= MAX_ROUNDS, "pipeline.rounds", &format!("at most {MAX_ROUNDS} rounds (each adds a train, a synthesize and an evaluate stage; the papers use a few dozen at most)"));
        if let Some(name) = &self.name {
            let ok = !name.is_empty() && name.chars().count() <= MAX_NAME_CHARS && name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) && !name.starts_with('.');
            need(ok, "pipeline.name", &format!("1 to {MAX_NAME_CHARS} letters, digits, `-`, `_` or `.` (it names files under sweeps/ and is shown in every listing)"));
        }
        let d = &self.device;
        need(d == "cpu" || d == "cuda" || d.strip_prefix("cuda:").is_some_and(|n| n.parse::<usize>().is_ok()), "pipeline.device", "`cpu` or `cuda:N`");
        need(self.patience.is_none_or(|p| p >= 1), "pipeline.patience", "at least 1 round");
    }
}

impl DataSection {
    fn validate(&self, need: &mut Need) {
        need(self.channels == 1 || self.channels == 3, "data.channels", "1 or 3");
        for (key, v) in [("data.train_size", self.train_size), ("data.validation_size", self.validation_size), ("data.test_size", self.test_size)] {
            need(v <= 100_000_000, key, "at most 100,000,000 examples");
        }
        need(self.validation_size >= 1, "data.validation_size", "at least 1 validation example");
        if self.format == DataFormat::Texture {
            need(self.texture.is_some(), "data.texture", "the file stem of the texture image under data.path, e.g. \"brick\"");
            need((1..=4096).contains(&self.patch), "data.patch", "a crop side of 1 to 4096 pixels");
            need(self.train_size >= 1, "data.train_size", "at least 1 crop (a texture has no natural count)");
        }
    }
}

impl NetSection {
    fn validate(&self, need: &mut Need) {
        need(!(self.arch == Arch::Resnet32 && self.norm == Some(Normalization::None)), "net.norm", "`batch` or `layer` for resnet32");
        need((MIN_WIDTH..=8.0).contains(&self.width), "net.width", &format!("a channel multiplier in [{MIN_WIDTH}, 8] (below it the narrowest layer of the paper's nets has no channel)"));
        need((0.0..1.0).contains(&self.leaky_slope), "net.leaky_slope", "a slope in [0, 1)");
    }

    /// The net of this section on images of `g`, with `num_classes` logits.
    pub fn config(&self, g: Geometry, num_classes: usize) -> NetConfig {
        let norm = match (self.norm, self.arch) {
            (Some(n), _) => n,
            (None, Arch::Resnet32) => Normalization::Batch,
            (None, Arch::Cnn4) => Normalization::None,
            (None, Arch::Winn64) => Normalization::Layer,
        };
        NetConfig { arch: self.arch, norm, width: self.width, leaky_slope: self.leaky_slope, channels: g.channels, height: g.height, image_width: g.width, num_classes, wass_head: false }
    }
}

impl TrainSection {
    fn validate(&self, need: &mut Need) {
        need(self.lr > 0.0 && self.lr.is_finite(), "train.lr", "a positive learning rate");
        need((0.0..1.0).contains(&self.momentum), "train.momentum", "a momentum in [0, 1)");
        need((0.0..1.0).contains(&self.beta1), "train.beta1", "a value in [0, 1)");
        need((0.0..1.0).contains(&self.beta2), "train.beta2", "a value in [0, 1)");
        need((1..=MAX_BATCH).contains(&self.batch_size), "train.batch_size", &format!("1 to {MAX_BATCH}"));
        need((1..=MAX_EPOCHS).contains(&self.epochs), "train.epochs", &format!("1 to {MAX_EPOCHS} epochs for the round-0 classifier"));
        need(self.epochs_per_round <= MAX_EPOCHS, "train.epochs_per_round", &format!("at most {MAX_EPOCHS}"));
        need((0.0..=1.0).contains(&self.alpha), "train.alpha", "a weight in [0, 1]");
        need(self.recency_decay > 0.0 && self.recency_decay <= 1.0, "train.recency_decay", "a factor in (0, 1]");
        need(self.lr_drop_factor > 0.0 && self.lr_drop_factor.is_finite(), "train.lr_drop_factor", "a positive factor");
        need(self.lr_drop_round.is_none_or(|r| r >= 1), "train.lr_drop_round", "a round >= 1");
        need(self.rollback_lr_factor > 0.0 && self.rollback_lr_factor < 1.0, "train.rollback_lr_factor", "a factor in (0, 1) (it lowers the learning rate)");
        need((1..=MAX_ROLLBACKS).contains(&self.rollback_retries), "train.rollback_retries", &format!("1 to {MAX_ROLLBACKS} rollbacks per stage"));
    }

    /// The divergence policy of the train stages; `None` is stop.
    pub fn rollback(&self) -> Option<train::Rollback> {
        (self.on_divergence == OnDivergence::Rollback).then_some(train::Rollback { lr_factor: self.rollback_lr_factor, retries: self.rollback_retries })
    }

    /// The optimizer of a round: the learning rate after the drop, if there is one.
    pub fn optimizer(&self, round: u32) -> OptimizerConfig {
        let lr = match self.lr_drop_round {
            Some(r) if round >= r => self.lr * self.lr_drop_factor,
            _ => self.lr,
        };
        match self.optimizer {
            OptimizerKind::Sgd => OptimizerConfig::Sgd { lr, momentum: self.momentum },
            OptimizerKind::Adam => OptimizerConfig::Adam { lr, beta1: self.beta1, beta2: self.beta2 },
        }
    }
}

impl SynthesizeSection {
    fn validate(&self, need: &mut Need) {
        need(self.stop_probability > 0.0 && self.stop_probability < 1.0, "synthesize.stop_probability", "a probability in (0, 1)");
        need((1..=MAX_STEPS).contains(&self.stop_window), "synthesize.stop_window", &format!("1 to {MAX_STEPS} steps"));
        need(self.langevin_decay > 0.0 && self.langevin_decay <= 1.0, "synthesize.langevin_decay", "a factor in (0, 1]");
        need((1..=MAX_PER_CLASS).contains(&self.per_class), "synthesize.per_class", &format!("1 to {MAX_PER_CLASS} pseudo-negatives per class"));
        need(self.max_steps <= MAX_STEPS, "synthesize.max_steps", &format!("at most {MAX_STEPS} steps"));
        need(self.lr > 0.0 && self.lr.is_finite(), "synthesize.lr", "a positive step size");
        need((0.0..1.0).contains(&self.beta1), "synthesize.beta1", "a value in [0, 1)");
        need((0.0..1.0).contains(&self.beta2), "synthesize.beta2", "a value in [0, 1)");
        need(self.init_std > 0.0 && self.init_std.is_finite(), "synthesize.init_std", "a positive standard deviation");
        need((1..=MAX_BATCH).contains(&self.batch_size), "synthesize.batch_size", &format!("1 to {MAX_BATCH}"));
    }

    /// How x moves.
    pub fn step(&self) -> Step {
        match self.optimizer {
            SynthesisStep::Adam => Step::Adam { beta1: self.beta1, beta2: self.beta2, eps: stages::synthesize::ADAM_EPS },
            SynthesisStep::Sgd => Step::Sgd,
            SynthesisStep::Langevin => Step::Langevin { decay: self.langevin_decay },
        }
    }

    /// When a sample is done.
    pub fn stop_rule(&self) -> StopRule {
        match self.stop {
            StopChoice::Classified => StopRule::Classified,
            StopChoice::Probability => StopRule::Probability { threshold: self.stop_probability },
            StopChoice::Steps => StopRule::Steps,
            StopChoice::Argmax => StopRule::Argmax,
            StopChoice::Window => StopRule::Window { steps: self.stop_window },
            // the range comes from the critic's checkpoint, at run time
            StopChoice::Threshold => StopRule::Threshold { min: f64::NAN, max: f64::NAN },
        }
    }
}

impl AttackSection {
    fn validate(&self, need: &mut Need) {
        let full = match self.eps_unit {
            EpsUnit::MinusOneToOne => 2.0,
            EpsUnit::ZeroToOne => 1.0,
        };
        need(self.eps > 0.0 && self.eps < full, "attack.eps", &format!("a radius in (0, {full}) in the units of eps_unit"));
        need(self.steps >= 1, "attack.steps", "at least 1 step");
        need(self.step_size.is_none_or(|s| s > 0.0 && s.is_finite()), "attack.step_size", "a positive step");
        need((1..=MAX_BATCH).contains(&self.batch_size), "attack.batch_size", &format!("1 to {MAX_BATCH}"));
        need(self.steps <= MAX_STEPS, "attack.steps", &format!("at most {MAX_STEPS}"));
        let range = match self.eps_unit {
            EpsUnit::MinusOneToOne => -1.0..=1.0,
            EpsUnit::ZeroToOne => 0.0..=1.0,
        };
        need(self.clip.is_none_or(|[lo, hi]| lo < hi && range.contains(&lo) && range.contains(&hi)), "attack.clip", "[lo, hi] with lo < hi inside the range of eps_unit");
        need(self.compare.is_empty() || self.compare.len() >= 2, "attack.compare", "two or more case names of the [sweep], e.g. [\"baseline\", \"icn\", \"winn\"]: the first is attacked two-way with each other");
    }

    /// The attack in the models' [-1, 1] units (eps and clip converted), so the same attack
    /// written in either unit is one setting.
    pub fn config(&self) -> AttackConfig {
        let scale = self.eps_unit.scale();
        let (lo, hi) = match self.clip {
            Some([lo, hi]) => (self.eps_unit.to_model(lo), self.eps_unit.to_model(hi)),
            None => (-1.0, 1.0),
        };
        let eps = self.eps * scale;
        match self.method {
            AttackMethod::Fgsm => AttackConfig::Fgsm { eps, lo, hi },
            AttackMethod::Pgd => AttackConfig::Pgd { eps, lo, hi, steps: self.steps, step_size: self.step_size.map_or(eps / 4.0, |s| s * scale), random_start: self.random_start },
        }
    }
}

/// Classes and image size of an image folder, from its sub-folders and one image.
fn folder_geometry(dir: &Path, channels: usize) -> std::result::Result<Geometry, String> {
    use stages::data::folder;
    let (first, num_classes) = folder::first_image(dir).map_err(|e| format!("{} has no class sub-folder holding an image (expected e.g. face/ and nonface/): {e}", dir.display()))?;
    let (_, height, width) = folder::load_image(&first, channels).map_err(|e| e.to_string())?;
    Ok(Geometry { channels, height, width, num_classes })
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"[pipeline]
rounds = 2

[data]
format = "mnist"
path = "DATA"

[train]
lr = 0.05
epochs = 1

[synthesize]
stop = "probability"
stop_probability = 0.8

[net]
"#;

    fn write(dir: &Path, text: &str) -> PathBuf {
        let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines/data/mnist");
        let file = dir.join("p.toml");
        std::fs::write(&file, text.replace("DATA", &data.display().to_string())).unwrap();
        file
    }

    fn error(file: &Path, sets: &[&str]) -> String {
        let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
        let e = load(file, &sets).expect_err("refused");
        assert!(e.downcast_ref::<UserError>().is_some(), "a user error: {e}");
        e.to_string()
    }

    #[test]
    fn errors_name_the_file_line_or_the_override_and_what_was_expected() {
        let dir = tempfile::tempdir().unwrap();
        let file = write(dir.path(), &BASE.replace("lr = 0.05", "lr = -1.0"));
        let shown = file.display().to_string();
        assert_eq!(error(&file, &[]), format!("{shown}:9: train.lr: expected a positive learning rate"));
        // every problem at once, each located; an override is named as written
        let e = error(&file, &["synthesize.per_class=0"]);
        assert!(e.contains(&format!("{shown}:9: train.lr: expected")), "{e}");
        assert!(e.contains(&format!("{shown}: --set synthesize.per_class=0: expected 1 to")), "{e}");
        // a wrong type or an unknown key: the parser's line and column
        let file = write(dir.path(), &BASE.replace("epochs = 1", "epochs = \"one\""));
        assert!(error(&file, &[]).contains("line 10"), "{}", error(&file, &[]));
        let file = write(dir.path(), &BASE.replace("epochs = 1", "epoch = 1"));
        assert!(error(&file, &[]).contains("unknown field `epoch`"));
        let file = write(dir.path(), BASE);
        assert!(error(&file, &["train.lr=fast"]).contains("--set train.lr=fast"));
        assert!(error(&file, &["lr=0.1"]).contains("expected section.key"));
        // a file cut short after [data] does not fall back to defaults
        let cut = BASE.split("[train]").next().unwrap();
        let e = error(&write(dir.path(), cut), &[]);
        assert!(e.contains("no [net] section"), "{e}");
    }

    #[test]
    fn sections_convert_into_the_library_settings_stages_are_keyed_by() {
        let dir = tempfile::tempdir().unwrap();
        let p = load(&write(dir.path(), BASE), &["train.lr_drop_round=2".into()]).unwrap();
        let s = &p.spec;
        assert_eq!(s.synthesize.stop_rule(), StopRule::Probability { threshold: 0.8 });
        assert_eq!(s.synthesize.step(), Step::Adam { beta1: 0.5, beta2: 0.999, eps: 1e-8 });
        assert_eq!(s.train.optimizer(1), OptimizerConfig::Sgd { lr: 0.05, momentum: 0.9 });
        let OptimizerConfig::Sgd { lr, .. } = s.train.optimizer(2) else { panic!("sgd") };
        assert!((lr - 0.005).abs() < 1e-12);
        let net = s.net.config(p.geometry, 10);
        assert_eq!((net.norm, net.channels, net.height, net.num_classes), (Normalization::None, 1, 28, 10));
        let resnet = NetSection { arch: Arch::Resnet32, ..NetSection::default() };
        assert_eq!(resnet.config(p.geometry, 10).norm, Normalization::Batch);
        let a = AttackSection {
            method: AttackMethod::Pgd,
            eps: 0.1,
            eps_unit: EpsUnit::ZeroToOne,
            clip: Some([0.0, 1.0]),
            steps: 5,
            step_size: None,
            random_start: true,
            batch_size: 10,
            compare: vec![],
            classifier: AttackClassifier::Last,
        };
        assert_eq!(a.config(), AttackConfig::Pgd { eps: 0.2, lo: -1.0, hi: 1.0, steps: 5, step_size: 0.05, random_start: true });
    }
}
