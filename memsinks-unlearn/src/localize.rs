//! Localization and pruning: score every MLP hidden unit on the forget set (see
//! [`crate::scorers`]), zero the top-scored fraction of each layer, and trace forget loss against
//! validation loss as the fraction grows.

use burn::module::{AutodiffModule, Param};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Tensor, TensorData};
use memsinks_data::PreparedCorpus;
use memsinks_model::{MemSinkLm, MlpMode};
use serde::{Deserialize, Serialize};

use crate::probe::{point, ForgetSet, Probe, TradeoffPoint};
use crate::scorers::{score_units, Scorer};
use crate::UnlearnError;

/// A localize-then-prune method (a method file's `spec`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PruneConfig {
    /// How units are scored.
    pub scorer: Scorer,
    /// Shares of each layer's hidden units to zero, one curve point each.
    pub fractions: Vec<f64>,
    /// Forget documents the scorer sees (the first ones; the costly scorers run per unit).
    pub score_docs: usize,
    /// Documents per set in each evaluation.
    pub eval_docs: usize,
    /// Rows per forward pass.
    pub batch_size: usize,
}

/// A copy of `model` with the `fraction` highest-scored hidden units of every layer zeroed
/// (their `fc_1`/`fc_2` columns and `proj` rows).
pub fn prune<B: Backend>(model: &MemSinkLm<B>, scores: &[Vec<f32>], fraction: f64, device: &B::Device) -> MemSinkLm<B> {
    let mut pruned = model.clone();
    for (block, layer_scores) in pruned.blocks.iter_mut().zip(scores) {
        let hidden = layer_scores.len();
        let count = ((hidden as f64) * fraction).round() as usize;
        let mut order: Vec<usize> = (0..hidden).collect();
        order.sort_by(|&a, &b| layer_scores[b].total_cmp(&layer_scores[a]));
        let mut keep = vec![1.0f32; hidden];
        for &j in order.iter().take(count) {
            keep[j] = 0.0;
        }
        let row = Tensor::<B, 2>::from_data(TensorData::new(keep.clone(), [1, hidden]), device);
        let column = Tensor::<B, 2>::from_data(TensorData::new(keep, [hidden, 1]), device);
        let mlp = &mut block.mlp;
        mlp.fc_1.weight = Param::from_tensor((mlp.fc_1.weight.val() * row.clone()).detach());
        mlp.fc_2.weight = Param::from_tensor((mlp.fc_2.weight.val() * row).detach());
        mlp.proj.weight = Param::from_tensor((mlp.proj.weight.val() * column).detach());
    }
    pruned
}

/// Scores the units on `forget`, prunes each fraction of `cfg` and measures. Returns the curve
/// (first point: nothing pruned) and the model pruned at the largest fraction.
///
/// # Errors
/// When the forget set or the validation set is empty.
pub fn prune_sweep<B: AutodiffBackend>(
    model: &MemSinkLm<B>,
    corpus: &PreparedCorpus,
    forget: ForgetSet,
    cfg: &PruneConfig,
    mode: &MlpMode,
    context: usize,
    device: &B::Device,
) -> Result<(Vec<TradeoffPoint>, MemSinkLm<B>), UnlearnError> {
    let probe = Probe::new(corpus, forget, context, cfg.batch_size, cfg.eval_docs)?;
    let score_docs: Vec<usize> = probe.forget_docs.iter().copied().take(cfg.score_docs.max(1)).collect();
    let scores = score_units(&cfg.scorer, model, corpus, &score_docs, mode, context, cfg.batch_size, device);
    let inner = model.valid();
    let base = probe.losses(&inner, mode, device);
    let mut curve = vec![point(0.0, base, base)];
    let mut fractions = cfg.fractions.clone();
    fractions.sort_by(f64::total_cmp);
    for &fraction in fractions.iter().filter(|&&f| f > 0.0) {
        curve.push(point(fraction, probe.losses(&prune(&inner, &scores, fraction, device), mode, device), base));
    }
    let largest = fractions.last().copied().unwrap_or(0.0);
    Ok((curve, prune(model, &scores, largest, device)))
}
