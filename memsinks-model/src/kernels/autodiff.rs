//! The fused kernels as autodiff ops: on a backend with fused primitives (`B::FUSED`) each block
//! is one node of the graph whose backward is the fused backward kernel, holding only what that
//! kernel needs (the inputs, and the per-row log-sum-exp or `1 / rms`); elsewhere the decomposed
//! ops, which autodiff differentiates op by op.

use std::sync::Arc;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{unary, Backward, Ops, OpsKind};
use burn::backend::autodiff::NodeId;
use burn::backend::Autodiff;
use burn::tensor::ops::{FloatTensor, IntTensor};
use burn::tensor::{DType, TensorMetadata};

use super::{decomposed, Kernels};

fn all_f32<B: Kernels>(tensors: &[&FloatTensor<B>]) -> bool {
    tensors.iter().all(|t| t.dtype() == DType::F32)
}

/// Registers each parent's gradient (parents that need none get nothing); `id` reads a parent
/// node's ID (burn-autodiff does not export the node type by name).
fn register<B: Kernels, P, const N: usize>(
    grads: &mut Gradients,
    parents: [Option<P>; N],
    values: [FloatTensor<B>; N],
    id: impl Fn(&P) -> NodeId,
) {
    for (node, grad) in parents.into_iter().zip(values) {
        if let Some(node) = node {
            grads.register::<B>(id(&node), grad);
        }
    }
}

#[derive(Debug)]
struct TokenNll;

impl<B: Kernels> Backward<B, 1> for TokenNll {
    type State = (FloatTensor<B>, IntTensor<B>, FloatTensor<B>);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (logits, targets, lse) = ops.state;
        unary::<B, _>(ops.parents, ops.node, grads, |grad| B::fused_token_nll_backward(logits, targets, lse, grad));
    }
}

#[derive(Debug)]
struct RmsNorm;

impl<B: Kernels> Backward<B, 2> for RmsNorm {
    type State = (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (x, gamma, inv_rms) = ops.state;
        let grad = grads.consume::<B>(&ops.node);
        let (dx, dgamma) = B::fused_rms_norm_backward(x, gamma, inv_rms, grad);
        register::<B, _, _>(grads, ops.parents, [dx, dgamma], |n| n.id);
    }
}

#[derive(Debug)]
struct SwiGlu;

impl<B: Kernels> Backward<B, 2> for SwiGlu {
    type State = (FloatTensor<B>, FloatTensor<B>, Option<FloatTensor<B>>);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (gate, up, mask) = ops.state;
        let grad = grads.consume::<B>(&ops.node);
        let (dgate, dup) = B::fused_swiglu_backward(gate, up, mask, grad);
        register::<B, _, _>(grads, ops.parents, [dgate, dup], |n| n.id);
    }
}

#[derive(Debug)]
struct Rope;

impl<B: Kernels> Backward<B, 1> for Rope {
    type State = (FloatTensor<B>, FloatTensor<B>);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (cos, sin) = ops.state;
        unary::<B, _>(ops.parents, ops.node, grads, |grad| B::fused_rope_backward(grad, cos, sin));
    }
}

#[derive(Debug)]
struct Attention;

/// What the attention backward recomputes the scores from.
#[derive(Clone, Debug)]
struct AttentionState<B: Kernels> {
    q: FloatTensor<B>,
    k: FloatTensor<B>,
    v: FloatTensor<B>,
    out: FloatTensor<B>,
    lse: FloatTensor<B>,
    segments: Option<Arc<Vec<u32>>>,
}

impl<B: Kernels> Backward<B, 3> for Attention {
    type State = AttentionState<B>;

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let AttentionState { q, k, v, out, lse, segments } = ops.state;
        let grad = grads.consume::<B>(&ops.node);
        let (dq, dk, dv) = B::fused_attention_backward(q, k, v, out, lse, segments, grad);
        register::<B, _, _>(grads, ops.parents, [dq, dk, dv], |n| n.id);
    }
}

