//! Neuron localization: score every MLP hidden unit of every layer for its role in the forget
//! set. The scorers follow Chang et al. 2024 ("Do localization methods actually localize
//! memorized data in LLMs?"); every score is "higher = more responsible for the forget set", so
//! pruning removes the top-scored units.

use burn::module::Module;
use burn::tensor::activation::sigmoid;
use burn::tensor::backend::Backend;
use burn::tensor::{ElementConversion, Tensor, TensorData};
use memsinks_data::rng::SplitMix64;
use memsinks_data::{Batcher, Cursor, DocRows, LmBatch};
use memsinks_model::loss::token_nll_of_logits;
use memsinks_model::{Kernels, TrainBackend};
use memsinks_model::{MemSinkLm, MlpMode, SeqLayout};
use serde::{Deserialize, Serialize};

use crate::finetune::{Cycle, ScoreTokens};

/// How hidden units are scored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Scorer {
    /// |mean activation| on the forget set × L2 norm of the unit's output (`down_proj`) weights,
    /// as MemPi (Chang et al. 2024) scores activations.
    Activations,
    /// Mean |activation| × output-weight norm: a unit that swings both ways scores high even when
    /// its mean contribution cancels (this toolkit's earlier variant, kept for comparison).
    MeanAbsActivations,
    /// Increase of the forget loss when the unit alone is zeroed (exact: one ablation per unit,
    /// batched).
    ZeroOut,
    /// Data-free: the norm of the unit's output weights × the norm of its input weights (gate and
    /// up projections). It reads no forget document, so a data-dependent scorer that does no better
    /// than it localizes large units, not the forget set (the worked example of docs/extending.md).
    WeightNorm,
    /// Integrated gradients along a scaling of each layer's activations from zero (the
    /// baseline) to their value, with `steps` midpoint steps; the score is what the attribution
    /// assigns to the unit (MemPi: of each target token's probability, one position at a time).
    IntegratedGradients {
        /// Riemann steps of the path integral (the paper uses 20).
        steps: usize,
        /// What is attributed (MemPi: the target tokens' probabilities).
        #[serde(default)]
        objective: IgObjective,
        /// Which positions one scaling reaches (MemPi: one at a time).
        #[serde(default)]
        positions: IgPositions,
    },
    /// Network slimming: a coefficient per unit (initially 1) trained to keep the forget loss low
    /// under an L1 penalty; units that keep a high coefficient are the ones the forget set needs.
    Slimming {
        /// Optimisation steps.
        steps: usize,
        /// Adam learning rate of the coefficients.
        lr: f64,
        /// Weight of the mean |coefficient| penalty.
        l1: f64,
        /// How a trained coefficient becomes a score (MemPi: clamped to [0, 1]).
        #[serde(default)]
        score: SlimmingScore,
    },
    /// L0 masks with hard-concrete gates (Louizos et al. 2018), trained like `Slimming` with an
    /// expected-L0 penalty; the score is each gate's log-odds.
    HardConcrete {
        /// Optimisation steps.
        steps: usize,
        /// Adam learning rate of the gate log-odds.
        lr: f64,
        /// Weight of the mean open-gate probability penalty.
        l0: f64,
        /// Initial log-odds (gates start mostly open).
        init_log_alpha: f64,
    },
    /// Uniform random scores: the control.
    Random {
        /// Seed of the draw.
        seed: u64,
    },
}

/// What integrated gradients attribute.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum IgObjective {
    /// The probability of each target token, summed over positions (MemPi, after the knowledge
    /// neurons of Dai et al. 2022); a unit scores high when it raises the memorized tokens'
    /// probability.
    #[default]
    TargetProbability,
    /// The summed NLL, negated (this toolkit's earlier variant).
    SummedNll,
}

