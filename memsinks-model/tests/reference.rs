//! The model checked against an independent reference: a plain-Rust, loop-by-loop Llama forward
//! (llm.c style) that shares no tensor code with burn. Also: attention isolation in packed rows,
//! modes, gradient isolation of sinks, training, and weight files.

use burn::backend::{Autodiff, Flex};
use burn::module::{AutodiffModule, Module};
use burn::optim::{AdamWConfig, GradientsParams, Optimizer};
use burn::tensor::activation::log_softmax;
use burn::tensor::{Int, Tensor, TensorData};
use memsinks_model::io::{export_safetensors, load_model, save_model};
use memsinks_model::{DropScale, MemSinkLm, MlpMode, ModelConfig, SeqLayout};

type B = Flex;
type AD = Autodiff<Flex>;

fn device() -> burn::tensor::Device<B> {
    Default::default()
}

fn tokens<Bk: burn::tensor::backend::Backend>(rows: &[Vec<i64>]) -> Tensor<Bk, 2, Int> {
    let (b, t) = (rows.len(), rows[0].len());
    let flat: Vec<i64> = rows.concat();
    Tensor::from_data(TensorData::new(flat, [b, t]), &Default::default())
}

fn values<Bk: burn::tensor::backend::Backend, const D: usize>(t: Tensor<Bk, D>) -> Vec<f32> {
    t.into_data().convert::<f32>().to_vec().unwrap()
}

/// A dense `[in, out]` weight (burn's linear layout).
struct W {
    w: Vec<f32>,
    cols: usize,
}

impl W {
    fn of<Bk: burn::tensor::backend::Backend>(t: Tensor<Bk, 2>) -> Self {
        let cols = t.dims()[1];
        Self { w: values(t), cols }
    }
    fn apply(&self, x: &[f32]) -> Vec<f32> {
        let mut out = vec![0.0f32; self.cols];
        for (i, &xi) in x.iter().enumerate() {
            for (o, acc) in out.iter_mut().enumerate() {
                *acc += xi * self.w[i * self.cols + o];
            }
        }
        out
    }
}

fn rms_norm(x: &[f32], gamma: &[f32], eps: f64) -> Vec<f32> {
    let ms = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
    let inv = 1.0 / (ms + eps as f32).sqrt();
    x.iter().zip(gamma).map(|(v, g)| v * inv * g).collect()
}

fn rope(v: &mut [f32], pos: usize, theta: f64) {
    let hd = v.len();
    let half = hd / 2;
    for j in 0..half {
        let angle = pos as f64 * theta.powf(-2.0 * j as f64 / hd as f64);
        let (c, s) = (angle.cos() as f32, angle.sin() as f32);
        let (x1, x2) = (v[j], v[j + half]);
        v[j] = x1 * c - x2 * s;
        v[j + half] = x2 * c + x1 * s;
    }
}

