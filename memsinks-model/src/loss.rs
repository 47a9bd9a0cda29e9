//! The causal-LM objective, next to the model as nanoGPT keeps it (its `forward` returns the
//! loss).

use crate::{Kernels, LmBatch, MemSinkLm, MlpMode};
use burn::tensor::{FloatDType, Tensor};

/// Mean next-token negative log-likelihood over the targets the loss mask keeps, with the MLPs
/// in `mode`. Returns a one-element tensor.
pub fn lm_loss<B: Kernels>(model: &MemSinkLm<B>, batch: &LmBatch<B>, mode: &MlpMode) -> Tensor<B, 1> {
    let (nll, mask) = token_nll(model, batch, mode);
    (nll * mask.clone()).sum() / mask.sum().clamp_min(1.0)
}

/// Per-target negative log-likelihood `[batch, seq]` and the loss mask it should be weighted by.
pub fn token_nll<B: Kernels>(model: &MemSinkLm<B>, batch: &LmBatch<B>, mode: &MlpMode) -> (Tensor<B, 2>, Tensor<B, 2>) {
    token_nll_of_logits(model.forward(batch.inputs.clone(), &batch.layout, mode), batch)
}

/// [`token_nll`] from logits already computed for `batch` (e.g. by a hooked forward). The
/// softmax and the loss are computed in f32 whatever the logits' type (a mixed-precision
/// forward's half-precision logits are cast up first, as PyTorch's autocast does).
pub fn token_nll_of_logits<B: Kernels>(logits: Tensor<B, 3>, batch: &LmBatch<B>) -> (Tensor<B, 2>, Tensor<B, 2>) {
    let [b, t, v] = logits.dims();
    let logits = logits.cast(FloatDType::F32).reshape([b * t, v]);
    let nll = crate::kernels::token_nll(logits, batch.targets.clone().reshape([b * t]));
    (nll.reshape([b, t]), batch.loss_mask.clone())
}
