//! The findings of a study's report: plain statements of what the run shows about the paper's
//! claims, from `results.json` alone. A claim is called only when its 95 % interval over seeds
//! lies on one side of the threshold; one seed is always inconclusive.

use std::fmt::Write;

use memsinks_model::MlpMode;
use memsinks_train::Method;
use memsinks_unlearn::metrics::gap_closure;

use crate::assemble::SINKS_ON;
use crate::report::{estimate, l_val_ratio, row};
use crate::results::{Results, RowValues, L_VAL_TOLERANCE};
use crate::stats::{Estimate, Side};

/// The verdict on "the estimate is above `threshold`" ([`Estimate::verdict`]).
fn verdict(e: &Estimate, threshold: f64, above: &str, below: &str) -> String {
    e.verdict(threshold, above, below)
}

/// Per-seed differences `a - b` of two rows, paired by seed.
fn paired(a: &[RowValues], b: &[RowValues], f: impl Fn(&RowValues) -> f64) -> Vec<f64> {
    a.iter().filter_map(|x| b.iter().find(|y| y.seed == x.seed).map(|y| f(x) - f(y))).collect()
}

/// Every finding, in the report's order: the drop-sinks scale, isolation (claim 2), deduplication,
/// what an attacker still sees, every other closure with its cost, specificity, relearning,
/// entanglement (claim 1) and localization.
pub(crate) fn findings(results: &Results) -> String {
    let mut s = String::new();
    let std = row(results, Method::Standard, &MlpMode::Train);
    let deployed = results.deployed_mode();
    let dropped = row(results, Method::Memsinks, &deployed);
    deployed_scale(&mut s, results, &deployed);
    if let (Some(std), Some(d)) = (std, dropped) {
        isolation(&mut s, results, d);
        against_dedup(&mut s, results, d);
        leakage(&mut s, std, d);
    }
    other_closures(&mut s, results, &deployed);
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

/// Which drop-sinks scale the dev half chose, among what.
fn deployed_scale(s: &mut String, results: &Results, deployed: &MlpMode) {
    if let Some(choice) = &results.deployed {
        let seen: Vec<String> = choice
            .candidates
            .iter()
            .map(|c| {
                let name = MlpMode::DropSinks { scale: c.scale }.name();
                format!("`{name}` {:.1} % at {:.3}×", 100.0 * c.dev_closure, c.l_val_ratio)
            })
            .collect();
        let rule = if choice.candidates.iter().any(|c| c.l_val_ratio <= L_VAL_TOLERANCE) {
            format!("chosen on the dev half of the repeated documents: the highest mean dev-half closure among the scales whose mean L_val is within {L_VAL_TOLERANCE}× standard")
        } else {
            format!("the reference code's scale: no scale keeps the mean L_val within {L_VAL_TOLERANCE}× standard, so the dev half had nothing to choose among")
        };
        let _ = writeln!(
            s,
            "- The sinks are dropped in mode **`{}`**, {rule} (dev-half closure and L_val ÷ standard: {}); the numbers below are that mode's, the closure on the test half.",
            deployed.name(),
            seen.join("; ")
        );
    }
}

/// Claim 2: the share of the gap dropping the sinks closes (natural text on the test half, and
/// canaries), at the dev-half training length, against the sinks-on model, and what it costs in
/// validation loss.
fn isolation(s: &mut String, results: &Results, d: &[RowValues]) {
    let on = row(results, Method::Memsinks, &SINKS_ON);
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
        let vs_on: Vec<f64> =
            d.iter().filter_map(|x| on.iter().find(|y| y.seed == x.seed).map(|y| gap_closure(x.gap, y.gap))).collect();
        if let Some(e) = Estimate::of(&vs_on) {
            let _ = writeln!(s, "- Against the same model with its sinks on, the closure is {} %.", e.format(1, 100.0));
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
}

/// MemSinks against the paper's deduplication, and what fresh data in place of the removed
/// repetitions adds.
fn against_dedup(s: &mut String, results: &Results, d: &[RowValues]) {
    let dedup = row(results, Method::Dedup, &MlpMode::Train);
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
}

/// What an attacker still sees after the sinks are dropped: membership inference and extraction.
fn leakage(s: &mut String, std: &[RowValues], d: &[RowValues]) {
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

/// Every other closure next to what it cost.
fn other_closures(s: &mut String, results: &Results, deployed: &MlpMode) {
    // A closure bought with a broken model is flagged.
    for r in results
        .rows
        .iter()
        .filter(|r| r.method != Method::Standard && !(r.method == Method::Memsinks && r.mode == *deployed))
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
}
