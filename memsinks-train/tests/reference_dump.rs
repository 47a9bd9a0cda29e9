//! The model, its loss, every gradient and ten AdamW steps against a dump of an independent
//! PyTorch implementation (llm.c's habit). `experiments/reference/dump.py` wrote
//! `experiments/reference/tiny.safetensors` (tiny preset, MemSinks masks on, fp32); this test
//! needs no PyTorch.

use std::collections::HashMap;

use burn::backend::{Autodiff, Flex};
use burn::module::Param;
use burn::nn::Linear;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use memsinks_model::loss::lm_loss;
use memsinks_model::{LmBatch, MemSinkLm, MlpMode, ModelConfig, SeqLayout};
use memsinks_train::optim::step;
use memsinks_train::OptimConfig;
use safetensors::SafeTensors;

type AD = Autodiff<Flex>;

/// The dump's tensors as `(shape, f32 values)` (int64 tensors converted).
fn dump() -> HashMap<String, (Vec<usize>, Vec<f64>)> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../experiments/reference/tiny.safetensors");
    let bytes = std::fs::read(path).expect("the committed reference dump");
    let tensors = SafeTensors::deserialize(&bytes).expect("a safetensors file");
    tensors
        .tensors()
        .into_iter()
        .map(|(name, view)| {
            let data = view.data();
            let values: Vec<f64> = match view.dtype() {
                safetensors::Dtype::F32 => {
                    data.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap()) as f64).collect()
                }
                safetensors::Dtype::I64 => {
                    data.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap()) as f64).collect()
                }
                other => panic!("{name}: unexpected dtype {other:?}"),
            };
            (name, (view.shape().to_vec(), values))
        })
        .collect()
}

fn tensor<B: Backend, const D: usize>(shape: &[usize], values: &[f64]) -> Tensor<B, D> {
    let v: Vec<f32> = values.iter().map(|&x| x as f32).collect();
    Tensor::from_data(TensorData::new(v, shape.to_vec()), &Default::default())
}

/// Copies the dump's weights (Llama names, `[out, in]`) into `model` (burn's `[in, out]`).
fn load(mut model: MemSinkLm<AD>, d: &HashMap<String, (Vec<usize>, Vec<f64>)>) -> MemSinkLm<AD> {
    let matrix = |name: &str, transpose: bool| -> Param<Tensor<AD, 2>> {
        let (shape, v) = &d[name];
        let t = tensor::<AD, 2>(shape, v);
        Param::from_tensor(if transpose { t.transpose() } else { t })
    };
    let vector = |name: &str| -> Param<Tensor<AD, 1>> {
        let (shape, v) = &d[name];
        Param::from_tensor(tensor::<AD, 1>(shape, v))
    };
    let linear = |l: &mut Linear<AD>, name: &str| l.weight = matrix(name, true);
    model.embed.weight = matrix("model.embed_tokens.weight", false);
    for (i, b) in model.blocks.iter_mut().enumerate() {
        let p = format!("model.layers.{i}");
        b.attn_norm.gamma = vector(&format!("{p}.input_layernorm.weight"));
        b.mlp_norm.gamma = vector(&format!("{p}.post_attention_layernorm.weight"));
        linear(&mut b.attn.q_proj, &format!("{p}.self_attn.q_proj.weight"));
        linear(&mut b.attn.k_proj, &format!("{p}.self_attn.k_proj.weight"));
        linear(&mut b.attn.v_proj, &format!("{p}.self_attn.v_proj.weight"));
        linear(&mut b.attn.o_proj, &format!("{p}.self_attn.o_proj.weight"));
        linear(&mut b.mlp.gate_proj, &format!("{p}.mlp.gate_proj.weight"));
        linear(&mut b.mlp.up_proj, &format!("{p}.mlp.up_proj.weight"));
        linear(&mut b.mlp.down_proj, &format!("{p}.mlp.down_proj.weight"));
    }
    model.norm.gamma = vector("model.norm.weight");
    linear(model.head.as_mut().expect("untied head"), "lm_head.weight");
    model
}

/// Every parameter as `(Llama name, its value, whether it is a transposed linear weight)`.
fn parameters(model: &MemSinkLm<AD>) -> Vec<(String, Tensor<AD, 2>, bool)> {
    memsinks_model::io::named_tensors(model)
}

