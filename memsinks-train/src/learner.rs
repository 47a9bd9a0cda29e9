//! The model as burn-train sees it: a module wrapping [`MemSinkLm`] with the causal-LM train and
//! evaluation steps, their outputs, and the metrics shown on burn-train's dashboard. Both steps
//! report to the run's [`RunState`].

use memsinks_model::{Kernels, TrainBackend};
use std::collections::BTreeSet;
use std::sync::Arc;

use burn::module::{AutodiffModule, Module};
use burn::optim::{GradientsParams, Optimizer};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::ElementConversion;
use burn::train::metric::state::{FormatOptions, NumericMetricState};
use burn::train::metric::{
    Adaptor, Metric, MetricAttributes, MetricMetadata, MetricName, Numeric, NumericAttributes, NumericEntry,
    SerializedEntry,
};
use burn::train::{InferenceStep, ItemLazy, TrainOutput, TrainStep};
use memsinks_data::{LmBatch, Split};
use memsinks_model::{DropScale, MemSinkLm, MlpMode};

use crate::amp::{LossScale, LossScaleConfig, ScaleState, ScaleVerdict};
use crate::config::Precision;
use crate::metric_log::EvalKey;
use crate::optim::{clip_global_norm, unscale_and_clip};
use crate::run_state::RunState;
use memsinks_model::loss::{lm_loss, token_nll};

/// An evaluation batch: one document per row, all of one split, with each row's document index.
#[derive(Clone, Debug)]
pub struct EvalBatch<B: Backend> {
    /// The rows.
    pub batch: LmBatch<B>,
    /// Their split.
    pub split: Split,
    /// Document index of each row.
    pub docs: Vec<usize>,
}

/// Which loss a [`StepOutput`] entry is: the training loss, or one of the evaluation losses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LossKey {
    /// The training loss of a step.
    Training,
    /// An evaluation loss.
    Eval(EvalKey),
}

impl LossKey {
    /// The metric's name on burn-train's dashboard.
    pub fn name(self) -> &'static str {
        match self {
            LossKey::Training => "loss",
            LossKey::Eval(key) => key.name(),
        }
    }
}

/// Host-side results of one step: mean losses with their token counts.
#[derive(Clone, Debug, Default)]
pub struct StepOutput {
    /// `(loss, mean NLL, tokens)`.
    pub losses: Vec<(LossKey, f64, usize)>,
}

impl ItemLazy for StepOutput {
    type ItemSync = StepOutput;
    fn sync(self) -> Self::ItemSync {
        self
    }
}

impl Adaptor<StepOutput> for StepOutput {
    fn adapt(&self) -> StepOutput {
        self.clone()
    }
}

/// A numeric metric that reads one named loss of [`StepOutput`], weighted by tokens.
#[derive(Clone)]
pub struct NamedLoss {
    key: LossKey,
    name: MetricName,
    state: NumericMetricState,
}

impl NamedLoss {
    /// The metric for loss `key`.
    pub fn new(key: LossKey) -> Self {
        Self { key, name: Arc::new(key.name().to_string()), state: NumericMetricState::default() }
    }
}

impl Metric for NamedLoss {
    type Input = StepOutput;

    fn update(&mut self, item: &StepOutput, _meta: &MetricMetadata) -> SerializedEntry {
        let format = FormatOptions::new(self.name()).precision(4);
        match item.losses.iter().find(|(k, _, _)| *k == self.key) {
            Some(&(_, value, tokens)) => self.state.update(value, tokens.max(1), format),
            None => {
                let current = match self.state.running_value() {
                    NumericEntry::Value(v) => v,
                    NumericEntry::Aggregated { aggregated_value, .. } => aggregated_value,
                };
                SerializedEntry::new(format!("{}: {current:.4}", self.key.name()), current.to_string())
            }
        }
    }

    fn clear(&mut self) {
        self.state.reset();
    }

    fn name(&self) -> MetricName {
        self.name.clone()
    }

    fn attributes(&self) -> MetricAttributes {
        NumericAttributes { unit: None, higher_is_better: false }.into()
    }
}

impl Numeric for NamedLoss {
    fn value(&self) -> NumericEntry {
        self.state.current_value()
    }
    fn running_value(&self) -> NumericEntry {
        self.state.running_value()
    }
}

/// The module burn-train trains: the LM plus the run's shared state.
#[derive(Module, Debug)]
pub struct TrainingLm<B: Backend> {
    /// The language model.
    pub lm: MemSinkLm<B>,
    /// The loss scale of f16 mixed precision (unused otherwise); in the record, so checkpoints
    /// carry it.
    pub loss_scale: LossScale<B>,
    #[module(skip)]
    log: Option<Arc<RunState>>,
    #[module(skip)]
    clip_norm: Option<f64>,
    /// The float type steps compute in ([`crate::amp`]).
    #[module(skip)]
    precision: Precision,
    #[module(skip)]
    scaling: LossScaleConfig,
    /// Micro-batches per optimizer step over all devices: each one's loss is divided by it
    /// before the backward pass, since burn-train sums their gradients ([`crate::parallel`]).
    #[module(skip)]
    micro_per_step: usize,
    /// Repeated documents whose own losses are logged at every evaluation, and the dev half.
    #[module(skip)]
    docs: Arc<EvalDocs>,
}

