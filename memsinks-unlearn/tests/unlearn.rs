//! Metrics on models with known answers, and the fold against `DropSinks`.

use std::sync::Arc;

use burn::backend::{Autodiff, Flex};
use burn::module::AutodiffModule;
use burn::tensor::{Int, Tensor, TensorData};
use memsinks_data::cache::{CacheKey, TokenCache};
use memsinks_data::corpus::PER_DOCUMENT;
use memsinks_data::{DocRows, LmBatch};
use memsinks_model::loss::lm_loss;
use memsinks_model::{DropScale, MemSinkLm, MlpMode, ModelConfig, SeqLayout};
use memsinks_train::optim::step;
use memsinks_train::OptimConfig;
use memsinks_unlearn::metrics::{greedy_extraction, loss_mia_auc, score_docs};
use memsinks_unlearn::probe::Probe;
use memsinks_unlearn::{fold_drop_sinks, ForgetSet};

type AD = Autodiff<Flex>;
const EOT: u32 = 0;

fn cache_of(docs: &[Vec<u32>], dir: &std::path::Path) -> TokenCache {
    let key = CacheKey { source_hash: "s".into(), tokenizer_hash: "t".into(), config_hash: "c".into() };
    let mut w = TokenCache::writer(&dir.join("cache"), 64, key).unwrap();
    for d in docs {
        w.push(d).unwrap();
    }
    w.finish().unwrap()
}

/// `tiny` trained until it reproduces `docs[..memorize]` verbatim.
fn memorizer(memorize: usize, cache: &TokenCache) -> MemSinkLm<Flex> {
    let cfg = ModelConfig::preset("tiny").unwrap();
    let mut model: MemSinkLm<AD> = cfg.init(&Default::default()).unwrap();
    let mut optim = OptimConfig { weight_decay: 0.0, ..Default::default() }.init::<AD, MemSinkLm<AD>>();
    let batcher = memsinks_data::Batcher::new(
        Arc::new(cache.clone()),
        Arc::new((0..memorize as u32).collect()),
        40,
        memorize,
        EOT,
        false,
    );
    let host = batcher.next_batch(&mut Default::default()).unwrap();
    let batch: LmBatch<AD> = host.to_device(&Default::default());
    // Train to a loss target rather than a step count: the float path (AVX2 or AVX-512 gemm) differs
    // between machines, and a fixed count that memorizes on one can leave a token wrong on another.
    for _ in 0..2_000 {
        let loss = lm_loss(&model, &batch, &MlpMode::Train);
        let value: f32 = loss.clone().into_scalar();
        if value < 2e-3 {
            break;
        }
        model = step(&mut optim, model, loss, 1e-2, &OptimConfig::default());
    }
    model.valid()
}

fn random_docs(n: usize, len: usize, seed: u64) -> Vec<Vec<u32>> {
    let mut rng = memsinks_data::rng::SplitMix64::new(seed);
    (0..n).map(|_| (0..len).map(|_| 1 + rng.below(63) as u32).collect()).collect()
}

#[test]
fn memorized_documents_are_extracted_and_separated_from_held_out_ones() {
    let dir = tempfile::tempdir().unwrap();
    let docs = random_docs(8, 40, 5);
    let cache = cache_of(&docs, dir.path());
    let model = memorizer(4, &cache);
    let device = Default::default();
    let mode = MlpMode::ActivateSeq { exclude: vec![] };
    let seen = greedy_extraction(&model, &cache, &PER_DOCUMENT, &[0, 1, 2, 3], &mode, (8, 16), &device);
    assert_eq!(seen.len(), 4);
    for e in &seen {
        assert_eq!(e.match_rate, 1.0, "memorized document {} not extracted", e.doc);
        assert!(e.extracted && e.verbatim_len == 16);
    }
    // Random held-out documents cannot be continued.
    let unseen = greedy_extraction(&model, &cache, &PER_DOCUMENT, &[4, 5, 6, 7], &mode, (8, 16), &device);
    let rate = unseen.iter().map(|e| e.match_rate).sum::<f64>() / 4.0;
    assert!(rate < 0.3, "held-out match rate {rate}");
    assert!(unseen.iter().all(|e| !e.extracted));
    // Teacher-forced: members have low loss and high accuracy; the loss separates them.
    let rows = |docs| DocRows { cache: &cache, docs, context: 40, batch_size: 4, end_of_text: EOT, ids: &PER_DOCUMENT };
    let members = score_docs(&model, &rows(&[0, 1, 2, 3]), &mode, &device);
    let held_out = score_docs(&model, &rows(&[4, 5, 6, 7]), &mode, &device);
    assert!(members.accuracy > 0.95 && members.nll < 0.2, "{} {}", members.accuracy, members.nll);
    assert!(held_out.nll > 2.0);
    assert_eq!(loss_mia_auc(&members, &held_out), 1.0);
    assert_eq!(members.docs.len(), 4);
    // Short documents are skipped by extraction.
    assert!(greedy_extraction(&model, &cache, &PER_DOCUMENT, &[0], &mode, (30, 16), &device).is_empty());
}

