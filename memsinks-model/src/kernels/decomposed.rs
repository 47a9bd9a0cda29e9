//! The blocks as burn's own ops: what every backend without fused kernels runs, what autodiff
//! differentiates op by op, and what the fused kernels are tested against.

use burn::tensor::activation::{log_softmax, silu};
use burn::tensor::ops::{FloatTensor, IntTensor};
use std::sync::Arc;

use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Bool, DType, Int, Tensor, TensorData, TensorMetadata};

use burn::tensor::backend::Backend;

use super::{float, tensor};

pub(super) fn token_nll<B: Backend>(logits: FloatTensor<B>, targets: IntTensor<B>) -> FloatTensor<B> {
    let logits: Tensor<B, 2> = tensor(logits);
    let targets: Tensor<B, 1, Int> = Tensor::from_primitive(targets);
    let n = targets.dims()[0];
    let picked = log_softmax(logits, 1).gather(1, targets.reshape([n, 1]));
    float(picked.reshape([n]).neg())
}

/// burn's `RmsNorm::forward`, op for op.
pub(super) fn rms_norm<B: Backend>(x: FloatTensor<B>, gamma: FloatTensor<B>, eps: f64) -> FloatTensor<B> {
    let x: Tensor<B, 2> = tensor(x);
    let gamma: Tensor<B, 1> = tensor(gamma);
    let dtype = x.dtype();
    let rms = (x.clone().cast(DType::F32).square().mean_dim(1) + eps).sqrt();
    float((x / rms.cast(dtype)) * gamma.unsqueeze())
}

pub(super) fn swiglu<B: Backend>(
    gate: FloatTensor<B>,
    up: FloatTensor<B>,
    mask: Option<FloatTensor<B>>,
) -> FloatTensor<B> {
    let h = silu(tensor::<B, 2>(gate)) * tensor::<B, 2>(up);
    let Some(mask) = mask else { return float(h) };
    let mask: Tensor<B, 2> = match mask.shape().num_dims() {
        1 => tensor::<B, 1>(mask).unsqueeze(),
        _ => tensor(mask),
    };
    float(h * mask)
}

/// The model's RoPE with burn ops: `x · cos + (x R) · sin`, `R` the signed rotate-half
/// permutation as a matmul (keeps every operand contiguous).
pub(super) fn rope<B: Backend>(
    x: FloatTensor<B>,
    cos: FloatTensor<B>,
    sin: FloatTensor<B>,
    rotate_half: FloatTensor<B>,
) -> FloatTensor<B> {
    let x: Tensor<B, 4> = tensor(x);
    let [batch, seq, heads, head_dim] = x.dims();
    let dtype = x.dtype();
    let table = |t: FloatTensor<B>| tensor::<B, 2>(t).reshape([1, seq, 1, head_dim]).cast(dtype);
    let rotate_half = tensor::<B, 2>(rotate_half).cast(dtype);
    let rotated = x.clone().reshape([batch * seq * heads, head_dim]).matmul(rotate_half);
    float(x * table(cos) + rotated.reshape([batch, seq, heads, head_dim]) * table(sin))
}

/// burn's attention on `[batch, heads, seq, head_dim]` (transposed in and out, key/value heads
/// repeated, the document mask built from the segments).
pub(super) fn attention<B: Backend>(
    q: FloatTensor<B>,
    k: FloatTensor<B>,
    v: FloatTensor<B>,
    segments: Option<Arc<Vec<u32>>>,
) -> FloatTensor<B> {
    let (q, k, v): (Tensor<B, 4>, Tensor<B, 4>, Tensor<B, 4>) = (tensor(q), tensor(k), tensor(v));
    let [batch, seq, heads, head_dim] = q.dims();
    let kv_heads = k.dims()[2];
    let repeat = |t: Tensor<B, 4>| super::repeat_kv(t, heads / kv_heads);
    let (q, k, v) = (q.swap_dims(1, 2), repeat(k.swap_dims(1, 2)), repeat(v.swap_dims(1, 2)));
    let mask = segments.map(|segments| {
        let mut blocked = Vec::with_capacity(batch * seq * seq);
        for row in segments.chunks(seq) {
            for &query in row {
                blocked.extend(row.iter().map(|&key| key != query));
            }
        }
        let mask = Tensor::<B, 4, Bool>::from_data(TensorData::new(blocked, [batch, 1, seq, seq]), &q.device());
        mask.expand([batch, heads, seq, seq])
    });
    let options = AttentionModuleOptions { scale: None, softcap: None, is_causal: true };
    let out = burn::tensor::module::attention(q, k, v, mask, None, options);
    let _ = head_dim;
    float(out.swap_dims(1, 2))
}
