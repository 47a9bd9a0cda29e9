//! `memsinks eval` and `memsinks export`: measure a trained run, export it.

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;
use memsinks_core::files::{is_empty_dir, DirLock};
use memsinks_model::{DropScale, MlpMode};
use memsinks_study::ExportRequest;
use memsinks_train::config::Precision;
use memsinks_train::RunDir;
use memsinks_train::{DeviceRange, Runner};
use memsinks_unlearn::{load_eval, EvalFile, EvalRequest};

use crate::backend::BackendChoice;

/// Evaluate a trained run in each MLP mode; writes RUN/eval.json.
#[derive(Args, Debug, Clone)]
#[command(
    after_help = "Examples:\n  memsinks eval --run runs/ts-quick-memsinks-601dd35d17d4\n  memsinks eval --run runs/mem --reference runs/std --mode drop-sinks"
)]
pub struct EvalArgs {
    /// Run directory (written by `memsinks train`).
    #[arg(long)]
    run: PathBuf,
    /// One mode only (default: all that apply).
    #[arg(long, value_enum)]
    mode: Option<MlpMode>,
    /// Sequence IDs whose sinks are switched off in the `all` and `activate-seq` modes
    /// (per-sequence removal), e.g. `--exclude 123,456`.
    #[arg(long, value_delimiter = ',')]
    exclude: Vec<i64>,
    /// Sources (keys of `data.source_key`) whose sinks are switched off in those modes, e.g.
    /// `--exclude-source author-003,author-007`; their removal is reported against the retained
    /// and the held-out sources.
    #[arg(long, value_delimiter = ',')]
    exclude_source: Vec<String>,
    /// An evaluated standard run: gap closure is also reported against its gap.
    #[arg(long)]
    reference: Option<PathBuf>,
    /// Documents per split.
    #[arg(long, default_value_t = 64)]
    max_docs: usize,
    /// Prompt tokens of greedy extraction (k).
    #[arg(long, visible_alias = "k", default_value_t = 32)]
    extract_prompt: usize,
    /// Continuation tokens of greedy extraction (m).
    #[arg(long, visible_alias = "m", default_value_t = 32)]
    extract_continuation: usize,
    /// Backend.
    #[arg(long, value_parser = memsinks_train::BackendName::parse)]
    backend: Option<memsinks_train::BackendName>,
    /// Replace an existing RUN/eval.json.
    #[arg(long)]
    force: bool,
}

/// Runs `memsinks eval`.
pub fn run_eval(args: &EvalArgs, out: &mut impl std::io::Write) -> Result<()> {
    let target = RunDir::new(&args.run).eval();
    // Not a finished run: say so before creating anything in it.
    memsinks_train::run::load_summary(&args.run)?;
    let reference = args.reference.as_deref().map(load_eval).transpose()?;
    if let Some(r) = &reference {
        let own = memsinks_train::run::load_summary(&args.run)?;
        if r.run_id == own.run_id {
            bail!("--reference is this run itself: give a run trained without sinks (standard or dedup)");
        }
        if r.method.has_sinks() {
            bail!(
                "--reference {} is a {} run: gap closure is measured against a model trained without sinks \
                 (standard or dedup)",
                args.reference.as_deref().unwrap_or(std::path::Path::new("")).display(),
                r.method.name()
            );
        }
    }
    let _lock = DirLock::acquire(&args.run, "eval")?;
    if target.exists() && !args.force {
        bail!("{} exists: pass --force to replace it", target.display());
    }
    let request = EvalRequest {
        run: args.run.clone(),
        mode: args.mode.clone(),
        exclude: args.exclude.clone(),
        exclude_sources: args.exclude_source.clone(),
        max_docs: args.max_docs,
        extract_prompt: args.extract_prompt,
        extract_continuation: args.extract_continuation,
        reference,
    };
    let file = BackendChoice::chosen(args.backend).run(Precision::F32, DeviceRange::ONE, request)?;
    file.write(&args.run)?;
    print_modes(&file, out)?;
    print_closures(&file, out)?;
    writeln!(out, "wrote {}", target.display())?;
    Ok(())
}

/// The eval's table: one row per mode.
fn print_modes(file: &EvalFile, out: &mut impl std::io::Write) -> Result<()> {
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
            r.mode.name(),
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
    Ok(())
}

