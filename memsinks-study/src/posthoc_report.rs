//! The report's post-hoc section: each removal method's trade-off at matched forgetting levels,
//! over every seed it ran on (mean ± 95 % interval), next to dropping the MemSinks model's sinks;
//! and claim 1 (natural text is entangled, canaries are not) from paired intervals.

use std::fmt::Write;

use memsinks_unlearn::{delta_val_at, ForgetSet, MethodResult};

use crate::results::Results;
use crate::stats::{Estimate, Side};

/// Forgetting levels (nats of forget-loss increase) at which post-hoc methods are compared.
pub const MATCHED_TARGETS: [f64; 4] = [0.25, 0.5, 1.0, 2.0];

/// The seed whose curves the plots draw: the first one removals ran on (`None` for results
/// written before removals carried their seed).
pub(crate) fn plotted_seed(results: &Results) -> Option<u64> {
    results.posthoc.first().or(results.by_design.first()).and_then(|m| m.seed)
}

/// The MemSinks drop-sinks point of `seed` against the same seed's untreated standard model on
/// the same probe documents: `(ΔL_forget, ΔL_val)` for `forget`.
pub(crate) fn memsinks_point(results: &Results, forget: &ForgetSet, seed: Option<u64>) -> Option<(f64, f64)> {
    fn of<'a>(ms: &'a [MethodResult], forget: &ForgetSet, seed: Option<u64>) -> Option<&'a MethodResult> {
        ms.iter().find(|m| m.forget == *forget && m.seed == seed)
    }
    let dropped = of(&results.by_design, forget, seed)?.curve.last()?;
    let base = of(&results.posthoc, forget, seed)?.curve.first()?;
    Some((dropped.forget_loss - base.forget_loss, dropped.val_loss - base.val_loss))
}

/// The post-hoc result of `method` on `forget` in `seed`: the partner a paired comparison reads.
fn posthoc_of<'a>(
    results: &'a Results,
    method: &str,
    forget: &ForgetSet,
    seed: Option<u64>,
) -> Option<&'a MethodResult> {
    results.posthoc.iter().find(|m| m.method == method && m.forget == *forget && m.seed == seed)
}

/// `mean ± half-width` of the values that exist, with how many of `n` seeds have one when not all.
fn over_seeds(values: &[Option<f64>]) -> String {
    let have: Vec<f64> = values.iter().flatten().copied().collect();
    match Estimate::of(&have) {
        None => "—".into(),
        Some(e) if have.len() == values.len() => e.format(3, 1.0),
        Some(e) => format!("{} ({} of {} seeds reach it)", e.format(3, 1.0), have.len(), values.len()),
    }
}

/// The (method, forget set) groups of `ms`, each with its results over seeds, in a fixed order.
fn groups(ms: &[MethodResult]) -> Vec<Vec<&MethodResult>> {
    let mut keys: Vec<(String, String)> = ms.iter().map(|m| (m.method.clone(), m.forget.name())).collect();
    keys.sort();
    keys.dedup();
    keys.iter().map(|(name, f)| ms.iter().filter(|m| &m.method == name && &m.forget.name() == f).collect()).collect()
}

/// The post-hoc table.
pub(crate) fn table(results: &Results) -> String {
    let mut s = String::new();
    let targets: Vec<String> = MATCHED_TARGETS.iter().map(|t| format!("ΔL_val at ΔL_forget = {t}")).collect();
    let _ = writeln!(
        s,
        "| method | forget set | seeds | {} | ΔL_val at MemSinks' ΔL_forget | furthest point: ΔL_forget / ΔL_val | relearning: others' loss drop beyond an intact control (nats, share of removed) |",
        targets.join(" | ")
    );
    let _ = writeln!(s, "|{}", " --- |".repeat(MATCHED_TARGETS.len() + 6));
    for group in groups(&results.posthoc) {
        let first = group[0];
        let matched: Vec<String> = MATCHED_TARGETS
            .iter()
            .map(|&t| over_seeds(&group.iter().map(|m| delta_val_at(&m.curve, t)).collect::<Vec<_>>()))
            .collect();
        let at_memsinks: Vec<Option<f64>> = group
            .iter()
            .map(|m| {
                let (df, _) = memsinks_point(results, &m.forget, m.seed)?;
                if df > 0.0 {
                    delta_val_at(&m.curve, df)
                } else {
                    None
                }
            })
            .collect();
        let last = |f: fn(&memsinks_unlearn::TradeoffPoint) -> f64| {
            over_seeds(&group.iter().map(|m| m.curve.last().map(f)).collect::<Vec<_>>())
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} / {} | {} |",
            first.method,
            first.forget.name(),
            group.len(),
            matched.join(" | "),
            over_seeds(&at_memsinks),
            last(|p| p.delta_forget),
            last(|p| p.delta_val),
            crate::relearning::cell(&group)
        );
    }
    for group in groups(&results.by_design) {
        let points: Vec<Option<(f64, f64)>> =
            group.iter().map(|m| memsinks_point(results, &m.forget, m.seed)).collect();
        let _ = writeln!(
            s,
            "| **MemSinks, sinks dropped** (vs standard) | {} | {} |{} {} | {} / {} | {} |",
            group[0].forget.name(),
            group.len(),
            " |".repeat(MATCHED_TARGETS.len()),
            over_seeds(&points.iter().map(|p| p.map(|p| p.1)).collect::<Vec<_>>()),
            over_seeds(&points.iter().map(|p| p.map(|p| p.0)).collect::<Vec<_>>()),
            over_seeds(&points.iter().map(|p| p.map(|p| p.1)).collect::<Vec<_>>()),
            crate::relearning::cell(&group)
        );
    }
    s
}

