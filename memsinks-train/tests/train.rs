//! Training: the loss goes down on `smoke`, isolation holds through one optimizer step, gradient
//! masking spares the general MLP weights, non-finite losses stop the run.

use std::path::Path;

use burn::backend::{Autodiff, Flex};
use burn::tensor::Tensor;
use memsinks_data::LmBatch;
use memsinks_model::loss::lm_loss;
use memsinks_model::{MemSinkLm, MlpMode, ModelConfig, SeqLayout};
use memsinks_train::optim::step;
use memsinks_train::{train, ExperimentConfig, OptimConfig, TrainError};

type AD = Autodiff<Flex>;

fn smoke(sets: &[&str]) -> ExperimentConfig {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../experiments/smoke.ron");
    ExperimentConfig::load(&path, &sets.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
}

fn metric_lines(run: &Path, kind: &str) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["kind"] == kind)
        .collect()
}

#[test]
fn loss_goes_down_on_smoke_and_the_run_directory_is_complete() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = smoke(&["train.steps=60", "train.eval_every=20"]);
    let summary = train::<AD>(&cfg, dir.path(), None, false, vec![Default::default()]).unwrap();
    assert_eq!(summary.steps, 60);
    let train_lines = metric_lines(dir.path(), "train");
    let first = train_lines.first().unwrap()["loss"].as_f64().unwrap();
    let last = train_lines.last().unwrap()["loss"].as_f64().unwrap();
    assert!(last < first - 0.5, "training loss {first} -> {last}");
    let evals = metric_lines(dir.path(), "eval");
    assert_eq!(evals.len(), 3);
    for key in ["val_loss", "rep_loss_sinks", "rep_loss_nosinks", "canary_loss_sinks", "canary_loss_nosinks"] {
        assert!(evals[2][key].as_f64().unwrap().is_finite(), "{key}");
    }
    for f in ["config.ron", "train.json", "final/model.mpk", "final/model.ron", "checkpoint/cursor-3.json"] {
        assert!(dir.path().join(f).exists(), "{f} missing");
    }
    // A finished run is never trained over, with or without --resume.
    let again = train::<AD>(&cfg, dir.path(), None, false, vec![Default::default()]).unwrap_err();
    assert!(again.to_string().contains("finished"), "{again}");
    let resumed = train::<AD>(&cfg, dir.path(), None, true, vec![Default::default()]).unwrap_err();
    assert!(resumed.to_string().contains("finished"), "{resumed}");
}

fn one_batch(cfg: &ModelConfig, id: i64, route: bool) -> LmBatch<AD> {
    let rows: Vec<Vec<u32>> =
        (0..4).map(|r| (0..17).map(|i| ((i * 7 + r * 3) % cfg.vocab_size) as u32).collect()).collect();
    let mut layout = SeqLayout::per_row(&[id; 4], 16);
    if route {
        layout = layout.with_route_to_sinks(vec![true; 64]);
    }
    LmBatch::from_rows(&rows, &vec![vec![1.0; 16]; 4], layout, &Default::default())
}

fn values(t: Tensor<AD, 2>) -> Vec<f32> {
    t.into_data().convert::<f32>().to_vec().unwrap()
}

/// Hidden-unit slices of every MLP weight: gate_proj/up_proj columns and proj rows, per layer.
fn unit_weights(model: &MemSinkLm<AD>) -> Vec<Vec<Vec<f32>>> {
    model
        .blocks
        .iter()
        .map(|b| {
            let (w1, w2, w3) = (
                values(b.mlp.gate_proj.weight.val()),
                values(b.mlp.up_proj.weight.val()),
                values(b.mlp.down_proj.weight.val()),
            );
            let [d, hidden] = b.mlp.gate_proj.weight.val().dims();
            (0..hidden)
                .map(|j| {
                    let mut v: Vec<f32> = (0..d).map(|i| w1[i * hidden + j]).collect();
                    v.extend((0..d).map(|i| w2[i * hidden + j]));
                    v.extend_from_slice(&w3[j * d..(j + 1) * d]);
                    v
                })
                .collect()
        })
        .collect()
}

#[test]
fn one_step_leaves_sinks_outside_the_mask_unchanged() {
    let cfg = ModelConfig::preset("tiny").unwrap();
    let model: MemSinkLm<AD> = cfg.init(&Default::default()).unwrap();
    let before = unit_weights(&model);
    let id = 4242;
    let mask = model.sink_pool().mask(id, 0);
    let n_gen = model.sinks().num_general;
    let mut optim = OptimConfig { weight_decay: 0.0, ..Default::default() }.init::<AD, MemSinkLm<AD>>();
    let loss = lm_loss(&model, &one_batch(&cfg, id, false), &MlpMode::Train);
    let model = step(&mut optim, model, loss, 1e-2, &OptimConfig::default());
    let after = unit_weights(&model);
    for (layer, (b, a)) in before.iter().zip(&after).enumerate() {
        for j in 0..cfg.d_hidden {
            let active = j < n_gen || mask[j - n_gen];
            if active {
                assert_ne!(b[j], a[j], "layer {layer} unit {j} is active and must move");
            } else {
                assert_eq!(b[j], a[j], "layer {layer} sink {j} is outside the mask and must not move");
            }
        }
    }
}