/// Reference logits `[seq, vocab]` of one row; `segments` gives document boundaries and
/// `hidden_scale(t)` the MLP multiplier of each hidden unit at position `t`.
fn reference_logits(
    model: &MemSinkLm<B>,
    cfg: &ModelConfig,
    row: &[i64],
    segments: &[u32],
    hidden_scale: &dyn Fn(usize) -> Vec<f32>,
) -> Vec<Vec<f32>> {
    let (d, hd, h, kv) = (cfg.d_model, cfg.head_dim(), cfg.n_heads, cfg.n_kv_heads);
    let emb = values(model.embed.weight.val());
    let mut xs: Vec<Vec<f32>> = row.iter().map(|&t| emb[t as usize * d..(t as usize + 1) * d].to_vec()).collect();
    for block in &model.blocks {
        let (wq, wk, wv, wo) = (
            W::of(block.attn.q_proj.weight.val()),
            W::of(block.attn.k_proj.weight.val()),
            W::of(block.attn.v_proj.weight.val()),
            W::of(block.attn.o_proj.weight.val()),
        );
        let g_attn = values(block.attn_norm.gamma.val());
        let normed: Vec<Vec<f32>> = xs.iter().map(|x| rms_norm(x, &g_attn, cfg.norm_eps)).collect();
        let mut q: Vec<Vec<f32>> = normed.iter().map(|x| wq.apply(x)).collect();
        let mut k: Vec<Vec<f32>> = normed.iter().map(|x| wk.apply(x)).collect();
        let v: Vec<Vec<f32>> = normed.iter().map(|x| wv.apply(x)).collect();
        for t in 0..row.len() {
            for head in q[t].chunks_mut(hd) {
                rope(head, t, cfg.rope_theta);
            }
            for head in k[t].chunks_mut(hd) {
                rope(head, t, cfg.rope_theta);
            }
        }
        for t in 0..row.len() {
            let mut ctx = vec![0.0f32; h * hd];
            for head in 0..h {
                let g = head / (h / kv);
                let qh = &q[t][head * hd..(head + 1) * hd];
                let visible: Vec<usize> = (0..=t).filter(|&s| segments[s] == segments[t]).collect();
                let scores: Vec<f32> = visible
                    .iter()
                    .map(|&s| {
                        qh.iter().zip(&k[s][g * hd..(g + 1) * hd]).map(|(a, b)| a * b).sum::<f32>() / (hd as f32).sqrt()
                    })
                    .collect();
                let max = scores.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
                let exps: Vec<f32> = scores.iter().map(|s| (s - max).exp()).collect();
                let sum: f32 = exps.iter().sum();
                for (&s, e) in visible.iter().zip(&exps) {
                    for j in 0..hd {
                        ctx[head * hd + j] += e / sum * v[s][g * hd + j];
                    }
                }
            }
            let out = wo.apply(&ctx);
            xs[t].iter_mut().zip(out).for_each(|(x, o)| *x += o);
        }
        let (w1, w2, w3) = (
            W::of(block.mlp.gate_proj.weight.val()),
            W::of(block.mlp.up_proj.weight.val()),
            W::of(block.mlp.down_proj.weight.val()),
        );
        let g_mlp = values(block.mlp_norm.gamma.val());
        for (t, x) in xs.iter_mut().enumerate() {
            let n = rms_norm(x, &g_mlp, cfg.norm_eps);
            let scale = hidden_scale(t);
            let hidden: Vec<f32> = w1
                .apply(&n)
                .iter()
                .zip(w2.apply(&n))
                .zip(&scale)
                .map(|((g, u), s)| g / (1.0 + (-g).exp()) * u * s)
                .collect();
            x.iter_mut().zip(w3.apply(&hidden)).for_each(|(x, o)| *x += o);
        }
    }
    let g = values(model.norm.gamma.val());
    let head = W::of(model.head.as_ref().unwrap().weight.val());
    xs.iter().map(|x| head.apply(&rms_norm(x, &g, cfg.norm_eps))).collect()
}

fn assert_close(got: &[f32], want: &[f32], tol: f32, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let worst = got.iter().zip(want).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    assert!(worst < tol, "{what}: max abs difference {worst}");
}

fn tiny() -> ModelConfig {
    // Larger init than default so that the differences the tests look for are far above rounding.
    ModelConfig::preset("tiny").unwrap().with_init_std(0.2)
}

