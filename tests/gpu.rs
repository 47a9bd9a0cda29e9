//! GPU tests: the fusion backends (`wgpu`, `cuda`) against `flex`, and the `memsinks` binary
//! training, resuming, reproducing and failing cleanly on them. Built only with `--features wgpu`
//! or `--features cuda` (declared as a test of `memsinks-cli`, which gives it the built binary);
//! with `cuda` compiled in, the tests run on cuda, otherwise on wgpu.
//!
//! Where no adapter exists the tests print one line and pass, except under `CI=true`, where a
//! missing adapter fails them: CI installs Mesa's software Vulkan driver (lavapipe) for them.
//!
//! Tolerances, and why they are not zero: the GPU kernels sum in other orders than flex's (tiled
//! matmuls, tree reductions, fused element-wise kernels), so f32 results differ in the last bits;
//! through a few dozen optimizer steps those differences grow but stay far below the effects the
//! toolkit measures (tenths of a nat).
//!
//! - one forward/backward of the `tiny` preset: every logit, the loss and every parameter
//!   gradient within `1e-4 × max|flex value| + 1e-6` of flex, tensor by tensor;
//! - device-built sink masks: bit for bit;
//! - a run killed and resumed vs an uninterrupted one on the same GPU: every evaluation loss within
//!   1e-3 nats (bit-identity is not asserted: autotuning may pick another kernel after a restart,
//!   and a different summation order changes the last bits);
//! - the smoke study on the GPU vs on flex: every loss of the main table within 2 % + 0.01 nats
//!   (25 steps at a high learning rate amplify last-bit differences most in the gradient-masking
//!   model with its sinks dropped, a model that has lost its general ability);
//! - f16 mixed precision vs f32 training of the smoke run: every evaluation loss within
//!   [`F16_TOLERANCE`] nats (half-precision rounding of activations and gradients over 25 steps);
//! - two devices vs one with the same global batch, and two-device runs killed and resumed on two
//!   devices and on one: every evaluation loss within [`TWO_DEVICE_TOLERANCE`] nats (the same
//!   micro-batches make each step; only the order of float sums may differ);
//! - the training-memory estimate with the allocator's reserve against the device memory measured:
//!   at least it, and within [`ESTIMATE_SLACK`] of it.
//!
//! One file of over 500 lines on purpose: the test binary is the unit `experiments/gpu/check.sh`
//! copies to a GPU machine, and its two halves (tensor parity, the binary on the GPU) share the
//! adapter check, the serialising lock and the tolerances stated above.
#![cfg(any(feature = "wgpu", feature = "cuda"))]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::Instant;

mod support;

use burn::backend::{Autodiff, Flex};
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use memsinks_data::LmBatch;
use memsinks_model::io::{load_model, named_tensors, save_model};
use memsinks_model::{DropScale, MemSinkLm, MlpMode, ModelConfig, SeqLayout};
use memsinks_study::report::load_results;
use memsinks_train::metric_log::read_evals;
use memsinks_train::RunDir;
use support::kill_when_exists;

#[cfg(feature = "cuda")]
type Gpu = burn::backend::Cuda;
#[cfg(not(feature = "cuda"))]
type Gpu = burn::backend::Wgpu;

/// f16 mixed precision vs f32, every evaluation loss of the smoke run (nats).
const F16_TOLERANCE: f64 = 0.02;

/// Two devices vs one with the same global batch, every evaluation loss (nats).
const TWO_DEVICE_TOLERANCE: f64 = 1e-3;

/// The `--backend` name of [`Gpu`].
const GPU: &str = if cfg!(feature = "cuda") { "cuda" } else { "wgpu" };

/// One GPU test at a time: they share one (possibly software) adapter and two CPU cores, and the
/// kill test times its kill from a whole run measured in the same test.
fn serial() -> Serial {
    static SERIAL: Mutex<()> = Mutex::new(());
    Serial { _lock: SERIAL.lock().unwrap_or_else(|p| p.into_inner()), started: Instant::now() }
}

