//! The fused kernels on flex's raw f32 slices: one pass per block and direction, rows spread over
//! rayon's threads, outputs written in place into a buffer nothing else holds where that is
//! possible (flex allocates, and page-faults, a fresh buffer per op otherwise).
//!
//! The attention kernel lives in `flex_attention.rs`.

use std::sync::Arc;

use burn::backend::flex::FlexTensor;
use burn::backend::Flex;
use burn::tensor::ops::{FloatTensor, IntTensor};
use burn::tensor::{DType, TensorData, TensorMetadata};
use rayon::prelude::*;

use super::{decomposed, flex_attention, AdamWStep, Kernels};

/// Rows handed to one rayon task: enough work to amortise the task, few enough to balance.
const ROWS_PER_TASK: usize = 16;

fn is_f32(t: &FlexTensor) -> bool {
    t.dtype() == DType::F32
}

/// The tensor with a contiguous f32 buffer of exactly its elements.
pub(super) fn dense(t: FlexTensor) -> FlexTensor {
    if t.as_slice::<f32>().is_some_and(|s| s.len() == t.shape().num_elements()) {
        t
    } else {
        t.to_contiguous()
    }
}

pub(super) fn values(t: &FlexTensor) -> &[f32] {
    t.as_slice::<f32>().expect("a dense f32 tensor")
}

pub(super) fn output(data: Vec<f32>, shape: Vec<usize>) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(data, shape))
}

/// `t`'s buffer to overwrite when nothing else holds it, else a copy.
fn owned(t: FlexTensor) -> FlexTensor {
    let mut t = dense(t);
    if t.try_storage_mut::<f32>().is_some() {
        t
    } else {
        output(values(&t).to_vec(), t.shape().to_vec())
    }
}

fn indices(targets: &FlexTensor, vocab: usize) -> Vec<usize> {
    let ints: Vec<i64> = targets.clone().into_data().convert::<i64>().to_vec().expect("integer targets");
    ints.iter()
        .map(|&t| {
            assert!(t >= 0 && (t as usize) < vocab, "target {t} outside the vocabulary of {vocab}");
            t as usize
        })
        .collect()
}

