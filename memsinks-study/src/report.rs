//! `report.md` and the plots, drawn from `results.json` alone (so `memsinks report` can redraw
//! them without the runs).

use std::fmt::Write;
use std::path::Path;

use anyhow::{Context, Result};
use memsinks_core::files::write_atomic;
use memsinks_model::MlpMode;
use memsinks_train::Method;

use crate::charts::charts;
use crate::results::{Results, RowValues, RESULTS_SCHEMA};
use crate::stats::Estimate;
use crate::study_dir::StudyDir;

pub use crate::posthoc_report::MATCHED_TARGETS;

/// Plot files written next to `report.md` (each as `.svg` and `.png`).
pub const PLOTS: [&str; 5] = ["dynamics", "tradeoff", "forgetting-standard", "forgetting-memsinks", "closure"];

/// Reads `DIR/results.json`.
pub fn load_results(dir: &Path) -> Result<Results> {
    let path = StudyDir::new(dir).results();
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let results: Results =
        serde_json::from_str(&text).with_context(|| format!("{} is not a memsinks results file", path.display()))?;
    memsinks_core::files::check_schema(&path, results.schema_version, RESULTS_SCHEMA)?;
    Ok(results)
}

/// Writes `report.md` and `plots/*.{svg,png}` into `dir`.
pub fn write_report(dir: &Path, results: &Results) -> Result<()> {
    let files = StudyDir::new(dir);
    let plots = files.plots();
    std::fs::create_dir_all(&plots).with_context(|| format!("cannot create {}", plots.display()))?;
    for (name, chart) in charts(results) {
        write_atomic(&plots.join(format!("{name}.svg")), chart.svg().as_bytes())?;
        write_atomic(&plots.join(format!("{name}.png")), &chart.png())?;
    }
    write_atomic(&files.report(), markdown(results).as_bytes())?;
    Ok(())
}

/// The mean over seeds `± ` the half-width of its 95 % interval, with `digits` decimals and the
/// values multiplied by `scale`; `—` when no seed has a value.
fn cell(values: &[RowValues], digits: usize, scale: f64, f: impl Fn(&RowValues) -> Option<f64>) -> String {
    estimate(values, f).map_or("—".into(), |e| e.format(digits, scale))
}

/// The estimate over seeds of `f`.
pub(crate) fn estimate(values: &[RowValues], f: impl Fn(&RowValues) -> Option<f64>) -> Option<Estimate> {
    Estimate::of(&values.iter().filter_map(f).collect::<Vec<_>>())
}

/// The main-table values (one per seed) of a method in a mode.
pub(crate) fn row<'a>(results: &'a Results, method: Method, mode: &MlpMode) -> Option<&'a [RowValues]> {
    results.rows.iter().find(|r| r.method == method && r.mode == *mode).map(|r| r.values.as_slice())
}

/// `L_val / L_val(standard)` of a row value: recorded, or computed from the standard row of the
/// same seed (results written before the ratio was recorded).
pub(crate) fn l_val_ratio(results: &Results, v: &RowValues) -> Option<f64> {
    v.l_val_vs_standard.or_else(|| {
        let std = row(results, Method::Standard, &MlpMode::Train)?.iter().find(|s| s.seed == v.seed)?;
        Some(v.l_val / std.l_val)
    })
}

/// The main table in Markdown (also printed by CI).
pub fn main_table(results: &Results) -> String {
    let mut s = String::new();
    s.push_str("| model | L_rep (natural) | L_rep (canary) | L_val | L_val ÷ standard | gap | gap closure vs standard (%) | closure, dev / test half (%) | canary gap closure (%) | extraction (held-out) | verbatim | MIA AUC | real tokens | passes | views per repeated doc | wall (s) |\n");
    s.push_str(&format!("|{}\n", " --- |".repeat(16)));
    for r in &results.rows {
        let v = &r.values;
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} / {} | {} | {} ({}) | {} | {} | {} | {} | {} | {} |",
            r.label,
            cell(v, 3, 1.0, |x| Some(x.l_rep)),
            cell(v, 3, 1.0, |x| x.l_canary),
            cell(v, 3, 1.0, |x| Some(x.l_val)),
            cell(v, 3, 1.0, |x| l_val_ratio(results, x)),
            cell(v, 3, 1.0, |x| Some(x.gap)),
            cell(v, 1, 100.0, |x| x.closure_vs_standard),
            cell(v, 1, 100.0, |x| x.closure_dev),
            cell(v, 1, 100.0, |x| x.closure_test),
            cell(v, 1, 100.0, |x| x.canary_closure),
            cell(v, 3, 1.0, |x| Some(x.extraction)),
            cell(v, 3, 1.0, |x| Some(x.extraction_heldout)),
            cell(v, 1, 1.0, |x| Some(x.verbatim)),
            cell(v, 3, 1.0, |x| Some(x.mia_auc)),
            cell(v, 0, 1.0, |x| x.real_tokens.map(|t| t as f64)),
            cell(v, 2, 1.0, |x| x.passes),
            cell(v, 1, 1.0, |x| x.views_per_repeated),
            cell(v, 1, 1.0, |x| Some(x.wall_s)),
        );
    }
    s
}

