//! Synthesis of pseudo-negatives (ICN Table 2): start at x ~ p0 = N(0, s^2) per pixel and
//! increase the class logit f_k(x) by gradient steps on x, clipping to [-1, 1] after each.
//!
//! Every sample owns its seed, so it can be regenerated alone from its table row, and its
//! optimizer state: a sample that stops is frozen while the rest of its batch goes on, and
//! only the samples still running are forwarded.

use crate::logits::class_score;
use crate::nn::{Classifier, Mode, Shape3};
use crate::rng::Rng;
use candle_core::{DType, Device, Result, Tensor, Var};
use serde::{Deserialize, Serialize};

/// When a sample is done (ICN Table 2); every rule also stops at `max_steps`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum StopRule {
    /// Stop option (1): once the sample is classified as positive, f_k(x) > 0 (the
    /// per-class binary view of Eq. 9; see [`crate::logits::ClassScore`]).
    Classified,
    /// Stop option (2): once sigmoid(f_k(x)) exceeds this.
    Probability { threshold: f64 },
    /// Not in the papers: once k is the net's top class, argmax_j f_j(x) = k. After a few
    /// rounds this holds with f_k deeply negative, so the samples teach the net nothing;
    /// kept, named, for comparison.
    Argmax,
    /// Stop option (3): always run `max_steps` steps.
    Steps,
    /// WINN: once f(x) reaches the sample's own threshold, drawn uniformly in [min, max]
    /// from its seed by [`threshold`]; WINN takes min and max of f over the positives
    /// after training, and saves them with the checkpoint so later sampling is the same.
    Threshold { min: f64, max: f64 },
    /// IGM's texture rule: once the mean of f_k over the sample's last `steps` scorings is
    /// above 0 (never before `steps` scorings). For patch synthesis f is the mean over a
    /// step's windows ([`crate::patch::PatchStop::Window`]); `steps = 1` is `Classified`.
    Window { steps: u32 },
}

/// The stream of a sample's threshold, apart from its starting noise (`Rng::new(seed)`).
const THRESHOLD_STREAM: u64 = 0x7448_5245_5348_4f4c;

/// The threshold of [`StopRule::Threshold`] for the sample with this seed: uniform in
/// [min, max).
pub fn threshold(min: f64, max: f64, seed: u64) -> f64 {
    min + (max - min) * Rng::new(seed ^ THRESHOLD_STREAM).uniform()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    Classified,
    Probability,
    Argmax,
    Threshold,
    Window,
    MaxSteps,
    /// Not synthesized: a p0 sample as it was drawn (ICN-noise).
    Noise,
    /// The sample or its logit went NaN or infinite; it must not be used (the caller
    /// drops it).
    NonFinite,
}

impl StopReason {
    pub fn as_str(self) -> &'static str {
        match self {
            StopReason::Classified => "classified",
            StopReason::Probability => "probability",
            StopReason::Argmax => "argmax",
            StopReason::Threshold => "threshold",
            StopReason::Window => "window",
            StopReason::MaxSteps => "max_steps",
            StopReason::Noise => "noise",
            StopReason::NonFinite => "non_finite",
        }
    }
}

/// How x moves (ICN Table 2): gradient ascent on f_k(x) by Adam or SGD, or Langevin
/// dynamics dx = (eps/2) grad f + N(0, eps) with eps annealed as eps0 * decay^step.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Step {
    /// Adam with fresh state per sample (the ICN reference code: lr 0.01, beta1 0.5).
    /// `eps` is Adam's constant, not a setting: it is in no stage key.
    Adam {
        beta1: f64,
        beta2: f64,
        #[serde(skip, default = "adam_eps")]
        eps: f64,
    },
    /// Plain gradient ascent with step size `lr`.
    Sgd,
    /// Langevin dynamics; `lr` is eps0.
    Langevin { decay: f64 },
}

impl Step {
    /// Adam's change of one value from its gradient `g`, updating its moments `m` and `v`;
    /// `t` counts the value's updates from 1 (bias correction). Zero for other steps.
    pub fn adam(self, lr: f64, g: f32, m: &mut f32, v: &mut f32, t: u32) -> f32 {
        let Step::Adam { beta1, beta2, eps } = self else { return 0.0 };
        let (b1, b2) = (beta1 as f32, beta2 as f32);
        *m = b1 * *m + (1.0 - b1) * g;
        *v = b2 * *v + (1.0 - b2) * g * g;
        (lr * (*m as f64 / (1.0 - beta1.powi(t as i32))) / ((*v as f64 / (1.0 - beta2.powi(t as i32))).sqrt() + eps)) as f32
    }
}

