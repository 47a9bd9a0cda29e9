//! Fused kernels for the hot blocks of a training step, chosen by the backend type.
//!
//! burn runs every element-wise op as its own pass with a fresh output buffer, and autodiff adds
//! one more per op in backward (experiments/bench/RESULTS.md). The blocks that dominate a CPU step
//! besides the matmuls are computed here in one pass each way:
//!
//! - [`token_nll`]: log-softmax and the target's negative log-likelihood over the logits (the
//!   largest activation of a step), and its backward `softmax − one-hot`;
//! - [`rms_norm`]: RMSNorm and its backward (input and gain gradients);
//! - [`swiglu`]: the MemSink MLP's hidden `silu(gate) · up · mask` and its backward;
//! - [`rope`]: the rotary embedding and its backward, without the rotation matrix or broadcasts;
//! - AdamW ([`Kernels::fused_adamw`]): the moment updates, bias correction, decoupled weight
//!   decay and the step in one pass over each parameter (memsinks-train's optimiser calls it);
//! - [`attention`]: causal self-attention with document segments on the projections' own
//!   `[batch, seq, heads, head_dim]` layout (no transposes, no repeated key/value heads),
//!   flash-style: the forward keeps each row's log-sum-exp, the backward recomputes the scores of
//!   one head at a time, so the `[batch, heads, seq, seq]` scores are never stored.
//!
//! [`Kernels`] is the backend trait: every method has the decomposed burn implementation as its
//! default, which every backend but flex keeps (ndarray, wgpu and cuda: `impl Kernels for … {}`);
//! flex sets [`Kernels::FUSED`] and implements the `fused_*` forward and backward primitives on
//! raw slices (`flex.rs`), and `Autodiff<B>` wraps them in autodiff ops with their own backward
//! when `B::FUSED` (`autodiff.rs`). The choice is the type's: an associated constant, resolved
//! when the code is compiled for that backend, no run-time flag. The fused paths take f32; a
//! tensor of another float type (mixed precision) goes through the decomposed ops. Parity with
//! the decomposed ops, values and gradients, is tested in `tests/kernels.rs`.

mod autodiff;
mod decomposed;
mod flex;
mod flex_attention;

use std::sync::Arc;

use burn::tensor::backend::Backend;
use burn::tensor::ops::{FloatTensor, IntTensor};
use burn::tensor::{Int, Tensor, TensorPrimitive};

/// A backend's implementation of the fused blocks. The defaults are the decomposed burn ops.
pub trait Kernels: Backend {
    /// Whether the `fused_*` primitives exist: flex. Autodiff builds its fused ops on them.
    const FUSED: bool = false;

    /// The memory of `device` this process holds, where the backend can say (the GPU backends;
    /// `None` on the CPU, whose memory is the process's own). Not a kernel: the one query the
    /// toolkit needs that burn does not offer across backends.
    fn device_memory(_device: &Self::Device) -> Option<crate::memory::DeviceMemory> {
        None
    }

    /// Returns the device memory the allocator holds but no tensor uses (its free pages), so that
    /// [`Kernels::device_memory`] measures what comes after (warm-up and autotuning allocate pages
    /// a training step does not need again). A no-op where there is no such allocator.
    fn device_memory_cleanup(_device: &Self::Device) {}

    /// Per-row negative log-likelihood `[n]` of `targets` `[n]` under `logits` `[n, vocab]`.
    fn token_nll(logits: FloatTensor<Self>, targets: IntTensor<Self>) -> FloatTensor<Self> {
        decomposed::token_nll::<Self>(logits, targets)
    }

    /// RMSNorm of `x` `[n, d]` with gain `gamma` `[d]`: `x / sqrt(mean(x²) + eps) · gamma`.
    fn rms_norm(x: FloatTensor<Self>, gamma: FloatTensor<Self>, eps: f64) -> FloatTensor<Self> {
        decomposed::rms_norm::<Self>(x, gamma, eps)
    }

