//! The whole decoder in one file: RoPE, grouped-query attention, the block, the LM.
//!
//! Llama layout: token embedding → `n_layers` × (RMSNorm → causal self-attention with RoPE →
//! residual; RMSNorm → MemSink SwiGLU MLP → residual) → RMSNorm → LM head. No biases.

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::nn::{Embedding, EmbeddingConfig, Initializer, Linear, RmsNorm, RmsNormConfig};
use burn::tensor::backend::Backend;
use std::sync::Arc;

use burn::tensor::activation::softmax;
use burn::tensor::{Bool, DType, FloatDType, Int, Tensor, TensorData};

use crate::config::ModelConfig;
use crate::kernels::Kernels;
use crate::layout::SeqLayout;
use crate::mask::SinkPool;
use crate::mlp::{normal_linear, HiddenMask, MemSinkMlp, MlpMode, SinkGeometry};
use crate::ModelError;

/// Rotary position embedding in the Llama ("rotate half") convention, so exported q/k weights
/// need no permutation: `x * cos + rotate_half(x) * sin`, frequencies `theta^(-2i/head_dim)`.
///
/// It is applied in the `[batch, seq, heads, head_dim]` layout the projections produce, where the
/// tensor is still contiguous; `rotate_half` is a matmul with a fixed signed permutation, which
/// keeps every operand contiguous (slicing the last dimension would force strided copies).
#[derive(Module, Debug)]
pub struct Rope<B: Backend> {
    cos: Tensor<B, 2>,
    sin: Tensor<B, 2>,
    rotate_half: Tensor<B, 2>,
}

impl<B: Backend> Rope<B> {
    /// Tables for positions `0..max_seq_len`.
    pub fn new(head_dim: usize, max_seq_len: usize, theta: f64, device: &B::Device) -> Self {
        let half = head_dim / 2;
        let mut cos = Vec::with_capacity(max_seq_len * head_dim);
        let mut sin = Vec::with_capacity(max_seq_len * head_dim);
        for pos in 0..max_seq_len {
            for j in 0..head_dim {
                let inv_freq = theta.powf(-2.0 * (j % half) as f64 / head_dim as f64);
                let angle = pos as f64 * inv_freq;
                cos.push(angle.cos() as f32);
                sin.push(angle.sin() as f32);
            }
        }
        // (x @ R)[j] = -x[j + half] for j < half, x[j - half] otherwise.
        let mut rot = vec![0.0f32; head_dim * head_dim];
        for j in 0..half {
            rot[(j + half) * head_dim + j] = -1.0;
            rot[j * head_dim + j + half] = 1.0;
        }
        let table = |v, rows| Tensor::from_data(TensorData::new(v, [rows, head_dim]), device);
        Self { cos: table(cos, max_seq_len), sin: table(sin, max_seq_len), rotate_half: table(rot, head_dim) }
    }
}

impl<B: Kernels> Rope<B> {
    /// Rotates `[batch, seq, heads, head_dim]` for positions `0..seq`, in `x`'s float type (the
    /// tables are kept in f32 and cast for a half-precision forward).
    pub fn apply(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        crate::kernels::rope(x, self.cos.clone(), self.sin.clone(), self.rotate_half.clone())
    }
}

/// Causal self-attention with grouped key/value heads.
#[derive(Module, Debug)]
pub struct Attention<B: Backend> {
    /// Query projection.
    pub q_proj: Linear<B>,
    /// Key projection.
    pub k_proj: Linear<B>,
    /// Value projection.
    pub v_proj: Linear<B>,
    /// Output projection.
    pub o_proj: Linear<B>,
    n_heads: usize,
    n_kv_heads: usize,
}