#[test]
fn gradient_masking_leaves_general_mlp_weights_untouched() {
    let cfg = ModelConfig::preset("tiny").unwrap();
    let model: MemSinkLm<AD> = cfg.init(&Default::default()).unwrap();
    let before = unit_weights(&model);
    let attn_before = values(model.blocks[0].attn.q_proj.weight.val());
    let n_gen = model.sinks().num_general;
    let mut optim = OptimConfig { weight_decay: 0.0, ..Default::default() }.init::<AD, MemSinkLm<AD>>();
    let loss = lm_loss(&model, &one_batch(&cfg, 99, true), &MlpMode::Train);
    let model = step(&mut optim, model, loss, 1e-2, &OptimConfig::default());
    let after = unit_weights(&model);
    for (b, a) in before.iter().zip(&after) {
        for j in 0..n_gen {
            assert_eq!(b[j], a[j], "general unit {j} moved under gradient masking");
        }
        assert!((n_gen..cfg.d_hidden).any(|j| b[j] != a[j]), "no sink unit moved");
    }
    // Attention is not routed: it still learns from the batch.
    assert_ne!(attn_before, values(model.blocks[0].attn.q_proj.weight.val()));
}

#[test]
fn every_method_trains_through_the_same_path() {
    for method in ["Standard", "Dedup", "GradientMasking"] {
        let dir = tempfile::tempdir().unwrap();
        let cfg = smoke(&[&format!("train.method={method}"), "train.steps=12", "train.eval_every=6"]);
        let summary = train::<AD>(&cfg, dir.path(), None, false, vec![Default::default()]).unwrap();
        assert_eq!(summary.steps, 12, "{method}");
        let evals = metric_lines(dir.path(), "eval");
        if method != "GradientMasking" {
            // Without sinks, both modes are the same model.
            assert_eq!(evals[1]["rep_loss_sinks"], evals[1]["rep_loss_nosinks"], "{method}");
        }
    }
}

#[test]
fn gradient_accumulation_takes_the_same_steps_with_more_rows() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = smoke(&["train.grad_accumulation=2", "train.steps=8", "train.eval_every=4"]);
    let summary = train::<AD>(&cfg, dir.path(), None, false, vec![Default::default()]).unwrap();
    assert_eq!((summary.steps, summary.rows_per_step), (8, 16));
    assert_eq!(summary.tokens_seen, 8 * 16 * cfg.data.context as u64);
    assert_eq!(metric_lines(dir.path(), "eval").last().unwrap()["step"], 8);
}

