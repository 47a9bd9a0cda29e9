//! How much memory a model needs, checked against what the machine (or the process's limit)
//! allows before anything is allocated: a configuration that cannot fit is an error naming the
//! sizes, never an allocation abort half-way into building the model.

use burn::tensor::backend::Backend;

use crate::{ModelConfig, ModelError};

const F32: u64 = 4;

/// The bytes a configuration needs, by kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryEstimate {
    /// The weights (f32).
    pub weights: u64,
    /// Gradients and AdamW's two moments (f32 each): three times the weights.
    pub optimizer: u64,
    /// Activations kept for the backward pass, with the attention scores and the logits.
    pub activations: u64,
    /// The share of `activations` that the materialised attention scores and probabilities take
    /// (`[rows, heads, context, context]` twice per layer): what a fused attention kernel saves.
    pub attention_scores: u64,
}

/// What a GPU's allocator reserves for a training step, over the bytes in use
/// ([`MemoryEstimate::total`]): CubeCL's memory pools hand out slices of larger pages and keep
/// them. On the software Vulkan adapter the reserved memory was 0.92 to 1.26 times the in-use
/// estimate at six shapes (ts-cpu at 2 x 256, 8 x 256, 8 x 64 and 32 x 64 rows x tokens, ts-quick
/// at 4 x 128 and 16 x 128), and repeated runs of one shape differed by up to 12 %; 1.5 covers
/// that spread. `tests/gpu.rs` checks the bound at three of the shapes.
pub const DEVICE_RESERVE: f64 = 1.5;

impl MemoryEstimate {
    /// Everything together: the bytes in use at the step's peak.
    pub fn total(&self) -> u64 {
        self.weights + self.optimizer + self.activations
    }

    /// What a GPU needs for the step: [`Self::total`] with the allocator's reserve.
    pub fn on_device(&self) -> u64 {
        (self.total() as f64 * DEVICE_RESERVE) as u64
    }
}

impl ModelConfig {
    /// The memory of one training step on `rows` rows of `context` tokens. Activations count, per
    /// layer and token, the residual stream and norms (~8 d), queries/keys/values and the attention
    /// output (~4 d), the MLP's gate, up, product and mask (~4 I), and the materialised attention
    /// scores and probabilities (2 heads × context); plus the logits and their gradient. The
    /// backward adds one weight gradient per row for a layer's projections and for the head at a
    /// time: burn's linear layer on a `[rows, tokens, d]` input computes its weight gradient as a
    /// batched matmul, `[rows, d_in, d_out]`, summed over rows afterwards
    /// (burn-backend's `linear_weight_backward`). An estimate of the bytes in use; what a device's
    /// allocator reserves on top is [`DEVICE_RESERVE`]. It decides whether to start, not how to
    /// tile.
    pub fn training_memory(&self, rows: usize, context: usize) -> MemoryEstimate {
        let weights = self.num_params() as u64 * F32;
        let tokens = rows as u64 * context as u64;
        let (d, i, h, v) = (self.d_model as u64, self.d_hidden as u64, self.n_heads as u64, self.vocab_size as u64);
        let per_layer_token = 12 * d + 4 * i + 2 * h * context as u64;
        let logits = 2 * tokens * v;
        let kv = d * self.n_kv_heads as u64 / h;
        let layer_projections = 2 * d * d + 2 * d * kv + 3 * d * i;
        let row_weight_grads = rows as u64 * (layer_projections + d * v);
        let activations = (self.n_layers as u64 * tokens * per_layer_token + logits + row_weight_grads) * F32;
        let attention_scores = self.n_layers as u64 * tokens * 2 * h * context as u64 * F32;
        MemoryEstimate { weights, optimizer: 3 * weights, activations, attention_scores }
    }
}

/// A device's memory held by this process, as its allocator reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceMemory {
    /// Bytes of the tensors alive now.
    pub in_use: u64,
    /// Bytes the allocator has reserved from the device: its pools never shrink during a run, so
    /// after a training step this is at least the step's peak.
    pub reserved: u64,
}

/// The memory of a CubeCL runtime's `device` (wgpu, cuda).
#[cfg(any(feature = "wgpu", feature = "cuda"))]
pub(crate) fn cubecl_memory<R: cubecl::Runtime>(device: &R::Device) -> Option<DeviceMemory> {
    let usage = R::client(device).memory_usage().ok()?;
    Some(DeviceMemory { in_use: usage.bytes_in_use, reserved: usage.bytes_reserved })
}

/// Whether `B` computes in host memory (the CPU backends), where [`check_host_memory`] applies to
/// the whole training step; on a GPU backend only the host copies of records do.
pub fn computes_on_host<B: Backend>() -> bool {
    let name = std::any::type_name::<B>();
    name.contains("Flex") || name.contains("NdArray")
}

/// Host memory this process may still allocate: the smaller of the memory the kernel reports as
/// available and what the address-space limit (`ulimit -v`) leaves; `None` where neither can be
/// read (no check then).
pub fn available_host_memory() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok();
    let available = meminfo.as_deref().and_then(|m| kib_field(m, "MemAvailable:"));
    let limit = address_space_left();
    match (available, limit) {
        (Some(a), Some(l)) => Some(a.min(l)),
        (a, l) => a.or(l),
    }
}