/// Which positions a scaling of integrated gradients reaches.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum IgPositions {
    /// One position at a time (MemPi, after the knowledge neurons of Dai et al. 2022): the target
    /// at position `i` is attributed to position `i`'s activations scaled alone, every earlier
    /// position intact ([`MemSinkLm::forward_position_isolated`], all positions in one pass).
    #[default]
    OneAtATime,
    /// Every position of the layer by one α (this toolkit's earlier variant): the target at `i`
    /// also sees the earlier positions scaled.
    AllAtOnce,
}

/// How slimming turns a trained coefficient into a score.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum SlimmingScore {
    /// `clamp(c, 0, 1)` (MemPi): a coefficient pushed negative counts as off, not as important.
    #[default]
    Clamped,
    /// `|c|` (this toolkit's earlier variant).
    Absolute,
}

/// Scores `[layer][unit]` of `model` on the forget documents `rows`, every target token.
pub fn score_units<B: TrainBackend>(
    scorer: &Scorer,
    model: &MemSinkLm<B>,
    rows: &DocRows<'_>,
    mode: &MlpMode,
    device: &B::Device,
) -> Vec<Vec<f32>> {
    score_units_on(scorer, model, rows, ScoreTokens::All, mode, device)
}

/// Scores `[layer][unit]` of `model` on the targets `tokens` names of the forget documents `rows`.
pub fn score_units_on<B: TrainBackend>(
    scorer: &Scorer,
    model: &MemSinkLm<B>,
    rows: &DocRows<'_>,
    tokens: ScoreTokens,
    mode: &MlpMode,
    device: &B::Device,
) -> Vec<Vec<f32>> {
    let (layers, hidden) = (model.blocks.len(), model.sinks().hidden());
    let inner = || burn::module::AutodiffModule::valid(model);
    let inner_batches = || scored_batches::<B::InnerBackend>(rows, tokens, device);
    match scorer {
        Scorer::Activations => activation_scores(&inner(), &inner_batches(), mode, Magnitude::OfMean, device),
        Scorer::MeanAbsActivations => activation_scores(&inner(), &inner_batches(), mode, Magnitude::MeanOfAbs, device),
        Scorer::ZeroOut => zero_out_scores(&inner(), &inner_batches(), mode, device),
        Scorer::WeightNorm => weight_norm_scores(model),
        Scorer::IntegratedGradients { steps, objective, positions } => {
            let batches = scored_batches::<B>(rows, tokens, device);
            let path = IgPath { steps: *steps, objective: *objective, positions: *positions };
            integrated_gradient_scores(model, &batches, mode, path, device)
        }
        Scorer::Slimming { steps, lr, l1, score } => {
            let mut cycle = Cycle::reading(rows, tokens);
            let penalty = |c: Tensor<B, 1>| c.abs().mean().mul_scalar(*l1);
            let training = GateTraining { steps: *steps, lr: *lr, init: 1.0 };
            let coefs = train_gates(model, &mut cycle, mode, &training, device, |c, _| c.clone(), penalty);
            let score = |c: Tensor<B::InnerBackend, 1>| match score {
                SlimmingScore::Clamped => c.clamp(0.0, 1.0),
                SlimmingScore::Absolute => c.abs(),
            };
            coefs.into_iter().map(|c| to_vec(score(c))).collect()
        }
        Scorer::HardConcrete { steps, lr, l0, init_log_alpha } => {
            let mut cycle = Cycle::reading(rows, tokens);
            let mut rng = SplitMix64::new(0x4C30);
            let gate = |log_alpha: &Tensor<B, 1>, d: &B::Device| {
                let noise: Vec<f32> = (0..hidden).map(|_| rng.unit().clamp(1e-6, 1.0 - 1e-6) as f32).collect();
                let u = Tensor::<B, 1>::from_data(TensorData::new(noise, [hidden]), d);
                let logit = (u.clone().log() - u.neg().add_scalar(1.0).log() + log_alpha.clone()).div_scalar(HC_BETA);
                sigmoid(logit).mul_scalar(HC_ZETA - HC_GAMMA).add_scalar(HC_GAMMA).clamp(0.0, 1.0)
            };
            let open = |log_alpha: Tensor<B, 1>| {
                sigmoid(log_alpha.sub_scalar(HC_BETA * (-HC_GAMMA / HC_ZETA).ln())).mean().mul_scalar(*l0)
            };
            let training = GateTraining { steps: *steps, lr: *lr, init: *init_log_alpha };
            let log_alpha = train_gates(model, &mut cycle, mode, &training, device, gate, open);
            log_alpha.into_iter().map(to_vec).collect()
        }
        Scorer::Random { seed } => random_scores(layers, hidden, *seed),
    }
}