fn assert_close(name: &str, ours: &[f64], theirs: &[f64], tol: f64) -> f64 {
    assert_eq!(ours.len(), theirs.len(), "{name}: length");
    let scale = theirs.iter().fold(0.0f64, |m, x| m.max(x.abs())).max(1e-12);
    let worst = ours.iter().zip(theirs).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
    assert!(worst <= tol * scale, "{name}: max |diff| {worst:e} exceeds {tol:e} x max |ref| {scale:e}");
    worst / scale
}

fn values<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f64> {
    t.into_data().convert::<f32>().to_vec::<f32>().unwrap().into_iter().map(f64::from).collect()
}

#[test]
fn forward_loss_gradients_and_adamw_match_the_pytorch_dump() {
    let d = dump();
    let cfg = ModelConfig::preset("tiny").unwrap().with_p_gen(0.7).with_p_mem(0.3);
    let device = Default::default();
    let model = load(cfg.init::<AD>(&device).unwrap(), &d);

    let tokens: Vec<i64> = d["tokens"].1.iter().map(|&x| x as i64).collect();
    let ids: Vec<i64> = d["seq_ids"].1.iter().map(|&x| x as i64).collect();
    let (rows, width) = (d["tokens"].0[0], d["tokens"].0[1]);
    let seq = width - 1;
    let column = |range: std::ops::Range<usize>| -> Tensor<AD, 2, Int> {
        let v: Vec<i64> = (0..rows).flat_map(|r| tokens[r * width..][range.clone()].to_vec()).collect();
        Tensor::from_data(TensorData::new(v, [rows, seq]), &device)
    };
    let batch = LmBatch {
        inputs: column(0..seq),
        targets: column(1..width),
        loss_mask: Tensor::ones([rows, seq], &device),
        layout: SeqLayout::per_row(&ids, seq),
    };

    // Forward in training mode (each row's own sinks on).
    let logits = model.forward(batch.inputs.clone(), &batch.layout, &MlpMode::Train);
    let err = assert_close("logits", &values(logits), &d["logits"].1, 1e-5);
    eprintln!("logits: max relative error {err:.2e}");

    // Loss and every gradient.
    let loss = lm_loss(&model, &batch, &MlpMode::Train);
    let ours: f64 = values(loss.clone())[0];
    assert!((ours - d["loss"].1[0]).abs() < 1e-5, "loss {ours} vs {}", d["loss"].1[0]);
    let grads = loss.backward();
    let mut checked = 0;
    for (name, param, transposed) in parameters(&model) {
        let grad = if name.ends_with("norm.weight") {
            // `named_tensors` lifts norm gains to 2-D; their gradient lives on the 1-D gain.
            let gain = match name.as_str() {
                "model.norm.weight" => model.norm.gamma.val(),
                _ => {
                    let i: usize = name.split('.').nth(2).unwrap().parse().unwrap();
                    let b = &model.blocks[i];
                    if name.contains("input_layernorm") {
                        b.attn_norm.gamma.val()
                    } else {
                        b.mlp_norm.gamma.val()
                    }
                }
            };
            values(gain.grad(&grads).expect("gain gradient"))
        } else {
            let g = param.grad(&grads).expect("weight gradient");
            values(if transposed { g.transpose() } else { g })
        };
        let err = assert_close(&format!("grad.{name}"), &grad, &d[&format!("grad.{name}")].1, 1e-4);
        eprintln!("grad.{name}: max relative error {err:.2e}");
        checked += 1;
    }
    assert_eq!(checked, 2 * 9 + 3, "every parameter's gradient");

    // Ten AdamW steps on the same batch: the loss before each.
    let optim_cfg = OptimConfig::default();
    let mut optim = optim_cfg.init::<AD, MemSinkLm<AD>>();
    let mut model = model;
    let mut losses = Vec::new();
    for _ in 0..d["adamw_losses"].1.len() {
        let loss = lm_loss(&model, &batch, &MlpMode::Train);
        losses.push(values(loss.clone())[0]);
        model = step(&mut optim, model, loss, 1e-3, &optim_cfg);
    }
    eprintln!("AdamW losses: ours {losses:.4?}\n              torch {:.4?}", d["adamw_losses"].1);
    assert_close("adamw_losses", &losses, &d["adamw_losses"].1, 1e-4);
}
