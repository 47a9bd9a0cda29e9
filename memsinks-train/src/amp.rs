//! Mixed-precision training (`train.precision: F16 | Bf16`), as PyTorch's autocast and
//! `GradScaler` do it:
//!
//! - the parameters and AdamW's moments stay in f32 (the backend's float type): updates far
//!   below a half-precision weight's resolution still accumulate, and AdamW's `eps` (1e-8) stays
//!   representable;
//! - each step computes with a half-precision copy of the parameters
//!   ([`MemSinkLm::cast_params`]): autodiff records the casts, so the gradients arrive at the f32
//!   parameters; norms, the softmax and the loss are computed in f32;
//! - f16 (5 exponent bits) needs *dynamic loss scaling*: the loss is multiplied by a scale
//!   before backward so that small gradients do not flush to zero, the gradients are divided by
//!   it before clipping, and a step whose gradients overflowed is skipped and the scale halved;
//!   after `growth_interval` clean steps the scale doubles. bf16 has f32's exponent range and is
//!   not scaled.
//!
//! The scale is part of the trained module's record ([`LossScale`]), so checkpoints carry it and
//! a resumed run continues with the scale it had.
//!
//! Pure half-precision training (parameters and optimizer state in f16) was tried first and
//! diverged at step 2 of the smoke run: AdamW's updates round away in f16.

use burn::module::{Module, Param, ParamId};
use burn::tensor::backend::Backend;
use burn::tensor::{FloatDType, Tensor, TensorData};
use memsinks_core::ConfigError;
use memsinks_model::MemSinkLm;
use serde::{Deserialize, Serialize};

use crate::config::Precision;

impl Precision {
    /// The float type the forward and backward pass compute in; `None` for f32, which computes
    /// with the parameters themselves.
    pub fn compute_dtype(self) -> Option<FloatDType> {
        match self {
            Precision::F32 => None,
            Precision::F16 => Some(FloatDType::F16),
            Precision::Bf16 => Some(FloatDType::BF16),
        }
    }

    /// Whether the loss is scaled (f16 only).
    pub fn scales_loss(self) -> bool {
        self == Precision::F16
    }

    /// The half-precision copy of `model` a step computes with; `None` in f32, where the step
    /// computes with `model` itself.
    pub fn compute_copy<B: Backend>(self, model: &MemSinkLm<B>) -> Option<MemSinkLm<B>> {
        self.compute_dtype().map(|dtype| model.cast_params(dtype))
    }
}

/// Dynamic loss-scale settings (f16). The defaults are PyTorch's `GradScaler`'s.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LossScaleConfig {
    /// The scale of the first step.
    pub initial: f64,
    /// Clean steps after which the scale doubles.
    pub growth_interval: u64,
    /// Steps skipped in a row (each halving the scale) after which training stops: the model
    /// overflows f16 whatever the scale.
    pub max_skips_in_a_row: u64,
}

impl Default for LossScaleConfig {
    fn default() -> Self {
        Self { initial: 65536.0, growth_interval: 2000, max_skips_in_a_row: 40 }
    }
}

impl LossScaleConfig {
    /// Checks value ranges (`train.loss_scale.*`).
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(self.initial.is_finite() && self.initial > 0.0) {
            return Err(ConfigError::Invalid(format!(
                "train.loss_scale.initial {} must be a positive number",
                self.initial
            )));
        }
        if self.growth_interval == 0 || self.max_skips_in_a_row == 0 {
            return Err(ConfigError::Invalid(
                "train.loss_scale.growth_interval and max_skips_in_a_row must be at least 1".into(),
            ));
        }
        Ok(())
    }
}

/// The loss scale's state: the scale, clean steps since it last changed, and skips in a row.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ScaleState {
    /// The factor the loss is multiplied by.
    pub scale: f64,
    /// Clean steps since the scale last changed.
    pub clean: u64,
    /// Steps skipped in a row.
    pub skips: u64,
}

/// What became of one step under loss scaling.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ScaleVerdict {
    /// The gradients were finite: apply the step.
    Step,
    /// They overflowed: skip the step (the scale was halved).
    Skip,
    /// They overflowed `max_skips_in_a_row` times in a row: stop training.
    GiveUp,
}

impl ScaleState {
    /// The state of a new run.
    pub fn new(config: &LossScaleConfig) -> Self {
        Self { scale: config.initial, clean: 0, skips: 0 }
    }

    /// Updates the state after a step whose unscaled gradient norm was `finite` or not.
    pub fn after_step(&mut self, finite: bool, config: &LossScaleConfig) -> ScaleVerdict {
        if !finite {
            self.scale *= 0.5;
            self.clean = 0;
            self.skips += 1;
            return if self.skips >= config.max_skips_in_a_row { ScaleVerdict::GiveUp } else { ScaleVerdict::Skip };
        }
        self.skips = 0;
        self.clean += 1;
        if self.clean >= config.growth_interval {
            self.scale *= 2.0;
            self.clean = 0;
        }
        ScaleVerdict::Step
    }
}

/// The loss scale as part of the trained module, so that checkpoints carry it: one f32 tensor
/// `[scale, clean steps, skips in a row]` that no gradient reaches (it is never used in the loss).
#[derive(Module, Debug)]
pub struct LossScale<B: Backend> {
    state: Param<Tensor<B, 1>>,
}

impl<B: Backend> LossScale<B> {
    /// The module holding `state` on `device`.
    pub fn new(state: ScaleState, device: &B::Device) -> Self {
        let values = vec![state.scale as f32, state.clean as f32, state.skips as f32];
        let tensor = Tensor::<B, 1>::from_data(TensorData::new(values, [3]), device);
        Self { state: Param::initialized(ParamId::new(), tensor) }
    }

    /// The module holding `state` on this one's device.
    pub fn with_state(&self, state: ScaleState) -> Self {
        Self::new(state, &self.state.val().device())
    }

    /// The state (a read from the device).
    pub fn get(&self) -> ScaleState {
        let v: Vec<f32> = self.state.val().into_data().convert::<f32>().to_vec().expect("f32 values");
        ScaleState { scale: v[0] as f64, clean: v[1] as u64, skips: v[2] as u64 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scale_halves_on_overflow_doubles_after_clean_steps_and_gives_up() {
        let config = LossScaleConfig { initial: 8.0, growth_interval: 3, max_skips_in_a_row: 3 };
        let mut s = ScaleState::new(&config);
        assert_eq!(s.after_step(false, &config), ScaleVerdict::Skip);
        assert_eq!(s.scale, 4.0);
        for _ in 0..2 {
            assert_eq!(s.after_step(true, &config), ScaleVerdict::Step);
        }
        assert_eq!(s.scale, 4.0, "two clean steps are not yet the interval");
        assert_eq!(s.after_step(true, &config), ScaleVerdict::Step);
        assert_eq!((s.scale, s.clean), (8.0, 0));
        assert_eq!(s.after_step(false, &config), ScaleVerdict::Skip);
        assert_eq!(s.after_step(false, &config), ScaleVerdict::Skip);
        assert_eq!(s.after_step(false, &config), ScaleVerdict::GiveUp);
        assert_eq!(s.scale, 1.0);
        let module = LossScale::<burn::backend::Flex>::new(s, &Default::default());
        assert_eq!(module.get(), s, "the state survives the tensor round trip");
    }
}
