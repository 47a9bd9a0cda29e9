//! The relearning test in the report: per number of relearned documents, the recovery beyond an
//! intact control over every seed and draw, and the verdicts drawn from it.
//!
//! Verdict rules (fixed before any run): memorization *comes back* after a method when the 95 %
//! interval of the others' loss drop beyond the control (nats) lies above 0, and is *not seen to
//! come back* when it lies below the smallest effect worth naming, [`NEGLIGIBLE_NATS`]; dropping
//! the sinks leaves *less to relearn* than a post-hoc method when the paired difference (same
//! draw of documents) lies below 0. A size at which any control moved the validation loss by more
//! than its bound reports nothing: the fine-tuning damaged the model, and a difference between
//! two damaged models is not recovery.

use std::fmt::Write;

use memsinks_unlearn::relearn::RelearnPoint;
use memsinks_unlearn::{ForgetSet, MethodResult};

use crate::results::Results;
use crate::stats::{Estimate, Side};

/// A recovery beyond the control smaller than this (nats) is not worth naming.
pub const NEGLIGIBLE_NATS: f64 = 0.02;

/// One relearning point with the seed of the model it ran on.
type Seeded<'a> = (Option<u64>, &'a RelearnPoint);

/// One size of relearning, over its seeds and draws.
struct Size<'a> {
    n: usize,
    points: Vec<Seeded<'a>>,
}

impl Size<'_> {
    /// Draws whose control moved the validation loss beyond its bound.
    fn broken(&self) -> usize {
        self.points.iter().filter(|(_, p)| p.control_intact != Some(true)).count()
    }

    fn nats(&self) -> Option<Estimate> {
        (self.broken() == 0)
            .then(|| self.points.iter().filter_map(|(_, p)| p.recovered_nats).collect::<Vec<_>>())
            .and_then(|v| Estimate::of(&v))
    }

    fn share(&self) -> Option<Estimate> {
        (self.broken() == 0)
            .then(|| self.points.iter().filter_map(|(_, p)| p.recovered).collect::<Vec<_>>())
            .and_then(|v| Estimate::of(&v))
    }

    fn worst_control(&self) -> f64 {
        self.points.iter().filter_map(|(_, p)| p.delta_val_control).map(f64::abs).fold(0.0, f64::max)
    }
}

fn points<'a>(group: &[&'a MethodResult]) -> Vec<Seeded<'a>> {
    group.iter().flat_map(|m| m.relearn.iter().map(|p| (m.seed, p))).collect()
}

fn sizes<'a>(group: &[&'a MethodResult]) -> Vec<Size<'a>> {
    let all = points(group);
    let mut ns: Vec<usize> = all.iter().map(|(_, p)| p.relearned).collect();
    ns.sort_unstable();
    ns.dedup();
    ns.into_iter()
        .map(|n| Size { n, points: all.iter().copied().filter(|(_, p)| p.relearned == n).collect() })
        .collect()
}

/// The post-hoc table's cell for one method over seeds: where relearning started (ΔL_forget and
/// ΔL_val, means over seeds), then per size the others' loss drop beyond the control (nats, and as
/// a share of what the method removed) over seeds and draws.
pub(crate) fn cell(group: &[&MethodResult]) -> String {
    if group.iter().all(|m| m.relearn.is_empty()) {
        return "—".into();
    }
    let starts: Vec<_> = group.iter().filter_map(|m| m.relearn_start.as_ref()).collect();
    let mean = |f: fn(&memsinks_unlearn::relearn::RelearnStart) -> f64| {
        starts.iter().map(|s| f(s)).sum::<f64>() / starts.len().max(1) as f64
    };
    let start = if starts.is_empty() {
        String::new()
    } else {
        format!("from ΔL_forget {:+.3}, ΔL_val {:+.3}: ", mean(|s| s.delta_forget), mean(|s| s.delta_val))
    };
    let cells: Vec<String> = sizes(group)
        .iter()
        .map(|size| match (size.broken(), size.nats()) {
            (0, Some(nats)) => {
                let share = size.share().map_or(String::new(), |e| format!(", {} %", e.format(0, 100.0)));
                format!("n={}: {} nats{share} ({} runs)", size.n, nats.format(3, 1.0), size.points.len())
            }
            (0, None) => format!("n={}: no control", size.n),
            (k, _) => format!(
                "n={}: not reported, the control moved L_val by up to {:.3} in {k} of {} runs",
                size.n,
                size.worst_control(),
                size.points.len()
            ),
        })
        .collect();
    format!("{start}{}", cells.join("; "))
}