/// Hard-concrete temperature and stretch interval (Louizos et al. 2018).
const HC_BETA: f64 = 2.0 / 3.0;
const HC_GAMMA: f64 = -0.1;
const HC_ZETA: f64 = 1.1;

fn to_vec<B: Backend>(t: Tensor<B, 1>) -> Vec<f32> {
    t.into_data().convert::<f32>().to_vec().expect("f32")
}

/// Every batch of `rows`: what the scorers read.
pub fn doc_batches<B: Backend>(rows: &DocRows<'_>, device: &B::Device) -> Vec<LmBatch<B>> {
    scored_batches(rows, ScoreTokens::All, device)
}

/// Every batch of `rows`, weighing only the targets `tokens` names.
pub fn scored_batches<B: Backend>(rows: &DocRows<'_>, tokens: ScoreTokens, device: &B::Device) -> Vec<LmBatch<B>> {
    let batcher = Batcher::over_documents(rows);
    let mut cursor = Cursor::default();
    std::iter::from_fn(|| batcher.next_batch(&mut cursor))
        .map(|mut h| {
            tokens.apply(&mut h);
            h.to_device(device)
        })
        .collect()
}

/// Each layer's scores replaced by their ranks scaled to [0, 1] (ties share the lower rank):
/// per-sequence scores of any scale or sign become votes of equal weight that can be averaged.
pub fn rank_normalized(scores: &[Vec<f32>]) -> Vec<Vec<f32>> {
    scores
        .iter()
        .map(|layer| {
            let mut order: Vec<usize> = (0..layer.len()).collect();
            order.sort_by(|&a, &b| layer[a].total_cmp(&layer[b]));
            let top = (layer.len().max(2) - 1) as f32;
            let mut ranks = vec![0.0f32; layer.len()];
            let mut i = 0;
            while i < order.len() {
                let mut j = i;
                while j + 1 < order.len() && layer[order[j + 1]] == layer[order[i]] {
                    j += 1;
                }
                for &unit in &order[i..=j] {
                    ranks[unit] = i as f32 / top;
                }
                i = j + 1;
            }
            ranks
        })
        .collect()
}

/// Summed NLL over the kept targets of each row: `[rows]`.
fn row_nll<B: Kernels>(logits: Tensor<B, 3>, batch: &LmBatch<B>) -> Tensor<B, 1> {
    let (nll, mask) = token_nll_of_logits(logits, batch);
    (nll * mask).sum_dim(1).squeeze_dim(1)
}

fn targets_in<B: Backend>(batches: &[LmBatch<B>]) -> f32 {
    batches.iter().map(|b| b.loss_mask.clone().sum().into_scalar().elem::<f32>()).sum::<f32>().max(1.0)
}

/// Which magnitude of a unit's activations the activation scorer averages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Magnitude {
    /// |mean(a)| (MemPi).
    OfMean,
    /// mean(|a|).
    MeanOfAbs,
}

