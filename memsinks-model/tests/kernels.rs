//! The fused kernels (`memsinks_model::kernels`) against burn's own ops: values and gradients on
//! odd shapes (row counts that are no multiple of the kernels' task size, widths that are no
//! multiple of a SIMD lane, one-row inputs, non-contiguous inputs, every mask shape), and the
//! whole model's loss over 20 AdamW steps against the decomposed ops of another backend.
//!
//! Tolerances: the fused kernels compute `e^x` with their own polynomial (within ~2 ulp of libm's)
//! and sum rows in one pass where burn sums in several, so values differ in the last bits: every
//! value and gradient within `1e-5 · max(1, |reference|)`.

use burn::backend::{Autodiff, Flex};
use burn::tensor::activation::{log_softmax, silu};
use burn::tensor::{Int, Tensor, TensorData};
use memsinks_model::kernels::{rms_norm, swiglu, token_nll, Kernels};

type AD = Autodiff<Flex>;

fn random(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

fn tensor<const D: usize>(values: Vec<f32>, shape: [usize; D]) -> Tensor<AD, D> {
    Tensor::from_data(TensorData::new(values, shape), &Default::default()).require_grad()
}

fn values<const D: usize>(t: Tensor<Flex, D>) -> Vec<f32> {
    t.into_data().convert::<f32>().to_vec().unwrap()
}

fn assert_close(got: &[f32], want: &[f32], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (a, b)) in got.iter().zip(want).enumerate() {
        assert!((a - b).abs() <= 1e-5 * b.abs().max(1.0), "{what}[{i}]: fused {a} vs burn {b}");
    }
}

#[test]
fn flex_is_fused_and_the_others_are_not() {
    const { assert!(<Flex as Kernels>::FUSED) };
    #[cfg(feature = "ndarray")]
    const {
        assert!(!<burn::backend::NdArray as Kernels>::FUSED)
    };
}

#[test]
fn token_nll_matches_log_softmax_in_values_and_gradients() {
    for (n, v, seed) in [(1usize, 7usize, 1u64), (37, 101, 2), (19, 4096, 3)] {
        let data = random(n * v, seed, 6.0);
        let targets: Vec<i64> =
            random(n, seed + 9, 1.0).iter().map(|x| ((x + 1.0) / 2.0 * (v - 1) as f32) as i64).collect();
        let t = Tensor::<AD, 1, Int>::from_data(TensorData::new(targets, [n]), &Default::default());
        let weights = tensor(random(n, seed + 5, 1.0), [n]);
        let (a, b) = (tensor(data.clone(), [n, v]), tensor(data, [n, v]));
        let fused = token_nll(a.clone(), t.clone());
        let reference = log_softmax(b.clone(), 1).gather(1, t.reshape([n, 1])).reshape([n]).neg();
        assert_close(&values(fused.clone().inner()), &values(reference.clone().inner()), "nll");
        let (ga, gb) = ((fused * weights.clone()).sum().backward(), (reference * weights).sum().backward());
        assert_close(&values(a.grad(&ga).unwrap()), &values(b.grad(&gb).unwrap()), "dlogits");
    }
    // A non-contiguous input (a transposed view) gives the same values.
    let data = random(12 * 9, 4, 3.0);
    let t = Tensor::<AD, 1, Int>::from_data(
        TensorData::new((0..9).map(|i| i % 12).collect::<Vec<i64>>(), [9]),
        &Default::default(),
    );
    let transposed = tensor(data.clone(), [12, 9]).transpose();
    let contiguous = tensor(values(tensor(data, [12, 9]).inner().transpose()), [9, 12]);
    assert_close(
        &values(token_nll(transposed, t.clone()).inner()),
        &values(token_nll(contiguous, t).inner()),
        "strided",
    );
}

#[test]
fn rms_norm_matches_burn_in_values_and_both_gradients() {
    for (b, t, d, seed) in [(1usize, 1usize, 8usize, 1u64), (3, 7, 33, 2), (2, 17, 256, 3)] {
        let data = random(b * t * d, seed, 3.0);
        let gamma_data: Vec<f32> = random(d, seed + 1, 0.5).iter().map(|g| 1.0 + g).collect();
        let (xa, xb) = (tensor(data.clone(), [b, t, d]), tensor(data, [b, t, d]));
        let (ga, gb) = (tensor(gamma_data.clone(), [d]), tensor(gamma_data, [d]));
        let fused = rms_norm(xa.clone(), ga.clone(), 1e-5);
        let rms = (xb.clone().square().mean_dim(2) + 1e-5).sqrt();
        let reference = xb.clone() / rms * gb.clone().unsqueeze();
        assert_close(&values(fused.clone().inner()), &values(reference.clone().inner()), "rms_norm");
        let up = tensor(random(b * t * d, seed + 7, 1.0), [b, t, d]);
        let (fa, fb) = ((fused * up.clone()).sum().backward(), (reference * up).sum().backward());
        assert_close(&values(xa.grad(&fa).unwrap()), &values(xb.grad(&fb).unwrap()), "dx");
        assert_close(&values(ga.grad(&fa).unwrap()), &values(gb.grad(&fb).unwrap()), "dgamma");
    }
}