/// The lock of [`serial`]; when a test that found an adapter ends, it prints how long the test
/// took (libtest names the thread after the test), for the CI log: these tests are most of CI's
/// test time on lavapipe. Without an adapter the one `skipped:` line stays the only output.
struct Serial {
    _lock: MutexGuard<'static, ()>,
    started: Instant,
}

impl Drop for Serial {
    fn drop(&mut self) {
        if GPU_AVAILABLE.get() == Some(&true) {
            let thread = std::thread::current();
            report(&format!(
                "{}: {:.0} s",
                thread.name().unwrap_or("a GPU test"),
                self.started.elapsed().as_secs_f64()
            ));
        }
    }
}

/// Prints a measured deviation past libtest's output capture, so that it lands in the CI log.
fn report(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// The answer of [`gpu_available`], once asked.
static GPU_AVAILABLE: OnceLock<bool> = OnceLock::new();

/// Whether a GPU adapter answers. Without one: one line and `false` locally, a failure in CI.
fn gpu_available() -> bool {
    let ci = std::env::var("CI").is_ok_and(|v| v == "true");
    let available = *GPU_AVAILABLE.get_or_init(|| {
        let hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {}));
        let ok = std::panic::catch_unwind(|| {
            Tensor::<Gpu, 1>::ones([4], &Default::default()).sum().into_scalar();
        })
        .is_ok();
        std::panic::set_hook(hook);
        if !ok && !ci {
            report(&format!(
                "skipped: the {GPU} tests (no {GPU} adapter here; apt-get install mesa-vulkan-drivers libvulkan1 gives one)"
            ));
        }
        ok
    });
    assert!(available || !ci, "CI=true but no {GPU} adapter: CI must install one (Mesa's lavapipe for wgpu)");
    available
}

// ---------------------------------------------------------------------------------------------
// Tensor-level parity with flex
// ---------------------------------------------------------------------------------------------

fn tiny() -> ModelConfig {
    ModelConfig::preset("tiny").unwrap()
}

/// The same tiny model on flex and on the GPU (weights copied through a weight file).
fn twin_models(dir: &Path) -> (MemSinkLm<Autodiff<Flex>>, MemSinkLm<Autodiff<Gpu>>) {
    let cfg = tiny();
    Flex::seed(&Default::default(), 7);
    let cpu: MemSinkLm<Autodiff<Flex>> = cfg.init(&Default::default()).unwrap();
    save_model(&cpu, &cfg, dir).unwrap();
    let (gpu, _) = load_model::<Autodiff<Gpu>>(dir, &Default::default()).unwrap();
    (cpu, gpu)
}

/// Rows of `seq + 1` tokens from a fixed pattern (vocabulary of the tiny preset: 64).
fn rows(batch: usize, seq: usize) -> Vec<Vec<u32>> {
    (0..batch).map(|b| (0..=seq).map(|t| ((b * 31 + t * 7 + t * t) % 64) as u32).collect()).collect()
}

/// The layouts every mode is checked on: one document per row, packed rows (a one-token document
/// included), and gradient masking (some tokens routed to the sinks).
fn layouts(batch: usize, seq: usize) -> Vec<(&'static str, SeqLayout)> {
    let per_row = SeqLayout::per_row(&[11, 22, 11], seq);
    let mut ids = Vec::new();
    let mut segments = Vec::new();
    for b in 0..batch {
        for t in 0..seq {
            // Row 0: documents of 5, 1 and the rest; row 1: one document; row 2: two halves.
            let seg = match b {
                0 => [0, 0, 0, 0, 0, 1].get(t).copied().unwrap_or(2),
                1 => 0,
                _ => (t >= seq / 2) as u32,
            };
            segments.push(seg);
            ids.push([101, 202, 303][seg as usize] + b as i64 * 1000);
        }
    }
    let packed = SeqLayout::packed(batch, seq, ids, segments);
    let flags: Vec<bool> = (0..batch * seq).map(|i| (i / seq) != 1 && i % 3 != 0).collect();
    let routed = per_row.clone().with_route_to_sinks(flags);
    vec![("per-row", per_row), ("packed", packed), ("gradient-masking", routed)]
}

