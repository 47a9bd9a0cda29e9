//! `results.json` built from the stages' outputs: the main table per seed, training dynamics,
//! tracked documents and specificity.

use anyhow::Result;
use memsinks_data::{Manifest, Split};
use memsinks_train::metrics::{read_evals, EvalRecord};
use memsinks_train::{ExperimentConfig, Method};
use memsinks_unlearn::metrics::gap_closure;
use memsinks_unlearn::MethodResult;

use crate::config::{experiment_ron, StudyConfig};
use crate::results::{Dynamics, DynamicsPoint, Forgetting, MainRow, Results, RowValues, Timing, TrackedDoc, Versions};
use crate::stages::Trained;

/// Tracked documents drawn per model in the forgetting plots (a readable number of curves).
const PLOTTED_DOCS: usize = 4;

/// What the stages of a reproduction produced.
pub struct StudyOutputs {
    /// Wall time of each stage.
    pub timings: Vec<Timing>,
    /// Every trained and evaluated model.
    pub trained: Vec<Trained>,
    /// Post-hoc methods on the standard model (first seed).
    pub posthoc: Vec<MethodResult>,
    /// Dropping the MemSinks model's sinks (first seed).
    pub by_design: Vec<MethodResult>,
}

/// The rows of the main table: label, training method, MLP mode evaluated.
const MAIN_ROWS: [(&str, Method, &str); 7] = [
    ("standard", Method::Standard, "train"),
    ("dedup", Method::Dedup, "train"),
    ("gradient masking, sinks on", Method::GradientMasking, "activate-seq"),
    ("gradient masking, sinks dropped", Method::GradientMasking, "drop-sinks"),
    ("memsinks, sinks on", Method::Memsinks, "activate-seq"),
    ("memsinks, sinks dropped (rescaled)", Method::Memsinks, "drop-sinks"),
    ("memsinks, sinks dropped (plain)", Method::Memsinks, "drop-sinks-plain"),
];

/// Builds `results.json` of experiment `name` from the stages' outputs.
///
/// # Errors
/// When a run's `metrics.jsonl` cannot be read.
pub fn assemble(
    name: &str,
    cfg: &ExperimentConfig,
    study: &StudyConfig,
    seeds: &[u64],
    backend: &str,
    outputs: StudyOutputs,
    manifest: &Manifest,
) -> Result<Results> {
    let StudyOutputs { timings, trained, posthoc, by_design } = outputs;
    let rows = main_rows(&trained);
    let first_seed: Vec<&Trained> = trained.iter().filter(|t| t.seed == seeds[0]).collect();
    let mut dynamics = Vec::new();
    let mut forgetting = Vec::new();
    for t in &first_seed {
        let evals = read_evals(&t.dir.metrics())?;
        dynamics.push(Dynamics {
            method: t.method.name().into(),
            points: evals
                .iter()
                .map(|e| DynamicsPoint {
                    step: e.step,
                    val: e.val_loss.unwrap_or(f64::NAN),
                    rep_sinks: e.rep_loss_sinks.unwrap_or(f64::NAN),
                    rep_nosinks: e.rep_loss_nosinks.unwrap_or(f64::NAN),
                })
                .collect(),
        });
        if matches!(t.method, Method::Standard | Method::Memsinks) {
            forgetting.push(Forgetting { method: t.method.name().into(), docs: tracked_docs(&evals, t, manifest) });
        }
    }
    let specificity = first_seed.iter().find(|t| t.method == Method::Memsinks).and_then(|t| t.eval.mean_specificity());
    Ok(Results {
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
    })
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
                Some(RowValues {
                    seed: t.seed,
                    l_rep: m.repeated.nll,
                    l_canary: m.canary.as_ref().map(|c| c.nll),
                    l_val: m.validation.nll,
                    gap: m.gap,
                    closure_vs_standard: (method != Method::Standard)
                        .then(|| standard(t.seed).map(|s| gap_closure(m.gap, s.gap)))
                        .flatten(),
                    l_val_vs_standard: standard(t.seed).map(|s| m.validation.nll / s.validation.nll),
                    extraction: m.extraction_repeated.match_rate,
                    extraction_heldout: m.extraction_validation.match_rate,
                    verbatim: m.extraction_repeated.verbatim_len,
                    mia_auc: m.mia_auc,
                    tokens_seen: t.summary.tokens_seen,
                    wall_s: t.summary.wall_s,
                })
            })
            .collect();
        if !values.is_empty() {
            rows.push(MainRow { label: label.into(), method: method.name().into(), mode: mode.into(), values });
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
fn tracked_docs(evals: &[EvalRecord], t: &Trained, manifest: &Manifest) -> Vec<TrackedDoc> {
    let rows = t.summary.rows_per_step.max(1) as u64;
    let steps_per_pass = manifest.occurrences.div_ceil(rows);
    let passes = t.summary.schedule_passes.ceil() as u64;
    let last_step = t.summary.steps as f64;
    manifest
        .indices(Split::Repeated)
        .into_iter()
        .filter(|d| evals.first().is_some_and(|e| e.rep_doc_losses.contains_key(d)))
        .take(PLOTTED_DOCS)
        .map(|doc| {
            let seen_at = (0..passes)
                .flat_map(|pass| {
                    manifest.documents[doc]
                        .positions
                        .iter()
                        .map(move |&p| (pass * steps_per_pass + p / rows + 1) as f64)
                })
                .filter(|&s| s <= last_step)
                .collect();
            let losses =
                evals.iter().filter_map(|e| e.rep_doc_losses.get(&doc).map(|&(w, wo)| (e.step, w, wo))).collect();
            TrackedDoc { doc, seen_at, losses }
        })
        .collect()
}
