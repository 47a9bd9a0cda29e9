//! The report's section on removing a source (a corpus with `data.source_key`): per seed, the
//! MemSinks model with one source's sinks switched off against the standard model with the same
//! source forgotten post hoc at the same forget-loss increase.

use std::fmt::Write;

use memsinks_train::Method;
use memsinks_unlearn::{delta_at, delta_val_at, ForgetSet, TradeoffPoint};

use crate::results::{Results, SourceRemovalRun};
use crate::stats::{Estimate, Side};

/// One seed's source removal, by design and post hoc.
#[derive(Clone, Debug, PartialEq)]
pub struct SourceOutcome {
    /// Training seed.
    pub seed: u64,
    /// The removed source.
    pub source: String,
    /// Dropping its sinks: ΔL of the removed source, of the retained sources, of the held-out
    /// sources (validation).
    pub by_design: (f64, Option<f64>, f64),
    /// `1 − gap(after) ÷ gap(standard)`, the gap being L(held-out sources) − L(removed source).
    pub closure_vs_standard: Option<f64>,
    /// Each post-hoc method at the same ΔL of the removed source: name, ΔL retained, ΔL held-out.
    pub posthoc: Vec<(String, Option<f64>, Option<f64>)>,
}

/// The gap between the held-out sources and the removed one at a point of a curve.
fn gap(p: &TradeoffPoint) -> f64 {
    p.val_loss - p.forget_loss
}

/// Every seed's outcome, in seed order.
pub fn outcomes(results: &Results) -> Vec<SourceOutcome> {
    let runs = &results.sources;
    let mut out = Vec::new();
    for design in runs.iter().filter(|r| r.method == Method::Memsinks) {
        let ForgetSet::Source(source) = &design.result.forget else { continue };
        let Some(after) = design.result.curve.last() else { continue };
        let same = |r: &&SourceRemovalRun| r.seed == design.seed && r.result.forget == design.result.forget;
        let standard: Vec<&SourceRemovalRun> =
            runs.iter().filter(|r| r.method == Method::Standard).filter(same).collect();
        let gap_std = standard.first().and_then(|r| r.result.curve.first()).map(gap);
        let df = after.delta_forget;
        out.push(SourceOutcome {
            seed: design.seed,
            source: source.clone(),
            by_design: (df, after.delta_retain, after.delta_val),
            closure_vs_standard: gap_std.filter(|g| g.abs() > 1e-9).map(|g| 1.0 - gap(after) / g),
            posthoc: standard
                .iter()
                .map(|r| {
                    let c = &r.result.curve;
                    let at = (df > 0.0).then_some(df);
                    (
                        r.result.method.clone(),
                        at.and_then(|t| delta_at(c, t, |p| p.delta_retain)),
                        at.and_then(|t| delta_val_at(c, t)),
                    )
                })
                .collect(),
        });
    }
    out.sort_by_key(|o| o.seed);
    out
}

fn cell(xs: &[f64]) -> String {
    Estimate::of(xs).map_or("—".into(), |e| e.format(3, 1.0))
}

fn percent_cell(xs: &[f64]) -> String {
    Estimate::of(xs).map_or("—".into(), |e| e.format(1, 100.0))
}

/// The markdown section (empty when the study removed no source). Its length is the section's
/// text: one table and the paragraphs that read it, in the order a reader meets them.
pub fn section(results: &Results) -> String {
    let all = outcomes(results);
    if all.is_empty() {
        return String::new();
    }
    let mut s = String::from(
        "\n## Removing a source\n\nIn every seed one trained source (its key in the column) is removed. By design: the MemSinks model with that source's sink subsets switched off and every other sequence keeping its own (`drop-source-sinks`; with per-source IDs that is one subset, with per-document IDs one per document of the source). Post hoc: each method forgets the same source's documents on the standard model, read where it first raises their loss as much as dropping the sinks did. Δ are loss changes (nats) of the removed source's trained documents, of the other trained sources' documents and of the held-out sources' (never trained); closure is `1 − gap ÷ gap(standard)` with gap = L(held-out sources) − L(removed source). Mean ± 95 % half-width over seeds.\n\n",
    );
    let sources: Vec<String> = all.iter().map(|o| format!("{} (seed {})", o.source, o.seed)).collect();
    let _ = writeln!(s, "Removed: {}.\n", sources.join(", "));
    s.push_str("| removal | ΔL removed source | ΔL retained sources | ΔL held-out sources | gap closure vs standard (%) |\n| --- | --- | --- | --- | --- |\n");
    let col = |f: &dyn Fn(&SourceOutcome) -> Option<f64>| -> Vec<f64> { all.iter().filter_map(f).collect() };
    let _ = writeln!(
        s,
        "| MemSinks, the source's sinks dropped | {} | {} | {} | {} |",
        cell(&col(&|o| Some(o.by_design.0))),
        cell(&col(&|o| o.by_design.1)),
        cell(&col(&|o| Some(o.by_design.2))),
        percent_cell(&col(&|o| o.closure_vs_standard)),
    );
    let mut names: Vec<String> = all.iter().flat_map(|o| o.posthoc.iter().map(|p| p.0.clone())).collect();
    names.sort();
    names.dedup();
    for name in &names {
        let pick = |o: &SourceOutcome| o.posthoc.iter().find(|p| &p.0 == name).cloned();
        let _ = writeln!(
            s,
            "| standard, {name} at the same ΔL | {} | {} | {} | — |",
            cell(&col(&|o| pick(o).map(|_| o.by_design.0))),
            cell(&col(&|o| pick(o).and_then(|p| p.1))),
            cell(&col(&|o| pick(o).and_then(|p| p.2))),
        );
    }
    // The claim: the removed source's loss rises far more than the retained sources'.
    let excess: Vec<f64> = all.iter().filter_map(|o| o.by_design.1.map(|r| o.by_design.0 - r)).collect();
    if let Some(e) = Estimate::of(&excess) {
        let verdict = e.verdict(
            0.0,
            "the removed source's loss rises more than the retained sources' (interval above 0)",
            "the retained sources' loss rises more than the removed source's (interval below 0)",
        );
        let _ = writeln!(s, "\nRemoved minus retained ΔL: {} — {verdict}.", e.format(3, 1.0));
    }
    // Selectivity against each post-hoc method, paired by seed at the same ΔL of the removed
    // source: called only when the interval of the difference lies on one side of 0.
    for name in &names {
        let diffs: Vec<f64> = all
            .iter()
            .filter_map(|o| {
                let post = o.posthoc.iter().find(|p| &p.0 == name)?.1?;
                Some(o.by_design.1? - post)
            })
            .collect();
        if let Some(e) = Estimate::of(&diffs) {
            let verdict = match e.side_of(0.0) {
                Side::Below => "**yes**".to_string(),
                Side::Above => "**no**, the sinks disturb the retained sources more".to_string(),
                Side::Straddles => format!("**inconclusive**: the interval {} contains 0", e.interval(3, 1.0)),
                Side::NoInterval => "one seed: no verdict".to_string(),
            };
            let _ = writeln!(
                s,
                "\nRetained sources' ΔL, sinks dropped minus {name} (paired by seed): {} — dropping the sinks is more selective than {name}: {verdict}.",
                e.format(3, 1.0)
            );
        }
    }
    s
}