#[test]
fn folded_model_equals_drop_sinks_mode() {
    let cfg = ModelConfig::preset("tiny").unwrap().with_init_std(0.2);
    let model: MemSinkLm<Flex> = cfg.init(&Default::default()).unwrap();
    let rows: Vec<i64> = (0..24).map(|i| (i * 5 + 2) % 64).collect();
    let tokens = || Tensor::<Flex, 2, Int>::from_data(TensorData::new(rows.clone(), [2, 12]), &Default::default());
    let layout = SeqLayout::per_row(&[3, 77], 12);
    for scale in [DropScale::Reference, DropScale::Plain, DropScale::ActivityMatched] {
        let want = model.forward(tokens(), &layout, &MlpMode::DropSinks { scale });
        let (folded, folded_cfg) = fold_drop_sinks(&model, &cfg, scale, &Default::default()).unwrap();
        assert_eq!(folded_cfg.d_hidden, cfg.num_general());
        assert_eq!(folded_cfg.num_sink(), 0);
        let got = folded.forward(tokens(), &layout, &MlpMode::Train);
        let diff: f32 = (got - want).abs().max().into_scalar();
        assert!(diff < 1e-5, "{scale:?}: max difference {diff}");
    }
}

#[test]
fn fine_tuning_unlearning_raises_the_forget_loss() {
    use memsinks_unlearn::finetune::{unlearn, FinetuneConfig, Objective};
    let dir = tempfile::tempdir().unwrap();
    let (exp, corpus, model_cfg) = smoke_corpus(dir.path());
    for (objective, forget) in [
        (Objective::GradientAscent, ForgetSet::Repeated),
        (Objective::GradientDifference, ForgetSet::Canary),
        (Objective::Npo, ForgetSet::Repeated),
    ] {
        let model: MemSinkLm<AD> = model_cfg.init(&Default::default()).unwrap();
        let cfg = FinetuneConfig {
            objective,
            lr: 3e-3,
            steps: 10,
            eval_every: 5,
            eval_docs: 8,
            batch_size: 8,
            ..Default::default()
        };
        let probe = Probe::new(&corpus, forget.clone(), exp.data.context, cfg.batch_size, cfg.eval_docs).unwrap();
        let curve = unlearn(model, &probe, &cfg, &MlpMode::Train, None, &Default::default()).unwrap().curve;
        assert_eq!(curve.iter().map(|p| p.setting).collect::<Vec<_>>(), vec![0.0, 5.0, 10.0], "{objective:?}");
        let last = curve.last().unwrap();
        assert!(last.delta_forget > 0.2, "{objective:?} on {forget:?}: forget loss moved by {}", last.delta_forget);
        assert!(last.val_loss.is_finite());
    }
}

