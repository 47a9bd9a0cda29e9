//! `memsinks model`: show a preset's configuration and size.

use anyhow::Result;
use clap::Args;
use memsinks_model::{ModelConfig, PRESET_NAMES};

/// Print a model preset as RON with its parameter count and sink split.
#[derive(Args, Debug)]
#[command(after_help = "Examples:\n  memsinks model --preset ts-cpu\n  memsinks model --all")]
pub struct ModelArgs {
    /// Preset name: tiny, ts-cpu, ts-paper, smollm2-360m, smollm2-1.7b.
    #[arg(long, default_value = "ts-cpu")]
    pub preset: String,
    /// One summary line per preset instead.
    #[arg(long)]
    pub all: bool,
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
