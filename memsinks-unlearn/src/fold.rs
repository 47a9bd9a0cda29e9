//! Fold a MemSinks model with its sinks dropped into a plain Llama-shaped model: the sink
//! neurons are removed from `gate_proj`/`up_proj`/`down_proj` and the drop-sinks rescale is folded into `down_proj`,
//! so the result computes exactly what `MlpMode::DropSinks` computes, with no masks at all.

use burn::module::Param;
use burn::tensor::backend::Backend;
use memsinks_model::{DropScale, MemSinkLm, ModelConfig, ModelError};

/// The folded model and its configuration (`p_gen = 1`, `d_hidden = floor(I * p_gen)`).
pub fn fold_drop_sinks<B: Backend>(
    model: &MemSinkLm<B>,
    cfg: &ModelConfig,
    scale: DropScale,
    device: &B::Device,
) -> Result<(MemSinkLm<B>, ModelConfig), ModelError> {
    let sinks = model.sinks();
    let keep = sinks.num_general;
    let scale = sinks.drop_factor(scale);
    let mut folded_cfg = cfg.clone();
    folded_cfg.d_hidden = keep;
    folded_cfg.p_gen = 1.0;
    folded_cfg.p_mem = 0.0;
    let mut folded = folded_cfg.init::<B>(device)?;
    folded.embed.weight = Param::from_tensor(model.embed.weight.val());
    folded.norm.gamma = Param::from_tensor(model.norm.gamma.val());
    if let (Some(dst), Some(src)) = (folded.head.as_mut(), model.head.as_ref()) {
        dst.weight = Param::from_tensor(src.weight.val());
    }
    for (dst, src) in folded.blocks.iter_mut().zip(&model.blocks) {
        dst.attn_norm.gamma = Param::from_tensor(src.attn_norm.gamma.val());
        dst.mlp_norm.gamma = Param::from_tensor(src.mlp_norm.gamma.val());
        dst.attn.q_proj.weight = Param::from_tensor(src.attn.q_proj.weight.val());
        dst.attn.k_proj.weight = Param::from_tensor(src.attn.k_proj.weight.val());
        dst.attn.v_proj.weight = Param::from_tensor(src.attn.v_proj.weight.val());
        dst.attn.o_proj.weight = Param::from_tensor(src.attn.o_proj.weight.val());
        // burn stores linear weights as [in, out]: hidden units are columns of gate_proj/up_proj and
        // rows of down_proj.
        dst.mlp.gate_proj.weight = Param::from_tensor(src.mlp.gate_proj.weight.val().narrow(1, 0, keep));
        dst.mlp.up_proj.weight = Param::from_tensor(src.mlp.up_proj.weight.val().narrow(1, 0, keep));
        dst.mlp.down_proj.weight =
            Param::from_tensor(src.mlp.down_proj.weight.val().narrow(0, 0, keep).mul_scalar(scale));
    }
    Ok((folded, folded_cfg))
}