fn modes() -> Vec<MlpMode> {
    vec![
        MlpMode::Train,
        MlpMode::All { exclude: vec![22] },
        MlpMode::DropSinks { scale: DropScale::Reference },
        MlpMode::DropSinks { scale: DropScale::Plain },
        MlpMode::ActivateSeq { exclude: vec![11] },
    ]
}

fn values<Bk: Backend, const D: usize>(t: Tensor<Bk, D>) -> Vec<f32> {
    t.into_data().convert::<f32>().to_vec().unwrap()
}

/// Logits, loss and every parameter's gradient (by Llama name) of one forward/backward.
fn forward_backward<Bk: memsinks_model::TrainBackend>(
    model: &MemSinkLm<Bk>,
    layout: &SeqLayout,
    mode: &MlpMode,
) -> Vec<(String, Vec<f32>)> {
    let (batch, seq) = (layout.batch, layout.seq_len);
    let weights: Vec<Vec<f32>> =
        (0..batch).map(|b| (0..seq).map(|t| ((b + t) % 4 != 0) as u8 as f32).collect()).collect();
    let data = LmBatch::<Bk>::from_rows(&rows(batch, seq), &weights, layout.clone(), &Default::default());
    let logits = model.forward(data.inputs.clone(), layout, mode);
    let loss = masked_mean_nll(logits.clone(), &data);
    let grads = loss.backward();
    let mut out = vec![("logits".to_string(), values(logits.inner())), ("loss".to_string(), values(loss.inner()))];
    for (name, param, _) in named_tensors(model) {
        // A parameter that the mode never uses (the sinks when they are dropped) has no gradient.
        let grad = param.grad(&grads).map(values).unwrap_or_else(|| vec![0.0; param.dims().iter().product()]);
        out.push((format!("grad {name}"), grad));
    }
    out
}

/// The training objective (mean masked next-token NLL), written here so that this test depends
/// only on the model crate's forward pass.
fn masked_mean_nll<Bk: Backend>(logits: Tensor<Bk, 3>, batch: &LmBatch<Bk>) -> Tensor<Bk, 1> {
    let [b, t, v] = logits.dims();
    let logp = burn::tensor::activation::log_softmax(logits.reshape([b * t, v]), 1);
    let picked: Tensor<Bk, 2> = logp.gather(1, batch.targets.clone().reshape([b * t, 1])).reshape([b, t]);
    let mask = batch.loss_mask.clone();
    (picked.neg() * mask.clone()).sum() / mask.sum()
}

/// Checks every tensor of `gpu` against `cpu`; returns the largest deviation as a share of its
/// tensor's tolerance (1.0 = at the tolerance).
fn assert_parity(cpu: &[(String, Vec<f32>)], gpu: &[(String, Vec<f32>)], what: &str) -> f32 {
    assert_eq!(cpu.len(), gpu.len());
    let mut worst_share = 0.0f32;
    for ((name, want), (_, got)) in cpu.iter().zip(gpu) {
        assert_eq!(want.len(), got.len(), "{what}: {name} has another size");
        let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let tol = 1e-4 * scale + 1e-6;
        let (worst, at) = want.iter().zip(got).enumerate().fold((0.0f32, 0), |(w, i), (j, (a, b))| {
            let d = (a - b).abs();
            if d > w || d.is_nan() {
                (d, j)
            } else {
                (w, i)
            }
        });
        assert!(worst <= tol, "{what}: {name} differs by {worst:e} at {at} (tolerance {tol:e}, scale {scale:e})");
        worst_share = worst_share.max(worst / tol);
    }
    worst_share
}