#[test]
fn swiglu_matches_burn_with_every_mask_in_values_and_gradients() {
    let (b, t, w) = (2usize, 5usize, 19usize);
    let constant: Vec<f32> = (0..w).map(|j| if j % 3 == 0 { 0.0 } else { 1.3 }).collect();
    let per_token: Vec<f32> = (0..b * t * w).map(|k| ((k * 7) % 5 != 0) as u8 as f32).collect();
    let masks: [Option<(Vec<f32>, [usize; 3])>; 3] = [None, Some((constant, [1, 1, w])), Some((per_token, [b, t, w]))];
    for (i, mask) in masks.into_iter().enumerate() {
        let (g, u) = (random(b * t * w, 10 + i as u64, 4.0), random(b * t * w, 20 + i as u64, 2.0));
        let (ga, gb) = (tensor(g.clone(), [b, t, w]), tensor(g, [b, t, w]));
        let (ua, ub) = (tensor(u.clone(), [b, t, w]), tensor(u, [b, t, w]));
        let m = mask.map(|(v, s)| Tensor::<AD, 3>::from_data(TensorData::new(v, s), &Default::default()));
        let fused = swiglu(ga.clone(), ua.clone(), m.clone());
        let mut reference = silu(gb.clone()) * ub.clone();
        if let Some(m) = m {
            reference = reference * m;
        }
        assert_close(&values(fused.clone().inner()), &values(reference.clone().inner()), "swiglu");
        let dh = tensor(random(b * t * w, 30 + i as u64, 1.0), [b, t, w]);
        let (fa, fb) = ((fused * dh.clone()).sum().backward(), (reference * dh).sum().backward());
        assert_close(&values(ga.grad(&fa).unwrap()), &values(gb.grad(&fb).unwrap()), "dgate");
        assert_close(&values(ua.grad(&fa).unwrap()), &values(ub.grad(&fb).unwrap()), "dup");
    }
}

#[test]
fn rope_matches_the_rotation_matrix_in_values_and_gradients() {
    let (b, t, h, d) = (2usize, 9usize, 3usize, 8usize);
    let rope = memsinks_model::Rope::<AD>::new(d, 16, 10000.0, &Default::default());
    let data = random(b * t * h * d, 3, 2.0);
    let (xa, xb) = (tensor(data.clone(), [b, t, h, d]), tensor(data, [b, t, h, d]));
    let fused = rope.apply(xa.clone());
    // The rotation as a matrix product: (x R)[j] = −x[j + d/2] for j < d/2, x[j − d/2] after.
    let half = d / 2;
    let mut r = vec![0.0f32; d * d];
    for j in 0..half {
        r[(j + half) * d + j] = -1.0;
        r[j * d + j + half] = 1.0;
    }
    let r = Tensor::<AD, 2>::from_data(TensorData::new(r, [d, d]), &Default::default());
    let (cos, sin) = rope_tables(d, t);
    let rotated = xb.clone().reshape([b * t * h, d]).matmul(r).reshape([b, t, h, d]);
    let reference = xb.clone() * cos.reshape([1, t, 1, d]) + rotated * sin.reshape([1, t, 1, d]);
    assert_close(&values(fused.clone().inner()), &values(reference.clone().inner()), "rope");
    let up = tensor(random(b * t * h * d, 4, 1.0), [b, t, h, d]);
    let (fa, fb) = ((fused * up.clone()).sum().backward(), (reference * up).sum().backward());
    assert_close(&values(xa.grad(&fa).unwrap()), &values(xb.grad(&fb).unwrap()), "dx");
}

fn rope_tables(d: usize, t: usize) -> (Tensor<AD, 2>, Tensor<AD, 2>) {
    let (mut c, mut s) = (Vec::new(), Vec::new());
    for pos in 0..t {
        for j in 0..d {
            let angle = pos as f64 * 10000f64.powf(-2.0 * (j % (d / 2)) as f64 / d as f64);
            c.push(angle.cos() as f32);
            s.push(angle.sin() as f32);
        }
    }
    let table = |v| Tensor::<AD, 2>::from_data(TensorData::new(v, [t, d]), &Default::default());
    (table(c), table(s))
}