#[test]
fn matches_reference_in_every_mode_and_with_packing() {
    let cfg = tiny();
    let model: MemSinkLm<B> = cfg.init(&device()).unwrap();
    let sinks = model.sinks().clone();
    let (n_gen, hidden) = (sinks.num_general, sinks.hidden());
    let row: Vec<i64> = (0..12).map(|i| (i * 7 + 3) % 64).collect();
    let ids: Vec<i64> = [11i64; 5].into_iter().chain([4242i64; 7]).collect();
    let segments: Vec<u32> = [0u32; 5].into_iter().chain([1u32; 7]).collect();
    let layout = SeqLayout::packed(1, 12, ids.clone(), segments.clone());
    let own = |t: usize, exclude: &[i64]| -> Vec<f32> {
        let mine = sinks.pool.mask(ids[t], 0);
        let mut v = vec![1.0f32; n_gen];
        v.extend((0..sinks.pool.len()).map(|j| {
            let off = exclude.iter().any(|&e| sinks.pool.mask(e, 0)[j]);
            if mine[j] && !off {
                1.0
            } else {
                0.0
            }
        }));
        v
    };
    let rescale = ((cfg.p_gen + cfg.p_mem) / cfg.p_gen) as f32;
    // Training's expected active share over the general share: 1 + (1 − p_gen) p_mem / p_gen.
    let matched = (1.0 + (1.0 - cfg.p_gen) * cfg.p_mem / cfg.p_gen) as f32;
    assert!((matched - rescale).abs() > 0.05, "the two factors must differ for this test to tell them apart");
    type Expected<'a> = Box<dyn Fn(usize) -> Vec<f32> + 'a>;
    let cases: Vec<(MlpMode, Expected)> = vec![
        (MlpMode::Train, Box::new(|t| own(t, &[]))),
        (MlpMode::ActivateSeq { exclude: vec![4242] }, Box::new(|t| own(t, &[4242]))),
        (
            MlpMode::All { exclude: vec![] },
            Box::new(|_| (0..hidden).map(|j| if j < n_gen { 1.0 } else { cfg.p_mem as f32 }).collect()),
        ),
        (
            MlpMode::DropSinks { scale: DropScale::Reference },
            Box::new(|_| (0..hidden).map(|j| if j < n_gen { rescale } else { 0.0 }).collect()),
        ),
        (
            MlpMode::DropSinks { scale: DropScale::Plain },
            Box::new(|_| (0..hidden).map(|j| if j < n_gen { 1.0 } else { 0.0 }).collect()),
        ),
        (
            MlpMode::DropSinks { scale: DropScale::ActivityMatched },
            Box::new(|_| (0..hidden).map(|j| if j < n_gen { matched } else { 0.0 }).collect()),
        ),
    ];
    for (mode, scale) in cases {
        let got = values(model.forward(tokens(std::slice::from_ref(&row)), &layout, &mode));
        let want: Vec<f32> = reference_logits(&model, &cfg, &row, &segments, &*scale).concat();
        assert_close(&got, &want, 2e-4, &format!("{mode:?}"));
    }
}

#[test]
fn p_gen_one_is_a_plain_swiglu_model_in_every_mode() {
    let cfg = tiny().with_p_gen(1.0);
    let model: MemSinkLm<B> = cfg.init(&device()).unwrap();
    let row: Vec<i64> = (0..10).map(|i| (i * 5 + 1) % 64).collect();
    let layout = SeqLayout::per_row(&[99], 10);
    let want = reference_logits(&model, &cfg, &row, &[0; 10], &|_| vec![1.0; cfg.d_hidden]).concat();
    for mode in [MlpMode::Train, MlpMode::All { exclude: vec![99] }, MlpMode::DropSinks { scale: DropScale::Reference }]
    {
        let got = values(model.forward(tokens(std::slice::from_ref(&row)), &layout, &mode));
        assert_close(&got, &want, 2e-4, &format!("p_gen=1 {mode:?}"));
    }
}