#[test]
fn logits_loss_and_gradients_match_flex_in_every_mode_and_layout() {
    let _serial = serial();
    if !gpu_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (cpu, gpu) = twin_models(dir.path());
    let (batch, seq) = (3, 16);
    let mut checked = 0;
    let mut worst = 0.0f32;
    for (layout_name, layout) in layouts(batch, seq) {
        for mode in modes() {
            let what = format!("{layout_name}, {}", mode.name());
            let want = forward_backward(&cpu, &layout, &mode);
            let got = forward_backward(&gpu, &layout, &mode);
            worst = worst.max(assert_parity(&want, &got, &what));
            checked += 1;
        }
    }
    assert_eq!(checked, 15);
    report(&format!(
        "{GPU} vs flex: 15 mode × layout cases, largest deviation {:.1} % of the tolerance",
        worst * 100.0
    ));
    // The check can fail: a gradient of another batch is not within tolerance of this one.
    let layout = SeqLayout::per_row(&[11, 22, 11], seq);
    let a = forward_backward(&cpu, &layout, &MlpMode::Train);
    let b = forward_backward(&cpu, &SeqLayout::per_row(&[11, 22, 12], seq), &MlpMode::Train);
    assert!(std::panic::catch_unwind(|| assert_parity(&a, &b, "different sequence IDs")).is_err());
}

#[test]
fn sink_masks_built_on_the_device_equal_the_reference_bit_for_bit() {
    let _serial = serial();
    if !gpu_available() {
        return;
    }
    // The paper's width for a 0.3 sink share of I = 8192 (2458 sinks) and the tiny preset's.
    for (hidden, p_gen) in [(8192usize, 0.7), (64, 0.7)] {
        let mut cfg = tiny();
        cfg.d_hidden = hidden;
        cfg.p_gen = p_gen;
        let model: MemSinkLm<Gpu> = cfg.init(&Default::default()).unwrap();
        let sinks = model.sinks();
        let ids: Vec<i64> = (1..=40).chain([19_660, 19_661, 1 << 40, i64::MAX]).collect();
        let seq = 3;
        let layout = SeqLayout::per_row(&ids, seq);
        for layer in 0..cfg.n_layers {
            let mask = sinks.hidden_mask::<Gpu>(&MlpMode::Train, &layout, layer, &Default::default()).unwrap();
            let got = values(mask.scale);
            let h = sinks.hidden();
            assert_eq!(got.len(), ids.len() * seq * h);
            for (row, &id) in ids.iter().enumerate() {
                let reference = sinks.pool.mask(id, layer);
                let want: Vec<f32> = std::iter::repeat_n(1.0, sinks.num_general)
                    .chain(reference.iter().map(|&on| on as u8 as f32))
                    .collect();
                for t in 0..seq {
                    let at = (row * seq + t) * h;
                    let token = &got[at..at + h];
                    assert!(
                        token.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()),
                        "id {id}, layer {layer}, token {t}: device mask differs from the reference"
                    );
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The binary on the GPU
// ---------------------------------------------------------------------------------------------

/// The repository and the binary: where they were built, unless `MEMSINKS_REPO` / `MEMSINKS_BIN`
/// say otherwise (`experiments/gpu/check.sh` runs this test binary on a machine it was copied to).
fn smoke() -> PathBuf {
    let repo = std::env::var_os("MEMSINKS_REPO")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".."));
    repo.join("experiments/smoke.ron")
}

fn bin() -> Command {
    let path = std::env::var_os("MEMSINKS_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_memsinks").into());
    let mut c = Command::new(path);
    c.env("RAYON_NUM_THREADS", "2").stdin(Stdio::null());
    c
}

fn train_cmd(out: &Path, backend: &str, extra: &[&str]) -> Command {
    let mut c = bin();
    c.arg("train").arg("--config").arg(smoke()).arg("--out").arg(out).args(["--backend", backend]);
    for kv in extra {
        c.args(["--set", kv]);
    }
    c
}

/// Runs `cmd` to the end; panics with its stderr unless it succeeded.
fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{cmd:?} failed ({}):\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    out
}

