//! `memsinks bench train`: timed full training steps (forward, backward, clip, AdamW) on random
//! tokens with random sequence IDs, printed as one JSON line.

use std::time::Instant;

use anyhow::{bail, Result};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::ElementConversion;
use clap::{Args, Subcommand};
use memsinks_data::rng::SplitMix64;
use memsinks_data::LmBatch;
use memsinks_model::{mask_build_time, MlpMode, ModelConfig, SeqLayout};
use memsinks_train::optim::step;
use memsinks_train::{lm_loss, OptimConfig};
use serde::Serialize;

use crate::backend::{default_backend, run_on, BackendTask};

/// Benchmarks.
#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(subcommand)]
    what: BenchWhat,
}

#[derive(Subcommand, Debug)]
enum BenchWhat {
    /// Training throughput of one preset and method.
    Train(TrainBench),
}

/// Training-step throughput on random data.
#[derive(Args, Debug, Clone)]
#[command(
    after_help = "Examples:\n  memsinks bench train --preset ts-cpu --method memsinks --steps 10\n  memsinks bench train --preset tiny --method standard --backend ndarray"
)]
pub struct TrainBench {
    /// Model preset.
    #[arg(long, default_value = "ts-cpu")]
    preset: String,
    /// `memsinks` (p_gen 0.7, p_mem 0.3) or `standard` (p_gen 1, no sinks).
    #[arg(long, default_value = "memsinks")]
    method: String,
    /// Timed steps.
    #[arg(long, default_value_t = 10)]
    steps: usize,
    /// Untimed warm-up steps.
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    /// Rows per batch.
    #[arg(long, default_value_t = 16)]
    batch: usize,
    /// Tokens per row (default: the preset's context).
    #[arg(long)]
    seq: Option<usize>,
    /// Backend: flex, ndarray, cuda, wgpu (those compiled in).
    #[arg(long)]
    backend: Option<String>,
    /// Float precision: f32, or f16 / bf16 on the GPU backends.
    #[arg(long, default_value = "f32")]
    precision: String,
    /// GPU index for the GPU backends.
    #[arg(long, default_value_t = 0)]
    device: usize,
    /// Seed of weights and data.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

/// The JSON line the benchmark prints (the PyTorch reference prints the same keys).
#[derive(Serialize, Debug)]
pub struct TrainBenchResult {
    /// Backend name.
    pub backend: String,
    /// Model preset.
    pub preset: String,
    /// `memsinks` or `standard`.
    pub method: String,
    /// Worker threads of the CPU backends' pool.
    pub threads: usize,
    /// Rows per batch.
    pub batch: usize,
    /// Tokens per row.
    pub seq: usize,
    /// Model parameters.
    pub params: usize,
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
    /// Mean loss of the timed steps (a sanity check: near ln(vocab) on random tokens).
    pub loss: f64,
}

/// Runs the subcommand, printing one JSON line to `out`.
pub fn run(args: &BenchArgs, out: &mut impl std::io::Write) -> Result<()> {
    let BenchWhat::Train(train) = &args.what;
    if !["memsinks", "standard"].contains(&train.method.as_str()) {
        bail!("unknown --method `{}`; allowed: memsinks, standard", train.method);
    }
    if train.steps == 0 || train.batch == 0 {
        bail!("--steps and --batch must be positive");
    }
    let backend = train.backend.clone().unwrap_or_else(|| default_backend().to_string());
    let mut result = run_on(&backend, &train.precision, train.device, 1, train.clone())?;
    result.backend = if train.precision == "f32" { backend } else { format!("{backend}-{}", train.precision) };
    writeln!(out, "{}", serde_json::to_string(&result)?)?;
    Ok(())
}

impl BackendTask for TrainBench {
    type Output = TrainBenchResult;

    fn run<B: AutodiffBackend>(self, devices: Vec<B::Device>) -> Result<TrainBenchResult> {
        let device = devices.into_iter().next().expect("one device");
        let mut cfg = ModelConfig::preset(&self.preset)?;
        if self.method == "standard" {
            cfg.p_gen = 1.0;
        }
        let seq = self.seq.unwrap_or(cfg.max_seq_len);
        if seq > cfg.max_seq_len {
            bail!("--seq {seq} exceeds the preset's context {}", cfg.max_seq_len);
        }
        B::seed(&device, self.seed);
        let mut model = cfg.init::<B>(&device)?;
        let mut optim = OptimConfig::default().init::<B, _>();
        let mut rng = SplitMix64::new(self.seed ^ 0xBE4C);
        let mut step_ms = Vec::with_capacity(self.steps);
        let mut losses = Vec::with_capacity(self.steps);
        let mut timed_mask = std::time::Duration::ZERO;
        for i in 0..self.warmup + self.steps {
            let batch = random_batch::<B>(&mut rng, self.batch, seq, cfg.vocab_size, &device);
            let mask_before = mask_build_time();
            let started = Instant::now();
            let loss = lm_loss(&model, &batch, &MlpMode::Train);
            let value: f64 = loss.clone().into_scalar().elem();
            model = step(&mut optim, model, loss, 1e-4, Some(1.0));
            B::sync(&device).map_err(|e| anyhow::anyhow!("device sync failed: {e:?}"))?;
            if i >= self.warmup {
                step_ms.push(started.elapsed().as_secs_f64() * 1e3);
                timed_mask += mask_build_time() - mask_before;
                losses.push(value);
            }
        }
        let total_s: f64 = step_ms.iter().sum::<f64>() / 1e3;
        let mut sorted = step_ms.clone();
        sorted.sort_by(f64::total_cmp);
        Ok(TrainBenchResult {
            backend: String::new(),
            preset: self.preset,
            method: self.method,
            threads: rayon::current_num_threads(),
            batch: self.batch,
            seq,
            params: cfg.num_params(),
            steps: self.steps,
            tokens_per_s: (self.steps * self.batch * seq) as f64 / total_s,
            step_ms_median: sorted[sorted.len() / 2],
            mask_share: timed_mask.as_secs_f64() / total_s,
            peak_rss_mb: peak_rss_mb(),
            loss: losses.iter().sum::<f64>() / losses.len() as f64,
        })
    }
}

/// A random batch: uniform tokens, one random non-zero sequence ID per row.
fn random_batch<B: Backend>(
    rng: &mut SplitMix64,
    batch: usize,
    seq: usize,
    vocab: usize,
    device: &B::Device,
) -> LmBatch<B> {
    let rows: Vec<Vec<u32>> = (0..batch).map(|_| (0..=seq).map(|_| rng.below(vocab) as u32).collect()).collect();
    let ids: Vec<i64> = (0..batch).map(|_| (rng.next_u64() >> 1).max(1) as i64).collect();
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