/// Repeated documents an evaluation reports on beyond the whole set.
#[derive(Debug, Default)]
pub struct EvalDocs {
    /// Logged one by one.
    pub tracked: BTreeSet<usize>,
    /// The dev half ([`memsinks_data::Half`]); the other repeated documents are the test half.
    pub dev: BTreeSet<usize>,
}

impl<B: Backend> TrainingLm<B> {
    /// Wraps `lm` for training with `log`, global gradient clipping at `clip_norm`, and the
    /// repeated documents logged one by one and by half.
    pub fn new(lm: MemSinkLm<B>, log: Arc<RunState>, clip_norm: Option<f64>, docs: Arc<EvalDocs>) -> Self {
        let scaling = LossScaleConfig::default();
        let loss_scale = LossScale::new(ScaleState::new(&scaling), &lm.embed.weight.val().device());
        Self { lm, loss_scale, log: Some(log), clip_norm, precision: Precision::F32, scaling, docs, micro_per_step: 1 }
    }

    /// Each optimizer step sums the gradients of `micro_per_step` micro-batches (accumulated and
    /// over devices); the step's gradient is their mean.
    pub fn with_micro_batches_per_step(self, micro_per_step: usize) -> Self {
        Self { micro_per_step: micro_per_step.max(1), ..self }
    }

    /// Steps compute in `precision`, with `scaling` for f16 ([`crate::amp`]).
    pub fn with_precision(self, precision: Precision, scaling: LossScaleConfig) -> Self {
        let loss_scale = self.loss_scale.with_state(ScaleState::new(&scaling));
        Self { precision, scaling, loss_scale, ..self }
    }

    fn has_sinks(&self) -> bool {
        !self.lm.sink_pool().is_empty()
    }
}

impl<B: TrainBackend> TrainStep for TrainingLm<B> {
    type Input = LmBatch<B>;
    type Output = StepOutput;

    fn step(&self, batch: LmBatch<B>) -> TrainOutput<StepOutput> {
        if let Some(log) = &self.log {
            log.wait_for_checkpoints();
        }
        let half = self.precision.compute_copy(&self.lm);
        let loss = lm_loss(half.as_ref().unwrap_or(&self.lm), &batch, &MlpMode::Train);
        let value: f64 = loss.clone().into_scalar().elem();
        let tokens = (batch.layout.batch * batch.layout.seq_len) as u64;
        if let Some(log) = &self.log {
            log.after_train(value, tokens);
        }
        let mut factor = 1.0 / self.micro_per_step as f64;
        if self.precision.scales_loss() {
            factor *= self.loss_scale.get().scale;
        }
        // One step of one micro-batch in f32 leaves the loss as it is (bit for bit).
        let grads = if factor == 1.0 { loss.backward() } else { (loss * factor).backward() };
        TrainOutput::new(self, grads, StepOutput { losses: vec![(LossKey::Training, value, tokens as usize)] })
    }

    fn optimize<BB, O>(self, optim: &mut O, lr: f64, mut grads: GradientsParams) -> Self
    where
        BB: AutodiffBackend,
        O: Optimizer<Self, BB>,
        Self: AutodiffModule<BB>,
    {
        if !self.precision.scales_loss() {
            if let Some(max) = self.clip_norm {
                clip_global_norm::<BB, Self>(&self, &mut grads, max);
            }
            return optim.step(lr, self, grads);
        }
        // f16: unscale (and clip) the gradients; skip the step where they overflowed.
        let mut state = self.loss_scale.get();
        let norm = unscale_and_clip::<BB, Self>(&self, &mut grads, 1.0 / state.scale, self.clip_norm);
        let verdict = state.after_step(norm.is_finite(), &self.scaling);
        if let Some(log) = &self.log {
            log.after_scaled_step(state, verdict);
        }
        let loss_scale = self.loss_scale.with_state(state);
        match verdict {
            ScaleVerdict::Step => Self { loss_scale, ..optim.step(lr, self, grads) },
            ScaleVerdict::Skip | ScaleVerdict::GiveUp => Self { loss_scale, ..self },
        }
    }
}

impl<B: Kernels> InferenceStep for TrainingLm<B> {
    type Input = EvalBatch<B>;
    type Output = StepOutput;

