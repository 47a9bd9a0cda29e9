//! Fine-tuning unlearning baselines on a trained model: Gradient Ascent on the forget set,
//! Gradient Difference (ascent on forget, descent on retain) and NPO (Zhang et al. 2024,
//! negative preference optimisation against the frozen starting model). Each run traces the
//! trade-off curve: forget-set loss against validation loss, evaluated every few steps.

use burn::module::AutodiffModule;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::Tensor;
use memsinks_data::{Batcher, Cursor, LmBatch, PreparedCorpus, Split};
use memsinks_model::loss::{lm_loss, token_nll};
use memsinks_model::{MemSinkLm, MlpMode};
use memsinks_train::optim::step;
use memsinks_train::OptimConfig;
use serde::{Deserialize, Serialize};

use crate::probe::{point, ForgetSet, Probe, TradeoffPoint};
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

/// Batches of `docs` (one per row) that start over at the end: an endless stream for
/// optimisation loops.
pub struct Cycle {
    batcher: Batcher,
    cursor: Cursor,
}

impl Cycle {
    /// A cycle over `docs` (which must not be empty).
    pub fn new(corpus: &PreparedCorpus, docs: &[usize], context: usize, batch_size: usize) -> Self {
        assert!(!docs.is_empty(), "an empty document list never yields a batch");
        let batcher = Batcher::over_documents(&corpus.cache, docs, context, batch_size, corpus.manifest.end_of_text);
        Self { batcher, cursor: Cursor::default() }
    }

    /// The next batch on `device`.
    pub fn next<B: Backend>(&mut self, device: &B::Device) -> LmBatch<B> {
        loop {
            if let Some(b) = self.batcher.next_batch(&mut self.cursor) {
                return b.to_device(device);
            }
        }
    }
}

/// Per-row summed log-likelihood `[batch]` of the targets.
fn sequence_logp<B: Backend>(model: &MemSinkLm<B>, batch: &LmBatch<B>, mode: &MlpMode) -> Tensor<B, 1> {
    let (nll, mask) = token_nll(model, batch, mode);
    (nll * mask).sum_dim(1).neg().squeeze_dim(1)
}

/// Runs `cfg.objective` from `model` on `forget` and returns the trade-off curve (the first
/// point is step 0) and the treated model.
///
/// # Errors
/// When the forget set (or, for gradient difference, the retain set) is empty.
pub fn unlearn<B: AutodiffBackend>(
    model: MemSinkLm<B>,
    corpus: &PreparedCorpus,
    context: usize,
    forget: ForgetSet,
    cfg: &FinetuneConfig,
    mode: &MlpMode,
    device: &B::Device,
) -> Result<(Vec<TradeoffPoint>, MemSinkLm<B>), UnlearnError> {
    let probe = Probe::new(corpus, forget, context, cfg.batch_size, cfg.eval_docs)?;
    let retain_docs: Vec<usize> = corpus.manifest.indices(Split::Unique);
    if cfg.objective == Objective::GradientDifference && retain_docs.is_empty() {
        return Err(UnlearnError::EmptySet("unique (retain)"));
    }
    let reference = model.valid();
    let base = probe.losses(&reference, mode, device);
    let mut curve = vec![point(0.0, base, base)];
    let mut forget_batches = Cycle::new(corpus, &probe.forget_docs, context, cfg.batch_size);
    let mut retain_batches =
        (!retain_docs.is_empty()).then(|| Cycle::new(corpus, &retain_docs, context, cfg.batch_size));
    let optim_cfg = OptimConfig { weight_decay: 0.0, ..Default::default() };
    let mut optim = optim_cfg.init::<B, MemSinkLm<B>>();
    let mut model = model;
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
        }
    }
    Ok((curve, model))
}