#[test]
fn pruning_nothing_changes_nothing_and_pruning_everything_zeroes_the_mlps() {
    use memsinks_unlearn::localize::prune;
    use memsinks_unlearn::scorers::random_scores;
    let cfg = ModelConfig::preset("tiny").unwrap().with_init_std(0.2);
    let model: MemSinkLm<Flex> = cfg.init(&Default::default()).unwrap();
    let rows: Vec<i64> = (0..24).map(|i| (i * 7 + 1) % 64).collect();
    let tokens = || Tensor::<Flex, 2, Int>::from_data(TensorData::new(rows.clone(), [2, 12]), &Default::default());
    let layout = SeqLayout::per_row(&[3, 77], 12);
    let logits = |m: &MemSinkLm<Flex>| m.forward(tokens(), &layout, &MlpMode::Train);
    let scores = random_scores(cfg.n_layers, cfg.d_hidden, 1);
    let same = prune(&model, &scores, 0.0, &Default::default());
    let d0: f32 = (logits(&same) - logits(&model)).abs().max().into_scalar();
    assert_eq!(d0, 0.0);
    let all = prune(&model, &scores, 1.0, &Default::default());
    let mut zeroed = model.clone();
    for b in zeroed.blocks.iter_mut() {
        b.mlp.down_proj.weight = burn::module::Param::from_tensor(b.mlp.down_proj.weight.val().zeros_like());
    }
    let d1: f32 = (logits(&all) - logits(&zeroed)).abs().max().into_scalar();
    assert!(d1 < 1e-6, "pruning every unit differs from a zeroed MLP by {d1}");
    let half = prune(&model, &scores, 0.5, &Default::default());
    let zero_columns = values2(half.blocks[0].mlp.gate_proj.weight.val())
        .chunks(cfg.d_hidden)
        .next()
        .unwrap()
        .iter()
        .filter(|&&v| v == 0.0)
        .count();
    assert_eq!(zero_columns, cfg.d_hidden / 2);
}

fn values2(t: Tensor<Flex, 2>) -> Vec<f32> {
    t.into_data().convert::<f32>().to_vec().unwrap()
}

#[test]
fn activation_scores_rank_the_units_the_forget_set_uses() {
    use memsinks_unlearn::localize::{prune_sweep, PruneConfig};
    use memsinks_unlearn::scorers::{activation_scores, Magnitude, Scorer};
    let dir = tempfile::tempdir().unwrap();
    let (exp, corpus, model_cfg) = smoke_corpus(dir.path());
    let model: MemSinkLm<Flex> = with_dead_unit(model_cfg.init(&Default::default()).unwrap(), 5);
    let hidden = model_cfg.d_hidden;
    let docs = corpus.manifest.indices(memsinks_data::Split::Repeated);
    let batches = doc_batches(&corpus, &docs, exp.data.context);
    for magnitude in [Magnitude::OfMean, Magnitude::MeanOfAbs] {
        let scores = activation_scores(&model, &batches, &MlpMode::Train, magnitude, &Default::default());
        assert_eq!(scores.len(), model_cfg.n_layers);
        assert_eq!(scores[0][5], 0.0);
        assert!(scores[0].iter().filter(|&&s| s > 0.0).count() == hidden - 1);
    }
    // |mean(a)| ≤ mean(|a|), strictly for some unit: SiLU-gated activations take both signs.
    let of_mean = activation_scores(&model, &batches, &MlpMode::Train, Magnitude::OfMean, &Default::default());
    let mean_abs = activation_scores(&model, &batches, &MlpMode::Train, Magnitude::MeanOfAbs, &Default::default());
    for (a, b) in of_mean[0].iter().zip(&mean_abs[0]) {
        assert!(*a <= b * (1.0 + 1e-5) + 1e-9, "|mean a| {a} > mean |a| {b}");
    }
    assert!(of_mean[0].iter().zip(&mean_abs[0]).any(|(a, b)| *a < 0.9 * b), "the two magnitudes never differ");
    let cfg = PruneConfig {
        scorer: Scorer::Activations,
        fractions: vec![1.0, 0.1],
        score_docs: 100,
        eval_docs: 8,
        batch_size: 8,
        score_tokens: Default::default(),
        per_sequence: false,
    };
    let model: MemSinkLm<AD> = AutodiffModule::from_inner(model);
    let probe = Probe::new(&corpus, ForgetSet::Repeated, exp.data.context, cfg.batch_size, cfg.eval_docs).unwrap();
    let swept = prune_sweep(&model, &probe, &cfg, &MlpMode::Train, None, &Default::default());
    let (curve, pruned) = (swept.curve, swept.model);
    assert_eq!(curve.iter().map(|p| p.setting).collect::<Vec<_>>(), vec![0.0, 0.1, 1.0], "sorted fractions");
    assert_eq!(curve[0].delta_forget, 0.0);
    assert!(curve[2].delta_forget.abs() > 0.0, "pruning every unit must change the forget loss");
    let all_zero: f32 = pruned.blocks[0].mlp.down_proj.weight.val().abs().sum().into_scalar();
    assert_eq!(all_zero, 0.0, "the returned model is pruned at the largest fraction");
}

