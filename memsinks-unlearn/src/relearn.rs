//! The relearning test: after a method removed memorization, fine-tune the treated model on a
//! few of the forgotten documents and measure how much of the memorization of the *other*
//! forgotten documents comes back. Memorization that was only hidden (suppressed, not removed)
//! returns quickly and for documents never shown again.

use burn::module::AutodiffModule;
use burn::tensor::backend::AutodiffBackend;
use memsinks_data::LmBatch;
use memsinks_model::loss::lm_loss;
use memsinks_model::{MemSinkLm, MlpMode};
use memsinks_train::optim::step;
use memsinks_train::OptimConfig;
use serde::{Deserialize, Serialize};

use crate::finetune::Cycle;
use crate::probe::Probe;

/// Settings of the relearning test (a method file's `relearn`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelearnConfig {
    /// Numbers of forgotten documents relearned, one measurement each (e.g. `[1, 4, 16]`).
    pub sizes: Vec<usize>,
    /// Fine-tuning steps.
    pub steps: usize,
    /// Learning rate (constant, AdamW without decay).
    pub lr: f64,
    /// Rows per batch.
    pub batch_size: usize,
}

/// Loss increase (nats) below which a method counts as having removed nothing.
pub const MIN_REMOVED: f64 = 0.01;

/// One relearning measurement.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RelearnPoint {
    /// Forgotten documents fine-tuned on.
    pub relearned: usize,
    /// Other forgotten documents measured (never shown during relearning).
    pub others: usize,
    /// Their mean loss before the method was applied.
    pub others_original: f64,
    /// Their mean loss after the method.
    pub others_treated: f64,
    /// Their mean loss after relearning.
    pub others_relearned: f64,
    /// Share of the removed memorization that came back:
    /// `(treated − relearned) / (treated − original)`; `None` when the method removed almost
    /// nothing (less than [`MIN_REMOVED`] nats), where the ratio means nothing.
    pub recovered: Option<f64>,
}

/// Runs the test: the first `n` forget documents are relearned, the documents after the largest
/// `n` (up to the probe's evaluation count) are measured. `original` is the untreated model in
/// `original_mode`; `treated` the model after the method, run in `treated_mode` (for MemSinks:
/// the same model, sinks on versus dropped). Sizes that leave no other document are skipped.
#[allow(clippy::too_many_arguments)]
pub fn relearn<B: AutodiffBackend>(
    original: &MemSinkLm<B::InnerBackend>,
    original_mode: &MlpMode,
    treated: &MemSinkLm<B>,
    treated_mode: &MlpMode,
    probe: &Probe<'_>,
    cfg: &RelearnConfig,
    device: &B::Device,
) -> Vec<RelearnPoint> {
    let forgotten = &probe.forget_docs;
    let sizes: Vec<usize> = cfg.sizes.iter().copied().filter(|&n| n > 0 && n < forgotten.len()).collect();
    let Some(&largest) = sizes.iter().max() else { return Vec::new() };
    let others: Vec<usize> = forgotten[largest..].iter().copied().take(probe.eval_forget.len().max(1)).collect();
    let others_original = probe.nll(original, &others, original_mode, device);
    let others_treated = probe.nll(&treated.valid(), &others, treated_mode, device);
    sizes
        .into_iter()
        .map(|n| {
            let mut batches = Cycle::new(probe.corpus, &forgotten[..n], probe.context, cfg.batch_size);
            let optim_cfg = OptimConfig { weight_decay: 0.0, ..Default::default() };
            let mut optim = optim_cfg.init::<B, MemSinkLm<B>>();
            let mut model = treated.clone();
            for _ in 0..cfg.steps {
                let batch: LmBatch<B> = batches.next(device);
                let loss = lm_loss(&model, &batch, treated_mode);
                model = step(&mut optim, model, loss, cfg.lr, &optim_cfg);
            }
            let others_relearned = probe.nll(&model.valid(), &others, treated_mode, device);
            RelearnPoint {
                relearned: n,
                others: others.len(),
                others_original,
                others_treated,
                others_relearned,
                recovered: (others_treated - others_original >= MIN_REMOVED)
                    .then(|| (others_treated - others_relearned) / (others_treated - others_original)),
            }
        })
        .collect()
}
