//! `memsinks eval` and `memsinks export`: measure a trained run, export its weights.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use burn::tensor::backend::AutodiffBackend;
use clap::Args;
use memsinks_data::write_atomic;
use memsinks_model::io::{export_safetensors, is_empty_dir, load_model, DirLock};
use memsinks_model::MlpMode;
use memsinks_train::run::{FinishedRun, FINAL_DIR};
use memsinks_unlearn::eval::{
    default_modes, evaluate_mode, exclusion_specificity, EvalOptions, ModeReport, Specificity,
};
use memsinks_unlearn::fold_drop_sinks;
use memsinks_unlearn::metrics::gap_closure;
use serde::{Deserialize, Serialize};

use crate::backend::{default_backend, run_on, BackendTask};

/// Evaluate a trained run in each MLP mode; writes RUN/eval.json.
#[derive(Args, Debug, Clone)]
#[command(
    after_help = "Examples:\n  memsinks eval --run runs/ts-quick-memsinks-601dd35d17d4\n  memsinks eval --run runs/mem --reference runs/std --mode drop-sinks"
)]
pub struct EvalArgs {
    /// Run directory (written by `memsinks train`).
    #[arg(long)]
    run: PathBuf,
    /// One mode only: train, all, drop-sinks, drop-sinks-plain, activate-seq (default: all that apply).
    #[arg(long)]
    mode: Option<String>,
    /// Sequence IDs whose sinks are switched off in the `all` and `activate-seq` modes
    /// (per-sequence removal), e.g. `--exclude 123,456`.
    #[arg(long, value_delimiter = ',')]
    exclude: Vec<i64>,
    /// An evaluated standard run: gap closure is also reported against its gap.
    #[arg(long)]
    reference: Option<PathBuf>,
    /// Documents per split.
    #[arg(long, default_value_t = 64)]
    max_docs: usize,
    /// Prompt tokens of greedy extraction.
    #[arg(long, default_value_t = 32)]
    k: usize,
    /// Continuation tokens of greedy extraction.
    #[arg(long, default_value_t = 32)]
    m: usize,
    /// Backend.
    #[arg(long)]
    backend: Option<String>,
    /// Replace an existing RUN/eval.json.
    #[arg(long)]
    force: bool,
}

/// The content of `eval.json`.
#[derive(Serialize, Deserialize, Debug)]
pub struct EvalFile {
    /// Run id of the evaluated run.
    pub run_id: String,
    /// Training method.
    pub method: String,
    /// Options used.
    pub options: EvalOptions,
    /// One report per mode.
    pub modes: Vec<ModeReport>,
    /// `1 - gap(drop-sinks) / gap(activate-seq)`: closure against the same model with sinks on.
    pub gap_closure_vs_sinks_on: Option<f64>,
    /// Per mode, `1 - gap(mode) / gap(reference)`, when a reference run is given.
    pub gap_closure_vs_reference: Option<Vec<(String, f64)>>,
    /// Dropping one sequence's sinks: its loss change versus the other repeated documents'
    /// (MemSinks models only).
    #[serde(default)]
    pub exclusion_specificity: Vec<Specificity>,
}

/// Evaluation of one run (shared with `reproduce`).
pub struct EvalTask {
    /// The run directory.
    pub run: PathBuf,
    /// One mode by CLI name, or every mode that applies.
    pub mode: Option<String>,
    /// Sequence IDs whose sinks are off in the `all` and `activate-seq` modes.
    pub exclude: Vec<i64>,
    /// Documents per split.
    pub max_docs: usize,
    /// Prompt tokens of greedy extraction.
    pub k: usize,
    /// Continuation tokens of greedy extraction.
    pub m: usize,
    /// An evaluated standard run to measure gap closure against.
    pub reference: Option<PathBuf>,
}

impl BackendTask for EvalTask {
    type Output = EvalFile;