/// `model` with unit `unit` of the first layer cut off from the output (zero `down_proj` row).
fn with_dead_unit(model: MemSinkLm<Flex>, unit: usize) -> MemSinkLm<Flex> {
    silence(model, 0, &[unit])
}

/// `model` with `units` of `layer` cut off from the output (zero `down_proj` rows).
fn silence(mut model: MemSinkLm<Flex>, layer: usize, units: &[usize]) -> MemSinkLm<Flex> {
    let hidden = model.sinks().hidden();
    let keep: Vec<f32> = (0..hidden).map(|j| if units.contains(&j) { 0.0 } else { 1.0 }).collect();
    let column = Tensor::<Flex, 2>::from_data(TensorData::new(keep, [hidden, 1]), &Default::default());
    let proj = &mut model.blocks[layer].mlp.down_proj;
    proj.weight = burn::module::Param::from_tensor(proj.weight.val() * column);
    model
}

/// The scorers' batches of `docs` (8 rows each) on the default device.
fn doc_batches<B: burn::tensor::backend::Backend>(
    corpus: &memsinks_data::PreparedCorpus,
    docs: &[usize],
    context: usize,
) -> Vec<LmBatch<B>> {
    memsinks_unlearn::scorers::doc_batches(&DocRows::of(corpus, docs, context, 8), &Default::default())
}

/// Zero-out is exact: each score equals the loss change of pruning that one unit, and a unit
/// cut off from the output scores zero. Integrated gradients approximate the same quantity
/// (completeness: per layer they sum to the loss change of zeroing the whole layer's MLP).
#[test]
fn zero_out_is_exact_and_integrated_gradients_are_complete() {
    use memsinks_unlearn::scorers::{integrated_gradient_scores, zero_out_scores, IgObjective, IgPath, IgPositions};
    let dir = tempfile::tempdir().unwrap();
    let (exp, corpus, model_cfg) = smoke_corpus(dir.path());
    let model = with_dead_unit(model_cfg.clone().with_init_std(0.1).init(&Default::default()).unwrap(), 3);
    let docs: Vec<usize> = corpus.manifest.indices(memsinks_data::Split::Repeated).into_iter().take(3).collect();
    let batches = doc_batches::<Flex>(&corpus, &docs, exp.data.context);
    let mode = MlpMode::Train;
    let zero = zero_out_scores(&model, &batches, &mode, &Default::default());
    assert!(zero[0][3].abs() < 1e-5, "dead unit scored {}", zero[0][3]);
    let loss = |m: &MemSinkLm<Flex>| {
        score_docs(
            m,
            &DocRows { end_of_text: 0, ..DocRows::of(&corpus, &docs, exp.data.context, 8) },
            &mode,
            &Default::default(),
        )
        .nll
    };
    let base = loss(&model);
    for (layer, unit) in [(0, 7), (1, 20)] {
        let want = loss(&silence(model.clone(), layer, &[unit])) - base;
        let got = zero[layer][unit] as f64;
        assert!(
            (want - got).abs() < 1e-4 + 1e-2 * want.abs(),
            "layer {layer} unit {unit}: zero-out {got} vs pruned {want}"
        );
    }
    let ad_model: MemSinkLm<AD> = AutodiffModule::from_inner(model.clone());
    let ad_batches = doc_batches::<AD>(&corpus, &docs, exp.data.context);
    let all_units: Vec<usize> = (0..model_cfg.d_hidden).collect();
    let ig = |objective, positions| {
        let path = IgPath { steps: 20, objective, positions };
        integrated_gradient_scores(&ad_model, &ad_batches, &mode, path, &Default::default())
    };
    // Completeness for the summed NLL, every position scaled at once: per layer the
    // attributions add up to the loss increase of zeroing the layer.
    let scores = ig(IgObjective::SummedNll, IgPositions::AllAtOnce);
    assert!(scores[0][3].abs() < 1e-6);
    for (layer, scores) in scores.iter().enumerate() {
        let want = loss(&silence(model.clone(), layer, &all_units)) - base;
        let got: f64 = scores.iter().map(|&s| s as f64).sum();
        assert!((want - got).abs() < 0.05 * want.abs().max(0.05), "layer {layer}: IG sum {got} vs zeroed layer {want}");
    }
    // The target probability (MemPi): the attributions add up to the mean probability the layer
    // provides, all positions at once against zeroing the layer, one position at a time against
    // zeroing the layer at each target's own position alone (every earlier position intact).
    let mean_probability = |logits_of: &dyn Fn(&LmBatch<Flex>) -> Tensor<Flex, 3>| {
        let (mut sum, mut targets) = (0.0f64, 0.0f64);
        for batch in &batches {
            let (nll, mask) = memsinks_model::loss::token_nll_of_logits(logits_of(batch), batch);
            sum += f64::from((nll.neg().exp() * mask.clone()).sum().into_scalar());
            targets += f64::from(mask.sum().into_scalar());
        }
        sum / targets
    };
    let full = mean_probability(&|b| model.forward(b.inputs.clone(), &b.layout, &mode));
    let one_at_a_time = ig(IgObjective::TargetProbability, IgPositions::OneAtATime);
    let all_at_once = ig(IgObjective::TargetProbability, IgPositions::AllAtOnce);
    assert_ne!(one_at_a_time, all_at_once, "the two scalings must attribute differently");
    assert!(one_at_a_time[0][3].abs() < 1e-6 && all_at_once[0][3].abs() < 1e-6, "dead unit attributed");
    for (layer, (isolated, shared)) in one_at_a_time.iter().zip(&all_at_once).enumerate() {
        let zeroed = silence(model.clone(), layer, &all_units);
        let want_shared = full - mean_probability(&|b| zeroed.forward(b.inputs.clone(), &b.layout, &mode));
        let want_isolated = full
            - mean_probability(&|b| {
                let zero = Tensor::zeros([b.layout.batch, b.layout.seq_len, model_cfg.d_hidden], &Default::default());
                model.forward_position_isolated(b.inputs.clone(), &b.layout, &mode, layer, zero)
            });
        for (what, scores, want) in [("one at a time", isolated, want_isolated), ("all at once", shared, want_shared)] {
            let got: f64 = scores.iter().map(|&s| s as f64).sum();
            assert!(
                (want - got).abs() < 0.05 * want.abs().max(0.002),
                "layer {layer}, {what}: IG sum {got} vs the layer's probability {want}"
            );
        }
    }
}

