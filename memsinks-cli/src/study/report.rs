//! `report.md` and the plots, drawn from `results.json` alone (so `memsinks report` can redraw
//! them without the runs).

use std::fmt::Write;
use std::path::Path;

use anyhow::{Context, Result};
use memsinks_data::write_atomic;
use memsinks_unlearn::{delta_val_at, ForgetSet, MethodResult};

use super::plot::{Chart, Series, Style};
use super::results::{Results, RowValues};

/// Forgetting levels (nats of forget-loss increase) at which post-hoc methods are compared.
pub const MATCHED_TARGETS: [f64; 4] = [0.25, 0.5, 1.0, 2.0];

/// Plot files written next to `report.md` (each as `.svg` and `.png`).
pub const PLOTS: [&str; 4] = ["dynamics", "tradeoff", "forgetting-standard", "forgetting-memsinks"];

/// Reads `DIR/results.json`.
pub fn load_results(dir: &Path) -> Result<Results> {
    let path = dir.join("results.json");
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not a memsinks results file", path.display()))
}

/// Writes `report.md` and `plots/*.{svg,png}` into `dir`.
pub fn write_report(dir: &Path, results: &Results) -> Result<()> {
    let plots = dir.join("plots");
    std::fs::create_dir_all(&plots).with_context(|| format!("cannot create {}", plots.display()))?;
    for (name, chart) in charts(results) {
        write_atomic(&plots.join(format!("{name}.svg")), chart.svg().as_bytes())?;
        write_atomic(&plots.join(format!("{name}.png")), &chart.png())?;
    }
    write_atomic(&dir.join("report.md"), markdown(results).as_bytes())?;
    Ok(())
}

fn mean_std(xs: &[f64]) -> (f64, f64) {
    let n = xs.len().max(1) as f64;
    let mean = xs.iter().sum::<f64>() / n;
    let var = if xs.len() > 1 { xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0) } else { 0.0 };
    (mean, var.sqrt())
}

/// `mean` or `mean ± std` over seeds, with `digits` decimals; `—` when no seed has a value.
fn cell(values: &[RowValues], digits: usize, f: impl Fn(&RowValues) -> Option<f64>) -> String {
    let xs: Vec<f64> = values.iter().filter_map(f).filter(|x| x.is_finite()).collect();
    if xs.is_empty() {
        return "—".into();
    }
    let (m, s) = mean_std(&xs);
    if xs.len() > 1 {
        format!("{m:.digits$} ± {s:.digits$}")
    } else {
        format!("{m:.digits$}")
    }
}

fn percent(x: f64) -> String {
    format!("{:.1} %", 100.0 * x)
}

/// The main-table row of `label`'s first seed.
fn row<'a>(results: &'a Results, method: &str, mode: &str) -> Option<&'a RowValues> {
    results.rows.iter().find(|r| r.method == method && r.mode == mode).and_then(|r| r.values.first())
}

/// The main table in Markdown (also printed by CI).
pub fn main_table(results: &Results) -> String {
    let mut s = String::new();
    s.push_str("| model | L_rep (natural) | L_rep (canary) | L_val | gap | gap closure vs standard | extraction (held-out) | verbatim | MIA AUC | tokens | wall (s) |\n");
    s.push_str("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n");
    for r in &results.rows {
        let v = &r.values;
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} ({}) | {} | {} | {} | {} |",
            r.label,
            cell(v, 3, |x| Some(x.l_rep)),
            cell(v, 3, |x| x.l_canary),
            cell(v, 3, |x| Some(x.l_val)),
            cell(v, 3, |x| Some(x.gap)),
            cell(v, 1, |x| x.closure_vs_standard.map(|c| 100.0 * c)).replace(" ±", " % ±") + closure_unit(v),
            cell(v, 3, |x| Some(x.extraction)),
            cell(v, 3, |x| Some(x.extraction_heldout)),
            cell(v, 1, |x| Some(x.verbatim)),
            cell(v, 3, |x| Some(x.mia_auc)),
            cell(v, 0, |x| Some(x.tokens_seen as f64)),
            cell(v, 1, |x| Some(x.wall_s)),
        );
    }
    s
}