impl<B: Backend> Attention<B> {
    fn new(cfg: &ModelConfig, proj_std: f64, device: &B::Device) -> Self {
        let hd = cfg.head_dim();
        let linear = |i, o, std| normal_linear(i, o, std, device);
        Self {
            q_proj: linear(cfg.d_model, cfg.n_heads * hd, cfg.init_std),
            k_proj: linear(cfg.d_model, cfg.n_kv_heads * hd, cfg.init_std),
            v_proj: linear(cfg.d_model, cfg.n_kv_heads * hd, cfg.init_std),
            o_proj: linear(cfg.n_heads * hd, cfg.d_model, proj_std),
            n_heads: cfg.n_heads,
            n_kv_heads: cfg.n_kv_heads,
        }
    }
}

impl<B: Kernels> Attention<B> {
    /// `x`: `[batch, seq, d_model]`; `segments`: the document of every token of packed rows
    /// (`batch × seq`), whose queries see only their own document's keys (on top of the causal
    /// mask). Each key/value head serves `n_heads / n_kv_heads` consecutive query heads.
    pub fn forward(&self, x: Tensor<B, 3>, rope: &Rope<B>, segments: Option<Arc<Vec<u32>>>) -> Tensor<B, 3> {
        let [batch, seq, d_model] = x.dims();
        let hd = d_model / self.n_heads;
        let split = |t: Tensor<B, 3>, n: usize| t.reshape([batch, seq, n, hd]);
        let q = rope.apply(split(self.q_proj.forward(x.clone()), self.n_heads));
        let k = rope.apply(split(self.k_proj.forward(x.clone()), self.n_kv_heads));
        let v = split(self.v_proj.forward(x), self.n_kv_heads);
        let out = crate::kernels::attention(q, k, v, segments);
        self.o_proj.forward(out.reshape([batch, seq, d_model]))
    }
}

impl<B: Kernels> Attention<B> {
    /// The attention of [`MemSinkLm::forward_position_isolated`]: queries from `x`, each
    /// attending to the keys/values of `context` at the earlier positions (of its own document)
    /// and to its own key/value from `x`. Written with burn's ops (attribution only: `[b, h, t, t]`
    /// scores are materialised).
    fn forward_isolated(
        &self,
        x: Tensor<B, 3>,
        context: Tensor<B, 3>,
        rope: &Rope<B>,
        segments: Option<Arc<Vec<u32>>>,
    ) -> Tensor<B, 3> {
        let [batch, seq, d_model] = x.dims();
        let hd = d_model / self.n_heads;
        let groups = self.n_heads / self.n_kv_heads;
        // [b, t, n, hd] → [b, heads, t, hd], key/value heads repeated for their query heads.
        let heads = |t: Tensor<B, 3>, n: usize, rotate: bool| {
            let t = t.reshape([batch, seq, n, hd]);
            let t = if rotate { rope.apply(t) } else { t };
            crate::kernels::repeat_kv(t.swap_dims(1, 2), groups)
        };
        let q = rope.apply(self.q_proj.forward(x.clone()).reshape([batch, seq, self.n_heads, hd])).swap_dims(1, 2);
        let (k_own, v_own) = (
            heads(self.k_proj.forward(x.clone()), self.n_kv_heads, true),
            heads(self.v_proj.forward(x), self.n_kv_heads, false),
        );
        let (k_ctx, v_ctx) = (
            heads(self.k_proj.forward(context.clone()), self.n_kv_heads, true),
            heads(self.v_proj.forward(context), self.n_kv_heads, false),
        );
        let inv_sqrt = 1.0 / (hd as f64).sqrt();
        // Earlier positions of the same document only: the diagonal comes from `x`.
        let mut blocked = Vec::with_capacity(batch * seq * seq);
        for row in 0..batch {
            let doc = |i: usize| segments.as_ref().map_or(0, |s| s[row * seq + i]);
            for query in 0..seq {
                blocked.extend((0..seq).map(|key| key >= query || doc(key) != doc(query)));
            }
        }
        let blocked = Tensor::<B, 4, Bool>::from_data(TensorData::new(blocked, [batch, 1, seq, seq]), &q.device())
            .expand([batch, self.n_heads, seq, seq]);
        let earlier =
            q.clone().matmul(k_ctx.swap_dims(2, 3)).mul_scalar(inv_sqrt).mask_fill(blocked, f32::NEG_INFINITY);
        let own = (q * k_own).sum_dim(3).mul_scalar(inv_sqrt);
        let p = softmax(Tensor::cat(vec![earlier, own], 3), 3);
        let (p_earlier, p_own) = (p.clone().narrow(3, 0, seq), p.narrow(3, seq, 1));
        let out = p_earlier.matmul(v_ctx) + p_own * v_own;
        self.o_proj.forward(out.swap_dims(1, 2).reshape([batch, seq, d_model]))
    }
}