/// Slimming and hard-concrete masks are trained through a model that memorized the forget set:
/// a unit cut off from the output feels only the sparsity penalty and shrinks at Adam's pace
/// (`lr` per step), while the units the memorization needs are held up.
#[test]
fn learned_masks_shrink_a_dead_unit_and_keep_the_needed_ones() {
    use memsinks_unlearn::scorers::{score_units, Scorer, SlimmingScore};
    let dir = tempfile::tempdir().unwrap();
    let (exp, corpus, _) = smoke_corpus(dir.path());
    let model: MemSinkLm<AD> =
        AutodiffModule::from_inner(with_dead_unit(memorizing_smoke_model(&exp, &corpus).valid(), 3));
    let docs = corpus.manifest.indices(memsinks_data::Split::Repeated);
    let score = |scorer: Scorer| {
        score_units(
            &scorer,
            &model,
            &DocRows::of(&corpus, &docs, exp.data.context, 8),
            &MlpMode::Train,
            &Default::default(),
        )
    };
    let slimming = |score| Scorer::Slimming { steps: 30, lr: 0.05, l1: 1.0, score };
    let slim = score(slimming(SlimmingScore::Clamped));
    let max = |v: &[f32]| v.iter().cloned().fold(f32::MIN, f32::max);
    assert!(slim[0][3] < 0.25, "slimming: dead unit's coefficient {}", slim[0][3]);
    assert!(max(&slim[0]) > 0.5, "slimming: every coefficient collapsed");
    assert!(slim.iter().flatten().all(|c| (0.0..=1.0).contains(c)), "clamped scores lie in [0, 1]");
    let absolute = score(slimming(SlimmingScore::Absolute));
    for (c, a) in slim.iter().flatten().zip(absolute.iter().flatten()) {
        // The same trained coefficient c: clamp(c, 0, 1) is min(|c|, 1) for c ≥ 0 and 0 for c < 0.
        assert!(*c == a.min(1.0) || *c == 0.0, "clamp(c, 0, 1) = {c} vs |c| = {a}");
    }
    let hc = score(Scorer::HardConcrete { steps: 30, lr: 0.05, l0: 1.0, init_log_alpha: 3.0 });
    assert!((hc[0][3] - 1.5).abs() < 0.2, "hard-concrete: dead unit's log-odds {}", hc[0][3]);
    assert!(max(&hc[0]) > hc[0][3] + 0.3, "hard-concrete: no unit held up by the loss");
}