/// Every evaluation loss of a run, in order: `(round, key, value)`.
fn eval_losses(run: &Path) -> Vec<(u64, String, f64)> {
    let mut out = Vec::new();
    for e in read_evals(&RunDir::new(run).metrics()).unwrap() {
        let named = [
            ("val_loss", e.val_loss),
            ("rep_loss_sinks", e.rep_loss_sinks),
            ("rep_loss_nosinks", e.rep_loss_nosinks),
            ("canary_loss_sinks", e.canary_loss_sinks),
            ("canary_loss_nosinks", e.canary_loss_nosinks),
        ];
        out.extend(named.into_iter().filter_map(|(k, v)| Some((e.round, k.to_string(), v?))));
    }
    out
}

/// Asserts that two runs' evaluation losses agree within `tol` nats; returns the largest gap.
fn assert_losses_close(a: &[(u64, String, f64)], b: &[(u64, String, f64)], tol: f64, what: &str) -> f64 {
    assert!(!a.is_empty(), "{what}: no evaluation losses");
    assert_eq!(a.len(), b.len(), "{what}: different evaluations");
    let mut worst = 0.0f64;
    for ((r, k, x), (_, _, y)) in a.iter().zip(b) {
        assert!((x - y).abs() <= tol, "{what}: round {r} {k}: {x} vs {y} (tolerance {tol})");
        worst = worst.max((x - y).abs());
    }
    worst
}

/// The abort this guards against (burn-train's checkpointer threads reading tensors that the
/// training thread goes on updating: see `memsinks_train::checkpoint`) killed 2 of 3 smoke runs.
/// The ten runs share one process, as `memsinks reproduce` does, so that after the first one the
/// kernels are compiled and each run is as fast, and its checkpoints as close together, as they
/// get; an abort takes the whole test binary down.
#[test]
fn smoke_training_runs_ten_times_in_a_row_without_an_abort() {
    let _serial = serial();
    if !gpu_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let cfg = memsinks_train::ExperimentConfig::load(&smoke(), &[]).unwrap();
    for i in 0..10 {
        let run = dir.path().join(format!("run-{i}"));
        let device = Default::default();
        let summary = memsinks_train::train::<Autodiff<Gpu>>(&cfg, &run, Some(&data), false, vec![device])
            .unwrap_or_else(|e| panic!("run {i} of 10 failed: {e}"));
        assert_eq!(summary.steps, 25);
        // Every round's records were written; the abort left the optimizer's missing.
        let checkpoint = run.join("checkpoint");
        for kind in ["model", "optim", "scheduler"] {
            for round in [2, 3] {
                let file = checkpoint.join(format!("{kind}-{round}.mpk"));
                assert!(file.exists(), "run {i}: {} is missing", file.display());
            }
        }
        assert!(run.join("final").exists() && run.join("train.json").exists());
    }
}

#[test]
fn killed_and_resumed_run_ends_where_an_uninterrupted_run_ends() {
    let _serial = serial();
    if !gpu_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (whole, broken) = (dir.path().join("whole"), dir.path().join("broken"));
    let longer = ["train.steps=60", "train.eval_every=10"];
    run_ok(&mut train_cmd(&whole, GPU, &longer));

    // Killed as round 3 of 6 ends: its data cursor is written, its checkpoint not yet, so the
    // resume falls back to round 2.
    let killed = kill_when_exists(train_cmd(&broken, GPU, &longer), &broken.join("checkpoint/cursor-3.json"));
    assert!(killed, "the run finished before it was killed");
    assert!(!broken.join("train.json").exists());
    let out = run_ok(bin().arg("train").arg("--resume").arg(&broken).args(["--backend", GPU]));
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(broken.join("train.json")).unwrap()).unwrap();
    assert!(summary["resumed_from"].as_u64().is_some(), "did not resume: {}", String::from_utf8_lossy(&out.stderr));
    let worst = assert_losses_close(&eval_losses(&whole), &eval_losses(&broken), 1e-3, "killed and resumed vs whole");
    report(&format!("killed and resumed vs whole on {GPU}: largest evaluation-loss difference {worst:e} nats"));
}