/// Adam's constant on x: a fixed part of the method, not a setting.
pub const ADAM_EPS: f64 = 1e-8;

fn adam_eps() -> f64 {
    ADAM_EPS
}

#[derive(Clone, Debug, PartialEq)]
pub struct SynthesisConfig {
    /// A one-logit (binary) net: raise f(x); "classified" means f(x) > 0 and the
    /// probability is sigmoid(f). Otherwise raise logit k of a softmax net.
    pub binary: bool,
    pub step: Step,
    pub lr: f64,
    pub max_steps: u32,
    pub init_std: f64,
    pub batch_size: usize,
    pub stop: StopRule,
}

impl SynthesisConfig {
    /// WINN's synthesis: Adam lr 0.01, betas (0.9, 0.99), batches of 100, raising the
    /// critic's one logit until each sample reaches its threshold in [min, max]; clipping
    /// to [-1, 1] is every rule's.
    pub fn winn(min: f64, max: f64, max_steps: u32, init_std: f64) -> Self {
        SynthesisConfig {
            binary: true,
            step: Step::Adam { beta1: 0.9, beta2: 0.99, eps: ADAM_EPS },
            lr: 0.01,
            max_steps,
            init_std,
            batch_size: 100,
            stop: StopRule::Threshold { min, max },
        }
    }
}

/// One sample to make: its target class and the seed of its starting noise.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Target {
    pub class: u32,
    pub seed: u64,
}

/// What happened to one sample.
#[derive(Clone, Debug, PartialEq)]
pub struct SampleRecord {
    pub class: u32,
    pub seed: u64,
    pub steps: u32,
    pub stop_reason: StopReason,
    /// f_k(x) of the returned sample.
    pub final_logit: f32,
    /// sigmoid(f_k(x)) of the returned sample.
    pub final_prob: f32,
    /// f_k(x) > 0 for the returned sample.
    pub classified: bool,
    /// argmax_j f_j(x) = k for the returned sample.
    pub top: bool,
}

/// Pseudo-negatives (N x C x H x W, row-major, in [-1, 1]) and one record per sample.
pub struct Synthesized {
    pub images: Vec<f32>,
    pub records: Vec<SampleRecord>,
}

/// The starting point of a sample: p0 noise from its own seed, clipped to the data range.
pub fn initial_sample(seed: u64, len: usize, std: f64) -> Vec<f32> {
    Running::new(seed, len, std).x
}

/// The pseudo-negatives of ICN-noise: the p0 starting samples themselves, no classifier
/// involved (logit and probability are NaN: nothing scored them).
pub fn p0_samples(targets: &[Target], shape: Shape3, std: f64) -> Synthesized {
    let d = shape.0 * shape.1 * shape.2;
    p0_from(targets, targets.iter().flat_map(|t| initial_sample(t.seed, d, std)).collect())
}

/// [`p0_samples`] of another reference distribution: `images` are the targets' samples.
pub fn p0_from(targets: &[Target], images: Vec<f32>) -> Synthesized {
    let records = targets
        .iter()
        .map(|t| SampleRecord { class: t.class, seed: t.seed, steps: 0, stop_reason: StopReason::Noise, final_logit: f32::NAN, final_prob: f32::NAN, classified: false, top: false })
        .collect();
    Synthesized { images, records }
}

struct Running {
    x: Vec<f32>,
    m: Vec<f32>,
    v: Vec<f32>,
    /// Langevin noise: the sample's own stream, continuing after its starting noise.
    rng: Rng,
    /// The last scorings of f_k, newest last ([`StopRule::Window`]).
    recent: std::collections::VecDeque<f32>,
}

impl Running {
    fn new(seed: u64, d: usize, std: f64) -> Self {
        let mut rng = Rng::new(seed);
        let x = rng.normal_vec(d, 0.0, std).into_iter().map(|v| v.clamp(-1.0, 1.0)).collect();
        Running { x, m: vec![0.0; d], v: vec![0.0; d], rng, recent: Default::default() }
    }