/// Relearning a few forgotten documents after gradient ascent brings back part of the others'
/// memorization beyond what fine-tuning on as many held-out documents does; the test starts at
/// the first curve point that forgot the asked-for amount, and is reported for every size that
/// leaves documents to measure.
#[test]
fn relearning_after_gradient_ascent_recovers_the_other_documents_beyond_a_control() {
    use memsinks_unlearn::registry::{load_method, run_method};
    let dir = tempfile::tempdir().unwrap();
    let (exp, corpus, _) = smoke_corpus(dir.path());
    let model = memorizing_smoke_model(&exp, &corpus);
    let sets: Vec<String> = [
        "lr=3e-3",
        "steps=10",
        "eval_every=1",
        "eval_docs=8",
        "batch_size=8",
        "relearn.sizes=[1,4,16]",
        "relearn.steps=10",
        "relearn.lr=1e-3",
        // One relearned document moves the others by a few tenths of a nat either way from draw to
        // draw (and between float paths); the claim is checked on the mean over four draws.
        "relearn.draws=4",
        // This test is about what relearning measures; the bound's own test is below.
        "relearn.max_control_delta_val=100",
        "relearn.start_at_delta_forget=0.3",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let (name, file) = load_method("gradient-ascent", &sets).unwrap();
    let result =
        run_method(&name, &file, model, &corpus, ForgetSet::Repeated, exp.data.context, &Default::default()).unwrap();
    assert!(result.curve.last().unwrap().delta_forget > 0.5);
    // Relearning starts at the first point past 0.3 nats, not at the last step.
    let start = result.relearn_start.clone().unwrap();
    let at = result.curve.iter().position(|p| p.setting == start.setting).unwrap();
    assert!(start.delta_forget >= 0.3 && result.curve[at - 1].delta_forget < 0.3, "{start:?}");
    assert!(start.setting < 10.0 && start.target_delta_forget == Some(0.3), "{start:?}");
    // The smoke corpus has 8 repeated documents: 16 is skipped, 1 and 4 are measured on the 4 after
    // them, in each of four draws of which documents are relearned.
    let sizes: Vec<(usize, usize)> = result.relearn.iter().map(|r| (r.draw, r.relearned)).collect();
    let want: Vec<(usize, usize)> = (0..4).flat_map(|draw| [(draw, 1), (draw, 4)]).collect();
    assert_eq!(sizes, want);
    for r in &result.relearn {
        assert_eq!((r.others, r.control_intact), (4, Some(true)));
        assert_eq!(r.recovered_nats, Some(r.others_control.unwrap() - r.others_relearned));
        assert!(r.others_treated > r.others_original + 0.3, "{r:?}");
        let control = r.others_control.expect("40 validation documents leave held-out ones for the control");
        let removed = r.others_treated - r.others_original;
        assert!((r.recovered.unwrap() - (control - r.others_relearned) / removed).abs() < 1e-12, "{r:?}");
        assert!(r.delta_val_relearned.unwrap().is_finite() && r.delta_val_control.unwrap().is_finite());
    }
    let mean_recovered = result.relearn.iter().map(|r| r.recovered_nats.unwrap()).sum::<f64>() / 8.0;
    assert!(mean_recovered > 0.0, "relearning the forgotten documents helps the others more: {:#?}", result.relearn);
    // The draws relearn different documents, so the others measured differ.
    assert_ne!(result.relearn[0].others_treated, result.relearn[2].others_treated);
    // A control that moves L_val beyond its bound leaves the model broken: no recovery reported.
    let mut strict = sets.clone();
    strict.retain(|s| !s.starts_with("relearn.max_control_delta_val") && !s.starts_with("relearn.draws"));
    strict.push("relearn.max_control_delta_val=1e-9".into());
    let (name, file) = load_method("gradient-ascent", &strict).unwrap();
    let model = memorizing_smoke_model(&exp, &corpus);
    let broken =
        run_method(&name, &file, model, &corpus, ForgetSet::Repeated, exp.data.context, &Default::default()).unwrap();
    assert!(!broken.relearn.is_empty());
    for r in &broken.relearn {
        assert_eq!(r.control_intact, Some(false), "{r:?}");
        assert!(r.recovered.is_none() && r.recovered_nats.is_none(), "{r:?}");
    }
}

/// The `smoke` standard model trained for a few epochs so that it memorizes its repeated set.
fn memorizing_smoke_model(
    exp: &memsinks_train::ExperimentConfig,
    corpus: &memsinks_data::PreparedCorpus,
) -> MemSinkLm<AD> {
    let model_cfg = exp.model_config(corpus.tokenizer.vocab_size()).unwrap();
    let mut model: MemSinkLm<AD> = model_cfg.init(&Default::default()).unwrap();
    let mut optim = OptimConfig { weight_decay: 0.0, ..Default::default() }.init::<AD, MemSinkLm<AD>>();
    let docs = corpus.manifest.indices(memsinks_data::Split::Repeated);
    let batches = doc_batches::<AD>(corpus, &docs, exp.data.context);
    for _ in 0..60 {
        for batch in &batches {
            let loss = lm_loss(&model, batch, &MlpMode::Train);
            model = step(&mut optim, model, loss, 3e-3, &OptimConfig::default());
        }
    }
    model
}

/// The `smoke` experiment's corpus prepared in `dir`, with the standard model's configuration.
fn smoke_corpus(
    dir: &std::path::Path,
) -> (memsinks_train::ExperimentConfig, memsinks_data::PreparedCorpus, ModelConfig) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../experiments/smoke.ron");
    let exp = memsinks_train::ExperimentConfig::load(&path, &["train.method=Standard".into()]).unwrap();
    let corpus = memsinks_data::prepare(&exp.data, dir, false).unwrap();
    let model_cfg = exp.model_config(corpus.tokenizer.vocab_size()).unwrap();
    (exp, corpus, model_cfg)
}

