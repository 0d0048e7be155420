//! Pipeline files: TOML with every key known and typed, `--set` overrides, and validation
//! that happens before any work. Errors name the file, the line or key, and what was
//! expected.

use crate::UserError;
use anyhow::Result;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    pub pipeline: PipelineSection,
    pub data: DataSection,
    #[serde(default)]
    pub net: NetSection,
    #[serde(default)]
    pub train: TrainSection,
    #[serde(default)]
    pub synthesize: SynthesizeSection,
    #[serde(default)]
    pub evaluate: EvaluateSection,
    /// Adversarial attack of every round's classifier; absent: no attack stages.
    #[serde(default)]
    pub attack: Option<AttackSection>,
    /// A matrix of settings to run (see [`crate::sweep`]); absent for a single pipeline.
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
    /// noise) or `baseline` (no pseudo-negatives; the same training budget).
    #[serde(default)]
    pub method: Method,
    /// `softmax` (one net, K logits, Eq. 9), `binary` (Algorithm 1: one net, class
    /// `positive_class` against everything else) or `one-vs-all` (K binary nets, each with
    /// its own pseudo-negatives; prediction argmax_k f_k(x)).
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
}

#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    #[default]
    Icn,
    IcnNoise,
    Baseline,
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum DataFormat {
    /// IDX files (`train-images-idx3-ubyte[.gz]`, ...) in one directory.
    Mnist,
    /// CIFAR-10 binary batches (`data_batch_1.bin` .. `data_batch_5.bin`, `test_batch.bin`).
    Cifar10,
    /// SVHN cropped digits (`train_32x32.mat`, `test_32x32.mat`, `extra_32x32.mat`).
    Svhn,
    /// An image folder: one sub-folder per class (PNG or JPEG), e.g. `face/` and `nonface/`.
    /// The test set is split off like the validation set (`test_size`).
    Folder,
    /// Hugging Face style Parquet shards (`train*.parquet`, `test*.parquet`, in the folder
    /// or its `data/`): an `image` column of PNG/JPEG bytes and a `label` column.
    Parquet,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DataSection {
    pub format: DataFormat,
    /// Relative paths are relative to the pipeline file (to the working directory when
    /// given with `--set`).
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
    #[serde(default = "d_one")]
    pub channels: usize,
    /// Seed of the validation split and of the `train_size` draw. Separate from
    /// `pipeline.seed`, so that a sweep over seeds trains every seed on the same examples
    /// and loads the data once.
    #[serde(default)]
    pub seed: u64,
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

#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Arch {
    /// The ICN paper's MNIST net.
    Cnn4,
    /// The CIFAR ResNet-32 (3 stages x 5 basic blocks, 16/32/64 channels times `width`,
    /// batch norm), as the papers use for CIFAR-10 and SVHN.
    Resnet32,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct NetSection {
    pub arch: Arch,
    /// Normalization after each convolution: `none`, `batch` or `layer`; by default none
    /// for CNN4 (the ICN paper) and batch for ResNet-32.
    pub norm: Option<NormChoice>,
    /// Channel multiplier: 1.0 is the paper's net (CNN4 64/128/256/512, ResNet 16/32/64).
    pub width: f64,
    pub leaky_slope: f64,
}
impl Default for NetSection {
    fn default() -> Self {
        NetSection { arch: Arch::Cnn4, norm: None, width: 1.0, leaky_slope: 0.2 }
    }
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum NormChoice {
    None,
    Batch,
    Layer,
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
    pub optimizer: OptimizerKind,
    pub lr: f64,
    /// SGD momentum (ignored by Adam).
    pub momentum: f64,
    pub beta1: f64,
    pub beta2: f64,
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
        }
    }
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum StopRule {
    /// Stop option (1): once classified as the target class.
    Classified,
    /// Stop option (2): once the target class's probability exceeds `stop_probability`.
    Probability,
    /// Stop option (3): a fixed number of steps (`max_steps`).
    Steps,
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
    pub optimizer: SynthesisStep,
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    /// Standard deviation of the reference distribution p0 = N(0, s^2).
    pub init_std: f64,
    pub max_steps: u32,
    pub stop: StopRule,
    /// Threshold of stop option (2).
    pub stop_probability: f64,
    /// Annealing of the Langevin step size per step.
    pub langevin_decay: f64,
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
            max_steps: 500,
            stop: StopRule::Classified,
            stop_probability: 0.9,
            langevin_decay: 0.99,
            batch_size: 200,
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct EvaluateSection {
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
    #[serde(default = "d_attack_batch")]
    pub batch_size: usize,
    /// Sweeps: two case names whose classifiers are attacked two-way (each attacked, the
    /// other tested on its adversarial examples).
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

/// Reads, overrides and validates a pipeline file; every problem is a [`UserError`].
pub fn load(file: &Path, overrides: &[String]) -> Result<Pipeline> {
    let shown = file.display().to_string();
    let text = std::fs::read_to_string(file).map_err(|e| UserError(format!("{shown}: cannot read the pipeline file: {e}")))?;
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
    if let Err(missing) = data_files(spec.data.format, &data_path, spec.data.svhn_extra) {
        return Err(UserError(format!("{}: {} holds no {missing}; expected the {:?} files there", locate("data.path"), data_path.display(), spec.data.format)).into());
    }
    let geometry = match spec.data.format {
        DataFormat::Mnist => Geometry { channels: 1, height: 28, width: 28, num_classes: 10 },
        DataFormat::Cifar10 | DataFormat::Svhn => Geometry { channels: 3, height: 32, width: 32, num_classes: 10 },
        DataFormat::Folder => folder_geometry(&data_path, spec.data.channels).map_err(|e| UserError(format!("{}: {e}", locate("data.path"))))?,
        DataFormat::Parquet => {
            let (height, width, num_classes) = stages::data::parquet::describe(&data_path, "train", spec.data.channels).map_err(|e| UserError(format!("{}: {e}", locate("data.path"))))?;
            Geometry { channels: spec.data.channels, height, width, num_classes }
        }
    };
    if spec.pipeline.positive_class as usize >= geometry.num_classes {
        return Err(UserError(format!("{}: expected a class below {}", locate("pipeline.positive_class"), geometry.num_classes)).into());
    }
    let name = spec.pipeline.name.clone().unwrap_or_else(|| file.file_stem().map(|s| s.to_string_lossy().to_string()).unwrap_or_default());
    Ok(Pipeline { file: file.to_path_buf(), spec, geometry, name, data_path, overrides: overrides.to_vec() })
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

fn validate(spec: &Spec, locate: &dyn Fn(&str) -> String) -> Result<()> {
    let mut problems = Vec::new();
    let mut need = |ok: bool, key: &str, expected: &str| {
        if !ok {
            problems.push(format!("{}: expected {expected}", locate(key)));
        }
    };
    let t = &spec.train;
    let s = &spec.synthesize;
    let d = &spec.pipeline.device;
    need(d == "cpu" || d == "cuda" || d.strip_prefix("cuda:").is_some_and(|n| n.parse::<usize>().is_ok()), "pipeline.device", "`cpu` or `cuda:N`");
    need(spec.data.channels == 1 || spec.data.channels == 3, "data.channels", "1 or 3");
    need(spec.pipeline.patience.is_none_or(|p| p >= 1), "pipeline.patience", "at least 1 round");
    need(!(spec.net.arch == Arch::Resnet32 && spec.net.norm == Some(NormChoice::None)), "net.norm", "`batch` or `layer` for resnet32");
    need(spec.net.width > 0.0 && spec.net.width <= 8.0, "net.width", "a channel multiplier in (0, 8]");
    need((0.0..1.0).contains(&spec.net.leaky_slope), "net.leaky_slope", "a slope in [0, 1)");
    need(t.lr > 0.0 && t.lr.is_finite(), "train.lr", "a positive learning rate");
    need((0.0..1.0).contains(&t.momentum), "train.momentum", "a momentum in [0, 1)");
    need((0.0..1.0).contains(&t.beta1), "train.beta1", "a value in [0, 1)");
    need((0.0..1.0).contains(&t.beta2), "train.beta2", "a value in [0, 1)");
    need(t.batch_size >= 1, "train.batch_size", "at least 1");
    need(t.epochs >= 1, "train.epochs", "at least 1 epoch for the round-0 classifier");
    need((0.0..=1.0).contains(&t.alpha), "train.alpha", "a weight in [0, 1]");
    need(t.recency_decay > 0.0 && t.recency_decay <= 1.0, "train.recency_decay", "a factor in (0, 1]");
    need(t.lr_drop_factor > 0.0 && t.lr_drop_factor.is_finite(), "train.lr_drop_factor", "a positive factor");
    need(t.lr_drop_round.is_none_or(|r| r >= 1), "train.lr_drop_round", "a round >= 1");
    need(s.stop_probability > 0.0 && s.stop_probability < 1.0, "synthesize.stop_probability", "a probability in (0, 1)");
    need(s.langevin_decay > 0.0 && s.langevin_decay <= 1.0, "synthesize.langevin_decay", "a factor in (0, 1]");
    need(s.per_class >= 1, "synthesize.per_class", "at least 1 pseudo-negative per class");
    need(s.lr > 0.0 && s.lr.is_finite(), "synthesize.lr", "a positive step size");
    need((0.0..1.0).contains(&s.beta1), "synthesize.beta1", "a value in [0, 1)");
    need((0.0..1.0).contains(&s.beta2), "synthesize.beta2", "a value in [0, 1)");
    need(s.init_std > 0.0, "synthesize.init_std", "a positive standard deviation");
    need(s.batch_size >= 1, "synthesize.batch_size", "at least 1");
    need(spec.evaluate.batch_size >= 1, "evaluate.batch_size", "at least 1");
    need(spec.data.validation_size >= 1, "data.validation_size", "at least 1 validation example");
    if let Some(a) = &spec.attack {
        let full = match a.eps_unit {
            EpsUnit::MinusOneToOne => 2.0,
            EpsUnit::ZeroToOne => 1.0,
        };
        need(a.eps > 0.0 && a.eps < full, "attack.eps", &format!("a radius in (0, {full}) in the units of eps_unit"));
        need(a.steps >= 1, "attack.steps", "at least 1 step");
        need(a.step_size.is_none_or(|s| s > 0.0 && s.is_finite()), "attack.step_size", "a positive step");
        need(a.batch_size >= 1, "attack.batch_size", "at least 1");
        let range = match a.eps_unit {
            EpsUnit::MinusOneToOne => -1.0..=1.0,
            EpsUnit::ZeroToOne => 0.0..=1.0,
        };
        need(a.clip.is_none_or(|[lo, hi]| lo < hi && range.contains(&lo) && range.contains(&hi)), "attack.clip", "[lo, hi] with lo < hi inside the range of eps_unit");
        need(spec.pipeline.variant == Variant::Softmax, "attack", "pipeline.variant = \"softmax\" (the attack follows the gradient of the softmax cross-entropy)");
        need(a.compare.is_empty() || a.compare.len() == 2, "attack.compare", "two case names of the [sweep], e.g. [\"baseline\", \"icn\"]");
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(UserError(problems.join("\n")).into())
    }
}

/// The four files of an MNIST directory.
const MNIST_FILES: [(&str, &str); 4] = [
    ("train_images", "train-images-idx3-ubyte"),
    ("train_labels", "train-labels-idx1-ubyte"),
    ("test_images", "t10k-images-idx3-ubyte"),
    ("test_labels", "t10k-labels-idx1-ubyte"),
];

/// The files a `load` stage reads, by input name, or the name of the first one missing.
/// Multi-file formats name their inputs `train.N` / `test.N`, concatenated in order.
pub fn data_files(format: DataFormat, dir: &Path, svhn_extra: bool) -> std::result::Result<Vec<(String, PathBuf)>, String> {
    let need = |name: String, file: &str| {
        let p = dir.join(file);
        if p.is_file() { Ok((name, p)) } else { Err(file.to_string()) }
    };
    match format {
        DataFormat::Mnist => MNIST_FILES
            .iter()
            .map(|(name, base)| {
                [dir.join(base), dir.join(format!("{base}.gz"))]
                    .into_iter()
                    .find(|p| p.is_file())
                    .map(|p| (name.to_string(), p))
                    .ok_or_else(|| format!("{base} (or {base}.gz)"))
            })
            .collect(),
        DataFormat::Cifar10 => (1..=5)
            .map(|i| need(format!("train.{i}"), &format!("data_batch_{i}.bin")))
            .chain([need("test.1".into(), "test_batch.bin")])
            .collect(),
        DataFormat::Folder => Ok(vec![("folder".to_string(), dir.to_path_buf())]),
        DataFormat::Parquet => {
            for split in ["train", "test"] {
                stages::data::parquet::split_files(dir, split).map_err(|_| format!("{split}*.parquet shards"))?;
            }
            Ok(vec![("parquet".to_string(), dir.to_path_buf())])
        }
        DataFormat::Svhn => {
            let mut files = vec![need("train.1".into(), "train_32x32.mat")];
            if svhn_extra {
                files.push(need("train.2".into(), "extra_32x32.mat"));
            }
            files.push(need("test.1".into(), "test_32x32.mat"));
            files.into_iter().collect()
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
