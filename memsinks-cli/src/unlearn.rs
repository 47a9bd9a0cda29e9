//! `memsinks unlearn`: run one method of the registry on a trained run and write its results
//! (trade-off curve, relearning test) as JSON.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use burn::tensor::backend::AutodiffBackend;
use clap::Args;
use memsinks_data::write_atomic;
use memsinks_train::run::FinishedRun;
use memsinks_unlearn::{builtin_names, load_method, run_method, ForgetSet, MethodFile, MethodResult};

use crate::backend::{default_backend, run_on, BackendTask};

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
    /// repeated or canary.
    #[arg(long, default_value = "repeated")]
    forget: String,
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
    #[arg(long)]
    backend: Option<String>,
}

/// One method run on one trained run (shared with `reproduce`).
pub struct MethodTask {
    /// The run directory.
    pub run: PathBuf,
    /// The method's name.
    pub name: String,
    /// Its file.
    pub file: MethodFile,
    /// What to forget.
    pub forget: ForgetSet,
}

impl BackendTask for MethodTask {
    type Output = MethodResult;

    fn run<B: AutodiffBackend>(self, devices: Vec<B::Device>) -> Result<MethodResult> {
        let device = &devices[0];
        let run = FinishedRun::open(&self.run)?;
        let (model, _) = run.model::<B>(device)?;
        Ok(run_method(&self.name, &self.file, model, &run.corpus, self.forget, run.config.data.context, device)?)
    }
}

/// Parses `--forget`.
pub fn parse_forget(name: &str) -> Result<ForgetSet> {
    ForgetSet::parse(name).with_context(|| format!("unknown --forget `{name}`; allowed: repeated, canary"))
}

/// Runs `method` (a registry name or file, with overrides) on the trained run `run`.
pub fn run_method_on(
    run: &Path,
    method: &str,
    sets: &[String],
    forget: ForgetSet,
    backend: &str,
) -> Result<MethodResult> {
    let (name, file) = load_method(method, sets)?;
    run_on(backend, "f32", 0, 1, MethodTask { run: run.to_path_buf(), name, file, forget })
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
    let forget = parse_forget(&args.forget)?;
    let backend = args.backend.clone().unwrap_or_else(|| default_backend().to_string());
    let stem = Path::new(method).file_stem().map_or_else(|| method.clone(), |s| s.to_string_lossy().to_string());
    let path = args.out.clone().unwrap_or_else(|| run.join(format!("unlearn-{stem}-{}.json", forget.name())));
    // Checked before any work: the method and the run.
    load_method(method, &args.sets)?;
    memsinks_train::run::load_summary(run)?;
    let _lock = memsinks_model::io::DirLock::acquire(run, "unlearn")?;
    if path.exists() && !args.force {
        anyhow::bail!("{} exists: pass --force to replace it, or --out another file", path.display());
    }
    let result = run_method_on(run, method, &args.sets, forget, &backend)?;
    write_atomic(&path, &serde_json::to_vec_pretty(&result)?)?;
    writeln!(out, "{} on {} ({} mode), {:.1} s", result.method, forget.name(), result.mode, result.wall_s)?;
    writeln!(out, "{:>10} {:>10} {:>10} {:>10} {:>10}", "setting", "L_forget", "L_val", "dL_forget", "dL_val")?;
    for p in &result.curve {
        writeln!(
            out,
            "{:>10} {:>10.3} {:>10.3} {:>+10.3} {:>+10.3}",
            p.setting, p.forget_loss, p.val_loss, p.delta_forget, p.delta_val
        )?;
    }
    for r in &result.relearn {
        writeln!(
            out,
            "relearn {:>2} docs: others' loss {:.3} -> {:.3} (original {:.3}): {} recovered",
            r.relearned,
            r.others_treated,
            r.others_relearned,
            r.others_original,
            r.recovered.map_or("n/a".to_string(), |x| format!("{:.0} %", 100.0 * x))
        )?;
    }
    writeln!(out, "wrote {}", path.display())?;
    Ok(())
}
