//! `results.json` built from the stages' outputs: the main table per seed, training dynamics,
//! tracked documents and specificity.

use anyhow::Result;
use memsinks_data::{pass_order, Half, PreparedCorpus, Split};
use memsinks_model::{DropScale, MlpMode};
use memsinks_train::metric_log::{read_evals, EvalRecord};
use memsinks_train::{ExperimentConfig, Method};
use memsinks_unlearn::metrics::gap_closure;
use memsinks_unlearn::MethodResult;

use crate::config::{experiment_ron, LengthRule, StudyConfig};
use crate::results::{
    DeployedChoice, DropCandidate, Dynamics, DynamicsPoint, Forgetting, MainRow, Results, RowValues, SelectedStep,
    SourceRemovalRun, Timing, TrackedDoc, Versions, L_VAL_TOLERANCE, RESULTS_SCHEMA,
};
use crate::stages::Trained;
use memsinks_train::BackendName;

/// Tracked documents drawn per model in the forgetting plots (a readable number of curves).
const PLOTTED_DOCS: usize = 4;

/// What the stages of a reproduction produced.
pub struct StudyOutputs {
    /// Wall time of each stage.
    pub timings: Vec<Timing>,
    /// Every trained and evaluated model.
    pub trained: Vec<Trained>,
    /// Post-hoc methods on the standard model, every seed (`MethodResult::seed`).
    pub posthoc: Vec<MethodResult>,
    /// Dropping the MemSinks model's sinks, every seed.
    pub by_design: Vec<MethodResult>,
    /// Removing sources, every seed.
    pub sources: Vec<SourceRemovalRun>,
}

/// The rows of the main table: label, training method, MLP mode evaluated.
const MAIN_ROWS: [(&str, Method, MlpMode); 9] = [
    ("standard", Method::Standard, MlpMode::Train),
    ("dedup", Method::Dedup, MlpMode::Train),
    ("dedup + fresh data", Method::DedupFresh, MlpMode::Train),
    ("gradient masking, sinks on", Method::GradientMasking, SINKS_ON),
    ("gradient masking, sinks dropped", Method::GradientMasking, SINKS_DROPPED),
    ("memsinks, sinks on", Method::Memsinks, SINKS_ON),
    ("memsinks, sinks dropped (rescaled)", Method::Memsinks, SINKS_DROPPED),
    ("memsinks, sinks dropped (plain)", Method::Memsinks, MlpMode::DropSinks { scale: DropScale::Plain }),
    (
        "memsinks, sinks dropped (activity-matched)",
        Method::Memsinks,
        MlpMode::DropSinks { scale: DropScale::ActivityMatched },
    ),
];

/// Each sequence with its own sinks on.
pub(crate) const SINKS_ON: MlpMode = MlpMode::ActivateSeq { exclude: Vec::new() };

/// Every sink dropped, general units scaled by the reference code's factor: the deployed
/// MemSinks model of results that record no dev-half choice ([`Results::deployed_mode`]), and
/// the gradient-masking model's dropped mode.
pub(crate) const SINKS_DROPPED: MlpMode = MlpMode::DropSinks { scale: DropScale::Reference };