/// Copies the files of run directory `from` (not its corpus) to `to`.
fn copy_run(from: &Path, to: &Path) {
    for entry in walk(from) {
        let target = to.join(entry.strip_prefix(from).unwrap());
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        std::fs::copy(&entry, target).unwrap();
    }
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

/// Leaves in run directory `run` what a run killed after round `round`'s checkpoint leaves: no
/// summary or final model, no checkpoint or cursor of a later round.
fn cut_back_to_round(run: &Path, round: usize) {
    for file in walk(run) {
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        let later = name
            .split(['-', '.'])
            .nth(1)
            .and_then(|r| r.parse::<usize>().ok())
            .is_some_and(|r| r > round && file.parent().unwrap().ends_with("checkpoint"));
        if later || name.starts_with("train.json") || file.parent().unwrap().ends_with("final") {
            std::fs::remove_file(file).unwrap();
        }
    }
}

/// burn-train's multi-device strategy on the CPU. flex has one device, and burn-train runs one
/// worker per entry of the device list, so the same device twice runs the whole multi-device
/// path — a model copy and a slice of the loader per worker, gradients summed on the main device,
/// one optimizer step — that two cuda GPUs take (minus the copies between them). With the same
/// global batch (8 rows x 2 workers, or 8 rows x 2 accumulated micro-batches) the same
/// micro-batches make each step, so the runs agree; a two-worker run cut back to round 2 resumes
/// on two workers and on one device where the whole run ended.
#[test]
fn two_workers_train_like_one_device_with_the_same_global_batch_and_resume_on_either() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let base = ["train.steps=40", "train.eval_every=10", "train.keep_checkpoints=10"];
    let one_cfg = smoke(&[&base[..], &["train.grad_accumulation=2"]].concat());
    let two_cfg = smoke(&[&base[..], &["train.devices=2"]].concat());
    let one_device = || vec![Default::default()];
    let two_workers = || vec![Default::default(), Default::default()];
    let run = |name: &str| dir.path().join(name);
    let one = train::<AD>(&one_cfg, &run("one"), Some(&data), false, one_device()).unwrap();
    let two = train::<AD>(&two_cfg, &run("two"), Some(&data), false, two_workers()).unwrap();
    assert_eq!((one.rows_per_step, one.devices, one.grad_accumulation), (16, Some(1), Some(2)));
    assert_eq!((two.rows_per_step, two.devices, two.grad_accumulation), (16, Some(2), Some(1)));
    assert_eq!(one.tokens_seen, two.tokens_seen);
    let reference = eval_losses(&run("two"));
    assert_eq!(reference.len(), 4 * 5);
    let gap = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max);
    let worst = gap(&eval_losses(&run("one")), &reference);
    eprintln!("two workers vs one device, global batch 16: largest evaluation-loss difference {worst:e} nats");
    assert!(worst <= 1e-5, "two workers vs one device: {worst} nats");

    for (name, devices) in [("resumed-on-two", two_workers()), ("resumed-on-one", one_device())] {
        copy_run(&run("two"), &run(name));
        cut_back_to_round(&run(name), 2);
        let resumed = train::<AD>(&two_cfg, &run(name), Some(&data), true, devices).unwrap();
        assert_eq!(resumed.resumed_from, Some(2), "{name}");
        let worst = gap(&eval_losses(&run(name)), &reference);
        eprintln!("two-worker run resumed from round 2 ({name}): largest difference {worst:e} nats");
        assert!(worst <= 1e-5, "{name}: {worst} nats from the uninterrupted run");
    }
    // Three workers cannot hold a global batch of 16 rows of 8: refused before anything is written.
    let three = vec![Default::default(); 3];
    let err = train::<AD>(&two_cfg, &run("three"), Some(&data), false, three).unwrap_err().to_string();
    assert!(err.contains("global batch") && err.contains("use 1, 2 device(s)"), "{err}");
    assert!(!run("three").exists());
}

/// The default dedup budget is the paper's: as many optimizer steps as the standard model, so the
/// deduplicated schedule (each repeated document once, nothing added) is passed over more often;
/// with the fresh fill the schedule is longer and passed over less. The other rules stay available
/// and do what they say; a fresh-data model needs a corpus with fresh stories.
#[test]
fn dedup_budget_rule_is_explicit() {
    let dir = tempfile::tempdir().unwrap();
    let run = |name: &str, sets: &[&str]| {
        train::<AD>(&smoke(sets), &dir.path().join(name), None, false, vec![Default::default()])
    };
    let standard = run("standard", &["train.method=Standard", "train.epochs=2"]).unwrap();
    // Two whole passes over a schedule holding each repeated document 8 times (smoke.ron).
    assert_eq!(standard.views_per_repeated, Some(16.0));
    let paper = run("paper", &["train.method=Dedup", "train.epochs=2"]).unwrap();
    assert_eq!(paper.steps, standard.steps);
    assert!(paper.schedule_passes > 2.5, "the paper's dedup: {} passes", paper.schedule_passes);
    let fresh = run("fresh", &["train.method=DedupFresh", "train.epochs=2"]).unwrap();
    assert_eq!(fresh.steps, standard.steps);
    assert!(fresh.schedule_passes < paper.schedule_passes, "{} vs {}", fresh.schedule_passes, paper.schedule_passes);
    assert!(fresh.views_per_repeated.unwrap() < paper.views_per_repeated.unwrap());
    // Padding is counted in tokens_seen, not in real_tokens.
    assert!(standard.tokens_seen > standard.real_tokens.unwrap());

    let sets = ["train.method=Dedup", "train.epochs=2", "train.dedup_budget=SameRealTokens"];
    let tokens = run("tokens", &sets).unwrap();
    let (std_real, real) = (standard.real_tokens.unwrap(), tokens.real_tokens.unwrap());
    // Within one batch of real tokens (8 rows of at most 64), and never short.
    assert!(real >= std_real && real - std_real <= 8 * 64, "{real} vs {std_real}");
    let epochs = run("epochs", &["train.method=Dedup", "train.epochs=2", "train.dedup_budget=SameEpochs"]).unwrap();
    assert!((epochs.schedule_passes - 2.0).abs() < 0.1, "{}", epochs.schedule_passes);
    match run("no-fill", &["train.method=DedupFresh", "data.dedup_fill=false"]) {
        Err(e) => assert!(e.to_string().contains("data.dedup_fill"), "{e}"),
        Ok(_) => panic!("a fresh-data model trained on a corpus without fresh stories"),
    }
}