/// Whether a second cuda GPU answers (wgpu trains on one device: `memsinks-cli/src/backend.rs`).
fn second_gpu_available() -> bool {
    #[cfg(feature = "cuda")]
    return memsinks_core::catch_library_panic(|| Gpu::name(&burn::backend::cuda::CudaDevice::new(1))).is_some();
    #[cfg(not(feature = "cuda"))]
    false
}

/// On cuda with two GPUs: the multi-device path against one device (the same path runs on the CPU
/// in `memsinks-train/tests/train.rs`, two workers on one device). On wgpu: a clear refusal
/// instead of the hang that burn 0.21 ends in.
#[test]
fn two_devices_train_like_one_with_the_same_global_batch_and_resume_on_either() {
    let _serial = serial();
    if !gpu_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let run = |name: &str| dir.path().join(name);
    if GPU == "wgpu" {
        let out = train_cmd(&run("refused"), GPU, &["train.devices=2"]).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && !stderr.contains("panicked"), "{stderr}");
        assert!(stderr.contains("wgpu trains on one device"), "{stderr}");
        assert!(!run("refused").exists(), "a refused run leaves no directory");
        return;
    }
    if !second_gpu_available() {
        report(&format!("skipped: the two-device test (one {GPU} device here)"));
        return;
    }
    let longer = ["train.steps=40", "train.eval_every=10"];
    // The same global batch of 16 rows: 8 rows x 2 accumulated micro-batches on one device, 8 rows
    // on each of two devices; step k trains micro-batches 2k and 2k+1 in both.
    let one_device = [&longer[..], &["train.grad_accumulation=2"]].concat();
    let two_devices = [&longer[..], &["train.devices=2"]].concat();
    let started = Instant::now();
    run_ok(&mut train_cmd(&run("one"), GPU, &one_device));
    let one_s = started.elapsed().as_secs_f64();
    let started = Instant::now();
    run_ok(&mut train_cmd(&run("two"), GPU, &two_devices));
    let two_s = started.elapsed().as_secs_f64();
    let summary = |r: &Path| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(r.join("train.json")).unwrap()).unwrap()
    };
    let (s1, s2) = (summary(&run("one")), summary(&run("two")));
    assert_eq!((s1["rows_per_step"].as_u64(), s1["devices"].as_u64()), (Some(16), Some(1)), "{s1}");
    assert_eq!((s2["rows_per_step"].as_u64(), s2["devices"].as_u64()), (Some(16), Some(2)), "{s2}");
    assert_eq!(s1["tokens_seen"], s2["tokens_seen"]);
    let two = eval_losses(&run("two"));
    let worst = assert_losses_close(&eval_losses(&run("one")), &two, TWO_DEVICE_TOLERANCE, "two devices vs one");
    let tokens = s1["tokens_seen"].as_f64().unwrap();
    report(&format!(
        "two {GPU} devices vs one, global batch 16: largest evaluation-loss difference {worst:e} nats; \
         {:.0} vs {:.0} tokens/s (whole process, kernel compilation included)",
        tokens / two_s,
        tokens / one_s
    ));

    // Killed as round 2 of 4 ends (its cursor written, its checkpoint not yet: the resume falls
    // back to round 1), then resumed on two devices and, a second run, on one.
    for (name, resume_on) in [("killed-two", "2"), ("killed-one", "1")] {
        let killed =
            kill_when_exists(train_cmd(&run(name), GPU, &two_devices), &run(name).join("checkpoint/cursor-2.json"));
        assert!(killed, "{name}: the run finished before it was killed");
        run_ok(bin().arg("train").arg("--resume").arg(run(name)).args(["--backend", GPU, "--devices", resume_on]));
        let resumed = summary(&run(name));
        assert!(resumed["resumed_from"].as_u64().is_some(), "{name} did not resume: {resumed}");
        assert_eq!(resumed["devices"].as_u64(), Some(resume_on.parse().unwrap()));
        let worst = assert_losses_close(
            &two,
            &eval_losses(&run(name)),
            TWO_DEVICE_TOLERANCE,
            &format!("{name} vs two devices"),
        );
        report(&format!(
            "two-device run killed and resumed on {resume_on} device(s): largest difference {worst:e} nats"
        ));
    }
    // A device count that cannot keep the global batch is refused with one line.
    let out = train_cmd(&run("three"), GPU, &two_devices).args(["--devices", "3"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("global batch") && !stderr.contains("panicked"), "{stderr}");
    assert!(!run("three").exists(), "a refused run leaves no directory");
}