    /// One ascent step on f_k from its gradient `g`; `step` counts from 1.
    fn update(&mut self, g: &[f32], cfg: &SynthesisConfig, step: u32) {
        match cfg.step {
            Step::Adam { .. } => {
                for (((x, m), v), &g) in self.x.iter_mut().zip(&mut self.m).zip(&mut self.v).zip(g) {
                    *x = (*x + cfg.step.adam(cfg.lr, g, m, v, step)).clamp(-1.0, 1.0);
                }
            }
            Step::Sgd => {
                let lr = cfg.lr as f32;
                for (x, &g) in self.x.iter_mut().zip(g) {
                    *x = (*x + lr * g).clamp(-1.0, 1.0);
                }
            }
            Step::Langevin { decay } => {
                let e = cfg.lr * decay.powi(step as i32 - 1);
                let (half, sd) = ((e / 2.0) as f32, e.sqrt());
                for (x, &g) in self.x.iter_mut().zip(g) {
                    *x = (*x + half * g + (sd * self.rng.normal()) as f32).clamp(-1.0, 1.0);
                }
            }
        }
    }
}

/// The samples that stopped at one step of [`synthesize`] (`count` may be 0), and that step.
#[derive(Clone, Copy, Debug)]
pub struct Finished {
    pub count: usize,
    pub steps: u32,
}

pub fn synthesize(
    model: &dyn Classifier,
    shape: Shape3,
    targets: &[Target],
    cfg: &SynthesisConfig,
    device: &Device,
    on_step: crate::OnStep<Finished>,
) -> Result<Synthesized> {
    synthesize_from(model, shape, targets, None, cfg, device, on_step)
}

