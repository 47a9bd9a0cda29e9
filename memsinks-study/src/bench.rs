//! The training-step benchmark (`memsinks bench train`): timed full steps (forward, backward,
//! clip, AdamW) of a preset on random tokens with random sequence IDs, reported with the same
//! keys as the PyTorch reference (`experiments/bench/torch_reference.py`).

use memsinks_model::TrainBackend;
use std::time::Instant;

use anyhow::{bail, Result};
use burn::optim::{GradientsParams, Optimizer};
use burn::tensor::backend::Backend;
use burn::tensor::ElementConversion;
use memsinks_data::rng::SplitMix64;
use memsinks_model::loss::lm_loss;
use memsinks_model::{mask_build_time, LmBatch, MlpMode, ModelConfig, SeqLayout};
use memsinks_train::config::Precision;
use memsinks_train::optim::{step, unscale_and_clip};
use memsinks_train::{Method, OptimConfig};
use serde::Serialize;

use memsinks_train::BackendTask;

/// One benchmark run.
#[derive(Clone, Debug)]
pub struct TrainBench {
    /// Model preset (the name recorded with the result).
    pub preset: String,
    /// The model of an experiment file, timed instead of the preset (sink overrides still apply).
    pub model: Option<ModelConfig>,
    /// `Memsinks` (p_gen 0.7, p_mem 0.3) or `Standard` (p_gen 1, no sinks).
    pub method: Method,
    /// Timed steps.
    pub steps: usize,
    /// Untimed warm-up steps.
    pub warmup: usize,
    /// Rows per batch.
    pub batch: usize,
    /// Tokens per row (default: the preset's context).
    pub seq: Option<usize>,
    /// Seed of weights and data.
    pub seed: u64,
    /// Overrides of the preset's sink geometry and MLP width (`Memsinks` only for the first two),
    /// for sparse pools: `p_gen`, `p_mem`, `d_hidden`, `compact_below`.
    pub sinks: SinkOverrides,
    /// Distinct sequence IDs per batch (rows share them, as documents of one source do); every
    /// row its own when `None`.
    pub ids_per_batch: Option<usize>,
    /// f32, or mixed precision computing in f16 / bf16 (as training does: [`memsinks_train::amp`];
    /// f16 with a fixed loss scale of 2^16 here).
    pub precision: Precision,
}

/// Overrides of a preset's sink pool and MLP width.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SinkOverrides {
    /// Share of general units.
    pub p_gen: Option<f64>,
    /// Sink activity per sequence.
    pub p_mem: Option<f64>,
    /// MLP hidden size.
    pub d_hidden: Option<usize>,
    /// Share of hidden units below which the MLPs compute with the active ones alone (0: never).
    pub compact_below: Option<f64>,
}