    /// The SwiGLU hidden `silu(gate) · up · mask` of `[n, width]` operands; `mask` is `[n, width]`
    /// or `[width]` (one row for every token), or absent.
    fn swiglu(gate: FloatTensor<Self>, up: FloatTensor<Self>, mask: Option<FloatTensor<Self>>) -> FloatTensor<Self> {
        decomposed::swiglu::<Self>(gate, up, mask)
    }

    /// RoPE of `x` `[batch, seq, heads, head_dim]` with the `[seq, head_dim]` tables `cos` and
    /// `sin` (Llama's rotate-half convention); `rotate_half` is that permutation as a
    /// `[head_dim, head_dim]` matrix, for the decomposed ops.
    fn rope(
        x: FloatTensor<Self>,
        cos: FloatTensor<Self>,
        sin: FloatTensor<Self>,
        rotate_half: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        decomposed::rope::<Self>(x, cos, sin, rotate_half)
    }

    /// Causal attention of `q` `[batch, seq, heads, head_dim]` over `k`, `v`
    /// `[batch, seq, kv_heads, head_dim]` (grouped: query head `h` reads key/value head
    /// `h / (heads / kv_heads)`), scale `1 / sqrt(head_dim)`; with `segments` (`batch × seq`
    /// document indices of packed rows) a query sees only keys of its own segment. Output in
    /// `q`'s layout.
    fn doc_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        segments: Option<Arc<Vec<u32>>>,
    ) -> FloatTensor<Self> {
        decomposed::attention::<Self>(q, k, v, segments)
    }

    /// Fused [`Kernels::rope`] forward.
    fn fused_rope(_x: FloatTensor<Self>, _cos: FloatTensor<Self>, _sin: FloatTensor<Self>) -> FloatTensor<Self> {
        unreachable!("fused_rope is only called on backends with FUSED")
    }

    /// Its backward: the gradient of `x` (the tables are constants).
    fn fused_rope_backward(
        _grad: FloatTensor<Self>,
        _cos: FloatTensor<Self>,
        _sin: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        unreachable!("fused_rope_backward is only called on backends with FUSED")
    }

    /// Fused [`Kernels::doc_attention`] forward: the output and each query row's log-sum-exp of its
    /// scaled scores `[batch, heads, seq]`.
    fn fused_attention(
        _q: FloatTensor<Self>,
        _k: FloatTensor<Self>,
        _v: FloatTensor<Self>,
        _segments: Option<Arc<Vec<u32>>>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        unreachable!("fused_attention is only called on backends with FUSED")
    }

    /// Its backward: the gradients of `q`, `k` and `v` from the output's `grad`, recomputing the
    /// scores from `q`, `k` and the saved log-sum-exp.
    #[allow(clippy::too_many_arguments)]
    fn fused_attention_backward(
        _q: FloatTensor<Self>,
        _k: FloatTensor<Self>,
        _v: FloatTensor<Self>,
        _out: FloatTensor<Self>,
        _lse: FloatTensor<Self>,
        _segments: Option<Arc<Vec<u32>>>,
        _grad: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        unreachable!("fused_attention_backward is only called on backends with FUSED")
    }

    /// One AdamW update of `param` by `grad` in one pass, burn's `AdamW` formula: `m ← β1 m +
    /// (1 − β1) g`, `v ← β2 v + (1 − β2) g²` (from `(1 − β1) g` and `(1 − β2) g²` without
    /// moments), `param ← param (1 − lr·wd) − lr · m̂ / (sqrt(v̂) + eps)` with the bias corrections
    /// of step `time` (1-based). Returns the parameter and both moments. Only called when
    /// [`Kernels::FUSED`], on f32 tensors.
    fn fused_adamw(
        _param: FloatTensor<Self>,
        _grad: FloatTensor<Self>,
        _moments: Option<(FloatTensor<Self>, FloatTensor<Self>)>,
        _time: usize,
        _settings: AdamWStep,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        unreachable!("fused_adamw is only called on backends with FUSED")
    }

    /// Fused [`Kernels::token_nll`] forward: the NLL `[n]` and each row's log-sum-exp `[n]`
    /// (what the backward needs). Only called when [`Kernels::FUSED`], on f32 tensors.
    fn fused_token_nll(
        _logits: FloatTensor<Self>,
        _targets: IntTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        unreachable!("fused_token_nll is only called on backends with FUSED")
    }

    /// Its backward: `grad[i] · (softmax(logits[i]) − one_hot(targets[i]))`.
    fn fused_token_nll_backward(
        _logits: FloatTensor<Self>,
        _targets: IntTensor<Self>,
        _lse: FloatTensor<Self>,
        _grad: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        unreachable!("fused_token_nll_backward is only called on backends with FUSED")
    }

    /// Fused [`Kernels::rms_norm`] forward: the output and each row's `1 / rms` `[n]`.
    fn fused_rms_norm(
        _x: FloatTensor<Self>,
        _gamma: FloatTensor<Self>,
        _eps: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        unreachable!("fused_rms_norm is only called on backends with FUSED")
    }

    /// Its backward: the gradients of `x` and `gamma` from the output's `grad`.
    fn fused_rms_norm_backward(
        _x: FloatTensor<Self>,
        _gamma: FloatTensor<Self>,
        _inv_rms: FloatTensor<Self>,
        _grad: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        unreachable!("fused_rms_norm_backward is only called on backends with FUSED")
    }

    /// Fused [`Kernels::swiglu`] forward.
    fn fused_swiglu(
        _gate: FloatTensor<Self>,
        _up: FloatTensor<Self>,
        _mask: Option<FloatTensor<Self>>,
    ) -> FloatTensor<Self> {
        unreachable!("fused_swiglu is only called on backends with FUSED")
    }

    /// Its backward: the gradients of `gate` and `up` from the output's `grad`.
    fn fused_swiglu_backward(
        _gate: FloatTensor<Self>,
        _up: FloatTensor<Self>,
        _mask: Option<FloatTensor<Self>>,
        _grad: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        unreachable!("fused_swiglu_backward is only called on backends with FUSED")
    }
}