/// [`synthesize`] from given starting points (N x C x H x W, one per target, e.g. the
/// Appendix D samples of [`crate::nn::initial`]) instead of N(0, init_std^2) noise; each
/// sample's Langevin stream is still its own seed's.
#[allow(clippy::too_many_arguments)]
pub fn synthesize_from(
    model: &dyn Classifier,
    shape: Shape3,
    targets: &[Target],
    starts: Option<&[f32]>,
    cfg: &SynthesisConfig,
    device: &Device,
    on_step: crate::OnStep<Finished>,
) -> Result<Synthesized> {
    let (c, h, w) = shape;
    let d = c * h * w;
    let mut images = vec![0f32; targets.len() * d];
    let mut records: Vec<Option<SampleRecord>> = vec![None; targets.len()];
    for chunk_start in (0..targets.len()).step_by(cfg.batch_size.max(1)) {
        let chunk_end = (chunk_start + cfg.batch_size.max(1)).min(targets.len());
        let mut active: Vec<usize> = (chunk_start..chunk_end).collect();
        if starts.is_some_and(|s| s.len() != targets.len() * d) {
            candle_core::bail!("{} starting points for {} targets of {d} values", starts.map_or(0, <[f32]>::len) / d.max(1), targets.len());
        }
        let mut state: Vec<Running> = active
            .iter()
            .map(|&i| {
                let mut r = Running::new(targets[i].seed, d, cfg.init_std);
                if let Some(s) = starts {
                    r.x.copy_from_slice(&s[i * d..(i + 1) * d]);
                }
                r
            })
            .collect();
        let mut step: u32 = 0;
        while !active.is_empty() {
            let flat: Vec<f32> = state.iter().flat_map(|s| s.x.iter().copied()).collect();
            let x = Var::from_vec(flat, (active.len(), c, h, w), device)?;
            let logits = model.forward_mode(x.as_tensor(), Mode::Frozen)?;
            let classes: Vec<u32> = active.iter().map(|&i| if cfg.binary { 0 } else { targets[i].class }).collect();
            let idx = Tensor::new(classes.as_slice(), device)?.unsqueeze(1)?;
            let picked = logits.gather(&idx, 1)?.squeeze(1)?;
            let logit_rows = logits.to_dtype(DType::F32)?.to_vec2::<f32>()?;
            // Decide who stops before stepping: the returned sample is the one just scored.
            let mut keep = Vec::with_capacity(active.len());
            for (j, &i) in active.iter().enumerate() {
                let score = class_score(&logit_rows[j], targets[i].class as usize, cfg.binary);
                let finite = score.logit.is_finite() && state[j].x.iter().all(|v| v.is_finite());
                let window_positive = match cfg.stop {
                    StopRule::Window { steps } => {
                        let recent = &mut state[j].recent;
                        recent.push_back(score.logit);
                        if recent.len() > steps.max(1) as usize {
                            recent.pop_front();
                        }
                        recent.len() == steps.max(1) as usize && recent.iter().map(|&f| f as f64).sum::<f64>() > 0.0
                    }
                    _ => false,
                };
                let reason = match cfg.stop {
                    _ if !finite => Some(StopReason::NonFinite),
                    StopRule::Classified if score.positive => Some(StopReason::Classified),
                    StopRule::Probability { threshold } if score.prob as f64 > threshold => Some(StopReason::Probability),
                    StopRule::Argmax if score.top => Some(StopReason::Argmax),
                    StopRule::Threshold { min, max } if score.logit as f64 >= threshold(min, max, targets[i].seed) => Some(StopReason::Threshold),
                    StopRule::Window { .. } if window_positive => Some(StopReason::Window),
                    _ if step >= cfg.max_steps => Some(StopReason::MaxSteps),
                    _ => None,
                };
                match reason {
                    Some(reason) => {
                        images[i * d..(i + 1) * d].copy_from_slice(&state[j].x);
                        records[i] = Some(SampleRecord {
                            class: targets[i].class,
                            seed: targets[i].seed,
                            steps: step,
                            stop_reason: reason,
                            final_logit: score.logit,
                            final_prob: score.prob,
                            classified: score.positive,
                            top: score.top,
                        });
                    }
                    None => keep.push(j),
                }
            }
            if on_step(Finished { count: active.len() - keep.len(), steps: step }).is_break() {
                return Err(crate::stopped());
            }
            if keep.is_empty() {
                break;
            }
            // Ascent on sum_i f_{k_i}(x_i): samples are independent, so one backward serves all.
            let grads = picked.sum_all()?.backward()?;
            let g = grads
                .get(x.as_tensor())
                .ok_or_else(|| candle_core::Error::Msg("no gradient reached the input".into()))?
                .flatten_all()?
                .to_vec1::<f32>()?;
            step += 1;
            for &j in &keep {
                state[j].update(&g[j * d..(j + 1) * d], cfg, step);
            }
            active = keep.iter().map(|&j| active[j]).collect();
            let mut old: Vec<Option<Running>> = state.into_iter().map(Some).collect();
            state = keep.iter().map(|&j| old[j].take().expect("kept once")).collect();
        }
    }
    let records = records.into_iter().map(|r| r.expect("every sample stops")).collect();
    Ok(Synthesized { images, records })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logits::argmax;
    use crate::nn::{Cnn4, Cnn4Config};

    /// The logits of a sample's image.
    fn logits_of(net: &dyn Classifier, image: &[f32], dev: &Device) -> Result<Vec<f32>> {
        let x = Tensor::from_vec(image.to_vec(), (1, 1, 28, 28), dev)?;
        Ok(net.forward(&x)?.to_vec2::<f32>()?.remove(0))
    }

    /// f_j(x) = w_j * sum(x), with w_3 = NaN: class 3 cannot be synthesized finitely.
    struct NanForClass3(Var);

    impl Classifier for NanForClass3 {
        fn forward_mode(&self, x: &Tensor, _mode: Mode) -> Result<Tensor> {
            x.flatten_from(1)?.sum_keepdim(1)?.broadcast_mul(self.0.as_tensor())
        }
        fn named_vars(&self) -> Vec<(String, Var)> {
            vec![("w".into(), self.0.clone())]
        }
    }

    #[test]
    fn a_sample_that_goes_non_finite_stops_as_such_and_the_others_do_not() -> Result<()> {
        let dev = Device::Cpu;
        let mut w = vec![0.01f32; 10];
        w[3] = f32::NAN;
        let net = NanForClass3(Var::from_vec(w, (1, 10), &dev)?);
        let targets: Vec<Target> = [0u32, 3, 5, 3].iter().enumerate().map(|(i, &class)| Target { class, seed: 40 + i as u64 }).collect();
        let out = synthesize(&net, (1, 28, 28), &targets, &cfg(StopRule::Classified, 50), &dev, &mut crate::keep_going)?;
        let reasons: Vec<StopReason> = out.records.iter().map(|r| r.stop_reason).collect();
        assert_eq!(reasons[1], StopReason::NonFinite);
        assert_eq!(reasons[3], StopReason::NonFinite);
        assert!(reasons[0] != StopReason::NonFinite && reasons[2] != StopReason::NonFinite, "{reasons:?}");
        assert!(out.records[0].final_logit.is_finite());
        Ok(())
    }

    /// f(x) = sum(x) - 0.45 on one pixel.
    struct Shifted;

    impl Classifier for Shifted {
        fn forward_mode(&self, x: &Tensor, _mode: Mode) -> Result<Tensor> {
            x.flatten_from(1)?.sum_keepdim(1)? - 0.45
        }
        fn named_vars(&self) -> Vec<(String, Var)> {
            Vec::new()
        }
    }

    #[test]
    fn the_window_rule_waits_for_the_mean_of_the_last_scorings_to_be_positive() -> Result<()> {
        // SGD at lr 0.1 from 0: f = -0.45, -0.35, ..., -0.05, 0.05 (step 5), 0.15, 0.25
        let run = |stop: StopRule| -> Result<SampleRecord> {
            let cfg = SynthesisConfig { binary: true, step: Step::Sgd, lr: 0.1, max_steps: 20, init_std: 0.0, batch_size: 1, stop };
            let out = synthesize_from(&Shifted, (1, 1, 1), &[Target { class: 0, seed: 1 }], Some(&[0.0]), &cfg, &Device::Cpu, &mut crate::keep_going)?;
            Ok(out.records[0].clone())
        };
        let classified = run(StopRule::Classified)?;
        assert_eq!((classified.steps, classified.stop_reason), (5, StopReason::Classified));
        assert_eq!(run(StopRule::Window { steps: 1 })?.steps, 5, "a window of one scoring is the classified rule");
        // -0.05, 0.05, 0.15 is the first window of three with a positive mean
        let w3 = run(StopRule::Window { steps: 3 })?;
        assert_eq!((w3.steps, w3.stop_reason), (6, StopReason::Window));
        assert!((w3.final_logit - 0.15).abs() < 1e-5, "{}", w3.final_logit);
        // ... and never before it has three scorings, however positive the first ones
        let cfg = SynthesisConfig { binary: true, step: Step::Sgd, lr: 0.1, max_steps: 20, init_std: 0.0, batch_size: 1, stop: StopRule::Window { steps: 3 } };
        let out = synthesize_from(&Shifted, (1, 1, 1), &[Target { class: 0, seed: 1 }], Some(&[1.0]), &cfg, &Device::Cpu, &mut crate::keep_going)?;
        assert_eq!(out.records[0].steps, 2);
        Ok(())
    }

    #[test]
    fn each_stop_rule_stops_at_the_first_step_where_it_holds() -> Result<()> {
        let dev = Device::Cpu;
        let net = Cnn4::new(Cnn4Config::mnist(10, 0.125, 0.2), &mut Rng::new(9), &dev)?;
        let targets: Vec<Target> = (0..10).map(|i| Target { class: i as u32, seed: 700 + i as u64 }).collect();
        let holds = |rule: StopRule, row: &[f32], k: usize| {
            let f = row[k] as f64;
            match rule {
                StopRule::Classified => f > 0.0,
                StopRule::Probability { threshold } => 1.0 / (1.0 + (-f).exp()) > threshold,
                StopRule::Argmax => argmax(row) == k,
                StopRule::Steps => false,
                StopRule::Threshold { .. } => unreachable!("tested in threshold_rule_stops_each_sample_where_it_crosses_its_own_threshold"),
                StopRule::Window { .. } => unreachable!("tested in the_window_rule_waits_for_the_mean_of_the_last_scorings_to_be_positive"),
            }
        };
        let mut stopped_by_rule = 0;
        for rule in [StopRule::Classified, StopRule::Probability { threshold: 0.8 }, StopRule::Argmax] {
            // one sample per batch, so that the rerun below computes exactly the same steps
            let one = |rule, steps| SynthesisConfig { batch_size: 1, ..cfg(rule, steps) };
            let out = synthesize(&net, (1, 28, 28), &targets, &one(rule, 60), &dev, &mut crate::keep_going)?;
            for (i, (t, r)) in targets.iter().zip(&out.records).enumerate() {
                let k = t.class as usize;
                let row = logits_of(&net, &out.images[i * 784..(i + 1) * 784], &dev)?;
                if r.stop_reason == StopReason::MaxSteps {
                    assert!(r.steps == 60 && !holds(rule, &row, k), "{rule:?}: ran out of steps only where the rule never held");
                    continue;
                }
                stopped_by_rule += 1;
                assert!(holds(rule, &row, k), "{rule:?} holds where it stopped: {row:?}");
                assert_eq!((r.final_logit, r.classified, r.top), (row[k], row[k] > 0.0, argmax(&row) == k));
                // the same sample one step earlier: the rule did not hold yet
                if r.steps > 0 {
                    let before = synthesize(&net, (1, 28, 28), &targets[i..=i], &one(StopRule::Steps, r.steps - 1), &dev, &mut crate::keep_going)?;
                    let row = logits_of(&net, &before.images, &dev)?;
                    assert!(!holds(rule, &row, k), "{rule:?} already held at step {}: {row:?}", r.steps - 1);
                }
            }
        }
        assert!(stopped_by_rule >= 15, "the rules must be exercised, not only max_steps ({stopped_by_rule})");
        Ok(())
    }

    #[test]
    fn thresholds_are_uniform_in_their_range_and_fixed_by_the_seed() {
        let t: Vec<f64> = (0..4000u64).map(|s| threshold(-2.0, 3.0, s)).collect();
        assert!(t.iter().all(|v| (-2.0..3.0).contains(v)), "outside [min, max)");
        let mean = t.iter().sum::<f64>() / t.len() as f64;
        // uniform on [-2, 3]: mean 0.5, sd of the mean 5 / sqrt(12 * 4000) = 0.023
        assert!((mean - 0.5).abs() < 0.1, "mean {mean}");
        let below = t.iter().filter(|&&v| v < -1.0).count();
        assert!((700..900).contains(&below), "a fifth of the range holds {below} of 4000");
        assert_eq!(threshold(-2.0, 3.0, 17), threshold(-2.0, 3.0, 17));
        assert_ne!(threshold(-2.0, 3.0, 17), threshold(-2.0, 3.0, 18));
        // not the sample's starting noise stream
        assert_ne!(threshold(0.0, 1.0, 17), Rng::new(17).uniform());
        assert_eq!(threshold(1.5, 1.5, 9), 1.5);
    }

    #[test]
    fn threshold_rule_stops_each_sample_where_it_crosses_its_own_threshold() -> Result<()> {
        let dev = Device::Cpu;
        // a one-logit critic, as WINN's
        let net = Cnn4::new(Cnn4Config::mnist(1, 0.125, 0.2), &mut Rng::new(21), &dev)?;
        let targets: Vec<Target> = (0..8).map(|i| Target { class: 0, seed: 900 + i as u64 }).collect();
        let f = |image: &[f32]| -> Result<f64> { Ok(logits_of(&net, image, &dev)?[0] as f64) };
        // thresholds above every start, so each sample has to climb to its own
        let start = p0_samples(&targets, (1, 28, 28), 0.3);
        let top = (0..8).map(|i| f(&start.images[i * 784..(i + 1) * 784])).collect::<Result<Vec<_>>>()?.into_iter().fold(f64::MIN, f64::max);
        let (min, max) = (top + 0.05, top + 0.5);
        let one = |steps| SynthesisConfig { batch_size: 1, ..SynthesisConfig::winn(min, max, steps, 0.3) };
        let out = synthesize(&net, (1, 28, 28), &targets, &one(300), &dev, &mut crate::keep_going)?;
        let mut crossed = 0;
        for (i, (t, r)) in targets.iter().zip(&out.records).enumerate() {
            let th = threshold(min, max, t.seed);
            let now = f(&out.images[i * 784..(i + 1) * 784])?;
            assert!(out.images[i * 784..(i + 1) * 784].iter().all(|v| (-1.0..=1.0).contains(v)));
            if r.stop_reason == StopReason::MaxSteps {
                assert!(r.steps == 300 && now < th, "ran out of steps only below the threshold");
                continue;
            }
            assert_eq!(r.stop_reason, StopReason::Threshold);
            assert!(r.steps > 0, "every start is below every threshold");
            assert!(now >= th && (r.final_logit as f64 - now).abs() < 1e-5, "sample {i}: f {now} at stop, threshold {th}");
            let before = synthesize(&net, (1, 28, 28), &targets[i..=i], &SynthesisConfig { stop: StopRule::Steps, ..one(r.steps - 1) }, &dev, &mut crate::keep_going)?;
            let prev = f(&before.images)?;
            assert!(prev < th, "sample {i}: f {prev} one step before already reached {th}");
            crossed += 1;
        }
        assert!(crossed >= 6, "the rule must be exercised, not only max_steps ({crossed} of 8)");
        // distinct thresholds: the samples do not all stop at one value
        let stops: Vec<f32> = out.records.iter().map(|r| r.final_logit).collect();
        assert!(stops.iter().any(|&v| (v - stops[0]).abs() > 0.05), "{stops:?}");
        Ok(())
    }

    #[test]
    fn langevin_noise_has_variance_eps_annealed_by_decay() {
        // zero gradient: x moves by the noise alone, N(0, eps) with eps = lr * decay^(step-1)
        let c = SynthesisConfig { step: Step::Langevin { decay: 0.5 }, lr: 0.01, ..cfg(StopRule::Steps, 2) };
        let n = 40_000;
        let mut s = Running::new(17, n, 1e-9);
        let zero = vec![0f32; n];
        for (step, eps) in [(1u32, 0.01f64), (2, 0.005)] {
            let before = s.x.clone();
            s.update(&zero, &c, step);
            let d: Vec<f64> = s.x.iter().zip(&before).map(|(a, b)| (a - b) as f64).collect();
            let mean = d.iter().sum::<f64>() / n as f64;
            let var = d.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / (n - 1) as f64;
            // sd of the sample variance is eps * sqrt(2/n) = 0.7% of eps: 4% is ~6 sd, and
            // eps/2, eps^2 or sqrt(eps) miss it by far
            assert!((var / eps - 1.0).abs() < 0.04, "step {step}: variance {var} for eps {eps}");
            assert!(mean.abs() < 4.0 * (eps / n as f64).sqrt(), "step {step}: mean {mean}");
        }
    }

    fn cfg(stop: StopRule, max_steps: u32) -> SynthesisConfig {
        SynthesisConfig { binary: false, step: Step::Adam { beta1: 0.5, beta2: 0.999, eps: 1e-8 }, lr: 0.05, max_steps, init_std: 0.3, batch_size: 3, stop }
    }

    #[test]
    fn raises_the_target_logit_and_stops_by_rule() -> Result<()> {
        let dev = Device::Cpu;
        let net = Cnn4::new(Cnn4Config::mnist(10, 0.125, 0.2), &mut Rng::new(5), &dev)?;
        let targets: Vec<Target> = (0..5).map(|i| Target { class: (i * 3 % 10) as u32, seed: 100 + i as u64 }).collect();
        let mut done = 0;
        let fixed = synthesize(&net, (1, 28, 28), &targets, &cfg(StopRule::Steps, 15), &dev, &mut |f: Finished| {
            done += f.count;
            std::ops::ControlFlow::Continue(())
        })?;
        assert_eq!(done, 5);
        for (t, r) in targets.iter().zip(&fixed.records) {
            assert_eq!(r.steps, 15);
            assert_eq!(r.stop_reason, StopReason::MaxSteps);
            // the logit went up from its value at the start
            let x0 = Tensor::from_vec(initial_sample(t.seed, 784, 0.3), (1, 1, 28, 28), &dev)?;
            let before = net.forward(&x0)?.to_vec2::<f32>()?[0][t.class as usize];
            assert!(r.final_logit > before, "class {}: {} -> {}", t.class, before, r.final_logit);
        }
        assert!(fixed.images.iter().all(|v| (-1.0..=1.0).contains(v)));

        let early = synthesize(&net, (1, 28, 28), &targets, &cfg(StopRule::Classified, 200), &dev, &mut crate::keep_going)?;
        for (i, r) in early.records.iter().enumerate() {
            let x = Tensor::from_vec(early.images[i * 784..(i + 1) * 784].to_vec(), (1, 1, 28, 28), &dev)?;
            let row = net.forward(&x)?.to_vec2::<f32>()?.remove(0);
            assert!((row[r.class as usize] - r.final_logit).abs() < 1e-4, "recorded logit is the sample's");
            if r.stop_reason == StopReason::Classified {
                assert!(row[r.class as usize] > 0.0, "stopped at f_k > 0: {row:?}");
            } else {
                assert_eq!(r.steps, 200);
            }
        }
        Ok(())
    }

    #[test]
    fn probability_rule_sgd_and_langevin() -> Result<()> {
        let dev = Device::Cpu;
        let net = Cnn4::new(Cnn4Config::mnist(10, 0.125, 0.2), &mut Rng::new(5), &dev)?;
        let targets: Vec<Target> = (0..6).map(|i| Target { class: (i * 7 % 10) as u32, seed: 300 + i as u64 }).collect();
        let mut c = cfg(StopRule::Probability { threshold: 0.3 }, 100);
        let out = synthesize(&net, (1, 28, 28), &targets, &c, &dev, &mut crate::keep_going)?;
        for r in &out.records {
            match r.stop_reason {
                StopReason::Probability => assert!(r.final_prob > 0.3, "{r:?}"),
                StopReason::MaxSteps => assert!(r.steps == 100 && r.final_prob <= 0.3, "{r:?}"),
                other => panic!("unexpected stop {other:?}"),
            }
        }
        for step in [Step::Sgd, Step::Langevin { decay: 0.98 }] {
            c = SynthesisConfig { step, lr: 0.05, ..cfg(StopRule::Steps, 12) };
            let a = synthesize(&net, (1, 28, 28), &targets, &c, &dev, &mut crate::keep_going)?;
            let b = synthesize(&net, (1, 28, 28), &targets, &c, &dev, &mut crate::keep_going)?;
            assert_eq!(a.images, b.images, "{step:?} is deterministic per seed");
            let start = p0_samples(&targets, (1, 28, 28), 0.3);
            assert_ne!(a.images, start.images, "{step:?} moved the samples");
            let mean = |s: &Synthesized| -> Result<f32> {
                let x = Tensor::from_vec(s.images.clone(), (6, 1, 28, 28), &dev)?;
                let rows = net.forward(&x)?.to_vec2::<f32>()?;
                Ok(targets.iter().zip(&rows).map(|(t, r)| r[t.class as usize]).sum::<f32>() / 6.0)
            };
            if step == Step::Sgd {
                // (Langevin's noise can outweigh 12 steps of drift: only its determinism
                // and movement are checked.)
                assert!(mean(&a)? > mean(&start)?, "{step:?} raised the target logits on average");
            }
        }
        Ok(())
    }

    #[test]
    fn p0_samples_are_the_starting_points() {
        let t = [Target { class: 3, seed: 11 }, Target { class: 4, seed: 12 }];
        let s = p0_samples(&t, (1, 4, 4), 0.3);
        assert_eq!(s.images[..16], initial_sample(11, 16, 0.3)[..]);
        assert_eq!(s.images[16..], initial_sample(12, 16, 0.3)[..]);
        assert!(s.records.iter().all(|r| r.stop_reason == StopReason::Noise && r.steps == 0));
    }

    #[test]
    fn given_starting_points_replace_the_gaussian_ones() -> Result<()> {
        let dev = Device::Cpu;
        let net = Cnn4::new(Cnn4Config::mnist(10, 0.125, 0.2), &mut Rng::new(5), &dev)?;
        let t = [Target { class: 1, seed: 9 }, Target { class: 4, seed: 10 }];
        let starts = crate::nn::initial::NoiseProvider::new((1, 28, 28), 3, &dev)?.samples(&[9, 10])?;
        let at0 = synthesize_from(&net, (1, 28, 28), &t, Some(&starts), &cfg(StopRule::Steps, 0), &dev, &mut crate::keep_going)?;
        assert_eq!(at0.images, starts, "no step: the samples are their starting points");
        let moved = synthesize_from(&net, (1, 28, 28), &t, Some(&starts), &cfg(StopRule::Steps, 3), &dev, &mut crate::keep_going)?;
        let gaussian = synthesize(&net, (1, 28, 28), &t, &cfg(StopRule::Steps, 3), &dev, &mut crate::keep_going)?;
        assert_ne!(moved.images, starts);
        assert_ne!(moved.images, gaussian.images);
        assert!(synthesize_from(&net, (1, 28, 28), &t, Some(&starts[..784]), &cfg(StopRule::Steps, 0), &dev, &mut crate::keep_going).is_err());
        Ok(())
    }

    #[test]
    fn a_sample_depends_only_on_its_seed() -> Result<()> {
        let dev = Device::Cpu;
        let net = Cnn4::new(Cnn4Config::mnist(10, 0.125, 0.2), &mut Rng::new(5), &dev)?;
        let t = |class, seed| Target { class, seed };
        let a = synthesize(&net, (1, 28, 28), &[t(1, 9), t(4, 10)], &cfg(StopRule::Steps, 5), &dev, &mut crate::keep_going)?;
        let b = synthesize(&net, (1, 28, 28), &[t(7, 3), t(4, 10)], &cfg(StopRule::Steps, 5), &dev, &mut crate::keep_going)?;
        assert_eq!(a.images[784..], b.images[784..]);
        assert_eq!(a.records[1], b.records[1]);
        Ok(())
    }
}