fn closure_unit(v: &[RowValues]) -> &'static str {
    if v.iter().any(|x| x.closure_vs_standard.is_some()) {
        " %"
    } else {
        ""
    }
}

/// The MemSinks drop-sinks point against the standard model's untreated point on the same
/// probe documents: `(ΔL_forget, ΔL_val)` for `forget`.
fn memsinks_point(results: &Results, forget: ForgetSet) -> Option<(f64, f64)> {
    let dropped = results.by_design.iter().find(|m| m.forget == forget)?.curve.last()?.clone();
    let base = results.posthoc.iter().find(|m| m.forget == forget)?.curve.first()?.clone();
    Some((dropped.forget_loss - base.forget_loss, dropped.val_loss - base.val_loss))
}

fn fmt_opt(x: Option<f64>) -> String {
    x.map_or("—".into(), |v| format!("{v:+.3}"))
}

fn posthoc_table(results: &Results) -> String {
    let mut s = String::new();
    let targets: Vec<String> = MATCHED_TARGETS.iter().map(|t| format!("ΔL_val at ΔL_forget = {t}")).collect();
    let _ = writeln!(
        s,
        "| method | forget set | {} | ΔL_val at MemSinks' ΔL_forget | furthest point: ΔL_forget / ΔL_val | relearning: share of the others' memorization back |",
        targets.join(" | ")
    );
    let _ = writeln!(s, "|{}", " --- |".repeat(MATCHED_TARGETS.len() + 5));
    let mut methods: Vec<&MethodResult> = results.posthoc.iter().collect();
    methods.sort_by_key(|m| (m.method.clone(), m.forget.name()));
    for m in methods {
        let matched: Vec<String> = MATCHED_TARGETS.iter().map(|&t| fmt_opt(delta_val_at(&m.curve, t))).collect();
        let at_memsinks = memsinks_point(results, m.forget).map_or("—".into(), |(df, _)| {
            format!("{} (at {df:+.3})", fmt_opt(if df > 0.0 { delta_val_at(&m.curve, df) } else { None }))
        });
        let last = m.curve.last().map_or("—".into(), |p| format!("{:+.3} / {:+.3}", p.delta_forget, p.delta_val));
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} |",
            m.method,
            m.forget.name(),
            matched.join(" | "),
            at_memsinks,
            last,
            relearn_cell(m)
        );
    }
    for m in &results.by_design {
        let (df, dv) = memsinks_point(results, m.forget).unwrap_or((f64::NAN, f64::NAN));
        let _ = writeln!(
            s,
            "| **MemSinks, sinks dropped** (vs standard) | {} |{} {} | {df:+.3} / {dv:+.3} | {} |",
            m.forget.name(),
            " |".repeat(MATCHED_TARGETS.len()),
            fmt_opt(Some(dv)),
            relearn_cell(m)
        );
    }
    s
}