/// Builds `results.json` of experiment `name` from the stages' outputs.
///
/// # Errors
/// When a run's `metrics.jsonl` cannot be read.
pub fn assemble(
    name: &str,
    cfg: &ExperimentConfig,
    study: &StudyConfig,
    seeds: &[u64],
    backend: BackendName,
    outputs: StudyOutputs,
    corpus: &PreparedCorpus,
) -> Result<Results> {
    let StudyOutputs { timings, trained, posthoc, by_design, sources } = outputs;
    let rows = main_rows(&trained);
    let first_seed: Vec<&Trained> = trained.iter().filter(|t| t.seed == seeds[0]).collect();
    let mut dynamics = Vec::new();
    let mut forgetting = Vec::new();
    for t in &first_seed {
        let evals = read_evals(&t.dir.metrics())?;
        dynamics.push(Dynamics {
            method: t.method,
            points: evals
                .iter()
                .map(|e| DynamicsPoint {
                    step: e.step,
                    val: e.val_loss.unwrap_or(f64::NAN),
                    rep_sinks: e.rep_loss_sinks.unwrap_or(f64::NAN),
                    rep_nosinks: e.rep_loss_nosinks.unwrap_or(f64::NAN),
                    canary_sinks: e.canary_loss_sinks,
                    canary_nosinks: e.canary_loss_nosinks,
                    canary_held_out: e.canary_heldout_loss,
                })
                .collect(),
        });
        if matches!(t.method, Method::Standard | Method::Memsinks) {
            forgetting.push(Forgetting { method: t.method, docs: tracked_docs(&evals, t, corpus)? });
        }
    }
    let specificity = first_seed.iter().find(|t| t.method == Method::Memsinks).and_then(|t| t.eval.mean_specificity());
    let selected_steps = match study.training_length {
        LengthRule::Fixed => Vec::new(),
        LengthRule::BestDevStep { max_l_val_ratio } => best_dev_steps(&trained, max_l_val_ratio)?,
    };
    let deployed = choose_drop_scale(&rows);
    Ok(Results {
        schema_version: RESULTS_SCHEMA,
        experiment: name.to_string(),
        config_hash: short_hash(&experiment_ron(cfg, study)),
        config: experiment_ron(cfg, study),
        seeds: seeds.to_vec(),
        extraction: (study.extract_prompt, study.extract_continuation),
        versions: Versions { memsinks: env!("CARGO_PKG_VERSION").into(), burn: "0.21.0".into() },
        backend: backend.to_string(),
        timings,
        rows,
        posthoc,
        by_design,
        dynamics,
        forgetting,
        specificity,
        selected_steps,
        sources,
        deployed,
    })
}

/// The dev half's choice among the drop-sinks scales of the MemSinks model: the one with the
/// highest mean dev-half gap closure among those whose mean L_val is within
/// [`L_VAL_TOLERANCE`] of the standard model's; without any, the reference code's. `None`
/// when the table has no dropped MemSinks row with a dev-half closure.
fn choose_drop_scale(rows: &[MainRow]) -> Option<DeployedChoice> {
    let mean = |v: Vec<f64>| (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64);
    let candidates: Vec<DropCandidate> = rows
        .iter()
        .filter(|r| r.method == Method::Memsinks)
        .filter_map(|r| {
            let MlpMode::DropSinks { scale } = r.mode else { return None };
            Some(DropCandidate {
                scale,
                dev_closure: mean(r.values.iter().filter_map(|v| v.closure_dev).collect())?,
                l_val_ratio: mean(r.values.iter().filter_map(|v| v.l_val_vs_standard).collect())?,
            })
        })
        .collect();
    let eligible = candidates.iter().filter(|c| c.l_val_ratio <= L_VAL_TOLERANCE && c.dev_closure.is_finite());
    let chosen =
        eligible.max_by(|a, b| a.dev_closure.total_cmp(&b.dev_closure)).map_or(DropScale::Reference, |c| c.scale);
    (!candidates.is_empty()).then_some(DeployedChoice { scale: chosen, candidates })
}

/// Per seed, the evaluation step of the MemSinks run with the highest dev-half gap closure
/// against the standard run at the same step, among the steps whose validation loss is within
/// `max_ratio` of the standard model's; with the test half's closure there. Seeds where no step
/// qualifies are left out.
fn best_dev_steps(trained: &[Trained], max_ratio: f64) -> Result<Vec<SelectedStep>> {
    let mut out = Vec::new();
    for mem in trained.iter().filter(|t| t.method == Method::Memsinks) {
        let Some(std) = trained.iter().find(|t| t.method == Method::Standard && t.seed == mem.seed) else { continue };
        let std_evals = read_evals(&std.dir.metrics())?;
        let candidates = read_evals(&mem.dir.metrics())?.into_iter().filter_map(|e| {
            let s = std_evals.iter().find(|s| s.step == e.step)?;
            let (val, std_val) = (e.val_loss?, s.val_loss?);
            // The standard model has no sinks: its repeated loss is the same with or without.
            let closure = |rep: Option<f64>, std_rep: Option<f64>| Some(gap_closure(val - rep?, std_val - std_rep?));
            Some(SelectedStep {
                seed: mem.seed,
                step: e.step,
                dev_closure: closure(e.rep_dev_nosinks, s.rep_dev_sinks)?,
                test_closure: closure(e.rep_test_nosinks, s.rep_test_sinks)?,
                l_val_ratio: val / std_val,
            })
        });
        let best = candidates
            .filter(|c| c.l_val_ratio <= max_ratio && c.dev_closure.is_finite())
            .max_by(|a, b| a.dev_closure.total_cmp(&b.dev_closure));
        out.extend(best);
    }
    Ok(out)
}