/// Paired by seed and draw (the same documents relearned): `a`'s recovery minus `b`'s, for the
/// size `n` of both.
fn paired_nats(a: &[&MethodResult], b: &[&MethodResult], n: usize) -> Vec<f64> {
    let (a, b) = (points(a), points(b));
    let intact = |(_, p): &&Seeded<'_>| p.relearned == n && p.control_intact == Some(true);
    a.iter()
        .filter(intact)
        .filter_map(|(seed, p)| {
            let other = b.iter().filter(intact).find(|(s, q)| s == seed && q.draw == p.draw)?;
            Some(p.recovered_nats? - other.1.recovered_nats?)
        })
        .collect()
}

/// The results of `ms` that forgot the repeated documents with the relearning test, grouped by
/// method.
fn relearned_groups(ms: &[MethodResult]) -> Vec<Vec<&MethodResult>> {
    let with: Vec<&MethodResult> =
        ms.iter().filter(|m| m.forget == ForgetSet::Repeated && !m.relearn.is_empty()).collect();
    let mut names: Vec<&str> = with.iter().map(|m| m.method.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    names.into_iter().map(|n| with.iter().copied().filter(|m| m.method == n).collect()).collect()
}

/// The findings' lines on relearning the repeated documents, one per size.
pub(crate) fn findings(results: &Results) -> String {
    let mut s = String::new();
    let Some(design) = relearned_groups(&results.by_design).into_iter().next() else { return s };
    let posthoc = relearned_groups(&results.posthoc);
    for size in sizes(&design) {
        let Some(nats) = size.nats() else {
            let _ = writeln!(
                s,
                "- Relearning {} document(s) after dropping the sinks: not reported, the control's fine-tuning moved the validation loss by up to {:.3} nats (more than its bound): it would measure damage, not recovery.",
                size.n,
                size.worst_control()
            );
            continue;
        };
        let verdict = match (nats.side_of(0.0), nats.side_of(NEGLIGIBLE_NATS)) {
            (Side::Above, _) => "memorization **comes back**",
            (_, Side::Below) => "**no recovery** beyond the control (interval below 0.02 nats)",
            (Side::NoInterval, _) => "inconclusive: one run gives no interval",
            _ => "inconclusive: the interval reaches from below 0 to above 0.02 nats",
        };
        let _ = write!(
            s,
            "- Relearning {} forgotten document(s) after dropping the sinks lowers the other forgotten documents' loss by {} nats beyond an intact control ({} runs: seeds × draws; interval {}): {verdict}.",
            size.n,
            nats.format(3, 1.0),
            size.points.len(),
            nats.interval(3, 1.0)
        );
        for post in &posthoc {
            let pair = Estimate::of(&paired_nats(&design, post, size.n));
            let other = sizes(post).into_iter().find(|p| p.n == size.n).and_then(|p| p.nats());
            if let (Some(pair), Some(other)) = (pair, other) {
                let less = pair.verdict(0.0, "**no**, more comes back", "**yes**");
                let _ = write!(
                    s,
                    " After {} (from the same forgetting level): {} nats; less comes back after dropping the sinks (paired difference {}): {less}.",
                    post[0].method,
                    other.format(3, 1.0),
                    pair.format(3, 1.0)
                );
            }
        }
        s.push('\n');
    }
    s
}