/// The activation magnitude over the forget targets (in `mode`) times the unit's output-weight
/// norm.
pub fn activation_scores<B: Kernels>(
    model: &MemSinkLm<B>,
    batches: &[LmBatch<B>],
    mode: &MlpMode,
    magnitude: Magnitude,
    device: &B::Device,
) -> Vec<Vec<f32>> {
    let hidden = model.sinks().hidden();
    let mut sums: Vec<Tensor<B, 1>> = (0..model.blocks.len()).map(|_| Tensor::zeros([hidden], device)).collect();
    for batch in batches {
        let weights = batch.loss_mask.clone().unsqueeze_dim::<3>(2); // [b, t, 1]: real tokens only
        model.forward_hooked(batch.inputs.clone(), &batch.layout, mode, &mut |layer, h| {
            let a = if magnitude == Magnitude::MeanOfAbs { h.clone().abs() } else { h.clone() };
            let used = (a * weights.clone()).sum_dim(0).sum_dim(1).reshape([hidden]);
            sums[layer] = sums[layer].clone() + used;
            h
        });
    }
    let tokens = targets_in(batches);
    model
        .blocks
        .iter()
        .zip(sums)
        .map(|(block, sum)| {
            let out_norm = block.mlp.down_proj.weight.val().square().sum_dim(1).sqrt().squeeze_dim(1);
            to_vec(sum.div_scalar(tokens).abs() * out_norm)
        })
        .collect()
}

/// ‖output weights‖ × ‖input weights‖ of every unit (`down_proj` row; `gate_proj` and `up_proj`
/// columns together), per layer.
pub fn weight_norm_scores<B: Backend>(model: &MemSinkLm<B>) -> Vec<Vec<f32>> {
    let column_norms = |w: Tensor<B, 2>| w.square().sum_dim(0).squeeze_dim::<1>(0);
    model
        .blocks
        .iter()
        .map(|block| {
            let mlp = &block.mlp;
            let output = mlp.down_proj.weight.val().square().sum_dim(1).squeeze_dim::<1>(1).sqrt();
            let input = (column_norms(mlp.gate_proj.weight.val()) + column_norms(mlp.up_proj.weight.val())).sqrt();
            to_vec(output * input)
        })
        .collect()
}

/// Rows of one forward pass when ablations are batched: copies of a batch, one unit zeroed per copy.
const ZERO_OUT_ROWS: usize = 64;

/// Forget-loss increase (per target) when each unit alone is zeroed.
pub fn zero_out_scores<B: Kernels>(
    model: &MemSinkLm<B>,
    batches: &[LmBatch<B>],
    mode: &MlpMode,
    device: &B::Device,
) -> Vec<Vec<f32>> {
    let (layers, hidden) = (model.blocks.len(), model.sinks().hidden());
    let mut scores = vec![vec![0.0f32; hidden]; layers];
    for batch in batches {
        let rows = batch.layout.batch;
        let base: f32 =
            row_nll(model.forward(batch.inputs.clone(), &batch.layout, mode), batch).sum().into_scalar().elem();
        let copies = (ZERO_OUT_ROWS / rows).max(1);
        for (layer, layer_scores) in scores.iter_mut().enumerate() {
            for first in (0..hidden).step_by(copies) {
                let k = copies.min(hidden - first);
                let tiled = tile(batch, k);
                let mut keep = vec![1.0f32; k * rows * hidden];
                for c in 0..k {
                    for r in 0..rows {
                        keep[(c * rows + r) * hidden + first + c] = 0.0;
                    }
                }
                let keep = Tensor::<B, 3>::from_data(TensorData::new(keep, [k * rows, 1, hidden]), device);
                let logits = model.forward_hooked(tiled.inputs.clone(), &tiled.layout, mode, &mut |l, h| {
                    if l == layer {
                        h * keep.clone()
                    } else {
                        h
                    }
                });
                let per_copy = to_vec(row_nll(logits, &tiled).reshape([k, rows]).sum_dim(1).squeeze_dim(1));
                for (c, loss) in per_copy.into_iter().enumerate() {
                    layer_scores[first + c] += loss - base;
                }
            }
        }
    }
    let tokens = targets_in(batches);
    scores.iter_mut().flatten().for_each(|s| *s /= tokens);
    scores
}