/// The one-pass, one-position-at-a-time scaling of integrated gradients against its definition:
/// for each position `i`, a run on the sequence cut after `i` whose hook scales position `i`'s
/// activations alone. Arbitrary scales everywhere else must not leak into position `i`.
#[test]
fn position_isolated_forward_matches_one_prefix_run_per_position() {
    let cfg = ModelConfig::new(64, 32, 3, 4, 2, 64, 64).with_init_std(0.2);
    let model: MemSinkLm<B> = cfg.init(&device()).unwrap();
    let (seq, hidden, v) = (10, model.sinks().hidden(), cfg.vocab_size);
    let rows: Vec<Vec<i64>> = (0..2).map(|r| (0..seq as i64).map(|i| (i * 7 + 3 + 11 * r) % 64).collect()).collect();
    let per_row = |t: usize| SeqLayout::per_row(&[11, 4242], t);
    let packed_ids: Vec<i64> = [11i64; 4].into_iter().chain([4242i64; 6]).collect();
    let packed_segments: Vec<u32> = [0u32; 4].into_iter().chain([1u32; 6]).collect();
    let packed = |t: usize| SeqLayout::packed(1, t, packed_ids[..t].to_vec(), packed_segments[..t].to_vec());
    type Layout<'a> = Box<dyn Fn(usize) -> SeqLayout + 'a>;
    let cases: Vec<(Vec<Vec<i64>>, Layout)> =
        vec![(rows.clone(), Box::new(per_row)), (rows[..1].to_vec(), Box::new(packed))];
    for (rows, layout_of) in cases {
        let b = rows.len();
        // Scales spread over [0.25, 1.5], different for every row, position and unit.
        let scale_values: Vec<f32> = (0..b * seq * hidden).map(|k| 0.25 + ((k * 37) % 101) as f32 / 80.0).collect();
        let scale = Tensor::<B, 3>::from_data(TensorData::new(scale_values.clone(), [b, seq, hidden]), &device());
        let mode = MlpMode::Train;
        for layer in 0..cfg.n_layers {
            let isolated =
                values(model.forward_position_isolated(tokens(&rows), &layout_of(seq), &mode, layer, scale.clone()));
            for i in [0, 3, 4, seq - 1] {
                let prefix: Vec<Vec<i64>> = rows.iter().map(|r| r[..=i].to_vec()).collect();
                let mut last_only = vec![1.0f32; b * (i + 1) * hidden];
                for r in 0..b {
                    let (to, from) = ((r * (i + 1) + i) * hidden, (r * seq + i) * hidden);
                    last_only[to..to + hidden].copy_from_slice(&scale_values[from..from + hidden]);
                }
                let last_only = Tensor::<B, 3>::from_data(TensorData::new(last_only, [b, i + 1, hidden]), &device());
                let hook = &mut |l, h: Tensor<B, 3>| if l == layer { h * last_only.clone() } else { h };
                let want = values(model.forward_hooked(tokens(&prefix), &layout_of(i + 1), &mode, hook));
                for r in 0..b {
                    let got = &isolated[(r * seq + i) * v..(r * seq + i + 1) * v];
                    let want = &want[(r * (i + 1) + i) * v..(r * (i + 1) + i + 1) * v];
                    assert_close(got, want, 1e-4, &format!("rows {b}, layer {layer}, position {i}, row {r}"));
                }
            }
        }
        // The scaling matters: with every scale 1 the isolated forward is the plain one, not with these.
        let plain = values(model.forward(tokens(&rows), &layout_of(seq), &mode));
        let ones = Tensor::<B, 3>::ones([b, seq, hidden], &device());
        assert_close(
            &values(model.forward_position_isolated(tokens(&rows), &layout_of(seq), &mode, 1, ones)),
            &plain,
            1e-4,
            "scale 1",
        );
        let scaled = values(model.forward_position_isolated(tokens(&rows), &layout_of(seq), &mode, 1, scale.clone()));
        assert!(scaled.iter().zip(&plain).any(|(a, b)| (a - b).abs() > 1e-2), "the scale changed nothing");
    }
}

#[test]
fn packed_rows_never_see_other_documents_or_the_future() {
    let cfg = tiny();
    let model: MemSinkLm<B> = cfg.init(&device()).unwrap();
    let seq = 16;
    let ids: Vec<i64> = [7i64; 6].into_iter().chain([7i64; 4]).chain([9i64; 6]).collect();
    // Two copies of document 7 side by side: same ID, different segments.
    let segments: Vec<u32> = [0u32; 6].into_iter().chain([1u32; 4]).chain([2u32; 6]).collect();
    let layout = SeqLayout::packed(1, seq, ids, segments);
    let base: Vec<i64> = (0..seq as i64).map(|i| (i * 3 + 2) % 64).collect();
    let logits = |row: &Vec<i64>| values(model.forward(tokens(std::slice::from_ref(row)), &layout, &MlpMode::Train));
    let v = cfg.vocab_size;
    let reference = logits(&base);
    // Changing the later documents leaves the first document's logits untouched.
    let mut later = base.clone();
    for t in later.iter_mut().skip(6) {
        *t = (*t + 17) % 64;
    }
    assert_eq!(reference[..6 * v], logits(&later)[..6 * v]);
    // Changing the first document leaves the third document's logits untouched.
    let mut earlier = base.clone();
    for t in earlier.iter_mut().take(6) {
        *t = (*t + 5) % 64;
    }
    let changed = logits(&earlier);
    assert_eq!(reference[10 * v..], changed[10 * v..]);
    assert_ne!(reference[..6 * v], changed[..6 * v], "the edit must matter to its own document");
    // Causality within a document.
    let mut future = base.clone();
    future[15] = (future[15] + 1) % 64;
    assert_eq!(reference[..15 * v], logits(&future)[..15 * v]);
}