/// How far above the measured device memory the estimate on the device may lie: it decides whether
/// a run starts, so it errs high, but an estimate this many times the measurement would refuse
/// runs that fit.
const ESTIMATE_SLACK: f64 = 2.0;

/// `bench train` on the GPU reports the device memory its allocator reserved over a few training
/// steps in a fresh process (its pools do not shrink, so that is at least the peak) beside the
/// estimate of the bytes in use; with the allocator's reserve (`DEVICE_RESERVE`, what
/// `train.device_memory_gib` is checked against) the estimate is at least the measurement and
/// within [`ESTIMATE_SLACK`] of it, at shapes where rows, context and width differ.
#[test]
fn the_training_memory_estimate_bounds_the_device_memory_measured() {
    let _serial = serial();
    if !gpu_available() {
        return;
    }
    let config = smoke().with_file_name("ts-quick.ron");
    // 512 tokens each (the software adapter is slow): long rows, short rows, a narrower model.
    let shapes: [&[&str]; 3] = [
        &["--preset", "ts-cpu", "--batch", "2", "--seq", "256"],
        &["--preset", "ts-cpu", "--batch", "8", "--seq", "64"],
        &["--config", config.to_str().unwrap(), "--batch", "4"],
    ];
    for shape in shapes {
        let out = run_ok(bin().args(["bench", "train", "--backend", GPU, "--steps", "1", "--warmup", "1"]).args(shape));
        let line: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let in_use = line["estimated_memory_mb"].as_f64().unwrap();
        let estimate = in_use * memsinks_model::memory::DEVICE_RESERVE;
        let measured = line["device_memory_mb"].as_f64().expect("a GPU backend reports its device memory");
        let what = format!("{} at {} x {}", line["preset"], line["batch"], line["seq"]);
        report(&format!(
            "{what}: estimate {in_use:.0} MiB in use, {estimate:.0} MiB on the device; measured {measured:.0} MiB reserved \
             ({:.2}x)",
            estimate / measured
        ));
        assert!(measured > 0.0);
        assert!(estimate >= measured, "{what}: the estimate {estimate:.0} MiB is below the {measured:.0} MiB measured");
        assert!(
            estimate <= ESTIMATE_SLACK * measured,
            "{what}: the estimate {estimate:.0} MiB is over {ESTIMATE_SLACK}x the {measured:.0} MiB measured"
        );
    }
}