    fn run<B: AutodiffBackend>(self, devices: Vec<B::Device>) -> Result<EvalFile> {
        let device = &devices[0];
        let run = FinishedRun::open(&self.run)?;
        let (model, _) = run.model::<B::InnerBackend>(device)?;
        let FinishedRun { config: cfg, summary, corpus, .. } = run;
        let modes = match &self.mode {
            Some(name) => vec![MlpMode::parse(name).with_context(|| {
                format!("unknown --mode `{name}`; allowed: train, all, drop-sinks, drop-sinks-plain, activate-seq")
            })?],
            None => default_modes(&model),
        };
        let modes: Vec<MlpMode> = modes
            .into_iter()
            .map(|mode| match mode {
                MlpMode::All { .. } => MlpMode::All { exclude: self.exclude.clone() },
                MlpMode::ActivateSeq { .. } => MlpMode::ActivateSeq { exclude: self.exclude.clone() },
                other => other,
            })
            .collect();
        let options = EvalOptions {
            max_docs: self.max_docs,
            k: self.k,
            m: self.m,
            batch_size: cfg.train.batch_size,
            context: cfg.data.context,
        };
        options.validate().map_err(anyhow::Error::msg)?;
        let reports: Vec<ModeReport> =
            modes.iter().map(|mode| evaluate_mode(&model, &corpus, mode, &options, device)).collect();
        // A gap needs both sets: with no repeated (or validation) tokens there is none to close.
        let gap_of = |name: &str| {
            reports.iter().find(|r| r.mode == name && r.repeated.tokens > 0 && r.validation.tokens > 0).map(|r| r.gap)
        };
        let gap_closure_vs_sinks_on = gap_of("drop-sinks").zip(gap_of("activate-seq")).map(|(d, a)| gap_closure(d, a));
        let gap_closure_vs_reference = match &self.reference {
            None => None,
            Some(dir) => {
                let reference = load_eval(dir)?;
                let gap_ref = reference.modes.first().map(|r| r.gap).context("the reference eval.json has no modes")?;
                Some(reports.iter().map(|r| (r.mode.clone(), gap_closure(r.gap, gap_ref))).collect())
            }
        };
        let exclusion_specificity = if model.sink_pool().is_empty() {
            Vec::new()
        } else {
            exclusion_specificity(&model, &corpus, &options, 8, device)
        };
        Ok(EvalFile {
            exclusion_specificity,
            run_id: summary.run_id,
            method: summary.method,
            options,
            modes: reports,
            gap_closure_vs_sinks_on,
            gap_closure_vs_reference,
        })
    }
}