/// The main table: per row of [`MAIN_ROWS`], the values of every seed that has that mode.
fn main_rows(trained: &[Trained]) -> Vec<MainRow> {
    let standard = |seed: u64| {
        trained.iter().find(|t| t.method == Method::Standard && t.seed == seed).and_then(|t| t.eval.modes.first())
    };
    let mut rows = Vec::new();
    for (label, method, mode) in MAIN_ROWS {
        let values: Vec<RowValues> = trained
            .iter()
            .filter(|t| t.method == method)
            .filter_map(|t| {
                let m = t.eval.modes.iter().find(|m| m.mode == mode)?;
                let half_closure = |h: Half| {
                    let s = standard(t.seed).filter(|_| method != Method::Standard)?;
                    Some(gap_closure(m.half_gap(h)?, s.half_gap(h)?))
                };
                Some(RowValues {
                    seed: t.seed,
                    l_rep: m.repeated.nll,
                    l_canary: m.canary.as_ref().map(|c| c.nll),
                    l_canary_held_out: m.canary_held_out.as_ref().map(|c| c.nll),
                    canary_closure: (method != Method::Standard)
                        .then(|| Some(gap_closure(m.canary_gap()?, standard(t.seed)?.canary_gap()?)))
                        .flatten(),
                    l_val: m.validation.nll,
                    gap: m.gap,
                    closure_vs_standard: (method != Method::Standard)
                        .then(|| standard(t.seed).map(|s| gap_closure(m.gap, s.gap)))
                        .flatten(),
                    l_val_vs_standard: standard(t.seed).map(|s| m.validation.nll / s.validation.nll),
                    closure_dev: half_closure(Half::Dev),
                    closure_test: half_closure(Half::Test),
                    extraction: m.extraction_repeated.match_rate,
                    extraction_heldout: m.extraction_validation.match_rate,
                    verbatim: m.extraction_repeated.verbatim_len,
                    mia_auc: m.mia_auc,
                    tokens_seen: t.summary.tokens_seen,
                    real_tokens: t.summary.real_tokens,
                    passes: Some(t.summary.schedule_passes),
                    views_per_repeated: t.summary.views_per_repeated,
                    wall_s: t.summary.wall_s,
                })
            })
            .collect();
        if !values.is_empty() {
            rows.push(MainRow { label: label.into(), method, mode, values });
        }
    }
    rows
}

fn short_hash(text: &str) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(text.as_bytes())[..6].iter().map(|b| format!("{b:02x}")).collect()
}