/// The JSON line the benchmark prints (the PyTorch reference prints the same keys).
#[derive(Serialize, Debug)]
pub struct TrainBenchResult {
    /// Backend name.
    pub backend: String,
    /// Model preset.
    pub preset: String,
    /// `memsinks` or `standard`.
    #[serde(serialize_with = "memsinks_core::named::by_name::serialize")]
    pub method: Method,
    /// Worker threads of the CPU backends' pool.
    pub threads: usize,
    /// Rows per batch.
    pub batch: usize,
    /// Tokens per row.
    pub seq: usize,
    /// Model parameters.
    pub params: usize,
    /// MLP hidden size, general share and sink activity of the model timed.
    pub d_hidden: usize,
    /// `p_gen` (1 for the standard model).
    pub p_gen: f64,
    /// `p_mem`.
    pub p_mem: f64,
    /// Share of hidden units below which MLPs compute with the active ones alone.
    pub compact_below: f64,
    /// Distinct sequence IDs per batch.
    pub ids_per_batch: usize,
    /// Timed steps.
    pub steps: usize,
    /// Trained tokens per second over the timed steps.
    pub tokens_per_s: f64,
    /// Median step time.
    pub step_ms_median: f64,
    /// Share of timed step time spent building sink masks on the host.
    pub mask_share: f64,
    /// Peak resident set size of the process.
    pub peak_rss_mb: f64,
    /// The training-step memory [`ModelConfig::training_memory`] estimates for this batch and
    /// context (what `train.device_memory_gib` is checked against).
    pub estimated_memory_mb: f64,
    /// On GPU backends, the device memory the allocator reserved by the end of the timed steps,
    /// its free pages returned after the warm-up: at least the timed steps' peak (its pools do not
    /// shrink on their own).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_memory_mb: Option<f64>,
    /// Mean loss of the timed steps (a sanity check: near ln(vocab) on random tokens).
    pub loss: f64,
    /// Model FLOPs of one trained token: forward and backward (3×) of every matmul, the
    /// attention products included (the convention of MFU figures; compact MLPs count as dense).
    pub model_flops_per_token: f64,
    /// Achieved model GFLOP/s: `model_flops_per_token × tokens_per_s`.
    pub model_gflops: f64,
    /// Model FLOP utilisation, `model_gflops` over the peak given with `--peak-tflops`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mfu: Option<f64>,
}

/// The largest `bench matmul --size`: three 8192² f32 matrices are 805 MB.
pub const MAX_MATMUL_SIZE: usize = 8192;

/// Training FLOPs per token of `cfg` at context `seq`: 3 × the forward's `2 × weights` of every
/// projection and the head, plus the attention scores and values (`2 · 2 · seq · d` per layer,
/// all positions computed).
pub fn train_flops_per_token(cfg: &ModelConfig, seq: usize) -> f64 {
    let (d, kv) = (cfg.d_model as f64, (cfg.n_kv_heads * cfg.head_dim()) as f64);
    let per_layer = d * d * 2.0 + d * kv * 2.0 + 3.0 * d * cfg.d_hidden as f64;
    let weights = cfg.n_layers as f64 * per_layer + d * cfg.vocab_size as f64;
    let attention = cfg.n_layers as f64 * 4.0 * seq as f64 * d;
    3.0 * (2.0 * weights + attention)
}

/// The matmul ceiling benchmark (`memsinks bench matmul`).
#[derive(Clone, Debug)]
pub struct MatmulBench {
    /// Matrix size.
    pub size: usize,
    /// Timed products.
    pub reps: usize,
}

/// Its JSON line.
#[derive(Serialize, Debug)]
pub struct MatmulBenchResult {
    /// Backend name.
    pub backend: String,
    /// Worker threads.
    pub threads: usize,
    /// Matrix size.
    pub size: usize,
    /// Median GFLOP/s of the timed products.
    pub gflops: f64,
}

impl BackendTask for MatmulBench {
    type Output = MatmulBenchResult;
    type Error = anyhow::Error;

    fn run<B: TrainBackend>(self, devices: Vec<B::Device>) -> Result<MatmulBenchResult> {
        let device = devices.into_iter().next().expect("one device");
        // Three n x n f32 matrices; far beyond the caches from n = 2048 on, so nothing is learnt
        // from sizes that only risk the machine's memory.
        if !(1..=MAX_MATMUL_SIZE).contains(&self.size) || self.reps == 0 {
            bail!("--size must be in 1..={MAX_MATMUL_SIZE} and --reps positive (got {} and {})", self.size, self.reps);
        }
        let n = self.size;
        let x =
            burn::tensor::Tensor::<B::InnerBackend, 2>::random([n, n], burn::tensor::Distribution::Default, &device);
        let mut times = Vec::new();
        for i in 0..=self.reps.max(1) {
            let started = Instant::now();
            let y = x.clone().matmul(x.clone());
            B::InnerBackend::sync(&device).map_err(|e| anyhow::anyhow!("device sync failed: {e:?}"))?;
            drop(y);
            if i > 0 {
                times.push(started.elapsed().as_secs_f64());
            }
        }
        times.sort_by(f64::total_cmp);
        let flops = 2.0 * (n as f64).powi(3);
        Ok(MatmulBenchResult {
            backend: String::new(),
            threads: rayon::current_num_threads(),
            size: n,
            gflops: flops / times[times.len() / 2] / 1e9,
        })
    }
}