/// The constants of one AdamW update ([`Kernels::fused_adamw`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamWStep {
    /// Learning rate.
    pub lr: f64,
    /// First-moment decay.
    pub beta_1: f32,
    /// Second-moment decay.
    pub beta_2: f32,
    /// Added to the root of the second moment.
    pub epsilon: f32,
    /// Decoupled weight decay (0 for vectors).
    pub weight_decay: f32,
}

// The decomposed ops everywhere but flex: nothing to write.
#[cfg(feature = "ndarray")]
impl Kernels for burn::backend::NdArray {}
#[cfg(feature = "wgpu")]
impl Kernels for burn::backend::Wgpu {
    fn device_memory(device: &Self::Device) -> Option<crate::memory::DeviceMemory> {
        crate::memory::cubecl_memory::<cubecl::wgpu::WgpuRuntime>(device)
    }

    fn device_memory_cleanup(device: &Self::Device) {
        <cubecl::wgpu::WgpuRuntime as cubecl::Runtime>::client(device).memory_cleanup();
    }
}
#[cfg(feature = "cuda")]
impl Kernels for burn::backend::Cuda {
    fn device_memory(device: &Self::Device) -> Option<crate::memory::DeviceMemory> {
        crate::memory::cubecl_memory::<cubecl::cuda::CudaRuntime>(device)
    }

    fn device_memory_cleanup(device: &Self::Device) {
        <cubecl::cuda::CudaRuntime as cubecl::Runtime>::client(device).memory_cleanup();
    }
}

fn float<B: Backend, const D: usize>(t: Tensor<B, D>) -> FloatTensor<B> {
    t.into_primitive().tensor()
}