/// A `NAME: n kB` line of a /proc file, in bytes.
fn kib_field(text: &str, name: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with(name))?;
    let kib: u64 = line[name.len()..].split_whitespace().next()?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(target_os = "linux")]
fn address_space_left() -> Option<u64> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes into the struct it is given and nothing else.
    if unsafe { libc::getrlimit(libc::RLIMIT_AS, &mut limit) } != 0 || limit.rlim_cur == libc::RLIM_INFINITY {
        return None;
    }
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let used = kib_field(&status, "VmSize:").unwrap_or(0);
    Some(limit.rlim_cur.saturating_sub(used))
}

#[cfg(not(target_os = "linux"))]
fn address_space_left() -> Option<u64> {
    None
}

/// Refuses to start `what` when it needs more than the host can give.
///
/// # Errors
/// When `needed` exceeds [`available_host_memory`], naming both and `hint`.
pub fn check_host_memory(needed: u64, what: &str, hint: &str) -> Result<(), ModelError> {
    let Some(available) = available_host_memory() else { return Ok(()) };
    if needed > available {
        return Err(ModelError::OutOfMemory {
            what: what.to_string(),
            place: "of memory",
            limit: "the host's available memory, or the ulimit -v limit",
            needed,
            available,
            hint: hint.to_string(),
        });
    }
    Ok(())
}

/// Refuses a training step whose estimate on the device ([`ModelConfig::training_memory`], with the
/// allocator's [`DEVICE_RESERVE`]) exceeds the memory of the device it runs on, `device_gib` (`train.device_memory_gib`: burn offers no portable
/// query of a GPU's free memory, so the run states it). The error names the micro-batch and
/// accumulation that would fit with the same rows per optimizer step and device
/// (`batch × accumulation`).
///
/// # Errors
/// When one micro-batch of `batch` rows needs more than `device_gib`.
pub fn check_device_memory(
    cfg: &ModelConfig,
    batch: usize,
    accumulation: usize,
    context: usize,
    device_gib: f64,
) -> Result<(), ModelError> {
    let device = (device_gib * (1u64 << 30) as f64) as u64;
    let fits = |rows: usize| cfg.training_memory(rows, context).on_device() <= device;
    if fits(batch) {
        return Ok(());
    }
    let per_device = batch * accumulation;
    let hint = match (1..batch).rev().find(|&b| per_device.is_multiple_of(b) && fits(b)) {
        Some(b) => format!(
            "train.batch_size={b} with train.grad_accumulation={} fits and keeps {per_device} rows per step and device",
            per_device / b
        ),
        None => "not even one row fits: use a shorter data.context, a smaller model or a larger device".to_string(),
    };
    Err(ModelError::OutOfMemory {
        what: format!("one micro-batch of {batch} rows x {context} tokens"),
        place: "on the device",
        limit: "train.device_memory_gib",
        needed: cfg.training_memory(batch, context).on_device(),
        available: device,
        hint,
    })
}

/// Bytes as GiB with two decimals.
pub fn gib(bytes: u64) -> String {
    format!("{:.2} GiB", bytes as f64 / (1u64 << 30) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn estimates_grow_with_the_model_and_the_batch() {
        let small = ModelConfig::preset("tiny").unwrap();
        let large = ModelConfig::preset("smollm2-1.7b").unwrap();
        let a = small.training_memory(16, 128);
        assert_eq!(a.weights, small.num_params() as u64 * 4);
        assert_eq!(a.optimizer, 3 * a.weights);
        assert!(small.training_memory(32, 128).activations > a.activations);
        // 1.7 B parameters: 6.8 GB of weights, 27 GB with the optimizer, before activations.
        assert!(large.training_memory(1, 2048).total() > 27_000_000_000);
        assert_eq!(kib_field("MemTotal: 10 kB\nMemAvailable:   3 kB\n", "MemAvailable:"), Some(3072));
        let err = check_host_memory(u64::MAX / 2, "training x", "use a smaller preset").unwrap_err().to_string();
        assert!(err.contains("training x") && err.contains("smaller preset"), "{err}");
    }

    #[test]
    fn a_micro_batch_too_large_for_the_device_is_refused_with_one_that_fits() {
        let cfg = ModelConfig::preset("smollm2-360m").unwrap();
        let gib_of = |rows: usize| cfg.training_memory(rows, 2048).on_device() as f64 / (1u64 << 30) as f64;
        // A device that holds 4 rows but not 5: 16 rows x 2 accumulation becomes 4 x 8.
        let device = (gib_of(4) + gib_of(5)) / 2.0;
        assert!(check_device_memory(&cfg, 4, 8, 2048, device).is_ok());
        let err = check_device_memory(&cfg, 16, 2, 2048, device).unwrap_err().to_string();
        assert!(err.contains("train.batch_size=4 with train.grad_accumulation=8"), "{err}");
        // Nothing fits: said so.
        let err = check_device_memory(&cfg, 2, 1, 2048, gib_of(1) / 2.0).unwrap_err().to_string();
        assert!(err.contains("not even one row fits"), "{err}");
    }
}