impl BackendTask for TrainBench {
    type Output = TrainBenchResult;
    type Error = anyhow::Error;

    fn run<B: TrainBackend>(self, devices: Vec<B::Device>) -> Result<TrainBenchResult> {
        let device = devices.into_iter().next().expect("one device");
        let cfg = self.model_config()?;
        if self.steps == 0 || self.batch == 0 {
            bail!("--steps and --batch must be positive");
        }
        let ids_per_batch = self.ids_per_batch.unwrap_or(self.batch).clamp(1, self.batch);
        let seq = self.seq.unwrap_or(cfg.max_seq_len);
        if seq == 0 || seq > cfg.max_seq_len {
            bail!("--seq {seq} must be in 1..={} (the preset's context)", cfg.max_seq_len);
        }
        if memsinks_model::memory::computes_on_host::<B>() {
            let needed = cfg.training_memory(self.batch, seq).total();
            memsinks_model::memory::check_host_memory(
                needed,
                "this benchmark",
                "use a smaller preset, --batch or --seq",
            )?;
        }
        let timed = self.time_steps::<B>(&cfg, seq, ids_per_batch, &device)?;
        let total_s: f64 = timed.step_ms.iter().sum::<f64>() / 1e3;
        let mut sorted = timed.step_ms.clone();
        sorted.sort_by(f64::total_cmp);
        let tokens = (self.steps * self.batch * seq) as f64;
        Ok(TrainBenchResult {
            backend: String::new(),
            preset: self.preset,
            method: self.method,
            threads: rayon::current_num_threads(),
            batch: self.batch,
            seq,
            params: cfg.num_params(),
            d_hidden: cfg.d_hidden,
            p_gen: cfg.p_gen,
            p_mem: cfg.p_mem,
            compact_below: cfg.compact_below,
            ids_per_batch,
            steps: self.steps,
            tokens_per_s: tokens / total_s,
            step_ms_median: sorted[sorted.len() / 2],
            mask_share: timed.mask.as_secs_f64() / total_s,
            peak_rss_mb: peak_rss_mb(),
            estimated_memory_mb: cfg.training_memory(self.batch, seq).total() as f64 / MB,
            device_memory_mb: B::device_memory(&device).map(|m| m.reserved as f64 / MB),
            loss: timed.losses.iter().sum::<f64>() / timed.losses.len() as f64,
            model_flops_per_token: train_flops_per_token(&cfg, seq),
            model_gflops: train_flops_per_token(&cfg, seq) * tokens / total_s / 1e9,
            mfu: None,
        })
    }
}

/// What the timed steps of [`TrainBench`] measured.
struct TimedSteps {
    /// Wall time of each timed step, in ms.
    step_ms: Vec<f64>,
    /// Each timed step's loss.
    losses: Vec<f64>,
    /// Time spent building sink masks during the timed steps.
    mask: std::time::Duration,
}

impl TrainBench {
    /// The model configuration benchmarked: the preset (or `--config`'s model) with the sink
    /// overrides, all sinks off for the standard method.
    fn model_config(&self) -> Result<ModelConfig> {
        let mut cfg = match &self.model {
            Some(model) => model.clone(),
            None => ModelConfig::preset(&self.preset)?,
        };
        let o = &self.sinks;
        cfg.d_hidden = o.d_hidden.unwrap_or(cfg.d_hidden);
        cfg.compact_below = o.compact_below.unwrap_or(cfg.compact_below);
        match self.method {
            Method::Standard => cfg.p_gen = 1.0,
            Method::Memsinks => {
                cfg.p_gen = o.p_gen.unwrap_or(cfg.p_gen);
                cfg.p_mem = o.p_mem.unwrap_or(cfg.p_mem);
            }
            other => bail!("the benchmark times memsinks or standard steps, not {}", other.name()),
        }
        cfg.validate()?;
        Ok(cfg)
    }

