//! Optimiser settings shared by training and the speed benchmark.

use burn::grad_clipping::GradientClippingConfig;
use burn::module::AutodiffModule;
use burn::optim::{adaptor::OptimizerAdaptor, AdamW, AdamWConfig, GradientsParams, Optimizer};
use burn::tensor::backend::AutodiffBackend;
use serde::{Deserialize, Serialize};

/// AdamW with gradient clipping: the paper's settings by default.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OptimConfig {
    /// First-moment decay.
    pub beta_1: f32,
    /// Second-moment decay.
    pub beta_2: f32,
    /// Decoupled weight decay.
    pub weight_decay: f32,
    /// Numerical-stability term.
    pub epsilon: f32,
    /// Gradient norm clip (per parameter tensor, as burn implements it); `None` disables it.
    pub clip_norm: Option<f32>,
}

impl Default for OptimConfig {
    fn default() -> Self {
        Self { beta_1: 0.9, beta_2: 0.95, weight_decay: 0.1, epsilon: 1e-8, clip_norm: Some(1.0) }
    }
}

impl OptimConfig {
    /// The burn optimiser for module `M`.
    pub fn init<B: AutodiffBackend, M: AutodiffModule<B>>(&self) -> OptimizerAdaptor<AdamW, M, B> {
        AdamWConfig::new()
            .with_beta_1(self.beta_1)
            .with_beta_2(self.beta_2)
            .with_weight_decay(self.weight_decay)
            .with_epsilon(self.epsilon)
            .with_grad_clipping(self.clip_norm.map(GradientClippingConfig::Norm))
            .init()
    }
}

/// One optimiser update from a loss: backward, clip, AdamW.
pub fn step<B: AutodiffBackend, M: AutodiffModule<B>, O: Optimizer<M, B>>(
    optim: &mut O,
    model: M,
    loss: burn::tensor::Tensor<B, 1>,
    lr: f64,
) -> M {
    let grads = GradientsParams::from_grads(loss.backward(), &model);
    optim.step(lr, model, grads)
}