impl<B: Kernels, C: CheckpointStrategy> Kernels for Autodiff<B, C> {
    fn device_memory(device: &Self::Device) -> Option<crate::memory::DeviceMemory> {
        B::device_memory(device)
    }

    fn device_memory_cleanup(device: &Self::Device) {
        B::device_memory_cleanup(device)
    }

    fn rope(
        x: FloatTensor<Self>,
        cos: FloatTensor<Self>,
        sin: FloatTensor<Self>,
        rotate_half: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        if !(B::FUSED && all_f32::<B>(&[&x.primitive])) {
            return decomposed::rope::<Self>(x, cos, sin, rotate_half);
        }
        // The tables are constants of the model (not parameters): no gradient flows to them.
        let (cos, sin) = (cos.primitive, sin.primitive);
        match Rope.prepare::<C>([x.node.clone()]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let y = B::fused_rope(x.primitive, cos.clone(), sin.clone());
                prep.finish((cos, sin), y)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::fused_rope(x.primitive, cos, sin)),
        }
    }

    fn doc_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        segments: Option<Arc<Vec<u32>>>,
    ) -> FloatTensor<Self> {
        if !(B::FUSED && all_f32::<B>(&[&q.primitive, &k.primitive, &v.primitive])) {
            return decomposed::attention::<Self>(q, k, v, segments);
        }
        let nodes = [q.node.clone(), k.node.clone(), v.node.clone()];
        match Attention.prepare::<C>(nodes).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let (q, k, v) = (q.primitive, k.primitive, v.primitive);
                let (out, lse) = B::fused_attention(q.clone(), k.clone(), v.clone(), segments.clone());
                let state = AttentionState { q, k, v, out: out.clone(), lse, segments };
                prep.finish(state, out)
            }
            OpsKind::UnTracked(prep) => {
                prep.finish(B::fused_attention(q.primitive, k.primitive, v.primitive, segments).0)
            }
        }
    }

    fn token_nll(logits: FloatTensor<Self>, targets: IntTensor<Self>) -> FloatTensor<Self> {
        if !(B::FUSED && all_f32::<B>(&[&logits.primitive])) {
            return decomposed::token_nll::<Self>(logits, targets);
        }
        match TokenNll.prepare::<C>([logits.node.clone()]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let (nll, lse) = B::fused_token_nll(logits.primitive.clone(), targets.clone());
                prep.finish((logits.primitive, targets, lse), nll)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::fused_token_nll(logits.primitive, targets).0),
        }
    }

    fn rms_norm(x: FloatTensor<Self>, gamma: FloatTensor<Self>, eps: f64) -> FloatTensor<Self> {
        if !(B::FUSED && all_f32::<B>(&[&x.primitive, &gamma.primitive])) {
            return decomposed::rms_norm::<Self>(x, gamma, eps);
        }
        match RmsNorm.prepare::<C>([x.node.clone(), gamma.node.clone()]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let (y, inv_rms) = B::fused_rms_norm(x.primitive.clone(), gamma.primitive.clone(), eps);
                prep.finish((x.primitive, gamma.primitive, inv_rms), y)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::fused_rms_norm(x.primitive, gamma.primitive, eps).0),
        }
    }

    fn swiglu(gate: FloatTensor<Self>, up: FloatTensor<Self>, mask: Option<FloatTensor<Self>>) -> FloatTensor<Self> {
        let mask_f32 = mask.as_ref().is_none_or(|m| m.primitive.dtype() == DType::F32);
        if !(B::FUSED && mask_f32 && all_f32::<B>(&[&gate.primitive, &up.primitive])) {
            return decomposed::swiglu::<Self>(gate, up, mask);
        }
        // The mask is a constant of the step (built from sequence IDs): no gradient flows to it.
        let mask = mask.map(|m| m.primitive);
        match SwiGlu.prepare::<C>([gate.node.clone(), up.node.clone()]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let h = B::fused_swiglu(gate.primitive.clone(), up.primitive.clone(), mask.clone());
                prep.finish((gate.primitive, up.primitive, mask), h)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::fused_swiglu(gate.primitive, up.primitive, mask)),
        }
    }
}
