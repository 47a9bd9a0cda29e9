//! Fine-tuning unlearning baselines on a trained model: Gradient Ascent on the forget set,
//! Gradient Difference (ascent on forget, descent on retain) and NPO (Zhang et al. 2024,
//! negative preference optimisation against the frozen starting model). Each run traces the
//! trade-off curve: forget-set loss against validation loss, evaluated every few steps.

use burn::module::AutodiffModule;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::Tensor;
use memsinks_data::{Batcher, Cursor, LmBatch, PreparedCorpus, Split};
use memsinks_model::{MemSinkLm, MlpMode};
use memsinks_train::optim::step;
use memsinks_train::{lm_loss, token_nll, OptimConfig};
use serde::{Deserialize, Serialize};

use crate::metrics::score_docs;
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

impl Objective {
    /// Registry names.
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "gradient-ascent" => Objective::GradientAscent,
            "gradient-difference" => Objective::GradientDifference,
            "npo" => Objective::Npo,
            _ => return None,
        })
    }
}

/// What to forget.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ForgetSet {
    /// The repeated natural documents.
    Repeated,
    /// The random-token canaries.
    Canary,
}

/// Hyperparameters of a fine-tuning unlearning run (RON; `--set` overrides).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FinetuneConfig {
    /// The set to forget.
    pub forget: ForgetSet,
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
            forget: ForgetSet::Repeated,
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

/// One point of the trade-off curve.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SweepPoint {
    /// Unlearning steps taken.
    pub step: usize,
    /// Forget-set loss.
    pub forget_loss: f64,
    /// Validation loss.
    pub val_loss: f64,
    /// Change of the forget-set loss since step 0.
    pub delta_forget: f64,
    /// Change of the validation loss since step 0.
    pub delta_val: f64,
}

fn cycle_batches(corpus: &PreparedCorpus, docs: &[usize], context: usize, batch: usize) -> Batcher {
    Batcher::over_documents(&corpus.cache, docs, context, batch, corpus.manifest.end_of_text)
}

/// The next batch, starting the (non-empty) schedule over at its end.
fn next_cycled<B: AutodiffBackend>(batcher: &Batcher, cursor: &mut Cursor, device: &B::Device) -> LmBatch<B> {
    debug_assert!(batcher.schedule_len() > 0, "an empty schedule never yields a batch");
    loop {
        if let Some(b) = batcher.next_batch(cursor) {
            return b.to_device(device);
        }
    }
}

/// Per-row summed log-likelihood `[batch]` of the targets.
fn sequence_logp<B: burn::tensor::backend::Backend>(
    model: &MemSinkLm<B>,
    batch: &LmBatch<B>,
    mode: &MlpMode,
) -> Tensor<B, 1> {
    let (nll, mask) = token_nll(model, batch, mode);
    (nll * mask).sum_dim(1).neg().squeeze_dim(1)
}

/// Runs `objective` from `model` and returns the trade-off curve (the first point is step 0).
///
/// # Errors
/// When the forget set (or, for gradient difference, the retain set) is empty.
pub fn unlearn<B: AutodiffBackend>(
    model: MemSinkLm<B>,
    corpus: &PreparedCorpus,
    context: usize,
    objective: Objective,
    cfg: &FinetuneConfig,
    mode: &MlpMode,
    device: &B::Device,
) -> Result<Vec<SweepPoint>, UnlearnError> {
    let m = &corpus.manifest;
    let forget_split = match cfg.forget {
        ForgetSet::Repeated => Split::Repeated,
        ForgetSet::Canary => Split::Canary,
    };
    let forget_docs = m.indices(forget_split);
    let val_docs: Vec<usize> = m.indices(Split::Validation).into_iter().take(cfg.eval_docs).collect();
    let retain_docs: Vec<usize> = m.indices(Split::Unique);
    if forget_docs.is_empty() {
        return Err(UnlearnError::EmptySet(forget_name(cfg.forget)));
    }
    if objective == Objective::GradientDifference && retain_docs.is_empty() {
        return Err(UnlearnError::EmptySet("unique (retain)"));
    }
    let eval_forget: Vec<usize> = forget_docs.iter().copied().take(cfg.eval_docs).collect();
    let measure = |model: &MemSinkLm<B::InnerBackend>| {
        let score = |docs: &[usize]| {
            score_docs(model, &corpus.cache, docs, mode, context, cfg.batch_size, m.end_of_text, device).nll
        };
        (score(&eval_forget), score(&val_docs))
    };
    let reference = model.valid();
    let (f0, v0) = measure(&reference);
    let mut curve = vec![SweepPoint { step: 0, forget_loss: f0, val_loss: v0, delta_forget: 0.0, delta_val: 0.0 }];
    let forget = cycle_batches(corpus, &forget_docs, context, cfg.batch_size);
    let retain = cycle_batches(corpus, &retain_docs, context, cfg.batch_size);
    let (mut fc, mut rc) = (Cursor::default(), Cursor::default());
    let mut optim = OptimConfig { weight_decay: 0.0, ..Default::default() }.init::<B, MemSinkLm<B>>();
    let mut model = model;
    for s in 1..=cfg.steps {
        let fb: LmBatch<B> = next_cycled(&forget, &mut fc, device);
        let loss = match objective {
            Objective::GradientAscent => lm_loss(&model, &fb, mode).neg(),
            Objective::GradientDifference => {
                let rb: LmBatch<B> = next_cycled(&retain, &mut rc, device);
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
        model = step(&mut optim, model, loss, cfg.lr, Some(1.0));
        if s % cfg.eval_every == 0 || s == cfg.steps {
            let (f, v) = measure(&model.valid());
            curve.push(SweepPoint { step: s, forget_loss: f, val_loss: v, delta_forget: f - f0, delta_val: v - v0 });
        }
    }
    Ok(curve)
}

/// The split name of a forget set, for messages.
pub fn forget_name(forget: ForgetSet) -> &'static str {
    match forget {
        ForgetSet::Repeated => "repeated",
        ForgetSet::Canary => "canary",
    }
}
