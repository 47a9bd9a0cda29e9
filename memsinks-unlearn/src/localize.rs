//! Neuron localization and pruning: score every MLP hidden unit for its role in the forget set,
//! zero the top-scored fraction of each layer, and trace forget loss against validation loss as
//! the fraction grows. Implemented scorers: `Activations` (mean |a| on the forget set times the
//! norm of the unit's output weights) and `Random` (the control).

use burn::module::Param;
use burn::tensor::activation::silu;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use memsinks_data::rng::SplitMix64;
use memsinks_data::{Batcher, Cursor, PreparedCorpus, Split};
use memsinks_model::{MemSinkLm, MlpMode};
use serde::{Deserialize, Serialize};

use crate::finetune::{forget_name, ForgetSet};
use crate::metrics::score_docs;
use crate::UnlearnError;

/// How hidden units are scored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Scorer {
    /// Mean absolute activation on the forget set × L2 norm of the unit's `proj` row.
    Activations,
    /// Uniform random scores (seeded).
    Random,
}

impl Scorer {
    /// Registry names (`memsinks unlearn --method prune-…`).
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "prune-activations" => Some(Scorer::Activations),
            "prune-random" => Some(Scorer::Random),
            _ => None,
        }
    }
}

/// One point of the pruning trade-off curve.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PrunePoint {
    /// Share of each layer's hidden units zeroed.
    pub fraction: f64,
    /// Forget-set loss.
    pub forget_loss: f64,
    /// Validation loss.
    pub val_loss: f64,
    /// Change of the forget-set loss against the unpruned model.
    pub delta_forget: f64,
    /// Change of the validation loss.
    pub delta_val: f64,
}

/// Per layer, per hidden unit: mean |activation| over the forget documents' tokens (in `mode`)
/// times the unit's output-weight norm.
pub fn activation_scores<B: Backend>(
    model: &MemSinkLm<B>,
    corpus: &PreparedCorpus,
    docs: &[usize],
    mode: &MlpMode,
    context: usize,
    batch_size: usize,
    device: &B::Device,
) -> Vec<Vec<f32>> {
    let batcher = Batcher::over_documents(&corpus.cache, docs, context, batch_size, corpus.manifest.end_of_text);
    let hidden = model.sinks().hidden();
    let mut sums: Vec<Tensor<B, 1>> = (0..model.blocks.len()).map(|_| Tensor::zeros([hidden], device)).collect();
    let mut cursor = Cursor::default();
    let mut tokens = 0usize;
    while let Some(host) = batcher.next_batch(&mut cursor) {
        let batch = host.to_device::<B>(device);
        let weights = batch.loss_mask.clone().unsqueeze_dim::<3>(2); // [b, t, 1]: real tokens only
        tokens += host.weights.iter().flatten().filter(|&&w| w > 0.0).count();
        // The model's own forward, unrolled to read each block's hidden activations.
        let mut x = model.embed.forward(batch.inputs.clone());
        for (layer, block) in model.blocks.iter().enumerate() {
            let mask = model.sinks().hidden_mask::<B>(mode, &batch.layout, layer, device);
            x = x.clone() + block.attn.forward(block.attn_norm.forward(x), &model.rope, None);
            let n = block.mlp_norm.forward(x.clone());
            let mut h = silu(block.mlp.fc_1.forward(n.clone())) * block.mlp.fc_2.forward(n);
            if let Some(m) = &mask {
                h = h * m.scale.clone();
            }
            let [b, t, i] = h.dims();
            sums[layer] =
                sums[layer].clone() + (h.clone().abs() * weights.clone()).reshape([b * t, i]).sum_dim(0).squeeze_dim(0);
            x = x + block.mlp.proj.forward(h);
        }
    }
    model
        .blocks
        .iter()
        .zip(sums)
        .map(|(block, sum)| {
            let out_norm = block.mlp.proj.weight.val().square().sum_dim(1).sqrt().squeeze_dim(1);
            let score = sum.div_scalar(tokens.max(1) as f32) * out_norm;
            score.into_data().convert::<f32>().to_vec().expect("f32")
        })
        .collect()
}

/// Random scores, one per unit per layer.
pub fn random_scores(layers: usize, hidden: usize, seed: u64) -> Vec<Vec<f32>> {
    let mut rng = SplitMix64::new(seed);
    (0..layers).map(|_| (0..hidden).map(|_| rng.unit() as f32).collect()).collect()
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
        block.mlp.fc_1.weight = Param::from_tensor(block.mlp.fc_1.weight.val() * row.clone());
        block.mlp.fc_2.weight = Param::from_tensor(block.mlp.fc_2.weight.val() * row);
        block.mlp.proj.weight = Param::from_tensor(block.mlp.proj.weight.val() * column);
    }
    pruned
}

/// Scores with `scorer` on the forget set, then prunes each fraction and measures.
///
/// # Errors
/// When the forget set is empty.
#[allow(clippy::too_many_arguments)]
pub fn prune_sweep<B: Backend>(
    model: &MemSinkLm<B>,
    corpus: &PreparedCorpus,
    scorer: Scorer,
    forget: ForgetSet,
    fractions: &[f64],
    mode: &MlpMode,
    context: usize,
    batch_size: usize,
    eval_docs: usize,
    device: &B::Device,
) -> Result<Vec<PrunePoint>, UnlearnError> {
    let m = &corpus.manifest;
    let split = match forget {
        ForgetSet::Repeated => Split::Repeated,
        ForgetSet::Canary => Split::Canary,
    };
    let forget_docs = m.indices(split);
    if forget_docs.is_empty() {
        return Err(UnlearnError::EmptySet(forget_name(forget)));
    }
    let eval_forget: Vec<usize> = forget_docs.iter().copied().take(eval_docs).collect();
    let val_docs: Vec<usize> = m.indices(Split::Validation).into_iter().take(eval_docs).collect();
    let measure = |model: &MemSinkLm<B>| {
        let score = |docs: &[usize]| {
            score_docs(model, &corpus.cache, docs, mode, context, batch_size, m.end_of_text, device).nll
        };
        (score(&eval_forget), score(&val_docs))
    };
    let scores = match scorer {
        Scorer::Activations => activation_scores(model, corpus, &forget_docs, mode, context, batch_size, device),
        Scorer::Random => random_scores(model.blocks.len(), model.sinks().hidden(), 0x5EED),
    };
    let (f0, v0) = measure(model);
    Ok(std::iter::once(0.0)
        .chain(fractions.iter().copied())
        .map(|fraction| {
            let (f, v) = if fraction == 0.0 { (f0, v0) } else { measure(&prune(model, &scores, fraction, device)) };
            PrunePoint { fraction, forget_loss: f, val_loss: v, delta_forget: f - f0, delta_val: v - v0 }
        })
        .collect())
}