/// Grouped-query causal attention with and without packed documents (a one-token document
/// among them): values and the gradients of q, k and v against burn's attention on the
/// transposed, head-repeated layout with a boolean document mask.
#[test]
fn attention_matches_burn_with_groups_and_segments_in_values_and_gradients() {
    use burn::tensor::module::attention as burn_attention;
    use burn::tensor::ops::AttentionModuleOptions;
    use burn::tensor::Bool;
    use std::sync::Arc;

    let (b, t, h, kv, d) = (2usize, 13usize, 4usize, 2usize, 8usize);
    let packed: Vec<u32> = (0..b * t)
        .map(|i| match i % t {
            0..=5 => 0,
            6 => 1,
            _ => 2,
        })
        .collect();
    for segments in [None, Some(Arc::new(packed))] {
        let (q, k, v) = (random(b * t * h * d, 5, 1.5), random(b * t * kv * d, 6, 1.5), random(b * t * kv * d, 7, 1.0));
        let (qa, ka, va) =
            (tensor(q.clone(), [b, t, h, d]), tensor(k.clone(), [b, t, kv, d]), tensor(v.clone(), [b, t, kv, d]));
        let (qb, kb, vb) = (tensor(q, [b, t, h, d]), tensor(k, [b, t, kv, d]), tensor(v, [b, t, kv, d]));
        let fused = memsinks_model::kernels::attention(qa.clone(), ka.clone(), va.clone(), segments.clone());
        let repeat = |x: Tensor<AD, 4>| {
            x.swap_dims(1, 2).unsqueeze_dim::<5>(2).expand([b, kv, h / kv, t, d]).reshape([b, h, t, d])
        };
        let mask = segments.as_ref().map(|seg| {
            let blocked: Vec<bool> =
                seg.chunks(t).flat_map(|row| row.iter().flat_map(move |&q| row.iter().map(move |&k| k != q))).collect();
            Tensor::<AD, 4, Bool>::from_data(TensorData::new(blocked, [b, 1, t, t]), &Default::default())
                .expand([b, h, t, t])
        });
        let options = AttentionModuleOptions { scale: None, softcap: None, is_causal: true };
        let reference =
            burn_attention(qb.clone().swap_dims(1, 2), repeat(kb.clone()), repeat(vb.clone()), mask, None, options)
                .swap_dims(1, 2);
        let what = if segments.is_some() { "packed" } else { "per row" };
        assert_close(&values(fused.clone().inner()), &values(reference.clone().inner()), what);
        let up = tensor(random(b * t * h * d, 8, 1.0), [b, t, h, d]);
        let (fa, fb) = ((fused * up.clone()).sum().backward(), (reference * up).sum().backward());
        for (x, y, name) in [(&qa, &qb, "dq"), (&ka, &kb, "dk"), (&va, &vb, "dv")] {
            assert_close(&values(x.grad(&fa).unwrap()), &values(y.grad(&fb).unwrap()), &format!("{what} {name}"));
        }
    }
}

/// The whole model: 20 AdamW steps of the `tiny` preset with sinks on the fused kernels (flex)
/// and on the decomposed ops (ndarray), from the same weights, on the same batches: every loss
/// within 2e-4 (the backends' matmuls sum in other orders too).
#[cfg(feature = "ndarray")]
#[test]
fn the_model_trains_alike_on_fused_and_decomposed_kernels() {
    use burn::backend::NdArray;
    use burn::optim::{AdamWConfig, GradientsParams, Optimizer};
    use memsinks_model::{LmBatch, MemSinkLm, MlpMode, ModelConfig, SeqLayout};

    fn losses<B: memsinks_model::TrainBackend>(mut model: MemSinkLm<B>) -> Vec<f32> {
        let mut optim = AdamWConfig::new().with_weight_decay(0.1).init::<B, MemSinkLm<B>>();
        (0..20)
            .map(|step| {
                let rows: Vec<Vec<u32>> =
                    (0..4).map(|r| (0..33).map(|i| ((i * 7 + r * 3 + step * 5) % 64) as u32).collect()).collect();
                let batch = LmBatch::<B>::from_rows(
                    &rows,
                    &vec![vec![1.0; 32]; 4],
                    SeqLayout::per_row(&[3, 5, 3, 9], 32),
                    &Default::default(),
                );
                let loss = memsinks_model::loss::lm_loss(&model, &batch, &MlpMode::Train);
                let value = loss.clone().into_data().convert::<f32>().to_vec::<f32>().unwrap()[0];
                let grads = GradientsParams::from_grads(loss.backward(), &model);
                model = optim.step(3e-3, model.clone(), grads);
                value
            })
            .collect()
    }
    let cfg = ModelConfig::preset("tiny").unwrap();
    let fused: MemSinkLm<AD> = cfg.init(&Default::default()).unwrap();
    // The same weights on the other backend, through a saved record.
    let dir = tempfile::tempdir().unwrap();
    memsinks_model::io::save_model(&fused, &cfg, &dir.path().join("m")).unwrap();
    let (decomposed, _) =
        memsinks_model::io::load_model::<Autodiff<NdArray>>(&dir.path().join("m"), &Default::default()).unwrap();
    let (a, b) = (losses(fused), losses(decomposed));
    for (step, (x, y)) in a.iter().zip(&b).enumerate() {
        assert!((x - y).abs() < 2e-4, "step {step}: fused {x} vs decomposed {y}");
    }
    assert!(a[19] < a[0] - 0.5, "the model learns: {a:?}");
}
