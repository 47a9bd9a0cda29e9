//! Saving and loading weights: burn records (written atomically through
//! [`memsinks_core::files`]) and safetensors export with the tensor names a Llama reader expects.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::record::{FullPrecisionSettings, NamedMpkBytesRecorder, Recorder};
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use safetensors::tensor::{Dtype, TensorView};

use memsinks_core::files::{checksum_path, sha256_hex, write_atomic, write_atomic_checked};

use crate::{MemSinkLm, ModelConfig, ModelError};

/// File name of the weights inside a model directory.
pub const WEIGHTS_FILE: &str = "model.mpk";
/// File name of the configuration inside a model directory.
pub const CONFIG_FILE: &str = "model.ron";

/// Saves the model's weights and configuration into `dir` (`model.mpk`, `model.ron`).
pub fn save_model<B: Backend>(model: &MemSinkLm<B>, cfg: &ModelConfig, dir: &Path) -> Result<(), ModelError> {
    let bytes = NamedMpkBytesRecorder::<FullPrecisionSettings>::new()
        .record(model.clone().into_record(), ())
        .map_err(|e| ModelError::Weights { path: dir.join(WEIGHTS_FILE), message: e.to_string() })?;
    write_atomic_checked(&dir.join(WEIGHTS_FILE), &bytes)?;
    Ok(write_atomic(&dir.join(CONFIG_FILE), cfg.to_ron().as_bytes())?)
}

/// Loads a model saved by [`save_model`].
pub fn load_model<B: Backend>(dir: &Path, device: &B::Device) -> Result<(MemSinkLm<B>, ModelConfig), ModelError> {
    let cfg_path = dir.join(CONFIG_FILE);
    let text =
        fs::read_to_string(&cfg_path).map_err(|source| ModelError::Io { path: cfg_path.clone(), cause: source })?;
    let cfg =
        ModelConfig::from_ron(&text).map_err(|e| ModelError::Weights { path: cfg_path, message: e.to_string() })?;
    let weights = dir.join(WEIGHTS_FILE);
    // The record's bytes and the model built from them are both in host memory for a moment.
    let needed = 2 * cfg.num_params() as u64 * 4;
    crate::memory::check_host_memory(needed, "loading this model", "use a machine with more memory")?;
    let bytes = fs::read(&weights).map_err(|source| ModelError::Io { path: weights.clone(), cause: source })?;
    // Weights saved with a checksum must still match it (models saved before checksums have none).
    if let Ok(recorded) = fs::read_to_string(checksum_path(&weights)) {
        if sha256_hex(&bytes) != recorded.trim() {
            return Err(ModelError::Weights {
                path: weights,
                message: "does not match its checksum (model.mpk.sha256): damaged or edited; retrain".into(),
            });
        }
    }
    let model = load_weights(cfg.init::<B>(device)?, bytes, &weights, device)?;
    Ok((model, cfg))
}

/// Loads record bytes into an initialised model, turning burn's panics on shape mismatch into an
/// error that names the file.
pub fn load_weights<B: Backend>(
    model: MemSinkLm<B>,
    bytes: Vec<u8>,
    path: &Path,
    device: &B::Device,
) -> Result<MemSinkLm<B>, ModelError> {
    let weights_err = |message: String| ModelError::Weights {
        path: path.to_path_buf(),
        message: format!(
            "{message}; the file is corrupt, was saved from another configuration, or predates the \
             MLP weights' Llama names (gate_proj/up_proj/down_proj, formerly fc_1/fc_2/proj): retrain"
        ),
    };
    let record = NamedMpkBytesRecorder::<FullPrecisionSettings>::new()
        .load(bytes, device)
        .map_err(|e| weights_err(e.to_string()))?;
    let expected = shapes(&model);
    let loaded = model.load_record(record);
    let got = shapes(&loaded);
    if got != expected {
        return Err(weights_err(format!("parameter shapes {got:?} differ from the configuration's {expected:?}")));
    }
    Ok(loaded)
}

fn shapes<B: Backend>(model: &MemSinkLm<B>) -> Vec<Vec<usize>> {
    named_tensors(model).into_iter().map(|(_, t, _)| t.dims().to_vec()).collect()
}

