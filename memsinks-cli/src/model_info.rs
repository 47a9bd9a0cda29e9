//! `memsinks model`: show a preset's configuration and size.

use anyhow::Result;
use clap::Args;
use memsinks_model::memory::{gib, DEVICE_RESERVE};
use memsinks_model::{ModelConfig, PRESET_NAMES};

/// Print a model preset as RON with its parameter count and sink split.
#[derive(Args, Debug)]
#[command(
    after_help = "Examples:\n  memsinks model --preset ts-cpu\n  memsinks model --all\n  memsinks model --preset smollm2-360m --memory --batch 8 --context 2048"
)]
pub struct ModelArgs {
    /// Preset name: tiny, ts-cpu, ts-paper, smollm2-360m, smollm2-1.7b.
    #[arg(long, default_value = "ts-cpu")]
    pub preset: String,
    /// One summary line per preset instead.
    #[arg(long)]
    pub all: bool,
    /// Estimate the device memory of one training step instead (f32 weights, gradients, AdamW
    /// moments, activations with the materialised attention scores; errs high).
    #[arg(long, conflicts_with = "all")]
    pub memory: bool,
    /// Rows per micro-batch on one device, for `--memory`.
    #[arg(long, default_value_t = 1, requires = "memory")]
    pub batch: usize,
    /// Tokens per row, for `--memory` (default: the preset's longest context).
    #[arg(long, requires = "memory")]
    pub context: Option<usize>,
    /// Device memory in GiB to check the estimate against, for `--memory` (an 80 GB H100 leaves a
    /// process about 78 GiB).
    #[arg(long, default_value_t = 78.0, requires = "memory")]
    pub device_gib: f64,
}

/// Runs the subcommand, writing to `out`.
pub fn run(args: &ModelArgs, out: &mut impl std::io::Write) -> Result<()> {
    if args.all {
        for name in PRESET_NAMES {
            let c = ModelConfig::preset(name)?;
            writeln!(
                out,
                "{name:<14} params {:>14}  layers {:>2}  d {:>4}  heads {:>2}/{:<2}  I {:>5} (general {}, sinks {})",
                c.num_params(),
                c.n_layers,
                c.d_model,
                c.n_heads,
                c.n_kv_heads,
                c.d_hidden,
                c.num_general(),
                c.num_sink()
            )?;
        }
        return Ok(());
    }
    let c = ModelConfig::preset(&args.preset)?;
    if args.memory {
        return memory(args, &c, out);
    }
    writeln!(
        out,
        "// {}: {} parameters, {} general + {} sink neurons per MLP",
        args.preset,
        c.num_params(),
        c.num_general(),
        c.num_sink()
    )?;
    writeln!(out, "{}", c.to_ron())?;
    Ok(())
}

/// `--memory`: the estimate of one training step on one device, whether it fits `--device-gib`,
/// and the largest micro-batch that does (gradient accumulation keeps the global batch).
fn memory(args: &ModelArgs, c: &ModelConfig, out: &mut impl std::io::Write) -> Result<()> {
    let context = args.context.unwrap_or(c.max_seq_len);
    if args.batch == 0 || context == 0 || !(args.device_gib > 0.0 && args.device_gib.is_finite()) {
        anyhow::bail!("--batch and --context must be positive, --device-gib a positive number");
    }
    let device = (args.device_gib * (1u64 << 30) as f64) as u64;
    let e = c.training_memory(args.batch, context);
    let fits = |rows: usize| c.training_memory(rows, context).on_device() <= device;
    let largest = (1..=4096).take_while(|&rows| fits(rows)).last();
    writeln!(
        out,
        "{}: {} rows x {context} tokens per device, f32 (an estimate of the bytes in use)",
        args.preset, args.batch
    )?;
    writeln!(
        out,
        "  weights {}, gradients + AdamW moments {}, activations {} (attention scores and probabilities {}), total {}; \
         on a GPU with its allocator's reserve ({DEVICE_RESERVE}x) {}",
        gib(e.weights),
        gib(e.optimizer),
        gib(e.activations),
        gib(e.attention_scores),
        gib(e.total()),
        gib(e.on_device())
    )?;
    let verdict = match largest {
        Some(rows) => {
            format!("largest micro-batch that fits: {rows} rows (train.grad_accumulation keeps the global batch)")
        }
        None => "not even one row fits: use a shorter context or a larger device".to_string(),
    };
    writeln!(out, "  fits {} GiB: {}; {verdict}", args.device_gib, if fits(args.batch) { "yes" } else { "no" })?;
    Ok(())
}
