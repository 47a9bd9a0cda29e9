//! How one optimizer step is laid out over devices: the global batch (rows per optimizer step)
//! is fixed by the config as `batch_size × grad_accumulation × devices`; a run given another
//! number of devices than the config names (a two-device run resumed on one) keeps the global
//! batch by changing the accumulation, so that the schedule, the data cursor and the optimizer
//! steps stay those of the config.
//!
//! burn-train sums the gradients of the micro-batches of one step (accumulated and from each
//! device alike); [`crate::learner::TrainingLm`] scales each micro-batch's loss by
//! `1 / micro_per_step`, so that a step's gradient is the mean over its micro-batches, as with
//! one batch of the global size (up to the weighting of rows with fewer real tokens).

use serde::{Deserialize, Serialize};

use crate::config::TrainConfig;
use crate::TrainError;

/// The multi-device strategy of burn-train.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Parallel {
    /// burn-train's `MultiDevice`: the model is copied to each device for every step, the
    /// gradients move to the first device, which alone runs the optimizer. Runs on every GPU
    /// backend (wgpu, cuda).
    #[default]
    MultiDevice,
    /// burn-train's distributed data parallel: one model replica per device, gradients
    /// all-reduced after each backward pass. Needs a backend with collective operations (cuda,
    /// built with the `ddp` feature).
    Ddp,
}

/// The layout of one optimizer step on the devices a run is given.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StepLayout {
    /// Devices training in parallel.
    pub devices: usize,
    /// Rows of one micro-batch on one device (`train.batch_size`).
    pub batch_per_device: usize,
    /// Micro-batches each device accumulates per optimizer step.
    pub grad_accumulation: usize,
}

impl StepLayout {
    /// The layout the config names.
    pub fn of_config(t: &TrainConfig) -> Self {
        Self { devices: t.devices, batch_per_device: t.batch_size, grad_accumulation: t.grad_accumulation }
    }

    /// The layout of `t`'s global batch on `devices` devices: the config's own when the counts
    /// agree; otherwise the accumulation that keeps the global batch.
    ///
    /// # Errors
    /// When no whole accumulation keeps the global batch on `devices` devices.
    pub fn on(t: &TrainConfig, devices: usize) -> Result<Self, TrainError> {
        let config = Self::of_config(t);
        let micro = config.micro_per_step();
        if devices == 0 || !micro.is_multiple_of(devices) {
            let fitting: Vec<String> =
                (1..=micro).filter(|&d| micro.is_multiple_of(d)).map(|d| d.to_string()).collect();
            return Err(TrainError::Invalid(format!(
                "the config lays one optimizer step out as {} rows x {} accumulated micro-batch(es) x {} device(s) \
                 = {} rows; on {devices} device(s) no whole accumulation keeps that global batch: use {} device(s), \
                 or change train.batch_size, grad_accumulation or devices",
                config.batch_per_device,
                config.grad_accumulation,
                config.devices,
                config.global_batch(),
                fitting.join(", ")
            )));
        }
        Ok(Self { devices, grad_accumulation: micro / devices, ..config })
    }

    /// Micro-batches per optimizer step over all devices.
    pub fn micro_per_step(&self) -> usize {
        self.grad_accumulation * self.devices
    }

    /// Rows per optimizer step over all devices.
    pub fn global_batch(&self) -> usize {
        self.batch_per_device * self.micro_per_step()
    }
}

/// burn-train's distributed data parallel strategy over `devices` of backend `B`, where `B` is
/// cuda (autodiff over burn's `Cuda`) and the crate was built with the `ddp` feature.
///
/// The training code is generic over the backend, and DDP needs a backend with collective
/// operations: burn's `DistributedBackend`, which cubecl implements for every runtime but whose
/// all-reduce only the cuda server has (NCCL; wgpu's is `unimplemented!()`). So the one backend it
/// can run on is picked by its type here, and every other one gets a clear error instead of a
/// panic in the middle of the first step.
///
/// # Errors
/// On any backend but cuda, or without the `ddp` feature.
pub fn ddp_strategy<B: burn::tensor::backend::AutodiffBackend>(
    devices: Vec<B::Device>,
) -> Result<burn::train::ExecutionStrategy<B>, TrainError> {
    #[cfg(feature = "ddp")]
    {
        use burn::backend::{Autodiff, Cuda};
        use burn::tensor::backend::distributed::{DistributedConfig, ReduceOperation};
        use burn::train::ExecutionStrategy;
        use std::any::Any;
        if let Some(cuda) = (&devices as &dyn Any).downcast_ref::<Vec<burn::backend::cuda::CudaDevice>>() {
            // Sum: each micro-batch's loss is already divided by the micro-batches of a step
            // (module docs), so the sum over devices is the mean gradient.
            let config = DistributedConfig { all_reduce_op: ReduceOperation::Sum };
            if let ExecutionStrategy::DistributedDataParallel { runtime, .. } =
                ExecutionStrategy::<Autodiff<Cuda>>::ddp(cuda.clone(), config)
            {
                return Ok(ExecutionStrategy::DistributedDataParallel { devices, runtime });
            }
        }
    }
    let _ = devices;
    Err(TrainError::Invalid(format!(
        "train.parallel = Ddp needs collective operations (an all-reduce), which burn implements for cuda \
         only, in a binary built with the `ddp` feature ({}): use train.parallel = MultiDevice on this \
         backend",
        if cfg!(feature = "ddp") { "this binary is, and this backend is not cuda" } else { "this binary is not" },
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn train(batch: usize, accumulation: usize, devices: usize) -> TrainConfig {
        let text = format!(
            "(method: Standard, batch_size: {batch}, grad_accumulation: {accumulation}, devices: {devices}, \
             lr: 1e-3, eval_every: 10)"
        );
        ron::from_str(&text).unwrap()
    }

    #[test]
    fn ddp_is_refused_clearly_where_no_all_reduce_exists() {
        type Cpu = burn::backend::Autodiff<burn::backend::Flex>;
        let err = ddp_strategy::<Cpu>(vec![Default::default()]).err().expect("flex has no all-reduce").to_string();
        assert!(err.contains("train.parallel = Ddp") && err.contains("MultiDevice"), "{err}");
    }

    #[test]
    fn another_device_count_keeps_the_global_batch_or_is_refused() {
        let two = train(8, 1, 2);
        assert_eq!(StepLayout::on(&two, 2).unwrap(), StepLayout::of_config(&two));
        let one = StepLayout::on(&two, 1).unwrap();
        assert_eq!((one.devices, one.grad_accumulation, one.global_batch()), (1, 2, 16));
        let err = StepLayout::on(&two, 3).unwrap_err().to_string();
        assert!(err.contains("16 rows") && err.contains("use 1, 2 device(s)"), "{err}");
        let four = StepLayout::on(&train(4, 4, 1), 4).unwrap();
        assert_eq!((four.grad_accumulation, four.global_batch()), (1, 16));
    }
}
