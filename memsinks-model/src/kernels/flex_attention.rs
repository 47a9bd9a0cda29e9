//! The fused attention of flex (`Kernels::fused_attention` and its backward) on raw f32
//! slices: causal, with document segments and grouped key/value heads, flash-style (the
//! forward keeps each row's log-sum-exp; the backward recomputes one head's scores at a time, so
//! `[batch, heads, seq, seq]` is never stored), with `gemm` on strided views of the projections'
//! `[batch, seq, heads, head_dim]` layout (no transposes, no repeated key/value heads).

use std::sync::Arc;

use burn::backend::flex::FlexTensor;
use burn::tensor::TensorMetadata;
use rayon::prelude::*;

use super::flex::{dense, exp, output, values};

/// A raw pointer the rayon tasks of one kernel share; each task writes a disjoint region.
#[derive(Clone, Copy)]
struct Shared(*mut f32);
// SAFETY: the kernels below hand each task regions no other task reads or writes.
unsafe impl Send for Shared {}
unsafe impl Sync for Shared {}

/// A strided matrix view for `gemm`: base pointer, row stride, column stride (elements).
#[derive(Clone, Copy)]
struct View {
    ptr: *const f32,
    rs: isize,
    cs: isize,
}

impl View {
    fn t(self) -> Self {
        Self { ptr: self.ptr, rs: self.cs, cs: self.rs }
    }
}

/// `dst (m × n) = [dst +] lhs (m × k) · rhs (k × n)` on one thread.
///
/// # Safety
/// Every view must address `m × k`, `k × n` and `m × n` valid elements, and `dst` must not
/// overlap the others.
unsafe fn matmul(m: usize, n: usize, k: usize, dst: View, accumulate: bool, lhs: View, rhs: View) {
    gemm::gemm(
        m,
        n,
        k,
        dst.ptr as *mut f32,
        dst.cs,
        dst.rs,
        accumulate,
        lhs.ptr,
        lhs.cs,
        lhs.rs,
        rhs.ptr,
        rhs.cs,
        rhs.rs,
        if accumulate { 1.0 } else { 0.0 },
        1.0,
        false,
        false,
        false,
        gemm::Parallelism::None,
    );
}

/// Shapes of an attention call: `q` `[b, t, h, d]`, `k`/`v` `[b, t, kv, d]`.
#[derive(Clone, Copy)]
struct Heads {
    b: usize,
    t: usize,
    h: usize,
    kv: usize,
    d: usize,
}

impl Heads {
    fn of(q: &FlexTensor, k: &FlexTensor) -> Self {
        let (qs, ks) = (q.shape(), k.shape());
        Self { b: qs[0], t: qs[1], h: qs[2], kv: ks[2], d: qs[3] }
    }

    /// The `t × d` matrix of batch `i`, head `head` of a `[b, t, heads, d]` buffer.
    fn view(&self, base: *const f32, heads: usize, i: usize, head: usize) -> View {
        let offset = (i * self.t * heads + head) * self.d;
        View { ptr: unsafe { base.add(offset) }, rs: (heads * self.d) as isize, cs: 1 }
    }
}

/// Whether query `r` may see key `c` (causal, same segment).
fn visible(segments: Option<&[u32]>, r: usize, c: usize) -> bool {
    c <= r && segments.is_none_or(|s| s[r] == s[c])
}

/// Causal attention with document segments: the output `[b, t, h, d]` and each row's
/// log-sum-exp `[b, h, t]`, one rayon task per (batch, head).
pub(super) fn forward(
    q: FlexTensor,
    k: FlexTensor,
    v: FlexTensor,
    segments: Option<Arc<Vec<u32>>>,
) -> (FlexTensor, FlexTensor) {
    let (q, k, v) = (dense(q), dense(k), dense(v));
    let s = Heads::of(&q, &k);
    let (t, group) = (s.t, s.h / s.kv);
    let scale = 1.0 / (s.d as f32).sqrt();
    let mut out = vec![0.0f32; s.b * t * s.h * s.d];
    let mut lse = vec![0.0f32; s.b * s.h * t];
    let (qp, kp, vp) = (values(&q).as_ptr() as usize, values(&k).as_ptr() as usize, values(&v).as_ptr() as usize);
    let (op, lp) = (Shared(out.as_mut_ptr()), Shared(lse.as_mut_ptr()));
    (0..s.b * s.h).into_par_iter().for_each_init(
        || vec![0.0f32; t * t],
        |scores, task| {
            let (i, head) = (task / s.h, task % s.h);
            let segs = segments.as_deref().map(|seg| &seg[i * t..(i + 1) * t]);
            let (qv, kv_) = (s.view(qp as *const f32, s.h, i, head), s.view(kp as *const f32, s.kv, i, head / group));
            let vv = s.view(vp as *const f32, s.kv, i, head / group);
            let sv = View { ptr: scores.as_ptr(), rs: t as isize, cs: 1 };
            // SAFETY: the views lie inside q, k, v and this task's scratch; the output rows of
            // (i, head) and its log-sum-exp row are this task's alone.
            unsafe { matmul(t, t, s.d, sv, false, qv, kv_.t()) };
            let lse_row = unsafe { std::slice::from_raw_parts_mut({ lp }.0.add(task * t), t) };
            for (r, row) in scores.chunks_mut(t).enumerate() {
                let mut max = f32::NEG_INFINITY;
                for (c, x) in row.iter_mut().enumerate() {
                    *x = if visible(segs, r, c) { *x * scale } else { f32::NEG_INFINITY };
                    max = max.max(*x);
                }
                let mut sum = 0.0;
                for x in row.iter_mut() {
                    *x = exp(*x - max);
                    sum += *x;
                }
                let inv = 1.0 / sum;
                row.iter_mut().for_each(|x| *x *= inv);
                lse_row[r] = max + sum.ln();
            }
            let ov = s.view({ op }.0, s.h, i, head);
            unsafe { matmul(t, s.d, t, ov, false, sv, vv) };
        },
    );
    (output(out, vec![s.b, t, s.h, s.d]), output(lse, vec![s.b, s.h, t]))
}

