//! `memsinks`: train language models whose memorization of repeated text is isolated in sink
//! neurons, remove it, and measure the result.
//!
//! Guide (the commands): `README.md` in the repository.

mod backend;
mod bench;
mod data;
mod eval;
mod generate;
mod mask;
mod model_info;
mod study;
mod train;
mod unlearn;

use clap::{Parser, Subcommand};

/// Memorization Sinks toolkit.
#[derive(Parser, Debug)]
#[command(name = "memsinks", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print which sink neurons each sequence ID owns.
    Mask(mask::MaskArgs),
    /// Show a model preset's configuration and size.
    Model(model_info::ModelArgs),
    /// Corpora: prepare, generate, stats, download.
    Data(data::DataArgs),
    /// Train a model of an experiment (standard, dedup, memsinks, gradient masking).
    Train(train::TrainArgs),
    /// Evaluate a trained run in each MLP mode (writes eval.json).
    Eval(eval::EvalArgs),
    /// Export a run's weights as safetensors (optionally folded with sinks dropped).
    Export(eval::ExportArgs),
    /// Run a removal method of the registry on a trained run (writes its trade-off curve).
    Unlearn(unlearn::UnlearnArgs),
    /// Reproduce the whole study from one experiment file (default: embedded ts-quick) and report.
    Reproduce(study::ReproduceArgs),
    /// Redraw a reproduction's report.md and plots from its results.json.
    Report(study::ReportArgs),
    /// Generate text from a trained run in a chosen MLP mode.
    Generate(generate::GenerateArgs),
    /// Benchmarks (`bench train`: training-step throughput).
    Bench(bench::BenchArgs),
}

/// glibc's allocator hands every buffer over 128 KiB (dynamically up to 32 MiB) to `mmap` and
/// returns it on free, so each of the thousands of activation-sized buffers a training step
/// allocates costs page faults and zeroing by the kernel (~10 % of a `ts-cpu` step in `perf`).
/// Keeping freed memory in the heap for reuse instead measured +15-20 % tokens/s for +10 % peak
/// RSS (experiments/bench/RESULTS.md). Set before the first allocation of any size matters.
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes the allocator's thresholds; called before any thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TOP_PAD, 256 << 20);
    }
}

/// Paths are recorded in run files (config, corpus and summary records) as text, so a path that
/// is not UTF-8 is refused before anything is written, instead of failing half-way.
fn refuse_non_utf8_arguments() {
    for (i, arg) in std::env::args_os().enumerate().skip(1) {
        if arg.to_str().is_none() {
            eprintln!(
                "error: argument {i} ({}) is not valid UTF-8: memsinks records the paths it reads and writes \
                 as text; rename the path (nothing was written)",
                arg.to_string_lossy()
            );
            std::process::exit(2);
        }
    }
}

fn main() {
    keep_freed_memory();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                // cubecl's autotuner logs every shape it tunes at info.
                .unwrap_or_else(|_| "info,burn_train=warn,burn_core=warn,cubecl_runtime=warn".into()),
        )
        .with_writer(std::io::stderr)
        // Colour codes only on a terminal: redirected to a log file, stderr stays plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    refuse_non_utf8_arguments();
    let cli = Cli::parse();
    // Not locked for the whole command: burn-train's renderer prints from worker threads.
    let mut stdout = std::io::stdout();
    let result = match &cli.command {
        Command::Mask(args) => mask::run(args, &mut stdout),
        Command::Model(args) => model_info::run(args, &mut stdout),
        Command::Bench(args) => bench::run(args, &mut stdout),
        Command::Data(args) => data::run(args, &mut stdout),
        Command::Train(args) => train::run(args, &mut stdout),
        Command::Eval(args) => eval::run_eval(args, &mut stdout),
        Command::Unlearn(args) => unlearn::run(args, &mut stdout),
        Command::Export(args) => eval::run_export(args, &mut stdout),
        Command::Reproduce(args) => study::run_reproduce(args, &mut stdout),
        Command::Report(args) => study::run_report(args, &mut stdout),
        Command::Generate(args) => generate::run(args, &mut stdout),
    };
    if let Err(err) = result {
        eprintln!("error: {err:#}");
        std::process::exit(1);
    }
}
