//! `memsinks bench train`: the training-step benchmark of [`memsinks_study::bench`], printed as
//! one JSON line.

use anyhow::Result;
use clap::{Args, Subcommand};
use memsinks_study::bench::{MatmulBench, SinkOverrides, TrainBench};
use memsinks_train::config::Precision;
use memsinks_train::Method;
use memsinks_train::{DeviceRange, Runner};

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
    #[arg(long, value_parser = memsinks_train::BackendName::parse)]
    backend: Option<memsinks_train::BackendName>,
}

/// Training-step throughput on random data.
#[derive(Args, Debug, Clone)]
#[command(
    after_help = "Examples:\n  memsinks bench train --preset ts-cpu --method memsinks --steps 10\n  memsinks bench train --config experiments/ts-quick.ron --method standard\n  memsinks bench train --preset tiny --method standard --backend ndarray"
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
    /// The model, batch and context of an experiment file instead of `--preset` (its configured
    /// vocabulary; random tokens), e.g. `experiments/ts-quick.ron` to time the study as trained.
    #[arg(long)]
    config: Option<std::path::PathBuf>,
    /// Rows per batch (default 16, or the experiment's `train.batch_size`).
    #[arg(long)]
    batch: Option<usize>,
    /// Tokens per row (default: the preset's context, or the experiment's `data.context`).
    #[arg(long)]
    seq: Option<usize>,
    /// Backend: flex, ndarray, cuda, wgpu (those compiled in).
    #[arg(long, value_parser = memsinks_train::BackendName::parse)]
    backend: Option<memsinks_train::BackendName>,
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
    /// The device's peak dense rate in TFLOP/s at the precision timed (e.g. 989 for an H100 SXM
    /// in bf16): the result then gives the model FLOP utilisation (MFU).
    #[arg(long)]
    peak_tflops: Option<f64>,
}

/// Runs the subcommand, printing one JSON line to `out`.
pub fn run(args: &BenchArgs, out: &mut impl std::io::Write) -> Result<()> {
    let a = match &args.what {
        BenchWhat::Train(a) => a,
        BenchWhat::Matmul(m) => {
            let backend = BackendChoice::chosen(m.backend);
            let mut result =
                backend.run(Precision::F32, DeviceRange::ONE, MatmulBench { size: m.size, reps: m.reps })?;
            result.backend = backend.backend().to_string();
            writeln!(out, "{}", serde_json::to_string(&result)?)?;
            return Ok(());
        }
    };
    let experiment = match &a.config {
        Some(path) => Some(experiment_shape(path, a.method)?),
        None => None,
    };
    let bench = TrainBench {
        preset: experiment.as_ref().map_or_else(|| a.preset.clone(), |e| e.name.clone()),
        model: experiment.as_ref().map(|e| e.model.clone()),
        method: a.method,
        steps: a.steps,
        warmup: a.warmup,
        batch: a.batch.or(experiment.as_ref().map(|e| e.batch)).unwrap_or(16),
        seq: a.seq.or(experiment.as_ref().map(|e| e.context)),
        seed: a.seed,
        precision: a.precision,
        sinks: SinkOverrides { p_gen: a.p_gen, p_mem: a.p_mem, d_hidden: a.d_hidden, compact_below: a.compact_below },
        ids_per_batch: a.ids_per_batch,
    };
    let backend = BackendChoice::chosen(a.backend);
    let mut result = backend.run(a.precision, DeviceRange { first: a.device, count: 1 }, bench)?;
    result.backend = match a.precision {
        Precision::F32 => backend.backend().to_string(),
        other => format!("{}-{}", backend.backend(), other.name()),
    };
    if let Some(peak) = a.peak_tflops {
        if !(peak > 0.0 && peak.is_finite()) {
            anyhow::bail!("--peak-tflops {peak}: must be a positive number of TFLOP/s");
        }
        result.mfu = Some(result.model_gflops / (peak * 1e3));
    }
    writeln!(out, "{}", serde_json::to_string(&result)?)?;
    Ok(())
}

/// What `bench train --config` times of an experiment: its model (with the configured vocabulary
/// of its tokenizer, or the preset's for a tokenizer file), batch and context.
struct ExperimentShape {
    name: String,
    model: memsinks_model::ModelConfig,
    batch: usize,
    context: usize,
}

fn experiment_shape(path: &std::path::Path, method: Method) -> Result<ExperimentShape> {
    let mut exp = memsinks_train::ExperimentConfig::load(path, &[])?;
    exp.train.method = method;
    let vocab = match &exp.data.tokenizer {
        memsinks_data::data_config::TokenizerConfig::Train { vocab_size } => *vocab_size,
        memsinks_data::data_config::TokenizerConfig::File { .. } => {
            memsinks_model::ModelConfig::preset(&exp.model.preset)?.vocab_size
        }
    };
    let name = path.file_stem().map_or_else(|| "config".to_string(), |s| s.to_string_lossy().into_owned());
    Ok(ExperimentShape {
        name,
        model: exp.model_config(vocab)?,
        batch: exp.train.batch_size,
        context: exp.data.context,
    })
}
