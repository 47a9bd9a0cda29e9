//! `memsinks bench train`: the training-step benchmark of [`memsinks_study::bench`], printed as
//! one JSON line.

use anyhow::Result;
use clap::{Args, Subcommand};
use memsinks_study::bench::{MatmulBench, SinkOverrides, TrainBench};
use memsinks_study::{DeviceRange, Runner};
use memsinks_train::config::Precision;
use memsinks_train::Method;

use crate::backend::BackendChoice;

/// Benchmarks.
#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(subcommand)]
    what: BenchWhat,
}

#[derive(Subcommand, Debug)]
enum BenchWhat {
    /// Training throughput of one preset and method.
    Train(TrainBenchArgs),
    /// The machine's single-precision matmul ceiling on a backend: square products timed.
    Matmul(MatmulBenchArgs),
}

/// GFLOP/s of `[n, n] × [n, n]` f32 products: the ceiling the training step's model FLOP/s is
/// measured against.
#[derive(Args, Debug, Clone)]
#[command(after_help = "Example:\n  memsinks bench matmul --size 2048 --reps 5")]
pub struct MatmulBenchArgs {
    /// Matrix size n.
    #[arg(long, default_value_t = 2048)]
    size: usize,
    /// Timed products (after one untimed).
    #[arg(long, default_value_t = 5)]
    reps: usize,
    /// Backend.
    #[arg(long)]
    backend: Option<String>,
}

/// Training-step throughput on random data.
#[derive(Args, Debug, Clone)]
#[command(
    after_help = "Examples:\n  memsinks bench train --preset ts-cpu --method memsinks --steps 10\n  memsinks bench train --preset tiny --method standard --backend ndarray"
)]
pub struct TrainBenchArgs {
    /// Model preset.
    #[arg(long, default_value = "ts-cpu")]
    preset: String,
    /// `memsinks` (p_gen 0.7, p_mem 0.3) or `standard` (p_gen 1, no sinks).
    #[arg(long, value_enum, default_value = "memsinks")]
    method: Method,
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
    /// Float precision: f32, or mixed precision computing in f16 (cuda, wgpu, flex) / bf16 (cuda, flex).
    #[arg(long, value_enum, default_value = "f32")]
    precision: Precision,
    /// GPU index for the GPU backends.
    #[arg(long, default_value_t = 0)]
    device: usize,
    /// Seed of weights and data.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Share of general MLP units (memsinks; default: the preset's, 0.7).
    #[arg(long)]
    p_gen: Option<f64>,
    /// Sink activity per sequence (memsinks; default 0.3). NULLs' sparse pool: 0.013.
    #[arg(long)]
    p_mem: Option<f64>,
    /// MLP hidden size (default: the preset's).
    #[arg(long)]
    d_hidden: Option<usize>,
    /// Share of hidden units below which a batch's MLPs compute with their active units alone
    /// (default 0.5; 0 always computes every unit).
    #[arg(long)]
    compact_below: Option<f64>,
    /// Distinct sequence IDs per batch, shared by its rows as one source's documents share one
    /// (default: one per row).
    #[arg(long)]
    ids_per_batch: Option<usize>,
}

/// Runs the subcommand, printing one JSON line to `out`.
pub fn run(args: &BenchArgs, out: &mut impl std::io::Write) -> Result<()> {
    let a = match &args.what {
        BenchWhat::Train(a) => a,
        BenchWhat::Matmul(m) => {
            let backend = BackendChoice::chosen(m.backend.as_deref());
            let mut result =
                backend.run(Precision::F32, DeviceRange::ONE, MatmulBench { size: m.size, reps: m.reps })?;
            result.backend = backend.backend().to_string();
            writeln!(out, "{}", serde_json::to_string(&result)?)?;
            return Ok(());
        }
    };
    let bench = TrainBench {
        preset: a.preset.clone(),
        method: a.method,
        steps: a.steps,
        warmup: a.warmup,
        batch: a.batch,
        seq: a.seq,
        seed: a.seed,
        precision: a.precision,
        sinks: SinkOverrides { p_gen: a.p_gen, p_mem: a.p_mem, d_hidden: a.d_hidden, compact_below: a.compact_below },
        ids_per_batch: a.ids_per_batch,
    };
    let backend = BackendChoice::chosen(a.backend.as_deref());
    let mut result = backend.run(a.precision, DeviceRange { first: a.device, count: 1 }, bench)?;
    result.backend = match a.precision {
        Precision::F32 => backend.backend().to_string(),
        other => format!("{}-{}", backend.backend(), other.name()),
    };
    writeln!(out, "{}", serde_json::to_string(&result)?)?;
    Ok(())
}
