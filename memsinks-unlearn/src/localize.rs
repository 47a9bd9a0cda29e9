//! Localization and pruning: score every MLP hidden unit on the forget set (see
//! [`crate::scorers`]), zero the top-scored fraction of each layer, and trace forget loss against
//! validation loss as the fraction grows.

use burn::module::{AutodiffModule, Param};
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use memsinks_data::DocRows;
use memsinks_model::TrainBackend;
use memsinks_model::{MemSinkLm, MlpMode};
use serde::{Deserialize, Serialize};

use crate::finetune::ScoreTokens;
use crate::finetune::{Matched, Treated};
use crate::probe::{point, Probe};
use crate::scorers::{rank_normalized, score_units_on, Scorer};
use memsinks_core::overrides::omitted;

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
    /// Which target tokens the scorer reads: all (the default) or, as MemPi, the continuation
    /// after a prompt.
    #[serde(default, skip_serializing_if = "omitted")]
    pub score_tokens: ScoreTokens,
    /// Score each scoring document alone and average the per-layer ranks of its scores (MemPi
    /// localizes per sequence), instead of one score pooled over all of them.
    #[serde(default, skip_serializing_if = "omitted")]
    pub per_sequence: bool,
}

/// A copy of `model` with the `fraction` highest-scored hidden units of every layer zeroed
/// (their `gate_proj`/`up_proj` columns and `proj` rows).
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
        mlp.gate_proj.weight = Param::from_tensor((mlp.gate_proj.weight.val() * row.clone()).detach());
        mlp.up_proj.weight = Param::from_tensor((mlp.up_proj.weight.val() * row).detach());
        mlp.down_proj.weight = Param::from_tensor((mlp.down_proj.weight.val() * column).detach());
    }
    pruned
}

/// Scores the units on the probe's forget set, prunes each fraction of `cfg` and measures.
/// Returns the curve (first point: nothing pruned), the model pruned at the largest fraction and,
/// with `keep_at`, the model pruned at the smallest fraction whose ΔL_forget reached it.
pub fn prune_sweep<B: TrainBackend>(
    model: &MemSinkLm<B>,
    probe: &Probe<'_>,
    cfg: &PruneConfig,
    mode: &MlpMode,
    keep_at: Option<f64>,
    device: &B::Device,
) -> Treated<B> {
    let score_docs: Vec<usize> = probe.forget_docs.iter().copied().take(cfg.score_docs.max(1)).collect();
    let rows = DocRows::of(probe.corpus, &score_docs, probe.context, cfg.batch_size);
    let scores = if cfg.per_sequence {
        let per_doc: Vec<Vec<Vec<f32>>> = score_docs
            .iter()
            .map(|doc| {
                let one = rows.with_docs(std::slice::from_ref(doc));
                rank_normalized(&score_units_on(&cfg.scorer, model, &one, cfg.score_tokens, mode, device))
            })
            .collect();
        mean_scores(&per_doc)
    } else {
        score_units_on(&cfg.scorer, model, &rows, cfg.score_tokens, mode, device)
    };
    let inner = model.valid();
    let base = probe.losses(&inner, mode, device);
    let mut curve = vec![point(0.0, base, base)];
    let mut fractions = cfg.fractions.clone();
    fractions.sort_by(f64::total_cmp);
    for &fraction in fractions.iter().filter(|&&f| f > 0.0) {
        curve.push(point(fraction, probe.losses(&prune(&inner, &scores, fraction, device), mode, device), base));
    }
    let largest = fractions.last().copied().unwrap_or(0.0);
    let matched = keep_at.and_then(|target| {
        let index = curve.iter().position(|p| p.delta_forget >= target)?;
        Some(Matched { index, model: prune(model, &scores, curve[index].setting, device) })
    });
    Treated { curve, model: prune(model, &scores, largest, device), matched }
}

/// The unit-wise mean of several `[layer][unit]` score sets of one shape.
fn mean_scores(sets: &[Vec<Vec<f32>>]) -> Vec<Vec<f32>> {
    let n = sets.len().max(1) as f32;
    let mut sum = sets.first().cloned().unwrap_or_default();
    for set in sets.iter().skip(1) {
        for (a, b) in sum.iter_mut().flatten().zip(set.iter().flatten()) {
            *a += b;
        }
    }
    sum.iter_mut().flatten().for_each(|x| *x /= n);
    sum
}
