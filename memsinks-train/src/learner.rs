//! The model as burn-train sees it: a module wrapping [`MemSinkLm`] with the causal-LM train and
//! evaluation steps, their outputs, the metrics shown on burn-train's dashboard, and the shared
//! run log (JSON lines) both steps and loaders write to.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use burn::module::{AutodiffModule, Module};
use burn::optim::{GradientsParams, Optimizer};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::ElementConversion;
use burn::train::metric::state::{FormatOptions, NumericMetricState};
use burn::train::metric::{
    Adaptor, Metric, MetricAttributes, MetricMetadata, MetricName, Numeric, NumericAttributes, NumericEntry,
    SerializedEntry,
};
use burn::train::{InferenceStep, Interrupter, ItemLazy, TrainOutput, TrainStep};
use memsinks_data::{LmBatch, Split};
use memsinks_model::{MemSinkLm, MlpMode};

use crate::checkpoint::CheckpointBarrier;
use crate::loss::{lm_loss, token_nll};
use crate::optim::{clip_global_norm, WarmupCosine};

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

/// Host-side results of one step: named mean losses with their token counts.
#[derive(Clone, Debug, Default)]
pub struct StepOutput {
    /// `(metric name, mean NLL, tokens)`.
    pub losses: Vec<(&'static str, f64, usize)>,
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
    key: &'static str,
    name: MetricName,
    state: NumericMetricState,
}

impl NamedLoss {
    /// The metric for loss `key`.
    pub fn new(key: &'static str) -> Self {
        Self { key, name: Arc::new(key.to_string()), state: NumericMetricState::default() }
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
                SerializedEntry::new(format!("{}: {current:.4}", self.key), current.to_string())
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

/// Names of the evaluation losses.
pub const EVAL_KEYS: [&str; 5] =
    ["val_loss", "rep_loss_sinks", "rep_loss_nosinks", "canary_loss_sinks", "canary_loss_nosinks"];

/// State shared by the train step, the evaluation step and the loaders of one run: step count,
/// the JSON-lines metric log, evaluation accumulators and the non-finite-loss stop.
pub struct RunLog {
    path: PathBuf,
    micro_per_step: u64,
    iterations_per_step: u64,
    log_every: u64,
    schedule: WarmupCosine,
    /// Micro-batches trained so far.
    micro: AtomicU64,
    window: Mutex<(Instant, u64, f64, u64)>,
    eval: Mutex<EvalAccumulator>,
    failure: Mutex<Option<String>>,
    interrupter: Interrupter,
    echo: bool,
    /// Micro-batches trained before this process started (resume).
    micro_at_start: u64,
    /// The checkpointer threads' progress, and micro-batches per saved round.
    checkpoints: Option<(Arc<CheckpointBarrier>, u64)>,
}

impl std::fmt::Debug for RunLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunLog").field("path", &self.path).field("step", &self.step()).finish()
    }
}

#[derive(Debug, Default)]
struct EvalAccumulator {
    sums: BTreeMap<&'static str, (f64, usize)>,
    per_doc: BTreeMap<usize, (f64, f64)>,
    rounds: u64,
}

impl RunLog {
    /// A log appending to `path`; `micro_done` micro-batches were trained before (resume).
    /// `micro_per_step` counts micro-batches over all devices, `iterations_per_step` the
    /// scheduler steps (gradient accumulation) per optimizer step.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        path: PathBuf,
        micro_per_step: u64,
        iterations_per_step: u64,
        log_every: u64,
        schedule: WarmupCosine,
        micro_done: u64,
        rounds_done: u64,
        interrupter: Interrupter,
    ) -> Self {
        Self {
            path,
            micro_per_step,
            iterations_per_step,
            log_every,
            schedule,
            micro: AtomicU64::new(micro_done),
            window: Mutex::new((Instant::now(), 0, 0.0, 0)),
            eval: Mutex::new(EvalAccumulator { rounds: rounds_done, ..Default::default() }),
            failure: Mutex::new(None),
            interrupter,
            echo: !std::io::IsTerminal::is_terminal(&std::io::stdout()),
            micro_at_start: micro_done,
            checkpoints: None,
        }
    }