/// One pre-norm transformer block.
#[derive(Module, Debug)]
pub struct Block<B: Backend> {
    /// Norm before attention (`input_layernorm`).
    pub attn_norm: RmsNorm<B>,
    /// Self-attention.
    pub attn: Attention<B>,
    /// Norm before the MLP (`post_attention_layernorm`).
    pub mlp_norm: RmsNorm<B>,
    /// The MemSink MLP.
    pub mlp: MemSinkMlp<B>,
}

/// A Llama-style causal LM whose MLPs carry a sink pool.
#[derive(Module, Debug)]
pub struct MemSinkLm<B: Backend> {
    /// Token embedding.
    pub embed: Embedding<B>,
    /// Transformer blocks.
    pub blocks: Vec<Block<B>>,
    /// Final norm.
    pub norm: RmsNorm<B>,
    /// LM head; `None` when tied to the embedding.
    pub head: Option<Linear<B>>,
    /// RoPE tables.
    pub rope: Rope<B>,
    #[module(skip)]
    sinks: SinkGeometry,
}

impl ModelConfig {
    /// Builds the model with normal(0, `init_std`) weights; residual projections use
    /// `init_std / sqrt(2 * n_layers)` (GPT-2's scaled initialisation).
    pub fn init<B: Backend>(&self, device: &B::Device) -> Result<MemSinkLm<B>, ModelError> {
        self.validate()?;
        let proj_std = self.init_std / (2.0 * self.n_layers as f64).sqrt();
        let norm = || RmsNormConfig::new(self.d_model).with_epsilon(self.norm_eps).init(device);
        let blocks = (0..self.n_layers)
            .map(|_| Block {
                attn_norm: norm(),
                attn: Attention::new(self, proj_std, device),
                mlp_norm: norm(),
                mlp: MemSinkMlp::new(self.d_model, self.d_hidden, self.init_std, proj_std, device),
            })
            .collect();
        let head = (!self.tie_embeddings).then(|| normal_linear(self.d_model, self.vocab_size, self.init_std, device));
        let model = MemSinkLm {
            embed: EmbeddingConfig::new(self.vocab_size, self.d_model)
                .with_initializer(Initializer::Normal { mean: 0.0, std: self.init_std })
                .init(device),
            blocks,
            norm: norm(),
            head,
            rope: Rope::new(self.head_dim(), self.max_seq_len, self.rope_theta, device),
            sinks: self.sink_geometry(),
        };
        // burn initialises parameters lazily, and a clone of an uninitialised parameter draws its
        // own random values: a saved or forked copy would then differ from the model in use.
        // Drawing every weight now, in module order, also makes seeded initialisation reproducible.
        model.visit(&mut Materialize);
        Ok(model)
    }

    /// The sink geometry of this configuration.
    pub fn sink_geometry(&self) -> SinkGeometry {
        SinkGeometry {
            num_general: self.num_general(),
            pool: self.sink_pool(),
            p_gen: self.p_gen,
            p_mem: self.p_mem,
            compact_below: self.compact_below,
        }
    }
}

/// A hook on the MLP hidden activations: `(layer, h) -> h'` (see [`MemSinkLm::forward_hooked`]).
pub type HiddenHook<'a, B> = dyn FnMut(usize, Tensor<B, 3>) -> Tensor<B, 3> + 'a;