#[test]
fn non_finite_loss_stops_with_the_step() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = smoke(&[
        "train.lr=1e9",
        "train.min_lr=1e9",
        "train.warmup_steps=0",
        "train.clip_norm=null",
        "train.steps=40",
        "train.eval_every=5",
    ]);
    match train::<AD>(&cfg, dir.path(), None, false, vec![Default::default()]) {
        Err(TrainError::NonFinite(msg)) => {
            assert!(msg.contains("step"), "{msg}");
            assert!(!dir.path().join("final").exists());
        }
        other => panic!("expected a non-finite stop, got {other:?}"),
    }
}

/// Every evaluation loss of `run`, in file order.
fn eval_losses(run: &Path) -> Vec<f64> {
    let keys = ["val_loss", "rep_loss_sinks", "rep_loss_nosinks", "canary_loss_sinks", "canary_loss_nosinks"];
    metric_lines(run, "eval").iter().flat_map(|e| keys.map(|k| e[k].as_f64().unwrap())).collect()
}

/// Mixed precision on the CPU (flex has f16 and bf16 tensors): f32 master weights, half-precision
/// compute, so the smoke run ends close to the f32 run's evaluation losses — and not equal to
/// them, which shows the half-precision arithmetic was really used.
#[test]
fn mixed_precision_tracks_f32_on_the_smoke_run() {
    let dir = tempfile::tempdir().unwrap();
    let run = |name: &str, sets: &[&str]| {
        let path = dir.path().join(name);
        let mut all = vec!["train.steps=40", "train.eval_every=10"];
        all.extend_from_slice(sets);
        let summary = train::<AD>(&smoke(&all), &path, None, false, vec![Default::default()]).unwrap();
        (path, summary)
    };
    let (f32_run, f32_summary) = run("f32", &[]);
    assert_eq!(f32_summary.skipped_steps, None, "f32 is not loss-scaled");
    for (precision, tolerance) in [("F16", 0.01), ("Bf16", 0.05)] {
        let (half_run, summary) = run(precision, &[&format!("train.precision={precision}")]);
        let (a, b) = (eval_losses(&f32_run), eval_losses(&half_run));
        let worst = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max);
        eprintln!("{precision} mixed precision vs f32 on flex: largest evaluation-loss difference {worst:.4} nats");
        assert!(worst < tolerance, "{precision}: {worst} nats from f32\n{a:?}\n{b:?}");
        assert!(worst > 1e-5, "{precision} agrees with f32 to {worst:e}: it did not compute in half precision");
        if precision == "F16" {
            assert_eq!(summary.skipped_steps, Some(0), "no overflow at the default scale on smoke");
            let scales: Vec<f64> =
                metric_lines(&half_run, "train").iter().map(|l| l["loss_scale"].as_f64().unwrap()).collect();
            assert!(scales.iter().all(|&s| s == 65536.0), "{scales:?}");
        }
    }
}

/// f16 loss scaling: a scale far too large overflows the f16 gradients; those steps are skipped
/// and the scale halves until the gradients fit, and training then goes on; a run whose
/// gradients overflow at every scale stops with one clear error.
#[test]
fn f16_loss_scaling_skips_overflowing_steps_and_gives_up_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let sets =
        ["train.precision=F16", "train.steps=40", "train.eval_every=10", "train.loss_scale.initial=1099511627776.0"];
    let summary =
        train::<AD>(&smoke(&sets), &dir.path().join("scaled"), None, false, vec![Default::default()]).unwrap();
    let skipped = summary.skipped_steps.unwrap();
    assert!((1..30).contains(&skipped), "{skipped} steps skipped");
    let train_lines = metric_lines(&dir.path().join("scaled"), "train");
    let last_scale = train_lines.last().unwrap()["loss_scale"].as_f64().unwrap();
    assert_eq!(last_scale, 2f64.powi(40 - skipped as i32), "one halving per skipped step");
    let logged: u64 = train_lines.iter().map(|l| l["skipped_steps"].as_u64().unwrap()).sum();
    assert_eq!(logged, skipped);
    let (first, last) =
        (train_lines[0]["loss"].as_f64().unwrap(), train_lines.last().unwrap()["loss"].as_f64().unwrap());
    assert!(last < first - 0.3, "training went on after the skips: {first} -> {last}");

    let give_up = [&sets[..], &["train.loss_scale.max_skips_in_a_row=3"]].concat();
    match train::<AD>(&smoke(&give_up), &dir.path().join("gives-up"), None, false, vec![Default::default()]) {
        Err(TrainError::NonFinite(msg)) => assert!(msg.contains("f16 gradients overflowed in 3 steps"), "{msg}"),
        other => panic!("expected the loss scale to give up, got {other:?}"),
    }
}