fn relearn_cell(m: &MethodResult) -> String {
    if m.relearn.is_empty() {
        return "—".into();
    }
    m.relearn
        .iter()
        .map(|r| format!("n={}: {}", r.relearned, r.recovered.map_or("n/a".into(), |x| format!("{:.0} %", 100.0 * x))))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Plain statements of what the run shows about the paper's claims, from the numbers.
fn findings(results: &Results) -> String {
    let mut s = String::new();
    let std = row(results, "standard", "train");
    let dropped = row(results, "memsinks", "drop-sinks");
    let on = row(results, "memsinks", "activate-seq");
    let dedup = row(results, "dedup", "train");
    if let (Some(std), Some(d)) = (std, dropped) {
        let closure = d.closure_vs_standard.unwrap_or(f64::NAN);
        let verdict = if closure > 0.5 {
            "more than half, as the paper claims"
        } else if closure > 0.2 {
            "a clear part, but less than the paper's \"over half\""
        } else {
            "little: isolation does not show in this regime (see experiments/README.md for where it does)"
        };
        let _ = writeln!(s, "- Dropping the sinks closed **{}** of the standard model's gap between repeated and held-out text: {verdict}.", percent(closure));
        if let Some(on) = on {
            let vs_on = 1.0 - d.gap / on.gap;
            let _ = writeln!(s, "- Against the same model with its sinks on, the closure is {}.", percent(vs_on));
        }
        let ratio = d.l_val / std.l_val;
        let _ = writeln!(
            s,
            "- Validation loss with sinks dropped is {ratio:.3}× the standard model's ({:.3} vs {:.3}).",
            d.l_val, std.l_val
        );
        if let Some(dd) = dedup {
            let word = if d.l_val < dd.l_val { "beats" } else { "does not beat" };
            let _ = writeln!(
                s,
                "- MemSinks (sinks dropped) {word} deduplication on validation loss ({:.3} vs {:.3}).",
                d.l_val, dd.l_val
            );
        }
        let _ = writeln!(
            s,
            "- Greedy extraction of repeated documents: {:.3} (standard) → {:.3} (sinks dropped); held-out baseline {:.3}.",
            std.extraction, d.extraction, d.extraction_heldout
        );
    }
    if let Some((target, others)) = results.specificity {
        let _ = writeln!(s, "- Excluding one document's sinks raises its loss by {target:+.3} and the other repeated documents' by {others:+.3} (per-sequence specificity).");
    }
    // Does removed memorization come back when a few forgotten documents are trained on again?
    let first_relearn = |ms: &[MethodResult]| {
        ms.iter().find(|m| m.forget == ForgetSet::Repeated && !m.relearn.is_empty()).and_then(|m| {
            let r = m.relearn.first()?;
            Some((m.method.clone(), r.relearned, r.recovered?))
        })
    };
    if let (Some((method, n, post)), Some((_, _, design))) =
        (first_relearn(&results.posthoc), first_relearn(&results.by_design))
    {
        let _ = writeln!(
            s,
            "- Relearning {n} forgotten document(s) brings back {} of the other repeated documents' memorization after {method}, {} after dropping the sinks.",
            percent(post),
            percent(design)
        );
    }
    // Claim 1: entanglement of natural text versus canaries, at a matched forgetting level.
    let at = MATCHED_TARGETS[1];
    let mut names: Vec<&str> = results.posthoc.iter().map(|m| m.method.as_str()).collect();
    names.dedup();
    for name in names {
        let cost = |f: ForgetSet| {
            results.posthoc.iter().find(|m| m.method == name && m.forget == f).and_then(|m| delta_val_at(&m.curve, at))
        };
        match (cost(ForgetSet::Repeated), cost(ForgetSet::Canary)) {
            (Some(n), Some(c)) => {
                let _ = writeln!(
                    s,
                    "- {name}: forgetting {at} nats costs ΔL_val {n:+.3} for natural text vs {c:+.3} for canaries."
                );
            }
            (n, c) => {
                let _ = writeln!(
                    s,
                    "- {name}: does not reach ΔL_forget = {at} on {} within its sweep.",
                    match (n, c) {
                        (None, None) => "either set",
                        (None, _) => "natural text",
                        _ => "canaries",
                    }
                );
            }
        }
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
    let _ = writeln!(s, "## Main table\n\nLosses are mean next-token NLL (nats); extraction is the share of {m} greedy-decoded tokens that match the document after a {k}-token prompt (held-out baseline in parentheses); verbatim is the matching prefix length; MIA AUC separates repeated from validation documents by loss.\n");
    s.push_str(&main_table(results));
    s.push_str("\n## Findings\n\n");
    s.push_str(&findings(results));
    s.push_str("\n## Post-hoc removal on the standard model\n\nΔ against the untreated standard model on the same documents; matched columns interpolate each method's sweep where it first reaches that forget-loss increase (— where it never does). The MemSinks rows compare the MemSinks model with sinks dropped to the standard model. Relearning fine-tunes the treated model on n of the forgotten documents and reports the share of the *other* forgotten documents' removed loss that comes back (negative: their loss rises further).\n\n");
    s.push_str(&posthoc_table(results));
    s.push_str("\n## Plots\n\n");
    for (name, what) in PLOTS.iter().zip([
        "Loss during training: validation (solid) and repeated set (dashed; MemSinks and gradient masking also with sinks dropped).",
        "Post-hoc trade-off: forget-loss increase against validation-loss increase, natural (solid) and canary (dashed), up to 4 nats of forgetting; the MemSinks drop-sinks points (against the standard model) as large markers.",
        "Standard model: loss of tracked repeated documents during training; ticks mark when each was seen.",
        "MemSinks model: the same documents with their sinks on (solid) and dropped (dashed).",
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

/// Palette index of a training method.
fn method_color(method: &str) -> usize {
    match method {
        "standard" => 0,
        "dedup" => 1,
        "memsinks" => 2,
        _ => 3,
    }
}

fn charts(results: &Results) -> Vec<(&'static str, Chart)> {
    let mut dynamics = Chart {
        title: "Loss during training".into(),
        x_label: "step".into(),
        y_label: "loss (nats)".into(),
        ..Default::default()
    };
    for d in &results.dynamics {
        let c = method_color(&d.method);
        let pts =
            |f: fn(&super::results::DynamicsPoint) -> f64| d.points.iter().map(|p| (p.step as f64, f(p))).collect();
        dynamics.series.push(Series {
            label: format!("{} val", d.method),
            points: pts(|p| p.val),
            color: c,
            style: Style::Line,
        });
        dynamics.series.push(Series {
            label: format!("{} rep", d.method),
            points: pts(|p| p.rep_sinks),
            color: c,
            style: Style::Dashed,
        });
        if d.points.iter().any(|p| p.rep_nosinks != p.rep_sinks) {
            dynamics.series.push(Series {
                label: format!("{} rep, no sinks", d.method),
                points: pts(|p| p.rep_nosinks),
                color: c + 4,
                style: Style::Dashed,
            });
        }
    }
    let mut tradeoff = Chart {
        title: "Post-hoc removal: forgetting vs capability".into(),
        x_label: "increase of the forget-set loss (nats)".into(),
        y_label: "increase of validation loss (nats)".into(),
        // The matched range of the post-hoc table; fine-tuning runs on far beyond it.
        x_max: Some(2.0 * MATCHED_TARGETS[MATCHED_TARGETS.len() - 1]),
        ..Default::default()
    };
    let mut names: Vec<&str> = results.posthoc.iter().map(|m| m.method.as_str()).collect();
    names.sort();
    names.dedup();
    for (i, name) in names.iter().enumerate() {
        for m in results.posthoc.iter().filter(|m| m.method == *name) {
            let style = if m.forget == ForgetSet::Canary { Style::Dashed } else { Style::Line };
            tradeoff.series.push(Series {
                label: format!("{name} ({})", m.forget.name()),
                points: m.curve.iter().map(|p| (p.delta_forget, p.delta_val)).collect(),
                color: i,
                style,
            });
        }
    }
    for (forget, color) in [(ForgetSet::Repeated, 6), (ForgetSet::Canary, 7)] {
        if let Some(p) = memsinks_point(results, forget) {
            tradeoff.series.push(Series {
                label: format!("MemSinks drop ({})", forget.name()),
                points: vec![p],
                color,
                style: Style::Marker,
            });
        }
    }
    let forgetting = |method: &str| {
        let mut chart = Chart {
            title: format!("Tracked repeated documents: {method}"),
            x_label: "step".into(),
            y_label: "loss (nats)".into(),
            ..Default::default()
        };
        for f in results.forgetting.iter().filter(|f| f.method == method) {
            for (i, d) in f.docs.iter().enumerate() {
                chart.series.push(Series {
                    label: format!("doc {}", d.doc),
                    points: d.losses.iter().map(|&(s, with, _)| (s as f64, with)).collect(),
                    color: i,
                    style: Style::Line,
                });
                if d.losses.iter().any(|&(_, w, wo)| w != wo) {
                    chart.series.push(Series {
                        label: format!("doc {}, no sinks", d.doc),
                        points: d.losses.iter().map(|&(s, _, without)| (s as f64, without)).collect(),
                        color: i,
                        style: Style::Dashed,
                    });
                }
                chart.marks.extend(d.seen_at.iter().map(|&s| (s, i)));
            }
        }
        chart
    };
    vec![
        (PLOTS[0], dynamics),
        (PLOTS[1], tradeoff),
        (PLOTS[2], forgetting("standard")),
        (PLOTS[3], forgetting("memsinks")),
    ]
}