    /// Trains `warmup` then `steps` optimizer steps on random batches, timing the latter; each
    /// step ends with a device sync, so its time is the device's.
    fn time_steps<B: TrainBackend>(
        &self,
        cfg: &ModelConfig,
        seq: usize,
        ids_per_batch: usize,
        device: &B::Device,
    ) -> Result<TimedSteps> {
        B::seed(device, self.seed);
        let mut model = cfg.init::<B>(device)?;
        let optim_cfg = OptimConfig::default();
        let mut optim = optim_cfg.init::<B, _>();
        let mut rng = SplitMix64::new(self.seed ^ 0xBE4C);
        let mut timed = TimedSteps {
            step_ms: Vec::with_capacity(self.steps),
            losses: Vec::with_capacity(self.steps),
            mask: std::time::Duration::ZERO,
        };
        for i in 0..self.warmup + self.steps {
            let batch = random_batch::<B>(&mut rng, self.batch, seq, cfg.vocab_size, ids_per_batch, device);
            let mask_before = mask_build_time();
            let started = Instant::now();
            let half = self.precision.compute_copy(&model);
            let loss = lm_loss(half.as_ref().unwrap_or(&model), &batch, &MlpMode::Train);
            let value: f64 = loss.clone().into_scalar().elem();
            model = if self.precision.scales_loss() {
                let mut grads = GradientsParams::from_grads((loss * BENCH_LOSS_SCALE).backward(), &model);
                unscale_and_clip(&model, &mut grads, 1.0 / BENCH_LOSS_SCALE, optim_cfg.clip_norm.map(f64::from));
                optim.step(1e-4, model, grads)
            } else {
                step(&mut optim, model, loss, 1e-4, &optim_cfg)
            };
            B::sync(device).map_err(|e| anyhow::anyhow!("device sync failed: {e:?}"))?;
            if i + 1 == self.warmup {
                // The device memory reported is then the timed steps' own.
                B::device_memory_cleanup(device);
            }
            if i >= self.warmup {
                timed.step_ms.push(started.elapsed().as_secs_f64() * 1e3);
                timed.mask += mask_build_time() - mask_before;
                timed.losses.push(value);
            }
        }
        Ok(timed)
    }
}

/// Bytes per MB as `peak_rss_mb` counts them (2^20).
const MB: f64 = (1u64 << 20) as f64;

/// The f16 benchmark's fixed loss scale (training's dynamic scale starts here too).
const BENCH_LOSS_SCALE: f64 = 65536.0;

/// A random batch: uniform tokens, `distinct` random non-zero sequence IDs shared by the rows in
/// turn.
fn random_batch<B: Backend>(
    rng: &mut SplitMix64,
    batch: usize,
    seq: usize,
    vocab: usize,
    distinct: usize,
    device: &B::Device,
) -> LmBatch<B> {
    let rows: Vec<Vec<u32>> = (0..batch).map(|_| (0..=seq).map(|_| rng.below(vocab) as u32).collect()).collect();
    let pool: Vec<i64> = (0..distinct).map(|_| (rng.next_u64() >> 1).max(1) as i64).collect();
    let ids: Vec<i64> = (0..batch).map(|r| pool[r % distinct]).collect();
    LmBatch::from_rows(&rows, &vec![vec![1.0; seq]; batch], SeqLayout::per_row(&ids, seq), device)
}

/// Peak resident set size (`VmHWM`) in MiB; 0 where `/proc` is unavailable.
fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:")).map(str::to_owned))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|kb| kb.parse::<f64>().ok()))
        .map_or(0.0, |kb| kb / 1024.0)
}
