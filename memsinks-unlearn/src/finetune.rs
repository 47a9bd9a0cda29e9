//! Fine-tuning unlearning baselines on a trained model: Gradient Ascent on the forget set,
//! Gradient Difference (ascent on forget, descent on retain) and NPO (Zhang et al. 2024,
//! negative preference optimisation against the frozen starting model). Each run traces the
//! trade-off curve: forget-set loss against validation loss, evaluated every few steps.

use burn::module::AutodiffModule;
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use memsinks_data::{Batcher, Cursor, DocRows, LmBatch, Split};
use memsinks_model::loss::{lm_loss, token_nll};
use memsinks_model::{Kernels, TrainBackend};
use memsinks_model::{MemSinkLm, MlpMode};
use memsinks_train::optim::step;
use memsinks_train::OptimConfig;
use serde::{Deserialize, Serialize};

use crate::probe::{point, Probe, TradeoffPoint};
use crate::UnlearnError;

/// The unlearning objective.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Objective {
    /// Maximise the forget-set loss.
    GradientAscent,
    /// Maximise the forget-set loss while minimising the retain-set (unique documents) loss.
    GradientDifference,
    /// Negative preference optimisation: `2/β · softplus(β · (log p_θ − log p_ref))` per sequence.
    Npo,
}

/// Hyperparameters of a fine-tuning unlearning run (a method file's `spec`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FinetuneConfig {
    /// The objective.
    pub objective: Objective,
    /// Learning rate (constant).
    pub lr: f64,
    /// Optimizer steps.
    pub steps: usize,
    /// Steps between points of the trade-off curve.
    pub eval_every: usize,
    /// Rows per batch.
    pub batch_size: usize,
    /// Weight of the retain loss (gradient difference).
    pub retain_weight: f64,
    /// NPO temperature.
    pub beta: f64,
    /// Documents per set in each evaluation.
    pub eval_docs: usize,
}

impl Default for FinetuneConfig {
    fn default() -> Self {
        Self {
            objective: Objective::GradientAscent,
            lr: 1e-4,
            steps: 40,
            eval_every: 5,
            batch_size: 16,
            retain_weight: 1.0,
            beta: 0.1,
            eval_docs: 40,
        }
    }
}

/// What a post-hoc method produced.
pub struct Treated<B: TrainBackend> {
    /// The trade-off curve; its first point is the untreated model.
    pub curve: Vec<TradeoffPoint>,
    /// The model at the curve's last point.
    pub model: MemSinkLm<B>,
    /// The model at the first point whose ΔL_forget reached the target asked for, if any did.
    pub matched: Option<Matched<B>>,
}

/// A model at one point of a curve.
pub struct Matched<B: TrainBackend> {
    /// The point's index in the curve.
    pub index: usize,
    /// The model there.
    pub model: MemSinkLm<B>,
}

/// Batches of `docs` (one per row) that start over at the end: an endless stream for
/// optimisation loops.
pub struct Cycle {
    batcher: Batcher,
    cursor: Cursor,
    tokens: ScoreTokens,
}

impl Cycle {
    /// A cycle over `rows` (whose document list must not be empty).
    pub fn new(rows: &DocRows<'_>) -> Self {
        Self::reading(rows, ScoreTokens::All)
    }

    /// A cycle whose batches weigh only the targets `tokens` names.
    pub fn reading(rows: &DocRows<'_>, tokens: ScoreTokens) -> Self {
        assert!(!rows.docs.is_empty(), "an empty document list never yields a batch");
        let batcher = Batcher::over_documents(rows);
        Self { batcher, cursor: Cursor::default(), tokens }
    }

    /// The next batch on `device`.
    pub fn next<B: Backend>(&mut self, device: &B::Device) -> LmBatch<B> {
        loop {
            if let Some(mut b) = self.batcher.next_batch(&mut self.cursor) {
                self.tokens.apply(&mut b);
                return b.to_device(device);
            }
        }
    }
}

/// Which target tokens of a document a localization scorer reads.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum ScoreTokens {
    /// Every token after the first.
    #[default]
    All,
    /// Only the continuation after the first `prompt` tokens (MemPi scores the memorized
    /// continuation, not the prompt that elicits it).
    Continuation {
        /// Prompt tokens whose prediction carries no weight.
        prompt: usize,
    },
}