    /// Makes [`RunLog::wait_for_checkpoints`] wait on `barrier`; burn-train saves a round every
    /// `micro_per_round` micro-batches.
    pub fn with_checkpoint_barrier(mut self, barrier: Arc<CheckpointBarrier>, micro_per_round: u64) -> Self {
        self.checkpoints = Some((barrier, micro_per_round.max(1)));
        self
    }

    /// Blocks until burn-train's checkpointer threads have finished reading every round this
    /// process saved before the coming micro-batch (see [`crate::checkpoint`]: on the fusion
    /// backends, training while they read aborts the process).
    pub fn wait_for_checkpoints(&self) {
        if let Some((barrier, micro_per_round)) = &self.checkpoints {
            let trained_here = self.micro.load(Ordering::SeqCst) - self.micro_at_start;
            barrier.wait_for_rounds((trained_here / micro_per_round) as usize);
        }
    }

    fn append(&self, line: serde_json::Value) {
        if self.echo {
            eprintln!("{line}");
        }
        let written =
            OpenOptions::new().create(true).append(true).open(&self.path).and_then(|mut f| writeln!(f, "{line}"));
        if let Err(e) = written {
            tracing::warn!("cannot write {}: {e}", self.path.display());
        }
    }

    /// Optimizer steps completed so far.
    pub fn step(&self) -> u64 {
        self.micro.load(Ordering::SeqCst) / self.micro_per_step
    }

    fn after_train(&self, loss: f64, tokens: u64) {
        let micro = self.micro.fetch_add(1, Ordering::SeqCst) + 1;
        let step = micro / self.micro_per_step;
        if !loss.is_finite() {
            let msg = format!("non-finite training loss ({loss}) at step {step}; the last complete checkpoint is kept");
            *self.failure.lock().expect("poisoned") = Some(msg.clone());
            self.interrupter.stop(Some(&msg));
            return;
        }
        let mut w = self.window.lock().expect("poisoned");
        w.1 += tokens;
        w.2 += loss;
        w.3 += 1;
        if micro.is_multiple_of(self.log_every * self.micro_per_step) {
            let secs = w.0.elapsed().as_secs_f64();
            let line = serde_json::json!({
                "kind": "train",
                "step": step,
                "loss": w.2 / w.3 as f64,
                "lr": self.schedule.lr_at((step.max(1) * self.iterations_per_step) as usize),
                "tokens_per_s": w.1 as f64 / secs.max(1e-9),
                "tokens_seen": micro * tokens,
            });
            *w = (Instant::now(), 0, 0.0, 0);
            drop(w);
            self.append(line);
        }
    }

    fn add_eval(&self, out: &StepOutput, per_doc: &[(usize, f64, f64)]) {
        let mut acc = self.eval.lock().expect("poisoned");
        for &(k, mean, n) in &out.losses {
            let e = acc.sums.entry(k).or_default();
            e.0 += mean * n as f64;
            e.1 += n;
        }
        for &(doc, with, without) in per_doc {
            acc.per_doc.insert(doc, (with, without));
        }
    }

    /// Writes the evaluation line of the round that just ended and resets the accumulators.
    pub fn flush_eval(&self) {
        let mut acc = self.eval.lock().expect("poisoned");
        acc.rounds += 1;
        let mut line = serde_json::json!({"kind": "eval", "round": acc.rounds, "step": self.step()});
        for (k, (sum, n)) in &acc.sums {
            line[*k] = serde_json::json!(sum / (*n).max(1) as f64);
        }
        let docs: serde_json::Map<String, serde_json::Value> =
            acc.per_doc.iter().map(|(d, (w, wo))| (d.to_string(), serde_json::json!([w, wo]))).collect();
        line["rep_doc_losses"] = serde_json::Value::Object(docs);
        acc.sums.clear();
        acc.per_doc.clear();
        drop(acc);
        self.append(line);
    }