/// The eval's closures, specificity and source removal, when it has them.
fn print_closures(file: &EvalFile, out: &mut impl std::io::Write) -> Result<()> {
    if let Some(c) = file.gap_closure_vs_sinks_on {
        writeln!(out, "gap closure vs the same model with sinks on: {:.1} %", 100.0 * c)?;
    }
    for c in file.gap_closure_vs_reference.iter().flatten() {
        writeln!(out, "gap closure of {} vs the reference: {:.1} %", c.mode.name(), 100.0 * c.closure)?;
    }
    if let Some((target, others)) = file.mean_specificity() {
        writeln!(out, "excluding one sequence's sinks: its loss +{target:.3}, other repeated documents +{others:.3}")?;
    }
    if let Some(r) = &file.source_removal {
        writeln!(out, "removing {} ({} sequence IDs switched off):", r.sources.join(", "), r.excluded_ids)?;
        let groups = [
            ("removed sources", Some(&r.forgotten)),
            ("retained sources", Some(&r.retained)),
            ("held-out sources", r.held_out.as_ref()),
        ];
        for (name, g) in groups {
            if let Some(g) = g {
                writeln!(
                    out,
                    "  {name:<17} {:>4} docs: loss {:.3} -> {:.3} ({:+.3}), extraction {:.3} -> {:.3}",
                    g.docs,
                    g.before,
                    g.after,
                    g.after - g.before,
                    g.extraction_before,
                    g.extraction_after
                )?;
            }
        }
        if let Some(c) = r.closure() {
            writeln!(out, "  closes {:.1} % of the gap between the removed and the held-out sources", 100.0 * c)?;
        }
    }
    Ok(())
}

/// Export a trained run as a folder Hugging Face transformers loads from its path alone: weights
/// (safetensors, Llama names), config.json, the tokenizer, generation config and a model card.
#[derive(Args, Debug, Clone)]
#[command(after_help = "Example:\n  memsinks export --run runs/mem --drop-sinks --out exported/mem-folded")]
pub struct ExportArgs {
    /// Run directory.
    #[arg(long)]
    run: PathBuf,
    /// Output directory.
    #[arg(long)]
    out: PathBuf,
    /// Fold the model with sinks dropped into a plain Llama (sink neurons removed, the general
    /// neurons' factor folded into the down projection).
    #[arg(long)]
    drop_sinks: bool,
    /// With --drop-sinks: do not rescale the general neurons (`drop-sinks-plain`).
    #[arg(long, requires = "drop_sinks", conflicts_with = "matched")]
    plain: bool,
    /// With --drop-sinks: the activity-matched factor (`drop-sinks-matched`) instead of the
    /// reference code's.
    #[arg(long, requires = "drop_sinks")]
    matched: bool,
    /// Write into a non-empty --out (replacing the exported files).
    #[arg(long)]
    force: bool,
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
    let lock_file = args.out.join(memsinks_core::files::LOCK_FILE);
    let lock_was_there = lock_file.exists();
    let lock = DirLock::acquire(&args.out, "export")?;
    remove_stale_export_files(&args.out);
    let request = ExportRequest {
        run: args.run.clone(),
        out: args.out.clone(),
        drop_sinks: args.drop_sinks,
        scale: match (args.plain, args.matched) {
            (true, _) => DropScale::Plain,
            (false, true) => DropScale::ActivityMatched,
            (false, false) => DropScale::Reference,
        },
    };
    let exported = match BackendChoice::chosen(None).run(Precision::F32, DeviceRange::ONE, request) {
        Ok(exported) => exported,
        Err(e) => {
            // A failed export leaves the user's directory as it found it: no lock file of ours.
            drop(lock);
            if !lock_was_there {
                let _ = std::fs::remove_file(&lock_file);
            }
            return Err(e);
        }
    };
    writeln!(
        out,
        "wrote {} ({} parameters) with its tokenizer, generation config and model card",
        args.out.display(),
        exported.params
    )?;
    Ok(())
}

/// The files `memsinks export` writes (through temporary names of [`temporary_sibling`]).
const EXPORTED_FILES: [&str; 6] = [
    "model.safetensors",
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "generation_config.json",
    "README.md",
];

/// Removes what a killed export left in `out`: temporary files of the exported names, and only
/// those (called under `out`'s lock, so no live writer owns them).
///
/// [`temporary_sibling`]: memsinks_core::files::temporary_sibling
fn remove_stale_export_files(out: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(out) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let ours = EXPORTED_FILES.iter().any(|f| name.starts_with(&format!(".{f}.tmp-")));
        if ours && entry.file_type().is_ok_and(|t| t.is_file() || t.is_symlink()) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}