/// The first [`PLOTTED_DOCS`] tracked repeated documents: their losses at each evaluation and
/// the steps at which they were trained on. A document at schedule position `p` is in optimizer
/// step `pass · ⌈occurrences / rows_per_step⌉ + ⌊p / rows_per_step⌋ + 1` of each pass over the
/// schedule (exact for one document per row; packed rows shift it by at most a step).
fn tracked_docs(evals: &[EvalRecord], t: &Trained, corpus: &PreparedCorpus) -> Result<Vec<TrackedDoc>> {
    let manifest = &corpus.manifest;
    let rows = t.summary.rows_per_step.max(1) as u64;
    let steps_per_pass = manifest.occurrences.div_ceil(rows);
    let passes = t.summary.schedule_passes.ceil() as u64;
    let last_step = t.summary.steps as f64;
    // Where each pass put each document (every pass after the first reshuffled, as training read it).
    let schedule = corpus.schedule(memsinks_data::ScheduleKind::Full)?;
    let orders: Vec<Vec<u32>> =
        (0..passes).map(|pass| pass_order(&schedule, manifest.config.reshuffle_seed(), pass)).collect();
    Ok(manifest
        .indices(Split::Repeated)
        .into_iter()
        .filter(|d| evals.first().is_some_and(|e| e.rep_doc_losses.contains_key(d)))
        .take(PLOTTED_DOCS)
        .map(|doc| {
            let seen_at = orders
                .iter()
                .enumerate()
                .flat_map(|(pass, order)| {
                    let at = move |p: usize| (pass as u64 * steps_per_pass + p as u64 / rows + 1) as f64;
                    order.iter().enumerate().filter(move |&(_, &d)| d as usize == doc).map(move |(p, _)| at(p))
                })
                .filter(|&s| s <= last_step)
                .collect();
            let losses =
                evals.iter().filter_map(|e| e.rep_doc_losses.get(&doc).map(|&(w, wo)| (e.step, w, wo))).collect();
            TrackedDoc { doc, seen_at, losses }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(seed: u64, closure_dev: f64, l_val_ratio: f64) -> RowValues {
        RowValues {
            seed,
            l_rep: 0.5,
            l_canary: None,
            l_canary_held_out: None,
            canary_closure: None,
            l_val: l_val_ratio,
            gap: 0.3,
            closure_vs_standard: Some(closure_dev),
            closure_dev: Some(closure_dev),
            closure_test: Some(closure_dev),
            l_val_vs_standard: Some(l_val_ratio),
            extraction: 0.0,
            extraction_heldout: 0.0,
            verbatim: 0.0,
            mia_auc: 0.5,
            tokens_seen: 0,
            real_tokens: None,
            passes: None,
            views_per_repeated: None,
            wall_s: 0.0,
        }
    }

    fn dropped(scale: DropScale, per_seed: &[(f64, f64)]) -> MainRow {
        let values = per_seed.iter().enumerate().map(|(i, &(c, r))| values(i as u64, c, r)).collect();
        MainRow { label: String::new(), method: Method::Memsinks, mode: MlpMode::DropSinks { scale }, values }
    }

    #[test]
    fn the_dev_half_chooses_the_best_closure_among_scales_that_keep_the_model() {
        let on = MainRow { mode: SINKS_ON, ..dropped(DropScale::Plain, &[(0.9, 1.0)]) };
        let rows = vec![
            on,
            // The highest dev closure, bought with a worse model: not eligible.
            dropped(DropScale::Reference, &[(0.8, 1.04), (0.8, 1.08)]),
            dropped(DropScale::Plain, &[(0.5, 1.00), (0.6, 1.00)]),
            dropped(DropScale::ActivityMatched, &[(0.6, 1.01), (0.7, 1.02)]),
        ];
        let choice = choose_drop_scale(&rows).unwrap();
        assert_eq!(choice.scale, DropScale::ActivityMatched);
        assert_eq!(choice.candidates.len(), 3, "only the dropped MemSinks rows are candidates");
        let reference = choice.candidates.iter().find(|c| c.scale == DropScale::Reference).unwrap();
        assert!((reference.dev_closure - 0.8).abs() < 1e-12 && (reference.l_val_ratio - 1.06).abs() < 1e-12);

        // No eligible scale: the reference code's, the faithful default.
        let worse = vec![dropped(DropScale::Plain, &[(0.9, 1.2)]), dropped(DropScale::ActivityMatched, &[(0.9, 1.3)])];
        assert_eq!(choose_drop_scale(&worse).unwrap().scale, DropScale::Reference);
        // No dropped rows at all (a study without MemSinks): no choice recorded.
        assert!(choose_drop_scale(&rows[..1]).is_none());
    }
}