#[test]
fn sink_gradients_are_isolated_to_the_sequence_mask() {
    let cfg = tiny();
    let model: MemSinkLm<AD> = cfg.init(&Default::default()).unwrap();
    let id = 12345i64;
    let layout = SeqLayout::per_row(&[id, id], 8);
    let rows: Vec<Vec<i64>> = (0..2).map(|r| (0..8).map(|i| (i * 11 + r * 3) % 64).collect()).collect();
    let logits = model.forward(tokens(&rows), &layout, &MlpMode::Train);
    let grads = log_softmax(logits, 2).mean().neg().backward();
    let mask = model.sink_pool().mask(id, 0);
    let n_gen = model.sinks().num_general;
    for block in &model.blocks {
        let g1 = values(block.mlp.gate_proj.weight.grad(&grads).unwrap()); // [d, I]
        let g2 = values(block.mlp.up_proj.weight.grad(&grads).unwrap());
        let g3 = values(block.mlp.down_proj.weight.grad(&grads).unwrap()); // [I, d]
        let (d, hidden) = (cfg.d_model, cfg.d_hidden);
        for j in 0..hidden {
            let col = |g: &Vec<f32>| (0..d).map(|i| g[i * hidden + j].abs()).sum::<f32>();
            let row = g3[j * d..(j + 1) * d].iter().map(|v| v.abs()).sum::<f32>();
            let active = j < n_gen || mask[j - n_gen];
            for (what, mag) in [("gate_proj", col(&g1)), ("up_proj", col(&g2)), ("proj", row)] {
                if active {
                    assert!(mag > 0.0, "{what} unit {j} is active but got no gradient");
                } else {
                    assert_eq!(mag, 0.0, "{what} unit {j} is outside ID {id}'s mask but got gradient");
                }
            }
        }
    }
}

#[test]
fn gradient_masking_routes_flagged_tokens_to_sinks_only() {
    let cfg = tiny();
    let model: MemSinkLm<AD> = cfg.init(&Default::default()).unwrap();
    let layout = SeqLayout::per_row(&[5], 8).with_route_to_sinks(vec![true; 8]);
    let row: Vec<Vec<i64>> = vec![(0..8).collect()];
    let grads = model.forward(tokens(&row), &layout, &MlpMode::Train).sum().backward();
    let n_gen = model.sinks().num_general;
    let (d, hidden) = (cfg.d_model, cfg.d_hidden);
    let g1 = values(model.blocks[0].mlp.gate_proj.weight.grad(&grads).unwrap()); // [d, I]
    let g3 = values(model.blocks[0].mlp.down_proj.weight.grad(&grads).unwrap()); // [I, d]
    let column = |g: &[f32], units: std::ops::Range<usize>| -> f32 {
        (0..d).flat_map(|i| units.clone().map(move |j| i * hidden + j)).map(|k| g[k].abs()).sum()
    };
    let rows =
        |units: std::ops::Range<usize>| -> f32 { g3[units.start * d..units.end * d].iter().map(|v| v.abs()).sum() };
    assert_eq!(column(&g1, 0..n_gen), 0.0, "general gate_proj columns got gradient");
    assert_eq!(rows(0..n_gen), 0.0, "general down_proj rows got gradient");
    assert!(column(&g1, n_gen..hidden) > 0.0 && rows(n_gen..hidden) > 0.0, "sinks must learn");
    // The forward value is unchanged by routing.
    let plain = SeqLayout::per_row(&[5], 8);
    let a = values(model.forward(tokens(&row), &layout, &MlpMode::Train));
    let b = values(model.forward(tokens(&row), &plain, &MlpMode::Train));
    assert_close(&a, &b, 1e-5, "routing changes no value");
}

#[test]
fn parameter_count_of_allocated_models_matches_the_config() {
    for name in ["tiny", "ts-cpu"] {
        let cfg = ModelConfig::preset(name).unwrap();
        let model: MemSinkLm<B> = cfg.init(&device()).unwrap();
        // The RoPE tables are plain tensors, not parameters, and must not be counted.
        assert_eq!(model.num_params(), cfg.num_params(), "{name}");
    }
}

fn lm_loss<Bk: memsinks_model::Kernels>(model: &MemSinkLm<Bk>, rows: &[Vec<i64>], ids: &[i64]) -> Tensor<Bk, 1> {
    let t = rows[0].len() - 1;
    let inputs: Vec<Vec<i64>> = rows.iter().map(|r| r[..t].to_vec()).collect();
    let targets: Vec<i64> = rows.iter().flat_map(|r| r[1..].to_vec()).collect();
    let logits = model.forward(tokens(&inputs), &SeqLayout::per_row(ids, t), &MlpMode::Train);
    let [b, _, v] = logits.dims();
    let logp = log_softmax(logits.reshape([b * t, v]), 1);
    let targets = Tensor::<Bk, 1, Int>::from_data(TensorData::new(targets, [b * t]), &Default::default());
    logp.gather(1, targets.unsqueeze_dim(1)).mean().neg()
}