/// Reads `RUN/eval.json`.
pub fn load_eval(run: &std::path::Path) -> Result<EvalFile> {
    let path = run.join("eval.json");
    let text = std::fs::read_to_string(&path).with_context(|| format!("{}: evaluate the run first", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{}", path.display()))
}

/// Runs `memsinks eval`.
pub fn run_eval(args: &EvalArgs, out: &mut impl std::io::Write) -> Result<()> {
    let target = args.run.join("eval.json");
    // Not a finished run: say so before creating anything in it.
    memsinks_train::run::load_summary(&args.run)?;
    let _lock = DirLock::acquire(&args.run, "eval")?;
    if target.exists() && !args.force {
        bail!("{} exists: pass --force to replace it", target.display());
    }
    let backend = args.backend.clone().unwrap_or_else(|| default_backend().to_string());
    let task = EvalTask {
        run: args.run.clone(),
        mode: args.mode.clone(),
        exclude: args.exclude.clone(),
        max_docs: args.max_docs,
        k: args.k,
        m: args.m,
        reference: args.reference.clone(),
    };
    let file = run_on(&backend, "f32", 0, 1, task)?;
    write_atomic(&target, &serde_json::to_vec_pretty(&file)?)?;
    writeln!(
        out,
        "{:<18} {:>8} {:>8} {:>8} {:>7} {:>9} {:>8} {:>9} {:>7}",
        "mode", "L_val", "L_rep", "L_canary", "gap", "extract", "verbatim", "extr.val", "MIA"
    )?;
    for r in &file.modes {
        // A set with no documents (or no tokens) has no value: "n/a", never 0.000.
        let cell = |present: bool, v: f64, width: usize, digits: usize| {
            if present && v.is_finite() {
                format!("{v:>width$.digits$}")
            } else {
                format!("{:>width$}", "n/a")
            }
        };
        let (val, rep) = (r.validation.tokens > 0, r.repeated.tokens > 0);
        let canary = r.canary.as_ref().filter(|c| c.tokens > 0);
        let (ext_rep, ext_val) = (r.extraction_repeated.docs > 0, r.extraction_validation.docs > 0);
        writeln!(
            out,
            "{:<18} {} {} {} {} {} {} {} {}",
            r.mode,
            cell(val, r.validation.nll, 8, 3),
            cell(rep, r.repeated.nll, 8, 3),
            cell(canary.is_some(), canary.map_or(f64::NAN, |c| c.nll), 8, 3),
            cell(val && rep, r.gap, 7, 3),
            cell(ext_rep, r.extraction_repeated.match_rate, 9, 3),
            cell(ext_rep, r.extraction_repeated.verbatim_len, 8, 1),
            cell(ext_val, r.extraction_validation.match_rate, 9, 3),
            cell(val && rep, r.mia_auc, 7, 3)
        )?;
    }
    if let Some(c) = file.gap_closure_vs_sinks_on {
        writeln!(out, "gap closure vs the same model with sinks on: {:.1} %", 100.0 * c)?;
    }
    for (mode, c) in file.gap_closure_vs_reference.iter().flatten() {
        writeln!(out, "gap closure of {mode} vs the reference: {:.1} %", 100.0 * c)?;
    }
    if !file.exclusion_specificity.is_empty() {
        let n = file.exclusion_specificity.len() as f64;
        let target = file.exclusion_specificity.iter().map(|s| s.target_delta).sum::<f64>() / n;
        let others = file.exclusion_specificity.iter().map(|s| s.others_delta).sum::<f64>() / n;
        writeln!(out, "excluding one sequence's sinks: its loss +{target:.3}, other repeated documents +{others:.3}")?;
    }
    writeln!(out, "wrote {}", args.run.join("eval.json").display())?;
    Ok(())
}

/// Export a trained run's weights as safetensors with a Llama config.json.
#[derive(Args, Debug, Clone)]
#[command(after_help = "Example:\n  memsinks export --run runs/mem --drop-sinks --out exported/mem-folded")]
pub struct ExportArgs {
    /// Run directory.
    #[arg(long)]
    run: PathBuf,
    /// Output directory.
    #[arg(long)]
    out: PathBuf,
    /// Fold the model with sinks dropped into a plain Llama (sink neurons removed, rescale folded).
    #[arg(long)]
    drop_sinks: bool,
    /// With --drop-sinks: do not rescale the general neurons.
    #[arg(long, requires = "drop_sinks")]
    plain: bool,
    /// Write into a non-empty --out (replacing the exported files).
    #[arg(long)]
    force: bool,
}

struct ExportTask {
    args: ExportArgs,
}

impl BackendTask for ExportTask {
    type Output = (PathBuf, usize);

    fn run<B: AutodiffBackend>(self, devices: Vec<B::Device>) -> Result<(PathBuf, usize)> {
        let args = &self.args;
        let device = &devices[0];
        let (model, cfg) = load_model::<B::InnerBackend>(&args.run.join(FINAL_DIR), device)?;
        let (model, cfg) = if args.drop_sinks {
            fold_drop_sinks(&model, &cfg, !args.plain, device)?
        } else {
            if cfg.num_sink() > 0 {
                bail!(
                    "this model has sinks, which a Llama reader would run at full strength: export with --drop-sinks"
                );
            }
            (model, cfg)
        };
        Ok((export_safetensors(&model, &cfg, &args.out)?, cfg.num_params()))
    }
}

/// Runs `memsinks export` on the default backend.
pub fn run_export(args: &ExportArgs, out: &mut impl std::io::Write) -> Result<()> {
    memsinks_train::run::load_summary(&args.run)?;
    if !is_empty_dir(&args.out)? && !args.force {
        bail!(
            "{} is not empty: choose a new directory, or pass --force to replace the exported files in it",
            args.out.display()
        );
    }
    let _lock = DirLock::acquire(&args.out, "export")?;
    let (path, params) = run_on(default_backend(), "f32", 0, 1, ExportTask { args: args.clone() })?;
    writeln!(out, "wrote {} ({params} parameters)", path.display())?;
    Ok(())
}