    fn step(&self, item: EvalBatch<B>) -> StepOutput {
        let sinks = self.has_sinks();
        let drop = MlpMode::DropSinks { scale: DropScale::Reference };
        let own = MlpMode::ActivateSeq { exclude: vec![] };
        // The keys of the split's loss with its sinks and without; unique text is not evaluated.
        let (with_key, without_key) = match item.split {
            Split::Repeated => (EvalKey::RepLossSinks, EvalKey::RepLossNosinks),
            Split::Canary => (EvalKey::CanaryLossSinks, EvalKey::CanaryLossNosinks),
            Split::Validation => (EvalKey::ValLoss, EvalKey::ValLoss),
            Split::CanaryHeldOut => (EvalKey::CanaryHeldoutLoss, EvalKey::CanaryHeldoutLoss),
            Split::Unique | Split::DedupFill => return StepOutput::default(),
        };
        // Per-row mean NLL in one mode.
        let rows = |mode: &MlpMode| -> (Vec<f64>, Vec<usize>) {
            let (nll, mask) = token_nll(&self.lm, &item.batch, mode);
            let sums: Vec<f32> = (nll * mask.clone()).sum_dim(1).into_data().convert::<f32>().to_vec().expect("f32");
            let counts: Vec<f32> = mask.sum_dim(1).into_data().convert::<f32>().to_vec().expect("f32");
            (
                sums.iter().zip(&counts).map(|(s, c)| *s as f64 / (*c).max(1.0) as f64).collect(),
                counts.iter().map(|&c| c as usize).collect(),
            )
        };
        let mean = |v: &[f64], n: &[usize]| {
            let total: usize = n.iter().sum();
            (v.iter().zip(n).map(|(x, &c)| x * c as f64).sum::<f64>() / total.max(1) as f64, total)
        };
        let mut out = StepOutput::default();
        let (without, counts) = rows(&drop);
        let held_out = matches!(item.split, Split::Validation | Split::CanaryHeldOut);
        let with = if sinks && !held_out { rows(&own).0 } else { without.clone() };
        let (m_without, n) = mean(&without, &counts);
        let (m_with, _) = mean(&with, &counts);
        out.losses.push((LossKey::Eval(without_key), m_without, n));
        if with_key != without_key {
            out.losses.push((LossKey::Eval(with_key), m_with, n));
        }
        if item.split == Split::Repeated {
            // The dev and test halves of the repeated documents, with and without sinks.
            let halves = [
                (true, [EvalKey::RepDevSinks, EvalKey::RepDevNosinks]),
                (false, [EvalKey::RepTestSinks, EvalKey::RepTestNosinks]),
            ];
            for (dev, keys) in halves {
                let rows: Vec<usize> =
                    (0..item.docs.len()).filter(|&r| self.docs.dev.contains(&item.docs[r]) == dev).collect();
                let counts: Vec<usize> = rows.iter().map(|&r| counts[r]).collect();
                for (key, losses) in keys.into_iter().zip([&with, &without]) {
                    let (m, n) = mean(&rows.iter().map(|&r| losses[r]).collect::<Vec<_>>(), &counts);
                    if n > 0 {
                        out.losses.push((LossKey::Eval(key), m, n));
                    }
                }
            }
        }
        let per_doc: Vec<(usize, f64, f64)> = if item.split == Split::Repeated {
            item.docs
                .iter()
                .zip(with.iter().zip(&without))
                .filter(|(d, _)| self.docs.tracked.contains(*d))
                .map(|(d, (w, wo))| (*d, *w, *wo))
                .collect()
        } else {
            Vec::new()
        };
        if let Some(log) = &self.log {
            log.add_eval(&out, &per_doc);
        }
        out
    }
}

/// The renderer used when stdout is not a terminal: burn-train's plain renderer prints a debug
/// line per iteration, so this one stays silent and the run state's JSON lines (echoed to stderr)
/// are the progress report. On a terminal burn-train's dashboard is used instead.
pub struct QuietRenderer;

impl burn::train::renderer::MetricsRendererTraining for QuietRenderer {
    fn update_train(&mut self, _state: burn::train::renderer::MetricState) {}
    fn update_valid(&mut self, _state: burn::train::renderer::MetricState) {}
    fn render_train(
        &mut self,
        _item: burn::train::renderer::TrainingProgress,
        _p: Vec<burn::train::renderer::ProgressType>,
    ) {
    }
    fn render_valid(
        &mut self,
        _item: burn::train::renderer::TrainingProgress,
        _p: Vec<burn::train::renderer::ProgressType>,
    ) {
    }
}

impl burn::train::renderer::MetricsRendererEvaluation for QuietRenderer {
    fn update_test(
        &mut self,
        _name: burn::train::renderer::EvaluationName,
        _state: burn::train::renderer::MetricState,
    ) {
    }
    fn render_test(
        &mut self,
        _item: burn::train::renderer::EvaluationProgress,
        _p: Vec<burn::train::renderer::ProgressType>,
    ) {
    }
}

impl burn::train::renderer::MetricsRenderer for QuietRenderer {
    fn manual_close(&mut self) {}
    fn register_metric(&mut self, _definition: burn::train::metric::MetricDefinition) {}
}
