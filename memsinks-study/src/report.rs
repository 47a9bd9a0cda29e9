//! `report.md` and the plots, drawn from `results.json` alone (so `memsinks report` can redraw
//! them without the runs).

use std::fmt::Write;
use std::path::Path;

use anyhow::{Context, Result};
use memsinks_core::files::write_atomic;
use memsinks_model::MlpMode;
use memsinks_train::Method;
use memsinks_unlearn::metrics::gap_closure;

use crate::assemble::{SINKS_DROPPED, SINKS_ON};
use crate::charts::charts;
use crate::results::{Results, RowValues};
use crate::stats::{Estimate, Side};
use crate::study_dir::StudyDir;

pub use crate::posthoc_report::MATCHED_TARGETS;

/// Plot files written next to `report.md` (each as `.svg` and `.png`).
pub const PLOTS: [&str; 5] = ["dynamics", "tradeoff", "forgetting-standard", "forgetting-memsinks", "closure"];

/// Reads `DIR/results.json`.
pub fn load_results(dir: &Path) -> Result<Results> {
    let path = StudyDir::new(dir).results();
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not a memsinks results file", path.display()))
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

/// A closure bought with a validation loss this many times the standard model's is flagged: the
/// gap closed because the model got worse, not because memorization was isolated.
const L_VAL_TOLERANCE: f64 = 1.05;

/// The verdict on "`what` is above `threshold`" from an estimate: called only when the whole 95 %
/// interval is on one side.
fn verdict(e: &Estimate, threshold: f64, above: &str, below: &str) -> String {
    match e.side_of(threshold) {
        Side::Above => above.to_string(),
        Side::Below => below.to_string(),
        Side::Straddles => "inconclusive: the 95 % interval contains the threshold".to_string(),
        Side::NoInterval => "inconclusive: one seed gives no interval".to_string(),
    }
}

/// Per-seed differences `a - b` of two rows, paired by seed.
fn paired(a: &[RowValues], b: &[RowValues], f: impl Fn(&RowValues) -> f64) -> Vec<f64> {
    a.iter().filter_map(|x| b.iter().find(|y| y.seed == x.seed).map(|y| f(x) - f(y))).collect()
}

/// Plain statements of what the run shows about the paper's claims, from the numbers; a claim is
/// called only when its 95 % interval over seeds lies on one side of the threshold.
fn findings(results: &Results) -> String {
    let mut s = String::new();
    let std = row(results, Method::Standard, &MlpMode::Train);
    let dropped = row(results, Method::Memsinks, &SINKS_DROPPED);
    let on = row(results, Method::Memsinks, &SINKS_ON);
    let dedup = row(results, Method::Dedup, &MlpMode::Train);
    if let (Some(std), Some(d)) = (std, dropped) {
        // Natural text, then canaries (trained against held-out ones never trained on).
        type Closure = fn(&RowValues) -> Option<f64>;
        let closures: [(&str, Closure, &str, &str); 2] = [
            (
                "Natural text",
                |x| x.closure_test,
                "gap between repeated and held-out text, on the test half of the repeated documents (never looked at for any choice)",
                ", as the paper claims",
            ),
            (
                "Canaries",
                |x| x.canary_closure,
                "canary gap (trained canaries against held-out ones never trained on)",
                "",
            ),
        ];
        for (what, closure, gap, claim) in closures {
            if let Some(closure) = estimate(d, closure) {
                let _ = writeln!(
                    s,
                    "- {what}: dropping the sinks closed **{} %** of the standard model's {gap} (95 % interval {} %); over half{claim}: **{}**.",
                    closure.format(1, 100.0),
                    closure.interval(1, 100.0),
                    verdict(&closure, 0.5, "holds", "does not hold")
                );
            }
        }
        if !results.selected_steps.is_empty() {
            let sel = &results.selected_steps;
            let test = Estimate::of(&sel.iter().map(|x| x.test_closure).collect::<Vec<_>>());
            let steps: Vec<String> = sel.iter().map(|x| x.step.to_string()).collect();
            let ratios: Vec<String> = sel.iter().map(|x| format!("{:.3}", x.l_val_ratio)).collect();
            if let Some(test) = test {
                let _ = writeln!(
                    s,
                    "- Training length chosen on the dev half (the step with the best dev closure within the L_val bound, per seed): step {}; there the test half's closure is **{} %** (95 % interval {} %) at L_val {}× standard; over half: **{}**.",
                    steps.join(" / "),
                    test.format(1, 100.0),
                    test.interval(1, 100.0),
                    ratios.join(" / "),
                    verdict(&test, 0.5, "holds", "does not hold")
                );
            }
        }
        if let Some(on) = on {
            let vs_on: Vec<f64> = d
                .iter()
                .filter_map(|x| on.iter().find(|y| y.seed == x.seed).map(|y| gap_closure(x.gap, y.gap)))
                .collect();
            if let Some(e) = Estimate::of(&vs_on) {
                let _ =
                    writeln!(s, "- Against the same model with its sinks on, the closure is {} %.", e.format(1, 100.0));
            }
        }
        if let Some(ratio) = estimate(d, |x| l_val_ratio(results, x)) {
            let _ = writeln!(
                s,
                "- Validation loss with sinks dropped is {}× the standard model's (95 % interval {}); within {:.0} % of standard: **{}**.",
                ratio.format(3, 1.0),
                ratio.interval(3, 1.0),
                100.0 * (L_VAL_TOLERANCE - 1.0),
                verdict(&ratio, L_VAL_TOLERANCE, "no, it is worse", "yes")
            );
        }
        if let Some(dd) = dedup {
            if let Some(diff) = Estimate::of(&paired(d, dd, |x| x.l_val)) {
                let _ = writeln!(
                    s,
                    "- MemSinks (sinks dropped) minus deduplication as the paper defines it (each repeated document once, nothing added, the same optimizer steps), validation loss: {} (95 % interval {}, paired by seed); MemSinks beats deduplication: **{}**.",
                    diff.format(3, 1.0),
                    diff.interval(3, 1.0),
                    verdict(&diff, 0.0, "no", "yes")
                );
            }
        }
        if let (Some(dd), Some(fresh)) = (dedup, row(results, Method::DedupFresh, &MlpMode::Train)) {
            if let (Some(gain), Some(vs)) =
                (Estimate::of(&paired(fresh, dd, |x| x.l_val)), Estimate::of(&paired(d, fresh, |x| x.l_val)))
            {
                let _ = writeln!(
                    s,
                    "- Fresh stories in place of the removed repetitions (dedup + fresh data minus dedup), validation loss: {} (95 % interval {}): what more distinct data buys, an upper bound rather than a baseline; MemSinks (sinks dropped) minus it: {} (interval {}).",
                    gain.format(3, 1.0),
                    gain.interval(3, 1.0),
                    vs.format(3, 1.0),
                    vs.interval(3, 1.0)
                );
            }
        }
        if let Some(mia) = estimate(d, |x| Some(x.mia_auc)) {
            let std_mia = estimate(std, |x| Some(x.mia_auc)).map_or("—".into(), |e| e.format(3, 1.0));
            let _ = writeln!(
                s,
                "- Membership inference by loss (repeated against validation documents; 0.5 is no signal): AUC {std_mia} for the standard model, **{}** with the sinks dropped (interval {}): loss still tells a repeated document from a held-out one: **{}**.",
                mia.format(3, 1.0),
                mia.interval(3, 1.0),
                verdict(&mia, 0.5, "yes", "no")
            );
        }
        let ext = |v: &[RowValues], f: fn(&RowValues) -> f64| {
            estimate(v, |x| Some(f(x))).map_or("—".into(), |e| e.format(3, 1.0))
        };
        let _ = writeln!(
            s,
            "- Greedy extraction of repeated documents: {} (standard) → {} (sinks dropped); held-out baseline {}.",
            ext(std, |x| x.extraction),
            ext(d, |x| x.extraction),
            ext(d, |x| x.extraction_heldout)
        );
    }
    // Every other closure next to what it cost: a closure bought with a broken model is flagged.
    for r in results
        .rows
        .iter()
        .filter(|r| r.method != Method::Standard && !(r.method == Method::Memsinks && r.mode == SINKS_DROPPED))
    {
        let (Some(c), Some(ratio)) =
            (estimate(&r.values, |x| x.closure_vs_standard), estimate(&r.values, |x| l_val_ratio(results, x)))
        else {
            continue;
        };
        let flag = match ratio.side_of(L_VAL_TOLERANCE) {
            Side::Above => {
                format!(" — **bought with a worse model** (L_val interval above {L_VAL_TOLERANCE}× standard): not isolation")
            }
            Side::Straddles => format!(
                " — the L_val interval {} contains {L_VAL_TOLERANCE}×: the model may be worse",
                ratio.interval(3, 1.0)
            ),
            Side::NoInterval if ratio.mean > L_VAL_TOLERANCE => {
                format!(" — L_val above {L_VAL_TOLERANCE}× standard (one seed: no verdict)")
            }
            _ => String::new(),
        };
        let _ = writeln!(
            s,
            "- {}: closure {} % at L_val {}× standard{flag}.",
            r.label,
            c.format(1, 100.0),
            ratio.format(3, 1.0)
        );
    }
    if let Some((target, others)) = results.specificity {
        let _ = writeln!(s, "- Excluding one document's sinks raises its loss by {target:+.3} and the other repeated documents' by {others:+.3} (per-sequence specificity).");
    }
    // Does removed memorization come back when a few forgotten documents are trained on again?
    s.push_str(&crate::relearning::findings(results));
    // Claim 1: entanglement of natural text versus canaries, at a matched forgetting level.
    s.push_str(&crate::posthoc_report::entanglement_findings(results));
    // Localization: does any scorer find the forget set better than pruning at random?
    s.push_str(&crate::posthoc_report::localization_findings(results));
    s
}

/// What `memsinks reproduce` prints on finishing: the findings that carry a verdict (each with its
/// interval), one per line; the full table and every other finding are in `report.md`.
pub fn summary(results: &Results) -> String {
    let mut s = format!("{} ({} seed(s)): the findings with a verdict\n", results.experiment, results.seeds.len());
    for line in findings(results).lines().filter(|l| l.starts_with("- ") && l.contains("**")) {
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
    s.push_str(&findings(results));
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