#[test]
fn tiny_learns_a_repeated_batch() {
    let cfg = ModelConfig::preset("tiny").unwrap();
    let mut model: MemSinkLm<AD> = cfg.init(&Default::default()).unwrap();
    let mut optim = AdamWConfig::new().with_weight_decay(0.0).init();
    let rows: Vec<Vec<i64>> = (0..4).map(|r| (0..17).map(|i| (i * 13 + r * 7) % 64).collect()).collect();
    let ids = [1i64, 2, 3, 4];
    let first = values(lm_loss(&model, &rows, &ids))[0];
    for _ in 0..30 {
        let loss = lm_loss(&model, &rows, &ids);
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optim.step(3e-3, model, grads);
    }
    let last = values(lm_loss(&model.valid(), &rows, &ids))[0];
    assert!(first > 3.5, "initial loss {first} should be near ln(64)");
    assert!(last < first * 0.5, "loss went from {first} to {last}");
}

#[test]
fn ts_cpu_runs_forward_and_backward() {
    let cfg = ModelConfig::preset("ts-cpu").unwrap();
    let model: MemSinkLm<AD> = cfg.init(&Default::default()).unwrap();
    let rows: Vec<Vec<i64>> = (0..2).map(|r| (0..65).map(|i| (i * 31 + r) % 4096).collect()).collect();
    let loss = lm_loss(&model, &rows, &[77, 78]);
    let value = values(loss.clone())[0];
    assert!((value - (4096f32).ln()).abs() < 0.5, "initial loss {value}");
    let grads = loss.backward();
    assert!(model.blocks[3].mlp.down_proj.weight.grad(&grads).is_some());
}

#[test]
fn weights_round_trip_and_bad_files_fail_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = tiny();
    let model: MemSinkLm<B> = cfg.init(&device()).unwrap();
    save_model(&model, &cfg, dir.path()).unwrap();
    let (loaded, loaded_cfg) = load_model::<B>(dir.path(), &device()).unwrap();
    assert_eq!(loaded_cfg, cfg);
    let layout = SeqLayout::per_row(&[3], 6);
    let row = vec![(0..6).collect::<Vec<i64>>()];
    assert_eq!(
        values(model.forward(tokens(&row), &layout, &MlpMode::Train)),
        values(loaded.forward(tokens(&row), &layout, &MlpMode::Train))
    );
    // A config that no longer matches the weights.
    let mut wider = cfg.clone();
    wider.d_hidden = 96;
    std::fs::write(dir.path().join("model.ron"), wider.to_ron()).unwrap();
    let err = load_model::<B>(dir.path(), &device()).unwrap_err().to_string();
    assert!(err.contains("model.mpk"), "{err}");
    // A truncated weight file.
    std::fs::write(dir.path().join("model.ron"), cfg.to_ron()).unwrap();
    let bytes = std::fs::read(dir.path().join("model.mpk")).unwrap();
    std::fs::write(dir.path().join("model.mpk"), &bytes[..bytes.len() / 2]).unwrap();
    let err = load_model::<B>(dir.path(), &device()).unwrap_err().to_string();
    assert!(err.contains("model.mpk"), "{err}");
    // A missing directory.
    assert!(load_model::<B>(&dir.path().join("nope"), &device()).unwrap_err().to_string().contains("model.ron"));
}

#[test]
fn safetensors_export_uses_llama_names_and_layouts() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = tiny();
    let model: MemSinkLm<B> = cfg.init(&device()).unwrap();
    let path = export_safetensors(&model, &cfg, dir.path()).unwrap();
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let q = st.tensor("model.layers.1.self_attn.k_proj.weight").unwrap();
    // [out, in] = [n_kv_heads * head_dim, d_model]
    assert_eq!(q.shape(), &[cfg.n_kv_heads * cfg.head_dim(), cfg.d_model]);
    let burn_w = values(model.blocks[1].attn.k_proj.weight.val()); // [in, out]
    let exported: Vec<f32> = q.data().chunks(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
    let out = cfg.n_kv_heads * cfg.head_dim();
    assert_eq!(exported[1], burn_w[out]); // exported [0][1] is burn's [1][0]
    assert_eq!(st.tensor("model.norm.weight").unwrap().shape(), &[cfg.d_model]);
    assert_eq!(st.tensor("model.layers.0.mlp.gate_proj.weight").unwrap().shape(), &[cfg.d_hidden, cfg.d_model]);
    assert_eq!(st.len(), 3 + 9 * cfg.n_layers);
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("config.json")).unwrap()).unwrap();
    assert_eq!(config["num_key_value_heads"], cfg.n_kv_heads);
}