/// `k` copies of `batch` stacked along the rows.
fn tile<B: Backend>(batch: &LmBatch<B>, k: usize) -> LmBatch<B> {
    let l = &batch.layout;
    let seq_ids: Vec<i64> = std::iter::repeat_n(l.seq_ids.iter().copied(), k).flatten().collect();
    let segments = l.segments.as_ref().map(|s| std::iter::repeat_n(s.iter().copied(), k).flatten().collect());
    LmBatch {
        inputs: batch.inputs.clone().repeat_dim(0, k),
        targets: batch.targets.clone().repeat_dim(0, k),
        loss_mask: batch.loss_mask.clone().repeat_dim(0, k),
        layout: SeqLayout { batch: l.batch * k, seq_len: l.seq_len, seq_ids, segments, route_to_sinks: None },
    }
}

/// The path integral of integrated gradients: steps, what is attributed, and which positions a
/// scaling reaches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IgPath {
    /// Midpoint steps of α from 0 to 1.
    pub steps: usize,
    /// What is attributed.
    pub objective: IgObjective,
    /// Which positions one scaling reaches.
    pub positions: IgPositions,
}

/// Integrated gradients per layer: the activations of one layer are scaled by `α` from 0 to 1
/// (midpoints of `path.steps` intervals) while the other layers stay intact; the attribution of
/// a unit is the mean gradient of the objective with respect to its scale, per target: for
/// [`IgObjective::TargetProbability`] the probability of each target token (how much of it the
/// unit provides), for [`IgObjective::SummedNll`] the negated NLL (how much the loss would rise
/// without it). With [`IgPositions::OneAtATime`] each target sees only its own position scaled
/// (MemPi's prefix runs, in one pass per step); with [`IgPositions::AllAtOnce`] every position.
/// Either way the attributions of a layer add up, over the units, to the objective's change
/// when that layer's activations are zeroed (at the positions the scaling reaches).
pub fn integrated_gradient_scores<B: TrainBackend>(
    model: &MemSinkLm<B>,
    batches: &[LmBatch<B>],
    mode: &MlpMode,
    path: IgPath,
    device: &B::Device,
) -> Vec<Vec<f32>> {
    let (layers, hidden) = (model.blocks.len(), model.sinks().hidden());
    let frozen = model.clone().no_grad();
    let steps = path.steps.max(1);
    let mut scores = Vec::with_capacity(layers);
    for layer in 0..layers {
        let mut total = Tensor::<B::InnerBackend, 1>::zeros([hidden], device);
        for s in 0..steps {
            let alpha = (s as f64 + 0.5) / steps as f64;
            for batch in batches {
                let (inputs, layout) = (batch.inputs.clone(), &batch.layout);
                let (logits, scale) = match path.positions {
                    IgPositions::OneAtATime => {
                        let scale = Tensor::<B, 3>::full([layout.batch, layout.seq_len, hidden], alpha, device);
                        let scale = scale.require_grad();
                        (frozen.forward_position_isolated(inputs, layout, mode, layer, scale.clone()), scale)
                    }
                    IgPositions::AllAtOnce => {
                        let scale = Tensor::<B, 3>::full([1, 1, hidden], alpha, device).require_grad();
                        let hook = &mut |l, h: Tensor<B, 3>| if l == layer { h * scale.clone() } else { h };
                        (frozen.forward_hooked(inputs, layout, mode, hook), scale)
                    }
                };
                let attributed = match path.objective {
                    IgObjective::TargetProbability => {
                        let (nll, mask) = token_nll_of_logits(logits, batch);
                        (nll.neg().exp() * mask).sum()
                    }
                    IgObjective::SummedNll => row_nll(logits, batch).sum().neg(),
                };
                let grads = attributed.backward();
                let grad = scale.grad(&grads).expect("the scale is tracked");
                total = total + grad.sum_dim(0).sum_dim(1).reshape([hidden]);
            }
        }
        scores.push(to_vec(total.div_scalar(steps as f64 * f64::from(targets_in(batches)))));
    }
    scores
}