fn tensor<B: Backend, const D: usize>(p: FloatTensor<B>) -> Tensor<B, D> {
    Tensor::from_primitive(TensorPrimitive::Float(p))
}

/// Per-token negative log-likelihood `[n]` of `targets` under `logits` `[n, vocab]`.
pub fn token_nll<B: Kernels>(logits: Tensor<B, 2>, targets: Tensor<B, 1, Int>) -> Tensor<B, 1> {
    tensor(B::token_nll(float(logits), targets.into_primitive()))
}

/// RMSNorm over the last dimension of `x` with gain `gamma` (burn's `RmsNorm`, fused on flex).
pub fn rms_norm<B: Kernels, const D: usize>(x: Tensor<B, D>, gamma: Tensor<B, 1>, eps: f64) -> Tensor<B, D> {
    let dims = x.dims();
    let d = dims[D - 1];
    let rows = x.shape().num_elements() / d.max(1);
    tensor::<B, 2>(B::rms_norm(float(x.reshape([rows, d])), float(gamma), eps)).reshape(dims)
}

/// `silu(gate) · up · mask` for `[batch, seq, width]` operands; `mask` broadcasts from
/// `[1, 1, width]` or is per token.
pub fn swiglu<B: Kernels>(gate: Tensor<B, 3>, up: Tensor<B, 3>, mask: Option<Tensor<B, 3>>) -> Tensor<B, 3> {
    let [b, t, w] = gate.dims();
    let flat = |x: Tensor<B, 3>| -> FloatTensor<B> {
        let [mb, mt, _] = x.dims();
        if mb * mt == 1 {
            float(x.reshape([w]))
        } else {
            float(x.reshape([b * t, w]))
        }
    };
    let out = B::swiglu(float(gate.reshape([b * t, w])), float(up.reshape([b * t, w])), mask.map(flat));
    tensor::<B, 2>(out).reshape([b, t, w])
}

/// RoPE of `[batch, seq, heads, head_dim]` for positions `0..seq` from `[max_seq, head_dim]`
/// tables (see [`Kernels::rope`]).
pub fn rope<B: Kernels>(
    x: Tensor<B, 4>,
    cos: Tensor<B, 2>,
    sin: Tensor<B, 2>,
    rotate_half: Tensor<B, 2>,
) -> Tensor<B, 4> {
    let seq = x.dims()[1];
    let table = |t: Tensor<B, 2>| float(t.narrow(0, 0, seq));
    tensor(B::rope(float(x), table(cos), table(sin), float(rotate_half)))
}

/// Causal attention with document segments in the projections' layout (see
/// [`Kernels::doc_attention`]).
pub fn attention<B: Kernels>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    segments: Option<Arc<Vec<u32>>>,
) -> Tensor<B, 4> {
    tensor(B::doc_attention(float(q), float(k), float(v), segments))
}

/// `[batch, kv_heads, seq, head_dim]` with each key/value head repeated for the `groups`
/// consecutive query heads it serves: `[batch, kv_heads * groups, seq, head_dim]`.
pub(crate) fn repeat_kv<B: Backend>(t: Tensor<B, 4>, groups: usize) -> Tensor<B, 4> {
    if groups == 1 {
        return t;
    }
    let [b, kv, s, hd] = t.dims();
    t.unsqueeze_dim::<5>(2).expand([b, kv, groups, s, hd]).reshape([b, kv * groups, s, hd])
}

/// A backend the toolkit trains on: autodiff over a backend with kernels, itself with kernels
/// (so that a model, and the same model made `valid()`, both run the fused blocks).
pub trait TrainBackend: burn::tensor::backend::AutodiffBackend<InnerBackend: Kernels> + Kernels {}

impl<B> TrainBackend for B
where
    B: burn::tensor::backend::AutodiffBackend + Kernels,
    B::InnerBackend: Kernels,
{
}
