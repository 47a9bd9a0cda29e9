//! Optimisation: AdamW with weight decay on matrices only, global gradient-norm clipping, and the
//! warm-up + cosine learning-rate schedule.

use burn::module::{AutodiffModule, ModuleVisitor, Param};
use burn::optim::adaptor::OptimizerAdaptor;
use burn::optim::lr_scheduler::LrScheduler;
use burn::optim::{AdamW, AdamWConfig, AdamWState, AdaptiveMomentumState, GradientsParams, Optimizer, SimpleOptimizer};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{DType, TensorPrimitive};
use burn::tensor::{Device, ElementConversion, Tensor};
use memsinks_model::{AdamWStep, Kernels, TrainBackend};
use serde::{Deserialize, Serialize};

/// AdamW settings: the paper's by default (β 0.9/0.95, weight decay 0.1, clip 1.0).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OptimConfig {
    /// First-moment decay.
    pub beta_1: f32,
    /// Second-moment decay.
    pub beta_2: f32,
    /// Decoupled weight decay, applied to parameters of rank ≥ 2 only (not norm gains).
    pub weight_decay: f32,
    /// Numerical-stability term.
    pub epsilon: f32,
    /// Global gradient-norm clip (as `torch.nn.utils.clip_grad_norm_`); `None` disables it.
    /// Applied by [`step`] and by the training step, before the optimiser sees the gradients.
    pub clip_norm: Option<f32>,
}

impl Default for OptimConfig {
    fn default() -> Self {
        Self { beta_1: 0.9, beta_2: 0.95, weight_decay: 0.1, epsilon: 1e-8, clip_norm: Some(1.0) }
    }
}

impl OptimConfig {
    /// The optimiser for module `M` (AdamW; the clip is applied before it, see `clip_norm`).
    pub fn init<B: TrainBackend, M: AutodiffModule<B>>(&self) -> OptimizerAdaptor<MatrixDecayAdamW, M, B> {
        let base = AdamWConfig::new().with_beta_1(self.beta_1).with_beta_2(self.beta_2).with_epsilon(self.epsilon);
        MatrixDecayAdamW {
            decayed: base.clone().with_weight_decay(self.weight_decay).build(),
            plain: base.with_weight_decay(0.0).build(),
            config: self.clone(),
        }
        .into()
    }
}

/// burn's AdamW, with decay on matrices and none on vectors (RMSNorm gains), as in the paper's
/// setup (`weight decay 0.1 on matrices only`); on a backend with fused kernels each update is one
/// pass ([`memsinks_model::Kernels::fused_adamw`], the same formula), keeping burn's state
/// records (checkpoints read alike).
#[derive(Clone)]
pub struct MatrixDecayAdamW {
    decayed: AdamW,
    plain: AdamW,
    config: OptimConfig,
}

impl MatrixDecayAdamW {
    fn fused<B: Kernels, const D: usize>(
        &self,
        lr: f64,
        tensor: Tensor<B, D>,
        grad: Tensor<B, D>,
        state: Option<AdamWState<B, D>>,
    ) -> (Tensor<B, D>, Option<AdamWState<B, D>>) {
        let c = &self.config;
        let step = AdamWStep {
            lr,
            beta_1: c.beta_1,
            beta_2: c.beta_2,
            epsilon: c.epsilon,
            weight_decay: if D >= 2 { c.weight_decay } else { 0.0 },
        };
        let float = |t: Tensor<B, D>| t.into_primitive().tensor();
        let tensor_of = |p| Tensor::<B, D>::from_primitive(TensorPrimitive::Float(p));
        let time = state.as_ref().map_or(1, |s| s.momentum.time + 1);
        let moments = state.map(|s| (float(s.momentum.moment_1), float(s.momentum.moment_2)));
        let (p, m, v) = B::fused_adamw(float(tensor), float(grad), moments, time, step);
        let momentum =
            AdaptiveMomentumState { time, moment_1: tensor_of(m), moment_2: tensor_of(v), max_moment_2: None };
        (tensor_of(p), Some(AdamWState { momentum }))
    }
}