/// Every weight under its Llama (Hugging Face) name, with whether it must be transposed to the
/// `[out, in]` layout Llama readers expect (burn stores linear weights as `[in, out]`).
pub fn named_tensors<B: Backend>(model: &MemSinkLm<B>) -> Vec<(String, Tensor<B, 2>, bool)> {
    let mut out = vec![("model.embed_tokens.weight".to_string(), model.embed.weight.val(), false)];
    for (i, b) in model.blocks.iter().enumerate() {
        let p = format!("model.layers.{i}");
        let vec2 = |t: Tensor<B, 1>| t.unsqueeze::<2>();
        out.push((format!("{p}.input_layernorm.weight"), vec2(b.attn_norm.gamma.val()), false));
        out.push((format!("{p}.self_attn.q_proj.weight"), b.attn.q_proj.weight.val(), true));
        out.push((format!("{p}.self_attn.k_proj.weight"), b.attn.k_proj.weight.val(), true));
        out.push((format!("{p}.self_attn.v_proj.weight"), b.attn.v_proj.weight.val(), true));
        out.push((format!("{p}.self_attn.o_proj.weight"), b.attn.o_proj.weight.val(), true));
        out.push((format!("{p}.post_attention_layernorm.weight"), vec2(b.mlp_norm.gamma.val()), false));
        out.push((format!("{p}.mlp.gate_proj.weight"), b.mlp.gate_proj.weight.val(), true));
        out.push((format!("{p}.mlp.up_proj.weight"), b.mlp.up_proj.weight.val(), true));
        out.push((format!("{p}.mlp.down_proj.weight"), b.mlp.down_proj.weight.val(), true));
    }
    out.push(("model.norm.weight".to_string(), model.norm.gamma.val().unsqueeze::<2>(), false));
    if let Some(head) = &model.head {
        out.push(("lm_head.weight".to_string(), head.weight.val(), true));
    }
    out
}

/// Writes the plain weights as `model.safetensors` (f32, Llama names; norm weights 1-D) and a
/// Llama `config.json` into `dir`. Sinks are exported as ordinary hidden units: fold them first
/// for a deployment model.
pub fn export_safetensors<B: Backend>(
    model: &MemSinkLm<B>,
    cfg: &ModelConfig,
    dir: &Path,
) -> Result<PathBuf, ModelError> {
    let mut buffers: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for (name, tensor, transpose) in named_tensors(model) {
        let tensor = if transpose { tensor.transpose() } else { tensor };
        let mut shape = tensor.dims().to_vec();
        if shape[0] == 1 && name.ends_with("norm.weight") {
            shape.remove(0);
        }
        let values: Vec<f32> = tensor.into_data().convert::<f32>().to_vec().expect("f32 data");
        let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        buffers.push((name, shape, bytes));
    }
    let views: HashMap<String, TensorView<'_>> = buffers
        .iter()
        .map(|(name, shape, bytes)| {
            (name.clone(), TensorView::new(Dtype::F32, shape.clone(), bytes).expect("consistent tensor view"))
        })
        .collect();
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    let bytes = safetensors::serialize(&views, Some(meta))
        .map_err(|e| ModelError::Weights { path: dir.join("model.safetensors"), message: e.to_string() })?;
    let path = dir.join("model.safetensors");
    write_atomic(&path, &bytes)?;
    write_atomic(&dir.join("config.json"), llama_config_json(cfg).as_bytes())?;
    Ok(path)
}

/// A Hugging Face `LlamaConfig` describing the same architecture.
pub fn llama_config_json(cfg: &ModelConfig) -> String {
    let json = serde_json::json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.d_model,
        "intermediate_size": cfg.d_hidden,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.n_kv_heads,
        "max_position_embeddings": cfg.max_seq_len,
        "rope_theta": cfg.rope_theta,
        "rms_norm_eps": cfg.norm_eps,
        "tie_word_embeddings": cfg.tie_embeddings,
        "hidden_act": "silu",
        "attention_bias": false,
        "mlp_bias": false,
        "torch_dtype": "float32",
    });
    serde_json::to_string_pretty(&json).expect("json serialises")
}