#[test]
fn an_empty_forget_set_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../experiments/smoke.ron");
    let sets = ["data.canary.docs=0".into(), "train.method=Standard".into()];
    let exp = memsinks_train::ExperimentConfig::load(&path, &sets).unwrap();
    let corpus = memsinks_data::prepare(&exp.data, dir.path(), false).unwrap();
    let model: MemSinkLm<AD> =
        exp.model_config(corpus.tokenizer.vocab_size()).unwrap().init(&Default::default()).unwrap();
    let err = Probe::new(&corpus, ForgetSet::Canary, exp.data.context, 8, 8).err().unwrap();
    assert!(err.to_string().contains("canary"), "{err}");
    // Dropping sinks needs a model with sinks.
    let (name, file) = memsinks_unlearn::load_method("drop-sinks", &[]).unwrap();
    let err = memsinks_unlearn::run_method(
        &name,
        &file,
        model,
        &corpus,
        ForgetSet::Repeated,
        exp.data.context,
        &Default::default(),
    );
    assert!(err.unwrap_err().to_string().contains("no"), "drop-sinks on a standard model");
}

/// `docs/extending.md` walks a newcomer through adding the `WeightNorm` scorer: the method file it
/// shows is the shipped one, a unit whose weights are zeroed scores 0, and the method runs end to
/// end through the registry on a model that memorized the smoke corpus.
#[test]
fn the_extending_guide_example_is_the_shipped_method_and_runs() {
    use memsinks_unlearn::localize::prune;
    use memsinks_unlearn::registry::{load_method, run_method};
    use memsinks_unlearn::scorers::{random_scores, weight_norm_scores};
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let guide = std::fs::read_to_string(root.join("docs/extending.md")).unwrap();
    let block = guide.split("```ron\n").nth(1).and_then(|rest| rest.split("```").next()).expect("a RON block");
    let shown: String = block.trim_end().lines().map(|l| format!("{}\n", l.strip_prefix("   ").unwrap_or(l))).collect();
    let shipped = std::fs::read_to_string(root.join("memsinks-unlearn/methods/prune-weight-norm.ron")).unwrap();
    assert_eq!(shown, shipped, "docs/extending.md shows another file than methods/prune-weight-norm.ron");

    // Zeroed units score 0, every other unit more.
    let model: MemSinkLm<Flex> = ModelConfig::preset("tiny").unwrap().init(&Default::default()).unwrap();
    let chosen = random_scores(model.blocks.len(), model.sinks().hidden(), 7);
    let pruned = prune(&model, &chosen, 0.25, &Default::default());
    for (layer, scores) in weight_norm_scores(&pruned).iter().enumerate() {
        let zeros = scores.iter().filter(|&&s| s == 0.0).count();
        assert_eq!(zeros, (scores.len() as f64 * 0.25).round() as usize, "layer {layer}: {scores:?}");
        assert!(scores.iter().all(|s| s.is_finite() && *s >= 0.0));
    }

    let dir = tempfile::tempdir().unwrap();
    let (exp, corpus, _) = smoke_corpus(dir.path());
    let model = memorizing_smoke_model(&exp, &corpus);
    let sets = ["fractions=[0.1,0.5,0.9]".to_string(), "eval_docs=8".into(), "batch_size=8".into()];
    let (name, file) = load_method("prune-weight-norm", &sets).unwrap();
    let result =
        run_method(&name, &file, model, &corpus, ForgetSet::Repeated, exp.data.context, &Default::default()).unwrap();
    let settings: Vec<f64> = result.curve.iter().map(|p| p.setting).collect();
    assert_eq!(settings, vec![0.0, 0.1, 0.5, 0.9]);
    assert_eq!(result.curve[0].delta_forget, 0.0);
    // Pruning 90 % of the largest units of every layer destroys what the model memorized.
    assert!(result.curve[3].delta_forget > 0.5, "{:?}", result.curve);
}