impl<B: Kernels> SimpleOptimizer<B> for MatrixDecayAdamW {
    type State<const D: usize> = AdamWState<B, D>;

    fn step<const D: usize>(
        &self,
        lr: f64,
        tensor: Tensor<B, D>,
        grad: Tensor<B, D>,
        state: Option<Self::State<D>>,
    ) -> (Tensor<B, D>, Option<Self::State<D>>) {
        let f32s = [&tensor, &grad].iter().all(|t| t.dtype() == DType::F32)
            && state.as_ref().is_none_or(|s| s.momentum.moment_1.dtype() == DType::F32);
        if B::FUSED && f32s {
            return self.fused(lr, tensor, grad, state);
        }
        if D >= 2 {
            SimpleOptimizer::<B>::step(&self.decayed, lr, tensor, grad, state)
        } else {
            SimpleOptimizer::<B>::step(&self.plain, lr, tensor, grad, state)
        }
    }

    fn to_device<const D: usize>(state: Self::State<D>, device: &Device<B>) -> Self::State<D> {
        <AdamW as SimpleOptimizer<B>>::to_device(state, device)
    }
}

/// Scales all gradients so that their global L2 norm is at most `max_norm`; returns the norm
/// before clipping.
pub fn clip_global_norm<B: AutodiffBackend, M: AutodiffModule<B>>(
    model: &M,
    grads: &mut GradientsParams,
    max_norm: f64,
) -> f64 {
    unscale_and_clip(model, grads, 1.0, Some(max_norm))
}

/// Multiplies all gradients by `unscale` (one over a mixed-precision run's loss scale, see
/// [`crate::amp`]) and clips their global L2 norm to `max_norm`, in one pass over the gradients
/// and one device read. Returns the global norm of the unscaled gradients before clipping; when it
/// is not finite (a gradient overflowed) the gradients are left as they are.
pub fn unscale_and_clip<B: AutodiffBackend, M: AutodiffModule<B>>(
    model: &M,
    grads: &mut GradientsParams,
    unscale: f64,
    max_norm: Option<f64>,
) -> f64 {
    struct Squares<'a, B: AutodiffBackend> {
        grads: &'a GradientsParams,
        sums: Vec<Tensor<B::InnerBackend, 1>>,
    }
    impl<B: AutodiffBackend> ModuleVisitor<B> for Squares<'_, B> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            if let Some(g) = self.grads.get::<B::InnerBackend, D>(param.id) {
                self.sums.push(g.square().sum());
            }
        }
    }
    struct Scale<'a, B: AutodiffBackend> {
        grads: &'a mut GradientsParams,
        factor: f64,
        _b: std::marker::PhantomData<B>,
    }
    impl<B: AutodiffBackend> ModuleVisitor<B> for Scale<'_, B> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            if let Some(g) = self.grads.remove::<B::InnerBackend, D>(param.id) {
                self.grads.register::<B::InnerBackend, D>(param.id, g.mul_scalar(self.factor));
            }
        }
    }
    let mut squares = Squares::<B> { grads, sums: Vec::new() };
    model.visit(&mut squares);
    if squares.sums.is_empty() {
        return 0.0;
    }
    // One device read for the whole model.
    let total: f64 = Tensor::cat(squares.sums, 0).sum().into_scalar().elem();
    let norm = total.sqrt() * unscale;
    if !norm.is_finite() {
        return norm;
    }
    let clip = match max_norm {
        Some(max) if norm > max => max / (norm + 1e-6),
        _ => 1.0,
    };
    let factor = unscale * clip;
    if factor != 1.0 {
        let mut scale = Scale::<B> { grads, factor, _b: std::marker::PhantomData };
        model.visit(&mut scale);
    }
    norm
}

