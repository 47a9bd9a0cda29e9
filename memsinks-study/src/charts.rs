//! The report's charts, built from `results.json`: loss dynamics per method, the post-hoc
//! trade-off with the MemSinks point, and tracked documents per model.

use memsinks_train::Method;
use memsinks_unlearn::metrics::gap_closure;
use memsinks_unlearn::ForgetSet;

use crate::plot::{Chart, Series, Style};
use crate::posthoc_report::{memsinks_point, plotted_seed, MATCHED_TARGETS};
use crate::report::PLOTS;
use crate::results::{DynamicsPoint, Results};

/// Palette index of a training method.
fn method_color(method: Method) -> usize {
    match method {
        Method::Standard => 0,
        Method::Dedup => 1,
        Method::Memsinks => 2,
        Method::GradientMasking => 3,
        Method::DedupFresh => 4,
    }
}

/// Every chart of the report, by plot file name.
pub(crate) fn charts(results: &Results) -> Vec<(&'static str, Chart)> {
    vec![
        (PLOTS[0], dynamics(results)),
        (PLOTS[1], tradeoff(results)),
        (PLOTS[2], forgetting(results, Method::Standard)),
        (PLOTS[3], forgetting(results, Method::Memsinks)),
        (PLOTS[4], closure_trajectory(results)),
    ]
}

/// Validation and repeated-set loss during training, per method (with sinks dropped too, when
/// that differs).
fn dynamics(results: &Results) -> Chart {
    let mut dynamics = Chart {
        title: "Loss during training".into(),
        x_label: "step".into(),
        y_label: "loss (nats)".into(),
        ..Default::default()
    };
    for d in &results.dynamics {
        let c = method_color(d.method);
        let pts = |f: fn(&DynamicsPoint) -> f64| d.points.iter().map(|p| (p.step as f64, f(p))).collect();
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
    dynamics
}

/// Every post-hoc method's trade-off curve (forget-set against validation loss increase) on the
/// plotted seed, with the MemSinks drop as a point.
fn tradeoff(results: &Results) -> Chart {
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
        for m in results.posthoc.iter().filter(|m| m.method == *name && m.seed == plotted_seed(results)) {
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
        if let Some(p) = memsinks_point(results, &forget, plotted_seed(results)) {
            tradeoff.series.push(Series {
                label: format!("MemSinks drop ({})", forget.name()),
                points: vec![p],
                color,
                style: Style::Marker,
            });
        }
    }
    tradeoff
}

/// The tracked repeated documents' loss during training of `method`'s runs, with the steps at
/// which each was seen.
fn forgetting(results: &Results, method: Method) -> Chart {
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
}

/// Gap closure against the standard model (solid; canaries: markers) and validation loss ÷ the
/// standard model's (dashed) at every evaluation of every other method: the whole trajectory,
/// not the one point the main table reads. Each method's gap uses its repeated-set loss with
/// sinks dropped; the canary gap is held-out canaries minus trained canaries.
fn closure_trajectory(results: &Results) -> Chart {
    let mut chart = Chart {
        title: "Gap closure and L_val ÷ standard during training".into(),
        x_label: "step".into(),
        y_label: "closure / ratio".into(),
        ..Default::default()
    };
    let Some(standard) = results.dynamics.iter().find(|d| d.method == Method::Standard) else { return chart };
    let at = |step: u64| standard.points.iter().find(|p| p.step == step);
    for d in results.dynamics.iter().filter(|d| d.method != Method::Standard) {
        let c = method_color(d.method);
        let paired: Vec<(&DynamicsPoint, &DynamicsPoint)> =
            d.points.iter().filter_map(|p| at(p.step).map(|s| (p, s))).collect();
        chart.series.push(Series {
            label: format!("{} closure", d.method),
            points: paired
                .iter()
                .map(|(p, s)| (p.step as f64, gap_closure(p.val - p.rep_nosinks, s.val - s.rep_sinks)))
                .collect(),
            color: c,
            style: Style::Line,
        });
        // Canaries: trained against held-out canaries, each model's trained canaries with sinks dropped.
        let canary_gap = |p: &DynamicsPoint, trained: Option<f64>| Some(p.canary_held_out? - trained?);
        let canary: Vec<(f64, f64)> = paired
            .iter()
            .filter_map(|(p, s)| {
                Some((p.step as f64, gap_closure(canary_gap(p, p.canary_nosinks)?, canary_gap(s, s.canary_sinks)?)))
            })
            .collect();
        if !canary.is_empty() {
            chart.series.push(Series {
                label: format!("{} canary closure", d.method),
                points: canary,
                color: c,
                style: Style::Marker,
            });
        }
        chart.series.push(Series {
            label: format!("{} L_val ÷ standard", d.method),
            points: paired.iter().map(|(p, s)| (p.step as f64, p.val / s.val)).collect(),
            color: c,
            style: Style::Dashed,
        });
    }
    chart
}