impl ScoreTokens {
    /// Zeroes the weights of the targets this choice leaves out (one document per row, from its
    /// start: target `t` predicts token `t + 1`).
    pub fn apply(self, batch: &mut memsinks_data::HostBatch) {
        if let Self::Continuation { prompt } = self {
            for row in &mut batch.weights {
                let skip = prompt.saturating_sub(1).min(row.len());
                row[..skip].iter_mut().for_each(|w| *w = 0.0);
            }
        }
    }
}

/// Per-row summed log-likelihood `[batch]` of the targets.
fn sequence_logp<B: Kernels>(model: &MemSinkLm<B>, batch: &LmBatch<B>, mode: &MlpMode) -> Tensor<B, 1> {
    let (nll, mask) = token_nll(model, batch, mode);
    (nll * mask).sum_dim(1).neg().squeeze_dim(1)
}

/// Runs `cfg.objective` from `model` on the probe's forget set and returns the trade-off curve
/// (the first point is step 0), the treated model and, with `keep_at`, the model at the first
/// point whose ΔL_forget reached it.
///
/// # Errors
/// When, for gradient difference, the retain set is empty.
pub fn unlearn<B: TrainBackend>(
    model: MemSinkLm<B>,
    probe: &Probe<'_>,
    cfg: &FinetuneConfig,
    mode: &MlpMode,
    keep_at: Option<f64>,
    device: &B::Device,
) -> Result<Treated<B>, UnlearnError> {
    let (corpus, context) = (probe.corpus, probe.context);
    // The retain set: unique documents, none of the forget set's (a forgotten source's unique
    // documents are its own).
    let forgotten: std::collections::HashSet<usize> = probe.forget_docs.iter().copied().collect();
    let retain_docs: Vec<usize> =
        corpus.manifest.indices(Split::Unique).into_iter().filter(|d| !forgotten.contains(d)).collect();
    if cfg.objective == Objective::GradientDifference && retain_docs.is_empty() {
        return Err(UnlearnError::EmptySet("unique (retain)".into()));
    }
    let reference = model.valid();
    let base = probe.losses(&reference, mode, device);
    let mut curve = vec![point(0.0, base, base)];
    let forget_rows = DocRows::of(corpus, &probe.forget_docs, context, cfg.batch_size);
    let mut forget_batches = Cycle::new(&forget_rows);
    let mut retain_batches = (!retain_docs.is_empty()).then(|| Cycle::new(&forget_rows.with_docs(&retain_docs)));
    let optim_cfg = OptimConfig { weight_decay: 0.0, ..Default::default() };
    let mut optim = optim_cfg.init::<B, MemSinkLm<B>>();
    let mut model = model;
    let mut matched = None;
    for s in 1..=cfg.steps {
        let fb: LmBatch<B> = forget_batches.next(device);
        let loss = match cfg.objective {
            Objective::GradientAscent => lm_loss(&model, &fb, mode).neg(),
            Objective::GradientDifference => {
                let rb: LmBatch<B> = retain_batches.as_mut().expect("checked above").next(device);
                lm_loss(&model, &fb, mode).neg() + lm_loss(&model, &rb, mode).mul_scalar(cfg.retain_weight)
            }
            Objective::Npo => {
                let inner = fb.clone();
                let ref_batch = LmBatch::<B::InnerBackend> {
                    inputs: inner.inputs.inner(),
                    targets: inner.targets.inner(),
                    loss_mask: inner.loss_mask.inner(),
                    layout: inner.layout,
                };
                let ref_logp = Tensor::<B, 1>::from_inner(sequence_logp(&reference, &ref_batch, mode));
                let ratio = (sequence_logp(&model, &fb, mode) - ref_logp).mul_scalar(cfg.beta);
                burn::tensor::activation::softplus(ratio, 1.0).mean().mul_scalar(2.0 / cfg.beta)
            }
        };
        model = step(&mut optim, model, loss, cfg.lr, &optim_cfg);
        if s % cfg.eval_every.max(1) == 0 || s == cfg.steps {
            curve.push(point(s as f64, probe.losses(&model.valid(), mode, device), base));
            if matched.is_none() && keep_at.is_some_and(|target| curve[curve.len() - 1].delta_forget >= target) {
                matched = Some(Matched { index: curve.len() - 1, model: model.clone() });
            }
        }
    }
    Ok(Treated { curve, model, matched })
}