/// Claim 1: at a matched forgetting level, what each post-hoc method pays in validation loss for
/// natural text against canaries, paired by seed; natural text is called more entangled only when
/// the paired difference's interval lies above 0.
pub(crate) fn entanglement_findings(results: &Results) -> String {
    let mut s = String::new();
    let at = MATCHED_TARGETS[1];
    for group in groups(&results.posthoc).into_iter().filter(|g| g[0].forget == ForgetSet::Repeated) {
        let name = &group[0].method;
        let canary = |seed| posthoc_of(results, name, &ForgetSet::Canary, seed);
        let pairs: Vec<(Option<f64>, Option<f64>)> = group
            .iter()
            .map(|m| (delta_val_at(&m.curve, at), canary(m.seed).and_then(|c| delta_val_at(&c.curve, at))))
            .collect();
        let diffs: Vec<f64> = pairs.iter().filter_map(|&(n, c)| Some(n? - c?)).collect();
        let (natural, canaries) = (
            over_seeds(&pairs.iter().map(|p| p.0).collect::<Vec<_>>()),
            over_seeds(&pairs.iter().map(|p| p.1).collect::<Vec<_>>()),
        );
        match Estimate::of(&diffs) {
            Some(d) => {
                let verdict = d.verdict(0.0, "**yes**", "**no**, canaries cost more");
                let _ = writeln!(
                    s,
                    "- {name}: forgetting {at} nats costs ΔL_val {natural} for natural text vs {canaries} for canaries; difference {} (interval {}, paired by seed over {} seed(s) where both reach it): natural text costs more: {verdict}.",
                    d.format(3, 1.0),
                    d.interval(3, 1.0),
                    diffs.len()
                );
            }
            None => {
                let _ = writeln!(
                    s,
                    "- {name}: does not reach ΔL_forget = {at} on both sets in any seed within its sweep (natural: {natural}; canaries: {canaries})."
                );
            }
        }
    }
    s
}

/// Localization against chance: at a matched forgetting level of natural text, what each
/// localize-and-prune method pays in validation loss minus what pruning at random pays, paired by
/// seed. A method localizes the forget set better than chance only when that interval lies below 0.
pub(crate) fn localization_findings(results: &Results) -> String {
    let mut s = String::new();
    let at = MATCHED_TARGETS[1];
    let random = |seed| posthoc_of(results, RANDOM_PRUNING, &ForgetSet::Repeated, seed);
    let scorers = groups(&results.posthoc).into_iter().filter(|g| {
        g[0].forget == ForgetSet::Repeated && g[0].method.starts_with("prune-") && g[0].method != RANDOM_PRUNING
    });
    for group in scorers {
        let diffs: Vec<f64> = group
            .iter()
            .filter_map(|m| Some(delta_val_at(&m.curve, at)? - delta_val_at(&random(m.seed)?.curve, at)?))
            .collect();
        let Some(d) = Estimate::of(&diffs) else { continue };
        let verdict = match d.side_of(0.0) {
            Side::Below => "localizes better than chance: **yes**",
            Side::Above => "**no**: it costs more than pruning at random",
            Side::Straddles => "no better than chance at this precision (the interval contains 0)",
            Side::NoInterval => "inconclusive: one seed",
        };
        let _ = writeln!(
            s,
            "- {} against {RANDOM_PRUNING}, natural text, ΔL_val at ΔL_forget = {at}: {} (interval {}, paired by seed over {} seed(s)): {verdict}.",
            group[0].method,
            d.format(3, 1.0),
            d.interval(3, 1.0),
            diffs.len()
        );
    }
    s
}

/// The control every localization method is compared with.
const RANDOM_PRUNING: &str = "prune-random";