impl<B: Kernels> MemSinkLm<B> {
    /// Logits `[batch, seq, vocab]` for `tokens` (`[batch, seq]`) with the MLPs in `mode`.
    ///
    /// # Panics
    /// If `layout` does not describe `tokens`' shape or the sequence is longer than the RoPE table.
    pub fn forward(&self, tokens: Tensor<B, 2, Int>, layout: &SeqLayout, mode: &MlpMode) -> Tensor<B, 3> {
        self.forward_with(tokens, layout, mode, None)
    }

    /// [`MemSinkLm::forward`] with `hook(layer, h)` applied to every block's MLP hidden
    /// activations (after the mode's mask, before the down projection): neuron localization
    /// observes, zeroes or scales units through it.
    pub fn forward_hooked(
        &self,
        tokens: Tensor<B, 2, Int>,
        layout: &SeqLayout,
        mode: &MlpMode,
        hook: &mut HiddenHook<'_, B>,
    ) -> Tensor<B, 3> {
        self.forward_with(tokens, layout, mode, Some(hook))
    }

    /// The forward pass; without a hook the MLPs may compute with their active units alone
    /// ([`SinkGeometry::compact_hidden_mask`]), with one they keep every unit (hooks index units).
    fn forward_with(
        &self,
        tokens: Tensor<B, 2, Int>,
        layout: &SeqLayout,
        mode: &MlpMode,
        mut hook: Option<&mut HiddenHook<'_, B>>,
    ) -> Tensor<B, 3> {
        let [batch, seq] = tokens.dims();
        assert_eq!((layout.batch, layout.seq_len), (batch, seq), "SeqLayout does not match the token batch");
        let device = tokens.device();
        // Packed rows: queries see only their own document (segments, not IDs, decide).
        let segments = layout.is_packed().then(|| layout.segments.clone().map(Arc::new)).flatten();
        let mut x = self.embed.forward(tokens);
        let masks = self.layer_masks(mode, layout, hook.is_none(), x.dtype(), &device);
        for ((layer, block), mask) in self.blocks.iter().enumerate().zip(masks) {
            x = x.clone() + block.attn.forward(norm(&block.attn_norm, x), &self.rope, segments.clone());
            let hidden = |h| match hook.as_mut() {
                Some(hook) => hook(layer, h),
                None => h,
            };
            x = x.clone() + block.mlp.forward_hooked(norm(&block.mlp_norm, x), mask.as_ref(), hidden);
        }
        self.logits(x)
    }

    /// The hidden mask of every block for `mode` (`compact`: gather the active units alone, see
    /// [`SinkGeometry::compact_hidden_mask`]). Masks are built in f32 on the host and computed with
    /// in the activations' float type `dtype` (a half-precision forward of `cast_params`): burn's
    /// GPU kernels read a mismatched operand as the other type's bits, without an error.
    fn layer_masks(
        &self,
        mode: &MlpMode,
        layout: &SeqLayout,
        compact: bool,
        dtype: DType,
        device: &B::Device,
    ) -> Vec<Option<HiddenMask<B>>> {
        let mask_of = |layer| {
            let mask = match compact {
                true => self.sinks.compact_hidden_mask::<B>(mode, layout, layer, device),
                false => self.sinks.hidden_mask::<B>(mode, layout, layer, device),
            };
            mask.map(|m| m.cast(dtype))
        };
        match self.sinks.pool.scheme().is_layer_dependent() {
            true => (0..self.blocks.len()).map(mask_of).collect(),
            false => vec![mask_of(0); self.blocks.len()],
        }
    }

    /// Final norm and LM head.
    fn logits(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let x = norm(&self.norm, x);
        match &self.head {
            Some(head) => head.forward(x),
            None => x.matmul(self.embed.weight.val().transpose().unsqueeze()),
        }
    }