#[test]
fn f16_mixed_precision_tracks_f32_and_bf16_is_refused_clearly_where_unsupported() {
    let _serial = serial();
    if !gpu_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (f32_run, f16_run) = (dir.path().join("f32"), dir.path().join("f16"));
    run_ok(&mut train_cmd(&f32_run, GPU, &[]));
    // Mixed precision (memsinks_train::amp): f32 weights and AdamW state, f16 compute, dynamic
    // loss scaling. It trains the smoke run close to f32 — and not equal to it, which shows the
    // f16 arithmetic was used (an f32 run on the same adapter repeats its losses to ~1e-6).
    let out = run_ok(&mut train_cmd(&f16_run, GPU, &["train.precision=F16"]));
    assert!(!String::from_utf8_lossy(&out.stderr).contains("panicked"));
    let worst = assert_losses_close(&eval_losses(&f32_run), &eval_losses(&f16_run), F16_TOLERANCE, "f16 vs f32");
    report(&format!("f16 mixed precision vs f32 on {GPU}: largest evaluation-loss difference {worst:.4} nats"));
    assert!(worst > 1e-5, "f16 and f32 runs agree to {worst:e} nats: the f16 run computed in f32");
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(f16_run.join("train.json")).unwrap()).unwrap();
    assert!(summary["skipped_steps"].as_u64().is_some(), "an f16 run records its skipped steps: {summary}");

    let bf16 = train_cmd(&dir.path().join("bf16"), GPU, &["train.precision=Bf16"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&bf16.stderr);
    if GPU == "wgpu" {
        assert!(!bf16.status.success(), "bf16 on wgpu should be refused");
        assert!(!stderr.contains("panicked"), "{stderr}");
        // (Mesa's Vulkan loader may print its own "error: XDG_RUNTIME_DIR ..." lines.)
        let ours: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:") && l.contains("bf16")).collect();
        assert_eq!(ours.len(), 1, "{stderr}");
    } else {
        // cuda: bf16 trains where the GPU supports it, else the same one-line refusal.
        assert!(
            bf16.status.success() || (stderr.contains("does not support") && !stderr.contains("panicked")),
            "{stderr}"
        );
    }
}

/// The main-table losses of a study, by row label and seed.
fn study_losses(dir: &Path) -> Vec<(String, f64)> {
    let mut out = Vec::new();
    for row in load_results(dir).unwrap().rows {
        for v in row.values {
            let named =
                [("l_rep", Some(v.l_rep)), ("l_canary", v.l_canary), ("l_val", Some(v.l_val)), ("gap", Some(v.gap))];
            for (key, x) in named.into_iter().filter_map(|(k, x)| Some((k, x?))) {
                out.push((format!("{} (seed {}) {key}", row.label, v.seed), x));
            }
        }
    }
    out
}

#[test]
fn the_smoke_study_on_the_gpu_matches_flex() {
    let _serial = serial();
    if !gpu_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut studies = Vec::new();
    for backend in ["flex", GPU] {
        let out = dir.path().join(backend);
        run_ok(bin().arg("reproduce").arg(smoke()).arg("--out").arg(&out).args(["--backend", backend]));
        assert!(out.join("report.md").exists());
        studies.push(study_losses(&out));
    }
    let (cpu, gpu) = (&studies[0], &studies[1]);
    assert!(cpu.len() >= 8, "too few numbers in the main table: {cpu:?}");
    assert_eq!(cpu.iter().map(|c| &c.0).collect::<Vec<_>>(), gpu.iter().map(|g| &g.0).collect::<Vec<_>>());
    let mut worst = 0.0f64;
    for ((name, x), (_, y)) in cpu.iter().zip(gpu) {
        let tol = 0.02 * x.abs() + 0.01;
        assert!((x - y).abs() <= tol, "{name}: flex {x} vs {GPU} {y} (tolerance {tol:.3} nats)");
        worst = worst.max((x - y).abs() / tol);
    }
    report(&format!(
        "smoke study, {GPU} vs flex: {} losses, largest difference {:.0} % of the tolerance",
        cpu.len(),
        worst * 100.0
    ));
}

#[test]
fn a_missing_adapter_is_one_clear_line_without_a_panic() {
    let _serial = serial();
    if GPU != "wgpu" {
        return; // hiding a CUDA device needs CUDA_VISIBLE_DEVICES, tested by experiments/gpu/check.sh
    }
    let dir = tempfile::tempdir().unwrap();
    // No Vulkan driver manifest: the Vulkan loader finds no adapter.
    let out = train_cmd(&dir.path().join("run"), "wgpu", &[])
        .env("VK_ICD_FILENAMES", dir.path().join("none.json"))
        .env("VK_DRIVER_FILES", dir.path().join("none.json"))
        .env("RUST_BACKTRACE", "1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(!stderr.contains("panicked") && !stderr.contains("backtrace"), "{stderr}");
    assert!(stderr.contains("error: no usable wgpu device"), "{stderr}");
}