/// The gradients of `q`, `k` and `v` from the output gradient `grad`, the scores of one head
/// at a time recomputed from the forward's log-sum-exp.
#[allow(clippy::too_many_arguments)]
pub(super) fn backward(
    q: FlexTensor,
    k: FlexTensor,
    v: FlexTensor,
    out: FlexTensor,
    lse: FlexTensor,
    segments: Option<Arc<Vec<u32>>>,
    grad: FlexTensor,
) -> (FlexTensor, FlexTensor, FlexTensor) {
    let (q, k, v, out, lse, grad) = (dense(q), dense(k), dense(v), dense(out), dense(lse), dense(grad));
    let s = Heads::of(&q, &k);
    let (t, group) = (s.t, s.h / s.kv);
    let scale = 1.0 / (s.d as f32).sqrt();
    let mut dq = vec![0.0f32; q.shape().num_elements()];
    let mut dk = vec![0.0f32; k.shape().num_elements()];
    let mut dv = vec![0.0f32; v.shape().num_elements()];
    let ptr = |t: &FlexTensor| values(t).as_ptr() as usize;
    let (qp, kp, vp, op, gp) = (ptr(&q), ptr(&k), ptr(&v), ptr(&out), ptr(&grad));
    let lse = values(&lse);
    let (dqp, dkp, dvp) = (Shared(dq.as_mut_ptr()), Shared(dk.as_mut_ptr()), Shared(dv.as_mut_ptr()));
    // One task per (batch, key/value head): it owns that head's dK and dV and its query
    // heads' dQ, and accumulates the group's contributions in order (no atomics).
    (0..s.b * s.kv).into_par_iter().for_each_init(
        || (vec![0.0f32; t * t], vec![0.0f32; t * t], vec![0.0f32; t]),
        |(p, dp, row_dot), task| {
            let (i, g) = (task / s.kv, task % s.kv);
            let segs = segments.as_deref().map(|seg| &seg[i * t..(i + 1) * t]);
            let at = |base: usize, heads: usize, head: usize| s.view(base as *const f32, heads, i, head);
            let (kv_, vv) = (at(kp, s.kv, g), at(vp, s.kv, g));
            let (dkv, dvv) = (s.view({ dkp }.0, s.kv, i, g), s.view({ dvp }.0, s.kv, i, g));
            let pv = View { ptr: p.as_ptr(), rs: t as isize, cs: 1 };
            let dpv = View { ptr: dp.as_ptr(), rs: t as isize, cs: 1 };
            for (n, head) in (g * group..(g + 1) * group).enumerate() {
                let (qv, ov, gv) = (at(qp, s.h, head), at(op, s.h, head), at(gp, s.h, head));
                let dqv = s.view({ dqp }.0, s.h, i, head);
                let lse_row = &lse[(i * s.h + head) * t..(i * s.h + head + 1) * t];
                // SAFETY: as in the forward; dQ of `head` and dK, dV of `g` are this task's.
                unsafe {
                    // P = exp(scale · Q Kᵀ − lse), recomputed.
                    matmul(t, t, s.d, pv, false, qv, kv_.t());
                    for (r, row) in p.chunks_mut(t).enumerate() {
                        for (c, x) in row.iter_mut().enumerate() {
                            *x = if visible(segs, r, c) { exp(*x * scale - lse_row[r]) } else { 0.0 };
                        }
                    }
                    // dV += Pᵀ dO;  dP = dO Vᵀ.
                    matmul(t, s.d, t, dvv, n > 0, pv.t(), gv);
                    matmul(t, t, s.d, dpv, false, gv, vv.t());
                    // D_r = Σ_j dO_rj O_rj;  dS = P ∘ (dP − D) · scale.
                    for (r, d) in row_dot.iter_mut().enumerate() {
                        let (o, go) = (ov.ptr.offset(r as isize * ov.rs), gv.ptr.offset(r as isize * gv.rs));
                        *d = (0..s.d).map(|j| *o.add(j) * *go.add(j)).sum();
                    }
                    for ((prow, dprow), &d) in p.chunks(t).zip(dp.chunks_mut(t)).zip(row_dot.iter()) {
                        for (x, &pr) in dprow.iter_mut().zip(prow) {
                            *x = pr * (*x - d) * scale;
                        }
                    }
                    // dQ = dS K;  dK += dSᵀ Q.
                    matmul(t, s.d, t, dqv, false, dpv, kv_);
                    matmul(t, s.d, t, dkv, n > 0, dpv.t(), qv);
                }
            }
        },
    );
    (output(dq, q.shape().to_vec()), output(dk, k.shape().to_vec()), output(dv, v.shape().to_vec()))
}