/// What `memsinks reproduce` prints on finishing: the findings that carry a verdict (each with its
/// interval), one per line; the full table and every other finding are in `report.md`.
pub fn summary(results: &Results) -> String {
    let mut s = format!("{} ({} seed(s)): the findings with a verdict\n", results.experiment, results.seeds.len());
    for line in crate::findings::findings(results).lines().filter(|l| l.starts_with("- ") && l.contains("**")) {
        s.push_str(line);
        s.push('\n');
    }
    s
}

/// The whole `report.md`.
pub fn markdown(results: &Results) -> String {
    let mut s = String::new();
    let total: f64 = results.timings.iter().map(|t| t.seconds).sum();
    let _ = writeln!(s, "# memsinks reproduction: `{}`\n", results.experiment);
    let _ = writeln!(
        s,
        "Config hash `{}` · seeds {:?} · memsinks {} · burn {} · backend `{}` · compute {total:.0} s over all stages.\n",
        results.config_hash, results.seeds, results.versions.memsinks, results.versions.burn, results.backend
    );
    let (k, m) = results.extraction;
    let _ = writeln!(s, "## Main table\n\nLosses are mean next-token NLL (nats); L_val ÷ standard is the validation loss against the standard model of the same seed; extraction is the share of {m} greedy-decoded tokens that match the document after a {k}-token prompt (held-out baseline in parentheses); verbatim is the matching prefix length; MIA AUC separates repeated from validation documents by loss. Gap closure is `1 − gap ÷ gap(standard)` with gap = L_val − L_rep, on all repeated documents and on their dev and test halves (choices are made on dev; the findings report test); canary gap closure uses held-out canaries, never trained on, in place of L_val. Real tokens exclude padding; passes are over the model's own data; views are how often a repeated document was trained on. Each cell is the mean over {} seed(s); `±` gives the half-width of its 95 % confidence interval (Student's t), absent for one seed.\n", results.seeds.len());
    s.push_str(&main_table(results));
    s.push_str("\n## Findings\n\n");
    s.push_str(&crate::findings::findings(results));
    s.push_str("\n## Post-hoc removal on the standard model\n\nEvery method runs on the standard model of every seed; each cell is the mean over those seeds ± the half-width of its 95 % interval (seeds where a method never reaches a level are left out and counted). Δ against the untreated standard model of the same seed on the same documents; matched columns interpolate each method's sweep where it first reaches that forget-loss increase (— where it never does). The MemSinks rows compare the MemSinks model with sinks dropped to the standard model. Relearning fine-tunes the treated model on n of the forgotten documents (several random draws of which) and reports how much the *other* forgotten documents' loss drops beyond a control, the same fine-tuning on n held-out documents: in nats and as a share of what the method removed (the others' loss after the method minus their loss in the untreated model as it memorized them, sinks on for MemSinks), mean ± 95 % interval over seeds × draws. A size whose control moved the validation loss by more than its bound (0.05 nats unless the method file says otherwise) reports nothing: that fine-tuning damaged the model, and the difference of two damaged models is not recovery. Post-hoc relearning starts at the first point of the method's curve that forgot as much as dropping the sinks did (or its last point, when it never got there: the cell gives where it started).\n\n");
    s.push_str(&crate::posthoc_report::table(results));
    s.push_str(&crate::source_removal::section(results));
    s.push_str("\n## Plots\n\n");
    for (name, what) in PLOTS.iter().zip([
        "Loss during training: validation (solid) and repeated set (dashed; MemSinks and gradient masking also with sinks dropped).",
        "Post-hoc trade-off (first seed): forget-loss increase against validation-loss increase, natural (solid) and canary (dashed), up to 4 nats of forgetting; the MemSinks drop-sinks points (against the standard model) as large markers.",
        "Standard model: loss of tracked repeated documents during training; ticks mark when each was seen.",
        "MemSinks model: the same documents with their sinks on (solid) and dropped (dashed).",
        "Every evaluation during training: gap closure against the standard model at the same step (solid; sinks dropped; markers: canary gap closure against held-out canaries) and validation loss ÷ the standard model's (dashed). A closure is only worth its ratio: near 1 it is isolation, far above 1 a broken model.",
    ]) {
        let _ = writeln!(s, "![{name}](plots/{name}.svg)\n\n{what}\n");
    }
    s.push_str("## Stage timings\n\n| stage | seconds | cached |\n| --- | --- | --- |\n");
    for t in &results.timings {
        let _ = writeln!(s, "| {} | {:.1} | {} |", t.stage, t.seconds, if t.cached { "yes" } else { "no" });
    }
    let _ = writeln!(s, "\n## Configuration\n\n```ron\n{}\n```", results.config.trim_end());
    s
}
