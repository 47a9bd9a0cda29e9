//! Sweeps: an experiment whose `study.variants` lists variants runs each as a whole study (its
//! own corpus, runs, removals and report under `variants/NAME/`), then compares them in one
//! `sweep.json` and `report.md`. Every number of the comparison is a variant's own result,
//! read from its `Results`.

use std::fmt::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use memsinks_core::files::{is_empty_dir, write_atomic, DirLock};
use memsinks_core::overrides::apply_overrides;
use memsinks_model::MlpMode;
use memsinks_train::Method;
use serde::{Deserialize, Serialize};

use crate::config::StudyConfig;
use crate::report::{estimate, l_val_ratio, row, write_report};
use crate::reproduce::{reproduce, ReproduceRequest};
use crate::results::Results;
use crate::source_removal::outcomes;
use crate::stats::Estimate;
use memsinks_train::Runner;

/// The file a sweep writes beside its report.
pub const SWEEP_FILE: &str = "sweep.json";

/// Every variant's results.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SweepResults {
    /// Experiment name (the config file's stem).
    pub experiment: String,
    /// The variants, in the order the experiment lists them.
    pub variants: Vec<VariantResults>,
}

/// One variant: its name, its overrides and its study's results.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VariantResults {
    /// Name.
    pub name: String,
    /// Its `key=value` overrides of the experiment.
    pub set: Vec<String>,
    /// Its study.
    pub results: Results,
}

/// The directory of variant `name` inside a sweep's output directory.
pub fn variant_dir(out: &Path, name: &str) -> PathBuf {
    out.join("variants").join(name)
}

/// Whether `dir` holds a sweep (its file, or its variants' directory).
pub fn holds_sweep(dir: &Path) -> bool {
    dir.join(SWEEP_FILE).exists() || dir.join("variants").is_dir()
}

/// Runs every variant of `request`'s `study.variants` as its own study, then writes
/// `sweep.json` and the comparison `report.md`.
///
/// # Errors
/// A bad variant (name, override) or a failing study; the output directory must be new, empty
/// or an earlier run of a sweep.
pub fn reproduce_sweep(request: &ReproduceRequest, runner: &impl Runner) -> Result<SweepResults> {
    let out = &request.out;
    if !is_empty_dir(out)? && !holds_sweep(out) {
        bail!("{} is not empty and holds no sweep: choose a new or empty --out", out.display());
    }
    let _lock = DirLock::acquire(out, "reproduce (sweep)")?;
    let mut variants = Vec::new();
    for variant in &request.study.variants {
        let name = &variant.name;
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
            bail!("study.variants: `{name}` is not a usable name (letters, digits, `-`, `_`, `.`)");
        }
        let (training, study): (Vec<String>, Vec<String>) =
            variant.set.iter().cloned().partition(|s| !s.starts_with("study."));
        let config = apply_overrides(&request.config, &training).with_context(|| format!("variant `{name}`"))?;
        config.validate().with_context(|| format!("variant `{name}`"))?;
        let study: Vec<String> = study.iter().map(|s| s.trim_start_matches("study.").to_string()).collect();
        let mut study: StudyConfig =
            apply_overrides(&request.study, &study).with_context(|| format!("variant `{name}`"))?;
        study.variants = Vec::new();
        study.validate(&config).with_context(|| format!("variant `{name}`"))?;
        let sub = ReproduceRequest {
            name: format!("{}/{name}", request.name),
            config,
            study,
            out: variant_dir(out, name),
            rerun: request.rerun,
        };
        tracing::info!("variant {name}");
        let results = reproduce(&sub, runner).with_context(|| format!("variant `{name}`"))?;
        variants.push(VariantResults { name: name.clone(), set: variant.set.clone(), results });
    }
    let sweep = SweepResults { experiment: request.name.clone(), variants };
    write_atomic(&out.join(SWEEP_FILE), &serde_json::to_vec_pretty(&sweep)?)?;
    write_atomic(&out.join("report.md"), markdown(&sweep).as_bytes())?;
    Ok(sweep)
}