    /// Logits `[batch, seq, vocab]` with the MLP hidden activations of block `layer` multiplied
    /// by `scale` (`[batch, seq, hidden]`) *one position at a time*: the logits at position `i`
    /// are those of the sequence cut after `i` with only position `i`'s activations scaled and
    /// every earlier position's intact. That is the attribution of knowledge neurons (Dai et al.
    /// 2022) and MemPi's integrated gradients, which run one prefix per position; one pass does
    /// every position here. A clean stream carries the unscaled model; in the blocks above
    /// `layer` each query of the scaled stream attends to the clean keys and values of the
    /// earlier positions and to its own scaled ones (causality keeps a position's scaling out of
    /// every earlier position, so nothing else differs from the prefix run).
    ///
    /// # Panics
    /// If `layout` does not describe `tokens`, `layer` is not a block or `scale` has another shape.
    pub fn forward_position_isolated(
        &self,
        tokens: Tensor<B, 2, Int>,
        layout: &SeqLayout,
        mode: &MlpMode,
        layer: usize,
        scale: Tensor<B, 3>,
    ) -> Tensor<B, 3> {
        let [batch, seq] = tokens.dims();
        assert_eq!((layout.batch, layout.seq_len), (batch, seq), "SeqLayout does not match the token batch");
        assert!(layer < self.blocks.len(), "layer {layer} of {} blocks", self.blocks.len());
        assert_eq!(scale.dims(), [batch, seq, self.sinks.hidden()], "one scale per position and unit");
        let device = tokens.device();
        let segments = layout.is_packed().then(|| layout.segments.clone().map(Arc::new)).flatten();
        let mut clean = self.embed.forward(tokens);
        let masks = self.layer_masks(mode, layout, false, clean.dtype(), &device);
        let mut scaled = None;
        for ((l, block), mask) in self.blocks.iter().enumerate().zip(masks) {
            let mlp = |x: Tensor<B, 3>, hook: &dyn Fn(Tensor<B, 3>) -> Tensor<B, 3>| {
                x.clone() + block.mlp.forward_hooked(norm(&block.mlp_norm, x), mask.as_ref(), hook)
            };
            // Normalised once: the clean stream's attention input is also the scaled stream's
            // context (the earlier positions' keys and values).
            let clean_normed = norm(&block.attn_norm, clean.clone());
            scaled = scaled.map(|s: Tensor<B, 3>| {
                let own = block.attn.forward_isolated(
                    norm(&block.attn_norm, s.clone()),
                    clean_normed.clone(),
                    &self.rope,
                    segments.clone(),
                );
                mlp(s + own, &|h| h)
            });
            // The clean stream needs no gradient: the scale never reaches it.
            clean = (clean + block.attn.forward(clean_normed, &self.rope, segments.clone())).detach();
            if l == layer {
                scaled = Some(mlp(clean.clone(), &|h| h * scale.clone()));
            }
            clean = mlp(clean, &|h| h).detach();
        }
        self.logits(scaled.expect("layer is a block"))
    }
}

/// burn's `RmsNorm` computed by the backend's fused kernel ([`crate::kernels::rms_norm`]).
fn norm<B: Kernels>(norm: &RmsNorm<B>, x: Tensor<B, 3>) -> Tensor<B, 3> {
    crate::kernels::rms_norm(x, norm.gamma.val(), norm.epsilon)
}

impl<B: Backend> MemSinkLm<B> {
    /// The model with every parameter cast to `dtype`, for a mixed-precision step: the casts are
    /// recorded by autodiff, so the gradients of a loss computed with the copy reach this model's
    /// (f32 master) parameters, under the same parameter IDs. Casting to the current type is
    /// free (burn returns the tensor itself).
    pub fn cast_params(&self, dtype: FloatDType) -> Self {
        struct Cast(FloatDType);
        impl<B: Backend> ModuleMapper<B> for Cast {
            fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
                let dtype = self.0;
                param.map(|t| t.cast(dtype))
            }
        }
        self.clone().map(&mut Cast(dtype))
    }

    /// The sink geometry (general units, pool, `p_gen`, `p_mem`).
    pub fn sinks(&self) -> &SinkGeometry {
        &self.sinks
    }

    /// The sink pool masks are drawn from.
    pub fn sink_pool(&self) -> &SinkPool {
        &self.sinks.pool
    }
}

/// Forces every lazily initialised parameter to draw its value.
struct Materialize;

impl<B: Backend> ModuleVisitor<B> for Materialize {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let _ = param.val();
    }
}
