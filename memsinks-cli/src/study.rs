//! `memsinks reproduce` and `memsinks report`: the study of [`memsinks_study`] from the command
//! line.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args;
use memsinks_study::report::{load_results, summary, write_report};
use memsinks_study::sweep::{load_sweep, table as sweep_table, write_sweep_report, SWEEP_FILE};
use memsinks_study::{reproduce_any, ReproduceRequest, Reproduced, StudyDir};

use crate::backend::BackendChoice;

/// Reproduce the paper's TinyStories study from one experiment file: corpus, four training
/// methods, evaluation in every mode, post-hoc baselines, report and plots.
#[derive(Args, Debug, Clone)]
#[command(
    after_help = "Examples:\n  memsinks reproduce                       # experiments/ts-quick.ron, embedded, ~1 h on 2 cores\n  \
memsinks reproduce experiments/smoke.ron --out runs/smoke\n  \
memsinks reproduce experiments/ts-cpu.ron --set data.source.path=valid.txt --set 'study.seeds=[0,1]'\n  \
memsinks reproduce experiments/ts-cpu.ron --resume      # continue interrupted training"
)]
pub struct ReproduceArgs {
    /// Experiment config (RON); default: the embedded `ts-quick`.
    config: Option<PathBuf>,
    /// Output directory (default: runs/reproduce-NAME).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Overrides, e.g. `--set train.epochs=2 --set 'study.posthoc=["npo"]'`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    sets: Vec<String>,
    /// Continue interrupted training runs from their newest checkpoint.
    #[arg(long)]
    resume: bool,
    /// Delete the runs in --out whose configuration changed (or cannot be read) and train them
    /// again; without it such runs are refused, naming the keys that differ.
    #[arg(long)]
    force: bool,
    /// Backend.
    #[arg(long, value_parser = memsinks_train::BackendName::parse)]
    backend: Option<memsinks_train::BackendName>,
}

/// Redraw `report.md` and the plots of a reproduction from its `results.json`.
#[derive(Args, Debug, Clone)]
#[command(after_help = "Example:\n  memsinks report runs/reproduce-ts-quick")]
pub struct ReportArgs {
    /// The reproduction's output directory.
    dir: PathBuf,
}

/// Runs `memsinks report`.
pub fn run_report(args: &ReportArgs, out: &mut impl std::io::Write) -> Result<()> {
    if args.dir.join(SWEEP_FILE).exists() {
        let sweep = load_sweep(&args.dir)?;
        write_sweep_report(&args.dir, &sweep)?;
        writeln!(out, "{}", sweep_table(&sweep))?;
    } else {
        let results = load_results(&args.dir)?;
        write_report(&args.dir, &results)?;
        write!(out, "{}", summary(&results))?;
    }
    writeln!(out, "wrote {}", StudyDir::new(&args.dir).report().display())?;
    Ok(())
}

/// Runs `memsinks reproduce`.
pub fn run_reproduce(args: &ReproduceArgs, out: &mut impl std::io::Write) -> Result<()> {
    let started = Instant::now();
    let default_out = |name: &str| PathBuf::from("runs").join(format!("reproduce-{name}"));
    let mut request = match &args.config {
        Some(path) => {
            let name = path.file_stem().map_or_else(|| "experiment".into(), |s| s.to_string_lossy().to_string());
            let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
            ReproduceRequest::from_text(&name, &text, path, &args.sets, default_out(&name))?
        }
        None => ReproduceRequest::default_experiment(&args.sets, default_out("ts-quick"))?,
    };
    request.rerun = memsinks_study::Rerun { resume: args.resume, force: args.force };
    if let Some(dir) = &args.out {
        request.out = dir.clone();
    }
    match reproduce_any(&request, &BackendChoice::chosen(args.backend))? {
        Reproduced::Study(results) => write!(out, "{}", summary(&results))?,
        Reproduced::Sweep(sweep) => writeln!(out, "{}", sweep_table(&sweep))?,
    }
    let report = StudyDir::new(&request.out).report();
    writeln!(out, "wrote {} with the full table ({:.0} s)", report.display(), started.elapsed().as_secs_f64())?;
    Ok(())
}