/// A sparse pool (NULLs-style: few general units, `p_mem` 0.05) makes compact masks: the MLPs
/// compute with the batch's active units alone. Logits, loss and every parameter gradient equal
/// the full computation's (`compact_below = 0`) in every mode, packed and with gradient masking;
/// units no token uses get exactly zero gradient either way.
#[test]
fn compact_masks_compute_what_full_masks_compute() {
    let sparse = ModelConfig::preset("tiny").unwrap().with_init_std(0.2).with_p_gen(0.1).with_p_mem(0.05);
    let compact: MemSinkLm<AD> = sparse.init(&Default::default()).unwrap();
    // The same weights with compact masks switched off.
    let full: MemSinkLm<AD> = sparse
        .clone()
        .with_compact_below(0.0)
        .init::<AD>(&Default::default())
        .unwrap()
        .load_record(compact.clone().into_record());
    let rows: Vec<Vec<i64>> = (0..4).map(|r| (0..12).map(|i| (i * 5 + r * 7) % 64).collect()).collect();
    let per_row = SeqLayout::per_row(&[11, 22, 11, 33], 12);
    let segments: Vec<u32> = (0..48).map(|t| ((t % 12) / 6) as u32).collect();
    let ids: Vec<i64> = segments.iter().enumerate().map(|(t, &s)| 100 + (t / 12) as i64 * 2 + s as i64).collect();
    let packed = SeqLayout::packed(4, 12, ids, segments);
    let routed = per_row.clone().with_route_to_sinks((0..48).map(|t| t < 24).collect());
    let pool = compact.sinks().clone();
    let mut compacted = 0;
    for layout in [&per_row, &packed, &routed] {
        for mode in MlpMode::ALL.iter().cloned().chain([MlpMode::ActivateSeq { exclude: vec![22] }]) {
            let mask = pool.compact_hidden_mask::<AD>(&mode, layout, 0, &Default::default()).unwrap();
            compacted += usize::from(mask.active.is_some());
            let loss = |m: &MemSinkLm<AD>| log_softmax(m.forward(tokens(&rows), layout, &mode), 2).mean().neg();
            let (a, b) = (loss(&compact), loss(&full));
            assert_close(&values(a.clone()), &values(b.clone()), 1e-5, &format!("{mode:?} loss"));
            let (ga, gb) = (a.backward(), b.backward());
            for (x, y) in compact.blocks.iter().zip(&full.blocks) {
                for (wx, wy, what) in [
                    (&x.mlp.gate_proj.weight, &y.mlp.gate_proj.weight, "gate_proj"),
                    (&x.mlp.up_proj.weight, &y.mlp.up_proj.weight, "up_proj"),
                    (&x.mlp.down_proj.weight, &y.mlp.down_proj.weight, "down_proj"),
                    (&x.attn.q_proj.weight, &y.attn.q_proj.weight, "q_proj"),
                ] {
                    let (gx, gy) = (values(wx.grad(&ga).unwrap()), values(wy.grad(&gb).unwrap()));
                    let scale = gy.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                    assert_close(&gx, &gy, 1e-5 * scale.max(1.0), &format!("{mode:?} {what} gradient"));
                }
            }
        }
    }
    assert!(compacted >= 9, "most masks of the sparse pool should be compact ({compacted})");
    // The paper's setting never compacts: the dense path (and its numbers) stay as they were.
    let paper = ModelConfig::preset("tiny").unwrap().init::<AD>(&Default::default()).unwrap();
    let mask = paper.sinks().compact_hidden_mask::<AD>(
        &MlpMode::DropSinks { scale: DropScale::Reference },
        &per_row,
        0,
        &Default::default(),
    );
    assert!(mask.unwrap().active.is_none());
}