/// MemPi's protocol: a scorer reads only the continuation after a prompt, and scores each
/// sequence alone, the per-sequence scores averaged as per-layer ranks.
#[test]
fn scorers_read_the_continuation_only_and_per_sequence_when_asked() {
    use memsinks_unlearn::finetune::ScoreTokens;
    use memsinks_unlearn::registry::{load_method, run_method};
    use memsinks_unlearn::scorers::{rank_normalized, score_units_on, scored_batches, Scorer};
    assert_eq!(rank_normalized(&[vec![3.0, -1.0, 3.0, 0.5]]), vec![vec![2.0 / 3.0, 0.0, 2.0 / 3.0, 1.0 / 3.0]]);
    let dir = tempfile::tempdir().unwrap();
    let (exp, corpus, _) = smoke_corpus(dir.path());
    let model = memorizing_smoke_model(&exp, &corpus);
    let docs: Vec<usize> = corpus.manifest.indices(memsinks_data::Split::Repeated).into_iter().take(3).collect();
    let rows = DocRows::of(&corpus, &docs, exp.data.context, 8);
    let device = Default::default();
    let weight = |tokens| -> f32 {
        scored_batches::<Flex>(&rows, tokens, &device).iter().map(|b| b.loss_mask.clone().sum().into_scalar()).sum()
    };
    let (all, continuation) = (weight(ScoreTokens::All), weight(ScoreTokens::Continuation { prompt: 8 }));
    // The first 7 targets of each row predict prompt tokens (the smoke stories are longer than 8).
    assert_eq!(all - continuation, 7.0 * docs.len() as f32);
    let mode = MlpMode::Train;
    let pooled = score_units_on(&Scorer::Activations, &model, &rows, ScoreTokens::All, &mode, &device);
    let read =
        score_units_on(&Scorer::Activations, &model, &rows, ScoreTokens::Continuation { prompt: 8 }, &mode, &device);
    assert_ne!(pooled, read, "scores must depend on the tokens read");
    // Through the registry: per sequence on the continuation, end to end.
    let sets: Vec<String> = [
        "score_docs=3",
        "per_sequence=true",
        r#"score_tokens={"Continuation":{"prompt":8}}"#,
        "fractions=[0.1,0.9]",
        "eval_docs=8",
        "batch_size=8",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let (name, file) = load_method("prune-activations", &sets).unwrap();
    let result = run_method(&name, &file, model, &corpus, ForgetSet::Repeated, exp.data.context, &device).unwrap();
    assert_eq!(result.curve.len(), 3);
    assert!(result.curve[2].delta_forget > result.curve[1].delta_forget, "{:?}", result.curve);
    let bad = ["score_tokens={\"Continuation\":{\"prompt\":0}}".to_string()];
    let err = load_method("prune-activations", &bad).unwrap_err().to_string();
    assert!(err.contains("prompt"), "{err}");
}