/// One optimiser update from a loss: backward, the global clip of `config`, AdamW. Used by the
/// benchmark and the unlearning baselines; training goes through burn-train's learner.
pub fn step<B: TrainBackend, M: AutodiffModule<B>, O: Optimizer<M, B>>(
    optim: &mut O,
    model: M,
    loss: Tensor<B, 1>,
    lr: f64,
    config: &OptimConfig,
) -> M {
    let mut grads = GradientsParams::from_grads(loss.backward(), &model);
    if let Some(max) = config.clip_norm {
        clip_global_norm(&model, &mut grads, max as f64);
    }
    optim.step(lr, model, grads)
}

/// Linear warm-up to `peak`, then cosine decay to `min` at `total` steps (constant after).
#[derive(Clone, Debug, PartialEq)]
pub struct WarmupCosine {
    /// Peak learning rate.
    pub peak: f64,
    /// Final learning rate.
    pub min: f64,
    /// Warm-up steps.
    pub warmup: usize,
    /// Total steps.
    pub total: usize,
    /// Steps taken so far.
    pub step: usize,
    /// Scheduler steps per optimizer step: burn-train steps the scheduler once per iteration,
    /// and an optimizer step takes `grad_accumulation` iterations (one micro-batch per device
    /// each). The record counts optimizer steps, so that a run resumed on another number of
    /// devices (another accumulation) continues at the same point of the schedule.
    pub iterations_per_step: usize,
}

impl WarmupCosine {
    /// The learning rate at step `s` (1-based, as burn-train steps the scheduler before each
    /// iteration).
    pub fn lr_at(&self, s: usize) -> f64 {
        if self.warmup > 0 && s <= self.warmup {
            return self.peak * s as f64 / self.warmup as f64;
        }
        let span = self.total.saturating_sub(self.warmup).max(1);
        let progress = ((s - self.warmup.min(s)) as f64 / span as f64).min(1.0);
        self.min + 0.5 * (self.peak - self.min) * (1.0 + (std::f64::consts::PI * progress).cos())
    }
}

impl LrScheduler for WarmupCosine {
    type Record<B: Backend> = usize;

    fn step(&mut self) -> f64 {
        self.step += 1;
        self.lr_at(self.step)
    }

    fn to_record<B: Backend>(&self) -> Self::Record<B> {
        // Checkpoints are written at round ends, which are optimizer-step boundaries.
        self.step / self.iterations_per_step.max(1)
    }

    fn load_record<B: Backend>(mut self, record: Self::Record<B>) -> Self {
        self.step = record * self.iterations_per_step.max(1);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_warms_up_then_decays_to_min() {
        let s = WarmupCosine { peak: 1e-3, min: 1e-4, warmup: 10, total: 110, step: 0, iterations_per_step: 1 };
        assert!((s.lr_at(5) - 5e-4).abs() < 1e-12);
        assert!((s.lr_at(10) - 1e-3).abs() < 1e-12);
        assert!((s.lr_at(60) - 5.5e-4).abs() < 1e-9);
        assert!((s.lr_at(110) - 1e-4).abs() < 1e-12);
        assert!((s.lr_at(500) - 1e-4).abs() < 1e-12);
        let mut live = s.clone();
        let lrs: Vec<f64> = (0..20).map(|_| live.step()).collect();
        assert!(lrs.windows(2).take(9).all(|w| w[1] > w[0]));
        let restored =
            WarmupCosine { step: 0, ..s }.load_record::<burn::backend::Flex>(live.to_record::<burn::backend::Flex>());
        assert_eq!(restored.step, 20);
        // Written with 2 iterations per step (accumulation 2), resumed with 1 (two devices).
        let accumulated = WarmupCosine { step: 40, iterations_per_step: 2, ..s.clone() };
        let resumed = WarmupCosine { step: 0, ..s }
            .load_record::<burn::backend::Flex>(accumulated.to_record::<burn::backend::Flex>());
        assert_eq!(resumed.step, 20);
    }
}
