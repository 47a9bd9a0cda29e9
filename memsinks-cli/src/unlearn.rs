//! `memsinks unlearn`: run one method of the registry on a trained run and write its results
//! (trade-off curve, relearning test) as JSON.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use memsinks_core::files::write_atomic;
use memsinks_train::config::Precision;
use memsinks_train::RunDir;
use memsinks_train::{DeviceRange, Runner};
use memsinks_unlearn::MethodTask;
use memsinks_unlearn::{builtin_names, load_method, ForgetSet};

use crate::backend::BackendChoice;

/// Run a removal method on a trained run: a built-in method of the registry (see `--list`) or a
/// method file (`.ron`).
#[derive(Args, Debug, Clone)]
#[command(
    after_help = "Examples:\n  memsinks unlearn --list\n  memsinks unlearn --run runs/std --method gradient-ascent\n  \
memsinks unlearn --run runs/std --method npo --forget canary --set lr=3e-4 --set steps=100\n  \
memsinks unlearn --run runs/std --method prune-zero-out --set 'fractions=[0.01,0.1]'\n  \
memsinks unlearn --run runs/memsinks --method drop-sinks"
)]
pub struct UnlearnArgs {
    /// Run directory (written by `memsinks train`).
    #[arg(long, required_unless_present = "list")]
    run: Option<PathBuf>,
    /// Registry name or path to a method file.
    #[arg(long, required_unless_present = "list")]
    method: Option<String>,
    /// What to forget: `repeated`, `canary`, or `source:KEY` (every trained document of one
    /// source of a corpus with `data.source_key`).
    #[arg(long, default_value = "repeated")]
    forget: ForgetSet,
    /// Overrides of the method's hyperparameters, e.g. `--set lr=3e-4 --set relearn.steps=5`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    sets: Vec<String>,
    /// Results file (default: RUN/unlearn-METHOD-FORGET.json).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Replace an existing results file.
    #[arg(long)]
    force: bool,
    /// List the built-in methods and exit.
    #[arg(long)]
    list: bool,
    /// Backend.
    #[arg(long, value_parser = memsinks_train::BackendName::parse)]
    backend: Option<memsinks_train::BackendName>,
}

/// Runs the subcommand.
pub fn run(args: &UnlearnArgs, out: &mut impl std::io::Write) -> Result<()> {
    if args.list {
        for name in builtin_names() {
            let (_, file) = load_method(name, &[])?;
            writeln!(out, "{name:28} {}", file.about)?;
        }
        return Ok(());
    }
    let (run, method) = (args.run.as_ref().expect("clap"), args.method.as_ref().expect("clap"));
    let forget = args.forget.clone();
    // Checked before any work: the method and the run.
    let task = MethodTask::new(run, method, &args.sets, forget.clone())?;
    let path = args.out.clone().unwrap_or_else(|| RunDir::new(run).unlearn_result(&task.name, &forget.file_name()));
    memsinks_train::run::load_summary(run)?;
    let _lock = memsinks_core::files::DirLock::acquire(run, "unlearn")?;
    if path.exists() && !args.force {
        anyhow::bail!("{} exists: pass --force to replace it, or --out another file", path.display());
    }
    let result = BackendChoice::chosen(args.backend).run(Precision::F32, DeviceRange::ONE, task)?;
    write_atomic(&path, &serde_json::to_vec_pretty(&result)?)?;
    writeln!(out, "{} on {} ({} mode), {:.1} s", result.method, forget.name(), result.mode.name(), result.wall_s)?;
    writeln!(
        out,
        "{:>10} {:>10} {:>10} {:>10} {:>10} {:>10}",
        "setting", "L_forget", "L_val", "dL_forget", "dL_val", "dL_retain"
    )?;
    for p in &result.curve {
        let retain = p.delta_retain.map_or_else(|| format!("{:>10}", "-"), |d| format!("{d:>+10.3}"));
        writeln!(
            out,
            "{:>10} {:>10.3} {:>10.3} {:>+10.3} {:>+10.3} {retain}",
            p.setting, p.forget_loss, p.val_loss, p.delta_forget, p.delta_val
        )?;
    }
    if let Some(start) = &result.relearn_start {
        writeln!(out, "{start}")?;
    }
    for r in &result.relearn {
        writeln!(out, "{r}")?;
    }
    writeln!(out, "wrote {}", path.display())?;
    Ok(())
}