/// `e^x` to within ~2 ulp for the arguments softmax and SiLU see, in a form the compiler
/// vectorises (libm's `expf` is a call per element): `x = k·ln 2 + r`, a degree-6 polynomial for
/// `e^r` on `|r| ≤ ln 2 / 2`, and `2^k` built in the exponent bits. Arguments are clamped to
/// [−87.3, 88.3]: below, the result stays at ~1e-38 (f32's smallest normal scale) where `expf`
/// would underflow to 0, which no sum or product here can tell apart; above, it stays finite.
#[inline(always)]
pub(super) fn exp(x: f32) -> f32 {
    let x = x.clamp(-87.3, 88.3);
    // Round to nearest by the 1.5 · 2^23 trick (|x · log2 e| < 2^22 here): `round()` is a libm
    // call that keeps the loop from vectorising.
    const ROUNDER: f32 = 12_582_912.0;
    let k = (x * std::f32::consts::LOG2_E + ROUNDER) - ROUNDER;
    // Cody–Waite: ln 2 split so that k · LN2_HI is exact.
    let r = x - k * 0.693_145_75 - k * 1.428_606_8e-6;
    let p = 1.0
        + r * (1.0 + r * (0.5 + r * (0.166_666_67 + r * (0.041_666_668 + r * (0.008_333_334 + r * 0.001_388_889)))));
    p * f32::from_bits(((k as i32 + 127) as u32) << 23)
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

impl Kernels for Flex {
    const FUSED: bool = true;

    fn rope(x: FlexTensor, cos: FlexTensor, sin: FlexTensor, rotate_half: FlexTensor) -> FlexTensor {
        if !(is_f32(&x) && is_f32(&cos) && is_f32(&sin)) {
            return decomposed::rope::<Self>(x, cos, sin, rotate_half);
        }
        Self::fused_rope(x, cos, sin)
    }

    fn doc_attention(q: FlexTensor, k: FlexTensor, v: FlexTensor, segments: Option<Arc<Vec<u32>>>) -> FlexTensor {
        if !(is_f32(&q) && is_f32(&k) && is_f32(&v)) {
            return decomposed::attention::<Self>(q, k, v, segments);
        }
        Self::fused_attention(q, k, v, segments).0
    }

    fn fused_rope(x: FlexTensor, cos: FlexTensor, sin: FlexTensor) -> FlexTensor {
        rope_pass(x, cos, sin, false)
    }

    fn fused_rope_backward(grad: FlexTensor, cos: FlexTensor, sin: FlexTensor) -> FlexTensor {
        rope_pass(grad, cos, sin, true)
    }

    fn fused_attention(
        q: FlexTensor,
        k: FlexTensor,
        v: FlexTensor,
        segments: Option<Arc<Vec<u32>>>,
    ) -> (FlexTensor, FlexTensor) {
        flex_attention::forward(q, k, v, segments)
    }

    fn fused_attention_backward(
        q: FlexTensor,
        k: FlexTensor,
        v: FlexTensor,
        out: FlexTensor,
        lse: FlexTensor,
        segments: Option<Arc<Vec<u32>>>,
        grad: FlexTensor,
    ) -> (FlexTensor, FlexTensor, FlexTensor) {
        flex_attention::backward(q, k, v, out, lse, segments, grad)
    }

    fn token_nll(logits: FloatTensor<Self>, targets: IntTensor<Self>) -> FloatTensor<Self> {
        if !is_f32(&logits) {
            return decomposed::token_nll::<Self>(logits, targets);
        }
        Self::fused_token_nll(logits, targets).0
    }

    fn rms_norm(x: FloatTensor<Self>, gamma: FloatTensor<Self>, eps: f64) -> FloatTensor<Self> {
        if !(is_f32(&x) && is_f32(&gamma)) {
            return decomposed::rms_norm::<Self>(x, gamma, eps);
        }
        Self::fused_rms_norm(x, gamma, eps).0
    }

    fn swiglu(gate: FloatTensor<Self>, up: FloatTensor<Self>, mask: Option<FloatTensor<Self>>) -> FloatTensor<Self> {
        if !(is_f32(&gate) && is_f32(&up) && mask.as_ref().is_none_or(is_f32)) {
            return decomposed::swiglu::<Self>(gate, up, mask);
        }
        Self::fused_swiglu(gate, up, mask)
    }

    fn fused_adamw(
        param: FlexTensor,
        grad: FlexTensor,
        moments: Option<(FlexTensor, FlexTensor)>,
        time: usize,
        c: AdamWStep,
    ) -> (FlexTensor, FlexTensor, FlexTensor) {
        let shape = param.shape().to_vec();
        let grad = dense(grad);
        let g = values(&grad);
        let mut p = owned(param);
        let (mut m, mut v, fresh) = match moments {
            Some((m, v)) => (owned(m), owned(v), false),
            None => (output(vec![0.0; g.len()], shape.clone()), output(vec![0.0; g.len()], shape.clone()), true),
        };
        let (b1, b2) = (c.beta_1, c.beta_2);
        let correct_1 = 1.0 - b1.powi(time as i32);
        let correct_2 = 1.0 - b2.powi(time as i32);
        let decay = (1.0 - c.lr * c.weight_decay as f64) as f32;
        let lr = c.lr as f32;
        const CHUNK: usize = 1 << 14;
        p.storage_mut::<f32>()
            .par_chunks_mut(CHUNK)
            .zip(m.storage_mut::<f32>().par_chunks_mut(CHUNK))
            .zip(v.storage_mut::<f32>().par_chunks_mut(CHUNK))
            .zip(g.par_chunks(CHUNK))
            .for_each(|(((p, m), v), g)| {
                for (((p, m), v), &g) in p.iter_mut().zip(m.iter_mut()).zip(v.iter_mut()).zip(g) {
                    if fresh {
                        *m = g * (1.0 - b1);
                        *v = g * g * (1.0 - b2);
                    } else {
                        *m = *m * b1 + g * (1.0 - b1);
                        *v = *v * b2 + g * g * (1.0 - b2);
                    }
                    let delta = (*m / correct_1) / ((*v / correct_2).sqrt() + c.epsilon);
                    *p = *p * decay - delta * lr;
                }
            });
        (p, m, v)
    }

    fn fused_token_nll(logits: FlexTensor, targets: FlexTensor) -> (FlexTensor, FlexTensor) {
        let logits = dense(logits);
        let [n, v] = [logits.shape()[0], logits.shape()[1]];
        let targets = indices(&targets, v);
        let x = values(&logits);
        let mut nll = vec![0.0f32; n];
        let mut lse = vec![0.0f32; n];
        x.par_chunks(v)
            .zip(nll.par_iter_mut().zip(lse.par_iter_mut()))
            .zip(targets.par_iter())
            .with_min_len(ROWS_PER_TASK)
            .for_each(|((row, (nll, lse)), &t)| {
                let max = row.iter().fold(f32::NEG_INFINITY, |m, &z| m.max(z));
                let sum: f32 = row.iter().map(|&z| exp(z - max)).sum();
                *lse = max + sum.ln();
                *nll = *lse - row[t];
            });
        (output(nll, vec![n]), output(lse, vec![n]))
    }

    fn fused_token_nll_backward(
        logits: FlexTensor,
        targets: FlexTensor,
        lse: FlexTensor,
        grad: FlexTensor,
    ) -> FlexTensor {
        let mut out = owned(logits);
        let v = out.shape()[1];
        let targets = indices(&targets, v);
        let (lse, grad) = (dense(lse), dense(grad));
        let (lse, grad) = (values(&lse), values(&grad));
        out.storage_mut::<f32>()
            .par_chunks_mut(v)
            .zip(targets.par_iter())
            .enumerate()
            .with_min_len(ROWS_PER_TASK)
            .for_each(|(i, (row, &t))| {
                let (l, g) = (lse[i], grad[i]);
                for z in row.iter_mut() {
                    *z = g * exp(*z - l);
                }
                row[t] -= g;
            });
        out
    }

    fn fused_rms_norm(x: FlexTensor, gamma: FlexTensor, eps: f64) -> (FlexTensor, FlexTensor) {
        let (x, gamma) = (dense(x), dense(gamma));
        let [n, d] = [x.shape()[0], x.shape()[1]];
        let (xs, g) = (values(&x), values(&gamma));
        let mut y = vec![0.0f32; n * d];
        let mut inv = vec![0.0f32; n];
        y.par_chunks_mut(d).zip(xs.par_chunks(d)).zip(inv.par_iter_mut()).with_min_len(ROWS_PER_TASK).for_each(
            |((y, x), inv)| {
                let mean = x.iter().map(|&v| v * v).sum::<f32>() / d as f32;
                *inv = 1.0 / (mean + eps as f32).sqrt();
                for ((y, &x), &g) in y.iter_mut().zip(x).zip(g) {
                    *y = x * *inv * g;
                }
            },
        );
        (output(y, vec![n, d]), output(inv, vec![n]))
    }

    fn fused_rms_norm_backward(
        x: FlexTensor,
        gamma: FlexTensor,
        inv_rms: FlexTensor,
        grad: FlexTensor,
    ) -> (FlexTensor, FlexTensor) {
        let (x, gamma, inv_rms, grad) = (dense(x), dense(gamma), dense(inv_rms), dense(grad));
        let [n, d] = [x.shape()[0], x.shape()[1]];
        let (xs, g, inv, dy) = (values(&x), values(&gamma), values(&inv_rms), values(&grad));
        let mut dx = vec![0.0f32; n * d];
        // dx_i = r_i · (dy_i · γ − x_i · r_i² · mean_j(dy_ij γ_j x_ij)); dγ = Σ_i dy_i · x_i · r_i.
        let chunk = ROWS_PER_TASK * d;
        let dgamma = dx
            .par_chunks_mut(chunk)
            .zip(xs.par_chunks(chunk).zip(dy.par_chunks(chunk)))
            .zip(inv.par_chunks(ROWS_PER_TASK))
            .map(|((dx, (x, dy)), inv)| {
                let mut partial = vec![0.0f32; d];
                for (((dx, x), dy), &r) in dx.chunks_mut(d).zip(x.chunks(d)).zip(dy.chunks(d)).zip(inv) {
                    let a = dy.iter().zip(g).zip(x).map(|((&dy, &g), &x)| dy * g * x).sum::<f32>() / d as f32;
                    let c = r * r * a;
                    for ((((dx, &x), &dy), &g), p) in dx.iter_mut().zip(x).zip(dy).zip(g).zip(partial.iter_mut()) {
                        *dx = r * (dy * g - x * c);
                        *p += dy * x * r;
                    }
                }
                partial
            })
            // Collected in row order and summed in that order: rayon's `reduce` pairs partials as
            // the work happened to split between threads, so dγ, and every step after it, could
            // differ between two runs of the same training.
            .collect::<Vec<_>>()
            .into_iter()
            .fold(vec![0.0f32; d], |mut a, b| {
                a.iter_mut().zip(&b).for_each(|(a, b)| *a += b);
                a
            });
        (output(dx, vec![n, d]), output(dgamma, vec![d]))
    }

    fn fused_swiglu(gate: FlexTensor, up: FlexTensor, mask: Option<FlexTensor>) -> FlexTensor {
        let up = dense(up);
        let mut out = owned(gate);
        let w = out.shape()[1];
        let mask = mask.map(dense);
        let (u, m) = (values(&up), mask.as_ref().map(values));
        out.storage_mut::<f32>()
            .par_chunks_mut(w)
            .zip(u.par_chunks(w))
            .enumerate()
            .with_min_len(ROWS_PER_TASK)
            .for_each(|(i, (g, u))| {
                let m = m.map(|m| if m.len() == w { m } else { &m[i * w..(i + 1) * w] });
                match m {
                    Some(m) => g.iter_mut().zip(u).zip(m).for_each(|((g, &u), &m)| *g = *g * sigmoid(*g) * u * m),
                    None => g.iter_mut().zip(u).for_each(|(g, &u)| *g = *g * sigmoid(*g) * u),
                }
            });
        out
    }

    fn fused_swiglu_backward(
        gate: FlexTensor,
        up: FlexTensor,
        mask: Option<FlexTensor>,
        grad: FlexTensor,
    ) -> (FlexTensor, FlexTensor) {
        // With s = σ(g): d/dg [g s] = s (1 + g (1 − s)). Both gradients overwrite the saved inputs.
        let (mut dg, mut du) = (owned(gate), owned(up));
        let w = dg.shape()[1];
        let (mask, grad) = (mask.map(dense), dense(grad));
        let (m, dh) = (mask.as_ref().map(values), values(&grad));
        dg.storage_mut::<f32>()
            .par_chunks_mut(w)
            .zip(du.storage_mut::<f32>().par_chunks_mut(w))
            .zip(dh.par_chunks(w))
            .enumerate()
            .with_min_len(ROWS_PER_TASK)
            .for_each(|(i, ((g, u), dh))| {
                let m = m.map(|m| if m.len() == w { m } else { &m[i * w..(i + 1) * w] });
                for j in 0..w {
                    let (x, y) = (g[j], u[j]);
                    let s = sigmoid(x);
                    let scale = dh[j] * m.map_or(1.0, |m| m[j]);
                    g[j] = scale * y * s * (1.0 + x * (1.0 - s));
                    u[j] = scale * x * s;
                }
            });
        (dg, du)
    }
}

/// RoPE over `x` `[b, t, h, d]` with `[t, d]` tables, or (`backward`) its transpose applied to a
/// gradient: `y_j = x_j cos_j + rot(x)_j sin_j` with `rot(x)_j = −x_{j+d/2}` for `j < d/2` and
/// `x_{j−d/2}` after; the transpose is `dx_j = dy_j cos_j + rotᵀ(dy ∘ sin)_j`.
fn rope_pass(x: FlexTensor, cos: FlexTensor, sin: FlexTensor, backward: bool) -> FlexTensor {
    let x = dense(x);
    let (cos, sin) = (dense(cos), dense(sin));
    let dims = x.shape().to_vec();
    let (t, heads, d) = (dims[1], dims[2], dims[3]);
    let half = d / 2;
    let (c, s, xs) = (values(&cos), values(&sin), values(&x));
    let mut y = vec![0.0f32; xs.len()];
    y.par_chunks_mut(heads * d).zip(xs.par_chunks(heads * d)).enumerate().with_min_len(ROWS_PER_TASK).for_each(
        |(row, (y, x))| {
            let pos = row % t;
            let (c, s) = (&c[pos * d..(pos + 1) * d], &s[pos * d..(pos + 1) * d]);
            for (y, x) in y.chunks_mut(d).zip(x.chunks(d)) {
                for j in 0..half {
                    if backward {
                        y[j] = x[j] * c[j] + x[j + half] * s[j + half];
                        y[j + half] = x[j + half] * c[j + half] - x[j] * s[j];
                    } else {
                        y[j] = x[j] * c[j] - x[j + half] * s[j];
                        y[j + half] = x[j + half] * c[j + half] + x[j] * s[j + half];
                    }
                }
            }
        },
    );
    output(y, dims)
}