    /// The failure that stopped training, if any.
    pub fn failure(&self) -> Option<String> {
        self.failure.lock().expect("poisoned").clone()
    }
}

/// The module burn-train trains: the LM plus the run's shared state.
#[derive(Module, Debug)]
pub struct LmLearner<B: Backend> {
    /// The language model.
    pub lm: MemSinkLm<B>,
    #[module(skip)]
    log: Option<Arc<RunLog>>,
    #[module(skip)]
    clip_norm: Option<f64>,
    #[module(skip)]
    per_doc_tracked: usize,
}

impl<B: Backend> LmLearner<B> {
    /// Wraps `lm` for training with `log` and global gradient clipping at `clip_norm`.
    pub fn new(lm: MemSinkLm<B>, log: Arc<RunLog>, clip_norm: Option<f64>) -> Self {
        Self { lm, log: Some(log), clip_norm, per_doc_tracked: 16 }
    }

    fn has_sinks(&self) -> bool {
        !self.lm.sink_pool().is_empty()
    }
}

impl<B: AutodiffBackend> TrainStep for LmLearner<B> {
    type Input = LmBatch<B>;
    type Output = StepOutput;

    fn step(&self, batch: LmBatch<B>) -> TrainOutput<StepOutput> {
        if let Some(log) = &self.log {
            log.wait_for_checkpoints();
        }
        let loss = lm_loss(&self.lm, &batch, &MlpMode::Train);
        let value: f64 = loss.clone().into_scalar().elem();
        let tokens = (batch.layout.batch * batch.layout.seq_len) as u64;
        if let Some(log) = &self.log {
            log.after_train(value, tokens);
        }
        let grads = loss.backward();
        TrainOutput::new(self, grads, StepOutput { losses: vec![("loss", value, tokens as usize)] })
    }

    fn optimize<BB, O>(self, optim: &mut O, lr: f64, mut grads: GradientsParams) -> Self
    where
        BB: AutodiffBackend,
        O: Optimizer<Self, BB>,
        Self: AutodiffModule<BB>,
    {
        if let Some(max) = self.clip_norm {
            clip_global_norm::<BB, Self>(&self, &mut grads, max);
        }
        optim.step(lr, self, grads)
    }
}

impl<B: Backend> InferenceStep for LmLearner<B> {
    type Input = EvalBatch<B>;
    type Output = StepOutput;

    fn step(&self, item: EvalBatch<B>) -> StepOutput {
        let sinks = self.has_sinks();
        let drop = MlpMode::DropSinks { rescale: true };
        let own = MlpMode::ActivateSeq { exclude: vec![] };
        let (with_key, without_key) = match item.split {
            Split::Repeated => ("rep_loss_sinks", "rep_loss_nosinks"),
            Split::Unique => ("unique_loss", "unique_loss"),
            Split::Canary => ("canary_loss_sinks", "canary_loss_nosinks"),
            Split::Validation => ("val_loss", "val_loss"),
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
        let with = if sinks && item.split != Split::Validation { rows(&own).0 } else { without.clone() };
        let (m_without, n) = mean(&without, &counts);
        let (m_with, _) = mean(&with, &counts);
        out.losses.push((without_key, m_without, n));
        if with_key != without_key {
            out.losses.push((with_key, m_with, n));
        }
        let per_doc: Vec<(usize, f64, f64)> = if item.split == Split::Repeated {
            // Repeated documents come first in the corpus, so indices below the tracked count are
            // the same documents in every evaluation.
            item.docs
                .iter()
                .zip(with.iter().zip(&without))
                .filter(|(d, _)| **d < self.per_doc_tracked)
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
/// line per iteration, so this one stays silent and the run log's JSON lines (echoed to stderr)
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