/// How long and how fast the gates of slimming and hard-concrete train.
struct GateTraining {
    /// Adam steps.
    steps: usize,
    /// Learning rate.
    lr: f64,
    /// Initial value of every gate parameter.
    init: f64,
}

/// Trains one tensor of `[hidden]` parameters per layer (initially `training.init`) that
/// multiply the hidden activations through `gate(params)`, minimising the mean forget loss plus
/// the mean of `penalty(params)` over layers, with Adam. Returns the final parameters.
fn train_gates<B: TrainBackend>(
    model: &MemSinkLm<B>,
    batches: &mut Cycle,
    mode: &MlpMode,
    training: &GateTraining,
    device: &B::Device,
    mut gate: impl FnMut(&Tensor<B, 1>, &B::Device) -> Tensor<B, 1>,
    penalty: impl Fn(Tensor<B, 1>) -> Tensor<B, 1>,
) -> Vec<Tensor<B::InnerBackend, 1>> {
    let (layers, hidden) = (model.blocks.len(), model.sinks().hidden());
    let frozen = model.clone().no_grad();
    let mut params: Vec<Tensor<B::InnerBackend, 1>> =
        (0..layers).map(|_| Tensor::full([hidden], training.init, device)).collect();
    let mut adam = Adam::new(&params);
    for _ in 0..training.steps {
        let batch: LmBatch<B> = batches.next(device);
        let tracked: Vec<Tensor<B, 1>> = params.iter().map(|p| Tensor::from_inner(p.clone()).require_grad()).collect();
        let gates: Vec<Tensor<B, 3>> = tracked.iter().map(|p| gate(p, device).reshape([1, 1, hidden])).collect();
        let logits = frozen.forward_hooked(batch.inputs.clone(), &batch.layout, mode, &mut |l, h| h * gates[l].clone());
        let targets = batch.loss_mask.clone().sum().clamp_min(1.0);
        let mut loss = row_nll(logits, &batch).sum() / targets;
        for p in &tracked {
            loss = loss + penalty(p.clone()).div_scalar(layers as f64);
        }
        let grads = loss.backward();
        let g: Vec<_> = tracked.iter().map(|p| p.grad(&grads).expect("tracked")).collect();
        adam.step(&mut params, g, training.lr);
    }
    params
}

/// Adam on plain tensors (the gates are not module parameters).
struct Adam<B: Backend> {
    m: Vec<Tensor<B, 1>>,
    v: Vec<Tensor<B, 1>>,
    t: i32,
}

impl<B: Backend> Adam<B> {
    fn new(params: &[Tensor<B, 1>]) -> Self {
        let zeros = || params.iter().map(|p| p.zeros_like()).collect();
        Self { m: zeros(), v: zeros(), t: 0 }
    }

    fn step(&mut self, params: &mut [Tensor<B, 1>], grads: Vec<Tensor<B, 1>>, lr: f64) {
        const B1: f64 = 0.9;
        const B2: f64 = 0.999;
        self.t += 1;
        let (c1, c2) = (1.0 - B1.powi(self.t), 1.0 - B2.powi(self.t));
        for (i, g) in grads.into_iter().enumerate() {
            self.m[i] = self.m[i].clone().mul_scalar(B1) + g.clone().mul_scalar(1.0 - B1);
            self.v[i] = self.v[i].clone().mul_scalar(B2) + g.square().mul_scalar(1.0 - B2);
            let update = self.m[i].clone().div_scalar(c1) / self.v[i].clone().div_scalar(c2).sqrt().add_scalar(1e-8);
            params[i] = params[i].clone() - update.mul_scalar(lr);
        }
    }
}

/// Random scores, one per unit per layer.
pub fn random_scores(layers: usize, hidden: usize, seed: u64) -> Vec<Vec<f32>> {
    let mut rng = SplitMix64::new(seed);
    (0..layers).map(|_| (0..hidden).map(|_| rng.unit() as f32).collect()).collect()
}