/// Reads `DIR/sweep.json`.
///
/// # Errors
/// When it is missing or not a sweep.
pub fn load_sweep(dir: &Path) -> Result<SweepResults> {
    let path = dir.join(SWEEP_FILE);
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not a memsinks sweep file", path.display()))
}

/// Redraws the comparison and every variant's report from `sweep.json` alone.
///
/// # Errors
/// When a file cannot be written.
pub fn write_sweep_report(dir: &Path, sweep: &SweepResults) -> Result<()> {
    for v in &sweep.variants {
        let sub = variant_dir(dir, &v.name);
        std::fs::create_dir_all(&sub).with_context(|| format!("cannot create {}", sub.display()))?;
        write_atomic(&sub.join("results.json"), &serde_json::to_vec_pretty(&v.results)?)?;
        write_report(&sub, &v.results)?;
    }
    Ok(write_atomic(&dir.join("report.md"), markdown(sweep).as_bytes())?)
}

fn cell(e: Option<Estimate>, digits: usize, scale: f64) -> String {
    e.map_or("—".into(), |e| e.format(digits, scale))
}

/// The comparison table: per variant, MemSinks with sinks dropped against the standard model,
/// and, where the variants removed sources, the source removal.
pub fn table(sweep: &SweepResults) -> String {
    let with_sources = sweep.variants.iter().any(|v| !v.results.sources.is_empty());
    let mut s = String::from(
        "| variant | overrides | seeds | L_val (standard) | MemSinks L_val ÷ standard | gap closure, test half (%) | canary gap closure (%) |",
    );
    if with_sources {
        s.push_str(" ΔL removed source | ΔL retained sources | source gap closure vs standard (%) |");
    }
    let columns = if with_sources { 10 } else { 7 };
    let _ = write!(s, "\n|{}\n", " --- |".repeat(columns));
    for v in &sweep.variants {
        let r = &v.results;
        let std = row(r, Method::Standard, &MlpMode::Train).unwrap_or(&[]);
        let mem = row(r, Method::Memsinks, &r.deployed_mode()).unwrap_or(&[]);
        let set = if v.set.is_empty() { "—".to_string() } else { format!("`{}`", v.set.join("` `")) };
        let _ = write!(
            s,
            "| {} | {set} | {} | {} | {} | {} | {} |",
            v.name,
            r.seeds.len(),
            cell(estimate(std, |x| Some(x.l_val)), 3, 1.0),
            cell(estimate(mem, |x| l_val_ratio(r, x)), 3, 1.0),
            cell(estimate(mem, |x| x.closure_test), 1, 100.0),
            cell(estimate(mem, |x| x.canary_closure), 1, 100.0),
        );
        if with_sources {
            let o = outcomes(r);
            let of = |f: &dyn Fn(&crate::source_removal::SourceOutcome) -> Option<f64>| {
                Estimate::of(&o.iter().filter_map(f).collect::<Vec<_>>())
            };
            let _ = write!(
                s,
                " {} | {} | {} |",
                cell(of(&|x| Some(x.by_design.0)), 3, 1.0),
                cell(of(&|x| x.by_design.1), 3, 1.0),
                cell(of(&|x| x.closure_vs_standard), 1, 100.0),
            );
        }
        s.push('\n');
    }
    s
}

/// The sweep's `report.md`.
pub fn markdown(sweep: &SweepResults) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# memsinks sweep: `{}`\n", sweep.experiment);
    s.push_str("Each variant is a whole study of the experiment with its overrides (its own corpora, runs and report, linked below); every cell is that study's mean over its seeds `±` the half-width of the 95 % interval. MemSinks is evaluated with its sinks dropped, in the scale its dev half chose (the reference code's where the results record no choice); the gap closure is on the test half of the repeated documents, against the standard model of the same variant and seed.\n\n");
    s.push_str(&table(sweep));
    s.push_str("\nVariant reports: ");
    let links: Vec<String> =
        sweep.variants.iter().map(|v| format!("[{}](variants/{}/report.md)", v.name, v.name)).collect();
    s.push_str(&links.join(", "));
    s.push('\n');
    s
}
